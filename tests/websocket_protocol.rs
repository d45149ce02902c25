//! Violations of the WebSocket protocol itself (RFC 6455), sent over a raw TCP socket after a
//! valid upgrade: the server answers each with a close frame carrying 1002 (protocol error),
//! or 1007 for a text message that is not UTF-8, instead of dropping the connection silently.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a TCP connection and completes a WebSocket upgrade to `/doc` by hand.
async fn upgraded(server: &TestServer) -> TcpStream {
    let mut socket = TcpStream::connect(server.addr()).await.unwrap();
    let request = format!(
        "GET /doc HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    // Read the response head byte by byte, so that nothing after it is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        let read = tokio::time::timeout(WAIT, socket.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read, 1, "the server closed during the upgrade");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    socket
}

/// Reads server frames until a close frame, returning its code; `None` if the connection
/// ended without one.
async fn close_code(socket: &mut TcpStream) -> Option<u16> {
    let mut buffer = Vec::new();
    let read_all = async {
        let mut chunk = [0u8; 4096];
        loop {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        }
    };
    // The server closes the TCP connection after its close frame (and a short drain).
    let _ = tokio::time::timeout(WAIT, read_all).await;
    let mut at = 0;
    while at + 2 <= buffer.len() {
        let opcode = buffer[at] & 0x0f;
        let mut len = u64::from(buffer[at + 1] & 0x7f);
        let mut header = 2;
        if len == 126 {
            len = u64::from(u16::from_be_bytes([buffer[at + 2], buffer[at + 3]]));
            header = 4;
        } else if len == 127 {
            len = u64::from_be_bytes(buffer[at + 2..at + 10].try_into().unwrap());
            header = 10;
        }
        let payload = at + header;
        if opcode == 0x8 {
            return (len >= 2).then(|| u16::from_be_bytes([buffer[payload], buffer[payload + 1]]));
        }
        at = payload + usize::try_from(len).unwrap();
    }
    None
}

/// A masked client frame (`first`: FIN, reserved bits and opcode) carrying `payload`.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![first, 0x80 | u8::try_from(payload.len()).unwrap()];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

async fn answer_to(frame: &[u8]) -> Option<u16> {
    let server = TestServer::start().await;
    let mut socket = upgraded(&server).await;
    socket.write_all(frame).await.unwrap();
    close_code(&mut socket).await
}

#[tokio::test]
async fn an_unmasked_client_frame_is_closed_with_1002() {
    // A binary frame of one byte, without the mask every client frame must have.
    assert_eq!(answer_to(&[0x82, 0x01, 0x03]).await, Some(1002));
}

#[tokio::test]
async fn an_unknown_opcode_is_closed_with_1002() {
    assert_eq!(answer_to(&masked(0x83, &[1, 2])).await, Some(1002));
}

#[tokio::test]
async fn reserved_bits_are_closed_with_1002() {
    assert_eq!(answer_to(&masked(0xc2, &[3])).await, Some(1002));
}

#[tokio::test]
async fn a_text_message_that_is_not_utf8_is_closed_with_1007() {
    assert_eq!(answer_to(&masked(0x81, &[0xff, 0xfe])).await, Some(1007));
}

#[tokio::test]
async fn a_well_formed_frame_still_works() {
    // A QueryAwareness in a masked binary frame: no close.
    let server = TestServer::start().await;
    let mut socket = upgraded(&server).await;
    socket.write_all(&masked(0x82, &[3])).await.unwrap();
    let mut first = [0u8; 2];
    tokio::time::timeout(WAIT, socket.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    // The greeting's SyncStep1, a binary frame.
    assert_eq!(first[0], 0x82);
}
