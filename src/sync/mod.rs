//! The sync: fetch the table through phpMyAdmin in a real browser, convert it, and replace the cache.
//!
//! - [`sync_once`] — one sync, start to finish; what `pma-cache sync` runs and tests call.
//! - [`Syncer`]: runs syncs in the background, one at a time, on request or on a schedule, and
//!   keeps the [`status::SyncStatus`] that `/status` shows.
//! - [`phpmyadmin`]: the export flow, which puts in order the rooms below it:
//!   - [`chromedriver`]: the ChromeDriver process; [`session`]: the WebDriver session and its
//!     time-limited steps; [`page`]: reading what a page shows;
//!   - [`login`], [`export_page`], [`download`]: phpMyAdmin's pages and the downloaded file;
//!   - [`follow`]: the conversion that reads the download while Chromium writes it;
//!   - [`leftovers`]: the folders and processes of killed runs, ended at the next start;
//!   - [`evidence`]: the screenshot and page source of a failed sync;
//!   - [`error`]: why an export failed, apart so that nothing imports in a circle.

pub mod chromedriver;
pub mod download;
pub mod error;
pub mod evidence;
pub mod export_page;
pub mod follow;
pub mod leftovers;
pub mod login;
pub mod page;
pub mod phpmyadmin;
pub mod session;
pub mod status;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use futures_util::FutureExt;
use rand::Rng;
use time::OffsetDateTime;
use tokio::sync::broadcast;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::{
    csv_to_cache_json, json_capacity_for_csv, Cache, Converted, SyncLockGuard, VersionRecord,
};
use crate::config::SyncSettings;
use crate::ops::{SyncObserver, SyncOutcome};
use error::ExportError;
use follow::FollowedConversion;
use phpmyadmin::export_table_csv;
use session::Browser;
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
/// cache. On any error the cache is left as it was. The caller holds the cache's sync lock
/// (`_held`) for the whole sync.
///
/// The export uses the browser in `browser` (starting one if there is none); with `keep` the
/// browser stays there, logged in, for the next sync, else it is closed while the CSV converts.
/// The sync ends early when `cancel` fires or `settings.timeout` passes: the export stops at its
/// next step and the browser is closed before this returns.
pub async fn sync_once(
    settings: &SyncSettings,
    cache: &Arc<Cache>,
    progress: &Progress,
    _held: &SyncLockGuard,
    browser: &mut Option<Browser>,
    keep: bool,
    cancel: &CancellationToken,
) -> anyhow::Result<SyncReport> {
    let started = Instant::now();
    let stop = cancel.child_token();
    let steps = sync_steps(settings, cache, progress, browser, keep, &stop);
    tokio::pin!(steps);
    let mut timed_out = false;
    let result = tokio::select! {
        r = &mut steps => r,
        () = tokio::time::sleep(settings.timeout) => {
            timed_out = true;
            stop.cancel();
            steps.await
        }
    };
    let result = match result {
        Err(_) if timed_out => {
            let phase = progress.current().map_or("starting", Phase::as_str);
            Err(anyhow::anyhow!(
                "the sync did not finish within SYNC_TIMEOUT ({}); it was stopped while {phase}",
                humantime::format_duration(settings.timeout)
            ))
        }
        Err(_) if cancel.is_cancelled() => Err(anyhow::anyhow!("the service is shutting down")),
        other => other,
    };
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
    browser: &mut Option<Browser>,
    keep: bool,
    stop: &CancellationToken,
) -> anyhow::Result<(usize, usize)> {
    let started = Instant::now();
    let started_at = rfc3339(OffsetDateTime::now_utc());
    fault::hit().await;
    // Room for the new version's JSON, reserved before the download starts so that the buffer
    // never grows (and is copied) while the CSV arrives: the previous version's size and 1/8.
    let json_capacity = cache
        .document_bytes()
        .await
        .map_or(0, |bytes| bytes.saturating_add(bytes / 8));
    // The CSV is moved here, out of the browser's folder, so that the browser can close (or take
    // the next download) while it converts.
    let work = leftovers::folder("sync").context("cannot create a work folder")?;
    // The shrink guard's row count, read while the export runs: the file is read as a stream, so
    // the old table is never held beside the new one. Awaited below on every path.
    let counting = tokio::spawn({
        let cache = Arc::clone(cache);
        async move { cache.row_count().await }
    });
    let null_token = null_token();
    let exported = export_with_retries(
        settings,
        browser,
        &null_token,
        json_capacity,
        progress,
        stop,
    )
    .await;
    let closing = match keep {
        true => None,
        false => browser.take().map(|b| tokio::spawn(b.close())),
    };
    let csv_path = work.path().join("export.csv");
    let (converted, last_byte) = match exported {
        Ok(exported) => {
            let last_byte = std::fs::metadata(&exported.csv).and_then(|m| m.modified());
            progress.enter(Phase::Converting);
            let converted = finish_conversion(exported, &csv_path, null_token).await;
            (converted, last_byte.ok())
        }
        Err(e) => (Err(e), None),
    };
    if let Some(closing) = closing {
        if let Err(e) = closing.await {
            tracing::warn!("closing the browser failed: {e}");
        }
    }
    let previous = counting
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("the row count stopped: {e}")));
    let converted = converted?;
    progress.note("rows", converted.count);
    progress.note("json bytes", converted.cache_bytes().len());

    check_row_count(settings, previous, converted.count)?;
    if stop.is_cancelled() {
        bail!("the sync was stopped before writing");
    }

    progress.enter(Phase::Writing);
    let (rows, bytes) = (converted.count, converted.cache_bytes().len());
    let record = VersionRecord::made_now(converted.last_updated.clone(), rows, started_at, started);
    cache
        .replace(converted, record)
        .await
        .with_context(|| format!("cannot write the cache file {}", cache.path().display()))?;
    // The download's file was last modified by its last byte: from there to here is what a
    // refresh waits for beyond the export itself.
    if let Some(tail) = last_byte.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        tracing::info!(
            seconds = format_args!("{:.3}", tail.as_secs_f64()),
            "from the download's last byte to the durable cache file"
        );
    }
    Ok((rows, bytes))
}

