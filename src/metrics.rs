//! Prometheus metrics: one [`Metrics`] value per server, passed to whoever counts (no global),
//! rendered in the text exposition format at `GET /metrics`.
//!
//! Names start with `ycord_`; counters end in `_total` (the encoder appends it). Room names
//! never become label values: their number is unbounded.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A label naming a reason, a limit or a result: always from a fixed, small set.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

/// Every metric ycord exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections_open: Gauge,
    pub connections: Counter,
    pub rooms_loaded: Gauge,
    /// Joins that found the room in memory (`hit`) or had to load it from the store (`miss`).
    pub room_lookups: Family<Reason, Counter>,
    pub room_evictions: Counter,
    pub updates_received: Counter,
    pub update_bytes_received: Counter,
    pub awareness_received: Counter,
    /// Stateless messages received from Hocuspocus clients.
    pub stateless_received: Counter,
    /// Stateless frames queued to members (relayed messages and ycord's roster events).
    pub stateless_sent: Counter,
    /// Stateless frames dropped on a member's full queue.
    pub stateless_dropped: Counter,
    /// Documents open on Hocuspocus sockets now (each is one connection of its room).
    pub documents_open: Gauge,
    /// Frames queued to members (one per member per broadcast).
    pub broadcast_frames: Counter,
    pub bytes_sent: Counter,
    pub rejected_messages: Family<Reason, Counter>,
    pub slow_client_disconnects: Counter,
    pub limit_hits: Family<Reason, Counter>,
    pub auth_failures: Family<Reason, Counter>,
    pub persist_write_seconds: Histogram,
    pub persist_flush_seconds: Histogram,
    pub compactions: Counter,
    pub storage_bytes: Gauge<u64, AtomicU64>,
    pub webhooks_sent: Counter,
    pub webhooks_failed: Counter,
    pub webhook_events_dropped: Counter,
    /// 1 while the store refuses writes (see `store::health`), else 0.
    pub store_failing: Gauge,
    /// Failed store operations, by `op`: append, compact, flush, check.
    pub store_errors: Family<Op, Counter>,
    /// Rooms taken out of service after a panic inside their critical section.
    pub rooms_broken: Counter,
    /// ExApp mode: permission answers from Nextcloud (or its failure), by `reason`:
    /// read_write, read_only, none, unavailable (cached answers are not counted).
    pub nextcloud_lookups: Family<Reason, Counter>,
    /// ExApp mode: open sessions whose permission Nextcloud changed, by `reason`: revoked,
    /// read_only, read_write.
    pub permission_changes: Family<Reason, Counter>,
}

