//! ExApp mode with stock y-websocket clients from npm (`tests/interop/exapp.mjs`), against a
//! stand-in Nextcloud: over TCP in process, and from the real binary started with the
//! environment AppAPI and HaRP give an ExApp container, on its unix socket.

#![allow(clippy::unwrap_used)]

mod common;
mod ycord_bin;

use std::path::Path;
use std::time::Duration;

use common::TestServer;
use common::nextcloud::StandIn;
use common::node::{NodeScript, ensure_node_deps};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ycord_bin::EXIT_WAIT;

const APP_ID: &str = "ycord";
const SECRET: &str = "exapp-interop-secret";
const ROOM: &str = "file:text/42";

/// Runs the scenario against `server_url`: revokes bob when the script is ready.
async fn scenario(nextcloud: &StandIn, server_url: &str) {
    nextcloud.grant("alice", 42, "RGDNVW");
    nextcloud.grant("bob", 42, "SRGDNV");
    let mut script = NodeScript::spawn("exapp.mjs", &[server_url, ROOM, APP_ID, SECRET]);
    script.expect_line("READY").await;
    nextcloud.revoke("bob", 42);
    script.send_line("REVOKED").await;
    script.expect_line("DONE").await;
    script.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_clients_get_the_files_permission_and_a_revoked_one_stops() {
    ensure_node_deps();
    let nextcloud = StandIn::start(APP_ID, SECRET).await;
    let server = TestServer::start_with(|config| {
        nextcloud.configure(config);
        config.exapp.acl_recheck_secs = 1;
    })
    .await;
    scenario(&nextcloud, &format!("ws://{}/ws", server.addr())).await;
}

/// `GET path` over the unix socket; the status and body, or `None` while nothing answers.
async fn unix_get(socket: &Path, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::UnixStream::connect(socket).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: ycord\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_in_an_exapp_container_serves_harps_unix_socket() {
    ensure_node_deps();
    let nextcloud = StandIn::start(APP_ID, SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("exapp.sock");
    let storage = dir.path().join("nc_app_ycord_data");
    std::fs::create_dir(&storage).unwrap();
    // A killed process leaves its socket file behind: the next start replaces it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());

    let mut command = ycord_bin::command(["serve"]);
    command
        .env("APP_ID", APP_ID)
        .env("APP_SECRET", SECRET)
        .env("APP_VERSION", "0.1.0")
        .env("APP_HOST", "0.0.0.0")
        .env("APP_PORT", "23000")
        .env("APP_PERSISTENT_STORAGE", &storage)
        .env("NEXTCLOUD_URL", nextcloud.url())
        .env("AA_VERSION", "32.0.0")
        .env("HP_SHARED_KEY", "harp-shared-key")
        .env("HP_EXAPP_SOCK", &socket)
        .env("YCORD_ACL_RECHECK_SECS", "1")
        .current_dir(dir.path());
    let mut child = command.spawn().unwrap();
    let deadline = tokio::time::Instant::now() + ycord_bin::START_WAIT;
    let heartbeat = loop {
        if let Some(answer) = unix_get(&socket, "/heartbeat").await {
            break answer;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "ycord exited before serving the unix socket"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no heartbeat in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(heartbeat.0, 200);
    assert!(
        heartbeat.1.contains(r#"{"status":"ok"}"#),
        "{}",
        heartbeat.1
    );
    // Only the unix socket: nothing on APP_HOST:APP_PORT.
    assert!(
        tokio::net::TcpStream::connect("127.0.0.1:23000")
            .await
            .is_err()
    );
    // Unsigned requests other than the heartbeat are refused.
    assert_eq!(
        unix_get(&socket, "/metrics").await.map(|(s, _)| s),
        Some(401)
    );

    let url = format!("ws+unix://{}:/ws", socket.display());
    scenario(&nextcloud, &url).await;

    ycord_bin::signal(child.id().unwrap(), "TERM");
    let status = tokio::time::timeout(EXIT_WAIT, child.wait())
        .await
        .expect("ycord exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(!socket.exists(), "the socket file is removed at exit");
    let stored: Vec<_> = std::fs::read_dir(&storage).unwrap().collect();
    assert!(
        !stored.is_empty(),
        "nothing stored in APP_PERSISTENT_STORAGE"
    );
    assert!(
        !dir.path().join("ycord-data").exists(),
        "data went to the default directory"
    );
}
