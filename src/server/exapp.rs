//! ExApp mode's routes and room decisions: the AppAPI lifecycle endpoints (`/heartbeat`,
//! `/init`, `/enabled`) and what a Nextcloud user may do in a file room. The domain side
//! (AppAPI headers, the WebDAV SEARCH, the periodic check) is [`crate::nextcloud`].

use std::collections::HashMap;
use std::sync::Arc;

use warp::http::StatusCode;
use warp::{Filter, Reply};

use super::request::{Grant, app_api_user, json_reply};
use super::shared::Shared;
use crate::auth::Access;
use crate::metrics::Reason;
use crate::nextcloud::{AppApiUser, ExApp, FileAccess, FileWatch, file_of_room};
use crate::room::{ConnectionId, Room};

type Response = warp::reply::Response;

/// `/heartbeat` (no auth, answered also while disabled), `/init` and `/enabled` (AppAPI
/// signs both, with an empty user). Outside ExApp mode the paths are not found.
pub(super) fn routes(shared: &Arc<Shared>) -> warp::filters::BoxedFilter<(Response,)> {
    let Some(exapp) = shared.exapp.clone() else {
        return warp::any()
            .and_then(|| async { Err::<Response, _>(warp::reject::not_found()) })
            .boxed();
    };
    let heartbeat = warp::get()
        .and(warp::path!("heartbeat"))
        .map(|| json_reply(StatusCode::OK, &serde_json::json!({"status": "ok"})));
    let with_exapp = warp::any().map(move || exapp.clone());
    let init = warp::post()
        .and(warp::path!("init"))
        .and(app_api_user(shared))
        .and(with_exapp.clone())
        .map(|_: Option<AppApiUser>, exapp: Arc<ExApp>| {
            // Answered at once; the progress report follows, and AppAPI calls back while it
            // is open, so it must not hold up this answer.
            tokio::spawn(async move { exapp.report_ready().await });
            json_reply(StatusCode::OK, &serde_json::json!({}))
        });
    let enabled = warp::put()
        .and(warp::path!("enabled"))
        .and(app_api_user(shared))
        .and(warp::query::<HashMap<String, String>>())
        .and(with_exapp)
        .map(
            |_: Option<AppApiUser>, query: HashMap<String, String>, exapp: Arc<ExApp>| {
                match query.get("enabled").map(String::as_str) {
                    Some("1") => exapp.set_enabled(true),
                    Some("0") => exapp.set_enabled(false),
                    _ => {
                        return json_reply(
                            StatusCode::BAD_REQUEST,
                            &serde_json::json!({"error": "expected ?enabled=1 or ?enabled=0"}),
                        );
                    }
                }
                json_reply(StatusCode::OK, &serde_json::json!({"error": ""}))
            },
        );
    heartbeat
        .or(init)
        .unify()
        .or(enabled)
        .unify()
        .map(Reply::into_response)
        .boxed()
}

/// Why a room was refused in ExApp mode.
#[derive(Debug)]
pub(super) enum RoomRefusal {
    /// Nextcloud says the user may not see the file, or the room is not a file's and no
    /// ycord token may grant it: 403 (never 401, which HaRP counts towards a ban).
    Denied(String),
    /// Nextcloud did not answer: 503, retried by clients.
    Unavailable(String),
}

/// ExApp mode's decision for `room`: a file room (`file:<id>`, `file:<type>/<id>`) by what
/// Nextcloud lets `user` do with the file. `None` for any other room, which only a ycord
/// token may grant (`--auth-secret`; the caller decides with it, or refuses without it).
pub(super) async fn file_grant(
    shared: &Shared,
    exapp: &ExApp,
    user: &AppApiUser,
    room: &str,
) -> Option<Result<Grant, RoomRefusal>> {
    let file = file_of_room(room)?;
    let denied = |reason: &'static str, message: String| {
        shared
            .metrics
            .auth_failures
            .get_or_create(&Reason { reason })
            .inc();
        tracing::info!(%room, user = user.id().unwrap_or("-"), %message, "file room refused");
        Some(Err(RoomRefusal::Denied(message)))
    };
    let Some(uid) = user.id() else {
        return denied(
            "anonymous",
            "file rooms need a signed-in Nextcloud user".into(),
        );
    };
    let access = match exapp.file_access(uid, file).await {
        Ok(FileAccess::ReadWrite) => Access::ReadWrite,
        Ok(FileAccess::ReadOnly) => Access::ReadOnly,
        Ok(FileAccess::None) => {
            return denied("file_denied", format!("no access to file {file}"));
        }
        Err(error) => {
            tracing::warn!(%room, user = uid, %error, "cannot check the file permission");
            return Some(Err(RoomRefusal::Unavailable(format!(
                "cannot check the file permission: {error}"
            ))));
        }
    };
    Some(Ok(Grant {
        access,
        expires_at: None,
        subject: Some(uid.to_owned()),
        file: Some(file),
    }))
}

/// ExApp mode: puts a connection that a file's permission opened in the periodic check.
pub(super) fn watch(
    shared: &Shared,
    grant: &Grant,
    connection: ConnectionId,
    room: &Arc<Room>,
) -> Option<FileWatch> {
    let (Some(exapp), Some(user), Some(file)) = (&shared.exapp, &grant.subject, grant.file) else {
        return None;
    };
    Some(exapp.watch(connection, room, user, file, grant.access))
}

/// The refusal of a room that is not a file's when no ycord token can grant it.
pub(super) fn not_a_file_room(shared: &Shared, room: &str) -> RoomRefusal {
    shared
        .metrics
        .auth_failures
        .get_or_create(&Reason {
            reason: "not_a_file_room",
        })
        .inc();
    RoomRefusal::Denied(format!(
        "{room:?} is not a file room (file:<fileId> or file:<type>/<fileId>); other rooms need a ycord token"
    ))
}
