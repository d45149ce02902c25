//! The `ycord-bench` load tool, run as a process against an in-process server with tiny
//! parameters: its checks pass against a correct server, and an unreachable target is a clear
//! error.

use std::process::Output;

use ycord::{ServeConfig, Server};

/// An in-process ycord on port 0 with its data in a temporary directory; stopped when dropped.
struct TestServer {
    server: Server,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = ServeConfig::for_tests(dir.path().join("data"));
        let server = Server::start(config).await.expect("server starts");
        TestServer { server, _dir: dir }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.server.local_addr().expect("a TCP listener"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.shutdown();
    }
}

async fn bench(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ycord-bench"))
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("ycord-bench runs")
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_delivers_every_edit_to_every_other_client() {
    let server = TestServer::start().await;
    let url = server.url();
    let output = bench(&[
        "edit",
        "--url",
        &url,
        "--rooms",
        "2",
        "--clients",
        "3",
        "--hz",
        "20",
        "--seconds",
        "1",
        "--json",
        "--quiet",
    ])
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let expected = report["expected_deliveries"].as_u64().unwrap();
    // 2 rooms × 3 clients × ~20 edits, each delivered to the 2 other clients of its room.
    assert!(expected >= 200, "{report}");
    assert_eq!(report["delivered"].as_u64().unwrap(), expected, "{report}");
    assert!(report["latency"]["max_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_readers_end_with_the_trace_text() {
    let server = TestServer::start().await;
    let url = server.url();
    let output = bench(&[
        "replay",
        "--url",
        &url,
        "--limit",
        "2000",
        "--readers",
        "2",
        "--json",
        "--quiet",
    ])
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["updates"], 2000, "{report}");
    assert_eq!(
        report["reader_text_matches"],
        serde_json::json!([true, true]),
        "{report}"
    );
    assert!(report["updates_per_s"].as_f64().unwrap() > 0.0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_is_a_clear_error_naming_the_url() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}");
    let output = bench(&["edit", "--url", &url, "--seconds", "1", "--quiet"]).await;
    assert!(!output.status.success(), "{}", describe(&output));
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&url), "{}", describe(&output));
    assert!(stderr.contains("cannot reach"), "{}", describe(&output));
}
