//! The editing traces in `benches/data/` replay to their recorded final text.

use ycord_tools::trace::{SequentialTrace, traces_dir};

#[test]
fn automerge_paper_replays_to_its_end_content() {
    let trace = SequentialTrace::load(&traces_dir().join("automerge-paper.json.gz")).unwrap();
    let (updates, _doc) = trace.to_updates().unwrap();
    assert_eq!(updates.len(), 259_778);
}

#[test]
fn friendsforever_replay_converges() {
    use ycord_tools::trace::{ConcurrentTrace, TEXT_NAME};
    use yrs::{GetString, Transact};
    let trace = ConcurrentTrace::load(&traces_dir().join("friendsforever.json.gz")).unwrap();
    let replay = trace.to_updates().unwrap();
    assert_eq!(replay.updates.len(), 26_078);
    assert_eq!(replay.docs.len(), 2);
    // Every agent's document holds the converged text (checked by the replay too).
    for doc in &replay.docs {
        let text = doc.get_or_insert_text(TEXT_NAME);
        assert_eq!(text.get_string(&doc.transact()), replay.text);
    }
    // With client IDs in agent order, Yjs orders this trace's concurrent inserts as its
    // source CRDT did.
    assert_eq!(replay.text, trace.end_content);
}
