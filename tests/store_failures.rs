//! A store that refuses writes (a full disk), on demand: the server says so (close 1011 with
//! "resend", `/readyz` 503, metrics), applies nothing meanwhile, keeps what it applied in
//! memory, recovers by itself once writes pass again, and after a restart every character the
//! client typed is stored.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Client, TestServer, WAIT, get, text};
use reqwest::StatusCode;
use ycord::ServeConfig;
use ycord::store::{FailingStore, RoomStore, SledStore};
use yrs::{Doc, Text};

/// A server on a [`FailingStore`] over the sled store of its data directory.
async fn failing_server(adjust: impl FnOnce(&mut ServeConfig)) -> (TestServer, Arc<FailingStore>) {
    let mut handle = None;
    let server = TestServer::start_with_store(adjust, |config| {
        let sled = SledStore::open(&config.data_dir).unwrap();
        let store = Arc::new(FailingStore::new(Arc::new(sled)));
        handle = Some(store.clone());
        store as Arc<dyn RoomStore>
    })
    .await;
    (server, handle.unwrap())
}

fn http_base(server: &TestServer) -> String {
    format!("http://{}", server.addr())
}

async fn readyz(server: &TestServer) -> StatusCode {
    get(&format!("{}/readyz", http_base(server))).await.0
}

async fn metrics(server: &TestServer) -> String {
    get(&format!("{}/metrics", http_base(server))).await.1
}

/// Waits (bounded) until `/readyz` answers `status`.
async fn wait_ready(server: &TestServer, status: StatusCode) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while readyz(server).await != status {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz did not become {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Appends `tag` + a counter to the text, one update each, until the server closes the
/// socket; returns the close frame.
async fn type_until_closed(client: &Client, tag: &str) -> (u16, String) {
    let root = client.doc.get_or_insert_text("text");
    let deadline = tokio::time::Instant::now() + WAIT;
    for index in 0.. {
        if client.seen.lock().unwrap().ended {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never closed the writer"
        );
        client
            .edit(|txn| {
                let end = root.len(txn);
                root.insert(txn, end, &format!("{tag}{index};"));
            })
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.wait_closed().await.expect("a close frame")
}

/// Types `count` edits and waits until the server echoed the text back.
async fn type_and_confirm(client: &Client, tag: &str, count: usize) {
    let root = client.doc.get_or_insert_text("text");
    for index in 0..count {
        client
            .edit(|txn| {
                let end = root.len(txn);
                root.insert(txn, end, &format!("{tag}{index};"));
            })
            .await;
    }
    // The echo of the last edit: the server applied them all.
    let frames_before = client.frame_count();
    client
        .wait_until(|seen, _| seen.frames.len() > frames_before || seen.ended)
        .await;
}

/// The whole failure and recovery, for whichever writes `fail` switches off.
async fn fails_then_recovers(
    adjust: impl FnOnce(&mut ServeConfig),
    fail: impl Fn(&FailingStore, bool),
    op: &str,
) {
    let (mut server, store) = failing_server(adjust).await;
    let url = server.room_url("doc");
    let client = Client::connect(&server, "doc").await;
    type_and_confirm(&client, "before", 20).await;
    fail(&store, true);
    let (code, reason) = type_until_closed(&client, "during").await;
    assert_eq!(code, 1011, "{reason}");
    assert!(reason.contains("resend"), "{reason}");
    wait_ready(&server, StatusCode::SERVICE_UNAVAILABLE).await;
    let metrics_text = metrics(&server).await;
    assert!(
        metrics_text.contains("ycord_store_failing 1"),
        "{metrics_text}"
    );
    assert!(
        metrics_text.contains(&format!("ycord_store_errors_total{{op=\"{op}\"}}")),
        "{metrics_text}"
    );
    // Nobody joins a room that cannot store what they send: refused, the client retries.
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("joining a failing store must be refused, got {other:?}"),
    }
    fail(&store, false);
    wait_ready(&server, StatusCode::OK).await;
    assert!(metrics(&server).await.contains("ycord_store_failing 0"));
    // The client resends what was refused, and types on.
    let doc: Doc = client.doc.clone();
    client.close().await;
    let client = Client::connect_with_doc(&url, doc).await;
    type_and_confirm(&client, "after", 5).await;
    let typed = text(&client.doc, "text");
    assert!(typed.contains("during0;") && typed.contains("after4;"));
    client.close().await;
    drop(store);
    server.restart().await;
    let fresh = Client::connect(&server, "doc").await;
    assert_eq!(
        text(&fresh.doc, "text"),
        typed,
        "every character the client typed is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_fail_then_recover() {
    fails_then_recovers(|_| {}, FailingStore::fail_appends, "append").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_fail_then_recover() {
    fails_then_recovers(|_| {}, FailingStore::fail_flushes, "flush").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compactions_fail_then_recover() {
    fails_then_recovers(
        |config| config.compact_log_updates = 5,
        FailingStore::fail_compactions,
        "compact",
    )
    .await;
}

/// An idle room whose data cannot be flushed stays in memory until the store recovers; then
/// it is unloaded and its data is on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_is_not_unloaded_before_its_data_is_written() {
    let (mut server, store) = failing_server(|config| config.room_idle_secs = 0).await;
    let client = Client::connect(&server, "doc").await;
    type_and_confirm(&client, "first", 3).await;
    store.fail_flushes(true);
    type_and_confirm(&client, "unflushed", 3).await;
    let typed = text(&client.doc, "text");
    client.close().await;
    wait_ready(&server, StatusCode::SERVICE_UNAVAILABLE).await;
    // The sweeper runs every second and would unload an idle room at once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        metrics(&server).await.contains("ycord_rooms_loaded 1"),
        "the room stays while its data is only in memory"
    );
    store.fail_flushes(false);
    wait_ready(&server, StatusCode::OK).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !metrics(&server).await.contains("ycord_rooms_loaded 0") {
        assert!(tokio::time::Instant::now() < deadline, "never unloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(store);
    server.restart().await;
    let fresh = Client::connect(&server, "doc").await;
    assert_eq!(text(&fresh.doc, "text"), typed);
}
