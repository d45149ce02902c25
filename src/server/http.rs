//! Plain HTTP endpoints: health, readiness and metrics, and the helpers that turn errors into
//! JSON responses.

use std::convert::Infallible;
use std::sync::Arc;

use warp::http::StatusCode;
use warp::{Filter, Reply};

use super::{Shared, auth_reason};
use crate::auth::{AuthError, token_from_request};
use crate::metrics::Metrics;
use crate::store::StoreOp;

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

/// A JSON error body `{"error": message}` with `status`.
pub(super) fn json_error(status: StatusCode, message: &str) -> warp::reply::Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": message })),
        status,
    )
    .into_response()
}

/// 401 for a missing, invalid or expired token; 403 for a valid token without the right.
pub(super) fn auth_error(metrics: &Metrics, error: &AuthError) -> warp::reply::Response {
    metrics
        .auth_failures
        .get_or_create(&auth_reason(error))
        .inc();
    let status = if error.is_unauthenticated() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::FORBIDDEN
    };
    json_error(status, &error.to_string())
}

/// Checks an admin token when auth is on; the refusal is the response to send.
pub(super) fn require_admin(shared: &Shared, token: Option<&str>) -> Option<warp::reply::Response> {
    let auth = shared.auth.as_ref()?;
    let error = auth.authorize_admin(token).err()?;
    Some(auth_error(&shared.metrics, &error))
}

type WithShared = warp::filters::BoxedFilter<(Arc<Shared>,)>;

pub(super) fn routes(
    with_shared: impl Filter<Extract = (Arc<Shared>,), Error = Infallible>
    + Clone
    + Send
    + Sync
    + 'static,
    max_body_bytes: u64,
) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let with_shared: WithShared = with_shared.boxed();
    let healthz = warp::get()
        .and(warp::path!("healthz"))
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})).into_response());
    let readyz = warp::get()
        .and(warp::path!("readyz"))
        .and(with_shared.clone())
        .then(readyz);
    let with_shared_api = with_shared.clone();
    let metrics = warp::get()
        .and(warp::path!("metrics"))
        .and(credentials())
        .and(with_shared)
        .then(metrics);
    healthz
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(super::api::routes(with_shared_api, max_body_bytes))
        .unify()
        .boxed()
}

async fn readyz(shared: Arc<Shared>) -> warp::reply::Response {
    if shared.shutdown.is_cancelled() {
        return ready_reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    // A failed write keeps the store failing until the flusher's recovery rewrote every room,
    // whatever a probe write says meanwhile.
    let health = shared.rooms.health().clone();
    if health.is_failing() {
        return ready_reply(StatusCode::SERVICE_UNAVAILABLE, "storage failing");
    }
    let store = shared.rooms.store().clone();
    match tokio::task::spawn_blocking(move || store.check_writable()).await {
        Ok(Ok(())) => ready_reply(StatusCode::OK, "ready"),
        Ok(Err(error)) => {
            health.failed(StoreOp::Check, None, &error);
            ready_reply(StatusCode::SERVICE_UNAVAILABLE, "storage not writable")
        }
        Err(_) => ready_reply(StatusCode::SERVICE_UNAVAILABLE, "storage check failed"),
    }
}

fn ready_reply(status: StatusCode, state: &str) -> warp::reply::Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "status": state })),
        status,
    )
    .into_response()
}

async fn metrics(token: Option<String>, shared: Arc<Shared>) -> warp::reply::Response {
    if let Some(refusal) = require_admin(&shared, token.as_deref()) {
        return refusal;
    }
    render_metrics(&shared).await
}

/// The metrics as Prometheus text, with the storage size sampled now.
pub(super) async fn render_metrics(shared: &Arc<Shared>) -> warp::reply::Response {
    let store = shared.rooms.store().clone();
    if let Ok(Ok(bytes)) = tokio::task::spawn_blocking(move || store.size_on_disk()).await {
        shared.metrics.storage_bytes.set(bytes);
    }
    warp::reply::with_header(
        shared.metrics.render(),
        "content-type",
        "text/plain; version=0.0.4; charset=utf-8",
    )
    .into_response()
}

/// The separate metrics listener (`--metrics-listen`): `GET /metrics` only, no token (it is
/// meant for a private network).
pub(super) fn metrics_only(
    shared: Arc<Shared>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone + Send + Sync + 'static
{
    warp::get()
        .and(warp::path!("metrics"))
        .then(move || {
            let shared = shared.clone();
            async move { render_metrics(&shared).await }
        })
        .recover(|_| async { Ok::<_, Infallible>(json_error(StatusCode::NOT_FOUND, "not found")) })
        .unify()
}
