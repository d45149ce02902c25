//! The HTTP API for backends and operators (admin token when auth is on):
//!
//! | route | what |
//! |---|---|
//! | `GET /api/rooms?offset=&limit=` | rooms in memory with connection counts, and stored rooms (paged) |
//! | `GET /api/rooms/{room}` | size, log length, last change time, loaded or not |
//! | `GET /api/rooms/{room}/state` | the document as a binary v1 update (`?format=json`: its root types as JSON) |
//! | `POST /api/rooms/{room}/update` | apply a binary v1 update: broadcast and persisted like a client's |
//! | `DELETE /api/rooms/{room}` | close the room's sockets (code 4410) and replace its stored data with a tombstone |
//! | `DELETE /api/rooms/{room}/tombstone` | remove a deleted room's tombstone: the name can be used again, by an empty room |
//!
//! Room names in paths are percent-encoded (`file%3Atext%2F42`); a final `/state`, `/update` or
//! `/tombstone` segment names the action. A deleted room answers 410 Gone (with its
//! `deleted_at_ms`) to every call but `DELETE` until its tombstone is removed. A room not in
//! memory is loaded for the call and unloaded later by the idle sweep. Errors are JSON
//! `{"error": message}`.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use warp::http::{Method, StatusCode};
use warp::{Filter, Reply};

use super::request::{credentials, json_error, json_reply, require_admin, room_name};
use super::shared::Shared;
use crate::error::{ApplyError, JoinError, StoreError};
use crate::room::Room;
use crate::rooms::RoomLease;

/// Stored rooms listed per page unless `limit` says otherwise.
const DEFAULT_PAGE: usize = 100;
/// Largest page.
const MAX_PAGE: usize = 1000;

type Response = warp::reply::Response;

/// Query parameters the API reads.
#[derive(Debug, Default, Deserialize)]
struct ApiQuery {
    offset: Option<usize>,
    limit: Option<usize>,
    format: Option<String>,
    /// The token travels in the query too; accepted and ignored here.
    #[serde(rename = "token")]
    _token: Option<String>,
}

/// What a request asks for, parsed from its method and path.
#[derive(Debug, PartialEq)]
enum Call {
    List,
    Info(String),
    State(String),
    Update(String),
    Delete(String),
    Undelete(String),
}

pub(super) fn routes(
    with_shared: warp::filters::BoxedFilter<(Arc<Shared>,)>,
    max_body_bytes: u64,
) -> warp::filters::BoxedFilter<(Response,)> {
    let query = warp::query::<ApiQuery>()
        .or(warp::any().map(ApiQuery::default))
        .unify();
    warp::path("api")
        .and(warp::path("rooms"))
        .and(warp::path::tail())
        .and(warp::method())
        .and(query)
        .and(credentials())
        .and(warp::body::stream())
        .and(with_shared)
        .then(
            move |tail: warp::path::Tail,
                  method: Method,
                  query: ApiQuery,
                  token: Option<String>,
                  body,
                  shared: Arc<Shared>| async move {
                if let Some(refusal) = require_admin(&shared, token.as_deref()) {
                    return refusal;
                }
                let call = match parse_call(&method, tail.as_str()) {
                    Ok(call) => call,
                    Err(response) => return response,
                };
                // Only an update reads its body, and never more than the message limit.
                let body = match &call {
                    Call::Update(_) => match read_body(body, max_body_bytes).await {
                        Ok(body) => body,
                        Err(response) => return response,
                    },
                    _ => Bytes::new(),
                };
                handle(call, query, body, shared).await
            },
        )
        .boxed()
}

/// Reads a request body of at most `limit` bytes.
async fn read_body(
    body: impl futures_util::Stream<Item = Result<impl bytes::Buf, warp::Error>> + Unpin,
    limit: u64,
) -> Result<Bytes, Response> {
    use futures_util::StreamExt;
    let mut body = body;
    let mut collected = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|_| json_error(StatusCode::BAD_REQUEST, "reading the body failed"))?;
        if (collected.len() + chunk.remaining()) as u64 > limit {
            return Err(json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body larger than --max-message-bytes",
            ));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            collected.extend_from_slice(part);
            let read = part.len();
            chunk.advance(read);
        }
    }
    Ok(collected.freeze())
}

