//! `storm`: a big document in one room, then J clients joining at the same instant (what a
//! server restart or a network blip does: y-websocket clients reconnect without jitter).
//!
//! The room is loaded by one writer sending the whole final document of a trace as a single
//! Update; once its echo came back (the server applied it) a check client joins alone and must
//! see the full text (the single-joiner baseline). The writer stays connected, so the room
//! stays in memory. Then every joiner is released at once; each is timed from the release to
//! its SyncStep1, to its SyncStep2 arriving, and to "synced": SyncStep2 applied and its text
//! equal to the trace's. Joiners stay connected until all are done.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use ycord_tools::trace::{SequentialTrace, TEXT_NAME, trace_or_default};
use yrs::{Doc, GetString, ReadTxn, StateVector, Transact};

use crate::client::{Connection, Disconnect, Held, hold};
use crate::error::BenchError;
use crate::latency::{Latencies, LatencySummary};
use crate::progress::{Progress, note};
use crate::replay::covers;
use crate::report::{Report, ServerCpu};
use crate::target::{Target, TargetArgs, parse_secs};
use crate::wire::Endpoint;

#[derive(Debug, Args)]
#[command(after_help = "Example (the issue's figures):\n  \
    ycord-bench storm --url ws://127.0.0.1:8080 --joiners 200 --server-pid $(pidof ycord)")]
pub struct StormArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Clients joining the loaded room at the same instant.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub joiners: u32,

    /// Gzipped sequential trace whose final document is loaded into the room.
    /// Default: `benches/data/automerge-paper.json.gz`.
    #[arg(long, value_name = "PATH")]
    pub trace: Option<PathBuf>,

    /// Seconds from the release until every joiner must be synced.
    #[arg(long, default_value_t = 300.0, value_parser = parse_secs, value_name = "SECS")]
    pub timeout: f64,
}

/// The document to load and what every joiner must end with.
struct Document {
    update: Vec<u8>,
    text: String,
    state_vector: StateVector,
}

fn load_document(path: &std::path::Path) -> Result<Document, BenchError> {
    let trace = SequentialTrace::load(path).map_err(|error| {
        BenchError::Setup(format!("cannot load the trace {}: {error}", path.display()))
    })?;
    let (_, doc) = trace.to_updates().map_err(|error| {
        BenchError::Setup(format!(
            "cannot replay the trace {}: {error}",
            path.display()
        ))
    })?;
    let txn = doc.transact();
    Ok(Document {
        update: txn.encode_state_as_update_v1(&StateVector::default()),
        text: trace.end_content,
        state_vector: txn.state_vector(),
    })
}

#[derive(Debug, Default)]
struct JoinerOutcome {
    connected: Option<Duration>,
    step1: Option<Duration>,
    step2_received: Option<Duration>,
    synced: Option<Duration>,
    error: Option<String>,
    closed_early: Option<Disconnect>,
}

