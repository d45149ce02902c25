//! Every error type of the crate in one place, for code outside it. Each domain owns its enum:
//! the protocol its framing errors, the validator its encoding errors, the room what it refuses,
//! the store its failures, the registry why a join failed. The server module is the one place
//! where they become close codes and HTTP statuses.

pub use crate::protocol::ProtocolError;
pub use crate::protocol::validate::{Count, EncodingError, Tag};
pub use crate::room::{ApplyError, RoomNameError};
pub use crate::rooms::JoinError;
pub use crate::store::StoreError;
