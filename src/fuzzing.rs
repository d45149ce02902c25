//! Entry points of the fuzz targets in `fuzz/`, shared with `tests/fuzz_corpus.rs`, which
//! replays the committed corpus through the very same functions on the stable toolchain.
//!
//! Each `fn(&[u8])` here is one target: it must return normally on any input, and panics only
//! on a bug (a panic in ycord or in a dependency, or a broken invariant checked here). Not part
//! of the public API: hidden from the docs, free to change with the targets.
//!
//! The input formats are documented on each function; `fuzz/README.md` says how to run them.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, Transact, Update};

use crate::auth::{Access, Authenticator};
use crate::connection::ConnectionHandler;
use crate::error::ApplyError;
use crate::limit::MessageBudgets;
use crate::metrics::Metrics;
use crate::protocol::{self, Inbound};
use crate::room::{ConnectionId, MAX_ROOM_NAME_BYTES, Room, RoomConfig, Subscription};
use crate::store::{
    RoomStore, SledStore, encode_log_entry, encode_snapshot, log_key, room_prefix, snapshot_key,
};

/// Target `protocol_decode`: the input is one inbound WebSocket frame. Every message decoded
/// must re-encode to a frame that decodes to the same message, and every update or awareness
/// payload the validator passes must be read by yrs without a structural error (see
/// [`assert_yrs_agrees`]).
pub fn protocol_decode(data: &[u8]) {
    for message in protocol::decode_frame(data) {
        let Ok(message) = message else { continue };
        match &message {
            Inbound::SyncStep2(update) | Inbound::Update(update)
                if protocol::validate::update_v1(update).is_ok() =>
            {
                assert_yrs_agrees(update, Update::decode_v1(update).map(drop));
            }
            Inbound::Awareness(payload)
                if protocol::validate::awareness_update(payload).is_ok() =>
            {
                let decoded = yrs::sync::awareness::AwarenessUpdate::decode_v1(payload);
                assert_yrs_agrees(payload, decoded.map(drop));
            }
            _ => {}
        }
        let encoded = reencode(&message);
        let again: Vec<_> = protocol::decode_frame(&encoded).collect();
        assert_eq!(again, vec![Ok(message)], "re-encoding changed the message");
    }
}

/// Target `hocuspocus_decode`: the input is one inbound Hocuspocus frame. A decoded frame must
/// re-encode to one that decodes to the same message, its document key must be within
/// [`protocol::hocuspocus::MAX_DOCUMENT_KEY_BYTES`] and its room a prefix of the key; the
/// y-websocket message inside it must meet [`protocol_decode`]'s checks.
pub fn hocuspocus_decode(data: &[u8]) {
    use protocol::hocuspocus::{self as wire, Message};
    use yrs::encoding::write::Write;
    let Ok(inbound) = wire::decode(data) else {
        return;
    };
    let wire::Inbound::Document { key, message } = &inbound else {
        assert_eq!(
            data,
            wire::PONG,
            "only the Pong frame decodes without a document"
        );
        return;
    };
    assert!(key.len() <= wire::MAX_DOCUMENT_KEY_BYTES);
    assert!(key.starts_with(wire::room_of(key)));
    let prefix = wire::key_prefix(key);
    let body = match message {
        Message::Auth(Some(token)) => {
            let mut body = vec![2, 0];
            body.write_string(token.token);
            if let Some(version) = token.provider_version {
                body.write_string(version);
            }
            body
        }
        // The server's Auth subtypes, which a client's frame only carries by mistake.
        Message::Auth(None) => return,
        Message::Yjs(yjs) => {
            let body = reencode(yjs);
            protocol_decode(&body);
            body.to_vec()
        }
        Message::Stateless(payload) => wire::stateless_body(payload).to_vec(),
        Message::Close => vec![7],
    };
    let again = wire::frame(&prefix, &body);
    assert_eq!(
        wire::decode(&again).as_ref(),
        Ok(&inbound),
        "re-encoding changed the message"
    );
}

/// A y-websocket message encoded again.
fn reencode(message: &Inbound<'_>) -> bytes::Bytes {
    match message {
        Inbound::SyncStep1(state_vector) => {
            use yrs::updates::encoder::Encode;
            protocol::encode_sync_step1(&state_vector.encode_v1())
        }
        Inbound::SyncStep2(update) => protocol::encode_sync_step2(update),
        Inbound::Update(update) => protocol::encode_update(update),
        Inbound::Awareness(payload) => protocol::encode_awareness(payload),
        Inbound::QueryAwareness => protocol::encode_query_awareness(),
        Inbound::Auth => protocol::encode_auth_denied(""),
    }
}

