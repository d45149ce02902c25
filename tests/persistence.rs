//! Persistence on a real sled directory: restarts with the room loaded or already unloaded,
//! idle unload and reload, and compaction of the update log.

mod common;
mod ycord_bin;

use std::time::Duration;

use common::{Client, TestServer, WAIT, get_json, open_store, stored_text, text};
use ycord::store::RoomStore;
use ycord_bin::Ycord;
use yrs::{Doc, Map};

/// Waits until the server's room list no longer shows `room` as loaded (the sweeper unloads
/// an idle room within a second or two); fails after [`WAIT`].
async fn wait_unloaded(server: &TestServer, room: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, list) = get_json(&server.http_url("/api/rooms")).await;
        assert!(status.is_success(), "{status}: {list}");
        let loaded = list["loaded"].as_array().expect("a loaded list");
        if !loaded.iter().any(|entry| entry["room"] == room) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{room:?} is still loaded: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The room's entry in the HTTP API: what is loaded and what is stored.
async fn room_info(server: &TestServer, room: &str) -> serde_json::Value {
    let (status, info) = get_json(&server.http_url(&format!("/api/rooms/{room}"))).await;
    assert!(status.is_success(), "{status}: {info}");
    info
}

/// Makes `count` edits of the text `text` (one update each) and a map entry per edit; returns
/// the expected text.
async fn make_edits(client: &Client, count: usize, tag: &str) -> String {
    let map_ref = client.doc.get_or_insert_map("map");
    let mut expected = text(&client.doc, "text");
    for index in 0..count {
        let piece = format!("{tag}{index};");
        client.append_text("text", &piece).await;
        client
            .edit(|txn| {
                map_ref.insert(txn, format!("{tag}{index}"), index as u32);
            })
            .await;
        expected.push_str(&piece);
    }
    expected
}

fn map_len(client: &Client) -> u32 {
    let map_ref = client.doc.get_or_insert_map("map");
    map_ref.len(&yrs::Transact::transact(&client.doc))
}

#[tokio::test]
async fn edits_made_before_a_restart_are_all_there_after_it() {
    let mut server = TestServer::start().await;
    let writer = Client::connect(&server, "doc").await;
    let observer = Client::connect(&server, "doc").await;
    let expected = make_edits(&writer, 30, "e").await;
    observer.wait_text("text", &expected).await;
    observer
        .wait_for("the map", |client| map_len(client) == 30)
        .await;

    // The room is loaded, with connections, when the server stops.
    server.restart().await;
    let (code, _) = writer
        .wait_closed()
        .await
        .expect("connected clients get a close frame at shutdown");
    assert_eq!(code, 1001);

    let fresh = Client::connect(&server, "doc").await;
    assert_eq!(text(&fresh.doc, "text"), expected);
    assert_eq!(map_len(&fresh), 30);
    assert_eq!(fresh.state_vector(), writer.state_vector());
}

#[tokio::test]
async fn an_idle_room_is_unloaded_and_reloaded_intact() {
    let server = TestServer::start_with(|config| config.room_idle_secs = 1).await;
    let writer = Client::connect(&server, "doc").await;
    let observer = Client::connect(&server, "doc").await;
    let expected = make_edits(&writer, 20, "first").await;
    observer.wait_text("text", &expected).await;
    writer.close().await;
    observer.close().await;
    wait_unloaded(&server, "doc").await;

    // Reloaded from disk.
    let back = Client::connect(&server, "doc").await;
    assert_eq!(text(&back.doc, "text"), expected);
    assert_eq!(map_len(&back), 20);
    // Edits after the reload continue the stored log (sequence numbers must not restart).
    let second = Client::connect(&server, "doc").await;
    let expected = make_edits(&back, 20, "second").await;
    second.wait_text("text", &expected).await;
    back.close().await;
    second.close().await;
    wait_unloaded(&server, "doc").await;

    let again = Client::connect(&server, "doc").await;
    assert_eq!(text(&again.doc, "text"), expected);
    assert_eq!(map_len(&again), 40);
}

