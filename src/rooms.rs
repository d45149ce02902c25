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

use tokio::sync::Mutex as AsyncMutex;

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
        let started = std::time::Instant::now();
        let metrics = self.metrics.clone();
        let webhooks = self.webhooks.clone();
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

    /// Deletes a room: closes its sockets and removes its stored data, whether or not it is in
    /// memory.
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
