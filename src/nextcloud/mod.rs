//! ExApp mode: ycord as a Nextcloud External App, run by AppAPI and reached through HaRP.
//!
//! - [`appapi`]: the AppAPI headers, checked on every request and put on ycord's own calls;
//! - [`permissions`]: which rooms are Nextcloud files, and what a user may do with one, asked
//!   of Nextcloud as that user (WebDAV SEARCH), cached briefly;
//! - [`ExApp`] (here): the app's lifecycle (`/init`'s progress report, `/enabled`) and the
//!   open file sessions, whose permission is checked again periodically: a revoked one is
//!   closed with 4403, a changed one applied at once.
//!
//! HaRP checks the browser's Nextcloud session once, at the upgrade; nothing tells an open
//! socket that the user logged out or lost a share, hence the periodic check.

pub mod appapi;
pub mod permissions;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::auth::Access;
use crate::metrics::{Metrics, Reason};
use crate::room::{ConnectionId, Room};
pub use appapi::{AppApiCredentials, AppApiError, AppApiUser};
pub use permissions::{FileAccess, LookupError, Permissions, file_of_room};

/// Most permission checks of open sessions in flight at once.
const RECHECK_CONCURRENCY: usize = 8;

/// How often `/init`'s progress report is tried before giving up, and the pause between tries.
const STATUS_ATTEMPTS: u32 = 5;
const STATUS_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// Everything ExApp mode needs, from the environment AppAPI sets.
#[derive(Debug, Clone)]
pub struct ExAppSettings {
    pub credentials: AppApiCredentials,
    /// `NEXTCLOUD_URL`, without a trailing slash.
    pub nextcloud_url: String,
    pub acl_cache: Duration,
    pub acl_recheck: Duration,
}

/// The state of a running ExApp.
#[derive(Debug)]
pub struct ExApp {
    settings: ExAppSettings,
    pub permissions: Permissions,
    client: reqwest::Client,
    enabled: AtomicBool,
    /// What sessions watch to close when the app is disabled: a child of the server's
    /// shutdown token, replaced by a fresh one at each disable.
    sessions: Mutex<CancellationToken>,
    shutdown: CancellationToken,
    /// The sessions on file rooms, by user and file: what the periodic check asks about.
    open_files: Mutex<HashMap<UserFile, HashMap<ConnectionId, OpenFile>>>,
    metrics: Arc<Metrics>,
}

/// A Nextcloud user and one of their files.
type UserFile = (String, u64);

/// A session on a file room, checked again periodically.
#[derive(Debug)]
struct OpenFile {
    room: Weak<Room>,
    /// What it may do now; `None` once revoked (until the closing session drops its guard).
    access: Option<Access>,
}

