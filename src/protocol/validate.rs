//! Allocation-free checks of untrusted Yjs encodings, run before yrs decodes them.
//!
//! yrs reserves memory for every count it reads (`try_reserve(count)`) before it reads the
//! entries the count announces. The reservation is fallible, but under an overcommitting
//! allocator it usually succeeds, and the memory is touched as entries go in: a 4-byte update
//! announcing 2^29 structs for one client made the server reserve 5 GiB and touch ~130 MiB
//! (fuzzer findings `oom-update-client-count-bomb` and `oom-log-update-count-bomb`). Counts sit
//! at every level of an update (clients, structs per client, JSON and `Any` content, `Any`
//! arrays and objects, delete-set ranges), so checking the leading one is not enough. yrs also
//! decodes nested `Any` arrays and objects recursively, with no depth limit: a frame of a few
//! hundred KiB of nested one-element arrays overflows the stack, which aborts the process.
//!
//! The functions here walk a whole encoding the way yrs 0.28.1 reads it (the same fields, tags
//! and varint widths, through yrs's own [`Cursor`] readers, so a varint means to the walk what
//! it means to yrs), without allocating and without recursing more than [`MAX_ANY_DEPTH`]
//! levels. They refuse:
//!
//! - a count larger than the bytes after it can hold (every entry takes at least one byte, most
//!   of them more; the minimum is given at each check);
//! - `Any` values nested more than [`MAX_ANY_DEPTH`] arrays and objects deep;
//! - whatever yrs would fail to read: truncation, malformed varints, unknown tags, invalid
//!   UTF-8, empty GC and skip blocks;
//! - legacy JSON content, which yrs cannot read back once it has written it (see
//!   [`EncodingError::LegacyJsonContent`]);
//! - client IDs of 2^53 and above, which yrs's `ClientID::new` asserts against in debug builds
//!   and silently truncates in release builds;
//! - signed varints longer than ten bytes, whose eleventh byte yrs shifts past 64 bits
//!   (a panic in debug builds, garbage in release builds);
//! - a client's structs running past the largest `u32` clock, and delete-set ranges whose end
//!   does not fit in one (yrs adds them up: a panic in debug builds, a wrapped clock or a
//!   reversed range in release builds; fuzzer findings `block-clock-overflow` and
//!   `delete-set-range-overflow`).
//!
//! Once a walk succeeds, every count yrs reserves for is matched by entries present in the
//! bytes, so the memory decoding takes is proportional to the encoding's size. JSON-encoded
//! values (embeds, formatting attributes, awareness states) are left to serde_json, which has
//! no counts to trust and limits nesting itself; their bytes are only checked to be UTF-8.
//!
//! The layouts are lib0 v1 as yrs reads them: `Update::decode` and `decode_block` in
//! `update.rs`, `ItemContent::decode` in `block.rs`, `TypeRef::decode` in `types/mod.rs`,
//! `Options::decode` in `doc.rs`, `Any::decode` in `any.rs`, `IdSet::decode` in `id_set.rs`,
//! `StateVector::decode` in `state_vector.rs` and `AwarenessUpdate::decode` in
//! `sync/awareness.rs`. Where yrs departs from Yjs, the walk follows yrs, since yrs is what it
//! protects (see [`type_ref`]).

use yrs::encoding::read::{Cursor, Error as ReadError, Read};

use thiserror::Error;

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
        max = MAX_ANY_DEPTH
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

/// How many arrays and objects an `Any` value may nest. yrs imposes no limit on binary `Any`
/// values, nor does lib0; serde_json, which yrs uses for the same values when they arrive as
/// JSON (embeds, formatting attributes, awareness states), accepts 127 nested containers, so
/// nothing a client may send as JSON is refused when it comes as binary. At that depth yrs's
/// recursive decoding, encoding and dropping use a few tens of KiB of stack.
pub const MAX_ANY_DEPTH: usize = 127;

/// Client IDs are 53-bit in Yjs (JavaScript's safe integers); yrs assumes it.
const CLIENT_ID_LIMIT: u64 = 1 << 53;

// Block info byte (update.rs, block.rs).
const BLOCK_GC: u8 = 0;
const BLOCK_SKIP: u8 = 10;
const HAS_ORIGIN: u8 = 0b1000_0000;
const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
const HAS_PARENT_SUB: u8 = 0b0010_0000;
/// yrs takes the content type from the low four bits of the info byte.
const CONTENT_MASK: u8 = 0b0000_1111;

