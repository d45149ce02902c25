//! A room's document rules, without I/O: how an untrusted update is decoded, checked against
//! the document and integrated into yrs, how a stored room is replayed, and what the document
//! looks like as JSON. Everything that keeps the room in memory identical to the room on disk
//! lives here (see [`check_dependencies`] and [`drop_pending`]).

use std::collections::HashMap;

use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    ClientID, Doc, ID, IdSet, ReadTxn, StateVector, Transact, TransactionMut, Update, WriteTxn,
};

use super::error::ApplyError;
use crate::protocol::{self, DecodedUpdate};

/// Stored updates applied per transaction when a room loads.
const LOAD_BATCH: usize = 1000;

/// An empty v1 update: what encoding a transaction that changed nothing gives.
pub(super) const EMPTY_UPDATE: &[u8] = &[0, 0];

/// What replaying a stored room gave.
pub(super) struct Replayed {
    pub doc: Doc,
    /// Bytes of every record replayed.
    pub bytes: u64,
    /// Whether a record could not be decoded or integrated (and was skipped).
    pub skipped: bool,
    /// Whether subdocuments stored before they were refused were removed.
    pub released: bool,
}

/// Replays a room's stored records (its snapshot, then its log, in order) into a new document.
/// Records that cannot be read are logged and skipped.
pub(super) fn replay<'a>(room: &str, records: impl Iterator<Item = &'a Vec<u8>>) -> Replayed {
    let doc = Doc::new();
    let records: Vec<&Vec<u8>> = records.collect();
    let (mut bytes, mut skipped) = (0, false);
    // One transaction per batch: a yrs commit grows faster than linearly with its size
    // (measured: the 259,778-update automerge-paper log loads in 1.5 s as one transaction,
    // about 0.25 s in batches of a thousand).
    for (batch_index, batch) in records.chunks(LOAD_BATCH).enumerate() {
        let mut txn = doc.transact_mut();
        for (offset, record) in batch.iter().enumerate() {
            bytes += record.len() as u64;
            let applied = protocol::decode_update(record)
                .and_then(|update| integrate(&mut txn, update).map_err(|error| error.to_string()));
            if let Err(error) = applied {
                skipped = true;
                let index = batch_index * LOAD_BATCH + offset;
                tracing::error!(room, index, %error, "skipping undecodable stored update");
            }
        }
    }
    let released = release_subdocuments(&doc);
    if released {
        tracing::warn!(room, "removed subdocuments stored before they were refused");
    }
    Replayed {
        doc,
        bytes,
        skipped,
        released,
    }
}

/// A panic inside yrs while it integrated an update: the document may be half-changed.
pub(super) struct Panicked;

/// Integrates a client's decoded update into `doc` and returns the delta (empty if the
/// document already had everything) with the refusal, if any. yrs integrates an update's
/// blocks one by one and may refuse one after others went in (an item whose parent is not a
/// shared type): the delta then holds what went in, which must be stored and broadcast like
/// any change so that the room in memory never holds what its log lacks. A panic inside yrs
/// is caught and reported as [`Panicked`].
pub(super) fn apply(
    doc: &Doc,
    decoded: DecodedUpdate,
) -> Result<(Option<Vec<u8>>, Option<ApplyError>), Panicked> {
    let integrated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut txn = doc.transact_mut();
        #[cfg(test)]
        panic_hook::maybe_panic();
        let refusal = integrate(&mut txn, decoded).err();
        (txn.encode_update_v1(), refusal)
    }));
    let (delta, refusal) = integrated.map_err(|_| Panicked)?;
    Ok(((delta != EMPTY_UPDATE).then_some(delta), refusal))
}

/// The whole document as one v1 update; `None` if yrs panicked while encoding it.
pub(super) fn encode_whole(doc: &Doc) -> Option<Vec<u8>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }))
    .ok()
}

/// The y-websocket SyncStep1 carrying the document's state vector.
pub(super) fn sync_step1(doc: &Doc) -> bytes::Bytes {
    let state_vector = doc.transact().state_vector().encode_v1();
    protocol::encode_sync_step1(&state_vector)
}

