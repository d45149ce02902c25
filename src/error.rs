//! Typed errors, one enum per domain. The server module is the one place where they become
//! close codes and HTTP statuses.

use thiserror::Error;

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

/// Why a room refused an update or an awareness message. The room is unchanged.
#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("invalid update: {0}")]
    InvalidUpdate(String),
    #[error("invalid awareness update: {0}")]
    InvalidAwareness(String),
    #[error(
        "the update continues client {client}'s changes at clock {starts_at}, but the document \
         has them only up to {known}"
    )]
    MissingPredecessors {
        client: u64,
        known: u32,
        starts_at: u32,
    },
    #[error("the document would grow past its {limit}-byte limit")]
    DocumentTooLarge { limit: u64 },
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
    #[error("the room was deleted")]
    RoomDeleted,
}

/// A failure of the document store.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("storage task failed: {0}")]
    Task(String),
}

/// A room name the server refuses.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RoomNameError {
    #[error("room name is empty")]
    Empty,
    #[error("room name is {0} bytes, more than the {max} allowed", max = crate::room::MAX_ROOM_NAME_BYTES)]
    TooLong(usize),
    #[error("room name is not valid UTF-8 after percent-decoding")]
    NotUtf8,
}

/// Why a connection could not join a room.
#[derive(Debug, Error)]
pub enum JoinError {
    #[error("loading the room failed: {0}")]
    Store(#[from] StoreError),
    #[error("too many rooms in memory and none idle")]
    TooManyRooms,
    #[error("the room has reached its connection limit")]
    RoomFull,
}
