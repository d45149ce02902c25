//! Benchmarks on the real editing traces (`benches/data/`): protocol framing, a room
//! applying and broadcasting updates, sled appends, compaction, cold loads, the SyncStep2 reply
//! and the concurrent `friendsforever` trace.
//!
//! `cargo bench --bench replay` runs them all (about 3 minutes on 2 idle cores, after the
//! release build); `cargo bench --bench replay -- room_apply` runs one group. The traces are
//! replayed once per process (`OnceLock`, ~15 s, mostly yrs applying the automerge-paper
//! edits by position), outside any timing.

use std::hint::black_box;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main, measurement::WallTime,
};
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use ycord::error::StoreError;
use ycord::metrics::Metrics;
use ycord::protocol::{self, Inbound};
use ycord::room::{Applied, Room, RoomConfig, Subscription};
use ycord::store::{FailingStore, RoomStats, RoomStore, SledStore, StoredDoc};
use ycord_tools::trace::{ConcurrentTrace, SequentialTrace, traces_dir};

const ROOM: &str = "bench";
/// Updates applied per timed batch in the room benches.
const CHUNK: usize = 10_000;

/// The automerge-paper trace as Yjs updates, with the documents the benches start from.
struct Automerge {
    /// One v1 update per txn (259,778).
    updates: Vec<Vec<u8>>,
    /// The final document as one v1 update.
    full_state: Vec<u8>,
    /// The document after all but the last `CHUNK` updates, as one v1 update.
    state_before_tail: Vec<u8>,
}

fn automerge() -> &'static Automerge {
    static CELL: OnceLock<Automerge> = OnceLock::new();
    CELL.get_or_init(|| {
        let trace = SequentialTrace::load(&traces_dir().join("automerge-paper.json.gz"))
            .expect("automerge-paper trace loads");
        let (updates, doc) = trace.to_updates().expect("automerge-paper replays");
        let full_state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let head = Doc::new();
        // A few hundred updates per transaction: one huge transaction is several times slower.
        for part in updates[..updates.len() - CHUNK].chunks(500) {
            let mut txn = head.transact_mut();
            for update in part {
                txn.apply_update(Update::decode_v1(update).expect("trace update decodes"))
                    .expect("trace update applies");
            }
        }
        let state_before_tail = head
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        Automerge {
            updates,
            full_state,
            state_before_tail,
        }
    })
}

/// The friendsforever trace's updates, in txn order (parents always first).
fn friendsforever() -> &'static [Vec<u8>] {
    static CELL: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CELL.get_or_init(|| {
        let trace = ConcurrentTrace::load(&traces_dir().join("friendsforever.json.gz"))
            .expect("friendsforever trace loads");
        trace.to_updates().expect("friendsforever replays").updates
    })
}

/// Compaction never runs on its own (it would need a tokio runtime and race the timing).
fn config() -> RoomConfig {
    RoomConfig::without_limits()
}

fn load_room(store: &Arc<SledStore>) -> Arc<Room> {
    let store: Arc<dyn RoomStore> = store.clone();
    Arc::new(
        Room::load(ROOM.into(), store, config(), Arc::new(Metrics::new()), None)
            .expect("room loads"),
    )
}

/// A store holding the room as one snapshot covering sequence numbers up to `through_seq`.
fn store_with_snapshot(state: &[u8], through_seq: u64) -> Arc<SledStore> {
    let store = SledStore::temporary().expect("temporary store opens");
    store
        .compact(ROOM, state, through_seq, 0)
        .expect("snapshot written");
    Arc::new(store)
}

/// A store holding the room as an uncompacted log of `updates`, one per log entry (the worst
/// case: an editor typing slower than the flush interval).
fn store_with_log(updates: &[Vec<u8>]) -> Arc<SledStore> {
    let store = SledStore::temporary().expect("temporary store opens");
    append_one_per_entry(&store, 0, updates);
    Arc::new(store)
}

fn append_one_per_entry(store: &SledStore, first_seq: u64, updates: &[Vec<u8>]) {
    for (seq, update) in (first_seq..).zip(updates) {
        store
            .append(ROOM, seq, &[Bytes::copy_from_slice(update)])
            .expect("append");
    }
}

