//! One room: a document, its members and their presence, and its persistence, behind [`Room`].
//!
//! - [`document`]: decode → check → integrate → delta, and replaying a stored room; no I/O.
//! - [`members`]: each member's bounded queues, the broadcast, the awareness table.
//! - [`persistence`]: sequence numbers, batching into log entries, compaction, deletion.
//! - [`ChangeObserver`]: what is told of every change beyond the room's members (webhooks; a
//!   cluster's fan-out plugs in here too).
//!
//! Every change to a room happens under its one `state` lock, held briefly and never across an
//! `.await`: the update is applied, its delta encoded once, handed to every member's queue and
//! queued for the store, all in one critical section. That keeps the order of updates identical
//! in memory, on disk and on every socket, and means a member that joins (under the same lock)
//! can never miss an update that happens between reading the state and subscribing. The store
//! receives the queued updates as log entries right after the lock is released (see
//! [`Room::write_log`]); they are durable at the next flush.

mod document;
mod error;
mod members;
mod persistence;
mod roster;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use yrs::sync::Awareness;
use yrs::sync::awareness::AwarenessUpdate;
use yrs::sync::time::{Clock, SystemClock};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, ReadTxn, StateVector, Transact};

use crate::auth::Access;
use crate::metrics::Metrics;
use crate::protocol;
use crate::store::health::Refused;
use crate::store::{RoomStore, StoreError, StoreHealth};
pub use error::{ApplyError, MAX_ROOM_NAME_BYTES, RoomNameError};
use members::Members;
pub use members::{
    AWARENESS_QUEUE_BYTES, AWARENESS_QUEUE_CAPACITY, BEHIND_WATERMARK, ConnectionId,
    MAX_AWARENESS_CLIENTS, MemberSignals, Subscription, UPDATE_QUEUE_BYTES, UPDATE_QUEUE_CAPACITY,
};
use persistence::{Log, SizeCheck};
use roster::Roster;
pub use roster::{Identity, Profile, RosterUser};

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

impl RoomConfig {
    /// No thresholds and no size limit: for the admin commands, which compact explicitly, and
    /// for tests and benches that drive a room by hand.
    pub fn without_limits() -> RoomConfig {
        RoomConfig {
            compact_log_updates: u64::MAX,
            compact_log_bytes: u64::MAX,
            max_doc_bytes: u64::MAX,
            awareness_timeout: Duration::from_secs(30),
        }
    }
}

/// What a joining member is sent first: the server's SyncStep1 and, when anyone is present, the
/// awareness states. Separate frames (clients read one message per frame).
#[derive(Debug)]
pub struct Greeting {
    pub sync_step1: Bytes,
    pub awareness: Option<Bytes>,
    /// The `roster` event (a stateless body), for a member that hears them.
    pub roster: Option<Bytes>,
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
    /// Every user in the room.
    pub roster: Vec<RosterUser>,
    /// The active editor (see `roster`).
    pub editor: Option<Identity>,
}

/// The result of applying a client's update.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The update was new to the room: stored and broadcast.
    Changed,
    /// The room already had everything in it; nothing was stored or broadcast.
    Unchanged,
}

/// Told of every change a room applies, once its members have it and its log entry is taken:
/// where what lies beyond the room's members plugs in, without depending on [`Room`] (webhooks,
/// and a cluster's fan-out to other nodes). Called outside the room's lock, so calls for
/// concurrent changes may come in either order; Yjs updates commute.
pub trait ChangeObserver: Send + Sync + std::fmt::Debug {
    /// `delta` is the v1 update the room just applied; `changes` the room's change handle,
    /// which outlives the call.
    fn changed(&self, room: &Arc<str>, changes: &Arc<ChangeHandle>, delta: &Bytes);
}

/// What an observer may keep of a room without keeping the room: when it last changed, and a
/// flag to debounce notices ("one is pending already").
#[derive(Debug, Default)]
pub struct ChangeHandle {
    last_change_ms: AtomicU64,
    notice_pending: AtomicBool,
}