fn parse_call(method: &Method, tail: &str) -> Result<Call, Response> {
    let tail = tail.trim_end_matches('/');
    if tail.is_empty() {
        return match *method {
            Method::GET => Ok(Call::List),
            _ => Err(method_not_allowed()),
        };
    }
    let (room_part, action) = match tail.rsplit_once('/') {
        Some((room, action @ ("state" | "update" | "tombstone"))) => (room, Some(action)),
        _ => (tail, None),
    };
    let room = room_name(&format!("/{room_part}"), "/")
        .map_err(|error| json_error(StatusCode::BAD_REQUEST, &error.to_string()))?;
    match (method.clone(), action) {
        (Method::GET, None) => Ok(Call::Info(room)),
        (Method::DELETE, None) => Ok(Call::Delete(room)),
        (Method::GET, Some("state")) => Ok(Call::State(room)),
        (Method::POST, Some("update")) => Ok(Call::Update(room)),
        (Method::DELETE, Some("tombstone")) => Ok(Call::Undelete(room)),
        _ => Err(method_not_allowed()),
    }
}

fn method_not_allowed() -> Response {
    json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
}

async fn handle(call: Call, query: ApiQuery, body: Bytes, shared: Arc<Shared>) -> Response {
    match call {
        Call::List => list_rooms(&shared, &query).await,
        Call::Info(room) => room_info(&shared, &room).await,
        Call::State(room) => match join(&shared, &room).await {
            Ok(lease) => room_state(&lease, query.format).await,
            Err(response) => response,
        },
        Call::Update(room) => match join(&shared, &room).await {
            Ok(lease) => apply_update(lease.room(), &body),
            Err(response) => response,
        },
        Call::Delete(room) => match shared.rooms.delete(&room).await {
            Ok(()) => warp::reply::json(&serde_json::json!({ "deleted": room })).into_response(),
            Err(error) => {
                tracing::error!(%room, %error, "deleting room failed");
                json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "deleting the room failed",
                )
            }
        },
        Call::Undelete(room) => match shared.rooms.undelete(&room).await {
            Ok(true) => {
                warp::reply::json(&serde_json::json!({ "undeleted": room })).into_response()
            }
            Ok(false) => json_error(StatusCode::NOT_FOUND, "the room is not deleted"),
            Err(error) => {
                tracing::error!(%room, %error, "removing the tombstone failed");
                json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "removing the tombstone failed",
                )
            }
        },
    }
}

/// 410 Gone for a deleted room.
fn gone(deleted_at_ms: u64) -> Response {
    let body = serde_json::json!({
        "error": "the room was deleted",
        "deleted_at_ms": deleted_at_ms,
    });
    json_reply(StatusCode::GONE, &body)
}

/// Holds the room in memory for the call; it unloads later if nobody else is connected.
async fn join(shared: &Shared, room: &str) -> Result<RoomLease, Response> {
    shared.rooms.join(room).await.map_err(|error| {
        let status = match error {
            JoinError::RoomDeleted { deleted_at_ms } => return gone(deleted_at_ms),
            JoinError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            JoinError::TooManyRooms | JoinError::RoomFull => StatusCode::SERVICE_UNAVAILABLE,
        };
        json_error(status, &error.to_string())
    })
}

async fn list_rooms(shared: &Shared, query: &ApiQuery) -> Response {
    let offset = query.offset.unwrap_or(0);
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let mut loaded: Vec<serde_json::Value> = shared
        .rooms
        .loaded()
        .await
        .iter()
        .map(|room| serde_json::json!({ "room": &**room.name(), "connections": room.connection_count() }))
        .collect();
    loaded.sort_by(|a, b| a["room"].as_str().cmp(&b["room"].as_str()));
    let store = shared.rooms.store().clone();
    let stored = match tokio::task::spawn_blocking(move || store.rooms()).await {
        Ok(Ok(rooms)) => rooms,
        _ => {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "listing stored rooms failed",
            );
        }
    };
    let total = stored.len();
    let page: Vec<String> = stored.into_iter().skip(offset).take(limit).collect();
    let next_offset = (offset + page.len() < total).then_some(offset + page.len());
    warp::reply::json(&serde_json::json!({
        "loaded": loaded,
        "stored": { "rooms": page, "total": total, "offset": offset, "next_offset": next_offset },
    }))
    .into_response()
}

