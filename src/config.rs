//! Command-line and environment configuration: one clap-derived struct, every flag with a
//! `YCORD_*` environment variable, defaults in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::nextcloud::{AppApiCredentials, ExAppSettings};
use crate::room::RoomConfig;

/// ycord: a collaborative document sync server for Yjs clients.
#[derive(Debug, Parser)]
#[command(name = "ycord", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, accepted without the subcommand: `ycord` alone means `ycord serve`.
    #[command(flatten)]
    pub serve: ServeConfig,
}

// `Serve` is much larger than the admin variants; the enum is built once per process.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Yjs rooms over WebSockets (the default).
    Serve(ServeConfig),
    /// Write a room's document as a binary v1 update to FILE (or stdout). Stopped server only.
    Export {
        room: String,
        file: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Merge a binary v1 update from FILE into a room. Stopped server only.
    Import {
        room: String,
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Fold rooms' update logs into their snapshots. Stopped server only.
    Compact {
        /// The room to compact.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        room: Option<String>,
        /// Compact every stored room.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List stored rooms with their sizes, or describe one room. Stopped server only.
    Inspect {
        room: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Copy every room (and every deleted room's tombstone) from one store to another, merging
    /// into rooms the target already has: `--from sled:./ycord-data --to postgres://…` is how
    /// one machine's rooms move to a shared store. Stopped servers only.
    Copy {
        /// The source: `sled:DIR` or `postgres://USER@HOST:PORT/DB[?schema=NAME]`.
        #[arg(long)]
        from: String,
        /// The target, in the same form.
        #[arg(long)]
        to: String,
    },
}

/// Where the admin commands find the store.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Directory of the sled store (the same as the server's `--data-dir`).
    #[arg(long, env = "YCORD_DATA_DIR", default_value = "./ycord-data")]
    pub data_dir: PathBuf,

    /// The store, as the server's `--store` names it (overrides `--data-dir`).
    #[arg(long, env = "YCORD_STORE")]
    pub store: Option<String>,
}

/// What the binary was asked to do.
#[derive(Debug)]
pub enum Action {
    Serve(ServeConfig),
    Admin(Command),
}

impl Cli {
    /// The action, with `ycord` alone meaning `ycord serve`.
    pub fn into_action(self) -> Action {
        match self.command {
            Some(Command::Serve(config)) => Action::Serve(config),
            Some(admin) => Action::Admin(admin),
            None => Action::Serve(self.serve),
        }
    }

    /// The serve configuration of a `serve` invocation (tests and tools).
    pub fn into_serve_config(self) -> ServeConfig {
        match self.into_action() {
            Action::Serve(config) => config,
            Action::Admin(_) => Cli::parse_from(["ycord"]).serve,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything `ycord serve` needs.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "YCORD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory of the embedded sled store.
    #[arg(long, env = "YCORD_DATA_DIR", default_value = "./ycord-data")]
    pub data_dir: PathBuf,

    /// The store: `sled:DIR` (the default, in `--data-dir`) or
    /// `postgres://USER@HOST:PORT/DB[?schema=NAME]`, a store several nodes can share (tables
    /// created and migrated by ycord in schema NAME, default `ycord`).
    #[arg(long, env = "YCORD_STORE")]
    pub store: Option<String>,

    /// URL path under which rooms live: a client of `ws://host/base/room` joins `room`.
    #[arg(long, env = "YCORD_BASE_PATH", default_value = "/")]
    pub base_path: String,

    /// Durability window: applied updates reach the disk within this many milliseconds.
    #[arg(long, env = "YCORD_FLUSH_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub flush_ms: u64,

    /// Seconds a room without connections stays in memory before it is compacted and unloaded.
    #[arg(long, env = "YCORD_ROOM_IDLE_SECS", default_value_t = 30)]
    pub room_idle_secs: u64,

    /// Compact a room once its update log holds this many updates.
    #[arg(long, env = "YCORD_COMPACT_LOG_UPDATES", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub compact_log_updates: u64,

    /// Compact a room once its update log holds this many bytes.
    #[arg(long, env = "YCORD_COMPACT_LOG_BYTES", default_value_t = 8 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub compact_log_bytes: u64,

    /// Seconds an awareness state (cursor, presence) lives without being renewed. Clients renew
    /// every 15 s; y-protocols uses 30.
    #[arg(long, env = "YCORD_AWARENESS_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub awareness_timeout_secs: u64,

    /// Seconds between WebSocket pings; a peer that answers none for two intervals is closed.
    #[arg(long, env = "YCORD_PING_SECS", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=25))]
    pub ping_secs: u64,

    /// Log format.
    #[arg(long, env = "YCORD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// HS256 secret for client tokens. When set, every WebSocket upgrade and every HTTP request
    /// except the health checks must carry a JWT (`?token=` or `Authorization: Bearer`).
    #[arg(long, env = "YCORD_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,

    /// PEM certificate chain: serve TLS (wss://) directly, without a reverse proxy.
    #[arg(long, env = "YCORD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "YCORD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// URL that receives a signed JSON POST when a room is loaded, changes (debounced) or is
    /// unloaded.
    #[arg(long, env = "YCORD_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Secret for the `X-Ycord-Signature-256` header (HMAC-SHA256 of the body) of webhooks.
    #[arg(long, env = "YCORD_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Serve `GET /metrics` (without a token) on this separate address too, for a scraper on
    /// a private network.
    #[arg(long, env = "YCORD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Reverse proxies whose `Forwarded` or `X-Forwarded-For` header names the client, as a
    /// comma-separated list of IP addresses or CIDR blocks (`127.0.0.1,10.0.0.0/8`). Only a
    /// connection from one of them has its client address taken from those headers (the
    /// rightmost hop that is not itself a trusted proxy); from anyone else the headers are
    /// ignored, since a client can write them. Default: none.
    #[arg(long, env = "YCORD_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_ip_net)]
    pub trusted_proxies: Vec<IpNet>,

    /// Listen on this unix socket instead of `--listen` (ExApp mode behind HaRP sets it from
    /// `HP_EXAPP_SOCK`). A stale socket file left by a killed process is replaced.
    #[arg(long, env = "YCORD_LISTEN_UNIX")]
    pub listen_unix: Option<PathBuf>,

    #[command(flatten)]
    pub exapp: ExAppArgs,

    #[command(flatten)]
    pub limits: Limits,
}

/// Nextcloud External App mode (README, "Run inside Nextcloud"): on when `APP_ID` and
/// `APP_SECRET` are set, as AppAPI does when it starts the container.
#[derive(Debug, Clone, Args)]
pub struct ExAppArgs {
    /// The app id AppAPI registered (`EX-APP-ID` must equal it).
    #[arg(long, env = "APP_ID", requires = "app_secret")]
    pub app_id: Option<String>,

    /// The secret AppAPI shares with the app (in `AUTHORIZATION-APP-API`).
    #[arg(long, env = "APP_SECRET", hide_env_values = true, requires = "app_id")]
    pub app_secret: Option<String>,

    /// The app's version, sent in `EX-APP-VERSION`.
    #[arg(long, env = "APP_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    pub app_version: String,

    /// AppAPI's version, sent in `AA-VERSION`.
    #[arg(long, env = "AA_VERSION", default_value = "32.0.0")]
    pub aa_version: String,

    /// Nextcloud's base URL, asked about file permissions and told of the app's progress.
    #[arg(long, env = "NEXTCLOUD_URL")]
    pub nextcloud_url: Option<String>,

    /// Seconds a file permission answer from Nextcloud is reused for new sessions (0: ask
    /// every time).
    #[arg(long, env = "YCORD_ACL_CACHE_SECS", default_value_t = 30)]
    pub acl_cache_secs: u64,

    /// Seconds between checks of the file permissions of open sessions: a revoked one is
    /// closed (4403), a changed one applied.
    #[arg(long, env = "YCORD_ACL_RECHECK_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub acl_recheck_secs: u64,
}

/// Why ExApp mode cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ExAppConfigError {
    #[error("ExApp mode (APP_ID and APP_SECRET set) needs NEXTCLOUD_URL")]
    NoNextcloudUrl,
    #[error("NEXTCLOUD_URL {0:?} is not an http(s) URL")]
    BadNextcloudUrl(String),
    #[error("APP_HOST:APP_PORT {0:?} is not an address to listen on")]
    BadListen(String),
}

impl ExAppArgs {
    /// The ExApp settings, or `None` outside ExApp mode.
    pub fn settings(&self) -> Result<Option<ExAppSettings>, ExAppConfigError> {
        let (Some(app_id), Some(app_secret)) = (&self.app_id, &self.app_secret) else {
            return Ok(None);
        };
        let url = self
            .nextcloud_url
            .as_deref()
            .ok_or(ExAppConfigError::NoNextcloudUrl)?
            .trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ExAppConfigError::BadNextcloudUrl(url.to_owned()));
        }
        Ok(Some(ExAppSettings {
            credentials: AppApiCredentials {
                app_id: app_id.clone(),
                app_secret: app_secret.clone(),
                app_version: self.app_version.clone(),
                aa_version: self.aa_version.clone(),
            },
            nextcloud_url: url.to_owned(),
            acl_cache: Duration::from_secs(self.acl_cache_secs),
            acl_recheck: Duration::from_secs(self.acl_recheck_secs),
        }))
    }

    pub fn enabled(&self) -> bool {
        self.app_id.is_some() && self.app_secret.is_some()
    }
}

/// Resource limits. Each refusal is counted in `ycord_limit_hits_total{reason=...}`.
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Largest WebSocket message accepted, in bytes; a larger one closes the connection (1009).
    #[arg(long, env = "YCORD_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(64..=1 << 32))]
    pub max_message_bytes: u64,

    /// Largest document a room may hold, in bytes of its v1 encoding; an update that would pass
    /// it is refused (1009) and the document stays as it was.
    #[arg(long, env = "YCORD_MAX_DOC_BYTES", default_value_t = 256 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_doc_bytes: u64,

    /// Most WebSocket connections open at once; more are refused with HTTP 503.
    #[arg(long, env = "YCORD_MAX_CONNECTIONS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// Most connections to one room; more are refused with HTTP 503.
    #[arg(long, env = "YCORD_MAX_CONNECTIONS_PER_ROOM", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_room: u64,

    /// Most documents one Hocuspocus socket may open; the next gets PermissionDenied.
    #[arg(long, env = "YCORD_MAX_DOCUMENTS_PER_CONNECTION", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_documents_per_connection: u64,

    /// Most rooms in memory; idle rooms are evicted first, then new rooms are refused (HTTP 503).
    #[arg(long, env = "YCORD_MAX_ROOMS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_rooms: u64,

    /// Sustained document updates per second one connection may send (a burst of five seconds'
    /// worth is allowed); beyond it the connection is closed (1008).
    #[arg(long, env = "YCORD_MAX_UPDATES_PER_SEC", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_updates_per_sec: u64,

    /// New WebSocket connections per second from one client address (a burst of five seconds'
    /// worth is allowed); beyond it upgrades are refused with HTTP 429. The default lets 250
    /// clients reconnect at once from one address (an office, or a proxy not listed in
    /// `--trusted-proxies`) and refuses a flood.
    #[arg(long, env = "YCORD_MAX_CONNECTS_PER_IP_PER_SEC", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connects_per_ip_per_sec: u64,

    /// Seconds a new connection has to send its first message (clients send SyncStep1 at
    /// once); a silent one is closed (1008).
    #[arg(long, env = "YCORD_FIRST_MESSAGE_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub first_message_secs: u64,
}

/// An IP address (a block of one) or a CIDR block.
fn parse_ip_net(value: &str) -> Result<IpNet, String> {
    let value = value.trim();
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{value:?} is neither an IP address nor a CIDR block"))
}

impl ServeConfig {
    /// A configuration for tests: listen on a free port, keep data in `data_dir`. Every test
    /// client comes from 127.0.0.1 and many tests write in bulk, so the per-IP connect rate and
    /// the per-connection update rate are lifted; the tests of those limits set them back.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        let mut config = Cli::parse_from(["ycord", "--listen", "127.0.0.1:0"]).into_serve_config();
        config.data_dir = data_dir;
        config.limits.max_connects_per_ip_per_sec = 1_000_000;
        config.limits.max_updates_per_sec = 1_000_000;
        config
    }

    pub fn room_config(&self) -> RoomConfig {
        RoomConfig {
            compact_log_updates: self.compact_log_updates,
            compact_log_bytes: self.compact_log_bytes,
            max_doc_bytes: self.limits.max_doc_bytes,
            awareness_timeout: Duration::from_secs(self.awareness_timeout_secs),
        }
    }

    pub fn room_idle(&self) -> Duration {
        Duration::from_secs(self.room_idle_secs)
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_secs)
    }

    /// In ExApp mode, takes from AppAPI's environment what the `YCORD_*` variables did not
    /// set: the address (`APP_HOST:APP_PORT`, or the unix socket `HP_EXAPP_SOCK`, default
    /// `/tmp/exapp.sock`, when HaRP's `HP_SHARED_KEY` is set) and the data directory
    /// (`APP_PERSISTENT_STORAGE`). `env` reads a variable (`std::env::var` in the binary).
    pub fn apply_exapp_environment(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ExAppConfigError> {
        if !self.exapp.enabled() {
            return Ok(());
        }
        if env("YCORD_DATA_DIR").is_none() {
            if let Some(dir) = env("APP_PERSISTENT_STORAGE") {
                self.data_dir = PathBuf::from(dir);
            }
        }
        if self.listen_unix.is_none() && env("HP_SHARED_KEY").is_some() {
            let socket = env("HP_EXAPP_SOCK").unwrap_or_else(|| "/tmp/exapp.sock".into());
            self.listen_unix = Some(PathBuf::from(socket));
        } else if env("YCORD_LISTEN").is_none() {
            if let (Some(host), Some(port)) = (env("APP_HOST"), env("APP_PORT")) {
                let address = format!("{host}:{port}");
                self.listen = std::net::ToSocketAddrs::to_socket_addrs(&address)
                    .ok()
                    .and_then(|mut addresses| addresses.next())
                    .ok_or(ExAppConfigError::BadListen(address))?;
            }
        }
        Ok(())
    }

    /// The base path normalised to start and end with `/`. In ExApp mode it is `/ws/`: the
    /// routes of `appinfo/info.xml` send only `/ws` and `/ws/...` to WebSockets.
    pub fn normalized_base_path(&self) -> String {
        if self.exapp.enabled() {
            return "/ws/".to_owned();
        }
        let trimmed = self.base_path.trim_matches('/');
        if trimmed.is_empty() {
            "/".to_owned()
        } else {
            format!("/{trimmed}/")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration `ycord` alone gives, with AppAPI's id and secret.
    fn exapp_config() -> ServeConfig {
        let mut config = Cli::parse_from(["ycord"]).into_serve_config();
        config.exapp.app_id = Some("ycord".into());
        config.exapp.app_secret = Some("secret".into());
        config.exapp.nextcloud_url = Some("http://nextcloud.local/".into());
        config
    }

    fn environment(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        }
    }

    #[test]
    fn appapis_environment_places_the_listener_and_the_data() {
        let mut config = exapp_config();
        let env = environment(&[
            ("APP_HOST", "127.0.0.1"),
            ("APP_PORT", "23001"),
            ("APP_PERSISTENT_STORAGE", "/nc_app_ycord_data"),
        ]);
        config.apply_exapp_environment(env).unwrap();
        assert_eq!(config.listen, "127.0.0.1:23001".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/nc_app_ycord_data"));
        assert_eq!(config.listen_unix, None);
        assert_eq!(config.normalized_base_path(), "/ws/");
        let settings = config.exapp.settings().unwrap().unwrap();
        assert_eq!(settings.nextcloud_url, "http://nextcloud.local");

        // Behind HaRP: the unix socket, by default /tmp/exapp.sock.
        let mut harp = exapp_config();
        let env = environment(&[("HP_SHARED_KEY", "k"), ("APP_PORT", "23001")]);
        harp.apply_exapp_environment(env).unwrap();
        assert_eq!(harp.listen_unix, Some(PathBuf::from("/tmp/exapp.sock")));

        // YCORD_* variables win over AppAPI's.
        let mut explicit = exapp_config();
        let env = environment(&[
            ("YCORD_LISTEN", "127.0.0.1:9000"),
            ("YCORD_DATA_DIR", "/data"),
            ("APP_HOST", "0.0.0.0"),
            ("APP_PORT", "23001"),
            ("APP_PERSISTENT_STORAGE", "/nc"),
        ]);
        explicit.apply_exapp_environment(env).unwrap();
        assert_eq!(explicit.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(explicit.data_dir, PathBuf::from("./ycord-data"));
    }

    #[test]
    fn outside_exapp_mode_appapis_variables_change_nothing() {
        let mut config = Cli::parse_from(["ycord"]).into_serve_config();
        let env = environment(&[("APP_PORT", "1"), ("HP_SHARED_KEY", "k")]);
        config.apply_exapp_environment(env).unwrap();
        assert_eq!(config.listen_unix, None);
        assert_eq!(config.normalized_base_path(), "/");
        assert!(config.exapp.settings().unwrap().is_none());
    }

    #[test]
    fn exapp_mode_needs_a_nextcloud_url() {
        let mut config = exapp_config();
        config.exapp.nextcloud_url = None;
        assert!(matches!(
            config.exapp.settings(),
            Err(ExAppConfigError::NoNextcloudUrl)
        ));
        config.exapp.nextcloud_url = Some("nextcloud.local".into());
        assert!(matches!(
            config.exapp.settings(),
            Err(ExAppConfigError::BadNextcloudUrl(_))
        ));
        let mut bad_port = exapp_config();
        let env = environment(&[("APP_HOST", "0.0.0.0"), ("APP_PORT", "port")]);
        assert!(bad_port.apply_exapp_environment(env).is_err());
    }
}
