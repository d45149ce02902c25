use super::document::{EMPTY_UPDATE, SUBDOCUMENTS_REFUSED, release_subdocuments};
use super::persistence::{MAX_UNWRITTEN_BYTES, MAX_UNWRITTEN_UPDATES};
use super::*;
use crate::queue;
use crate::store::SledStore;
use crate::store::StoreOp;
use yrs::encoding::write::Write;
use yrs::{Doc, Update};
use yrs::{Map, Text};

fn room() -> Arc<Room> {
    room_on(Arc::new(SledStore::temporary().unwrap()))
}

fn room_on(store: Arc<dyn RoomStore>) -> Arc<Room> {
    let config = RoomConfig::without_limits();
    Arc::new(Room::load("room".into(), store, config, Arc::new(Metrics::new()), None).unwrap())
}

fn insert(text: &str) -> Vec<u8> {
    let doc = Doc::new();
    let root = doc.get_or_insert_text("text");
    let mut txn = doc.transact_mut();
    root.insert(&mut txn, 0, text);
    txn.encode_update_v1()
}

#[test]
fn the_full_sync_reply_is_encoded_once_until_the_document_changes() {
    let room = room();
    room.apply_update(&insert("hello")).unwrap();
    let first = room.sync_step2(&StateVector::default());
    let second = room.sync_step2(&StateVector::default());
    assert_eq!(first.as_ptr(), second.as_ptr(), "the same bytes are shared");
    room.apply_update(&insert("world")).unwrap();
    let third = room.sync_step2(&StateVector::default());
    assert_ne!(third, first, "a change invalidates the cached reply");
}

#[test]
fn an_update_past_the_document_limit_changes_nothing() {
    let store: Arc<dyn RoomStore> = Arc::new(SledStore::temporary().unwrap());
    let config = RoomConfig {
        compact_log_updates: u64::MAX,
        compact_log_bytes: u64::MAX,
        max_doc_bytes: 64,
        awareness_timeout: Duration::from_secs(30),
    };
    let room = Room::load("room".into(), store, config, Arc::new(Metrics::new()), None).unwrap();
    let room = Arc::new(room);
    room.apply_update(&insert("small")).unwrap();
    let before = room.encode_state();
    let error = room.apply_update(&insert(&"x".repeat(100))).unwrap_err();
    assert!(matches!(error, ApplyError::DocumentTooLarge { .. }));
    assert_eq!(room.encode_state(), before);
}

fn text(room: &Room) -> serde_json::Value {
    room.to_json()["text"].clone()
}

/// Two updates of one client: "a" at clock 0, then "b" at clock 1.
fn two_steps() -> (Vec<u8>, Vec<u8>) {
    let doc = Doc::with_client_id(7);
    let root = doc.get_or_insert_text("text");
    let mut steps = Vec::new();
    for (at, piece) in [(0, "a"), (1, "b")] {
        let mut txn = doc.transact_mut();
        root.insert(&mut txn, at, piece);
        steps.push(txn.encode_update_v1());
    }
    (steps.remove(0), steps.remove(0))
}

#[test]
fn an_update_that_skips_clocks_is_refused_until_the_gap_is_filled() {
    let room = room();
    let (first, second) = two_steps();
    let error = room.apply_update(&second).unwrap_err();
    assert!(
        matches!(
            error,
            ApplyError::MissingPredecessors {
                client: 7,
                known: 0,
                starts_at: 1
            }
        ),
        "{error:?}"
    );
    assert_eq!(room.encode_state(), EMPTY_UPDATE, "nothing was integrated");
    assert_eq!(room.apply_update(&first).unwrap(), Applied::Changed);
    assert_eq!(room.apply_update(&second).unwrap(), Applied::Changed);
    assert_eq!(text(&room), "ab");
    // Overlapping resends (a merged update, a duplicate) start at or before what the
    // room has and pass.
    let merged = yrs::merge_updates_v1([first.as_slice(), second.as_slice()]).unwrap();
    assert_eq!(room.apply_update(&merged).unwrap(), Applied::Unchanged);
    assert_eq!(room.apply_update(&first).unwrap(), Applied::Unchanged);
}

