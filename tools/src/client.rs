//! A client over a real WebSocket, keeping a yrs document in sync with one room.
//!
//! It behaves like the stock `WebsocketProvider` (or `HocuspocusProvider`): on open it sends
//! SyncStep1 (its state vector), answers the server's SyncStep1 with SyncStep2 (what the
//! server lacks, so edits made while disconnected are pushed on rejoin), and applies every
//! SyncStep2 and Update it gets. How those messages are framed is the [`Endpoint`]'s business
//! (see [`crate::wire`]). Nothing here unwraps network input: a malformed frame becomes a
//! [`Disconnect`].

use std::fmt;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use crate::error::BenchError;
use crate::wire::{Endpoint, Event};

/// A client WebSocket.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a client waits for each step of joining a room, and how it sizes its buffers.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// TCP connect plus WebSocket upgrade, then again until the server's SyncStep1.
    pub connect_timeout: Duration,
    /// From the server's SyncStep1 until its SyncStep2 (big documents, busy servers).
    pub sync_timeout: Duration,
    /// Small buffers for runs with thousands of mostly idle connections.
    pub small_buffers: bool,
}

impl ClientOptions {
    fn websocket_config(&self) -> WebSocketConfig {
        if self.small_buffers {
            // tungstenite allocates the read buffer eagerly (128 KiB by default): with 10k
            // connections that would be over a gigabyte on our side.
            WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0)
        } else {
            WebSocketConfig::default()
        }
    }
}

/// When each step of joining a room happened.
#[derive(Debug, Clone, Copy)]
pub struct JoinTiming {
    /// The WebSocket upgrade completed.
    pub connected: Instant,
    /// The server's SyncStep1 arrived.
    pub step1: Instant,
    /// The frame holding the server's SyncStep2 arrived (before it was applied).
    pub step2_received: Instant,
}

/// Why a connection ended.
#[derive(Debug, Clone)]
pub struct Disconnect {
    /// The close code the server sent, if it sent a close frame.
    pub code: Option<u16>,
    pub reason: String,
    /// The server sent something that is not valid for the protocol or not a valid update.
    pub protocol_error: bool,
}

impl Disconnect {
    fn closed(frame: Option<CloseFrame>) -> Self {
        match frame {
            Some(frame) => Disconnect {
                code: Some(u16::from(frame.code)),
                reason: frame.reason.to_string(),
                protocol_error: false,
            },
            None => Disconnect {
                code: None,
                reason: "closed without a close code".into(),
                protocol_error: false,
            },
        }
    }

    fn socket(error: tungstenite::Error) -> Self {
        Disconnect {
            code: None,
            reason: error.to_string(),
            protocol_error: false,
        }
    }

    fn protocol(reason: String) -> Self {
        Disconnect {
            code: None,
            reason,
            protocol_error: true,
        }
    }

    /// Hocuspocus ended the document's session with a CLOSE message; like the provider, this
    /// counts as a 1000 close.
    fn session_closed(reason: String) -> Self {
        Disconnect {
            code: Some(1000),
            reason: format!("CLOSE message: {reason}"),
            protocol_error: false,
        }
    }

    fn eof() -> Self {
        Disconnect {
            code: None,
            reason: "connection ended without a close frame".into(),
            protocol_error: false,
        }
    }

    /// A short key for counting disconnects by kind: the close code, or what happened.
    pub fn kind(&self) -> String {
        match (self.code, self.protocol_error) {
            (Some(code), _) => code.to_string(),
            (None, true) => "protocol-error".into(),
            (None, false) => "socket-ended".into(),
        }
    }
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.protocol_error) {
            (Some(code), _) => write!(f, "closed by the server with {code} ({})", self.reason),
            (None, true) => write!(f, "protocol error: {}", self.reason),
            (None, false) => write!(f, "{}", self.reason),
        }
    }
}

/// What one frame from the server did.
#[derive(Debug, Default)]
struct FrameEvents {
    /// The server's SyncStep1 (its state vector), to be answered with SyncStep2.
    server_step1: Option<StateVector>,
    step2: bool,
    updates: usize,
    /// Hocuspocus refused the document (PermissionDenied), with its reason.
    denied: Option<String>,
    /// Hocuspocus ended the document's session (CLOSE), with its reason.
    closed: Option<String>,
    /// Hocuspocus acknowledged an update of the client's (SyncStatus 1).
    acknowledged: bool,
}

