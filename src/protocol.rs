//! The y-websocket wire protocol: decoding inbound frames and encoding outbound messages.
//!
//! Pure functions over bytes, no I/O, so they can be unit-tested, fuzzed and benchmarked
//! directly. The framing (see `shared/PROTOCOL.md` section 2):
//!
//! | bytes                              | message         |
//! |------------------------------------|-----------------|
//! | `00 00 varUint8Array(stateVector)` | SyncStep1       |
//! | `00 01 varUint8Array(update)`      | SyncStep2       |
//! | `00 02 varUint8Array(update)`      | Update          |
//! | `01 varUint8Array(awareness)`      | Awareness       |
//! | `02 00 varString(reason)`          | Auth (denied)   |
//! | `03`                               | QueryAwareness  |
//!
//! An inbound frame may hold several concatenated messages; every outbound frame holds exactly
//! one, because clients up to y-websocket v3 read only the first message of a frame.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use bytes::Bytes;
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;
use yrs::updates::decoder::Decode;
use yrs::{StateVector, Update};

use thiserror::Error;

pub mod hocuspocus;
pub mod validate;

/// A frame that does not follow the y-websocket protocol.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("empty frame")]
    EmptyFrame,
    #[error("truncated or malformed varint: {0}")]
    Malformed(String),
    #[error("length {len} exceeds the {remaining} bytes left in the frame")]
    LengthOutOfBounds { len: u64, remaining: usize },
    #[error("unknown message type {0}")]
    UnknownMessageType(u64),
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    #[error("invalid state vector")]
    InvalidStateVector,
}

impl From<yrs::encoding::read::Error> for ProtocolError {
    fn from(error: yrs::encoding::read::Error) -> Self {
        ProtocolError::Malformed(error.to_string())
    }
}

const MSG_SYNC: u8 = 0;
const MSG_AWARENESS: u8 = 1;
const MSG_AUTH: u8 = 2;
const MSG_QUERY_AWARENESS: u8 = 3;

const SYNC_STEP1: u8 = 0;
const SYNC_STEP2: u8 = 1;
const SYNC_UPDATE: u8 = 2;

const AUTH_PERMISSION_DENIED: u8 = 0;

/// One decoded client message. Payloads borrow from the frame: nothing is copied until the
/// room decides to keep it.
#[derive(Debug, PartialEq)]
pub enum Inbound<'a> {
    /// "Here is what I have": the server answers with the diff the client lacks.
    SyncStep1(StateVector),
    /// The diff the server lacks, sent in answer to the server's SyncStep1 (a v1 update).
    SyncStep2(&'a [u8]),
    /// An incremental change (a v1 update).
    Update(&'a [u8]),
    /// An encoded awareness update (presence states).
    Awareness(&'a [u8]),
    /// "Send me every awareness state."
    QueryAwareness,
    /// An auth message; clients have no business sending one, so it is accepted and ignored.
    Auth,
}

/// Iterates over the messages of one inbound frame. Stops at the first error: the caller closes
/// the connection, so nothing after a malformed message is looked at.
pub fn decode_frame(frame: &[u8]) -> FrameMessages<'_> {
    FrameMessages {
        cursor: Cursor::new(frame),
        failed: frame.is_empty(),
        empty: frame.is_empty(),
    }
}

/// Iterator returned by [`decode_frame`].
pub struct FrameMessages<'a> {
    cursor: Cursor<'a>,
    failed: bool,
    empty: bool,
}

impl<'a> Iterator for FrameMessages<'a> {
    type Item = Result<Inbound<'a>, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.empty {
            self.empty = false;
            return Some(Err(ProtocolError::EmptyFrame));
        }
        if self.failed || !self.cursor.has_content() {
            return None;
        }
        let result = decode_message(&mut self.cursor);
        if result.is_err() {
            self.failed = true;
        }
        Some(result)
    }
}

