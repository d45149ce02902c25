//! Admission of a WebSocket connection: the checks a request passes before it becomes a
//! session, in the order they run. Cheap checks come first, so a request refused by one never
//! costs what a later one does, and every refusal is an HTTP error before any socket exists:
//!
//! 1. [`request`]: the path names a room (400) and the server is serving: not shutting down,
//!    not disabled by AppAPI (503);
//! 2. [`address_limit`]: the client's address, the peer or what trusted proxies forwarded, is
//!    under its connect rate (429, limit `connects_per_ip`); in ExApp mode, the Nextcloud user;
//! 3. [`credentials`]: when auth is on, the token is present, signed and unexpired (401);
//! 4. [`room_access`]: the token grants the room; its mode says read-write or read-only (403).
//!    In ExApp mode ([`nextcloud_access`]) the request passed AppAPI's check already (401
//!    otherwise, before this route), and a file room is granted by Nextcloud's answer for the
//!    user (403, or 503 when Nextcloud does not answer); other rooms need a token as above;
//! 5. [`connection_permit`]: the server is under its connection limit (503, limit
//!    `connections`);
//! 6. [`load_room`]: the room joins: under the room limit (503, limit `rooms`) and the room's
//!    connection limit (503, limit `connections_per_room`), loaded from a store that answers
//!    (503, logged). A deleted room is not refused with an HTTP error but upgraded and closed
//!    with 4410 ([`close_deleted`]);
//! 7. [`hand_over`]: the handshake completes and a session task takes the socket.
//!
//! Auth refusals count in `auth_failures` by reason, limits in `limit_hits` (see [`Refusal`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::Filter;
use warp::http::StatusCode;

use super::exapp::{self, RoomRefusal};
use super::listener::{self, PendingUpgrade};
use super::request::{
    Grant, app_api_user, auth_reason, auth_status, credentials as token, json_error, room_name,
};
use super::session;
use super::shared::{Shared, saturating_usize};
use crate::auth::{AuthError, Claims};
use crate::error::JoinError;
use crate::limit::ClientKey;
use crate::metrics::{Metrics, Reason};
use crate::nextcloud::{AppApiUser, ExApp, FileWatch};
use crate::rooms::RoomLease;

type Response = warp::reply::Response;

/// tungstenite's read buffer per connection. It is allocated (and zeroed) up front and kept
/// for the connection's life, so its size is a large share of an idle connection's memory
/// (see *Idle memory* in `BENCHMARKS.md`). It is also the most one read takes from the
/// socket; y-websocket frames are mostly far smaller. A larger message still arrives whole
/// (tungstenite grows the buffer to the frame's length) in more reads: a 2 MB update takes
/// about 2,000 reads instead of 250 with 8 KiB, no slower end to end.
const WEBSOCKET_READ_BUFFER_BYTES: usize = 1024;

/// Bytes tungstenite gathers before writing to the socket (frames are flushed explicitly).
const WEBSOCKET_WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// How long a connection refused for a deleted room may take to acknowledge the close.
const DELETED_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The WebSocket route: a request hyper marked as an upgrade ([`PendingUpgrade`]), with its
/// key, path, token and client address.
pub(super) fn route(shared: &Arc<Shared>) -> warp::filters::BoxedFilter<(Response,)> {
    let with_shared = {
        let shared = shared.clone();
        warp::any().map(move || shared.clone())
    };
    warp::ext::get::<PendingUpgrade>()
        .and(warp::header::<String>("sec-websocket-key"))
        .and(warp::path::full())
        .and(token())
        .and(listener::client_ip(
            shared.config.trusted_proxies.clone().into(),
        ))
        .and(app_api_user(shared))
        .and(with_shared)
        .then(upgrade)
        .boxed()
}

/// Admits the request, then upgrades it: into a session, or into a 4410 close for a deleted
/// room. A refusal is answered as HTTP.
async fn upgrade(
    pending: PendingUpgrade,
    key: String,
    path: warp::path::FullPath,
    token: Option<String>,
    client: Option<IpAddr>,
    user: Option<AppApiUser>,
    shared: Arc<Shared>,
) -> Response {
    if is_root(path.as_str(), &shared.base_path) {
        return match admit_hocuspocus(&shared, client, user.as_ref()) {
            Ok(permit) => hand_over_hocuspocus(&shared, pending, &key, permit, user),
            Err(refusal) => refusal.answer(&shared.metrics),
        };
    }
    match admit(&shared, path.as_str(), token.as_deref(), client, user).await {
        Ok(Admitted {
            room: Loaded::Open(lease),
            grant,
            permit,
        }) => hand_over(&shared, pending, &key, lease, grant, permit),
        Ok(Admitted {
            room: Loaded::Deleted { deleted_at_ms },
            permit,
            ..
        }) => close_deleted(&shared, pending, &key, permit, deleted_at_ms),
        Err(refusal) => refusal.answer(&shared.metrics),
    }
}

