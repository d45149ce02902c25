//! One Hocuspocus socket: many documents over one WebSocket at the root URL
//! (`@hocuspocus/provider`; the codec is `protocol::hocuspocus`).
//!
//! Each document the client authenticates is one connection of its room, with its own
//! [`ConnectionHandler`] (budgets, awareness states, read-only access) and its own member
//! queues: the same rooms, limits and metrics as y-websocket. One task owns the socket and
//! selects over inbound frames, every open document's queues, the ping timer, one deadline
//! (the first message's, then the earliest token expiry) and shutdown.
//!
//! Frames are handled in order, one at a time, and a document's Auth is decided (its room
//! loaded) before the next frame is read: what a provider sends after its token waits in the
//! socket, so nothing is applied before the document is authorised, without a queue. The
//! slow-reader policy is the y-websocket one, per socket: a document whose update queue
//! overflows closes the socket with 1013 and the provider resyncs every document.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tracing::Instrument;

use super::exapp::{self, RoomRefusal};
use super::request::{Grant, count_auth_failure};
use super::session::{self, End, WebSocket, bounded};
use super::shared::{Shared, saturating_usize};
use crate::auth::{Access, AuthError};
use crate::connection::{ConnectionHandler, UpdateOutcome, close_code};
use crate::error::JoinError;
use crate::limit::MessageBudgets;
use crate::nextcloud::{AppApiUser, FileWatch};
use crate::protocol::Inbound as Yjs;
use crate::protocol::hocuspocus::{self as wire, Message as DocumentMessage};
use crate::room::{ConnectionId, MAX_ROOM_NAME_BYTES, Profile, Subscription};
use crate::rooms::RoomLease;

/// A document open on the socket: authorised, joined to its room.
struct Document {
    /// The provider's key for it (`name` or `name\0session`).
    key: Box<str>,
    /// The encoded key, put before every message sent for the document.
    prefix: Bytes,
    handler: ConnectionHandler,
    subscription: Subscription,
    /// The document's connection in its room.
    connection: ConnectionId,
    /// The `sub` of the token that opened it: a refresh must name the same user.
    subject: Option<String>,
    /// When the token that opened it (or its latest refresh) expires.
    expires_by: Option<tokio::time::Instant>,
    /// When to ask the provider for a fresh token (see [`token_deadlines`]); `None` once asked.
    refresh_by: Option<tokio::time::Instant>,
    /// ExApp mode: a file's permission opened it, and is checked again while it is open.
    watch: Option<FileWatch>,
    /// Held until the document closes: the room stays loaded and counts the connection.
    _lease: RoomLease,
    shared: Arc<Shared>,
}

/// Leaving on drop, as a y-websocket session does: the member, its awareness states and its
/// roster entry go with the document, however the socket ends.
impl Drop for Document {
    fn drop(&mut self) {
        self.handler
            .room()
            .unsubscribe(self.connection, self.handler.controlled());
        self.shared.metrics.documents_open.dec();
    }
}

/// What one document's queues gave.
enum Outbound {
    Update(Bytes),
    Awareness(Bytes),
    Stateless(Bytes),
    /// The room dropped the member: it lagged, the room was deleted, or it closed.
    Ended,
}

struct Socket {
    socket: WebSocket,
    documents: Vec<Document>,
    /// Where the next poll of the documents' queues starts, so that none starves the others.
    next_poll: usize,
    shared: Arc<Shared>,
    last_heard: Instant,
    heard_anything: bool,
    /// Whether the client understands [`wire::PING`]: provider 4, which sends its version
    /// with its token. Provider 3 would throw on it; it stays alive on awareness echoes.
    answers_pings: bool,
    /// ExApp mode: the Nextcloud user AppAPI named at the upgrade.
    user: Option<AppApiUser>,
}