/// The top-level shared types of a document's full state (`state`, one v1 update) as JSON:
/// text as a string, maps as objects, arrays as arrays, XML as its string form. Root types the
/// server never declared have no type in the document (Yjs does not send it); it is inferred
/// from their content, on a scratch copy so that the live document is untouched.
pub(super) fn to_json(state: &[u8]) -> serde_json::Value {
    use yrs::types::ToJson;
    use yrs::{GetString, In, Out, types::AsPrelim};
    let copy = Doc::new();
    if let Ok(update) = Update::decode_v1(state) {
        // Re-applying our own encoding cannot fail; if it did, the view is just empty.
        let _ = copy.transact_mut().apply_update(update);
    }
    let kinds: Vec<(String, In)> = {
        let txn = copy.transact();
        txn.root_refs()
            .map(|(name, value): (&str, Out)| (name.to_owned(), value.as_prelim(&txn)))
            .collect()
    };
    let mut roots = serde_json::Map::new();
    for (name, kind) in kinds {
        let any = match kind {
            In::Text(_) => {
                let text = copy.get_or_insert_text(name.as_str());
                yrs::Any::from(text.get_string(&copy.transact()))
            }
            In::Array(_) => copy
                .get_or_insert_array(name.as_str())
                .to_json(&copy.transact()),
            In::XmlText(_) | In::XmlElement(_) | In::XmlFragment(_) => {
                let xml = copy.get_or_insert_xml_fragment(name.as_str());
                yrs::Any::from(xml.get_string(&copy.transact()))
            }
            _ => copy
                .get_or_insert_map(name.as_str())
                .to_json(&copy.transact()),
        };
        roots.insert(
            name,
            serde_json::to_value(any).unwrap_or(serde_json::Value::Null),
        );
    }
    serde_json::Value::Object(roots)
}

/// Integrates a decoded update into `txn`, the one place rooms hand updates to yrs (live and
/// while loading): refused whole if it depends on changes neither the document nor the update
/// holds ([`check_dependencies`]); otherwise applied, and whatever yrs then holds pending is
/// dropped ([`drop_pending`]). On an error after the apply, what yrs integrated stays in `txn`.
pub(super) fn integrate(
    txn: &mut TransactionMut,
    decoded: DecodedUpdate,
) -> Result<(), ApplyError> {
    check_dependencies(&decoded, &txn.state_vector())?;
    let applied = txn
        .apply_update(decoded.update)
        .map_err(|error| ApplyError::InvalidUpdate(error.to_string()));
    let held = drop_pending(txn);
    applied.and(held.map_or(Ok(()), Err))
}

/// Refuses an update that would leave a hole in a client's clocks: for every client it has
/// changes of, the document's clocks `0..state[client]` and the update's blocks must form one
/// range from 0. Yjs keeps a block that starts past the document's clock pending until the
/// gap is filled; yrs 0.28 integrates it behind a "skip" instead (fuzzer finding
/// `out-of-order-item-integrated-but-not-stored`: visible, yet missing from the state vector
/// and from the transaction's delta, so never stored or broadcast), and a later update that
/// straddles the skip's end makes yrs read freed memory (`BlockSet::exclude` drops a piece that
/// the kept piece still points at; finding `asan-heap-use-after-free-in-update-exclude`).
/// With this check no skip is ever created. Overlapping resends (SyncStep2 after a
/// reconnect, merged updates, duplicates) start at or before the document's clock and pass.
///
/// It also refuses an update whose items refer to (as origin or parent), or whose delete set
/// covers, another client's change that neither the document nor the update holds. Yjs and
/// yrs keep such an update pending, outside the state vector and the transaction's delta, so
/// it would not be stored, yet yrs merges pending updates into every full encoding of the
/// document: a compaction or a client's copy would hold it and a reload from the log would
/// not (fuzzer finding `restart-loses-item-with-missing-parent`). Both refusals are answered
/// like Yjs's pending state: the client is asked to resync, and its SyncStep2 carries what the
/// room lacks.
///
/// `state` must be read from the transaction that applies the update.
fn check_dependencies(decoded: &DecodedUpdate, state: &StateVector) -> Result<(), ApplyError> {
    let insertions = decoded.update.insertions(true);
    // Per client, where the document's clocks will end once the update's insertions are in
    // (they are contiguous with the room's, checked here first).
    let mut ends: HashMap<u64, u32> = HashMap::with_capacity(insertions.len());
    for (client, ranges) in insertions.iter() {
        let mut known = state.get(client);
        // An `IdSet`'s ranges are sorted by start and merged where they touch.
        for range in ranges.iter() {
            if range.start > known {
                return Err(ApplyError::MissingPredecessors {
                    client: client.get(),
                    known,
                    starts_at: range.start,
                });
            }
            known = known.max(range.end);
        }
        ends.insert(client.get(), known);
    }
    for &(client, needed) in &decoded.needs {
        let known = match ends.get(&client) {
            Some(end) => *end,
            None => state.get(&ClientID::new(client)),
        };
        if needed > u64::from(known) {
            return Err(ApplyError::MissingDependency {
                client,
                known,
                needed,
            });
        }
    }
    Ok(())
}