/// Whether `path` is the base path itself: the Hocuspocus dialect's URL, where one socket
/// carries many documents (a y-websocket client names its room after the base path).
fn is_root(path: &str, base_path: &str) -> bool {
    path == base_path || base_path.strip_suffix('/') == Some(path)
}

/// The steps of a Hocuspocus socket: those of a y-websocket connection that do not depend on
/// a room (the socket, not yet any document). Credentials and rooms are decided per document,
/// from each one's Auth message (`server::hocuspocus`): provider 4 always sends a token,
/// empty when the application has none, and never in the URL.
fn admit_hocuspocus(
    shared: &Arc<Shared>,
    client: Option<IpAddr>,
    user: Option<&AppApiUser>,
) -> Result<ConnectionPermit, Refusal> {
    serving(shared)?;
    address_limit(shared, client, user)?;
    connection_permit(shared)
}

/// Completes the handshake of a Hocuspocus socket and spawns its session.
fn hand_over_hocuspocus(
    shared: &Arc<Shared>,
    pending: PendingUpgrade,
    key: &str,
    permit: ConnectionPermit,
    user: Option<AppApiUser>,
) -> Response {
    let Some(on_upgrade) = pending.take() else {
        return json_error(StatusCode::BAD_REQUEST, "not an upgradable request");
    };
    let websocket_config = websocket_config(shared);
    let shared = shared.clone();
    shared.clone().sessions.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = server_socket(upgraded, Some(websocket_config)).await;
                super::hocuspocus::run(socket, shared, user).await;
            }
            Err(error) => tracing::debug!(%error, "upgrade failed"),
        }
        drop(permit);
    });
    switching_protocols(key)
}

/// tungstenite's settings for every session: small buffers, the message size limit.
fn websocket_config(shared: &Shared) -> WebSocketConfig {
    let max = saturating_usize(shared.config.limits.max_message_bytes);
    WebSocketConfig::default()
        .read_buffer_size(WEBSOCKET_READ_BUFFER_BYTES)
        .write_buffer_size(WEBSOCKET_WRITE_BUFFER_BYTES)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// What a connection has once every step let it through.
struct Admitted {
    grant: Grant,
    permit: ConnectionPermit,
    room: Loaded,
}

/// The steps, in order; the first refusal ends the admission (and drops what earlier steps
/// took, such as the connection permit).
async fn admit(
    shared: &Arc<Shared>,
    path: &str,
    token: Option<&str>,
    client: Option<IpAddr>,
    user: Option<AppApiUser>,
) -> Result<Admitted, Refusal> {
    let room = request(shared, path)?;
    address_limit(shared, client, user.as_ref())?;
    let grant = match (&shared.exapp, &user) {
        (Some(exapp), Some(user)) => nextcloud_access(shared, exapp, user, token, &room).await?,
        _ => room_access(credentials(shared, token, &room)?, &room)?,
    };
    let permit = connection_permit(shared)?;
    let room = load_room(shared, &room).await?;
    Ok(Admitted {
        grant,
        permit,
        room,
    })
}

/// Why an upgrade was refused: answered with `status` and a JSON `{"error": reason}`, and
/// counted as `counted` says.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    reason: String,
    counted: Counted,
}

/// The metric a refusal counts in.
#[derive(Debug)]
enum Counted {
    /// None: a malformed request or shutdown is no client's failure, and a failing store is
    /// counted where it fails.
    Nowhere,
    /// `limit_hits`, by the limit's name.
    LimitHit(&'static str),
    /// `auth_failures`, by [`auth_reason`].
    AuthFailure(Reason),
}

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
            counted: Counted::Nowhere,
        }
    }

    fn limit(status: StatusCode, limit: &'static str, reason: impl Into<String>) -> Refusal {
        Refusal {
            counted: Counted::LimitHit(limit),
            ..Refusal::new(status, reason)
        }
    }

    /// An auth failure, logged with the room it was for.
    fn auth(room: &str, error: &AuthError) -> Refusal {
        tracing::info!(%room, %error, "upgrade refused");
        Refusal {
            counted: Counted::AuthFailure(auth_reason(error)),
            ..Refusal::new(auth_status(error), error.to_string())
        }
    }

    /// Counts the refusal and builds its response.
    fn answer(self, metrics: &Metrics) -> Response {
        match &self.counted {
            Counted::Nowhere => {}
            Counted::LimitHit(limit) => metrics.limit_hit(limit),
            Counted::AuthFailure(reason) => {
                metrics.auth_failures.get_or_create(reason).inc();
            }
        }
        json_error(self.status, &self.reason)
    }
}

