//! A room's persistence: sequence numbers, batching applied updates into log entries,
//! compaction into a snapshot, the size estimate behind `--max-doc-bytes`, and deletion that no
//! late write can undo. The room's lock guards the bookkeeping ([`Log`]); the store is called
//! only after the lock is released.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use yrs::Doc;

use super::{Room, RoomConfig, document};
use crate::store::{StoreError, StoreOp};

/// Applied updates a room keeps before writing them to the store as one log entry (see
/// [`Room::write_log`]); the server's flusher writes whatever is left before each flush, so
/// the durability window is unchanged. One sled insert per entry instead of one per keystroke:
/// a sled insert costs about as much as the rest of applying a typing-sized update.
pub(super) const MAX_UNWRITTEN_UPDATES: usize = 256;

/// Bytes of applied updates a room keeps before writing them to the store.
///
/// Small on purpose: sled 0.34 splits a leaf past 16 entries and writes a node larger than a
/// quarter segment (128 KiB) as a separate "blob" file. If creating that file fails (the
/// directory gone, no space, no file descriptors left), sled returns the error but leaks its
/// reservation in the log buffer (`logger.rs`, `reserve_inner`: `encapsulate(..)?` after the
/// writer count was raised), and every later flush waits for that buffer forever. Entries of at
/// most 4 KiB keep a leaf of 17 of them well below the blob threshold.
pub(super) const MAX_UNWRITTEN_BYTES: usize = 4 << 10;

/// Updates taken for one log entry, with the entry's sequence number.
pub(super) type Batch = (u64, Vec<Bytes>);

/// What the room knows of its stored log. Guarded by the room's lock.
pub(super) struct Log {
    /// Sequence number of the next log entry written to the store.
    next_seq: u64,
    /// Updates applied (and broadcast) but not yet written to the store, in order. Written as
    /// one log entry by the flusher before each flush, or by the applying writer once there
    /// are too many: one store insert per burst instead of one per update.
    unwritten: Vec<Bytes>,
    unwritten_bytes: usize,
    /// Updates and bytes appended since the last compaction.
    pub(super) updates: u64,
    bytes: u64,
    /// Size of the last snapshot (uncompressed v1); with `bytes`, the document's size.
    snapshot_bytes: u64,
    /// The store's failure generation when this room last wrote a full snapshot (or joined the
    /// store's health). While it differs from the current one, a failure may have left a hole
    /// in the room's log, and the next write must be a snapshot (see [`crate::store::health`]).
    pub(super) snapshot_generation: u64,
}

/// The outcome of [`Log::check_size`].
pub(super) enum SizeCheck {
    /// The update fits; `measured` says the estimate was replaced by the real size, after
    /// which the room should compact.
    Fits {
        measured: bool,
    },
    TooLarge {
        measured: bool,
    },
}

impl Log {
    /// The log as the store left it: the next sequence number, how many updates and bytes of
    /// log follow the snapshot, and the snapshot's size.
    pub(super) fn new(next_seq: u64, updates: u64, bytes: u64, snapshot_bytes: u64) -> Log {
        Log {
            next_seq,
            unwritten: Vec::new(),
            unwritten_bytes: 0,
            updates,
            bytes,
            snapshot_bytes,
            snapshot_generation: 0,
        }
    }

    /// The stored document's size: the last snapshot plus the log since.
    pub(super) fn doc_bytes(&self) -> u64 {
        self.snapshot_bytes + self.bytes
    }

    /// Whether an update of `len` bytes keeps the document within `max_doc_bytes`. The cheap
    /// estimate (last snapshot plus the log since) overcounts once the log holds many small
    /// edits; past the limit, the real encoding is measured and the document counted at that
    /// size from now on (compacting makes it exact again).
    pub(super) fn check_size(&mut self, doc: &Doc, len: usize, max_doc_bytes: u64) -> SizeCheck {
        if self.doc_bytes() + len as u64 <= max_doc_bytes {
            return SizeCheck::Fits { measured: false };
        }
        if self.bytes == 0 {
            return SizeCheck::TooLarge { measured: false };
        }
        let actual = document::encode_whole(doc).map_or(self.doc_bytes(), |s| s.len() as u64);
        self.snapshot_bytes = actual;
        self.bytes = 0;
        if actual + len as u64 <= max_doc_bytes {
            SizeCheck::Fits { measured: true }
        } else {
            SizeCheck::TooLarge { measured: true }
        }
    }

    /// Records an applied update. Returns a batch to write at once when enough has piled up.
    pub(super) fn record(&mut self, delta: Bytes) -> Option<Batch> {
        self.updates += 1;
        self.bytes += delta.len() as u64;
        self.unwritten_bytes += delta.len();
        self.unwritten.push(delta);
        if self.unwritten.len() >= MAX_UNWRITTEN_UPDATES
            || self.unwritten_bytes >= MAX_UNWRITTEN_BYTES
        {
            self.take_unwritten()
        } else {
            None
        }
    }

    /// Whether the log has grown enough to be folded into a snapshot.
    pub(super) fn compaction_due(&self, config: &RoomConfig) -> bool {
        self.updates >= config.compact_log_updates || self.bytes >= config.compact_log_bytes
    }