pub async fn run(args: &StormArgs) -> Result<StormReport, BenchError> {
    let target = Target::new(&args.target)?;
    let path = trace_or_default(args.trace.as_deref());
    note(
        target.quiet,
        format_args!("storm: loading {}", path.display()),
    );
    let load_path = path.clone();
    let document = tokio::task::spawn_blocking(move || load_document(&load_path))
        .await
        .map_err(|error| BenchError::Setup(format!("loading the trace failed: {error}")))??;
    let document = Arc::new(document);
    target.probe().await?;
    let endpoint = target.endpoint("storm");
    let url = endpoint.to_string();

    // Load the room: one Update holding the whole document; wait for the echo.
    let (mut writer, _) = Connection::join(&endpoint, Doc::new(), &target.client).await?;
    let load_start = Instant::now();
    writer
        .send_update(&document.update)
        .await
        .map_err(|error| connection_error(&url, format!("sending the document: {error}")))?;
    let echo_deadline = load_start + target.client.sync_timeout;
    // Loaded once the server echoed the document back or acknowledged it (a Hocuspocus
    // server need not echo an update to its sender).
    while writer.acknowledged() == 0
        && !covers(
            &writer.doc().transact().state_vector(),
            &document.state_vector,
        )
    {
        match tokio::time::timeout_at(echo_deadline, writer.recv()).await {
            Ok(Ok(_)) => {}
            Ok(Err(disconnect)) => {
                return Err(connection_error(
                    &url,
                    format!("the writer, after sending the document: {disconnect}"),
                ));
            }
            // No echo (a server may not echo to the sender): the check join below decides.
            Err(_) => break,
        }
    }
    let loaded = load_start.elapsed();
    let stop = CancellationToken::new();
    let writer_hold = tokio::spawn(hold(writer.into_held(), stop.clone()));

    // The single-joiner baseline, which also proves the server holds the document.
    let baseline_start = Instant::now();
    let (check, _) = Connection::join(&endpoint, Doc::new(), &target.client).await?;
    let baseline = baseline_start.elapsed();
    let check_text = text_of(check.doc());
    check.close().await;
    if check_text != document.text {
        stop.cancel();
        return Err(connection_error(
            &url,
            format!(
                "after loading the document, a new client got a text of {} bytes instead of {}",
                check_text.len(),
                document.text.len()
            ),
        ));
    }
    note(
        target.quiet,
        format_args!(
            "storm: room {url} holds the document ({} bytes as one update, loaded in {:.0} ms, a lone join syncs in {:.0} ms); releasing {} joiners",
            document.update.len(),
            loaded.as_secs_f64() * 1000.0,
            baseline.as_secs_f64() * 1000.0,
            args.joiners
        ),
    );

    let synced_count = Arc::new(AtomicU64::new(0));
    let finished_count = Arc::new(AtomicU64::new(0));
    let (release, released) = tokio::sync::watch::channel(None::<Instant>);
    let all_done = Arc::new(tokio::sync::Notify::new());
    let joiners = u64::from(args.joiners);
    let tasks: Vec<_> = (0..args.joiners)
        .map(|_| {
            let mut released = released.clone();
            let endpoint = endpoint.clone();
            let options = target.client;
            let document = document.clone();
            let stop = stop.clone();
            let synced_count = synced_count.clone();
            let finished_count = finished_count.clone();
            let all_done = all_done.clone();
            tokio::spawn(async move {
                let mut outcome = JoinerOutcome::default();
                let Ok(start) = released.wait_for(Option::is_some).await.map(|start| *start) else {
                    outcome.error = Some("never released".into());
                    return outcome;
                };
                let Some(start) = start else {
                    return outcome;
                };
                let socket =
                    join_and_check(&endpoint, &options, &document, start, &mut outcome).await;
                if outcome.synced.is_some() {
                    synced_count.fetch_add(1, Ordering::Relaxed);
                }
                if finished_count.fetch_add(1, Ordering::AcqRel) + 1 == joiners {
                    all_done.notify_one();
                }
                if let Some(socket) = socket {
                    outcome.closed_early = hold(socket, stop).await;
                }
                outcome
            })
        })
        .collect();
    // Let every task reach its wait before the release.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let progress = {
        let synced_count = synced_count.clone();
        let finished_count = finished_count.clone();
        Progress::start(target.quiet, "storm", move || {
            format!(
                "{} of {joiners} joiners synced, {} failed",
                synced_count.load(Ordering::Relaxed),
                finished_count.load(Ordering::Relaxed) - synced_count.load(Ordering::Relaxed)
            )
        })
    };
    let cpu_before = target.server_cpu()?;
    let own_cpu_before = crate::procfs::own_cpu_time();
    let start = Instant::now();
    release.send_replace(Some(start));
    let deadline = start + Duration::from_secs_f64(args.timeout);
    let timed_out = tokio::time::timeout_at(deadline, all_done.notified())
        .await
        .is_err();
    let wall = start.elapsed();
    let cpu_after = target.server_cpu()?;
    let own_cpu = crate::procfs::own_cpu_time().saturating_sub(own_cpu_before);
    progress.stop().await;

    // Every joiner is done (or the deadline passed): close everything cleanly.
    stop.cancel();
    let mut outcomes = Vec::new();
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(outcome)) => outcomes.push(outcome),
            Ok(Err(error)) => outcomes.push(JoinerOutcome {
                error: Some(format!("joiner task failed: {error}")),
                ..JoinerOutcome::default()
            }),
            Err(_) => outcomes.push(JoinerOutcome {
                error: Some("did not finish in time".into()),
                ..JoinerOutcome::default()
            }),
        }
    }
    let writer_closed_early = writer_hold.await.ok().flatten();

    let summary = |pick: fn(&JoinerOutcome) -> Option<Duration>| {
        let mut latencies = Latencies::default();
        for outcome in &outcomes {
            if let Some(latency) = pick(outcome) {
                latencies.record(latency);
            }
        }
        latencies.summary()
    };
    let synced = outcomes.iter().filter(|o| o.synced.is_some()).count() as u64;
    let failed = joiners.saturating_sub(synced);
    let errors: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.error.clone())
        .take(5)
        .collect();
    let closed_early = outcomes.iter().filter(|o| o.closed_early.is_some()).count() as u64;
    let server_cpu = match (target.server, cpu_before, cpu_after) {
        (Some(server), Some(before), Some(after)) => Some(ServerCpu::new(
            server.pid(),
            after.saturating_sub(before),
            wall,
            joiners,
            target.server_rss_kb()?.unwrap_or(0),
        )),
        _ => None,
    };
    let synced_summary = summary(|o| o.synced);
    Ok(StormReport {
        url,
        trace: path.display().to_string(),
        document_bytes: document.update.len() as u64,
        text_len: document.text.len(),
        load_ms: loaded.as_secs_f64() * 1000.0,
        single_join_ms: baseline.as_secs_f64() * 1000.0,
        joiners: args.joiners,
        synced,
        failed,
        timed_out,
        all_synced_s: (synced == joiners).then_some(synced_summary.max_ms / 1000.0),
        connected: summary(|o| o.connected),
        step1: summary(|o| o.step1),
        step2_received: summary(|o| o.step2_received),
        synced_latency: synced_summary,
        first_errors: errors,
        closed_by_server_while_held: closed_early,
        writer_closed_early: writer_closed_early.map(|d| d.to_string()),
        server_cpu,
        bench_cpu_ms: own_cpu.as_secs_f64() * 1000.0,
    })
}