/// Step 1: the room the path names, unless the server is not serving.
fn request(shared: &Shared, path: &str) -> Result<String, Refusal> {
    let room = room_name(path, &shared.base_path)
        .map_err(|error| Refusal::new(StatusCode::BAD_REQUEST, error.to_string()))?;
    serving(shared)?;
    Ok(room)
}

/// 503 while the server shuts down, or while AppAPI has the app disabled (ExApp mode).
fn serving(shared: &Shared) -> Result<(), Refusal> {
    if shared.shutdown.is_cancelled() {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down",
        ));
    }
    if shared
        .exapp
        .as_ref()
        .is_some_and(|exapp| !exapp.is_enabled())
    {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the app is disabled in Nextcloud",
        ));
    }
    Ok(())
}

/// Step 2: the client's connect rate: per Nextcloud user in ExApp mode (behind HaRP every
/// client arrives from the same address, or the unix socket), else per address. `client` is
/// `None` for a request without an address (a unix socket) and no limit applies then.
fn address_limit(
    shared: &Shared,
    client: Option<IpAddr>,
    user: Option<&AppApiUser>,
) -> Result<(), Refusal> {
    let key = match (user.and_then(AppApiUser::id), client) {
        (Some(user), _) => ClientKey::NextcloudUser(user.to_owned()),
        (None, Some(ip)) => ClientKey::Address(ip),
        (None, None) => return Ok(()),
    };
    if shared.connects.allow(key) {
        return Ok(());
    }
    Err(Refusal::limit(
        StatusCode::TOO_MANY_REQUESTS,
        "connects_per_ip",
        "too many connections from this client; retry later",
    ))
}

/// Steps 3 and 4 in ExApp mode: a file room by Nextcloud's answer for the user (403, or 503
/// when Nextcloud does not answer); any other room by a ycord token, when `--auth-secret`
/// is set, else 403.
async fn nextcloud_access(
    shared: &Shared,
    exapp: &ExApp,
    user: &AppApiUser,
    token: Option<&str>,
    room: &str,
) -> Result<Grant, Refusal> {
    let refused = |refusal: RoomRefusal| match refusal {
        RoomRefusal::Denied(reason) => Refusal::new(StatusCode::FORBIDDEN, reason),
        RoomRefusal::Unavailable(reason) => Refusal::new(StatusCode::SERVICE_UNAVAILABLE, reason),
    };
    match exapp::file_grant(shared, exapp, user, room).await {
        Some(grant) => grant.map_err(refused),
        None if shared.auth.is_none() => Err(refused(exapp::not_a_file_room(shared, room))),
        None => room_access(credentials(shared, token, room)?, room),
    }
}

/// Step 3: the token's claims, verified; `None` when auth is off.
fn credentials(
    shared: &Shared,
    token: Option<&str>,
    room: &str,
) -> Result<Option<Claims>, Refusal> {
    let Some(auth) = &shared.auth else {
        return Ok(None);
    };
    auth.verify(token)
        .map(Some)
        .map_err(|error| Refusal::auth(room, &error))
}

/// Step 4: what the claims allow in `room`; with auth off, everything.
fn room_access(claims: Option<Claims>, room: &str) -> Result<Grant, Refusal> {
    let Some(claims) = claims else {
        return Ok(Grant::unrestricted());
    };
    if !claims.allows_room(room) {
        return Err(Refusal::auth(room, &AuthError::RoomNotAllowed));
    }
    Ok(Grant::from(claims))
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

/// Step 5: counts a new connection unless the server is at its limit.
fn connection_permit(shared: &Arc<Shared>) -> Result<ConnectionPermit, Refusal> {
    let max = saturating_usize(shared.config.limits.max_connections);
    shared
        .open_connections
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
            (open < max).then_some(open + 1)
        })
        .map_err(|_| {
            Refusal::limit(
                StatusCode::SERVICE_UNAVAILABLE,
                "connections",
                "server connection limit reached; retry later",
            )
        })?;
    shared.metrics.connections.inc();
    shared.metrics.connections_open.inc();
    Ok(ConnectionPermit {
        shared: shared.clone(),
    })
}

