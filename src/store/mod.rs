//! Document storage: the [`RoomStore`] trait, its sled implementation (the embedded default)
//! and its PostgreSQL one (a store several nodes can share), chosen by [`open`].
//!
//! A room's stored state is a snapshot (a full v1 update, compressed) plus an append-only log of
//! the updates applied since. Loading applies the snapshot, then the log in order. Compaction
//! replaces the snapshot and removes the log entries it covers, in one atomic batch.
//!
//! The trait is synchronous: sled's operations are in-memory until flushed, and callers run the
//! slow ones (load, compaction, flush) on the blocking pool; the PostgreSQL store's every call
//! is a round trip, which is why the server calls it only there.

mod failing;
pub mod health;
mod postgres_store;
mod sled_store;

pub use failing::{FailingStore, StoreCall};
pub use health::{StoreHealth, StoreOp};
pub use postgres_store::PostgresStore;
pub use sled_store::{SledStore, encode_log_entry};
// The key layout, for the fuzz target that plants raw records (`crate::fuzzing`).
pub(crate) use sled_store::{encode_snapshot, log_key, room_prefix, snapshot_key};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use thiserror::Error;

/// Which store to use: `--store sled:DIR` or `--store postgres://USER@HOST:PORT/DB` (with an
/// optional `?schema=NAME`, default `ycord`); without `--store`, sled in `--data-dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Sled(PathBuf),
    Postgres(String),
}

impl StoreSpec {
    /// `spec` as given to `--store`, or sled in `data_dir` when there is none.
    pub fn parse(spec: Option<&str>, data_dir: &Path) -> Result<StoreSpec, StoreError> {
        match spec {
            None => Ok(StoreSpec::Sled(data_dir.to_owned())),
            Some(spec) if spec.starts_with("postgres://") || spec.starts_with("postgresql://") => {
                Ok(StoreSpec::Postgres(spec.to_owned()))
            }
            Some(spec) => match spec.strip_prefix("sled:") {
                Some(dir) if !dir.is_empty() => Ok(StoreSpec::Sled(PathBuf::from(dir))),
                _ => Err(StoreError::BadSpec(spec.to_owned())),
            },
        }
    }

    /// Where the store is, for messages (a PostgreSQL URL without its password).
    pub fn describe(&self) -> String {
        match self {
            StoreSpec::Sled(dir) => format!("sled:{}", dir.display()),
            StoreSpec::Postgres(url) => match url.split_once('@') {
                Some((credentials, rest)) => match credentials.rsplit_once(':') {
                    Some((user, _password)) if !user.ends_with('/') => format!("{user}:***@{rest}"),
                    _ => url.clone(),
                },
                None => url.clone(),
            },
        }
    }
}

/// Opens the store `spec` names.
pub fn open(spec: &StoreSpec) -> Result<Arc<dyn RoomStore>, StoreError> {
    Ok(match spec {
        StoreSpec::Sled(dir) => Arc::new(SledStore::open(dir)?),
        StoreSpec::Postgres(url) => Arc::new(PostgresStore::open(url)?),
    })
}

