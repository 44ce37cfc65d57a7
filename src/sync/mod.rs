//! The sync: fetch the table through phpMyAdmin in a real browser, convert it, and replace the cache.
//!
//! - [`once`]: one sync, start to finish ([`sync_once`]); what `pma-cache sync` runs and tests
//!   call. It puts in order:
//!   - [`retries`]: the export, tried again after a transient failure;
//!   - [`shrink_guard`]: the check that an export does not wipe good data;
//!   - [`incremental`]: the syncs that export only what changed, between full exports;
//!   - [`phpmyadmin`]: the export flow, which puts in order the rooms below it:
//!     - [`chromedriver`]: the ChromeDriver process; [`session`]: the WebDriver session and its
//!       time-limited steps; [`page`]: reading what a page shows;
//!     - [`login`], [`export_page`], [`download`]: phpMyAdmin's pages and the downloaded file;
//!     - [`follow`]: the conversion that reads the download while Chromium writes it;
//!     - [`leftovers`]: the folders and processes of killed runs, ended at the next start;
//!     - [`evidence`]: the screenshot and page source of a failed sync;
//!     - [`query_export`]: a query's result exported as CSV from the export page;
//!     - [`error`]: why an export failed, apart so that nothing imports in a circle.
//! - [`scheduler`]: the [`Syncer`], which runs syncs in the background, one at a time, on
//!   request or on a schedule, and forwards requests to the worker from a replica;
//!   [`kept_browser`]: the browser it keeps between syncs; [`status`]: what `/status` shows.
//! - [`outcome`]: how a sync ended, published once for every party that follows syncs.
//! - [`fault`]: faults for the tests, compiled only with the `test-faults` feature.

pub mod chromedriver;
pub mod download;
pub mod error;
pub mod evidence;
pub mod export_page;
pub mod fault;
pub mod follow;
pub mod incremental;
pub mod kept_browser;
pub mod leftovers;
pub mod login;
pub mod once;
pub mod outcome;
pub mod page;
pub mod phpmyadmin;
pub mod query_export;
pub mod retries;
pub mod scheduler;
pub mod session;
pub mod shrink_guard;
pub mod status;
pub mod structure;

pub use once::{sync_once, SyncReport};
pub use outcome::SyncOutcome;
pub use scheduler::{retry_delay, Ask, Syncer, Trigger, FORWARD_WAIT};

impl std::fmt::Debug for session::Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("download_dir", &self.download_dir())
            .finish_non_exhaustive()
    }
}
