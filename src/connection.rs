//! What one connection's messages do to its room, without any I/O: decoding a frame,
//! applying updates and awareness, answering sync requests, read-only access, the update rate
//! limit and the close code for bad input.
//!
//! The WebSocket session (`server::session`) feeds it the frames it reads and sends what it
//! returns; the `session_frames` fuzz target feeds it arbitrary frames the same way. Keeping
//! the dispatch here, apart from the socket, is what makes the fuzzer exercise exactly the
//! server's path.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use yrs::{ClientID, StateVector};

use crate::auth::Access;
use crate::limit::{MessageBudgets, TokenBucket};
use crate::metrics::Metrics;
use crate::protocol::{self, Inbound};
use crate::room::ApplyError;
use crate::room::{ConnectionId, Room};
use crate::store::StoreError;

/// WebSocket close codes (RFC 6455 and `shared/PROTOCOL.md` section 4).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The room was deleted. In the private-use range 4400-4499, which stock y-websocket 3
    /// treats as permanent (`defaultShouldReconnect`): its clients stop reconnecting instead of
    /// uploading the deleted document again. Every other code, 1000 included, is retried.
    pub const ROOM_DELETED: u16 = 4410;
    /// Nextcloud revoked the user's permission on the room's file (ExApp mode). Permanent for
    /// the same reason as [`ROOM_DELETED`]; 1008 would make the client retry for ever.
    pub const PERMISSION_REVOKED: u16 = 4403;
}

/// An empty v1 update: a SyncStep2 carrying nothing, which read-only clients may send.
const EMPTY_UPDATE: &[u8] = &[0, 0];

/// Reason sent to a read-only client that tries to write.
const READ_ONLY_REASON: &str = "read-only access: this change was not applied";

/// Why a connection must be closed, and what to tell the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub reason: String,
}

impl Refusal {
    pub fn new(code: u16, reason: impl Into<String>) -> Refusal {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

/// What became of a client's update (see [`ConnectionHandler::receive_update`]).
#[derive(Debug, PartialEq)]
pub enum UpdateOutcome {
    /// The room has it: applied now, or known before.
    Stored,
    /// Not applied: the connection is read-only.
    ReadOnly,
    /// Not applied: it continues changes the room lacks. `resync` is the room's SyncStep1 to
    /// send the client, when one is due.
    Gap { resync: Option<Bytes> },
}

/// One connection's side of a room.
pub struct ConnectionHandler {
    room: Arc<Room>,
    access: Access,
    /// Awareness client IDs this connection set; removed from the room when it ends.
    controlled: HashSet<ClientID>,
    /// Whether a SyncStep1 went out for a refused update and no SyncStep2 came back yet.
    resync_requested: bool,
    /// What the connection may still ask of the server.
    budgets: Buckets,
    /// The connection's member in the room, when updates must name their origin (see
    /// [`ConnectionHandler::with_origin`]).
    origin: Option<ConnectionId>,
    metrics: Arc<Metrics>,
}

/// Largest stateless message relayed: commands ("follow me", "present") are a few hundred
/// bytes; documents travel as updates.
pub const MAX_STATELESS_BYTES: usize = 64 * 1024;

/// Most messages one frame may hold. Yjs clients send one per frame (the y-protocols encoders
/// write one message per frame); a frame of thousands of small requests is an attack on the
/// per-message work, and refused however its messages are metered.
pub const MAX_MESSAGES_PER_FRAME: usize = 16;

/// Where a connection is in one inbound frame (see [`ConnectionHandler::next_reply`]).
pub struct InboundFrame<'a> {
    messages: protocol::FrameMessages<'a>,
    /// Messages decoded so far.
    handled: usize,
}

impl<'a> InboundFrame<'a> {
    pub fn new(frame: &'a [u8]) -> InboundFrame<'a> {
        InboundFrame {
            messages: protocol::decode_frame(frame),
            handled: 0,
        }
    }
}

/// One connection's token buckets, one per [`MessageBudgets`] entry.
struct Buckets {
    updates: TokenBucket,
    sync_requests: TokenBucket,
    awareness_queries: TokenBucket,
    awareness: TokenBucket,
    awareness_bytes: TokenBucket,
    reply_bytes: TokenBucket,
    stateless: TokenBucket,
    stateless_bytes: TokenBucket,
}

impl Buckets {
    fn new(budgets: &MessageBudgets) -> Buckets {
        Buckets {
            updates: TokenBucket::new(budgets.updates_per_sec),
            sync_requests: TokenBucket::new(budgets.sync_requests_per_sec),
            awareness_queries: TokenBucket::new(budgets.awareness_queries_per_sec),
            awareness: TokenBucket::new(budgets.awareness_per_sec),
            awareness_bytes: TokenBucket::new(budgets.awareness_bytes_per_sec),
            reply_bytes: TokenBucket::new(budgets.reply_bytes_per_sec),
            stateless: TokenBucket::new(budgets.stateless_per_sec),
            stateless_bytes: TokenBucket::new(budgets.stateless_bytes_per_sec),
        }
    }

