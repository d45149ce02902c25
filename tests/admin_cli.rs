//! The admin subcommands of the real binary (`inspect`, `export`, `import`, `compact`) on data
//! directories written by a server that was stopped (or killed), and their refusal while a
//! server holds the directory.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Client, TestServer, WAIT, text};
use tokio::io::{AsyncBufReadExt, BufReader};
use ycord::ServeConfig;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Map, ReadTxn, Transact, Update};

/// Longest one admin command may take.
const COMMAND_WAIT: Duration = Duration::from_secs(20);

/// Runs `ycord <args>` to its end, with no `YCORD_*` variable inherited.
async fn ycord(args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ycord"));
    command.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("YCORD_") {
            command.env_remove(&key);
        }
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("spawn ycord");
    tokio::time::timeout(COMMAND_WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("ycord {args:?} did not finish within {COMMAND_WAIT:?}"))
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a command that must succeed; returns its stdout.
async fn ycord_ok(args: &[&str]) -> String {
    let output = ycord(args).await;
    assert!(
        output.status.success(),
        "ycord {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// Room → (snapshot_bytes, log_entries) from `inspect` output.
fn inspected(report: &str) -> HashMap<String, (u64, u64)> {
    let mut lines = report.lines();
    assert_eq!(
        lines.next(),
        Some("room\tsnapshot_bytes\tlog_entries\tlog_bytes\tlast_change_ms"),
        "{report}"
    );
    lines
        .filter(|line| !line.starts_with("store size on disk"))
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 5, "{line}");
            (
                fields[0].to_owned(),
                (fields[1].parse().unwrap(), fields[2].parse().unwrap()),
            )
        })
        .collect()
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A document decoded from a v1 update.
fn decode(bytes: &[u8]) -> Doc {
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(bytes).unwrap())
        .unwrap();
    doc
}

/// A data directory filled by an in-process server that was then stopped.
async fn filled_data_dir() -> TestServer {
    let mut server = TestServer::start().await;
    let doc = Client::connect(&server, "doc").await;
    doc.append_and_wait_echo("hello from doc").await;
    let map_ref = doc.doc.get_or_insert_map("meta");
    doc.edit(|txn| {
        map_ref.insert(txn, "title", "Minutes");
    })
    .await;
    let other = Client::connect(&server, "file:text/42").await;
    other.append_and_wait_echo("forty-two").await;
    // Both rooms hold everything once a fresh joiner sees it.
    let check = Client::connect(&server, "doc").await;
    check
        .wait_until(|_, d| {
            let meta = d.get_or_insert_map("meta");
            text(d, "text") == "hello from doc" && meta.len(&d.transact()) == 1
        })
        .await;
    server.stop().await;
    server
}

#[tokio::test]
async fn inspect_lists_the_stored_rooms() {
    let server = filled_data_dir().await;
    let dir = server.data_dir();
    let report = ycord_ok(&["inspect", "--data-dir", path(&dir)]).await;
    let rooms = inspected(&report);
    assert_eq!(rooms.len(), 2, "{report}");
    for room in ["doc", "file:text/42"] {
        let (snapshot_bytes, log_entries) = rooms[room];
        assert!(snapshot_bytes > 0, "{report}");
        // A graceful stop compacts every room.
        assert_eq!(log_entries, 0, "{report}");
    }
    assert!(report.contains("store size on disk"), "{report}");
    let one = ycord_ok(&["inspect", "file:text/42", "--data-dir", path(&dir)]).await;
    assert_eq!(inspected(&one).keys().collect::<Vec<_>>(), ["file:text/42"]);
    // The data directory in the environment works too.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ycord"))
        .arg("inspect")
        .env("YCORD_DATA_DIR", &dir)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(inspected(&stdout(&output)).len(), 2);
}

#[tokio::test]
async fn export_then_import_into_a_fresh_data_dir_gives_the_same_document() {
    let server = filled_data_dir().await;
    let dir = server.data_dir();
    let scratch = tempfile::tempdir().unwrap();
    let exported = scratch.path().join("doc.update");
    ycord_ok(&["export", "doc", path(&exported), "--data-dir", path(&dir)]).await;
    let original = std::fs::read(&exported).unwrap();
    // Export to stdout gives the same bytes.
    let to_stdout = ycord(&["export", "doc", "--data-dir", path(&dir)]).await;
    assert!(to_stdout.status.success(), "{}", stderr(&to_stdout));
    assert_eq!(to_stdout.stdout, original);

    let fresh_root = Arc::new(tempfile::tempdir().unwrap());
    let fresh_dir: PathBuf = fresh_root.path().join("data");
    let report = ycord_ok(&[
        "import",
        "copy",
        path(&exported),
        "--data-dir",
        path(&fresh_dir),
    ])
    .await;
    assert!(report.contains("copy"), "{report}");
    let rooms = inspected(&ycord_ok(&["inspect", "--data-dir", path(&fresh_dir)]).await);
    assert_eq!(rooms.keys().collect::<Vec<_>>(), ["copy"]);

    // Decoded, both exports are the same document.
    let reexported = scratch.path().join("copy.update");
    ycord_ok(&[
        "export",
        "copy",
        path(&reexported),
        "--data-dir",
        path(&fresh_dir),
    ])
    .await;
    let before = decode(&original);
    let after = decode(&std::fs::read(&reexported).unwrap());
    assert_eq!(
        before.transact().state_vector(),
        after.transact().state_vector()
    );
    assert_eq!(text(&after, "text"), "hello from doc");

    // A server on the fresh directory serves the imported room.
    let config = ServeConfig::for_tests(fresh_dir.clone());
    let server = TestServer::start_in(fresh_root, config).await;
    let client = Client::connect(&server, "copy").await;
    assert_eq!(text(&client.doc, "text"), "hello from doc");
    let meta = client.doc.get_or_insert_map("meta");
    let txn = client.doc.transact();
    assert_eq!(meta.get(&txn, "title").unwrap().to_string(&txn), "Minutes");
}

