//! Convergence and late joiners over real sockets.

mod common;

use common::{Client, TestServer, text};
use yrs::{Array, Map, Text, Transact};

#[tokio::test]
async fn concurrent_edits_converge_on_text_map_and_array() {
    let server = TestServer::start().await;
    let clients = [
        Client::connect(&server, "doc").await,
        Client::connect(&server, "doc").await,
        Client::connect(&server, "doc").await,
    ];
    for (index, client) in clients.iter().enumerate() {
        let text_ref = client.doc.get_or_insert_text("text");
        let map_ref = client.doc.get_or_insert_map("map");
        let array_ref = client.doc.get_or_insert_array("array");
        client
            .edit(|txn| {
                text_ref.insert(txn, 0, &format!("<{index}>"));
                map_ref.insert(txn, format!("key-{index}"), index as u32);
                map_ref.insert(txn, "shared", index as u32);
                array_ref.push_back(txn, index as u32);
            })
            .await;
    }
    for client in &clients {
        client
            .wait_until(|_, doc| text(doc, "text").len() == 9)
            .await;
    }
    let expected = text(&clients[0].doc, "text");
    for client in &clients {
        assert_eq!(text(&client.doc, "text"), expected);
        let map = client.doc.get_or_insert_map("map");
        let array = client.doc.get_or_insert_array("array");
        client
            .wait_until(|_, doc| {
                let txn = yrs::Transact::transact(doc);
                map.len(&txn) == 4 && array.len(&txn) == 3
            })
            .await;
    }
    let late = Client::connect(&server, "doc").await;
    assert_eq!(text(&late.doc, "text"), expected);
    let map = late.doc.get_or_insert_map("map");
    assert_eq!(map.len(&yrs::Transact::transact(&late.doc)), 4);
}

/// A client that types right after reconnecting, before its SyncStep2 went out, sends an
/// update continuing changes the server never saw. Yjs would hold it pending; ycord refuses
/// it without closing (yrs 0.28 would integrate it out of order and lose it), asks the client
/// for what it lacks with one SyncStep1, and the client's SyncStep2 brings everything.
#[tokio::test]
async fn an_update_ahead_of_the_room_is_refused_until_the_client_resyncs() {
    let server = TestServer::start().await;
    let watcher = Client::connect(&server, "doc").await;
    let offline = yrs::Doc::with_client_id(4242);
    let typed = offline.get_or_insert_text("text");
    let ahead = {
        typed.insert(&mut offline.transact_mut(), 0, "offline ");
        let mut txn = offline.transact_mut();
        typed.insert(&mut txn, 8, "then live");
        txn.encode_update_v1()
    };
    let client = Client::connect_raw(&server.room_url("doc"), offline).await;
    let sync_step1_count = |client: &Client| {
        client
            .frames()
            .iter()
            .filter(|frame| frame.starts_with(&[0, 0]))
            .count()
    };
    client
        .wait_for("the greeting", |c| sync_step1_count(c) == 1)
        .await;
    // The live update, twice, before any SyncStep2: one resync request, no close.
    for _ in 0..2 {
        client
            .send_raw(ycord::protocol::encode_update(&ahead).to_vec())
            .await;
    }
    client
        .wait_for("a resync request", |c| sync_step1_count(c) == 2)
        .await;
    assert!(!client.ended(), "the connection stays open");
    assert_eq!(text(&watcher.doc, "text"), "", "nothing was integrated");
    // The client answers as Yjs does: a SyncStep1 and a SyncStep2 with all it has.
    client.send_sync_step1().await;
    watcher.wait_text("text", "offline then live").await;
    client.wait_text("text", "offline then live").await;
    assert_eq!(sync_step1_count(&client), 2, "asked once");
    watcher.close().await;
    client.close().await;
}
