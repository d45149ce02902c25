//! The shared editing traces replay to their recorded final text.

use ycord::trace::{SequentialTrace, traces_dir};

#[test]
fn automerge_paper_replays_to_its_end_content() {
    let trace = SequentialTrace::load(&traces_dir().join("automerge-paper.json.gz")).unwrap();
    let (updates, _doc) = trace.to_updates().unwrap();
    assert_eq!(updates.len(), 259_778);
}