/// The validator (`protocol::validate`) must read an encoding the way yrs does: if it passes
/// something yrs then finds truncated, mistagged or malformed, the two disagree about where
/// the fields are, and a count the validator never saw could reach yrs's reservations. Only
/// JSON that serde_json refuses (embeds, formats: the validator checks UTF-8, not JSON) may
/// still fail. Decoding here is safe: the validator has bounded every count.
fn assert_yrs_agrees(bytes: &[u8], decoded: Result<(), yrs::encoding::read::Error>) {
    use yrs::encoding::read::Error;
    if let Err(error) = decoded {
        assert!(
            matches!(error, Error::InvalidJSON(_)),
            "the validator passed {bytes:02x?}, which yrs fails to read: {error}"
        );
    }
}

/// A control byte in place of a frame length in [`session_frames`]' input.
const CONTROL: u8 = 0xff;

/// Target `session_frames`: one room, fed a sequence of client frames the way sessions feed
/// it, with restarts in between.
///
/// Input: one flags byte (bit 0: the connection is read-only; bit 1: a 256-byte document
/// limit instead of 1 MiB), then records. A record is a length byte `n < 0xff` followed by a
/// frame of `n` bytes (fewer at the end of the input), or `0xff` and an operation byte:
/// `0` reconnect, `1` compact, `2` restart (the room is reloaded from the store and must equal
/// the one in memory), `3` expire awareness states. A frame the session would close the
/// connection on ends that connection, and the next frame comes from a new one.
///
/// At the end the room is reloaded from the store, compacted and reloaded again: each time
/// its state vector and content must equal the room's in memory.
pub fn session_frames(data: &[u8]) {
    let Some((&flags, mut input)) = data.split_first() else {
        return;
    };
    let access = if flags & 1 == 0 {
        Access::ReadWrite
    } else {
        Access::ReadOnly
    };
    let config = RoomConfig {
        // `apply_update` would schedule compactions on a tokio runtime: run them by hand.
        compact_log_updates: u64::MAX,
        compact_log_bytes: u64::MAX,
        max_doc_bytes: if flags & 2 == 0 { 1 << 20 } else { 256 },
        // Nothing expires while a case runs: expiry depends on the clock.
        awareness_timeout: Duration::from_secs(3600),
    };
    let store: Arc<dyn RoomStore> = Arc::new(temporary_store());
    let load = || {
        Arc::new(
            Room::load(
                "fuzz".into(),
                store.clone(),
                config.clone(),
                metrics(),
                None,
            )
            .expect("loading from a temporary store"),
        )
    };
    let mut room = load();
    let mut member = Member::join(&room, 1, access);
    while let Some((&len, rest)) = input.split_first() {
        if len == CONTROL {
            let Some((&operation, rest)) = rest.split_first() else {
                break;
            };
            input = rest;
            match operation % 4 {
                0 => member = member.rejoin(&room, access),
                1 => room.compact().expect("compacting into a temporary store"),
                2 => {
                    let next = member.connection + 1;
                    member.leave(&room);
                    // What the flusher does before every flush.
                    room.write_log().expect("writing to a temporary store");
                    let reloaded = load();
                    assert_same_document(&room, &reloaded, "after a restart");
                    room = reloaded;
                    member = Member::join(&room, next, access);
                }
                _ => room.expire_awareness(),
            }
            continue;
        }
        let (frame, rest) = rest.split_at(usize::from(len).min(rest.len()));
        input = rest;
        if member.handler.handle_frame(frame, drop).is_err() {
            member = member.rejoin(&room, access);
        }
        // A pending update is in the room's encodings but not in its log (see
        // `check_dependencies` in `room/document.rs`).
        assert!(
            !room.has_pending_changes(),
            "the room holds a pending update"
        );
    }
    member.leave(&room);
    room.write_log().expect("writing to a temporary store");
    assert_same_document(&room, &load(), "at the end");
    room.compact().expect("compacting into a temporary store");
    assert_same_document(&room, &load(), "after compaction");
}

/// One connection's membership of a room.
struct Member {
    connection: ConnectionId,
    /// The server's dispatch of the connection's frames, as in a live session (with no
    /// update rate limit: a case is not timed).
    handler: ConnectionHandler,
    /// Held so that the room keeps queueing frames for it, as for a live session.
    _subscription: Subscription,
}

impl Member {
    fn join(room: &Arc<Room>, connection: ConnectionId, access: Access) -> Member {
        let (subscription, _greeting) = room.subscribe(connection);
        Member {
            connection,
            handler: ConnectionHandler::new(
                room.clone(),
                access,
                &MessageBudgets::unlimited(),
                metrics(),
            ),
            _subscription: subscription,
        }
    }

