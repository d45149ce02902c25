//! One WebSocket connection to one room: the handshake, the read loop, the writer, keepalive
//! and the close.
//!
//! A single task owns the socket and selects over: inbound frames, the room's update queue, the
//! room's awareness queue, the ping timer, one deadline timer (the first message's, then the
//! token's expiry) and the shutdown token. Every send is bounded in time, so a peer that stops
//! reading cannot hold the task forever: it is closed with 1013 when a send times out or when
//! its update queue fills and the room drops it, whichever comes first.
//!
//! Each idle connection holds this task's future, so its size matters (see *Idle memory* in
//! `BENCHMARKS.md`): an inbound frame is handled message by message, each reply sent before
//! the next message is looked at (so a frame packing many requests holds one reply at a time,
//! and a client that does not read its replies meets the send timeout), sends are combinators
//! rather than `async fn`s, and [`run`] builds the session before its future.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A server-side WebSocket over an upgraded HTTP connection.
pub type WebSocket =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

use crate::auth::Access;
use crate::connection::{ConnectionHandler, InboundFrame, Refusal, close_code};
use crate::limit::MessageBudgets;
use crate::metrics::Metrics;
use crate::room::{ConnectionId, Profile, Room, Subscription};
use crate::rooms::RoomLease;

/// Longest a single send may take before the peer is considered gone.
pub(super) const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the session reads on after sending its close frame, waiting for the client's.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// Most queued frames written before one flush.
pub(super) const MAX_FRAMES_PER_FLUSH: usize = 64;

/// Per-session settings taken from the server configuration and the client's token.
#[derive(Debug, Clone)]
pub struct Settings {
    pub connection: ConnectionId,
    /// The token's `sub`, for logs.
    pub subject: Option<String>,
    pub access: Access,
    /// When the token expires: the session is closed then (1008).
    pub expires_at: Option<SystemTime>,
    pub ping_interval: Duration,
    pub max_message_bytes: u64,
    pub max_updates_per_sec: u64,
    pub first_message_timeout: Duration,
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
}

/// How a session ends.
#[derive(Debug)]
pub(super) enum End {
    /// Close the socket with this code and reason.
    Close(Refusal),
    /// The peer is gone (closed, reset, or stopped answering): nothing to send.
    Gone,
}

impl End {
    pub(super) fn close(code: u16, reason: impl Into<String>) -> End {
        End::Close(Refusal::new(code, reason))
    }
}

impl From<Refusal> for End {
    fn from(refusal: Refusal) -> End {
        End::Close(refusal)
    }
}

/// Runs a session until the peer leaves, misbehaves or the server shuts down.
///
/// Not an `async fn`: the session is built here and moved into the returned future once, and
/// the lease and settings are borrowed from the task that owns them. An `async fn` keeps its
/// arguments in its future beside the locals they are moved into, so every idle connection's
/// task would hold the socket three times (see *Idle memory* in `BENCHMARKS.md`).
pub fn run<'a>(
    socket: WebSocket,
    lease: &'a RoomLease,
    settings: &'a Settings,
) -> impl Future<Output = ()> + 'a {
    let span = tracing::info_span!(
        "session",
        room = %lease.room().name(),
        connection = settings.connection,
        user = settings.subject.as_deref().unwrap_or("-"),
    );
    let room = lease.room().clone();
    let (subscription, greeting) = span.in_scope(|| {
        tracing::debug!("connected");
        room.subscribe_as(
            settings.connection,
            Profile {
                user: Profile::user_of(settings.subject.as_deref(), settings.connection),
                read_write: settings.access == Access::ReadWrite,
                hears_stateless: false,
            },
        )
    });
    let mut session = Session {
        socket,
        handler: ConnectionHandler::new(
            room,
            settings.access,
            &MessageBudgets::with_update_rate(settings.max_updates_per_sec),
            settings.metrics.clone(),
        ),
        connection: settings.connection,
        left: false,
        last_heard: Instant::now(),
        heard_anything: false,
        metrics: settings.metrics.clone(),
    };
    async move {
        let end = session.serve(subscription, greeting, settings).await;
        session.leave();
        match end {
            End::Close(refusal) => close(&mut session.socket, refusal, &settings.metrics).await,
            End::Gone => tracing::debug!("peer gone"),
        }
    }
    .instrument(span)
}

