//! The Hocuspocus dialect (`@hocuspocus/provider` 3.x/4.x): one socket carries many documents,
//! and every message starts with the document it is about. Pure functions over bytes, like the
//! y-websocket codec beside it, so they are unit-tested and fuzzed directly.
//!
//! Every frame holds one message: `varString(documentKey) varUint(type) payload`. The types,
//! as `@hocuspocus/provider` 4.8 and `@hocuspocus/server` 4.7 define them (`src/types.ts`):
//!
//! | type | name               | payload                                                  |
//! |------|--------------------|----------------------------------------------------------|
//! | 0    | Sync               | a y-protocols sync message (step 1, step 2, update)      |
//! | 1    | Awareness          | `varUint8Array(awarenessUpdate)`                         |
//! | 2    | Auth               | `varUint(0) varString(token) [varString(version)]` from a client; `varUint(1) varString(reason)` PermissionDenied or `varUint(2) varString(scope)` Authenticated from the server |
//! | 3    | QueryAwareness     | none                                                     |
//! | 4    | SyncReply          | server-internal (never sent to a client)                 |
//! | 5    | Stateless          | `varString(payload)`                                     |
//! | 6    | BroadcastStateless | server-internal (a cluster's relay; refused from clients) |
//! | 7    | CLOSE              | none from a client; `varString(reason)` from the server  |
//! | 8    | SyncStatus         | `varUint(1)` applied, `varUint(0)` refused               |
//! | 9/10 | Ping / Pong        | the single byte `09` / `0A`, without a document key      |
//!
//! Types 0, 1 and 3 are y-websocket messages once the document key is taken off: they are
//! decoded by [`super::decode_frame`], with the same validation. The document key is the
//! provider's routing key: the document name, or `name\0sessionId` with `sessionAwareness`
//! (`@hocuspocus/common` `routingKey.ts`); [`room_of`] gives the room.

use bytes::Bytes;
use thiserror::Error;
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;

use super::{Inbound as SyncMessage, ProtocolError};

const MSG_SYNC: u64 = 0;
const MSG_AWARENESS: u64 = 1;
const MSG_AUTH: u64 = 2;
const MSG_QUERY_AWARENESS: u64 = 3;
const MSG_SYNC_REPLY: u64 = 4;
const MSG_STATELESS: u64 = 5;
const MSG_BROADCAST_STATELESS: u64 = 6;
const MSG_CLOSE: u64 = 7;
const MSG_SYNC_STATUS: u64 = 8;

const AUTH_TOKEN: u64 = 0;
const AUTH_PERMISSION_DENIED: u8 = 1;
const AUTH_AUTHENTICATED: u8 = 2;

/// The connection-level Ping ycord sends when it sent nothing for a while: the provider closes
/// a socket that received nothing for 30 s, and answers this with [`PONG`].
pub const PING: &[u8] = &[9];
/// The provider's answer to [`PING`].
pub const PONG: &[u8] = &[10];

/// Longest document key accepted: a room name (at most
/// [`crate::room::MAX_ROOM_NAME_BYTES`]) plus a session suffix.
pub const MAX_DOCUMENT_KEY_BYTES: usize = 2048;

/// A frame that does not follow the Hocuspocus protocol. Framing errors (an empty frame, a
/// truncated varint, a length past the end) and errors of the y-websocket message inside are
/// the y-websocket codec's.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HocuspocusError {
    #[error("a string is not UTF-8")]
    NotUtf8,
    #[error("document key longer than {MAX_DOCUMENT_KEY_BYTES} bytes")]
    KeyTooLong,
    #[error("unknown message type {0}")]
    UnknownMessageType(u64),
    #[error("message type {0} is sent by servers only")]
    ServerOnly(u64),
    #[error(transparent)]
    Frame(#[from] ProtocolError),
}

impl From<yrs::encoding::read::Error> for HocuspocusError {
    fn from(error: yrs::encoding::read::Error) -> Self {
        HocuspocusError::Frame(error.into())
    }
}

