//! One room: a document, its awareness states, its members' queues and its persistence.
//!
//! Every change to a room happens under its one `state` lock, held briefly and never across an
//! `.await`: the update is applied, its delta encoded once, handed to every member's queue and
//! queued for the store, all in one critical section. That keeps the order of updates identical
//! in memory, on disk and on every socket, and means a member that joins (under the same lock)
//! can never miss an update that happens between reading the state and subscribing. The store
//! receives the queued updates as log entries right after the lock is released (see
//! [`MAX_UNWRITTEN_UPDATES`] and [`Room::write_log`]); they are durable at the next flush.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use yrs::sync::Awareness;
use yrs::sync::awareness::AwarenessUpdate;
use yrs::sync::time::{Clock, SystemClock};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    ClientID, Doc, ID, IdSet, ReadTxn, StateVector, Transact, TransactionMut, Update, WriteTxn,
};

use crate::error::{ApplyError, StoreError};
use crate::metrics::Metrics;
use crate::protocol::{self, DecodedUpdate};
use crate::queue;
use crate::store::health::Refused;
use crate::store::{DocStore, StoreHealth, StoreOp};
use crate::webhooks::{ChangeFlag, Webhooks};

/// Longest room name accepted, in bytes.
pub const MAX_ROOM_NAME_BYTES: usize = 1024;

/// Capacity of a member's document-update queue, in frames. Overflow policy: the member is
/// removed from the room and its connection closed with 1013, so that it resyncs on reconnect.
/// An update is never silently skipped. The queue's storage is allocated only while frames
/// wait (see [`crate::queue`]), so an idle member costs almost nothing however large this is.
pub const UPDATE_QUEUE_CAPACITY: usize = 4096;

/// Bytes of frames a member's document-update queue may hold; overflow as for
/// [`UPDATE_QUEUE_CAPACITY`]. A frame larger than this still goes into an empty queue, so a
/// caught-up member receives a paste of any size the message limit allows. A member this far
/// behind is better served by a resync (one SyncStep2 of the document, not every frame it
/// missed). Members share the frames (one allocation per broadcast), so a room holds about
/// this much for its slowest member, not this much per member.
pub const UPDATE_QUEUE_BYTES: usize = 16 << 20;

/// A member whose queue holds more than this many frames, or more than a quarter of
/// [`UPDATE_QUEUE_BYTES`], counts as behind: writers then yield after each update, so that a
/// fast writer cannot starve the readers' tasks of CPU (bursts from one pipelining writer
/// otherwise overflow readers that are merely not scheduled).
pub const BEHIND_WATERMARK: usize = UPDATE_QUEUE_CAPACITY / 4;

/// Capacity of a member's awareness queue, in frames. Overflow policy: the frame is dropped and
/// the member flagged; its session then sends one full awareness state (the latest state per
/// client) once it catches up. Presence is volatile: only the latest state matters.
pub const AWARENESS_QUEUE_CAPACITY: usize = 64;

/// Bytes of frames a member's awareness queue may hold; overflow as for
/// [`AWARENESS_QUEUE_CAPACITY`]. Presence states are a few hundred bytes each.
pub const AWARENESS_QUEUE_BYTES: usize = 1 << 20;

/// Applied updates a room keeps before writing them to the store as one log entry (see
/// [`Room::write_log`]); the server's flusher writes whatever is left before each flush, so
/// the durability window is unchanged. One sled insert per entry instead of one per keystroke:
/// a sled insert costs about as much as the rest of applying a typing-sized update.
const MAX_UNWRITTEN_UPDATES: usize = 256;

/// Bytes of applied updates a room keeps before writing them to the store.
///
/// Small on purpose: sled 0.34 splits a leaf past 16 entries and writes a node larger than a
/// quarter segment (128 KiB) as a separate "blob" file. If creating that file fails (the
/// directory gone, no space, no file descriptors left), sled returns the error but leaks its
/// reservation in the log buffer (`logger.rs`, `reserve_inner`: `encapsulate(..)?` after the
/// writer count was raised), and every later flush waits for that buffer forever. Entries of at
/// most 4 KiB keep a leaf of 17 of them well below the blob threshold. (Entries of 16 KiB made
/// `tests/slow_client.rs` hang in its shutdown flush: its temporary directory is removed while
/// the shutdown compaction still writes.)
const MAX_UNWRITTEN_BYTES: usize = 4 << 10;

/// Stored updates applied per transaction when a room loads.
const LOAD_BATCH: usize = 1000;

/// Most awareness client IDs one connection may set states for (y-websocket uses one per
/// document); see [`Room::apply_awareness`].
pub const MAX_AWARENESS_CLIENTS: usize = 8;

/// An empty v1 update: what encoding a transaction that changed nothing gives.
const EMPTY_UPDATE: &[u8] = &[0, 0];

/// Identifies one connection within the server's lifetime.
pub type ConnectionId = u64;

/// Tunables of a room, taken from the server configuration.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// Compact once the log holds this many updates.
    pub compact_log_updates: u64,
    /// Compact once the log holds this many bytes.
    pub compact_log_bytes: u64,
    /// Largest document, in bytes of stored v1 encoding (snapshot plus log).
    pub max_doc_bytes: u64,
    /// Awareness states not renewed within this are removed.
    pub awareness_timeout: Duration,
}

/// Flags a room raises for one member, read by that member's session.
#[derive(Debug, Default)]
pub struct MemberSignals {
    /// The member fell behind and was removed from the room: close with 1013.
    lagged: AtomicBool,
    /// An awareness frame was dropped for this member: send a full awareness state.
    awareness_dropped: AtomicBool,
    /// The room was closed (deleted) under the member.
    closed: AtomicBool,
}

impl MemberSignals {
    /// Whether the room removed this member for falling behind.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }

    /// Whether the room was closed (deleted) under this member.
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Returns and clears the "awareness dropped" flag.
    pub fn take_awareness_dropped(&self) -> bool {
        self.awareness_dropped.swap(false, Ordering::AcqRel)
    }
}

struct Member {
    updates: queue::Sender<Bytes>,
    awareness: queue::Sender<Bytes>,
    signals: Arc<MemberSignals>,
}

/// A member's end of the room: the queues its session drains.
#[derive(Debug)]
pub struct Subscription {
    pub updates: queue::Receiver<Bytes>,
    pub awareness: queue::Receiver<Bytes>,
    pub signals: Arc<MemberSignals>,
}

/// What a joining member is sent first: the server's SyncStep1 and, when anyone is present, the
/// awareness states. Separate frames (clients read one message per frame).
#[derive(Debug)]
pub struct Greeting {
    pub sync_step1: Bytes,
    pub awareness: Option<Bytes>,
}

/// What the HTTP API reports about a loaded room.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomInfo {
    pub connections: usize,
    /// Bytes of the stored v1 encoding: the last snapshot plus the log since.
    pub doc_bytes: u64,
    /// Updates in the log since the last compaction.
    pub log_updates: u64,
    /// When the document last changed, ms since the epoch (0: not since it was created).
    pub last_change_ms: u64,
}

/// The result of applying a client's update.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The update was new to the room: stored and broadcast.
    Changed,
    /// The room already had everything in it; nothing was stored or broadcast.
    Unchanged,
}

struct RoomState {
    /// Owns the room's document (`awareness.doc()`).
    awareness: Awareness,
    members: HashMap<ConnectionId, Member>,
    /// Sequence number of the next log entry written to the store.
    next_seq: u64,
    /// Updates applied (and broadcast) but not yet written to the store, in order. Written as
    /// one log entry by the flusher before each flush, or by the applying writer once there
    /// are too many: one store insert per burst instead of one per update.
    unwritten: Vec<Bytes>,
    unwritten_bytes: usize,
    /// Updates and bytes appended since the last compaction.
    log_updates: u64,
    log_bytes: u64,
    /// The store's failure generation when this room last wrote a full snapshot (or joined the
    /// store's health). While it differs from the current one, a failure may have left a hole in
    /// the room's log, and the next write must be a snapshot (see [`crate::store::health`]).
    snapshot_generation: u64,
    /// Size of the last snapshot (uncompressed v1); with `log_bytes`, the document's size.
    snapshot_bytes: u64,
    /// When the document last changed (ms since the epoch; 0 if never recorded).
    last_change_ms: u64,
    /// Set when the room is deleted: nothing may be applied or stored any more.
    deleted: bool,
    /// The SyncStep2 for a client that has nothing (every new joiner), encoded once and shared
    /// until the document changes: a reconnect storm costs one encoding, not one per joiner.
    full_sync_reply: Option<Bytes>,
}

