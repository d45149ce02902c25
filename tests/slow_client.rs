//! A client that stops reading must not hold back the room: the writer and the other readers
//! carry on, the slow client is dropped and closed with 1013 (so that it resyncs), and
//! connections elsewhere are unaffected.

mod common;

use common::{Client, TestServer, text};
use futures_util::SinkExt;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use ycord::protocol;

/// Updates the writer sends while the slow client does not read, and the size of each.
///
/// The room queues at most `ycord::room::UPDATE_QUEUE_CAPACITY` frames per member and drops a
/// member whose queue is full. Before that queue fills, the kernel absorbs what fits in the
/// server's send buffer (autotuned up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default;
/// about 3 MiB measured on loopback) plus the slow client's receive buffer (kept small below).
/// The queue's capacity plus 8000 frames of 1 KiB overflow all of that with a margin. Small
/// frames keep the total low: the queue counts frames, the kernel counts bytes.
const UPDATES: usize = ycord::room::UPDATE_QUEUE_CAPACITY + 8000;
const UPDATE_BYTES: usize = 1024;

/// The writer waits for the healthy clients to catch up this often, so that they are never a
/// full queue behind (a client that is, however briefly, is dropped by design).
const CHECKPOINT: usize = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_and_holds_nobody_back() {
    let server = TestServer::start().await;
    let writer = Client::connect(&server, "busy").await;
    let reader = Client::connect(&server, "busy").await;
    let elsewhere_a = Client::connect(&server, "quiet").await;
    let elsewhere_b = Client::connect(&server, "quiet").await;

    // The slow client: a real WebSocket with a small receive buffer (so that the kernel does
    // not absorb megabytes on its behalf), which completes the handshake, says SyncStep1 like
    // any client, and then is not polled any more.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let stream = socket.connect(server.addr()).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(server.room_url("busy"), stream)
        .await
        .unwrap();
    slow.send(Message::binary(protocol::encode_sync_step1(&[0]).to_vec()))
        .await
        .unwrap();

    // The slow client reads again as soon as the server has dropped it (the counter goes up
    // just before the close frame is sent), as a client that was only stalled for a while does:
    // it must then find the close code, not a reset.
    let dropped = || server.server().metrics().slow_client_disconnects.get();
    let mut slow = Some(slow);
    let mut slow_reader = None;
    let mut expected = String::new();
    for index in 0..UPDATES {
        let letter = char::from(b'a' + (index % 26) as u8);
        let piece: String = std::iter::repeat_n(letter, UPDATE_BYTES).collect();
        writer.append_text("text", &piece).await;
        expected.push_str(&piece);
        if slow_reader.is_none() && dropped() > 0 {
            let slow = slow.take().expect("the slow client is read once");
            slow_reader = Some(tokio::spawn(common::read_to_end(slow)));
        }
        if (index + 1) % CHECKPOINT == 0 {
            reader.wait_text("text", &expected).await;
            // The writer's echoes: SyncStep1, SyncStep2, then one frame per update.
            let echoed = 2 + index + 1;
            writer
                .wait_for("the writer's echoes", |client| {
                    client.frame_count() >= echoed
                })
                .await;
        }
    }
    // Every other reader gets everything, while the slow client is still not reading.
    reader.wait_text("text", &expected).await;
    assert!(!writer.ended() && !reader.ended());
    // The writer's own connection still works both ways, and other rooms are unaffected.
    reader.append_text("text", "reply").await;
    expected.push_str("reply");
    writer.wait_text("text", &expected).await;
    elsewhere_a.append_text("text", "elsewhere").await;
    elsewhere_b.wait_text("text", "elsewhere").await;

    // Now look at the slow client: whatever was buffered for it, then the close. It must not
    // get the whole room's traffic (it was dropped, not buffered without limit).
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while dropped() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(dropped(), 1, "the slow client was never dropped");
    let slow_reader = match slow_reader {
        Some(reading) => reading,
        None => tokio::spawn(common::read_to_end(slow.take().expect("not read yet"))),
    };
    let (frames, _, close) = slow_reader.await.expect("the slow client's reader");
    assert!(
        frames < UPDATES,
        "the slow client got {frames} of {UPDATES} updates: it was never dropped"
    );
    let (code, reason) = close.expect("the slow client's connection must end with a close frame");
    assert_eq!(code, 1013, "reason: {reason}");
    assert!(!reason.is_empty());

    // Everyone else is still fine, and the room is whole.
    writer.append_text("text", "end").await;
    expected.push_str("end");
    reader.wait_text("text", &expected).await;
    let fresh = Client::connect(&server, "busy").await;
    assert!(text(&fresh.doc, "text") == expected);
    elsewhere_b.append_text("text", "!").await;
    elsewhere_a.wait_text("text", "elsewhere!").await;
}
