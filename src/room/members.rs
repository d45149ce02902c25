//! A room's members and presence: each member's bounded queues and signals, the broadcast of
//! updates and awareness frames to them, and the awareness table (who set which presence
//! state). Called under the room's lock; nothing here does I/O.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use bytes::Bytes;
use yrs::ClientID;
use yrs::sync::Awareness;
use yrs::sync::awareness::AwarenessUpdate;
use yrs::sync::time::{Clock, SystemClock};
use yrs::updates::encoder::Encode;

use crate::auth::Access;
use crate::protocol;
use crate::queue;

/// Identifies one connection within the server's lifetime.
pub type ConnectionId = u64;

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

/// Capacity of a Hocuspocus member's stateless queue (relayed commands and roster events), in
/// frames and in bytes. Overflow policy: the frame is dropped for that member and counted in
/// `ycord_stateless_dropped_total`; the lane is volatile, like presence.
pub const STATELESS_QUEUE_CAPACITY: usize = 64;
pub const STATELESS_QUEUE_BYTES: usize = 1 << 20;

/// Most awareness client IDs one connection may set states for (y-websocket uses one per
/// document); see [`super::Room::apply_awareness`].
pub const MAX_AWARENESS_CLIENTS: usize = 8;

const ACCESS_UNCHANGED: u8 = 0;
const ACCESS_READ_WRITE: u8 = 1;
const ACCESS_READ_ONLY: u8 = 2;

/// Flags a room raises for one member, read by that member's session.
#[derive(Debug, Default)]
pub struct MemberSignals {
    /// The member fell behind and was removed from the room: close with 1013.
    lagged: AtomicBool,
    /// An awareness frame was dropped for this member: send a full awareness state.
    awareness_dropped: AtomicBool,
    /// The room was deleted under the member.
    deleted: AtomicBool,
    /// The member's permission was revoked (ExApp mode) and it was removed: close with 4403.
    revoked: AtomicBool,
    /// A changed permission the session has not applied yet: [`ACCESS_UNCHANGED`],
    /// [`ACCESS_READ_WRITE`] or [`ACCESS_READ_ONLY`].
    access: AtomicU8,
    /// When the member's client last sent a message, in ms since the epoch (see
    /// [`MemberSignals::heard`]): a silent active editor hands its role over.
    heard_at_ms: AtomicU64,
}

impl MemberSignals {
    /// Whether the room removed this member for falling behind.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }

    /// Whether the room was deleted under this member.
    pub fn deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Whether the member was removed because its permission was revoked.
    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Returns and clears a permission change the session must apply to its handler. One load
    /// per inbound frame when nothing changed.
    pub fn take_access(&self) -> Option<Access> {
        if self.access.load(Ordering::Acquire) == ACCESS_UNCHANGED {
            return None;
        }
        match self.access.swap(ACCESS_UNCHANGED, Ordering::AcqRel) {
            ACCESS_READ_WRITE => Some(Access::ReadWrite),
            ACCESS_READ_ONLY => Some(Access::ReadOnly),
            _ => None,
        }
    }

    /// Records that the member's client just sent a message.
    pub fn heard(&self) {
        self.heard_at_ms.store(SystemClock.now(), Ordering::Relaxed);
    }

    /// Whether the member's client sent a message within the last `max_age_ms`.
    pub(super) fn heard_within(&self, max_age_ms: u64) -> bool {
        SystemClock
            .now()
            .saturating_sub(self.heard_at_ms.load(Ordering::Relaxed))
            <= max_age_ms
    }

    /// Returns and clears the "awareness dropped" flag.
    pub fn take_awareness_dropped(&self) -> bool {
        self.awareness_dropped.swap(false, Ordering::AcqRel)
    }
}

/// A member's end of the room: the queues its session drains.
#[derive(Debug)]
pub struct Subscription {
    pub updates: queue::Receiver<Bytes>,
    pub awareness: queue::Receiver<Bytes>,
    /// Stateless message bodies, for a member that hears them (see `roster::Profile`).
    pub stateless: Option<queue::Receiver<Bytes>>,
    pub signals: Arc<MemberSignals>,
}

