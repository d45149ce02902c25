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

/// Why an untrusted Yjs encoding (an update, a state vector, an awareness update) was refused
/// before yrs decoded it; see `protocol::validate`. `at` is a byte offset into the encoding.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EncodingError {
    #[error("truncated at byte {at}")]
    Truncated { at: usize },
    #[error("malformed varint at byte {at}")]
    InvalidVarInt { at: usize },
    #[error("invalid UTF-8 in the string at byte {at}")]
    InvalidUtf8 { at: usize },
    #[error("{count} {what} (count at byte {at}) cannot fit in the {remaining} bytes that follow")]
    CountTooLarge {
        what: Count,
        count: u64,
        remaining: usize,
        at: usize,
    },
    #[error(
        "an Any value nests more than {max} arrays and objects (byte {at})",
        max = crate::protocol::validate::MAX_ANY_DEPTH
    )]
    TooDeep { at: usize },
    #[error("unknown {what} tag {tag} at byte {at}")]
    UnknownTag { what: Tag, tag: u8, at: usize },
    #[error("empty block at byte {at}")]
    EmptyBlock { at: usize },
    #[error("client ID {client} at byte {at} does not fit in 53 bits")]
    ClientIdOutOfRange { client: u64, at: usize },
    #[error(
        "legacy JSON content at byte {at}: yrs 0.28 misreads it (one value more than its count)"
    )]
    LegacyJsonContent { at: usize },
    #[error("the struct at byte {at} runs past the largest clock")]
    ClockOverflow { at: usize },
    #[error("delete range of {len} from clock {clock} (byte {at}) ends past the largest clock")]
    RangeOverflow { clock: u32, len: u32, at: usize },
}

/// What an [`EncodingError::CountTooLarge`] counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Clients with structs in an update.
    Clients,
    /// Structs of one client in an update.
    Structs,
    /// Values of an `Any` item (array elements, map values).
    AnyContentValues,
    /// Elements of an `Any` array.
    ArrayValues,
    /// Entries of an `Any` object.
    ObjectEntries,
    /// Clients in an update's delete set.
    DeleteSetClients,
    /// Deleted ranges of one client.
    DeleteRanges,
    /// Entries of a state vector.
    StateVectorEntries,
    /// States of an awareness update.
    AwarenessStates,
}

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Count::Clients => "clients",
            Count::Structs => "structs",
            Count::AnyContentValues => "Any item values",
            Count::ArrayValues => "Any array values",
            Count::ObjectEntries => "Any object entries",
            Count::DeleteSetClients => "delete-set clients",
            Count::DeleteRanges => "deleted ranges",
            Count::StateVectorEntries => "state vector entries",
            Count::AwarenessStates => "awareness states",
        })
    }
}

/// What an [`EncodingError::UnknownTag`] was the tag of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// The content type in an item's info byte.
    Content,
    /// A shared type's reference.
    TypeRef,
    /// An `Any` value's type.
    Any,
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tag::Content => "item content",
            Tag::TypeRef => "shared type",
            Tag::Any => "Any value",
        })
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

/// A failure of the document store.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("storage task failed: {0}")]
    Task(String),
    /// The room has a tombstone: writes to it are refused until it is undeleted.
    #[error("room {0:?} was deleted")]
    RoomDeleted(String),
    /// A write failed earlier and the store has not recovered yet: writes are refused.
    #[error("the store refuses writes until it recovers from an earlier failure")]
    Failing,
    /// A write refused on purpose by [`crate::store::FailingStore`].
    #[error("{op} refused by the failing test store")]
    Injected { op: &'static str },
    /// Refused before writing: too little free disk space for a large value (see
    /// `SledStore`'s blob guard).
    #[error("{needed} bytes of free disk space needed for a {len}-byte value, {available} free")]
    NoSpace {
        len: usize,
        needed: u64,
        available: u64,
    },
    /// A store operation did not finish in time (a flush wedged on a full disk).
    #[error("{op} did not finish within {seconds} s")]
    TimedOut { op: &'static str, seconds: u64 },
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
    /// The room was deleted (it has a tombstone); see `DocStore::delete`.
    #[error("the room was deleted")]
    RoomDeleted {
        /// When, in ms since the epoch.
        deleted_at_ms: u64,
    },
}