// Item content types (block.rs).
const CONTENT_DELETED: u8 = 1;
const CONTENT_JSON: u8 = 2;
const CONTENT_BINARY: u8 = 3;
const CONTENT_STRING: u8 = 4;
const CONTENT_EMBED: u8 = 5;
const CONTENT_FORMAT: u8 = 6;
const CONTENT_TYPE: u8 = 7;
const CONTENT_ANY: u8 = 8;
const CONTENT_DOC: u8 = 9;

// Shared type references (types/mod.rs). 7 (weak links) needs yrs's `weak` feature, which
// ycord does not enable, so yrs refuses it like an unknown reference.
const TYPE_ARRAY: u8 = 0;
const TYPE_MAP: u8 = 1;
const TYPE_TEXT: u8 = 2;
const TYPE_XML_ELEMENT: u8 = 3;
const TYPE_XML_FRAGMENT: u8 = 4;
const TYPE_XML_HOOK: u8 = 5;
const TYPE_XML_TEXT: u8 = 6;
const TYPE_DOC: u8 = 9;
const TYPE_UNDEFINED: u8 = 15;

// `Any` tags (any.rs).
const ANY_UNDEFINED: u8 = 127;
const ANY_NULL: u8 = 126;
const ANY_INTEGER: u8 = 125;
const ANY_FLOAT32: u8 = 124;
const ANY_FLOAT64: u8 = 123;
const ANY_BIGINT: u8 = 122;
const ANY_FALSE: u8 = 121;
const ANY_TRUE: u8 = 120;
const ANY_STRING: u8 = 119;
const ANY_OBJECT: u8 = 118;
const ANY_ARRAY: u8 = 117;
const ANY_BUFFER: u8 = 116;

/// An item's ID, or an ID an item refers to: `(client, clock)`.
pub type Id = (u64, u32);

/// Checks a v1 update (`Update::decode_v1`): `varUint clients`, then per client
/// `varUint structs, varUint client, varUint clock, struct*`, then the delete set.
pub fn update_v1(bytes: &[u8]) -> Result<(), EncodingError> {
    update_v1_with_references(bytes, |_, _| {}, |_| {})
}

/// As [`update_v1`], calling `on_reference(Some(item), id)` for every ID an item refers to
/// (its left and right origins, and its parent when that is an item), and
/// `on_reference(None, id)` with the last ID of every delete-set range (the first, for an
/// empty one): what the update
/// depends on (see `protocol::decode_update`). `on_subdocument(id)` is called for every item
/// whose content is a subdocument.
pub fn update_v1_with_references(
    bytes: &[u8],
    mut on_reference: impl FnMut(Option<Id>, Id),
    mut on_subdocument: impl FnMut(Id),
) -> Result<(), EncodingError> {
    let mut reader = Reader::new(bytes);
    // A client takes at least three bytes: its struct count, ID and clock.
    let clients = reader.count_u32(Count::Clients, 3)?;
    for _ in 0..clients {
        // A struct takes at least two bytes (a GC: info and length), and the client's ID and
        // clock follow the count.
        let structs = reader.count_u32(Count::Structs, 2)?;
        let client = reader.client()?;
        let mut clock = reader.var_u32()?;
        for _ in 0..structs {
            let at = reader.at();
            let (len, subdocument) = block(&mut reader, &mut |reference| {
                on_reference(Some((client, clock)), reference)
            })?;
            if subdocument {
                on_subdocument((client, clock));
            }
            // yrs adds every struct's length to the client's clock, the last one's too.
            clock = clock
                .checked_add(len)
                .ok_or(EncodingError::ClockOverflow { at })?;
        }
    }
    delete_set(&mut reader, &mut |last| on_reference(None, last))
}

/// Checks a v1 state vector (`StateVector::decode_v1`): `varUint entries`, then per entry
/// `varUint client, varUint clock`. It has no nested counts; the whole walk checks the client
/// IDs and that the count is met.
pub fn state_vector_v1(bytes: &[u8]) -> Result<(), EncodingError> {
    let mut reader = Reader::new(bytes);
    let entries = reader.count_u32(Count::StateVectorEntries, 2)?;
    for _ in 0..entries {
        reader.client()?;
        reader.var_u32()?;
    }
    Ok(())
}

