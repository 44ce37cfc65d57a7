//! [`Syncer`]: runs syncs in the background, at most one at a time in this process (single
//! flight) and across every process that shares the store (its sync lock), on request or on a
//! schedule; keeps the [`StatusBoard`] that `/status` shows and publishes each
//! [`SyncOutcome`]. A replica with no phpMyAdmin settings forwards requests to the worker
//! through Redis.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rand::Rng;
use time::OffsetDateTime;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::LoginRejected;
use super::incremental::SyncMemory;
use super::kept_browser::KeptBrowser;
use super::once::{sync_once, Between, SyncReport};
use super::outcome::{SyncOutcome, OUTCOMES_KEPT};
use super::status::{self, Progress, StatusBoard};
use crate::cache::{Cache, Destination, VersionStore};
use crate::config::SyncSettings;

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
    /// The service is stopping: no new sync starts.
    ShuttingDown,
    /// No phpMyAdmin settings here, and no Redis to forward the request through.
    NotConfigured,
    /// Forwarded through Redis, but no worker answered within [`FORWARD_WAIT`].
    NoWorker,
    /// phpMyAdmin rejected the last login: none is tried until the settings change or an
    /// admin asks for one.
    LoginBlocked,
}

impl Trigger {
    /// The word a worker answers a forwarded request with, and back.
    fn as_answer(self) -> &'static str {
        match self {
            Trigger::Started => "triggered",
            Trigger::AlreadyRunning => "already in progress",
            Trigger::ShuttingDown => "shutting down",
            Trigger::NotConfigured => "not configured",
            Trigger::NoWorker => "no worker",
            Trigger::LoginBlocked => "login blocked",
        }
    }

    fn from_answer(answer: &str) -> Self {
        match answer {
            "triggered" => Trigger::Started,
            "already in progress" => Trigger::AlreadyRunning,
            "shutting down" => Trigger::ShuttingDown,
            "login blocked" => Trigger::LoginBlocked,
            _ => Trigger::NoWorker,
        }
    }
}

/// What a refresh asks for beyond a sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask {
    /// Log in again after phpMyAdmin rejected the login (an admin fixed the account).
    pub retry_login: bool,
    /// Export the whole table: this sync if it starts, else the next one.
    pub full: bool,
}

/// How long a replica waits for a worker to answer a refresh forwarded through Redis.
pub const FORWARD_WAIT: Duration = Duration::from_secs(3);

