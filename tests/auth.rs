//! Token authentication over real sockets: refusals happen at the HTTP upgrade (401/403) before
//! any room is loaded, room grants match exactly or by prefix, tokens travel in the query or the
//! `Authorization` header, read-only connections read but never write, and a session ends with
//! 1008 when its token expires. The last test drives the stock JavaScript client.

#![allow(clippy::unwrap_used)]

mod common;

use common::node::{ensure_node_deps, run_node};
use common::{Client, Seen, TestServer, WAIT, now, sign, text};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use ycord::protocol;
use yrs::{Doc, Text, Transact};

const SECRET: &str = "test-secret-for-auth";

/// A valid token for `rooms` in `mode` ("rw" or "ro"), expiring in an hour.
fn token(rooms: &[&str], mode: &str) -> String {
    sign(
        SECRET,
        json!({ "exp": now() + 3600, "sub": "tester", "rooms": rooms, "mode": mode }),
    )
}

async fn auth_server() -> TestServer {
    TestServer::start_with(|config| config.auth_secret = Some(SECRET.into())).await
}

fn with_token(url: &str, token: &str) -> String {
    format!("{url}?token={token}")
}

/// Attempts an upgrade that must be refused; returns the HTTP status.
async fn refused_status(request: impl IntoClientRequest + Unpin) -> u16 {
    let attempt = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("answer in time");
    match attempt {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok((_, response)) => panic!("upgrade accepted ({})", response.status()),
    }
}

/// Whether a permission-denied Auth message (`02 00 reason`) was received.
fn denied(seen: &Seen) -> bool {
    seen.frames.iter().any(|frame| frame.starts_with(&[2, 0]))
}

/// Whether the client received a permission-denied Auth message. Not for use inside
/// `wait_until`, which holds the same lock: use [`denied`] there.
fn was_denied(client: &Client) -> bool {
    denied(&client.seen.lock().unwrap())
}

#[tokio::test]
async fn upgrades_without_a_valid_token_are_refused_before_any_room_is_loaded() {
    let server = auth_server().await;
    let url = server.room_url("doc");

    assert_eq!(refused_status(url.as_str()).await, 401, "missing token");
    assert_eq!(
        refused_status(with_token(&url, "").as_str()).await,
        401,
        "empty token"
    );
    assert_eq!(
        refused_status(with_token(&url, "not-a-jwt").as_str()).await,
        401,
        "garbage token"
    );
    let forged = sign(
        "some-other-secret",
        json!({ "exp": now() + 3600, "rooms": ["*"], "mode": "rw", "admin": true }),
    );
    assert_eq!(
        refused_status(with_token(&url, &forged).as_str()).await,
        401,
        "forged signature"
    );
    let expired = sign(
        SECRET,
        json!({ "exp": now() - 10, "rooms": ["doc"], "mode": "rw" }),
    );
    assert_eq!(
        refused_status(with_token(&url, &expired).as_str()).await,
        401,
        "expired token"
    );
    let no_exp = sign(SECRET, json!({ "rooms": ["doc"], "mode": "rw" }));
    assert_eq!(
        refused_status(with_token(&url, &no_exp).as_str()).await,
        401,
        "token without exp"
    );
    let other_room = token(&["other"], "rw");
    assert_eq!(
        refused_status(with_token(&url, &other_room).as_str()).await,
        403,
        "token for another room"
    );
    let no_rooms = sign(SECRET, json!({ "exp": now() + 3600, "admin": true }));
    assert_eq!(
        refused_status(with_token(&url, &no_rooms).as_str()).await,
        403,
        "admin token without rooms"
    );

    // Nothing was loaded, opened or counted as a connection by any of these.
    assert_eq!(server.metric("ycord_rooms_loaded"), 0.0);
    assert_eq!(server.metric("ycord_connections_total"), 0.0);
    assert_eq!(server.metric("ycord_connections_open"), 0.0);
    assert_eq!(
        server.metric("ycord_auth_failures_total{reason=\"missing\"}"),
        2.0
    );
    assert_eq!(
        server.metric("ycord_auth_failures_total{reason=\"room_not_allowed\"}"),
        2.0
    );

    // The same room with a good token loads (the gauge above can move).
    let client =
        Client::connect_with_doc(&with_token(&url, &token(&["doc"], "rw")), Doc::new()).await;
    assert_eq!(server.metric("ycord_rooms_loaded"), 1.0);
    client.close().await;
}