/// A label naming a store operation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    pub op: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ycord");
        let metrics = Metrics {
            connections_open: Gauge::default(),
            connections: Counter::default(),
            rooms_loaded: Gauge::default(),
            room_lookups: Family::default(),
            room_evictions: Counter::default(),
            updates_received: Counter::default(),
            update_bytes_received: Counter::default(),
            awareness_received: Counter::default(),
            stateless_received: Counter::default(),
            stateless_sent: Counter::default(),
            stateless_dropped: Counter::default(),
            documents_open: Gauge::default(),
            broadcast_frames: Counter::default(),
            bytes_sent: Counter::default(),
            rejected_messages: Family::default(),
            slow_client_disconnects: Counter::default(),
            limit_hits: Family::default(),
            auth_failures: Family::default(),
            // 1 µs .. ~1 s
            persist_write_seconds: Histogram::new(exponential_buckets(1e-6, 4.0, 11)),
            // 100 µs .. ~26 s
            persist_flush_seconds: Histogram::new(exponential_buckets(1e-4, 4.0, 10)),
            compactions: Counter::default(),
            storage_bytes: Gauge::default(),
            webhooks_sent: Counter::default(),
            webhooks_failed: Counter::default(),
            webhook_events_dropped: Counter::default(),
            store_failing: Gauge::default(),
            store_errors: Family::default(),
            rooms_broken: Counter::default(),
            nextcloud_lookups: Family::default(),
            permission_changes: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "connections_open",
            "WebSocket connections open now",
            metrics.connections_open.clone(),
        );
        r.register(
            "connections",
            "WebSocket connections accepted",
            metrics.connections.clone(),
        );
        r.register(
            "rooms_loaded",
            "Rooms in memory",
            metrics.rooms_loaded.clone(),
        );
        r.register(
            "room_lookups",
            "Room joins by result: hit (in memory) or miss (loaded from the store)",
            metrics.room_lookups.clone(),
        );
        r.register(
            "room_evictions",
            "Idle rooms unloaded from memory",
            metrics.room_evictions.clone(),
        );
        r.register(
            "updates_received",
            "Document updates received from clients",
            metrics.updates_received.clone(),
        );
        r.register_with_unit(
            "update_received",
            "Bytes of document updates received",
            Unit::Bytes,
            metrics.update_bytes_received.clone(),
        );
        r.register(
            "stateless_received",
            "Stateless messages received from Hocuspocus clients",
            metrics.stateless_received.clone(),
        );
        r.register(
            "stateless_sent",
            "Stateless frames queued to members: relayed messages and roster events",
            metrics.stateless_sent.clone(),
        );
        r.register(
            "stateless_dropped",
            "Stateless frames dropped on a member's full queue",
            metrics.stateless_dropped.clone(),
        );
        r.register(
            "documents_open",
            "Documents open on Hocuspocus sockets",
            metrics.documents_open.clone(),
        );
        r.register(
            "awareness_received",
            "Awareness messages received",
            metrics.awareness_received.clone(),
        );
        r.register(
            "broadcast_frames",
            "Frames queued to room members",
            metrics.broadcast_frames.clone(),
        );
        r.register_with_unit(
            "sent",
            "Bytes written to WebSockets",
            Unit::Bytes,
            metrics.bytes_sent.clone(),
        );
        r.register(
            "rejected_messages",
            "Client messages rejected, by reason",
            metrics.rejected_messages.clone(),
        );
        r.register(
            "slow_client_disconnects",
            "Clients closed with 1013 for falling behind",
            metrics.slow_client_disconnects.clone(),
        );
        r.register(
            "nextcloud_lookups",
            "ExApp mode: file permissions asked of Nextcloud, by result (read_write, read_only, none, unavailable)",
            metrics.nextcloud_lookups.clone(),
        );
        r.register(
            "permission_changes",
            "ExApp mode: open sessions whose file permission changed (revoked, read_only, read_write)",
            metrics.permission_changes.clone(),
        );
        r.register(
            "limit_hits",
            "Requests or messages refused by a configured limit, by limit",
            metrics.limit_hits.clone(),
        );
        r.register(
            "auth_failures",
            "Refused tokens, by reason",
            metrics.auth_failures.clone(),
        );
        r.register_with_unit(
            "persist_write",
            "Latency of appending one update to the store",
            Unit::Seconds,
            metrics.persist_write_seconds.clone(),
        );
        r.register_with_unit(
            "persist_flush",
            "Latency of one store flush",
            Unit::Seconds,
            metrics.persist_flush_seconds.clone(),
        );
        r.register(
            "compactions",
            "Room compactions written",
            metrics.compactions.clone(),
        );
        r.register_with_unit(
            "storage",
            "Bytes the store takes on disk",
            Unit::Bytes,
            metrics.storage_bytes.clone(),
        );
        r.register(
            "webhooks_sent",
            "Webhook deliveries acknowledged",
            metrics.webhooks_sent.clone(),
        );
        r.register(
            "webhooks_failed",
            "Webhook deliveries abandoned after every retry",
            metrics.webhooks_failed.clone(),
        );
        r.register(
            "webhook_events_dropped",
            "Webhook events dropped because a queue was full",
            metrics.webhook_events_dropped.clone(),
        );
        r.register(
            "store_failing",
            "1 while the store refuses writes after a failure, until it recovers",
            metrics.store_failing.clone(),
        );
        r.register(
            "store_errors",
            "Failed store operations, by operation",
            metrics.store_errors.clone(),
        );
        r.register(
            "rooms_broken",
            "Rooms taken out of service after an internal failure (a panic in yrs)",
            metrics.rooms_broken.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Counts a refused message or request.
    pub fn reject(&self, reason: &'static str) {
        self.rejected_messages
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// Counts a hit of a configured limit.
    pub fn limit_hit(&self, limit: &'static str) {
        self.limit_hits
            .get_or_create(&Reason { reason: limit })
            .inc();
    }

    /// Counts a failed store operation.
    pub fn store_error(&self, op: &'static str) {
        self.store_errors.get_or_create(&Op { op }).inc();
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_names_and_total_suffixes() {
        let metrics = Metrics::new();
        metrics.connections.inc();
        metrics.reject("malformed");
        let text = metrics.render();
        assert!(text.contains("ycord_connections_total 1"), "{text}");
        assert!(
            text.contains("ycord_rejected_messages_total{reason=\"malformed\"} 1"),
            "{text}"
        );
        assert!(text.contains("ycord_update_received_bytes_total"), "{text}");
        assert!(
            text.contains("ycord_persist_flush_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("ycord_store_failing 0"), "{text}");
        metrics.store_error("flush");
        assert!(
            metrics
                .render()
                .contains("ycord_store_errors_total{op=\"flush\"} 1"),
            "{text}"
        );
    }
}
