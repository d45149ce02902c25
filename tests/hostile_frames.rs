//! Frames built to make the server work: thousands of requests packed in one frame, and
//! frames of a few requests sent faster than any client would. Each is refused with 1008 and
//! counted, the server's memory stays bounded while it is handled (the server runs in this
//! process: its resident set is this test's), and an honest writer and reader in the same room
//! keep editing meanwhile. Stock clients' busiest traffic passes untouched.
//!
//! The tests print the attack's cost (CPU seconds of this process, peak resident growth).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Client, TestServer, WAIT, text};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use ycord::protocol;
use yrs::encoding::write::Write;
use yrs::updates::encoder::Encode;
use yrs::{StateVector, Text};

/// Messages in each hostile frame.
const MESSAGES: usize = 20_000;

/// How much the server's resident set may grow while it handles one hostile frame. Before
/// replies were sent as they were made, the 20,000-request frames grew it by 600-800 MiB.
const MAX_RSS_GROWTH: u64 = 96 << 20;

/// One test at a time: they measure this process's memory.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn limit_hits(server: &TestServer, reason: &str) -> f64 {
    server.metric(&format!("ycord_limit_hits_total{{reason=\"{reason}\"}}"))
}

/// This process's resident set (the server runs in it), in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// CPU time this process used so far (user and system), in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on every Linux configuration in use.
    ticks as f64 / 100.0
}

/// Samples the resident set every few milliseconds, keeping the peak, until stopped.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
    baseline: u64,
    cpu_before: f64,
    started: Instant,
}

impl RssSampler {
    fn start() -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let baseline = rss_bytes();
        let peak = Arc::new(AtomicU64::new(baseline));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        RssSampler {
            stop,
            peak,
            thread,
            baseline,
            cpu_before: cpu_seconds(),
            started: Instant::now(),
        }
    }

    /// Stops sampling; prints the attack's cost and returns the peak growth in bytes.
    fn finish(self, what: &str) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        let growth = self
            .peak
            .load(Ordering::Relaxed)
            .saturating_sub(self.baseline);
        eprintln!(
            "{what}: {:.2} s CPU, {:.2} s wall, peak RSS growth {:.1} MiB (baseline {:.1} MiB)",
            cpu_seconds() - self.cpu_before,
            self.started.elapsed().as_secs_f64(),
            growth as f64 / f64::from(1 << 20),
            self.baseline as f64 / f64::from(1 << 20),
        );
        growth
    }
}

/// A hostile connection: sends crafted frames, reads and drops whatever comes back (so that
/// the send timeout is not what stops it), and records the close frame.
struct Attacker {
    sink: futures_util::stream::SplitSink<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        Message,
    >,
    /// Bytes of binary frames received so far.
    received: Arc<AtomicU64>,
    reader: tokio::task::JoinHandle<Option<(u16, String)>>,
}

impl Attacker {
    async fn connect(server: &TestServer, room: &str) -> Attacker {
        let (socket, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(server.room_url(room)),
        )
        .await
        .unwrap()
        .unwrap();
        let (sink, mut stream) = socket.split();
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let reader = tokio::spawn(async move {
            let mut close = None;
            while let Some(Ok(message)) = stream.next().await {
                match message {
                    Message::Binary(frame) => {
                        counter.fetch_add(frame.len() as u64, Ordering::Relaxed);
                    }
                    Message::Close(frame) => {
                        close = frame.map(|frame| (u16::from(frame.code), frame.reason.to_string()))
                    }
                    _ => {}
                }
            }
            close
        });
        Attacker {
            sink,
            received,
            reader,
        }
    }

    /// Sends one frame; `false` if the server already closed the connection.
    async fn send(&mut self, frame: Vec<u8>) -> bool {
        self.sink.send(Message::binary(frame)).await.is_ok()
    }

    /// Waits (boundedly) for the server to close the connection: how many reply bytes came
    /// back, and the close frame (`None`: not closed in time, or closed without one).
    async fn closed(self) -> (u64, Option<(u16, String)>) {
        let Attacker {
            sink,
            received,
            reader,
        } = self;
        let close = tokio::time::timeout(WAIT, reader)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        drop(sink);
        (received.load(Ordering::Relaxed), close)
    }
}