/// The export's CSV, and the conversion that has been reading it since it appeared, if any.
struct Exported {
    csv: PathBuf,
    following: Option<FollowedConversion>,
}

/// Moves the CSV to `csv_path` (so that the browser can close or take the next download) and
/// ends its conversion: the one that followed the download when it read this very file, else a
/// conversion of the whole file.
async fn finish_conversion(
    exported: Exported,
    csv_path: &Path,
    null_token: String,
) -> anyhow::Result<Converted> {
    let Exported { csv, following } = exported;
    let moved = std::fs::rename(&csv, csv_path)
        .with_context(|| format!("cannot move the export {}", csv.display()));
    let size = moved.and_then(|()| {
        std::fs::metadata(csv_path)
            .map(|m| m.len())
            .with_context(|| format!("cannot read the export {}", csv_path.display()))
    });
    match (following, size) {
        (Some(following), Ok(size)) if following.follows(csv_path) => following.finish(size).await,
        (following, size) => {
            if let Some(following) = following {
                following.abandon().await;
            }
            size?;
            convert(csv_path.to_owned(), null_token).await
        }
    }
}

/// Converts the downloaded CSV into the cache's JSON, off the runtime's threads.
async fn convert(csv_path: PathBuf, null_token: String) -> anyhow::Result<Converted> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let file = std::fs::File::open(&csv_path)
            .with_context(|| format!("cannot open the export {}", csv_path.display()))?;
        let size = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let now = rfc3339(OffsetDateTime::now_utc().replace_nanosecond(0)?);
        csv_to_cache_json(file, Some(&null_token), &now, json_capacity_for_csv(size))
            .context("the exported CSV could not be converted")
    })
    .await
    .context("the converter stopped")?
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
    browser: &mut Option<Browser>,
    null_token: &str,
    json_capacity: usize,
    progress: &Progress,
    stop: &CancellationToken,
) -> anyhow::Result<Exported> {
    let what = format!(
        "exporting {}.{} from phpMyAdmin at {}",
        settings.database, settings.table, settings.pma_url
    );
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=EXPORT_ATTEMPTS {
        let mut following = None;
        let mut follow = |file: std::fs::File| match FollowedConversion::start(
            file,
            null_token.to_owned(),
            json_capacity,
            stop.child_token(),
        ) {
            Ok(conversion) => following = Some(conversion),
            Err(e) => tracing::warn!(
                "cannot read the download while it is written; it is converted once complete: {e}"
            ),
        };
        let exported =
            export_table_csv(settings, browser, null_token, progress, stop, &mut follow).await;
        if exported.is_err() {
            // The conversion of a failed attempt reads a file that will not complete.
            if let Some(conversion) = following.take() {
                conversion.abandon().await;
            }
        }
        match exported {
            Ok(csv) => return Ok(Exported { csv, following }),
            Err(ExportError::Transient(e)) if attempt < EXPORT_ATTEMPTS => {
                tracing::warn!(
                    attempt,
                    retry_in = %humantime::format_duration(backoff),
                    "{what} failed, will retry: {e:#}"
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => bail!("{what} was cancelled"),
                }
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
            Err(ExportError::Cancelled) => bail!("{what} was cancelled"),
        }
    }
    unreachable!("the last attempt returns")
}

/// Refuses an export that would wipe good data: zero rows, far fewer than the cache holds, or
/// any export when the cached row count cannot be known (`previous` is an error). It fails
/// closed: only `SYNC_FORCE` lets such an export through.
fn check_row_count(
    settings: &SyncSettings,
    previous: anyhow::Result<Option<usize>>,
    rows: usize,
) -> anyhow::Result<()> {
    if settings.force {
        return Ok(());
    }
    let previous = previous.map_err(|e| {
        anyhow::anyhow!(
            "the export has {rows} rows but the cached row count cannot be known ({e:#}); \
             the cache was kept (set SYNC_FORCE=true to replace it)"
        )
    })?;
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

/// Test-only faults, honoured in debug builds only: `PMA_CACHE_FAULT=panic` makes a sync panic
/// once it holds the lock, `PMA_CACHE_FAULT=hang` makes it wait there until it is stopped.
mod fault {
    pub async fn hit() {
        if !cfg!(debug_assertions) {
            return;
        }
        match std::env::var("PMA_CACHE_FAULT").as_deref() {
            Ok("panic") => panic!("fault injected by PMA_CACHE_FAULT=panic"),
            Ok("hang") => std::future::pending::<()>().await,
            _ => {}
        }
    }
}

/// The first wait before retrying a failed scheduled sync; doubled after each further failure.
const RETRY_BASE: Duration = Duration::from_secs(30);

/// The wait after `failures` consecutive failed scheduled syncs: doubling from [`RETRY_BASE`],
/// capped at `every`, then jittered down by up to a half so that restarted replicas spread out.
pub fn retry_delay(failures: u32, every: Duration, jitter: f64) -> Duration {
    let doubled = RETRY_BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    doubled
        .min(every)
        .mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
}

/// What [`Syncer::trigger`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Started,
    AlreadyRunning,
    /// No phpMyAdmin settings here, and no Redis to forward the request through.
    NotConfigured,
    /// Forwarded through Redis, but no worker answered within [`FORWARD_WAIT`].
    NoWorker,
}

impl Trigger {
    /// The word a worker answers a forwarded request with, and back.
    fn as_answer(self) -> &'static str {
        match self {
            Trigger::Started => "triggered",
            Trigger::AlreadyRunning => "already in progress",
            Trigger::NotConfigured => "not configured",
            Trigger::NoWorker => "no worker",
        }
    }

    fn from_answer(answer: &str) -> Self {
        match answer {
            "triggered" => Trigger::Started,
            "already in progress" => Trigger::AlreadyRunning,
            _ => Trigger::NoWorker,
        }
    }
}