    fn leave(self, room: &Room) {
        room.unsubscribe(self.connection, self.handler.controlled());
    }

    fn rejoin(self, room: &Arc<Room>, access: Access) -> Member {
        let next = self.connection + 1;
        self.leave(room);
        Member::join(room, next, access)
    }
}

/// Asserts that a room reloaded from the store holds what the room in memory holds.
fn assert_same_document(live: &Room, reloaded: &Room, when: &str) {
    assert_eq!(
        state_vector(live),
        state_vector(reloaded),
        "state vectors differ {when}"
    );
    assert_eq!(live.to_json(), reloaded.to_json(), "contents differ {when}");
}

/// The room's state vector: what it has integrated (pending updates excluded), without the
/// clients at clock 0 (yrs may list a client whose only block is empty: it has nothing).
fn state_vector(room: &Room) -> Vec<(u64, u32)> {
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        let update =
            Update::decode_v1(&room.encode_state()).expect("a room's own encoding decodes");
        txn.apply_update(update)
            .expect("a room's own encoding applies");
    }
    let mut clocks: Vec<(u64, u32)> = doc
        .transact()
        .state_vector()
        .iter()
        .filter(|(_, clock)| **clock > 0)
        .map(|(client, clock)| (client.get(), *clock))
        .collect();
    clocks.sort_unstable();
    clocks
}

/// The room [`store_recovery`] corrupts.
const TARGET_ROOM: &str = "target";
/// The room [`store_recovery`] leaves alone, which must load intact whatever the other holds.
const WITNESS_ROOM: &str = "witness";

/// Target `store_recovery`: arbitrary records stored for one room; loading it must give an
/// error or a room, and another room in the same store must load intact.
///
/// Input: records of a tag byte, a length byte `n` and `n` bytes (fewer at the end). With the
/// first of those bytes as `s` (a sequence number: `s` below `0xf0`, else `u64::MAX - (0xff -
/// s)`) and the rest as `b`, the tag modulo 4 writes, under the keys of the layout documented
/// in `store/sled_store.rs`: `0` all `n` bytes as the snapshot value; `1` a well-formed snapshot
/// through `s` whose update is `b`; `2` the log entry `s` holding the update `b`; `3` the value `b` under
/// the room's key prefix followed by `s`'s byte and the first `s % 16` bytes of `b`.
///
/// The loaded room must then accept an update, compact and be deleted.
pub fn store_recovery(data: &[u8]) {
    let sled = temporary_store();
    let store: Arc<dyn RoomStore> = Arc::new(sled.clone());
    let config = RoomConfig {
        compact_log_updates: u64::MAX,
        compact_log_bytes: u64::MAX,
        max_doc_bytes: 1 << 20,
        awareness_timeout: Duration::from_secs(3600),
    };
    let load = |name: &str| Room::load(name.into(), store.clone(), config.clone(), metrics(), None);

    // The witness has a snapshot and a log, written the way the server writes them.
    let witness = Arc::new(load(WITNESS_ROOM).expect("loading from a temporary store"));
    witness
        .apply_update(&text_update(1, "snapshot"))
        .expect("applying a valid update");
    witness
        .compact()
        .expect("compacting into a temporary store");
    witness
        .apply_update(&text_update(2, "log"))
        .expect("applying a valid update");
    witness.write_log().expect("writing to a temporary store");
    let expected = witness.to_json();
    drop(witness);

    let prefix = room_prefix(TARGET_ROOM);
    let mut input = data;
    while let Some((&tag, rest)) = input.split_first() {
        let Some((&len, rest)) = rest.split_first() else {
            break;
        };
        let (bytes, rest) = rest.split_at(usize::from(len).min(rest.len()));
        input = rest;
        let (seq_byte, body) = bytes.split_first().map_or((0, &[][..]), |(s, b)| (*s, b));
        let seq = if seq_byte < 0xf0 {
            u64::from(seq_byte)
        } else {
            u64::MAX - u64::from(0xff - seq_byte)
        };
        let (key, value) = match tag % 4 {
            0 => (snapshot_key(TARGET_ROOM), bytes.to_vec()),
            1 => (snapshot_key(TARGET_ROOM), encode_snapshot(seq, 0, body)),
            2 => (log_key(TARGET_ROOM, seq), encode_log_entry(&[body])),
            _ => {
                let (extra, value) = body.split_at(usize::from(seq_byte % 16).min(body.len()));
                let mut key = prefix.clone();
                key.push(seq_byte);
                key.extend_from_slice(extra);
                (key, value.to_vec())
            }
        };
        sled.raw_insert(&key, &value)
            .expect("writing to a temporary store");
    }

    let _ = store.load(TARGET_ROOM);
    let _ = store.stats(TARGET_ROOM);
    let _ = store.rooms();
    if let Ok(room) = load(TARGET_ROOM) {
        let room = Arc::new(room);
        let _ = room.to_json();
        // The room must stay usable: an edit goes through, and compaction and reloading work.
        let applied = room.apply_update(&text_update(3, "after recovery"));
        assert!(
            !matches!(applied, Err(ApplyError::Store(_))),
            "storing an update after recovery failed: {applied:?}"
        );
        let written = room.write_log();
        assert!(
            written.is_ok(),
            "storing an update after recovery failed: {written:?}"
        );
        if let Ok(reloaded) = load(TARGET_ROOM) {
            assert_eq!(
                state_vector(&room),
                state_vector(&reloaded),
                "a change to a recovered room did not survive a restart"
            );
        }
        room.compact().expect("compacting a recovered room");
        let _ = load(TARGET_ROOM).map(|room| room.to_json());
        room.delete().expect("deleting a recovered room");
    }

    let witness = load(WITNESS_ROOM).expect("the witness room loads");
    assert_eq!(witness.to_json(), expected, "the witness room changed");
    let stored = store.load(WITNESS_ROOM).expect("the witness room loads");
    assert!(
        stored.corrupt.is_empty(),
        "the witness room has corrupt records"
    );
}

