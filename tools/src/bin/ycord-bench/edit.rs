//! `edit`: R rooms × C clients, each inserting one character at H Hz; every edit is timed from
//! its sender to each other client of the room.
//!
//! How an edit is matched at a receiver: each client has its own Yjs client ID and inserts one
//! ASCII character per edit, so its k-th edit is the item with clock k. The sender stores the
//! send instant of clock k before sending it; a receiver, after applying whatever frame
//! arrived, reads its document's state vector: every clock of sender S newly covered has just
//! become visible. That holds whatever the server does to the bytes (re-encoding, merging
//! several updates into one, reordering that yrs holds as pending until its dependencies
//! arrive) and counts an edit only once it is really integrated.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::time::Instant;
use ycord_tools::trace::TEXT_NAME;
use yrs::{ClientID, Doc, GetString, ReadTxn, Text, TextRef, Transact};

use crate::client::{Connection, Disconnect, rejoin};
use crate::error::BenchError;
use crate::latency::{Latencies, LatencySummary};
use crate::progress::{Progress, note};
use crate::random::Rng;
use crate::report::{Report, ServerCpu, kinds};
use crate::target::{Target, TargetArgs, parse_secs};
use crate::wire::Endpoint;

/// Most edits one run may plan (send instants are preallocated).
const MAX_PLANNED_EDITS: f64 = 50_000_000.0;

/// Joins running at once while setting up.
const JOIN_CONCURRENCY: usize = 64;

#[derive(Debug, Args)]
#[command(after_help = "Example (the issue's figures):\n  \
    ycord-bench edit --url ws://127.0.0.1:8080 --rooms 20 --clients 5 --hz 10 --seconds 20 --server-pid $(pidof ycord)")]
pub struct EditArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Number of rooms.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rooms: u32,

    /// Clients per room (at least 2: each edit is measured at the other clients).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub clients: u32,

    /// Edits per second per client (one inserted character each, at a random position).
    #[arg(long, default_value_t = 10.0, value_parser = parse_secs)]
    pub hz: f64,

    /// Seconds of editing.
    #[arg(long, default_value_t = 20.0, value_parser = parse_secs)]
    pub seconds: f64,

    /// Seconds to wait after the last edit for deliveries still in flight; the run ends
    /// earlier once every client has every edit.
    #[arg(long, default_value_t = 2.0, value_parser = parse_secs)]
    pub grace: f64,
}

/// What every client of a room shares: who is who, and when each edit was sent.
struct RoomPlan {
    endpoint: Endpoint,
    ids: Vec<ClientID>,
    /// Per client, per clock: nanoseconds since the run's epoch + 1 (0 = not sent).
    sent_at: Vec<Box<[AtomicU64]>>,
    /// Per client: how many edits it made, once it stopped editing (`u64::MAX` before).
    final_edits: Vec<AtomicU64>,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    delivered: AtomicU64,
    disconnects: AtomicU64,
}

/// When a client edits and when it gives up waiting.
#[derive(Clone, Copy)]
struct Schedule {
    epoch: std::time::Instant,
    first_edit: Instant,
    period: Duration,
    edits_end: Instant,
    give_up: Instant,
}

#[derive(Default)]
struct ClientOutcome {
    latencies: Latencies,
    disconnects: Vec<Disconnect>,
    rejoin_failure: Option<String>,
    untimed: u64,
    final_text_len: usize,
}

