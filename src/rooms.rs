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
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, Semaphore};

use crate::error::{JoinError, StoreError};
use crate::metrics::{Metrics, Reason};
use crate::room::{Room, RoomConfig};
use crate::store::DocStore;
use crate::webhooks::Webhooks;

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
    store: Arc<dyn DocStore>,
    config: RoomConfig,
    limits: RoomLimits,
    metrics: Arc<Metrics>,
    webhooks: Option<Webhooks>,
    /// Rooms in memory (slots holding `Loaded`).
    loaded_count: std::sync::atomic::AtomicUsize,
    /// Room loads running at once (see [`max_concurrent_loads`]).
    loads: Semaphore,
}

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
        store: Arc<dyn DocStore>,
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
            metrics,
            webhooks,
            loaded_count: std::sync::atomic::AtomicUsize::new(0),
            loads: Semaphore::new(max_concurrent_loads()),
        }
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

    pub fn store(&self) -> &Arc<dyn DocStore> {
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
    pub async fn join(&self, name: &str) -> Result<RoomLease, JoinError> {
        loop {
            let slot = self.slot(name);
            let mut guard = slot.lock().await;
            let room = match &*guard {
                Slot::Retired => continue,
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
                    self.retire(&name, &slot, &mut guard, &room).await;
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

    /// Compacts, flushes and forgets a room whose slot lock the caller holds.
    async fn retire(&self, name: &str, slot: &SharedSlot, guard: &mut Slot, room: &Arc<Room>) {
        self.unload(room).await;
        *guard = Slot::Retired;
        self.forget(name, slot);
        self.count_loaded(-1);
        self.metrics.room_evictions.inc();
        tracing::debug!(room = %name, "room unloaded");
        if let Some(webhooks) = &self.webhooks {
            webhooks.unloaded(room.name());
        }
    }

    async fn load(&self, name: &str) -> Result<Arc<Room>, StoreError> {
        let name: Arc<str> = Arc::from(name);
        let store = self.store.clone();
        let config = self.config.clone();
        let metrics = self.metrics.clone();
        let webhooks = self.webhooks.clone();
        let _permit = self
            .loads
            .acquire()
            .await
            .map_err(|error| StoreError::Task(error.to_string()))?;
        let started = std::time::Instant::now();
        let room =
            tokio::task::spawn_blocking(move || Room::load(name, store, config, metrics, webhooks))
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
            if room.idle_for().is_some_and(|elapsed| elapsed >= idle) {
                self.retire(&name, &slot, &mut guard, &room).await;
            }
        }
    }

    /// Compacts and flushes a room that is leaving memory. Blocking work on the blocking pool.
    async fn unload(&self, room: &Arc<Room>) {
        let room = room.clone();
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || {
            room.compact()?;
            store.flush()
        })
        .await;
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "compaction on unload failed"),
            Err(error) => tracing::error!(%error, "compaction task failed"),
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
    /// stored data with a tombstone (see [`DocStore::delete`]). Joins are refused from then
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
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let rooms: Vec<Arc<Room>> = self
            .all_slots()
            .iter()
            .filter_map(|(_, slot)| match &*slot.try_lock().ok()? {
                Slot::Loaded(room) => Some(room.clone()),
                _ => None,
            })
            .collect();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            for room in &rooms {
                if let Err(error) = room.write_log() {
                    // The updates are in memory: a compaction stores them all.
                    tracing::error!(room = %room.name(), %error, "writing the log failed");
                    room.schedule_compaction();
                }
            }
            store.flush()
        })
        .await
        .map_err(|error| StoreError::Task(error.to_string()))?
    }

    /// Compacts every loaded room and flushes the store: the shutdown path. Rooms stay loaded.
    pub async fn persist_all(&self) -> Result<(), StoreError> {
        let rooms = self.loaded().await;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            for room in &rooms {
                if let Err(error) = room.compact() {
                    tracing::error!(room = %room.name(), %error, "compaction at shutdown failed");
                }
            }
            store.flush().map(|_| ())
        })
        .await
        .map_err(|error| StoreError::Task(error.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;

    use super::*;
    use crate::error::ApplyError;
    use crate::store::{RoomStats, SledStore, StoredDoc};

    /// A store whose loads take a while and count how many run at once.
    struct SlowLoads {
        inner: SledStore,
        running: AtomicUsize,
        most_at_once: AtomicUsize,
    }

    impl DocStore for SlowLoads {
        fn load(&self, room: &str) -> Result<StoredDoc, StoreError> {
            let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(running, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.inner.load(room)
        }
        fn append(&self, room: &str, seq: u64, updates: &[Bytes]) -> Result<(), StoreError> {
            self.inner.append(room, seq, updates)
        }
        fn compact(&self, room: &str, state: &[u8], seq: u64, at: u64) -> Result<(), StoreError> {
            self.inner.compact(room, state, seq, at)
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
        fn check_writable(&self) -> Result<(), StoreError> {
            self.inner.check_writable()
        }
    }

    /// A store whose appends stop on their way, before they reach sled, until released: what
    /// a busy disk or a slow thread does to a write taken before a deletion.
    struct HeldAppends {
        inner: SledStore,
        held: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl DocStore for HeldAppends {
        fn load(&self, room: &str) -> Result<StoredDoc, StoreError> {
            self.inner.load(room)
        }
        fn append(&self, room: &str, seq: u64, updates: &[Bytes]) -> Result<(), StoreError> {
            let _ = self.held.lock().unwrap().send(());
            let _ = self.release.lock().unwrap().recv();
            self.inner.append(room, seq, updates)
        }
        fn compact(&self, room: &str, state: &[u8], seq: u64, at: u64) -> Result<(), StoreError> {
            self.inner.compact(room, state, seq, at)
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
        fn check_writable(&self) -> Result<(), StoreError> {
            self.inner.check_writable()
        }
    }

    fn test_rooms(store: Arc<dyn DocStore>) -> Arc<Rooms> {
        let config = RoomConfig {
            compact_log_updates: u64::MAX,
            compact_log_bytes: u64::MAX,
            max_doc_bytes: u64::MAX,
            awareness_timeout: Duration::from_secs(30),
        };
        let limits = RoomLimits {
            max_rooms: 1000,
            max_connections_per_room: 10,
        };
        Arc::new(Rooms::new(
            store,
            config,
            limits,
            Arc::new(Metrics::new()),
            None,
        ))
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
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel();
        let inner = SledStore::temporary().unwrap();
        let store = Arc::new(HeldAppends {
            inner: inner.clone(),
            held: std::sync::Mutex::new(held_tx),
            release: std::sync::Mutex::new(release_rx),
        });
        let rooms = test_rooms(store.clone());
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reconnect_storm_loads_a_bounded_number_of_rooms_at_once() {
        let store = Arc::new(SlowLoads {
            inner: SledStore::temporary().unwrap(),
            running: AtomicUsize::new(0),
            most_at_once: AtomicUsize::new(0),
        });
        let config = RoomConfig {
            compact_log_updates: u64::MAX,
            compact_log_bytes: u64::MAX,
            max_doc_bytes: u64::MAX,
            awareness_timeout: Duration::from_secs(30),
        };
        let limits = RoomLimits {
            max_rooms: 1000,
            max_connections_per_room: 10,
        };
        let rooms = Arc::new(Rooms::new(
            store.clone(),
            config,
            limits,
            Arc::new(Metrics::new()),
            None,
        ));
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
        let most = store.most_at_once.load(Ordering::SeqCst);
        assert!(
            (1..=max_concurrent_loads()).contains(&most),
            "{most} loads ran at once"
        );
    }
}