fn frame_of(message: &[u8], count: usize) -> Vec<u8> {
    message.repeat(count)
}

/// A SyncStep1 with a non-empty state vector (one client the room does not know), which the
/// shared reply for empty state vectors does not serve: each costs an encode of the document.
fn sync_step1() -> Vec<u8> {
    let mut state_vector = StateVector::default();
    state_vector.set_max(yrs::ClientID::new(987_654), 1);
    protocol::encode_sync_step1(&state_vector.encode_v1()).to_vec()
}

fn awareness_update(client: u64, clock: u32, json: &str) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.write_var(1u32);
    payload.write_var(client);
    payload.write_var(clock);
    payload.write_string(json);
    protocol::encode_awareness(&payload).to_vec()
}

/// A writer and a reader in `room`, the room holding a text of `size` characters.
async fn honest_pair(server: &TestServer, room: &str, size: usize) -> (Client, Client) {
    let writer = Client::connect(server, room).await;
    writer.append_text("text", &"x".repeat(size)).await;
    let reader = Client::connect(server, room).await;
    reader.wait_text("text", &text(&writer.doc, "text")).await;
    (writer, reader)
}

/// The writer's next edit reaches the reader.
async fn still_editing(writer: &Client, reader: &Client, mark: &str) {
    writer.append_text("text", mark).await;
    reader
        .wait_until(|_, doc| text(doc, "text").ends_with(mark))
        .await;
}

