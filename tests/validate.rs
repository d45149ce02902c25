//! The update validator (`ycord::protocol::validate`) against real encodings: every update of
//! the shared editing traces and updates yrs produces for every content type must pass it (no
//! false refusals); whatever it passes, yrs must read without a structural error (the two read
//! the same layout); and the count bombs it refuses cost no memory.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use yrs::encoding::read::Error as ReadError;
use yrs::types::Attrs;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    Any, Array, ArrayPrelim, Doc, GetString, Map, MapPrelim, ReadTxn, StateVector, Text, Transact,
    Update, WriteTxn, Xml, XmlElementPrelim, XmlFragment, XmlTextPrelim,
};

use ycord::metrics::Metrics;
use ycord::protocol::validate;
use ycord::room::{Room, RoomConfig};
use ycord::store::{RoomStore, SledStore};
use ycord_tools::trace::{ConcurrentTrace, SequentialTrace, traces_dir};

fn automerge_updates() -> Vec<Vec<u8>> {
    let trace = SequentialTrace::load(&traces_dir().join("automerge-paper.json.gz")).unwrap();
    trace.to_updates().unwrap().0
}

fn friendsforever_updates() -> Vec<Vec<u8>> {
    let trace = ConcurrentTrace::load(&traces_dir().join("friendsforever.json.gz")).unwrap();
    trace.to_updates().unwrap().updates
}

#[test]
fn every_trace_update_passes() {
    for (name, updates) in [
        ("automerge-paper", automerge_updates()),
        ("friendsforever", friendsforever_updates()),
    ] {
        for (index, update) in updates.iter().enumerate() {
            if let Err(error) = validate::update_v1(update) {
                panic!("{name} update {index} refused: {error}");
            }
        }
        // And the whole document as one update, as a SyncStep2 or a snapshot carries it.
        let doc = Doc::new();
        {
            let mut txn = doc.transact_mut();
            for update in &updates {
                txn.apply_update(Update::decode_v1(update).unwrap())
                    .unwrap();
            }
        }
        let state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        assert_eq!(validate::update_v1(&state), Ok(()), "{name} full state");
        let state_vector = doc.transact().state_vector().encode_v1();
        assert_eq!(validate::state_vector_v1(&state_vector), Ok(()));
    }
}

/// Updates yrs writes for every kind of content: one per transaction of a document using
/// maps, arrays of `Any` values (nested objects and arrays, buffers, big integers, floats),
/// nested shared types, XML elements with attributes, formatted text and embeds,
/// subdocuments, deletions, and the document as a whole; plus a merge that leaves a gap (a
/// skip block) and what a garbage-collected document encodes (GC blocks).
fn yrs_updates() -> Vec<Vec<u8>> {
    let doc = Doc::with_client_id(11);
    let mut updates = Vec::new();
    let mut step = |change: &dyn Fn(&mut yrs::TransactionMut<'_>)| {
        let mut txn = doc.transact_mut();
        change(&mut txn);
        updates.push(txn.encode_update_v1());
    };
    step(&|txn| {
        let map = txn.get_or_insert_map("map");
        let nested = Any::from_json(
            r#"{"a":[1,-2,2.5,1e300,{"b":null,"c":[[],{}]}],"s":"é😀","t":true,"f":false}"#,
        )
        .unwrap();
        map.insert(txn, "nested", nested);
        map.insert(txn, "buffer", Any::Buffer(vec![0, 1, 255].into()));
        map.insert(txn, "big", Any::from(i64::MAX));
        map.insert(txn, "negative", Any::from(-(1i64 << 40)));
        map.insert(txn, "float", Any::from(0.1f64));
        map.insert(txn, "undefined", Any::Undefined);
        map.insert(txn, "null", Any::Null);
        map.insert(
            txn,
            "submap",
            MapPrelim::from([("k".to_owned(), Any::from("v"))]),
        );
    });
    step(&|txn| {
        let array = txn.get_or_insert_array("array");
        array.insert_range(txn, 0, [Any::from(1), Any::from("two"), Any::Null]);
        array.push_back(
            txn,
            Any::from(vec![Any::from(1), Any::from(vec![Any::from(2)])]),
        );
        array.push_back(txn, ArrayPrelim::from([Any::from(true)]));
        array.insert(txn, 1, Any::from(2.5));
    });
    step(&|txn| {
        let array = txn.get_or_insert_array("array");
        array.remove_range(txn, 0, 2);
        let map = txn.get_or_insert_map("map");
        map.remove(txn, "big");
    });
    step(&|txn| {
        let text = txn.get_or_insert_text("text");
        text.insert(txn, 0, "hello wörld 😀");
        let bold = Attrs::from([("bold".into(), Any::from(true))]);
        text.format(txn, 0, 5, bold.clone());
        text.insert_with_attributes(txn, 5, " big", bold);
        text.insert_embed(txn, 3, Any::from_json(r#"{"image":"x.png"}"#).unwrap());
        text.remove_range(txn, 1, 2);
    });
    step(&|txn| {
        let xml = txn.get_or_insert_xml_fragment("xml");
        let paragraph = xml.push_back(txn, XmlElementPrelim::empty("p"));
        paragraph.insert_attribute(txn, "class", "intro");
        let text = paragraph.push_back(txn, XmlTextPrelim::new("xml text"));
        text.format(txn, 0, 3, Attrs::from([("i".into(), Any::from(true))]));
        xml.push_back(txn, XmlTextPrelim::new("tail"));
    });
    step(&|txn| {
        let map = txn.get_or_insert_map("map");
        let mut options =
            yrs::Options::with_guid_and_client_id("sub-guid".into(), yrs::block::ClientID::new(12));
        options.auto_load = true;
        map.insert(txn, "subdoc", Doc::with_options(options));
    });
    updates.push(
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default()),
    );

    // A merge of the first and third of three edits of one client leaves a skip block.
    let edits = Doc::with_client_id(21);
    let text = edits.get_or_insert_text("text");
    let mut parts = Vec::new();
    for word in ["one ", "two ", "three"] {
        let mut txn = edits.transact_mut();
        text.push(&mut txn, word);
        parts.push(txn.encode_update_v1());
    }
    updates.push(yrs::merge_updates_v1([&parts[0], &parts[2]]).unwrap());

    // Deleting a nested type garbage-collects its content: GC blocks in the encoding.
    let collected = Doc::with_client_id(31);
    let array = collected.get_or_insert_array("array");
    {
        let mut txn = collected.transact_mut();
        array.push_back(&mut txn, ArrayPrelim::from([1, 2, 3]));
    }
    {
        let mut txn = collected.transact_mut();
        array.remove(&mut txn, 0);
    }
    updates.push(
        collected
            .transact()
            .encode_state_as_update_v1(&StateVector::default()),
    );
    updates
}

#[test]
fn every_content_type_yrs_writes_passes() {
    let updates = yrs_updates();
    for (index, update) in updates.iter().enumerate() {
        if let Err(error) = validate::update_v1(update) {
            panic!("update {index} ({update:02x?}) refused: {error}");
        }
    }
    // They do hold what they should: applied to a fresh document, in order.
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        for update in &updates[..6] {
            txn.apply_update(Update::decode_v1(update).unwrap())
                .unwrap();
        }
    }
    let txn = doc.transact();
    let text = txn.get_text("text").unwrap();
    assert!(text.get_string(&txn).starts_with('h'));
    assert!(txn.get_map("map").unwrap().get(&txn, "subdoc").is_some());
}

