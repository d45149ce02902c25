//! `idle`: what rooms and idle connections cost the server in memory.
//!
//! Four samples of the server's resident memory (VmRSS): before anything, after half and after
//! all of M rooms were loaded (one connection each, one small edit each so that no room is
//! empty), and after all N connections (the other N − M spread evenly over the rooms) were open
//! and synced. A room's cost is the growth over the second half of the rooms, after the
//! server's one-time costs were paid in the first. The
//! connections are then held open (answering pings) for `--hold-secs`, and closed cleanly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use ycord_tools::trace::TEXT_NAME;
use yrs::{Doc, Text, Transact};

use crate::client::{Connection, Disconnect, hold};
use crate::error::BenchError;
use crate::latency::{Latencies, LatencySummary};
use crate::procfs::raise_open_files_limit;
use crate::progress::{Progress, note};
use crate::report::{Report, kinds};
use crate::target::{Target, TargetArgs, parse_secs};

#[derive(Debug, Args)]
#[command(after_help = "Example (the issue's figures):\n  \
    ycord-bench idle --url ws://127.0.0.1:8080 --connections 2000 --rooms 200 --server-pid $(pidof ycord)\n\
    The server needs enough file descriptors too (ulimit -n) for 10k connections.")]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Connections to open in total (at least --rooms).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connections: u32,

    /// Rooms the connections are spread over.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rooms: u32,

    /// Seconds to hold every connection open once all are connected.
    #[arg(long, default_value_t = 10.0, value_parser = parse_secs, value_name = "SECS")]
    pub hold_secs: f64,

    /// Seconds to wait before each memory sample, so the server settles.
    #[arg(long, default_value_t = 2.0, value_parser = parse_secs, value_name = "SECS")]
    pub settle_secs: f64,

    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
}

type Holder = JoinHandle<Option<Disconnect>>;

#[derive(Default)]
struct Counters {
    open: AtomicU64,
    closed_by_server: AtomicU64,
}

