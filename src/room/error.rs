//! What a room refuses, and the room-name limit the server checks before any room is looked up.

use thiserror::Error;

use crate::store::StoreError;

/// Longest room name accepted, in bytes.
pub const MAX_ROOM_NAME_BYTES: usize = 1024;

/// A room name the server refuses.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RoomNameError {
    #[error("room name is empty")]
    Empty,
    #[error("room name is {0} bytes, more than the {MAX_ROOM_NAME_BYTES} allowed")]
    TooLong(usize),
    #[error("room name is not valid UTF-8 after percent-decoding")]
    NotUtf8,
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
    #[error(
        "the update refers to client {client}'s changes up to clock {needed}, but the document \
         has them only up to {known}"
    )]
    MissingDependency {
        client: u64,
        known: u32,
        needed: u64,
    },
    #[error("the document would grow past its {limit}-byte limit")]
    DocumentTooLarge { limit: u64 },
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
    #[error("the room was deleted")]
    RoomDeleted,
    /// The server is shutting down: nothing is applied once it began.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The room was taken out of service after an internal failure (a panic in yrs).
    #[error("the room failed internally and was taken out of service")]
    RoomBroken,
}
