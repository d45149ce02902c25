//! The PostgreSQL store: the same shape as the sled store (an lz4 snapshot per room plus a log
//! of entries, each the updates of one write round), in three tables of one schema that ycord
//! creates and migrates itself.
//!
//! - `snapshots(room, through_seq, last_change_ms, data)`: `data` is the sled store's snapshot
//!   value (format byte, header, lz4 payload), so both stores read each other's records;
//! - `log(room, seq, data)`: one row per log entry, `data` framed as in the sled store;
//! - `tombstones(room, deleted_at_ms)`.
//!
//! `append` only queues the entry in memory (rooms append on their own threads, with their
//! lock held, and must not wait for the network); `flush`, which the server's flusher calls
//! every `--flush-ms` on its blocking pool, writes every queued entry in one transaction, and
//! `load` sees queued entries at once, as the trait asks. Compactions and deletions are
//! transactions of their own. A write and a deletion of the same room serialise on a
//! transaction-scoped advisory lock on the room's name, so that a write on its way when the
//! room is deleted either lands before the deletion (and is removed by it) or is dropped
//! after it.
//!
//! The client is `tokio-postgres`, pooled by deadpool, on a runtime of the store's own (one
//! thread): [`RoomStore`] is synchronous and called on the server's blocking pool (or by the
//! admin commands, without a runtime), which waits for the store's runtime; the server's
//! runtime threads never wait for PostgreSQL.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{self as postgres, NoTls};

use super::sled_store::{decode_log_entry, decode_snapshot, encode_snapshot};
use super::{RoomStats, RoomStore, StoreError, StoredDoc, encode_log_entry};

/// Connections kept: writes of a round, loads and API reads run side by side.
const POOL_SIZE: usize = 8;

/// Longest a caller waits for a pooled connection (PostgreSQL down: the call fails then).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest one statement may run before PostgreSQL cancels it.
const STATEMENT_TIMEOUT_MS: u64 = 10_000;

/// The schema version this build writes; [`PostgresStore::open`] migrates older ones.
const SCHEMA_VERSION: i32 = 1;

/// A room store in a PostgreSQL schema.
pub struct PostgresStore {
    /// Runs the connections; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    schema: String,
    /// Appended entries not yet written, in order: (room, seq, entry).
    queued: std::sync::Mutex<Vec<(String, i64, Vec<u8>)>>,
    /// Rooms this store deleted: their appends are refused at once (other nodes' deletions
    /// are found when the queue is written).
    deleted: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Dropping a runtime blocks, which a runtime thread must not: this one is left to stop in
/// the background, wherever the last handle to the store is dropped.
impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .finish()
    }
}

impl From<postgres::Error> for StoreError {
    fn from(error: postgres::Error) -> StoreError {
        StoreError::Postgres(error.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> StoreError {
        StoreError::Postgres(format!("no connection: {error}"))
    }
}

/// A pooled connection.
type Connection = deadpool_postgres::Object;

/// Where the store lives: a PostgreSQL URL (`postgres://user@host:port/db`), with an optional
/// `schema=NAME` query parameter (default `ycord`) that ycord takes out before connecting.
fn parse_url(url: &str) -> Result<(postgres::Config, String), StoreError> {
    let invalid = |reason: String| StoreError::Postgres(format!("invalid store URL: {reason}"));
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut schema = "ycord".to_owned();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("schema", name)) => schema = name.to_owned(),
            _ => rest.push(pair),
        }
    }
    let valid_schema = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
        && !schema.as_bytes()[0].is_ascii_digit();
    if !valid_schema {
        return Err(invalid(format!(
            "schema {schema:?}: lower-case letters, digits and _, at most 63"
        )));
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    let config = url
        .parse::<postgres::Config>()
        .map_err(|error| invalid(error.to_string()))?;
    Ok((config, schema))
}

