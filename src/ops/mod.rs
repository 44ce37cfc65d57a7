//! Watching the service run: the recent syncs, Prometheus metrics and webhook alerts.
//!
//! - [`metrics`] — the registry `/metrics` encodes.
//! - [`alerts`] — failure, recovery and staleness alerts, delivered by a background task.
//!
//! The [`Monitor`] follows the outcome of every sync the syncer publishes
//! ([`crate::sync::SyncOutcome`]): it keeps the history, counts it, and decides what deserves an
//! alert. `ops` depends on `sync`, never the reverse.

pub mod alerts;
pub mod metrics;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::config::{AlertSettings, Secret, SyncSettings};
use crate::sync::SyncOutcome;
use alerts::{AlertEvent, AlertTask, Alerts};
use metrics::Metrics;

/// Syncs kept for `/status` and the dashboard.
pub const RECENT_SYNCS: usize = 20;

/// One line of the recent syncs, as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SyncRecord {
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub duration_seconds: f64,
    /// `success` or `failure`.
    pub result: &'static str,
    pub rows: Option<usize>,
    /// How a successful sync read the table: `full`, `row_hash` or `cursor`.
    pub kind: Option<&'static str>,
    pub error: Option<String>,
}

/// The recent syncs, the metrics and the alerts of one process.
#[derive(Debug)]
pub struct Monitor {
    pub metrics: Metrics,
    alerts: Alerts,
    /// Cache age past which the cache counts as stale.
    pub stale_after: Duration,
    state: Mutex<MonitorState>,
}

#[derive(Debug, Default)]
struct MonitorState {
    /// Newest first.
    recent: VecDeque<SyncRecord>,
    consecutive_failures: u64,
}

impl Monitor {
    /// A monitor that counts into `metrics`, alerts through `alerts`, and counts the cache as
    /// stale past `stale_after`.
    pub fn new(metrics: Metrics, alerts: Alerts, stale_after: Duration) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            alerts,
            stale_after,
            state: Mutex::default(),
        })
    }

    /// The recent syncs, newest first.
    pub fn recent(&self) -> Vec<SyncRecord> {
        self.lock().recent.iter().cloned().collect()
    }

    /// Failed syncs since the last success.
    pub fn consecutive_failures(&self) -> u64 {
        self.lock().consecutive_failures
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MonitorState> {
        // Plain data: a panic while it was held leaves nothing half-done worth refusing.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Monitor {
    /// Records every outcome `outcomes` brings until `stop`.
    pub async fn follow(
        self: Arc<Self>,
        mut outcomes: broadcast::Receiver<SyncOutcome>,
        stop: CancellationToken,
    ) {
        loop {
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = outcomes.recv() => outcome,
            };
            match outcome {
                Ok(outcome) => self.sync_finished(&outcome),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the monitor fell behind and missed sync outcomes")
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Records one finished sync: history, metrics, alerts.
    pub fn sync_finished(&self, outcome: &SyncOutcome) {
        self.metrics.record_sync(outcome);
        let record = SyncRecord {
            started_at: outcome.started_at,
            duration_seconds: outcome.duration.as_secs_f64(),
            result: if outcome.result.is_ok() {
                "success"
            } else {
                "failure"
            },
            rows: outcome.result.as_ref().ok().copied(),
            kind: outcome.kind,
            error: outcome.result.as_ref().err().cloned(),
        };
        let failures_before = {
            let mut state = self.lock();
            state.recent.push_front(record);
            state.recent.truncate(RECENT_SYNCS);
            let before = state.consecutive_failures;
            state.consecutive_failures = match outcome.result {
                Ok(_) => 0,
                Err(_) => before + 1,
            };
            before
        };
        self.metrics
            .consecutive_failures
            .set(i64::try_from(self.consecutive_failures()).unwrap_or(i64::MAX));
        match &outcome.result {
            Ok(rows) if failures_before > 0 => self.alerts.send(AlertEvent::Recovered {
                failures: failures_before,
                rows: *rows,
            }),
            Ok(_) => {}
            Err(error) => self.alerts.send(AlertEvent::SyncFailed {
                error: error.clone(),
                consecutive: failures_before + 1,
            }),
        }
    }
}

/// The monitor of a process that serves or syncs `cache`, and the task that delivers its alerts
/// (`None` without a webhook; the caller runs it until shutdown). The phpMyAdmin password and
/// `secrets` are scrubbed from every alert.
pub fn monitor(
    alerts: &AlertSettings,
    cache: &Arc<Cache>,
    sync: Option<&SyncSettings>,
    mut secrets: Vec<Secret>,
) -> (Arc<Monitor>, Option<AlertTask>) {
    let metrics = Metrics::new();
    secrets.extend(sync.map(|s| s.password.clone()));
    let source = sync.map(|s| format!("{}.{}", s.database, s.table));
    let (sender, task) = Alerts::new(
        alerts,
        Arc::clone(cache),
        source,
        secrets,
        metrics.alerts.clone(),
    );
    (Monitor::new(metrics, sender, alerts.stale_after), task)
}

/// What is known about the cache file now: its age and rows.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheFacts {
    pub age: Option<Duration>,
    pub rows: Option<usize>,
}

impl CacheFacts {
    /// From the served snapshot, or by reading the file when this process only writes it.
    pub async fn of(cache: &Cache) -> Self {
        Self {
            age: cache.age().await,
            rows: cache.row_count().await.ok().flatten(),
        }
    }

    /// The cache's age, cheaply: the served snapshot's, else the file's modification time (the
    /// file is not read), for checks that run often.
    pub async fn quick_age(cache: &Cache) -> Option<Duration> {
        if let Some(snapshot) = cache.current() {
            return Some(snapshot.age());
        }
        let modified = tokio::fs::metadata(cache.path())
            .await
            .ok()?
            .modified()
            .ok()?;
        Some(
            SystemTime::now()
                .duration_since(modified)
                .unwrap_or_default(),
        )
    }
}
