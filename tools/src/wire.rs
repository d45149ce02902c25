//! The two wire protocols the shared client speaks, and nothing else: where a room's socket is,
//! what a client sends on open, how its Sync messages are framed, and what the server's
//! frames mean. Client code asks an [`Endpoint`] and never looks at the protocol itself.
//!
//! **y-websocket** (ycord, `@y/websocket-server`): one room per socket at `URL/room`; frames
//! are the y-protocols messages themselves (see `ycord::protocol`); the client opens with
//! SyncStep1.
//!
//! **Hocuspocus** (`@hocuspocus/server` 4.x, read from its `src/` and `@hocuspocus/provider`
//! 4.8 `src/`): one socket at `URL` can carry many documents, so every message in either
//! direction starts with the document name as a varString, then a varUint message type:
//! 0 Sync, 1 Awareness, 2 Auth, 3 QueryAwareness, 4 SyncReply, 5 Stateless,
//! 6 BroadcastStateless, 7 CLOSE, 8 SyncStatus, 9 Ping, 10 Pong. A Sync message continues
//! exactly like a y-websocket one (sync type, then a varUint8Array). The provider opens with
//! `name 2 0 varString(token) varString(providerVersion)` (Auth, Token) and then, without
//! waiting, SyncStep1; the server queues everything but Auth until `onAuthenticate` passes,
//! then answers `name 2 2 varString(scope)` (Authenticated; `name 2 1 reason` is
//! PermissionDenied), its SyncStep1, and its SyncStep2. It acknowledges every SyncStep2 and
//! Update it applies with `name 8 varUint(1)` (SyncStatus), echoes updates to their sender
//! too, and `name 7 varString(reason)` (CLOSE) ends the document's session. A server-wide Ping
//! is the single byte 9 (no name). The server closes a socket that sent nothing for its
//! `timeout` (60 s by default); the stock provider's awareness renewal (every 15 s) keeps it
//! alive, so our clients send an empty QueryAwareness, which the server handles without an
//! answer, as often.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use ycord::protocol::{self, Inbound};
use yrs::StateVector;
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;

/// Which protocol the server under test speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// y-websocket (ycord, @y/websocket-server): one room per socket at URL/room.
    #[default]
    YWebsocket,
    /// Hocuspocus (@hocuspocus/server 4.x): socket at URL, document name in every message.
    Hocuspocus,
}

