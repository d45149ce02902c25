//! Awareness (presence, cursors): relay, the greeting of late joiners, QueryAwareness, cleanup
//! of connections that vanish, expiry of states nobody renews. Every test also checks that each
//! frame the server sent holds exactly one message.

mod common;

use std::time::Duration;

use common::{Client, TestServer, assert_one_message_per_frame, awareness_entries};
use yrs::Doc;

const ALICE: u64 = 1001;
const BOB: u64 = 1002;
const CAROL: u64 = 1003;

const ALICE_STATE: &str = r#"{"user":{"name":"alice"}}"#;
const BOB_STATE: &str = r#"{"user":{"name":"bob"}}"#;
const CAROL_STATE: &str = r#"{"user":{"name":"carol"}}"#;

#[tokio::test]
async fn states_are_relayed_to_every_member_the_sender_included() {
    let server = TestServer::start().await;
    let a = Client::connect(&server, "room").await;
    let b = Client::connect(&server, "room").await;

    a.set_awareness(ALICE, 1, ALICE_STATE).await;
    b.wait_awareness(ALICE, Some(ALICE_STATE)).await;
    b.set_awareness(BOB, 1, BOB_STATE).await;
    a.wait_awareness(BOB, Some(BOB_STATE)).await;

    // A change (higher clock) is relayed, and comes back to its sender too (the echo is what
    // keeps y-websocket's "nothing heard for 30 s" timer quiet).
    let moved = r#"{"user":{"name":"alice"},"cursor":{"anchor":5}}"#;
    a.set_awareness(ALICE, 2, moved).await;
    b.wait_awareness(ALICE, Some(moved)).await;
    a.wait_awareness(ALICE, Some(moved)).await;

    // A removal is relayed as well.
    b.set_awareness(BOB, 2, "null").await;
    a.wait_awareness(BOB, None).await;

    assert_one_message_per_frame(&a);
    assert_one_message_per_frame(&b);
}

#[tokio::test]
async fn a_late_joiner_is_sent_the_present_states_unasked_after_sync_step1() {
    let server = TestServer::start().await;
    let a = Client::connect(&server, "room").await;
    let b = Client::connect(&server, "room").await;
    a.set_awareness(ALICE, 1, ALICE_STATE).await;
    b.set_awareness(BOB, 3, BOB_STATE).await;
    a.wait_awareness(BOB, Some(BOB_STATE)).await;
    b.wait_awareness(ALICE, Some(ALICE_STATE)).await;

    // The late joiner sends nothing at all.
    let late = Client::connect_raw(&server.room_url("room"), Doc::new()).await;
    late.wait_for("the greeting's two frames", |client| {
        client.frame_count() >= 2
    })
    .await;
    let frames = late.frames();
    assert_eq!(
        &frames[0][..2],
        &[0, 0],
        "the first frame is the server's SyncStep1"
    );
    let entries = awareness_entries(&frames[1]).expect("the second frame is an Awareness message");
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[&ALICE], (1, ALICE_STATE.to_owned()));
    assert_eq!(entries[&BOB], (3, BOB_STATE.to_owned()));
    assert_eq!(late.awareness_state(ALICE).as_deref(), Some(ALICE_STATE));
    assert_eq!(late.awareness_state(BOB).as_deref(), Some(BOB_STATE));
    assert_one_message_per_frame(&late);
}

#[tokio::test]
async fn query_awareness_is_answered_with_every_present_state_in_one_message() {
    let server = TestServer::start().await;
    let a = Client::connect(&server, "room").await;
    let b = Client::connect(&server, "room").await;
    a.set_awareness(ALICE, 1, ALICE_STATE).await;
    b.set_awareness(BOB, 1, BOB_STATE).await;
    // A removed state must not be part of the answer.
    b.set_awareness(CAROL, 1, CAROL_STATE).await;
    b.set_awareness(CAROL, 2, "null").await;
    a.wait_awareness(BOB, Some(BOB_STATE)).await;
    a.wait_for("carol to come and go", |client| {
        client
            .frames()
            .iter()
            .filter_map(|frame| awareness_entries(frame))
            .any(|entries| entries.get(&CAROL).is_some_and(|entry| entry.1 == "null"))
    })
    .await;
    b.wait_awareness(ALICE, Some(ALICE_STATE)).await;

    let asker = Client::connect_raw(&server.room_url("room"), Doc::new()).await;
    asker
        .wait_for("the greeting", |client| client.frame_count() >= 2)
        .await;
    asker.send_raw(vec![3]).await;
    asker
        .wait_for("the answer to QueryAwareness", |client| {
            client.frame_count() >= 3
        })
        .await;
    let frames = asker.frames();
    let answer = awareness_entries(&frames[2]).expect("the answer is an Awareness message");
    assert_eq!(answer.len(), 2, "{answer:?}");
    assert_eq!(answer[&ALICE].1, ALICE_STATE);
    assert_eq!(answer[&BOB].1, BOB_STATE);
    assert_one_message_per_frame(&asker);
    assert_one_message_per_frame(&a);
}