/// The fuzzer finding `asan-heap-use-after-free-in-update-exclude`: the first update puts
/// client 1's clocks 1..11 behind a hole; yrs 0.28 integrated it and then read freed memory
/// integrating the second (and ended up with "h"). Yjs keeps the first pending.
#[test]
fn an_update_behind_a_hole_cannot_corrupt_the_document() {
    let hex = |text: &str| -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    };
    let room = room();
    let hole = hex("01020101000a01040001ff0000000400667a7a02740b68019f9f9f00000100");
    let text_update = hex("01010100040104746578740b68656c6c6f20770364006400");
    assert!(matches!(
        room.apply_update(&hole),
        Err(ApplyError::MissingPredecessors { .. })
    ));
    assert_eq!(room.apply_update(&text_update).unwrap(), Applied::Changed);
    assert_eq!(text(&room), "hello w\u{3}d\0d");
}

/// Client 8 types after client 7's text, and deletes it: its updates depend on client 7's.
fn dependent_steps() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let first = Doc::with_client_id(7);
    let root = first.get_or_insert_text("text");
    let base = {
        let mut txn = first.transact_mut();
        root.insert(&mut txn, 0, "ab");
        txn.encode_update_v1()
    };
    let second = Doc::with_client_id(8);
    let root = second.get_or_insert_text("text");
    second
        .transact_mut()
        .apply_update(Update::decode_v1(&base).unwrap())
        .unwrap();
    let mut steps = Vec::new();
    for edit in [true, false] {
        let mut txn = second.transact_mut();
        if edit {
            root.insert(&mut txn, 1, "X");
        } else {
            root.remove_range(&mut txn, 0, 1);
        }
        steps.push(txn.encode_update_v1());
    }
    (base, steps.remove(0), steps.remove(0))
}

#[test]
fn an_update_that_depends_on_missing_changes_is_refused_until_they_arrive() {
    let store = Arc::new(SledStore::temporary().unwrap());
    let room = room_on(store.clone());
    let (base, insert_after, delete) = dependent_steps();
    for dependent in [&insert_after, &delete] {
        let error = room.apply_update(dependent).unwrap_err();
        assert!(
            matches!(
                error,
                ApplyError::MissingDependency {
                    client: 7,
                    known: 0,
                    ..
                }
            ),
            "{error:?}"
        );
    }
    assert_eq!(room.encode_state(), EMPTY_UPDATE, "nothing is held pending");
    assert_eq!(room.apply_update(&base).unwrap(), Applied::Changed);
    assert_eq!(room.apply_update(&insert_after).unwrap(), Applied::Changed);
    assert_eq!(room.apply_update(&delete).unwrap(), Applied::Changed);
    assert_eq!(text(&room), "Xb");
    // What a dependent update needs may come in the same update.
    let other = room_on(Arc::new(SledStore::temporary().unwrap()));
    let merged = yrs::merge_updates_v1([base.as_slice(), insert_after.as_slice()]).unwrap();
    assert_eq!(other.apply_update(&merged).unwrap(), Applied::Changed);
    room.write_log().unwrap();
    assert_eq!(text(&room_on(store)), "Xb");
}

/// The fuzzer finding `restart-loses-item-with-missing-parent`: client 1's clocks 0..18
/// as a GC block, then an item over 0..114 whose parent (client 0, clock 0) does not exist.
/// yrs kept the item pending, left it out of the delta that is stored, and put it in the
/// room's full encoding: the room in memory and the room reloaded disagreed.
#[test]
fn an_item_whose_parent_is_missing_is_not_held_pending() {
    let store = Arc::new(SledStore::temporary().unwrap());
    let room = room_on(store.clone());
    let gc = [1, 1, 1, 0, 0, 18, 0];
    let orphan = [1, 1, 1, 0, 1, 0, 0, 0, 114, 1, 128, 18, 0, 113, 2];
    assert_eq!(room.apply_update(&gc).unwrap(), Applied::Changed);
    let error = room.apply_update(&orphan).unwrap_err();
    assert!(
        matches!(
            error,
            ApplyError::MissingDependency {
                client: 0,
                known: 0,
                needed: 1
            }
        ),
        "{error:?}"
    );
    assert!(!room.has_pending_changes());
    room.write_log().unwrap();
    assert_eq!(room_on(store).encode_state(), room.encode_state());
}