impl Protocol {
    /// The name used in messages and reports.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::YWebsocket => "y-websocket",
            Protocol::Hocuspocus => "hocuspocus",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const HP_SYNC: u64 = 0;
const HP_AWARENESS: u64 = 1;
const HP_AUTH: u64 = 2;
const HP_QUERY_AWARENESS: u64 = 3;
const HP_SYNC_REPLY: u64 = 4;
const HP_CLOSE: u64 = 7;
const HP_SYNC_STATUS: u64 = 8;
const HP_PING: u8 = 9;

const HP_AUTH_TOKEN: u64 = 0;
const HP_AUTH_PERMISSION_DENIED: u64 = 1;
const HP_AUTH_AUTHENTICATED: u64 = 2;

/// Sent as the provider version in the Auth message (the server only stores it).
const HP_CLIENT_VERSION: &str = "ycord-bench";
/// How often a Hocuspocus client that has sent nothing else sends a keepalive.
const HP_KEEPALIVE: Duration = Duration::from_secs(15);

/// What one message from the server means to a client.
#[derive(Debug, PartialEq)]
pub enum Event<'a> {
    /// The server's state vector, to be answered with SyncStep2.
    SyncStep1(StateVector),
    /// What the client lacks, in answer to its SyncStep1 (a v1 update).
    SyncStep2(&'a [u8]),
    /// An incremental change (a v1 update).
    Update(&'a [u8]),
    /// y-websocket: an awareness update (its payload), for clients that track presence.
    Awareness(&'a [u8]),
    /// Hocuspocus: the document's session may start.
    Authenticated,
    /// Hocuspocus: the server refused the document (PermissionDenied).
    Denied(String),
    /// Hocuspocus: the server ended the document's session (CLOSE).
    Closed(String),
    /// Hocuspocus: the server applied the client's update (SyncStatus 1). A server need not
    /// echo an update to its sender: this tells the sender it arrived.
    Acknowledged,
    /// Nothing the client acts on: acknowledgements, pings, other documents, Hocuspocus
    /// awareness.
    Other,
}

/// One room of the server under test, as a client reaches it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    protocol: Protocol,
    /// The WebSocket URL to connect to.
    url: String,
    /// The room (document) name.
    room: String,
    /// Hocuspocus: the document name as a varString, the start of every message.
    prefix: Vec<u8>,
}

impl Endpoint {
    pub fn new(protocol: Protocol, base_url: &str, room: String) -> Endpoint {
        let (url, prefix) = match protocol {
            Protocol::YWebsocket => (format!("{base_url}/{room}"), Vec::new()),
            Protocol::Hocuspocus => {
                let mut prefix = Vec::with_capacity(room.len() + 5);
                prefix.write_string(&room);
                (base_url.to_owned(), prefix)
            }
        };
        Endpoint {
            protocol,
            url,
            room,
            prefix,
        }
    }

    /// A y-websocket room at its full URL (`base/room`), for callers that already have one.
    pub fn y_websocket(url: &str) -> Endpoint {
        let room = url.rsplit_once('/').map_or("", |(_, room)| room).to_owned();
        Endpoint {
            protocol: Protocol::YWebsocket,
            url: url.to_owned(),
            room,
            prefix: Vec::new(),
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The WebSocket URL to connect to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What a client sends once the socket is open: SyncStep1, after Auth for Hocuspocus
    /// (with an empty token, as the provider sends when none is configured).
    pub fn opening(&self, state_vector: &[u8]) -> Vec<Bytes> {
        let step1 = self.sync(protocol::encode_sync_step1(state_vector));
        match self.protocol {
            Protocol::YWebsocket => vec![step1],
            Protocol::Hocuspocus => {
                let mut auth = self.prefix.clone();
                auth.write_var(HP_AUTH);
                auth.write_var(HP_AUTH_TOKEN);
                auth.write_string("");
                auth.write_string(HP_CLIENT_VERSION);
                vec![Bytes::from(auth), step1]
            }
        }
    }

    /// SyncStep2: the diff the server lacks.
    pub fn sync_step2(&self, update: &[u8]) -> Bytes {
        self.sync(protocol::encode_sync_step2(update))
    }

    /// An Update message.
    pub fn update(&self, update: &[u8]) -> Bytes {
        self.sync(protocol::encode_update(update))
    }

    /// Addresses a y-websocket Sync message (whose first byte is the Sync type, 0 in both
    /// protocols) to this room.
    fn sync(&self, message: Bytes) -> Bytes {
        if self.prefix.is_empty() {
            return message;
        }
        let mut out = Vec::with_capacity(self.prefix.len() + message.len());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(&message);
        Bytes::from(out)
    }

    /// The message to send after `interval` of silence so the server keeps the socket, if
    /// the protocol needs one.
    pub fn keepalive(&self) -> Option<(Duration, Bytes)> {
        match self.protocol {
            Protocol::YWebsocket => None,
            Protocol::Hocuspocus => {
                let mut message = self.prefix.clone();
                message.write_var(HP_QUERY_AWARENESS);
                Some((HP_KEEPALIVE, Bytes::from(message)))
            }
        }
    }

    /// Decodes one binary frame from the server.
    pub fn decode<'a>(&self, frame: &'a [u8]) -> Result<Vec<Event<'a>>, String> {
        match self.protocol {
            Protocol::YWebsocket => decode_sync(frame),
            Protocol::Hocuspocus => self.decode_hocuspocus(frame),
        }
    }

    /// The reason, if `frame` ends the room's session without closing the socket
    /// (Hocuspocus CLOSE); cheap for every other frame.
    pub fn session_end(&self, frame: &[u8]) -> Option<String> {
        if self.protocol != Protocol::Hocuspocus || !frame.starts_with(&self.prefix) {
            return None;
        }
        match self.decode_hocuspocus(frame) {
            Ok(events) => events.into_iter().find_map(|event| match event {
                Event::Closed(reason) => Some(reason),
                _ => None,
            }),
            Err(_) => None,
        }
    }

    fn decode_hocuspocus<'a>(&self, frame: &'a [u8]) -> Result<Vec<Event<'a>>, String> {
        if frame == [HP_PING] {
            return Ok(vec![Event::Other]);
        }
        let malformed = |error: yrs::encoding::read::Error| format!("malformed frame: {error}");
        let mut cursor = Cursor::new(frame);
        if cursor.read_string().map_err(malformed)? != self.room {
            return Ok(vec![Event::Other]);
        }
        let type_at = cursor.next;
        let message_type: u64 = cursor.read_var().map_err(malformed)?;
        let event = match message_type {
            // The rest is a y-websocket Sync message, its type byte included.
            HP_SYNC => return decode_sync(&frame[type_at..]),
            HP_SYNC_REPLY => return Err("unexpected SyncReply message".into()),
            HP_AUTH => match cursor.read_var::<u64>().map_err(malformed)? {
                HP_AUTH_AUTHENTICATED => Event::Authenticated,
                HP_AUTH_PERMISSION_DENIED => {
                    Event::Denied(cursor.read_string().map_err(malformed)?.to_owned())
                }
                // A token request: the server would only send one from its own hooks.
                _ => Event::Other,
            },
            HP_CLOSE => Event::Closed(cursor.read_string().map_err(malformed)?.to_owned()),
            HP_SYNC_STATUS if cursor.read_var::<u64>().map_err(malformed)? == 1 => {
                Event::Acknowledged
            }
            HP_AWARENESS | HP_QUERY_AWARENESS | HP_SYNC_STATUS => Event::Other,
            // Stateless payloads and newer message types.
            _ => Event::Other,
        };
        Ok(vec![event])
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            Protocol::YWebsocket => f.write_str(&self.url),
            Protocol::Hocuspocus => write!(f, "{} (document {})", self.url, self.room),
        }
    }
}

