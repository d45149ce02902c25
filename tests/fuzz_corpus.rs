//! Replays the fuzz corpus on the stable toolchain: every file in `fuzz/corpus/<target>/` (the
//! committed seeds and regression inputs) and in `fuzz/artifacts/<target>/` (crashes libFuzzer
//! saved, if any; `oom-*` ones are skipped) goes through the same `ycord::fuzzing` function as
//! the fuzz target.
//!
//! The seeds are written by `cargo test --test fuzz_corpus -- --ignored write_seeds`; inputs a
//! fuzzer found are added by hand (see `fuzz/README.md`). Known, unfixed findings live in
//! `fuzz/findings/` and are replayed only by the ignored `known_findings` test.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use ycord::protocol::{
    encode_auth_denied, encode_awareness, encode_query_awareness, encode_sync_step1,
    encode_sync_step2, encode_update,
};
use yrs::sync::Awareness;
use yrs::updates::encoder::Encode;
use yrs::{
    Array, ArrayPrelim, Doc, Map, ReadTxn, StateVector, Text, Transact, WriteTxn, XmlFragment,
    XmlTextPrelim,
};

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("protocol_decode", ycord::fuzzing::protocol_decode),
    ("session_frames", ycord::fuzzing::session_frames),
    ("store_recovery", ycord::fuzzing::store_recovery),
    ("auth_token", ycord::fuzzing::auth_token),
    ("hocuspocus_decode", ycord::fuzzing::hocuspocus_decode),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("reading a corpus directory").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn is_oom(file: &Path) -> bool {
    file.file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("oom-"))
}

/// A memory-safety finding: only AddressSanitizer tells, and replaying it here is undefined
/// behaviour, not a check.
fn is_asan_only(file: &Path) -> bool {
    file.file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("asan-"))
}

#[test]
fn every_corpus_and_artifact_input_replays_without_panicking() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for kind in ["corpus", "artifacts"] {
        let Ok(entries) = fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for entry in entries {
            let dir = entry.unwrap().path();
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let target = TARGETS
                .iter()
                .find(|(target, _)| *target == name)
                .unwrap_or_else(|| panic!("{} names no fuzz target", dir.display()))
                .1;
            for file in files(&dir) {
                // libFuzzer's `oom-*` inputs allocate without panicking: nothing to check on
                // stable but time and memory (see `fuzz/findings/README.md`).
                if is_oom(&file) {
                    continue;
                }
                let data = fs::read(&file).unwrap();
                replayed += 1;
                if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                    failures.push(file.display().to_string());
                }
            }
        }
    }
    assert!(
        replayed > 0,
        "no corpus found under {}",
        fuzz_dir().display()
    );
    assert!(failures.is_empty(), "inputs that panic: {failures:#?}");
}

/// Replays `fuzz/findings/` (see its README): fails while any known finding still panics.
/// `oom-*` inputs are skipped (they allocate without panicking, which only a fuzzer's malloc
/// limit reports), and so are `asan-*` ones (only AddressSanitizer reports them).
#[test]
#[ignore = "known unfixed findings: fails until they are fixed"]
fn known_findings() {
    let mut still_panicking = Vec::new();
    for (target, run) in TARGETS {
        for file in files(&fuzz_dir().join("findings").join(target)) {
            if is_oom(&file) || is_asan_only(&file) {
                continue;
            }
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let data = fs::read(&file).unwrap();
            if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                still_panicking.push(format!("{target}/{name}"));
            }
        }
    }
    assert!(
        still_panicking.is_empty(),
        "findings that still panic: {still_panicking:#?}"
    );
}

#[test]
fn every_target_has_seeds() {
    for (target, _) in TARGETS {
        let seeds = files(&fuzz_dir().join("corpus").join(target));
        assert!(!seeds.is_empty(), "fuzz/corpus/{target} has no seeds");
    }
}

/// Writes the seed corpus. Deterministic (fixed client IDs), so rerunning it changes nothing.
#[test]
#[ignore = "writes fuzz/corpus; run by hand after changing the input formats"]
fn write_seeds() {
    for (target, seeds) in [
        ("protocol_decode", protocol_seeds()),
        ("session_frames", session_seeds()),
        ("store_recovery", store_seeds()),
        ("auth_token", auth_seeds()),
        ("hocuspocus_decode", hocuspocus_seeds()),
    ] {
        let dir = fuzz_dir().join("corpus").join(target);
        fs::create_dir_all(&dir).unwrap();
        for (name, data) in seeds {
            fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        }
    }
}

/// Edits made by one client, each returned as the v1 update it produced.
struct Client {
    doc: Doc,
}