/// Serves one Hocuspocus socket until it closes. Builds the session before its future, which
/// then owns it: an `async fn` would hold the socket twice, as its argument and in the session
/// (see *Idle memory* in BENCHMARKS.md; `session::run` does the same).
pub(super) fn run(
    socket: WebSocket,
    shared: Arc<Shared>,
    user: Option<AppApiUser>,
) -> impl Future<Output = ()> {
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("hocuspocus", connection = id);
    let mut session = Socket {
        socket,
        documents: Vec::new(),
        next_poll: 0,
        shared,
        last_heard: Instant::now(),
        heard_anything: false,
        answers_pings: false,
        user,
    };
    async move {
        tracing::debug!("connected");
        let end = session.serve().await;
        session.documents.clear();
        match end {
            End::Close(refusal) => {
                let metrics = session.shared.metrics.clone();
                session::close(&mut session.socket, refusal, &metrics).await;
            }
            End::Gone => tracing::debug!("peer gone"),
        }
    }
    .instrument(span)
}

impl Socket {
    async fn serve(&mut self) -> End {
        let ping_interval = self.shared.config.ping_interval();
        let mut ping = tokio::time::interval(ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let first_message_by = tokio::time::Instant::now()
            + Duration::from_secs(self.shared.config.limits.first_message_secs);
        let never = tokio::time::Instant::now() + session::NEVER;
        let deadline = tokio::time::sleep_until(first_message_by);
        tokio::pin!(deadline);
        let shutdown = self.shared.session_token();
        loop {
            let step = tokio::select! {
                _ = shutdown.cancelled() => {
                    Err(End::close(close_code::GOING_AWAY, "server shutting down"))
                }
                inbound = self.socket.next() => match self.receive(inbound) {
                    Ok(Some(frame)) => self.handle(&frame).await,
                    Ok(None) => Ok(()),
                    Err(end) => Err(end),
                },
                (index, outbound) = poll_documents(&mut self.documents, &mut self.next_poll) => {
                    self.send_outbound(index, outbound).await
                }
                _ = ping.tick() => self.keepalive(ping_interval).await,
                () = &mut deadline => {
                    if !self.heard_anything {
                        self.shared.metrics.limit_hit("first_message_timeout");
                        Err(End::close(close_code::POLICY_VIOLATION, "no message received in time"))
                    } else {
                        self.expire().await
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
            // Reset only when it moved (a document opened or closed, a token refreshed): a
            // reset re-registers the timer, and this runs for every frame.
            let next = self.next_deadline(first_message_by, never);
            if deadline.deadline() != next {
                deadline.as_mut().reset(next);
            }
        }
    }

    /// The first-message deadline until a message came, then the earliest token refresh or
    /// expiry; `never` without either.
    fn next_deadline(
        &self,
        first_message_by: tokio::time::Instant,
        never: tokio::time::Instant,
    ) -> tokio::time::Instant {
        if !self.heard_anything {
            return first_message_by;
        }
        self.documents
            .iter()
            .flat_map(|document| [document.refresh_by, document.expires_by])
            .flatten()
            .min()
            .unwrap_or(never)
    }

    fn receive(
        &mut self,
        inbound: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<Option<Bytes>, End> {
        let max_message_bytes = self.shared.config.limits.max_message_bytes;
        let frame = session::inbound_frame(inbound, max_message_bytes, &self.shared.metrics)?;
        self.last_heard = Instant::now();
        self.heard_anything = true;
        Ok(frame)
    }

    /// Handles one inbound frame: one message about one document.
    async fn handle(&mut self, frame: &[u8]) -> Result<(), End> {
        let (key, message) = match wire::decode(frame) {
            Ok(wire::Inbound::Pong) => return Ok(()),
            Ok(wire::Inbound::Document { key, message }) => (key, message),
            Err(error) => {
                tracing::warn!(%error, "malformed message");
                self.shared.metrics.reject("malformed");
                return Err(End::close(
                    close_code::INVALID_PAYLOAD,
                    format!("malformed message: {error}"),
                ));
            }
        };
        let index = self
            .documents
            .iter()
            .position(|document| &*document.key == key);
        let Some(index) = index else {
            return match message {
                DocumentMessage::Auth(Some(token)) => {
                    self.answers_pings |= token.provider_version.is_some();
                    // Boxed: the join's future is large, and an idle socket's future would
                    // hold room for it (see *Idle memory* in BENCHMARKS.md).
                    Box::pin(self.open(key, token.token)).await
                }
                // A document not authenticated on this socket gets nothing.
                _ => {
                    self.shared.metrics.reject("not_authenticated");
                    Ok(())
                }
            };
        };
        let document = &mut self.documents[index];
        document.subscription.signals.heard();
        // ExApp mode: Nextcloud changed the user's permission on the file.
        if let Some(access) = document.subscription.signals.take_access() {
            document.handler.set_access(access);
        }
        let prefix = document.prefix.clone();
        match message {
            DocumentMessage::Auth(Some(token)) => Box::pin(self.refresh(index, token.token)).await,
            DocumentMessage::Auth(None) => Ok(()),
            DocumentMessage::Close => {
                self.documents.swap_remove(index);
                self.send(wire::encode_close(&prefix, "provider_initiated"))
                    .await
            }
            DocumentMessage::Stateless(payload) => {
                Ok(document.handler.receive_stateless(payload)?)
            }
            DocumentMessage::Yjs(Yjs::SyncStep1(state_vector)) => {
                let answer = document.handler.sync_step1_reply(&state_vector)?;
                let ours = document.handler.room().sync_step1();
                self.send(wire::frame(&prefix, &answer)).await?;
                self.send(wire::frame(&prefix, &ours)).await
            }
            DocumentMessage::Yjs(Yjs::SyncStep2(update)) => {
                let outcome = document.handler.receive_update(update, true)?;
                self.acknowledge(index, outcome).await
            }
            DocumentMessage::Yjs(Yjs::Update(update)) => {
                let outcome = document.handler.receive_update(update, false)?;
                self.acknowledge(index, outcome).await
            }
            DocumentMessage::Yjs(Yjs::Awareness(payload)) => {
                Ok(document.handler.receive_awareness(payload)?)
            }
            DocumentMessage::Yjs(Yjs::QueryAwareness) => {
                match document.handler.awareness_reply()? {
                    Some(snapshot) => self.send(wire::frame(&prefix, &snapshot)).await,
                    None => Ok(()),
                }
            }
            // Type 2 is Hocuspocus Auth, decoded above; never a y-protocols Auth.
            DocumentMessage::Yjs(Yjs::Auth) => Ok(()),
        }
    }

    /// `SyncStatus` for a client's update: applied (or known), or not; after a gap, the room's
    /// SyncStep1 follows, and the client's answer is acknowledged in its turn. When the room
    /// has members behind, the session then yields, as a y-websocket session does, so that a
    /// fast writer cannot starve the readers' tasks.
    async fn acknowledge(&mut self, index: usize, outcome: UpdateOutcome) -> Result<(), End> {
        let prefix = self.documents[index].prefix.clone();
        let behind = self.documents[index].handler.room().members_behind();
        let stored = outcome == UpdateOutcome::Stored;
        self.send(wire::encode_sync_status(&prefix, stored)).await?;
        if let UpdateOutcome::Gap {
            resync: Some(step1),
        } = outcome
        {
            self.send(wire::frame(&prefix, &step1)).await?;
        }
        if behind {
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// Decides a document's Auth: authorised, it joins its room and is told its scope, then
    /// the room's presence and roster; refused, it is told why and the socket stays open.
    async fn open(&mut self, key: &str, token: &str) -> Result<(), End> {
        let prefix = wire::key_prefix(key);
        let room = wire::room_of(key);
        let decision = authorise(
            self.shared.clone(),
            self.user.clone(),
            self.documents.len(),
            room,
            token,
        );
        let grant = match decision.await {
            Ok(grant) => grant,
            Err(RoomRefusal::Denied(reason)) => {
                tracing::info!(%room, %reason, "document refused");
                return self
                    .send(wire::encode_permission_denied(&prefix, &reason))
                    .await;
            }
            // Nextcloud did not answer: the provider reconnects and asks again.
            Err(RoomRefusal::Unavailable(reason)) => {
                return Err(End::close(close_code::TRY_AGAIN_LATER, reason));
            }
        };
        let lease = match self.shared.rooms.join(room).await {
            Ok(lease) => lease,
            Err(error) => return self.refuse_join(&prefix, room, error).await,
        };
        let connection = self.shared.next_connection.fetch_add(1, Ordering::Relaxed);
        let user = Profile::user_of(grant.subject.as_deref(), connection);
        tracing::debug!(%room, connection, %user, "document opened");
        let (subscription, greeting) = lease.room().subscribe_as(
            connection,
            Profile {
                user,
                read_write: grant.access == Access::ReadWrite,
                hears_stateless: true,
            },
        );
        let limits = &self.shared.config.limits;
        let handler = ConnectionHandler::new(
            lease.room().clone(),
            grant.access,
            &MessageBudgets::with_update_rate(limits.max_updates_per_sec),
            self.shared.metrics.clone(),
        )
        .with_origin(connection);
        self.shared.metrics.documents_open.inc();
        let (expires_by, refresh_by) = token_deadlines(grant.expires_at);
        let watch = exapp::watch(&self.shared, &grant, connection, lease.room());
        // One at a time: most sockets hold one document, and a `Vec` would otherwise reserve
        // room for four.
        self.documents.reserve_exact(1);
        self.documents.push(Document {
            key: key.into(),
            prefix: prefix.clone(),
            handler,
            subscription,
            connection,
            subject: grant.subject,
            expires_by,
            refresh_by,
            watch,
            _lease: lease,
            shared: self.shared.clone(),
        });
        let read_only = grant.access == Access::ReadOnly;
        self.send(wire::encode_authenticated(&prefix, read_only))
            .await?;
        if let Some(awareness) = greeting.awareness {
            self.send(wire::frame(&prefix, &awareness)).await?;
        }
        if let Some(roster) = greeting.roster {
            self.send(wire::frame(&prefix, &roster)).await?;
        }
        Ok(())
    }

    /// A fresh token for an open document (the provider answers ycord's token request, or an
    /// application recreated its provider): a valid one for the same user extends the
    /// document's life and sets its access (and its roster entry, so that a writer turned
    /// reader gives up the editor's role); an invalid one, or one for another user, closes the
    /// document, as an expired one would.
    async fn refresh(&mut self, index: usize, token: &str) -> Result<(), End> {
        let Some(auth) = &self.shared.auth else {
            return Ok(());
        };
        let document = &mut self.documents[index];
        if document.watch.is_some() {
            // Nextcloud's permission, not a token, opened it; the periodic check renews it.
            return Ok(());
        }
        let room = wire::room_of(&document.key);
        let refusal = match auth.authorize_room(Some(token), room) {
            Ok(claims) if claims.sub == document.subject => {
                (document.expires_by, document.refresh_by) =
                    token_deadlines(Some(claims.expires_at()));
                document.handler.set_access(claims.mode);
                let read_write = claims.mode == Access::ReadWrite;
                let room = document.handler.room().clone();
                room.set_read_write(document.connection, read_write);
                tracing::debug!(room = %room.name(), "token refreshed");
                return Ok(());
            }
            Ok(_) => "the new token names another user".to_owned(),
            Err(error) => {
                count_auth_failure(&self.shared.metrics, &error);
                error.to_string()
            }
        };
        let document = self.documents.swap_remove(index);
        let prefix = document.prefix.clone();
        drop(document);
        self.send(wire::encode_permission_denied(&prefix, &refusal))
            .await
    }

    /// Answers a join that failed: a deleted room, a full room or too many rooms are refused
    /// for this document; a failing store closes the socket (1011), so that the provider
    /// reconnects and retries every document once the store answers.
    async fn refuse_join(
        &mut self,
        prefix: &[u8],
        room: &str,
        error: JoinError,
    ) -> Result<(), End> {
        let reason = match error {
            JoinError::RoomDeleted { .. } => "room deleted".to_owned(),
            JoinError::TooManyRooms => {
                self.shared.metrics.limit_hit("rooms");
                error.to_string()
            }
            JoinError::RoomFull => {
                self.shared.metrics.limit_hit("connections_per_room");
                error.to_string()
            }
            JoinError::Store(_) => {
                tracing::error!(%room, %error, "loading room failed");
                return Err(End::close(
                    close_code::INTERNAL_ERROR,
                    "storage failing: reconnect later",
                ));
            }
        };
        self.send(wire::encode_permission_denied(prefix, &reason))
            .await
    }

    /// Sends what a document's queues gave; closes the document (or the socket) the room
    /// dropped.
    async fn send_outbound(&mut self, index: usize, outbound: Outbound) -> Result<(), End> {
        let document = &mut self.documents[index];
        let prefix = document.prefix.clone();
        match outbound {
            Outbound::Update(frame) => {
                // This frame and whatever else is already queued, then one flush.
                let mut next = Some(frame);
                let mut fed = 0;
                while let Some(frame) = next {
                    let framed = wire::frame(&prefix, &frame);
                    self.shared.metrics.bytes_sent.inc_by(framed.len() as u64);
                    bounded(self.socket.feed(Message::Binary(framed))).await?;
                    fed += 1;
                    next = (fed < session::MAX_FRAMES_PER_FLUSH)
                        .then(|| document.subscription.updates.try_recv().ok())
                        .flatten();
                }
                bounded(self.socket.flush()).await
            }
            Outbound::Awareness(frame) => {
                let room = document.handler.room();
                let frame = session::awareness_to_send(&mut document.subscription, room, frame);
                self.send(wire::frame(&prefix, &frame)).await
            }
            Outbound::Stateless(body) => self.send(wire::frame(&prefix, &body)).await,
            Outbound::Ended => {
                let signals = document.subscription.signals.clone();
                self.documents.swap_remove(index);
                if signals.lagged() {
                    Err(session::lagged())
                } else if signals.deleted() {
                    self.send(wire::encode_permission_denied(&prefix, "room deleted"))
                        .await
                } else if signals.revoked() {
                    self.send(wire::encode_permission_denied(
                        &prefix,
                        "permission revoked",
                    ))
                    .await
                } else {
                    Err(End::close(close_code::GOING_AWAY, "room closed"))
                }
            }
        }
    }

    /// Asks for fresh tokens when they are due, and closes the documents whose token expired:
    /// PermissionDenied tells the provider, which fires `authenticationFailed`.
    async fn expire(&mut self) -> Result<(), End> {
        let now = tokio::time::Instant::now();
        let mut index = 0;
        while index < self.documents.len() {
            let document = &mut self.documents[index];
            if document.refresh_by.is_some_and(|by| by <= now) {
                document.refresh_by = None;
                let request = wire::encode_token_request(&document.prefix);
                self.send(request).await?;
            }
            if self.documents[index].expires_by.is_some_and(|by| by <= now) {
                let document = self.documents.swap_remove(index);
                let prefix = document.prefix.clone();
                drop(document);
                self.send(wire::encode_permission_denied(&prefix, "token expired"))
                    .await?;
            } else {
                index += 1;
            }
        }
        Ok(())
    }

    /// A WebSocket ping, and the provider's own Ping to a provider that understands it:
    /// provider 4 closes a socket that received no message for 30 s, and WebSocket pings do not
    /// count for it (browsers hide them). Awareness echoes keep provider 3 (and 4) alive too.
    async fn keepalive(&mut self, interval: Duration) -> Result<(), End> {
        if self.last_heard.elapsed() > interval * 2 {
            tracing::info!("peer stopped answering pings");
            return Err(End::Gone);
        }
        if !self.answers_pings {
            return bounded(self.socket.send(Message::Ping(Bytes::new()))).await;
        }
        bounded(self.socket.feed(Message::Ping(Bytes::new()))).await?;
        self.send(Bytes::from_static(wire::PING)).await
    }

    fn send(&mut self, frame: Bytes) -> impl Future<Output = Result<(), End>> + '_ {
        self.shared.metrics.bytes_sent.inc_by(frame.len() as u64);
        bounded(self.socket.send(Message::Binary(frame)))
    }
}

/// What the token allows in `room` (in ExApp mode, what Nextcloud lets the user do with
/// a file room), or why not. Takes what it needs from the socket by value: the socket itself must not be held across
/// Nextcloud's answer (it is not `Sync`).
async fn authorise(
    shared: Arc<Shared>,
    user: Option<AppApiUser>,
    open_documents: usize,
    room: &str,
    token: &str,
) -> Result<Grant, RoomRefusal> {
    if room.is_empty() || room.len() > MAX_ROOM_NAME_BYTES {
        shared.metrics.reject("invalid_document_name");
        return Err(RoomRefusal::Denied(format!(
            "invalid document name: 1 to {MAX_ROOM_NAME_BYTES} bytes"
        )));
    }
    let max_documents = saturating_usize(shared.config.limits.max_documents_per_connection);
    if open_documents >= max_documents {
        shared.metrics.limit_hit("documents_per_connection");
        return Err(RoomRefusal::Denied(format!(
            "too many documents on this connection (at most {max_documents}); open another"
        )));
    }
    if let (Some(exapp), Some(user)) = (&shared.exapp, &user) {
        if let Some(grant) = exapp::file_grant(&shared, exapp, user, room).await {
            return grant;
        }
        if shared.auth.is_none() {
            return Err(exapp::not_a_file_room(&shared, room));
        }
    }
    let Some(auth) = &shared.auth else {
        return Ok(Grant::unrestricted());
    };
    match auth.authorize_room(Some(token), room) {
        Ok(claims) => Ok(Grant::from(claims)),
        Err(error) => {
            count_auth_failure(&shared.metrics, &error);
            Err(RoomRefusal::Denied(match error {
                AuthError::Missing => "a token is required".to_owned(),
                error => error.to_string(),
            }))
        }
    }
}

/// When a token granted at `expires_at` expires, and when to ask for a fresh one: a minute
/// before, or halfway through a shorter lifetime.
fn token_deadlines(
    expires_at: Option<SystemTime>,
) -> (Option<tokio::time::Instant>, Option<tokio::time::Instant>) {
    let Some(expires_at) = expires_at else {
        return (None, None);
    };
    let now = tokio::time::Instant::now();
    let lifetime = session::time_until(expires_at);
    let lead = (lifetime / 2).min(REFRESH_LEAD);
    (Some(now + lifetime), Some(now + lifetime - lead))
}

/// How long before a token expires ycord asks the provider for a fresh one.
const REFRESH_LEAD: Duration = Duration::from_secs(60);

/// Waits until one document's queues give something: updates first, then presence, then
/// stateless messages; the documents are polled from `next` on, round robin.
fn poll_documents<'a>(
    documents: &'a mut [Document],
    next: &'a mut usize,
) -> impl Future<Output = (usize, Outbound)> + 'a {
    std::future::poll_fn(move |cx| {
        let count = documents.len();
        for offset in 0..count {
            let index = (*next + offset) % count;
            let subscription = &mut documents[index].subscription;
            // A member the room dropped for lagging ends now, not after its queue drains.
            let ready = if subscription.signals.lagged() {
                Some(Outbound::Ended)
            } else {
                match subscription.updates.poll_recv(cx) {
                    Poll::Ready(Some(frame)) => Some(Outbound::Update(frame)),
                    Poll::Ready(None) => Some(Outbound::Ended),
                    Poll::Pending => match subscription.awareness.poll_recv(cx) {
                        Poll::Ready(Some(frame)) => Some(Outbound::Awareness(frame)),
                        _ => match subscription
                            .stateless
                            .as_mut()
                            .map(|queue| queue.poll_recv(cx))
                        {
                            Some(Poll::Ready(Some(body))) => Some(Outbound::Stateless(body)),
                            _ => None,
                        },
                    },
                }
            };
            if let Some(outbound) = ready {
                *next = index + 1;
                return Poll::Ready((index, outbound));
            }
        }
        Poll::Pending
    })
}