/// A store holding the automerge-paper room as ycord's defaults leave it at worst: a snapshot
/// of all but the last `CHUNK` updates and those in the log (`compact_log_updates` = 10,000).
fn store_with_snapshot_and_tail(trace: &Automerge) -> Arc<SledStore> {
    let tail_start = trace.updates.len() - CHUNK;
    let store = store_with_snapshot(&trace.state_before_tail, tail_start as u64 - 1);
    append_one_per_entry(&store, tail_start as u64, &trace.updates[tail_start..]);
    store
}

/// A fresh empty room on a temporary sled store, with `members` subscribed.
fn empty_room_with(members: usize) -> (Arc<Room>, Vec<Subscription>) {
    let room = load_room(&Arc::new(
        SledStore::temporary().expect("temporary store opens"),
    ));
    let subscriptions = subscribe(&room, members);
    (room, subscriptions)
}

fn subscribe(room: &Room, members: usize) -> Vec<Subscription> {
    (0..members as u64)
        .map(|connection| room.subscribe(connection).0)
        .collect()
}

/// Applies `updates` to the room, draining every member's queue after each one as its
/// session would.
fn apply_all(room: &Arc<Room>, members: &mut [Subscription], updates: &[Vec<u8>]) {
    for update in updates {
        let applied = room.apply_update(update).expect("update applies");
        assert_eq!(applied, Applied::Changed, "every trace update is new");
        for member in members.iter_mut() {
            while let Ok(frame) = member.updates.try_recv() {
                black_box(frame);
            }
        }
    }
    for member in members.iter() {
        assert!(!member.signals.lagged(), "a member fell behind");
    }
}

fn quick_group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    group
}

/// Bench 1: Decoding inbound Update frames and encoding outbound ones.
fn protocol(c: &mut Criterion) {
    let trace = automerge();
    let frames: Vec<Bytes> = trace
        .updates
        .iter()
        .map(|update| protocol::encode_update(update))
        .collect();
    let mut group = quick_group(c, "protocol");
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("decode_frame/automerge_updates", |b| {
        b.iter(|| {
            let mut bytes = 0;
            for frame in &frames {
                for message in protocol::decode_frame(frame) {
                    match message {
                        Ok(Inbound::Update(update)) => bytes += update.len(),
                        other => panic!("unexpected message {other:?}"),
                    }
                }
            }
            bytes
        })
    });
    group.bench_function("encode_update/automerge_updates", |b| {
        b.iter(|| {
            for update in &trace.updates {
                black_box(protocol::encode_update(black_box(update)));
            }
        })
    });
    group.throughput(Throughput::Bytes(trace.full_state.len() as u64));
    group.bench_function("encode_sync_step2/automerge_full_state", |b| {
        b.iter(|| protocol::encode_sync_step2(black_box(&trace.full_state)))
    });
    group.finish();
}

