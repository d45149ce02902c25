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

use crate::error::StoreError;
use crate::room::{Room, RoomConfig};
use crate::store::DocStore;

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
    pub fn new(store: Arc<dyn DocStore>, config: RoomConfig) -> Self {
        Rooms {
            slots: Mutex::new(HashMap::new()),
            store,
            config,
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
    pub async fn join(&self, name: &str) -> Result<RoomLease, StoreError> {
        loop {
            let slot = self.slot(name);
            let mut guard = slot.lock().await;
            let room = match &*guard {
                Slot::Retired => continue,
                Slot::Loaded(room) => room.clone(),
                Slot::Empty => {
                    let room = self.load(name).await?;
                    *guard = Slot::Loaded(room.clone());
                    room
                }
            };
            room.add_connection();
            return Ok(RoomLease { room });
        }
    }

    async fn load(&self, name: &str) -> Result<Arc<Room>, StoreError> {
        let name: Arc<str> = Arc::from(name);
        let store = self.store.clone();
        let config = self.config.clone();
        let started = std::time::Instant::now();
        let room = tokio::task::spawn_blocking(move || Room::load(name, store, config))
            .await
            .map_err(|error| StoreError::Task(error.to_string()))??;
        tracing::debug!(room = %room.name(), elapsed_ms = started.elapsed().as_millis() as u64, "room loaded");
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
        let slots: Vec<(Arc<str>, SharedSlot)> = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, slot)| (name.clone(), slot.clone()))
            .collect();
        for (name, slot) in slots {
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
                self.unload(&room).await;
                *guard = Slot::Retired;
                self.forget(&name, &slot);
                tracing::debug!(room = %name, "idle room unloaded");
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