/// A v1 update from a fresh client `client` that appends `text` to the root text `text`.
fn text_update(client: u64, text: &str) -> Vec<u8> {
    use yrs::Text;
    let doc = Doc::with_client_id(client);
    let root = doc.get_or_insert_text("text");
    let mut txn = doc.transact_mut();
    root.push(&mut txn, text);
    txn.encode_update_v1()
}

/// The secret tokens are checked against in [`auth_token`].
pub const AUTH_SECRET: &[u8] = b"ycord-fuzz-secret";

/// Target `auth_token`: tokens, room names, query strings, headers and paths as a client may
/// send them.
///
/// Input: text (invalid UTF-8 replaced) whose lines are, in order: a token, a room name, a
/// query string, an `Authorization` header value, a request path and a base path. When the
/// first byte is `{`, the first line is instead a JSON claims object, signed with
/// [`AUTH_SECRET`] to make the token, which reaches the claims checks behind the signature.
pub fn auth_token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let mut next = || lines.next().unwrap_or("");
    let first = next();
    let token: Cow<'_, str> = if first.starts_with('{') {
        match signed(first) {
            Some(token) => Cow::Owned(token),
            None => Cow::Borrowed(first),
        }
    } else {
        Cow::Borrowed(first)
    };
    let (room, query, header, path, base) = (next(), next(), next(), next(), next());

    let auth = authenticator();
    let _ = auth.verify(Some(&token));
    if let Ok(claims) = auth.authorize_room(Some(&token), room) {
        assert!(
            claims.allows_room(room),
            "a token opened a room it does not name"
        );
        // What the server does with an accepted token.
        let _ = (claims.mode, claims.expires_at(), &claims.sub);
    }
    if let Ok(claims) = auth.authorize_admin(Some(&token)) {
        assert!(claims.admin, "a token without `admin` opened the API");
    }

    let from_request = crate::auth::token_from_request(Some(query), Some(header));
    if let Some(token) = from_request.as_deref() {
        let _ = auth.authorize_room(Some(token), room);
    }
    let _ = crate::auth::token_from_request(None, Some(header));

    if let Ok(name) = crate::server::room_name(path, base) {
        assert!(
            !name.is_empty() && name.len() <= MAX_ROOM_NAME_BYTES,
            "room name of {} bytes accepted",
            name.len()
        );
    }
}

/// An HS256 token over the JSON claims `claims`, if they are a JSON value.
fn signed(claims: &str) -> Option<String> {
    let claims: serde_json::Value = serde_json::from_str(claims).ok()?;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(AUTH_SECRET),
    )
    .ok()
}

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| Authenticator::new(AUTH_SECRET))
}

fn metrics() -> Arc<Metrics> {
    static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();
    METRICS.get_or_init(|| Arc::new(Metrics::new())).clone()
}

/// A fresh store per case keeps cases independent; sled removes it when the last clone drops.
fn temporary_store() -> SledStore {
    SledStore::temporary().expect("opening a temporary store")
}