/// xorshift64*: deterministic mutations without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, original: &[u8]) -> Vec<u8> {
    let mut bytes = original.to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.below(bytes.len());
        match rng.below(5) {
            0 if !bytes.is_empty() => bytes[at] ^= 1 << rng.below(8),
            1 if !bytes.is_empty() => bytes[at] = rng.next() as u8,
            2 => bytes.insert(at, rng.next() as u8),
            3 if !bytes.is_empty() => {
                bytes.remove(at);
            }
            _ => bytes.truncate(at),
        }
    }
    bytes
}

/// Whatever the validator passes, yrs reads without a structural error and without
/// panicking: if the two disagreed about where a field is, a count the validator never saw
/// could reach yrs. (The reverse, yrs reading what the validator refuses, is not checked on
/// mutants: decoding an unchecked mutant with yrs is exactly the allocation bomb.) Only JSON
/// may still fail in yrs: the validator checks that it is UTF-8, not that it is JSON.
#[test]
fn yrs_reads_whatever_the_validator_passes() {
    let mut originals = yrs_updates();
    originals.extend(automerge_updates().into_iter().step_by(2_000));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut passed, mut total) = (0, 0);
    for original in &originals {
        for _ in 0..300 {
            let bytes = mutate(&mut rng, original);
            total += 1;
            if validate::update_v1(&bytes).is_err() {
                continue;
            }
            passed += 1;
            let decoded = catch_unwind(AssertUnwindSafe(|| Update::decode_v1(&bytes).map(drop)));
            match decoded {
                Ok(Ok(())) | Ok(Err(ReadError::InvalidJSON(_))) => {}
                Ok(Err(error)) => panic!("passed {bytes:02x?}, yrs fails: {error}"),
                Err(_) => panic!("passed {bytes:02x?}, yrs panics decoding it"),
            }
        }
    }
    // The mutants exercise both sides.
    assert!(
        passed > total / 20 && passed < total,
        "{passed} of {total} passed"
    );
}

/// Set in the child process [`bombs_cost_no_memory`] runs each bomb in.
const BOMB_CHILD: &str = "YCORD_VALIDATE_BOMB_CHILD";