/// The fuzzer finding `partly-applied-update-not-stored`: yrs integrated client 2's first
/// six items, then refused the seventh (its parent is a map entry, not a shared type).
#[test]
fn what_yrs_integrated_of_a_refused_update_is_stored() {
    let store = Arc::new(SledStore::temporary().unwrap());
    let room = room_on(store.clone());
    let update = [
        0x01, 0x07, 0x02, 0x00, 0x28, 0x01, 0x03, 0x6d, 0x61, 0x70, 0x03, 0x6b, 0x65, 0x79, 0x01,
        0x77, 0x05, 0x76, 0x61, 0x6c, 0x75, 0x65, 0x28, 0x01, 0x03, 0x6d, 0x71, 0x70, 0x01, 0x6e,
        0x01, 0x7d, 0x2a, 0x08, 0x01, 0x05, 0x61, 0x72, 0x72, 0x61, 0x79, 0x01, 0x7d, 0x01, 0x87,
        0x02, 0x02, 0x00, 0x08, 0x00, 0x02, 0x03, 0x01, 0x77, 0x06, 0x7e, 0x65, 0x73, 0x74, 0x65,
        0x64, 0x07, 0x01, 0x03, 0x78, 0x6d, 0x6c, 0x06, 0x04, 0x00, 0x02, 0x00, 0x01, 0x00, 0x00,
        0x00, 0x00, 0x00,
    ];
    let error = room.apply_update(&update).unwrap_err();
    assert!(matches!(error, ApplyError::InvalidUpdate(_)), "{error:?}");
    assert_ne!(
        room.encode_state(),
        EMPTY_UPDATE,
        "yrs integrated part of it"
    );
    room.write_log().unwrap();
    assert_eq!(room_on(store).encode_state(), room.encode_state());
}

/// Items that depend on each other in a cycle across clients: client 1's clock 0 follows
/// client 2's clock 0, which follows client 1's clock 1. They pass the dependency check
/// (everything they refer to is in the update) but none of them can integrate first.
const CYCLE: &[u8] = &[
    2, // clients
    2, 1, 0, // two structs of client 1 from clock 0
    0x84, 2, 0, 1, b'x', // string item, origin (2, 0)
    0x84, 1, 0, 1, b'y', // string item, origin (1, 0)
    1, 2, 0, // one struct of client 2 from clock 0
    0x84, 1, 1, 1, b'z', // string item, origin (1, 1)
    0,    // no deletions
];

/// yrs would hold the cycle pending: in every full encoding of the room, not in its log.
#[test]
fn items_that_depend_on_each_other_in_a_cycle_are_not_held_pending() {
    let store = Arc::new(SledStore::temporary().unwrap());
    let room = room_on(store.clone());
    assert_eq!(
        room.apply_update(&insert("kept")).unwrap(),
        Applied::Changed
    );
    let before = text(&room);
    let error = room.apply_update(CYCLE).unwrap_err();
    assert!(
        matches!(error, ApplyError::MissingDependency { .. }),
        "{error:?}"
    );
    assert!(!room.has_pending_changes());
    assert_eq!(text(&room), before);
    room.write_log().unwrap();
    assert_eq!(room_on(store).encode_state(), room.encode_state());
}

/// A log written before the room refused such updates may hold one: loading skips it and
/// keeps the rest.
#[test]
fn a_stored_update_yrs_would_hold_pending_is_skipped_on_load() {
    let store = Arc::new(SledStore::temporary().unwrap());
    let updates = [insert("first "), CYCLE.to_vec(), insert("second ")];
    for (seq, update) in updates.into_iter().enumerate() {
        store
            .append("room", seq as u64, &[Bytes::from(update)])
            .unwrap();
    }
    let room = room_on(store);
    assert!(!room.has_pending_changes());
    let text = text(&room).as_str().unwrap().to_owned();
    assert!(
        text.contains("first ") && text.contains("second "),
        "{text}"
    );
    assert!(!text.contains('x'), "{text}");
}

/// Sets its flag when dropped: with a document, only once the document is freed.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Whether `doc` is freed once its last handle is dropped (observers live in its store).
fn freed_when_dropped(doc: Doc) -> bool {
    let freed = Arc::new(AtomicBool::new(false));
    let guard = SetOnDrop(freed.clone());
    doc.observe_update_v1("freed", move |_, _| {
        let _ = &guard;
    })
    .unwrap();
    drop(doc);
    freed.load(Ordering::SeqCst)
}