pub async fn run(args: &IdleArgs) -> Result<IdleReport, BenchError> {
    if args.connections < args.rooms {
        return Err(BenchError::Setup(format!(
            "--connections ({}) must be at least --rooms ({})",
            args.connections, args.rooms
        )));
    }
    let open_files = raise_open_files_limit()?;
    if open_files < u64::from(args.connections) + 64 {
        return Err(BenchError::Setup(format!(
            "{} connections need more open files than this process may have ({open_files}); raise the hard limit (ulimit -Hn)",
            args.connections
        )));
    }
    let mut target = Target::new(&args.target)?;
    target.client.small_buffers = true;
    target.probe().await?;
    let settle = Duration::from_secs_f64(args.settle_secs);
    tokio::time::sleep(settle).await;
    let rss_before = target.server_rss_kb()?;

    let stop = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let progress = {
        let counters = counters.clone();
        let server = target.server;
        Progress::start(target.quiet, "idle", move || {
            let rss = server
                .and_then(|server| server.rss_kb().ok())
                .map(|kb| format!(", server RSS {:.1} MiB", kb as f64 / 1024.0))
                .unwrap_or_default();
            format!(
                "{} connections open, {} closed by the server{rss}",
                counters.open.load(Ordering::Relaxed),
                counters.closed_by_server.load(Ordering::Relaxed),
            )
        })
    };

    // Phase 1: one connection per room, one small edit each, echo awaited.
    note(
        target.quiet,
        format_args!(
            "idle: loading {} rooms at {} (rooms {}-*)",
            args.rooms, target.url, target.room_prefix
        ),
    );
    let mut holders: Vec<Holder> = Vec::with_capacity(args.connections as usize);
    let mut join_latency = Latencies::default();
    let mut failures = Vec::new();
    let mut no_echo = 0u64;
    // In two halves, sampled after each: the second half's growth is what a room costs once
    // the server's one-time costs (sled's write buffers, worker and pool threads) are paid.
    let half = args.rooms / 2;
    let mut rss_half_rooms = None;
    for rooms in [0..half, half..args.rooms] {
        let loaded = open_all(
            rooms.collect(),
            true,
            &target,
            args.concurrency,
            &stop,
            &counters,
        )
        .await;
        for result in loaded {
            match result {
                Ok(opened) => {
                    join_latency.record(opened.join);
                    no_echo += u64::from(!opened.echoed);
                    holders.push(opened.holder);
                }
                Err(error) => failures.push(error.to_string()),
            }
        }
        tokio::time::sleep(settle).await;
        if rss_half_rooms.is_none() {
            rss_half_rooms = Some(target.server_rss_kb()?);
        }
    }
    if holders.is_empty() {
        stop.cancel();
        return Err(BenchError::Connection {
            url: target.url.clone(),
            reason: format!(
                "no room could be loaded: {}",
                failures.first().map_or("", String::as_str)
            ),
        });
    }
    let rss_rooms = target.server_rss_kb()?;

    // Phase 2: the other connections, spread evenly over the rooms.
    note(
        target.quiet,
        format_args!(
            "idle: opening {} more connections",
            args.connections - args.rooms
        ),
    );
    let opened = open_all(
        (args.rooms..args.connections)
            .map(|index| index % args.rooms)
            .collect(),
        false,
        &target,
        args.concurrency,
        &stop,
        &counters,
    )
    .await;
    for result in opened {
        match result {
            Ok(opened) => {
                join_latency.record(opened.join);
                holders.push(opened.holder);
            }
            Err(error) => failures.push(error.to_string()),
        }
    }
    tokio::time::sleep(settle).await;
    let rss_all = target.server_rss_kb()?;
    let connected = holders.len() as u64;

    note(
        target.quiet,
        format_args!(
            "idle: {connected} connections open; holding them for {} s",
            args.hold_secs
        ),
    );
    tokio::time::sleep(Duration::from_secs_f64(args.hold_secs)).await;
    let still_open = counters.open.load(Ordering::Relaxed);
    progress.stop().await;

    // Close everything cleanly.
    stop.cancel();
    let mut disconnects: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_disconnects = Vec::new();
    for holder in holders {
        if let Ok(Some(disconnect)) = holder.await {
            *disconnects.entry(disconnect.kind()).or_default() += 1;
            let described = disconnect.to_string();
            if first_disconnects.len() < 5 && !first_disconnects.contains(&described) {
                first_disconnects.push(described);
            }
        }
    }
    tokio::time::sleep(settle).await;
    let rss_after_close = target.server_rss_kb()?;

    let delta = |after: Option<u64>, before: Option<u64>, count: u64| match (after, before) {
        (Some(after), Some(before)) if count > 0 => {
            Some((after as f64 - before as f64) / count as f64)
        }
        _ => None,
    };
    let rooms = u64::from(args.rooms);
    let extra = connected.saturating_sub(rooms);
    let failed = failures.len() as u64;
    failures.truncate(5);
    Ok(IdleReport {
        url: target.url.clone(),
        room_prefix: target.room_prefix.clone(),
        connections: args.connections,
        rooms: args.rooms,
        connected,
        failed_connections: failed,
        first_failures: failures,
        rooms_without_echo: no_echo,
        join_latency: join_latency.summary(),
        rss_before_kb: rss_before,
        rss_half_rooms_loaded_kb: rss_half_rooms.flatten(),
        rss_rooms_loaded_kb: rss_rooms,
        rss_all_connected_kb: rss_all,
        rss_after_close_kb: rss_after_close,
        kb_per_room: delta(rss_rooms, rss_half_rooms.flatten(), rooms - u64::from(half)),
        kb_per_room_from_start: delta(rss_rooms, rss_before, rooms),
        kb_per_connection: delta(rss_all, rss_rooms, extra),
        hold_secs: args.hold_secs,
        open_after_hold: still_open,
        closed_by_server: disconnects,
        first_disconnects,
        open_files_limit: open_files,
    })
}

struct Opened {
    holder: Holder,
    join: Duration,
    echoed: bool,
}

/// Opens one connection per entry of `rooms` (room indexes), `concurrency` at a time; each
/// is then held by its own task until `stop`.
async fn open_all(
    rooms: Vec<u32>,
    edit: bool,
    target: &Target,
    concurrency: u32,
    stop: &CancellationToken,
    counters: &Arc<Counters>,
) -> Vec<Result<Opened, BenchError>> {
    futures_util::stream::iter(rooms)
        .map(|room| open_one(room, edit, target, stop, counters))
        .buffer_unordered(concurrency as usize)
        .collect()
        .await
}