impl PostgresStore {
    /// Connects, then creates or migrates the schema.
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let (mut config, schema) = parse_url(url)?;
        // Added to what the URL may already ask for.
        let timeout = format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}");
        let options = match config.get_options() {
            Some(given) => format!("{given} {timeout}"),
            None => timeout,
        };
        config.options(&options);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECTION_TIMEOUT);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ycord-postgres")
            .enable_all()
            .build()
            .map_err(|error| StoreError::Postgres(format!("no runtime: {error}")))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECTION_TIMEOUT))
            .create_timeout(Some(CONNECTION_TIMEOUT))
            .build()
            .map_err(|error| StoreError::Postgres(format!("no pool: {error}")))?;
        let store = PostgresStore {
            runtime: Some(runtime),
            pool,
            schema,
            queued: std::sync::Mutex::new(Vec::new()),
            deleted: std::sync::Mutex::new(std::collections::HashSet::new()),
        };
        store.run(|pool, schema| async move { migrate(pool.get().await?, &schema).await })?;
        Ok(store)
    }

    fn lock_queued(&self) -> std::sync::MutexGuard<'_, Vec<(String, i64, Vec<u8>)>> {
        self.queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_deleted(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.deleted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the queued entries of `room` out of the queue.
    fn take_queued(&self, room: &str) -> Vec<(String, i64, Vec<u8>)> {
        let mut queued = self.lock_queued();
        let (taken, kept) = std::mem::take(&mut *queued)
            .into_iter()
            .partition(|(queued_room, _, _)| queued_room == room);
        *queued = kept;
        taken
    }

    /// Puts entries that were not written back in the queue, ahead of what was appended
    /// since.
    fn requeue(&self, entries: Vec<(String, i64, Vec<u8>)>) {
        let mut queue = self.lock_queued();
        let later = std::mem::replace(&mut *queue, entries);
        queue.extend(later);
    }

    /// Runs `work` on the store's runtime with the pool and the schema, and waits for it.
    fn run<T, F>(&self, work: impl FnOnce(Pool, String) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return Err(StoreError::Postgres("the store is closing".into()));
        };
        let work = work(self.pool.clone(), self.schema.clone());
        // Spawned on the store's runtime, awaited here: the caller is a blocking thread (of
        // the server's blocking pool, or the admin commands' main thread), which may wait.
        let (done, result) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let _ = done.send(work.await);
        });
        result
            .blocking_recv()
            .map_err(|_| StoreError::Task("the PostgreSQL task ended without an answer".into()))?
    }
}

/// The schema's tables, created when missing; an older version is migrated in one
/// transaction, and a newer one (a later ycord wrote it) is refused.
async fn migrate(mut client: Connection, schema: &str) -> Result<(), StoreError> {
    let transaction = client.transaction().await?;
    // Two nodes starting at once must not both create the tables.
    transaction
        .execute(
            "SELECT pg_advisory_xact_lock(hashtext('ycord schema'))",
            &[],
        )
        .await?;
    transaction
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.schema_version (version integer NOT NULL);"
        ))
        .await?;
    let version: Option<i32> = transaction
        .query_opt(&format!("SELECT version FROM {schema}.schema_version"), &[])
        .await?
        .map(|row| row.get(0));
    match version {
        Some(version) if version > SCHEMA_VERSION => {
            return Err(StoreError::Postgres(format!(
                "schema {schema} is at version {version}, newer than this ycord's {SCHEMA_VERSION}"
            )));
        }
        Some(version) if version == SCHEMA_VERSION => {}
        _ => {
            transaction
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {schema}.snapshots (
                         room text PRIMARY KEY,
                         through_seq bigint NOT NULL,
                         last_change_ms bigint NOT NULL,
                         data bytea NOT NULL);
                     CREATE TABLE IF NOT EXISTS {schema}.log (
                         room text NOT NULL,
                         seq bigint NOT NULL,
                         data bytea NOT NULL,
                         PRIMARY KEY (room, seq));
                     CREATE TABLE IF NOT EXISTS {schema}.tombstones (
                         room text PRIMARY KEY,
                         deleted_at_ms bigint NOT NULL);
                     DELETE FROM {schema}.schema_version;
                     INSERT INTO {schema}.schema_version VALUES ({SCHEMA_VERSION});"
                ))
                .await?;
        }
    }
    transaction.commit().await?;
    Ok(())
}

/// Begins a write of `room`: a transaction holding the room's advisory lock (writes and
/// deletions of one room serialise on it until the transaction ends), refused when the room
/// has a tombstone.
async fn begin_write<'a>(
    client: &'a mut Connection,
    schema: &str,
    room: &str,
) -> Result<deadpool_postgres::Transaction<'a>, StoreError> {
    let transaction = begin_locked(client, room).await?;
    if has_tombstone(&transaction, schema, room).await? {
        return Err(StoreError::RoomDeleted(room.to_owned()));
    }
    Ok(transaction)
}

/// A transaction holding the room's advisory lock.
async fn begin_locked<'a>(
    client: &'a mut Connection,
    room: &str,
) -> Result<deadpool_postgres::Transaction<'a>, StoreError> {
    let transaction = client.transaction().await?;
    lock_room(&transaction, room).await?;
    Ok(transaction)
}

