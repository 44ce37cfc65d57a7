//! The browser a long-running process keeps, logged in, between syncs, so that the next sync
//! skips Chromium's start and phpMyAdmin's login; closed once unused for
//! `BROWSER_IDLE_TIMEOUT`.
//!
//! A sync takes the browser out for its whole run and puts it back when it ends, so no lock is
//! held across the sync: the slot is a std mutex held for a moment. Syncs are single flight, so
//! two never want it at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::session::Browser;

/// The kept browser, if any, and how many times it was put back.
#[derive(Default)]
pub struct KeptBrowser {
    slot: Mutex<Option<Browser>>,
    /// Counts the syncs that put the browser back, so that an idle timer knows whether a
    /// newer sync used it.
    returns: AtomicU64,
}

impl std::fmt::Debug for KeptBrowser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptBrowser")
            .field("returns", &self.returns.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl KeptBrowser {
    /// Takes the browser out for a sync (`None` when there is none: the sync starts one).
    pub fn take(&self) -> Option<Browser> {
        self.lock().take()
    }

    /// Puts back what a sync leaves (its browser, or `None` when it closed it); returns the
    /// number of this return, for [`KeptBrowser::close_when_idle`].
    pub fn put_back(&self, browser: Option<Browser>) -> u64 {
        *self.lock() = browser;
        self.returns.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Waits `idle`, then closes the browser unless a sync has put it back since return
    /// `returned` (it has its own timer then) or one has it now. Ends early on `stop`.
    pub async fn close_when_idle(&self, returned: u64, idle: Duration, stop: CancellationToken) {
        tokio::select! {
            () = tokio::time::sleep(idle) => {}
            () = stop.cancelled() => return,
        }
        if self.returns.load(Ordering::Acquire) != returned {
            return;
        }
        if let Some(browser) = self.take() {
            tracing::info!(
                idle = %humantime::format_duration(idle),
                "closing the browser: unused for BROWSER_IDLE_TIMEOUT"
            );
            browser.close().await;
        }
    }

    /// Closes the browser, if one is kept (at shutdown).
    pub async fn close(&self) {
        if let Some(browser) = self.take() {
            browser.close().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Browser>> {
        // Only an Option moves in and out under this lock; a panic cannot leave it half-set.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}
