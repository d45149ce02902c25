//! The embedded default store, on sled.
//!
//! # Key layout
//!
//! Everything lives in one tree, `docs`, so that a compaction is one atomic [`sled::Batch`].
//! Keys start with the room name, length-prefixed so that a room's prefix never matches
//! another room whose name merely starts the same way (`a` and `ab`, `file:1` and `file:10`):
//!
//! ```text
//! u16be(len(name)) name 0x00               -> snapshot: 0x01 u64be(through_seq)
//!                                             u64be(last_change_ms) lz4(v1 update)
//! u16be(len(name)) name 0x01 u64be(seq)    -> log entry: 0x01 then, per update in the
//!                                             order applied, varUint(len) v1 update
//! u16be(len(name)) name 0x02               -> tombstone: 0x01 u64be(deleted_at_ms)
//! ```
//!
//! A tombstone marks a deleted room. It is written in the batch that removes the room's other
//! keys, and while it exists appends and compactions of the room are refused
//! ([`StoreError::RoomDeleted`]): a write that was on its way when the room was deleted cannot
//! bring the room back. `undelete` removes it (the name can be used again, the room starts
//! empty). The check and the write are one step against deletion: appends and compactions hold
//! `deletions` shared, deletion and undeletion hold it exclusively.
//!
//! A log entry holds one or more updates, so that a room can write a burst of edits with one
//! sled insert instead of one per keystroke (`MAX_UNWRITTEN_UPDATES` in `room/persistence.rs`).
//!
//! The snapshot key sorts before the room's log keys, and log keys sort by sequence number, so
//! loading a room is one prefix scan. `through_seq` is the last log sequence the snapshot
//! includes; the next sequence number is one past the larger of it and the last log key.
//! `last_change_ms` is when the document last changed (milliseconds since the epoch).
//! The snapshot payload is compressed with `lz4_flex::compress_prepend_size`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::Bytes;
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;

use super::StoreError;
use super::{RoomStats, RoomStore, StoredDoc};

const TREE: &str = "docs";
/// Written by the readiness probe, in sled's default tree (never in `docs`).
const READY_KEY: &[u8] = b"ycord:ready";
const KIND_SNAPSHOT: u8 = 0;
const KIND_LOG: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;
const TOMBSTONE_FORMAT: u8 = 1;
const SNAPSHOT_FORMAT: u8 = 1;
const LOG_FORMAT: u8 = 1;
/// Bytes of a snapshot value before the compressed payload: format byte, `through_seq` and
/// `last_change_ms`.
const SNAPSHOT_HEADER: usize = 17;
/// lz4 expands at most about 255:1; a size prefix claiming more is corrupt.
const MAX_LZ4_RATIO: usize = 256;
/// Values (and so the sled nodes holding them) from this size may be written by sled 0.34 as a
/// separate "blob" file: its nodes above a quarter segment (128 KiB) are, and a node holds
/// other entries beside the value.
const BLOB_RISK_BYTES: usize = 64 << 10;
/// Free disk space kept beyond twice such a value before writing it.
const BLOB_SPACE_MARGIN: u64 = 1 << 20;
/// Highest sequence number a sound store holds: 2^63 updates take 292,000 years at a million
/// per second. A larger one is corrupt, and trusting it would run the room's numbering into
/// `u64::MAX`, where new entries overwrite each other (fuzzer finding `snapshot-through-seq-max`).
const MAX_SEQ: u64 = 1 << 63;

/// sled-backed [`RoomStore`]. Cloning shares the same database.
#[derive(Clone, Debug)]
pub struct SledStore {
    /// The open database; `None` between dropping a failed one and reopening it.
    open: Arc<RwLock<Option<Handles>>>,
    /// Where the database lives, to reopen it ([`RoomStore::recover`]); `None` for a temporary one.
    dir: Option<PathBuf>,
    /// Held while flushing: concurrent flushes can deadlock in sled 0.34 (upstream
    /// spacejam/sled#1308), so the periodic flusher and the shutdown take turns. (The shutdown
    /// hang once blamed on this was sled leaking a failed blob write; see
    /// `MAX_UNWRITTEN_BYTES` in `room/persistence.rs`.)
    flushing: Arc<Mutex<()>>,
    /// Orders writes against deletions (see the module documentation): held shared by
    /// `append` and `compact` from their tombstone check through their write, exclusively by
    /// `delete` and `undelete`.
    deletions: Arc<RwLock<()>>,
}

