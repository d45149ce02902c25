//! ycord: a collaborative document sync server for Yjs clients.
//!
//! # Map of the crate
//!
//! - [`admin`]: export, import, compact and inspect a stopped server's data directory.
//! - [`auth`]: JWT verification and room grants.
//! - [`config`]: the command line and `YCORD_*` environment, validated into one struct.
//! - [`protocol`]: y-websocket message decoding and encoding; pure functions over bytes (a
//!   second wire dialect goes beside it).
//! - [`connection`]: what one connection's messages do to its room, without I/O.
//! - [`queue`]: the bounded queue from a room to one member's session.
//! - [`room`]: one document (`room/document.rs`), its members and presence
//!   (`room/members.rs`) and its persistence (`room/persistence.rs`); [`room::ChangeObserver`]
//!   is where webhooks and a cluster's fan-out plug in.
//! - [`rooms`]: the registry that loads each room once and evicts idle ones.
//! - [`store`]: the [`store::RoomStore`] trait and its sled implementation (key layout there;
//!   a second store goes beside `store/sled_store.rs`).
//! - [`server`]: binding, routes, WebSocket sessions, graceful shutdown.
//! - [`error`]: every domain's error type, re-exported in one place.
//! - [`limit`]: token buckets for update and connection rates.
//! - [`metrics`]: the Prometheus metrics, one value per server.
//! - [`nextcloud`]: ExApp mode: AppAPI authentication, per-file permissions asked of
//!   Nextcloud, the app's lifecycle.
//! - [`webhooks`]: signed, debounced change notifications to a URL.
//! - `fuzzing` (hidden): the bodies of the fuzz targets in `fuzz/`, replayed by the tests.
//!
//! # The flow of one update
//!
//! A client's frame is decoded by [`protocol::decode_frame`]; its update is applied by
//! [`room::Room::apply_update`] under the room's lock, which encodes the delta once, appends it
//! to the store's log and queues the same bytes for every member; each member's session writes
//! them to its socket. sled flushes the log within the durability window, and compaction
//! folds the log into an lz4-compressed snapshot.

pub mod admin;
pub mod auth;
pub mod config;
pub mod connection;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod limit;
pub mod metrics;
pub mod nextcloud;
pub mod protocol;
pub mod queue;
pub mod room;
pub mod rooms;
pub mod server;
pub mod store;
pub mod webhooks;

pub use config::{Cli, ServeConfig};
pub use server::Server;
