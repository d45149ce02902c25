//! The network face of ycord: binding, routes, the WebSocket upgrade and graceful shutdown.
//!
//! [`Server::start`] binds, spawns everything and returns a handle; the binary and the tests
//! start the very same server. Shutdown is one cancellation token that every session, the
//! sweeper, the flusher and warp's accept loop watch.
//!
//! This module is where typed errors become HTTP statuses and close codes. Everything that can
//! be refused before the upgrade (auth, connection limits, room limits) is refused with an HTTP
//! status and a JSON reason, before any room is loaded.

mod api;
mod http;
mod listener;
mod session;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use percent_encoding::percent_decode_str;
use thiserror::Error;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::Filter;
use warp::http::StatusCode;

use crate::auth::{Access, Authenticator};
use crate::config::ServeConfig;
use crate::error::{JoinError, RoomNameError, StoreError};
use crate::limit::IpRateLimiter;
use crate::metrics::{Metrics, Reason};
use crate::room::MAX_ROOM_NAME_BYTES;
use crate::rooms::{RoomLimits, Rooms};
use crate::store::{DocStore, SledStore, StoreHealth};
use crate::webhooks::Webhooks;

/// How often rooms are swept for idle eviction and stale awareness states.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// tungstenite's read buffer per connection, allocated (and zeroed) up front and kept for the
/// connection's life: with 8 KiB it was half of an idle connection's memory (heaptrack of the
/// `idle` scenario). It is also the most one read takes from the socket; y-websocket frames
/// are mostly far smaller. A larger message still arrives whole (tungstenite grows the buffer
/// to the frame's length) in more reads: a 2 MB update takes about 2,000 reads instead of
/// 250, which measured no slower end to end.
const WEBSOCKET_READ_BUFFER_BYTES: usize = 1024;

/// Bytes tungstenite gathers before writing to the socket (frames are flushed explicitly).
const WEBSOCKET_WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// How long shutdown waits for sessions to send their close frames: one bounded send (the
/// close frame, or the send a session was in when shutdown began), plus a margin. Sessions
/// still sending after it are abandoned; they hold nothing unsaved, since applying stopped when
/// shutdown began.
const SESSION_DRAIN_TIMEOUT: Duration = Duration::from_secs(session::SEND_TIMEOUT.as_secs() + 1);

/// Why the server could not start or stop cleanly.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot open the store in {dir}: {source}")]
    OpenStore { dir: String, source: StoreError },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("persisting rooms at shutdown failed: {0}")]
    Persist(#[from] StoreError),
    #[error("server task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Tls(#[from] listener::TlsError),
}

/// State shared by every request and session.
struct Shared {
    config: ServeConfig,
    base_path: String,
    rooms: Rooms,
    metrics: Arc<Metrics>,
    auth: Option<Authenticator>,
    connects_per_ip: IpRateLimiter,
    /// WebSocket connections open now (held by [`ConnectionPermit`]s).
    open_connections: AtomicUsize,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    next_connection: AtomicU64,
}

/// One open WebSocket connection, counted until dropped.
struct ConnectionPermit {
    shared: Arc<Shared>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.shared.open_connections.fetch_sub(1, Ordering::AcqRel);
        self.shared.metrics.connections_open.dec();
    }
}

