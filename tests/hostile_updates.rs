//! Updates built to make validation work: hundreds of thousands of clients, of ranges, of
//! cross-client references, of `Any` values nested as deep as allowed. Each is a valid
//! encoding, and each is checked (validated, its dependencies looked up, applied or refused)
//! in time linear in its size.
//!
//! Time is not measured precisely (machines are noisy): every case is about 1-2 MB, which a
//! linear check handles in well under a second even in a debug build, and a check quadratic in
//! the number of clients or references would take minutes (the delete set of 200,000 clients
//! took 6 s of CPU in a release build). The bound is an order of magnitude above the first and
//! far below the second.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, TestServer, text};
use ycord::error::ApplyError;
use ycord::metrics::Metrics;
use ycord::protocol;
use ycord::room::{Room, RoomConfig};
use ycord::store::SledStore;
use yrs::encoding::write::Write;

/// The number of clients, references or ranges in each case.
const N: u32 = 200_000;

/// How long one case may take (see the module comment).
const BOUND: Duration = Duration::from_secs(5);

fn room() -> Arc<Room> {
    let config = RoomConfig::without_limits();
    let store = Arc::new(SledStore::temporary().unwrap());
    Arc::new(Room::load("room".into(), store, config, Arc::new(Metrics::new()), None).unwrap())
}

/// A v1 update of no structs whose delete set names `N` distinct clients, one range each:
/// deletions of changes the room does not have.
fn delete_set_of_many_clients() -> Vec<u8> {
    let mut update = Vec::new();
    update.write_var(0u32);
    update.write_var(N);
    for client in 0..N {
        update.write_var(u64::from(client) + 1_000);
        update.write_var(1u32);
        update.write_var(0u32);
        update.write_var(1u32);
    }
    update
}

/// A v1 update of `N` clients with one one-character item each, in pairs: the even client's
/// item follows the odd client's (its origin), so the update refers to `N / 2` other clients
/// and holds every change it refers to. It applies.
fn cross_client_references() -> Vec<u8> {
    let mut update = Vec::new();
    update.write_var(N);
    for client in 1..=N {
        update.write_var(1u32); // one struct
        update.write_var(u64::from(client));
        update.write_var(0u32); // from clock 0
        if client % 2 == 0 {
            update.write_u8(0x80 | 4); // origin, string content
            update.write_var(u64::from(client - 1));
            update.write_var(0u32);
        } else {
            update.write_u8(4); // string content, parent follows
            update.write_var(1u32); // the parent is a root type, by name
            update.write_string("text");
        }
        update.write_string("a");
    }
    update.write_var(0u32); // empty delete set
    update
}

/// A v1 update of one client's `N` items, then a delete set of `N` ranges of that client, in
/// descending order (Yjs writes them ascending; nothing says they must be).
fn many_ranges_of_one_client() -> Vec<u8> {
    let mut update = Vec::new();
    update.write_var(1u32);
    update.write_var(N);
    update.write_var(7u64);
    update.write_var(0u32);
    update.write_u8(4);
    update.write_var(1u32);
    update.write_string("text");
    update.write_string("a");
    for clock in 1..N {
        update.write_u8(0x80 | 4);
        update.write_var(7u64);
        update.write_var(clock - 1);
        update.write_string("a");
    }
    update.write_var(1u32);
    update.write_var(7u64);
    update.write_var(N / 2);
    for range in (0..N / 2).rev() {
        update.write_var(range * 2);
        update.write_var(1u32);
    }
    update
}

/// A v1 update of one client's items, each an `Any` value nested as deep as allowed
/// ([`ycord::protocol::validate::MAX_ANY_DEPTH`] arrays), about 1 MB in all.
fn deeply_nested_values() -> Vec<u8> {
    let depth = ycord::protocol::validate::MAX_ANY_DEPTH;
    let items = 1_000_000 / (2 * depth as u32);
    let mut update = Vec::new();
    update.write_var(1u32);
    update.write_var(items);
    update.write_var(9u64);
    update.write_var(0u32);
    for index in 0..items {
        if index == 0 {
            update.write_u8(8); // Any content, parent follows
            update.write_var(1u32);
            update.write_string("array");
        } else {
            update.write_u8(0x80 | 8);
            update.write_var(9u64);
            update.write_var(index - 1);
        }
        update.write_var(1u32); // one value
        for _ in 0..depth - 1 {
            update.write_u8(117); // an array
            update.write_var(1u32); // of one element
        }
        update.write_u8(117);
        update.write_var(0u32); // the innermost array is empty
    }
    update.write_var(0u32);
    update
}

/// Runs `update` through a room and returns the outcome, failing if it took longer than
/// [`BOUND`].
fn check(name: &str, update: &[u8]) -> Result<ycord::room::Applied, ApplyError> {
    let room = room();
    let started = Instant::now();
    let outcome = room.apply_update(update);
    let took = started.elapsed();
    eprintln!("{name}: {} bytes, {took:?}: {outcome:?}", update.len());
    assert!(
        took < BOUND,
        "{name} ({} bytes) took {took:?}",
        update.len()
    );
    outcome
}

#[test]
fn a_delete_set_of_200000_clients_is_checked_in_linear_time() {
    let update = delete_set_of_many_clients();
    assert!(
        matches!(
            check("delete set of 200,000 clients", &update),
            Err(ApplyError::MissingDependency { .. })
        ),
        "the room lacks what it deletes: refused until the client resyncs"
    );
}

#[test]
fn references_across_200000_clients_are_checked_in_linear_time() {
    let update = cross_client_references();
    assert_eq!(
        check("200,000 clients referring to each other", &update).unwrap(),
        ycord::room::Applied::Changed
    );
}

#[test]
fn a_delete_set_of_100000_ranges_is_checked_in_linear_time() {
    let update = many_ranges_of_one_client();
    assert_eq!(
        check("100,000 delete ranges of one client", &update).unwrap(),
        ycord::room::Applied::Changed
    );
}

#[test]
fn values_nested_as_deep_as_allowed_are_checked_in_linear_time() {
    let update = deeply_nested_values();
    assert_eq!(
        check("Any values nested 127 deep", &update).unwrap(),
        ycord::room::Applied::Changed
    );
}

/// The 200,000-client delete set through a real socket: the sender is asked to resync (the
/// room lacks what it deletes) and stays connected, and the room keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_set_of_200000_clients_over_a_socket_leaves_the_room_serving() {
    let server = TestServer::start().await;
    let writer = Client::connect(&server, "doc").await;
    let reader = Client::connect(&server, "doc").await;
    let attacker = Client::connect(&server, "doc").await;
    let frames_before = attacker.frame_count();
    attacker
        .send_raw(protocol::encode_update(&delete_set_of_many_clients()).to_vec())
        .await;
    // The answer to a refused update: the room's SyncStep1.
    attacker
        .wait_for("the server's SyncStep1", |client| {
            client.frames()[frames_before..]
                .iter()
                .any(|frame| frame.starts_with(&[0, 0]))
        })
        .await;
    writer.append_text("text", "still here").await;
    reader
        .wait_until(|_, doc| text(doc, "text") == "still here")
        .await;
    assert!(!attacker.ended());
}
