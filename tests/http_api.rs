//! The HTTP side over real sockets: health and readiness, Prometheus metrics (admin token when
//! auth is on, or the separate metrics listener), and the room API (list, inspect, read as
//! binary or JSON, update, delete), including a stock JavaScript client receiving an update
//! posted through the API.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::node::NodeScript;
use common::{Client, TestServer, WAIT, get, get_json, http, metric_in, text};
use reqwest::StatusCode;
use serde_json::{Value, json};
use yrs::updates::decoder::Decode;
use yrs::{Array, Doc, Map, ReadTxn, StateVector, Text, Transact, Update};

const SECRET: &str = "http-api-secret";

fn base(server: &TestServer) -> String {
    format!("http://{}", server.addr())
}

fn sign(claims: Value) -> String {
    common::sign(SECRET, claims)
}

fn in_an_hour() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

fn admin_token() -> String {
    sign(json!({ "exp": in_an_hour(), "rooms": ["*"], "mode": "rw", "admin": true }))
}

fn user_token() -> String {
    sign(json!({ "exp": in_an_hour(), "rooms": ["*"], "mode": "rw" }))
}

async fn post_update(server: &TestServer, room: &str, update: Vec<u8>) -> (StatusCode, Value) {
    let response = http()
        .post(format!("{}/api/rooms/{room}/update", base(server)))
        .header("content-type", "application/octet-stream")
        .body(update)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (
        status,
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap(),
    )
}

async fn scraped(server: &TestServer, name: &str) -> f64 {
    let (status, body) = get(&format!("{}/metrics", base(server))).await;
    assert_eq!(status, StatusCode::OK);
    metric_in(&body, name).unwrap_or_else(|| panic!("{name} missing from:\n{body}"))
}