#[tokio::test]
async fn edits_survive_an_idle_unload_followed_by_a_restart() {
    let mut server = TestServer::start_with(|config| config.room_idle_secs = 1).await;
    let writer = Client::connect(&server, "doc").await;
    let observer = Client::connect(&server, "doc").await;
    let expected = make_edits(&writer, 25, "u").await;
    observer.wait_text("text", &expected).await;
    writer.close().await;
    observer.close().await;
    wait_unloaded(&server, "doc").await;

    server.restart().await;
    let fresh = Client::connect(&server, "doc").await;
    assert_eq!(text(&fresh.doc, "text"), expected);
    assert_eq!(map_len(&fresh), 25);
}

#[tokio::test]
async fn with_compaction_every_ten_updates_fifty_edits_survive_a_restart() {
    let mut server = TestServer::start_with(|config| config.compact_log_updates = 10).await;
    let writer = Client::connect(&server, "doc").await;
    let observer = Client::connect(&server, "doc").await;
    // 25 text edits and 25 map edits: 50 updates, five compactions' worth.
    let expected = make_edits(&writer, 25, "c").await;
    observer.wait_text("text", &expected).await;
    observer
        .wait_for("the map", |client| map_len(client) == 25)
        .await;

    // Compacted while the server runs, not only when it stops.
    let info = room_info(&server, "doc").await;
    assert!(
        info["snapshot_bytes"].as_u64() > Some(0),
        "never compacted: {info}"
    );
    assert!(info["log_entries"].as_u64() < Some(50), "{info}");

    server.restart().await;
    let fresh = Client::connect(&server, "doc").await;
    assert_eq!(text(&fresh.doc, "text"), expected);
    assert_eq!(map_len(&fresh), 25);

    // More edits on top of the loaded snapshot, then a look at the store itself.
    let more = make_edits(&fresh, 5, "d").await;
    let observer = Client::connect(&server, "doc").await;
    observer.wait_text("text", &more).await;
    server.stop().await;
    let store = open_store(&server.data_dir()).await;
    assert_eq!(stored_text(&store, "doc", "text"), more);
    let stats = store.stats("doc").unwrap();
    assert!(stats.snapshot_bytes > 0, "{stats:?}");
    assert!(stats.log_entries < 50, "{stats:?}");
}

/// What compaction wrote survives a crash: `kill -9` the real binary (no shutdown, no flush,
/// nothing sled does on drop) after the flush window and look at what is stored, then restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_log_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = ["--compact-log-updates", "10", "--flush-ms", "50"];
    let mut server = Ycord::start(&data, &flags).await;
    let writer = Client::connect_with_doc(&server.url("doc"), Doc::new()).await;
    let observer = Client::connect_with_doc(&server.url("doc"), Doc::new()).await;
    // 50 updates: five compactions' worth.
    let expected = make_edits(&writer, 25, "c").await;
    observer.wait_text("text", &expected).await;
    // Then a tail that stays in the log, to be replayed on top of the snapshot. (The pause only
    // makes it likely that the last compaction has finished, so that the tail comes after it;
    // the test passes or fails on a correct server regardless of it.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expected = make_edits(&writer, 1, "tail").await;
    observer.wait_text("text", &expected).await;
    observer
        .wait_for("the map", |client| map_len(client) == 26)
        .await;
    // Ten times the flush window, then the crash.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.crash().await;

    let store = open_store(&data).await;
    let stats = store.stats("doc").unwrap();
    assert!(stats.snapshot_bytes > 0, "never compacted: {stats:?}");
    assert!(
        stats.log_entries < 52,
        "the log holds all 52 updates: {stats:?}"
    );
    // Snapshot plus remaining log is the whole document.
    assert_eq!(stored_text(&store, "doc", "text"), expected);
    drop(store);

    let server = Ycord::start(&data, &flags).await;
    let fresh = Client::connect_with_doc(&server.url("doc"), Doc::new()).await;
    assert_eq!(
        text(&fresh.doc, "text"),
        expected,
        "output:\n{}",
        server.output()
    );
    assert_eq!(map_len(&fresh), 26);
}
