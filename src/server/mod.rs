//! The network face of ycord: binding, routes, the WebSocket upgrade and graceful shutdown.
//!
//! [`Server::start`] binds, spawns everything and returns a handle; the binary and the tests
//! start the very same server. Shutdown is one cancellation token that every session, the
//! sweeper and warp's accept loop watch.

mod session;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use percent_encoding::percent_decode_str;
use thiserror::Error;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::Filter;
use warp::http::StatusCode;

use crate::config::ServeConfig;
use crate::error::{RoomNameError, StoreError};
use crate::room::MAX_ROOM_NAME_BYTES;
use crate::rooms::Rooms;
use crate::store::{DocStore, SledStore};

/// How often rooms are swept for idle eviction and stale awareness states.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How long shutdown waits for sessions to send their close frames.
const SESSION_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

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
}

/// State shared by every request and session.
struct Shared {
    config: ServeConfig,
    base_path: String,
    rooms: Rooms,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    next_connection: AtomicU64,
}

/// A running server. Dropping the handle does not stop it; call [`Server::shutdown`].
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Server {
    /// Opens the store, binds the listener and starts serving.
    pub async fn start(config: ServeConfig) -> Result<Server, ServerError> {
        let store = SledStore::open(&config.data_dir, config.flush_ms).map_err(|source| {
            ServerError::OpenStore {
                dir: config.data_dir.display().to_string(),
                source,
            }
        })?;
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
        let shutdown = CancellationToken::new();
        let store: Arc<dyn DocStore> = Arc::new(store);
        let shared = Arc::new(Shared {
            base_path: config.normalized_base_path(),
            rooms: Rooms::new(store, config.room_config()),
            config,
            shutdown: shutdown.clone(),
            sessions: TaskTracker::new(),
            next_connection: AtomicU64::new(1),
        });
        let task = tokio::spawn(serve(shared, listener));
        Ok(Server {
            local_addr,
            shutdown,
            task,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts a graceful shutdown: stop accepting, close every socket with 1001, compact and
    /// flush every room.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the server has stopped and everything is on disk.
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task
            .await
            .map_err(|error| ServerError::Task(error.to_string()))?
    }
}

async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) -> Result<(), ServerError> {
    let sweeper = tokio::spawn(sweep(shared.clone()));
    let shutdown = shared.shutdown.clone();
    warp::serve(routes(shared.clone()))
        .incoming(listener)
        .graceful(async move { shutdown.cancelled().await })
        .run()
        .await;
    sweeper.abort();
    // Sessions watch the same token and close their sockets with 1001.
    shared.sessions.close();
    if tokio::time::timeout(SESSION_DRAIN_TIMEOUT, shared.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("some sessions did not close in time");
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

fn routes(
    shared: Arc<Shared>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let with_shared = {
        let shared = shared.clone();
        warp::any().map(move || shared.clone())
    };
    let websocket = warp::ws()
        .and(warp::path::full())
        .and(with_shared)
        .and_then(upgrade);
    let healthz = warp::get()
        .and(warp::path!("healthz"))
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})));
    websocket
        .or(healthz)
        .recover(|_rejection: warp::Rejection| async {
            Ok::<_, Infallible>(json_error(StatusCode::NOT_FOUND, "not found"))
        })
}

fn json_error(status: StatusCode, message: &str) -> warp::reply::Response {
    use warp::Reply;
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": message })),
        status,
    )
    .into_response()
}

async fn upgrade(
    ws: warp::ws::Ws,
    path: warp::path::FullPath,
    shared: Arc<Shared>,
) -> Result<warp::reply::Response, Infallible> {
    use warp::Reply;
    let room = match room_name(path.as_str(), &shared.base_path) {
        Ok(room) => room,
        Err(error) => return Ok(json_error(StatusCode::BAD_REQUEST, &error.to_string())),
    };
    if shared.shutdown.is_cancelled() {
        return Ok(json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
    }
    // Load (or share) the room before upgrading: nobody is answered before it is fully loaded,
    // and a storage failure is an HTTP error rather than a socket that closes at once.
    let lease = match shared.rooms.join(&room).await {
        Ok(lease) => lease,
        Err(error) => {
            tracing::error!(%room, %error, "loading room failed");
            return Ok(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "room unavailable",
            ));
        }
    };
    let max = usize::try_from(shared.config.max_message_bytes).unwrap_or(usize::MAX);
    let connection = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let session_shared = shared.clone();
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let settings = session::Settings {
                connection,
                ping_interval: session_shared.config.ping_interval(),
                max_message_bytes: session_shared.config.max_message_bytes,
                shutdown: session_shared.shutdown.clone(),
            };
            session_shared
                .sessions
                .track_future(session::run(socket, lease, settings))
        })
        .into_response())
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