/// One collaborative document and everyone editing it.
pub struct Room {
    name: Arc<str>,
    state: Mutex<RoomState>,
    store: Arc<dyn DocStore>,
    /// Whether the store takes writes; shared with the registry and every other room.
    health: Arc<StoreHealth>,
    /// Set when a panic inside the room's critical section left its document in doubt: the
    /// room serves nobody any more and is reloaded from the store (see [`Room::is_broken`]).
    broken: AtomicBool,
    config: RoomConfig,
    metrics: Arc<Metrics>,
    /// Open connections, counted by the registry (which changes it only under its slot lock,
    /// so that eviction and joining cannot race).
    connections: AtomicUsize,
    /// When the last connection left (or when the room loaded).
    idle_since: Mutex<Instant>,
    /// Set while a compaction is scheduled or running, so that only one runs at a time.
    compacting: AtomicBool,
    /// Serializes compactions so that an older snapshot never overwrites a newer one.
    compaction_lock: Mutex<()>,
    /// Where change events go, when webhooks are configured.
    webhooks: Option<Webhooks>,
    /// Set while a change event of this room waits in the webhook dispatcher.
    webhook_flag: ChangeFlag,
    /// Whether, at the last broadcast, some member had more than [`BEHIND_WATERMARK`] frames
    /// waiting.
    members_behind: AtomicBool,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Room {
    /// Loads a room from the store: the snapshot, then the log in order. Blocking; the registry
    /// calls it on the blocking pool. Corrupt records are logged and skipped.
    pub fn load(
        name: Arc<str>,
        store: Arc<dyn DocStore>,
        config: RoomConfig,
        metrics: Arc<Metrics>,
        webhooks: Option<Webhooks>,
    ) -> Result<Room, StoreError> {
        let stored = store.load(&name)?;
        for error in &stored.corrupt {
            tracing::error!(room = %name, %error, "skipping unreadable stored record");
        }
        let doc = Doc::new();
        let mut log_bytes = 0;
        let mut skipped = false;
        let records: Vec<&Vec<u8>> = stored.snapshot.iter().chain(stored.log.iter()).collect();
        // One transaction per batch: a yrs commit grows faster than linearly with its size
        // (measured: the 259,778-update automerge-paper log loads in 1.5 s as one transaction,
        // about 0.25 s in batches of a thousand).
        for (batch_index, batch) in records.chunks(LOAD_BATCH).enumerate() {
            let mut txn = doc.transact_mut();
            for (offset, bytes) in batch.iter().enumerate() {
                log_bytes += bytes.len() as u64;
                let applied = protocol::decode_update(bytes).and_then(|update| {
                    integrate(&mut txn, update).map_err(|error| error.to_string())
                });
                if let Err(error) = applied {
                    skipped = true;
                    let index = batch_index * LOAD_BATCH + offset;
                    tracing::error!(room = %name, index, %error, "skipping undecodable stored update");
                }
            }
        }
        let released = release_subdocuments(&doc);
        if released {
            tracing::warn!(room = %name, "removed subdocuments stored before they were refused");
        }
        let snapshot_bytes = stored.snapshot.as_ref().map_or(0, |s| s.len() as u64);
        log_bytes -= snapshot_bytes;
        // A room just compacted holds exactly its snapshot, which is the full sync reply: the
        // first joiner of a cold room need not wait for the document to be encoded again.
        let full_sync_reply = match &stored.snapshot {
            Some(snapshot)
                if stored.log.is_empty() && stored.corrupt.is_empty() && !skipped && !released =>
            {
                Some(protocol::encode_sync_step2(snapshot))
            }
            _ => None,
        };
        Ok(Room {
            state: Mutex::new(RoomState {
                awareness: Awareness::new(doc),
                members: HashMap::new(),
                next_seq: stored.next_seq,
                snapshot_generation: 0,
                unwritten: Vec::new(),
                unwritten_bytes: 0,
                log_updates: stored.log.len() as u64,
                log_bytes,
                snapshot_bytes,
                last_change_ms: stored.last_change_ms.unwrap_or(0),
                deleted: false,
                full_sync_reply,
            }),
            name,
            store,
            health: Arc::new(StoreHealth::new(metrics.clone())),
            broken: AtomicBool::new(false),
            config,
            metrics,
            connections: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            compacting: AtomicBool::new(false),
            compaction_lock: Mutex::new(()),
            webhooks,
            webhook_flag: ChangeFlag::default(),
            members_behind: AtomicBool::new(false),
        })
    }

    /// The room's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Makes the room report to, and obey, the store health the registry shares among its
    /// rooms (a room loaded alone, by the admin tools, has its own).
    pub fn with_store_health(mut self, health: Arc<StoreHealth>) -> Room {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        state.snapshot_generation = health.generation();
        self.health = health;
        self
    }

    /// The room's state, locked. A panic inside the critical section (a yrs bug on hostile
    /// input) poisons the lock and may have left the document half-changed: the room is then
    /// taken out of service rather than served as it is.
    fn state(&self) -> MutexGuard<'_, RoomState> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                let mut guard = poisoned.into_inner();
                self.state.clear_poison();
                self.take_out_of_service(&mut guard, "a panic while the room was locked");
                guard
            }
        }
    }

    /// Panics while holding the room's lock, as a bug inside the critical section would.
    #[cfg(test)]
    pub(crate) fn with_state_locked_and_panic(&self) {
        let _locked = self.state();
        panic!("a bug while the room is locked");
    }

    /// Whether the room was taken out of service after an internal failure: it applies
    /// nothing, has no members, and the registry reloads it from the store at the next join.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Marks the room broken and drops every member: their sessions close (1001) and the
    /// clients reconnect to a room reloaded from the store, resending what it lacks. The
    /// document is never written as a snapshot again; updates applied before the failure are
    /// still written to the log (they were encoded before it).
    fn take_out_of_service(&self, state: &mut RoomState, why: &str) {
        if self.broken.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(room = %self.name, why, "room taken out of service: its document may be inconsistent; it will be reloaded from the store");
        self.metrics.rooms_broken.inc();
        state.members.clear();
        state.full_sync_reply = None;
    }

    /// Adds a member. Its queues start receiving every update applied from now on, and the
    /// greeting reflects the state just before: nothing can fall between the two.
    pub fn subscribe(&self, connection: ConnectionId) -> (Subscription, Greeting) {
        let (update_tx, update_rx) = queue::channel(UPDATE_QUEUE_CAPACITY, UPDATE_QUEUE_BYTES);
        let (awareness_tx, awareness_rx) =
            queue::channel(AWARENESS_QUEUE_CAPACITY, AWARENESS_QUEUE_BYTES);
        let signals = Arc::new(MemberSignals::default());
        let mut state = self.state();
        // A broken room keeps no members: the session finds its queue closed and ends.
        if !self.is_broken() {
            state.members.insert(
                connection,
                Member {
                    updates: update_tx,
                    awareness: awareness_tx,
                    signals: signals.clone(),
                },
            );
        }
        let greeting = Greeting {
            sync_step1: sync_step1_of(&state),
            awareness: full_awareness(&state.awareness),
        };
        let subscription = Subscription {
            updates: update_rx,
            awareness: awareness_rx,
            signals,
        };
        (subscription, greeting)
    }

    /// The server's SyncStep1 (its state vector): asks a client for everything the room lacks.
    pub fn sync_step1(&self) -> Bytes {
        sync_step1_of(&self.state())
    }

    /// Removes a member and the awareness states it controlled, telling everyone else they are
    /// gone (so no ghost cursors stay behind).
    pub fn unsubscribe(&self, connection: ConnectionId, controlled: &HashSet<ClientID>) {
        let mut state = self.state();
        state.members.remove(&connection);
        remove_awareness_states(&mut state, controlled.iter().copied());
    }

    /// The SyncStep2 answer to a client's SyncStep1: everything the client lacks.
    ///
    /// The answer to an empty state vector is encoded under the room's lock, since it is kept
    /// for every joiner until the document changes, and must not miss a change applied
    /// meanwhile. Any other is encoded outside it, on a handle to the document (which has a
    /// lock of its own): the room keeps relaying awareness and admitting members meanwhile.
    /// The asking member is subscribed, so a change applied during the encode reaches it in
    /// the reply, its update queue, or both (clients ignore what they have).
    pub fn sync_step2(&self, client_state: &StateVector) -> Bytes {
        if !client_state.is_empty() {
            let doc = self.state().awareness.doc().clone();
            let diff = doc.transact().encode_state_as_update_v1(client_state);
            return protocol::encode_sync_step2(&diff);
        }
        let mut state = self.state();
        if let Some(reply) = &state.full_sync_reply {
            return reply.clone();
        }
        let diff = state
            .awareness
            .doc()
            .transact()
            .encode_state_as_update_v1(client_state);
        let reply = protocol::encode_sync_step2(&diff);
        state.full_sync_reply = Some(reply.clone());
        reply
    }

    /// Applies a client's v1 update. A new change is encoded once, appended to the store and
    /// queued for every member (the sender included: clients ignore what they have, and the
    /// echo is what y-websocket v4's sync status waits for). An invalid update changes nothing.
    pub fn apply_update(self: &Arc<Self>, update: &[u8]) -> Result<Applied, ApplyError> {
        let decoded = protocol::decode_update(update).map_err(ApplyError::InvalidUpdate)?;
        if decoded.has_subdocuments {
            return Err(ApplyError::InvalidUpdate(SUBDOCUMENTS_REFUSED.to_owned()));
        }
        let mut state = self.state();
        if state.deleted {
            return Err(ApplyError::RoomDeleted);
        }
        if self.is_broken() {
            return Err(ApplyError::RoomBroken);
        }
        // Nothing is applied while the store cannot write it or once shutdown began: the client
        // is closed and resends after reconnecting, when it can be stored.
        match self.health.accepting() {
            Ok(()) => {}
            Err(Refused::Failing) => return Err(ApplyError::Store(StoreError::Failing)),
            Err(Refused::Closed) => return Err(ApplyError::ShuttingDown),
        }
        let mut measured = false;
        if state.snapshot_bytes + state.log_bytes + update.len() as u64 > self.config.max_doc_bytes
        {
            measured = state.log_bytes > 0;
            if !fits_after_all(&mut state, update.len(), self.config.max_doc_bytes) {
                drop(state);
                if measured {
                    self.schedule_compaction();
                }
                return Err(ApplyError::DocumentTooLarge {
                    limit: self.config.max_doc_bytes,
                });
            }
        }
        // yrs integrates an update's blocks one by one and may refuse one after others went in
        // (an item whose parent is not a shared type): what went in is stored and broadcast
        // like any change, so that the room in memory never holds what its log lacks (fuzzer
        // finding `partly-applied-update-not-stored`), and the update is then refused.
        //
        // A panic inside yrs is contained: the document may be half-changed, so the room is
        // taken out of service (see [`Room::take_out_of_service`]) instead of served.
        let integrated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut txn = state.awareness.doc().transact_mut();
            #[cfg(test)]
            tests::panic_hook::maybe_panic();
            let refusal = integrate(&mut txn, decoded).err();
            (txn.encode_update_v1(), refusal)
        }));
        let Ok((delta, refusal)) = integrated else {
            self.take_out_of_service(&mut state, "a panic in yrs while applying an update");
            return Err(ApplyError::RoomBroken);
        };
        if delta == EMPTY_UPDATE {
            return refusal.map_or(Ok(Applied::Unchanged), Err);
        }
        state.full_sync_reply = None;
        state.last_change_ms = SystemClock.now();
        state.log_updates += 1;
        state.log_bytes += delta.len() as u64;
        let frame = protocol::encode_update(&delta);
        let behind = broadcast_update(&mut state, &frame);
        self.members_behind.store(behind, Ordering::Relaxed);
        self.metrics
            .broadcast_frames
            .inc_by(state.members.len() as u64);
        state.unwritten_bytes += delta.len();
        state.unwritten.push(Bytes::from(delta));
        let batch = (state.unwritten.len() >= MAX_UNWRITTEN_UPDATES
            || state.unwritten_bytes >= MAX_UNWRITTEN_BYTES)
            .then(|| take_unwritten(&mut state))
            .flatten();
        let compaction_due = measured
            || state.log_updates >= self.config.compact_log_updates
            || state.log_bytes >= self.config.compact_log_bytes;
        drop(state);
        if let Some(batch) = batch {
            // Members already have the change and the document keeps it: a store failure
            // is reported to the caller, which closes its connection (1011, resend), and the
            // store's recovery writes the whole document as a snapshot (see `write_log`).
            self.write_batch(batch)?;
        }
        if compaction_due {
            self.schedule_compaction();
        }
        if let Some(webhooks) = &self.webhooks {
            webhooks.changed(self);
        }
        refusal.map_or(Ok(Applied::Changed), Err)
    }

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
            if state.snapshot_generation != self.health.generation() && !self.is_broken() {
                None
            } else {
                Some(take_unwritten(&mut state))
            }
        };
        match batch {
            None => self.compact(),
            Some(batch) => batch.map_or(Ok(()), |batch| self.write_batch(batch)),
        }
    }

    /// Appends one taken batch. On failure the updates stay in the document, the store is
    /// marked failing, and the failure's new generation makes the next write a snapshot.
    fn write_batch(&self, (seq, updates): (u64, Vec<Bytes>)) -> Result<(), StoreError> {
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

    /// Applies a client's awareness update and relays it to every member. The client IDs it
    /// sets are recorded in `controlled`, so that they are removed when the connection ends.
    ///
    /// Entries about a client ID whose state another connection set (present in the room and
    /// not in `controlled`) are ignored: one connection must not overwrite or remove another's
    /// presence. So are entries for new client IDs beyond [`MAX_AWARENESS_CLIENTS`] per
    /// connection. Ignored entries are counted; the rest is applied and relayed.
    pub fn apply_awareness(
        &self,
        payload: &[u8],
        controlled: &mut HashSet<ClientID>,
    ) -> Result<(), ApplyError> {
        // Checked before yrs reserves memory for the number of states it announces.
        protocol::validate::awareness_update(payload)
            .map_err(|error| ApplyError::InvalidAwareness(error.to_string()))?;
        let mut update = protocol::decode_untrusted(|| AwarenessUpdate::decode_v1(payload))
            .map_err(ApplyError::InvalidAwareness)?;
        // Removing a state bumps its clock; at u32::MAX that overflows (fuzzer finding
        // `awareness-clock-max-then-disconnect`), and no real client counts that far.
        if update.clients.values().any(|entry| entry.clock == u32::MAX) {
            return Err(ApplyError::InvalidAwareness(
                "awareness clock out of range".into(),
            ));
        }
        let mut state = self.state();
        let announced = update.clients.len();
        let (mut not_owned, mut over_limit) = (0, 0);
        let mut may_claim = MAX_AWARENESS_CLIENTS.saturating_sub(controlled.len());
        update.clients.retain(|client, _| {
            if controlled.contains(client) {
                true
            } else if state
                .awareness
                .state::<serde::de::IgnoredAny>(*client)
                .is_some()
            {
                not_owned += 1;
                false
            } else if may_claim > 0 {
                may_claim -= 1;
                true
            } else {
                over_limit += 1;
                false
            }
        });
        if not_owned > 0 {
            self.metrics.reject("awareness_not_owned");
        }
        if over_limit > 0 {
            self.metrics.limit_hit("awareness_clients");
        }
        if update.clients.is_empty() {
            return Ok(());
        }
        // What is relayed: the client's bytes, or what was kept of them.
        let frame = if update.clients.len() == announced {
            protocol::encode_awareness(payload)
        } else {
            protocol::encode_awareness(&update.encode_v1())
        };
        let summary = state
            .awareness
            .apply_update_summary(update)
            .map_err(|error| ApplyError::InvalidAwareness(error.to_string()))?;
        if let Some(summary) = summary {
            // Only states the room accepted count as this connection's: a stale message
            // about a client must not make the connection forget (or claim) it.
            controlled.extend(summary.added.iter().chain(&summary.updated));
            for client in &summary.removed {
                controlled.remove(client);
            }
            broadcast_awareness(&mut state, frame);
            self.metrics
                .broadcast_frames
                .inc_by(state.members.len() as u64);
        }
        Ok(())
    }

    /// Every present awareness state in one message, or `None` when nobody is present.
    pub fn awareness_snapshot(&self) -> Option<Bytes> {
        full_awareness(&self.state().awareness)
    }

    /// Removes awareness states not renewed within the configured timeout (clients renew
    /// every 15 s; a browser that vanished without a close frame stops renewing) and
    /// broadcasts the removal.
    pub fn expire_awareness(&self) {
        let max_age = self.config.awareness_timeout;
        let mut state = self.state();
        let now = SystemClock.now();
        let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        let expired: Vec<ClientID> = state
            .awareness
            .iter()
            .filter(|(_, client)| {
                client.data.is_some() && now.saturating_sub(client.last_updated) > max_age_ms
            })
            .map(|(id, _)| id)
            .collect();
        if !expired.is_empty() {
            tracing::debug!(room = %self.name, count = expired.len(), "expiring awareness states");
            remove_awareness_states(&mut state, expired);
        }
    }

    /// Whether some member was behind at the last broadcast (see [`BEHIND_WATERMARK`]).
    pub fn members_behind(&self) -> bool {
        self.members_behind.load(Ordering::Relaxed)
    }

    /// Connections currently open on this room.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Counts a new connection. Called by the registry under its slot lock.
    pub(crate) fn add_connection(&self) {
        self.connections.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a closed connection and starts the idle clock when it was the last.
    pub(crate) fn remove_connection(&self) {
        if self.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        }
    }

    /// How long the room has had no connection, or `None` while it has some.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.connection_count() > 0 {
            return None;
        }
        Some(
            self.idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed(),
        )
    }

    /// Runs a compaction on the blocking pool unless one is already scheduled (inline when
    /// there is no runtime, as in the admin commands).
    /// While the store is failing, its recovery writes every room (see `write_log`) instead.
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
            let forced = state.snapshot_generation != generation;
            if (state.log_updates == 0 && !forced) || state.deleted || self.is_broken() {
                return Ok(());
            }
            // The unwritten updates get their sequence number under the same lock as the
            // snapshot that includes them, so `through_seq` covers them: had they been written
            // later under a number above it, they would merely be applied twice on load; had
            // they been numbered below it after the snapshot, newer updates could hide there.
            // A forced snapshot does not write them at all: it covers them.
            let unwritten = take_unwritten(&mut state).filter(|_| !forced);
            let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                state
                    .awareness
                    .doc()
                    .transact()
                    .encode_state_as_update_v1(&StateVector::default())
            }));
            let Ok(snapshot) = encoded else {
                self.take_out_of_service(&mut state, "a panic in yrs while encoding a snapshot");
                return Err(StoreError::Task("encoding the snapshot panicked".into()));
            };
            // A snapshot covers the sequence numbers below `next_seq`; reserve number 0 for one
            // written before any log entry, so that no later entry can hide under it.
            state.next_seq = state.next_seq.max(1);
            (
                unwritten,
                snapshot,
                state.next_seq - 1,
                state.last_change_ms,
                (state.log_updates, state.log_bytes),
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
            let mut state = self.state();
            state.log_updates = state.log_updates.saturating_sub(covered.0);
            state.log_bytes = state.log_bytes.saturating_sub(covered.1);
            state.snapshot_bytes = snapshot.len() as u64;
            // A failure since `generation` was read keeps the next write a snapshot.
            state.snapshot_generation = generation;
        }
        self.metrics.compactions.inc();
        tracing::debug!(room = %self.name, bytes = snapshot.len(), through_seq, "compacted");
        Ok(())
    }

    /// The flag the webhook dispatcher uses to debounce this room's changes.
    pub(crate) fn webhook_flag(&self) -> &ChangeFlag {
        &self.webhook_flag
    }

    /// How long since the document last changed.
    pub fn quiet_for(&self) -> Duration {
        let last = self.state().last_change_ms;
        Duration::from_millis(SystemClock.now().saturating_sub(last))
    }

    /// Size facts for operators.
    pub fn info(&self) -> RoomInfo {
        let state = self.state();
        RoomInfo {
            connections: self.connection_count(),
            doc_bytes: state.snapshot_bytes + state.log_bytes,
            log_updates: state.log_updates,
            last_change_ms: state.last_change_ms,
        }
    }

    /// Whether yrs holds changes back until what they depend on arrives. ycord refuses such
    /// updates (see `check_dependencies`) and drops what yrs holds anyway (`drop_pending`), so
    /// this stays false; the fuzzer checks that it does.
    pub fn has_pending_changes(&self) -> bool {
        self.state()
            .awareness
            .doc()
            .transact()
            .has_missing_updates()
    }

    /// The top-level shared types as JSON: text as a string, maps as objects, arrays as arrays,
    /// XML as its string form. Root types the server never declared have no type in the
    /// document (Yjs does not send it); it is inferred from their content, on a scratch copy
    /// so the live document is untouched.
    pub fn to_json(&self) -> serde_json::Value {
        use yrs::types::ToJson;
        use yrs::{GetString, In, Out, types::AsPrelim};
        let copy = Doc::new();
        if let Ok(update) = Update::decode_v1(&self.encode_state()) {
            // Re-applying our own encoding cannot fail; if it did, the view is just empty.
            let _ = copy.transact_mut().apply_update(update);
        }
        let kinds: Vec<(String, In)> = {
            let txn = copy.transact();
            txn.root_refs()
                .map(|(name, value): (&str, Out)| (name.to_owned(), value.as_prelim(&txn)))
                .collect()
        };
        let mut roots = serde_json::Map::new();
        for (name, kind) in kinds {
            let any = match kind {
                In::Text(_) => {
                    let text = copy.get_or_insert_text(name.as_str());
                    yrs::Any::from(text.get_string(&copy.transact()))
                }
                In::Array(_) => copy
                    .get_or_insert_array(name.as_str())
                    .to_json(&copy.transact()),
                In::XmlText(_) | In::XmlElement(_) | In::XmlFragment(_) => {
                    let xml = copy.get_or_insert_xml_fragment(name.as_str());
                    yrs::Any::from(xml.get_string(&copy.transact()))
                }
                _ => copy
                    .get_or_insert_map(name.as_str())
                    .to_json(&copy.transact()),
            };
            roots.insert(
                name,
                serde_json::to_value(any).unwrap_or(serde_json::Value::Null),
            );
        }
        serde_json::Value::Object(roots)
    }

    /// Deletes the room: every member's session ends (closed with
    /// [`close_code::ROOM_DELETED`](crate::peer::close_code::ROOM_DELETED), which stock
    /// clients do not retry), nothing more is applied, and the store replaces its data with a
    /// tombstone. Blocking. A write that took its updates before this and reaches the store
    /// after it is refused there (see [`DocStore::delete`]); holding the compaction lock keeps
    /// a running compaction from even trying.
    pub fn delete(&self) -> Result<(), StoreError> {
        let _no_compaction = self
            .compaction_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        {
            let mut state = self.state();
            state.deleted = true;
            state.unwritten.clear();
            for (_, member) in state.members.drain() {
                member.signals.closed.store(true, Ordering::Release);
            }
        }
        self.store.delete(&self.name)
    }

    /// The whole document as one v1 update. Encoded outside the room's lock, on a handle to
    /// the document (see [`Room::sync_step2`]). Blocking on a big document: async callers run
    /// it on the blocking pool.
    pub fn encode_state(&self) -> Vec<u8> {
        let doc = self.state().awareness.doc().clone();
        let txn = doc.transact();
        txn.encode_state_as_update_v1(&StateVector::default())
    }
}