pub async fn run(args: &EditArgs) -> Result<EditReport, BenchError> {
    let target = Target::new(&args.target)?;
    let per_client = (args.hz * args.seconds).ceil() + 1.0;
    if per_client * f64::from(args.rooms) * f64::from(args.clients) > MAX_PLANNED_EDITS {
        return Err(BenchError::Setup(format!(
            "rooms × clients × hz × seconds exceeds {MAX_PLANNED_EDITS} edits"
        )));
    }
    let per_client = per_client as usize;
    target.probe().await?;
    note(
        target.quiet,
        format_args!(
            "edit: joining {} rooms × {} clients at {} (rooms {}-*)",
            args.rooms, args.clients, target.url, target.room_prefix
        ),
    );

    let mut rng = Rng::from_entropy();
    let plans: Vec<Arc<RoomPlan>> = (0..args.rooms)
        .map(|room| {
            Arc::new(RoomPlan {
                endpoint: target.endpoint(room),
                ids: (0..args.clients)
                    .map(|_| ClientID::new(rng.client_id()))
                    .collect(),
                sent_at: (0..args.clients)
                    .map(|_| (0..per_client).map(|_| AtomicU64::new(0)).collect())
                    .collect(),
                final_edits: (0..args.clients)
                    .map(|_| AtomicU64::new(u64::MAX))
                    .collect(),
            })
        })
        .collect();

    // Join everyone before the clock starts.
    let joins = plans.iter().flat_map(|plan| {
        let options = target.client;
        (0..plan.ids.len()).map(move |me| {
            let plan = plan.clone();
            async move {
                let doc = Doc::with_client_id(plan.ids[me].get());
                Connection::join(&plan.endpoint, doc, &options)
                    .await
                    .map(|(connection, _)| (plan, me, connection))
            }
        })
    });
    let mut joined = Vec::new();
    let mut joining = futures_util::stream::iter(joins).buffer_unordered(JOIN_CONCURRENCY);
    while let Some(result) = joining.next().await {
        joined.push(result?);
    }
    drop(joining);

    let counters = Arc::new(Counters::default());
    let total_clients = joined.len() as u64;
    let expected_rate = args.hz * total_clients as f64;
    let progress = {
        let counters = counters.clone();
        let others = u64::from(args.clients - 1);
        Progress::start(target.quiet, "edit", move || {
            let sent = counters.sent.load(Ordering::Relaxed);
            let delivered = counters.delivered.load(Ordering::Relaxed);
            format!(
                "sent {sent} edits, delivered {delivered}/{} so far, disconnects {}",
                sent * others,
                counters.disconnects.load(Ordering::Relaxed)
            )
        })
    };

    let cpu_before = target.server_cpu()?;
    let own_cpu_before = crate::procfs::own_cpu_time();
    let start = Instant::now();
    let edits_end = start + Duration::from_secs_f64(args.seconds);
    let give_up = edits_end + Duration::from_secs_f64(args.grace);
    let period = Duration::from_secs_f64(1.0 / args.hz);
    let epoch = start.into_std();
    let tasks: Vec<_> = joined
        .into_iter()
        .map(|(plan, me, connection)| {
            // Spread the clients' phases over one period so that edits do not come in bursts.
            let schedule = Schedule {
                epoch,
                first_edit: start + period.mul_f64(rng.unit()),
                period,
                edits_end,
                give_up,
            };
            let client = ClientTask {
                plan,
                me,
                schedule,
                counters: counters.clone(),
                options: target.client,
                rng: Rng::new(rng.next_u64()),
            };
            tokio::spawn(client.run(connection))
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(
            task.await
                .map_err(|error| BenchError::Setup(format!("a client task failed: {error}")))?,
        );
    }
    let wall = start.elapsed();
    let cpu_after = target.server_cpu()?;
    let own_cpu = crate::procfs::own_cpu_time().saturating_sub(own_cpu_before);
    progress.stop().await;

    let mut latencies = Latencies::default();
    let mut disconnects: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_disconnects = Vec::new();
    let mut rejoin_failures = Vec::new();
    let mut untimed = 0;
    for outcome in &outcomes {
        latencies.merge(&outcome.latencies);
        untimed += outcome.untimed;
        for disconnect in &outcome.disconnects {
            *disconnects.entry(disconnect.kind()).or_default() += 1;
            let described = disconnect.to_string();
            if first_disconnects.len() < 5 && !first_disconnects.contains(&described) {
                first_disconnects.push(described);
            }
        }
        rejoin_failures.extend(outcome.rejoin_failure.clone());
    }
    let edits_sent = counters.sent.load(Ordering::Relaxed);
    let delivered = counters.delivered.load(Ordering::Relaxed);
    let expected = edits_sent * u64::from(args.clients - 1);
    let server_cpu = match (target.server, cpu_before, cpu_after) {
        (Some(server), Some(before), Some(after)) => Some(ServerCpu::new(
            server.pid(),
            after.saturating_sub(before),
            wall,
            delivered,
            target.server_rss_kb()?.unwrap_or(0),
        )),
        _ => None,
    };
    let text_lengths: Vec<usize> = outcomes.iter().map(|o| o.final_text_len).collect();
    Ok(EditReport {
        url: target.url.clone(),
        room_prefix: target.room_prefix.clone(),
        rooms: args.rooms,
        clients_per_room: args.clients,
        hz: args.hz,
        seconds: args.seconds,
        edits_sent,
        edits_per_s: edits_sent as f64 / args.seconds,
        edits_per_s_planned: expected_rate,
        expected_deliveries: expected,
        delivered,
        delivery_ratio: if expected == 0 {
            1.0
        } else {
            delivered as f64 / expected as f64
        },
        latency: latencies.summary(),
        untimed_deliveries: untimed,
        disconnects,
        first_disconnects,
        rejoin_failures,
        wall_s: wall.as_secs_f64(),
        server_cpu,
        bench_cpu_ms: own_cpu.as_secs_f64() * 1000.0,
        min_text_len: text_lengths.iter().copied().min().unwrap_or(0),
    })
}

/// One client: edits on its schedule, applies what arrives, times other clients' edits.
struct ClientTask {
    plan: Arc<RoomPlan>,
    me: usize,
    schedule: Schedule,
    counters: Arc<Counters>,
    options: crate::client::ClientOptions,
    rng: Rng,
}

impl ClientTask {
    async fn run(mut self, mut connection: Connection) -> ClientOutcome {
        let doc = connection.doc().clone();
        let text = doc.get_or_insert_text(TEXT_NAME);
        let mut outcome = ClientOutcome::default();
        let mut covered = vec![0u64; self.plan.ids.len()];
        let mut next_edit = Some(self.schedule.first_edit);
        let mut edits = 0u64;
        loop {
            if next_edit.is_none() && self.has_everything(&covered) {
                break;
            }
            let disconnect = tokio::select! {
                _ = tokio::time::sleep_until(next_edit.unwrap_or(self.schedule.give_up)), if next_edit.is_some() => {
                    let at = next_edit.unwrap_or(self.schedule.give_up);
                    next_edit = Some(at + self.schedule.period).filter(|next| *next < self.schedule.edits_end);
                    let sent = match self.edit(&doc, &text) {
                        Some(update) => {
                            edits += 1;
                            self.counters.sent.fetch_add(1, Ordering::Relaxed);
                            connection.send_update(&update).await.err()
                        }
                        None => {
                            next_edit = None;
                            None
                        }
                    };
                    if next_edit.is_none() {
                        self.plan.final_edits[self.me].store(edits, Ordering::Release);
                    }
                    sent
                }
                received = connection.recv() => match received {
                    Ok(changed) => {
                        if changed {
                            self.account(&doc, &mut covered, &mut outcome);
                        }
                        None
                    }
                    Err(disconnect) => Some(disconnect),
                },
                _ = tokio::time::sleep_until(self.schedule.give_up) => break,
            };
            if let Some(disconnect) = disconnect {
                self.counters.disconnects.fetch_add(1, Ordering::Relaxed);
                outcome.disconnects.push(disconnect);
                // Like y-websocket: reconnect and resync; edits made meanwhile are pushed by
                // the SyncStep2 answering the server's SyncStep1.
                match rejoin(
                    &self.plan.endpoint,
                    &doc,
                    &self.options,
                    self.schedule.give_up,
                )
                .await
                {
                    Ok(rejoined) => {
                        connection = rejoined;
                        self.account(&doc, &mut covered, &mut outcome);
                    }
                    Err(error) => {
                        outcome.rejoin_failure = Some(error.to_string());
                        if next_edit.is_some() {
                            self.plan.final_edits[self.me].store(edits, Ordering::Release);
                        }
                        outcome.final_text_len = text.get_string(&doc.transact()).len();
                        return outcome;
                    }
                }
            }
        }
        if next_edit.is_some() {
            self.plan.final_edits[self.me].store(edits, Ordering::Release);
        }
        outcome.final_text_len = text.get_string(&doc.transact()).len();
        connection.close().await;
        outcome
    }

    /// Inserts one character at a random position; records the send instant of its clock.
    fn edit(&mut self, doc: &Doc, text: &TextRef) -> Option<Vec<u8>> {
        let (clock, update) = {
            let mut txn = doc.transact_mut();
            let clock = txn.state_vector().get(&self.plan.ids[self.me]) as usize;
            if clock >= self.plan.sent_at[self.me].len() {
                return None;
            }
            let length = text.len(&txn);
            let position = self.rng.below(u64::from(length) + 1) as u32;
            let character = char::from(b'a' + (clock % 26) as u8);
            text.insert(&mut txn, position, character.encode_utf8(&mut [0; 4]));
            (clock, txn.encode_update_v1())
        };
        let now = self.schedule.epoch.elapsed().as_nanos() as u64 + 1;
        self.plan.sent_at[self.me][clock].store(now, Ordering::Release);
        Some(update)
    }

    /// Counts the other clients' edits that became visible since the last call.
    fn account(&self, doc: &Doc, covered: &mut [u64], outcome: &mut ClientOutcome) {
        let now = self.schedule.epoch.elapsed().as_nanos() as u64;
        let state_vector = doc.transact().state_vector();
        let mut delivered = 0;
        for (sender, id) in self.plan.ids.iter().enumerate() {
            if sender == self.me {
                continue;
            }
            let clock = u64::from(state_vector.get(id));
            while covered[sender] < clock {
                let sent = usize::try_from(covered[sender])
                    .ok()
                    .and_then(|index| self.plan.sent_at[sender].get(index))
                    .map(|sent| sent.load(Ordering::Acquire))
                    .unwrap_or(0);
                if sent == 0 {
                    outcome.untimed += 1;
                } else {
                    outcome
                        .latencies
                        .record(Duration::from_nanos(now.saturating_sub(sent - 1)));
                }
                covered[sender] += 1;
                delivered += 1;
            }
        }
        self.counters
            .delivered
            .fetch_add(delivered, Ordering::Relaxed);
    }

    /// Whether every other client stopped editing and all its edits arrived here.
    fn has_everything(&self, covered: &[u64]) -> bool {
        self.plan
            .final_edits
            .iter()
            .enumerate()
            .filter(|(sender, _)| *sender != self.me)
            .all(|(sender, edits)| {
                let edits = edits.load(Ordering::Acquire);
                edits != u64::MAX && covered[sender] >= edits
            })
    }
}

#[derive(Debug, Serialize)]
pub struct EditReport {
    pub url: String,
    pub room_prefix: String,
    pub rooms: u32,
    pub clients_per_room: u32,
    pub hz: f64,
    pub seconds: f64,
    pub edits_sent: u64,
    pub edits_per_s: f64,
    pub edits_per_s_planned: f64,
    /// Edits × (clients per room − 1): every other client should receive every edit.
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub delivery_ratio: f64,
    /// From the sender's send to the edit being applied at another client.
    pub latency: LatencySummary,
    /// Deliveries whose send instant was unknown (should be 0).
    pub untimed_deliveries: u64,
    /// Connections that ended during the run, by close code or kind; each client reconnected.
    pub disconnects: BTreeMap<String, u64>,
    /// Up to five distinct examples.
    pub first_disconnects: Vec<String>,
    pub rejoin_failures: Vec<String>,
    pub wall_s: f64,
    pub server_cpu: Option<ServerCpu>,
    /// CPU time this load tool used (it shares the machine with a local server).
    pub bench_cpu_ms: f64,
    /// Shortest final text among the clients (each holds every edit of its room).
    pub min_text_len: usize,
}

impl Report for EditReport {
    fn human(&self) -> String {
        let mut out = format!(
            "edit: {} rooms × {} clients × {} Hz for {} s against {} (rooms {}-*)\n",
            self.rooms, self.clients_per_room, self.hz, self.seconds, self.url, self.room_prefix
        );
        out += &format!(
            "  edits sent:   {} ({:.1}/s, planned {:.1}/s)\n",
            self.edits_sent, self.edits_per_s, self.edits_per_s_planned
        );
        out += &format!(
            "  delivered:    {} of {} expected ({:.3}%)\n",
            self.delivered,
            self.expected_deliveries,
            self.delivery_ratio * 100.0
        );
        out += &format!("  latency:      {}\n", self.latency);
        out += &format!("  disconnects:  {}\n", kinds(&self.disconnects));
        for disconnect in &self.first_disconnects {
            out += &format!("    e.g. {disconnect}\n");
        }
        if let Some(cpu) = &self.server_cpu {
            out += &format!("  {}", cpu.line("delivered update"));
        }
        out += &format!(
            "  load tool CPU: {:.0} ms over {:.1} s\n",
            self.bench_cpu_ms, self.wall_s
        );
        out
    }

    fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.delivered < self.expected_deliveries {
            failures.push(format!(
                "{} of {} deliveries missing after the grace period",
                self.expected_deliveries - self.delivered,
                self.expected_deliveries
            ));
        }
        for failure in &self.rejoin_failures {
            failures.push(format!("a client could not reconnect: {failure}"));
        }
        failures
    }
}