/// Checks an awareness update (`AwarenessUpdate::decode_v1`): `varUint states` (read as 64
/// bits, unlike the other counts), then per state `varUint client, varUint clock,
/// varString json`. No nested counts either: the JSON is parsed by serde_json later.
pub fn awareness_update(bytes: &[u8]) -> Result<(), EncodingError> {
    let mut reader = Reader::new(bytes);
    let states = reader.count_u64(Count::AwarenessStates, 3)?;
    for _ in 0..states {
        reader.client()?;
        reader.var_u32()?;
        reader.string()?;
    }
    Ok(())
}

/// One struct (`Update::decode_block`), returning its length in clock ticks and whether it is
/// an item holding a subdocument. The info byte is matched whole for GC and skip blocks; any
/// other value is an item, whose content type is in its low four bits. Every ID an item refers
/// to goes to `on_reference`.
fn block(
    reader: &mut Reader<'_>,
    on_reference: &mut impl FnMut(Id),
) -> Result<(u32, bool), EncodingError> {
    let at = reader.at();
    let info = reader.u8()?;
    match info {
        BLOCK_GC | BLOCK_SKIP => {
            let len = reader.var_u32()?;
            if len == 0 {
                return Err(EncodingError::EmptyBlock { at });
            }
            Ok((len, false))
        }
        _ => {
            let has_origin = info & HAS_ORIGIN != 0;
            let has_right_origin = info & HAS_RIGHT_ORIGIN != 0;
            if has_origin {
                on_reference(reader.id()?);
            }
            if has_right_origin {
                on_reference(reader.id()?);
            }
            // Without origins the parent is written out: a root type's name when the parent
            // info is 1, else the ID of the item holding the parent type; then the map key.
            if !has_origin && !has_right_origin {
                if reader.var_u32()? == 1 {
                    reader.string()?;
                } else {
                    on_reference(reader.id()?);
                }
                if info & HAS_PARENT_SUB != 0 {
                    reader.string()?;
                }
            }
            let kind = info & CONTENT_MASK;
            content(reader, kind, at).map(|len| (len, kind == CONTENT_DOC))
        }
    }
}

/// An item's content (`ItemContent::decode`), returning its length as yrs counts it
/// (`ItemContent::len_utf16`): a string's UTF-16 code units, the number of values, or 1.
fn content(reader: &mut Reader<'_>, kind: u8, at: usize) -> Result<u32, EncodingError> {
    match kind {
        CONTENT_DELETED => reader.var_u32(),
        // yrs 0.28.1 reads one JSON string more than the count says (`while remaining >= 0`),
        // where Yjs reads exactly the count, and writes the count of what it read: no JSON
        // item survives being stored and read back. Current Yjs never writes this content.
        CONTENT_JSON => Err(EncodingError::LegacyJsonContent { at }),
        CONTENT_BINARY => reader.buf().map(|()| 1),
        CONTENT_STRING => {
            let text = reader.string()?;
            // At most one code unit per byte, and a string holds at most `u32::MAX` bytes.
            Ok(u32::try_from(text.encode_utf16().count()).unwrap_or(u32::MAX))
        }
        // An embed holds one JSON string, a format a key and a JSON string.
        CONTENT_EMBED => reader.string().map(|_| 1),
        CONTENT_FORMAT => {
            reader.string()?;
            reader.string().map(|_| 1)
        }
        CONTENT_TYPE => type_ref(reader).map(|()| 1),
        CONTENT_ANY => {
            let values = reader.count_u32(Count::AnyContentValues, 1)?;
            for _ in 0..values {
                any(reader, 0)?;
            }
            Ok(u32::try_from(values).unwrap_or(u32::MAX))
        }
        // A subdocument: its GUID and its options as an `Any` object.
        CONTENT_DOC => {
            reader.string()?;
            any(reader, 0).map(|()| 1)
        }
        _ => Err(EncodingError::UnknownTag {
            what: Tag::Content,
            tag: kind,
            at,
        }),
    }
}

/// A shared type's reference (`TypeRef::decode`): one byte, not a varint; an XML element
/// carries its tag name. (Yjs writes a name for XML hooks too; yrs 0.28.1 reads none.)
fn type_ref(reader: &mut Reader<'_>) -> Result<(), EncodingError> {
    let at = reader.at();
    match reader.u8()? {
        TYPE_XML_ELEMENT => reader.string().map(drop),
        TYPE_ARRAY | TYPE_MAP | TYPE_TEXT | TYPE_XML_FRAGMENT | TYPE_XML_HOOK | TYPE_XML_TEXT
        | TYPE_DOC | TYPE_UNDEFINED => Ok(()),
        tag => Err(EncodingError::UnknownTag {
            what: Tag::TypeRef,
            tag,
            at,
        }),
    }
}