/// Decodes y-websocket messages (one frame may hold several).
fn decode_sync(frame: &[u8]) -> Result<Vec<Event<'_>>, String> {
    protocol::decode_frame(frame)
        .map(|message| {
            message
                .map(|message| match message {
                    Inbound::SyncStep1(state_vector) => Event::SyncStep1(state_vector),
                    Inbound::SyncStep2(update) => Event::SyncStep2(update),
                    Inbound::Update(update) => Event::Update(update),
                    Inbound::Awareness(payload) => Event::Awareness(payload),
                    Inbound::QueryAwareness | Inbound::Auth => Event::Other,
                })
                .map_err(|error| format!("malformed frame: {error}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hocuspocus() -> Endpoint {
        Endpoint::new(Protocol::Hocuspocus, "ws://h:1", "doc1".into())
    }

    #[test]
    fn y_websocket_rooms_are_paths_and_messages_are_unprefixed() {
        let endpoint = Endpoint::new(Protocol::YWebsocket, "ws://h:1", "r".into());
        assert_eq!(endpoint.url(), "ws://h:1/r");
        assert_eq!(endpoint.update(&[5]).as_ref(), [0, 2, 1, 5]);
        assert_eq!(
            endpoint.opening(&[0]),
            vec![Bytes::from_static(&[0, 0, 1, 0])]
        );
        assert!(endpoint.keepalive().is_none());
    }

    #[test]
    fn a_full_url_is_the_same_y_websocket_room() {
        let endpoint = Endpoint::y_websocket("ws://h:1/r");
        assert_eq!(endpoint.url(), "ws://h:1/r");
        assert_eq!(endpoint.update(&[5]).as_ref(), [0, 2, 1, 5]);
        assert_eq!(
            endpoint.decode(&[1, 1, 0]).unwrap(),
            vec![Event::Awareness(&[0])]
        );
    }

    /// The bytes the stock @hocuspocus/provider 4.8 sent for document "doc1", captured from
    /// a live session, apart from the version string.
    #[test]
    fn hocuspocus_messages_carry_the_document_name() {
        let endpoint = hocuspocus();
        assert_eq!(endpoint.url(), "ws://h:1");
        let opening = endpoint.opening(&[0]);
        assert_eq!(opening[0].as_ref(), b"\x04doc1\x02\x00\x00\x0bycord-bench");
        assert_eq!(opening[1].as_ref(), b"\x04doc1\x00\x00\x01\x00");
        assert_eq!(
            endpoint.sync_step2(&[0, 0]).as_ref(),
            b"\x04doc1\x00\x01\x02\x00\x00"
        );
        assert_eq!(
            endpoint.keepalive().map(|k| k.1),
            Some(Bytes::from_static(b"\x04doc1\x03"))
        );
    }

    #[test]
    fn decodes_what_a_hocuspocus_server_sends() {
        let endpoint = hocuspocus();
        let decode = |frame: &'static [u8]| endpoint.decode(frame).unwrap();
        assert_eq!(
            decode(b"\x04doc1\x02\x02\x0aread-write"),
            vec![Event::Authenticated]
        );
        assert_eq!(
            decode(b"\x04doc1\x02\x01\x02no"),
            vec![Event::Denied("no".into())]
        );
        assert_eq!(
            decode(b"\x04doc1\x00\x00\x01\x00"),
            vec![Event::SyncStep1(StateVector::default())]
        );
        assert_eq!(
            decode(b"\x04doc1\x00\x01\x02\x00\x00"),
            vec![Event::SyncStep2(&[0, 0])]
        );
        assert_eq!(
            decode(b"\x04doc1\x00\x02\x01\x07"),
            vec![Event::Update(&[7])]
        );
        assert_eq!(decode(b"\x04doc1\x08\x01"), vec![Event::Acknowledged]);
        assert_eq!(decode(b"\x04doc1\x08\x00"), vec![Event::Other]);
        assert_eq!(
            decode(b"\x04doc1\x07\x03bye"),
            vec![Event::Closed("bye".into())]
        );
        assert_eq!(decode(b"\x09"), vec![Event::Other]);
        // Another document's messages are not ours.
        assert_eq!(decode(b"\x04doc2\x00\x02\x01\x07"), vec![Event::Other]);
    }

    #[test]
    fn rejects_malformed_hocuspocus_frames() {
        let endpoint = hocuspocus();
        for frame in [
            &b""[..],
            b"\x09doc1",
            b"\x04doc1",
            b"\x04doc1\x00\x02\x05\x07",
            b"\x04doc1\x04\x00",
        ] {
            assert!(
                endpoint.decode(frame).is_err(),
                "{frame:?} must be rejected"
            );
        }
    }
}
