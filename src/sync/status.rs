//! What the sync is doing now and how the last ones went, for `/status` and the logs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use time::OffsetDateTime;

/// The steps of one sync, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    StartingBrowser,
    LoggingIn,
    Exporting,
    Downloading,
    Converting,
    Writing,
}

impl Phase {
    /// The phase's name as logged and shown in `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::StartingBrowser => "starting_browser",
            Phase::LoggingIn => "logging_in",
            Phase::Exporting => "exporting",
            Phase::Downloading => "downloading",
            Phase::Converting => "converting",
            Phase::Writing => "writing",
        }
    }
}

/// Sync facts shown by `/status`. Times are sent as RFC 3339.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    /// `idle` or `running`.
    pub state: &'static str,
    pub phase: Option<Phase>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_success: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_failure: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    pub last_duration_seconds: Option<f64>,
    pub last_rows: Option<usize>,
    /// How the last successful sync here read the table: `full`, `row_hash` or `cursor`.
    pub last_kind: Option<&'static str>,
    /// Why it was a full export, when it was one.
    pub last_full_reason: Option<String>,
    /// The CSV bytes phpMyAdmin produced for it.
    pub last_export_bytes: Option<usize>,
    /// Which process wrote the version being served (command, process id, host).
    pub last_written_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_run: Option<OffsetDateTime>,
}

impl SyncStatus {
    /// Takes the last success from the record of the version being served when it is newer
    /// than this process's own (another process or replica synced).
    pub fn merge_version_record(&mut self, record: &crate::cache::VersionRecord) {
        let theirs = record.finished_at;
        let newer = match self.last_success {
            None => true,
            Some(ours) => theirs > ours,
        };
        if newer {
            self.last_success = Some(theirs);
            self.last_duration_seconds = Some(record.duration_seconds);
            self.last_rows = Some(record.rows);
        }
        self.last_written_by = Some(record.written_by.clone());
    }
}

/// The shared, always-current sync status. A std mutex: it is held for a few assignments, never
/// across an `.await`.
#[derive(Debug, Clone)]
pub struct StatusBoard(Arc<Mutex<SyncStatus>>);

impl Default for StatusBoard {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(SyncStatus {
            state: "idle",
            ..SyncStatus::default()
        })))
    }
}

impl StatusBoard {
    /// A copy of the current status.
    pub fn snapshot(&self) -> SyncStatus {
        self.lock().clone()
    }

    /// Applies a change to the status.
    pub fn update(&self, change: impl FnOnce(&mut SyncStatus)) {
        change(&mut self.lock());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncStatus> {
        // A panic while holding this lock leaves plain data behind; keep serving it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Records the phase a sync is in: logs how long each phase took and shows the current one.
#[derive(Debug)]
pub struct Progress {
    board: Option<StatusBoard>,
    current: Mutex<Option<(Phase, Instant)>>,
}

impl Progress {
    /// Progress reported to the logs, and to `board` if given.
    pub fn new(board: Option<StatusBoard>) -> Self {
        Self {
            board,
            current: Mutex::new(None),
        }
    }

    /// Starts `phase`, ending the previous one.
    pub fn enter(&self, phase: Phase) {
        self.finish_current();
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((phase, Instant::now()));
        tracing::info!(phase = phase.as_str(), "sync phase started");
        if let Some(board) = &self.board {
            board.update(|s| s.phase = Some(phase));
        }
    }

    /// Logs a fact about the current phase (sizes, counts).
    pub fn note(&self, what: &str, value: impl std::fmt::Display) {
        let phase = self.current().map(Phase::as_str).unwrap_or("-");
        tracing::info!(phase, "{what}: {value}");
    }

    /// The phase in progress, if any.
    pub fn current(&self) -> Option<Phase> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|(p, _)| p)
    }

    /// Ends the current phase, logging its duration.
    pub fn finish_current(&self) -> Option<(Phase, Duration)> {
        let done = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        done.map(|(phase, started)| {
            let took = started.elapsed();
            tracing::info!(
                phase = phase.as_str(),
                seconds = format_args!("{:.3}", took.as_secs_f64()),
                "sync phase done"
            );
            (phase, took)
        })
    }
}
