//! The Prometheus metrics, encoded by `GET /metrics` in the OpenMetrics text format.
//!
//! Counters and the histogram are updated as things happen; gauges that describe the cache
//! (rows, age) are set from the current state at each scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::sync::SyncOutcome;

/// Upper bounds of the sync duration buckets, in seconds: a sync takes seconds to minutes.
const SYNC_DURATION_BUCKETS: [f64; 11] = [
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
];

/// `result` of a sync.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// How a successful sync read the table.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// A request: its route template (never the query) and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub status: u16,
}

/// An alert: its event and whether it was delivered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub event: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Every metric, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub syncs: Family<ResultLabels, Counter>,
    pub sync_kinds: Family<KindLabels, Counter>,
    pub export_bytes: Counter,
    pub sync_duration: Histogram,
    pub rows: Gauge,
    pub age_seconds: Gauge<f64, AtomicU64>,
    pub last_success_timestamp: Gauge<f64, AtomicU64>,
    pub stale_after_seconds: Gauge<f64, AtomicU64>,
    pub sync_in_progress: Gauge,
    pub consecutive_failures: Gauge,
    pub http_requests: Family<HttpLabels, Counter>,
    pub sse_subscribers: Gauge,
    pub alerts: Family<AlertLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pma_cache");
        let syncs = Family::<ResultLabels, Counter>::default();
        for result in ["success", "failure"] {
            syncs.get_or_create(&ResultLabels { result }).inc_by(0);
        }
        registry.register(
            "syncs",
            "Finished syncs by result, each counted once after its retries",
            syncs.clone(),
        );
        let sync_kinds = Family::<KindLabels, Counter>::default();
        for kind in ["full", "row_hash", "cursor"] {
            sync_kinds.get_or_create(&KindLabels { kind }).inc_by(0);
        }
        registry.register(
            "sync_kinds",
            "Successful syncs by how they read the table: a full export, or the changes by row digest or by cursor",
            sync_kinds.clone(),
        );
        let export_bytes = Counter::default();
        registry.register(
            "export_bytes",
            "CSV bytes phpMyAdmin produced for successful syncs",
            export_bytes.clone(),
        );
        let sync_duration = Histogram::new(SYNC_DURATION_BUCKETS);
        registry.register(
            "sync_duration_seconds",
            "Duration of each finished sync, retries included, success or failure",
            sync_duration.clone(),
        );
        let rows = Gauge::default();
        registry.register("rows", "Rows in the served cache", rows.clone());
        let age_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "age_seconds",
            "Seconds since the served cache was written",
            age_seconds.clone(),
        );
        let last_success_timestamp = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time the served cache was written (0: no cache)",
            last_success_timestamp.clone(),
        );
        let stale_after_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "stale_after_seconds",
            "Cache age past which the cache counts as stale (STALE_AFTER)",
            stale_after_seconds.clone(),
        );
        let sync_in_progress = Gauge::default();
        registry.register(
            "sync_in_progress",
            "1 while a sync runs in this process",
            sync_in_progress.clone(),
        );
        let consecutive_failures = Gauge::default();
        registry.register(
            "sync_consecutive_failures",
            "Failed syncs since the last successful one",
            consecutive_failures.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template and status",
            http_requests.clone(),
        );
        let sse_subscribers = Gauge::default();
        registry.register(
            "sse_subscribers",
            "Open Server-Sent Events streams",
            sse_subscribers.clone(),
        );
        let alerts = Family::<AlertLabels, Counter>::default();
        registry.register(
            "alerts",
            "Webhook alerts by event and delivery result (sent, failed)",
            alerts.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running version (always 1)", build);
        Self {
            registry,
            syncs,
            sync_kinds,
            export_bytes,
            sync_duration,
            rows,
            age_seconds,
            last_success_timestamp,
            stale_after_seconds,
            sync_in_progress,
            consecutive_failures,
            http_requests,
            sse_subscribers,
            alerts,
        }
    }

    /// Counts a finished sync.
    pub fn record_sync(&self, outcome: &SyncOutcome) {
        let result = if outcome.result.is_ok() {
            "success"
        } else {
            "failure"
        };
        self.syncs.get_or_create(&ResultLabels { result }).inc();
        if let Some(kind) = outcome.kind {
            self.sync_kinds.get_or_create(&KindLabels { kind }).inc();
            self.export_bytes.inc_by(outcome.export_bytes as u64);
        }
        self.sync_duration.observe(outcome.duration.as_secs_f64());
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