/// An `Any` value (`Any::decode`) inside `depth` arrays and objects. Recursive, but never
/// deeper than [`MAX_ANY_DEPTH`].
fn any(reader: &mut Reader<'_>, depth: usize) -> Result<(), EncodingError> {
    let at = reader.at();
    match reader.u8()? {
        ANY_UNDEFINED | ANY_NULL | ANY_FALSE | ANY_TRUE => Ok(()),
        ANY_INTEGER => reader.var_i64(),
        ANY_FLOAT32 => reader.skip(4),
        ANY_FLOAT64 | ANY_BIGINT => reader.skip(8),
        ANY_STRING => reader.string().map(drop),
        ANY_BUFFER => reader.buf(),
        ANY_OBJECT => {
            if depth >= MAX_ANY_DEPTH {
                return Err(EncodingError::TooDeep { at });
            }
            // An entry takes at least two bytes: an empty key and a one-byte value.
            let entries = reader.count_u64(Count::ObjectEntries, 2)?;
            for _ in 0..entries {
                reader.string()?;
                any(reader, depth + 1)?;
            }
            Ok(())
        }
        ANY_ARRAY => {
            if depth >= MAX_ANY_DEPTH {
                return Err(EncodingError::TooDeep { at });
            }
            let values = reader.count_u64(Count::ArrayValues, 1)?;
            for _ in 0..values {
                any(reader, depth + 1)?;
            }
            Ok(())
        }
        tag => Err(EncodingError::UnknownTag {
            what: Tag::Any,
            tag,
            at,
        }),
    }
}

/// The delete set (`IdSet::decode`): `varUint clients`, then per client `varUint client,
/// varUint ranges, (varUint clock, varUint len)*`.
fn delete_set(reader: &mut Reader<'_>, on_range: &mut impl FnMut(Id)) -> Result<(), EncodingError> {
    // A client takes at least two bytes (its ID and range count), a range two (clock, length).
    let clients = reader.count_u32(Count::DeleteSetClients, 2)?;
    for _ in 0..clients {
        let client = reader.client()?;
        let ranges = reader.count_u32(Count::DeleteRanges, 2)?;
        for _ in 0..ranges {
            let at = reader.at();
            let clock = reader.var_u32()?;
            let len = reader.var_u32()?;
            if clock.checked_add(len).is_none() {
                return Err(EncodingError::RangeOverflow { clock, len, at });
            }
            // yrs holds even an empty range pending when it starts at or past the client's
            // clock (fuzzer finding `pending-empty-delete-range`).
            // `clock + len` fits (checked above); an empty range may start at `u32::MAX`.
            on_range((client, clock + (len.max(1) - 1)));
        }
    }
    // yrs ignores whatever follows the delete set, and so does Yjs.
    Ok(())
}