    fn bucket(&mut self, budget: Budget) -> &mut TokenBucket {
        match budget {
            Budget::Updates => &mut self.updates,
            Budget::SyncRequests => &mut self.sync_requests,
            Budget::AwarenessQueries => &mut self.awareness_queries,
            Budget::Awareness => &mut self.awareness,
            Budget::AwarenessBytes => &mut self.awareness_bytes,
            Budget::ReplyBytes => &mut self.reply_bytes,
            Budget::Stateless => &mut self.stateless,
            Budget::StatelessBytes => &mut self.stateless_bytes,
        }
    }
}

/// A budget of [`MessageBudgets`].
#[derive(Debug, Clone, Copy)]
enum Budget {
    Updates,
    SyncRequests,
    AwarenessQueries,
    Awareness,
    AwarenessBytes,
    ReplyBytes,
    Stateless,
    StatelessBytes,
}

impl Budget {
    /// The `reason` label of `ycord_limit_hits_total`, and what the close reason names.
    fn describe(self) -> (&'static str, &'static str) {
        match self {
            Budget::Updates => ("update_rate", "update"),
            Budget::SyncRequests => ("sync_step1_rate", "sync request (SyncStep1)"),
            Budget::AwarenessQueries => ("query_awareness_rate", "awareness query"),
            Budget::Awareness => ("awareness_rate", "awareness update"),
            Budget::AwarenessBytes => ("awareness_bytes", "awareness bytes"),
            Budget::ReplyBytes => ("reply_bytes", "sync reply bytes"),
            Budget::Stateless => ("stateless_rate", "stateless message"),
            Budget::StatelessBytes => ("stateless_bytes", "stateless bytes"),
        }
    }
}

impl ConnectionHandler {
    pub fn new(
        room: Arc<Room>,
        access: Access,
        budgets: &MessageBudgets,
        metrics: Arc<Metrics>,
    ) -> ConnectionHandler {
        ConnectionHandler {
            room,
            access,
            controlled: HashSet::new(),
            resync_requested: false,
            budgets: Buckets::new(budgets),
            origin: None,
            metrics,
        }
    }

    /// Names the connection's member as the origin of its updates, so that a member that wants
    /// no echo does not get its own updates back.
    pub fn with_origin(mut self, connection: ConnectionId) -> ConnectionHandler {
        self.origin = Some(connection);
        self
    }

    pub fn room(&self) -> &Arc<Room> {
        &self.room
    }

    /// Changes what the connection may do (a refreshed token may grant another mode).
    pub fn set_access(&mut self, access: Access) {
        self.access = access;
    }

    /// The awareness client IDs this connection set (and has not removed).
    pub fn controlled(&self) -> &HashSet<ClientID> {
        &self.controlled
    }

