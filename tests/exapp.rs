//! ExApp mode against a stand-in Nextcloud (`common::nextcloud`): the AppAPI contract
//! (heartbeat, init, enabled, request authentication) and per-file permissions asked of
//! Nextcloud as the user, with real sockets and y-websocket clients.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::nextcloud::{Failure, StandIn, app_api_headers};
use common::{Client, TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use ycord::ServeConfig;
use yrs::encoding::write::Write;
use yrs::{Text, WriteTxn};

const APP_ID: &str = "ycord";
const SECRET: &str = "exapp-test-secret";

/// A stand-in Nextcloud and a ycord in ExApp mode asking it.
struct Setup {
    nextcloud: StandIn,
    server: TestServer,
}

async fn setup(adjust: impl FnOnce(&mut ServeConfig)) -> Setup {
    let nextcloud = StandIn::start(APP_ID, SECRET).await;
    let server = TestServer::start_with(|config| {
        nextcloud.configure(config);
        adjust(config);
    })
    .await;
    Setup { nextcloud, server }
}

/// AppAPI's headers for `user` (`""`: AppAPI itself).
fn signed(user: &str) -> HeaderMap {
    app_api_headers(APP_ID, SECRET, user)
}

impl Setup {
    fn ws_url(&self, room: &str) -> String {
        format!("ws://{}/ws/{room}", self.server.addr())
    }

    fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.addr())
    }

    /// A y-websocket client of `room` as `user`, synced; or the refused upgrade's status.
    async fn join(&self, room: &str, user: &str) -> Result<Client, u16> {
        Client::connect_with_headers(&self.ws_url(room), &signed(user)).await
    }

    async fn call(
        &self,
        method: http::Method,
        path: &str,
        headers: HeaderMap,
    ) -> (u16, serde_json::Value) {
        let request = common::http()
            .request(method, self.http_url(path))
            .headers(headers);
        let (status, body) = common::call(request).await;
        (
            status.as_u16(),
            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
        )
    }

    /// The room's text `t` as the HTTP API reads it (`room` percent-encoded).
    async fn stored_text(&self, room: &str) -> String {
        let path = format!("/api/rooms/{room}/state?format=json");
        let (status, body) = self.call(http::Method::GET, &path, signed("")).await;
        assert_eq!(status, 200, "{body}");
        body["t"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the stored text is `expected`.
    async fn wait_stored(&self, room: &str, expected: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let stored = self.stored_text(room).await;
            if stored == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stored text {stored:?}, expected {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn metric(&self, name: &str) -> f64 {
        self.server.metric(name)
    }
}

async fn append(client: &Client, addition: &str) {
    client
        .edit(|txn| {
            let t = txn.get_or_insert_text("t");
            let len = t.len(txn);
            t.insert(txn, len, addition);
        })
        .await;
}

/// Waits until `condition` holds, or fails after [`WAIT`].
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn heartbeat_answers_without_auth_even_while_disabled() {
    let setup = setup(|_| {}).await;
    let (status, body) = setup
        .call(http::Method::GET, "/heartbeat", HeaderMap::new())
        .await;
    assert_eq!((status, body), (200, serde_json::json!({"status": "ok"})));
    let (status, body) = setup
        .call(http::Method::PUT, "/enabled?enabled=0", signed(""))
        .await;
    assert_eq!((status, body), (200, serde_json::json!({"error": ""})));
    let (status, _) = setup
        .call(http::Method::GET, "/heartbeat", HeaderMap::new())
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn init_answers_at_once_then_reports_progress_100_while_appapi_calls_back() {
    let setup = setup(|_| {}).await;
    setup
        .nextcloud
        .set_app(&format!("http://{}", setup.server.addr()));
    let (status, body) = setup.call(http::Method::POST, "/init", signed("")).await;
    assert_eq!((status, body), (200, serde_json::json!({})));
    let report = setup.nextcloud.wait_for_progress(100).await;
    assert_eq!(report.method, "PUT");
    assert_eq!(report.path, "/ocs/v1.php/apps/app_api/ex-app/status");
    assert_eq!(report.user.as_deref(), Some(""), "signed as the app itself");
    assert_eq!(report.headers["ocs-apirequest"], "true");
    assert!(
        report.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(report.status, 200);
    // The stand-in, like AppAPI, called /heartbeat and /enabled back before answering.
    let callbacks = setup.nextcloud.callbacks();
    assert!(
        callbacks.contains(&("/heartbeat".to_owned(), 200))
            && callbacks.contains(&("/enabled?enabled=1".to_owned(), 200)),
        "{callbacks:?}"
    );
}

#[tokio::test]
async fn missing_or_forged_appapi_headers_are_refused_401_and_load_nothing() {
    let setup = setup(|_| {}).await;
    setup.nextcloud.grant("alice", 42, "RGDNVW");
    let mut forged = signed("alice");
    forged.insert(
        "authorization-app-api",
        base64_of("alice:guessed").parse().unwrap(),
    );
    let mut other_app = signed("alice");
    other_app.insert("ex-app-id", "other".parse().unwrap());
    let mut garbage = signed("alice");
    garbage.insert("authorization-app-api", "%%%".parse().unwrap());
    for (what, headers) in [
        ("none", HeaderMap::new()),
        ("forged secret", forged),
        ("another app", other_app),
        ("garbage", garbage),
    ] {
        let refused = Client::connect_with_headers(&setup.ws_url("file:text/42"), &headers).await;
        assert_eq!(refused.err(), Some(401), "upgrade with {what}");
        let hocuspocus = Client::connect_with_headers(&setup.ws_url(""), &headers).await;
        assert_eq!(
            hocuspocus.err(),
            Some(401),
            "Hocuspocus upgrade with {what}"
        );
        for (method, path) in [
            (http::Method::GET, "/metrics"),
            (http::Method::POST, "/init"),
            (http::Method::PUT, "/enabled?enabled=0"),
            (http::Method::GET, "/api/rooms"),
        ] {
            let (status, _) = setup.call(method, path, headers.clone()).await;
            assert_eq!(status, 401, "{path} with {what}");
        }
    }
    assert_eq!(
        setup.nextcloud.searches("alice", 42),
        0,
        "Nextcloud was asked"
    );
    assert_eq!(setup.metric("ycord_rooms_loaded"), 0.0);
    assert!(setup.metric("ycord_auth_failures_total{reason=\"appapi_wrong_secret\"}") >= 2.0);
    // The app is still enabled: the refused /enabled calls changed nothing.
    let alice = setup.join("file:text/42", "alice").await;
    assert!(alice.is_ok());
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn nextcloud_decides_read_write_read_only_and_denied_per_file() {
    let setup = setup(|_| {}).await;
    let nextcloud = &setup.nextcloud;
    nextcloud.grant("alice", 42, "RGDNVW");
    // A read-only share may still be deleted, renamed, moved and re-shared: only W writes.
    nextcloud.grant("bob", 42, "SRGDNV");
    nextcloud.grant("carol", 7, "RGDNVW");

    let alice = setup.join("file:text/42", "alice").await.unwrap();
    let bob = setup.join("file:text/42", "bob").await.unwrap();
    assert_eq!(setup.join("file:text/42", "carol").await.err(), Some(403));
    assert_eq!(setup.join("file:42", "carol").await.err(), Some(403));
    assert!(setup.join("file:7", "carol").await.is_ok());

    append(&alice, "from alice ").await;
    bob.wait_text("t", "from alice ").await;
    append(&bob, "from bob").await;
    // Alice writes again: once her second edit is stored, bob's would be too had it been
    // applied (it came first on the same server).
    append(&alice, "again").await;
    setup
        .wait_stored("file:text%2F42", "from alice again")
        .await;

    // The SEARCH was made as each user, exactly as Nextcloud needs it.
    let searches: Vec<_> = nextcloud
        .calls()
        .into_iter()
        .filter(|call| call.method == "SEARCH")
        .collect();
    let alices = searches
        .iter()
        .find(|call| call.user.as_deref() == Some("alice"))
        .expect("a SEARCH as alice");
    assert_eq!(alices.path, "/remote.php/dav/");
    assert!(
        alices.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/xml")
    );
    assert!(alices.body.contains("<d:href>/files/alice</d:href>"));
    assert!(alices.body.contains("<d:literal>42</d:literal>"));
    assert!(searches.iter().all(|call| call.status == 207));
}

#[tokio::test]
async fn the_percent_encoded_room_is_the_same_room() {
    let setup = setup(|_| {}).await;
    setup.nextcloud.grant("alice", 42, "RGDNVW");
    setup.nextcloud.grant("bob", 42, "RGDNVW");
    let alice = setup.join("file:text/42", "alice").await.unwrap();
    let bob = setup.join("file%3Atext%2F42", "bob").await.unwrap();
    append(&alice, "one room").await;
    bob.wait_text("t", "one room").await;
}

#[tokio::test]
async fn answers_are_cached_for_new_sessions() {
    let cached = setup(|_| {}).await;
    cached.nextcloud.grant("alice", 42, "RGDNVW");
    let _first = cached.join("file:text/42", "alice").await.unwrap();
    let _second = cached.join("file:text/42", "alice").await.unwrap();
    assert_eq!(cached.nextcloud.searches("alice", 42), 1);

    let uncached = setup(|config| config.exapp.acl_cache_secs = 0).await;
    uncached.nextcloud.grant("alice", 42, "RGDNVW");
    let _first = uncached.join("file:text/42", "alice").await.unwrap();
    let _second = uncached.join("file:text/42", "alice").await.unwrap();
    assert_eq!(uncached.nextcloud.searches("alice", 42), 2);
}

#[tokio::test]
async fn a_revoked_permission_closes_the_session_4403_and_a_downgrade_makes_it_read_only() {
    let setup = setup(|config| config.exapp.acl_recheck_secs = 1).await;
    let nextcloud = &setup.nextcloud;
    nextcloud.grant("alice", 42, "RGDNVW");
    nextcloud.grant("bob", 42, "RGDNVW");
    let alice = setup.join("file:text/42", "alice").await.unwrap();
    let bob = setup.join("file:text/42", "bob").await.unwrap();

    nextcloud.revoke("bob", 42);
    let close = bob.wait_closed().await;
    assert_eq!(close.map(|(code, _)| code), Some(4403));
    assert!(!alice.ended(), "alice's session must stay open");
    assert_eq!(setup.join("file:text/42", "bob").await.err(), Some(403));

    nextcloud.grant("alice", 42, "RGDNV");
    eventually("the downgrade applied", || {
        setup.metric("ycord_permission_changes_total{reason=\"read_only\"}") >= 1.0
    })
    .await;
    append(&alice, "after the downgrade").await;
    // The refusal comes back as a y-websocket permission-denied Auth message.
    alice
        .wait_for("a permission-denied message", |client| {
            client
                .frames()
                .iter()
                .any(|frame| frame.first() == Some(&2))
        })
        .await;
    assert_eq!(setup.stored_text("file:text%2F42").await, "");

    // Given back, it writes again.
    nextcloud.grant("alice", 42, "RGDNVW");
    eventually("the upgrade applied", || {
        setup.metric("ycord_permission_changes_total{reason=\"read_write\"}") >= 1.0
    })
    .await;
    // Yjs keeps the refused edit in alice's document and her next update depends on it: a
    // stock client answers the server's resync request with its whole state (this test
    // client sends it itself), and both are stored.
    append(&alice, "!").await;
    alice.send_sync_step1().await;
    setup
        .wait_stored("file:text%2F42", "after the downgrade!")
        .await;
    assert!(!alice.ended());
}

#[tokio::test]
async fn nextcloud_failing_or_hanging_answers_503_never_401_or_403() {
    let setup = setup(|config| config.exapp.acl_recheck_secs = 1).await;
    let nextcloud = &setup.nextcloud;
    nextcloud.grant("alice", 42, "RGDNVW");
    let open = setup.join("file:text/42", "alice").await.unwrap();

    nextcloud.set_failure(Some(Failure::Status(503)));
    assert_eq!(setup.join("file:text/43", "alice").await.err(), Some(503));
    nextcloud.set_failure(Some(Failure::Status(500)));
    assert_eq!(setup.join("file:text/44", "alice").await.err(), Some(503));
    nextcloud.set_failure(Some(Failure::Hang));
    assert_eq!(setup.join("file:text/45", "alice").await.err(), Some(503));
    // Open sessions keep their access while Nextcloud does not answer their check.
    eventually("a failed recheck", || {
        setup.metric("ycord_nextcloud_lookups_total{reason=\"unavailable\"}") >= 4.0
    })
    .await;
    assert!(!open.ended());
    nextcloud.set_failure(None);

    // Nothing listens at all.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = TestServer::start_with(|config| {
        setup.nextcloud.configure(config);
        config.exapp.nextcloud_url = Some(format!("http://127.0.0.1:{port}"));
    })
    .await;
    let url = format!("ws://{}/ws/file:text/42", unreachable.addr());
    let refused = Client::connect_with_headers(&url, &signed("alice")).await;
    assert_eq!(refused.err(), Some(503));
}

#[tokio::test]
async fn rooms_that_are_not_files_need_a_ycord_token() {
    let setup = setup(|_| {}).await;
    assert_eq!(setup.join("notes", "alice").await.err(), Some(403));
    assert_eq!(setup.join("file:text/x", "alice").await.err(), Some(403));
    // Anonymous visitors cannot open file rooms.
    setup.nextcloud.grant("", 42, "RGDNVW");
    assert_eq!(setup.join("file:42", "").await.err(), Some(403));

    let secret = "deck-secret";
    let with_tokens = setup_with_auth(secret).await;
    let token = common::sign(
        secret,
        serde_json::json!({"exp": common::now() + 600, "rooms": ["deck:card/9"], "sub": "deck"}),
    );
    let url = format!("{}?token={token}", with_tokens.ws_url("deck:card/9"));
    assert!(
        Client::connect_with_headers(&url, &signed("alice"))
            .await
            .is_ok()
    );
    assert_eq!(
        with_tokens.join("deck:card/9", "alice").await.err(),
        Some(401)
    );
    // A token for one room opens no other, and file rooms still ask Nextcloud.
    let other = format!("{}?token={token}", with_tokens.ws_url("deck:card/10"));
    let refused = Client::connect_with_headers(&other, &signed("alice")).await;
    assert_eq!(refused.err(), Some(403));
    with_tokens.nextcloud.grant("alice", 42, "RGDNVW");
    assert!(with_tokens.join("file:42", "alice").await.is_ok());
}

async fn setup_with_auth(secret: &str) -> Setup {
    let secret = secret.to_owned();
    setup(move |config| config.auth_secret = Some(secret)).await
}

#[tokio::test]
async fn connect_rates_count_per_nextcloud_user_not_per_address() {
    let setup = setup(|config| config.limits.max_connects_per_ip_per_sec = 1).await;
    setup.nextcloud.grant("alice", 42, "RGDNVW");
    setup.nextcloud.grant("bob", 42, "RGDNVW");
    let mut alices = Vec::new();
    let mut refused = None;
    for _ in 0..10 {
        match setup.join("file:42", "alice").await {
            Ok(client) => alices.push(client),
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    assert_eq!(refused, Some(429));
    assert_eq!(alices.len(), 5, "a burst of five seconds' worth");
    // Every client comes from 127.0.0.1, yet bob is not alice.
    assert!(setup.join("file:42", "bob").await.is_ok());
}

#[tokio::test]
async fn the_roster_names_nextcloud_users() {
    let setup = setup(|_| {}).await;
    setup.nextcloud.grant("alice", 42, "RGDNVW");
    setup.nextcloud.grant("bob", 42, "RGDNV");
    let _alice = setup.join("file:text/42", "alice").await.unwrap();
    let _bob = setup.join("file:text/42", "bob").await.unwrap();
    let (status, info) = setup
        .call(http::Method::GET, "/api/rooms/file:text%2F42", signed(""))
        .await;
    assert_eq!(status, 200, "{info}");
    let mut roster: Vec<(String, String)> = info["roster"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| {
            (
                user["user"].as_str().unwrap().to_owned(),
                user["mode"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    roster.sort();
    assert_eq!(
        roster,
        [("alice".into(), "rw".into()), ("bob".into(), "ro".into())]
    );
}

#[tokio::test]
async fn disabling_closes_sockets_1001_and_refuses_upgrades_until_enabled() {
    let setup = setup(|_| {}).await;
    setup.nextcloud.grant("alice", 42, "RGDNVW");
    let alice = setup.join("file:42", "alice").await.unwrap();
    let (status, body) = setup
        .call(http::Method::PUT, "/enabled?enabled=0", signed(""))
        .await;
    assert_eq!((status, body), (200, serde_json::json!({"error": ""})));
    assert_eq!(alice.wait_closed().await.map(|(code, _)| code), Some(1001));
    assert_eq!(setup.join("file:42", "alice").await.err(), Some(503));

    let (status, _) = setup
        .call(http::Method::PUT, "/enabled?enabled=1", signed(""))
        .await;
    assert_eq!(status, 200);
    let again = setup.join("file:42", "alice").await.unwrap();
    append(&again, "back").await;
    again.wait_text("t", "back").await;
    let (status, _) = setup
        .call(http::Method::PUT, "/enabled?enabled=maybe", signed(""))
        .await;
    assert_eq!(status, 400);
}

/// A Hocuspocus socket in ExApp mode: the user is the socket's, each document's permission
/// is the file's.
#[tokio::test]
async fn hocuspocus_documents_are_opened_by_the_files_permission() {
    let setup = setup(|config| config.exapp.acl_recheck_secs = 1).await;
    setup.nextcloud.grant("alice", 42, "RGDNVW");
    setup.nextcloud.grant("alice", 43, "RGDNV");
    let mut request = setup.ws_url("").into_client_request().unwrap();
    request.headers_mut().extend(signed("alice"));
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    for key in ["file:text/42", "file:text/43", "file:text/44"] {
        let mut auth = ycord::protocol::hocuspocus::key_prefix(key).to_vec();
        auth.extend_from_slice(&[2, 0]);
        auth.write_string("");
        auth.write_string("4.8.0");
        socket.send(Message::Binary(auth.into())).await.unwrap();
    }
    let mut answers = Vec::new();
    while answers.len() < 3 {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Binary(frame) = frame else {
            continue;
        };
        if let Some(answer) = auth_answer(&frame) {
            answers.push(answer);
        }
    }
    answers.sort();
    assert_eq!(
        answers,
        [
            ("file:text/42".to_owned(), 2, "read-write".to_owned()),
            ("file:text/43".to_owned(), 2, "readonly".to_owned()),
            (
                "file:text/44".to_owned(),
                1,
                "no access to file 44".to_owned()
            ),
        ]
    );

    // A revoked file closes its document, not the socket: the other one stays open.
    setup.nextcloud.revoke("alice", 42);
    let revoked = loop {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("the revocation in time")
            .unwrap()
            .unwrap();
        if let Message::Binary(frame) = frame
            && let Some(answer) = auth_answer(&frame)
        {
            break answer;
        }
    };
    assert_eq!(
        revoked,
        (
            "file:text/42".to_owned(),
            1,
            "permission revoked".to_owned()
        )
    );
    let (status, info) = setup
        .call(http::Method::GET, "/api/rooms/file:text%2F43", signed(""))
        .await;
    assert_eq!(status, 200);
    assert_eq!(info["connections"], 1, "{info}");
}

/// (document, Auth kind: 1 PermissionDenied or 2 Authenticated, its text) of an Auth frame.
fn auth_answer(frame: &[u8]) -> Option<(String, u8, String)> {
    use yrs::encoding::read::{Cursor, Read};
    let mut cursor = Cursor::new(frame);
    let key = cursor.read_string().ok()?.to_owned();
    let kind: u64 = cursor.read_var().ok()?;
    if kind != 2 {
        return None;
    }
    let answer = cursor.read_u8().ok()?;
    let text = cursor.read_string().ok()?.to_owned();
    Some((key, answer, text))
}

#[tokio::test]
async fn at_most_16_searches_are_in_flight_when_editors_reconnect_at_once() {
    let setup = setup(|_| {}).await;
    setup.nextcloud.set_failure(Some(Failure::Hang));
    let base = format!("ws://{}/ws", setup.server.addr());
    let joins = tokio::spawn(futures_util::future::join_all((0..20).map(move |file| {
        let url = format!("{base}/file:{file}");
        async move {
            Client::connect_with_headers(&url, &signed("alice"))
                .await
                .err()
        }
    })));
    // Well before the 5 s lookup timeout: 16 asked, the others wait for a slot.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(setup.nextcloud.calls().len(), 16);
    let statuses = joins.await.unwrap();
    assert!(
        statuses.iter().all(|status| *status == Some(503)),
        "{statuses:?}"
    );
}
