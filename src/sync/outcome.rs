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
}

impl SyncOutcome {
    /// Whether the sync succeeded.
    pub fn is_success(&self) -> bool {
        self.result.is_ok()
    }
}

/// Outcomes a subscriber may fall behind by before it misses some (it is told how many).
pub const OUTCOMES_KEPT: usize = 16;
