//! The Hocuspocus dialect over a real socket, frame by frame: per-document auth, SyncStatus
//! acknowledgements, read-only documents, token expiry, the document limit, CLOSE, stateless
//! messages and their limits, ycord's roster events, keepalive, and a y-websocket client in the
//! same room. `tests/hocuspocus_interop.rs` drives the stock `@hocuspocus/provider` instead.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Client, TestServer, WAIT, now, text};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use ycord::protocol::hocuspocus::{frame, key_prefix, stateless_body};
use ycord::protocol::{encode_awareness, encode_query_awareness, encode_sync_step1, encode_update};
use yrs::encoding::write::Write;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, StateVector, Text, Transact};

const SECRET: &str = "hocuspocus-test-secret";

/// A Hocuspocus client socket, sending and reading raw frames.
struct Socket {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the server sent about one document, decoded far enough for the tests.
#[derive(Debug, PartialEq)]
enum Reply {
    Authenticated(String),
    PermissionDenied(String),
    /// The server asks for a fresh token.
    TokenRequest,
    SyncStep1,
    SyncStep2(Vec<u8>),
    Update(Vec<u8>),
    Awareness(Vec<u8>),
    SyncStatus(u8),
    Stateless(serde_json::Value),
    Close(String),
}

impl Socket {
    async fn connect(server: &TestServer) -> Socket {
        let url = format!("ws://{}/", server.addr());
        let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap()
            .unwrap();
        Socket { socket }
    }

    async fn send(&mut self, frame: Vec<u8>) {
        self.socket
            .send(Message::Binary(frame.into()))
            .await
            .unwrap();
    }

    async fn auth(&mut self, key: &str, token: &str) {
        let mut body = vec![2, 0];
        body.write_string(token);
        body.write_string("4.8.0");
        self.send(frame(&key_prefix(key), &body).to_vec()).await;
    }

    async fn message(&mut self, key: &str, body: &[u8]) {
        self.send(frame(&key_prefix(key), body).to_vec()).await;
    }

    /// Auth, then the handshake a provider makes: SyncStep1, answered by SyncStep2 and the
    /// server's SyncStep1, which is answered by an empty SyncStep2, acknowledged.
    async fn open(&mut self, key: &str, token: &str) {
        self.auth(key, token).await;
        assert!(matches!(self.next_for(key).await, Reply::Authenticated(_)));
        self.sync(key).await;
    }

    async fn sync(&mut self, key: &str) {
        let empty = StateVector::default().encode_v1();
        self.message(key, &encode_sync_step1(&empty)).await;
        assert!(matches!(
            self.skip_to(key, |r| matches!(r, Reply::SyncStep2(_)))
                .await,
            Reply::SyncStep2(_)
        ));
        assert_eq!(self.next_for(key).await, Reply::SyncStep1);
        self.message(key, &[0, 1, 2, 0, 0]).await;
        assert_eq!(self.next_for(key).await, Reply::SyncStatus(1));
    }

