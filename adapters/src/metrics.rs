//! The server's Prometheus metrics (prometheus-client), rendered as OpenMetrics text for `/metrics`.
//!
//! Exposed families (all prefixed `streamkit_`):
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `connections_active` | gauge | open WebSocket connections |
//! | `connections_accepted_total` | counter | WebSocket connections accepted since start |
//! | `streams_active` | gauge | logical streams the engine serves (requests in progress) |
//! | `operations_total{op,outcome}` | counter | requests by operation and outcome (`ok`, `error`, `rejected`, `cancelled`) |
//! | `produce_records_total` | counter | records appended (acknowledged to a producer) |
//! | `produce_bytes_total` | counter | payload bytes of those records |
//! | `commit_latency_seconds` | histogram | a produce commit from request to durable result (group wait included) |
//! | `commit_batch_size` | histogram | write batches per store transaction (group commit: >1 means shared fsyncs) |
//! | `store_transactions_total` | counter | store write transactions |
//! | `store_fsyncs_total` | counter | transactions that fsynced (durable stores only) |
//! | `stores_open` | gauge | stores with an open database |
//! | `subscriptions_active` | gauge | live segment-status subscriptions and worker-inventory observers |
//! | `presence_workers` | gauge | registered worker streams |
//! | `received_frames_total`, `received_bytes_total` | counter | WebSocket messages read and their bytes |
//! | `sent_frames_total`, `sent_bytes_total` | counter | WebSocket messages written and their bytes |
//! | `errors_total{kind}` | counter | errors by kind (see [`ErrorKind`]) |
//! | `refusals_total{reason}` | counter | requests or records refused by a request limit or a store quota (`name`, `lease_field`, `record_metadata`, `worker_metadata`, `consume_spaces`, …) |
//!
//! Label values are static strings or enums, never text from the network, so a client cannot grow the
//! number of series. The `operations_total` series exist at zero from the start; an `errors_total`
//! series appears with the first error of its kind. Gauges that count open things are driven by
//! [`GaugeGuard`]s, which decrement on drop, and the stream gauges by each engine shard's
//! [`EngineGauges`], which takes back its part on drop, so an early return or a panic cannot leave a
//! gauge drifting upwards.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use streamkit_proto::node::Refusal;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub use streamkit_proto::server::{EngineStats, Operation, Outcome};

/// Kinds of errors, the `kind` label of `errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A handshake refused with 401 (token missing, invalid, expired, no usable scope).
    Auth,
    /// Any other refused or dropped handshake (bad request, not ready, timeouts, too many pending).
    Handshake,
    /// A connection closed before its request was read because `max_pending_handshakes_per_ip`
    /// connections from its address were already pending (one client opening many sockets, or many
    /// clients behind one proxy).
    PendingPerIp,
    /// An upgrade refused (503) because `max_connections` were open.
    ConnectionLimit,
    /// A data frame naming a store outside the token's scopes (`access denied` error frame).
    AccessDenied,
    /// A new stream over `max_streams_per_connection` (`too many active streams`).
    TooManyStreams,
    /// A stream whose receive queue overflowed (`stream receive buffer overloaded`).
    StreamOverload,
    /// A store whose database could not be opened.
    StoreOpen,
    /// A stream refused with `store unavailable` (failed open or open circuit).
    StoreUnavailable,
    /// A storage read or commit that failed.
    Storage,
    /// A connection that ended on a protocol violation (oversized or undecodable frame, heartbeat
    /// timeout, write queue overload).
    Protocol,
    /// A connection that ended on a socket error.
    Transport,
    /// A connection closed because its token expired.
    TokenExpired,
}

impl ErrorKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Auth => "auth",
            ErrorKind::Handshake => "handshake",
            ErrorKind::PendingPerIp => "pending_per_ip",
            ErrorKind::ConnectionLimit => "connection_limit",
            ErrorKind::AccessDenied => "access_denied",
            ErrorKind::TooManyStreams => "too_many_streams",
            ErrorKind::StreamOverload => "stream_overload",
            ErrorKind::StoreOpen => "store_open",
            ErrorKind::StoreUnavailable => "store_unavailable",
            ErrorKind::Storage => "storage",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Transport => "transport",
            ErrorKind::TokenExpired => "token_expired",
        }
    }
}