/// An update that inserts a subdocument into a map nested in the root map `docs`.
fn nested_subdocument() -> Vec<u8> {
    let source = Doc::new();
    let docs = source.get_or_insert_map("docs");
    let update = {
        let mut txn = source.transact_mut();
        let inner = docs.insert(&mut txn, "inner", yrs::MapPrelim::default());
        inner.insert(&mut txn, "child", Doc::new());
        txn.encode_update_v1()
    };
    release_subdocuments(&source);
    update
}

#[test]
fn an_update_holding_a_subdocument_is_refused() {
    let room = room();
    let error = room.apply_update(&nested_subdocument()).unwrap_err();
    assert!(
        matches!(&error, ApplyError::InvalidUpdate(reason) if reason == SUBDOCUMENTS_REFUSED),
        "{error:?}"
    );
    assert_eq!(room.encode_state(), EMPTY_UPDATE);
}

/// The fuzzer finding `leak-subdocument-room-never-freed`: yrs kept a document that
/// integrated a subdocument alive forever, so every unload of such a room leaked it. Rooms
/// refuse subdocuments now; one stored before is removed when the room loads.
#[test]
fn a_stored_subdocument_is_removed_on_load_and_the_room_freed() {
    let update = nested_subdocument();
    let leaky = Doc::new();
    leaky
        .transact_mut()
        .apply_update(Update::decode_v1(&update).unwrap())
        .unwrap();
    assert!(
        !freed_when_dropped(leaky),
        "yrs no longer leaks: drop the workaround"
    );

    let store = Arc::new(SledStore::temporary().unwrap());
    store.append("room", 0, &[Bytes::from(update)]).unwrap();
    let room = room_on(store);
    assert_eq!(room.to_json()["docs"], serde_json::json!({"inner": {}}));
    let doc = room.state().awareness.doc().clone();
    drop(room);
    assert!(freed_when_dropped(doc));
}

#[test]
fn an_item_that_refers_to_its_own_clients_later_change_is_invalid() {
    let room = room();
    // Client 1's item at clock 0 whose origin is client 1's clock 5.
    let ahead = [1, 1, 1, 0, 0x84, 1, 5, 1, b'a', 0];
    let error = room.apply_update(&ahead).unwrap_err();
    assert!(matches!(error, ApplyError::InvalidUpdate(_)), "{error:?}");
    assert!(!room.has_pending_changes());
}

#[test]
fn a_compacted_room_answers_its_first_joiner_with_its_stored_snapshot() {
    let store = Arc::new(SledStore::temporary().unwrap());
    let room = room_on(store.clone());
    room.apply_update(&insert("cold")).unwrap();
    room.compact().unwrap();
    let reloaded = room_on(store.clone());
    let snapshot = store.load("room").unwrap().snapshot.unwrap();
    let primed = reloaded.state().full_sync_reply.clone();
    assert_eq!(primed, Some(protocol::encode_sync_step2(&snapshot)));
    assert_eq!(
        reloaded.sync_step2(&StateVector::default()),
        primed.unwrap()
    );
    // With log entries after the snapshot, the reply is encoded from the document.
    reloaded.apply_update(&insert("more")).unwrap();
    reloaded.write_log().unwrap();
    assert_eq!(room_on(store).state().full_sync_reply, None);
}

/// A member that does not drain its queues: past [`UPDATE_QUEUE_BYTES`] it is removed
/// (lagged, closed with 1013 by its session) long before the queue is full in frames, and
/// past [`AWARENESS_QUEUE_BYTES`] its awareness frames are dropped (and it is flagged).
#[test]
fn member_queues_are_bounded_in_bytes() {
    let room = room();
    let (stalled, _) = room.subscribe(1);
    let (mut reader, _) = room.subscribe(2);
    let writer = Doc::with_client_id(9);
    let root = writer.get_or_insert_text("text");
    let piece = "x".repeat(1 << 20);
    let mut sent = 0;
    while !stalled.signals.lagged() {
        let update = {
            let mut txn = writer.transact_mut();
            root.insert(&mut txn, 0, &piece);
            txn.encode_update_v1()
        };
        room.apply_update(&update).unwrap();
        while reader.updates.try_recv().is_ok() {}
        sent += 1;
        assert!(sent <= 64, "still a member after {sent} MiB");
    }
    assert!(
        (UPDATE_QUEUE_BYTES >> 20..=(UPDATE_QUEUE_BYTES >> 20) + 1).contains(&sent),
        "removed after {sent} frames of 1 MiB"
    );
    assert_eq!(
        room.state().members.len(),
        1,
        "only the stalled member was removed"
    );

    let mut controlled = HashSet::new();
    let state = format!("{{\"name\":\"{}\"}}", "y".repeat(100 << 10));
    let frames = AWARENESS_QUEUE_BYTES / state.len() + 2;
    assert!(frames < AWARENESS_QUEUE_CAPACITY);
    let (mut watcher, _) = room.subscribe(3);
    for clock in 1..=frames as u32 {
        let mut payload = Vec::new();
        use yrs::encoding::write::Write;
        payload.write_var(1u32);
        payload.write_var(77u32);
        payload.write_var(clock);
        payload.write_string(&state);
        room.apply_awareness(&payload, &mut controlled).unwrap();
    }
    assert!(watcher.signals.take_awareness_dropped());
    let queued: usize = std::iter::from_fn(|| watcher.awareness.try_recv().ok())
        .map(|frame| frame.len())
        .sum();
    assert!(queued <= AWARENESS_QUEUE_BYTES, "{queued} bytes queued");
}

