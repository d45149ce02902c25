//! Joining a room: late joiners, clients with offline edits, and a storm of joiners while the
//! room is still being loaded from disk.

mod common;

use common::{Client, TestServer, connect_url, text};
use futures_util::future::join_all;
use yrs::{Doc, Map, Text, Transact};

/// The map `name` of `doc` as sorted `key=value` strings.
fn map_entries(doc: &Doc, name: &str) -> Vec<String> {
    let map = doc.get_or_insert_map(name);
    let txn = doc.transact();
    let mut entries: Vec<String> = map
        .iter(&txn)
        .map(|(key, value)| format!("{key}={}", value.to_string(&txn)))
        .collect();
    entries.sort();
    entries
}

#[tokio::test]
async fn a_late_joiner_receives_every_insert_delete_and_map_entry() {
    let server = TestServer::start().await;
    let a = Client::connect(&server, "doc").await;
    let b = Client::connect(&server, "doc").await;

    let text_ref = a.doc.get_or_insert_text("text");
    for word in ["hello ", "cruel ", "world"] {
        a.append_text("text", word).await;
    }
    // A deletion must travel too (the delete set of the sync answer).
    a.edit(|txn| text_ref.remove_range(txn, 6, 6)).await;
    let map_ref = b.doc.get_or_insert_map("map");
    for index in 0..10u32 {
        b.edit(|txn| {
            map_ref.insert(txn, format!("k{index}"), index);
        })
        .await;
    }
    // Both edits went through the server once each side sees the other's.
    b.wait_text("text", "hello world").await;
    a.wait_for("a to see b's map", |client| {
        map_entries(&client.doc, "map").len() == 10
    })
    .await;

    let late = Client::connect(&server, "doc").await;
    assert_eq!(text(&late.doc, "text"), "hello world");
    assert_eq!(map_entries(&late.doc, "map"), map_entries(&a.doc, "map"));
    assert_eq!(late.state_vector(), a.state_vector());
    assert_eq!(late.state_vector(), b.state_vector());
}

#[tokio::test]
async fn offline_edits_merge_on_connect_in_both_directions() {
    let server = TestServer::start().await;
    let online = Client::connect(&server, "doc").await;
    let observer = Client::connect(&server, "doc").await;
    online.append_text("text", "online;").await;
    observer.wait_text("text", "online;").await;

    // A document edited while disconnected (as a browser tab that lost its connection).
    let offline_doc = Doc::new();
    {
        let text_ref = offline_doc.get_or_insert_text("text");
        let map_ref = offline_doc.get_or_insert_map("map");
        let mut txn = offline_doc.transact_mut();
        text_ref.insert(&mut txn, 0, "offline;");
        map_ref.insert(&mut txn, "written", "offline");
    }
    let offline = Client::connect_with_doc(&server.room_url("doc"), offline_doc).await;

    // The returning client sees what happened meanwhile...
    offline
        .wait_for("the offline client to get the online edit", |client| {
            text(&client.doc, "text").contains("online;")
        })
        .await;
    // ...and the others see its offline edits.
    for client in [&online, &observer] {
        client
            .wait_for("the online clients to get the offline edit", |client| {
                text(&client.doc, "text").len() == "online;offline;".len()
            })
            .await;
        assert_eq!(
            map_entries(&client.doc, "map"),
            vec!["written=offline".to_owned()]
        );
    }
    let merged = text(&online.doc, "text");
    assert!(merged.contains("offline;") && merged.contains("online;"));
    assert_eq!(text(&offline.doc, "text"), merged);
    assert_eq!(text(&observer.doc, "text"), merged);

    let late = Client::connect(&server, "doc").await;
    assert_eq!(text(&late.doc, "text"), merged);
    assert_eq!(
        map_entries(&late.doc, "map"),
        vec!["written=offline".to_owned()]
    );
}

/// A small deterministic pseudo-random sequence (no dependency needed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % u64::from(bound.max(1))) as u32
    }
}

/// `shared/PROTOCOL.md` 2.10: after a restart every client comes back at once; the room must be
/// loaded once and nobody answered before it is loaded (else clients see an empty document).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_clients_joining_while_the_room_loads_all_get_the_full_document() {
    const EDITS: u32 = 3000;
    let mut server = TestServer::start().await;
    let writer = Client::connect(&server, "big").await;
    let text_ref = writer.doc.get_or_insert_text("text");
    let mut random = Lcg(7);
    // Many small inserts at scattered positions: many blocks, so loading takes real work.
    for index in 0..EDITS {
        writer
            .edit(|txn| {
                let len = text_ref.len(txn);
                let at = random.next(len + 1);
                text_ref.insert(txn, at, &format!("{}", index % 10));
                if index % 5 == 4 {
                    let len = text_ref.len(txn);
                    let at = random.next(len);
                    text_ref.remove_range(txn, at, 1);
                }
            })
            .await;
    }
    writer.append_text("text", &"#".repeat(256 * 1024)).await;
    let expected = text(&writer.doc, "text");
    let expected_sv = writer.state_vector();
    let observer = Client::connect(&server, "big").await;
    observer.wait_text("text", &expected).await;
    drop(observer);
    drop(writer);

    // After the restart the room exists only on disk.
    server.restart().await;
    let url = server.room_url("big");
    let clients = join_all((0..30).map(|_| connect_url(&url))).await;

    for (index, client) in clients.iter().enumerate() {
        // `connect` returned once SyncStep2 was applied: what the client has now is what the
        // server's first answer held.
        assert!(client.seen.lock().unwrap().synced);
        let got = text(&client.doc, "text");
        assert!(
            got == expected,
            "client {index} got {} chars instead of {}",
            got.len(),
            expected.len()
        );
        assert_eq!(client.state_vector(), expected_sv, "client {index}");
        // The server's greeting (its SyncStep1) already reflected the loaded document.
        let first = client.frames()[0].clone();
        assert_eq!(
            &first[..2],
            &[0, 0],
            "client {index}: first frame is SyncStep1"
        );
        let mut messages = ycord::protocol::decode_frame(&first);
        match messages.next() {
            Some(Ok(ycord::protocol::Inbound::SyncStep1(sv))) => {
                assert_eq!(sv, expected_sv, "client {index}: server's state vector")
            }
            other => panic!("client {index}: unexpected first message {other:?}"),
        }
    }
    // They all share one room: an edit by one reaches every other.
    clients[0].append_text("text", "!").await;
    let expected = format!("{expected}!");
    for client in &clients[1..] {
        client.wait_text("text", &expected).await;
    }
    // The document is not duplicated either: a late joiner has exactly the expected text.
    let late = Client::connect(&server, "big").await;
    assert_eq!(text(&late.doc, "text"), expected);
}
