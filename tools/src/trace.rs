//! Real editing traces (`benches/data/`, CC BY 4.0, attribution in `benches/data/README.md`)
//! turned into Yjs updates, for the benches, the load tool and tests.
//!
//! A sequential trace is `{startContent, endContent, txns: [{patches: [[pos, del, ins]]}]}`
//! with positions in Unicode code points (both shared traces are pure ASCII). Replaying it against a `yrs` text gives one v1
//! update per transaction: exactly what an editor would have sent.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, Text, Transact, Update};

/// Name of the shared text the traces are replayed into (what y-websocket demos use).
pub const TEXT_NAME: &str = "text";

#[derive(Debug, Error)]
pub enum TraceError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("replaying the trace gave a different text than its endContent")]
    Mismatch,
    /// A concurrent trace this replay cannot follow (see [`ConcurrentTrace::to_updates`]).
    #[error("concurrent trace, txn {txn}: {reason}")]
    Unsupported { txn: usize, reason: String },
    /// The per-agent documents of a concurrent replay differ after merging everything.
    #[error("the agents' documents did not converge after merging every txn")]
    Diverged,
}

/// A sequential editing trace as stored on disk.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SequentialTrace {
    #[serde(default)]
    pub start_content: String,
    pub end_content: String,
    pub txns: Vec<TraceTxn>,
}

/// One transaction: patches `(position, deleted, inserted)` applied in order.
#[derive(Debug, Deserialize)]
pub struct TraceTxn {
    pub patches: Vec<(u32, u32, String)>,
}

impl SequentialTrace {
    /// Reads a gzipped JSON trace.
    pub fn load(path: &Path) -> Result<Self, TraceError> {
        load_gzipped_json(path)
    }

    /// Replays the trace into a fresh document, returning one v1 update per transaction and
    /// the final document. Fails if the result differs from `endContent`.
    pub fn to_updates(&self) -> Result<(Vec<Vec<u8>>, Doc), TraceError> {
        // Both shared traces are pure ASCII, so byte offsets equal code-point positions.
        let doc = Doc::new();
        let text = doc.get_or_insert_text(TEXT_NAME);
        let mut updates = Vec::with_capacity(self.txns.len() + 1);
        if !self.start_content.is_empty() {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, &self.start_content);
            updates.push(txn.encode_update_v1());
        }
        for trace_txn in &self.txns {
            let mut txn = doc.transact_mut();
            for (position, deleted, inserted) in &trace_txn.patches {
                if *deleted > 0 {
                    text.remove_range(&mut txn, *position, *deleted);
                }
                if !inserted.is_empty() {
                    text.insert(&mut txn, *position, inserted);
                }
            }
            updates.push(txn.encode_update_v1());
        }
        if text.get_string(&doc.transact()) != self.end_content {
            return Err(TraceError::Mismatch);
        }
        Ok((updates, doc))
    }
}

/// Reads and parses a gzipped JSON file.
fn load_gzipped_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TraceError> {
    let file = std::fs::File::open(path).map_err(|source| TraceError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut json = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut json)
        .map_err(|source| TraceError::Io {
            path: path.to_owned(),
            source,
        })?;
    serde_json::from_str(&json).map_err(|source| TraceError::Json {
        path: path.to_owned(),
        source,
    })
}

/// Where the traces live: the repository's `benches/data/`, so a clone has everything its tests
/// and benches read. This crate sits in the repository's `tools/`, hence the parent of its
/// manifest directory. `YCORD_TRACES_DIR` points elsewhere (e.g. a folder of other traces in the
/// same format for `ycord-bench`).
pub fn traces_dir() -> PathBuf {
    std::env::var_os("YCORD_TRACES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/data"))
}

/// `trace`, or else the automerge-paper trace in [`traces_dir`]: what the load tool replays
/// unless told otherwise.
pub fn trace_or_default(trace: Option<&Path>) -> PathBuf {
    trace.map_or_else(
        || traces_dir().join("automerge-paper.json.gz"),
        Path::to_path_buf,
    )
}

/// A concurrent editing trace (`friendsforever`) as stored on disk: `{kind: "concurrent",
/// endContent, numAgents, txns: [{parents, agent, patches}]}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConcurrentTrace {
    pub end_content: String,
    pub num_agents: usize,
    pub txns: Vec<ConcurrentTxn>,
}

/// One transaction of a concurrent trace. `parents` are indexes of earlier txns (empty: the
/// empty document; several: a merge of those versions); the patches' positions are relative to
/// that parent version.
#[derive(Debug, Deserialize)]
pub struct ConcurrentTxn {
    pub parents: Vec<usize>,
    pub agent: usize,
    pub patches: Vec<(u32, u32, String)>,
}

/// The result of replaying a concurrent trace.
#[derive(Debug)]
pub struct ConcurrentReplay {
    /// One v1 update per txn, in txn order. Every txn's parents come before it, so applying
    /// them in this order never leaves anything pending.
    pub updates: Vec<Vec<u8>>,
    /// One document per agent (client ID `agent + 1`), each holding every txn at the end.
    pub docs: Vec<Doc>,
    /// The text the documents converged to.
    pub text: String,
}

impl ConcurrentTrace {
    /// Reads a gzipped JSON concurrent trace.
    pub fn load(path: &Path) -> Result<Self, TraceError> {
        load_gzipped_json(path)
    }