/// Whether the room has a tombstone.
async fn has_tombstone(
    transaction: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    room: &str,
) -> Result<bool, StoreError> {
    let row = transaction
        .query_opt(
            &format!("SELECT 1 FROM {schema}.tombstones WHERE room = $1"),
            &[&room],
        )
        .await?;
    Ok(row.is_some())
}

/// Writes one log entry (rewritten if a failed write round left it).
async fn insert_entry(
    transaction: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    room: &str,
    seq: i64,
    entry: &[u8],
) -> Result<(), StoreError> {
    transaction
        .execute(
            &format!(
                "INSERT INTO {schema}.log (room, seq, data) VALUES ($1, $2, $3)
                 ON CONFLICT (room, seq) DO UPDATE SET data = excluded.data"
            ),
            &[&room, &seq, &entry],
        )
        .await?;
    Ok(())
}

/// Serialises writes and deletions of one room (released when the transaction ends).
async fn lock_room(
    transaction: &deadpool_postgres::Transaction<'_>,
    room: &str,
) -> Result<(), StoreError> {
    transaction
        .execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&room])
        .await?;
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// A sequence number as PostgreSQL's `bigint`; ycord's are far below `i64::MAX`.
fn seq_to_sql(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Postgres(format!("sequence number {seq} too large")))
}

/// A stored `bigint` that must not be negative.
fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn corrupt(room: &str, what: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: format!("{room:?} {what}"),
        reason: reason.into(),
    }
}

impl RoomStore for PostgresStore {
    fn load(&self, room: &str) -> Result<StoredDoc, StoreError> {
        let room_name = room;
        let room = room.to_owned();
        self.run(|pool, schema| async move {
            let mut client = pool.get().await?;
            // One snapshot of the database for both reads: a compaction between them would
            // otherwise hide the entries it folded in.
            let transaction = client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let mut doc = StoredDoc::default();
            let mut through_seq = None;
            if let Some(row) = transaction
                .query_opt(
                    &format!("SELECT data FROM {schema}.snapshots WHERE room = $1"),
                    &[&room],
                )
                .await?
            {
                let data: Vec<u8> = row.get(0);
                match decode_snapshot(room.as_bytes(), &data) {
                    Ok(snapshot) => {
                        through_seq = Some(snapshot.through_seq);
                        doc.next_seq = snapshot.through_seq + 1;
                        doc.last_change_ms = Some(snapshot.last_change_ms);
                        doc.snapshot = Some(snapshot.update);
                    }
                    Err(error) => doc.corrupt.push(error),
                }
            }
            let after = through_seq.map_or(Ok(-1), seq_to_sql)?;
            let rows = transaction
                .query(
                    &format!(
                        "SELECT seq, data FROM {schema}.log WHERE room = $1 AND seq > $2
                         ORDER BY seq"
                    ),
                    &[&room, &after],
                )
                .await?;
            for row in rows {
                let seq: i64 = row.get(0);
                let data: Vec<u8> = row.get(1);
                let Ok(seq) = u64::try_from(seq) else {
                    doc.corrupt.push(corrupt(
                        &room,
                        "log",
                        format!("negative sequence number {seq}"),
                    ));
                    continue;
                };
                doc.next_seq = doc.next_seq.max(seq + 1);
                match decode_log_entry(room.as_bytes(), &data) {
                    Ok(updates) => doc.log.extend(updates),
                    Err(error) => doc.corrupt.push(error),
                }
            }
            transaction.commit().await?;
            Ok((doc, after))
        })
        .map(|(mut doc, after)| {
            for (queued_room, seq, entry) in self.lock_queued().iter() {
                if *queued_room != room_name || *seq <= after {
                    continue;
                }
                doc.next_seq = doc.next_seq.max(to_u64(*seq) + 1);
                match decode_log_entry(room_name.as_bytes(), entry) {
                    Ok(updates) => doc.log.extend(updates),
                    Err(error) => doc.corrupt.push(error),
                }
            }
            doc
        })
    }

    /// Queues the entry; [`RoomStore::flush`] writes it.
    fn append(&self, room: &str, seq: u64, updates: &[Bytes]) -> Result<(), StoreError> {
        if self.lock_deleted().contains(room) {
            return Err(StoreError::RoomDeleted(room.to_owned()));
        }
        let entry = encode_log_entry(updates);
        let seq = seq_to_sql(seq)?;
        self.lock_queued().push((room.to_owned(), seq, entry));
        Ok(())
    }