impl Client {
    fn new(id: u64) -> Self {
        Client {
            doc: Doc::with_client_id(id),
        }
    }

    fn edit(&self, f: impl FnOnce(&Doc, &mut yrs::TransactionMut)) -> Vec<u8> {
        let mut txn = self.doc.transact_mut();
        f(&self.doc, &mut txn);
        txn.encode_update_v1()
    }

    fn state_vector(&self) -> Vec<u8> {
        self.doc.transact().state_vector().encode_v1()
    }
}

fn text_edits() -> (Client, Vec<Vec<u8>>) {
    let client = Client::new(1);
    let text = client.doc.get_or_insert_text("text");
    let insert = client.edit(|_, txn| text.insert(txn, 0, "hello world"));
    let delete = client.edit(|_, txn| text.remove_range(txn, 5, 6));
    let format = client.edit(|_, txn| {
        let bold = yrs::types::Attrs::from([("bold".into(), true.into())]);
        text.format(txn, 0, 5, bold);
    });
    (client, vec![insert, delete, format])
}

fn structured_edit() -> Vec<u8> {
    Client::new(2).edit(|_, txn| {
        let map = txn.get_or_insert_map("map");
        map.insert(txn, "key", "value");
        map.insert(txn, "n", 42);
        let array = txn.get_or_insert_array("array");
        array.push_back(txn, 1);
        let nested = array.push_back(txn, ArrayPrelim::default());
        nested.push_back(txn, "nested");
        let xml = txn.get_or_insert_xml_fragment("xml");
        xml.push_back(txn, XmlTextPrelim::new("text"));
    })
}

