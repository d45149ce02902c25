//! Room isolation: names that are prefixes of each other, percent-encoded names, isolation on
//! disk (after a graceful restart and straight from the store's log), and a hundred rooms at once.

mod common;
mod ycord_bin;

use common::{Client, TestServer, connect_url, open_store, stored_text, text};
use futures_util::future::join_all;
use ycord::store::RoomStore;
use ycord_bin::Ycord;

/// Names that share prefixes, in memory and in the store's keys.
const NAMES: [&str; 5] = ["a", "ab", "a/b", "file:1", "file:10"];

fn content(room: &str) -> String {
    format!("<only in {room}>")
}

/// Connects a writer and an observer to every room, writes each room's own content and waits
/// until every observer has it. Returns (writer, observer) per room, in `NAMES` order.
async fn fill_rooms(url_of: impl Fn(&str) -> String) -> Vec<(Client, Client)> {
    let mut pairs = Vec::new();
    for name in NAMES {
        let writer = connect_url(&url_of(name)).await;
        let observer = connect_url(&url_of(name)).await;
        writer.append_text("text", &content(name)).await;
        pairs.push((writer, observer));
    }
    for (name, (_, observer)) in NAMES.iter().zip(&pairs) {
        observer.wait_text("text", &content(name)).await;
    }
    pairs
}

/// Asserts that a fresh joiner of each room gets exactly that room's content.
async fn assert_each_room_holds_only_its_own(url_of: impl Fn(&str) -> String) {
    for name in NAMES {
        let fresh = connect_url(&url_of(name)).await;
        assert_eq!(text(&fresh.doc, "text"), content(name), "room {name:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_whose_names_are_prefixes_of_each_other_stay_apart() {
    let server = TestServer::start().await;
    let pairs = fill_rooms(|name| server.room_url(name)).await;
    assert_each_room_holds_only_its_own(|name| server.room_url(name)).await;
    // Nothing from another room reached any member meanwhile.
    for (name, (writer, observer)) in NAMES.iter().zip(&pairs) {
        assert_eq!(text(&writer.doc, "text"), content(name));
        assert_eq!(text(&observer.doc, "text"), content(name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percent_encoded_path_names_the_decoded_room() {
    let server = TestServer::start().await;
    let pairs = fill_rooms(|name| server.room_url(name)).await;

    // `/file%3A1` is room `file:1`, `/a%2Fb` is room `a/b`: same document, same members.
    let encoded_colon = connect_url(&format!("{}/file%3A1", server.url())).await;
    assert_eq!(text(&encoded_colon.doc, "text"), content("file:1"));
    let encoded_slash = connect_url(&format!("{}/a%2Fb", server.url())).await;
    assert_eq!(text(&encoded_slash.doc, "text"), content("a/b"));

    encoded_colon.append_text("text", "+colon").await;
    encoded_slash.append_text("text", "+slash").await;
    let file1 = &pairs[3].1;
    let a_slash_b = &pairs[2].1;
    file1
        .wait_text("text", &format!("{}+colon", content("file:1")))
        .await;
    a_slash_b
        .wait_text("text", &format!("{}+slash", content("a/b")))
        .await;

    // The neighbours did not get those edits.
    for (index, name) in NAMES.iter().enumerate() {
        if index == 2 || index == 3 {
            continue;
        }
        let fresh = Client::connect(&server, name).await;
        assert_eq!(text(&fresh.doc, "text"), content(name), "room {name:?}");
        assert_eq!(text(&pairs[index].1.doc, "text"), content(name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_stay_apart_on_disk_after_a_restart() {
    let mut server = TestServer::start().await;
    let pairs = fill_rooms(|name| server.room_url(name)).await;
    drop(pairs);
    server.restart().await;
    assert_each_room_holds_only_its_own(|name| server.room_url(name)).await;

    // And in the store itself, after a graceful stop (snapshots).
    server.stop().await;
    let store = open_store(&server.data_dir()).await;
    let mut stored = store.rooms().unwrap();
    stored.sort();
    let mut expected: Vec<String> = NAMES.iter().map(|name| name.to_string()).collect();
    expected.sort();
    assert_eq!(stored, expected);
    for name in NAMES {
        assert_eq!(stored_text(&store, name, "text"), content(name), "{name:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_stay_apart_in_the_update_log_after_a_crash() {
    // No compaction at all (no graceful shutdown to compact): everything stays in the per-room
    // update log, which the crashed process flushed within its flush window.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = ["--flush-ms", "50"];
    let mut server = Ycord::start(&data, &flags).await;
    let pairs = fill_rooms(|name| server.url(name)).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    server.crash().await;
    drop(pairs);

    let store = open_store(&data).await;
    for name in NAMES {
        let stats = store.stats(name).unwrap();
        assert_eq!(stats.snapshot_bytes, 0, "{name:?} was never compacted");
        assert_eq!(stats.log_entries, 1, "{name:?}");
        assert_eq!(stored_text(&store, name, "text"), content(name), "{name:?}");
    }
    drop(store);

    let server = Ycord::start(&data, &flags).await;
    assert_each_room_holds_only_its_own(|name| server.url(name)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_rooms_at_once_each_get_their_own_text_only() {
    let server = TestServer::start().await;
    // `room-1`, `room-10`..`room-19` share prefixes too.
    let names: Vec<String> = (0..100).map(|index| format!("room-{index}")).collect();
    let pairs = join_all(names.iter().map(|name| {
        let server = &server;
        async move {
            let writer = Client::connect(server, name).await;
            let reader = Client::connect(server, name).await;
            (writer, reader)
        }
    }))
    .await;

    join_all(
        names
            .iter()
            .zip(&pairs)
            .map(|(name, (writer, _))| async move {
                writer.append_text("text", &content(name)).await;
            }),
    )
    .await;
    join_all(
        names
            .iter()
            .zip(&pairs)
            .map(|(name, (_, reader))| async move {
                reader.wait_text("text", &content(name)).await;
            }),
    )
    .await;

    // Once every room has its text, no member of any room has anything else, and newcomers
    // get their room's text only.
    let newcomers = join_all(names.iter().map(|name| Client::connect(&server, name))).await;
    for (index, name) in names.iter().enumerate() {
        let (writer, reader) = &pairs[index];
        assert_eq!(text(&writer.doc, "text"), content(name));
        assert_eq!(text(&reader.doc, "text"), content(name));
        assert_eq!(text(&newcomers[index].doc, "text"), content(name));
    }
}
