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
use crate::error::{ApplyError, StoreError};
use crate::limit::TokenBucket;
use crate::metrics::Metrics;
use crate::protocol::{self, Inbound};
use crate::room::Room;

/// WebSocket close codes (RFC 6455 and `shared/PROTOCOL.md` section 4).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
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
pub struct Peer {
    room: Arc<Room>,
    access: Access,
    /// Awareness client IDs this connection set; removed from the room when it ends.
    controlled: HashSet<ClientID>,
    /// Whether a SyncStep1 went out for a refused update and no SyncStep2 came back yet.
    resync_requested: bool,
    /// Rate limit on document updates.
    updates: TokenBucket,
    metrics: Arc<Metrics>,
}

impl Peer {
    pub fn new(
        room: Arc<Room>,
        access: Access,
        max_updates_per_sec: u64,
        metrics: Arc<Metrics>,
    ) -> Peer {
        Peer {
            room,
            access,
            controlled: HashSet::new(),
            resync_requested: false,
            updates: TokenBucket::new(max_updates_per_sec),
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

    /// Handles every message of one inbound binary frame, in order. Returns the frames to send
    /// back, in order, or why the connection must close (messages before the bad one took
    /// effect).
    pub fn handle_frame(&mut self, frame: &[u8]) -> Result<Vec<Bytes>, Refusal> {
        let mut replies = Vec::new();
        for message in protocol::decode_frame(frame) {
            let message = message.map_err(|error| {
                tracing::warn!(%error, "malformed message");
                self.metrics.reject("malformed");
                Refusal::new(
                    close_code::INVALID_PAYLOAD,
                    format!("malformed message: {error}"),
                )
            })?;
            match message {
                Inbound::SyncStep1(state_vector) => {
                    replies.push(self.room.sync_step2(&state_vector));
                }
                Inbound::SyncStep2(update) => {
                    self.resync_requested = false;
                    replies.extend(self.apply_update(update, false)?);
                }
                Inbound::Update(update) => replies.extend(self.apply_update(update, true)?),
                Inbound::Awareness(payload) => {
                    self.metrics.awareness_received.inc();
                    self.room
                        .apply_awareness(payload, &mut self.controlled)
                        .map_err(|error| self.refusal(error))?;
                }
                Inbound::QueryAwareness => replies.extend(self.room.awareness_snapshot()),
                Inbound::Auth => {}
            }
        }
        Ok(replies)
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
        if !self.updates.try_take() {
            self.metrics.limit_hit("update_rate");
            return Err(Refusal::new(
                close_code::POLICY_VIOLATION,
                "update rate limit exceeded",
            ));
        }
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
