//! The PostgreSQL store against the real server on 127.0.0.1:5432 (database `test`, trust
//! auth), each test in a schema of its own that it drops at the end: the store's contract
//! (log, compaction, tombstones, migration), a server serving from it across a restart, and
//! `ycord copy` from sled with the admin commands reading the result.

#![allow(clippy::unwrap_used)]

mod common;
mod ycord_bin;

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use common::{Client, TestServer};
use ycord::store::{PostgresStore, RoomStore, StoreError};

const SERVER: &str = "postgres://root@127.0.0.1:5432/test";

/// A schema of its own, dropped when the test ends.
struct Schema {
    name: String,
}

impl Schema {
    fn new() -> Schema {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "ycord_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Schema { name }
    }

    fn url(&self) -> String {
        format!("{SERVER}?schema={}", self.name)
    }

    fn open(&self) -> PostgresStore {
        PostgresStore::open(&self.url()).unwrap()
    }

    /// Runs SQL (`{schema}` standing for the schema's name) on a connection of its own.
    fn sql(&self, statements: &str) -> Result<(), tokio_postgres::Error> {
        let statements = statements.replace("{schema}", &self.name);
        // Its own thread and runtime: tests call this from inside and outside runtimes alike.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(SERVER, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client.batch_execute(&statements).await
            })
        })
        .join()
        .unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Err(error) = self.sql("DROP SCHEMA IF EXISTS {schema} CASCADE") {
            eprintln!("dropping schema {}: {error:?}", self.name);
        }
    }
}

/// Runs `ycord ARGS` to completion, which must succeed; its output.
async fn ycord(args: &[&str]) -> String {
    let (status, output) = ycord_bin::run_to_exit(ycord_bin::command(args)).await;
    assert!(status.success(), "ycord {args:?}: {output}");
    output
}

/// The text `text` of a room as the store in `schema` holds it (its snapshot and log).
async fn stored_text(schema: &Schema, room: &str) -> String {
    let (url, room) = (schema.url(), room.to_owned());
    let stored = tokio::task::spawn_blocking(move || {
        PostgresStore::open(&url).unwrap().load(&room).unwrap()
    })
    .await
    .unwrap();
    let doc = yrs::Doc::new();
    for update in stored.snapshot.iter().chain(stored.log.iter()) {
        ycord_tools::client::apply_update(&doc, update).unwrap();
    }
    common::text(&doc, "text")
}

fn bytes(text: &str) -> Bytes {
    Bytes::from(text.as_bytes().to_vec())
}

