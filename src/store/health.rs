//! Whether the store takes writes: shared by the registry, every room and the readiness probe.
//!
//! A failed write (append, compaction, flush) marks the store *failing*: rooms refuse new
//! updates (their clients are closed with 1011 and told to resend), joins are refused, `/readyz`
//! answers 503 and `ycord_store_failing` is 1. Nothing already applied is dropped: it stays in
//! the rooms' memory. The flusher then retries ([`crate::rooms::Rooms::flush`]): it recovers the
//! store, rewrites every loaded room as a snapshot from memory and flushes; once a whole round
//! succeeded without a new failure, the store is healthy again.
//!
//! Every failure also bumps a *generation*. A room remembers the generation at which it last
//! wrote a full snapshot; while they differ its next write must be a snapshot, because the
//! failure may have left a hole in its log (a lost append, or writes the store dropped when it
//! was reopened) that would make later log entries unloadable.
//!
//! Shutdown *closes* the store to new updates the moment it begins, so that nothing is applied
//! after the final flush.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::StoreError;
use crate::metrics::Metrics;

/// The store operation that failed, as the `op` label of `ycord_store_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Append,
    Compact,
    Flush,
    /// The readiness probe's test write, or reopening the store to recover.
    Check,
}

impl StoreOp {
    pub fn label(self) -> &'static str {
        match self {
            StoreOp::Append => "append",
            StoreOp::Compact => "compact",
            StoreOp::Flush => "flush",
            StoreOp::Check => "check",
        }
    }
}

/// Why rooms refuse an update right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The store failed and has not recovered.
    Failing,
    /// Shutdown began.
    Closed,
}

/// See the module documentation.
#[derive(Debug)]
pub struct StoreHealth {
    failing: AtomicBool,
    closed: AtomicBool,
    generation: AtomicU64,
    metrics: Arc<Metrics>,
}

impl StoreHealth {
    pub fn new(metrics: Arc<Metrics>) -> StoreHealth {
        StoreHealth {
            failing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            metrics,
        }
    }

    /// Records a failed write: the store is failing until [`StoreHealth::recovered`].
    /// A write refused because its room was deleted is no failure of the store.
    pub fn failed(&self, op: StoreOp, room: Option<&str>, error: &StoreError) {
        if matches!(error, StoreError::RoomDeleted(_)) {
            return;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.metrics.store_error(op.label());
        if !self.failing.swap(true, Ordering::AcqRel) {
            self.metrics.store_failing.set(1);
        }
        tracing::error!(
            op = op.label(),
            room = room.unwrap_or("-"),
            %error,
            "store write failed: refusing updates until the store recovers; what rooms \
             applied stays in memory"
        );
    }

    /// Marks the store healthy again, if no failure happened since `generation` was read.
    /// Returns whether it is healthy now.
    pub fn recovered(&self, generation: u64) -> bool {
        if self.generation() != generation {
            return false;
        }
        if self.failing.swap(false, Ordering::AcqRel) {
            self.metrics.store_failing.set(0);
            tracing::warn!(
                "store recovered: every loaded room was written again; updates accepted"
            );
        }
        true
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// The number of failures so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Refuses updates from now on: shutdown began.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether rooms may apply an update now.
    pub fn accepting(&self) -> Result<(), Refused> {
        if self.is_closed() {
            Err(Refused::Closed)
        } else if self.is_failing() {
            Err(Refused::Failing)
        } else {
            Ok(())
        }
    }
}