/// The room's end of one member.
struct Member {
    updates: queue::Sender<Bytes>,
    awareness: queue::Sender<Bytes>,
    stateless: Option<queue::Sender<Bytes>>,
    /// Whether the member is sent its own updates back: y-websocket v4's sync status waits for
    /// that echo; Hocuspocus acknowledges with SyncStatus, and the echo would only cost a frame.
    echo: bool,
    signals: Arc<MemberSignals>,
}

fn new_member(hears_stateless: bool) -> (Member, Subscription) {
    let (update_tx, update_rx) = queue::channel(UPDATE_QUEUE_CAPACITY, UPDATE_QUEUE_BYTES);
    let (awareness_tx, awareness_rx) =
        queue::channel(AWARENESS_QUEUE_CAPACITY, AWARENESS_QUEUE_BYTES);
    let (stateless_tx, stateless_rx) = if hears_stateless {
        let (tx, rx) = queue::channel(STATELESS_QUEUE_CAPACITY, STATELESS_QUEUE_BYTES);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let signals = Arc::new(MemberSignals::default());
    signals.heard();
    let member = Member {
        updates: update_tx,
        awareness: awareness_tx,
        stateless: stateless_tx,
        echo: !hears_stateless,
        signals: signals.clone(),
    };
    let subscription = Subscription {
        updates: update_rx,
        awareness: awareness_rx,
        stateless: stateless_rx,
        signals,
    };
    (member, subscription)
}

/// Everyone in the room, by connection.
#[derive(Default)]
pub(super) struct Members(HashMap<ConnectionId, Member>);

impl Members {
    /// Adds a member with fresh queues and returns its end of them.
    pub(super) fn add(&mut self, connection: ConnectionId, hears_stateless: bool) -> Subscription {
        let (member, subscription) = new_member(hears_stateless);
        self.0.insert(connection, member);
        subscription
    }

    /// Queues whose room end is already dropped: what joining a room that keeps no members
    /// (a broken one) gives, so that the session finds its queue closed and ends.
    pub(super) fn closed_subscription() -> Subscription {
        new_member(false).1
    }

    pub(super) fn remove(&mut self, connection: ConnectionId) {
        self.0.remove(&connection);
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Drops every member: their queues close and their sessions end.
    pub(super) fn clear(&mut self) {
        self.0.clear();
    }

    /// Removes a member whose permission was revoked: its queue closes, and its session,
    /// finding [`MemberSignals::revoked`], closes the socket with 4403.
    pub(super) fn revoke(&mut self, connection: ConnectionId) {
        if let Some(member) = self.0.remove(&connection) {
            member.signals.revoked.store(true, Ordering::Release);
        }
    }

    /// Tells a member's session to apply a changed permission before its next message.
    pub(super) fn change_access(&self, connection: ConnectionId, access: Access) {
        if let Some(member) = self.0.get(&connection) {
            let value = match access {
                Access::ReadWrite => ACCESS_READ_WRITE,
                Access::ReadOnly => ACCESS_READ_ONLY,
            };
            member.signals.access.store(value, Ordering::Release);
        }
    }

    /// Drops every member, telling each the room was deleted.
    pub(super) fn delete_all(&mut self) {
        for (_, member) in self.0.drain() {
            member.signals.deleted.store(true, Ordering::Release);
        }
    }

    /// Queues a document-update frame for every member. A member whose queue is full (in
    /// frames or in bytes) is removed and flagged as lagged; its session closes it with 1013.
    /// Returns whether some member is behind (see [`BEHIND_WATERMARK`]). The update's `origin`
    /// gets it too unless it wants no echo.
    pub(super) fn broadcast_update(&mut self, frame: &Bytes, origin: Option<ConnectionId>) -> bool {
        let mut behind = false;
        self.0.retain(|id, member| {
            if !member.echo && origin == Some(*id) {
                return true;
            }
            match member.updates.try_send(frame.clone()) {
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
            }
        });
        behind
    }

    /// Queues an awareness frame for every member; on a full queue the frame is dropped for
    /// that member and the member flagged, so that its session sends the full state later.
    pub(super) fn broadcast_awareness(&self, frame: Bytes) {
        for member in self.0.values() {
            if let Err(queue::TrySendError::Full(_)) = member.awareness.try_send(frame.clone()) {
                member
                    .signals
                    .awareness_dropped
                    .store(true, Ordering::Release);
            }
        }
    }

    /// Queues a stateless body for every member that hears them, but `except`; returns how
    /// many were queued and how many dropped on a full queue. `body` is made once, and only
    /// if some member hears it.
    pub(super) fn broadcast_stateless(
        &self,
        body: impl FnOnce() -> Bytes,
        except: Option<ConnectionId>,
    ) -> (u64, u64) {
        let mut hearers = self
            .0
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .filter_map(|(_, member)| member.stateless.as_ref())
            .peekable();
        if hearers.peek().is_none() {
            return (0, 0);
        }
        let body = body();
        let (mut queued, mut dropped) = (0, 0);
        for stateless in hearers {
            match stateless.try_send(body.clone()) {
                Ok(()) => queued += 1,
                Err(queue::TrySendError::Full(_)) => dropped += 1,
                Err(queue::TrySendError::Closed(_)) => {}
            }
        }
        (queued, dropped)
    }

    /// Whether `connection` is a member whose client spoke within `max_age_ms`.
    pub(super) fn heard_within(&self, connection: ConnectionId, max_age_ms: u64) -> bool {
        self.0
            .get(&connection)
            .is_some_and(|member| member.signals.heard_within(max_age_ms))
    }
}

/// What [`claim_states`] kept out of an awareness update, by reason.
#[derive(Debug, Default)]
pub(super) struct Unclaimed {
    /// Entries about a client ID whose state another connection set.
    pub not_owned: usize,
    /// Entries for new client IDs beyond [`MAX_AWARENESS_CLIENTS`] per connection.
    pub over_limit: usize,
}

/// Keeps only the entries of `update` that the connection controlling `controlled` may set:
/// its own client IDs, and new ones up to [`MAX_AWARENESS_CLIENTS`]. One connection must not
/// overwrite or remove another's presence.
pub(super) fn claim_states(
    awareness: &Awareness,
    update: &mut AwarenessUpdate,
    controlled: &HashSet<ClientID>,
) -> Unclaimed {
    let mut unclaimed = Unclaimed::default();
    let mut may_claim = MAX_AWARENESS_CLIENTS.saturating_sub(controlled.len());
    update.clients.retain(|client, _| {
        if controlled.contains(client) {
            true
        } else if awareness.state::<serde::de::IgnoredAny>(*client).is_some() {
            unclaimed.not_owned += 1;
            false
        } else if may_claim > 0 {
            may_claim -= 1;
            true
        } else {
            unclaimed.over_limit += 1;
            false
        }
    });
    unclaimed
}

/// Removes the present states among `clients` and tells every member they are gone.
pub(super) fn remove_states(
    awareness: &mut Awareness,
    members: &Members,
    clients: impl IntoIterator<Item = ClientID>,
) {
    let present: HashSet<ClientID> = awareness
        .iter()
        .filter(|(_, client_state)| client_state.data.is_some())
        .map(|(id, _)| id)
        .collect();
    let removed: Vec<ClientID> = clients
        .into_iter()
        .filter(|id| present.contains(id))
        .collect();
    for client in &removed {
        awareness.remove_state(*client);
    }
    if removed.is_empty() {
        return;
    }
    match awareness.update_with_clients(removed) {
        Ok(update) => members.broadcast_awareness(protocol::encode_awareness(&update.encode_v1())),
        Err(error) => tracing::error!(%error, "encoding awareness removal failed"),
    }
}

/// The present states not renewed within `max_age_ms`.
pub(super) fn expired_states(awareness: &Awareness, max_age_ms: u64) -> Vec<ClientID> {
    let now = SystemClock.now();
    awareness
        .iter()
        .filter(|(_, client)| {
            client.data.is_some() && now.saturating_sub(client.last_updated) > max_age_ms
        })
        .map(|(id, _)| id)
        .collect()
}

/// Every present awareness state in one message, or `None` when nobody is present.
pub(super) fn full_awareness(awareness: &Awareness) -> Option<Bytes> {
    let update = awareness.update().ok()?;
    if update.clients.is_empty() {
        return None;
    }
    Some(protocol::encode_awareness(&update.encode_v1()))
}
