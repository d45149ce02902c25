//! Admin commands on a stopped server's store: export, import, compact, inspect, copy.
//! Inspect also lists deleted rooms (their tombstones); the others refuse a deleted room.
//!
//! They open the store directly; sled locks the directory, so while a server holds it they
//! refuse with a clear message instead of corrupting it.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use thiserror::Error;

use crate::config::{Command, StoreArgs};
use crate::metrics::Metrics;
use crate::room::ApplyError;
use crate::room::{Room, RoomConfig};
use crate::store::{self, RoomStore, StoreError, StoreSpec};

#[derive(Debug, Error)]
pub enum AdminError {
    #[error(
        "cannot open the store in {dir}: {source} (is a ycord server running on it? stop it first)"
    )]
    Open { dir: String, source: StoreError },
    #[error("no room named {0:?} is stored")]
    NoSuchRoom(String),
    #[error("room {room:?} was deleted (at {deleted_at_ms} ms since the epoch)")]
    Deleted { room: String, deleted_at_ms: u64 },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the update was refused: {0}")]
    Apply(#[from] ApplyError),
}

/// Runs one admin command, writing its report to `out`.
pub fn run(command: Command, out: &mut dyn Write) -> Result<(), AdminError> {
    match command {
        Command::Serve(_) => Ok(()),
        Command::Copy { from, to } => copy(&from, &to, out),
        Command::Export { room, file, store } => {
            let store = open(&store)?;
            let room = load_existing(&store, &room)?;
            let state = room.encode_state();
            match file {
                Some(path) => write_file(&path, &state)?,
                None => out
                    .write_all(&state)
                    .map_err(|source| io("stdout", source))?,
            }
            Ok(())
        }
        Command::Import { room, file, store } => {
            let update =
                std::fs::read(&file).map_err(|source| io(&file.display().to_string(), source))?;
            let store = open(&store)?;
            let loaded = load(&store, &room)?;
            let applied = loaded.apply_update(&update)?;
            loaded.compact()?;
            store.flush()?;
            writeln!(out, "{room}: imported {} bytes ({applied:?})", update.len())
                .map_err(|source| io("stdout", source))
        }
        Command::Compact { room, all, store } => {
            let store = open(&store)?;
            let rooms = if all {
                store.rooms()?
            } else {
                room.into_iter().collect()
            };
            for name in rooms {
                let room = load_existing(&store, &name)?;
                let before = store.stats(&name)?;
                room.compact()?;
                let after = store.stats(&name)?;
                writeln!(
                    out,
                    "{name}: {} log entries -> {}, snapshot {} bytes",
                    before.log_entries, after.log_entries, after.snapshot_bytes
                )
                .map_err(|source| io("stdout", source))?;
            }
            store.flush()?;
            Ok(())
        }
        Command::Inspect { room, store } => {
            let store = open(&store)?;
            let (rooms, tombstones) = match room {
                Some(room) => match store.deleted_at(&room)? {
                    Some(deleted_at_ms) => (Vec::new(), vec![(room, deleted_at_ms)]),
                    None => {
                        load_existing(&store, &room)?;
                        (vec![room], Vec::new())
                    }
                },
                None => (store.rooms()?, store.tombstones()?),
            };
            writeln!(
                out,
                "room\tsnapshot_bytes\tlog_entries\tlog_bytes\tlast_change_ms"
            )
            .map_err(|source| io("stdout", source))?;
            for name in rooms {
                let stats = store.stats(&name)?;
                writeln!(
                    out,
                    "{name}\t{}\t{}\t{}\t{}",
                    stats.snapshot_bytes,
                    stats.log_entries,
                    stats.log_bytes,
                    stats
                        .last_change_ms
                        .map_or("-".to_owned(), |ms| ms.to_string())
                )
                .map_err(|source| io("stdout", source))?;
            }
            if !tombstones.is_empty() {
                writeln!(out, "deleted_room\tdeleted_at_ms")
                    .map_err(|source| io("stdout", source))?;
            }
            for (name, deleted_at_ms) in tombstones {
                writeln!(out, "{name}\t{deleted_at_ms}").map_err(|source| io("stdout", source))?;
            }
            writeln!(out, "store size on disk: {} bytes", store.size_on_disk()?)
                .map_err(|source| io("stdout", source))
        }
    }
}

fn io(path: &str, source: std::io::Error) -> AdminError {
    AdminError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), AdminError> {
    std::fs::write(path, bytes).map_err(|source| io(&path.display().to_string(), source))
}

fn open(args: &StoreArgs) -> Result<Arc<dyn RoomStore>, AdminError> {
    open_spec(args.store.as_deref(), &args.data_dir)
}

fn open_spec(spec: Option<&str>, data_dir: &Path) -> Result<Arc<dyn RoomStore>, AdminError> {
    let open_error = |dir: String| move |source| AdminError::Open { dir, source };
    let spec = StoreSpec::parse(spec, data_dir).map_err(open_error(spec.unwrap_or("").into()))?;
    store::open(&spec).map_err(open_error(spec.describe()))
}

/// Copies every room of `from` into `to` (merged with what `to` has of it, compacted there)
/// and every tombstone; reports one line per room.
fn copy(from: &str, to: &str, out: &mut dyn Write) -> Result<(), AdminError> {
    let unused = Path::new("");
    let source = open_spec(Some(from), unused)?;
    let target = open_spec(Some(to), unused)?;
    let rooms = source.rooms()?;
    for name in &rooms {
        let state = load(&source, name)?.encode_state();
        if target.deleted_at(name)?.is_some() {
            writeln!(out, "{name}: deleted in the target, not copied")
                .map_err(|source| io("stdout", source))?;
            continue;
        }
        let copied = load(&target, name)?;
        copied.apply_update(&state)?;
        copied.compact()?;
        writeln!(out, "{name}: {} bytes", state.len()).map_err(|source| io("stdout", source))?;
    }
    let tombstones = source.tombstones()?;
    for (name, _) in &tombstones {
        target.delete(name)?;
    }
    target.flush()?;
    writeln!(
        out,
        "copied {} rooms and {} deleted rooms",
        rooms.len(),
        tombstones.len()
    )
    .map_err(|source| io("stdout", source))
}

fn load(store: &Arc<dyn RoomStore>, room: &str) -> Result<Arc<Room>, AdminError> {
    if let Some(deleted_at_ms) = store.deleted_at(room)? {
        return Err(AdminError::Deleted {
            room: room.to_owned(),
            deleted_at_ms,
        });
    }
    // No compaction is triggered by thresholds here: the commands compact explicitly.
    let config = RoomConfig::without_limits();
    let room = Room::load(
        Arc::from(room),
        store.clone(),
        config,
        Arc::new(Metrics::new()),
        None,
    )?;
    Ok(Arc::new(room))
}

fn load_existing(store: &Arc<dyn RoomStore>, room: &str) -> Result<Arc<Room>, AdminError> {
    let stats = store.stats(room)?;
    // A deleted room has no data either: `load` says it was deleted.
    if stats.snapshot_bytes == 0 && stats.log_entries == 0 && store.deleted_at(room)?.is_none() {
        return Err(AdminError::NoSuchRoom(room.to_owned()));
    }
    load(store, room)
}