/// One decoded client frame.
#[derive(Debug, PartialEq)]
pub enum Inbound<'a> {
    /// The answer to [`PING`].
    Pong,
    /// A message about one document.
    Document {
        /// The provider's routing key for the document (see [`room_of`]).
        key: &'a str,
        message: Message<'a>,
    },
}

/// A client's message about one document.
#[derive(Debug, PartialEq)]
pub enum Message<'a> {
    /// `Auth Token`. `None` for the other Auth subtypes, which only servers send and the stock
    /// server ignores from clients.
    Auth(Option<Token<'a>>),
    /// Sync, Awareness or QueryAwareness: a y-websocket message.
    Yjs(SyncMessage<'a>),
    /// An application message for the document's other connections.
    Stateless(&'a str),
    /// Detach this document; the socket stays open.
    Close,
}

/// A client's `Auth Token` message.
#[derive(Debug, PartialEq)]
pub struct Token<'a> {
    /// The token; empty when the application has none.
    pub token: &'a str,
    /// The provider's version, which provider 4 appends (3 does not). Only providers that
    /// send one understand [`PING`].
    pub provider_version: Option<&'a str>,
}

/// Decodes one client frame. Bytes after the message are ignored (provider 4 appends its
/// version to the Auth token; older ones do not).
pub fn decode(frame: &[u8]) -> Result<Inbound<'_>, HocuspocusError> {
    if frame.is_empty() {
        return Err(ProtocolError::EmptyFrame.into());
    }
    if frame == PONG {
        return Ok(Inbound::Pong);
    }
    let mut cursor = Cursor::new(frame);
    let key = read_string(&mut cursor)?;
    if key.len() > MAX_DOCUMENT_KEY_BYTES {
        return Err(HocuspocusError::KeyTooLong);
    }
    let type_start = cursor.next;
    let message_type: u64 = cursor.read_var()?;
    let message = match message_type {
        MSG_SYNC | MSG_AWARENESS | MSG_QUERY_AWARENESS => {
            match super::decode_frame(&frame[type_start..]).next() {
                Some(message) => Message::Yjs(message?),
                None => return Err(ProtocolError::EmptyFrame.into()),
            }
        }
        MSG_AUTH => {
            let subtype: u64 = cursor.read_var()?;
            if subtype == AUTH_TOKEN {
                let token = read_string(&mut cursor)?;
                let provider_version = if cursor.has_content() {
                    Some(read_string(&mut cursor)?)
                } else {
                    None
                };
                Message::Auth(Some(Token {
                    token,
                    provider_version,
                }))
            } else {
                Message::Auth(None)
            }
        }
        MSG_STATELESS => Message::Stateless(read_string(&mut cursor)?),
        MSG_CLOSE => Message::Close,
        MSG_SYNC_REPLY | MSG_BROADCAST_STATELESS | MSG_SYNC_STATUS | 9 => {
            return Err(HocuspocusError::ServerOnly(message_type));
        }
        other => return Err(HocuspocusError::UnknownMessageType(other)),
    };
    Ok(Inbound::Document { key, message })
}

/// The room a document key names: the part before the first NUL (the provider's
/// `sessionAwareness` appends `\0sessionId`).
pub fn room_of(key: &str) -> &str {
    key.split('\0').next().unwrap_or(key)
}

/// Reads a lib0 `varString`: a length, then that many bytes of UTF-8.
fn read_string<'a>(cursor: &mut Cursor<'a>) -> Result<&'a str, HocuspocusError> {
    let bytes = super::read_buf(cursor)?;
    std::str::from_utf8(bytes).map_err(|_| HocuspocusError::NotUtf8)
}

/// The encoded document key that starts every message about a document: computed once per
/// document on a socket and put before each message body sent for it.
pub fn key_prefix(key: &str) -> Bytes {
    let mut out = Vec::with_capacity(key.len() + 5);
    out.write_string(key);
    Bytes::from(out)
}

