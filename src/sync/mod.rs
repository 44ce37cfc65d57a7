//! The sync: fetch the table through phpMyAdmin in a real browser, convert it, and replace the cache.
//!
//! - [`sync_once`] — one sync, start to finish; what `pma-cache sync` runs and tests call.
//! - [`Syncer`]: runs syncs in the background, one at a time, on request or on a schedule, and
//!   keeps the [`status::SyncStatus`] that `/status` shows.
//! - [`phpmyadmin`]: the export flow, which puts in order the rooms below it:
//!   - [`chromedriver`]: the ChromeDriver process; [`session`]: the WebDriver session and its
//!     time-limited steps; [`page`]: reading what a page shows;
//!   - [`login`], [`export_page`], [`download`]: phpMyAdmin's pages and the downloaded file;
//!   - [`evidence`]: the screenshot and page source of a failed sync;
//!   - [`error`]: why an export failed, apart so that nothing imports in a circle.

pub mod chromedriver;
pub mod download;
pub mod error;
pub mod evidence;
pub mod export_page;
pub mod login;
pub mod page;
pub mod phpmyadmin;
pub mod session;
pub mod status;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::{csv_to_cache_json, Cache};
use crate::config::SyncSettings;
use error::ExportError;
use status::{rfc3339, Phase, Progress, StatusBoard};

/// Export attempts for transient failures (browser crash, timeout, connection refused).
const EXPORT_ATTEMPTS: u32 = 3;
/// Wait before the second attempt; doubled before each further one.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);

/// What a successful sync did.
#[derive(Debug, Clone)]
pub struct SyncReport {
    pub rows: usize,
    pub bytes: usize,
    pub duration: Duration,
}

/// Runs one sync: export the table through phpMyAdmin, convert it, check it, and replace the
/// cache. On any error the cache is left as it was. The whole sync is bounded by
/// `settings.timeout`.
pub async fn sync_once(
    settings: &SyncSettings,
    cache: &Arc<Cache>,
    progress: &Progress,
) -> anyhow::Result<SyncReport> {
    let started = Instant::now();
    let result = tokio::time::timeout(settings.timeout, sync_steps(settings, cache, progress))
        .await
        .unwrap_or_else(|_| {
            let phase = progress.current().map_or("starting", Phase::as_str);
            Err(anyhow::anyhow!(
                "the sync did not finish within SYNC_TIMEOUT ({}); it was stopped while {phase}",
                humantime::format_duration(settings.timeout)
            ))
        });
    progress.finish_current();
    let (rows, bytes) = result?;
    Ok(SyncReport {
        rows,
        bytes,
        duration: started.elapsed(),
    })
}

async fn sync_steps(
    settings: &SyncSettings,
    cache: &Arc<Cache>,
    progress: &Progress,
) -> anyhow::Result<(usize, usize)> {
    let download_dir = tempfile::Builder::new()
        .prefix("pma-cache-download-")
        .tempdir()
        .context("cannot create a download folder")?;
    let null_token = null_token();
    let export = export_with_retries(settings, download_dir.path(), &null_token, progress).await?;
    let csv_path = export.csv;

    progress.enter(Phase::Converting);
    let converted = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let file = std::fs::File::open(&csv_path)
            .with_context(|| format!("cannot open the export {}", csv_path.display()))?;
        let size = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let now = rfc3339(OffsetDateTime::now_utc().replace_nanosecond(0)?);
        csv_to_cache_json(file, Some(&null_token), &now, size)
            .context("the exported CSV could not be converted")
    })
    .await
    .context("the converter stopped")??;
    progress.note("rows", converted.count);
    progress.note("json bytes", converted.cache_bytes().len());
    if let Err(e) = export.browser_closed.await {
        tracing::warn!("closing the browser failed: {e}");
    }

    check_row_count(settings, cache, converted.count)?;

    progress.enter(Phase::Writing);
    let (rows, bytes) = (converted.count, converted.cache_bytes().len());
    cache
        .replace(converted)
        .await
        .with_context(|| format!("cannot write the cache file {}", cache.path().display()))?;
    Ok((rows, bytes))
}

/// A token made for one sync that SQL NULL is exported as, so it cannot be confused with the
/// text `NULL`. Short (it is written once per NULL field) but random: 60 bits.
fn null_token() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    format!(
        "NULL~{}",
        Alphanumeric.sample_string(&mut rand::thread_rng(), 10)
    )
}

