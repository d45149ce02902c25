//! Graceful shutdown in order: nothing is applied once it began, sessions are closed with
//! 1001, then every room's log is written and flushed once. Everything the server acknowledged
//! (echoed) before is on disk afterwards.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Client, TestServer, open_store, stored_text, text};
use ycord::protocol::{self, Inbound};
use yrs::updates::decoder::Decode;
use yrs::{Doc, Text, Transact, Update};

/// The text the client's acknowledged updates make: every Update the server echoed to it,
/// applied in order to an empty document.
fn acknowledged_text(client: &Client) -> String {
    let doc = Doc::new();
    for frame in client.frames() {
        for message in protocol::decode_frame(&frame) {
            if let Ok(Inbound::Update(update)) = message {
                doc.transact_mut()
                    .apply_update(Update::decode_v1(update).unwrap())
                    .unwrap();
            }
        }
    }
    text(&doc, "text")
}

/// With a flush window far longer than the test, only the shutdown writes the update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_applied_right_before_shutdown_is_on_disk_after_it() {
    let mut server = TestServer::start_with(|config| config.flush_ms = 60_000).await;
    let client = Client::connect(&server, "doc").await;
    let frames = client.frame_count();
    client.append_text("text", "last words").await;
    client
        .wait_until(|seen, _| seen.frames.len() > frames)
        .await;
    assert_eq!(acknowledged_text(&client), "last words");
    server.stop().await;
    assert_eq!(client.wait_closed().await.map(|(code, _)| code), Some(1001));
    let store = open_store(&server.data_dir()).await;
    assert_eq!(stored_text(&store, "doc", "text"), "last words");
}

/// Writers that never stop: once `shutdown` returned, no room applies anything more, and
/// everything each writer saw acknowledged is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_applied_once_shutdown_began_and_everything_acknowledged_is_stored() {
    const WRITERS: usize = 4;
    const UPDATES_PER_FRAME: usize = 16;
    let mut server = TestServer::start_with(|config| config.flush_ms = 60_000).await;
    let mut clients = Vec::new();
    for index in 0..WRITERS {
        clients.push(Arc::new(
            Client::connect(&server, &format!("room-{index}")).await,
        ));
    }
    let writers: Vec<_> = clients
        .iter()
        .map(|client| {
            let client = client.clone();
            tokio::spawn(async move {
                let root = client.doc.get_or_insert_text("text");
                for index in 0.. {
                    if client.ended() {
                        return;
                    }
                    // Several updates per frame: a session that went on applying after the
                    // cancel would apply the rest of its frame, and the next ones.
                    let mut frame = Vec::new();
                    for piece in 0..UPDATES_PER_FRAME {
                        let mut txn = client.doc.transact_mut();
                        let end = root.len(&txn);
                        root.insert(&mut txn, end, &format!("{index}.{piece};"));
                        frame.extend_from_slice(&protocol::encode_update(&txn.encode_update_v1()));
                    }
                    client.send_raw(frame).await;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    // Let every writer get going.
    for client in &clients {
        client.wait_until(|seen, _| seen.frames.len() > 20).await;
    }
    let running = server.server.take().unwrap();
    let metrics = running.metrics().clone();
    running.shutdown();
    let broadcast_at_shutdown = metrics.broadcast_frames.get();
    running.wait().await.unwrap();
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(15), writer)
            .await
            .unwrap()
            .unwrap();
    }
    // An update whose critical section was already running when shutdown began may finish:
    // at most one per room (one member each).
    let after = metrics.broadcast_frames.get() - broadcast_at_shutdown;
    assert!(
        after <= WRITERS as u64,
        "{after} updates were applied after shutdown began"
    );
    let store = open_store(&server.data_dir()).await;
    for (index, client) in clients.iter().enumerate() {
        let close = client.wait_closed().await;
        assert_eq!(
            close.as_ref().map(|(code, _)| *code),
            Some(1001),
            "{close:?}"
        );
        let acknowledged = acknowledged_text(client);
        let stored = stored_text(&store, &format!("room-{index}"), "text");
        assert!(
            stored.starts_with(&acknowledged) && !acknowledged.is_empty(),
            "writer {index}: acknowledged {} chars, stored {}",
            acknowledged.len(),
            stored.len()
        );
        assert!(text(&client.doc, "text").starts_with(&stored));
    }
}
