//! The server under test: its URL and room naming, how patient clients are with it, and
//! (optionally) its process for CPU and memory figures. Shared by every subcommand.

use std::time::Duration;

use clap::Args;
use tokio::time::Instant;
use yrs::Doc;

use crate::client::{ClientOptions, Connection};
use crate::error::BenchError;
use crate::procfs::ServerProcess;
use crate::random::Rng;
use crate::wire::{Endpoint, Protocol};

/// Options every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Base WebSocket URL of the server. y-websocket: a room lives at URL + "/" + room name
    /// (e.g. ws://127.0.0.1:8080 or ws://host/yjs); hocuspocus: every client connects to URL
    /// and names its document in each message.
    #[arg(long, env = "YCORD_BENCH_URL", value_parser = parse_url, value_name = "ws://HOST:PORT[/PATH]")]
    pub url: String,

    /// The server's protocol: y-websocket (ycord, @y/websocket-server) or hocuspocus
    /// (@hocuspocus/server 4.x; clients authenticate with an empty token).
    #[arg(long, value_enum, default_value_t = Protocol::YWebsocket, value_name = "PROTOCOL")]
    pub protocol: Protocol,

    /// Prefix of the room names this run uses ("<prefix>-<n>"); default "bench-<random>", so
    /// that runs never share rooms.
    #[arg(long, value_name = "PREFIX")]
    pub room_prefix: Option<String>,

    /// PID of the server process (same machine): report its CPU time and memory from /proc.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,

    /// Print one JSON object with the results on stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,

    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,

    /// Seconds allowed for the TCP connect and WebSocket upgrade, and again for the server's
    /// first SyncStep1; past that the target counts as unreachable.
    #[arg(long, default_value_t = 5.0, value_name = "SECS", value_parser = parse_secs)]
    pub connect_timeout: f64,

    /// Seconds allowed between the server's SyncStep1 and its SyncStep2.
    #[arg(long, default_value_t = 60.0, value_name = "SECS", value_parser = parse_secs)]
    pub sync_timeout: f64,
}

fn parse_url(url: &str) -> Result<String, String> {
    if url.starts_with("wss://") {
        return Err("wss:// is not supported by this build (no TLS); use ws://".into());
    }
    if !url.starts_with("ws://") {
        return Err("the URL must start with ws://".into());
    }
    if url.contains('?') {
        return Err("the URL must not have a query string (rooms are URL/room)".into());
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// A positive, finite number of seconds.
pub fn parse_secs(value: &str) -> Result<f64, String> {
    let secs: f64 = value
        .parse()
        .map_err(|_| format!("not a number: {value}"))?;
    if secs.is_finite() && secs > 0.0 && secs < 1e7 {
        Ok(secs)
    } else {
        Err("must be a positive number of seconds".into())
    }
}

/// The resolved target of a run.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub protocol: Protocol,
    pub room_prefix: String,
    pub server: Option<ServerProcess>,
    pub quiet: bool,
    pub client: ClientOptions,
}

impl Target {
    pub fn new(args: &TargetArgs) -> Result<Target, BenchError> {
        let room_prefix = args
            .room_prefix
            .clone()
            .unwrap_or_else(|| format!("bench-{:06x}", Rng::from_entropy().below(1 << 24)));
        let server = args.server_pid.map(ServerProcess::open).transpose()?;
        Ok(Target {
            url: args.url.clone(),
            protocol: args.protocol,
            room_prefix,
            server,
            quiet: args.quiet,
            client: ClientOptions {
                connect_timeout: Duration::from_secs_f64(args.connect_timeout),
                sync_timeout: Duration::from_secs_f64(args.sync_timeout),
                small_buffers: false,
            },
        })
    }

    /// The name of this run's room `suffix`.
    pub fn room(&self, suffix: impl std::fmt::Display) -> String {
        format!("{}-{suffix}", self.room_prefix)
    }

    /// This run's room `suffix`, as clients reach it.
    pub fn endpoint(&self, suffix: impl std::fmt::Display) -> Endpoint {
        Endpoint::new(self.protocol, &self.url, self.room(suffix))
    }

    /// Joins a throwaway room once, so that an unreachable target or one that does not speak
    /// the protocol fails fast with a clear message naming the URL.
    pub async fn probe(&self) -> Result<Duration, BenchError> {
        let started = Instant::now();
        let (connection, _) = Connection::join(&self.endpoint("probe"), Doc::new(), &self.client)
            .await
            .map_err(|error| self.name_base_url(error))?;
        let elapsed = started.elapsed();
        connection.close().await;
        Ok(elapsed)
    }

    /// Rewrites a reachability error to name the base URL the user gave.
    fn name_base_url(&self, error: BenchError) -> BenchError {
        match error {
            BenchError::Unreachable { url, reason } => BenchError::Unreachable {
                url: self.url.clone(),
                reason: format!(
                    "{reason} (room {url}); is a {} server running there?",
                    self.protocol
                ),
            },
            BenchError::NotYWebsocket {
                url,
                protocol,
                reason,
            } => BenchError::NotYWebsocket {
                url: self.url.clone(),
                protocol,
                reason: format!("{reason} (room {url})"),
            },
            other => other,
        }
    }

    /// The server's CPU time so far, when `--server-pid` was given.
    pub fn server_cpu(&self) -> Result<Option<Duration>, BenchError> {
        self.server.map(|server| server.cpu_time()).transpose()
    }

    /// The server's resident memory in KiB, when `--server-pid` was given.
    pub fn server_rss_kb(&self) -> Result<Option<u64>, BenchError> {
        self.server.map(|server| server.rss_kb()).transpose()
    }
}