#[tokio::test]
async fn a_prefix_grant_opens_the_rooms_under_it_only() {
    let server = auth_server().await;
    let grant = token(&["file:text/*"], "rw");

    let writer = Client::connect_with_doc(
        &with_token(&server.room_url("file:text/42"), &grant),
        Doc::new(),
    )
    .await;
    let text_ref = writer.doc.get_or_insert_text("text");
    writer
        .edit(|txn| text_ref.insert(txn, 0, "forty-two"))
        .await;
    // The same room, percent-encoded in the URL.
    let reader = Client::connect_with_doc(
        &with_token(&server.room_url("file%3Atext%2F42"), &grant),
        Doc::new(),
    )
    .await;
    reader
        .wait_until(|_, doc| text(doc, "text") == "forty-two")
        .await;

    for refused in ["file:other", "file:text", "file:textual/1", "xfile:text/42"] {
        assert_eq!(
            refused_status(with_token(&server.room_url(refused), &grant).as_str()).await,
            403,
            "{refused} must not be opened by file:text/*"
        );
    }
    // Only the granted room was ever loaded.
    assert_eq!(server.metric("ycord_rooms_loaded"), 1.0);
}

#[tokio::test]
async fn a_token_in_the_authorization_header_works_like_one_in_the_query() {
    let server = auth_server().await;
    let url = server.room_url("doc");
    let rw = token(&["doc"], "rw");

    let header_request = |value: String| {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", value.parse().unwrap());
        request
    };
    assert_eq!(
        refused_status(header_request("Bearer nonsense".into())).await,
        401
    );
    assert_eq!(
        refused_status(header_request(format!("Basic {rw}"))).await,
        401,
        "only Bearer carries a token"
    );
    assert_eq!(
        refused_status(header_request(format!("Bearer {}", token(&["x"], "rw")))).await,
        403
    );

    let observer = Client::connect_with_doc(&with_token(&url, &rw), Doc::new()).await;
    let (mut socket, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(header_request(format!("Bearer {rw}"))),
    )
    .await
    .unwrap()
    .expect("upgrade with a Bearer token");
    // The server greets with its SyncStep1.
    let greeting = tokio::time::timeout(WAIT, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(greeting.into_data().starts_with(&[0, 0]));
    // This connection may write: its update reaches the observer.
    let doc = Doc::new();
    let text_ref = doc.get_or_insert_text("text");
    let update = {
        let mut txn = doc.transact_mut();
        text_ref.insert(&mut txn, 0, "via header");
        txn.encode_update_v1()
    };
    socket
        .send(Message::binary(protocol::encode_update(&update).to_vec()))
        .await
        .unwrap();
    observer
        .wait_until(|_, doc| text(doc, "text") == "via header")
        .await;
    let _ = socket.close(None).await;
}

#[tokio::test]
async fn read_write_tokens_write_and_everyone_sees_it() {
    let server = auth_server().await;
    let url = server.room_url("shared");
    let alice =
        Client::connect_with_doc(&with_token(&url, &token(&["shared"], "rw")), Doc::new()).await;
    let bob = Client::connect_with_doc(&with_token(&url, &token(&["*"], "rw")), Doc::new()).await;
    let carol =
        Client::connect_with_doc(&with_token(&url, &token(&["shared"], "ro")), Doc::new()).await;

    let alice_text = alice.doc.get_or_insert_text("text");
    alice.edit(|txn| alice_text.insert(txn, 0, "alice ")).await;
    let bob_text = bob.doc.get_or_insert_text("text");
    bob.wait_until(|_, doc| text(doc, "text") == "alice ").await;
    bob.edit(|txn| bob_text.insert(txn, 6, "bob")).await;
    for client in [&alice, &bob, &carol] {
        client
            .wait_until(|_, doc| text(doc, "text") == "alice bob")
            .await;
    }
    assert!(!was_denied(&alice) && !was_denied(&bob));
}

#[tokio::test]
async fn read_only_tokens_sync_and_share_presence_but_their_updates_are_refused() {
    let server = auth_server().await;
    let url = server.room_url("doc");
    let rw = token(&["doc"], "rw");
    let ro = token(&["doc"], "ro");
    // No "mode" claim at all means read-only.
    let default_mode = sign(SECRET, json!({ "exp": now() + 3600, "rooms": ["doc"] }));

    let writer = Client::connect_with_doc(&with_token(&url, &rw), Doc::new()).await;
    let writer_text = writer.doc.get_or_insert_text("text");
    writer.edit(|txn| writer_text.insert(txn, 0, "hello")).await;

    let reader = Client::connect_with_doc(&with_token(&url, &ro), Doc::new()).await;
    reader
        .wait_until(|_, doc| text(doc, "text") == "hello")
        .await;
    let quiet_reader = Client::connect_with_doc(&with_token(&url, &default_mode), Doc::new()).await;
    quiet_reader
        .wait_until(|_, doc| text(doc, "text") == "hello")
        .await;
    // Syncing with an empty document is not a write: nobody was denied so far.
    assert!(!was_denied(&reader) && !was_denied(&quiet_reader));

    // Awareness is allowed: the writer sees the reader's presence.
    reader
        .set_awareness(4242, 1, r#"{"user":{"name":"reader"}}"#)
        .await;
    writer
        .wait_until(|_, _| writer.awareness_state(4242).is_some())
        .await;
    assert!(writer.awareness_state(4242).unwrap().contains("reader"));

    // The readers' updates are refused with a permission-denied Auth message.
    for client in [&reader, &quiet_reader] {
        let own = client.doc.get_or_insert_text("text");
        client.edit(|txn| own.insert(txn, 0, "EVIL ")).await;
        client.wait_until(|seen, _| denied(seen)).await;
        let frames = client.seen.lock().unwrap().frames.clone();
        let denial = frames.iter().find(|f| f.starts_with(&[2, 0])).unwrap();
        assert!(
            String::from_utf8_lossy(denial).contains("read-only"),
            "reason: {denial:?}"
        );
    }

    // Barrier: the refusals were sent after the server handled the readers' updates, so had
    // those been applied they would sit in the writer's (first in, first out) queue before any
    // later change. The writer receiving the witness's later "!" and nothing else proves they
    // were not.
    let witness = Client::connect_with_doc(&with_token(&url, &rw), Doc::new()).await;
    writer
        .edit(|txn| writer_text.insert(txn, 5, " world"))
        .await;
    witness
        .wait_until(|_, doc| text(doc, "text") == "hello world")
        .await;
    let witness_text = witness.doc.get_or_insert_text("text");
    witness.edit(|txn| witness_text.insert(txn, 11, "!")).await;
    writer
        .wait_until(|_, doc| text(doc, "text") == "hello world!")
        .await;
    assert_eq!(text(&writer.doc, "text"), "hello world!");

    // The readers are still connected and keep receiving the writers' edits.
    for client in [&reader, &quiet_reader] {
        client
            .wait_until(|_, doc| text(doc, "text").contains("hello world!"))
            .await;
        assert!(!client.seen.lock().unwrap().ended, "reader was closed");
    }

    // A fresh joiner never sees the refused edits.
    let fresh = Client::connect_with_doc(&with_token(&url, &ro), Doc::new()).await;
    assert_eq!(text(&fresh.doc, "text"), "hello world!");
    assert_eq!(
        server.metric("ycord_rejected_messages_total{reason=\"read_only\"}"),
        2.0
    );
}

#[tokio::test]
async fn a_read_only_client_with_offline_edits_cannot_push_them_on_connect() {
    let server = auth_server().await;
    let url = server.room_url("doc");
    let writer =
        Client::connect_with_doc(&with_token(&url, &token(&["doc"], "rw")), Doc::new()).await;
    let writer_text = writer.doc.get_or_insert_text("text");
    writer.edit(|txn| writer_text.insert(txn, 0, "base")).await;

    // A document with content of its own: the handshake's SyncStep2 carries it.
    let offline = Doc::new();
    offline
        .get_or_insert_text("text")
        .insert(&mut offline.transact_mut(), 0, "offline ");
    let reader = Client::connect_with_doc(&with_token(&url, &token(&["doc"], "ro")), offline).await;
    reader.wait_until(|seen, _| denied(seen)).await;
    reader
        .wait_until(|_, doc| text(doc, "text").contains("base"))
        .await;

    let fresh =
        Client::connect_with_doc(&with_token(&url, &token(&["doc"], "ro")), Doc::new()).await;
    assert_eq!(text(&fresh.doc, "text"), "base");
}

#[tokio::test]
async fn a_session_is_closed_with_1008_when_its_token_expires() {
    let server = auth_server().await;
    let url = server.room_url("doc");
    let short = sign(
        SECRET,
        json!({ "exp": now() + 2, "rooms": ["doc"], "mode": "rw" }),
    );
    let long = token(&["doc"], "rw");
    let expiring = Client::connect_with_doc(&with_token(&url, &short), Doc::new()).await;
    let staying = Client::connect_with_doc(&with_token(&url, &long), Doc::new()).await;

    let (code, reason) = expiring.wait_closed().await.expect("a close frame");
    assert_eq!(code, 1008, "reason: {reason}");
    assert!(reason.contains("expired"), "reason: {reason}");

    // The other session is unaffected and still syncs.
    assert!(!staying.seen.lock().unwrap().ended);
    let other = Client::connect_with_doc(&with_token(&url, &long), Doc::new()).await;
    let other_text = other.doc.get_or_insert_text("text");
    other
        .edit(|txn| other_text.insert(txn, 0, "still here"))
        .await;
    staying
        .wait_until(|_, doc| text(doc, "text") == "still here")
        .await;
    // And the expired token can no longer open the room.
    assert_eq!(refused_status(with_token(&url, &short).as_str()).await, 401);
}

/// A session has one timer for its two deadlines: the first message's, then the token's expiry.
#[tokio::test]
async fn a_token_that_expires_after_the_first_message_deadline_still_ends_the_session() {
    let server = TestServer::start_with(|config| {
        config.auth_secret = Some(SECRET.into());
        config.limits.first_message_secs = 1;
    })
    .await;
    let url = server.room_url("doc");
    let short = sign(
        SECRET,
        json!({ "exp": now() + 4, "rooms": ["doc"], "mode": "rw" }),
    );
    let expiring = Client::connect_with_doc(&with_token(&url, &short), Doc::new()).await;
    let silent = Client::connect_raw(&with_token(&url, &token(&["doc"], "rw")), Doc::new()).await;

    // Past the first-message deadline: the client that spoke stays, the silent one is closed.
    let (code, reason) = silent.wait_closed().await.expect("a close frame");
    assert_eq!(code, 1008, "reason: {reason}");
    assert!(reason.contains("no message"), "reason: {reason}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!expiring.seen.lock().unwrap().ended);

    // Then its token expires (3 to 4 s after it connected).
    let (code, reason) = expiring.wait_closed().await.expect("a close frame");
    assert_eq!(code, 1008, "reason: {reason}");
    assert!(reason.contains("expired"), "reason: {reason}");
}

// ---------------------------------------------------------------------------------------------
// The stock JavaScript client (tests/interop/readonly.mjs).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_client_with_a_read_only_token_cannot_write() {
    ensure_node_deps();
    let server = auth_server().await;
    let room = "file:text/7";
    let rw = token(&["file:text/*"], "rw");
    let ro = token(&[room], "ro");
    run_node("readonly.mjs", &[&server.url(), room, &rw, &ro]).await;
    // Cross-check on the server side: the room holds the writer's text only.
    let fresh =
        Client::connect_with_doc(&with_token(&server.room_url(room), &ro), Doc::new()).await;
    assert_eq!(text(&fresh.doc, "text"), "from-rw more ");
    assert!(server.metric("ycord_rejected_messages_total{reason=\"read_only\"}") >= 1.0);
}
