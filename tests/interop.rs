//! Interop with the stock JavaScript clients: runs the node scenarios of `tests/interop/`
//! (the npm `y-websocket` client, see the README there) against ycord from `cargo test`.
//!
//! Needs `node` and `npm` on the PATH; dependencies are installed with `npm ci` on first use.
//! A missing node is a failure, never a silent skip.

#![allow(clippy::unwrap_used)]

mod common;
mod ycord_bin;

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::node::{SCRIPT_TIMEOUT, ensure_node_deps, interop_dir, run_node};
use common::{TestServer, unique_room};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use ycord_bin::{EXIT_WAIT, Ycord};

/// `node <script> <url> <room>` in the interop directory, killed when dropped.
fn node(script: &str, url: &str, room: &str) -> Command {
    ensure_node_deps();
    let mut command = Command::new("node");
    command
        .arg(interop_dir().join(script))
        .args([url, room])
        .current_dir(interop_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs a self-contained scenario to its end and asserts it passed.
async fn run_scenario(script: &str, url: &str, room: &str) {
    run_node(script, &[url, room]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_clients_converge() {
    ensure_node_deps();
    let server = TestServer::start().await;
    run_scenario("convergence.mjs", &server.url(), &unique_room("conv")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_clients_exchange_awareness() {
    ensure_node_deps();
    let server = TestServer::start().await;
    run_scenario("awareness.mjs", &server.url(), &unique_room("aw")).await;
}

/// `restart.mjs` driven over stdio: its stdout lines, its stdin, its stderr collected.
struct RestartScript {
    child: Child,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stderr: Arc<Mutex<String>>,
}

impl RestartScript {
    fn start(url: &str, room: &str) -> RestartScript {
        let mut command = node("restart.mjs", url, room);
        command.stdin(Stdio::piped());
        let mut child = command.spawn().expect("spawn node");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        collect(child.stderr.take().expect("piped stderr"), stderr.clone());
        RestartScript {
            child,
            stdout,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the next stdout line and checks it is `expected`.
    async fn expect_line(&mut self, expected: &str) {
        let line = self.stdout.next_line().await.expect("read node's stdout");
        assert_eq!(
            line.as_deref(),
            Some(expected),
            "restart.mjs: expected {expected} on stdout; its stderr:\n{}",
            self.stderr()
        );
    }

    async fn send_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to node's stdin");
        stdin.flush().await.expect("flush node's stdin");
    }

    async fn wait(&mut self) -> ExitStatus {
        let status = self.child.wait().await.expect("wait for node");
        // Let the stderr reader drain.
        tokio::time::sleep(Duration::from_millis(50)).await;
        status
    }
}

fn collect(stream: impl AsyncRead + Unpin + Send + 'static, into: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut into = into.lock().unwrap();
            into.push_str(&line);
            into.push('\n');
        }
    });
}

/// Runs restart.mjs with `restart` as the restart step; everything within [`SCRIPT_TIMEOUT`].
async fn run_restart_scenario<F, Fut>(url: &str, room: &str, restart: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut script = RestartScript::start(url, room);
    let stderr = script.stderr.clone();
    let steps = async {
        script.expect_line("READY_FOR_RESTART").await;
        restart().await;
        script.send_line("RESTARTED").await;
        script.expect_line("DONE").await;
        script.wait().await
    };
    let status = match tokio::time::timeout(SCRIPT_TIMEOUT, steps).await {
        Ok(status) => status,
        Err(_) => panic!(
            "restart.mjs did not finish within {SCRIPT_TIMEOUT:?} (killed); its stderr:\n{}",
            stderr.lock().unwrap()
        ),
    };
    assert!(
        status.success(),
        "restart.mjs failed ({status}); its stderr:\n{}",
        script.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_client_survives_a_graceful_restart() {
    ensure_node_deps();
    let mut server = TestServer::start().await;
    let url = server.url();
    run_restart_scenario(&url, &unique_room("restart"), || server.restart()).await;
}

/// The same scenario with a crash: the real binary is killed with SIGKILL after the script's
/// edit had 300 ms to reach the disk (flush window 50 ms), then started again on the same port
/// and data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_client_survives_a_crash_restart() {
    ensure_node_deps();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flush = ["--flush-ms", "50"];
    let first = Ycord::start(&data, &flush).await;
    let addr = first.addr;
    let running = Arc::new(Mutex::new(Some(first)));
    let crash_and_restart = {
        let running = running.clone();
        let data = data.clone();
        || async move {
            let mut server = running.lock().unwrap().take().expect("first server");
            server.signal("KILL");
            server.wait_exit(EXIT_WAIT).await;
            let second = Ycord::start_on(&addr.to_string(), &data, &flush).await;
            *running.lock().unwrap() = Some(second);
        }
    };
    run_restart_scenario(
        &format!("ws://{addr}"),
        &unique_room("crash"),
        crash_and_restart,
    )
    .await;
}
