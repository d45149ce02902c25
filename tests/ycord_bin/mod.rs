//! Helpers to run the real `ycord` binary as a child process: spawn it, learn the address it
//! bound from its log, signal it, wait for it to exit, and show its output when a test fails.
//!
//! Every child is killed (SIGKILL) when its handle is dropped, so a failing test leaves no
//! server behind. Every wait is bounded.

#![allow(dead_code, clippy::unwrap_used)]

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// Longest a child may take to log its listen address.
pub const START_WAIT: Duration = Duration::from_secs(20);

/// Longest a child may take to exit once asked to (signal, bad usage, locked store).
pub const EXIT_WAIT: Duration = Duration::from_secs(20);

/// The `ycord` binary Cargo built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_ycord")
}

/// A `ycord` command with a clean environment: no inherited `YCORD_*` variable, plain-text
/// logs without colour at info level, stdout and stderr piped, killed when dropped.
pub fn command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut command = Command::new(binary());
    command.args(args.into_iter().map(Into::into));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("YCORD_") {
            command.env_remove(&key);
        }
    }
    command
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// The usual serve arguments: listen on `listen`, keep data in `data_dir`, then `extra`.
pub fn serve_args(listen: &str, data_dir: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--listen".into(),
        listen.into(),
        "--data-dir".into(),
        data_dir.as_os_str().to_owned(),
    ];
    args.extend(extra.iter().map(OsString::from));
    args
}

/// A running `ycord` child process.
pub struct Ycord {
    child: Child,
    /// The address it logged as bound.
    pub addr: SocketAddr,
    output: Arc<Mutex<String>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Ycord {
    /// Starts `ycord --listen 127.0.0.1:0 --data-dir <data_dir> <extra>` and waits until it
    /// logs the address it bound.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Ycord {
        Self::start_on("127.0.0.1:0", data_dir, extra).await
    }

    /// Same as [`Ycord::start`] on a given listen address (to restart on the same port).
    pub async fn start_on(listen: &str, data_dir: &Path, extra: &[&str]) -> Ycord {
        Self::spawn(command(serve_args(listen, data_dir, extra))).await
    }

    /// Spawns `command` (made by [`command`]) and waits until it logs its listen address.
    pub async fn spawn(command: Command) -> Ycord {
        match Self::spawn_or_exit(command).await {
            Ok(ycord) => ycord,
            Err((status, output)) => panic!(
                "ycord exited ({status}) before logging its listen address; output:\n{output}"
            ),
        }
    }

    /// Spawns `command` and waits until it either logs its listen address (`Ok`) or exits
    /// (`Err` with its status and output). Panics if neither happens within [`START_WAIT`].
    pub async fn spawn_or_exit(mut command: Command) -> Result<Ycord, (ExitStatus, String)> {
        let mut child = command.spawn().expect("spawn the ycord binary");
        let output = Arc::new(Mutex::new(String::new()));
        let readers = [
            collect(child.stdout.take().expect("piped stdout"), output.clone()),
            collect(child.stderr.take().expect("piped stderr"), output.clone()),
        ];
        let deadline = tokio::time::Instant::now() + START_WAIT;
        loop {
            let bound = listen_addr(&output.lock().unwrap());
            if let Some(addr) = bound {
                return Ok(Ycord {
                    child,
                    addr,
                    output,
                    readers: readers.into(),
                });
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                // The pipes close with the process: let the readers drain what it printed.
                for reader in readers {
                    let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
                }
                let output = output.lock().unwrap().clone();
                return Err((status, output));
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "ycord did not log its listen address within {START_WAIT:?}; output:\n{}",
                    output.lock().unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("child still running")
    }

    /// `ws://ADDR/<path>` (path without the leading slash).
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}/{}", self.addr, path)
    }

    /// Everything the child printed so far (stdout and stderr interleaved by line).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) with the system `kill` command.
    pub fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    /// Waits (bounded) for the child to exit; panics with its output if it does not.
    pub async fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        match tokio::time::timeout(bound, self.child.wait()).await {
            Ok(status) => {
                let status = status.expect("wait for ycord");
                // The pipes close with the process: let the readers drain the last lines.
                for reader in self.readers.drain(..) {
                    let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
                }
                status
            }
            Err(_) => panic!(
                "ycord did not exit within {bound:?}; output:\n{}",
                self.output()
            ),
        }
    }

    /// Crashes the child (`kill -9`: no shutdown, no flush, nothing sled would do on drop) and
    /// waits for it to be gone.
    pub async fn crash(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        self.signal("KILL");
        let status = self.wait_exit(EXIT_WAIT).await;
        assert_eq!(status.signal(), Some(9), "ycord was not killed: {status}");
    }

    /// Whether the child has exited already.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }
}

impl Drop for Ycord {
    fn drop(&mut self) {
        // kill_on_drop does it too; being explicit keeps the guarantee local.
        let _ = self.child.start_kill();
    }
}

/// Sends `kill -<name> <pid>`.
pub fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run the kill command");
    assert!(status.success(), "kill -{name} {pid} failed: {status}");
}

/// Runs a `ycord` command to completion (bounded) and returns its status and combined output.
pub async fn run_to_exit(mut command: Command) -> (ExitStatus, String) {
    let child = command.spawn().expect("spawn the ycord binary");
    let output = tokio::time::timeout(EXIT_WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("ycord did not exit within {EXIT_WAIT:?}"))
        .expect("wait for ycord");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status, text)
}

fn collect(
    stream: impl AsyncRead + Unpin + Send + 'static,
    output: Arc<Mutex<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut output = output.lock().unwrap();
            output.push_str(&line);
            output.push('\n');
        }
    })
}

/// The address in the first log line carrying a `listen` field, in the text format
/// (`listen=127.0.0.1:PORT`, colours stripped) or the JSON one (`"listen":"127.0.0.1:PORT"`).
pub fn listen_addr(output: &str) -> Option<SocketAddr> {
    output.lines().find_map(|line| {
        let line = strip_ansi(line);
        let value = if let Some((_, rest)) = line.split_once("\"listen\":\"") {
            rest.split('"').next()?.to_owned()
        } else {
            let (_, rest) = line.split_once(" listen=")?;
            rest.split_whitespace().next()?.to_owned()
        };
        value.parse().ok()
    })
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
