//! `replay`: one writer pushes a real editing trace (one Update message per transaction) as
//! fast as the server takes it, while K readers in the same room must end with the trace's
//! text.
//!
//! The writer pipelines: it never waits for echoes, and the only bound on what is in flight is
//! the socket itself (tungstenite's 128 KiB write buffer, then the kernel's send buffer, then
//! the server reading). Its echoes are drained by a separate task so that the server never
//! blocks on it. Readers behave like y-websocket clients: if the server closes them (e.g. 1013
//! for falling behind) they reconnect and resync, and every such close is reported.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use ycord_tools::trace::{SequentialTrace, TEXT_NAME, trace_or_default};
use yrs::{Doc, GetString, ReadTxn, StateVector, Transact};

use crate::client::{ClientOptions, Connection, Disconnect, rejoin};
use crate::error::BenchError;
use crate::progress::{Progress, note};
use crate::report::{Report, ServerCpu, kinds};
use crate::target::{Target, TargetArgs, parse_secs};

#[derive(Debug, Args)]
#[command(after_help = "Example (the issue's figures):\n  \
    ycord-bench replay --url ws://127.0.0.1:8080 --readers 2 --server-pid $(pidof ycord)")]
pub struct ReplayArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Readers connected to the room during the replay; each must end with the trace's text.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub readers: u32,

    /// Gzipped sequential trace (JSON with startContent, endContent, txns[].patches).
    /// Default: `benches/data/automerge-paper.json.gz` (259,778 transactions).
    #[arg(long, value_name = "PATH")]
    pub trace: Option<PathBuf>,

    /// Replay only the first N transactions (readers must then hold the text after N).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,

    /// Seconds from the writer's first update until every reader must be complete.
    #[arg(long, default_value_t = 600.0, value_parser = parse_secs, value_name = "SECS")]
    pub timeout: f64,
}

/// The trace turned into updates, and what a reader must end with.
pub struct Replay {
    pub updates: Vec<Vec<u8>>,
    pub text: String,
    pub state_vector: StateVector,
}

/// Loads a trace and keeps its first `limit` transactions (blocking: call on the blocking
/// pool). With a limit, the expected text is computed by applying the patches to a plain
/// string, which `to_updates` then checks the yrs replay against.
pub fn load_trace(path: &std::path::Path, limit: Option<u64>) -> Result<Replay, BenchError> {
    let mut trace = SequentialTrace::load(path).map_err(|error| {
        BenchError::Setup(format!("cannot load the trace {}: {error}", path.display()))
    })?;
    if let Some(limit) = limit {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if limit < trace.txns.len() {
            trace.txns.truncate(limit);
            trace.end_content = plain_replay(&trace)?;
        }
    }
    let (updates, doc) = trace.to_updates().map_err(|error| {
        BenchError::Setup(format!(
            "cannot replay the trace {}: {error}",
            path.display()
        ))
    })?;
    let state_vector = doc.transact().state_vector();
    Ok(Replay {
        updates,
        text: trace.end_content,
        state_vector,
    })
}

/// The text after the trace's transactions, applied to a plain string (positions are in
/// Unicode code points).
fn plain_replay(trace: &SequentialTrace) -> Result<String, BenchError> {
    let mut text: Vec<char> = trace.start_content.chars().collect();
    for (index, txn) in trace.txns.iter().enumerate() {
        for (position, deleted, inserted) in &txn.patches {
            let start = *position as usize;
            let end = start + *deleted as usize;
            if end > text.len() {
                return Err(BenchError::Setup(format!(
                    "trace transaction {index} edits past the end of the text"
                )));
            }
            text.splice(start..end, inserted.chars());
        }
    }
    Ok(text.into_iter().collect())
}

/// Whether `have` includes everything in `want`.
pub fn covers(have: &StateVector, want: &StateVector) -> bool {
    want.iter()
        .all(|(client, clock)| have.get(client) >= *clock)
}

/// How much of `want` is in `have`, from 0 to 1.
fn fraction(have: &StateVector, want: &StateVector) -> f64 {
    let total: u64 = want.iter().map(|(_, clock)| u64::from(*clock)).sum();
    let got: u64 = want
        .iter()
        .map(|(client, clock)| u64::from(have.get(client).min(*clock)))
        .sum();
    if total == 0 {
        1.0
    } else {
        got as f64 / total as f64
    }
}

struct ReaderOutcome {
    complete_after: Option<Duration>,
    text_matches: bool,
    text_len: usize,
    disconnects: Vec<Disconnect>,
    rejoin_failure: Option<String>,
}