/// An open sled database and its `docs` tree (both cheap reference-counted handles).
#[derive(Clone, Debug)]
struct Handles {
    db: sled::Db,
    docs: sled::Tree,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. sled holds a lock on the directory, so a second
    /// process opening it fails instead of corrupting it. sled's own background flusher is off:
    /// the server flushes on its `--flush-ms` timer, which it can time and order with shutdown.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let handles = Handles::open(&Self::config(dir))?;
        Ok(Self::with(handles, Some(dir.to_owned())))
    }

    /// Opens a store that lives in a temporary directory removed on drop (benches, unit tests).
    pub fn temporary() -> Result<Self, StoreError> {
        let handles = Handles::open(&sled::Config::new().temporary(true))?;
        Ok(Self::with(handles, None))
    }

    fn config(dir: &Path) -> sled::Config {
        sled::Config::new().path(dir).flush_every_ms(None)
    }

    fn with(handles: Handles, dir: Option<PathBuf>) -> Self {
        SledStore {
            open: Arc::new(RwLock::new(Some(handles))),
            dir,
            flushing: Arc::default(),
            deletions: Arc::default(),
        }
    }

    /// The open database's handles, or an error while it is being reopened.
    fn handles(&self) -> Result<Handles, StoreError> {
        self.open
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Failing)
    }

    /// Refuses a value that sled may write as a blob file unless the disk has room for it.
    ///
    /// If creating a blob file fails (no space), sled 0.34 returns the error but leaks its
    /// reservation in the log buffer (`logger.rs`, `reserve_inner`: `encapsulate(..)?` after
    /// the writer count was raised, without setting its global error), and every later flush,
    /// and dropping the database, waits for that buffer forever: measured on a nearly full
    /// tmpfs, a 900 KB snapshot failed and the next flush never returned, so the store could
    /// not even be reopened. Checking the free space first turns that into an ordinary error
    /// the rooms retry. Small values are written inline, where a full disk makes sled fail
    /// every operation until it is reopened ([`RoomStore::recover`]).
    fn ensure_space_for(&self, len: usize) -> Result<(), StoreError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        if len < BLOB_RISK_BYTES {
            return Ok(());
        }
        let stats = nix::sys::statvfs::statvfs(dir.as_path())
            .map_err(|error| StoreError::Task(format!("statvfs {}: {error}", dir.display())))?;
        let available = stats
            .blocks_available()
            .saturating_mul(stats.fragment_size());
        let needed = 2 * len as u64 + BLOB_SPACE_MARGIN;
        if available < needed {
            return Err(StoreError::NoSpace {
                len,
                needed,
                available,
            });
        }
        Ok(())
    }

    /// Writes a raw key and value into the `docs` tree, bypassing the layout: the fuzzer's
    /// way to plant corrupt records (`crate::fuzzing::store_recovery`).
    pub(crate) fn raw_insert(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.handles()?.docs.insert(key, value)?;
        Ok(())
    }
}

impl Handles {
    fn open(config: &sled::Config) -> Result<Handles, StoreError> {
        let db = config.open()?;
        let docs = db.open_tree(TREE)?;
        Ok(Handles { db, docs })
    }
}

/// `u16be(len(name)) name`: where every key of a room starts.
pub(crate) fn room_prefix(room: &str) -> Vec<u8> {
    // Room names are at most `MAX_ROOM_NAME_BYTES` long, far below u16::MAX; a longer one is a
    // caller bug, so clamp rather than wrap.
    let len = u16::try_from(room.len()).unwrap_or(u16::MAX);
    let mut key = Vec::with_capacity(2 + room.len() + 9);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(room.as_bytes());
    key
}

/// The key of a room's snapshot.
pub(crate) fn snapshot_key(room: &str) -> Vec<u8> {
    let mut key = room_prefix(room);
    key.push(KIND_SNAPSHOT);
    key
}

