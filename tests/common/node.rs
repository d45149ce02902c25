//! Running the stock JavaScript clients (tests/interop/*.mjs) from Rust tests: installs their
//! npm dependencies once per test binary and runs a scenario script with a hard time bound.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

/// Hard bound on one node scenario; the scripts time themselves out after 20 s.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
const NODE_PACKAGES: &[&str] = &[
    "yjs",
    "y-websocket",
    "y-protocols",
    "ws",
    "@hocuspocus/provider",
];

pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Makes sure node is there and `npm ci` has run, once per test binary.
pub fn ensure_node_deps() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(error) = READY.get_or_init(install_node_deps) {
        panic!("{error}");
    }
}

fn install_node_deps() -> Result<(), String> {
    let dir = interop_dir();
    match std::process::Command::new("node").arg("--version").output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => return Err(format!("`node --version` failed: {}", output.status)),
        Err(error) => {
            return Err(format!(
                "this test needs Node.js (node and npm on the PATH): cannot run `node`: {error}"
            ));
        }
    }
    let installed = |package: &str| {
        dir.join("node_modules")
            .join(package)
            .join("package.json")
            .exists()
    };
    if NODE_PACKAGES.iter().all(|package| installed(package)) {
        return Ok(());
    }
    let output = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .output()
        .map_err(|error| format!("cannot run `npm`: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "`npm ci` in {} failed ({}):\n{}{}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    match NODE_PACKAGES.iter().find(|package| !installed(package)) {
        Some(missing) => Err(format!("`npm ci` did not install {missing}")),
        None => Ok(()),
    }
}

/// Starts `node <script> <args>` in tests/interop with stdout and stderr piped, killed when
/// dropped, once the npm dependencies are there.
fn spawn_node(script: &str, args: &[&str], stdin: Stdio) -> tokio::process::Child {
    ensure_node_deps();
    tokio::process::Command::new("node")
        .arg(interop_dir().join(script))
        .args(args)
        .current_dir(interop_dir())
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node")
}

/// Runs `node <script> <args>` to its end and asserts it passed, showing its stderr if not.
pub async fn run_node(script: &str, args: &[&str]) {
    let child = spawn_node(script, args, Stdio::null());
    let output = match tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.expect("wait for node"),
        Err(_) => panic!("{script} did not finish within {SCRIPT_TIMEOUT:?} (killed)"),
    };
    assert!(
        output.status.success(),
        "{script} failed ({}); its stderr:\n{}\nstdout:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
}

/// A scenario script driven line by line (tests/interop/*.mjs that print `READY`, wait for a
/// command on stdin, print `DONE`): every step is bounded by [`SCRIPT_TIMEOUT`], and a failed
/// step kills the script and panics with what it printed on stderr.
pub struct NodeScript {
    script: String,
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    stderr: Option<tokio::task::JoinHandle<String>>,
}

impl NodeScript {
    /// Starts `node <script> <args>` in tests/interop.
    pub fn spawn(script: &str, args: &[&str]) -> NodeScript {
        use tokio::io::AsyncBufReadExt;
        let mut child = spawn_node(script, args, Stdio::piped());
        let stdin = child.stdin.take();
        let stdout = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        let stderr = child.stderr.take().expect("piped");
        let stderr = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            let mut all = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        NodeScript {
            script: script.to_owned(),
            child,
            stdin,
            stdout,
            stderr: Some(stderr),
        }
    }

    /// Waits for the script's next line on stdout, which must be `expected`.
    pub async fn expect_line(&mut self, expected: &str) {
        let line = tokio::time::timeout(SCRIPT_TIMEOUT, self.stdout.next_line()).await;
        match line {
            Ok(Ok(Some(line))) if line == expected => {}
            other => {
                self.fail(&format!("expected {expected}, got {other:?}"))
                    .await
            }
        }
    }

    /// Writes `line` to the script's stdin.
    pub async fn send_line(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Waits for the script to exit, which it must do successfully.
    pub async fn finish(mut self) {
        drop(self.stdin.take());
        match tokio::time::timeout(SCRIPT_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            other => self.fail(&format!("node exited with {other:?}")).await,
        }
    }

    /// Kills the script and fails the test with `error` and the script's stderr.
    pub async fn fail(&mut self, error: &str) -> ! {
        let _ = self.child.start_kill();
        let stderr = match self.stderr.take() {
            Some(reader) => tokio::time::timeout(Duration::from_secs(2), reader)
                .await
                .map(|joined| joined.unwrap_or_default())
                .unwrap_or_default(),
            None => String::new(),
        };
        panic!("{}: {error}; its stderr:\n{stderr}", self.script);
    }
}