/// A running server. Dropping the handle does not stop it; call [`Server::shutdown`].
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    /// Where `--metrics-listen` bound, if given.
    metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    /// Closed at shutdown, before anything else, so that nothing is applied after it began.
    health: Arc<StoreHealth>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Server {
    /// Opens the store, binds the listener and starts serving.
    pub async fn start(config: ServeConfig) -> Result<Server, ServerError> {
        let store = SledStore::open(&config.data_dir).map_err(|source| ServerError::OpenStore {
            dir: config.data_dir.display().to_string(),
            source,
        })?;
        Self::start_with_store(config, Arc::new(store)).await
    }

    /// Starts serving on a given store instead of opening `config.data_dir` (tests use a
    /// [`crate::store::FailingStore`]).
    pub async fn start_with_store(
        config: ServeConfig,
        store: Arc<dyn DocStore>,
    ) -> Result<Server, ServerError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })?,
            ),
            None => None,
        };
        let metrics_addr = metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok());
        let auth = config
            .auth_secret
            .as_deref()
            .map(|secret| Authenticator::new(secret.as_bytes()));
        if auth.is_none() && !local_addr.ip().is_loopback() {
            tracing::warn!(
                listen = %local_addr,
                "listening on a non-loopback address WITHOUT authentication: anyone who can \
                 reach it can read and write every room (set --auth-secret)"
            );
        }
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(listener::tls_acceptor(cert, key)?),
            _ => None,
        };
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        // One process-wide TLS provider for the server and the webhook client; a second
        // installation (tests start many servers) is harmless.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let webhooks = config.webhook_url.clone().map(|url| {
            Webhooks::start(
                url,
                config.webhook_secret.clone(),
                metrics.clone(),
                shutdown.clone(),
            )
        });
        let limits = RoomLimits {
            max_rooms: usize::try_from(config.limits.max_rooms).unwrap_or(usize::MAX),
            max_connections_per_room: usize::try_from(config.limits.max_connections_per_room)
                .unwrap_or(usize::MAX),
        };
        let shared = Arc::new(Shared {
            base_path: config.normalized_base_path(),
            rooms: Rooms::new(
                store,
                config.room_config(),
                limits,
                metrics.clone(),
                webhooks,
            ),
            metrics: metrics.clone(),
            auth,
            connects_per_ip: IpRateLimiter::new(config.limits.max_connects_per_ip_per_sec),
            open_connections: AtomicUsize::new(0),
            config,
            shutdown: shutdown.clone(),
            sessions: TaskTracker::new(),
            next_connection: AtomicU64::new(1),
        });
        if let Some(metrics_listener) = metrics_listener {
            tokio::spawn(listener::accept_loop(
                metrics_listener,
                None,
                warp::service(http::metrics_only(shared.clone())),
                shared.shutdown.clone(),
            ));
        }
        let health = shared.rooms.health().clone();
        let task = tokio::spawn(serve(shared, listener, tls));
        Ok(Server {
            local_addr,
            metrics_addr,
            shutdown,
            metrics,
            health,
            task,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the separate metrics listener, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Starts a graceful shutdown: from this call on nothing is applied; then stop accepting,
    /// close every socket with 1001 (within [`SESSION_DRAIN_TIMEOUT`]), write every room's log
    /// and flush once (within [`crate::rooms::WRITE_ROUND_TIMEOUT`]), then compact what time
    /// allows (see [`Rooms::persist_all`]).
    pub fn shutdown(&self) {
        self.health.close();
        self.shutdown.cancel();
    }

    /// Waits until the server has stopped and everything is on disk.
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task
            .await
            .map_err(|error| ServerError::Task(error.to_string()))?
    }
}

async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<(), ServerError> {
    let sweeper = tokio::spawn(sweep(shared.clone()));
    let stop_flusher = CancellationToken::new();
    let flusher = tokio::spawn(flush(shared.clone(), stop_flusher.clone()));
    listener::accept_loop(
        listener,
        tls,
        warp::service(routes(shared.clone())),
        shared.shutdown.clone(),
    )
    .await;
    sweeper.abort();
    // Rooms refuse updates since `Server::shutdown`; sessions watch the same token and close
    // their sockets with 1001. The flusher keeps the durability window meanwhile.
    shared.sessions.close();
    if tokio::time::timeout(SESSION_DRAIN_TIMEOUT, shared.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("some sessions did not close in time");
    }
    // Let a running flush finish rather than abandon it halfway, then write and flush once.
    stop_flusher.cancel();
    if let Err(error) = flusher.await {
        tracing::error!(%error, "flusher task failed");
    }
    shared.rooms.persist_all().await?;
    tracing::info!("shut down; every room is on disk");
    Ok(())
}

async fn sweep(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        shared.rooms.sweep(shared.config.room_idle()).await;
    }
}

/// Writes the rooms' logs and flushes the store every `--flush-ms`: the durability window. One
/// flush at a time; a slow disk stretches the window rather than piling flushes up. While the
/// store is failing, the same loop drives its recovery (see [`Rooms::flush`]). Failures are
/// reported (log, `ycord_store_errors_total`, `/readyz`) where they happen.
async fn flush(shared: Arc<Shared>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_millis(shared.config.flush_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let started = Instant::now();
        match shared.rooms.flush().await {
            Ok(_) => shared
                .metrics
                .persist_flush_seconds
                .observe(started.elapsed().as_secs_f64()),
            Err(error) => tracing::debug!(%error, "write round failed"),
        }
    }
}