#[tokio::test]
async fn a_connection_that_vanishes_without_a_close_frame_leaves_no_ghost() {
    let server = TestServer::start().await;
    let leaver = Client::connect(&server, "room").await;
    let closer = Client::connect(&server, "room").await;
    let stayer = Client::connect(&server, "room").await;
    // One connection may control several client IDs (a client that changed its ID).
    leaver.set_awareness(ALICE, 1, ALICE_STATE).await;
    leaver.set_awareness(CAROL, 4, CAROL_STATE).await;
    closer.set_awareness(2000, 1, r#"{"user":"closer"}"#).await;
    stayer.set_awareness(BOB, 1, BOB_STATE).await;
    for id in [ALICE, CAROL, 2000] {
        stayer
            .wait_for("every state to be known", |client| {
                client.awareness_state(id).is_some()
            })
            .await;
    }

    leaver.drop_abruptly();
    stayer.wait_awareness(ALICE, None).await;
    stayer.wait_awareness(CAROL, None).await;
    // The removal travelled as a `null` state with a higher clock, as y-protocols expects.
    let removals: Vec<_> = stayer
        .frames()
        .iter()
        .filter_map(|frame| awareness_entries(frame))
        .flat_map(|entries| entries.into_iter())
        .filter(|(_, (_, json))| json == "null")
        .collect();
    assert!(
        removals.contains(&(ALICE, (2, "null".to_owned()))),
        "{removals:?}"
    );
    assert!(
        removals.contains(&(CAROL, (5, "null".to_owned()))),
        "{removals:?}"
    );

    // A regular close cleans up as well.
    closer.close().await;
    stayer.wait_awareness(2000, None).await;
    // The remaining state is untouched.
    assert_eq!(stayer.awareness_state(BOB).as_deref(), Some(BOB_STATE));

    // A newcomer's greeting holds only the state still present.
    let newcomer = Client::connect_raw(&server.room_url("room"), Doc::new()).await;
    newcomer
        .wait_for("the greeting", |client| client.frame_count() >= 2)
        .await;
    let greeting = awareness_entries(&newcomer.frames()[1]).expect("awareness greeting");
    assert_eq!(greeting.keys().copied().collect::<Vec<_>>(), vec![BOB]);
    assert_one_message_per_frame(&stayer);
    assert_one_message_per_frame(&newcomer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_not_renewed_expires_while_its_setter_stays_connected() {
    let server = TestServer::start_with(|config| config.awareness_timeout_secs = 2).await;
    let silent = Client::connect(&server, "room").await;
    let renewing = Client::connect(&server, "room").await;
    let observer = Client::connect(&server, "room").await;
    silent.set_awareness(ALICE, 1, ALICE_STATE).await;
    renewing.set_awareness(BOB, 1, BOB_STATE).await;
    observer.wait_awareness(ALICE, Some(ALICE_STATE)).await;
    observer.wait_awareness(BOB, Some(BOB_STATE)).await;

    // Bob renews well within the timeout, as real clients do (every 15 s for a 30 s timeout).
    let renewer = tokio::spawn(async move {
        for clock in 2u32.. {
            tokio::time::sleep(Duration::from_millis(300)).await;
            renewing.set_awareness(BOB, clock, BOB_STATE).await;
        }
    });

    observer.wait_awareness(ALICE, None).await;
    assert_eq!(
        observer.awareness_state(BOB).as_deref(),
        Some(BOB_STATE),
        "a renewed state must not expire"
    );
    // The setter is told too, and is still connected.
    silent.wait_awareness(ALICE, None).await;
    assert!(!silent.ended(), "the silent client must stay connected");
    renewer.abort();

    // The silent client can come back to life.
    silent.set_awareness(ALICE, 10, ALICE_STATE).await;
    observer.wait_awareness(ALICE, Some(ALICE_STATE)).await;
    assert_one_message_per_frame(&observer);
    assert_one_message_per_frame(&silent);
}