/// Why an update holding a subdocument is refused. yrs 0.28.1 never frees a document that
/// integrated one, and when the shared type holding one is deleted it frees the subdocument's
/// item and then reads it (`Doc::destroy`, from the commit; valgrind reports the invalid
/// read): any writer could leak memory or corrupt the heap. The editors ycord serves (Tiptap,
/// Nextcloud Text) do not use subdocuments. See also [`release_subdocuments`].
pub(super) const SUBDOCUMENTS_REFUSED: &str =
    "subdocuments are not supported (yrs 0.28 cannot delete or free them safely)";

/// Drops what yrs could not integrate of an update and holds pending, and says what it waited
/// for. [`check_dependencies`] refuses an update that refers to changes neither the document nor
/// the update holds, but not items of several clients that depend on each other in a cycle:
/// none of them can integrate first. Held pending, they would be in every full encoding of the
/// room and not in its log; dropped, the client is asked to resync like for a missing change.
fn drop_pending(txn: &mut TransactionMut) -> Option<ApplyError> {
    if !txn.has_missing_updates() {
        return None;
    }
    let store = txn.store();
    // The first clock the held blocks wait for, or else the first range of a held delete set.
    let waits_for = store
        .pending_update()
        .and_then(|pending| pending.missing.iter().next().map(|(c, clock)| (*c, *clock)))
        .or_else(|| {
            let (client, ranges) = store.pending_ds()?.iter().next()?;
            Some((*client, ranges.iter().next()?.end))
        });
    let (client, needed) = waits_for.unwrap_or((ClientID::new(0), 0));
    let known = txn.state_vector().get(&client);
    txn.prune_pending();
    Some(ApplyError::MissingDependency {
        client: client.get(),
        known,
        needed: needed.into(),
    })
}

/// Deletes, in memory, the subdocuments of a document stored before rooms refused them (see
/// [`SUBDOCUMENTS_REFUSED`]), and says whether there were any. yrs 0.28 never frees a document
/// that integrated a subdocument (fuzzer finding `leak-subdocument-room-never-freed`: the item
/// holds a strong clone of its parent document), and a client deleting the shared type that
/// holds one would make yrs free the item and then read it. Deleting the subdocument items
/// themselves is safe: yrs' garbage collection replaces their content, the parent clone with
/// it. The deletions are not broadcast; clients learn them at their next sync, and the next
/// compaction stores them.
pub(super) fn release_subdocuments(doc: &Doc) -> bool {
    let mut txn = doc.transact_mut();
    if txn.subdocs().next().is_none() {
        return false;
    }
    let state = txn.encode_state_as_update_v1(&StateVector::default());
    let mut items = IdSet::new();
    let walked = protocol::validate::update_v1_with_references(
        &state,
        |_, _| {},
        |(client, clock)| items.insert(ID::new(ClientID::new(client), clock), 1),
    );
    // A v1 update of no structs (a zero client count) and that delete set.
    let mut deletions = vec![0];
    deletions.extend(items.encode_v1());
    let released = walked
        .map_err(|error| error.to_string())
        .and_then(|()| Update::decode_v1(&deletions).map_err(|error| error.to_string()))
        .and_then(|update| txn.apply_update(update).map_err(|error| error.to_string()));
    if let Err(error) = released {
        tracing::warn!(%error, "could not remove a document's subdocuments");
    }
    true
}

#[cfg(test)]
/// A panic inside the critical section on demand, for this thread only.
pub(super) mod panic_hook {
    use std::cell::Cell;

    thread_local! {
        static ARMED: Cell<bool> = const { Cell::new(false) };
    }

    /// The next update this thread applies panics inside yrs's transaction.
    pub fn arm() {
        ARMED.with(|armed| armed.set(true));
    }

    pub fn maybe_panic() {
        if ARMED.with(|armed| armed.replace(false)) {
            panic!("injected panic inside the room's critical section");
        }
    }
}