#[test]
fn log_entries_load_in_order_and_compaction_folds_them_atomically() {
    let schema = Schema::new();
    let store = schema.open();
    assert!(store.load("doc").unwrap().log.is_empty());
    store.append("doc", 0, &[bytes("a"), bytes("b")]).unwrap();
    store.append("doc", 1, &[bytes("c")]).unwrap();
    store.append("doc", 2, &[bytes("d")]).unwrap();
    store.append("other", 0, &[bytes("x")]).unwrap();
    let loaded = store.load("doc").unwrap();
    assert_eq!(
        loaded.log,
        [b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
    );
    assert_eq!(loaded.next_seq, 3);
    assert!(loaded.snapshot.is_none());

    store
        .compact("doc", b"snapshot through 1", 1, 1234)
        .unwrap();
    let compacted = store.load("doc").unwrap();
    assert_eq!(
        compacted.snapshot.as_deref(),
        Some(&b"snapshot through 1"[..])
    );
    assert_eq!(compacted.log, [b"d".to_vec()]);
    assert_eq!(compacted.next_seq, 3);
    assert_eq!(compacted.last_change_ms, Some(1234));
    let stats = store.stats("doc").unwrap();
    assert_eq!(stats.log_entries, 1);
    assert!(stats.snapshot_bytes > 0);
    assert_eq!(stats.last_change_ms, Some(1234));
    assert_eq!(store.rooms().unwrap(), ["doc", "other"]);
    assert!(store.size_on_disk().unwrap() > 0);
    store.check_writable().unwrap();
    store.flush().unwrap();

    // A second store on the same schema (another node, a restart) sees the same.
    let again = schema.open();
    assert_eq!(again.load("doc").unwrap().log, [b"d".to_vec()]);
}

#[test]
fn a_deleted_room_keeps_a_tombstone_that_refuses_writes_until_undeleted() {
    let schema = Schema::new();
    let store = schema.open();
    store.append("doc", 0, &[bytes("a")]).unwrap();
    store.compact("doc", b"s", 0, 1).unwrap();
    store.delete("doc").unwrap();
    let deleted_at = store.deleted_at("doc").unwrap().expect("a tombstone");
    assert!(matches!(
        store.append("doc", 1, &[bytes("late")]),
        Err(StoreError::RoomDeleted(_))
    ));
    assert!(matches!(
        store.compact("doc", b"late", 1, 2),
        Err(StoreError::RoomDeleted(_))
    ));
    let loaded = store.load("doc").unwrap();
    assert!(loaded.snapshot.is_none() && loaded.log.is_empty());
    assert!(store.rooms().unwrap().is_empty());
    std::thread::sleep(std::time::Duration::from_millis(5));
    store.delete("doc").unwrap();
    assert_eq!(
        store.deleted_at("doc").unwrap(),
        Some(deleted_at),
        "the first time stays"
    );
    assert_eq!(
        store.tombstones().unwrap(),
        [("doc".to_owned(), deleted_at)]
    );
    assert!(store.undelete("doc").unwrap());
    assert!(!store.undelete("doc").unwrap());
    store.append("doc", 0, &[bytes("new")]).unwrap();
    assert_eq!(store.load("doc").unwrap().log, [b"new".to_vec()]);
}

#[test]
fn a_schema_from_a_newer_ycord_is_refused_and_a_bad_url_is_a_clear_error() {
    let schema = Schema::new();
    drop(schema.open());
    schema
        .sql("UPDATE {schema}.schema_version SET version = 99")
        .unwrap();
    let error = PostgresStore::open(&schema.url()).unwrap_err().to_string();
    assert!(error.contains("version 99"), "{error}");
    let error = PostgresStore::open("postgres://root@127.0.0.1:1/test")
        .unwrap_err()
        .to_string();
    assert!(error.contains("PostgreSQL"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgresql_keeps_its_rooms_across_a_restart() {
    let schema = Schema::new();
    let url = schema.url();
    let mut server = TestServer::start_with(|config| config.store = Some(url)).await;
    let writer = Client::connect(&server, "shared-doc").await;
    writer.append_and_wait_echo("stored in PostgreSQL").await;
    writer.close().await;
    server.restart().await;
    let reader = Client::connect(&server, "shared-doc").await;
    reader.wait_text("text", "stored in PostgreSQL").await;
    // Nothing went to the sled directory.
    assert!(!server.data_dir().exists(), "a sled store was opened too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_moves_a_sled_stores_rooms_to_postgresql_where_the_admin_commands_read_them() {
    let schema = Schema::new();
    let mut server = TestServer::start().await;
    for (room, text) in [("notes", "from sled"), ("file:text/42", "a file room")] {
        let client = Client::connect(&server, room).await;
        client.append_and_wait_echo(text).await;
        client.close().await;
    }
    server.stop().await;
    let from = format!("sled:{}", server.data_dir().display());
    let output = ycord(&["copy", "--from", &from, "--to", &schema.url()]).await;
    assert!(output.contains("copied 2 rooms"), "{output}");

    let listing = ycord(&["inspect", "--store", &schema.url()]).await;
    assert!(
        listing.contains("notes\t") && listing.contains("file:text/42\t"),
        "{listing}"
    );
    let exported = tempfile::NamedTempFile::new().unwrap();
    let path = exported.path().to_str().unwrap();
    ycord(&["export", "file:text/42", path, "--store", &schema.url()]).await;
    let doc = yrs::Doc::new();
    ycord_tools::client::apply_update(&doc, &std::fs::read(path).unwrap()).unwrap();
    assert_eq!(common::text(&doc, "text"), "a file room");

    // Copying again merges: nothing is doubled.
    ycord(&["copy", "--from", &from, "--to", &schema.url()]).await;
    assert_eq!(stored_text(&schema, "notes").await, "from sled");
}

/// More updates than a room keeps unwritten between flushes: the room appends them itself,
/// on the session's thread (here a current-thread runtime), which must not wait for
/// PostgreSQL; the flusher writes them.
#[tokio::test]
async fn a_burst_of_edits_is_queued_without_blocking_the_sessions_and_written_by_the_flusher() {
    let schema = Schema::new();
    let url = schema.url();
    let mut server = TestServer::start_with(|config| config.store = Some(url)).await;
    let writer = Client::connect(&server, "burst").await;
    for _ in 0..1500 {
        writer.append_text("text", "x").await;
    }
    writer.append_and_wait_echo("!").await;
    writer.close().await;
    server.stop().await;
    assert_eq!(
        stored_text(&schema, "burst").await,
        format!("{}!", "x".repeat(1500))
    );
}