impl ChangeHandle {
    /// A handle for a document that last changed at `last_change_ms` (0: never recorded).
    pub fn new(last_change_ms: u64) -> ChangeHandle {
        ChangeHandle {
            last_change_ms: AtomicU64::new(last_change_ms),
            notice_pending: AtomicBool::new(false),
        }
    }

    /// When the document last changed, ms since the epoch (0: not since it was created).
    pub fn last_change_ms(&self) -> u64 {
        self.last_change_ms.load(Ordering::Acquire)
    }

    /// How long since the document last changed.
    pub fn quiet_for(&self) -> Duration {
        Duration::from_millis(SystemClock.now().saturating_sub(self.last_change_ms()))
    }

    /// Marks a notice of this room as pending; returns whether one already was.
    pub fn mark_notice_pending(&self) -> bool {
        self.notice_pending.swap(true, Ordering::AcqRel)
    }

    /// Clears the pending mark: the next change is noticed again.
    pub fn clear_notice_pending(&self) {
        self.notice_pending.store(false, Ordering::Release);
    }

    fn touch(&self) {
        self.last_change_ms
            .store(SystemClock.now(), Ordering::Release);
    }
}

struct RoomState {
    /// Owns the room's document (`awareness.doc()`) and the presence states.
    awareness: Awareness,
    members: Members,
    /// Who is in the room and its active editor.
    roster: Roster,
    log: Log,
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
    store: Arc<dyn RoomStore>,
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
    /// Told of every change, when anything beyond the members wants to know.
    observer: Option<Arc<dyn ChangeObserver>>,
    changes: Arc<ChangeHandle>,
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
        store: Arc<dyn RoomStore>,
        config: RoomConfig,
        metrics: Arc<Metrics>,
        observer: Option<Arc<dyn ChangeObserver>>,
    ) -> Result<Room, StoreError> {
        let stored = store.load(&name)?;
        for error in &stored.corrupt {
            tracing::error!(room = %name, %error, "skipping unreadable stored record");
        }
        let replayed = document::replay(&name, stored.snapshot.iter().chain(stored.log.iter()));
        let snapshot_bytes = stored.snapshot.as_ref().map_or(0, |s| s.len() as u64);
        // A room just compacted holds exactly its snapshot, which is the full sync reply: the
        // first joiner of a cold room need not wait for the document to be encoded again.
        let full_sync_reply = match &stored.snapshot {
            Some(snapshot)
                if stored.log.is_empty()
                    && stored.corrupt.is_empty()
                    && !replayed.skipped
                    && !replayed.released =>
            {
                Some(protocol::encode_sync_step2(snapshot))
            }
            _ => None,
        };
        let log = Log::new(
            stored.next_seq,
            stored.log.len() as u64,
            replayed.bytes - snapshot_bytes,
            snapshot_bytes,
        );
        let changes = Arc::new(ChangeHandle::new(stored.last_change_ms.unwrap_or(0)));
        Ok(Room {
            state: Mutex::new(RoomState {
                awareness: Awareness::new(replayed.doc),
                members: Members::default(),
                roster: Roster::default(),
                log,
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
            observer,
            changes,
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
        state.log.snapshot_generation = health.generation();
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

    /// Adds an anonymous read-write member that hears no stateless messages (tests, benches).
    pub fn subscribe(&self, connection: ConnectionId) -> (Subscription, Greeting) {
        let profile = Profile {
            user: Profile::user_of(None, connection),
            read_write: true,
            hears_stateless: false,
        };
        self.subscribe_as(connection, profile)
    }

    /// Adds a member. Its queues start receiving every update applied from now on, and the
    /// greeting reflects the state just before: nothing can fall between the two. The others
    /// that hear stateless messages are told it joined, and everyone who is the editor if
    /// this join elected one.
    pub fn subscribe_as(
        &self,
        connection: ConnectionId,
        profile: Profile,
    ) -> (Subscription, Greeting) {
        let state = &mut *self.state();
        // A broken room keeps no members: the session finds its queue closed and ends.
        if self.is_broken() {
            let greeting = Greeting {
                sync_step1: document::sync_step1(state.awareness.doc()),
                awareness: None,
                roster: None,
            };
            return (Members::closed_subscription(), greeting);
        }
        let hears = profile.hears_stateless;
        let subscription = state.members.add(connection, hears);
        let user = profile.user.clone();
        let elected = state.roster.add(connection, profile);
        let joined = Identity {
            user: user.clone(),
            connection,
        };
        self.broadcast_event(state, Some(connection), |roster| {
            roster::presence_event("joined", &joined, roster.connections_of(&user))
        });
        if elected.is_some() {
            self.broadcast_event(state, Some(connection), |_| {
                roster::editor_event(elected.as_ref())
            });
        }
        let greeting = Greeting {
            sync_step1: document::sync_step1(state.awareness.doc()),
            awareness: members::full_awareness(&state.awareness),
            roster: hears.then(|| {
                protocol::hocuspocus::stateless_body(&state.roster.roster_event(connection))
            }),
        };
        (subscription, greeting)
    }

    /// Queues one of ycord's events for the members that hear them, but `except`. The event is
    /// only made when one does: most rooms have y-websocket members only.
    fn broadcast_event(
        &self,
        state: &RoomState,
        except: Option<ConnectionId>,
        event: impl FnOnce(&Roster) -> String,
    ) {
        let body = || protocol::hocuspocus::stateless_body(&event(&state.roster));
        let (queued, dropped) = state.members.broadcast_stateless(body, except);
        self.metrics.stateless_sent.inc_by(queued);
        self.metrics.stateless_dropped.inc_by(dropped);
    }

    /// Relays a client's stateless message to the room's other members that hear them, in a
    /// `relay` envelope naming the sender as ycord knows it. Never stored.
    pub fn relay_stateless(&self, from: ConnectionId, payload: &str) {
        let state = &*self.state();
        let Some(sender) = state.roster.identity(from) else {
            return;
        };
        self.broadcast_event(state, Some(from), |_| roster::relay_event(&sender, payload));
    }

    /// Changes whether a member may write, after a refreshed token changed its mode, and tells
    /// everyone when that changed the active editor.
    pub fn set_read_write(&self, connection: ConnectionId, read_write: bool) {
        let state = &mut *self.state();
        if let Some(editor) = state.roster.set_read_write(connection, read_write) {
            self.broadcast_event(state, None, |_| roster::editor_event(editor.as_ref()));
        }
    }

    /// Removes a member whose permission was revoked: its session closes it with 4403
    /// ([`crate::connection::close_code::PERMISSION_REVOKED`]) and then leaves the room.
    pub fn revoke(&self, connection: ConnectionId) {
        self.state().members.revoke(connection);
    }

    /// Changes what a member may do (its permission changed while it was connected): its
    /// session applies it before its next message, and the roster hears of a change of editor.
    pub fn change_access(&self, connection: ConnectionId, access: Access) {
        self.state().members.change_access(connection, access);
        self.set_read_write(connection, access == Access::ReadWrite);
    }

    /// Hands the active editor's role over when its client has been silent for the awareness
    /// timeout while another candidate spoke (called by the sweeper).
    pub fn check_editor(&self) {
        let max_age_ms =
            u64::try_from(self.config.awareness_timeout.as_millis()).unwrap_or(u64::MAX);
        let state = &mut *self.state();
        let members = &state.members;
        if let Some(next) = state
            .roster
            .hand_over_if_silent(|id| members.heard_within(id, max_age_ms))
        {
            tracing::debug!(room = %self.name, connection = next.connection, "silent editor replaced");
            self.broadcast_event(state, None, |_| roster::editor_event(Some(&next)));
        }
    }

    /// The server's SyncStep1 (its state vector): asks a client for everything the room lacks.
    pub fn sync_step1(&self) -> Bytes {
        document::sync_step1(self.state().awareness.doc())
    }

    /// Removes a member and the awareness states it controlled, telling everyone else they are
    /// gone (so no ghost cursors stay behind).
    pub fn unsubscribe(&self, connection: ConnectionId, controlled: &HashSet<ClientID>) {
        let state = &mut *self.state();
        state.members.remove(connection);
        if let Some((profile, editor_change)) = state.roster.remove(connection) {
            let left = Identity {
                user: profile.user.clone(),
                connection,
            };
            self.broadcast_event(state, None, |roster| {
                roster::presence_event("left", &left, roster.connections_of(&left.user))
            });
            if let Some(editor) = editor_change {
                self.broadcast_event(state, None, |_| roster::editor_event(editor.as_ref()));
            }
        }
        members::remove_states(
            &mut state.awareness,
            &state.members,
            controlled.iter().copied(),
        );
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

    /// Whether the room already has every item `update` brings (its deletions aside): what a
    /// read-only client's SyncStep2 is checked against, since a reader is told whether its
    /// state was taken. An update that does not decode brings something the room refuses.
    pub fn has_all_of(&self, update: &[u8]) -> bool {
        let Ok(decoded) = protocol::decode_update(update) else {
            return false;
        };
        let ours = self.state().awareness.doc().transact().state_vector();
        !decoded.update.extends(&ours)
    }

    /// Applies a client's v1 update. A new change is encoded once, appended to the store and
    /// queued for every member (the sender included: clients ignore what they have, and the
    /// echo is what y-websocket v4's sync status waits for). An invalid update changes nothing.
    pub fn apply_update(self: &Arc<Self>, update: &[u8]) -> Result<Applied, ApplyError> {
        self.apply_update_from(update, None)
    }

    /// [`Room::apply_update`] for an update a member sent: that member gets it back only if
    /// it wants the echo (y-websocket members do, Hocuspocus ones do not).
    pub fn apply_update_from(
        self: &Arc<Self>,
        update: &[u8],
        origin: Option<ConnectionId>,
    ) -> Result<Applied, ApplyError> {
        let decoded = protocol::decode_update(update).map_err(ApplyError::InvalidUpdate)?;
        if decoded.has_subdocuments {
            return Err(ApplyError::InvalidUpdate(
                document::SUBDOCUMENTS_REFUSED.to_owned(),
            ));
        }
        let mut guard = self.state();
        let state = &mut *guard;
        self.accepting(state)?;
        let measured = match state.log.check_size(
            state.awareness.doc(),
            update.len(),
            self.config.max_doc_bytes,
        ) {
            SizeCheck::Fits { measured } => measured,
            SizeCheck::TooLarge { measured } => {
                drop(guard);
                if measured {
                    self.schedule_compaction();
                }
                return Err(ApplyError::DocumentTooLarge {
                    limit: self.config.max_doc_bytes,
                });
            }
        };
        let (delta, refusal) = match document::apply(state.awareness.doc(), decoded) {
            Ok(applied) => applied,
            Err(document::Panicked) => {
                self.take_out_of_service(state, "a panic in yrs while applying an update");
                return Err(ApplyError::RoomBroken);
            }
        };
        let Some(delta) = delta.map(Bytes::from) else {
            return refusal.map_or(Ok(Applied::Unchanged), Err);
        };
        state.full_sync_reply = None;
        self.changes.touch();
        let behind = state
            .members
            .broadcast_update(&protocol::encode_update(&delta), origin);
        self.members_behind.store(behind, Ordering::Relaxed);
        self.metrics
            .broadcast_frames
            .inc_by(state.members.len() as u64);
        let batch = state.log.record(delta.clone());
        let compaction_due = measured || state.log.compaction_due(&self.config);
        drop(guard);
        if let Some(batch) = batch {
            // Members already have the change and the document keeps it: a store failure
            // is reported to the caller, which closes its connection (1011, resend), and the
            // store's recovery writes the whole document as a snapshot (see `write_log`).
            self.write_batch(batch)?;
        }
        if compaction_due {
            self.schedule_compaction();
        }
        if let Some(observer) = &self.observer {
            observer.changed(&self.name, &self.changes, &delta);
        }
        refusal.map_or(Ok(Applied::Changed), Err)
    }

    /// Whether the room applies updates now: not once deleted or broken, nor while the store
    /// cannot write them or once shutdown began (the client is closed and resends after
    /// reconnecting, when it can be stored).
    fn accepting(&self, state: &RoomState) -> Result<(), ApplyError> {
        if state.deleted {
            return Err(ApplyError::RoomDeleted);
        }
        if self.is_broken() {
            return Err(ApplyError::RoomBroken);
        }
        match self.health.accepting() {
            Ok(()) => Ok(()),
            Err(Refused::Failing) => Err(ApplyError::Store(StoreError::Failing)),
            Err(Refused::Closed) => Err(ApplyError::ShuttingDown),
        }
    }

    /// Applies a client's awareness update and relays it to every member. The client IDs it
    /// sets are recorded in `controlled`, so that they are removed when the connection ends.
    /// Entries another connection's presence or past [`MAX_AWARENESS_CLIENTS`] are ignored
    /// (see `members::claim_states`) and counted; the rest is applied and relayed.
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
        // Removing a state bumps its clock; at u32::MAX that overflows, and no real client
        // counts that far.
        if update.clients.values().any(|entry| entry.clock == u32::MAX) {
            return Err(ApplyError::InvalidAwareness(
                "awareness clock out of range".into(),
            ));
        }
        let state = &mut *self.state();
        let announced = update.clients.len();
        let unclaimed = members::claim_states(&state.awareness, &mut update, controlled);
        if unclaimed.not_owned > 0 {
            self.metrics.reject("awareness_not_owned");
        }
        if unclaimed.over_limit > 0 {
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
            state.members.broadcast_awareness(frame);
            self.metrics
                .broadcast_frames
                .inc_by(state.members.len() as u64);
        }
        Ok(())
    }

    /// Every present awareness state in one message, or `None` when nobody is present.
    pub fn awareness_snapshot(&self) -> Option<Bytes> {
        members::full_awareness(&self.state().awareness)
    }

    /// Removes awareness states not renewed within the configured timeout (clients renew
    /// every 15 s; a browser that vanished without a close frame stops renewing) and
    /// broadcasts the removal.
    pub fn expire_awareness(&self) {
        let max_age = self.config.awareness_timeout;
        let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        let state = &mut *self.state();
        let expired = members::expired_states(&state.awareness, max_age_ms);
        if !expired.is_empty() {
            tracing::debug!(room = %self.name, count = expired.len(), "expiring awareness states");
            members::remove_states(&mut state.awareness, &state.members, expired);
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

    /// How long since the document last changed.
    pub fn quiet_for(&self) -> Duration {
        self.changes.quiet_for()
    }

    /// Size facts for operators.
    pub fn info(&self) -> RoomInfo {
        let state = self.state();
        RoomInfo {
            connections: self.connection_count(),
            doc_bytes: state.log.doc_bytes(),
            log_updates: state.log.updates,
            last_change_ms: self.changes.last_change_ms(),
            roster: state.roster.users(),
            editor: state.roster.editor(),
        }
    }

    /// Whether yrs holds changes back until what they depend on arrives. ycord refuses such
    /// updates (see `document::check_dependencies`) and drops what yrs holds anyway
    /// (`document::drop_pending`), so this stays false; the fuzzer checks that it does.
    pub fn has_pending_changes(&self) -> bool {
        self.state()
            .awareness
            .doc()
            .transact()
            .has_missing_updates()
    }

    /// The top-level shared types as JSON (see `document::to_json`).
    pub fn to_json(&self) -> serde_json::Value {
        document::to_json(&self.encode_state())
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

#[cfg(test)]
mod tests;