    /// Takes the unwritten updates, numbered as the next log entry, if there are any.
    fn take_unwritten(&mut self) -> Option<Batch> {
        if self.unwritten.is_empty() {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        self.unwritten_bytes = 0;
        Some((seq, std::mem::take(&mut self.unwritten)))
    }
}

impl Room {
    /// Writes what the room applied since its last write: the unwritten updates as one log
    /// entry or, when a store failure since the room's last snapshot may have left a hole in
    /// its log, the whole document as a snapshot that covers the hole (later log entries would
    /// otherwise depend on a missing one and be refused when the room loads). Blocking; the
    /// flusher calls it for every room before each flush, so that what was applied is durable
    /// within the flush window, and again after a failure until the store recovers.
    pub fn write_log(&self) -> Result<(), StoreError> {
        let batch = {
            let mut state = self.state();
            if state.deleted {
                return Ok(());
            }
            // A broken room's document is in doubt: never a snapshot of it.
            if state.log.snapshot_generation != self.health.generation() && !self.is_broken() {
                None
            } else {
                Some(state.log.take_unwritten())
            }
        };
        match batch {
            None => self.compact(),
            Some(batch) => batch.map_or(Ok(()), |batch| self.write_batch(batch)),
        }
    }

    /// Appends one taken batch. On failure the updates stay in the document, the store is
    /// marked failing, and the failure's new generation makes the next write a snapshot.
    pub(super) fn write_batch(&self, (seq, updates): Batch) -> Result<(), StoreError> {
        let started = Instant::now();
        let written = self.store.append(&self.name, seq, &updates);
        self.metrics
            .persist_write_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(error) = &written {
            self.health.failed(StoreOp::Append, Some(&self.name), error);
        }
        written
    }

    /// Runs a compaction on the blocking pool unless one is already scheduled (inline when
    /// there is no runtime, as in the admin commands). While the store is failing, its
    /// recovery writes every room (see [`Room::write_log`]) instead.
    pub fn schedule_compaction(self: &Arc<Self>) {
        if self.health.is_failing() || self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let room = self.clone();
        let compact = move || {
            if let Err(error) = room.compact() {
                tracing::error!(room = %room.name, %error, "compaction failed");
            }
            room.compacting.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(compact)),
            Err(_) => compact(),
        }
    }

    /// Writes the whole document as a snapshot and drops the log entries it covers. Blocking.
    ///
    /// The document is encoded under the state lock (a read transaction); compressing and
    /// writing happen after it is released, so edits keep flowing. Updates appended meanwhile
    /// have higher sequence numbers and stay in the log. The log counters only drop by what
    /// the snapshot covers once it is written: a failed compaction is retried.
    ///
    /// After a store failure since the room's last snapshot the compaction is forced (even
    /// with an empty log: the store may have dropped writes it had not flushed) and covers
    /// every sequence number used so far, which closes any hole in the log.
    pub fn compact(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self
            .compaction_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let generation = self.health.generation();
        let (unwritten, snapshot, through_seq, last_change_ms, covered) = {
            let mut state = self.state();
            let forced = state.log.snapshot_generation != generation;
            if (state.log.updates == 0 && !forced) || state.deleted || self.is_broken() {
                return Ok(());
            }
            // The unwritten updates get their sequence number under the same lock as the
            // snapshot that includes them, so `through_seq` covers them: had they been written
            // later under a number above it, they would merely be applied twice on load; had
            // they been numbered below it after the snapshot, newer updates could hide there.
            // A forced snapshot does not write them at all: it covers them.
            let unwritten = state.log.take_unwritten().filter(|_| !forced);
            let Some(snapshot) = document::encode_whole(state.awareness.doc()) else {
                self.take_out_of_service(&mut state, "a panic in yrs while encoding a snapshot");
                return Err(StoreError::Task("encoding the snapshot panicked".into()));
            };
            // A snapshot covers the sequence numbers below `next_seq`; reserve number 0 for one
            // written before any log entry, so that no later entry can hide under it.
            let last_change_ms = self.changes.last_change_ms();
            let log = &mut state.log;
            log.next_seq = log.next_seq.max(1);
            let covered = (log.updates, log.bytes);
            (
                unwritten,
                snapshot,
                log.next_seq - 1,
                last_change_ms,
                covered,
            )
        };
        // Written first so that they are stored even if the compaction fails; it then removes
        // them with the rest of the covered log.
        if let Some(batch) = unwritten {
            self.write_batch(batch)?;
        }
        if let Err(error) = self
            .store
            .compact(&self.name, &snapshot, through_seq, last_change_ms)
        {
            self.health
                .failed(StoreOp::Compact, Some(&self.name), &error);
            return Err(error);
        }
        {
            let log = &mut self.state().log;
            log.updates = log.updates.saturating_sub(covered.0);
            log.bytes = log.bytes.saturating_sub(covered.1);
            log.snapshot_bytes = snapshot.len() as u64;
            // A failure since `generation` was read keeps the next write a snapshot.
            log.snapshot_generation = generation;
        }
        self.metrics.compactions.inc();
        tracing::debug!(room = %self.name, bytes = snapshot.len(), through_seq, "compacted");
        Ok(())
    }

    /// Deletes the room: every member's session ends (closed with
    /// [`close_code::ROOM_DELETED`](crate::connection::close_code::ROOM_DELETED), which stock
    /// clients do not retry), nothing more is applied, and the store replaces its data with a
    /// tombstone. Blocking. A write that took its updates before this and reaches the store
    /// after it is refused there (see [`crate::store::RoomStore::delete`]); holding the
    /// compaction lock keeps a running compaction from even trying.
    pub fn delete(&self) -> Result<(), StoreError> {
        let _no_compaction = self
            .compaction_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        {
            let mut state = self.state();
            state.deleted = true;
            state.log.unwritten.clear();
            state.members.delete_all();
        }
        self.store.delete(&self.name)
    }
}