/// How long a replica waits for a worker to answer a refresh forwarded through Redis.
pub const FORWARD_WAIT: Duration = Duration::from_secs(3);

/// Runs syncs in the background, at most one at a time.
#[derive(Debug)]
pub struct Syncer {
    settings: Option<Arc<SyncSettings>>,
    cache: Arc<Cache>,
    board: StatusBoard,
    running: AtomicBool,
    /// Whether the last sync this process ran succeeded, sent when each one ends.
    outcomes: watch::Sender<Option<bool>>,
    /// Why each failed sync failed, for event streams (a new cache is news of the cache's).
    failures: broadcast::Sender<Arc<str>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// The browser kept, logged in, between syncs (see [`Syncer::keep_browser_idle`]).
    browser: tokio::sync::Mutex<Option<Browser>>,
    /// Counts syncs, so that an idle timer knows whether a newer sync used the browser.
    syncs: AtomicU64,
    /// Told of every finished sync (metrics, history, alerts).
    observer: OnceLock<Arc<dyn SyncObserver>>,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("download_dir", &self.download_dir())
            .finish_non_exhaustive()
    }
}

/// Marks this process's single flight as taken; frees it when dropped, whatever way the sync
/// ended (panics included).
struct Flight(Arc<Syncer>);

impl Drop for Flight {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
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
            outcomes: watch::Sender::new(None),
            failures: broadcast::channel(16).0,
            tasks: TaskTracker::new(),
            shutdown,
            browser: tokio::sync::Mutex::new(None),
            syncs: AtomicU64::new(0),
            observer: OnceLock::new(),
        })
    }

    /// Tells `observer` of every sync that finishes from now on (set once).
    pub fn observe(&self, observer: Arc<dyn SyncObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Whether a sync source is configured.
    pub fn is_configured(&self) -> bool {
        self.settings.is_some()
    }

    /// The current sync status. The last success is the newest of this process's and the one
    /// the served version records, so a sync run by another process shows too.
    pub fn status(&self) -> status::SyncStatus {
        let mut status = self.board.snapshot();
        if let Some(record) = self.cache.served_record() {
            status.merge_version_record(&record);
        }
        status
    }

    /// Subscribes to the reasons of failed syncs.
    pub fn subscribe_failures(&self) -> broadcast::Receiver<Arc<str>> {
        self.failures.subscribe()
    }

    /// Starts a sync in the background unless one is running, here or in another process that
    /// shares the cache. Without phpMyAdmin settings but with Redis (a replica), the request is
    /// forwarded to the worker, whose answer this returns.
    pub async fn trigger(self: &Arc<Self>) -> Trigger {
        let Some(settings) = self.settings.clone() else {
            return self.forward().await;
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
        let flight = Flight(Arc::clone(self));
        let held = match self.cache.sync_lock().try_acquire().await {
            Ok(Some(held)) => held,
            Ok(None) => return Trigger::AlreadyRunning,
            Err(e) => {
                let result = Err(e);
                self.notify(OffsetDateTime::now_utc(), Duration::ZERO, &result);
                self.record(result);
                return Trigger::Started;
            }
        };
        self.board.update(|s| {
            s.state = "running";
            s.phase = None;
            s.started_at = Some(rfc3339(OffsetDateTime::now_utc()));
        });
        let this = Arc::clone(self);
        self.tasks.spawn(async move {
            let progress = Progress::new(Some(this.board.clone()));
            tracing::info!("sync started");
            let keep = !settings.browser_idle_timeout.is_zero();
            let (started_at, started) = (OffsetDateTime::now_utc(), Instant::now());
            let result = {
                let mut browser = this.browser.lock().await;
                let sync = AssertUnwindSafe(sync_once(
                    &settings,
                    &this.cache,
                    &progress,
                    &held,
                    &mut browser,
                    keep,
                    &this.shutdown,
                ));
                sync.catch_unwind().await.unwrap_or_else(|panic| {
                    Err(anyhow::anyhow!(
                        "the sync stopped on an internal error (panic: {}); this is a bug",
                        panic_message(panic.as_ref())
                    ))
                })
            };
            this.notify(started_at, started.elapsed(), &result);
            this.record(result);
            held.release().await;
            if keep {
                this.keep_browser_idle(settings.browser_idle_timeout);
            }
            drop(flight);
        });
        Trigger::Started
    }

    /// Forwards a refresh request through Redis to the worker, if versions are shared there.
    async fn forward(&self) -> Trigger {
        let Some(store) = self.cache.shared_store() else {
            return Trigger::NotConfigured;
        };
        match store.forward_refresh(FORWARD_WAIT).await {
            Ok(Some(answer)) => {
                tracing::info!(answer, "refresh forwarded to the worker through Redis");
                Trigger::from_answer(&answer)
            }
            Ok(None) => {
                tracing::warn!(
                    "refresh forwarded through Redis, but no worker answered within {}s",
                    FORWARD_WAIT.as_secs()
                );
                Trigger::NoWorker
            }
            Err(e) => {
                tracing::warn!("cannot forward the refresh through Redis: {e:#}");
                Trigger::NoWorker
            }
        }
    }

    /// Answers the refresh requests that replicas forward through Redis, until shutdown: each
    /// triggers a sync here (single flight applies) and gets "triggered" or "already in
    /// progress" back. Does nothing without Redis or without phpMyAdmin settings.
    pub async fn answer_forwarded_refreshes(self: Arc<Self>) {
        let (Some(store), true) = (self.cache.shared_store().cloned(), self.is_configured()) else {
            return;
        };
        // Requests are few (a person or a cron job asking); a burst beyond 16 waiting is
        // dropped, and its replica says no worker answered.
        let (requests, mut pending) = tokio::sync::mpsc::channel::<String>(16);
        let listen = store.follow_refresh_requests(
            move |id| {
                let _ = requests.try_send(id);
            },
            self.shutdown.clone(),
        );
        let answer = async {
            loop {
                let id = tokio::select! {
                    () = self.shutdown.cancelled() => break,
                    id = pending.recv() => match id {
                        Some(id) => id,
                        None => break,
                    },
                };
                let trigger = self.trigger().await;
                tracing::info!(
                    answer = trigger.as_answer(),
                    "refresh request from a replica"
                );
                if let Err(e) = store.answer_refresh(&id, trigger.as_answer()).await {
                    tracing::warn!("{e:#}");
                }
            }
        };
        tokio::join!(listen, answer);
    }

    /// Tells the observer, if any, how a sync ended.
    fn notify(
        &self,
        started_at: OffsetDateTime,
        duration: Duration,
        result: &anyhow::Result<SyncReport>,
    ) {
        if let Some(observer) = self.observer.get() {
            observer.sync_finished(&SyncOutcome {
                started_at,
                duration,
                result: result
                    .as_ref()
                    .map(|r| r.rows)
                    .map_err(|e| format!("{e:#}")),
            });
        }
    }

    fn record(&self, result: anyhow::Result<SyncReport>) {
        let now = rfc3339(OffsetDateTime::now_utc());
        self.outcomes.send_replace(Some(result.is_ok()));
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
                let _ = self.failures.send(message.as_str().into());
                self.board.update(|s| {
                    s.state = "idle";
                    s.phase = None;
                    s.last_failure = Some(now);
                    s.last_error = Some(message);
                });
            }
        }
    }

    /// Triggers a sync every `every`, the first at `first`, until shutdown. After a failure the
    /// next attempt comes sooner ([`retry_delay`]), backing off while failures continue.
    pub async fn run_schedule(self: Arc<Self>, every: Duration, first: Duration) {
        let mut wait = first;
        let mut failures = 0u32;
        let mut outcomes = self.outcomes.subscribe();
        loop {
            let at = OffsetDateTime::now_utc() + wait;
            self.board.update(|s| s.next_run = Some(rfc3339(at)));
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            outcomes.mark_unchanged();
            match self.trigger().await {
                Trigger::Started => {
                    tracing::info!(attempt = failures + 1, "scheduled sync started");
                }
                Trigger::AlreadyRunning => {
                    tracing::info!("scheduled sync skipped: one is already running");
                    wait = every;
                    continue;
                }
                Trigger::NotConfigured | Trigger::NoWorker => break,
            }
            let ok = tokio::select! {
                () = self.shutdown.cancelled() => break,
                changed = outcomes.changed() => changed.is_ok() && *outcomes.borrow_and_update() == Some(true),
            };
            if ok {
                failures = 0;
                wait = every;
            } else {
                failures += 1;
                wait = retry_delay(failures, every, rand::thread_rng().gen());
                tracing::warn!(
                    attempt = failures,
                    retry_in = %humantime::format_duration(Duration::from_secs(wait.as_secs())),
                    "scheduled sync attempt {failures} failed; attempt {} follows",
                    failures + 1
                );
            }
        }
    }

    /// Closes the kept browser once it has been unused for `idle`, unless a newer sync used it.
    fn keep_browser_idle(self: &Arc<Self>, idle: Duration) {
        let sync = self.syncs.fetch_add(1, Ordering::AcqRel) + 1;
        let this = Arc::clone(self);
        self.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(idle) => {}
                () = this.shutdown.cancelled() => return,
            }
            if this.syncs.load(Ordering::Acquire) != sync {
                return;
            }
            // A sync that holds the browser now restarts the clock when it ends.
            let Ok(mut kept) = this.browser.try_lock() else {
                return;
            };
            if let Some(browser) = kept.take() {
                tracing::info!(
                    idle = %humantime::format_duration(idle),
                    "closing the browser: unused for BROWSER_IDLE_TIMEOUT"
                );
                browser.close().await;
            }
        });
    }

    /// Waits for the sync in progress, if any, to end (after shutdown it ends at once); after
    /// shutdown, also closes the kept browser.
    pub async fn wait_idle(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
        if self.shutdown.is_cancelled() {
            if let Some(browser) = self.browser.lock().await.take() {
                browser.close().await;
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_with_jitter_and_never_exceed_the_interval() {
        let hour = Duration::from_secs(3600);
        assert_eq!(retry_delay(1, hour, 0.0), RETRY_BASE);
        assert_eq!(retry_delay(2, hour, 0.0), RETRY_BASE * 2);
        assert_eq!(retry_delay(3, hour, 1.0), RETRY_BASE * 2);
        assert_eq!(retry_delay(40, hour, 0.0), hour);
        let minute = Duration::from_secs(60);
        assert!(retry_delay(5, minute, 0.3) <= minute);
    }
}