/// The bombs, as a client or the store would hand them to a room: (name, update or awareness).
fn bombs() -> Vec<(&'static str, Vec<u8>)> {
    let var = |value: u64| {
        let mut bytes = Vec::new();
        yrs::encoding::write::Write::write_var(&mut bytes, value);
        bytes
    };
    // One item of client 1 at clock 0 in root type "r": its info byte then `content`.
    let item = |info: u8, content: &[u8]| [&[1, 1, 1, 0, info, 1, 1, b'r'], content, &[0]].concat();
    vec![
        ("clients", var(1 << 26)),
        ("structs", [&[1][..], &var(1 << 28), &[1, 0]].concat()),
        ("any-values", item(8, &var(1 << 28))),
        (
            "any-array",
            item(8, &[&[1, 117][..], &var(1 << 28)].concat()),
        ),
        (
            "any-object",
            item(8, &[&[1, 118][..], &var(1 << 26)].concat()),
        ),
        // Refused as legacy JSON content before its count is looked at.
        ("json", item(2, &var(1 << 28))),
        ("delete-set-clients", [&[0][..], &var(1 << 28)].concat()),
        ("delete-ranges", [&[0, 1, 1][..], &var(1 << 28)].concat()),
        ("awareness", var(1 << 26)),
    ]
}

/// Peak resident memory of this process so far, in KiB (Linux).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Runs one bomb through a room (`control`: through yrs alone) and prints how much the peak
/// resident memory grew.
fn run_bomb_child(name: &str) {
    let store: Arc<dyn RoomStore> = Arc::new(SledStore::temporary().unwrap());
    let config = RoomConfig::without_limits();
    let room =
        Arc::new(Room::load("bomb".into(), store, config, Arc::new(Metrics::new()), None).unwrap());
    let before = peak_rss_kib();
    if name == "control" {
        // The `any-object` bomb straight into yrs: what every bomb did before the validator.
        let bytes = [&[118u8][..], &[0x80, 0x80, 0x80, 0x20]].concat();
        let mut cursor = yrs::encoding::read::Cursor::new(&bytes);
        assert!(Any::decode(&mut cursor).is_err());
    } else {
        let (_, bytes) = bombs().into_iter().find(|(bomb, _)| *bomb == name).unwrap();
        let refused = if name == "awareness" {
            room.apply_awareness(&bytes, &mut HashSet::new()).is_err()
        } else {
            room.apply_update(&bytes).is_err()
        };
        assert!(refused, "{name} was not refused");
    }
    println!("peak growth: {} KiB", peak_rss_kib() - before);
}

/// Each bomb is refused with no memory to speak of: run in a child process of its own (this
/// test binary, filtered to this test), whose peak resident memory is compared before and
/// after. The control (a bomb decoded by yrs directly) shows the measurement sees a bomb.
#[cfg(target_os = "linux")]
#[test]
fn bombs_cost_no_memory() {
    if let Ok(name) = std::env::var(BOMB_CHILD) {
        run_bomb_child(&name);
        return;
    }
    let growth = |name: &str| -> u64 {
        let output = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "bombs_cost_no_memory", "--nocapture"])
            .env(BOMB_CHILD, name)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{name}: {stdout}");
        stdout
            .lines()
            .find_map(|line| line.strip_prefix("peak growth: "))
            .and_then(|value| value.trim_end_matches(" KiB").parse().ok())
            .unwrap_or_else(|| panic!("{name}: no measurement in {stdout}"))
    };
    let control = growth("control");
    assert!(control > 64 * 1024, "the control grew only {control} KiB");
    for (name, _) in bombs() {
        let grown = growth(name);
        assert!(grown < 1024, "the {name} bomb grew the peak by {grown} KiB");
    }
}

/// What the validator costs next to what it protects: every automerge-paper update validated,
/// then decoded by yrs. Prints the timings; run with
/// `cargo test --test validate -- --ignored --nocapture validation_cost` (numbers in a debug
/// build mean little: ycord is unoptimized there, yrs is not).
#[test]
#[ignore = "a measurement, not a check"]
fn validation_cost() {
    let updates = automerge_updates();
    let bytes: usize = updates.iter().map(Vec::len).sum();
    let (mut best_validate, mut best_decode) = (Duration::MAX, Duration::MAX);
    for round in 0..7 {
        let started = Instant::now();
        for update in &updates {
            validate::update_v1(update).unwrap();
        }
        let validated = started.elapsed();
        let started = Instant::now();
        for update in &updates {
            std::hint::black_box(Update::decode_v1(update).unwrap());
        }
        let decoded = started.elapsed();
        println!(
            "round {round}: {} updates, {bytes} bytes: validate {validated:?}, \
             yrs decode {decoded:?} ({:.1}%)",
            updates.len(),
            100.0 * validated.as_secs_f64() / decoded.as_secs_f64()
        );
        best_validate = best_validate.min(validated);
        best_decode = best_decode.min(decoded);
    }
    println!("best of 7: validate {best_validate:?}, yrs decode {best_decode:?}");
}
