//! A member's update queue is bounded in bytes, not only in frames: a client that stops
//! reading while large updates arrive is closed with 1013 once about
//! `ycord::room::UPDATE_QUEUE_BYTES` wait for it (plus what the kernel buffers), and the
//! server's memory stays bounded meanwhile. With frames alone as the bound, the room would keep
//! 4096 frames of up to 64 MiB for it.

#![allow(clippy::unwrap_used)]

mod common;

use common::TestServer;
use futures_util::SinkExt;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use ycord::protocol;
use ycord::room::UPDATE_QUEUE_BYTES;
use yrs::{Doc, GetString, Text, Transact};

/// Size of each update.
const UPDATE_BYTES: usize = 1 << 20;
/// Updates posted to the room whose stalled client must be closed: twice the byte bound.
const CLOSE_UPDATES: usize = 2 * (UPDATE_QUEUE_BYTES / UPDATE_BYTES);
/// Updates posted to a room without members before memory is measured.
const WARM_UP_UPDATES: usize = 64;
/// Updates posted while memory is measured: eight times the byte bound.
const MEMORY_UPDATES: usize = 8 * (UPDATE_QUEUE_BYTES / UPDATE_BYTES);

/// What the kernel may buffer for the stalled client beyond the queue: the server's send
/// buffer (autotuned up to 4 MiB, `net.ipv4.tcp_wmem`), its small receive buffer, and
/// tungstenite's write buffer, with a margin.
const KERNEL_SLACK_BYTES: usize = 8 << 20;

/// Resident memory of this process (the server runs in it), from `/proc/self/status`.
fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Posts `count` updates to `room` through the HTTP API (no echo to hold in this process).
/// Each inserts a new 1 MiB piece and deletes the previous one, so that the document itself
/// stays about 1 MiB while every update is a 1 MiB frame for the room's members. Returns the
/// peak RSS seen.
async fn post_updates(
    http: &reqwest::Client,
    server: &TestServer,
    room: &str,
    count: usize,
) -> usize {
    let url = format!("http://{}/api/rooms/{room}/update", server.addr());
    let writer = Doc::with_client_id(42);
    let text = writer.get_or_insert_text("text");
    let mut peak = rss_bytes();
    for index in 0..count {
        let update = {
            let mut txn = writer.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, &piece(index));
            text.remove_range(&mut txn, 0, len);
            txn.encode_update_v1()
        };
        let response = http.post(&url).body(update).send().await.unwrap();
        assert!(response.status().is_success(), "{response:?}");
        peak = peak.max(rss_bytes());
    }
    assert_eq!(text.get_string(&writer.transact()), piece(count - 1));
    peak
}

/// The `index`th piece: 1 MiB of one letter.
fn piece(index: usize) -> String {
    char::from(b'a' + (index % 26) as u8)
        .to_string()
        .repeat(UPDATE_BYTES)
}

/// A WebSocket client of `room` with a small receive buffer (so that the kernel does not absorb
/// megabytes on its behalf), which completes the handshake, says SyncStep1 and then is not
/// polled until the test reads it.
async fn stalled_client(
    server: &TestServer,
    room: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let stream = socket.connect(server.addr()).await.unwrap();
    let (mut client, _) = tokio_tungstenite::client_async(server.room_url(room), stream)
        .await
        .unwrap();
    client
        .send(Message::binary(protocol::encode_sync_step1(&[0]).to_vec()))
        .await
        .unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_closed_after_about_the_byte_bound_and_memory_stays_bounded() {
    let server = TestServer::start().await;
    let http = common::http();

    // Twice the bound reaches a client that does not read; it then reads (before the server's
    // send timeout gives up on it) what was queued or buffered for it, and the close.
    let mut stalled = stalled_client(&server, "closed").await;
    post_updates(&http, &server, "closed", CLOSE_UPDATES).await;
    let (_, bytes, close) = common::read_to_end(&mut stalled).await;
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1013, "reason: {reason}");
    assert!(
        bytes <= UPDATE_QUEUE_BYTES + KERNEL_SLACK_BYTES,
        "the stalled client received {} MiB before its close",
        bytes >> 20
    );
    let state = http
        .get(format!(
            "http://{}/api/rooms/closed/state?format=json",
            server.addr()
        ))
        .send()
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&state.bytes().await.unwrap()).unwrap();
    assert_eq!(json["text"], piece(CLOSE_UPDATES - 1), "the room is whole");

    // Memory: the same traffic first goes to a room nobody is in, so that what the document,
    // the store and the allocator keep for it is counted before a stalled client's room gets
    // eight times the bound.
    post_updates(&http, &server, "warm-up", WARM_UP_UPDATES).await;
    let _stalled = stalled_client(&server, "memory").await;
    let baseline = rss_bytes();
    let peak = post_updates(&http, &server, "memory", MEMORY_UPDATES).await;
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "{} MiB posted to a stalled client's room: RSS {} MiB before, peak {} MiB (+{} MiB)",
        (MEMORY_UPDATES * UPDATE_BYTES) >> 20,
        baseline >> 20,
        peak >> 20,
        growth >> 20
    );
    // Generous: the queue bound, the kernel's share, and what the document, the store and the
    // allocator take for another room. Without the byte bound the stalled client's queue alone
    // would hold all of the 128 MiB.
    assert!(
        growth < 6 * UPDATE_QUEUE_BYTES,
        "RSS grew by {} MiB while {} MiB were posted",
        growth >> 20,
        (MEMORY_UPDATES * UPDATE_BYTES) >> 20
    );
}