fn decode_message<'a>(cursor: &mut Cursor<'a>) -> Result<Inbound<'a>, ProtocolError> {
    let message_type: u64 = cursor.read_var()?;
    match u8::try_from(message_type) {
        Ok(MSG_SYNC) => {
            let sync_type: u64 = cursor.read_var()?;
            match u8::try_from(sync_type) {
                Ok(SYNC_STEP1) => {
                    let bytes = read_buf(cursor)?;
                    validate::state_vector_v1(bytes)
                        .map_err(|_| ProtocolError::InvalidStateVector)?;
                    let state_vector = decode_untrusted(|| StateVector::decode_v1(bytes))
                        .map_err(|_| ProtocolError::InvalidStateVector)?;
                    Ok(Inbound::SyncStep1(state_vector))
                }
                Ok(SYNC_STEP2) => Ok(Inbound::SyncStep2(read_buf(cursor)?)),
                Ok(SYNC_UPDATE) => Ok(Inbound::Update(read_buf(cursor)?)),
                _ => Err(ProtocolError::UnknownSyncType(sync_type)),
            }
        }
        Ok(MSG_AWARENESS) => Ok(Inbound::Awareness(read_buf(cursor)?)),
        Ok(MSG_AUTH) => {
            let _subtype: u64 = cursor.read_var()?;
            let _reason = read_buf(cursor)?;
            Ok(Inbound::Auth)
        }
        Ok(MSG_QUERY_AWARENESS) => Ok(Inbound::QueryAwareness),
        _ => Err(ProtocolError::UnknownMessageType(message_type)),
    }
}

/// An update decoded from untrusted bytes, with what its items depend on.
#[derive(Debug)]
pub(crate) struct DecodedUpdate {
    pub update: Update,
    /// Per client, the clock the document must have reached for this update to integrate at
    /// once: one past the highest clock that one of its items refers to (as origin or parent,
    /// on another client's changes) or that its delete set covers.
    pub needs: Vec<(u64, u64)>,
    /// Whether some item's content is a subdocument (see `Room::apply_update`).
    pub has_subdocuments: bool,
}

/// Decodes a v1 update from untrusted bytes (a client or the disk) into something yrs can
/// safely apply: the whole encoding is checked first (see [`validate::update_v1`]: no count
/// yrs would reserve memory for exceeds the bytes present, `Any` values nest boundedly, no
/// content yrs cannot write back as it read it), and decoding panics become errors.
///
/// An item that refers to a later change of its own client can never integrate, and is
/// refused here; what it needs from other clients is returned for the room to check against
/// its state (`Room::apply_update`), so that yrs never holds an update pending. Pending
/// updates were what broke encodings: yrs merges them into every full encoding and panicked
/// doing so for some (fuzzer findings `pending-update-breaks-sync-step2` from a client and
/// `pending-log-entry-breaks-encoding` from a corrupt store). Until those two checks existed,
/// every update was also re-encoded and decoded again here; that cost 2.8 ms of the 10 ms cold
/// load of the automerge-paper room and an encode and a decode per keystroke.
pub(crate) fn decode_update(bytes: &[u8]) -> Result<DecodedUpdate, String> {
    let mut needs: Vec<(u64, u64)> = Vec::new();
    // Where each client's entry is in `needs`: an update may name hundreds of thousands of
    // clients, and a scan of `needs` per reference made its check quadratic.
    let mut need_of: HashMap<u64, usize> = HashMap::new();
    let mut refers_ahead = None;
    let mut has_subdocuments = false;
    validate::update_v1_with_references(
        bytes,
        |from, (client, clock)| {
            let needed = u64::from(clock) + 1;
            match from {
                Some((from_client, from_clock)) if from_client == client => {
                    if clock >= from_clock {
                        refers_ahead.get_or_insert((client, from_clock, clock));
                    }
                }
                _ => match need_of.entry(client) {
                    Entry::Occupied(entry) => {
                        let end = &mut needs[*entry.get()].1;
                        *end = (*end).max(needed);
                    }
                    Entry::Vacant(entry) => {
                        entry.insert(needs.len());
                        needs.push((client, needed));
                    }
                },
            }
        },
        |_| has_subdocuments = true,
    )
    .map_err(|error| error.to_string())?;
    if let Some((client, from, to)) = refers_ahead {
        return Err(format!(
            "client {client}'s item at clock {from} refers to its own later clock {to}"
        ));
    }
    let update = decode_untrusted(|| Update::decode_v1(bytes))?;
    Ok(DecodedUpdate {
        update,
        needs,
        has_subdocuments,
    })
}

/// Runs a yrs decoder over untrusted bytes, turning a panic into an error. The encodings are
/// validated first, which refuses everything known to make yrs's decoders panic (client IDs of
/// 2^53 and above, clocks and delete ranges past `u32::MAX`, over-long `Any` integers); this is
/// the second line, so that a panic the validator does not foresee ends one message, not the
/// session's thread.
pub(crate) fn decode_untrusted<T, E: std::fmt::Display>(
    decode: impl FnOnce() -> Result<T, E>,
) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("yrs panicked while decoding".to_owned()),
    }
}