/// Waits until the scraped metric `name` equals `value`.
async fn wait_metric(server: &TestServer, name: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let current = scraped(server, name).await;
        if current == value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {current}, not {value}, after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A v1 update inserting `content` into the text `text` of a fresh document.
fn text_update(content: &str) -> Vec<u8> {
    let doc = Doc::new();
    let text_ref = doc.get_or_insert_text("text");
    text_ref.insert(&mut doc.transact_mut(), 0, content);
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

/// Appends `content` to the client's text and waits until the server echoes the change back
/// (so it is applied in the room).
async fn write_text(client: &Client, content: &str) {
    let before = client.seen.lock().unwrap().frames.len();
    let text_ref = client.doc.get_or_insert_text("text");
    client
        .edit(|txn| {
            let len = text_ref.len(txn);
            text_ref.insert(txn, len, content)
        })
        .await;
    wait_echo(client, before).await;
}

/// Waits for a document update (`00 02 …`) among the frames received after the first `before`.
async fn wait_echo(client: &Client, before: usize) {
    client
        .wait_until(|seen, _| seen.frames[before..].iter().any(|f| f.starts_with(&[0, 2])))
        .await;
}

#[tokio::test]
async fn health_and_readiness_answer_without_a_token() {
    let server = TestServer::start_with(|config| config.auth_secret = Some(SECRET.into())).await;
    let (status, body) = get_json(&format!("{}/healthz", base(&server))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "status": "ok" }));
    let (status, body) = get_json(&format!("{}/readyz", base(&server))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "status": "ready" }));
    // Anything else needs a token.
    let (status, _) = get(&format!("{}/api/rooms", base(&server))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn metrics_need_an_admin_token_when_auth_is_on() {
    let server = TestServer::start_with(|config| {
        config.auth_secret = Some(SECRET.into());
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let url = format!("{}/metrics", base(&server));
    let (status, _) = get(&url).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no token");
    let (status, _) = get(&format!("{url}?token=garbage")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "garbage token");
    let (status, _) = get(&format!("{url}?token={}", user_token())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "non-admin token");

    let response = http()
        .get(&url)
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let body = response.text().await.unwrap();
    for name in [
        "ycord_connections_open",
        "ycord_connections_total",
        "ycord_rooms_loaded",
        "ycord_auth_failures_total{reason=\"not_admin\"}",
    ] {
        assert!(metric_in(&body, name).is_some(), "{name} missing:\n{body}");
    }
    let (status, _) = get(&format!("{url}?token={}", admin_token())).await;
    assert_eq!(status, StatusCode::OK, "admin token in the query");

    // The separate listener serves the metrics without a token, and nothing else.
    let metrics_addr = server.server().metrics_addr().expect("metrics listener");
    let (status, body) = get(&format!("http://{metrics_addr}/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("ycord_connections_open"), "{body}");
    let (status, _) = get(&format!("http://{metrics_addr}/api/rooms")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&format!("http://{metrics_addr}/healthz")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_api_needs_an_admin_token_when_auth_is_on() {
    let server = TestServer::start_with(|config| config.auth_secret = Some(SECRET.into())).await;
    let rooms = format!("{}/api/rooms", base(&server));
    assert_eq!(get(&rooms).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(&format!("{rooms}?token={}", user_token())).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(&format!("{rooms}?token={}", admin_token())).await.0,
        StatusCode::OK
    );
    let update = http()
        .post(format!("{rooms}/doc/update"))
        .bearer_auth(user_token())
        .body(text_update("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(update.status(), StatusCode::FORBIDDEN);
    let delete = http().delete(format!("{rooms}/doc")).send().await.unwrap();
    assert_eq!(delete.status(), StatusCode::UNAUTHORIZED);
    // None of the refused calls touched a room.
    assert_eq!(
        metric_in(&server.server().metrics().render(), "ycord_rooms_loaded"),
        Some(0.0)
    );
    let (status, state) = get_json(&format!(
        "{rooms}/doc/state?format=json&token={}",
        admin_token()
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(state, json!({}));
}

#[tokio::test]
async fn connection_metrics_move_as_connections_open_and_close() {
    let server = TestServer::start().await;
    assert_eq!(scraped(&server, "ycord_connections_open").await, 0.0);
    assert_eq!(scraped(&server, "ycord_connections_total").await, 0.0);
    assert_eq!(scraped(&server, "ycord_rooms_loaded").await, 0.0);

    let first = Client::connect(&server, "doc").await;
    assert_eq!(scraped(&server, "ycord_connections_open").await, 1.0);
    assert_eq!(scraped(&server, "ycord_connections_total").await, 1.0);
    assert_eq!(scraped(&server, "ycord_rooms_loaded").await, 1.0);
    write_text(&first, "x").await;
    wait_metric(&server, "ycord_updates_received_total", 2.0).await; // SyncStep2 + the edit

    first.close().await;
    wait_metric(&server, "ycord_connections_open", 0.0).await;
    assert_eq!(scraped(&server, "ycord_connections_total").await, 1.0);

    let second = Client::connect(&server, "other").await;
    assert_eq!(scraped(&server, "ycord_connections_open").await, 1.0);
    assert_eq!(scraped(&server, "ycord_connections_total").await, 2.0);
    second.drop_abruptly();
    wait_metric(&server, "ycord_connections_open", 0.0).await;
}

#[tokio::test]
async fn rooms_are_listed_loaded_and_stored_with_paging() {
    let server = TestServer::start().await;
    let alpha = Client::connect(&server, "alpha").await;
    let alpha_peer = Client::connect(&server, "alpha").await;
    let beta = Client::connect(&server, "beta").await;
    let gamma = Client::connect(&server, "file:text/42").await;
    for (client, content) in [(&alpha, "a"), (&beta, "b"), (&gamma, "g")] {
        write_text(client, content).await;
    }
    alpha_peer
        .wait_until(|_, doc| text(doc, "text") == "a")
        .await;
    // A room that is loaded but never written is not stored.
    let _empty = Client::connect(&server, "empty").await;

    let (status, list) = get_json(&format!("{}/api/rooms", base(&server))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        list["loaded"],
        json!([
            { "room": "alpha", "connections": 2 },
            { "room": "beta", "connections": 1 },
            { "room": "empty", "connections": 1 },
            { "room": "file:text/42", "connections": 1 },
        ])
    );
    assert_eq!(list["stored"]["total"], 3);

    let (_, page1) = get_json(&format!("{}/api/rooms?offset=0&limit=2", base(&server))).await;
    let (_, page2) = get_json(&format!("{}/api/rooms?offset=2&limit=2", base(&server))).await;
    assert_eq!(page1["stored"]["rooms"].as_array().unwrap().len(), 2);
    assert_eq!(page1["stored"]["next_offset"], 2);
    assert_eq!(page2["stored"]["rooms"].as_array().unwrap().len(), 1);
    assert_eq!(page2["stored"]["next_offset"], Value::Null);
    let mut stored: Vec<String> = page1["stored"]["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["stored"]["rooms"].as_array().unwrap())
        .map(|room| room.as_str().unwrap().to_owned())
        .collect();
    stored.sort();
    assert_eq!(stored, ["alpha", "beta", "file:text/42"]);
}

#[tokio::test]
async fn room_info_reports_sizes_or_404() {
    let mut server = TestServer::start().await;
    let (status, body) = get_json(&format!("{}/api/rooms/nowhere", base(&server))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let client = Client::connect(&server, "file:text/42").await;
    write_text(&client, "hello").await;
    write_text(&client, " world").await;
    let url = format!("{}/api/rooms/file%3Atext%2F42", base(&server));
    // The flusher writes the applied updates to the store once per flush window.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (status, info) = loop {
        let (status, info) = get_json(&url).await;
        if status != StatusCode::OK || info["log_entries"].as_u64() != Some(0) {
            break (status, info);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never written: {info}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["room"], "file:text/42");
    assert_eq!(info["loaded"], true);
    assert_eq!(info["connections"], 1);
    assert_eq!(info["log_updates"], 2, "{info}");
    // One or two entries, depending on the timing.
    assert!(info["log_entries"].as_u64().unwrap() <= 2, "{info}");
    assert!(info["log_bytes"].as_u64().unwrap() > 0, "{info}");
    assert!(info["doc_bytes"].as_u64().unwrap() > 0, "{info}");
    assert!(info["last_change_ms"].as_u64().unwrap() > 0, "{info}");
    client.close().await;

    // After a restart the room is stored (compacted at shutdown) but not loaded.
    server.restart().await;
    let (status, info) = get_json(&url).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["loaded"], false);
    assert_eq!(info["connections"], 0);
    assert_eq!(info["log_entries"], 0);
    assert!(info["snapshot_bytes"].as_u64().unwrap() > 0, "{info}");
    assert!(info["last_change_ms"].as_u64().unwrap() > 0, "{info}");
}

#[tokio::test]
async fn room_state_is_served_as_binary_and_as_json() {
    let server = TestServer::start().await;
    let client = Client::connect(&server, "doc").await;
    let (text_ref, map_ref, array_ref) = (
        client.doc.get_or_insert_text("text"),
        client.doc.get_or_insert_map("map"),
        client.doc.get_or_insert_array("array"),
    );
    let before = client.seen.lock().unwrap().frames.len();
    client
        .edit(|txn| {
            text_ref.insert(txn, 0, "hello");
            map_ref.insert(txn, "key", "value");
            map_ref.insert(txn, "n", 7);
            array_ref.push_back(txn, "one");
            array_ref.push_back(txn, "two");
        })
        .await;
    wait_echo(&client, before).await;
    let watcher = Client::connect(&server, "doc").await;
    assert_eq!(text(&watcher.doc, "text"), "hello");

    let response = http()
        .get(format!("{}/api/rooms/doc/state", base(&server)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    let bytes = response.bytes().await.unwrap();
    let copy = Doc::new();
    copy.transact_mut()
        .apply_update(Update::decode_v1(&bytes).unwrap())
        .unwrap();
    assert_eq!(
        copy.transact().state_vector(),
        client.doc.transact().state_vector()
    );
    assert_eq!(text(&copy, "text"), "hello");
    let copy_map = copy.get_or_insert_map("map");
    let copy_array = copy.get_or_insert_array("array");
    {
        let txn = copy.transact();
        assert_eq!(copy_map.get(&txn, "key").unwrap().to_string(&txn), "value");
        assert_eq!(copy_array.len(&txn), 2);
    }

    let (status, view) = get_json(&format!(
        "{}/api/rooms/doc/state?format=json",
        base(&server)
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["text"], "hello");
    assert_eq!(view["map"]["key"], "value");
    assert_eq!(view["map"]["n"].as_f64(), Some(7.0));
    assert_eq!(view["array"], json!(["one", "two"]));

    let (status, _) = get(&format!("{}/api/rooms/doc/state?format=xml", base(&server))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn invalid_calls_are_refused_and_change_nothing() {
    let server = TestServer::start().await;
    let client = Client::connect(&server, "doc").await;
    write_text(&client, "intact").await;
    let (status, body) = post_update(&server, "doc", vec![0xff, 0xff, 0xff, 0x01, 0x02]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].is_string(), "{body}");
    // Method not allowed on an existing path.
    let put = http()
        .put(format!("{}/api/rooms/doc", base(&server)))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
    let fresh = Client::connect(&server, "doc").await;
    assert_eq!(text(&fresh.doc, "text"), "intact");
    assert!(!client.seen.lock().unwrap().ended);
}

#[tokio::test]
async fn a_posted_update_reaches_connected_clients_and_is_persisted() {
    let mut server = TestServer::start().await;
    let room = "file:text/9";
    let client = Client::connect(&server, room).await;

    let update = text_update("from-api");
    let (status, body) = post_update(&server, "file%3Atext%2F9", update.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["applied"], true);
    client
        .wait_until(|_, doc| text(doc, "text") == "from-api")
        .await;
    // The same update again changes nothing.
    let (status, body) = post_update(&server, "file%3Atext%2F9", update).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["applied"], false);
    client.close().await;

    server.restart().await;
    let after = Client::connect(&server, room).await;
    assert_eq!(text(&after.doc, "text"), "from-api");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_update_reaches_a_stock_javascript_client() {
    let server = TestServer::start().await;
    let room = "js-room";
    let rust_client = Client::connect(&server, room).await;
    let mut script = NodeScript::spawn(
        "api_update.mjs",
        &[server.url().as_str(), room, "posted-by-api"],
    );
    script.expect_line("READY").await;
    let (status, body) = post_update(&server, room, text_update("posted-by-api")).await;
    if status != StatusCode::OK {
        script
            .fail(&format!("POST answered {status}: {body}"))
            .await;
    }
    script.expect_line("DONE").await;
    script.finish().await;
    rust_client
        .wait_until(|_, doc| text(doc, "text") == "posted-by-api")
        .await;
}

#[tokio::test]
async fn deleting_a_room_closes_its_sockets_and_forgets_its_data() {
    let server = TestServer::start().await;
    let first = Client::connect(&server, "doomed").await;
    let second = Client::connect(&server, "doomed").await;
    let bystander = Client::connect(&server, "bystander").await;
    write_text(&first, "to be deleted").await;
    write_text(&bystander, "unrelated").await;
    second
        .wait_until(|_, doc| text(doc, "text") == "to be deleted")
        .await;

    let response = http()
        .delete(format!("{}/api/rooms/doomed", base(&server)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&response.bytes().await.unwrap()).unwrap(),
        json!({ "deleted": "doomed" })
    );
    for client in [&first, &second] {
        let (code, reason) = client.wait_closed().await.expect("a close frame");
        assert_eq!(code, 4410, "reason: {reason}");
    }
    assert!(!bystander.seen.lock().unwrap().ended);

    let (status, _) = get(&format!("{}/api/rooms/doomed", base(&server))).await;
    assert_eq!(status, StatusCode::GONE);
    let refused = Client::connect_raw(&server.room_url("doomed"), Doc::new()).await;
    assert_eq!(
        refused.wait_closed().await.map(|(code, _)| code),
        Some(4410)
    );
    let (_, list) = get_json(&format!("{}/api/rooms", base(&server))).await;
    assert_eq!(list["stored"]["rooms"], json!(["bystander"]));
    // The name can be used again once its tombstone is removed.
    let undelete = http()
        .delete(format!("{}/api/rooms/doomed/tombstone", base(&server)))
        .send()
        .await
        .unwrap();
    assert_eq!(undelete.status(), StatusCode::OK);
    let fresh = Client::connect(&server, "doomed").await;
    assert_eq!(text(&fresh.doc, "text"), "");
    let other = Client::connect(&server, "bystander").await;
    assert_eq!(text(&other.doc, "text"), "unrelated");
}

#[tokio::test]
async fn rooms_not_in_memory_serve_state_take_updates_and_can_be_deleted() {
    let mut server = TestServer::start().await;
    for (room, content) in [("cold", "stored text"), ("gone", "to delete")] {
        let client = Client::connect(&server, room).await;
        write_text(&client, content).await;
        let check = Client::connect(&server, room).await;
        assert_eq!(text(&check.doc, "text"), content);
    }
    server.restart().await;
    assert_eq!(
        metric_in(&server.server().metrics().render(), "ycord_rooms_loaded"),
        Some(0.0)
    );

    let (status, view) = get_json(&format!(
        "{}/api/rooms/cold/state?format=json",
        base(&server)
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view, json!({ "text": "stored text" }));

    let delete = http()
        .delete(format!("{}/api/rooms/gone", base(&server)))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::OK);
    let (status, _) = get(&format!("{}/api/rooms/gone", base(&server))).await;
    assert_eq!(status, StatusCode::GONE);

    // An update to a stored room that is not loaded, made on top of the stored state (read
    // here, then unloaded again by a restart).
    let bytes = http()
        .get(format!("{}/api/rooms/cold/state", base(&server)))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    server.restart().await;
    assert_eq!(
        metric_in(&server.server().metrics().render(), "ycord_rooms_loaded"),
        Some(0.0)
    );
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(&bytes).unwrap())
        .unwrap();
    let text_ref = doc.get_or_insert_text("text");
    let update = {
        let mut txn = doc.transact_mut();
        text_ref.push(&mut txn, " + posted");
        txn.encode_update_v1()
    };
    let (status, body) = post_update(&server, "cold", update).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["applied"], true);
    let client = Client::connect(&server, "cold").await;
    assert_eq!(text(&client.doc, "text"), "stored text + posted");
    let gone = Client::connect_raw(&server.room_url("gone"), Doc::new()).await;
    assert_eq!(gone.wait_closed().await.map(|(code, _)| code), Some(4410));
}

// ---------------------------------------------------------------------------------------------
// The stock JavaScript client (tests/interop/api_update.mjs).
