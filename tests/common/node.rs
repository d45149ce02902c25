//! Running the stock JavaScript clients (tests/interop/*.mjs) from Rust tests: installs their
//! npm dependencies once per test binary and runs a scenario script with a hard time bound.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

/// Hard bound on one node scenario; the scripts time themselves out after 20 s.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
const NODE_PACKAGES: &[&str] = &["yjs", "y-websocket", "y-protocols", "ws"];

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

/// Runs `node <script> <args>` to its end and asserts it passed, showing its stderr if not.
pub async fn run_node(script: &str, args: &[&str]) {
    ensure_node_deps();
    let child = tokio::process::Command::new("node")
        .arg(interop_dir().join(script))
        .args(args)
        .current_dir(interop_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
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