fn routes(
    shared: Arc<Shared>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let with_shared = {
        let shared = shared.clone();
        warp::any().map(move || shared.clone())
    };
    let websocket = warp::ext::get::<listener::PendingUpgrade>()
        .and(warp::header::<String>("sec-websocket-key"))
        .and(warp::path::full())
        .and(http::credentials())
        .and(listener::client_ip(
            shared.config.trusted_proxies.clone().into(),
        ))
        .and(with_shared.clone())
        .and_then(upgrade);
    websocket
        .or(http::routes(
            with_shared,
            shared.config.limits.max_message_bytes,
        ))
        .recover(|rejection: warp::Rejection| async move {
            let (status, message) = if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body larger than --max-message-bytes",
                )
            } else {
                (StatusCode::NOT_FOUND, "not found")
            };
            Ok::<_, Infallible>(http::json_error(status, message))
        })
}

async fn upgrade(
    pending: listener::PendingUpgrade,
    key: String,
    path: warp::path::FullPath,
    token: Option<String>,
    client: Option<std::net::IpAddr>,
    shared: Arc<Shared>,
) -> Result<warp::reply::Response, Infallible> {
    let room = match room_name(path.as_str(), &shared.base_path) {
        Ok(room) => room,
        Err(error) => {
            return Ok(http::json_error(
                StatusCode::BAD_REQUEST,
                &error.to_string(),
            ));
        }
    };
    if shared.shutdown.is_cancelled() {
        return Ok(http::json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down",
        ));
    }
    if let Some(ip) = client {
        if !shared.connects_per_ip.allow(ip) {
            shared.metrics.limit_hit("connects_per_ip");
            return Ok(http::json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address; retry later",
            ));
        }
    }
    let (access, expires_at, subject) = match &shared.auth {
        None => (Access::ReadWrite, None, None),
        Some(auth) => match auth.authorize_room(token.as_deref(), &room) {
            Ok(claims) => (claims.mode, Some(claims.expires_at()), claims.sub.clone()),
            Err(error) => {
                tracing::info!(%room, %error, "upgrade refused");
                return Ok(http::auth_error(&shared.metrics, &error));
            }
        },
    };
    let Some(permit) = acquire_connection(&shared) else {
        shared.metrics.limit_hit("connections");
        return Ok(http::json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server connection limit reached; retry later",
        ));
    };
    // Load (or share) the room before upgrading: nobody is answered before it is fully loaded,
    // and a refusal is an HTTP error rather than a socket that closes at once.
    let lease = match shared.rooms.join(&room).await {
        Ok(lease) => lease,
        Err(JoinError::RoomDeleted { deleted_at_ms }) => {
            return Ok(refuse_deleted(
                &shared,
                pending,
                &key,
                permit,
                deleted_at_ms,
            ));
        }
        Err(error) => {
            let (status, limit) = match &error {
                JoinError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
                JoinError::TooManyRooms => (StatusCode::SERVICE_UNAVAILABLE, Some("rooms")),
                JoinError::RoomFull => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("connections_per_room"),
                ),
                JoinError::RoomDeleted { .. } => (StatusCode::GONE, None),
            };
            match limit {
                Some(limit) => shared.metrics.limit_hit(limit),
                None => tracing::error!(%room, %error, "loading room failed"),
            }
            return Ok(http::json_error(status, &error.to_string()));
        }
    };
    let Some(on_upgrade) = pending.take() else {
        return Ok(http::json_error(
            StatusCode::BAD_REQUEST,
            "not an upgradable request",
        ));
    };
    let max = usize::try_from(shared.config.limits.max_message_bytes).unwrap_or(usize::MAX);
    let websocket_config = WebSocketConfig::default()
        .read_buffer_size(WEBSOCKET_READ_BUFFER_BYTES)
        .write_buffer_size(WEBSOCKET_WRITE_BUFFER_BYTES)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let connection = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let limits = &shared.config.limits;
    let settings = session::Settings {
        connection,
        subject,
        access,
        expires_at,
        ping_interval: shared.config.ping_interval(),
        max_message_bytes: limits.max_message_bytes,
        max_updates_per_sec: limits.max_updates_per_sec,
        first_message_timeout: Duration::from_secs(limits.first_message_secs),
        shutdown: shared.shutdown.clone(),
        metrics: shared.metrics.clone(),
    };
    shared.sessions.spawn(session_task(
        on_upgrade,
        websocket_config,
        lease,
        settings,
        permit,
    ));
    Ok(switching_protocols(&key))
}