/// An update holding most kinds of content `protocol::validate` walks: nested `Any` objects
/// and arrays, a buffer, a float, a big integer, an embed and an XML element with an attribute
/// (under 255 bytes, to fit one `session_frames` record). Every object has one key: yrs writes
/// `Any` objects in hash order, and seeds must be deterministic. No subdocument, for the same
/// reason (its options are such an object); `regression-leak-subdocument-room-never-freed`
/// holds one.
fn every_content_edit() -> Vec<u8> {
    use yrs::{Any, Xml, XmlElementPrelim};
    let update = Client::new(4).edit(|_, txn| {
        let map = txn.get_or_insert_map("m");
        let nested = Any::from_json(r#"{"a":[1,2.5,true,{"b":null}]}"#).expect("JSON");
        map.insert(txn, "any", nested);
        map.insert(txn, "buf", Any::Buffer(vec![0, 255].into()));
        map.insert(txn, "big", Any::from(i64::MAX));
        let text = txn.get_or_insert_text("t");
        text.insert_embed(txn, 0, Any::from_json(r#"{"img":"x"}"#).expect("JSON"));
        let xml = txn.get_or_insert_xml_fragment("x");
        let element = xml.push_back(txn, XmlElementPrelim::empty("p"));
        element.insert_attribute(txn, "k", "v");
    });
    assert_eq!(ycord::protocol::validate::update_v1(&update), Ok(()));
    update
}

/// An update inserting 150 characters: two of them exceed `session_frames`' small limit.
fn long_text(index: usize) -> Vec<u8> {
    let client = Client::new(10 + index as u64);
    let text = client.doc.get_or_insert_text("text");
    client.edit(|_, txn| text.insert(txn, 0, &"x".repeat(150)))
}

fn awareness(client: u64, state: Option<&str>) -> Vec<u8> {
    let mut awareness = Awareness::new(Doc::with_client_id(client));
    match state {
        Some(state) => awareness.set_local_state_raw(state),
        None => {
            awareness.set_local_state_raw("{}");
            awareness.clean_local_state();
        }
    }
    awareness
        .update()
        .expect("encoding an awareness update")
        .encode_v1()
}

fn concat(frames: &[&[u8]]) -> Vec<u8> {
    frames.concat()
}

fn protocol_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let (client, edits) = text_edits();
    let empty_sv = StateVector::default().encode_v1();
    vec![
        ("sync-step1-empty", encode_sync_step1(&empty_sv).to_vec()),
        (
            "sync-step1",
            encode_sync_step1(&client.state_vector()).to_vec(),
        ),
        ("sync-step2", encode_sync_step2(&edits[0]).to_vec()),
        ("update-text", encode_update(&edits[1]).to_vec()),
        (
            "update-structured",
            encode_update(&structured_edit()).to_vec(),
        ),
        (
            "awareness",
            encode_awareness(&awareness(3, Some(r#"{"user":{"name":"ada"}}"#))).to_vec(),
        ),
        ("query-awareness", encode_query_awareness().to_vec()),
        ("auth-denied", encode_auth_denied("read-only").to_vec()),
        (
            "update-every-content",
            encode_update(&every_content_edit()).to_vec(),
        ),
        (
            "several-messages",
            concat(&[
                &encode_update(&edits[0]),
                &encode_query_awareness(),
                &encode_awareness(&awareness(3, None)),
            ]),
        ),
        ("truncated-varint", vec![0, 2, 0x80]),
    ]
}

/// Every message a provider sends, for document "doc" (and one with a session suffix), the Pong,
/// and a few malformed frames.
fn hocuspocus_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use ycord::protocol::hocuspocus::{PONG, frame, key_prefix, stateless_body};
    let doc = key_prefix("doc");
    let (client, edits) = text_edits();
    // Auth Token "" and provider 4.8's version, as the stock provider sends it.
    let auth = frame(&doc, &[2, 0, 0, 5, b'4', b'.', b'8', b'.', b'0']).to_vec();
    vec![
        ("auth", auth),
        (
            "sync-step1",
            frame(&doc, &encode_sync_step1(&client.state_vector())).to_vec(),
        ),
        (
            "sync-step2",
            frame(&doc, &encode_sync_step2(&edits[0])).to_vec(),
        ),
        ("update", frame(&doc, &encode_update(&edits[1])).to_vec()),
        (
            "awareness",
            frame(
                &doc,
                &encode_awareness(&awareness(3, Some(r#"{"user":"ada"}"#))),
            )
            .to_vec(),
        ),
        (
            "query-awareness",
            frame(&doc, &encode_query_awareness()).to_vec(),
        ),
        (
            "stateless",
            frame(&doc, &stateless_body(r#"{"follow":1}"#)).to_vec(),
        ),
        ("close", frame(&doc, &[7]).to_vec()),
        (
            "session-key",
            frame(&key_prefix("doc\0session-1"), &encode_query_awareness()).to_vec(),
        ),
        ("pong", PONG.to_vec()),
        ("server-only-type", frame(&doc, &[6, 0]).to_vec()),
        ("truncated-key", vec![9, b'd']),
    ]
}

/// A `session_frames` record: a length byte and a frame.
fn record(frame: &[u8]) -> Vec<u8> {
    assert!(frame.len() < 0xff, "seed frame too long: {}", frame.len());
    let mut record = vec![frame.len() as u8];
    record.extend_from_slice(frame);
    record
}

const RECONNECT: &[u8] = &[0xff, 0];
const COMPACT: &[u8] = &[0xff, 1];
const RESTART: &[u8] = &[0xff, 2];
const EXPIRE: &[u8] = &[0xff, 3];

fn session(flags: u8, records: &[&[u8]]) -> Vec<u8> {
    let mut input = vec![flags];
    for record in records {
        input.extend_from_slice(record);
    }
    input
}

fn session_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let (client, edits) = text_edits();
    let empty_sv = StateVector::default().encode_v1();
    let update = |bytes: &[u8]| record(&encode_update(bytes));
    let step1 = record(&encode_sync_step1(&empty_sv));
    let present = record(&encode_awareness(&awareness(
        5,
        Some(r#"{"user":{"name":"ada"},"cursor":null}"#),
    )));
    let gone = record(&encode_awareness(&awareness(5, None)));
    let query = record(&encode_query_awareness());
    vec![
        (
            "text-edits-with-restarts",
            session(
                0,
                &[
                    &step1,
                    &update(&edits[0]),
                    RESTART,
                    &update(&edits[1]),
                    COMPACT,
                    &update(&edits[2]),
                    RESTART,
                    &record(&encode_sync_step1(&client.state_vector())),
                ],
            ),
        ),
        (
            "out-of-order-updates",
            session(
                0,
                &[
                    &update(&edits[2]),
                    &update(&edits[1]),
                    RESTART,
                    &update(&edits[0]),
                    RESTART,
                ],
            ),
        ),
        (
            "pending-update-compacted",
            session(
                0,
                &[&update(&edits[1]), COMPACT, RESTART, &update(&edits[0])],
            ),
        ),
        (
            "structured-and-sync-step2",
            session(
                0,
                &[
                    &record(&encode_sync_step2(&structured_edit())),
                    &step1,
                    RESTART,
                ],
            ),
        ),
        (
            "awareness-lifecycle",
            session(
                0,
                &[&present, &query, EXPIRE, &gone, &present, RECONNECT, &query],
            ),
        ),
        (
            "read-only",
            session(
                1,
                &[
                    &step1,
                    &record(&encode_sync_step2(&[0, 0])),
                    &update(&edits[0]),
                    &present,
                ],
            ),
        ),
        (
            "document-limit",
            session(2, &[&update(&long_text(0)), &update(&long_text(1))]),
        ),
        (
            "malformed-then-reconnect",
            session(0, &[&record(&[0, 2, 3, 1, 2, 3]), &update(&edits[0])]),
        ),
        (
            "several-messages-in-a-frame",
            session(
                0,
                &[&record(&concat(&[
                    &encode_update(&edits[0]),
                    &encode_awareness(&awareness(5, Some("{}"))),
                    &encode_sync_step1(&empty_sv),
                ]))],
            ),
        ),
        (
            "every-content-with-restart",
            session(0, &[&update(&every_content_edit()), RESTART, &step1]),
        ),
    ]
}

/// A `store_recovery` record: tag, length byte, sequence byte and body.
fn store_record(tag: u8, seq: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 0xff, "seed body too long: {}", body.len());
    let mut record = vec![tag, body.len() as u8 + 1, seq];
    record.extend_from_slice(body);
    record
}

fn store_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let (_, edits) = text_edits();
    let mut snapshot_garbage = vec![0, 20, 1];
    snapshot_garbage.extend_from_slice(&[0; 16]);
    snapshot_garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
    vec![
        (
            "snapshot-and-log",
            concat(&[
                &store_record(1, 1, &edits[0]),
                &store_record(2, 2, &edits[1]),
                &store_record(2, 3, &edits[2]),
            ]),
        ),
        (
            "log-only",
            concat(&[
                &store_record(2, 0, &edits[0]),
                &store_record(2, 1, &structured_edit()),
            ]),
        ),
        (
            "log-out-of-order",
            concat(&[
                &store_record(2, 0, &edits[2]),
                &store_record(2, 1, &edits[0]),
            ]),
        ),
        (
            "log-covered-by-snapshot",
            concat(&[
                &store_record(2, 0, &edits[0]),
                &store_record(1, 5, &edits[0]),
                &store_record(2, 6, &edits[1]),
            ]),
        ),
        ("snapshot-not-lz4", snapshot_garbage),
        (
            "snapshot-unknown-format",
            store_record(0, 7, b"not a snapshot"),
        ),
        (
            "log-entry-not-an-update",
            concat(&[
                &store_record(2, 0, b"garbage"),
                &store_record(2, 1, &edits[0]),
            ]),
        ),
        ("log-key-without-seq", store_record(3, 1, b"xvalue")),
        ("unknown-key-kind", store_record(3, 7, b"0123456value")),
    ]
}

fn token(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(ycord::fuzzing::AUTH_SECRET),
    )
    .expect("signing a token")
}

fn lines(lines: &[&str]) -> Vec<u8> {
    lines.join("\n").into_bytes()
}

fn auth_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // 2100-01-01: the seeds stay valid for as long as anyone runs them.
    let exp = 4_102_444_800u64;
    let rw = token(json!({"exp": exp, "sub": "ada", "rooms": ["doc", "file:*"], "mode": "rw"}));
    let admin = token(json!({"exp": exp, "rooms": [], "admin": true}));
    let expired = token(json!({"exp": 1_000_000, "rooms": ["*"]}));
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": exp, "rooms": ["*"]}),
        &EncodingKey::from_secret(b"another secret"),
    )
    .expect("signing a token");
    let unsigned = format!("{}.", forged.rsplit_once('.').expect("a JWT has dots").0);
    let query = format!("a=1&token={rw}");
    let bearer = format!("Bearer {admin}");
    vec![
        (
            "valid-rw-token",
            lines(&[
                &rw,
                "file:notes",
                &query,
                &bearer,
                "/yjs/file%3Anotes",
                "/yjs/",
            ]),
        ),
        (
            "admin-token",
            lines(&[&admin, "doc", "", &bearer, "/doc", "/"]),
        ),
        (
            "expired-token",
            lines(&[&expired, "doc", "token=", "", "/", "/"]),
        ),
        (
            "forged-token",
            lines(&[&forged, "doc", "", "bearer  x ", "/%ff", "/"]),
        ),
        (
            "unsigned-token",
            lines(&[&unsigned, "doc", "token=%zz", "", "/a+b", "/"]),
        ),
        (
            "signed-claims",
            lines(&[
                r#"{"exp":4102444800,"rooms":["doc*"],"mode":"rw","admin":true,"sub":"x"}"#,
                "document",
                "token=a+b%20c",
                "Bearer",
                "/yjs/%E2%9C%93",
                "/yjs/",
            ]),
        ),
        (
            "signed-claims-odd-types",
            lines(&[r#"{"exp":"soon","rooms":"doc","mode":"admin"}"#, "doc"]),
        ),
    ]
}