/// The key of a room's log entry `seq`.
pub(crate) fn log_key(room: &str, seq: u64) -> Vec<u8> {
    let mut key = room_prefix(room);
    key.push(KIND_LOG);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn log_prefix(room: &str) -> Vec<u8> {
    let mut key = room_prefix(room);
    key.push(KIND_LOG);
    key
}

fn tombstone_key(room: &str) -> Vec<u8> {
    let mut key = room_prefix(room);
    key.push(KIND_TOMBSTONE);
    key
}

fn encode_tombstone(deleted_at_ms: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(9);
    value.push(TOMBSTONE_FORMAT);
    value.extend_from_slice(&deleted_at_ms.to_be_bytes());
    value
}

/// When a tombstone says its room was deleted. An unreadable tombstone still marks the room
/// deleted (at time 0): refusing a room by mistake is recoverable, resurrecting one is not.
fn tombstone_time(value: &[u8]) -> u64 {
    match value {
        [TOMBSTONE_FORMAT, time @ ..] if time.len() == 8 => read_u64(time),
        _ => 0,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn corrupt(key: &[u8], reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.into(),
    }
}

/// A decoded snapshot value.
pub(crate) struct Snapshot {
    pub through_seq: u64,
    pub last_change_ms: u64,
    pub update: Vec<u8>,
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(array)
}

/// Parses a snapshot value and decompresses its update.
pub(crate) fn decode_snapshot(key: &[u8], value: &[u8]) -> Result<Snapshot, StoreError> {
    if value.len() < SNAPSHOT_HEADER || value[0] != SNAPSHOT_FORMAT {
        return Err(corrupt(
            key,
            "snapshot header is missing or of an unknown format",
        ));
    }
    let payload = &value[SNAPSHOT_HEADER..];
    // The payload starts with the decompressed size (u32, little endian); a corrupt one would
    // make the decompressor reserve up to 4 GiB before failing.
    let claimed = payload.get(..4).map_or(0, |size| {
        u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize
    });
    if claimed > payload.len().saturating_mul(MAX_LZ4_RATIO) {
        return Err(corrupt(
            key,
            "snapshot size prefix is larger than lz4 can expand to",
        ));
    }
    let update = lz4_flex::decompress_size_prepended(payload)
        .map_err(|error| corrupt(key, format!("snapshot does not decompress: {error}")))?;
    Ok(Snapshot {
        through_seq: read_u64(&value[1..9]),
        last_change_ms: read_u64(&value[9..17]),
        update,
    })
}

/// A snapshot's value: the format byte, the header, the lz4-compressed update.
pub(crate) fn encode_snapshot(through_seq: u64, last_change_ms: u64, update: &[u8]) -> Vec<u8> {
    let compressed = lz4_flex::compress_prepend_size(update);
    let mut value = Vec::with_capacity(SNAPSHOT_HEADER + compressed.len());
    value.push(SNAPSHOT_FORMAT);
    value.extend_from_slice(&through_seq.to_be_bytes());
    value.extend_from_slice(&last_change_ms.to_be_bytes());
    value.extend_from_slice(&compressed);
    value
}

/// A log entry's value: the format byte, then each update with its length.
pub fn encode_log_entry(updates: &[impl AsRef<[u8]>]) -> Vec<u8> {
    let size: usize = updates.iter().map(|update| update.as_ref().len() + 5).sum();
    let mut value = Vec::with_capacity(1 + size);
    value.push(LOG_FORMAT);
    for update in updates {
        value.write_buf(update.as_ref());
    }
    value
}

/// The updates of a log entry. Any framing error makes the whole entry corrupt: a truncated
/// entry cannot say which of its updates are whole.
pub(crate) fn decode_log_entry(key: &[u8], value: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
    let Some((&LOG_FORMAT, body)) = value.split_first() else {
        return Err(corrupt(key, "log entry has an unknown format"));
    };
    let mut cursor = Cursor::new(body);
    let mut updates = Vec::new();
    while cursor.has_content() {
        let update = cursor
            .read_buf()
            .map_err(|error| corrupt(key, format!("log entry is truncated: {error}")))?;
        updates.push(update.to_vec());
    }
    Ok(updates)
}

/// The last-change time in a snapshot value's header, without decompressing it.
fn snapshot_last_change(value: &[u8]) -> Option<u64> {
    (value.len() >= SNAPSHOT_HEADER && value[0] == SNAPSHOT_FORMAT).then(|| read_u64(&value[9..17]))
}

/// The sequence number of a log key, given the length of its room's log prefix.
fn log_seq(key: &[u8], prefix_len: usize) -> Option<u64> {
    let bytes: [u8; 8] = key.get(prefix_len..)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

impl RoomStore for SledStore {
    fn load(&self, room: &str) -> Result<StoredDoc, StoreError> {
        let Handles { docs, .. } = self.handles()?;
        let mut doc = StoredDoc::default();
        let mut through_seq = None;
        if let Some(value) = docs.get(snapshot_key(room))? {
            match decode_snapshot(&snapshot_key(room), &value) {
                Ok(snapshot) => {
                    // Applying log entries that the snapshot already covers is harmless (updates
                    // are idempotent): an implausible `through_seq` is reported and ignored.
                    if snapshot.through_seq > MAX_SEQ {
                        doc.corrupt.push(corrupt(
                            &snapshot_key(room),
                            format!("snapshot claims {} updates", snapshot.through_seq),
                        ));
                    } else {
                        through_seq = Some(snapshot.through_seq);
                        doc.next_seq = snapshot.through_seq + 1;
                    }
                    doc.last_change_ms = Some(snapshot.last_change_ms);
                    doc.snapshot = Some(snapshot.update);
                }
                Err(error) => doc.corrupt.push(error),
            }
        }
        let prefix = log_prefix(room);
        for entry in docs.scan_prefix(&prefix) {
            let (key, value) = entry?;
            let Some(seq) = log_seq(&key, prefix.len()).filter(|seq| *seq <= MAX_SEQ) else {
                doc.corrupt
                    .push(corrupt(&key, "log key has no valid sequence number"));
                continue;
            };
            // Entries a snapshot already covers can outlive a compaction only if a crash hit
            // between writes of a non-atomic store; sled's batch rules that out, but skipping
            // them keeps loading idempotent either way.
            if through_seq.is_some_and(|through| seq <= through) {
                continue;
            }
            doc.next_seq = doc.next_seq.max(seq + 1);
            match decode_log_entry(&key, &value) {
                Ok(updates) => doc.log.extend(updates),
                Err(error) => doc.corrupt.push(error),
            }
        }
        Ok(doc)
    }

    fn append(&self, room: &str, seq: u64, updates: &[Bytes]) -> Result<(), StoreError> {
        let entry = encode_log_entry(updates);
        self.ensure_space_for(entry.len())?;
        let Handles { docs, .. } = self.handles()?;
        let _not_deleting = self
            .deletions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        refuse_if_deleted(&docs, room)?;
        docs.insert(log_key(room, seq), entry)?;
        Ok(())
    }

    fn compact(
        &self,
        room: &str,
        snapshot: &[u8],
        through_seq: u64,
        last_change_ms: u64,
    ) -> Result<(), StoreError> {
        let Handles { docs, .. } = self.handles()?;
        let value = encode_snapshot(through_seq, last_change_ms, snapshot);
        self.ensure_space_for(value.len())?;
        let _not_deleting = self
            .deletions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        refuse_if_deleted(&docs, room)?;
        let mut batch = sled::Batch::default();
        batch.insert(snapshot_key(room), value);
        let prefix = log_prefix(room);
        for key in docs
            .range(log_key(room, 0)..=log_key(room, through_seq))
            .keys()
        {
            let key = key?;
            if key.starts_with(&prefix) {
                batch.remove(key);
            }
        }
        docs.apply_batch(batch)?;
        Ok(())
    }

    fn delete(&self, room: &str) -> Result<(), StoreError> {
        let Handles { docs, .. } = self.handles()?;
        let _no_writes = self
            .deletions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let tombstone = tombstone_key(room);
        if docs.contains_key(&tombstone)? {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for key in docs.scan_prefix(room_prefix(room)).keys() {
            let key = key?;
            // The prefix scan also matches longer names only if they share the length prefix
            // and the name, which makes them the same room: every key here belongs to `room`.
            batch.remove(key);
        }
        batch.insert(tombstone, encode_tombstone(now_ms()));
        docs.apply_batch(batch)?;
        Ok(())
    }

    fn deleted_at(&self, room: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .handles()?
            .docs
            .get(tombstone_key(room))?
            .map(|value| tombstone_time(&value)))
    }

    fn undelete(&self, room: &str) -> Result<bool, StoreError> {
        let _no_writes = self
            .deletions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(self.handles()?.docs.remove(tombstone_key(room))?.is_some())
    }

    fn tombstones(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut tombstones = Vec::new();
        for entry in self.handles()?.docs.iter() {
            let (key, value) = entry?;
            let Some(name) = room_name(&key) else {
                continue;
            };
            if key.len() == 2 + name.len() + 1 && key[key.len() - 1] == KIND_TOMBSTONE {
                tombstones.push((name.to_owned(), tombstone_time(&value)));
            }
        }
        Ok(tombstones)
    }

    fn flush(&self) -> Result<usize, StoreError> {
        let _one_at_a_time = self.flushing.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(self.handles()?.db.flush()?)
    }

    fn stats(&self, room: &str) -> Result<RoomStats, StoreError> {
        let Handles { docs, .. } = self.handles()?;
        let mut stats = RoomStats::default();
        if let Some(value) = docs.get(snapshot_key(room))? {
            stats.snapshot_bytes = value.len() as u64;
            stats.last_change_ms = snapshot_last_change(&value);
        }
        for entry in docs.scan_prefix(log_prefix(room)) {
            let (_, value) = entry?;
            stats.log_entries += 1;
            stats.log_bytes += value.len() as u64;
        }
        Ok(stats)
    }

    fn rooms(&self) -> Result<Vec<String>, StoreError> {
        let mut rooms: Vec<String> = Vec::new();
        for key in self.handles()?.docs.iter().keys() {
            let key = key?;
            let Some(name) = room_name(&key) else {
                continue;
            };
            // A deleted room holds only its tombstone: it has no document to list.
            if key.get(2 + name.len()) == Some(&KIND_TOMBSTONE) {
                continue;
            }
            if rooms.last().map(String::as_str) != Some(name) {
                rooms.push(name.to_owned());
            }
        }
        Ok(rooms)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.handles()?.db.size_on_disk()?)
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        self.handles()?
            .db
            .insert(READY_KEY, &now_ms().to_be_bytes())?;
        Ok(())
    }

    /// sled keeps the first I/O error it hits (a full disk) and fails every later operation
    /// with it until the database is opened again: recovering means reopening, which drops
    /// whatever was written but not flushed (the rooms write it again from memory). The old
    /// database must be closed first (sled locks its directory), so this fails, to be retried,
    /// while a flush or another operation still holds it.
    fn recover(&self) -> Result<(), StoreError> {
        if self.check_writable().is_ok() {
            return Ok(());
        }
        let Some(dir) = &self.dir else {
            return self.check_writable();
        };
        // A flush still running (wedged on the failed disk) holds the database.
        let _no_flush = match self.flushing.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(StoreError::Task("a flush is still running".into()));
            }
        };
        let mut open = self.open.write().unwrap_or_else(PoisonError::into_inner);
        drop(open.take());
        let handles = Handles::open(&Self::config(dir))?;
        tracing::warn!(dir = %dir.display(), "store reopened after a failure");
        *open = Some(handles);
        drop(open);
        self.check_writable()
    }
}