/// A room that joined, or the tombstone of a deleted one.
enum Loaded {
    Open(RoomLease),
    Deleted { deleted_at_ms: u64 },
}

/// Step 6: loads (or shares) the room before upgrading, so that nobody is answered before it
/// is fully loaded and a refusal is an HTTP error rather than a socket that closes at once.
async fn load_room(shared: &Shared, room: &str) -> Result<Loaded, Refusal> {
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    match shared.rooms.join(room).await {
        Ok(lease) => Ok(Loaded::Open(lease)),
        Err(JoinError::RoomDeleted { deleted_at_ms }) => Ok(Loaded::Deleted { deleted_at_ms }),
        Err(error @ JoinError::TooManyRooms) => {
            Err(Refusal::limit(unavailable, "rooms", error.to_string()))
        }
        Err(error @ JoinError::RoomFull) => Err(Refusal::limit(
            unavailable,
            "connections_per_room",
            error.to_string(),
        )),
        Err(error @ JoinError::Store(_)) => {
            tracing::error!(%room, %error, "loading room failed");
            Err(Refusal::new(unavailable, error.to_string()))
        }
    }
}

/// Step 7: completes the handshake and spawns the session, which owns the lease and permit.
fn hand_over(
    shared: &Arc<Shared>,
    pending: PendingUpgrade,
    key: &str,
    lease: RoomLease,
    grant: Grant,
    permit: ConnectionPermit,
) -> Response {
    let Some(on_upgrade) = pending.take() else {
        return json_error(StatusCode::BAD_REQUEST, "not an upgradable request");
    };
    let limits = &shared.config.limits;
    let websocket_config = websocket_config(shared);
    let connection = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let watch = exapp::watch(shared, &grant, connection, lease.room());
    let settings = session::Settings {
        connection,
        subject: grant.subject,
        access: grant.access,
        expires_at: grant.expires_at,
        ping_interval: shared.config.ping_interval(),
        max_message_bytes: limits.max_message_bytes,
        max_updates_per_sec: limits.max_updates_per_sec,
        first_message_timeout: Duration::from_secs(limits.first_message_secs),
        shutdown: shared.session_token(),
        metrics: shared.metrics.clone(),
    };
    shared.sessions.spawn(session_task(
        on_upgrade,
        websocket_config,
        lease,
        settings,
        (permit, watch),
    ));
    switching_protocols(key)
}

/// The task of one WebSocket connection, from the end of the HTTP upgrade to the close. It
/// owns the lease and settings, which the session borrows (see [`session::run`]).
async fn session_task(
    on_upgrade: hyper::upgrade::OnUpgrade,
    websocket_config: WebSocketConfig,
    lease: RoomLease,
    settings: session::Settings,
    held: (ConnectionPermit, Option<FileWatch>),
) {
    match on_upgrade.await {
        Ok(upgraded) => {
            let socket = server_socket(upgraded, Some(websocket_config)).await;
            session::run(socket, &lease, &settings).await;
        }
        Err(error) => tracing::debug!(%error, "upgrade failed"),
    }
    drop(lease);
    drop(held);
}

/// Answers a WebSocket join of a deleted room: the handshake completes and the socket is
/// closed at once with [`close_code::ROOM_DELETED`](crate::connection::close_code::ROOM_DELETED),
/// without joining the room. A stock y-websocket client retries an HTTP refusal (it sees only
/// close code 1006) forever, and stops on a 4400-4499 close. Nothing the client sends is read.
fn close_deleted(
    shared: &Arc<Shared>,
    pending: PendingUpgrade,
    key: &str,
    permit: ConnectionPermit,
    deleted_at_ms: u64,
) -> Response {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let Some(on_upgrade) = pending.take() else {
        return json_error(StatusCode::GONE, "the room was deleted");
    };
    tracing::debug!(deleted_at_ms, "join of a deleted room refused");
    shared.sessions.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut socket = server_socket(upgraded, None).await;
        let close = CloseFrame {
            code: crate::connection::close_code::ROOM_DELETED.into(),
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

/// The server side of the WebSocket over an upgraded connection.
async fn server_socket(
    upgraded: hyper::upgrade::Upgraded,
    config: Option<WebSocketConfig>,
) -> session::WebSocket {
    tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        Role::Server,
        config,
    )
    .await
}

/// The answer that completes a WebSocket handshake.
fn switching_protocols(key: &str) -> Response {
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
