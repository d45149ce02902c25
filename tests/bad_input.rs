//! Garbage input: the offending connection is closed with a code and a reason (1007 for a
//! malformed message, 1003 for a text frame), its presence is cleaned up, nothing of what it
//! sent reaches the document, and the room stays healthy for everyone else.

mod common;

use common::{Client, TestServer, text};
use tokio_tungstenite::tungstenite::Message;
use ycord::protocol;
use yrs::{Doc, Text, Transact};

const OFFENDER: u64 = 4242;
const OFFENDER_STATE: &str = r#"{"user":"offender"}"#;

/// A varint of 2^60: a client ID beyond the 53 bits Yjs allows.
const HUGE_CLIENT_ID: [u8; 9] = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10];

/// A real v1 update inserting "EVIL" into the text `text` of a fresh document.
fn evil_update() -> Vec<u8> {
    let doc = Doc::new();
    let text_ref = doc.get_or_insert_text("text");
    let mut txn = doc.transact_mut();
    text_ref.insert(&mut txn, 0, "EVIL");
    txn.encode_update_v1()
}

/// Sends `frame` from a connection of a healthy room and checks everything the module doc
/// promises.
async fn assert_rejected(frame: Message, expected_code: u16) {
    let server = TestServer::start().await;
    let writer = Client::connect(&server, "doc").await;
    let observer = Client::connect(&server, "doc").await;
    writer.append_text("text", "before;").await;
    observer.wait_text("text", "before;").await;
    let state_before = observer.state_vector();

    let offender = Client::connect(&server, "doc").await;
    offender.set_awareness(OFFENDER, 1, OFFENDER_STATE).await;
    observer
        .wait_awareness(OFFENDER, Some(OFFENDER_STATE))
        .await;

    offender.send_message(frame).await;
    let (code, reason) = offender
        .wait_closed()
        .await
        .expect("the offender gets a close frame");
    assert_eq!(code, expected_code, "close reason: {reason:?}");
    assert!(!reason.is_empty(), "the close frame must give a reason");
    // The offender's presence goes with it (no ghost cursor).
    observer.wait_awareness(OFFENDER, None).await;

    // Nothing changed: a fresh joiner gets exactly the document as it was.
    let fresh = Client::connect(&server, "doc").await;
    assert_eq!(text(&fresh.doc, "text"), "before;");
    assert_eq!(fresh.state_vector(), state_before);
    assert_eq!(observer.state_vector(), state_before);

    // And the room keeps working for everyone else.
    writer.append_text("text", "after;").await;
    observer.wait_text("text", "before;after;").await;
    fresh.wait_text("text", "before;after;").await;
    assert!(!writer.ended() && !observer.ended());
}

fn binary(bytes: &[u8]) -> Message {
    Message::binary(bytes.to_vec())
}

#[tokio::test]
async fn a_text_frame_is_closed_with_1003() {
    assert_rejected(Message::text(r#"{"type":"sync"}"#), 1003).await;
}

#[tokio::test]
async fn an_empty_binary_frame_is_closed_with_1007() {
    assert_rejected(binary(&[]), 1007).await;
}

#[tokio::test]
async fn a_truncated_varint_is_closed_with_1007() {
    assert_rejected(binary(&[0x00, 0x02, 0x80]), 1007).await;
}

#[tokio::test]
async fn an_absurd_length_is_closed_with_1007() {
    assert_rejected(binary(&[0, 2, 0xff, 0xff, 0xff, 0xff, 0x0f]), 1007).await;
}

#[tokio::test]
async fn a_length_beyond_the_frame_is_closed_with_1007() {
    assert_rejected(binary(&[0, 2, 10, 1, 2, 3]), 1007).await;
}

#[tokio::test]
async fn an_unknown_message_type_is_closed_with_1007() {
    assert_rejected(binary(&[9]), 1007).await;
}

#[tokio::test]
async fn an_unknown_sync_message_type_is_closed_with_1007() {
    assert_rejected(binary(&[0, 7, 0]), 1007).await;
}

#[tokio::test]
async fn an_invalid_state_vector_is_closed_with_1007() {
    assert_rejected(
        binary(&protocol::encode_sync_step1(&[3, 0xff, 0xff, 0xff])),
        1007,
    )
    .await;
}

#[tokio::test]
async fn a_truncated_update_is_rejected_whole() {
    // Every struct of the update is complete; only its delete set is cut off. Applying the
    // structs would put "EVIL" into the document.
    let update = evil_update();
    let frame = protocol::encode_update(&update[..update.len() - 1]);
    assert_rejected(binary(&frame), 1007).await;
}

#[tokio::test]
async fn garbage_update_bytes_are_closed_with_1007() {
    assert_rejected(binary(&protocol::encode_update(&[0xff; 16])), 1007).await;
}

#[tokio::test]
async fn a_garbage_sync_step2_is_closed_with_1007() {
    assert_rejected(binary(&protocol::encode_sync_step2(&[5, 1, 2, 3])), 1007).await;
}

#[tokio::test]
async fn an_invalid_awareness_payload_is_closed_with_1007() {
    // Five entries announced, one and a half present.
    assert_rejected(binary(&protocol::encode_awareness(&[5, 1, 2])), 1007).await;
}

// Client IDs are 53-bit (JavaScript-safe) integers. yrs decodes larger ones with a
// `debug_assert!` that panics; a server must turn that into a clean rejection.

#[tokio::test]
async fn an_update_with_a_client_id_beyond_53_bits_is_closed_with_1007() {
    let mut update = vec![1, 1];
    update.extend_from_slice(&HUGE_CLIENT_ID);
    // clock 0, a string item (info 4) in the root type "text" holding "EVIL", empty delete set
    update.extend_from_slice(&[
        0, 4, 1, 4, b't', b'e', b'x', b't', 4, b'E', b'V', b'I', b'L', 0,
    ]);
    assert_rejected(binary(&protocol::encode_update(&update)), 1007).await;
}

#[tokio::test]
async fn a_state_vector_with_a_client_id_beyond_53_bits_is_closed_with_1007() {
    let mut state_vector = vec![1];
    state_vector.extend_from_slice(&HUGE_CLIENT_ID);
    state_vector.push(5);
    assert_rejected(binary(&protocol::encode_sync_step1(&state_vector)), 1007).await;
}

#[tokio::test]
async fn an_awareness_entry_with_a_client_id_beyond_53_bits_is_closed_with_1007() {
    let mut payload = vec![1];
    payload.extend_from_slice(&HUGE_CLIENT_ID);
    payload.extend_from_slice(&[1, 4, b'n', b'u', b'l', b'l']);
    assert_rejected(binary(&protocol::encode_awareness(&payload)), 1007).await;
}

#[tokio::test]
async fn the_evil_update_itself_is_accepted_when_well_formed() {
    // Guards the tests above: the payload they corrupt is a valid update that would change the
    // document, so "nothing changed" there means "rejected", not "had no effect anyway".
    let server = TestServer::start().await;
    let sender = Client::connect(&server, "doc").await;
    let observer = Client::connect(&server, "doc").await;
    sender
        .send_raw(protocol::encode_update(&evil_update()).to_vec())
        .await;
    observer.wait_text("text", "EVIL").await;
    assert!(!sender.ended());
}
