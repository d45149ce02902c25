//! The network face of ycord: binding, routes, the WebSocket upgrade and graceful shutdown.
//!
//! [`Server::start`] binds, spawns everything and returns a handle; the binary and the tests
//! start the very same server. Shutdown is one cancellation token that every session, the
//! sweeper, the flusher and warp's accept loop watch.
//!
//! The submodules are where typed errors become HTTP statuses and close codes:
//!
//! - `admission`: the WebSocket route, every check before a session in order, and the hand
//!   over to `session`, which runs the connection;
//! - `probes` (health, readiness, metrics) and `api` (the HTTP API): the other routes;
//! - `request`: what every route reads from a request and how it refuses one;
//! - `shared`: the state every request and session reads;
//! - `listener`: the accept loop, TLS and the client's address.
//!
//! Children import `request` and `shared`, which import neither the routes nor this module.

mod admission;
mod api;
mod exapp;
mod hocuspocus;
mod listener;
mod probes;
mod request;
mod session;
mod shared;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::Filter;
use warp::http::StatusCode;

use crate::auth::Authenticator;
use crate::config::ServeConfig;
use crate::error::StoreError;
use crate::limit::ConnectRateLimiter;
use crate::metrics::Metrics;
use crate::nextcloud::ExApp;
use crate::rooms::{RoomLimits, Rooms};
use crate::store::{RoomStore, StoreHealth, StoreSpec};
use crate::webhooks::Webhooks;
pub use request::room_name;
use shared::{Shared, saturating_usize};

/// How often rooms are swept for idle eviction and stale awareness states.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

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
    #[error("cannot listen on the unix socket {path}: {source}")]
    BindUnix {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    ExApp(#[from] crate::config::ExAppConfigError),
    #[error("persisting rooms at shutdown failed: {0}")]
    Persist(#[from] StoreError),
    #[error("server task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Tls(#[from] listener::TlsError),
}

/// A running server. Dropping the handle does not stop it; call [`Server::shutdown`].
#[derive(Debug)]
pub struct Server {
    /// The TCP address bound; `None` when listening on a unix socket (`--listen-unix`).
    local_addr: Option<SocketAddr>,
    /// Where `--metrics-listen` bound, if given.
    metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    /// Closed at shutdown, before anything else, so that nothing is applied after it began.
    health: Arc<StoreHealth>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Server {
    /// Opens the store (`--store`, or sled in `--data-dir`), binds the listener and starts
    /// serving.
    pub async fn start(config: ServeConfig) -> Result<Server, ServerError> {
        let spec =
            StoreSpec::parse(config.store.as_deref(), &config.data_dir).map_err(|source| {
                ServerError::OpenStore {
                    dir: config.store.clone().unwrap_or_default(),
                    source,
                }
            })?;
        // Connecting to PostgreSQL blocks: not on the runtime's threads.
        let opening = spec.clone();
        let store = tokio::task::spawn_blocking(move || crate::store::open(&opening))
            .await
            .map_err(|error| ServerError::Task(error.to_string()))?
            .map_err(|source| ServerError::OpenStore {
                dir: spec.describe(),
                source,
            })?;
        Self::start_with_store(config, store).await
    }

    /// Starts serving on a given store instead of opening `config.data_dir` (tests use a
    /// [`crate::store::FailingStore`]).
    pub async fn start_with_store(
        config: ServeConfig,
        store: Arc<dyn RoomStore>,
    ) -> Result<Server, ServerError> {
        let exapp_settings = config.exapp.settings()?;
        let (listener, local_addr) = match &config.listen_unix {
            Some(path) => {
                let listener = listener::Listener::bind_unix(path).map_err(|source| {
                    ServerError::BindUnix {
                        path: path.display().to_string(),
                        source,
                    }
                })?;
                (listener, None)
            }
            None => {
                let bind_error = |source| ServerError::Bind {
                    addr: config.listen,
                    source,
                };
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(bind_error)?;
                let local_addr = listener.local_addr().map_err(bind_error)?;
                (listener::Listener::Tcp(listener), Some(local_addr))
            }
        };
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
        if auth.is_none()
            && exapp_settings.is_none()
            && local_addr.is_some_and(|addr| !addr.ip().is_loopback())
        {
            tracing::warn!(
                listen = ?local_addr,
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
            max_rooms: saturating_usize(config.limits.max_rooms),
            max_connections_per_room: saturating_usize(config.limits.max_connections_per_room),
        };
        let exapp =
            exapp_settings.map(|settings| ExApp::new(settings, metrics.clone(), shutdown.clone()));
        if let Some(exapp) = &exapp {
            tokio::spawn(exapp.clone().recheck_periodically());
        }
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
            connects: ConnectRateLimiter::new(config.limits.max_connects_per_ip_per_sec),
            exapp,
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
                warp::service(probes::metrics_only(shared.clone())),
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

    /// The TCP address actually bound (useful with port 0); `None` on a unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
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
    listener: listener::Listener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<(), ServerError> {
    let sweeper = tokio::spawn(sweep(shared.clone()));
    let stop_flusher = CancellationToken::new();
    let flusher = tokio::spawn(flush(shared.clone(), stop_flusher.clone()));
    let service = warp::service(routes(shared.clone()));
    let stop = shared.shutdown.clone();
    match listener {
        listener::Listener::Tcp(tcp) => listener::accept_loop(tcp, tls, service, stop).await,
        listener::Listener::Unix(unix) => {
            let path = unix
                .local_addr()
                .ok()
                .and_then(|address| address.as_pathname().map(std::path::Path::to_owned));
            listener::accept_loop(unix, tls, service, stop).await;
            // The next start would replace it; nothing should find a dead socket meanwhile.
            if let Some(path) = path {
                let _ = std::fs::remove_file(path);
            }
        }
    }
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

/// Every route of the main listener: the WebSocket upgrade, the probes and the HTTP API.
fn routes(
    shared: Arc<Shared>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let with_shared = {
        let shared = shared.clone();
        warp::any().map(move || shared.clone()).boxed()
    };
    // In ExApp mode every route but `/heartbeat` needs AppAPI's headers (401 without).
    let app_api = request::app_api_user(&shared).map(|_| ()).untuple_one();
    let metrics = shared.metrics.clone();
    exapp::routes(&shared)
        .or(admission::route(&shared))
        .unify()
        .or(app_api.clone().and(probes::routes(with_shared.clone())))
        .unify()
        .or(app_api.and(api::routes(
            with_shared,
            shared.config.limits.max_message_bytes,
        )))
        .unify()
        .recover(move |rejection: warp::Rejection| {
            let metrics = metrics.clone();
            async move {
                if let Some(request::AppApiRejection(error)) = rejection.find() {
                    return Ok::<_, Infallible>(request::app_api_refused(&metrics, *error));
                }
                let (status, message) =
                    if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
                        (
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "body larger than --max-message-bytes",
                        )
                    } else {
                        (StatusCode::NOT_FOUND, "not found")
                    };
                Ok::<_, Infallible>(request::json_error(status, message))
            }
        })
}