/// The slow path of the document-size check. The cheap estimate (last snapshot plus the log
/// since) overcounts once the log holds many small edits; measure the real encoding and count
/// the document at that size from now on (the caller compacts, which makes it exact again).
fn fits_after_all(state: &mut RoomState, update_len: usize, max_doc_bytes: u64) -> bool {
    if state.log_bytes == 0 {
        return false;
    }
    let actual = state
        .awareness
        .doc()
        .transact()
        .encode_state_as_update_v1(&StateVector::default())
        .len() as u64;
    state.snapshot_bytes = actual;
    state.log_bytes = 0;
    actual + update_len as u64 <= max_doc_bytes
}

/// Queues a document-update frame for every member. A member whose queue is full (in frames or
/// in bytes) is removed and flagged as lagged; its session closes it with 1013. Returns whether
/// some member is behind (see [`BEHIND_WATERMARK`]).
fn broadcast_update(state: &mut RoomState, frame: &Bytes) -> bool {
    let mut behind = false;
    state
        .members
        .retain(|_, member| match member.updates.try_send(frame.clone()) {
            Ok(()) => {
                behind |= UPDATE_QUEUE_CAPACITY - member.updates.capacity() > BEHIND_WATERMARK
                    || member.updates.queued_bytes() > UPDATE_QUEUE_BYTES / 4;
                true
            }
            Err(queue::TrySendError::Full(_)) => {
                member.signals.lagged.store(true, Ordering::Release);
                false
            }
            // The session is gone and will unsubscribe; nothing to keep.
            Err(queue::TrySendError::Closed(_)) => false,
        });
    behind
}

