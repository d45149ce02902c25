//! Deleting a room is final: its members are closed with 4410 (which stock y-websocket does
//! not retry), a client that comes back with the document cannot bring it back, the HTTP API
//! answers 410 Gone, the tombstone survives a restart, and removing it is the one way to use
//! the name again.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::node::NodeScript;
use common::{Client, TestServer, WAIT, call_json, http, text};
use reqwest::StatusCode;
use serde_json::{Value, json};

use yrs::{Doc, ReadTxn, StateVector, Text, Transact};

/// The close code of a deleted room (`close_code::ROOM_DELETED`).
const ROOM_DELETED: u16 = 4410;

fn api(server: &TestServer, path: &str) -> String {
    format!("http://{}/api/rooms{path}", server.addr())
}

async fn delete(server: &TestServer, room: &str) {
    let (status, body) = call_json(http().delete(api(server, &format!("/{room}")))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "deleted": room }));
}

/// Types `content` and waits for the server's echo: the change is applied in the room.
async fn type_text(client: &Client, content: &str) {
    let before = client.frame_count();
    client.append_text("text", content).await;
    client
        .wait_for("the echo of the edit", |client| {
            client.frame_count() > before
        })
        .await;
}

/// A document holding `content` in its text `text`.
fn doc_with(content: &str) -> Doc {
    let doc = Doc::new();
    doc.get_or_insert_text("text")
        .insert(&mut doc.transact_mut(), 0, content);
    doc
}

/// Connects with `doc` and offers all of it (SyncStep1 and SyncStep2, as a stock client that
/// reconnects does), then waits for the server to close the socket; returns the close code.
async fn rejoin_with(server: &TestServer, room: &str, doc: Doc) -> Option<u16> {
    let client = Client::connect_raw(&server.room_url(room), doc).await;
    client.send_sync_step1().await;
    let closed = client.wait_closed().await.map(|(code, _)| code);
    assert_eq!(client.frame_count(), 0, "a deleted room sends nothing");
    closed
}

/// What the API says about a deleted room: 410 Gone, with when it was deleted.
async fn assert_gone(server: &TestServer, room: &str) {
    let calls = [
        http().get(api(server, &format!("/{room}"))),
        http().get(api(server, &format!("/{room}/state"))),
        http().get(api(server, &format!("/{room}/state?format=json"))),
        http().post(api(server, &format!("/{room}/update"))).body(
            doc_with("resurrected")
                .transact()
                .encode_state_as_update_v1(&StateVector::default()),
        ),
    ];
    for request in calls {
        let (status, body) = call_json(request).await;
        assert_eq!(status, StatusCode::GONE, "{body}");
        assert!(body["deleted_at_ms"].as_u64().unwrap() > 0, "{body}");
    }
}

async fn stored_rooms(server: &TestServer) -> Value {
    let (status, list) = call_json(http().get(api(server, ""))).await;
    assert_eq!(status, StatusCode::OK);
    list["stored"]["rooms"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_room_stays_deleted_until_its_tombstone_is_removed() {
    let mut server = TestServer::start().await;
    let member = Client::connect(&server, "doomed").await;
    type_text(&member, "secret plans").await;
    let bystander = Client::connect(&server, "kept").await;
    type_text(&bystander, "unrelated").await;

    delete(&server, "doomed").await;
    let (code, reason) = member.wait_closed().await.expect("a close frame");
    assert_eq!(code, ROOM_DELETED, "reason: {reason}");
    assert!(!bystander.ended());

    // The member comes back with the whole document, as a stock client would after any other
    // close code: refused before it joins, and nothing is stored.
    assert_eq!(
        rejoin_with(&server, "doomed", member.doc.clone()).await,
        Some(ROOM_DELETED)
    );
    assert_gone(&server, "doomed").await;
    assert_eq!(stored_rooms(&server).await, json!(["kept"]));

    // Deleting again is fine and changes nothing.
    delete(&server, "doomed").await;

    // A restart keeps the tombstone.
    server.restart().await;
    assert_eq!(
        rejoin_with(&server, "doomed", doc_with("after restart")).await,
        Some(ROOM_DELETED)
    );
    assert_gone(&server, "doomed").await;
    assert_eq!(stored_rooms(&server).await, json!(["kept"]));

    // Removing the tombstone is the way to use the name again: a new, empty room.
    let tombstone = api(&server, "/doomed/tombstone");
    let (status, body) = call_json(http().delete(&tombstone)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "undeleted": "doomed" }));
    let (status, _) = call_json(http().delete(&tombstone)).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "only a deleted room has a tombstone"
    );
    let fresh = Client::connect(&server, "doomed").await;
    assert_eq!(text(&fresh.doc, "text"), "");
    type_text(&fresh, "new life").await;
    server.restart().await;
    let back = Client::connect(&server, "doomed").await;
    assert_eq!(text(&back.doc, "text"), "new life");
    let kept = Client::connect(&server, "kept").await;
    assert_eq!(text(&kept.doc, "text"), "unrelated");
}

