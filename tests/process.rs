//! Tests of the real `ycord` binary as a child process: signals and durability, a crash
//! (`kill -9`), the command line and environment, the store lock, and `--base-path`.

#![allow(clippy::unwrap_used)]

mod common;
mod ycord_bin;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::{Client, Seen, text};
use ycord::protocol::{self, Inbound};
use ycord_bin::{EXIT_WAIT, Ycord, command, listen_addr, run_to_exit, serve_args};
use yrs::{Doc, Text};

/// Edits per scenario; each is its own update message.
const EDITS: usize = 20;

/// How many Update messages (sync type 2) the client has received: the server echoes every
/// new update to its sender too, so after `n` edits and `n` echoes all of them were applied.
fn updates_seen(seen: &Seen) -> usize {
    seen.frames
        .iter()
        .flat_map(|frame| protocol::decode_frame(frame))
        .filter(|message| matches!(message, Ok(Inbound::Update(_))))
        .count()
}

/// Appends `count` edits (`<tag>0;`, `<tag>1;`, ...) to the text `text`, one update each, and
/// waits until the server has echoed every one of them back. Returns the client's text.
async fn make_edits(client: &Client, tag: &str, count: usize) -> String {
    let before = updates_seen(&client.seen.lock().unwrap());
    let text_ref = client.doc.get_or_insert_text("text");
    for index in 0..count {
        client
            .edit(|txn| {
                let end = text_ref.len(txn);
                text_ref.insert(txn, end, &format!("{tag}{index};"));
            })
            .await;
    }
    client
        .wait_until(|seen, _| updates_seen(seen) >= before + count)
        .await;
    text(&client.doc, "text")
}

/// A fresh client's view of the text `text` in `room` on `server`.
async fn fresh_text(server: &Ycord, room: &str) -> String {
    let client = Client::connect_with_doc(&server.url(room), Doc::new()).await;
    let content = text(&client.doc, "text");
    client.close().await;
    content
}

/// Sends `signal` and checks the graceful path: the client gets 1001, the process exits 0 and
/// says everything is on disk.
async fn stop_gracefully(server: &mut Ycord, client: &Client, signal: &str) {
    server.signal(signal);
    let close = client.wait_closed().await;
    assert_eq!(
        close.as_ref().map(|(code, _)| *code),
        Some(1001),
        "after SIGTERM/SIGINT the client must get close code 1001 (going away), got {close:?}; \
         server output:\n{}",
        server.output()
    );
    let status = server.wait_exit(EXIT_WAIT).await;
    assert!(
        status.success(),
        "after SIG{signal} ycord must exit 0, got {status}; output:\n{}",
        server.output()
    );
    assert!(
        server.output().contains("every room is on disk"),
        "shutdown must report that rooms were persisted; output:\n{}",
        server.output()
    );
}

