//! The room registry: every room is loaded once, shared by its connections, and evicted when
//! idle.
//!
//! Each room name maps to a slot guarded by an async mutex. The first joiner loads the room
//! while holding the slot; everyone who joins meanwhile (a reconnect storm after a restart)
//! waits on the same slot and then shares the loaded room, so a room is read from storage once
//! and nobody is answered before it is fully loaded. Eviction takes the same slot lock, so it
//! cannot race a join: a room is evicted only while it has no connection, and a joiner that
//! waited on an evicted slot starts over with a fresh one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex as AsyncMutex, Semaphore};
use tokio::task::JoinHandle;

use thiserror::Error;

use crate::metrics::{Metrics, Reason};
use crate::room::{ChangeObserver, Room, RoomConfig};
use crate::store::{RoomStore, StoreError, StoreHealth, StoreOp};
use crate::webhooks::Webhooks;

/// Why a connection could not join a room.
#[derive(Debug, Error)]
pub enum JoinError {
    #[error("loading the room failed: {0}")]
    Store(#[from] StoreError),
    #[error("too many rooms in memory and none idle")]
    TooManyRooms,
    #[error("the room has reached its connection limit")]
    RoomFull,
    /// The room was deleted (it has a tombstone); see `RoomStore::delete`.
    #[error("the room was deleted")]
    RoomDeleted {
        /// When, in ms since the epoch.
        deleted_at_ms: u64,
    },
}

enum Slot {
    /// Nobody has loaded the room yet (or loading failed).
    Empty,
    Loaded(Arc<Room>),
    /// The room was evicted while this slot was waited on: look it up again.
    Retired,
}

type SharedSlot = Arc<AsyncMutex<Slot>>;

/// All rooms in memory.
pub struct Rooms {
    slots: Mutex<HashMap<Arc<str>, SharedSlot>>,
    store: Arc<dyn RoomStore>,
    config: RoomConfig,
    limits: RoomLimits,
    metrics: Arc<Metrics>,
    /// Told of loads and unloads.
    webhooks: Option<Webhooks>,
    /// What every room tells of its changes (the webhooks, when configured).
    observer: Option<Arc<dyn ChangeObserver>>,
    /// Rooms in memory (slots holding `Loaded`).
    loaded_count: std::sync::atomic::AtomicUsize,
    /// Room loads running at once (see [`max_concurrent_loads`]).
    loads: Semaphore,
    /// Whether the store takes writes; shared with every room.
    health: Arc<StoreHealth>,
    /// When the store's recovery was last attempted (see [`RECOVERY_INTERVAL`]).
    last_recovery: Mutex<Option<Instant>>,
    /// A write round that outlived [`WRITE_ROUND_TIMEOUT`] and still runs on the blocking pool:
    /// no other starts until it ends, so a wedged store holds one thread, not one per tick.
    stuck: Mutex<Option<JoinHandle<Result<usize, StoreError>>>>,
}

/// How often a failing store is asked to recover: each attempt rewrites every loaded room.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);

/// Longest a write round (every room's log, then one flush) may take before the store counts
/// as failing. A disk that stops completing writes would otherwise hold the flusher, and the
/// shutdown, forever without anyone being told.
pub const WRITE_ROUND_TIMEOUT: Duration = Duration::from_secs(10);

/// How many rooms may be loaded at once: twice the cores. A load is mostly CPU (decoding and
/// integrating the document), so more at once only finish later together; each one runs on
/// tokio's blocking pool, which starts a thread, with its stack and malloc arena, per load
/// running. After a restart every client reconnects at once: 200 rooms loading at once
/// started dozens of threads, which showed as ~5 KiB more per room in `ycord-bench idle`.
fn max_concurrent_loads() -> usize {
    std::thread::available_parallelism().map_or(2, |cores| cores.get()) * 2
}

/// Limits the registry enforces.
#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    pub max_rooms: usize,
    pub max_connections_per_room: usize,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms").finish_non_exhaustive()
    }
}

/// A connection's hold on a room: the room stays in memory while it lives.
#[derive(Debug)]
pub struct RoomLease {
    room: Arc<Room>,
}

