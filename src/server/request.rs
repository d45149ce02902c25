//! What every route reads from a request (its token, the room its path names) and how every
//! route refuses one (a JSON error, an auth failure counted by reason). Imported by the routes
//! and the admission; it imports none of them.

use std::sync::Arc;

use percent_encoding::percent_decode_str;
use warp::http::StatusCode;
use warp::{Filter, Reply};

use super::shared::Shared;
use crate::auth::{Access, AuthError, Claims, token_from_request};
use crate::error::RoomNameError;
use crate::metrics::{Metrics, Reason};
use crate::nextcloud::{AppApiError, AppApiUser};
use crate::room::MAX_ROOM_NAME_BYTES;

/// What a connection may do in a room, from its token's claims.
pub(super) struct Grant {
    pub(super) access: Access,
    /// When the token expires, and the room is closed to the connection.
    pub(super) expires_at: Option<std::time::SystemTime>,
    /// The token's `sub`, or the Nextcloud user: the user in logs and the roster.
    pub(super) subject: Option<String>,
    /// ExApp mode: the Nextcloud file whose permission granted the room, checked again while
    /// the connection is open.
    pub(super) file: Option<u64>,
}

impl Grant {
    /// Everything, for ever: auth is off.
    pub(super) fn unrestricted() -> Grant {
        Grant {
            access: Access::ReadWrite,
            expires_at: None,
            subject: None,
            file: None,
        }
    }
}

impl From<Claims> for Grant {
    fn from(claims: Claims) -> Grant {
        Grant {
            expires_at: Some(claims.expires_at()),
            access: claims.mode,
            subject: claims.sub,
            file: None,
        }
    }
}

/// Extracts the request's token (`?token=` or `Authorization: Bearer`), if any.
pub(super) fn credentials()
-> impl Filter<Extract = (Option<String>,), Error = warp::Rejection> + Clone {
    let query = warp::query::raw()
        .map(Some)
        .or(warp::any().map(|| None))
        .unify();
    query
        .and(warp::header::optional::<String>("authorization"))
        .map(|query: Option<String>, authorization: Option<String>| {
            token_from_request(query.as_deref(), authorization.as_deref())
        })
}

/// A request whose AppAPI headers were refused (ExApp mode): answered 401.
#[derive(Debug)]
pub(super) struct AppApiRejection(pub(super) AppApiError);

impl warp::reject::Reject for AppApiRejection {}

/// Who AppAPI says a request comes from, in ExApp mode (`None` outside it); a request with
/// missing or forged AppAPI headers is rejected ([`AppApiRejection`]) before anything runs.
pub(super) fn app_api_user(
    shared: &Arc<Shared>,
) -> warp::filters::BoxedFilter<(Option<AppApiUser>,)> {
    let Some(exapp) = shared.exapp.clone() else {
        return warp::any().map(|| None).boxed();
    };
    warp::header::headers_cloned()
        .and_then(move |headers: http::HeaderMap| {
            let verdict = exapp.credentials().authenticate(&headers);
            async move {
                verdict
                    .map(Some)
                    .map_err(|error| warp::reject::custom(AppApiRejection(error)))
            }
        })
        .boxed()
}

/// Answers an [`AppApiRejection`]: 401, counted in `auth_failures`.
pub(super) fn app_api_refused(metrics: &Metrics, error: AppApiError) -> warp::reply::Response {
    metrics
        .auth_failures
        .get_or_create(&Reason {
            reason: error.reason(),
        })
        .inc();
    json_error(StatusCode::UNAUTHORIZED, &error.to_string())
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

/// A JSON body with `status`.
pub(super) fn json_reply(status: StatusCode, body: &serde_json::Value) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// A JSON error body `{"error": message}` with `status`.
pub(super) fn json_error(status: StatusCode, message: &str) -> warp::reply::Response {
    json_reply(status, &serde_json::json!({ "error": message }))
}

/// 401 for a missing, invalid or expired token; 403 for a valid token without the right.
pub(super) fn auth_status(error: &AuthError) -> StatusCode {
    if error.is_unauthenticated() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::FORBIDDEN
    }
}

/// Label of an auth failure for the metrics.
pub(super) fn auth_reason(error: &AuthError) -> Reason {
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

/// Counts an auth failure in `ycord_auth_failures_total`, by [`auth_reason`].
pub(super) fn count_auth_failure(metrics: &Metrics, error: &AuthError) {
    metrics
        .auth_failures
        .get_or_create(&auth_reason(error))
        .inc();
}

/// Counts an auth failure and answers it ([`auth_status`]).
pub(super) fn auth_error(metrics: &Metrics, error: &AuthError) -> warp::reply::Response {
    count_auth_failure(metrics, error);
    json_error(auth_status(error), &error.to_string())
}

/// Checks an admin token when auth is on; the refusal is the response to send.
pub(super) fn require_admin(shared: &Shared, token: Option<&str>) -> Option<warp::reply::Response> {
    let auth = shared.auth.as_ref()?;
    let error = auth.authorize_admin(token).err()?;
    Some(auth_error(&shared.metrics, &error))
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