/// Sends one hostile frame of `MESSAGES` copies of `message` while the honest pair edits, and
/// checks the outcome: closed with 1008, counted under `reason`, memory bounded.
async fn one_frame_attack(
    server: &TestServer,
    pair: &(Client, Client),
    what: &str,
    message: &[u8],
    reason: &str,
) {
    let mut attacker = Attacker::connect(server, "doc").await;
    let frame = frame_of(message, MESSAGES);
    let sampler = RssSampler::start();
    attacker.send(frame).await;
    still_editing(&pair.0, &pair.1, "during").await;
    let (reply_bytes, close) = attacker.closed().await;
    let growth = sampler.finish(what);
    eprintln!("{what}: {reply_bytes} reply bytes sent back");
    let (code, close_reason) = close.expect("a close frame");
    assert_eq!(code, 1008, "reason: {close_reason}");
    assert_eq!(limit_hits(server, reason), 1.0, "{close_reason}");
    assert!(
        growth < MAX_RSS_GROWTH,
        "{what} grew the resident set by {} MiB",
        growth >> 20
    );
    still_editing(&pair.0, &pair.1, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_20000_sync_requests_is_refused_with_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    let pair = honest_pair(&server, "doc", 40_000).await;
    one_frame_attack(
        &server,
        &pair,
        "20,000 SyncStep1 against a 40 KB document",
        &sync_step1(),
        "messages_per_frame",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_20000_awareness_queries_is_refused_with_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    let pair = honest_pair(&server, "doc", 1_000).await;
    // 32 KB of presence state in the room: each query is answered with all of it.
    let state = format!(r#"{{"user":{{"name":"{}"}}}}"#, "a".repeat(32_000));
    pair.0.set_awareness(1001, 1, &state).await;
    pair.1.wait_awareness(1001, Some(&state)).await;
    one_frame_attack(
        &server,
        &pair,
        "20,000 QueryAwareness against 32 KB of presence",
        &[3],
        "messages_per_frame",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_20000_awareness_updates_is_refused_with_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    let pair = honest_pair(&server, "doc", 1_000).await;
    let mut attacker = Attacker::connect(&server, "doc").await;
    let frame: Vec<u8> = (1..=MESSAGES as u32)
        .flat_map(|clock| awareness_update(666, clock, r#"{"cursor":1}"#))
        .collect();
    let sampler = RssSampler::start();
    attacker.send(frame).await;
    still_editing(&pair.0, &pair.1, "during").await;
    let (_, close) = attacker.closed().await;
    let growth = sampler.finish("20,000 awareness updates");
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1008, "reason: {reason}");
    assert_eq!(limit_hits(&server, "messages_per_frame"), 1.0);
    assert!(growth < MAX_RSS_GROWTH, "grew by {} MiB", growth >> 20);
    // The honest members still exchange presence, and the attacker's state went with it.
    pair.0.set_awareness(1001, 1, r#"{"here":true}"#).await;
    pair.1.wait_awareness(1001, Some(r#"{"here":true}"#)).await;
    pair.1.wait_awareness(666, None).await;
    still_editing(&pair.0, &pair.1, "after").await;
}

/// Frames of a few messages each (fewer than a frame may hold), far more of them than any
/// budget's burst: every kind is metered per second, not only per frame. Returns the reply
/// bytes that came back before the close, and the close frame.
async fn flood(
    server: &TestServer,
    message: &[u8],
    per_frame: usize,
    reason: &str,
) -> (u64, u16, String) {
    let mut attacker = Attacker::connect(server, "doc").await;
    let frame = frame_of(message, per_frame);
    for _ in 0..2_000 {
        if !attacker.send(frame.clone()).await || limit_hits(server, reason) > 0.0 {
            break;
        }
    }
    let (received, close) = attacker.closed().await;
    let (code, close_reason) = close.expect("a close frame");
    assert_eq!(limit_hits(server, reason), 1.0, "{close_reason}");
    assert_eq!(limit_hits(server, "messages_per_frame"), 0.0);
    (received, code, close_reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_kind_is_metered_per_second() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    let pair = honest_pair(&server, "doc", 40_000).await;
    pair.0.set_awareness(1001, 1, r#"{"user":"writer"}"#).await;
    pair.1
        .wait_awareness(1001, Some(r#"{"user":"writer"}"#))
        .await;

    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("SyncStep1", sync_step1(), "sync_step1_rate"),
        ("QueryAwareness", vec![3], "query_awareness_rate"),
        (
            "awareness",
            // The same state over and over: the room ignores all but the first, but each
            // is still decoded and metered.
            awareness_update(777, 1, r#"{"cursor":1}"#),
            "awareness_rate",
        ),
    ];
    for (what, message, reason) in cases {
        let sampler = RssSampler::start();
        let (_, code, close_reason) = flood(&server, &message, 8, reason).await;
        sampler.finish(what);
        assert_eq!(code, 1008, "{what}: {close_reason}");
        assert!(
            close_reason.contains("rate limit"),
            "{what}: {close_reason}"
        );
        still_editing(&pair.0, &pair.1, what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_replies_are_metered_in_bytes() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    // 4 MB of text: the reply budget's burst (80 MiB) covers about 20 replies, fewer than the
    // count budget's 50.
    let pair = honest_pair(&server, "doc", 4 << 20).await;
    let sampler = RssSampler::start();
    let (received, code, close_reason) = flood(&server, &sync_step1(), 1, "reply_bytes").await;
    sampler.finish("SyncStep1 against a 4 MiB document");
    assert_eq!(code, 1008, "{close_reason}");
    let replies = received / (4 << 20);
    assert!(
        (10..50).contains(&replies),
        "refused after {replies} replies"
    );
    assert_eq!(limit_hits(&server, "sync_step1_rate"), 0.0);
    still_editing(&pair.0, &pair.1, "after").await;
}

/// What a stock y-websocket client sends at its busiest, faster than it ever would: a
/// SyncStep1 per connect and resync, an awareness update per cursor move, a few queries. None
/// of it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_stock_client_is_never_refused() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    let pair = honest_pair(&server, "doc", 40_000).await;
    let client = Client::connect(&server, "doc").await;
    for resync in 0..5 {
        client.send_sync_step1().await;
        client.send_raw(vec![3]).await;
        for clock in 0..60 {
            let json = format!(r#"{{"cursor":{{"anchor":{resync},"head":{clock}}}}}"#);
            client
                .set_awareness(4242, resync * 60 + clock + 1, &json)
                .await;
        }
    }
    let last = r#"{"cursor":{"anchor":4,"head":59}}"#;
    pair.1.wait_awareness(4242, Some(last)).await;
    let text_ref = client.doc.get_or_insert_text("text");
    client
        .edit(|txn| {
            let len = text_ref.len(txn);
            text_ref.insert(txn, len, "mine")
        })
        .await;
    pair.1
        .wait_until(|_, doc| text(doc, "text").ends_with("mine"))
        .await;
    assert!(!client.ended());
    let hits: f64 = server
        .server()
        .metrics()
        .render()
        .lines()
        .filter(|line| line.starts_with("ycord_limit_hits_total"))
        .map(|line| line.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(hits, 0.0);
}

/// An awareness update setting `json` for each of `clients` at `clock`.
fn awareness_of(clients: impl IntoIterator<Item = u64>, clock: u32, json: &str) -> Vec<u8> {
    let clients: Vec<u64> = clients.into_iter().collect();
    let mut payload = Vec::new();
    payload.write_var(clients.len() as u32);
    for client in clients {
        payload.write_var(client);
        payload.write_var(clock);
        payload.write_string(json);
    }
    protocol::encode_awareness(&payload).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cannot_overwrite_or_remove_another_connections_presence() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    let alice = Client::connect(&server, "doc").await;
    let mallory = Client::connect(&server, "doc").await;
    let watcher = Client::connect(&server, "doc").await;
    alice.set_awareness(1001, 1, r#"{"user":"alice"}"#).await;
    watcher
        .wait_awareness(1001, Some(r#"{"user":"alice"}"#))
        .await;
    mallory
        .wait_awareness(1001, Some(r#"{"user":"alice"}"#))
        .await;

    // Mallory overwrites Alice's state, then removes it, then sets her own in the same
    // message as another try at Alice's.
    mallory
        .set_awareness(1001, 5, r#"{"user":"mallory"}"#)
        .await;
    mallory.set_awareness(1001, 6, "null").await;
    mallory
        .send_raw(awareness_of([1001, 1002], 7, r#"{"user":"mallory"}"#))
        .await;
    // Her own state arrives, so everything before it was handled.
    watcher
        .wait_awareness(1002, Some(r#"{"user":"mallory"}"#))
        .await;
    assert_eq!(
        watcher.awareness_state(1001).as_deref(),
        Some(r#"{"user":"alice"}"#)
    );
    assert_eq!(
        server.metric("ycord_rejected_messages_total{reason=\"awareness_not_owned\"}"),
        3.0
    );
    // Alice still controls her state; once she is gone the ID is free.
    alice
        .set_awareness(1001, 2, r#"{"user":"alice","moved":1}"#)
        .await;
    watcher
        .wait_awareness(1001, Some(r#"{"user":"alice","moved":1}"#))
        .await;
    alice.close().await;
    watcher.wait_awareness(1001, None).await;
    mallory
        .set_awareness(1001, 9, r#"{"user":"mine now"}"#)
        .await;
    watcher
        .wait_awareness(1001, Some(r#"{"user":"mine now"}"#))
        .await;
    assert!(!mallory.ended());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_controls_at_most_eight_awareness_ids() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    let greedy = Client::connect(&server, "doc").await;
    let watcher = Client::connect(&server, "doc").await;
    greedy
        .send_raw(awareness_of(1..=20, 1, r#"{"user":"many"}"#))
        .await;
    greedy.set_awareness(100, 1, r#"{"user":"one more"}"#).await;
    let deadline = Instant::now() + WAIT;
    while limit_hits(&server, "awareness_clients") < 2.0 {
        assert!(
            Instant::now() < deadline,
            "both messages over the limit are counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let claimed = |watcher: &Client| {
        (1..=20)
            .chain([100])
            .filter(|id| watcher.awareness_state(*id).is_some())
            .count()
    };
    watcher
        .wait_for("eight states", |watcher| claimed(watcher) == 8)
        .await;
    assert_eq!(watcher.awareness_state(100), None);
    // Its states go when it leaves.
    greedy.close().await;
    watcher
        .wait_for("the states removed", |watcher| claimed(watcher) == 0)
        .await;
}