    /// The next frame, as (document key, reply); `None` for the Ping `09`.
    async fn next(&mut self) -> Option<(String, Reply)> {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("a frame in time")
                .expect("the socket open")
                .expect("a frame");
            match message {
                Message::Binary(frame) => return decode(&frame),
                Message::Close(close) => panic!("socket closed: {close:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame about `key`, skipping roster events and Pings.
    async fn next_for(&mut self, key: &str) -> Reply {
        loop {
            if let Some((for_key, reply)) = self.next().await {
                let roster_event =
                    matches!(&reply, Reply::Stateless(event) if event["ycord"] != "relay");
                if for_key == key && !roster_event {
                    return reply;
                }
            }
        }
    }

    /// Frames about `key` until one matches.
    async fn skip_to(&mut self, key: &str, wanted: impl Fn(&Reply) -> bool) -> Reply {
        loop {
            if let Some((for_key, reply)) = self.next().await
                && for_key == key
                && wanted(&reply)
            {
                return reply;
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    async fn closed(&mut self) -> u16 {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("the close in time");
            match message {
                Some(Ok(Message::Close(Some(close)))) => return close.code.into(),
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    }
}

fn decode(frame: &[u8]) -> Option<(String, Reply)> {
    use yrs::encoding::read::{Cursor, Read};
    if frame == [9] {
        return None;
    }
    let mut cursor = Cursor::new(frame);
    let key = cursor.read_string().unwrap().to_owned();
    let kind: u8 = cursor.read_u8().unwrap();
    let reply = match kind {
        0 => match cursor.read_u8().unwrap() {
            0 => Reply::SyncStep1,
            1 => Reply::SyncStep2(cursor.read_buf().unwrap().to_vec()),
            _ => Reply::Update(cursor.read_buf().unwrap().to_vec()),
        },
        1 => Reply::Awareness(cursor.read_buf().unwrap().to_vec()),
        2 => match cursor.read_u8().unwrap() {
            0 => Reply::TokenRequest,
            1 => Reply::PermissionDenied(cursor.read_string().unwrap().to_owned()),
            _ => Reply::Authenticated(cursor.read_string().unwrap().to_owned()),
        },
        5 => Reply::Stateless(serde_json::from_str(cursor.read_string().unwrap()).unwrap()),
        7 => Reply::Close(cursor.read_string().unwrap().to_owned()),
        8 => Reply::SyncStatus(cursor.read_u8().unwrap()),
        other => panic!("unexpected message type {other}"),
    };
    Some((key, reply))
}

/// An update appending `text` to the Y.Text "t" of a fresh document with client ID `client`.
fn edit(client: u64, text: &str) -> Vec<u8> {
    let doc = Doc::with_client_id(client);
    let t = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, text);
    txn.encode_update_v1()
}

fn sign(claims: serde_json::Value) -> String {
    common::sign(SECRET, claims)
}

fn token(rooms: &[&str], mode: &str, sub: &str) -> String {
    sign(json!({ "exp": now() + 3600, "sub": sub, "rooms": rooms, "mode": mode }))
}

async fn auth_server() -> TestServer {
    TestServer::start_with(|config| config.auth_secret = Some(SECRET.into())).await
}

/// An HTTP API call with an admin token (ignored by a server without auth).
async fn api(server: &TestServer, path: &str) -> serde_json::Value {
    let admin = sign(json!({ "exp": now() + 3600, "admin": true }));
    let request = common::http().get(server.http_url(path)).bearer_auth(admin);
    common::call_json(request).await.1
}

/// The room's text as the HTTP API reads it.
async fn room_text(server: &TestServer, room: &str) -> String {
    let body = api(server, &format!("/api/rooms/{room}/state?format=json")).await;
    body["t"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn updates_are_applied_acknowledged_and_shared_with_y_websocket_clients() {
    let server = TestServer::start().await;
    let mut socket = Socket::connect(&server).await;
    socket.open("shared", "").await;
    let y_websocket = Client::connect(&server, "shared").await;

    socket
        .message("shared", &encode_update(&edit(7, "hello")))
        .await;
    assert_eq!(socket.next_for("shared").await, Reply::SyncStatus(1));
    y_websocket.wait_text("t", "hello").await;

    // The other way: a y-websocket edit reaches the provider as an Update of that document.
    // It is the first Update the provider gets: its own is acknowledged, not echoed.
    y_websocket.append_text("t", " world").await;
    let Reply::Update(update) = socket
        .skip_to("shared", |r| matches!(r, Reply::Update(_)))
        .await
    else {
        unreachable!()
    };
    let doc = Doc::new();
    let t = doc.get_or_insert_text("t");
    for update in [edit(7, "hello"), update] {
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(&update).unwrap())
            .unwrap();
    }
    assert_eq!(t.get_string(&doc.transact()), "hello world");
    assert_eq!(text(&y_websocket.doc, "t"), "hello world");
}

#[tokio::test]
async fn a_document_not_authenticated_on_the_socket_gets_nothing_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut socket = Socket::connect(&server).await;
    // Sync, an update and a query for "closed", without its Auth.
    let empty = StateVector::default().encode_v1();
    socket.message("closed", &encode_sync_step1(&empty)).await;
    socket
        .message("closed", &encode_update(&edit(1, "sneaky")))
        .await;
    socket.message("closed", &encode_query_awareness()).await;
    socket.message("closed", &stateless_body("hi")).await;
    // Then a document that is authenticated: its answer is the first frame to come.
    socket.auth("open", "").await;
    let (key, reply) = socket.next().await.unwrap();
    assert_eq!(
        (key.as_str(), reply),
        ("open", Reply::Authenticated("read-write".into()))
    );
    assert_eq!(room_text(&server, "closed").await, "");
    assert!(server.metric("ycord_rejected_messages_total{reason=\"not_authenticated\"}") >= 4.0);
}

#[tokio::test]
async fn each_document_is_authorised_by_its_own_token() {
    let server = auth_server().await;
    let mut socket = Socket::connect(&server).await;
    let alice = token(&["notes/*"], "rw", "alice");

    socket.open("notes/1", &alice).await;
    socket.auth("secret", &alice).await;
    assert_eq!(
        socket.next_for("secret").await,
        Reply::PermissionDenied("token does not grant this room".into())
    );
    socket.auth("notes/2", "garbage").await;
    assert!(matches!(
        socket.next_for("notes/2").await,
        Reply::PermissionDenied(_)
    ));
    socket.auth("notes/3", "").await;
    assert_eq!(
        socket.next_for("notes/3").await,
        Reply::PermissionDenied("a token is required".into())
    );
    // The refusals left the socket and the authorised document working.
    socket
        .message("notes/1", &encode_update(&edit(3, "ok")))
        .await;
    assert_eq!(socket.next_for("notes/1").await, Reply::SyncStatus(1));
    assert!(server.metric("ycord_auth_failures_total{reason=\"room_not_allowed\"}") >= 1.0);
}

#[tokio::test]
async fn read_only_documents_sync_but_their_updates_are_refused_unacknowledged() {
    let server = auth_server().await;
    let writer = token(&["doc"], "rw", "writer");
    let reader = token(&["doc"], "ro", "reader");
    let mut socket = Socket::connect(&server).await;
    socket.open("doc", &writer).await;
    socket
        .message("doc", &encode_update(&edit(1, "content")))
        .await;
    assert_eq!(socket.next_for("doc").await, Reply::SyncStatus(1));

    let mut read_only = Socket::connect(&server).await;
    read_only.auth("doc", &reader).await;
    assert_eq!(
        read_only.next_for("doc").await,
        Reply::Authenticated("readonly".into())
    );
    // Its SyncStep2 brings nothing new: acknowledged, so its unsynced count reaches 0.
    read_only.sync("doc").await;
    read_only
        .message("doc", &encode_update(&edit(2, "vandal")))
        .await;
    assert_eq!(read_only.next_for("doc").await, Reply::SyncStatus(0));
    assert_eq!(room_text(&server, "doc").await, "content");
}

#[tokio::test]
async fn an_expired_token_closes_the_documents_it_opened() {
    let server = auth_server().await;
    let short = sign(json!({ "exp": now() + 2, "sub": "brief", "rooms": ["a"], "mode": "rw" }));
    let long = token(&["b"], "rw", "lasting");
    let mut socket = Socket::connect(&server).await;
    socket.open("a", &short).await;
    socket.open("b", &long).await;
    assert_eq!(
        socket
            .skip_to("a", |r| matches!(r, Reply::PermissionDenied(_)))
            .await,
        Reply::PermissionDenied("token expired".into())
    );
    // "a" is closed on the socket; "b" goes on.
    socket.message("a", &encode_update(&edit(1, "late"))).await;
    socket.message("b", &encode_update(&edit(2, "fine"))).await;
    assert_eq!(socket.next_for("b").await, Reply::SyncStatus(1));
    assert_eq!(room_text(&server, "a").await, "");
}

#[tokio::test]
async fn more_documents_than_the_limit_are_refused_and_close_frees_a_place() {
    let server =
        TestServer::start_with(|config| config.limits.max_documents_per_connection = 2).await;
    let mut socket = Socket::connect(&server).await;
    socket.open("one", "").await;
    socket.open("two", "").await;
    socket.auth("three", "").await;
    let Reply::PermissionDenied(reason) = socket.next_for("three").await else {
        panic!("the third document was not refused");
    };
    assert!(reason.contains("too many documents"), "{reason}");
    socket.message("one", &[7]).await;
    assert_eq!(
        socket.next_for("one").await,
        Reply::Close("provider_initiated".into())
    );
    socket.open("three", "").await;
    assert!(server.metric("ycord_limit_hits_total{reason=\"documents_per_connection\"}") >= 1.0);
}

#[tokio::test]
async fn sixty_documents_share_one_socket() {
    let server = TestServer::start().await;
    let mut socket = Socket::connect(&server).await;
    let keys: Vec<String> = (0..60).map(|i| format!("multi-{i}")).collect();
    for key in &keys {
        socket.open(key, "").await;
    }
    for (i, key) in keys.iter().enumerate() {
        socket
            .message(key, &encode_update(&edit(100 + i as u64, key)))
            .await;
    }
    let mut acknowledged = 0;
    while acknowledged < keys.len() {
        if let Some((_, Reply::SyncStatus(1))) = socket.next().await {
            acknowledged += 1;
        }
    }
    for key in &keys {
        assert_eq!(&room_text(&server, key).await, key);
    }
    assert_eq!(server.metric("ycord_documents_open"), 60.0);

    // Dropping the socket leaves every room: nothing stays behind.
    drop(socket);
    let left = async {
        while server.metric("ycord_documents_open") != 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, left).await.unwrap();
    for key in &keys {
        let info = api(&server, &format!("/api/rooms/{key}")).await;
        assert_eq!(info["connections"], 0, "{info}");
        assert_eq!(info["roster"], json!([]), "{info}");
    }
}

#[tokio::test]
async fn close_detaches_one_document_and_removes_its_presence() {
    let server = TestServer::start().await;
    let mut watcher = Socket::connect(&server).await;
    watcher.open("room", "").await;
    let mut socket = Socket::connect(&server).await;
    socket.open("room", "").await;
    socket.open("other", "").await;
    let mut awareness = Vec::new();
    awareness.write_var(1u32);
    awareness.write_var(42u64);
    awareness.write_var(1u32);
    awareness.write_string(r#"{"user":"ada"}"#);
    socket.message("room", &encode_awareness(&awareness)).await;
    watcher
        .skip_to("room", |r| matches!(r, Reply::Awareness(_)))
        .await;

    socket.message("room", &[7]).await;
    // The watcher hears the state removed (a null state) and the connection leave.
    let Reply::Awareness(removal) = watcher
        .skip_to("room", |r| matches!(r, Reply::Awareness(_)))
        .await
    else {
        unreachable!()
    };
    let entries = common::awareness_entries(&encode_awareness(&removal)).unwrap();
    assert_eq!(entries[&42].1, "null");
    // The socket still serves its other document.
    socket
        .message("other", &encode_update(&edit(5, "still here")))
        .await;
    assert_eq!(socket.next_for("other").await, Reply::SyncStatus(1));
}

#[tokio::test]
async fn stateless_messages_are_relayed_to_the_others_with_the_senders_identity() {
    let server = auth_server().await;
    let mut alice = Socket::connect(&server).await;
    alice.open("board", &token(&["board"], "rw", "alice")).await;
    let mut bob = Socket::connect(&server).await;
    bob.open("board", &token(&["board"], "rw", "bob")).await;

    let forged = r#"{"ycord":"editor","editor":{"user":"mallory","connection":1}}"#;
    alice.message("board", &stateless_body(forged)).await;
    let relayed = bob
        .skip_to(
            "board",
            |r| matches!(r, Reply::Stateless(e) if e["ycord"] == "relay"),
        )
        .await;
    let Reply::Stateless(event) = relayed else {
        unreachable!()
    };
    assert_eq!(event["from"]["user"], "alice");
    assert_eq!(event["payload"], forged);
    // Not back to the sender: alice's next stateless message is bob's, not her own.
    bob.message("board", &stateless_body("from bob")).await;
    let Reply::Stateless(event) = alice
        .skip_to(
            "board",
            |r| matches!(r, Reply::Stateless(e) if e["ycord"] == "relay"),
        )
        .await
    else {
        unreachable!()
    };
    assert_eq!(event["payload"], "from bob");
    assert_eq!(event["from"]["user"], "bob");
    assert!(server.metric("ycord_stateless_received_total") >= 2.0);
}

#[tokio::test]
async fn an_oversized_stateless_message_closes_the_socket() {
    let server = TestServer::start().await;
    let mut socket = Socket::connect(&server).await;
    socket.open("big", "").await;
    let huge = "x".repeat(ycord::connection::MAX_STATELESS_BYTES + 1);
    socket.message("big", &stateless_body(&huge)).await;
    assert_eq!(socket.closed().await, 1009);
}

#[tokio::test]
async fn a_stateless_flood_closes_the_socket() {
    let server = TestServer::start().await;
    let mut socket = Socket::connect(&server).await;
    socket.open("flood", "").await;
    for _ in 0..2000 {
        if socket
            .socket
            .send(Message::Binary(
                frame(&key_prefix("flood"), &stateless_body("spam"))
                    .to_vec()
                    .into(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(socket.closed().await, 1008);
    assert!(server.metric("ycord_limit_hits_total{reason=\"stateless_rate\"}") >= 1.0);
}

#[tokio::test]
async fn the_roster_names_everyone_and_the_editor_is_handed_over() {
    let server = auth_server().await;
    let mut alice = Socket::connect(&server).await;
    alice.auth("r", &token(&["r"], "rw", "alice")).await;
    let roster = alice
        .skip_to(
            "r",
            |r| matches!(r, Reply::Stateless(e) if e["ycord"] == "roster"),
        )
        .await;
    let Reply::Stateless(roster) = roster else {
        unreachable!()
    };
    assert_eq!(roster["you"]["user"], "alice");
    assert_eq!(roster["editor"]["user"], "alice");
    let alice_connection = roster["you"]["connection"].clone();

    let mut reader = Socket::connect(&server).await;
    reader.open("r", &token(&["r"], "ro", "reader")).await;
    let mut bob = Socket::connect(&server).await;
    bob.auth("r", &token(&["r"], "rw", "bob")).await;
    let Reply::Stateless(roster) = bob
        .skip_to(
            "r",
            |r| matches!(r, Reply::Stateless(e) if e["ycord"] == "roster"),
        )
        .await
    else {
        unreachable!()
    };
    assert_eq!(roster["editor"]["connection"], alice_connection);
    assert_eq!(roster["users"].as_array().unwrap().len(), 3);
    let Reply::Stateless(joined) = alice
        .skip_to(
            "r",
            |r| matches!(r, Reply::Stateless(e) if e["ycord"] == "joined" && e["user"] == "bob"),
        )
        .await
    else {
        unreachable!()
    };
    assert_eq!(joined["connections"], 1);

    // Over HTTP too.
    let info = api(&server, "/api/rooms/r").await;
    assert_eq!(info["editor"]["user"], "alice", "{info}");
    assert_eq!(info["roster"].as_array().unwrap().len(), 3, "{info}");

    // Alice leaves: bob, the other writer, takes over; the reader is never elected.
    drop(alice);
    let Reply::Stateless(editor) = reader
        .skip_to(
            "r",
            |r| matches!(r, Reply::Stateless(e) if e["ycord"] == "editor"),
        )
        .await
    else {
        unreachable!()
    };
    assert_eq!(editor["editor"]["user"], "bob");
}

#[tokio::test]
async fn an_idle_socket_gets_pings() {
    let server = TestServer::start_with(|config| config.ping_secs = 1).await;
    let mut socket = Socket::connect(&server).await;
    socket.open("quiet", "").await;
    // Within a few intervals, the single byte 09 comes (`next` returns None for it).
    let mut pinged = false;
    for _ in 0..20 {
        if socket.next().await.is_none() {
            pinged = true;
            break;
        }
    }
    assert!(pinged);
    // The provider's Pong is accepted.
    socket.send(vec![10]).await;
    socket
        .message("quiet", &encode_update(&edit(1, "awake")))
        .await;
    assert_eq!(socket.next_for("quiet").await, Reply::SyncStatus(1));
}

#[tokio::test]
async fn a_malformed_frame_closes_the_socket() {
    let server = TestServer::start().await;
    let mut socket = Socket::connect(&server).await;
    socket.send(vec![3, b'd', b'o', b'c', 42]).await;
    assert_eq!(socket.closed().await, 1007);
}

#[tokio::test]
async fn deleting_the_room_closes_its_documents_only() {
    let server = TestServer::start().await;
    let mut socket = Socket::connect(&server).await;
    socket.open("doomed", "").await;
    socket.open("kept", "").await;
    let (status, _) =
        common::call(common::http().delete(server.http_url("/api/rooms/doomed"))).await;
    assert!(status.is_success());
    assert_eq!(
        socket
            .skip_to("doomed", |r| matches!(r, Reply::PermissionDenied(_)))
            .await,
        Reply::PermissionDenied("room deleted".into())
    );
    // Joining it again is refused the same way.
    socket.auth("doomed", "").await;
    assert_eq!(
        socket.next_for("doomed").await,
        Reply::PermissionDenied("room deleted".into())
    );
    socket
        .message("kept", &encode_update(&edit(9, "alive")))
        .await;
    assert_eq!(socket.next_for("kept").await, Reply::SyncStatus(1));
}

#[tokio::test]
async fn under_a_base_path_the_dialect_lives_at_the_base_itself() {
    let server = TestServer::start_with(|config| config.base_path = "/yjs".into()).await;
    for path in ["/yjs", "/yjs/"] {
        let url = format!("ws://{}{path}", server.addr());
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut socket = Socket { socket };
        socket.open("under-base", "").await;
    }
}

#[tokio::test]
async fn a_silent_editor_hands_the_role_to_a_connection_that_speaks() {
    let server = TestServer::start_with(|config| config.awareness_timeout_secs = 1).await;
    let mut silent = Socket::connect(&server).await;
    silent.open("handover", "").await;
    let mut speaking = Socket::connect(&server).await;
    speaking.auth("handover", "").await;
    let Reply::Stateless(roster) = speaking
        .skip_to(
            "handover",
            |r| matches!(r, Reply::Stateless(e) if e["ycord"] == "roster"),
        )
        .await
    else {
        unreachable!()
    };
    let me = roster["you"]["connection"].clone();
    assert_ne!(
        roster["editor"]["connection"], me,
        "the first to join is the editor"
    );
    // Speak (a query is a message like any other) until the sweeper hands the role over.
    let handed_over = async {
        loop {
            speaking
                .message("handover", &encode_query_awareness())
                .await;
            let reply = tokio::time::timeout(Duration::from_millis(300), speaking.next()).await;
            if let Ok(Some((_, Reply::Stateless(event)))) = reply
                && event["ycord"] == "editor"
            {
                return event;
            }
        }
    };
    let event = tokio::time::timeout(WAIT, handed_over).await.unwrap();
    assert_eq!(event["editor"]["connection"], me);
}

#[tokio::test]
async fn a_token_refreshed_on_request_keeps_the_document_open() {
    let server = auth_server().await;
    let short = sign(json!({ "exp": now() + 2, "sub": "ada", "rooms": ["kept"], "mode": "rw" }));
    let mut socket = Socket::connect(&server).await;
    socket.open("kept", &short).await;
    // Halfway through the token's life, the server asks for a fresh one (as it would a minute
    // before the end of a longer one), and the provider answers with its Auth message.
    assert_eq!(
        socket.skip_to("kept", |r| *r == Reply::TokenRequest).await,
        Reply::TokenRequest
    );
    socket.auth("kept", &token(&["kept"], "rw", "ada")).await;
    // Past the first token's expiry the document still works.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    socket
        .message("kept", &encode_update(&edit(4, "renewed")))
        .await;
    assert_eq!(socket.next_for("kept").await, Reply::SyncStatus(1));
    assert_eq!(room_text(&server, "kept").await, "renewed");

    // A refresh with a token that does not grant the room closes the document.
    socket
        .auth("kept", &token(&["elsewhere"], "rw", "ada"))
        .await;
    assert_eq!(
        socket
            .skip_to("kept", |r| matches!(r, Reply::PermissionDenied(_)))
            .await,
        Reply::PermissionDenied("token does not grant this room".into())
    );
}

#[tokio::test]
async fn a_refreshed_token_sets_the_mode_and_must_name_the_same_user() {
    let server = auth_server().await;
    let mut alice = Socket::connect(&server).await;
    alice.open("modes", &token(&["modes"], "rw", "alice")).await;
    let mut bob = Socket::connect(&server).await;
    bob.open("modes", &token(&["modes"], "rw", "bob")).await;

    // Alice, the editor, refreshes with a read-only token: bob takes the role over, and
    // alice's updates are refused from then on.
    alice.auth("modes", &token(&["modes"], "ro", "alice")).await;
    let Reply::Stateless(event) = bob
        .skip_to(
            "modes",
            |r| matches!(r, Reply::Stateless(e) if e["ycord"] == "editor"),
        )
        .await
    else {
        unreachable!()
    };
    assert_eq!(event["editor"]["user"], "bob");
    alice
        .message("modes", &encode_update(&edit(1, "nope")))
        .await;
    assert_eq!(
        alice
            .skip_to("modes", |r| matches!(r, Reply::SyncStatus(_)))
            .await,
        Reply::SyncStatus(0)
    );

    // A refresh naming another user closes the document.
    bob.auth("modes", &token(&["modes"], "rw", "mallory")).await;
    assert_eq!(
        bob.skip_to("modes", |r| matches!(r, Reply::PermissionDenied(_)))
            .await,
        Reply::PermissionDenied("the new token names another user".into())
    );
    assert_eq!(room_text(&server, "modes").await, "");
}

#[tokio::test]
async fn a_socket_that_never_speaks_is_closed() {
    let server = TestServer::start_with(|config| config.limits.first_message_secs = 1).await;
    let mut socket = Socket::connect(&server).await;
    assert_eq!(socket.closed().await, 1008);
}

#[tokio::test]
async fn document_names_that_name_no_room_are_refused() {
    let server = TestServer::start().await;
    let mut socket = Socket::connect(&server).await;
    let too_long = "x".repeat(ycord::room::MAX_ROOM_NAME_BYTES + 1);
    for key in ["", "\0session-only", too_long.as_str()] {
        socket.auth(key, "").await;
        let Reply::PermissionDenied(reason) = socket.next_for(key).await else {
            panic!("document {key:?} was not refused");
        };
        assert!(reason.starts_with("invalid document name"), "{reason}");
    }
    // A key longer than any room plus a session suffix is not a frame ycord reads.
    let huge = "y".repeat(ycord::protocol::hocuspocus::MAX_DOCUMENT_KEY_BYTES + 1);
    socket.auth(&huge, "").await;
    assert_eq!(socket.closed().await, 1007);
}
