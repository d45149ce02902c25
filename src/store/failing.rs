//! A store that fails on demand: a [`DocStore`] wrapper whose appends, compactions and flushes
//! can be switched to fail, to test how rooms and the server handle a store that refuses
//! writes (a full disk) and recovers. Used by the unit tests and `tests/store_failures.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;

use super::{DocStore, RoomStats, StoredDoc};
use crate::error::StoreError;

/// Wraps a store; every operation passes through unless its switch is on.
pub struct FailingStore {
    inner: Arc<dyn DocStore>,
    append: AtomicBool,
    compact: AtomicBool,
    flush: AtomicBool,
    /// Operations refused so far.
    refused: AtomicU64,
}

impl std::fmt::Debug for FailingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailingStore").finish_non_exhaustive()
    }
}

impl FailingStore {
    pub fn new(inner: Arc<dyn DocStore>) -> FailingStore {
        FailingStore {
            inner,
            append: AtomicBool::new(false),
            compact: AtomicBool::new(false),
            flush: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        }
    }

    /// Makes appends fail (`true`) or pass again.
    pub fn fail_appends(&self, fail: bool) {
        self.append.store(fail, Ordering::SeqCst);
    }

    /// Makes compactions fail (`true`) or pass again.
    pub fn fail_compactions(&self, fail: bool) {
        self.compact.store(fail, Ordering::SeqCst);
    }

    /// Makes flushes fail (`true`) or pass again.
    pub fn fail_flushes(&self, fail: bool) {
        self.flush.store(fail, Ordering::SeqCst);
    }

    /// Makes every write fail, as a full disk does, or pass again.
    pub fn fail_everything(&self, fail: bool) {
        self.fail_appends(fail);
        self.fail_compactions(fail);
        self.fail_flushes(fail);
    }

    /// How many operations were refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    fn check(&self, switch: &AtomicBool, op: &'static str) -> Result<(), StoreError> {
        if switch.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Injected { op });
        }
        Ok(())
    }
}

impl DocStore for FailingStore {
    fn load(&self, room: &str) -> Result<StoredDoc, StoreError> {
        self.inner.load(room)
    }

    fn append(&self, room: &str, seq: u64, updates: &[Bytes]) -> Result<(), StoreError> {
        self.check(&self.append, "append")?;
        self.inner.append(room, seq, updates)
    }

    fn compact(
        &self,
        room: &str,
        snapshot: &[u8],
        through_seq: u64,
        last_change_ms: u64,
    ) -> Result<(), StoreError> {
        self.check(&self.compact, "compact")?;
        self.inner
            .compact(room, snapshot, through_seq, last_change_ms)
    }

    fn delete(&self, room: &str) -> Result<(), StoreError> {
        self.inner.delete(room)
    }

    fn deleted_at(&self, room: &str) -> Result<Option<u64>, StoreError> {
        self.inner.deleted_at(room)
    }

    fn undelete(&self, room: &str) -> Result<bool, StoreError> {
        self.inner.undelete(room)
    }

    fn tombstones(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.tombstones()
    }

    fn flush(&self) -> Result<usize, StoreError> {
        self.check(&self.flush, "flush")?;
        self.inner.flush()
    }

    fn stats(&self, room: &str) -> Result<RoomStats, StoreError> {
        self.inner.stats(room)
    }

    fn rooms(&self) -> Result<Vec<String>, StoreError> {
        self.inner.rooms()
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner.size_on_disk()
    }

    /// Fails while appends or flushes do: a disk that refuses them refuses the probe too.
    fn check_writable(&self) -> Result<(), StoreError> {
        self.check(&self.append, "check")?;
        self.check(&self.flush, "check")?;
        self.inner.check_writable()
    }

    fn recover(&self) -> Result<(), StoreError> {
        self.check_writable()?;
        self.inner.recover()
    }
}