    /// Handles the messages of `frame` that come next, up to and including the first that
    /// calls for a reply, and returns that reply; `None` once every message was handled. The
    /// session sends each reply before it asks for the next, so what a frame makes the server
    /// hold is one reply, however many messages the frame packs. An error says why the
    /// connection must close (messages before the bad one took effect).
    pub fn next_reply(&mut self, frame: &mut InboundFrame<'_>) -> Result<Option<Bytes>, Refusal> {
        for message in frame.messages.by_ref() {
            let message = message.map_err(|error| {
                tracing::warn!(%error, "malformed message");
                self.metrics.reject("malformed");
                Refusal::new(
                    close_code::INVALID_PAYLOAD,
                    format!("malformed message: {error}"),
                )
            })?;
            frame.handled += 1;
            if frame.handled > MAX_MESSAGES_PER_FRAME {
                tracing::warn!("too many messages in one frame");
                self.metrics.limit_hit("messages_per_frame");
                return Err(Refusal::new(
                    close_code::POLICY_VIOLATION,
                    format!("more than {MAX_MESSAGES_PER_FRAME} messages in one frame"),
                ));
            }
            if let Some(reply) = self.handle(message)? {
                return Ok(Some(reply));
            }
        }
        Ok(None)
    }

    /// Handles every message of one frame, passing each reply to `on_reply` as it is made.
    pub fn handle_frame(
        &mut self,
        frame: &[u8],
        mut on_reply: impl FnMut(Bytes),
    ) -> Result<(), Refusal> {
        let mut frame = InboundFrame::new(frame);
        while let Some(reply) = self.next_reply(&mut frame)? {
            on_reply(reply);
        }
        Ok(())
    }

    /// Handles one message, returning the reply it calls for, if any.
    fn handle(&mut self, message: Inbound<'_>) -> Result<Option<Bytes>, Refusal> {
        match message {
            Inbound::SyncStep1(state_vector) => self.sync_step1_reply(&state_vector).map(Some),
            Inbound::SyncStep2(update) => {
                let outcome = self.receive_update(update, true)?;
                Ok(y_websocket_reply(outcome))
            }
            Inbound::Update(update) => {
                let outcome = self.receive_update(update, false)?;
                Ok(y_websocket_reply(outcome))
            }
            Inbound::Awareness(payload) => {
                self.receive_awareness(payload)?;
                Ok(None)
            }
            Inbound::QueryAwareness => self.awareness_reply(),
            Inbound::Auth => Ok(None),
        }
    }

    /// The answer to a client's SyncStep1 (its SyncStep2), within the request budgets.
    pub fn sync_step1_reply(&mut self, state_vector: &StateVector) -> Result<Bytes, Refusal> {
        self.take(Budget::SyncRequests)?;
        self.check_credit(Budget::ReplyBytes)?;
        Ok(self.charge_reply(self.room.sync_step2(state_vector)))
    }

    /// Applies a client's awareness update, within the awareness budgets.
    pub fn receive_awareness(&mut self, payload: &[u8]) -> Result<(), Refusal> {
        self.meter(Budget::Awareness, Budget::AwarenessBytes, payload.len())?;
        self.metrics.awareness_received.inc();
        self.room
            .apply_awareness(payload, &mut self.controlled)
            .map_err(|error| self.refusal(error))
    }

    /// Relays a client's stateless message to the document's other connections, within the
    /// stateless budgets. Larger than [`MAX_STATELESS_BYTES`] closes the connection (1009).
    pub fn receive_stateless(&mut self, payload: &str) -> Result<(), Refusal> {
        let Some(connection) = self.origin else {
            return Ok(());
        };
        if payload.len() > MAX_STATELESS_BYTES {
            self.metrics.limit_hit("stateless_size");
            return Err(Refusal::new(
                close_code::MESSAGE_TOO_BIG,
                format!(
                    "stateless message larger than {MAX_STATELESS_BYTES} bytes; do not resend it"
                ),
            ));
        }
        self.meter(Budget::Stateless, Budget::StatelessBytes, payload.len())?;
        self.metrics.stateless_received.inc();
        self.room.relay_stateless(connection, payload);
        Ok(())
    }

    /// Every awareness state of the room, in answer to QueryAwareness (`None`: nobody is
    /// present), within the request budgets.
    pub fn awareness_reply(&mut self) -> Result<Option<Bytes>, Refusal> {
        self.take(Budget::AwarenessQueries)?;
        self.check_credit(Budget::ReplyBytes)?;
        Ok(self
            .room
            .awareness_snapshot()
            .map(|snapshot| self.charge_reply(snapshot)))
    }