/// The answer that completes a WebSocket handshake.
fn switching_protocols(key: &str) -> warp::reply::Response {
    use warp::Reply;
    let mut response = warp::reply().into_response();
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        warp::http::header::CONNECTION,
        warp::http::HeaderValue::from_static("upgrade"),
    );
    headers.insert(
        warp::http::header::UPGRADE,
        warp::http::HeaderValue::from_static("websocket"),
    );
    if let Ok(accept) = warp::http::HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(warp::http::header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// How long a connection refused for a deleted room may take to acknowledge the close.
const DELETED_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Refuses a WebSocket join of a deleted room. The handshake completes and the socket is
/// closed at once with [`close_code::ROOM_DELETED`](crate::peer::close_code::ROOM_DELETED),
/// without joining the room: a stock y-websocket client retries an HTTP refusal (it sees only
/// close code 1006) forever, and stops on a 4400-4499 close. Nothing the client sends is read.
fn refuse_deleted(
    shared: &Arc<Shared>,
    pending: listener::PendingUpgrade,
    key: &str,
    permit: ConnectionPermit,
    deleted_at_ms: u64,
) -> warp::reply::Response {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let Some(on_upgrade) = pending.take() else {
        return http::json_error(StatusCode::GONE, "the room was deleted");
    };
    tracing::debug!(deleted_at_ms, "join of a deleted room refused");
    shared.sessions.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let close = CloseFrame {
            code: crate::peer::close_code::ROOM_DELETED.into(),
            reason: "room deleted".into(),
        };
        // Then read (and drop) what comes until the client's close completes the handshake.
        let _ = tokio::time::timeout(DELETED_CLOSE_TIMEOUT, async {
            if socket.send(Message::Close(Some(close))).await.is_ok() {
                while let Some(Ok(_)) = socket.next().await {}
            }
        })
        .await;
        drop(permit);
    });
    switching_protocols(key)
}

/// The task of one WebSocket connection, from the end of the HTTP upgrade to the close. It
/// owns the lease and settings, which the session borrows (see [`session::run`]).
async fn session_task(
    on_upgrade: hyper::upgrade::OnUpgrade,
    websocket_config: WebSocketConfig,
    lease: crate::rooms::RoomLease,
    settings: session::Settings,
    permit: ConnectionPermit,
) {
    match on_upgrade.await {
        Ok(upgraded) => {
            let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                hyper_util::rt::TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                Some(websocket_config),
            )
            .await;
            session::run(socket, &lease, &settings).await;
        }
        Err(error) => tracing::debug!(%error, "upgrade failed"),
    }
    drop(lease);
    drop(permit);
}

/// Counts a new connection unless the server is at its limit.
fn acquire_connection(shared: &Arc<Shared>) -> Option<ConnectionPermit> {
    let max = usize::try_from(shared.config.limits.max_connections).unwrap_or(usize::MAX);
    shared
        .open_connections
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
            (open < max).then_some(open + 1)
        })
        .ok()?;
    shared.metrics.connections.inc();
    shared.metrics.connections_open.inc();
    Some(ConnectionPermit {
        shared: shared.clone(),
    })
}

/// The room a request path names: the percent-decoded path after the base path. The query
/// string is not part of the path warp gives us.
pub fn room_name(path: &str, base_path: &str) -> Result<String, RoomNameError> {
    let encoded = path.strip_prefix(base_path).unwrap_or("");
    let name = percent_decode_str(encoded)
        .decode_utf8()
        .map_err(|_| RoomNameError::NotUtf8)?;
    if name.is_empty() {
        return Err(RoomNameError::Empty);
    }
    if name.len() > MAX_ROOM_NAME_BYTES {
        return Err(RoomNameError::TooLong(name.len()));
    }
    Ok(name.into_owned())
}

/// Label of an auth failure for the metrics.
fn auth_reason(error: &crate::auth::AuthError) -> Reason {
    use crate::auth::AuthError;
    Reason {
        reason: match error {
            AuthError::Missing => "missing",
            AuthError::Invalid => "invalid",
            AuthError::Expired => "expired",
            AuthError::RoomNotAllowed => "room_not_allowed",
            AuthError::NotAdmin => "not_admin",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_the_decoded_path_after_the_base() {
        assert_eq!(room_name("/doc", "/").unwrap(), "doc");
        assert_eq!(room_name("/file%3Atext/42", "/").unwrap(), "file:text/42");
        assert_eq!(room_name("/yjs/file:1", "/yjs/").unwrap(), "file:1");
        assert_eq!(
            room_name("/other/file:1", "/yjs/"),
            Err(RoomNameError::Empty)
        );
        assert_eq!(room_name("/", "/"), Err(RoomNameError::Empty));
        assert_eq!(room_name("/%ff", "/"), Err(RoomNameError::NotUtf8));
        let long = format!("/{}", "x".repeat(MAX_ROOM_NAME_BYTES + 1));
        assert!(matches!(
            room_name(&long, "/"),
            Err(RoomNameError::TooLong(_))
        ));
    }
}