pub async fn run(args: &ReplayArgs) -> Result<ReplayReport, BenchError> {
    let target = Target::new(&args.target)?;
    let path = trace_or_default(args.trace.as_deref());
    note(
        target.quiet,
        format_args!("replay: loading {}", path.display()),
    );
    let limit = args.limit;
    let load_path = path.clone();
    let replay = tokio::task::spawn_blocking(move || load_trace(&load_path, limit))
        .await
        .map_err(|error| BenchError::Setup(format!("loading the trace failed: {error}")))??;
    let replay = Arc::new(replay);
    let update_bytes: usize = replay.updates.iter().map(Vec::len).sum();
    target.probe().await?;
    let endpoint = target.endpoint("replay");
    note(
        target.quiet,
        format_args!(
            "replay: {} updates ({} bytes) into {endpoint} with {} readers",
            replay.updates.len(),
            update_bytes,
            args.readers
        ),
    );

    let mut readers = Vec::new();
    for _ in 0..args.readers {
        let (connection, _) = Connection::join(&endpoint, Doc::new(), &target.client).await?;
        readers.push(connection);
    }
    let (writer, _) = Connection::join(&endpoint, Doc::new(), &target.client).await?;

    let sent = Arc::new(AtomicU64::new(0));
    let reader_progress: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.readers).map(|_| AtomicU64::new(0)).collect());
    let progress = {
        let sent = sent.clone();
        let reader_progress = reader_progress.clone();
        let total = replay.updates.len();
        Progress::start(target.quiet, "replay", move || {
            let readers: Vec<String> = reader_progress
                .iter()
                .map(|per_mille| format!("{:.1}%", per_mille.load(Ordering::Relaxed) as f64 / 10.0))
                .collect();
            format!(
                "sent {}/{total}, readers at {}",
                sent.load(Ordering::Relaxed),
                readers.join(" ")
            )
        })
    };

    let cpu_before = target.server_cpu()?;
    let own_cpu_before = crate::procfs::own_cpu_time();
    let start = Instant::now();
    let give_up = start + Duration::from_secs_f64(args.timeout);
    let reader_tasks: Vec<_> = readers
        .into_iter()
        .enumerate()
        .map(|(index, connection)| {
            let reader = Reader {
                replay: replay.clone(),
                start,
                give_up,
                options: target.client,
                progress: reader_progress.clone(),
                index,
            };
            tokio::spawn(reader.run(connection))
        })
        .collect();

    let writer_outcome = write_all(writer, &replay.updates, &sent, give_up).await;
    let writer_done = start.elapsed();

    let mut outcomes = Vec::new();
    for task in reader_tasks {
        outcomes.push(
            task.await
                .map_err(|error| BenchError::Setup(format!("a reader task failed: {error}")))?,
        );
    }
    let wall = start.elapsed();
    let cpu_after = target.server_cpu()?;
    let own_cpu = crate::procfs::own_cpu_time().saturating_sub(own_cpu_before);
    progress.stop().await;
    let writer_error = writer_outcome.error.clone();
    let writer_echo_frames = writer_outcome.echo_frames();
    writer_outcome.close().await;

    let complete_s: Vec<Option<f64>> = outcomes
        .iter()
        .map(|outcome| outcome.complete_after.map(|after| after.as_secs_f64()))
        .collect();
    let all_complete = complete_s.iter().all(Option::is_some);
    let last_complete = complete_s.iter().flatten().copied().fold(0.0, f64::max);
    let mut disconnects = BTreeMap::new();
    let mut first_disconnects = Vec::new();
    for (index, outcome) in outcomes.iter().enumerate() {
        for disconnect in &outcome.disconnects {
            *disconnects.entry(disconnect.kind()).or_insert(0u64) += 1;
            let described = format!("reader {index}: {disconnect}");
            if first_disconnects.len() < 5 && !first_disconnects.contains(&described) {
                first_disconnects.push(described);
            }
        }
    }
    let updates = replay.updates.len() as u64;
    let server_cpu = match (target.server, cpu_before, cpu_after) {
        (Some(server), Some(before), Some(after)) => Some(ServerCpu::new(
            server.pid(),
            after.saturating_sub(before),
            wall,
            updates,
            target.server_rss_kb()?.unwrap_or(0),
        )),
        _ => None,
    };
    Ok(ReplayReport {
        url: endpoint.to_string(),
        trace: path.display().to_string(),
        updates,
        update_bytes: update_bytes as u64,
        expected_text_len: replay.text.len(),
        readers: args.readers,
        writer_send_s: writer_done.as_secs_f64(),
        writer_error,
        writer_echo_frames,
        complete_s: all_complete.then_some(last_complete),
        updates_per_s: all_complete.then(|| updates as f64 / last_complete.max(1e-9)),
        reader_complete_s: complete_s,
        reader_text_matches: outcomes.iter().map(|o| o.text_matches).collect(),
        reader_text_len: outcomes.iter().map(|o| o.text_len).collect(),
        reader_disconnects: disconnects,
        first_disconnects,
        rejoin_failures: outcomes
            .iter()
            .filter_map(|o| o.rejoin_failure.clone())
            .collect(),
        server_cpu,
        bench_cpu_ms: own_cpu.as_secs_f64() * 1000.0,
    })
}