async fn graceful_signal_persists_every_edit(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A flush window far beyond the test's length: only the shutdown itself can have put the
    // edits on disk.
    let mut server = Ycord::start(&data, &["--flush-ms", "60000"]).await;
    let client = Client::connect_with_doc(&server.url("room"), Doc::new()).await;
    let expected = make_edits(&client, "e", EDITS).await;
    assert_eq!(expected.matches(';').count(), EDITS);

    stop_gracefully(&mut server, &client, signal).await;

    let server = Ycord::start(&data, &[]).await;
    assert_eq!(
        fresh_text(&server, "room").await,
        expected,
        "edits lost across a SIG{signal} restart; first run output above, second run:\n{}",
        server.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_with_1001_exits_0_and_persists_every_edit() {
    graceful_signal_persists_every_edit("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_with_1001_exits_0_and_persists_every_edit() {
    graceful_signal_persists_every_edit("INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_older_than_the_flush_window() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flush = ["--flush-ms", "50"];
    let mut expected = String::new();
    // Two crash cycles: the second checks that the log written after recovering from a crash
    // is appended to, not overwriting, what the first run left.
    for (cycle, tag) in ["a", "b"].into_iter().enumerate() {
        let mut server = Ycord::start(&data, &flush).await;
        let client = Client::connect_with_doc(&server.url("room"), Doc::new()).await;
        assert_eq!(
            text(&client.doc, "text"),
            expected,
            "cycle {cycle}: state after the crash differs; output:\n{}",
            server.output()
        );
        expected = make_edits(&client, tag, EDITS).await;
        // Ten times the durability window after the last edit was applied.
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.signal("KILL");
        let status = server.wait_exit(EXIT_WAIT).await;
        assert_eq!(status.signal(), Some(9), "ycord was not killed: {status}");
        client.wait_until(|seen, _| seen.ended).await;
    }
    let server = Ycord::start(&data, &flush).await;
    assert_eq!(
        fresh_text(&server, "room").await,
        expected,
        "edits lost across kill -9; output:\n{}",
        server.output()
    );
    assert_eq!(expected.matches(';').count(), 2 * EDITS);
}

/// Every serve flag, with its environment variable.
const FLAGS: &[(&str, &str)] = &[
    ("--listen", "YCORD_LISTEN"),
    ("--data-dir", "YCORD_DATA_DIR"),
    ("--base-path", "YCORD_BASE_PATH"),
    ("--flush-ms", "YCORD_FLUSH_MS"),
    ("--room-idle-secs", "YCORD_ROOM_IDLE_SECS"),
    ("--max-message-bytes", "YCORD_MAX_MESSAGE_BYTES"),
    ("--compact-log-updates", "YCORD_COMPACT_LOG_UPDATES"),
    ("--compact-log-bytes", "YCORD_COMPACT_LOG_BYTES"),
    ("--awareness-timeout-secs", "YCORD_AWARENESS_TIMEOUT_SECS"),
    ("--ping-secs", "YCORD_PING_SECS"),
    ("--log-format", "YCORD_LOG_FORMAT"),
];

#[tokio::test]
async fn help_lists_every_flag_and_its_environment_variable() {
    for args in [vec!["--help"], vec!["serve", "--help"]] {
        let (status, output) = run_to_exit(command(args.clone())).await;
        assert!(
            status.success(),
            "ycord {args:?} failed: {status}\n{output}"
        );
        for (flag, env) in FLAGS {
            assert!(
                output.contains(flag),
                "ycord {args:?} does not list {flag}:\n{output}"
            );
            assert!(
                output.contains(env),
                "ycord {args:?} does not name {env}:\n{output}"
            );
        }
    }
    let (status, output) = run_to_exit(command(["--help"])).await;
    assert!(status.success());
    assert!(
        output.contains("serve"),
        "--help lists the serve subcommand"
    );
    let (status, output) = run_to_exit(command(["--version"])).await;
    assert!(status.success(), "--version failed: {output}");
    assert!(
        output.contains(env!("CARGO_PKG_VERSION")),
        "--version prints the version: {output}"
    );
}

#[tokio::test]
async fn invalid_values_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (flag, value) in [
        ("--listen", "not-an-address"),
        ("--flush-ms", "0"),
        ("--max-message-bytes", "1"),
        ("--ping-secs", "0"),
        ("--log-format", "xml"),
    ] {
        let mut args = serve_args("127.0.0.1:0", &data, &[]);
        args.extend([flag.into(), value.into()]);
        let (status, output) = run_to_exit(command(args)).await;
        assert_eq!(
            status.code(),
            Some(2),
            "{flag} {value} must be a usage error (exit 2), got {status}:\n{output}"
        );
        assert!(
            output.contains(flag),
            "the error for {flag} {value} names the flag:\n{output}"
        );
    }
}

/// Starts, checks a client can sync and edit, then stops with SIGTERM.
async fn check_serves(mut server: Ycord, path: &str) {
    let client = Client::connect_with_doc(&server.url(path), Doc::new()).await;
    make_edits(&client, "x", 1).await;
    stop_gracefully(&mut server, &client, "TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_subcommand_ycord_serves() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ycord::start(&dir.path().join("data"), &[]).await;
    check_serves(server, "room").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_subcommand_serves() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["serve".into()];
    args.extend(serve_args("127.0.0.1:0", &dir.path().join("data"), &[]));
    let server = Ycord::spawn(command(args)).await;
    check_serves(server, "room").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_configure_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-env");
    let mut cmd = command(Vec::<String>::new());
    cmd.env("YCORD_LISTEN", "127.0.0.1:0")
        .env("YCORD_DATA_DIR", &data)
        .env("YCORD_BASE_PATH", "/env")
        .env("YCORD_LOG_FORMAT", "json");
    let server = Ycord::spawn(cmd).await;
    assert!(
        server.output().trim_start().starts_with('{'),
        "YCORD_LOG_FORMAT=json gives JSON logs:\n{}",
        server.output()
    );
    assert!(data.exists(), "YCORD_DATA_DIR is where the store lives");
    check_serves(server, "env/room").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_data_dir_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Ycord::start(&data, &[]).await;
    let second = Ycord::spawn_or_exit(command(serve_args("127.0.0.1:0", &data, &[]))).await;
    let (status, output) = match second {
        Ok(second) => panic!(
            "a second ycord started on the same data dir (listening on {}); output:\n{}",
            second.addr,
            second.output()
        ),
        Err(exit) => exit,
    };
    assert!(!status.success(), "exit status must be non-zero: {status}");
    assert!(
        output.contains("cannot open the store") && output.contains("lock"),
        "the error must say the store is locked:\n{output}"
    );
    // The first one is unaffected.
    check_serves(first, "room").await;
}

/// Clap accepts the serve flags both at the top level (`ycord --listen X`) and after the
/// subcommand (`ycord serve --listen X`). Given before `serve`, they must either apply or be
/// rejected as a usage error, never be silently replaced by the defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_before_the_serve_subcommand_are_not_silently_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mine");
    let mut args = serve_args("127.0.0.1:0", &data, &[]);
    args.push("serve".into());
    let mut cmd = command(args);
    // If the defaults win, `./ycord-data` is created here rather than in the repository.
    cmd.current_dir(dir.path());
    match Ycord::spawn_or_exit(cmd).await {
        Ok(server) => {
            let output = server.output();
            assert!(
                server.addr.port() != 8080
                    && output.contains(&format!("data_dir={}", data.display())),
                "`ycord --listen 127.0.0.1:0 --data-dir {} serve` ignored its flags and served \
                 with the defaults (listen {}, data dir ./ycord-data exists: {}):\n{output}",
                data.display(),
                server.addr,
                dir.path().join("ycord-data").exists()
            );
        }
        Err((status, output)) => assert_eq!(
            status.code(),
            Some(2),
            "if rejected, it must be a usage error (exit 2), got {status}:\n{output}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_path_serves_rooms_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Ycord::start(&data, &["--base-path", "/yjs"]).await;
    let a = Client::connect_with_doc(&server.url("yjs/room"), Doc::new()).await;
    let b = Client::connect_with_doc(&server.url("yjs/room"), Doc::new()).await;
    let from_a = make_edits(&a, "a", 3).await;
    b.wait_until(|_, doc| text(doc, "text") == from_a).await;
    let both = make_edits(&b, "b", 3).await;
    a.wait_until(|_, doc| text(doc, "text") == both).await;

    // Outside the base path there is no room.
    match tokio_tungstenite::connect_async(server.url("room")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400, "a path outside the base path");
        }
        Ok(_) => panic!("a WebSocket outside the base path was accepted"),
        Err(error) => panic!("unexpected error outside the base path: {error}"),
    }

    stop_gracefully(&mut server, &a, "TERM").await;
    drop(b);
    // The room is named `room`, not `yjs/room`: without a base path it is at /room.
    let server = Ycord::start(&data, &[]).await;
    assert_eq!(fresh_text(&server, "room").await, both);
}

#[test]
fn listen_addr_parses_text_and_json_logs() {
    let text = "2026-01-01T00:00:00Z  INFO ycord: ycord serving: clients connect to \
                ws://127.0.0.1:4242/<room> listen=127.0.0.1:4242 data_dir=/tmp/x\n";
    assert_eq!(listen_addr(text), Some("127.0.0.1:4242".parse().unwrap()));
    let coloured =
        "\u{1b}[2m2026\u{1b}[0m \u{1b}[3mlisten\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:7 x";
    assert_eq!(listen_addr(coloured), Some("127.0.0.1:7".parse().unwrap()));
    let json = r#"{"fields":{"message":"m","listen":"127.0.0.1:9","data_dir":"/d"}}"#;
    assert_eq!(listen_addr(json), Some("127.0.0.1:9".parse().unwrap()));
    assert_eq!(listen_addr("INFO shutting down\n"), None);
}

/// A tmpfs mounted over a directory for one test, unmounted when dropped, also when the test
/// fails (drop it after the server that uses it).
struct Tmpfs {
    dir: std::path::PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) over `dir`, or says why not.
    fn mount(dir: &std::path::Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|error| error.to_string())?;
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|error| error.to_string())?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        Ok(Tmpfs {
            dir: dir.to_owned(),
        })
    }

    /// Grows (or shrinks) the mounted tmpfs.
    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success(), "remounting {} failed", self.dir.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(&self.dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            // Still busy (a child not reaped yet): detach it; it goes once unused.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status();
        }
    }
}