    fn compact(
        &self,
        room: &str,
        snapshot: &[u8],
        through_seq: u64,
        last_change_ms: u64,
    ) -> Result<(), StoreError> {
        let value = encode_snapshot(through_seq, last_change_ms, snapshot);
        let through = seq_to_sql(through_seq)?;
        let changed = i64::try_from(last_change_ms).unwrap_or(i64::MAX);
        let room = room.to_owned();
        // The room's queued entries go with it: those the snapshot covers are dropped, the
        // others written in the same transaction.
        let queued = self.take_queued(&room);
        let requeue = queued.clone();
        let written = self.run(|pool, schema| async move {
            let mut client = pool.get().await?;
            let transaction = begin_write(&mut client, &schema, &room).await?;
            for (_, seq, entry) in queued.iter().filter(|(_, seq, _)| *seq > through) {
                insert_entry(&transaction, &schema, &room, *seq, entry).await?;
            }
            transaction
                .execute(
                    &format!(
                        "INSERT INTO {schema}.snapshots (room, through_seq, last_change_ms, data)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (room) DO UPDATE SET through_seq = excluded.through_seq,
                             last_change_ms = excluded.last_change_ms, data = excluded.data"
                    ),
                    &[&room, &through, &changed, &value],
                )
                .await?;
            transaction
                .execute(
                    &format!("DELETE FROM {schema}.log WHERE room = $1 AND seq <= $2"),
                    &[&room, &through],
                )
                .await?;
            transaction.commit().await?;
            Ok(())
        });
        if written.is_err() {
            self.requeue(requeue);
        }
        written
    }

    fn delete(&self, room: &str) -> Result<(), StoreError> {
        self.lock_deleted().insert(room.to_owned());
        drop(self.take_queued(room));
        let room = room.to_owned();
        self.run(|pool, schema| async move {
            let mut client = pool.get().await?;
            let transaction = begin_locked(&mut client, &room).await?;
            let inserted = transaction
                .execute(
                    &format!(
                        "INSERT INTO {schema}.tombstones (room, deleted_at_ms) VALUES ($1, $2)
                         ON CONFLICT (room) DO NOTHING"
                    ),
                    &[&room, &now_ms()],
                )
                .await?;
            if inserted == 1 {
                for table in ["snapshots", "log"] {
                    transaction
                        .execute(
                            &format!("DELETE FROM {schema}.{table} WHERE room = $1"),
                            &[&room],
                        )
                        .await?;
                }
            }
            transaction.commit().await?;
            Ok(())
        })
    }

    fn deleted_at(&self, room: &str) -> Result<Option<u64>, StoreError> {
        let room = room.to_owned();
        self.run(|pool, schema| async move {
            let row = pool
                .get()
                .await?
                .query_opt(
                    &format!("SELECT deleted_at_ms FROM {schema}.tombstones WHERE room = $1"),
                    &[&room],
                )
                .await?;
            Ok(row.map(|row| to_u64(row.get(0))))
        })
    }

    fn undelete(&self, room: &str) -> Result<bool, StoreError> {
        let room_name = room;
        let room = room.to_owned();
        self.run(|pool, schema| async move {
            let mut client = pool.get().await?;
            let transaction = begin_locked(&mut client, &room).await?;
            let removed = transaction
                .execute(
                    &format!("DELETE FROM {schema}.tombstones WHERE room = $1"),
                    &[&room],
                )
                .await?;
            transaction.commit().await?;
            Ok(removed == 1)
        })
        .inspect(|_| {
            self.lock_deleted().remove(room_name);
        })
    }