fn sync_step1_of(state: &RoomState) -> Bytes {
    let state_vector = state.awareness.doc().transact().state_vector().encode_v1();
    protocol::encode_sync_step1(&state_vector)
}

/// Integrates a decoded update into `txn`, the one place rooms hand updates to yrs (live and
/// while loading): refused whole if it depends on changes neither the document nor the update
/// holds ([`check_dependencies`]); otherwise applied, and whatever yrs then holds pending is
/// dropped ([`drop_pending`]). On an error after the apply, what yrs integrated stays in `txn`.
fn integrate(txn: &mut TransactionMut, decoded: DecodedUpdate) -> Result<(), ApplyError> {
    check_dependencies(&decoded, &txn.state_vector())?;
    let applied = txn
        .apply_update(decoded.update)
        .map_err(|error| ApplyError::InvalidUpdate(error.to_string()));
    let held = drop_pending(txn);
    applied.and(held.map_or(Ok(()), Err))
}

/// Refuses an update that would leave a hole in a client's clocks: for every client it has
/// changes of, the document's clocks `0..state[client]` and the update's blocks must form one
/// range from 0. Yjs keeps a block that starts past the document's clock pending until the
/// gap is filled; yrs 0.28 integrates it behind a "skip" instead (fuzzer finding
/// `out-of-order-item-integrated-but-not-stored`: visible, yet missing from the state vector
/// and from the transaction's delta, so never stored or broadcast), and a later update that
/// straddles the skip's end makes yrs read freed memory (`BlockSet::exclude` drops a piece that
/// the kept piece still points at; finding `asan-heap-use-after-free-in-update-exclude`).
/// With this check no skip is ever created. Overlapping resends (SyncStep2 after a
/// reconnect, merged updates, duplicates) start at or before the document's clock and pass.
///
/// It also refuses an update whose items refer to (as origin or parent), or whose delete set
/// covers, another client's change that neither the document nor the update holds. Yjs and
/// yrs keep such an update pending, outside the state vector and the transaction's delta, so
/// it would not be stored, yet yrs merges pending updates into every full encoding of the
/// document: a compaction or a client's copy would hold it and a reload from the log would
/// not (fuzzer finding `restart-loses-item-with-missing-parent`). Both refusals are answered
/// like Yjs's pending state: the client is asked to resync, and its SyncStep2 carries what the
/// room lacks.
///
/// `state` must be read from the transaction that applies the update.
fn check_dependencies(decoded: &DecodedUpdate, state: &StateVector) -> Result<(), ApplyError> {
    let insertions = decoded.update.insertions(true);
    // Per client, where the document's clocks will end once the update's insertions are in
    // (they are contiguous with the room's, checked here first).
    let mut ends: HashMap<u64, u32> = HashMap::with_capacity(insertions.len());
    for (client, ranges) in insertions.iter() {
        let mut known = state.get(client);
        // An `IdSet`'s ranges are sorted by start and merged where they touch.
        for range in ranges.iter() {
            if range.start > known {
                return Err(ApplyError::MissingPredecessors {
                    client: client.get(),
                    known,
                    starts_at: range.start,
                });
            }
            known = known.max(range.end);
        }
        ends.insert(client.get(), known);
    }
    for &(client, needed) in &decoded.needs {
        let known = match ends.get(&client) {
            Some(end) => *end,
            None => state.get(&ClientID::new(client)),
        };
        if needed > u64::from(known) {
            return Err(ApplyError::MissingDependency {
                client,
                known,
                needed,
            });
        }
    }
    Ok(())
}