impl FrameEvents {
    /// Whether the frame held anything a client acts on.
    fn is_empty(&self) -> bool {
        self.server_step1.is_none()
            && !self.step2
            && self.updates == 0
            && self.denied.is_none()
            && self.closed.is_none()
            && !self.acknowledged
    }
}

/// Decodes every message of a frame and applies its updates to `doc`.
fn apply_frame(endpoint: &Endpoint, doc: &Doc, frame: &[u8]) -> Result<FrameEvents, String> {
    let mut events = FrameEvents::default();
    for event in endpoint.decode(frame)? {
        match event {
            Event::SyncStep1(state_vector) => events.server_step1 = Some(state_vector),
            Event::SyncStep2(update) => {
                apply_update(doc, update)?;
                events.step2 = true;
            }
            Event::Update(update) => {
                apply_update(doc, update)?;
                events.updates += 1;
            }
            Event::Denied(reason) => events.denied = Some(reason),
            Event::Closed(reason) => events.closed = Some(reason),
            Event::Acknowledged => events.acknowledged = true,
            Event::Authenticated | Event::Awareness(_) | Event::Other => {}
        }
    }
    Ok(events)
}

/// Decodes a v1 update and applies it to `doc`; why not, if it cannot.
pub fn apply_update(doc: &Doc, update: &[u8]) -> Result<(), String> {
    let update = Update::decode_v1(update).map_err(|error| format!("invalid update: {error}"))?;
    doc.transact_mut()
        .apply_update(update)
        .map_err(|error| format!("update does not apply: {error}"))
}

/// Opens a WebSocket to `url`. Every failure is [`BenchError::Unreachable`].
pub async fn connect(url: &str, options: &ClientOptions) -> Result<Socket, BenchError> {
    let unreachable = |reason: String| BenchError::Unreachable {
        url: url.to_owned(),
        reason,
    };
    let connecting =
        tokio_tungstenite::connect_async_with_config(url, Some(options.websocket_config()), true);
    match tokio::time::timeout(options.connect_timeout, connecting).await {
        Err(_) => Err(unreachable(format!(
            "no WebSocket upgrade within {:?}",
            options.connect_timeout
        ))),
        Ok(Err(tungstenite::Error::Http(response))) => Err(unreachable(format!(
            "HTTP {} instead of a WebSocket upgrade",
            response.status()
        ))),
        Ok(Err(error)) => Err(unreachable(error.to_string())),
        Ok(Ok((socket, _response))) => Ok(socket),
    }
}

/// A joined room: the socket and the document it keeps in sync.
pub struct Connection {
    socket: Socket,
    doc: Doc,
    endpoint: Endpoint,
    /// When this client last sent anything (for the keepalive some protocols need).
    last_sent: Instant,
    /// Updates of this client's the server acknowledged (Hocuspocus SyncStatus).
    acknowledged: u64,
}

impl Connection {
    /// Connects to the room and syncs `doc` with it: sends SyncStep1 (after authenticating,
    /// where the protocol wants it), answers the server's SyncStep1, and returns once the
    /// server's SyncStep2 is applied.
    pub async fn join(
        endpoint: &Endpoint,
        doc: Doc,
        options: &ClientOptions,
    ) -> Result<(Connection, JoinTiming), BenchError> {
        let socket = connect(endpoint.url(), options).await?;
        let connected = Instant::now();
        let mut connection = Connection {
            socket,
            doc,
            endpoint: endpoint.clone(),
            last_sent: connected,
            acknowledged: 0,
        };
        let timing = connection.handshake(connected, options).await?;
        Ok((connection, timing))
    }

