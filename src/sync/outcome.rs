//! How a sync ended. Defined here and published once, by the scheduler, on one broadcast channel
//! that every party which cares subscribes to: the monitor (history, metrics, alerts), event
//! streams (an `error` event) and the schedule (when to try again).

use std::time::Duration;

use time::OffsetDateTime;

/// How one sync ended, after its retries.
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    pub started_at: OffsetDateTime,
    pub duration: Duration,
    /// Rows written, or why the sync failed.
    pub result: Result<usize, String>,
    /// The failure was phpMyAdmin refusing the login.
    pub login_rejected: bool,
    /// How a successful sync read the table (`full`, `row_hash`, `cursor`).
    pub kind: Option<&'static str>,
    /// The CSV bytes phpMyAdmin produced for a successful sync.
    pub export_bytes: usize,
}

impl SyncOutcome {
    /// Whether the sync succeeded.
    pub fn is_success(&self) -> bool {
        self.result.is_ok()
    }

    /// A failure as clients may see it: a stable code and a short message. The details (which
    /// may name hosts, users and paths) stay in the log and the admin's `/status`.
    pub fn public_error(&self) -> Option<(&'static str, &'static str)> {
        match (&self.result, self.login_rejected) {
            (Ok(_), _) => None,
            (Err(_), true) => Some((
                "login_rejected",
                "phpMyAdmin rejected the login; the previous version is still served",
            )),
            (Err(_), false) => Some((
                "sync_failed",
                "The sync failed; the previous version is still served",
            )),
        }
    }
}

/// Outcomes a subscriber may fall behind by before it misses some (it is told how many).
pub const OUTCOMES_KEPT: usize = 16;