/// Why an update holding a subdocument is refused. yrs 0.28.1 never frees a document that
/// integrated one, and when the shared type holding one is deleted it frees the subdocument's
/// item and then reads it (`Doc::destroy`, from the commit; valgrind reports the invalid
/// read): any writer could leak memory or corrupt the heap. The editors ycord serves (Tiptap,
/// Nextcloud Text) do not use subdocuments. See also [`release_subdocuments`].
const SUBDOCUMENTS_REFUSED: &str =
    "subdocuments are not supported (yrs 0.28 cannot delete or free them safely)";

/// Drops what yrs could not integrate of an update and holds pending, and says what it waited
/// for. [`check_dependencies`] refuses an update that refers to changes neither the document nor
/// the update holds, but not items of several clients that depend on each other in a cycle:
/// none of them can integrate first. Held pending, they would be in every full encoding of the
/// room and not in its log; dropped, the client is asked to resync like for a missing change.
fn drop_pending(txn: &mut TransactionMut) -> Option<ApplyError> {
    if !txn.has_missing_updates() {
        return None;
    }
    let store = txn.store();
    // The first clock the held blocks wait for, or else the first range of a held delete set.
    let waits_for = store
        .pending_update()
        .and_then(|pending| pending.missing.iter().next().map(|(c, clock)| (*c, *clock)))
        .or_else(|| {
            let (client, ranges) = store.pending_ds()?.iter().next()?;
            Some((*client, ranges.iter().next()?.end))
        });
    let (client, needed) = waits_for.unwrap_or((ClientID::new(0), 0));
    let known = txn.state_vector().get(&client);
    txn.prune_pending();
    Some(ApplyError::MissingDependency {
        client: client.get(),
        known,
        needed: needed.into(),
    })
}

/// Deletes, in memory, the subdocuments of a document stored before rooms refused them (see
/// [`SUBDOCUMENTS_REFUSED`]), and says whether there were any. yrs 0.28 never frees a document
/// that integrated a subdocument (fuzzer finding `leak-subdocument-room-never-freed`: the item
/// holds a strong clone of its parent document), and a client deleting the shared type that
/// holds one would make yrs free the item and then read it. Deleting the subdocument items
/// themselves is safe: yrs' garbage collection replaces their content, the parent clone with
/// it. The deletions are not broadcast; clients learn them at their next sync, and the next
/// compaction stores them.
fn release_subdocuments(doc: &Doc) -> bool {
    let mut txn = doc.transact_mut();
    if txn.subdocs().next().is_none() {
        return false;
    }
    let state = txn.encode_state_as_update_v1(&StateVector::default());
    let mut items = IdSet::new();
    let walked = protocol::validate::update_v1_with_references(
        &state,
        |_, _| {},
        |(client, clock)| items.insert(ID::new(ClientID::new(client), clock), 1),
    );
    // A v1 update of no structs (a zero client count) and that delete set.
    let mut deletions = vec![0];
    deletions.extend(items.encode_v1());
    let released = walked
        .map_err(|error| error.to_string())
        .and_then(|()| Update::decode_v1(&deletions).map_err(|error| error.to_string()))
        .and_then(|update| txn.apply_update(update).map_err(|error| error.to_string()));
    if let Err(error) = released {
        tracing::warn!(%error, "could not remove a document's subdocuments");
    }
    true
}

/// Takes the room's unwritten updates, numbered as the next log entry, if there are any.
fn take_unwritten(state: &mut RoomState) -> Option<(u64, Vec<Bytes>)> {
    if state.unwritten.is_empty() {
        return None;
    }
    let seq = state.next_seq;
    state.next_seq = state.next_seq.saturating_add(1);
    state.unwritten_bytes = 0;
    Some((seq, std::mem::take(&mut state.unwritten)))
}

/// Queues an awareness frame for every member; on a full queue the frame is dropped for that
/// member and the member flagged, so that its session sends the full state later.
fn broadcast_awareness(state: &mut RoomState, frame: Bytes) {
    for member in state.members.values() {
        if let Err(queue::TrySendError::Full(_)) = member.awareness.try_send(frame.clone()) {
            member
                .signals
                .awareness_dropped
                .store(true, Ordering::Release);
        }
    }
}

fn remove_awareness_states(state: &mut RoomState, clients: impl IntoIterator<Item = ClientID>) {
    let present: HashSet<ClientID> = state
        .awareness
        .iter()
        .filter(|(_, client_state)| client_state.data.is_some())
        .map(|(id, _)| id)
        .collect();
    let removed: Vec<ClientID> = clients
        .into_iter()
        .filter(|id| present.contains(id))
        .collect();
    for client in &removed {
        state.awareness.remove_state(*client);
    }
    if removed.is_empty() {
        return;
    }
    match state.awareness.update_with_clients(removed) {
        Ok(update) => broadcast_awareness(state, protocol::encode_awareness(&update.encode_v1())),
        Err(error) => tracing::error!(%error, "encoding awareness removal failed"),
    }
}