/// Bench 2: A room applying the trace's updates and queueing each delta for its members: the first
/// and the last `CHUNK` updates (a small and a ~100k-character document), and the whole trace.
fn room_apply(c: &mut Criterion) {
    let trace = automerge();
    let tail_start = trace.updates.len() - CHUNK;
    let mut group = quick_group(c, "room_apply");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(CHUNK as u64));
    for members in [0, 5] {
        group.bench_function(format!("automerge_first_10k/members={members}"), |b| {
            b.iter_batched(
                || empty_room_with(members),
                |(room, mut subscriptions)| {
                    apply_all(&room, &mut subscriptions, &trace.updates[..CHUNK]);
                    (room, subscriptions)
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_function(format!("automerge_last_10k/members={members}"), |b| {
            b.iter_batched(
                || {
                    let store =
                        store_with_snapshot(&trace.state_before_tail, tail_start as u64 - 1);
                    let room = load_room(&store);
                    let subscriptions = subscribe(&room, members);
                    (room, subscriptions)
                },
                |(room, mut subscriptions)| {
                    apply_all(&room, &mut subscriptions, &trace.updates[tail_start..]);
                    (room, subscriptions)
                },
                BatchSize::PerIteration,
            )
        });
    }
    // The same without persistence: what the room costs besides sled's insert.
    group.bench_function("automerge_first_10k/members=0/null_store", |b| {
        b.iter_batched(
            || {
                let store: Arc<dyn RoomStore> = Arc::new(NullStore);
                Arc::new(
                    Room::load(ROOM.into(), store, config(), Arc::new(Metrics::new()), None)
                        .expect("room loads"),
                )
            },
            |room| {
                apply_all(&room, &mut [], &trace.updates[..CHUNK]);
                room
            },
            BatchSize::PerIteration,
        )
    });
    group.throughput(Throughput::Elements(trace.updates.len() as u64));
    group.bench_function("automerge_whole_trace/members=5", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let room = load_room(&Arc::new(
                    SledStore::temporary().expect("temporary store opens"),
                ));
                let mut subscriptions = subscribe(&room, 5);
                let start = Instant::now();
                apply_all(&room, &mut subscriptions, &trace.updates);
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

/// Bench 3: sled: appending updates to a room's log, then flushing, with one update per log
/// entry (an editor typing slower than the flush interval) and with the updates of a burst in
/// entries of up to 1000 (what a room writes when updates arrive faster). `tmpfs` is
/// `SledStore::temporary()` (in /dev/shm on Linux, so the flush writes to memory); `disk` is
/// `SledStore::open` in a temporary directory on the work disk.
fn sled_append(c: &mut Criterion) {
    let trace = automerge();
    let mut group = quick_group(c, "sled_append_flush");
    group.sampling_mode(SamplingMode::Flat);
    for count in [100, CHUNK] {
        let updates: Vec<Bytes> = trace.updates[..count]
            .iter()
            .map(|update| Bytes::copy_from_slice(update))
            .collect();
        group.throughput(Throughput::Elements(count as u64));
        for per_entry in [1, 1000] {
            let append_all = |store: &SledStore| {
                for (seq, entry) in (0..).zip(updates.chunks(per_entry)) {
                    store.append(ROOM, seq, entry).expect("append");
                }
                store.flush().expect("flush");
            };
            group.bench_function(format!("tmpfs/{count}/{per_entry}-per-entry"), |b| {
                b.iter_batched(
                    || SledStore::temporary().expect("temporary store opens"),
                    |store| {
                        append_all(&store);
                        store
                    },
                    BatchSize::PerIteration,
                )
            });
            group.bench_function(format!("disk/{count}/{per_entry}-per-entry"), |b| {
                b.iter_batched(
                    || {
                        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                            .expect("temporary directory");
                        // The background flusher stays out of the way: the bench flushes.
                        let store = SledStore::open(dir.path()).expect("store opens");
                        (store, dir)
                    },
                    |(store, dir)| {
                        append_all(&store);
                        (store, dir)
                    },
                    BatchSize::PerIteration,
                )
            });
        }
    }
    group.finish();
}

/// Bench 4: Compaction of a room holding the whole automerge-paper document: encode the
/// document, lz4 it, and replace the log by the snapshot in one sled batch. With the whole
/// trace in the log (259,778 entries), and with the 10,000 entries of ycord's default threshold.
fn compaction(c: &mut Criterion) {
    let trace = automerge();
    {
        // The setup below does what it claims: compaction leaves only a snapshot, and the
        // room loads back from it.
        let store = store_with_snapshot_and_tail(trace);
        full_state_room(&store).compact().expect("compaction");
        let stats = store.stats(ROOM).expect("stats");
        assert_eq!(stats.log_entries, 0, "compaction left log entries");
        assert_eq!(load_room(&store).encode_state(), trace.full_state);
    }
    let mut group = quick_group(c, "compaction");
    group.sampling_mode(SamplingMode::Flat);
    // The log in the store, and a room holding the document with a non-empty log count:
    // loading the snapshot as its only "log" entry avoids replaying 259,778 updates per
    // sample, while compaction still removes every real log entry.
    group.bench_function("automerge_full_log", |b| {
        compact_each(b, || store_with_log(&trace.updates))
    });
    // What ycord's default threshold (10,000 updates) compacts at the end of the trace.
    group.bench_function("automerge_log_10k", |b| {
        compact_each(b, || store_with_snapshot_and_tail(trace))
    });
    group.finish();
}

/// The room of `store` holding the whole automerge-paper document (see [`log_as_full_state`]).
fn full_state_room(store: &Arc<SledStore>) -> Arc<Room> {
    let room = Room::load(
        ROOM.into(),
        log_as_full_state(store),
        config(),
        Arc::new(Metrics::new()),
        None,
    );
    Arc::new(room.expect("room loads"))
}

/// Times one compaction per sample of the full-state room over a fresh `store()`.
fn compact_each(b: &mut criterion::Bencher<'_>, store: impl Fn() -> Arc<SledStore>) {
    b.iter_batched(
        || {
            let store = store();
            (full_state_room(&store), store)
        },
        |(room, store)| {
            room.compact().expect("compaction");
            (room, store)
        },
        BatchSize::PerIteration,
    )
}

/// A store that keeps nothing: isolates the room's own cost from sled's.
struct NullStore;

impl RoomStore for NullStore {
    fn load(&self, _room: &str) -> Result<StoredDoc, StoreError> {
        Ok(StoredDoc::default())
    }
    fn append(&self, _room: &str, _seq: u64, _updates: &[Bytes]) -> Result<(), StoreError> {
        Ok(())
    }
    fn compact(&self, _: &str, _: &[u8], _: u64, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
    fn delete(&self, _room: &str) -> Result<(), StoreError> {
        Ok(())
    }
    fn deleted_at(&self, _room: &str) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
    fn undelete(&self, _room: &str) -> Result<bool, StoreError> {
        Ok(false)
    }
    fn tombstones(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(Vec::new())
    }
    fn flush(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
    fn stats(&self, _room: &str) -> Result<RoomStats, StoreError> {
        Ok(RoomStats::default())
    }
    fn rooms(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    fn check_writable(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A store that presents the room's full state as a one-entry log whose sequence numbers
/// match the real log underneath (`next_seq` past its end), so that `Room::compact` removes
/// the whole real log. Everything else goes to the real store.
fn log_as_full_state(store: &Arc<SledStore>) -> Arc<dyn RoomStore> {
    Arc::new(
        FailingStore::new(store.clone()).map_loads(|_, real| StoredDoc {
            snapshot: None,
            log: vec![automerge().full_state.clone()],
            next_seq: real.next_seq,
            corrupt: Vec::new(),
            last_change_ms: None,
        }),
    )
}

/// Bench 5: Loading the final automerge-paper room from a store: one compacted snapshot, a
/// snapshot plus the 10,000-update log ycord's default threshold allows, or the whole trace as
/// an uncompacted log of 259,778 updates.
fn cold_load(c: &mut Criterion) {
    let trace = automerge();
    let mut group = quick_group(c, "cold_load");
    group.sampling_mode(SamplingMode::Flat);
    let snapshot_store = store_with_snapshot(&trace.full_state, trace.updates.len() as u64 - 1);
    group.bench_function("automerge_snapshot", |b| {
        b.iter_with_large_drop(|| load_room(&snapshot_store))
    });
    let tail_store = store_with_snapshot_and_tail(trace);
    group.bench_function("automerge_snapshot_plus_10k_log", |b| {
        b.iter_with_large_drop(|| load_room(&tail_store))
    });
    let log_store = store_with_log(&trace.updates);
    group.throughput(Throughput::Elements(trace.updates.len() as u64));
    group.bench_function("automerge_log_259778", |b| {
        b.iter_with_large_drop(|| load_room(&log_store))
    });
    group.finish();
}

/// Bench 6: The SyncStep2 answer to a client with an empty document, on the full room.
fn sync_step2(c: &mut Criterion) {
    let trace = automerge();
    let room = load_room(&store_with_snapshot(
        &trace.full_state,
        trace.updates.len() as u64 - 1,
    ));
    let mut group = quick_group(c, "sync_step2");
    group.throughput(Throughput::Bytes(trace.full_state.len() as u64));
    group.bench_function("automerge_empty_client", |b| {
        b.iter(|| room.sync_step2(black_box(&StateVector::default())))
    });
    group.finish();
}

/// Bench 7: A room applying the two-writer friendsforever trace (26,078 updates in txn order).
fn friendsforever_apply(c: &mut Criterion) {
    let updates = friendsforever();
    let mut group = quick_group(c, "friendsforever");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(updates.len() as u64));
    for members in [0, 2] {
        group.bench_function(format!("room_apply/members={members}"), |b| {
            b.iter_batched(
                || empty_room_with(members),
                |(room, mut subscriptions)| {
                    apply_all(&room, &mut subscriptions, updates);
                    (room, subscriptions)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    protocol,
    room_apply,
    sled_append,
    compaction,
    cold_load,
    sync_step2,
    friendsforever_apply
);
criterion_main!(benches);
