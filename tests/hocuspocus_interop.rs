//! Interop with the stock Hocuspocus client: runs the node scenarios `tests/interop/hocuspocus_*.mjs`
//! (the npm `@hocuspocus/provider`, see the README there) against ycord's Hocuspocus dialect
//! (a WebSocket on the server's root url, every frame prefixed with its document name).
//!
//! Needs `node` and `npm` on the PATH; dependencies are installed with `npm ci` on first use.
//! A missing node is a failure, never a silent skip.

#![allow(clippy::unwrap_used)]

mod common;
mod ycord_bin;

use common::node::{NodeScript, ensure_node_deps, run_node};
use common::{Client, TestServer, now, sign, text, unique_room};
use serde_json::json;
use ycord_bin::{EXIT_WAIT, Ycord};
use yrs::Doc;

const SECRET: &str = "test-secret-for-hocuspocus";

/// A valid token of user `sub` for `rooms` in `mode` ("rw" or "ro"), expiring in an hour.
fn token(sub: &str, rooms: &[&str], mode: &str) -> String {
    sign(
        SECRET,
        json!({ "exp": now() + 3600, "sub": sub, "rooms": rooms, "mode": mode }),
    )
}

async fn auth_server() -> TestServer {
    TestServer::start_with(|config| config.auth_secret = Some(SECRET.into())).await
}

