//! The endpoints infrastructure probes: `GET /healthz` (the process answers), `GET /readyz`
//! (it can take writes) and `GET /metrics` (admin token when auth is on; AppAPI's check in
//! ExApp mode), plus the separate
//! `--metrics-listen` listener.

use std::convert::Infallible;
use std::sync::Arc;

use warp::http::StatusCode;
use warp::{Filter, Reply};

use super::request::{credentials, json_error, json_reply, require_admin};
use super::shared::Shared;
use crate::store::StoreOp;

pub(super) fn routes(
    with_shared: warp::filters::BoxedFilter<(Arc<Shared>,)>,
) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let healthz = warp::get()
        .and(warp::path!("healthz"))
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})).into_response());
    let readyz = warp::get()
        .and(warp::path!("readyz"))
        .and(with_shared.clone())
        .then(readyz);
    let metrics = warp::get()
        .and(warp::path!("metrics"))
        .and(credentials())
        .and(with_shared)
        .then(metrics);
    healthz.or(readyz).unify().or(metrics).unify().boxed()
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
    json_reply(status, &serde_json::json!({ "status": state }))
}

async fn metrics(token: Option<String>, shared: Arc<Shared>) -> warp::reply::Response {
    // In ExApp mode the request passed AppAPI's check, and HaRP lets only Nextcloud admins
    // reach `/metrics` (`appinfo/info.xml`): they carry no ycord token.
    if shared.exapp.is_none() {
        if let Some(refusal) = require_admin(&shared, token.as_deref()) {
            return refusal;
        }
    }
    render_metrics(&shared).await
}

/// The metrics as Prometheus text, with the storage size sampled now.
async fn render_metrics(shared: &Arc<Shared>) -> warp::reply::Response {
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