// Hand-written rather than derived: the derive would use the Rust variant names ("ConsumeSegment"),
// and Prometheus label values are conventionally snake_case.
impl EncodeLabelValue for ErrorKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    kind: ErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

/// The registry and every metric of the server. Share it behind an `Arc`; recording is lock-free
/// (atomics), rendering takes the family locks briefly.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections_active: Gauge,
    connections_accepted: Counter,
    streams_active: Gauge,
    operations: Family<OperationLabels, Counter>,
    produce_records: Counter,
    produce_bytes: Counter,
    commit_latency: Histogram,
    commit_batch_size: Histogram,
    store_transactions: Counter,
    store_fsyncs: Counter,
    stores_open: Gauge,
    subscriptions_active: Gauge,
    presence_workers: Gauge,
    received_frames: Counter,
    received_bytes: Counter,
    sent_frames: Counter,
    sent_bytes: Counter,
    errors: Family<ErrorLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("streamkit");
        let connections_active = Gauge::default();
        let connections_accepted = Counter::default();
        let streams_active = Gauge::default();
        let operations = Family::<OperationLabels, Counter>::default();
        // Every (op, outcome) series exists from the start at 0: a series that appears only with its
        // first event hides that event from `rate()`/`increase()`, and the set is small and fixed.
        for op in Operation::ALL {
            for outcome in Outcome::ALL {
                drop(
                    operations.get_or_create(&OperationLabels { op: op.as_str(), outcome: outcome.as_str() }),
                );
            }
        }
        let produce_records = Counter::default();
        let produce_bytes = Counter::default();
        // 100 µs .. ~3.3 s: an fsync on a virtual disk sits in the middle of that range.
        let commit_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        // 1 .. 4096 batches per transaction (the store worker's default group cap).
        let commit_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        let store_transactions = Counter::default();
        let store_fsyncs = Counter::default();
        let stores_open = Gauge::default();
        let subscriptions_active = Gauge::default();
        let presence_workers = Gauge::default();
        let received_frames = Counter::default();
        let received_bytes = Counter::default();
        let sent_frames = Counter::default();
        let sent_bytes = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();

        registry.register("connections_active", "Open WebSocket connections", connections_active.clone());
        registry.register(
            "connections_accepted",
            "WebSocket connections accepted since start",
            connections_accepted.clone(),
        );
        registry.register("streams_active", "Open logical streams", streams_active.clone());
        registry.register("operations", "Requests by operation and outcome", operations.clone());
        registry.register("produce_records", "Records appended", produce_records.clone());
        registry.register("produce_bytes", "Record payload bytes appended", produce_bytes.clone());
        registry.register_with_unit(
            "commit_latency",
            "Storage commit latency",
            Unit::Seconds,
            commit_latency.clone(),
        );
        registry.register(
            "commit_batch_size",
            "Write batches per store transaction",
            commit_batch_size.clone(),
        );
        registry.register("store_transactions", "Store write transactions", store_transactions.clone());
        registry.register("store_fsyncs", "Store transactions that fsynced", store_fsyncs.clone());
        registry.register("stores_open", "Stores with an open database", stores_open.clone());
        registry.register(
            "subscriptions_active",
            "Live segment-status and worker subscriptions",
            subscriptions_active.clone(),
        );
        registry.register("presence_workers", "Registered worker streams", presence_workers.clone());
        registry.register("received_frames", "WebSocket messages read", received_frames.clone());
        registry.register("received_bytes", "Bytes of WebSocket messages read", received_bytes.clone());
        registry.register("sent_frames", "WebSocket messages written", sent_frames.clone());
        registry.register("sent_bytes", "Bytes of WebSocket messages written", sent_bytes.clone());
        registry.register("errors", "Errors by kind", errors.clone());
        let refusals = Family::<RefusalLabels, Counter>::default();
        for refusal in Refusal::all() {
            drop(refusals.get_or_create(&RefusalLabels { reason: refusal.as_str() }));
        }
        registry.register("refusals", "Requests refused by a limit or a quota", refusals.clone());

        Self {
            registry,
            connections_active,
            connections_accepted,
            streams_active,
            operations,
            produce_records,
            produce_bytes,
            commit_latency,
            commit_batch_size,
            store_transactions,
            store_fsyncs,
            stores_open,
            subscriptions_active,
            presence_workers,
            received_frames,
            received_bytes,
            sent_frames,
            sent_bytes,
            errors,
            refusals,
        }
    }

    /// Counts an accepted WebSocket connection; it stays in `connections_active` until the guard drops.
    pub fn connection_opened(&self) -> GaugeGuard {
        self.connections_accepted.inc();
        GaugeGuard::new(&self.connections_active)
    }

    /// The stream gauges of one engine shard, at zero.
    pub fn engine_gauges(&self) -> EngineGauges {
        EngineGauges {
            streams: self.streams_active.clone(),
            subscriptions: self.subscriptions_active.clone(),
            workers: self.presence_workers.clone(),
            counted: EngineStats::default(),
        }
    }

    /// Counts an open store until the guard drops.
    pub fn store_opened(&self) -> GaugeGuard {
        GaugeGuard::new(&self.stores_open)
    }

    /// Records the end of a request.
    pub fn operation(&self, op: Operation, outcome: Outcome) {
        self.operations.get_or_create(&OperationLabels { op: op.as_str(), outcome: outcome.as_str() }).inc();
    }

    /// Records appended records and their payload bytes.
    pub fn produced(&self, records: u64, bytes: u64) {
        self.produce_records.inc_by(records);
        self.produce_bytes.inc_by(bytes);
    }

    /// Records how long one produce commit took, from the request to its durable result.
    pub fn commit_latency(&self, latency: Duration) {
        self.commit_latency.observe(latency.as_secs_f64());
    }

    /// Records one store transaction: how many write batches it carried and whether it fsynced.
    pub fn transaction(&self, batches: usize, fsynced: bool) {
        self.store_transactions.inc();
        if fsynced {
            self.store_fsyncs.inc();
        }
        self.commit_batch_size.observe(batches as f64);
    }

    /// Records WebSocket messages read.
    pub fn received(&self, frames: u64, bytes: u64) {
        self.received_frames.inc_by(frames);
        self.received_bytes.inc_by(bytes);
    }

    /// Records WebSocket messages written.
    pub fn sent(&self, frames: u64, bytes: u64) {
        self.sent_frames.inc_by(frames);
        self.sent_bytes.inc_by(bytes);
    }

    /// Counts a request or record refused by a limit or a quota.
    pub fn refused(&self, refusal: Refusal) {
        self.refusals.get_or_create(&RefusalLabels { reason: refusal.as_str() }).inc();
    }

    /// Counts an error of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        self.error_n(kind, 1);
    }

    /// Counts `n` errors of `kind` (nothing when `n` is 0, so no empty series appears).
    pub fn error_n(&self, kind: ErrorKind, n: u64) {
        if n > 0 {
            self.errors.get_or_create(&ErrorLabels { kind }).inc_by(n);
        }
    }

    /// The OpenMetrics text exposition of every metric (serve it with [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail; an encoder error would only truncate the output.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What one engine shard adds to the stream gauges (`streams_active`, `subscriptions_active`,