    async fn handshake(
        &mut self,
        connected: Instant,
        options: &ClientOptions,
    ) -> Result<JoinTiming, BenchError> {
        let url = self.endpoint.to_string();
        let protocol = self.endpoint.protocol();
        let not_y_websocket = |reason: String| BenchError::NotYWebsocket {
            url: url.clone(),
            protocol,
            reason,
        };
        let state_vector = self.doc.transact().state_vector().encode_v1();
        for message in self.endpoint.opening(&state_vector) {
            self.send(message).await.map_err(|error| {
                not_y_websocket(format!("sending the opening messages failed: {error}"))
            })?;
        }
        let mut step1 = None;
        let step1_deadline = connected + options.connect_timeout;
        loop {
            let deadline = match step1 {
                None => step1_deadline,
                Some(at) => at + options.sync_timeout,
            };
            let next = tokio::time::timeout_at(deadline, self.socket.next()).await;
            let message = match (next, step1) {
                (Err(_), None) => {
                    return Err(not_y_websocket(format!(
                        "no SyncStep1 within {:?} of connecting",
                        options.connect_timeout
                    )));
                }
                (Err(_), Some(_)) => {
                    return Err(self.failed(format!(
                        "no SyncStep2 within {:?} of the server's SyncStep1",
                        options.sync_timeout
                    )));
                }
                (Ok(None), _) => return Err(self.failed(Disconnect::eof().to_string())),
                (Ok(Some(Err(error))), _) => {
                    return Err(self.failed(Disconnect::socket(error).to_string()));
                }
                (Ok(Some(Ok(message))), _) => message,
            };
            let frame = match message {
                Message::Binary(frame) => frame,
                Message::Close(frame) => {
                    return Err(self.failed(format!(
                        "during the sync handshake: {}",
                        Disconnect::closed(frame)
                    )));
                }
                _ => continue,
            };
            let received = Instant::now();
            let events = match apply_frame(&self.endpoint, &self.doc, &frame) {
                Ok(events) => events,
                Err(reason) if step1.is_none() => return Err(not_y_websocket(reason)),
                Err(reason) => return Err(self.failed(reason)),
            };
            if let Some(reason) = events.denied {
                return Err(self.failed(format!("permission denied: {reason}")));
            }
            if let Some(reason) = events.closed {
                return Err(self.failed(format!(
                    "during the sync handshake: {}",
                    Disconnect::session_closed(reason)
                )));
            }
            if let Some(server_state) = events.server_step1 {
                step1.get_or_insert(received);
                self.answer_step1(&server_state)
                    .await
                    .map_err(|error| self.failed(error.to_string()))?;
            }
            if events.step2 {
                // A server that sends SyncStep2 before its own SyncStep1 is still fine.
                let step1 = step1.unwrap_or(received);
                return Ok(JoinTiming {
                    connected,
                    step1,
                    step2_received: received,
                });
            }
        }
    }

    fn failed(&self, reason: String) -> BenchError {
        BenchError::Connection {
            url: self.endpoint.to_string(),
            reason,
        }
    }

    async fn answer_step1(&mut self, server_state: &StateVector) -> Result<(), Disconnect> {
        let diff = self.doc.transact().encode_state_as_update_v1(server_state);
        let message = self.endpoint.sync_step2(&diff);
        self.send(message).await
    }

    /// The room.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The document this connection keeps in sync.
    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    /// Sends one message (one binary frame) and flushes it.
    pub async fn send(&mut self, message: bytes::Bytes) -> Result<(), Disconnect> {
        self.last_sent = Instant::now();
        self.socket
            .send(Message::binary(message))
            .await
            .map_err(Disconnect::socket)
    }

    /// Sends a v1 update as an Update message.
    pub async fn send_update(&mut self, update: &[u8]) -> Result<(), Disconnect> {
        let message = self.endpoint.update(update);
        self.send(message).await
    }