    /// Takes one message's token from a count budget, or refuses the connection.
    fn take(&mut self, budget: Budget) -> Result<(), Refusal> {
        if self.budgets.bucket(budget).try_take() {
            Ok(())
        } else {
            Err(self.over(budget))
        }
    }

    /// Takes one message's token from `count` and charges its `len` bytes to `bytes` (which
    /// must not be in debt), or refuses the connection.
    fn meter(&mut self, count: Budget, bytes: Budget, len: usize) -> Result<(), Refusal> {
        self.take(count)?;
        self.check_credit(bytes)?;
        self.budgets.bucket(bytes).spend(len as u64);
        Ok(())
    }

    /// Refuses the connection if a bytes budget is in debt (see [`TokenBucket::has_credit`]).
    fn check_credit(&mut self, budget: Budget) -> Result<(), Refusal> {
        if self.budgets.bucket(budget).has_credit() {
            Ok(())
        } else {
            Err(self.over(budget))
        }
    }

    /// Charges a reply's size to the reply budget.
    fn charge_reply(&mut self, reply: Bytes) -> Bytes {
        self.budgets.reply_bytes.spend(reply.len() as u64);
        reply
    }

    /// Counts and logs a budget overrun; the refusal that closes the connection.
    fn over(&self, budget: Budget) -> Refusal {
        let (metric, what) = budget.describe();
        tracing::warn!(limit = metric, "message budget exceeded");
        self.metrics.limit_hit(metric);
        Refusal::new(
            close_code::POLICY_VIOLATION,
            format!("{what} rate limit exceeded"),
        )
    }

    /// Applies a client's update (`step2`: the answer to the room's SyncStep1), unless the
    /// connection is read-only or over its rate.
    ///
    /// A read-only client's update is not applied; one that brings nothing the room lacks
    /// (a reader's SyncStep2, most often) counts as stored, since nothing was refused.
    ///
    /// An update that continues a client's changes past what the room has (a client typing
    /// right after a reconnect, before its SyncStep2 arrived) is refused without closing the
    /// connection, as Yjs would hold it pending: if it came as an Update, the outcome carries
    /// the room's SyncStep1 (once until the client's next SyncStep2), and its SyncStep2 answer
    /// carries everything the room lacks, this change included.
    pub fn receive_update(&mut self, update: &[u8], step2: bool) -> Result<UpdateOutcome, Refusal> {
        if step2 {
            self.resync_requested = false;
        }
        if self.access == Access::ReadOnly {
            if update == EMPTY_UPDATE || self.room.has_all_of(update) {
                return Ok(UpdateOutcome::Stored);
            }
            self.metrics.reject("read_only");
            return Ok(UpdateOutcome::ReadOnly);
        }
        self.take(Budget::Updates)?;
        self.metrics.updates_received.inc();
        self.metrics
            .update_bytes_received
            .inc_by(update.len() as u64);
        match self.room.apply_update_from(update, self.origin) {
            Ok(_) => Ok(UpdateOutcome::Stored),
            Err(
                error @ (ApplyError::MissingPredecessors { .. }
                | ApplyError::MissingDependency { .. }),
            ) => {
                tracing::debug!(%error, "update refused until the client resyncs");
                self.metrics.reject("missing_predecessors");
                let resync = !step2 && !std::mem::replace(&mut self.resync_requested, true);
                Ok(UpdateOutcome::Gap {
                    resync: resync.then(|| self.room.sync_step1()),
                })
            }
            Err(error) => Err(self.refusal(error)),
        }
    }