/// A room deleted while nobody had it in memory is refused all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_deleted_while_unloaded_refuses_joins() {
    let mut server = TestServer::start().await;
    {
        let client = Client::connect(&server, "cold").await;
        type_text(&client, "stored").await;
        client.close().await;
    }
    server.restart().await;
    delete(&server, "cold").await;
    assert_eq!(
        rejoin_with(&server, "cold", doc_with("stored")).await,
        Some(ROOM_DELETED)
    );
    assert_gone(&server, "cold").await;
    assert_eq!(stored_rooms(&server).await, json!([]));
}

/// The stock y-websocket client (tests/interop/deleted_room.mjs): the provider in the room
/// when it is deleted, and one that connects afterwards with the deleted document, both stop
/// reconnecting, and the room stays deleted and empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_clients_stop_at_a_deleted_room() {
    let server = TestServer::start().await;
    let room = "js-doomed";
    let mut script = NodeScript::spawn("deleted_room.mjs", &[server.url().as_str(), room]);
    script.expect_line("READY").await;
    // The provider's edit is in the room before it is deleted.
    let state = api(&server, &format!("/{room}/state?format=json"));
    let deadline = tokio::time::Instant::now() + WAIT;
    while call_json(http().get(&state)).await.1 != json!({ "text": "doomed text" }) {
        if tokio::time::Instant::now() > deadline {
            script
                .fail("the provider's edit never reached the room")
                .await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    delete(&server, room).await;
    script.send_line("DELETED").await;
    script.expect_line("DONE").await;
    script.finish().await;
    assert_gone(&server, room).await;
    assert_eq!(stored_rooms(&server).await, json!([]));
}

/// Runs `ycord <args>` on the stopped server's data directory.
async fn ycord(args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ycord"))
        .args(args)
        .env_remove("YCORD_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ycord");
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("ycord finishes in time")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_lists_deleted_rooms_and_the_other_commands_refuse_them() {
    let mut server = TestServer::start().await;
    for room in ["doomed", "kept"] {
        let client = Client::connect(&server, room).await;
        type_text(&client, "text").await;
    }
    delete(&server, "doomed").await;
    server.stop().await;
    let dir = server.data_dir();
    let dir = dir.to_str().unwrap();

    let output = ycord(&["inspect", "--data-dir", dir]).await;
    assert!(output.status.success(), "{output:?}");
    let report = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = report.lines().collect();
    let deleted = lines
        .iter()
        .position(|line| *line == "deleted_room\tdeleted_at_ms")
        .unwrap_or_else(|| panic!("no deleted rooms listed:\n{report}"));
    let (name, at) = lines[deleted + 1].split_once('\t').unwrap();
    assert_eq!(name, "doomed", "{report}");
    assert!(at.parse::<u64>().unwrap() > 0, "{report}");
    assert!(lines[1].starts_with("kept\t"), "{report}");
    assert!(
        !lines[..deleted]
            .iter()
            .any(|line| line.starts_with("doomed"))
    );

    let one = ycord(&["inspect", "doomed", "--data-dir", dir]).await;
    assert!(one.status.success(), "{one:?}");
    let one = String::from_utf8(one.stdout).unwrap();
    assert!(one.contains(&format!("doomed\t{at}")), "{one}");

    let export = ycord(&["export", "doomed", "--data-dir", dir]).await;
    assert!(!export.status.success());
    let error = String::from_utf8_lossy(&export.stderr);
    assert!(error.contains("was deleted"), "{error}");
}