    /// Waits for the next binary frame that holds a sync message, applies it, and answers a
    /// SyncStep1 in it; frames that hold nothing for the document (awareness) are skipped.
    /// Returns whether the document changed (a SyncStep2 or an Update arrived) or the server
    /// acknowledged an update (Hocuspocus SyncStatus: a server need not echo a client's
    /// update back to it). Sends the protocol's keepalive when this client has been silent for
    /// its interval.
    /// Cancel-safe as far as frames go: a frame is applied before anything is awaited (only
    /// the answer to a mid-session SyncStep1, which servers send on join, could be lost).
    pub async fn recv(&mut self) -> Result<bool, Disconnect> {
        let keepalive = self.endpoint.keepalive();
        loop {
            let next = match &keepalive {
                None => self.socket.next().await,
                Some((interval, message)) => {
                    tokio::select! {
                        next = self.socket.next() => next,
                        _ = tokio::time::sleep_until(self.last_sent + *interval) => {
                            self.send(message.clone()).await?;
                            continue;
                        }
                    }
                }
            };
            let message = match next {
                None => return Err(Disconnect::eof()),
                Some(Err(error)) => return Err(Disconnect::socket(error)),
                Some(Ok(message)) => message,
            };
            match message {
                Message::Binary(frame) => {
                    let events = apply_frame(&self.endpoint, &self.doc, &frame)
                        .map_err(Disconnect::protocol)?;
                    if let Some(server_state) = &events.server_step1 {
                        self.answer_step1(server_state).await?;
                    }
                    if let Some(reason) = events.denied {
                        return Err(Disconnect::protocol(format!("permission denied: {reason}")));
                    }
                    if let Some(reason) = events.closed {
                        return Err(Disconnect::session_closed(reason));
                    }
                    if events.is_empty() || events.server_step1.is_some() && !events.step2 {
                        continue;
                    }
                    self.acknowledged += u64::from(events.acknowledged);
                    return Ok(events.step2 || events.updates > 0 || events.acknowledged);
                }
                Message::Close(frame) => return Err(Disconnect::closed(frame)),
                // Pings are answered by tungstenite while reading.
                _ => {}
            }
        }
    }

    /// How many of this client's updates the server acknowledged (Hocuspocus only).
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged
    }

    /// Closes with 1000 and waits (at most 2 s) for the server's close frame.
    pub async fn close(self) {
        close_socket(self.socket).await;
    }

    /// Gives up the document (to free its memory) and keeps only the socket.
    pub fn into_held(self) -> Held {
        Held {
            socket: self.socket,
            endpoint: self.endpoint,
            last_sent: self.last_sent,
        }
    }
}

/// A joined room's socket without its document: to be held open, or written to directly.
pub struct Held {
    pub socket: Socket,
    pub endpoint: Endpoint,
    last_sent: Instant,
}

/// Closes with 1000 and waits (at most 2 s) for the server's close frame.
pub async fn close_socket(mut socket: Socket) {
    let closing = async {
        if socket.close(None).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = socket.next().await {}
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
}

/// Joins again after a disconnect, keeping the document (so the server sends only what it
/// lacks), with y-websocket's backoff (100 ms doubling, capped at 2.5 s). Gives up at
/// `deadline`.
pub async fn rejoin(
    endpoint: &Endpoint,
    doc: &Doc,
    options: &ClientOptions,
    deadline: Instant,
) -> Result<Connection, BenchError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let last_error = match Connection::join(endpoint, doc.clone(), options).await {
            Ok((connection, _)) => return Ok(connection),
            Err(error) => error,
        };
        if Instant::now() + backoff >= deadline {
            return Err(last_error);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(2500));
    }
}

/// Keeps a connection open, reading (so that pings are answered) and discarding what
/// arrives, and sending the protocol's keepalive, until `stop` fires (then closes cleanly and
/// returns `None`) or the server ends it (returns why).
pub async fn hold(held: Held, stop: tokio_util::sync::CancellationToken) -> Option<Disconnect> {
    let Held {
        mut socket,
        endpoint,
        mut last_sent,
    } = held;
    let keepalive = endpoint.keepalive();
    loop {
        let keepalive_due = keepalive
            .as_ref()
            .map(|(interval, _)| last_sent + *interval);
        tokio::select! {
            _ = stop.cancelled() => {
                close_socket(socket).await;
                return None;
            }
            _ = tokio::time::sleep_until(keepalive_due.unwrap_or(last_sent)), if keepalive_due.is_some() => {
                if let Some((_, message)) = &keepalive {
                    last_sent = Instant::now();
                    if let Err(error) = socket.send(Message::binary(message.clone())).await {
                        return Some(Disconnect::socket(error));
                    }
                }
            }
            message = socket.next() => match message {
                None => return Some(Disconnect::eof()),
                Some(Err(error)) => return Some(Disconnect::socket(error)),
                Some(Ok(Message::Close(frame))) => return Some(Disconnect::closed(frame)),
                Some(Ok(Message::Binary(frame))) => {
                    if let Some(reason) = endpoint.session_end(&frame) {
                        return Some(Disconnect::session_closed(reason));
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }
}