/// The writer after its last update: its echo drainer still runs until closed.
struct WriterOutcome {
    sink: Option<futures_util::stream::SplitSink<crate::client::Socket, Message>>,
    drain: Option<tokio::task::JoinHandle<Option<Disconnect>>>,
    echo_frames: Arc<AtomicU64>,
    error: Option<String>,
}

impl WriterOutcome {
    fn echo_frames(&self) -> u64 {
        self.echo_frames.load(Ordering::Relaxed)
    }

    async fn close(mut self) {
        if let Some(mut sink) = self.sink.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
        }
        if let Some(mut drain) = self.drain.take() {
            if tokio::time::timeout(Duration::from_secs(2), &mut drain)
                .await
                .is_err()
            {
                drain.abort();
            }
        }
    }
}

/// Sends every update as its own Update message, as fast as the socket accepts them.
async fn write_all(
    writer: Connection,
    updates: &[Vec<u8>],
    sent: &AtomicU64,
    give_up: Instant,
) -> WriterOutcome {
    let held = writer.into_held();
    let endpoint = held.endpoint;
    let (mut sink, mut stream) = held.socket.split();
    let echo_frames = Arc::new(AtomicU64::new(0));
    let drain = {
        let echo_frames = echo_frames.clone();
        tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                match message {
                    Ok(Message::Binary(_)) => {
                        echo_frames.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Message::Close(frame)) => {
                        return frame.map(|frame| Disconnect {
                            code: Some(u16::from(frame.code)),
                            reason: frame.reason.to_string(),
                            protocol_error: false,
                        });
                    }
                    Ok(_) => {}
                    Err(error) => {
                        return Some(Disconnect {
                            code: None,
                            reason: error.to_string(),
                            protocol_error: false,
                        });
                    }
                }
            }
            None
        })
    };
    let sending = async {
        for (index, update) in updates.iter().enumerate() {
            sink.feed(Message::binary(endpoint.update(update)))
                .await
                .map_err(|error| format!("after {index} updates: {error}"))?;
            sent.store(index as u64 + 1, Ordering::Relaxed);
        }
        sink.flush()
            .await
            .map_err(|error| format!("flushing the last updates: {error}"))
    };
    let error = match tokio::time::timeout_at(give_up, sending).await {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error),
        Err(_) => Some("timed out while sending".into()),
    };
    let mut drain = Some(drain);
    let error = match (error, drain.take()) {
        // Tell why the socket failed: the close frame the drainer saw, if any.
        (Some(error), Some(mut task)) => {
            match tokio::time::timeout(Duration::from_secs(1), &mut task).await {
                Ok(Ok(Some(disconnect))) => Some(format!("{error}; {disconnect}")),
                Ok(_) => Some(error),
                Err(_) => {
                    drain = Some(task);
                    Some(error)
                }
            }
        }
        (error, task) => {
            drain = task;
            error
        }
    };
    WriterOutcome {
        sink: Some(sink),
        drain,
        echo_frames,
        error,
    }
}

/// A reader: applies what arrives until its document covers the whole replay.
struct Reader {
    replay: Arc<Replay>,
    start: Instant,
    give_up: Instant,
    options: ClientOptions,
    progress: Arc<Vec<AtomicU64>>,
    index: usize,
}