#[test]
fn applied_updates_reach_the_store() {
    let store = Arc::new(SledStore::temporary().unwrap());
    let room = room_on(store.clone());
    for piece in ["one", "two", "three"] {
        room.apply_update(&insert(piece)).unwrap();
    }
    room.write_log().unwrap();
    assert_eq!(store.load("room").unwrap().log.len(), 3);
    let reloaded = room_on(store.clone());
    assert_eq!(reloaded.to_json(), room.to_json());
}

/// Keystrokes share log entries: one sled insert per [`MAX_UNWRITTEN_UPDATES`] updates,
/// and the rest by the next `write_log` (the flusher's), all in order.
#[test]
fn keystrokes_are_written_several_per_log_entry() {
    let store = Arc::new(SledStore::temporary().unwrap());
    let room = room_on(store.clone());
    let writer = Doc::with_client_id(7);
    let root = writer.get_or_insert_text("text");
    let keystrokes = 2 * MAX_UNWRITTEN_UPDATES + 10;
    for index in 0..keystrokes {
        let mut txn = writer.transact_mut();
        root.insert(&mut txn, index as u32, "x");
        room.apply_update(&txn.encode_update_v1()).unwrap();
    }
    assert_eq!(store.stats("room").unwrap().log_entries, 2);
    room.write_log().unwrap();
    assert_eq!(store.stats("room").unwrap().log_entries, 3);
    assert_eq!(store.load("room").unwrap().log.len(), keystrokes);
    let reloaded = room_on(store.clone());
    assert_eq!(text(&reloaded), "x".repeat(keystrokes));
}

/// An update of more than [`MAX_UNWRITTEN_BYTES`] is written at once, as its own entry.
#[test]
fn a_large_update_is_written_at_once() {
    let store = Arc::new(SledStore::temporary().unwrap());
    let room = room_on(store.clone());
    room.apply_update(&insert(&"y".repeat(MAX_UNWRITTEN_BYTES)))
        .unwrap();
    assert_eq!(store.stats("room").unwrap().log_entries, 1);
}

/// A room on a store that fails on demand, sharing the health its store failures go to.
fn failing_room() -> (Arc<crate::store::FailingStore>, Arc<StoreHealth>, Arc<Room>) {
    let store = Arc::new(crate::store::FailingStore::new(Arc::new(
        SledStore::temporary().unwrap(),
    )));
    let health = Arc::new(StoreHealth::new(Arc::new(Metrics::new())));
    let config = RoomConfig::without_limits();
    let room = Room::load(
        "room".into(),
        store.clone(),
        config,
        Arc::new(Metrics::new()),
        None,
    )
    .unwrap()
    .with_store_health(health.clone());
    (store, health, Arc::new(room))
}

/// Client 7 typing `pieces` one after the other: each update depends on the one before.
fn typing(pieces: &[&str]) -> Vec<Vec<u8>> {
    let doc = Doc::with_client_id(7);
    let root = doc.get_or_insert_text("text");
    pieces
        .iter()
        .map(|piece| {
            let mut txn = doc.transact_mut();
            let end = root.len(&txn);
            root.insert(&mut txn, end, piece);
            txn.encode_update_v1()
        })
        .collect()
}