/// Refuses a write to a deleted room. The caller holds `deletions` shared.
fn refuse_if_deleted(docs: &sled::Tree, room: &str) -> Result<(), StoreError> {
    if docs.contains_key(tombstone_key(room))? {
        return Err(StoreError::RoomDeleted(room.to_owned()));
    }
    Ok(())
}

/// The room name a key belongs to, if the key is well formed.
fn room_name(key: &[u8]) -> Option<&str> {
    let len = u16::from_be_bytes(key.get(..2)?.try_into().ok()?) as usize;
    std::str::from_utf8(key.get(2..2 + len)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_whose_names_share_a_prefix_stay_apart() {
        let store = SledStore::temporary().unwrap();
        store.append("a", 0, &[Bytes::from("one")]).unwrap();
        store.append("ab", 0, &[Bytes::from("two")]).unwrap();
        store
            .append("a", 1, &[Bytes::from("three"), Bytes::from("four")])
            .unwrap();
        let a = store.load("a").unwrap();
        assert_eq!(
            a.log,
            vec![b"one".to_vec(), b"three".to_vec(), b"four".to_vec()]
        );
        assert_eq!(a.next_seq, 2);
        assert_eq!(store.load("ab").unwrap().log, vec![b"two".to_vec()]);
        assert_eq!(
            store.rooms().unwrap(),
            vec!["a".to_owned(), "ab".to_owned()]
        );
        store.delete("a").unwrap();
        assert!(store.load("a").unwrap().log.is_empty());
        assert_eq!(store.load("ab").unwrap().log.len(), 1);
    }

    #[test]
    fn a_deleted_room_keeps_a_tombstone_that_refuses_writes_until_undeleted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.append("doomed", 0, &[Bytes::from("one")]).unwrap();
            store.compact("doomed", b"snapshot", 0, 1).unwrap();
            store.append("doomed", 1, &[Bytes::from("two")]).unwrap();
            store.append("kept", 0, &[Bytes::from("three")]).unwrap();
            assert_eq!(store.deleted_at("doomed").unwrap(), None);
            store.delete("doomed").unwrap();
            let deleted_at = store.deleted_at("doomed").unwrap().unwrap();
            assert!(deleted_at > 0);
            // A write that was on its way when the room was deleted is refused.
            let late = store.append("doomed", 2, &[Bytes::from("late")]);
            assert!(
                matches!(late, Err(StoreError::RoomDeleted(ref room)) if room == "doomed"),
                "{late:?}"
            );
            let compaction = store.compact("doomed", b"late snapshot", 2, 2);
            assert!(
                matches!(compaction, Err(StoreError::RoomDeleted(_))),
                "{compaction:?}"
            );
            let doc = store.load("doomed").unwrap();
            assert!(doc.snapshot.is_none() && doc.log.is_empty(), "{doc:?}");
            assert_eq!(store.stats("doomed").unwrap(), RoomStats::default());
            // Deleting again keeps the first deletion time.
            store.delete("doomed").unwrap();
            assert_eq!(store.deleted_at("doomed").unwrap(), Some(deleted_at));
            assert_eq!(store.rooms().unwrap(), vec!["kept".to_owned()]);
            assert_eq!(
                store.tombstones().unwrap(),
                vec![("doomed".to_owned(), deleted_at)]
            );
            store.flush().unwrap();
        }
        // The tombstone is durable.
        let store = SledStore::open(dir.path()).unwrap();
        assert!(store.deleted_at("doomed").unwrap().is_some());
        assert!(store.append("doomed", 3, &[Bytes::from("x")]).is_err());
        assert!(store.undelete("doomed").unwrap());
        assert!(!store.undelete("doomed").unwrap());
        assert_eq!(store.deleted_at("doomed").unwrap(), None);
        assert!(store.tombstones().unwrap().is_empty());
        store.append("doomed", 0, &[Bytes::from("new")]).unwrap();
        assert_eq!(store.load("doomed").unwrap().log, vec![b"new".to_vec()]);
        assert_eq!(store.load("kept").unwrap().log, vec![b"three".to_vec()]);
    }

    #[test]
    fn compaction_replaces_covered_log_entries() {
        let store = SledStore::temporary().unwrap();
        for seq in 0..5 {
            store
                .append("room", seq, &[Bytes::from(vec![seq as u8])])
                .unwrap();
        }
        store.compact("room", b"snapshot", 2, 1234).unwrap();
        let doc = store.load("room").unwrap();
        assert_eq!(doc.snapshot.as_deref(), Some(&b"snapshot"[..]));
        assert_eq!(doc.log, vec![vec![3], vec![4]]);
        assert_eq!(doc.next_seq, 5);
        assert_eq!(doc.last_change_ms, Some(1234));
        let stats = store.stats("room").unwrap();
        assert_eq!(stats.log_entries, 2);
        assert!(stats.snapshot_bytes > 0);
    }

    #[test]
    fn a_corrupt_snapshot_is_reported_and_the_log_still_loads() {
        let store = SledStore::temporary().unwrap();
        store.append("room", 0, &[Bytes::from("update")]).unwrap();
        store
            .raw_insert(&snapshot_key("room"), &b"\x01garbage"[..])
            .unwrap();
        let doc = store.load("room").unwrap();
        assert_eq!(doc.corrupt.len(), 1);
        assert_eq!(doc.log, vec![b"update".to_vec()]);
    }

    #[test]
    fn a_log_entry_that_does_not_frame_is_corrupt_and_the_rest_loads() {
        let store = SledStore::temporary().unwrap();
        store.append("room", 0, &[Bytes::from("first")]).unwrap();
        let mut truncated = encode_log_entry(&[b"second".as_slice()]);
        truncated.pop();
        store.raw_insert(&log_key("room", 1), &truncated).unwrap();
        store
            .raw_insert(&log_key("room", 2), &b"\x09unknown"[..])
            .unwrap();
        store.append("room", 3, &[Bytes::from("fourth")]).unwrap();
        let doc = store.load("room").unwrap();
        assert_eq!(doc.log, vec![b"first".to_vec(), b"fourth".to_vec()]);
        assert_eq!(doc.corrupt.len(), 2, "{:?}", doc.corrupt);
        assert_eq!(doc.next_seq, 4);
    }
}