impl RoomLease {
    pub fn room(&self) -> &Arc<Room> {
        &self.room
    }
}

impl Drop for RoomLease {
    fn drop(&mut self) {
        self.room.remove_connection();
    }
}

impl Rooms {
    pub fn new(
        store: Arc<dyn RoomStore>,
        config: RoomConfig,
        limits: RoomLimits,
        metrics: Arc<Metrics>,
        webhooks: Option<Webhooks>,
    ) -> Self {
        Rooms {
            slots: Mutex::new(HashMap::new()),
            store,
            config,
            limits,
            metrics: metrics.clone(),
            observer: webhooks
                .clone()
                .map(|webhooks| Arc::new(webhooks) as Arc<dyn ChangeObserver>),
            webhooks,
            loaded_count: std::sync::atomic::AtomicUsize::new(0),
            loads: Semaphore::new(max_concurrent_loads()),
            health: Arc::new(StoreHealth::new(metrics.clone())),
            last_recovery: Mutex::new(None),
            stuck: Mutex::new(None),
        }
    }

    /// Whether the store takes writes (readiness, shutdown).
    pub fn health(&self) -> &Arc<StoreHealth> {
        &self.health
    }

    /// Rooms in memory now.
    pub fn loaded_count(&self) -> usize {
        self.loaded_count.load(std::sync::atomic::Ordering::Acquire)
    }

    fn count_loaded(&self, delta: isize) {
        use std::sync::atomic::Ordering;
        if delta > 0 {
            self.loaded_count.fetch_add(1, Ordering::AcqRel);
            self.metrics.rooms_loaded.inc();
        } else {
            self.loaded_count.fetch_sub(1, Ordering::AcqRel);
            self.metrics.rooms_loaded.dec();
        }
    }

    pub fn store(&self) -> &Arc<dyn RoomStore> {
        &self.store
    }