#[tokio::test]
async fn unknown_rooms_are_errors() {
    let server = filled_data_dir().await;
    let dir = server.data_dir();
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("nothing.update");
    for args in [
        vec!["export", "nowhere", path(&target), "--data-dir", path(&dir)],
        vec!["inspect", "nowhere", "--data-dir", path(&dir)],
        vec!["compact", "nowhere", "--data-dir", path(&dir)],
    ] {
        let output = ycord(&args).await;
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&output).contains("no room named \"nowhere\""),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    assert!(!target.exists(), "a failed export wrote a file");
    // Nothing was created by the failed commands.
    assert_eq!(
        inspected(&ycord_ok(&["inspect", "--data-dir", path(&dir)]).await).len(),
        2
    );
}

/// Reads the value of `name` from the Prometheus text at `url`.
async fn scrape(url: &str, name: &str) -> f64 {
    let body = reqwest::get(url).await.unwrap().text().await.unwrap();
    body.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|value| value.trim().parse().unwrap())
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn compact_all_folds_the_log_left_by_a_killed_server() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    // The real binary, so that it can be killed without its shutdown compaction.
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_ycord"))
        .args(["--listen", "127.0.0.1:0", "--data-dir", path(&dir)])
        .args(["--flush-ms", "10", "--room-idle-secs", "3600"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = BufReader::new(server.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = log.next_line().await.unwrap() {
            if let Some((_, rest)) = line.split_once("clients connect to ws://") {
                return rest.split('/').next().unwrap().to_owned();
            }
        }
        panic!("ycord exited before logging its address");
    })
    .await
    .expect("ycord logs its address");
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });

    let client = Client::connect_with_doc(&format!("ws://{addr}/doc"), Doc::new()).await;
    for word in ["one ", "two ", "three"] {
        client.append_and_wait_echo(word).await;
    }
    // Wait for two complete flushes after the last change: the second started after it.
    let metrics = format!("http://{addr}/metrics");
    let flushes = scrape(&metrics, "ycord_persist_flush_seconds_count").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while scrape(&metrics, "ycord_persist_flush_seconds_count").await < flushes + 2.0 {
        assert!(tokio::time::Instant::now() < deadline, "no flush");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.start_kill().unwrap();
    server.wait().await.unwrap();
    client.drop_abruptly();

    let before = inspected(&ycord_ok(&["inspect", "--data-dir", path(&dir)]).await);
    // Three updates, in one to three log entries (a room writes what it applied between two
    // flushes as one entry).
    let entries = before["doc"].1;
    assert!((1..=3).contains(&entries), "logged updates: {before:?}");
    let report = ycord_ok(&["compact", "--all", "--data-dir", path(&dir)]).await;
    assert!(
        report.contains(&format!("doc: {entries} log entries -> 0")),
        "{report}"
    );
    let after = inspected(&ycord_ok(&["inspect", "--data-dir", path(&dir)]).await);
    assert_eq!(after["doc"].1, 0, "{after:?}");
    assert!(after["doc"].0 > 0, "{after:?}");

    // The document survived the compaction.
    let exported = root.path().join("doc.update");
    ycord_ok(&["export", "doc", path(&exported), "--data-dir", path(&dir)]).await;
    assert_eq!(
        text(&decode(&std::fs::read(&exported).unwrap()), "text"),
        "one two three"
    );
}

#[tokio::test]
async fn commands_refuse_a_data_dir_held_by_a_running_server() {
    let server = TestServer::start().await;
    let writer = Client::connect(&server, "doc").await;
    writer.append_and_wait_echo("live").await;
    let dir = server.data_dir();
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("doc.update");
    std::fs::write(&file, [0u8, 0u8]).unwrap();
    for args in [
        vec!["inspect", "--data-dir", path(&dir)],
        vec!["export", "doc", "--data-dir", path(&dir)],
        vec!["import", "doc", path(&file), "--data-dir", path(&dir)],
        vec!["compact", "--all", "--data-dir", path(&dir)],
    ] {
        let output = ycord(&args).await;
        assert!(!output.status.success(), "{args:?} succeeded on a live dir");
        let message = stderr(&output);
        assert!(
            message.contains("server running") && message.contains("stop it first"),
            "{args:?}: {message}"
        );
        assert!(
            output.stdout.is_empty(),
            "{args:?} printed {}",
            stdout(&output)
        );
    }
    // The running server is unaffected.
    writer.append_and_wait_echo(" and well").await;
    let fresh = Client::connect(&server, "doc").await;
    assert_eq!(text(&fresh.doc, "text"), "live and well");
}