fn full_awareness(awareness: &Awareness) -> Option<Bytes> {
    let update = awareness.update().ok()?;
    if update.clients.is_empty() {
        return None;
    }
    Some(protocol::encode_awareness(&update.encode_v1()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use yrs::encoding::write::Write;
    use yrs::{Map, Text};

    /// A panic inside the critical section on demand, for this thread only.
    pub(super) mod panic_hook {
        use std::cell::Cell;

        thread_local! {
            static ARMED: Cell<bool> = const { Cell::new(false) };
        }

        /// The next update this thread applies panics inside yrs's transaction.
        pub fn arm() {
            ARMED.with(|armed| armed.set(true));
        }

        pub fn maybe_panic() {
            if ARMED.with(|armed| armed.replace(false)) {
                panic!("injected panic inside the room's critical section");
            }
        }
    }

    fn room() -> Arc<Room> {
        room_on(Arc::new(SledStore::temporary().unwrap()))
    }

    fn room_on(store: Arc<dyn DocStore>) -> Arc<Room> {
        let config = RoomConfig {
            compact_log_updates: u64::MAX,
            compact_log_bytes: u64::MAX,
            max_doc_bytes: u64::MAX,
            awareness_timeout: Duration::from_secs(30),
        };
        Arc::new(Room::load("room".into(), store, config, Arc::new(Metrics::new()), None).unwrap())
    }

    fn insert(text: &str) -> Vec<u8> {
        let doc = Doc::new();
        let root = doc.get_or_insert_text("text");
        let mut txn = doc.transact_mut();
        root.insert(&mut txn, 0, text);
        txn.encode_update_v1()
    }

    #[test]
    fn the_full_sync_reply_is_encoded_once_until_the_document_changes() {
        let room = room();
        room.apply_update(&insert("hello")).unwrap();
        let first = room.sync_step2(&StateVector::default());
        let second = room.sync_step2(&StateVector::default());
        assert_eq!(first.as_ptr(), second.as_ptr(), "the same bytes are shared");
        room.apply_update(&insert("world")).unwrap();
        let third = room.sync_step2(&StateVector::default());
        assert_ne!(third, first, "a change invalidates the cached reply");
    }

    #[test]
    fn an_update_past_the_document_limit_changes_nothing() {
        let store: Arc<dyn DocStore> = Arc::new(SledStore::temporary().unwrap());
        let config = RoomConfig {
            compact_log_updates: u64::MAX,
            compact_log_bytes: u64::MAX,
            max_doc_bytes: 64,
            awareness_timeout: Duration::from_secs(30),
        };
        let room =
            Room::load("room".into(), store, config, Arc::new(Metrics::new()), None).unwrap();
        let room = Arc::new(room);
        room.apply_update(&insert("small")).unwrap();
        let before = room.encode_state();
        let error = room.apply_update(&insert(&"x".repeat(100))).unwrap_err();
        assert!(matches!(error, ApplyError::DocumentTooLarge { .. }));
        assert_eq!(room.encode_state(), before);
    }

    fn text(room: &Room) -> serde_json::Value {
        room.to_json()["text"].clone()
    }

    /// Two updates of one client: "a" at clock 0, then "b" at clock 1.
    fn two_steps() -> (Vec<u8>, Vec<u8>) {
        let doc = Doc::with_client_id(7);
        let root = doc.get_or_insert_text("text");
        let mut steps = Vec::new();
        for (at, piece) in [(0, "a"), (1, "b")] {
            let mut txn = doc.transact_mut();
            root.insert(&mut txn, at, piece);
            steps.push(txn.encode_update_v1());
        }
        (steps.remove(0), steps.remove(0))
    }

    #[test]
    fn an_update_that_skips_clocks_is_refused_until_the_gap_is_filled() {
        let room = room();
        let (first, second) = two_steps();
        let error = room.apply_update(&second).unwrap_err();
        assert!(
            matches!(
                error,
                ApplyError::MissingPredecessors {
                    client: 7,
                    known: 0,
                    starts_at: 1
                }
            ),
            "{error:?}"
        );
        assert_eq!(room.encode_state(), EMPTY_UPDATE, "nothing was integrated");
        assert_eq!(room.apply_update(&first).unwrap(), Applied::Changed);
        assert_eq!(room.apply_update(&second).unwrap(), Applied::Changed);
        assert_eq!(text(&room), "ab");
        // Overlapping resends (a merged update, a duplicate) start at or before what the
        // room has and pass.
        let merged = yrs::merge_updates_v1([first.as_slice(), second.as_slice()]).unwrap();
        assert_eq!(room.apply_update(&merged).unwrap(), Applied::Unchanged);
        assert_eq!(room.apply_update(&first).unwrap(), Applied::Unchanged);
    }

    /// The fuzzer finding `asan-heap-use-after-free-in-update-exclude`: the first update puts
    /// client 1's clocks 1..11 behind a hole; yrs 0.28 integrated it and then read freed memory
    /// integrating the second (and ended up with "h"). Yjs keeps the first pending.
    #[test]
    fn an_update_behind_a_hole_cannot_corrupt_the_document() {
        let hex = |text: &str| -> Vec<u8> {
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
                .collect()
        };
        let room = room();
        let hole = hex("01020101000a01040001ff0000000400667a7a02740b68019f9f9f00000100");
        let text_update = hex("01010100040104746578740b68656c6c6f20770364006400");
        assert!(matches!(
            room.apply_update(&hole),
            Err(ApplyError::MissingPredecessors { .. })
        ));
        assert_eq!(room.apply_update(&text_update).unwrap(), Applied::Changed);
        assert_eq!(text(&room), "hello w\u{3}d\0d");
    }

    /// Client 8 types after client 7's text, and deletes it: its updates depend on client 7's.
    fn dependent_steps() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let first = Doc::with_client_id(7);
        let root = first.get_or_insert_text("text");
        let base = {
            let mut txn = first.transact_mut();
            root.insert(&mut txn, 0, "ab");
            txn.encode_update_v1()
        };
        let second = Doc::with_client_id(8);
        let root = second.get_or_insert_text("text");
        second
            .transact_mut()
            .apply_update(Update::decode_v1(&base).unwrap())
            .unwrap();
        let mut steps = Vec::new();
        for edit in [true, false] {
            let mut txn = second.transact_mut();
            if edit {
                root.insert(&mut txn, 1, "X");
            } else {
                root.remove_range(&mut txn, 0, 1);
            }
            steps.push(txn.encode_update_v1());
        }
        (base, steps.remove(0), steps.remove(0))
    }

    #[test]
    fn an_update_that_depends_on_missing_changes_is_refused_until_they_arrive() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let room = room_on(store.clone());
        let (base, insert_after, delete) = dependent_steps();
        for dependent in [&insert_after, &delete] {
            let error = room.apply_update(dependent).unwrap_err();
            assert!(
                matches!(
                    error,
                    ApplyError::MissingDependency {
                        client: 7,
                        known: 0,
                        ..
                    }
                ),
                "{error:?}"
            );
        }
        assert_eq!(room.encode_state(), EMPTY_UPDATE, "nothing is held pending");
        assert_eq!(room.apply_update(&base).unwrap(), Applied::Changed);
        assert_eq!(room.apply_update(&insert_after).unwrap(), Applied::Changed);
        assert_eq!(room.apply_update(&delete).unwrap(), Applied::Changed);
        assert_eq!(text(&room), "Xb");
        // What a dependent update needs may come in the same update.
        let other = room_on(Arc::new(SledStore::temporary().unwrap()));
        let merged = yrs::merge_updates_v1([base.as_slice(), insert_after.as_slice()]).unwrap();
        assert_eq!(other.apply_update(&merged).unwrap(), Applied::Changed);
        room.write_log().unwrap();
        assert_eq!(text(&room_on(store)), "Xb");
    }

    /// The fuzzer finding `restart-loses-item-with-missing-parent`: client 1's clocks 0..18
    /// as a GC block, then an item over 0..114 whose parent (client 0, clock 0) does not exist.
    /// yrs kept the item pending, left it out of the delta that is stored, and put it in the
    /// room's full encoding: the room in memory and the room reloaded disagreed.
    #[test]
    fn an_item_whose_parent_is_missing_is_not_held_pending() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let room = room_on(store.clone());
        let gc = [1, 1, 1, 0, 0, 18, 0];
        let orphan = [1, 1, 1, 0, 1, 0, 0, 0, 114, 1, 128, 18, 0, 113, 2];
        assert_eq!(room.apply_update(&gc).unwrap(), Applied::Changed);
        let error = room.apply_update(&orphan).unwrap_err();
        assert!(
            matches!(
                error,
                ApplyError::MissingDependency {
                    client: 0,
                    known: 0,
                    needed: 1
                }
            ),
            "{error:?}"
        );
        assert!(!room.has_pending_changes());
        room.write_log().unwrap();
        assert_eq!(room_on(store).encode_state(), room.encode_state());
    }

    /// The fuzzer finding `partly-applied-update-not-stored`: yrs integrated client 2's first
    /// six items, then refused the seventh (its parent is a map entry, not a shared type).
    #[test]
    fn what_yrs_integrated_of_a_refused_update_is_stored() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let room = room_on(store.clone());
        let update = [
            0x01, 0x07, 0x02, 0x00, 0x28, 0x01, 0x03, 0x6d, 0x61, 0x70, 0x03, 0x6b, 0x65, 0x79,
            0x01, 0x77, 0x05, 0x76, 0x61, 0x6c, 0x75, 0x65, 0x28, 0x01, 0x03, 0x6d, 0x71, 0x70,
            0x01, 0x6e, 0x01, 0x7d, 0x2a, 0x08, 0x01, 0x05, 0x61, 0x72, 0x72, 0x61, 0x79, 0x01,
            0x7d, 0x01, 0x87, 0x02, 0x02, 0x00, 0x08, 0x00, 0x02, 0x03, 0x01, 0x77, 0x06, 0x7e,
            0x65, 0x73, 0x74, 0x65, 0x64, 0x07, 0x01, 0x03, 0x78, 0x6d, 0x6c, 0x06, 0x04, 0x00,
            0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let error = room.apply_update(&update).unwrap_err();
        assert!(matches!(error, ApplyError::InvalidUpdate(_)), "{error:?}");
        assert_ne!(
            room.encode_state(),
            EMPTY_UPDATE,
            "yrs integrated part of it"
        );
        room.write_log().unwrap();
        assert_eq!(room_on(store).encode_state(), room.encode_state());
    }

    /// Items that depend on each other in a cycle across clients: client 1's clock 0 follows
    /// client 2's clock 0, which follows client 1's clock 1. They pass the dependency check
    /// (everything they refer to is in the update) but none of them can integrate first.
    const CYCLE: &[u8] = &[
        2, // clients
        2, 1, 0, // two structs of client 1 from clock 0
        0x84, 2, 0, 1, b'x', // string item, origin (2, 0)
        0x84, 1, 0, 1, b'y', // string item, origin (1, 0)
        1, 2, 0, // one struct of client 2 from clock 0
        0x84, 1, 1, 1, b'z', // string item, origin (1, 1)
        0,    // no deletions
    ];

    /// yrs would hold the cycle pending: in every full encoding of the room, not in its log.
    #[test]
    fn items_that_depend_on_each_other_in_a_cycle_are_not_held_pending() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let room = room_on(store.clone());
        assert_eq!(
            room.apply_update(&insert("kept")).unwrap(),
            Applied::Changed
        );
        let before = text(&room);
        let error = room.apply_update(CYCLE).unwrap_err();
        assert!(
            matches!(error, ApplyError::MissingDependency { .. }),
            "{error:?}"
        );
        assert!(!room.has_pending_changes());
        assert_eq!(text(&room), before);
        room.write_log().unwrap();
        assert_eq!(room_on(store).encode_state(), room.encode_state());
    }

    /// A log written before the room refused such updates may hold one: loading skips it and
    /// keeps the rest.
    #[test]
    fn a_stored_update_yrs_would_hold_pending_is_skipped_on_load() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let updates = [insert("first "), CYCLE.to_vec(), insert("second ")];
        for (seq, update) in updates.into_iter().enumerate() {
            store
                .append("room", seq as u64, &[Bytes::from(update)])
                .unwrap();
        }
        let room = room_on(store);
        assert!(!room.has_pending_changes());
        let text = text(&room).as_str().unwrap().to_owned();
        assert!(
            text.contains("first ") && text.contains("second "),
            "{text}"
        );
        assert!(!text.contains('x'), "{text}");
    }

    /// Sets its flag when dropped: with a document, only once the document is freed.
    struct SetOnDrop(Arc<AtomicBool>);

    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// Whether `doc` is freed once its last handle is dropped (observers live in its store).
    fn freed_when_dropped(doc: Doc) -> bool {
        let freed = Arc::new(AtomicBool::new(false));
        let guard = SetOnDrop(freed.clone());
        doc.observe_update_v1("freed", move |_, _| {
            let _ = &guard;
        })
        .unwrap();
        drop(doc);
        freed.load(Ordering::SeqCst)
    }

    /// An update that inserts a subdocument into a map nested in the root map `docs`.
    fn nested_subdocument() -> Vec<u8> {
        let source = Doc::new();
        let docs = source.get_or_insert_map("docs");
        let update = {
            let mut txn = source.transact_mut();
            let inner = docs.insert(&mut txn, "inner", yrs::MapPrelim::default());
            inner.insert(&mut txn, "child", Doc::new());
            txn.encode_update_v1()
        };
        release_subdocuments(&source);
        update
    }

    #[test]
    fn an_update_holding_a_subdocument_is_refused() {
        let room = room();
        let error = room.apply_update(&nested_subdocument()).unwrap_err();
        assert!(
            matches!(&error, ApplyError::InvalidUpdate(reason) if reason == SUBDOCUMENTS_REFUSED),
            "{error:?}"
        );
        assert_eq!(room.encode_state(), EMPTY_UPDATE);
    }

    /// The fuzzer finding `leak-subdocument-room-never-freed`: yrs kept a document that
    /// integrated a subdocument alive forever, so every unload of such a room leaked it. Rooms
    /// refuse subdocuments now; one stored before is removed when the room loads.
    #[test]
    fn a_stored_subdocument_is_removed_on_load_and_the_room_freed() {
        let update = nested_subdocument();
        let leaky = Doc::new();
        leaky
            .transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
        assert!(
            !freed_when_dropped(leaky),
            "yrs no longer leaks: drop the workaround"
        );

        let store = Arc::new(SledStore::temporary().unwrap());
        store.append("room", 0, &[Bytes::from(update)]).unwrap();
        let room = room_on(store);
        assert_eq!(room.to_json()["docs"], serde_json::json!({"inner": {}}));
        let doc = room.state().awareness.doc().clone();
        drop(room);
        assert!(freed_when_dropped(doc));
    }

    #[test]
    fn an_item_that_refers_to_its_own_clients_later_change_is_invalid() {
        let room = room();
        // Client 1's item at clock 0 whose origin is client 1's clock 5.
        let ahead = [1, 1, 1, 0, 0x84, 1, 5, 1, b'a', 0];
        let error = room.apply_update(&ahead).unwrap_err();
        assert!(matches!(error, ApplyError::InvalidUpdate(_)), "{error:?}");
        assert!(!room.has_pending_changes());
    }

    #[test]
    fn a_compacted_room_answers_its_first_joiner_with_its_stored_snapshot() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let room = room_on(store.clone());
        room.apply_update(&insert("cold")).unwrap();
        room.compact().unwrap();
        let reloaded = room_on(store.clone());
        let snapshot = store.load("room").unwrap().snapshot.unwrap();
        let primed = reloaded.state().full_sync_reply.clone();
        assert_eq!(primed, Some(protocol::encode_sync_step2(&snapshot)));
        assert_eq!(
            reloaded.sync_step2(&StateVector::default()),
            primed.unwrap()
        );
        // With log entries after the snapshot, the reply is encoded from the document.
        reloaded.apply_update(&insert("more")).unwrap();
        reloaded.write_log().unwrap();
        assert_eq!(room_on(store).state().full_sync_reply, None);
    }

    /// A member that does not drain its queues: past [`UPDATE_QUEUE_BYTES`] it is removed
    /// (lagged, closed with 1013 by its session) long before the queue is full in frames, and
    /// past [`AWARENESS_QUEUE_BYTES`] its awareness frames are dropped (and it is flagged).
    #[test]
    fn member_queues_are_bounded_in_bytes() {
        let room = room();
        let (stalled, _) = room.subscribe(1);
        let (mut reader, _) = room.subscribe(2);
        let writer = Doc::with_client_id(9);
        let root = writer.get_or_insert_text("text");
        let piece = "x".repeat(1 << 20);
        let mut sent = 0;
        while !stalled.signals.lagged() {
            let update = {
                let mut txn = writer.transact_mut();
                root.insert(&mut txn, 0, &piece);
                txn.encode_update_v1()
            };
            room.apply_update(&update).unwrap();
            while reader.updates.try_recv().is_ok() {}
            sent += 1;
            assert!(sent <= 64, "still a member after {sent} MiB");
        }
        assert!(
            (UPDATE_QUEUE_BYTES >> 20..=(UPDATE_QUEUE_BYTES >> 20) + 1).contains(&sent),
            "removed after {sent} frames of 1 MiB"
        );
        assert_eq!(
            room.state().members.len(),
            1,
            "only the stalled member was removed"
        );

        let mut controlled = HashSet::new();
        let state = format!("{{\"name\":\"{}\"}}", "y".repeat(100 << 10));
        let frames = AWARENESS_QUEUE_BYTES / state.len() + 2;
        assert!(frames < AWARENESS_QUEUE_CAPACITY);
        let (mut watcher, _) = room.subscribe(3);
        for clock in 1..=frames as u32 {
            let mut payload = Vec::new();
            use yrs::encoding::write::Write;
            payload.write_var(1u32);
            payload.write_var(77u32);
            payload.write_var(clock);
            payload.write_string(&state);
            room.apply_awareness(&payload, &mut controlled).unwrap();
        }
        assert!(watcher.signals.take_awareness_dropped());
        let queued: usize = std::iter::from_fn(|| watcher.awareness.try_recv().ok())
            .map(|frame| frame.len())
            .sum();
        assert!(queued <= AWARENESS_QUEUE_BYTES, "{queued} bytes queued");
    }

    #[test]
    fn applied_updates_reach_the_store() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let room = room_on(store.clone());
        for piece in ["one", "two", "three"] {
            room.apply_update(&insert(piece)).unwrap();
        }
        room.write_log().unwrap();
        assert_eq!(store.load("room").unwrap().log.len(), 3);
        let reloaded = room_on(store.clone());
        assert_eq!(reloaded.to_json(), room.to_json());
    }

    /// Keystrokes share log entries: one sled insert per [`MAX_UNWRITTEN_UPDATES`] updates,
    /// and the rest by the next `write_log` (the flusher's), all in order.
    #[test]
    fn keystrokes_are_written_several_per_log_entry() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let room = room_on(store.clone());
        let writer = Doc::with_client_id(7);
        let root = writer.get_or_insert_text("text");
        let keystrokes = 2 * MAX_UNWRITTEN_UPDATES + 10;
        for index in 0..keystrokes {
            let mut txn = writer.transact_mut();
            root.insert(&mut txn, index as u32, "x");
            room.apply_update(&txn.encode_update_v1()).unwrap();
        }
        assert_eq!(store.stats("room").unwrap().log_entries, 2);
        room.write_log().unwrap();
        assert_eq!(store.stats("room").unwrap().log_entries, 3);
        assert_eq!(store.load("room").unwrap().log.len(), keystrokes);
        let reloaded = room_on(store.clone());
        assert_eq!(text(&reloaded), "x".repeat(keystrokes));
    }

    /// An update of more than [`MAX_UNWRITTEN_BYTES`] is written at once, as its own entry.
    #[test]
    fn a_large_update_is_written_at_once() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let room = room_on(store.clone());
        room.apply_update(&insert(&"y".repeat(MAX_UNWRITTEN_BYTES)))
            .unwrap();
        assert_eq!(store.stats("room").unwrap().log_entries, 1);
    }

    /// A room on a store that fails on demand, sharing the health its store failures go to.
    fn failing_room() -> (Arc<crate::store::FailingStore>, Arc<StoreHealth>, Arc<Room>) {
        let store = Arc::new(crate::store::FailingStore::new(Arc::new(
            SledStore::temporary().unwrap(),
        )));
        let health = Arc::new(StoreHealth::new(Arc::new(Metrics::new())));
        let config = RoomConfig {
            compact_log_updates: u64::MAX,
            compact_log_bytes: u64::MAX,
            max_doc_bytes: u64::MAX,
            awareness_timeout: Duration::from_secs(30),
        };
        let room = Room::load(
            "room".into(),
            store.clone(),
            config,
            Arc::new(Metrics::new()),
            None,
        )
        .unwrap()
        .with_store_health(health.clone());
        (store, health, Arc::new(room))
    }

    /// Client 7 typing `pieces` one after the other: each update depends on the one before.
    fn typing(pieces: &[&str]) -> Vec<Vec<u8>> {
        let doc = Doc::with_client_id(7);
        let root = doc.get_or_insert_text("text");
        pieces
            .iter()
            .map(|piece| {
                let mut txn = doc.transact_mut();
                let end = root.len(&txn);
                root.insert(&mut txn, end, piece);
                txn.encode_update_v1()
            })
            .collect()
    }

    /// A failed append leaves a hole in the log; the updates after it depend on the lost one.
    /// Recovery writes a snapshot over the hole, so that a reload has every character.
    #[test]
    fn a_failed_append_is_covered_by_a_snapshot_and_later_updates_load() {
        let (store, health, room) = failing_room();
        let steps = typing(&["a", "b", "c", "d"]);
        room.apply_update(&steps[0]).unwrap();
        room.write_log().unwrap();
        room.apply_update(&steps[1]).unwrap();
        store.fail_appends(true);
        assert!(room.write_log().is_err());
        assert!(health.is_failing());
        // While failing, nothing is applied: the client is told, and resends later.
        assert!(matches!(
            room.apply_update(&steps[2]),
            Err(ApplyError::Store(StoreError::Failing))
        ));
        store.fail_appends(false);
        let generation = health.generation();
        room.write_log().unwrap();
        assert!(store.load("room").unwrap().snapshot.is_some(), "a snapshot");
        assert!(health.recovered(generation));
        for step in &steps[2..] {
            room.apply_update(step).unwrap();
        }
        room.write_log().unwrap();
        let reloaded = room_on(store.clone());
        assert_eq!(text(&reloaded), "abcd");
        // The next write after recovery is an append again.
        assert_eq!(store.stats("room").unwrap().log_entries, 1);
    }

    /// The batch an applying writer takes (too many unwritten updates) fails to append: the
    /// writer is refused (its client is closed and resends), the room keeps the update.
    #[test]
    fn an_append_that_fails_while_applying_is_reported_and_kept_in_memory() {
        let (store, health, room) = failing_room();
        store.fail_appends(true);
        let big = insert(&"y".repeat(MAX_UNWRITTEN_BYTES));
        assert!(matches!(
            room.apply_update(&big),
            Err(ApplyError::Store(StoreError::Injected { op: "append" }))
        ));
        assert!(health.is_failing());
        store.fail_appends(false);
        room.write_log().unwrap();
        assert_eq!(room_on(store).encode_state(), room.encode_state());
    }

    #[test]
    fn a_failed_compaction_keeps_the_log_counters_and_is_retried() {
        let (store, health, room) = failing_room();
        for piece in ["one", "two", "three"] {
            room.apply_update(&insert(piece)).unwrap();
        }
        room.write_log().unwrap();
        store.fail_compactions(true);
        assert!(room.compact().is_err());
        assert!(health.is_failing());
        assert_eq!(room.info().log_updates, 3, "nothing was compacted");
        store.fail_compactions(false);
        let generation = health.generation();
        room.write_log().unwrap();
        assert!(health.recovered(generation));
        assert_eq!(room.info().log_updates, 0);
        let stored = store.load("room").unwrap();
        assert!(stored.snapshot.is_some() && stored.log.is_empty());
        assert_eq!(room_on(store).encode_state(), room.encode_state());
    }

    /// After a store failure, even a room with nothing new writes a snapshot: the store may
    /// have dropped what it had not flushed. Its sequence numbers stay above the snapshot's.
    #[test]
    fn after_a_failure_an_unchanged_room_writes_a_snapshot_too() {
        let (store, health, room) = failing_room();
        health.failed(StoreOp::Flush, None, &StoreError::Failing);
        room.write_log().unwrap();
        let stored = store.load("room").unwrap();
        assert!(stored.snapshot.is_some());
        assert_eq!(stored.next_seq, 1, "number 0 is the snapshot's");
        assert!(health.recovered(health.generation()));
        room.apply_update(&insert("after")).unwrap();
        room.write_log().unwrap();
        assert_eq!(text(&room_on(store)), "after");
    }

    #[test]
    fn a_closed_store_refuses_updates() {
        let (_store, health, room) = failing_room();
        health.close();
        assert!(matches!(
            room.apply_update(&insert("late")),
            Err(ApplyError::ShuttingDown)
        ));
        assert_eq!(room.encode_state(), EMPTY_UPDATE);
    }

    /// A panic inside yrs is contained: the writer gets an error, the room's members are
    /// dropped, nothing more is applied, and no snapshot of the doubtful document is written.
    /// What was applied before is still written to the log.
    #[test]
    fn a_panic_while_applying_takes_the_room_out_of_service() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let room = room_on(store.clone());
        let (mut subscription, _) = room.subscribe(1);
        room.apply_update(&insert("kept")).unwrap();
        panic_hook::arm();
        assert!(matches!(
            room.apply_update(&insert("boom")),
            Err(ApplyError::RoomBroken)
        ));
        assert!(room.is_broken());
        assert_eq!(room.metrics.rooms_broken.get(), 1);
        assert!(subscription.updates.try_recv().is_ok(), "the first update");
        assert!(
            matches!(
                subscription.updates.try_recv(),
                Err(queue::TryRecvError::Disconnected)
            ),
            "the member was dropped"
        );
        assert!(matches!(
            room.apply_update(&insert("after")),
            Err(ApplyError::RoomBroken)
        ));
        room.compact().unwrap();
        room.write_log().unwrap();
        let stored = store.load("room").unwrap();
        assert!(stored.snapshot.is_none(), "no snapshot of a broken room");
        assert_eq!(text(&room_on(store)), "kept");
    }

    /// A panic elsewhere while the room is locked poisons the lock: the room is not served as
    /// it is but taken out of service.
    #[test]
    fn a_poisoned_room_is_taken_out_of_service() {
        let room = room();
        let (mut subscription, _) = room.subscribe(1);
        let panicking = room.clone();
        let panicked = std::thread::spawn(move || {
            let _locked = panicking.state();
            panic!("a bug while the room is locked");
        })
        .join();
        assert!(panicked.is_err());
        assert!(!room.is_broken(), "noticed at the next lock");
        assert!(matches!(
            room.apply_update(&insert("x")),
            Err(ApplyError::RoomBroken)
        ));
        assert!(room.is_broken());
        assert!(matches!(
            subscription.updates.try_recv(),
            Err(queue::TryRecvError::Disconnected)
        ));
    }

    /// A compaction takes the unwritten updates under the snapshot's sequence number, so that
    /// updates applied after it can never be written under a number the snapshot claims.
    #[test]
    fn updates_applied_after_a_compaction_survive_a_reload() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let room = room_on(store.clone());
        room.apply_update(&insert("before")).unwrap();
        room.compact().unwrap();
        room.apply_update(&insert("after")).unwrap();
        room.write_log().unwrap();
        let reloaded = room_on(store.clone());
        assert_eq!(reloaded.to_json(), room.to_json());
        assert!(text(&reloaded).as_str().unwrap().contains("after"));
    }

    /// Runs `encode` (which reads the document) while the document is busy in another
    /// transaction, and says whether an awareness update could be applied meanwhile: whether
    /// `encode` waits for the document without holding the room's lock.
    fn room_usable_while(room: &Arc<Room>, encode: fn(&Room)) -> bool {
        use std::sync::mpsc;
        let doc = room.state().awareness.doc().clone();
        let (busy_tx, busy_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            let _txn = doc.transact_mut();
            busy_tx.send(()).unwrap();
            let _ = release_rx.recv();
        });
        busy_rx.recv().unwrap();
        let encoding = {
            let room = room.clone();
            std::thread::spawn(move || encode(&room))
        };
        // Let the encode reach the document's lock.
        std::thread::sleep(Duration::from_millis(200));
        let (done_tx, done_rx) = mpsc::channel();
        let awareness = {
            let room = room.clone();
            std::thread::spawn(move || {
                let mut payload = Vec::new();
                payload.write_var(1u32);
                payload.write_var(5u64);
                payload.write_var(1u32);
                payload.write_string("{}");
                let applied = room.apply_awareness(&payload, &mut HashSet::new());
                let _ = done_tx.send(applied.is_ok());
            })
        };
        let usable = done_rx.recv_timeout(Duration::from_secs(10)) == Ok(true);
        release_tx.send(()).unwrap();
        for thread in [writer, encoding, awareness] {
            thread.join().unwrap();
        }
        usable
    }

    #[test]
    fn encoding_the_state_does_not_hold_the_room_lock() {
        let room = room();
        room.apply_update(&insert("some text")).unwrap();
        assert!(room_usable_while(&room, |room| drop(room.encode_state())));
        assert!(room_usable_while(&room, |room| drop(room.to_json())));
    }

    #[test]
    fn a_sync_reply_to_a_non_empty_state_vector_does_not_hold_the_room_lock() {
        let room = room();
        room.apply_update(&insert("some text")).unwrap();
        assert!(room_usable_while(&room, |room| {
            let mut state_vector = StateVector::default();
            state_vector.set_max(ClientID::new(99), 1);
            drop(room.sync_step2(&state_vector));
        }));
    }
}