    /// The close code and reason for an update or awareness message the room refused.
    fn refusal(&self, error: ApplyError) -> Refusal {
        match error {
            ApplyError::InvalidUpdate(_) | ApplyError::InvalidAwareness(_) => {
                tracing::warn!(%error, "rejected message");
                self.metrics.reject("invalid_payload");
                Refusal::new(close_code::INVALID_PAYLOAD, error.to_string())
            }
            ApplyError::DocumentTooLarge { .. } => {
                tracing::warn!(%error, "rejected update");
                self.metrics.limit_hit("document_size");
                Refusal::new(
                    close_code::MESSAGE_TOO_BIG,
                    format!("{error}; the change was not applied, do not resend it"),
                )
            }
            ApplyError::RoomDeleted | ApplyError::Store(StoreError::RoomDeleted(_)) => {
                Refusal::new(close_code::ROOM_DELETED, "room deleted")
            }
            ApplyError::Store(_) => {
                tracing::warn!(%error, "update refused: storage failing");
                Refusal::new(
                    close_code::INTERNAL_ERROR,
                    "storage failing: this change may not be saved; reconnect and resend it",
                )
            }
            ApplyError::ShuttingDown => Refusal::new(
                close_code::GOING_AWAY,
                "server shutting down: this change was not applied; resend it after reconnecting",
            ),
            ApplyError::RoomBroken => Refusal::new(
                close_code::INTERNAL_ERROR,
                "the room failed internally; reconnect and resend your changes",
            ),
            // Handled in `receive_update`; awareness never reports it.
            ApplyError::MissingPredecessors { .. } | ApplyError::MissingDependency { .. } => {
                Refusal::new(close_code::INTERNAL_ERROR, error.to_string())
            }
        }
    }
}

/// What y-websocket tells a client about its update: a read-only client is told with a
/// permission-denied Auth message; a gap is answered with the room's SyncStep1, if due.
fn y_websocket_reply(outcome: UpdateOutcome) -> Option<Bytes> {
    match outcome {
        UpdateOutcome::Stored => None,
        UpdateOutcome::ReadOnly => Some(protocol::encode_auth_denied(READ_ONLY_REASON)),
        UpdateOutcome::Gap { resync } => resync,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::RoomConfig;
    use crate::store::SledStore;
    use yrs::updates::encoder::Encode;
    use yrs::{Doc, StateVector, Text, Transact};

    fn handler() -> ConnectionHandler {
        let config = RoomConfig::without_limits();
        let store = Arc::new(SledStore::temporary().unwrap());
        let metrics = Arc::new(Metrics::new());
        let room = Room::load("room".into(), store, config, metrics.clone(), None).unwrap();
        let budgets = MessageBudgets::with_update_rate(1000);
        ConnectionHandler::new(Arc::new(room), Access::ReadWrite, &budgets, metrics)
    }

    fn an_update() -> Vec<u8> {
        let doc = Doc::with_client_id(7);
        let text = doc.get_or_insert_text("text");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "hello");
        txn.encode_update_v1()
    }

    #[test]
    fn each_reply_comes_back_before_the_next_message_is_handled() {
        let mut handler = handler();
        let empty = StateVector::default().encode_v1();
        let frame = [
            protocol::encode_sync_step1(&empty).to_vec(),
            protocol::encode_update(&an_update()).to_vec(),
            protocol::encode_sync_step1(&empty).to_vec(),
        ]
        .concat();
        let mut messages = InboundFrame::new(&frame);
        let first = handler.next_reply(&mut messages).unwrap().unwrap();
        // The update after the first request is not applied yet.
        let room_state = || handler.room().encode_state();
        assert_eq!(room_state(), vec![0, 0]);
        assert_eq!(first, protocol::encode_sync_step2(&[0, 0]));
        let second = handler.next_reply(&mut messages).unwrap().unwrap();
        assert_ne!(second, first, "the second reply holds the update");
        assert!(handler.next_reply(&mut messages).unwrap().is_none());
    }

    #[test]
    fn a_frame_of_more_messages_than_allowed_is_refused() {
        let mut handler = handler();
        let frame = protocol::encode_query_awareness().repeat(MAX_MESSAGES_PER_FRAME);
        assert_eq!(handler.handle_frame(&frame, drop), Ok(()));
        let frame = protocol::encode_query_awareness().repeat(MAX_MESSAGES_PER_FRAME + 1);
        let refusal = handler.handle_frame(&frame, drop).unwrap_err();
        assert_eq!(refusal.code, close_code::POLICY_VIOLATION);
    }
}