/// A y-websocket client of `room` (with `token` if given) once synced: a server-side view.
async fn y_websocket_view(server: &TestServer, room: &str, token: Option<&str>) -> Client {
    let url = match token {
        Some(token) => format!("{}?token={token}", server.room_url(room)),
        None => server.room_url(room),
    };
    Client::connect_with_doc(&url, Doc::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_hocuspocus_providers_sync_and_get_acknowledged() {
    ensure_node_deps();
    let server = TestServer::start().await;
    let room = unique_room("hp-sync");
    run_node("hocuspocus_sync.mjs", &[&server.url(), &room]).await;
    let view = y_websocket_view(&server, &room, None).await;
    let content = text(&view.doc, "text");
    assert!(
        content == "from-A from-B " || content == "from-B from-A ",
        "the room holds {content:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_hocuspocus_multiplexes_sixty_documents_on_one_socket() {
    ensure_node_deps();
    let server = TestServer::start().await;
    let room = unique_room("hp-mux");
    run_node("hocuspocus_multiplex.mjs", &[&server.url(), &room, "60"]).await;
    for i in [0, 31, 59] {
        let view = y_websocket_view(&server, &format!("{room}-{i}"), None).await;
        assert_eq!(
            text(&view.doc, "text"),
            format!("s1-doc-{i};s2-doc-{i};"),
            "document {i}"
        );
    }
}

/// `--max-documents-per-connection 5` on the real binary: the 6th and 7th document of one
/// socket are refused (PermissionDenied) while the socket stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_hocuspocus_documents_beyond_the_per_socket_limit_are_refused() {
    ensure_node_deps();
    let dir = tempfile::tempdir().unwrap();
    let server = Ycord::start(
        &dir.path().join("data"),
        &["--max-documents-per-connection", "5"],
    )
    .await;
    let url = format!("ws://{}", server.addr);
    let room = unique_room("hp-limit");
    run_node("hocuspocus_doc_limit.mjs", &[&url, &room, "5"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_hocuspocus_providers_exchange_awareness() {
    ensure_node_deps();
    let server = TestServer::start().await;
    run_node(
        "hocuspocus_awareness.mjs",
        &[&server.url(), &unique_room("hp-aw")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_hocuspocus_stateless_messages_are_relayed_in_an_envelope() {
    ensure_node_deps();
    let server = TestServer::start().await;
    run_node(
        "hocuspocus_stateless.mjs",
        &[&server.url(), &unique_room("hp-stateless")],
    )
    .await;
}

/// With --auth-secret the envelope's user is the token's `sub`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_hocuspocus_stateless_relay_names_the_token_user() {
    ensure_node_deps();
    let server = auth_server().await;
    let room = unique_room("hp-stateless-auth");
    let alice = token("alice", &[&room], "rw");
    let bob = token("bob", &[&format!("{room}*")], "rw");
    run_node(
        "hocuspocus_stateless.mjs",
        &[&server.url(), &room, &alice, &bob],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_hocuspocus_roster_and_editor_hand_over_without_auth() {
    ensure_node_deps();
    let server = TestServer::start().await;
    run_node(
        "hocuspocus_roster.mjs",
        &[&server.url(), &unique_room("hp-roster")],
    )
    .await;
}

/// With tokens: alice (A), then bob (B), then alice again (A2). When A leaves, the editor role
/// goes to A2 (same user first) even though B has been there longer; when A2 leaves, to B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_hocuspocus_editor_hand_over_prefers_the_same_user() {
    ensure_node_deps();
    let server = auth_server().await;
    let room = unique_room("hp-roster-auth");
    let alice = token("alice", &[&room], "rw");
    let bob = token("bob", &[&format!("{room}*")], "rw");
    let alice_again = token("alice", &[&room], "rw");
    run_node(
        "hocuspocus_roster.mjs",
        &[&server.url(), &room, &alice, &bob, &alice_again],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_hocuspocus_bad_tokens_are_refused_per_document() {
    ensure_node_deps();
    let server = auth_server().await;
    let room = unique_room("hp-auth");
    let second = format!("{room}-b");
    let good = token("alice", &[&room, &second], "rw");
    let forged = sign(
        "not-the-secret",
        json!({ "exp": now() + 3600, "sub": "mallory", "rooms": [&room], "mode": "rw" }),
    );
    let other_room = token("alice", &["some-other-room"], "rw");
    let expired = sign(
        SECRET,
        json!({ "exp": now() - 3600, "sub": "alice", "rooms": [&room], "mode": "rw" }),
    );
    run_node(
        "hocuspocus_auth.mjs",
        &[&server.url(), &room, &good, &forged, &other_room, &expired],
    )
    .await;
    let view = y_websocket_view(&server, &room, Some(good.as_str())).await;
    assert_eq!(text(&view.doc, "text"), "secret ");
    let view = y_websocket_view(&server, &second, Some(good.as_str())).await;
    assert_eq!(text(&view.doc, "text"), "g2 ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_hocuspocus_provider_refreshes_its_token_when_asked() {
    ensure_node_deps();
    let server = auth_server().await;
    let room = unique_room("hp-refresh");
    let short = sign(
        SECRET,
        json!({ "exp": now() + 3, "sub": "alice", "rooms": [&room], "mode": "rw" }),
    );
    let long = token("alice", &[&room], "rw");
    run_node(
        "hocuspocus_token_refresh.mjs",
        &[&server.url(), &room, &short, &long, "3000"],
    )
    .await;
    let view = y_websocket_view(&server, &room, Some(long.as_str())).await;
    assert_eq!(text(&view.doc, "text"), "after refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_hocuspocus_read_only_token_syncs_but_cannot_write() {
    ensure_node_deps();
    let server = auth_server().await;
    let room = unique_room("hp-ro");
    let rw = token("writer", &[&room], "rw");
    let ro = token("reader", &[&room], "ro");
    run_node("hocuspocus_readonly.mjs", &[&server.url(), &room, &rw, &ro]).await;
    let view = y_websocket_view(&server, &room, Some(ro.as_str())).await;
    assert_eq!(text(&view.doc, "text"), "from-rw more ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_hocuspocus_provider_sends_and_receives_a_two_megabyte_document() {
    ensure_node_deps();
    let server = TestServer::start().await;
    let room = unique_room("hp-large");
    let bytes = 2 * 1024 * 1024;
    run_node(
        "hocuspocus_large.mjs",
        &[&server.url(), &room, &bytes.to_string()],
    )
    .await;
    let view = y_websocket_view(&server, &room, None).await;
    assert_eq!(text(&view.doc, "text").len(), bytes);
}

/// Checks the room after `hocuspocus_restart.mjs`: both offline edits after the first one.
async fn assert_restart_content(url: &str, room: &str) {
    let view = Client::connect_with_doc(&format!("{url}/{room}"), Doc::new()).await;
    let content = text(&view.doc, "text");
    assert!(
        content == "before-restart offline-A offline-B "
            || content == "before-restart offline-B offline-A ",
        "the room holds {content:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_hocuspocus_providers_reconnect_after_a_graceful_restart() {
    ensure_node_deps();
    let mut server = TestServer::start().await;
    let url = server.url();
    let room = unique_room("hp-restart");
    let mut script = NodeScript::spawn("hocuspocus_restart.mjs", &[&url, &room]);
    script.expect_line("READY_FOR_RESTART").await;
    server.restart().await;
    script.send_line("RESTARTED").await;
    script.expect_line("DONE").await;
    script.finish().await;
    assert_restart_content(&url, &room).await;
}

/// The same with a crash: the real binary is killed with SIGKILL, then started again on the
/// same port and data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_hocuspocus_providers_reconnect_after_a_crash() {
    ensure_node_deps();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flush = ["--flush-ms", "50"];
    let mut first = Ycord::start(&data, &flush).await;
    let addr = first.addr;
    let url = format!("ws://{addr}");
    let room = unique_room("hp-crash");
    let mut script = NodeScript::spawn("hocuspocus_restart.mjs", &[&url, &room]);
    script.expect_line("READY_FOR_RESTART").await;
    first.signal("KILL");
    first.wait_exit(EXIT_WAIT).await;
    let _second = Ycord::start_on(&addr.to_string(), &data, &flush).await;
    script.send_line("RESTARTED").await;
    script.expect_line("DONE").await;
    script.finish().await;
    assert_restart_content(&url, &room).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_hocuspocus_and_y_websocket_clients_share_a_room() {
    ensure_node_deps();
    let server = TestServer::start().await;
    run_node(
        "hocuspocus_mixed.mjs",
        &[&server.url(), &unique_room("hp-mixed")],
    )
    .await;
}