/// A failed append leaves a hole in the log; the updates after it depend on the lost one.
/// Recovery writes a snapshot over the hole, so that a reload has every character.
#[test]
fn a_failed_append_is_covered_by_a_snapshot_and_later_updates_load() {
    let (store, health, room) = failing_room();
    let steps = typing(&["a", "b", "c", "d"]);
    room.apply_update(&steps[0]).unwrap();
    room.write_log().unwrap();
    room.apply_update(&steps[1]).unwrap();
    store.fail_appends(true);
    assert!(room.write_log().is_err());
    assert!(health.is_failing());
    // While failing, nothing is applied: the client is told, and resends later.
    assert!(matches!(
        room.apply_update(&steps[2]),
        Err(ApplyError::Store(StoreError::Failing))
    ));
    store.fail_appends(false);
    let generation = health.generation();
    room.write_log().unwrap();
    assert!(store.load("room").unwrap().snapshot.is_some(), "a snapshot");
    assert!(health.recovered(generation));
    for step in &steps[2..] {
        room.apply_update(step).unwrap();
    }
    room.write_log().unwrap();
    let reloaded = room_on(store.clone());
    assert_eq!(text(&reloaded), "abcd");
    // The next write after recovery is an append again.
    assert_eq!(store.stats("room").unwrap().log_entries, 1);
}

/// The batch an applying writer takes (too many unwritten updates) fails to append: the
/// writer is refused (its client is closed and resends), the room keeps the update.
#[test]
fn an_append_that_fails_while_applying_is_reported_and_kept_in_memory() {
    let (store, health, room) = failing_room();
    store.fail_appends(true);
    let big = insert(&"y".repeat(MAX_UNWRITTEN_BYTES));
    assert!(matches!(
        room.apply_update(&big),
        Err(ApplyError::Store(StoreError::Injected { op: "append" }))
    ));
    assert!(health.is_failing());
    store.fail_appends(false);
    room.write_log().unwrap();
    assert_eq!(room_on(store).encode_state(), room.encode_state());
}

#[test]
fn a_failed_compaction_keeps_the_log_counters_and_is_retried() {
    let (store, health, room) = failing_room();
    for piece in ["one", "two", "three"] {
        room.apply_update(&insert(piece)).unwrap();
    }
    room.write_log().unwrap();
    store.fail_compactions(true);
    assert!(room.compact().is_err());
    assert!(health.is_failing());
    assert_eq!(room.info().log_updates, 3, "nothing was compacted");
    store.fail_compactions(false);
    let generation = health.generation();
    room.write_log().unwrap();
    assert!(health.recovered(generation));
    assert_eq!(room.info().log_updates, 0);
    let stored = store.load("room").unwrap();
    assert!(stored.snapshot.is_some() && stored.log.is_empty());
    assert_eq!(room_on(store).encode_state(), room.encode_state());
}

/// After a store failure, even a room with nothing new writes a snapshot: the store may
/// have dropped what it had not flushed. Its sequence numbers stay above the snapshot's.
#[test]
fn after_a_failure_an_unchanged_room_writes_a_snapshot_too() {
    let (store, health, room) = failing_room();
    health.failed(StoreOp::Flush, None, &StoreError::Failing);
    room.write_log().unwrap();
    let stored = store.load("room").unwrap();
    assert!(stored.snapshot.is_some());
    assert_eq!(stored.next_seq, 1, "number 0 is the snapshot's");
    assert!(health.recovered(health.generation()));
    room.apply_update(&insert("after")).unwrap();
    room.write_log().unwrap();
    assert_eq!(text(&room_on(store)), "after");
}

#[test]
fn a_closed_store_refuses_updates() {
    let (_store, health, room) = failing_room();
    health.close();
    assert!(matches!(
        room.apply_update(&insert("late")),
        Err(ApplyError::ShuttingDown)
    ));
    assert_eq!(room.encode_state(), EMPTY_UPDATE);
}

