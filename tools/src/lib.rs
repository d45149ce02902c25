//! What measures or exercises ycord without being part of the server: kept out of the `ycord`
//! crate so that the server's dependencies are what it runs.
//!
//! - [`trace`]: real editing traces (`benches/data/`) turned into Yjs updates, for the benches,
//!   the tests and the load tool.
//! - [`client`]: a y-websocket (or Hocuspocus) client keeping a yrs document in sync with one
//!   room; the load tool's clients and the server tests' `Client` are built on it.
//! - [`wire`]: how that client frames and decodes messages for each protocol.
//! - [`error`]: why a client could not join, mapped to the load tool's exit codes.
//!
//! The `ycord-bench` binary (the load tool) and the `relay_floor` example live here too.

pub mod client;
pub mod error;
pub mod trace;
pub mod wire;