/// yrs's cursor, with its errors turned into [`EncodingError`]s that say where they happened.
struct Reader<'a> {
    cursor: Cursor<'a>,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader {
            cursor: Cursor::new(bytes),
        }
    }

    fn at(&self) -> usize {
        self.cursor.next
    }

    fn remaining(&self) -> usize {
        self.cursor.buf.len().saturating_sub(self.cursor.next)
    }

    fn u8(&mut self) -> Result<u8, EncodingError> {
        let at = self.at();
        self.cursor.read_u8().map_err(|error| read_error(error, at))
    }

    /// `read_var::<u32>`: yrs reads up to ten bytes and wraps, as lib0 does.
    fn var_u32(&mut self) -> Result<u32, EncodingError> {
        let at = self.at();
        self.cursor
            .read_var::<u32>()
            .map_err(|error| read_error(error, at))
    }

    /// `read_var::<u64>` (also what yrs's `read_var::<usize>` reads on 64-bit targets).
    fn var_u64(&mut self) -> Result<u64, EncodingError> {
        let at = self.at();
        self.cursor
            .read_var::<u64>()
            .map_err(|error| read_error(error, at))
    }

    /// Skips a signed varint (an `Any` integer) without yrs's reader, whose eleventh byte
    /// shifts an `i64` by 69 bits. Ten bytes hold 6 + 9 * 7 = 69 bits, more than any `i64`.
    fn var_i64(&mut self) -> Result<(), EncodingError> {
        const MAX_BYTES: usize = 10;
        let at = self.at();
        for _ in 0..MAX_BYTES {
            if self.u8()? & 0b1000_0000 == 0 {
                return Ok(());
            }
        }
        Err(EncodingError::InvalidVarInt { at })
    }

    fn skip(&mut self, len: usize) -> Result<(), EncodingError> {
        let at = self.at();
        self.cursor
            .read_exact(len)
            .map(drop)
            .map_err(|error| read_error(error, at))
    }

    /// `read_buf`: a `u32` length, then that many bytes.
    fn buf(&mut self) -> Result<(), EncodingError> {
        let len = self.var_u32()?;
        let at = self.at();
        // A length beyond the buffer is truncation; `usize` holds any `u32` on the targets
        // ycord builds for, and saturating keeps `read_exact` from overflowing if not.
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.remaining() {
            return Err(EncodingError::Truncated { at });
        }
        self.skip(len)
    }

    /// `read_string`: a buffer that must be UTF-8.
    fn string(&mut self) -> Result<&'a str, EncodingError> {
        let len = self.var_u32()?;
        let at = self.at();
        let bytes = usize::try_from(len)
            .ok()
            .and_then(|len| self.cursor.buf.get(at..at.checked_add(len)?))
            .ok_or(EncodingError::Truncated { at })?;
        self.cursor.next += bytes.len();
        std::str::from_utf8(bytes).map_err(|_| EncodingError::InvalidUtf8 { at })
    }

    /// A client ID (`read_var::<u64>` then `ClientID::new`).
    fn client(&mut self) -> Result<u64, EncodingError> {
        let at = self.at();
        let client = self.var_u64()?;
        if client >= CLIENT_ID_LIMIT {
            return Err(EncodingError::ClientIdOutOfRange { client, at });
        }
        Ok(client)
    }

    /// An item ID: client, then clock.
    fn id(&mut self) -> Result<Id, EncodingError> {
        Ok((self.client()?, self.var_u32()?))
    }

    /// Reads a `u32` count of entries taking at least `min_entry_bytes` each, and checks that
    /// they can fit in the bytes that follow.
    fn count_u32(&mut self, what: Count, min_entry_bytes: u64) -> Result<u64, EncodingError> {
        let at = self.at();
        let count = u64::from(self.var_u32()?);
        self.check_count(what, count, min_entry_bytes, at)?;
        Ok(count)
    }

    /// As [`Reader::count_u32`], for the counts yrs reads as 64 bits.
    fn count_u64(&mut self, what: Count, min_entry_bytes: u64) -> Result<u64, EncodingError> {
        let at = self.at();
        let count = self.var_u64()?;
        self.check_count(what, count, min_entry_bytes, at)?;
        Ok(count)
    }

    fn check_count(
        &self,
        what: Count,
        count: u64,
        min_entry_bytes: u64,
        at: usize,
    ) -> Result<(), EncodingError> {
        let remaining = self.remaining();
        if count.saturating_mul(min_entry_bytes) > remaining as u64 {
            return Err(EncodingError::CountTooLarge {
                what,
                count,
                remaining,
                at,
            });
        }
        Ok(())
    }
}