async fn open_one(
    room: u32,
    edit: bool,
    target: &Target,
    stop: &CancellationToken,
    counters: &Arc<Counters>,
) -> Result<Opened, BenchError> {
    let started = Instant::now();
    let (mut connection, _) =
        Connection::join(&target.endpoint(room), Doc::new(), &target.client).await?;
    let join = started.elapsed();
    let mut echoed = true;
    if edit {
        let update = {
            let doc = connection.doc();
            let text = doc.get_or_insert_text(TEXT_NAME);
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, &format!("room {room} "));
            txn.encode_update_v1()
        };
        connection
            .send_update(&update)
            .await
            .map_err(|error| BenchError::Connection {
                url: connection.endpoint().to_string(),
                reason: error.to_string(),
            })?;
        // The server echoes an applied update to its sender; wait for it so that the room is
        // loaded and holds the edit before memory is sampled.
        echoed = matches!(
            tokio::time::timeout(target.client.sync_timeout, connection.recv()).await,
            Ok(Ok(true))
        );
    }
    counters.open.fetch_add(1, Ordering::Relaxed);
    let stop = stop.clone();
    let counters = counters.clone();
    let holder = tokio::spawn(async move {
        let ended = hold(connection.into_held(), stop).await;
        counters.open.fetch_sub(1, Ordering::Relaxed);
        if ended.is_some() {
            counters.closed_by_server.fetch_add(1, Ordering::Relaxed);
        }
        ended
    });
    Ok(Opened {
        holder,
        join,
        echoed,
    })
}

#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub url: String,
    pub room_prefix: String,
    pub connections: u32,
    pub rooms: u32,
    pub connected: u64,
    pub failed_connections: u64,
    pub first_failures: Vec<String>,
    /// Rooms whose edit was not echoed back (the server may not echo; memory is then sampled
    /// without that proof).
    pub rooms_without_echo: u64,
    /// Connect to SyncStep2 applied, per connection.
    pub join_latency: LatencySummary,
    pub rss_before_kb: Option<u64>,
    pub rss_half_rooms_loaded_kb: Option<u64>,
    pub rss_rooms_loaded_kb: Option<u64>,
    pub rss_all_connected_kb: Option<u64>,
    pub rss_after_close_kb: Option<u64>,
    /// (RSS after all rooms were loaded − after the first half) / rooms in the second half: a
    /// room with its first connection, once the server's one-time costs are paid.
    pub kb_per_room: Option<f64>,
    /// (RSS after the rooms were loaded − before) / rooms: the same, one-time costs included
    /// (spread over the rooms, so it shrinks as `--rooms` grows).
    pub kb_per_room_from_start: Option<f64>,
    /// (RSS with all connections − RSS with one per room) / the extra connections.
    pub kb_per_connection: Option<f64>,
    pub hold_secs: f64,
    pub open_after_hold: u64,
    /// Connections the server ended before we closed them, by close code or kind.
    pub closed_by_server: BTreeMap<String, u64>,
    /// Up to five distinct examples.
    pub first_disconnects: Vec<String>,
    pub open_files_limit: u64,
}

impl Report for IdleReport {
    fn human(&self) -> String {
        let mib = |kb: Option<u64>| {
            kb.map_or("n/a (no --server-pid)".into(), |kb| {
                format!("{:.1} MiB", kb as f64 / 1024.0)
            })
        };
        let per = |kb: Option<f64>| kb.map_or("n/a".into(), |kb| format!("{kb:.1} KiB"));
        let mut out = format!(
            "idle: {} connections over {} rooms at {} (rooms {}-*)\n",
            self.connections, self.rooms, self.url, self.room_prefix
        );
        out += &format!(
            "  connected:          {} ({} failed); join {}\n",
            self.connected, self.failed_connections, self.join_latency
        );
        out += &format!("  server RSS before:  {}\n", mib(self.rss_before_kb));
        out += &format!("  rooms loaded:       {}\n", mib(self.rss_rooms_loaded_kb));
        out += &format!("  all connected:      {}\n", mib(self.rss_all_connected_kb));
        out += &format!("  after closing:      {}\n", mib(self.rss_after_close_kb));
        out += &format!("  per room:           {}\n", per(self.kb_per_room));
        out += &format!(
            "  per room from start: {} (one-time costs included)\n",
            per(self.kb_per_room_from_start)
        );
        out += &format!("  per connection:     {}\n", per(self.kb_per_connection));
        out += &format!(
            "  held {} s: {} still open, closed by the server: {}\n",
            self.hold_secs,
            self.open_after_hold,
            kinds(&self.closed_by_server)
        );
        for disconnect in &self.first_disconnects {
            out += &format!("    e.g. {disconnect}\n");
        }
        for failure in &self.first_failures {
            out += &format!("    failed: {failure}\n");
        }
        out
    }

    fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.failed_connections > 0 {
            failures.push(format!(
                "{} of {} connections could not be opened",
                self.failed_connections, self.connections
            ));
        }
        let closed: u64 = self.closed_by_server.values().sum();
        if closed > 0 {
            failures.push(format!(
                "the server closed {closed} idle connections while they were held"
            ));
        }
        failures
    }
}