/// Reads a `varUint8Array`, returning a slice of the frame. A length beyond the frame's end is
/// an error before any allocation happens.
pub(super) fn read_buf<'a>(cursor: &mut Cursor<'a>) -> Result<&'a [u8], ProtocolError> {
    let len: u64 = cursor.read_var()?;
    let remaining = cursor.buf.len() - cursor.next;
    let len = usize::try_from(len)
        .ok()
        .filter(|len| *len <= remaining)
        .ok_or(ProtocolError::LengthOutOfBounds { len, remaining })?;
    let start = cursor.next;
    cursor.next += len;
    Ok(&cursor.buf[start..start + len])
}

fn message(header: &[u8], payload: &[u8]) -> Bytes {
    // 10 bytes cover the longest varint length prefix.
    let mut out = Vec::with_capacity(header.len() + 10 + payload.len());
    out.write_all(header);
    out.write_buf(payload);
    Bytes::from(out)
}

/// `00 00 sv`: the server's SyncStep1, carrying its encoded state vector.
pub fn encode_sync_step1(state_vector: &[u8]) -> Bytes {
    message(&[MSG_SYNC, SYNC_STEP1], state_vector)
}

/// `00 01 update`: the diff a client lacks, in answer to its SyncStep1.
pub fn encode_sync_step2(update: &[u8]) -> Bytes {
    message(&[MSG_SYNC, SYNC_STEP2], update)
}

/// `00 02 update`: an incremental change, broadcast to the room.
pub fn encode_update(update: &[u8]) -> Bytes {
    message(&[MSG_SYNC, SYNC_UPDATE], update)
}

/// `01 awareness`: an encoded awareness update.
pub fn encode_awareness(awareness_update: &[u8]) -> Bytes {
    message(&[MSG_AWARENESS], awareness_update)
}

/// `02 00 reason`: permission denied (sent to read-only connections that try to write).
pub fn encode_auth_denied(reason: &str) -> Bytes {
    message(&[MSG_AUTH, AUTH_PERMISSION_DENIED], reason.as_bytes())
}

/// `03`: ask the other side for every awareness state.
pub fn encode_query_awareness() -> Bytes {
    Bytes::from_static(&[MSG_QUERY_AWARENESS])
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::encoder::Encode;

    fn all(frame: &[u8]) -> Result<Vec<Inbound<'_>>, ProtocolError> {
        decode_frame(frame).collect()
    }

    #[test]
    fn round_trips_every_message_type() {
        let sv = StateVector::default().encode_v1();
        assert_eq!(
            all(&encode_sync_step1(&sv)).unwrap(),
            vec![Inbound::SyncStep1(StateVector::default())]
        );
        assert_eq!(
            all(&encode_sync_step2(&[0, 0])).unwrap(),
            vec![Inbound::SyncStep2(&[0, 0])]
        );
        assert_eq!(
            all(&encode_update(&[1, 2, 3])).unwrap(),
            vec![Inbound::Update(&[1, 2, 3])]
        );
        assert_eq!(
            all(&encode_awareness(&[0])).unwrap(),
            vec![Inbound::Awareness(&[0])]
        );
        assert_eq!(
            all(&encode_query_awareness()).unwrap(),
            vec![Inbound::QueryAwareness]
        );
        assert_eq!(all(&encode_auth_denied("no")).unwrap(), vec![Inbound::Auth]);
    }

    #[test]
    fn accepts_several_messages_in_one_frame() {
        let mut frame = encode_update(&[0, 0]).to_vec();
        frame.extend_from_slice(&encode_query_awareness());
        frame.extend_from_slice(&encode_awareness(&[0]));
        assert_eq!(all(&frame).unwrap().len(), 3);
    }

    #[test]
    fn rejects_malformed_frames_without_panicking() {
        let cases: &[&[u8]] = &[
            &[],           // empty frame
            &[0x80],       // truncated varint
            &[0, 2],       // update without its length
            &[0, 2, 5, 1], // length beyond the frame
            &[
                0, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ], // absurd length
            &[0, 9, 0],    // unknown sync type
            &[7],          // unknown message type
            &[0, 0, 3, 0xff, 0xff, 0xff], // invalid state vector
        ];
        for frame in cases {
            assert!(all(frame).is_err(), "frame {frame:?} must be rejected");
        }
    }

    #[test]
    fn stops_after_the_first_error() {
        let mut frame = vec![7];
        frame.extend_from_slice(&encode_query_awareness());
        let results: Vec<_> = decode_frame(&frame).collect();
        assert_eq!(results.len(), 1);
        assert!(results[0].is_err());
    }
}
