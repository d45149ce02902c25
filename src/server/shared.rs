//! The state every request and session reads. A leaf of `server`: every route and the
//! admission import it, and it imports none of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::ServeConfig;
use crate::limit::ConnectRateLimiter;
use crate::metrics::Metrics;
use crate::nextcloud::ExApp;
use crate::rooms::Rooms;

/// State shared by every request and session.
pub(super) struct Shared {
    pub(super) config: ServeConfig,
    /// The path prefix before room names, normalized to start and end with `/`.
    pub(super) base_path: String,
    pub(super) rooms: Rooms,
    pub(super) metrics: Arc<Metrics>,
    /// `None` when auth is off: every room is open for reading and writing, the API to all.
    pub(super) auth: Option<Authenticator>,
    /// Connect rates per client address, or per Nextcloud user in ExApp mode.
    pub(super) connects: ConnectRateLimiter,
    /// ExApp mode (see [`crate::nextcloud`]); `None` otherwise.
    pub(super) exapp: Option<Arc<ExApp>>,
    /// WebSocket connections open now (each held by a `ConnectionPermit`).
    pub(super) open_connections: AtomicUsize,
    pub(super) shutdown: CancellationToken,
    /// Every session task, so that shutdown can wait for their close frames.
    pub(super) sessions: TaskTracker,
    pub(super) next_connection: AtomicU64,
}

impl Shared {
    /// What a new session watches to close with 1001: shutdown, and in ExApp mode the app
    /// being disabled.
    pub(super) fn session_token(&self) -> CancellationToken {
        match &self.exapp {
            Some(exapp) => exapp.session_token(),
            None => self.shutdown.clone(),
        }
    }
}

/// A configured count as a `usize`; one beyond `usize` is no limit at all.
pub(super) fn saturating_usize(count: u64) -> usize {
    usize::try_from(count).unwrap_or(usize::MAX)
}