/// Runs syncs in the background, at most one at a time.
#[derive(Debug)]
pub struct Syncer {
    settings: Option<Arc<SyncSettings>>,
    store: Arc<VersionStore>,
    /// Where each new version is served, when this process serves the cache.
    serving: Option<Arc<Cache>>,
    board: StatusBoard,
    running: AtomicBool,
    /// Every finished sync, published once.
    outcomes: broadcast::Sender<SyncOutcome>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    browser: KeptBrowser,
    /// What the next incremental sync compares with; taken by the sync running.
    memory: tokio::sync::Mutex<SyncMemory>,
    /// The next sync exports the whole table (`POST /refresh?full=true`).
    full_requested: AtomicBool,
    /// phpMyAdmin rejected the last login: no further login until the settings change (a
    /// restart with new ones) or an admin asks ([`Syncer::trigger_with`]).
    login_blocked: AtomicBool,
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
    /// A syncer that publishes to `store` (and serves each version in `serving`, when given),
    /// whose syncs run on `tasks` and stop on `shutdown`; with no settings, every trigger is
    /// forwarded to a worker through Redis, or answers `NotConfigured`.
    pub fn new(
        settings: Option<SyncSettings>,
        store: Arc<VersionStore>,
        serving: Option<Arc<Cache>>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            settings: settings.map(Arc::new),
            store,
            serving,
            board: StatusBoard::default(),
            running: AtomicBool::new(false),
            outcomes: broadcast::channel(OUTCOMES_KEPT).0,
            tasks,
            shutdown,
            browser: KeptBrowser::default(),
            memory: tokio::sync::Mutex::new(SyncMemory::default()),
            full_requested: AtomicBool::new(false),
            login_blocked: AtomicBool::new(false),
        })
    }

    /// Whether a sync source is configured.
    pub fn is_configured(&self) -> bool {
        self.settings.is_some()
    }

    /// The current sync status. The last success is the newest of this process's and the one
    /// the served version records, so a sync run by another process shows too.
    pub fn status(&self) -> status::SyncStatus {
        let mut status = self.board.snapshot();
        if let Some(record) = self.serving.as_ref().and_then(|c| c.served_record()) {
            status.merge_version_record(&record);
        }
        status
    }

    /// Whether phpMyAdmin rejected the last login here (no login is tried until asked).
    pub fn login_blocked(&self) -> bool {
        self.login_blocked.load(Ordering::Acquire)
    }

    /// Subscribes to the outcome of every sync that finishes from now on.
    pub fn subscribe_outcomes(&self) -> broadcast::Receiver<SyncOutcome> {
        self.outcomes.subscribe()
    }

    /// Starts a sync in the background unless one is running, here or in another process that
    /// shares the cache. Without phpMyAdmin settings but with Redis (a replica), the request is
    /// forwarded to the worker, whose answer this returns.
    pub async fn trigger(self: &Arc<Self>) -> Trigger {
        self.trigger_with(Ask::default()).await
    }

    /// [`Syncer::trigger`]; after phpMyAdmin rejected the login, only with `retry_login` (an
    /// admin who fixed the account says so), which a replica forwards to the worker signed.
    /// With `full`, this sync (or the next, if one is running) exports the whole table.
    pub async fn trigger_with(self: &Arc<Self>, ask: Ask) -> Trigger {
        let Some(settings) = self.settings.clone() else {
            return self.forward(ask).await;
        };
        if self.shutdown.is_cancelled() {
            return Trigger::ShuttingDown;
        }
        if self.login_blocked.load(Ordering::Acquire) && !ask.retry_login {
            return Trigger::LoginBlocked;
        }
        if ask.full {
            self.full_requested.store(true, Ordering::Release);
        }
        if self
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Trigger::AlreadyRunning;
        }
        let flight = Flight(Arc::clone(self));
        let started_at = OffsetDateTime::now_utc();
        let held = match self.store.try_lock().await {
            Ok(Some(held)) => held,
            Ok(None) => return Trigger::AlreadyRunning,
            Err(e) => {
                self.finish(started_at, Duration::ZERO, Err(e));
                return Trigger::Started;
            }
        };
        self.board.update(|s| {
            s.state = "running";
            s.phase = None;
            s.started_at = Some(started_at);
        });
        let this = Arc::clone(self);
        self.tasks.spawn(async move {
            let progress = Progress::new(Some(this.board.clone()));
            tracing::info!("sync started");
            let keep = !settings.browser_idle_timeout.is_zero();
            let started = Instant::now();
            let mut browser = this.browser.take();
            let destination = Destination {
                store: &this.store,
                serving: this.serving.as_deref(),
            };
            let mut memory = this.memory.lock().await;
            if this.full_requested.swap(false, Ordering::AcqRel) {
                memory.request_full();
            }
            let sync = AssertUnwindSafe(sync_once(
                &settings,
                destination,
                &progress,
                &held,
                Between {
                    browser: &mut browser,
                    keep,
                    memory: &mut memory,
                },
                &this.shutdown,
            ));
            let result = sync.catch_unwind().await.unwrap_or_else(|panic| {
                Err(anyhow::anyhow!(
                    "the sync stopped on an internal error (panic: {}); this is a bug",
                    panic_message(panic.as_ref())
                ))
            });
            drop(memory);
            let returned = this.browser.put_back(browser);
            this.finish(started_at, started.elapsed(), result);
            held.release().await;
            if keep {
                let idle = settings.browser_idle_timeout;
                let (kept, stop) = (Arc::clone(&this), this.shutdown.clone());
                this.tasks.spawn(async move {
                    kept.browser.close_when_idle(returned, idle, stop).await;
                });
            }
            drop(flight);
        });
        Trigger::Started
    }

    /// Forwards a refresh request through Redis to the worker, if versions are shared there.
    async fn forward(&self, ask: Ask) -> Trigger {
        let Some(store) = self.store.redis() else {
            return Trigger::NotConfigured;
        };
        match store
            .forward_refresh(FORWARD_WAIT, ask.retry_login, ask.full)
            .await
        {
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
        let (Some(store), true) = (self.store.redis().cloned(), self.is_configured()) else {
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
                let (id, retry_login, full) = store.read_refresh_request(&id);
                let trigger = self.trigger_with(Ask { retry_login, full }).await;
                tracing::info!(
                    answer = trigger.as_answer(),
                    retry_login,
                    full,
                    "refresh request from a replica"
                );
                if let Err(e) = store.answer_refresh(&id, trigger.as_answer()).await {
                    tracing::warn!("{e:#}");
                }
            }
        };
        tokio::join!(listen, answer);
    }

    /// Records how a sync ended on the status board and publishes its outcome.
    fn finish(
        &self,
        started_at: OffsetDateTime,
        duration: Duration,
        result: anyhow::Result<SyncReport>,
    ) {
        let now = OffsetDateTime::now_utc();
        let login_rejected = result
            .as_ref()
            .is_err_and(|e| e.chain().any(|cause| cause.is::<LoginRejected>()));
        self.login_blocked.store(login_rejected, Ordering::Release);
        if login_rejected {
            tracing::error!(
                "no sync logs in again until the settings change (restart with a corrected PMA_USERNAME or PMA_PASSWORD) or an admin asks with POST /refresh?retry_login=true"
            );
        }
        let outcome = SyncOutcome {
            started_at,
            duration,
            result: result
                .as_ref()
                .map(|r| r.rows)
                .map_err(|e| format!("{e:#}")),
            login_rejected,
            kind: result.as_ref().ok().map(|r| r.kind.as_str()),
            export_bytes: result.as_ref().map_or(0, |r| r.export_bytes),
        };
        match result {
            Ok(report) => {
                tracing::info!(
                    rows = report.rows,
                    bytes = report.bytes,
                    kind = report.kind.as_str(),
                    full_reason = report.full_reason.as_deref().unwrap_or("-"),
                    export_bytes = report.export_bytes,
                    seconds = format_args!("{:.3}", report.duration.as_secs_f64()),
                    "sync succeeded"
                );
                self.board.update(|s| {
                    s.state = "idle";
                    s.phase = None;
                    s.last_success = Some(now);
                    s.last_duration_seconds = Some(report.duration.as_secs_f64());
                    s.last_rows = Some(report.rows);
                    s.last_kind = Some(report.kind.as_str());
                    s.last_full_reason = report.full_reason.clone();
                    s.last_export_bytes = Some(report.export_bytes);
                });
            }
            Err(e) => {
                let message = format!("{e:#}");
                tracing::error!("sync failed, the previous cache is still served: {message}");
                self.board.update(|s| {
                    s.state = "idle";
                    s.phase = None;
                    s.last_failure = Some(now);
                    s.last_error = Some(message);
                });
            }
        }
        // Nobody listening is fine: the board has it.
        let _ = self.outcomes.send(outcome);
    }

    /// Triggers a sync every `every`, the first at `first`, until shutdown. After a failure the
    /// next attempt comes sooner ([`retry_delay`]), backing off while failures continue.
    pub async fn run_schedule(self: Arc<Self>, every: Duration, first: Duration) {
        let mut wait = first;
        let mut failures = 0u32;
        loop {
            let at = OffsetDateTime::now_utc() + wait;
            self.board.update(|s| s.next_run = Some(at));
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            // Subscribed before the trigger, so that this sync's outcome cannot be missed.
            let mut outcomes = self.subscribe_outcomes();
            match self.trigger().await {
                Trigger::Started => {
                    tracing::info!(attempt = failures + 1, "scheduled sync started");
                }
                Trigger::AlreadyRunning => {
                    tracing::info!("scheduled sync skipped: one is already running");
                    wait = every;
                    continue;
                }
                Trigger::LoginBlocked => {
                    tracing::warn!(
                        "scheduled sync skipped: phpMyAdmin rejected the last login (POST /refresh?retry_login=true with an admin key tries again)"
                    );
                    wait = every;
                    continue;
                }
                Trigger::ShuttingDown | Trigger::NotConfigured | Trigger::NoWorker => break,
            }
            let ok = tokio::select! {
                () = self.shutdown.cancelled() => break,
                outcome = next_outcome(&mut outcomes) => outcome.is_some_and(|o| o.is_success()),
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

    /// Closes the kept browser, if any: at shutdown, once the tasks have ended.
    pub async fn close_kept_browser(&self) {
        self.browser.close().await;
    }
}

/// The next outcome published (`None` when the channel closed); one missed while lagging
/// counts as unknown, which the schedule treats as a failure.
async fn next_outcome(outcomes: &mut broadcast::Receiver<SyncOutcome>) -> Option<SyncOutcome> {
    match outcomes.recv().await {
        Ok(outcome) => Some(outcome),
        Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => None,
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

    #[test]
    fn a_forwarded_answer_reads_back_as_the_trigger_it_was() {
        for trigger in [
            Trigger::Started,
            Trigger::AlreadyRunning,
            Trigger::ShuttingDown,
        ] {
            assert_eq!(Trigger::from_answer(trigger.as_answer()), trigger);
        }
        assert_eq!(Trigger::from_answer("garbled"), Trigger::NoWorker);
    }
}