    fn tombstones(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.run(|pool, schema| async move {
            let rows = pool
                .get()
                .await?
                .query(
                    &format!("SELECT room, deleted_at_ms FROM {schema}.tombstones ORDER BY room"),
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| (row.get(0), to_u64(row.get(1))))
                .collect())
        })
    }

    /// Writes every queued entry in one transaction. Entries of a room deleted meanwhile (on
    /// any node) are dropped, as the deletion refuses them. On failure they stay queued.
    fn flush(&self) -> Result<usize, StoreError> {
        let queued = std::mem::take(&mut *self.lock_queued());
        if queued.is_empty() {
            return Ok(0);
        }
        let bytes: usize = queued.iter().map(|(_, _, entry)| entry.len()).sum();
        let requeue = queued.clone();
        let written = self.run(|pool, schema| async move {
            let mut client = pool.get().await?;
            let transaction = client.transaction().await?;
            let mut rooms: Vec<&str> = queued.iter().map(|(room, _, _)| room.as_str()).collect();
            rooms.sort_unstable();
            rooms.dedup();
            // In one order, so that two nodes' flushes cannot deadlock on the room locks.
            let mut deleted = std::collections::HashSet::new();
            for room in rooms {
                lock_room(&transaction, room).await?;
                if has_tombstone(&transaction, &schema, room).await? {
                    deleted.insert(room.to_owned());
                }
            }
            for (room, seq, entry) in queued.iter().filter(|(room, _, _)| !deleted.contains(room)) {
                insert_entry(&transaction, &schema, room, *seq, entry).await?;
            }
            transaction.commit().await?;
            Ok(())
        });
        match written {
            Ok(()) => Ok(bytes),
            Err(error) => {
                self.requeue(requeue);
                Err(error)
            }
        }
    }

    fn stats(&self, room: &str) -> Result<RoomStats, StoreError> {
        let room = room.to_owned();
        self.run(|pool, schema| async move {
            let row = pool
                .get()
                .await?
                .query_one(
                    &format!(
                        "SELECT (SELECT octet_length(data) FROM {schema}.snapshots WHERE room = $1),
                                (SELECT last_change_ms FROM {schema}.snapshots WHERE room = $1),
                                count(*), coalesce(sum(octet_length(data)), 0)::bigint
                         FROM {schema}.log WHERE room = $1"
                    ),
                    &[&room],
                )
                .await?;
            Ok(RoomStats {
                snapshot_bytes: row.get::<_, Option<i32>>(0).map_or(0, |n| to_u64(n.into())),
                last_change_ms: row.get::<_, Option<i64>>(1).map(to_u64),
                log_entries: to_u64(row.get(2)),
                log_bytes: to_u64(row.get(3)),
            })
        })
    }

    fn rooms(&self) -> Result<Vec<String>, StoreError> {
        self.run(|pool, schema| async move {
            let rows = pool
                .get()
                .await?
                .query(
                    &format!(
                        "SELECT room FROM {schema}.snapshots UNION SELECT room FROM {schema}.log
                         ORDER BY room"
                    ),
                    &[],
                )
                .await?;
            Ok(rows.iter().map(|row| row.get(0)).collect::<Vec<String>>())
        })
        .map(|mut rooms| {
            // Rooms with queued entries only are stored rooms too.
            rooms.extend(self.lock_queued().iter().map(|(room, _, _)| room.clone()));
            rooms.sort_unstable();
            rooms.dedup();
            rooms
        })
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.run(|pool, schema| async move {
            let row = pool
                .get()
                .await?
                .query_one(
                    &format!(
                        "SELECT (pg_total_relation_size('{schema}.snapshots')
                               + pg_total_relation_size('{schema}.log')
                               + pg_total_relation_size('{schema}.tombstones'))::bigint"
                    ),
                    &[],
                )
                .await?;
            Ok(to_u64(row.get(0)))
        })
    }

    /// A write that is rolled back: proves the connection and that the server takes writes
    /// (a read-only standby does not).
    fn check_writable(&self) -> Result<(), StoreError> {
        self.run(|pool, schema| async move {
            let mut client = pool.get().await?;
            let transaction = client.transaction().await?;
            transaction
                .execute(
                    &format!(
                        "INSERT INTO {schema}.tombstones (room, deleted_at_ms) VALUES ('', 0)
                         ON CONFLICT (room) DO NOTHING"
                    ),
                    &[],
                )
                .await?;
            transaction.rollback().await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_parameter_is_taken_out_of_the_url() {
        let (config, schema) = parse_url("postgres://root@127.0.0.1:5432/test?schema=t_1").unwrap();
        assert_eq!(schema, "t_1");
        assert_eq!(config.get_dbname(), Some("test"));
        let (_, schema) = parse_url("postgres://root@127.0.0.1/test").unwrap();
        assert_eq!(schema, "ycord");
        let (config, _) =
            parse_url("postgres://root@127.0.0.1/test?connect_timeout=3&schema=a").unwrap();
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        for bad in ["x;DROP", "A", "1a", ""] {
            assert!(
                parse_url(&format!("postgres://root@127.0.0.1/test?schema={bad}")).is_err(),
                "{bad}"
            );
        }
    }
}