async fn export_with_retries(
    settings: &SyncSettings,
    download_dir: &std::path::Path,
    null_token: &str,
    progress: &Progress,
) -> anyhow::Result<phpmyadmin::Export> {
    let what = format!(
        "exporting {}.{} from phpMyAdmin at {}",
        settings.database, settings.table, settings.pma_url
    );
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=EXPORT_ATTEMPTS {
        match phpmyadmin::export_table_csv(settings, download_dir, null_token, progress).await {
            Ok(export) => return Ok(export),
            Err(ExportError::Transient(e)) if attempt < EXPORT_ATTEMPTS => {
                tracing::warn!(
                    attempt,
                    retry_in = %humantime::format_duration(backoff),
                    "{what} failed, will retry: {e:#}"
                );
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(ExportError::LoginRejected(message)) => bail!(
                "phpMyAdmin rejected the login for user {:?} (not retried): {message}",
                settings.username
            ),
            Err(ExportError::Transient(e)) => {
                return Err(e.context(format!("{what} failed {EXPORT_ATTEMPTS} times")))
            }
            Err(ExportError::Fatal(e)) => return Err(e.context(what)),
        }
    }
    unreachable!("the last attempt returns")
}

/// Refuses an export that would wipe good data: zero rows, or far fewer than the cache holds.
fn check_row_count(settings: &SyncSettings, cache: &Cache, rows: usize) -> anyhow::Result<()> {
    if settings.force {
        return Ok(());
    }
    let previous = cache.row_count();
    if rows == 0 {
        bail!(
            "the export has no rows; the cache{} was kept (set SYNC_FORCE=true to accept an empty table)",
            previous.map(|n| format!(" ({n} rows)")).unwrap_or_default()
        );
    }
    if let Some(previous) = previous {
        let floor = (previous as f64 * settings.min_row_ratio).ceil() as usize;
        if rows < floor {
            bail!(
                "the export has {rows} rows, far fewer than the {previous} cached (minimum {floor}, \
                 SYNC_MIN_ROW_RATIO={}); the cache was kept (set SYNC_FORCE=true to accept it)",
                settings.min_row_ratio
            );
        }
    }
    Ok(())
}

/// What [`Syncer::trigger`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Started,
    AlreadyRunning,
    NotConfigured,
}

/// Runs syncs in the background, at most one at a time.
#[derive(Debug)]
pub struct Syncer {
    settings: Option<Arc<SyncSettings>>,
    cache: Arc<Cache>,
    board: StatusBoard,
    running: AtomicBool,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Syncer {
    /// A syncer for `cache`; with no settings, every trigger answers `NotConfigured`.
    pub fn new(
        settings: Option<SyncSettings>,
        cache: Arc<Cache>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            settings: settings.map(Arc::new),
            cache,
            board: StatusBoard::default(),
            running: AtomicBool::new(false),
            tasks: TaskTracker::new(),
            shutdown,
        })
    }

    /// Whether a sync source is configured.
    pub fn is_configured(&self) -> bool {
        self.settings.is_some()
    }

    /// The current sync status.
    pub fn status(&self) -> status::SyncStatus {
        self.board.snapshot()
    }

    /// Starts a sync in the background unless one is running.
    pub fn trigger(self: &Arc<Self>) -> Trigger {
        let Some(settings) = self.settings.clone() else {
            return Trigger::NotConfigured;
        };
        if self.shutdown.is_cancelled() {
            return Trigger::AlreadyRunning;
        }
        if self
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Trigger::AlreadyRunning;
        }
        self.board.update(|s| {
            s.state = "running";
            s.phase = None;
            s.started_at = Some(rfc3339(OffsetDateTime::now_utc()));
        });
        let this = Arc::clone(self);
        self.tasks.spawn(async move {
            let progress = Progress::new(Some(this.board.clone()));
            tracing::info!("sync started");
            let result = tokio::select! {
                r = sync_once(&settings, &this.cache, &progress) => r,
                () = this.shutdown.cancelled() => Err(anyhow::anyhow!("the service is shutting down")),
            };
            this.record(result);
            this.running.store(false, Ordering::Release);
        });
        Trigger::Started
    }

    fn record(&self, result: anyhow::Result<SyncReport>) {
        let now = rfc3339(OffsetDateTime::now_utc());
        match result {
            Ok(report) => {
                tracing::info!(
                    rows = report.rows,
                    bytes = report.bytes,
                    seconds = format_args!("{:.3}", report.duration.as_secs_f64()),
                    "sync succeeded"
                );
                self.board.update(|s| {
                    s.state = "idle";
                    s.phase = None;
                    s.last_success = Some(now);
                    s.last_duration_seconds = Some(report.duration.as_secs_f64());
                    s.last_rows = Some(report.rows);
                });
            }
            Err(e) => {
                let message = format!("{e:#}");
                tracing::error!("sync failed, the previous cache is still served: {message}");
                self.cache.publish_failure(&message);
                self.board.update(|s| {
                    s.state = "idle";
                    s.phase = None;
                    s.last_failure = Some(now);
                    s.last_error = Some(message);
                });
            }
        }
    }

    /// Triggers a sync every `every`, the first at `first`, until shutdown.
    pub async fn run_schedule(self: Arc<Self>, every: Duration, first: Duration) {
        let mut wait = first;
        loop {
            let at = OffsetDateTime::now_utc() + wait;
            self.board.update(|s| s.next_run = Some(rfc3339(at)));
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            if self.trigger() == Trigger::AlreadyRunning {
                tracing::info!("scheduled sync skipped: one is already running");
            }
            wait = every;
        }
    }

    /// Waits for the sync in progress, if any, to end (after shutdown it ends at once).
    pub async fn wait_idle(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }
}