/// `presence_workers`): [`EngineGauges::update`] moves them by the change of the shard's
/// [`EngineStats`]; dropping it takes back what it added.
#[derive(Debug)]
pub struct EngineGauges {
    streams: Gauge,
    subscriptions: Gauge,
    workers: Gauge,
    counted: EngineStats,
}

impl EngineGauges {
    /// Brings the gauges to the shard's current counts.
    pub fn update(&mut self, stats: EngineStats) {
        if stats == self.counted {
            return;
        }
        let delta = |now: u64, before: u64| now as i64 - before as i64;
        self.streams.inc_by(delta(stats.streams, self.counted.streams));
        self.subscriptions.inc_by(delta(stats.subscriptions, self.counted.subscriptions));
        self.workers.inc_by(delta(stats.workers, self.counted.workers));
        self.counted = stats;
    }
}

impl Drop for EngineGauges {
    fn drop(&mut self) {
        self.update(EngineStats::default());
    }
}

/// Keeps a gauge incremented while alive.
#[derive(Debug)]
#[must_use = "the gauge is decremented when the guard is dropped"]
pub struct GaugeGuard {
    gauge: Gauge,
}

impl GaugeGuard {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self { gauge: gauge.clone() }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, prefix: &str) -> Option<String> {
        text.lines().find(|l| l.starts_with(prefix)).map(|l| l[prefix.len()..].trim().to_owned())
    }

    #[test]
    fn records_and_renders() {
        let m = Metrics::new();
        let c1 = m.connection_opened();
        let c2 = m.connection_opened();
        drop(c1);
        let mut shard = m.engine_gauges();
        shard.update(EngineStats { streams: 2, subscriptions: 1, workers: 1 });
        shard.update(EngineStats { streams: 1, subscriptions: 0, workers: 1 });
        let _store = m.store_opened();
        m.operation(Operation::Produce, Outcome::Ok);
        m.operation(Operation::Produce, Outcome::Ok);
        m.operation(Operation::Peek, Outcome::Rejected);
        m.produced(3, 300);
        m.commit_latency(Duration::from_millis(2));
        m.transaction(3, true);
        m.transaction(1, false);
        m.received(2, 20);
        m.sent(5, 50);
        m.error(ErrorKind::Auth);
        m.error_n(ErrorKind::Storage, 0);
        let text = m.render();
        assert_eq!(line_value(&text, "streamkit_connections_active ").as_deref(), Some("1"));
        assert_eq!(line_value(&text, "streamkit_connections_accepted_total ").as_deref(), Some("2"));
        assert_eq!(line_value(&text, "streamkit_streams_active ").as_deref(), Some("1"));
        assert_eq!(line_value(&text, "streamkit_subscriptions_active ").as_deref(), Some("0"));
        assert_eq!(
            line_value(&text, "streamkit_operations_total{op=\"produce\",outcome=\"ok\"} ").as_deref(),
            Some("2")
        );
        assert_eq!(
            line_value(&text, "streamkit_operations_total{op=\"peek\",outcome=\"rejected\"} ").as_deref(),
            Some("1")
        );
        assert_eq!(line_value(&text, "streamkit_produce_records_total ").as_deref(), Some("3"));
        assert_eq!(line_value(&text, "streamkit_produce_bytes_total ").as_deref(), Some("300"));
        assert_eq!(line_value(&text, "streamkit_commit_latency_seconds_count ").as_deref(), Some("1"));
        assert_eq!(line_value(&text, "streamkit_commit_batch_size_sum ").as_deref(), Some("4.0"));
        assert_eq!(line_value(&text, "streamkit_store_transactions_total ").as_deref(), Some("2"));
        assert_eq!(line_value(&text, "streamkit_store_fsyncs_total ").as_deref(), Some("1"));
        assert_eq!(line_value(&text, "streamkit_stores_open ").as_deref(), Some("1"));
        assert_eq!(line_value(&text, "streamkit_presence_workers ").as_deref(), Some("1"));
        assert_eq!(line_value(&text, "streamkit_received_bytes_total ").as_deref(), Some("20"));
        assert_eq!(line_value(&text, "streamkit_sent_frames_total ").as_deref(), Some("5"));
        assert_eq!(line_value(&text, "streamkit_errors_total{kind=\"auth\"} ").as_deref(), Some("1"));
        assert!(!text.contains("kind=\"storage\""), "no series for zero errors");
        assert!(text.ends_with("# EOF\n"));
        drop(c2);
        drop(shard);
        let text = m.render();
        assert_eq!(line_value(&text, "streamkit_connections_active ").as_deref(), Some("0"));
        assert_eq!(
            line_value(&text, "streamkit_streams_active ").as_deref(),
            Some("0"),
            "a shard's streams go with it"
        );
        assert_eq!(line_value(&text, "streamkit_presence_workers ").as_deref(), Some("0"));
    }
}
