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
use yrs::ClientID;

use crate::auth::Access;
use crate::limit::{MessageBudgets, TokenBucket};
use crate::metrics::Metrics;
use crate::protocol::{self, Inbound};
use crate::room::ApplyError;
use crate::room::Room;
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
    metrics: Arc<Metrics>,
}

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
            metrics,
        }
    }

    pub fn room(&self) -> &Arc<Room> {
        &self.room
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
            Inbound::SyncStep1(state_vector) => {
                self.take(Budget::SyncRequests)?;
                self.check_credit(Budget::ReplyBytes)?;
                Ok(Some(self.charge_reply(self.room.sync_step2(&state_vector))))
            }
            Inbound::SyncStep2(update) => {
                self.resync_requested = false;
                self.apply_update(update, false)
            }
            Inbound::Update(update) => self.apply_update(update, true),
            Inbound::Awareness(payload) => {
                self.take(Budget::Awareness)?;
                self.check_credit(Budget::AwarenessBytes)?;
                self.budgets.awareness_bytes.spend(payload.len() as u64);
                self.metrics.awareness_received.inc();
                self.room
                    .apply_awareness(payload, &mut self.controlled)
                    .map_err(|error| self.refusal(error))?;
                Ok(None)
            }
            Inbound::QueryAwareness => {
                self.take(Budget::AwarenessQueries)?;
                self.check_credit(Budget::ReplyBytes)?;
                Ok(self
                    .room
                    .awareness_snapshot()
                    .map(|snapshot| self.charge_reply(snapshot)))
            }
            Inbound::Auth => Ok(None),
        }
    }

    /// Takes one message's token from a count budget, or refuses the connection.
    fn take(&mut self, budget: Budget) -> Result<(), Refusal> {
        if self.budgets.bucket(budget).try_take() {
            Ok(())
        } else {
            Err(self.over(budget))
        }
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

    /// Applies a client's update, unless the connection is read-only (then the client is told
    /// with a permission-denied Auth message, returned) or over its rate.
    ///
    /// An update that continues a client's changes past what the room has (a client typing
    /// right after a reconnect, before its SyncStep2 arrived) is refused without closing the
    /// connection, as Yjs would hold it pending: if it came as an Update, the client is sent
    /// the room's SyncStep1 (once until its next SyncStep2), and its SyncStep2 answer carries
    /// everything the room lacks, this change included.
    fn apply_update(
        &mut self,
        update: &[u8],
        resync_on_gap: bool,
    ) -> Result<Option<Bytes>, Refusal> {
        if self.access == Access::ReadOnly {
            if update == EMPTY_UPDATE {
                return Ok(None);
            }
            self.metrics.reject("read_only");
            return Ok(Some(protocol::encode_auth_denied(READ_ONLY_REASON)));
        }
        self.take(Budget::Updates)?;
        self.metrics.updates_received.inc();
        self.metrics
            .update_bytes_received
            .inc_by(update.len() as u64);
        match self.room.apply_update(update) {
            Ok(_) => Ok(None),
            Err(
                error @ (ApplyError::MissingPredecessors { .. }
                | ApplyError::MissingDependency { .. }),
            ) => {
                tracing::debug!(%error, "update refused until the client resyncs");
                self.metrics.reject("missing_predecessors");
                let resync = resync_on_gap && !std::mem::replace(&mut self.resync_requested, true);
                Ok(resync.then(|| self.room.sync_step1()))
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
            // Handled in `apply_update`; awareness never reports it.
            ApplyError::MissingPredecessors { .. } | ApplyError::MissingDependency { .. } => {
                Refusal::new(close_code::INTERNAL_ERROR, error.to_string())
            }
        }
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