fn connection_error(url: &str, reason: String) -> BenchError {
    BenchError::Connection {
        url: url.to_owned(),
        reason,
    }
}

fn text_of(doc: &Doc) -> String {
    doc.get_or_insert_text(TEXT_NAME)
        .get_string(&doc.transact())
}

/// Joins, records the timings, checks the text; returns the socket to hold (the document is
/// dropped: two hundred copies of a big document are not what is measured).
async fn join_and_check(
    endpoint: &Endpoint,
    options: &crate::client::ClientOptions,
    document: &Document,
    start: Instant,
    outcome: &mut JoinerOutcome,
) -> Option<Held> {
    let (connection, timing) = match Connection::join(endpoint, Doc::new(), options).await {
        Ok(joined) => joined,
        Err(error) => {
            outcome.error = Some(error.to_string());
            return None;
        }
    };
    outcome.connected = Some(timing.connected - start);
    outcome.step1 = Some(timing.step1 - start);
    outcome.step2_received = Some(timing.step2_received - start);
    let text = text_of(connection.doc());
    if text == document.text {
        outcome.synced = Some(start.elapsed());
    } else {
        outcome.error = Some(format!(
            "synced with a text of {} bytes instead of {}",
            text.len(),
            document.text.len()
        ));
    }
    Some(connection.into_held())
}

#[derive(Debug, Serialize)]
pub struct StormReport {
    pub url: String,
    pub trace: String,
    /// The whole document as one v1 update.
    pub document_bytes: u64,
    pub text_len: usize,
    /// From sending the document until its echo came back.
    pub load_ms: f64,
    /// One client joining the loaded room alone: connect to text verified.
    pub single_join_ms: f64,
    pub joiners: u32,
    pub synced: u64,
    pub failed: u64,
    pub timed_out: bool,
    /// From the release until the last joiner was synced (when all were).
    pub all_synced_s: Option<f64>,
    /// Release → WebSocket upgrade completed.
    pub connected: LatencySummary,
    /// Release → the server's SyncStep1 arrived.
    pub step1: LatencySummary,
    /// Release → the frame with the server's SyncStep2 arrived.
    pub step2_received: LatencySummary,
    /// Release → SyncStep2 applied and the text verified.
    pub synced_latency: LatencySummary,
    pub first_errors: Vec<String>,
    pub closed_by_server_while_held: u64,
    pub writer_closed_early: Option<String>,
    pub server_cpu: Option<ServerCpu>,
    pub bench_cpu_ms: f64,
}

impl Report for StormReport {
    fn human(&self) -> String {
        let mut out = format!(
            "storm: {} joiners at once into {} ({} text bytes, document {:.1} KB as one update)\n",
            self.joiners,
            self.url,
            self.text_len,
            self.document_bytes as f64 / 1000.0
        );
        out += &format!(
            "  room loaded in {:.0} ms; a lone join syncs in {:.0} ms\n",
            self.load_ms, self.single_join_ms
        );
        out += &format!(
            "  synced: {} of {}{}\n",
            self.synced,
            self.joiners,
            match self.all_synced_s {
                Some(secs) => format!(", all within {secs:.2} s"),
                None => String::new(),
            }
        );
        out += &format!("  connected after release:      {}\n", self.connected);
        out += &format!("  SyncStep1 after release:      {}\n", self.step1);
        out += &format!("  SyncStep2 arrived after:      {}\n", self.step2_received);
        out += &format!("  synced (applied, verified):   {}\n", self.synced_latency);
        for error in &self.first_errors {
            out += &format!("    e.g. {error}\n");
        }
        if let Some(cpu) = &self.server_cpu {
            out += &format!("  {}", cpu.line("joiner"));
        }
        out += &format!("  load tool CPU: {:.0} ms\n", self.bench_cpu_ms);
        out
    }

    fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.synced < u64::from(self.joiners) {
            failures.push(format!(
                "{} of {} joiners did not end with the full text{}",
                u64::from(self.joiners) - self.synced,
                self.joiners,
                if self.timed_out { " (timed out)" } else { "" }
            ));
        }
        if self.closed_by_server_while_held > 0 {
            failures.push(format!(
                "the server closed {} synced joiners before the end",
                self.closed_by_server_while_held
            ));
        }
        if let Some(why) = &self.writer_closed_early {
            failures.push(format!("the writer was disconnected: {why}"));
        }
        failures
    }
}