async fn room_info(shared: &Shared, room: &str) -> Response {
    let loaded = shared
        .rooms
        .loaded()
        .await
        .into_iter()
        .find(|loaded| &**loaded.name() == room);
    let stats_failed = || {
        json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "reading room stats failed",
        )
    };
    match shared.rooms.deleted_at(room).await {
        Ok(Some(deleted_at_ms)) => return gone(deleted_at_ms),
        Ok(None) => {}
        Err(_) => return stats_failed(),
    }
    let store = shared.rooms.store().clone();
    let name = room.to_owned();
    let stats = match tokio::task::spawn_blocking(move || store.stats(&name)).await {
        Ok(Ok(stats)) => stats,
        _ => return stats_failed(),
    };
    let info = loaded.as_ref().map(|room| room.info());
    if info.is_none() && stats.snapshot_bytes == 0 && stats.log_entries == 0 {
        return json_error(StatusCode::NOT_FOUND, "no such room");
    }
    let last_change_ms = info
        .as_ref()
        .map(|info| info.last_change_ms)
        .filter(|ms| *ms > 0)
        .or(stats.last_change_ms);
    warp::reply::json(&serde_json::json!({
        "room": room,
        "loaded": info.is_some(),
        "connections": info.as_ref().map_or(0, |info| info.connections),
        "doc_bytes": info.as_ref().map(|info| info.doc_bytes),
        "snapshot_bytes": stats.snapshot_bytes,
        "log_updates": info.as_ref().map(|info| info.log_updates),
        "log_entries": stats.log_entries,
        "log_bytes": stats.log_bytes,
        "last_change_ms": last_change_ms,
        "roster": info.as_ref().map_or_else(Vec::new, |info| info.roster.clone()),
        "editor": info.as_ref().and_then(|info| info.editor.clone()),
    }))
    .into_response()
}

/// The room's document, as JSON or as one v1 update. Encoding a big document takes a while:
/// it runs on the blocking pool, not on a runtime thread, while the lease keeps the room in
/// memory.
async fn room_state(lease: &RoomLease, format: Option<String>) -> Response {
    let json = match format.as_deref() {
        Some("json") => true,
        None | Some("binary") => false,
        Some(_) => return json_error(StatusCode::BAD_REQUEST, "format must be json or binary"),
    };
    let room = lease.room().clone();
    let encoded = tokio::task::spawn_blocking(move || {
        if json {
            warp::reply::json(&room.to_json()).into_response()
        } else {
            warp::reply::with_header(
                room.encode_state(),
                "content-type",
                "application/octet-stream",
            )
            .into_response()
        }
    })
    .await;
    encoded.unwrap_or_else(|error| {
        tracing::error!(%error, "encoding a room's state failed");
        json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the document failed",
        )
    })
}

fn apply_update(room: &Arc<Room>, body: &[u8]) -> Response {
    match room.apply_update(body) {
        Ok(applied) => warp::reply::json(&serde_json::json!({
            "applied": applied == crate::room::Applied::Changed,
        }))
        .into_response(),
        Err(error @ (ApplyError::InvalidUpdate(_) | ApplyError::InvalidAwareness(_))) => {
            json_error(StatusCode::BAD_REQUEST, &error.to_string())
        }
        Err(error @ ApplyError::DocumentTooLarge { .. }) => {
            json_error(StatusCode::PAYLOAD_TOO_LARGE, &error.to_string())
        }
        Err(
            error @ (ApplyError::MissingPredecessors { .. } | ApplyError::MissingDependency { .. }),
        ) => json_error(StatusCode::CONFLICT, &error.to_string()),
        // Deleted while the call held it.
        Err(ApplyError::RoomDeleted | ApplyError::Store(StoreError::RoomDeleted(_))) => {
            json_error(StatusCode::GONE, "the room was deleted")
        }
        Err(error @ ApplyError::Store(_)) => {
            tracing::error!(%error, "API update failed");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage failing: the update may not be saved; retry later",
            )
        }
        Err(ApplyError::ShuttingDown) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
        }
        Err(error @ ApplyError::RoomBroken) => {
            json_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_room_and_the_action() {
        let calls = [
            (Method::GET, "", Call::List),
            (Method::GET, "doc", Call::Info("doc".into())),
            (
                Method::GET,
                "file%3Atext%2F42/state",
                Call::State("file:text/42".into()),
            ),
            (Method::POST, "a/b/update", Call::Update("a/b".into())),
            (Method::DELETE, "doc", Call::Delete("doc".into())),
            (Method::GET, "a%2Fstate", Call::Info("a/state".into())),
            (
                Method::DELETE,
                "doc/tombstone",
                Call::Undelete("doc".into()),
            ),
        ];
        for (method, tail, call) in calls {
            assert_eq!(parse_call(&method, tail).unwrap(), call, "{method} {tail}");
        }
        assert!(parse_call(&Method::GET, "doc/tombstone").is_err());
        assert!(parse_call(&Method::POST, "doc").is_err());
    }
}