/// `GET http://addr/readyz`'s status.
async fn readyz(addr: std::net::SocketAddr) -> u16 {
    common::get(&format!("http://{addr}/readyz"))
        .await
        .0
        .as_u16()
}

/// Letters that lz4 cannot shrink much, as typed text: `len` of them from `seed`.
fn typed_letters(seed: &mut u64, len: usize) -> String {
    (0..len)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            char::from(b'a' + ((*seed >> 33) % 26) as u8)
        })
        .collect()
}

/// The data directory on a 3 MB tmpfs that a client fills by typing: the server refuses more
/// (close 1011 "resend", joins refused, `/readyz` 503) and keeps what it applied in memory;
/// once the tmpfs grows it recovers by itself (`/readyz` 200 again, no restart), the client
/// reconnects and resends, and after a restart every character it typed is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_survived_and_recovered_from_without_a_restart() {
    const CHUNK: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("disk");
    let tmpfs = match Tmpfs::mount(&mount, "3m") {
        Ok(tmpfs) => tmpfs,
        Err(error) => {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root): {error}");
            return;
        }
    };
    let data = mount.join("data");
    let mut server = Ycord::start(&data, &["--flush-ms", "50"]).await;
    let url = server.url("doc");
    let doc = Doc::new();
    let root = doc.get_or_insert_text("text");
    let mut seed = 7;
    let client = Client::connect_with_doc(&url, doc.clone()).await;
    // Type until the server says the store is failing.
    let mut typed = 0;
    loop {
        assert!(
            typed < 16 << 20,
            "typed {typed} chars and the 3 MB disk never filled; output:\n{}",
            server.output()
        );
        if client.ended() {
            break;
        }
        let piece = typed_letters(&mut seed, CHUNK);
        client
            .edit(|txn| {
                let end = root.len(txn);
                root.insert(txn, end, &piece);
            })
            .await;
        typed += CHUNK;
        tokio::time::sleep(Duration::from_millis(5)).await;
        if typed % (50 * CHUNK) == 0 && readyz(server.addr).await == 503 {
            // The next edit is refused: the client is closed.
            continue;
        }
    }
    let (code, reason) = client.wait_closed().await.expect("a close frame");
    assert_eq!(code, 1011, "{reason}; output:\n{}", server.output());
    assert!(reason.contains("resend"), "{reason}");
    assert_eq!(readyz(server.addr).await, 503, "{}", server.output());
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("joining while the disk is full must be refused, got {other:?}"),
    }
    eprintln!("disk full after {typed} chars typed");
    // The store retries every second meanwhile (reopening sled, rewriting the room): while the
    // disk stays full it stays failing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(readyz(server.addr).await, 503, "{}", server.output());
    // Room enough to reopen sled but not for the room's snapshot (about 900 KB): refused
    // before sled writes it, since a failed blob write would wedge sled for good.
    tmpfs.resize("3500k");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(readyz(server.addr).await, 503, "{}", server.output());
    tmpfs.resize("64m");
    let grown = tokio::time::Instant::now();
    while readyz(server.addr).await != 200 {
        assert!(
            grown.elapsed() < Duration::from_secs(20),
            "/readyz stayed 503 after the disk grew; output:\n{}",
            server.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("ready again {:?} after the disk grew", grown.elapsed());
    // The client reconnects with everything it has (its SyncStep2) and types on.
    client.close().await;
    let client = Client::connect_with_doc(&url, doc.clone()).await;
    let expected = make_edits(&client, "after", EDITS).await;
    assert_eq!(expected.chars().count(), text(&doc, "text").chars().count());
    stop_gracefully(&mut server, &client, "TERM").await;
    let server = Ycord::start(&data, &[]).await;
    let stored = fresh_text(&server, "doc").await;
    assert_eq!(
        stored.chars().count(),
        expected.chars().count(),
        "characters lost across the full disk; output:\n{}",
        server.output()
    );
    assert!(stored == expected);
    let mut server = server;
    server.signal("KILL");
    server.wait_exit(EXIT_WAIT).await;
    drop(tmpfs);
}