impl Reader {
    async fn run(self, mut connection: Connection) -> ReaderOutcome {
        let doc = connection.doc().clone();
        let mut outcome = ReaderOutcome {
            complete_after: None,
            text_matches: false,
            text_len: 0,
            disconnects: Vec::new(),
            rejoin_failure: None,
        };
        let mut frames = 0u64;
        loop {
            let state_vector = doc.transact().state_vector();
            if covers(&state_vector, &self.replay.state_vector) {
                outcome.complete_after = Some(self.start.elapsed());
                self.report_progress(&state_vector);
                break;
            }
            if frames % 256 == 0 {
                self.report_progress(&state_vector);
            }
            let received = tokio::select! {
                received = connection.recv() => received,
                _ = tokio::time::sleep_until(self.give_up) => break,
            };
            frames += 1;
            if let Err(disconnect) = received {
                outcome.disconnects.push(disconnect);
                let endpoint = connection.endpoint().clone();
                match rejoin(&endpoint, &doc, &self.options, self.give_up).await {
                    Ok(rejoined) => connection = rejoined,
                    Err(error) => {
                        outcome.rejoin_failure = Some(error.to_string());
                        break;
                    }
                }
            }
        }
        let text = doc
            .get_or_insert_text(TEXT_NAME)
            .get_string(&doc.transact());
        outcome.text_len = text.len();
        outcome.text_matches = text == self.replay.text;
        connection.close().await;
        outcome
    }

    fn report_progress(&self, state_vector: &StateVector) {
        let per_mille = (fraction(state_vector, &self.replay.state_vector) * 1000.0) as u64;
        self.progress[self.index].store(per_mille, Ordering::Relaxed);
    }
}

#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub url: String,
    pub trace: String,
    pub updates: u64,
    pub update_bytes: u64,
    pub expected_text_len: usize,
    pub readers: u32,
    /// From the first update until the writer's last one was flushed to the socket.
    pub writer_send_s: f64,
    pub writer_error: Option<String>,
    /// Frames the server sent back to the writer by the end (its echoes; with Hocuspocus also
    /// one SyncStatus acknowledgement per update).
    pub writer_echo_frames: u64,
    /// From the writer's first update until the last reader had everything.
    pub complete_s: Option<f64>,
    /// `updates / complete_s`.
    pub updates_per_s: Option<f64>,
    pub reader_complete_s: Vec<Option<f64>>,
    pub reader_text_matches: Vec<bool>,
    pub reader_text_len: Vec<usize>,
    /// Reader connections the server ended during the replay, by close code or kind (each
    /// reader reconnected and resynced).
    pub reader_disconnects: BTreeMap<String, u64>,
    /// Up to five distinct examples.
    pub first_disconnects: Vec<String>,
    pub rejoin_failures: Vec<String>,
    pub server_cpu: Option<ServerCpu>,
    pub bench_cpu_ms: f64,
}

impl Report for ReplayReport {
    fn human(&self) -> String {
        let mut out = format!(
            "replay: {} updates ({:.1} MB) of {} into {} with {} readers\n",
            self.updates,
            self.update_bytes as f64 / 1e6,
            self.trace,
            self.url,
            self.readers
        );
        out += &format!("  writer sent all in:  {:.2} s\n", self.writer_send_s);
        if let Some(error) = &self.writer_error {
            out += &format!("  writer error:        {error}\n");
        }
        match (self.complete_s, self.updates_per_s) {
            (Some(complete), Some(rate)) => {
                out += &format!("  all readers done in: {complete:.2} s → {rate:.0} updates/s\n");
            }
            _ => out += "  not every reader completed\n",
        }
        for (index, (complete, matches)) in self
            .reader_complete_s
            .iter()
            .zip(&self.reader_text_matches)
            .enumerate()
        {
            let complete = complete.map_or("never".into(), |secs| format!("{secs:.2} s"));
            out += &format!(
                "    reader {index}: complete after {complete}, text {}\n",
                if *matches { "matches" } else { "DIFFERS" }
            );
        }
        out += &format!(
            "  reader disconnects:  {}\n",
            kinds(&self.reader_disconnects)
        );
        for disconnect in &self.first_disconnects {
            out += &format!("    e.g. {disconnect}\n");
        }
        if let Some(cpu) = &self.server_cpu {
            out += &format!("  {}", cpu.line("replayed update"));
        }
        out += &format!("  load tool CPU: {:.0} ms\n", self.bench_cpu_ms);
        out
    }

    fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if let Some(error) = &self.writer_error {
            failures.push(format!("the writer failed: {error}"));
        }
        for (index, (complete, matches)) in self
            .reader_complete_s
            .iter()
            .zip(&self.reader_text_matches)
            .enumerate()
        {
            if complete.is_none() {
                failures.push(format!(
                    "reader {index} did not receive every update in time (text length {} of {})",
                    self.reader_text_len[index], self.expected_text_len
                ));
            } else if !matches {
                failures.push(format!(
                    "reader {index} has every update but its text differs from the trace's"
                ));
            }
        }
        for failure in &self.rejoin_failures {
            failures.push(format!("a reader could not reconnect: {failure}"));
        }
        failures
    }
}