/// Sends the close frame (within [`SEND_TIMEOUT`]) and reads on until the client's close.
pub(super) async fn close(
    socket: &mut WebSocket,
    Refusal { code, reason }: Refusal,
    metrics: &Metrics,
) {
    tracing::debug!(code, %reason, "closing");
    if code == close_code::TRY_AGAIN_LATER {
        metrics.slow_client_disconnects.inc();
    }
    let close = Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: close_reason(&reason).into(),
    }));
    let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(close)).await;
    // Read on until the client's close (or briefly): closing a socket with unread input
    // resets the connection, and a reset can discard the close frame before the client reads
    // it (a flooding client, the one that most needs the code).
    let _ = tokio::time::timeout(CLOSE_DRAIN, async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

struct Session {
    socket: WebSocket,
    /// What the client's messages do to the room.
    handler: ConnectionHandler,
    connection: ConnectionId,
    /// Whether the session already left the room (see [`Session::leave`]).
    left: bool,
    /// When the peer last sent anything (a pong included).
    last_heard: Instant,
    /// Whether any message arrived yet (the first-message deadline stops then).
    heard_anything: bool,
    metrics: Arc<Metrics>,
}

/// Leaving on drop covers a session task that ends by panicking: its awareness states and
/// queues must not outlive it.
impl Drop for Session {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Session {
    /// Leaves the room: removes the member and the awareness states it controlled.
    fn leave(&mut self) {
        if !std::mem::replace(&mut self.left, true) {
            self.handler
                .room()
                .unsubscribe(self.connection, self.handler.controlled());
        }
    }

    async fn serve(
        &mut self,
        mut subscription: Subscription,
        greeting: crate::room::Greeting,
        settings: &Settings,
    ) -> End {
        if let Err(end) = self.send(greeting.sync_step1).await {
            return end;
        }
        if let Some(awareness) = greeting.awareness {
            if let Err(end) = self.send(awareness).await {
                return end;
            }
        }
        let mut ping = tokio::time::interval(settings.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        // One timer serves both deadlines, the first message's and then the token's: each
        // timer is 112 bytes of every session's future.
        let now = tokio::time::Instant::now();
        let first_message_by = now + settings.first_message_timeout;
        let expires_by = settings.expires_at.map(|at| now + time_until(at));
        let deadline = tokio::time::sleep_until(self.next_deadline(first_message_by, expires_by));
        tokio::pin!(deadline);
        loop {
            if subscription.signals.lagged() {
                return lagged();
            }
            let step = tokio::select! {
                _ = settings.shutdown.cancelled() => {
                    Err(End::close(close_code::GOING_AWAY, "server shutting down"))
                }
                inbound = self.socket.next() => match self.receive(inbound, settings) {
                    Ok(Some(frame)) => {
                        // ExApp mode: Nextcloud changed the user's permission on the file.
                        if let Some(access) = subscription.signals.take_access() {
                            self.handler.set_access(access);
                        }
                        self.handle(frame).await
                    }
                    Ok(None) => Ok(()),
                    Err(end) => Err(end),
                },
                frame = subscription.updates.recv() => match frame {
                    Some(frame) => self.send_queued(frame, &mut subscription.updates).await,
                    // The room dropped us: either we lagged or the room is gone.
                    None if subscription.signals.lagged() => Err(lagged()),
                    None if subscription.signals.deleted() => {
                        Err(End::close(close_code::ROOM_DELETED, "room deleted"))
                    }
                    None if subscription.signals.revoked() => Err(End::close(
                        close_code::PERMISSION_REVOKED,
                        "permission revoked",
                    )),
                    None => Err(End::close(close_code::GOING_AWAY, "room closed")),
                },
                frame = subscription.awareness.recv() => match frame {
                    Some(frame) => self.send_awareness(frame, &mut subscription).await,
                    None => Ok(()),
                },
                _ = ping.tick() => self.keepalive(settings.ping_interval).await,
                () = &mut deadline => {
                    let now = tokio::time::Instant::now();
                    if !self.heard_anything && now >= first_message_by {
                        self.metrics.limit_hit("first_message_timeout");
                        Err(End::close(close_code::POLICY_VIOLATION, "no message received in time"))
                    } else if expires_by.is_some_and(|by| now >= by) {
                        Err(End::close(close_code::POLICY_VIOLATION, "token expired"))
                    } else {
                        // The first message came in time: wait for the token's expiry, if any.
                        deadline.as_mut().reset(self.next_deadline(first_message_by, expires_by));
                        Ok(())
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// When the session's timer must next fire: at the first-message deadline until a message
    /// came, then at the token's expiry, if any.
    fn next_deadline(
        &self,
        first_message_by: tokio::time::Instant,
        expires_by: Option<tokio::time::Instant>,
    ) -> tokio::time::Instant {
        let first_message_by = (!self.heard_anything).then_some(first_message_by);
        match (first_message_by, expires_by) {
            (Some(first), Some(expiry)) => first.min(expiry),
            (Some(by), None) | (None, Some(by)) => by,
            (None, None) => tokio::time::Instant::now() + NEVER,
        }
    }

    /// Takes in one inbound message: a binary frame comes back to be handled; `None` for
    /// anything else that does not end the session.
    fn receive(
        &mut self,
        inbound: Option<Result<Message, tungstenite::Error>>,
        settings: &Settings,
    ) -> Result<Option<Bytes>, End> {
        let frame = inbound_frame(inbound, settings.max_message_bytes, &self.metrics)?;
        self.last_heard = Instant::now();
        self.heard_anything = true;
        Ok(frame)
    }

    /// Handles one inbound binary frame, sending each reply as it is made.
    async fn handle(&mut self, frame: Bytes) -> Result<(), End> {
        let mut messages = InboundFrame::new(&frame);
        while let Some(reply) = self.handler.next_reply(&mut messages)? {
            self.send(reply).await?;
        }
        if self.handler.room().members_behind() {
            // Let the readers' sessions run before taking the next update.
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// Sends one queued update frame and whatever else is already queued, then flushes once.
    async fn send_queued(
        &mut self,
        first: Bytes,
        queue: &mut crate::queue::Receiver<Bytes>,
    ) -> Result<(), End> {
        self.metrics.bytes_sent.inc_by(first.len() as u64);
        bounded(self.socket.feed(Message::Binary(first))).await?;
        for _ in 1..MAX_FRAMES_PER_FLUSH {
            match queue.try_recv() {
                Ok(frame) => {
                    self.metrics.bytes_sent.inc_by(frame.len() as u64);
                    bounded(self.socket.feed(Message::Binary(frame))).await?
                }
                Err(_) => break,
            }
        }
        bounded(self.socket.flush()).await
    }

    /// Sends an awareness frame, or what supersedes it (see [`awareness_to_send`]).
    async fn send_awareness(
        &mut self,
        frame: Bytes,
        subscription: &mut Subscription,
    ) -> Result<(), End> {
        let frame = awareness_to_send(subscription, self.handler.room(), frame);
        self.send(frame).await
    }

    async fn keepalive(&mut self, interval: Duration) -> Result<(), End> {
        if self.last_heard.elapsed() > interval * 2 {
            tracing::info!("peer stopped answering pings");
            return Err(End::Gone);
        }
        bounded(self.socket.send(Message::Ping(Bytes::new()))).await
    }

    fn send(&mut self, frame: Bytes) -> impl Future<Output = Result<(), End>> + '_ {
        self.metrics.bytes_sent.inc_by(frame.len() as u64);
        bounded(self.socket.send(Message::Binary(frame)))
    }
}

/// The awareness frame a member is sent: `frame`, or, when frames were dropped for it
/// meanwhile, the room's full awareness state, which supersedes everything dropped.
pub(super) fn awareness_to_send(
    subscription: &mut Subscription,
    room: &Room,
    frame: Bytes,
) -> Bytes {
    if !subscription.signals.take_awareness_dropped() {
        return frame;
    }
    while subscription.awareness.try_recv().is_ok() {}
    room.awareness_snapshot().unwrap_or(frame)
}

/// What the socket gave, for both dialects' sessions: the frame of a binary message; `None`
/// for what does not end the session (pings are answered by the WebSocket layer, pongs only
/// show the peer is there). The end of the stream, a close, a read error (see [`read_error`])
/// and a text message (1003) end it.
pub(super) fn inbound_frame(
    inbound: Option<Result<Message, tungstenite::Error>>,
    max_message_bytes: u64,
    metrics: &Metrics,
) -> Result<Option<Bytes>, End> {
    let message = match inbound {
        None => return Err(End::Gone),
        Some(Ok(message)) => message,
        Some(Err(error)) => return Err(read_error(error, max_message_bytes, metrics)),
    };
    match message {
        Message::Binary(frame) => Ok(Some(frame)),
        Message::Text(_) => {
            tracing::warn!("text frame received");
            metrics.reject("text_frame");
            Err(End::close(
                close_code::UNSUPPORTED_DATA,
                "text frames are not part of the protocol; send binary",
            ))
        }
        Message::Close(_) => Err(End::Gone),
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(None),
    }
}

/// Bounds a send in time. A combinator rather than an `async fn`, which would hold `operation`
/// twice (as its argument and inside the timeout): this future sits in every session's.
pub(super) fn bounded(
    operation: impl Future<Output = Result<(), tungstenite::Error>>,
) -> impl Future<Output = Result<(), End>> {
    tokio::time::timeout(SEND_TIMEOUT, operation).map(|sent| match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => {
            tracing::debug!(%error, "send failed");
            Err(End::Gone)
        }
        // The peer stopped reading, or the network between us is gone. A client that is only
        // stalled gets the reason once it reads again (the close is sent with a bound of its
        // own) and resyncs on reconnect, like one that fell behind the room's queue.
        Err(_) => {
            tracing::info!("send timed out; peer is not reading");
            Err(End::close(
                close_code::TRY_AGAIN_LATER,
                "stopped reading; reconnect to resync",
            ))
        }
    })
}

/// A close frame's reason may hold at most 123 bytes (RFC 6455, 5.5): longer ones are cut at a
/// character boundary, or the client would see a protocol error instead of the code.
fn close_reason(reason: &str) -> String {
    const MAX_CLOSE_REASON_BYTES: usize = 123;
    if reason.len() <= MAX_CLOSE_REASON_BYTES {
        return reason.to_owned();
    }
    let mut end = MAX_CLOSE_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

pub(super) fn lagged() -> End {
    tracing::info!("client fell behind the room; closing so that it resyncs");
    End::close(
        close_code::TRY_AGAIN_LATER,
        "fell behind the room; reconnect to resync",
    )
}

/// A very long time: the deadline of what has none.
pub(super) const NEVER: Duration = Duration::from_secs(60 * 60 * 24 * 365);

/// How long until `deadline` (at most [`NEVER`]).
pub(super) fn time_until(deadline: SystemTime) -> Duration {
    deadline
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
        .min(NEVER)
}

/// Maps a read error to the session's end: an oversized message gets 1009 with a reason that
/// tells the client not to resend it; a violation of the WebSocket protocol (an unmasked or
/// malformed frame, an unknown opcode) gets 1002 and a text message that is not UTF-8 gets
/// 1007 (RFC 6455, 7.4.1); anything else means the peer is gone.
fn read_error(error: tungstenite::Error, max_message_bytes: u64, metrics: &Metrics) -> End {
    use tungstenite::error::ProtocolError;
    match error {
        tungstenite::Error::Capacity(_) => {
            tracing::warn!(max_message_bytes, "message too big");
            metrics.limit_hit("message_size");
            End::close(
                close_code::MESSAGE_TOO_BIG,
                format!("message larger than {max_message_bytes} bytes; do not resend it"),
            )
        }
        // The connection dropped: nobody to tell.
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            tracing::debug!(%error, "read failed");
            End::Gone
        }
        tungstenite::Error::Protocol(error) => {
            tracing::warn!(%error, "websocket protocol error");
            metrics.reject("websocket_protocol");
            End::close(
                close_code::PROTOCOL_ERROR,
                format!("websocket protocol error: {error}"),
            )
        }
        tungstenite::Error::Utf8(error) => {
            tracing::warn!(%error, "text message is not UTF-8");
            metrics.reject("websocket_protocol");
            End::close(close_code::INVALID_PAYLOAD, "text message is not UTF-8")
        }
        error => {
            tracing::debug!(%error, "read failed");
            End::Gone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_in_a_control_frame() {
        assert_eq!(close_reason("short"), "short");
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= 123);
        assert!(long.starts_with(&cut));
    }
}