/// A panic inside yrs is contained: the writer gets an error, the room's members are
/// dropped, nothing more is applied, and no snapshot of the doubtful document is written.
/// What was applied before is still written to the log.
#[test]
fn a_panic_while_applying_takes_the_room_out_of_service() {
    let store = Arc::new(SledStore::temporary().unwrap());
    let room = room_on(store.clone());
    let (mut subscription, _) = room.subscribe(1);
    room.apply_update(&insert("kept")).unwrap();
    super::document::panic_hook::arm();
    assert!(matches!(
        room.apply_update(&insert("boom")),
        Err(ApplyError::RoomBroken)
    ));
    assert!(room.is_broken());
    assert_eq!(room.metrics.rooms_broken.get(), 1);
    assert!(subscription.updates.try_recv().is_ok(), "the first update");
    assert!(
        matches!(
            subscription.updates.try_recv(),
            Err(queue::TryRecvError::Disconnected)
        ),
        "the member was dropped"
    );
    assert!(matches!(
        room.apply_update(&insert("after")),
        Err(ApplyError::RoomBroken)
    ));
    room.compact().unwrap();
    room.write_log().unwrap();
    let stored = store.load("room").unwrap();
    assert!(stored.snapshot.is_none(), "no snapshot of a broken room");
    assert_eq!(text(&room_on(store)), "kept");
}

/// A panic elsewhere while the room is locked poisons the lock: the room is not served as
/// it is but taken out of service.
#[test]
fn a_poisoned_room_is_taken_out_of_service() {
    let room = room();
    let (mut subscription, _) = room.subscribe(1);
    let panicking = room.clone();
    let panicked = std::thread::spawn(move || {
        let _locked = panicking.state();
        panic!("a bug while the room is locked");
    })
    .join();
    assert!(panicked.is_err());
    assert!(!room.is_broken(), "noticed at the next lock");
    assert!(matches!(
        room.apply_update(&insert("x")),
        Err(ApplyError::RoomBroken)
    ));
    assert!(room.is_broken());
    assert!(matches!(
        subscription.updates.try_recv(),
        Err(queue::TryRecvError::Disconnected)
    ));
}

/// A compaction takes the unwritten updates under the snapshot's sequence number, so that
/// updates applied after it can never be written under a number the snapshot claims.
#[test]
fn updates_applied_after_a_compaction_survive_a_reload() {
    let store = Arc::new(SledStore::temporary().unwrap());
    let room = room_on(store.clone());
    room.apply_update(&insert("before")).unwrap();
    room.compact().unwrap();
    room.apply_update(&insert("after")).unwrap();
    room.write_log().unwrap();
    let reloaded = room_on(store.clone());
    assert_eq!(reloaded.to_json(), room.to_json());
    assert!(text(&reloaded).as_str().unwrap().contains("after"));
}

/// Runs `encode` (which reads the document) while the document is busy in another
/// transaction, and says whether an awareness update could be applied meanwhile: whether
/// `encode` waits for the document without holding the room's lock.
fn room_usable_while(room: &Arc<Room>, encode: fn(&Room)) -> bool {
    use std::sync::mpsc;
    let doc = room.state().awareness.doc().clone();
    let (busy_tx, busy_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        let _txn = doc.transact_mut();
        busy_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    busy_rx.recv().unwrap();
    let encoding = {
        let room = room.clone();
        std::thread::spawn(move || encode(&room))
    };
    // Let the encode reach the document's lock.
    std::thread::sleep(Duration::from_millis(200));
    let (done_tx, done_rx) = mpsc::channel();
    let awareness = {
        let room = room.clone();
        std::thread::spawn(move || {
            let mut payload = Vec::new();
            payload.write_var(1u32);
            payload.write_var(5u64);
            payload.write_var(1u32);
            payload.write_string("{}");
            let applied = room.apply_awareness(&payload, &mut HashSet::new());
            let _ = done_tx.send(applied.is_ok());
        })
    };
    let usable = done_rx.recv_timeout(Duration::from_secs(10)) == Ok(true);
    release_tx.send(()).unwrap();
    for thread in [writer, encoding, awareness] {
        thread.join().unwrap();
    }
    usable
}

#[test]
fn encoding_the_state_does_not_hold_the_room_lock() {
    let room = room();
    room.apply_update(&insert("some text")).unwrap();
    assert!(room_usable_while(&room, |room| drop(room.encode_state())));
    assert!(room_usable_while(&room, |room| drop(room.to_json())));
}

#[test]
fn a_sync_reply_to_a_non_empty_state_vector_does_not_hold_the_room_lock() {
    let room = room();
    room.apply_update(&insert("some text")).unwrap();
    assert!(room_usable_while(&room, |room| {
        let mut state_vector = StateVector::default();
        state_vector.set_max(ClientID::new(99), 1);
        drop(room.sync_step2(&state_vector));
    }));
}