/// A failure of the document store.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("--store {0:?} is neither sled:DIR nor postgres://USER@HOST:PORT/DB")]
    BadSpec(String),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("storage task failed: {0}")]
    Task(String),
    /// The room has a tombstone: writes to it are refused until it is undeleted.
    #[error("room {0:?} was deleted")]
    RoomDeleted(String),
    /// A write failed earlier and the store has not recovered yet: writes are refused.
    #[error("the store refuses writes until it recovers from an earlier failure")]
    Failing,
    /// A write refused on purpose by [`crate::store::FailingStore`].
    #[error("{op} refused by the failing test store")]
    Injected { op: &'static str },
    /// Refused before writing: too little free disk space for a large value (see
    /// `SledStore`'s blob guard).
    #[error("{needed} bytes of free disk space needed for a {len}-byte value, {available} free")]
    NoSpace {
        len: usize,
        needed: u64,
        available: u64,
    },
    /// A store operation did not finish in time (a flush wedged on a full disk).
    #[error("{op} did not finish within {seconds} s")]
    TimedOut { op: &'static str, seconds: u64 },
}

/// What the store holds for one room.
#[derive(Debug, Default)]
pub struct StoredDoc {
    /// The decompressed v1 snapshot, if the room was ever compacted.
    pub snapshot: Option<Vec<u8>>,
    /// The updates of the log entries written after the snapshot, in the order applied.
    pub log: Vec<Vec<u8>>,
    /// The sequence number the next appended update must use.
    pub next_seq: u64,
    /// Records that could not be read. They are skipped: the rest of the room still loads.
    pub corrupt: Vec<StoreError>,
    /// When the document last changed, as recorded with the snapshot (ms since the epoch).
    pub last_change_ms: Option<u64>,
}

/// Sizes of one stored room, for operators and the admin tools.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoomStats {
    /// Bytes of the stored (compressed) snapshot.
    pub snapshot_bytes: u64,
    pub log_entries: u64,
    pub log_bytes: u64,
    /// When the document last changed, as recorded with the snapshot (ms since the epoch).
    pub last_change_ms: Option<u64>,
}

/// Persistence for room documents. Implementations must make `compact` atomic: a crash leaves
/// either the old snapshot and log or the new ones, never a mix that loses updates. `delete`
/// must be atomic too, and final until `undelete`.
pub trait RoomStore: Send + Sync + 'static {
    /// Reads a room's snapshot and log. A room never stored loads as empty.
    fn load(&self, room: &str) -> Result<StoredDoc, StoreError>;

    /// Appends one log entry holding `updates` (v1, in the order applied) under sequence
    /// number `seq` (strictly increasing per room). Visible to `load` at once; durable after
    /// the next flush.
    fn append(&self, room: &str, seq: u64, updates: &[Bytes]) -> Result<(), StoreError>;

    /// Replaces the room's snapshot with `snapshot` (a full v1 update that includes every log
    /// entry up to `through_seq`, last changed at `last_change_ms`) and removes those entries,
    /// atomically.
    fn compact(
        &self,
        room: &str,
        snapshot: &[u8],
        through_seq: u64,
        last_change_ms: u64,
    ) -> Result<(), StoreError>;

    /// Removes everything stored for the room and leaves a tombstone, atomically. From then on
    /// `append` and `compact` of the room fail with [`StoreError::RoomDeleted`], also when they
    /// were called before and are still running: a write on its way cannot bring the room
    /// back. Deleting a deleted room changes nothing (the first deletion time stays).
    fn delete(&self, room: &str) -> Result<(), StoreError>;

    /// When the room was deleted (ms since the epoch), if it has a tombstone.
    fn deleted_at(&self, room: &str) -> Result<Option<u64>, StoreError>;

    /// Removes the room's tombstone, so that the name can be used again by a new, empty room.
    /// Returns whether there was one. The tombstone is what refuses writes of the deleted
    /// room: one still on its way (taken before the deletion, and stalled since) would land
    /// in the new room, so remove it only once the deletion is done.
    fn undelete(&self, room: &str) -> Result<bool, StoreError>;

    /// Every deleted room with its deletion time, in key order.
    fn tombstones(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// Makes every write so far durable. Returns the number of bytes written.
    fn flush(&self) -> Result<usize, StoreError>;

    /// Sizes of what is stored for the room.
    fn stats(&self, room: &str) -> Result<RoomStats, StoreError>;

    /// Names of every stored room with a document, in key order (deleted rooms are listed by
    /// `tombstones`).
    fn rooms(&self) -> Result<Vec<String>, StoreError>;

    /// Bytes the store takes on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;

    /// Proves the store accepts writes (readiness probe).
    fn check_writable(&self) -> Result<(), StoreError>;

    /// Called after a write failed, before everything in memory is written again: brings the
    /// store back to a state that can take writes if it needs more than a retry. It may drop
    /// what was written but not flushed (sled reopens its database); the caller rewrites that.
    fn recover(&self) -> Result<(), StoreError> {
        self.check_writable()
    }
}