    /// Replays the trace with one `yrs` document per agent, returning one v1 update per txn.
    ///
    /// Before txn `i` of agent `a` is applied, `a`'s document integrates every ancestor of `i`
    /// it lacks (found by walking the parents graph, stopping at txns it already has), using
    /// the updates recorded when those txns were first applied. The document then holds
    /// exactly `i`'s parent version, provided every txn descends from its agent's previous txn
    /// (true of `friendsforever`; checked, [`TraceError::Unsupported`] otherwise), so the
    /// patches' positions apply as recorded.
    ///
    /// At the end every document integrates every txn and they must agree
    /// ([`TraceError::Diverged`] otherwise). The converged text is returned, not checked
    /// against `endContent`: Yjs orders concurrent inserts at the same place by client ID, the
    /// trace's source CRDT by its own rule, so in general the two may interleave concurrent
    /// runs differently. For `friendsforever`, with client IDs in agent order (`agent + 1`) the
    /// result equals `endContent`; with the IDs in reverse order it has the same length but
    /// differs.
    pub fn to_updates(&self) -> Result<ConcurrentReplay, TraceError> {
        let count = self.txns.len();
        let unsupported = |txn: usize, reason: String| TraceError::Unsupported { txn, reason };
        let docs: Vec<Doc> = (0..self.num_agents)
            .map(|agent| Doc::with_client_id(agent as u64 + 1))
            .collect();
        // has[agent][txn]: whether the agent's document holds the txn.
        let mut has = vec![vec![false; count]; self.num_agents];
        let mut last_own: Vec<Option<usize>> = vec![None; self.num_agents];
        let mut updates: Vec<Vec<u8>> = Vec::with_capacity(count);
        let mut stack = Vec::new();
        let mut missing = Vec::new();
        for (index, trace_txn) in self.txns.iter().enumerate() {
            let agent = trace_txn.agent;
            let Some(doc) = docs.get(agent) else {
                return Err(unsupported(index, format!("agent {agent} out of range")));
            };
            let has_agent = &mut has[agent];
            // Walk the ancestors the agent's document lacks.
            let mut reached_last_own = last_own[agent].is_none();
            stack.clear();
            missing.clear();
            for &parent in &trace_txn.parents {
                if parent >= index {
                    return Err(unsupported(
                        index,
                        format!("parent {parent} is not earlier"),
                    ));
                }
                stack.push(parent);
            }
            while let Some(txn) = stack.pop() {
                if Some(txn) == last_own[agent] {
                    reached_last_own = true;
                }
                if has_agent[txn] {
                    continue;
                }
                has_agent[txn] = true;
                missing.push(txn);
                stack.extend_from_slice(&self.txns[txn].parents);
            }
            if !reached_last_own {
                return Err(unsupported(
                    index,
                    "does not descend from its agent's previous txn".to_owned(),
                ));
            }
            integrate(doc, &mut missing, &updates).map_err(|reason| unsupported(index, reason))?;
            let text = doc.get_or_insert_text(TEXT_NAME);
            let mut txn = doc.transact_mut();
            for (position, deleted, inserted) in &trace_txn.patches {
                let len = text.len(&txn);
                if position.checked_add(*deleted).is_none_or(|end| end > len) {
                    return Err(unsupported(
                        index,
                        format!("patch ({position}, {deleted}) beyond the text's {len} chars"),
                    ));
                }
                if *deleted > 0 {
                    text.remove_range(&mut txn, *position, *deleted);
                }
                if !inserted.is_empty() {
                    text.insert(&mut txn, *position, inserted);
                }
            }
            updates.push(txn.encode_update_v1());
            drop(txn);
            has_agent[index] = true;
            last_own[agent] = Some(index);
        }
        // Merge everything everywhere; the documents must agree.
        let mut texts = Vec::with_capacity(docs.len());
        for (doc, has_agent) in docs.iter().zip(&has) {
            missing.clear();
            missing.extend((0..count).filter(|&txn| !has_agent[txn]));
            integrate(doc, &mut missing, &updates).map_err(|reason| unsupported(count, reason))?;
            texts.push(
                doc.get_or_insert_text(TEXT_NAME)
                    .get_string(&doc.transact()),
            );
        }
        let text = texts.pop().unwrap_or_default();
        if texts.iter().any(|other| *other != text) {
            return Err(TraceError::Diverged);
        }
        Ok(ConcurrentReplay {
            updates,
            docs,
            text,
        })
    }
}

/// Applies the recorded updates of `txns` to `doc` in txn order (a topological order), in one
/// transaction; fails if one does not decode or leaves something pending.
fn integrate(doc: &Doc, txns: &mut [usize], updates: &[Vec<u8>]) -> Result<(), String> {
    if txns.is_empty() {
        return Ok(());
    }
    txns.sort_unstable();
    let mut txn = doc.transact_mut();
    for &index in txns.iter() {
        let update = Update::decode_v1(&updates[index]).map_err(|error| error.to_string())?;
        txn.apply_update(update)
            .map_err(|error| error.to_string())?;
    }
    if txn.store().pending_update().is_some() || txn.store().pending_ds().is_some() {
        return Err("integrating the ancestors left updates pending".to_owned());
    }
    Ok(())
}
