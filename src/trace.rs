//! Real editing traces (`shared/data/traces/`, CC BY 4.0) turned into Yjs updates, for the
//! benches, the load tool and tests.
//!
//! A sequential trace is `{startContent, endContent, txns: [{patches: [[pos, del, ins]]}]}`
//! with positions in Unicode code points (both shared traces are pure ASCII). Replaying it against a `yrs` text gives one v1
//! update per transaction: exactly what an editor would have sent.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use yrs::{Doc, GetString, Text, Transact};

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

/// Where the shared traces live relative to this crate (`../shared/data/traces/`), unless
/// `YCORD_TRACES_DIR` says otherwise.
pub fn traces_dir() -> PathBuf {
    std::env::var_os("YCORD_TRACES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/traces"))
}