/// What a yrs cursor read can fail with: the end of the bytes or a varint over ten bytes.
fn read_error(error: ReadError, at: usize) -> EncodingError {
    match error {
        ReadError::EndOfBuffer(_) => EncodingError::Truncated { at },
        _ => EncodingError::InvalidVarInt { at },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode_update;
    use yrs::encoding::write::Write;
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{Any, Array, Doc, Map, Transact, Update};

    /// The largest count a `u32` varint can say, in five bytes.
    const HUGE: u32 = u32::MAX;

    fn var(value: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.write_var(value);
        bytes
    }

    fn concat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// An update holding one item of client 1 at clock 0 in the root type `r`: `info` (the
    /// content type), then `content`, then an empty delete set.
    fn item_update(info: u8, content: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.write_var(1u32); // clients
        bytes.write_var(1u32); // structs
        bytes.write_var(1u64); // client
        bytes.write_var(0u32); // clock
        bytes.write_u8(info);
        bytes.write_var(1u32); // parent info: a root type's name follows
        bytes.write_string("r");
        bytes.extend_from_slice(content);
        bytes.write_var(0u32); // delete set: no clients
        bytes
    }

    /// An update whose only item holds one `Any` value encoded as `value`.
    fn any_update(value: &[u8]) -> Vec<u8> {
        item_update(CONTENT_ANY, &concat(&[&var(1), value]))
    }

    fn assert_count_bomb(bytes: &[u8], expected: Count) {
        match update_v1(bytes) {
            Err(EncodingError::CountTooLarge { what, .. }) => assert_eq!(what, expected),
            other => panic!("{bytes:02x?}: expected a {expected} bomb refusal, got {other:?}"),
        }
        // The room's decoding refuses it before yrs sees it: with the validator's error.
        let error = decode_update(bytes).expect_err("a bomb must not decode");
        assert!(error.contains("cannot fit"), "{error}");
    }

    #[test]
    fn well_formed_items_of_every_content_type_pass() {
        let cases: Vec<Vec<u8>> = vec![
            item_update(CONTENT_DELETED, &var(3)),
            item_update(CONTENT_BINARY, &concat(&[&var(2), &[0xff, 0]])),
            item_update(CONTENT_STRING, &concat(&[&var(2), b"hi"])),
            item_update(CONTENT_EMBED, &concat(&[&var(2), b"{}"])),
            item_update(CONTENT_FORMAT, &concat(&[&var(1), b"b", &var(4), b"true"])),
            item_update(CONTENT_TYPE, &[TYPE_MAP]),
            item_update(CONTENT_TYPE, &concat(&[&[TYPE_XML_ELEMENT], &var(1), b"p"])),
            item_update(CONTENT_TYPE, &[TYPE_XML_HOOK]),
            any_update(&[ANY_INTEGER, 0x80 | 0x3f, 0x7f]),
            any_update(&concat(&[
                &[ANY_OBJECT],
                &var(1),
                &var(1),
                b"k",
                &[ANY_NULL],
            ])),
            item_update(
                CONTENT_DOC,
                &concat(&[&var(1), b"g", &[ANY_OBJECT], &var(0)]),
            ),
        ];
        for bytes in cases {
            assert_eq!(update_v1(&bytes), Ok(()), "{bytes:02x?}");
            Update::decode_v1(&bytes).unwrap_or_else(|error| panic!("{bytes:02x?}: {error}"));
        }
    }

    #[test]
    fn refuses_a_client_count_bomb() {
        // fuzz/findings/session_frames/oom-update-client-count-bomb's update: 2^26 clients.
        assert_count_bomb(&[0x80, 0x80, 0x80, 0x20], Count::Clients);
        // The store_recovery one, 2^26 clients too, with a zero-length log entry prefix.
        assert_count_bomb(&[0x80, 0x80, 0x80, 0x20, 0, 0, 0], Count::Clients);
    }

    #[test]
    fn refuses_a_struct_count_bomb() {
        let bytes = concat(&[&var(1), &var(HUGE.into()), &var(1), &var(0), &var(0)]);
        assert_count_bomb(&bytes, Count::Structs);
        // A count that passes the leading check of the old code: 2^20 structs, 3 clients.
        let bytes = concat(&[&[3], &var(1 << 20), &[1, 0, 0, 0, 0, 0, 0]]);
        assert_count_bomb(&bytes, Count::Structs);
    }

    #[test]
    fn refuses_any_content_count_bombs() {
        assert_count_bomb(
            &item_update(CONTENT_ANY, &var(HUGE.into())),
            Count::AnyContentValues,
        );
        assert_count_bomb(
            &any_update(&concat(&[&[ANY_ARRAY], &var(u64::MAX)])),
            Count::ArrayValues,
        );
        assert_count_bomb(
            &any_update(&concat(&[&[ANY_OBJECT], &var(1 << 40)])),
            Count::ObjectEntries,
        );
        // Deeper down: a bomb inside an array inside an object.
        let nested = concat(&[
            &[ANY_OBJECT],
            &var(1),
            &var(1),
            b"k",
            &[ANY_ARRAY],
            &var(1),
            &[ANY_ARRAY],
            &var(1 << 30),
        ]);
        assert_count_bomb(&any_update(&nested), Count::ArrayValues);
        // A subdocument's options are an `Any` value too.
        let doc = concat(&[&var(1), b"g", &[ANY_OBJECT], &var(1 << 30)]);
        assert_count_bomb(&item_update(CONTENT_DOC, &doc), Count::ObjectEntries);
    }

    #[test]
    fn refuses_legacy_json_content() {
        // Count 1, two strings: what yrs reads as one JSON item of two values.
        let item = item_update(CONTENT_JSON, &concat(&[&var(1), &[1, b'1'], &[1, b'2']]));
        let decoded = Update::decode_v1(&item).expect("yrs reads it");
        // yrs writes it back with a count of 2 and reads three strings: it cannot read it back.
        assert!(Update::decode_v1(&decoded.encode_v1()).is_err());
        assert!(matches!(
            update_v1(&item),
            Err(EncodingError::LegacyJsonContent { .. })
        ));
        // Count bombs in it are refused with it.
        for count in [1 << 28, 1 << 31] {
            let bomb = item_update(CONTENT_JSON, &var(count));
            assert!(matches!(
                update_v1(&bomb),
                Err(EncodingError::LegacyJsonContent { .. })
            ));
        }
    }

    #[test]
    fn refuses_delete_set_count_bombs() {
        // No structs, then a delete set of 2^28 clients.
        assert_count_bomb(&concat(&[&var(0), &var(1 << 28)]), Count::DeleteSetClients);
        // One client with 2^32 - 1 ranges.
        assert_count_bomb(
            &concat(&[&var(0), &var(1), &var(7), &var(HUGE.into())]),
            Count::DeleteRanges,
        );
    }

    #[test]
    fn refuses_state_vector_and_awareness_count_bombs() {
        // fuzz/findings/protocol_decode/oom-state-vector-count-bomb's state vector.
        assert!(matches!(
            state_vector_v1(&[0x80, 0x80, 0x80, 0x80, 0x02]),
            Err(EncodingError::CountTooLarge {
                what: Count::StateVectorEntries,
                ..
            })
        ));
        // fuzz/findings/session_frames/oom-awareness-client-count-bomb's payload.
        assert!(matches!(
            awareness_update(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(EncodingError::CountTooLarge {
                what: Count::AwarenessStates,
                ..
            })
        ));
        // The awareness count is read as 64 bits: a count only `u64` can hold.
        assert!(matches!(
            awareness_update(&var(1 << 40)),
            Err(EncodingError::CountTooLarge { .. })
        ));
    }

    #[test]
    fn counts_match_the_entries_present() {
        // Two clients announced, one present: the count fits the bytes, the walk finds the end.
        let gc = concat(&[&[BLOCK_GC], &var(1 << 20)]);
        let bytes = concat(&[&var(2), &var(1), &var(1), &var(0), &gc]);
        assert!(matches!(
            update_v1(&bytes),
            Err(EncodingError::Truncated { .. })
        ));
        assert!(matches!(
            state_vector_v1(&[2, 1, 0x80, 0x80, 0]),
            Err(EncodingError::Truncated { .. })
        ));
    }

    /// `depth` arrays nested in one another, the innermost one empty.
    fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(2 * depth);
        for level in 0..depth {
            bytes.push(ANY_ARRAY);
            bytes.push(u8::from(level + 1 < depth));
        }
        bytes
    }

    #[test]
    fn bounds_any_nesting() {
        // As deep as serde_json accepts the same value as JSON: passes, and yrs decodes it.
        let deepest = any_update(&nested_arrays(MAX_ANY_DEPTH));
        assert_eq!(update_v1(&deepest), Ok(()));
        decode_update(&deepest).expect("the deepest accepted value decodes");
        let json = format!("{}{}", "[".repeat(MAX_ANY_DEPTH), "]".repeat(MAX_ANY_DEPTH));
        assert!(Any::from_json(&json).is_ok());
        let json = format!(
            "{}{}",
            "[".repeat(MAX_ANY_DEPTH + 1),
            "]".repeat(MAX_ANY_DEPTH + 1)
        );
        assert!(Any::from_json(&json).is_err());

        // One level more is refused; so is a depth that would overflow yrs's stack.
        for depth in [MAX_ANY_DEPTH + 1, 1_000_000] {
            let bytes = any_update(&nested_arrays(depth));
            assert!(
                matches!(update_v1(&bytes), Err(EncodingError::TooDeep { .. })),
                "depth {depth}"
            );
        }
        // Objects count as levels too, and so do a subdocument's options.
        let mut object = Vec::new();
        for _ in 0..=MAX_ANY_DEPTH {
            object.extend_from_slice(&concat(&[&[ANY_OBJECT], &var(1), &var(0)]));
        }
        object.push(ANY_NULL);
        assert!(matches!(
            update_v1(&any_update(&object)),
            Err(EncodingError::TooDeep { .. })
        ));
        let doc = concat(&[&var(1), b"g", &nested_arrays(MAX_ANY_DEPTH + 1)]);
        assert!(matches!(
            update_v1(&item_update(CONTENT_DOC, &doc)),
            Err(EncodingError::TooDeep { .. })
        ));
    }

    #[test]
    fn refuses_what_yrs_would_misread() {
        // A client ID of 2^53: yrs asserts in debug builds and truncates in release builds.
        let client = concat(&[
            &var(1),
            &var(1),
            &var(1 << 53),
            &var(0),
            &[BLOCK_GC],
            &var(1),
        ]);
        assert!(matches!(
            update_v1(&concat(&[&client, &var(0)])),
            Err(EncodingError::ClientIdOutOfRange { .. })
        ));
        assert!(matches!(
            state_vector_v1(&concat(&[&var(1), &var(u64::MAX >> 1), &var(0)])),
            Err(EncodingError::ClientIdOutOfRange { .. })
        ));
        // An eleven-byte `Any` integer: yrs shifts an i64 by 69 bits.
        let mut integer = vec![ANY_INTEGER];
        integer.extend_from_slice(&[0xff; 10]);
        integer.push(0x01);
        assert!(matches!(
            update_v1(&any_update(&integer)),
            Err(EncodingError::InvalidVarInt { .. })
        ));
        // Structs running past u32::MAX (fuzzer finding `block-clock-overflow`).
        let clock = concat(&[&var(1), &var(1), &var(1), &var((HUGE - 1).into())]);
        let gc = concat(&[&clock, &[BLOCK_GC], &var(2), &var(0)]);
        assert!(matches!(
            update_v1(&gc),
            Err(EncodingError::ClockOverflow { .. })
        ));
        // Strings count in UTF-16 code units: "é😀" is three.
        let text = "é😀";
        let clock = concat(&[&var(1), &var(1), &var(1), &var((HUGE - 2).into())]);
        let string = concat(&[&clock, &[0x80 | CONTENT_STRING], &var(1), &var(0)]);
        let string = concat(&[&string, &var(text.len() as u64), text.as_bytes(), &var(0)]);
        assert!(matches!(
            update_v1(&string),
            Err(EncodingError::ClockOverflow { .. })
        ));
        // No structs, then a delete set of one range of client 1.
        let delete_range = |clock: u32, len: u64| {
            concat(&[
                &var(0),
                &var(1),
                &var(1),
                &var(1),
                &var(clock.into()),
                &var(len),
            ])
        };
        // A delete range ending past u32::MAX (fuzzer finding `delete-set-range-overflow`).
        let range = delete_range(HUGE, 1);
        assert!(matches!(
            update_v1(&range),
            Err(EncodingError::RangeOverflow { .. })
        ));
        // An empty range at the last clock fits, and is a reference to that clock.
        let empty = delete_range(HUGE, 0);
        let mut references = Vec::new();
        update_v1_with_references(&empty, |from, to| references.push((from, to)), |_| {})
            .expect("an empty range at the last clock is valid");
        assert_eq!(references, [(None, (1, HUGE))]);
        // Unknown tags and empty blocks.
        for (bytes, name) in [
            // Info 10 is a skip block; with another bit set, an item of content type 10.
            (item_update(0x10 | 10, &[]), "content type 10"),
            (item_update(CONTENT_TYPE, &[7]), "weak link type"),
            (any_update(&[115]), "Any tag 115"),
            (
                concat(&[
                    &var(1),
                    &var(1),
                    &var(1),
                    &var(0),
                    &[BLOCK_SKIP],
                    &var(0),
                    &var(0),
                ]),
                "empty skip",
            ),
            (item_update(CONTENT_STRING, &[1, 0xff]), "invalid UTF-8"),
        ] {
            assert!(update_v1(&bytes).is_err(), "{name}");
            assert!(Update::decode_v1(&bytes).is_err(), "yrs refuses {name} too");
        }
    }

    #[test]
    fn passes_what_yrs_encodes() {
        let doc = Doc::with_client_id(7);
        let map = doc.get_or_insert_map("map");
        let array = doc.get_or_insert_array("array");
        {
            let mut txn = doc.transact_mut();
            let nested =
                Any::from_json(r#"{"a":[1,2.5,{"b":null}],"c":"d","e":true}"#).expect("valid JSON");
            map.insert(&mut txn, "nested", nested);
            map.insert(&mut txn, "bytes", Any::Buffer(vec![1, 2, 3].into()));
            map.insert(&mut txn, "big", Any::from(1i64 << 60));
            array.insert_range(&mut txn, 0, [1, 2, 3]);
            array.remove(&mut txn, 1);
        }
        let update = doc
            .transact()
            .encode_state_as_update_v1(&Default::default());
        assert_eq!(update_v1(&update), Ok(()));
        assert_eq!(
            state_vector_v1(&doc.transact().state_vector().encode_v1()),
            Ok(())
        );
    }

    use yrs::ReadTxn;
}