impl ExApp {
    pub fn new(
        settings: ExAppSettings,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<ExApp> {
        let permissions = Permissions::new(
            settings.credentials.clone(),
            &settings.nextcloud_url,
            settings.acl_cache,
        );
        Arc::new(ExApp {
            permissions,
            client: reqwest::Client::builder()
                .timeout(permissions::LOOKUP_TIMEOUT * 4)
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
            // AppAPI does not send `/enabled` again after a container restart.
            enabled: AtomicBool::new(true),
            sessions: Mutex::new(shutdown.child_token()),
            shutdown,
            open_files: Mutex::new(HashMap::new()),
            metrics,
            settings,
        })
    }

    pub fn credentials(&self) -> &AppApiCredentials {
        &self.settings.credentials
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Enables or disables the app. Disabling closes every open socket (1001, through
    /// [`ExApp::session_token`]); new upgrades are refused (503) until it is enabled again.
    pub fn set_enabled(&self, enabled: bool) {
        let was = self.enabled.swap(enabled, Ordering::AcqRel);
        if was && !enabled {
            let fresh = self.shutdown.child_token();
            let old = std::mem::replace(&mut *self.lock_sessions(), fresh);
            old.cancel();
            tracing::info!("app disabled by AppAPI: sockets closed, upgrades refused");
        } else if !was && enabled {
            tracing::info!("app enabled by AppAPI");
        }
    }

    /// The token a new session watches: cancelled at shutdown and when the app is disabled.
    pub fn session_token(&self) -> CancellationToken {
        self.lock_sessions().clone()
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, CancellationToken> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What `user` may do in file `file`'s room, asked of Nextcloud (or the cache); counted.
    pub async fn file_access(&self, user: &str, file: u64) -> Result<FileAccess, LookupError> {
        let result = self.permissions.access(user, file).await;
        self.count_lookup(&result);
        result
    }

    fn count_lookup(&self, result: &Result<FileAccess, LookupError>) {
        let reason = match result {
            Ok(FileAccess::ReadWrite) => "read_write",
            Ok(FileAccess::ReadOnly) => "read_only",
            Ok(FileAccess::None) => "none",
            Err(_) => "unavailable",
        };
        self.metrics
            .nextcloud_lookups
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// Registers an open session on a file room for the periodic check; it is forgotten when
    /// the returned guard drops.
    pub fn watch(
        self: &Arc<Self>,
        connection: ConnectionId,
        room: &Arc<Room>,
        user: &str,
        file: u64,
        access: Access,
    ) -> FileWatch {
        let open = OpenFile {
            room: Arc::downgrade(room),
            access: Some(access),
        };
        let key = (user.to_owned(), file);
        self.lock_open_files()
            .entry(key.clone())
            .or_default()
            .insert(connection, open);
        FileWatch {
            exapp: Arc::downgrade(self),
            key,
            connection,
        }
    }

    fn lock_open_files(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<UserFile, HashMap<ConnectionId, OpenFile>>> {
        self.open_files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks every `--acl-recheck-secs` until shutdown (see [`ExApp::recheck`]).
    pub async fn recheck_periodically(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.settings.acl_recheck);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            self.recheck().await;
        }
    }

    /// Asks Nextcloud afresh about every (user, file) with an open session and applies what
    /// changed: a revoked permission closes the sessions (4403), a changed one is applied to
    /// them. When Nextcloud does not answer, sessions keep what they had (and it is logged).
    pub async fn recheck(&self) {
        let pairs: Vec<UserFile> = self.lock_open_files().keys().cloned().collect();
        let answers: Vec<_> = futures_util::stream::iter(pairs)
            .map(|key| async move {
                let answer = self.permissions.refresh(&key.0, key.1).await;
                (key, answer)
            })
            .buffer_unordered(RECHECK_CONCURRENCY)
            .collect()
            .await;
        for (key, answer) in answers {
            self.count_lookup(&answer);
            match answer {
                Ok(access) => self.apply(&key, access),
                Err(error) => {
                    let (user, file) = &key;
                    tracing::warn!(%user, file, %error, "permission check failed; sessions keep their access");
                }
            }
        }
    }

    /// Applies a fresh answer to the open sessions of `user` on `file`.
    fn apply(&self, key: &UserFile, access: FileAccess) {
        let user = &key.0;
        let access = match access {
            FileAccess::ReadWrite => Some(Access::ReadWrite),
            FileAccess::ReadOnly => Some(Access::ReadOnly),
            FileAccess::None => None,
        };
        let mut changes = Vec::new();
        if let Some(sessions) = self.lock_open_files().get_mut(key) {
            for (&connection, open) in sessions.iter_mut() {
                let Some(room) = open.room.upgrade() else {
                    continue;
                };
                if open.access.is_some() && open.access != access {
                    open.access = access;
                    changes.push((room, connection, access));
                }
            }
        }
        for (room, connection, access) in changes {
            let reason = match access {
                None => {
                    tracing::info!(room = %room.name(), %user, "permission revoked: closing");
                    room.revoke(connection);
                    "revoked"
                }
                Some(access) => {
                    tracing::info!(room = %room.name(), %user, ?access, "permission changed");
                    room.change_access(connection, access);
                    if access == Access::ReadWrite {
                        "read_write"
                    } else {
                        "read_only"
                    }
                }
            };
            self.metrics
                .permission_changes
                .get_or_create(&Reason { reason })
                .inc();
        }
    }

    /// `/init`'s work, after its answer: tells AppAPI the app is ready (progress 100). AppAPI
    /// calls `/heartbeat` and `/enabled` back while this call is open.
    pub async fn report_ready(&self) {
        let url = format!(
            "{}/ocs/v1.php/apps/app_api/ex-app/status",
            self.settings.nextcloud_url
        );
        for attempt in 1..=STATUS_ATTEMPTS {
            let request = self
                .client
                .put(&url)
                .header("ocs-apirequest", "true")
                .header("content-type", "application/json")
                .body(r#"{"progress":100}"#);
            match self.credentials().sign(request, "").send().await {
                Ok(response) if response.status().is_success() => {
                    tracing::info!("initialised: reported progress 100 to AppAPI");
                    return;
                }
                Ok(response) => {
                    tracing::warn!(status = %response.status(), attempt, "AppAPI refused the progress report");
                }
                Err(error) => tracing::warn!(%error, attempt, "progress report failed"),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(STATUS_RETRY_PAUSE) => {}
            }
        }
        tracing::error!(
            "could not report progress 100 to AppAPI; the app stays 'initialising' in Nextcloud"
        );
    }
}

/// Keeps a session on a file room in the periodic check until dropped.
#[derive(Debug)]
pub struct FileWatch {
    exapp: Weak<ExApp>,
    key: UserFile,
    connection: ConnectionId,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        let Some(exapp) = self.exapp.upgrade() else {
            return;
        };
        let mut open_files = exapp.lock_open_files();
        if let Some(sessions) = open_files.get_mut(&self.key) {
            sessions.remove(&self.connection);
            if sessions.is_empty() {
                open_files.remove(&self.key);
            }
        }
    }
}
