//! The server's Prometheus metrics (prometheus-client), rendered as OpenMetrics text for `/metrics`.
//!
//! Exposed families (all prefixed `streamkit_`):
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `connections_active` | gauge | open WebSocket connections |
//! | `connections_accepted_total` | counter | WebSocket connections accepted since start |
//! | `streams_active` | gauge | open logical streams |
//! | `operations_total{op,outcome}` | counter | requests by operation and outcome |
//! | `produce_records_total` | counter | records appended |
//! | `produce_bytes_total` | counter | record payload bytes appended |
//! | `commit_latency_seconds` | histogram | storage commit latency |
//! | `commit_batch_size` | histogram | records per storage commit (group commit) |
//! | `subscriptions_active` | gauge | live segment-status and worker subscriptions |
//! | `presence_workers` | gauge | workers currently present |
//! | `errors_total{kind}` | counter | errors by kind |
//!
//! Label values are static strings or enums, never text from the network, so a client cannot grow the
//! number of series. The `operations_total` series exist at zero from the start; an `errors_total`
//! series appears with the first error of its kind. Gauges that count open things are driven by [`GaugeGuard`]s, which decrement on
//! drop, so an early return or a panic cannot leave a gauge drifting upwards.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A request type (spec §1.3), the `op` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Operation {
    Produce,
    Peek,
    ConsumeSegment,
    ConsumeSpace,
    Consume,
    GetSpaces,
    GetSegments,
    GetStatus,
    SubscribeSegmentStatus,
    SubscribeWorkers,
    LeaseAcquire,
    LeaseRenew,
    LeaseRelease,
}

/// How a request ended, the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Completed successfully.
    Ok,
    /// Failed (storage error, conflict, invalid request, ...).
    Error,
    /// Refused by the store-scope check.
    Denied,
    /// Ended by the client or by the connection going away.
    Cancelled,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 13] = [
        Operation::Produce,
        Operation::Peek,
        Operation::ConsumeSegment,
        Operation::ConsumeSpace,
        Operation::Consume,
        Operation::GetSpaces,
        Operation::GetSegments,
        Operation::GetStatus,
        Operation::SubscribeSegmentStatus,
        Operation::SubscribeWorkers,
        Operation::LeaseAcquire,
        Operation::LeaseRenew,
        Operation::LeaseRelease,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Produce => "produce",
            Operation::Peek => "peek",
            Operation::ConsumeSegment => "consume_segment",
            Operation::ConsumeSpace => "consume_space",
            Operation::Consume => "consume",
            Operation::GetSpaces => "get_spaces",
            Operation::GetSegments => "get_segments",
            Operation::GetStatus => "get_status",
            Operation::SubscribeSegmentStatus => "subscribe_segment_status",
            Operation::SubscribeWorkers => "subscribe_workers",
            Operation::LeaseAcquire => "lease_acquire",
            Operation::LeaseRenew => "lease_renew",
            Operation::LeaseRelease => "lease_release",
        }
    }
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 4] = [Outcome::Ok, Outcome::Error, Outcome::Denied, Outcome::Cancelled];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Denied => "denied",
            Outcome::Cancelled => "cancelled",
        }
    }
}

// Hand-written rather than derived: the derive would use the Rust variant names ("ConsumeSegment"),
// and Prometheus label values are conventionally snake_case.
impl EncodeLabelValue for Operation {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabels {
    op: Operation,
    outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
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
    subscriptions_active: Gauge,
    presence_workers: Gauge,
    errors: Family<ErrorLabels, Counter>,
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
                drop(operations.get_or_create(&OperationLabels { op, outcome }));
            }
        }
        let produce_records = Counter::default();
        let produce_bytes = Counter::default();
        // 100 µs .. ~3.3 s: an fsync on a virtual disk sits in the middle of that range.
        let commit_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        // 1 .. 4096 records per commit.
        let commit_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        let subscriptions_active = Gauge::default();
        let presence_workers = Gauge::default();
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
        registry.register("commit_batch_size", "Records per storage commit", commit_batch_size.clone());
        registry.register(
            "subscriptions_active",
            "Live segment-status and worker subscriptions",
            subscriptions_active.clone(),
        );
        registry.register("presence_workers", "Workers currently present", presence_workers.clone());
        registry.register("errors", "Errors by kind", errors.clone());

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
            subscriptions_active,
            presence_workers,
            errors,
        }
    }

    /// Counts an accepted WebSocket connection; it stays in `connections_active` until the guard drops.
    pub fn connection_opened(&self) -> GaugeGuard {
        self.connections_accepted.inc();
        GaugeGuard::new(&self.connections_active)
    }

    /// Counts an open logical stream until the guard drops.
    pub fn stream_opened(&self) -> GaugeGuard {
        GaugeGuard::new(&self.streams_active)
    }

    /// Counts a live subscription until the guard drops.
    pub fn subscription_opened(&self) -> GaugeGuard {
        GaugeGuard::new(&self.subscriptions_active)
    }

    /// Records the end of a request.
    pub fn operation(&self, op: Operation, outcome: Outcome) {
        self.operations.get_or_create(&OperationLabels { op, outcome }).inc();
    }

    /// Records appended records and their payload bytes.
    pub fn produced(&self, records: u64, bytes: u64) {
        self.produce_records.inc_by(records);
        self.produce_bytes.inc_by(bytes);
    }

    /// Records one storage commit: how long it took and how many records it carried.
    pub fn commit(&self, latency: Duration, records: u64) {
        self.commit_latency.observe(latency.as_secs_f64());
        self.commit_batch_size.observe(records as f64);
    }

    /// Sets the number of present workers (presence is a snapshot, not open/close pairs).
    pub fn set_presence_workers(&self, workers: u64) {
        self.presence_workers.set(i64::try_from(workers).unwrap_or(i64::MAX));
    }

    /// Counts an error of `kind` (a static name such as `"auth"`, `"protocol"`, `"storage"`).
    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&ErrorLabels { kind }).inc();
    }

    /// The OpenMetrics text exposition of every metric (serve it with [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail; an encoder error would only truncate the output.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
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
        let _s = m.stream_opened();
        let sub = m.subscription_opened();
        drop(sub);
        m.operation(Operation::Produce, Outcome::Ok);
        m.operation(Operation::Produce, Outcome::Ok);
        m.operation(Operation::Peek, Outcome::Denied);
        m.produced(3, 300);
        m.commit(Duration::from_millis(2), 3);
        m.set_presence_workers(4);
        m.error("auth");
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
            line_value(&text, "streamkit_operations_total{op=\"peek\",outcome=\"denied\"} ").as_deref(),
            Some("1")
        );
        assert_eq!(line_value(&text, "streamkit_produce_records_total ").as_deref(), Some("3"));
        assert_eq!(line_value(&text, "streamkit_produce_bytes_total ").as_deref(), Some("300"));
        assert_eq!(line_value(&text, "streamkit_commit_latency_seconds_count ").as_deref(), Some("1"));
        assert_eq!(line_value(&text, "streamkit_commit_batch_size_sum ").as_deref(), Some("3.0"));
        assert_eq!(line_value(&text, "streamkit_presence_workers ").as_deref(), Some("4"));
        assert_eq!(line_value(&text, "streamkit_errors_total{kind=\"auth\"} ").as_deref(), Some("1"));
        assert!(text.ends_with("# EOF\n"));
        drop(c2);
        assert_eq!(line_value(&m.render(), "streamkit_connections_active ").as_deref(), Some("0"));
    }
}