    fn slot(&self, name: &str) -> SharedSlot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(name) {
            return slot.clone();
        }
        let slot = Arc::new(AsyncMutex::new(Slot::Empty));
        slots.insert(Arc::from(name), slot.clone());
        slot
    }

    /// Joins a room, loading it first if it is not in memory. The returned lease counts as a
    /// connection until dropped.
    ///
    /// While the store is failing nobody joins: a client would sync with a room whose changes
    /// may not be on disk and take that for saved. It retries, and joins once the store
    /// recovered. A broken room (see [`Room::is_broken`]) is unloaded and loaded again.
    pub async fn join(&self, name: &str) -> Result<RoomLease, JoinError> {
        loop {
            if self.health.is_failing() {
                return Err(JoinError::Store(StoreError::Failing));
            }
            let slot = self.slot(name);
            let mut guard = slot.lock().await;
            let room = match &*guard {
                Slot::Retired => continue,
                Slot::Loaded(room) if room.is_broken() => {
                    let room = room.clone();
                    if !self.retire(name, &slot, &mut guard, &room).await {
                        return Err(JoinError::Store(StoreError::Failing));
                    }
                    continue;
                }
                Slot::Loaded(room) => {
                    self.metrics
                        .room_lookups
                        .get_or_create(&Reason { reason: "hit" })
                        .inc();
                    room.clone()
                }
                Slot::Empty => {
                    self.metrics
                        .room_lookups
                        .get_or_create(&Reason { reason: "miss" })
                        .inc();
                    // Under the slot lock, like deletion: a join either loads the room before
                    // it is deleted (and is closed by the deletion) or sees the tombstone.
                    if let Some(deleted_at_ms) = self.deleted_at(name).await? {
                        return Err(JoinError::RoomDeleted { deleted_at_ms });
                    }
                    if self.loaded_count() >= self.limits.max_rooms {
                        self.evict_idle(self.loaded_count() + 1 - self.limits.max_rooms)
                            .await;
                        if self.loaded_count() >= self.limits.max_rooms {
                            return Err(JoinError::TooManyRooms);
                        }
                    }
                    let room = self.load(name).await?;
                    *guard = Slot::Loaded(room.clone());
                    self.count_loaded(1);
                    room
                }
            };
            if room.connection_count() >= self.limits.max_connections_per_room {
                return Err(JoinError::RoomFull);
            }
            room.add_connection();
            return Ok(RoomLease { room });
        }
    }

    /// Unloads up to `wanted` rooms without connections, longest idle first, to make space.
    async fn evict_idle(&self, wanted: usize) {
        let mut idle: Vec<(std::time::Duration, Arc<str>, SharedSlot)> = Vec::new();
        for (name, slot) in self.all_slots() {
            if let Ok(guard) = slot.try_lock() {
                if let Slot::Loaded(room) = &*guard {
                    if let Some(elapsed) = room.idle_for() {
                        idle.push((elapsed, name, slot.clone()));
                    }
                }
            }
        }
        idle.sort_by_key(|(elapsed, _, _)| std::cmp::Reverse(*elapsed));
        for (_, name, slot) in idle.into_iter().take(wanted) {
            let Ok(mut guard) = slot.try_lock() else {
                continue;
            };
            if let Slot::Loaded(room) = &*guard {
                if room.idle_for().is_some() {
                    let room = room.clone();
                    let _ = self.retire(&name, &slot, &mut guard, &room).await;
                }
            }
        }
    }

    fn all_slots(&self) -> Vec<(Arc<str>, SharedSlot)> {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, slot)| (name.clone(), slot.clone()))
            .collect()
    }

    /// Compacts, flushes and forgets a room whose slot lock the caller holds. A room whose
    /// data could not be written stays loaded (returns `false`): memory is the only place that
    /// holds it until the store recovers.
    async fn retire(
        &self,
        name: &str,
        slot: &SharedSlot,
        guard: &mut Slot,
        room: &Arc<Room>,
    ) -> bool {
        if !self.unload(room).await {
            return false;
        }
        *guard = Slot::Retired;
        self.forget(name, slot);
        self.count_loaded(-1);
        self.metrics.room_evictions.inc();
        tracing::debug!(room = %name, "room unloaded");
        if let Some(webhooks) = &self.webhooks {
            webhooks.unloaded(room.name());
        }
        true
    }

    async fn load(&self, name: &str) -> Result<Arc<Room>, StoreError> {
        let name: Arc<str> = Arc::from(name);
        let store = self.store.clone();
        let config = self.config.clone();
        let metrics = self.metrics.clone();
        let observer = self.observer.clone();
        let _permit = self
            .loads
            .acquire()
            .await
            .map_err(|error| StoreError::Task(error.to_string()))?;
        let started = std::time::Instant::now();
        let health = self.health.clone();
        let room = tokio::task::spawn_blocking(move || {
            Room::load(name, store, config, metrics, observer)
                .map(|room| room.with_store_health(health))
        })
        .await
        .map_err(|error| StoreError::Task(error.to_string()))??;
        tracing::debug!(room = %room.name(), elapsed_ms = started.elapsed().as_millis() as u64, "room loaded");
        if let Some(webhooks) = &self.webhooks {
            webhooks.loaded(room.name());
        }
        Ok(Arc::new(room))
    }

    /// Rooms currently in memory. Waits for rooms being loaded.
    pub async fn loaded(&self) -> Vec<Arc<Room>> {
        let slots: Vec<SharedSlot> = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut rooms = Vec::with_capacity(slots.len());
        for slot in slots {
            if let Slot::Loaded(room) = &*slot.lock().await {
                rooms.push(room.clone());
            }
        }
        rooms
    }

    /// Periodic upkeep: expires stale awareness states and evicts rooms idle for `idle`.
    pub async fn sweep(&self, idle: Duration) {
        for (name, slot) in self.all_slots() {
            // A slot that is busy is being loaded or joined: not idle, look again next time.
            let Ok(mut guard) = slot.try_lock() else {
                continue;
            };
            let room = match &*guard {
                Slot::Loaded(room) => room.clone(),
                Slot::Empty => {
                    // A load failed and nobody retried: forget the name.
                    *guard = Slot::Retired;
                    self.forget(&name, &slot);
                    continue;
                }
                Slot::Retired => continue,
            };
            room.expire_awareness();
            room.check_editor();
            // A failing store's rooms stay: their data may be nowhere else.
            if room.idle_for().is_some_and(|elapsed| elapsed >= idle) && !self.health.is_failing() {
                let _ = self.retire(&name, &slot, &mut guard, &room).await;
            }
        }
    }

    /// Compacts and flushes a room that is leaving memory (a broken one: writes its log, never
    /// a snapshot of its document). Blocking work on the blocking pool. Returns whether the
    /// room's data is on disk, so that it may leave.
    async fn unload(&self, room: &Arc<Room>) -> bool {
        if self.health.is_failing() {
            return false;
        }
        let room = room.clone();
        let store = self.store.clone();
        let health = self.health.clone();
        let result = tokio::task::spawn_blocking(move || {
            if room.is_broken() {
                room.write_log()?;
            } else {
                room.compact()?;
            }
            store.flush().inspect_err(|error| {
                health.failed(StoreOp::Flush, Some(room.name()), error);
            })
        })
        .await;
        match result {
            Ok(Ok(_)) => true,
            Ok(Err(error)) => {
                tracing::error!(%error, "writing a room on unload failed; it stays in memory");
                false
            }
            Err(error) => {
                tracing::error!(%error, "unload task failed; the room stays in memory");
                false
            }
        }
    }

    fn forget(&self, name: &str, slot: &SharedSlot) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if slots
            .get(name)
            .is_some_and(|current| Arc::ptr_eq(current, slot))
        {
            slots.remove(name);
        }
    }

    /// When the room was deleted, if it has a tombstone. Blocking read on the blocking pool.
    pub async fn deleted_at(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let store = self.store.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || store.deleted_at(&name))
            .await
            .map_err(|error| StoreError::Task(error.to_string()))?
    }

    /// Deletes a room, whether or not it is in memory: closes its sockets and replaces its
    /// stored data with a tombstone (see [`RoomStore::delete`]). Joins are refused from then
    /// on, until [`Rooms::undelete`].
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let slot = self.slot(name);
        let mut guard = slot.lock().await;
        let room = match &*guard {
            Slot::Loaded(room) => Some(room.clone()),
            _ => None,
        };
        let store = self.store.clone();
        let owned_name = name.to_owned();
        let deleting_room = room.clone();
        tokio::task::spawn_blocking(move || match deleting_room {
            Some(room) => room.delete(),
            None => store.delete(&owned_name),
        })
        .await
        .map_err(|error| StoreError::Task(error.to_string()))??;
        if room.is_some() {
            self.count_loaded(-1);
        }
        *guard = Slot::Retired;
        self.forget(name, &slot);
        Ok(())
    }

    /// Removes a deleted room's tombstone: the name can be joined again, and starts as an
    /// empty document. Returns whether the room was deleted.
    pub async fn undelete(&self, name: &str) -> Result<bool, StoreError> {
        let slot = self.slot(name);
        let _no_join = slot.lock().await;
        let store = self.store.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || store.undelete(&name))
            .await
            .map_err(|error| StoreError::Task(error.to_string()))?
    }

    /// Writes every loaded room's unwritten updates (see [`Room::write_log`]) and flushes the
    /// store: everything applied so far becomes durable. Returns the bytes flushed. A room
    /// whose slot is busy at this moment (a join holds it for microseconds; eviction and
    /// deletion write or discard the log themselves) is left for the next flush.
    ///
    /// While the store is failing, this is its recovery (at most every [`RECOVERY_INTERVAL`]):
    /// the store recovers ([`RoomStore::recover`]), every loaded room writes its whole document
    /// as a snapshot, and one flush; the store is healthy again once all of that succeeded
    /// without a new failure meanwhile.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let failing = self.health.is_failing();
        if failing {
            let mut last = self
                .last_recovery
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < RECOVERY_INTERVAL) {
                return Err(StoreError::Failing);
            }
            *last = Some(Instant::now());
        }
        let generation = self.health.generation();
        let rooms: Vec<Arc<Room>> = if failing {
            // Every room, waiting for busy slots: the store is healthy only once all are written.
            self.loaded().await
        } else {
            self.all_slots()
                .iter()
                .filter_map(|(_, slot)| match &*slot.try_lock().ok()? {
                    Slot::Loaded(room) => Some(room.clone()),
                    _ => None,
                })
                .collect()
        };
        let flushed = self.write_round(rooms, failing).await?;
        if failing && self.health.recovered(generation) {
            tracing::info!("store recovered");
        }
        Ok(flushed)
    }

    /// Writes every loaded room (see [`Room::write_log`]) and flushes the store once: the
    /// shutdown path, after nothing is applied any more. Rooms stay loaded.
    ///
    /// Once that is durable, rooms with a log are compacted (so that the next start loads
    /// snapshots) and flushed again, for at most [`WRITE_ROUND_TIMEOUT`]: nothing depends on
    /// it, and a room not compacted in time keeps its log.
    pub async fn persist_all(&self) -> Result<(), StoreError> {
        let generation = self.health.generation();
        let failing = self.health.is_failing();
        let rooms = self.loaded().await;
        self.write_round(rooms.clone(), failing).await?;
        self.health.recovered(generation);
        let store = self.store.clone();
        let deadline = Instant::now() + WRITE_ROUND_TIMEOUT;
        let compaction = tokio::task::spawn_blocking(move || {
            for room in &rooms {
                if Instant::now() >= deadline {
                    tracing::info!("compaction at shutdown stopped at its deadline");
                    break;
                }
                if let Err(error) = room.compact() {
                    tracing::warn!(room = %room.name(), %error, "compaction at shutdown failed; the log is on disk");
                }
            }
            store.flush()
        });
        match tokio::time::timeout(WRITE_ROUND_TIMEOUT + Duration::from_secs(1), compaction).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(error))) => {
                tracing::warn!(%error, "flushing the compactions at shutdown failed; the log is on disk")
            }
            Ok(Err(error)) => tracing::warn!(%error, "compaction task at shutdown failed"),
            Err(_) => tracing::warn!("compaction at shutdown did not finish; the log is on disk"),
        }
        Ok(())
    }

    /// One write round on the blocking pool: recover the store first if asked, then every
    /// room's log (or snapshot), then one flush. The first error is returned after every room
    /// had its turn. Bounded by [`WRITE_ROUND_TIMEOUT`].
    async fn write_round(&self, rooms: Vec<Arc<Room>>, recover: bool) -> Result<usize, StoreError> {
        {
            let mut stuck = self.stuck.lock().unwrap_or_else(PoisonError::into_inner);
            if stuck.as_ref().is_some_and(|round| !round.is_finished()) {
                return Err(StoreError::TimedOut {
                    op: "flush",
                    seconds: WRITE_ROUND_TIMEOUT.as_secs(),
                });
            }
            *stuck = None;
        }
        let store = self.store.clone();
        let health = self.health.clone();
        let mut round = tokio::task::spawn_blocking(move || {
            if recover {
                store.recover().inspect_err(|error| {
                    health.failed(StoreOp::Check, None, error);
                })?;
            }
            let mut first_error = None;
            for room in &rooms {
                // The room reported the failure to the store's health.
                if let Err(error) = room.write_log() {
                    first_error.get_or_insert(error);
                }
            }
            let flushed = store.flush().inspect_err(|error| {
                health.failed(StoreOp::Flush, None, error);
            })?;
            first_error.map_or(Ok(flushed), Err)
        });
        match tokio::time::timeout(WRITE_ROUND_TIMEOUT, &mut round).await {
            Ok(result) => result.map_err(|error| StoreError::Task(error.to_string()))?,
            Err(_) => {
                let error = StoreError::TimedOut {
                    op: "flush",
                    seconds: WRITE_ROUND_TIMEOUT.as_secs(),
                };
                self.health.failed(StoreOp::Flush, None, &error);
                *self.stuck.lock().unwrap_or_else(PoisonError::into_inner) = Some(round);
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::room::ApplyError;
    use crate::store::{FailingStore, SledStore, StoreCall};

    fn rooms_on(store: Arc<dyn RoomStore>) -> Rooms {
        let config = RoomConfig::without_limits();
        let limits = RoomLimits {
            max_rooms: 1000,
            max_connections_per_room: 10,
        };
        Rooms::new(store, config, limits, Arc::new(Metrics::new()), None)
    }

    /// An update large enough that applying it writes it to the store at once.
    fn large_insert() -> Vec<u8> {
        use yrs::{Doc, Text, Transact};
        let doc = Doc::new();
        let text = doc.get_or_insert_text("text");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, &"late ".repeat(4000));
        txn.encode_update_v1()
    }

    /// An append that took its updates before the room was deleted and reaches the store after
    /// it is refused there: the room stays deleted, with nothing stored, across a reload.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_taken_before_a_deletion_cannot_bring_the_room_back() {
        // Appends stop on their way, before they reach sled, until released: what a busy disk
        // or a slow thread does to a write taken before a deletion.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (held_tx, release_rx) = (Mutex::new(held_tx), Mutex::new(release_rx));
        let inner = SledStore::temporary().unwrap();
        let store = Arc::new(
            FailingStore::new(Arc::new(inner.clone())).before(move |op, _| {
                if op == StoreCall::Append {
                    let _ = held_tx.lock().unwrap().send(());
                    let _ = release_rx.lock().unwrap().recv();
                }
            }),
        );
        let rooms = rooms_on(store.clone());
        let lease = rooms.join("doomed").await.unwrap();
        let room = lease.room().clone();
        let writer = std::thread::spawn(move || room.apply_update(&large_insert()));
        // The writer has applied the update and holds its batch on the way to the store.
        tokio::task::spawn_blocking(move || held_rx.recv().unwrap())
            .await
            .unwrap();
        rooms.delete("doomed").await.unwrap();
        release_tx.send(()).unwrap();
        let written = tokio::task::spawn_blocking(move || writer.join().unwrap())
            .await
            .unwrap();
        assert!(
            matches!(
                written,
                Err(ApplyError::Store(StoreError::RoomDeleted(ref name))) if name == "doomed"
            ),
            "{written:?}"
        );
        drop(lease);
        let stored = inner.load("doomed").unwrap();
        assert!(
            stored.snapshot.is_none() && stored.log.is_empty(),
            "the late write landed: {stored:?}"
        );
        assert!(inner.rooms().unwrap().is_empty());
        // A join after the deletion is refused, and nothing loads.
        let joined = rooms.join("doomed").await;
        assert!(
            matches!(joined, Err(JoinError::RoomDeleted { deleted_at_ms }) if deleted_at_ms > 0),
            "{joined:?}"
        );
        // Removing the tombstone lets the name be used again, by an empty room.
        assert!(rooms.undelete("doomed").await.unwrap());
        let lease = rooms.join("doomed").await.unwrap();
        assert_eq!(lease.room().encode_state(), vec![0, 0]);
        assert!(!rooms.undelete("doomed").await.unwrap());
    }

    fn insert(text: &str) -> Vec<u8> {
        use yrs::{Text, Transact};
        let doc = yrs::Doc::new();
        let root = doc.get_or_insert_text("text");
        let mut txn = doc.transact_mut();
        root.insert(&mut txn, 0, text);
        txn.encode_update_v1()
    }

    /// The flush that follows a failure is the recovery; it may run once a second.
    async fn recover(rooms: &Rooms) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while rooms.flush().await.is_err() || rooms.health().is_failing() {
            assert!(std::time::Instant::now() < deadline, "no recovery");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An idle room whose data could not be flushed stays in memory (the only place that holds
    /// it) until the store recovers, then leaves with everything written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_room_whose_data_is_not_on_disk_is_not_unloaded() {
        let store = Arc::new(FailingStore::new(Arc::new(SledStore::temporary().unwrap())));
        let rooms = rooms_on(store.clone());
        let lease = rooms.join("doc").await.unwrap();
        lease.room().apply_update(&insert("precious")).unwrap();
        drop(lease);
        store.fail_flushes(true);
        rooms.sweep(Duration::ZERO).await;
        assert_eq!(rooms.loaded_count(), 1, "kept while its flush fails");
        assert!(rooms.health().is_failing());
        assert!(matches!(
            rooms.join("doc").await,
            Err(JoinError::Store(StoreError::Failing))
        ));
        rooms.sweep(Duration::ZERO).await;
        assert_eq!(rooms.loaded_count(), 1, "kept while the store is failing");
        store.fail_flushes(false);
        recover(&rooms).await;
        rooms.sweep(Duration::ZERO).await;
        assert_eq!(rooms.loaded_count(), 0, "unloaded once written");
        let lease = rooms.join("doc").await.unwrap();
        assert_eq!(lease.room().to_json()["text"], "precious");
    }

    /// Every write failing (a full disk): the store recovers by itself once they pass again,
    /// and every room's document is on disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_store_recovers_and_rewrites_every_room() {
        let store = Arc::new(FailingStore::new(Arc::new(SledStore::temporary().unwrap())));
        let rooms = rooms_on(store.clone());
        let first = rooms.join("first").await.unwrap();
        let second = rooms.join("second").await.unwrap();
        first.room().apply_update(&insert("one")).unwrap();
        rooms.flush().await.unwrap();
        second.room().apply_update(&insert("two")).unwrap();
        store.fail_everything(true);
        assert!(rooms.flush().await.is_err());
        assert!(rooms.health().is_failing());
        assert!(rooms.flush().await.is_err(), "still failing");
        store.fail_everything(false);
        recover(&rooms).await;
        for room in ["first", "second"] {
            let stored = store.load(room).unwrap();
            assert!(
                stored.snapshot.is_some(),
                "{room} was written as a snapshot"
            );
        }
        drop((first, second));
        assert!(
            rooms
                .metrics
                .store_errors
                .get_or_create(&crate::metrics::Op { op: "flush" })
                .get()
                >= 1
        );
    }

    /// A room taken out of service is reloaded from the store by the next join.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_room_is_reloaded_at_the_next_join() {
        let rooms = rooms_on(Arc::new(SledStore::temporary().unwrap()));
        let lease = rooms.join("doc").await.unwrap();
        let room = lease.room().clone();
        room.apply_update(&insert("kept")).unwrap();
        let poisoner = room.clone();
        let _ = std::thread::spawn(move || poisoner.with_state_locked_and_panic()).join();
        assert!(room.apply_update(&insert("lost")).is_err());
        assert!(room.is_broken());
        drop(lease);
        let lease = rooms.join("doc").await.unwrap();
        assert!(!Arc::ptr_eq(lease.room(), &room), "a fresh room");
        assert_eq!(lease.room().to_json()["text"], "kept");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reconnect_storm_loads_a_bounded_number_of_rooms_at_once() {
        // Loads take a while and count how many run at once.
        let running = Arc::new(AtomicUsize::new(0));
        let most_at_once = Arc::new(AtomicUsize::new(0));
        let (counting, most) = (running.clone(), most_at_once.clone());
        let sled = Arc::new(SledStore::temporary().unwrap());
        let store = Arc::new(FailingStore::new(sled).before(move |op, _| {
            if op == StoreCall::Load {
                let now = counting.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                counting.fetch_sub(1, Ordering::SeqCst);
            }
        }));
        let rooms = Arc::new(rooms_on(store.clone()));
        let joins: Vec<_> = (0..40)
            .map(|index| {
                let rooms = rooms.clone();
                tokio::spawn(async move { rooms.join(&format!("room-{index}")).await.is_ok() })
            })
            .collect();
        for join in joins {
            assert!(join.await.unwrap(), "every room loads");
        }
        assert_eq!(rooms.loaded_count(), 40);
        let most = most_at_once.load(Ordering::SeqCst);
        assert!(
            (1..=max_concurrent_loads()).contains(&most),
            "{most} loads ran at once"
        );
    }
}
