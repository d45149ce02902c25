//! A store that fails or waits on demand: a [`RoomStore`] wrapper whose appends, compactions
//! and flushes can be switched to fail, and which runs a hook before every operation (to hold
//! a write on its way, slow loads down, count them) and can rewrite what loads return. It tests
//! how rooms and the server handle a store that refuses writes (a full disk) and recovers, and
//! is the one wrapper the unit tests, `tests/store_failures.rs` and the benches share.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;

use super::{RoomStats, RoomStore, StoreError, StoredDoc};

/// The calls a [`FailingStore`] hook sees, before they reach the inner store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreCall {
    Load,
    Append,
    Compact,
    Delete,
    Flush,
}

type Hook = Box<dyn Fn(StoreCall, &str) + Send + Sync>;
type LoadMap = Box<dyn Fn(&str, StoredDoc) -> StoredDoc + Send + Sync>;

/// Wraps a store; every operation passes through unless its switch is on.
pub struct FailingStore {
    inner: Arc<dyn RoomStore>,
    /// Runs before every [`StoreCall`] (with the room's name; empty for a flush).
    before: Option<Hook>,
    /// Rewrites what a load returns.
    map_loads: Option<LoadMap>,
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
    pub fn new(inner: Arc<dyn RoomStore>) -> FailingStore {
        FailingStore {
            inner,
            before: None,
            map_loads: None,
            append: AtomicBool::new(false),
            compact: AtomicBool::new(false),
            flush: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        }
    }

    /// Runs `hook` before every [`StoreCall`] reaches the inner store (it may block, sleep or
    /// count), with the room's name (empty for a flush).
    pub fn before(mut self, hook: impl Fn(StoreCall, &str) + Send + Sync + 'static) -> Self {
        self.before = Some(Box::new(hook));
        self
    }

    /// Passes what every load returns through `map`.
    pub fn map_loads(
        mut self,
        map: impl Fn(&str, StoredDoc) -> StoredDoc + Send + Sync + 'static,
    ) -> Self {
        self.map_loads = Some(Box::new(map));
        self
    }

    fn run_hook(&self, op: StoreCall, room: &str) {
        if let Some(hook) = &self.before {
            hook(op, room);
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

impl RoomStore for FailingStore {
    fn load(&self, room: &str) -> Result<StoredDoc, StoreError> {
        self.run_hook(StoreCall::Load, room);
        let stored = self.inner.load(room)?;
        Ok(match &self.map_loads {
            Some(map) => map(room, stored),
            None => stored,
        })
    }

    fn append(&self, room: &str, seq: u64, updates: &[Bytes]) -> Result<(), StoreError> {
        self.run_hook(StoreCall::Append, room);
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
        self.run_hook(StoreCall::Compact, room);
        self.check(&self.compact, "compact")?;
        self.inner
            .compact(room, snapshot, through_seq, last_change_ms)
    }

    fn delete(&self, room: &str) -> Result<(), StoreError> {
        self.run_hook(StoreCall::Delete, room);
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
        self.run_hook(StoreCall::Flush, "");
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