/// A frame about the document `prefix` names (see [`key_prefix`]), with `body`: a type and its
/// payload. Every y-websocket frame a room queues for its members is such a body.
pub fn frame(prefix: &[u8], body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(prefix.len() + body.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// `Auth Authenticated(scope)`: the document is open, read-write or read-only.
pub fn encode_authenticated(prefix: &[u8], read_only: bool) -> Bytes {
    let mut out = prefix.to_vec();
    out.write_var(MSG_AUTH);
    out.write_u8(AUTH_AUTHENTICATED);
    out.write_string(if read_only { "readonly" } else { "read-write" });
    Bytes::from(out)
}

/// `Auth PermissionDenied(reason)`: the document stays closed on this socket; the provider
/// fires `authenticationFailed` and does not retry.
pub fn encode_permission_denied(prefix: &[u8], reason: &str) -> Bytes {
    let mut out = prefix.to_vec();
    out.write_var(MSG_AUTH);
    out.write_u8(AUTH_PERMISSION_DENIED);
    out.write_string(reason);
    Bytes::from(out)
}

/// `SyncStatus`: whether the client's step 2 or update was applied (the provider counts its
/// unsynced changes down on each `true`).
pub fn encode_sync_status(prefix: &[u8], applied: bool) -> Bytes {
    let mut out = prefix.to_vec();
    out.write_var(MSG_SYNC_STATUS);
    out.write_var(u8::from(applied));
    Bytes::from(out)
}

/// `Auth Token` from the server: asks the provider for a fresh token, which it sends as it
/// sent the first (`sendToken`, from the application's `token` function).
pub fn encode_token_request(prefix: &[u8]) -> Bytes {
    let mut out = prefix.to_vec();
    out.write_var(MSG_AUTH);
    out.write_var(AUTH_TOKEN);
    Bytes::from(out)
}

/// `CLOSE(reason)`: the document is detached from the socket.
pub fn encode_close(prefix: &[u8], reason: &str) -> Bytes {
    let mut out = prefix.to_vec();
    out.write_var(MSG_CLOSE);
    out.write_string(reason);
    Bytes::from(out)
}

/// The body of a Stateless message (type and payload, without a document key): what a room
/// queues for its Hocuspocus members.
pub fn stateless_body(payload: &str) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 6);
    out.write_var(MSG_STATELESS);
    out.write_string(payload);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol;

    fn message(key: &str, body: &[u8]) -> Vec<u8> {
        frame(&key_prefix(key), body).to_vec()
    }

    /// What @hocuspocus/provider 4.8 sent for document "doc1" (see tools/src/wire.rs): Auth
    /// with an empty token and its version, then SyncStep1 of an empty document.
    #[test]
    fn decodes_what_the_stock_provider_sends() {
        let auth = [
            4, b'd', b'o', b'c', b'1', 2, 0, 0, 5, b'4', b'.', b'8', b'.', b'0',
        ];
        assert_eq!(
            decode(&auth).unwrap(),
            Inbound::Document {
                key: "doc1",
                message: Message::Auth(Some(Token {
                    token: "",
                    provider_version: Some("4.8.0")
                }))
            }
        );
        let step1 = [4, b'd', b'o', b'c', b'1', 0, 0, 1, 0];
        assert!(matches!(
            decode(&step1).unwrap(),
            Inbound::Document {
                key: "doc1",
                message: Message::Yjs(SyncMessage::SyncStep1(_))
            }
        ));
        assert_eq!(decode(PONG).unwrap(), Inbound::Pong);
    }

    #[test]
    fn every_client_message_type_decodes() {
        let update = message("d", &protocol::encode_update(&[0, 0]));
        assert_eq!(
            decode(&update).unwrap(),
            Inbound::Document {
                key: "d",
                message: Message::Yjs(SyncMessage::Update(&[0, 0]))
            }
        );
        let awareness = message("d", &protocol::encode_awareness(&[0]));
        assert!(matches!(
            decode(&awareness).unwrap(),
            Inbound::Document {
                message: Message::Yjs(SyncMessage::Awareness(_)),
                ..
            }
        ));
        let query = message("d", &protocol::encode_query_awareness());
        assert!(matches!(
            decode(&query).unwrap(),
            Inbound::Document {
                message: Message::Yjs(SyncMessage::QueryAwareness),
                ..
            }
        ));
        let stateless = message("d", &stateless_body("hi"));
        assert_eq!(
            decode(&stateless).unwrap(),
            Inbound::Document {
                key: "d",
                message: Message::Stateless("hi")
            }
        );
        let close = message("d", &[7]);
        assert_eq!(
            decode(&close).unwrap(),
            Inbound::Document {
                key: "d",
                message: Message::Close
            }
        );
        // The server's Auth subtypes coming back from a client are ignored, not refused.
        let denied = encode_permission_denied(&key_prefix("d"), "no");
        assert_eq!(
            decode(&denied).unwrap(),
            Inbound::Document {
                key: "d",
                message: Message::Auth(None)
            }
        );
    }

    #[test]
    fn server_messages_have_the_documented_bytes() {
        let prefix = key_prefix("d");
        assert_eq!(&encode_sync_status(&prefix, true)[..], &[1, b'd', 8, 1]);
        assert_eq!(&encode_sync_status(&prefix, false)[..], &[1, b'd', 8, 0]);
        assert_eq!(
            &encode_authenticated(&prefix, true)[..],
            b"\x01d\x02\x02\x08readonly"
        );
        assert_eq!(
            &encode_authenticated(&prefix, false)[..],
            b"\x01d\x02\x02\x0aread-write"
        );
        assert_eq!(
            &encode_permission_denied(&prefix, "no")[..],
            b"\x01d\x02\x01\x02no"
        );
        assert_eq!(&encode_close(&prefix, "bye")[..], b"\x01d\x07\x03bye");
        assert_eq!(&encode_token_request(&prefix)[..], &[1, b'd', 2, 0]);
        assert_eq!(&stateless_body("x")[..], b"\x05\x01x");
    }

    #[test]
    fn rooms_of_session_keys() {
        assert_eq!(room_of("file:text/42"), "file:text/42");
        assert_eq!(room_of("doc\0session-1"), "doc");
        assert_eq!(room_of(""), "");
    }

    #[test]
    fn rejects_malformed_frames() {
        let long_key = "k".repeat(MAX_DOCUMENT_KEY_BYTES + 1);
        let cases: Vec<(Vec<u8>, HocuspocusError)> = vec![
            (vec![], ProtocolError::EmptyFrame.into()),
            (
                vec![5, b'a'],
                ProtocolError::LengthOutOfBounds {
                    len: 5,
                    remaining: 1,
                }
                .into(),
            ),
            (vec![2, 0xff, 0xfe, 0], HocuspocusError::NotUtf8),
            (message(&long_key, &[7]), HocuspocusError::KeyTooLong),
            (message("d", &[42]), HocuspocusError::UnknownMessageType(42)),
            (message("d", &[6, 0]), HocuspocusError::ServerOnly(6)),
            (message("d", &[8, 1]), HocuspocusError::ServerOnly(8)),
            (message("d", &[4, 0, 0]), HocuspocusError::ServerOnly(4)),
            (
                message("d", &[0, 9]),
                HocuspocusError::Frame(ProtocolError::UnknownSyncType(9)),
            ),
        ];
        for (frame, expected) in cases {
            assert_eq!(decode(&frame), Err(expected), "frame {frame:?}");
        }
        // A frame cut anywhere fails with an error, never a panic.
        let full = message("doc", &stateless_body("payload"));
        for end in 1..full.len() {
            assert!(decode(&full[..end]).is_err(), "prefix of {end} bytes");
        }
    }
}
