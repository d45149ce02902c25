//! Convergence and late joiners over real sockets.

mod common;

use common::{Client, TestServer, text};
use yrs::{Array, Map, Text};

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
