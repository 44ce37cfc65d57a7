//! What each subcommand does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::app::Application;
use crate::cache::{
    csv_to_cache_json, json_capacity_for_csv, Cache, SharedStore, SyncLockGuard, VersionRecord,
};
use crate::config::{
    CacheArgs, Command, ImportArgs, PmaArgs, SharedSettings, SyncArgs, SyncSettings, WorkerArgs,
};
use crate::ops;
use crate::shutdown;
use crate::sync::status::{rfc3339, Progress};
use crate::sync::{leftovers, sync_once, Syncer};

/// The exit status of `pma-cache sync --no-wait` when another process is syncing the same cache
/// (`EX_TEMPFAIL`: try again later).
pub const EXIT_SYNC_BUSY: u8 = 75;

/// Another process holds the sync lock and `--no-wait` was given.
#[derive(Debug, thiserror::Error)]
#[error("another process is syncing this cache (it holds {0}); not waiting (--no-wait)")]
pub struct SyncBusy(String);

/// Runs `command` to completion.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let config = args.validate()?;
            sweep_leftovers().await;
            let app = Application::build(config).await?;
            app.run_until_stopped(shutdown::signal()).await
        }
        Command::Import(args) => import(args).await,
        Command::Worker(args) => worker(args).await,
        Command::Sync(args) => sync(args).await,
    }
}

/// Ends what earlier, killed runs left behind (browser folders, a browser still running). Runs
/// once the settings are known to be valid, so a configuration error stays the only line printed.
async fn sweep_leftovers() {
    if let Err(e) = tokio::task::spawn_blocking(leftovers::clean_stale).await {
        tracing::warn!("looking for leftovers of earlier runs failed: {e}");
    }
}

/// Redis keys are named after this.
const SHARED_PREFIX: &str = "pma-cache";

/// The cache at `cache_file`, its versions shared through Redis when `shared` is set;
/// `serving` keeps the current snapshot in memory. Removes leftovers of killed writers.
pub fn open_cache(
    cache_file: PathBuf,
    shared: Option<SharedSettings>,
    serving: bool,
) -> anyhow::Result<Arc<Cache>> {
    let store = match shared {
        Some(s) => Some(SharedStore::open(
            s.redis_url.expose(),
            SHARED_PREFIX,
            s.lock_ttl,
        )?),
        None => None,
    };
    let cache = Cache::open(cache_file, store, serving);
    cache.remove_stale_temporaries();
    Ok(cache)
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let (cache_file, shared) = args.cache.validate()?;
    sweep_leftovers().await;
    let cache = open_cache(cache_file.clone(), shared, false)?;
    let held = wait_for_lock(&cache).await?;
    let result = import_locked(&cache, args.file, args.null, &cache_file).await;
    held.release().await;
    result
}

async fn import_locked(
    cache: &Arc<Cache>,
    csv_path: PathBuf,
    null: Option<String>,
    cache_file: &std::path::Path,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let started_at = rfc3339(OffsetDateTime::now_utc());
    let converted = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let file = std::fs::File::open(&csv_path)
            .with_context(|| format!("cannot read {}", csv_path.display()))?;
        let size = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let now = rfc3339(OffsetDateTime::now_utc().replace_nanosecond(0)?);
        csv_to_cache_json(file, null.as_deref(), &now, json_capacity_for_csv(size))
            .with_context(|| format!("{} was not imported", csv_path.display()))
    })
    .await??;
    let converted_in = started.elapsed();
    let (rows, columns, bytes) = (
        converted.count,
        converted.columns.len(),
        converted.cache_bytes().len(),
    );
    let record = VersionRecord::made_now(converted.last_updated.clone(), rows, started_at, started);
    cache.replace(converted, record).await?;
    tracing::debug!(
        convert_seconds = format_args!("{:.3}", converted_in.as_secs_f64()),
        write_seconds = format_args!("{:.3}", (started.elapsed() - converted_in).as_secs_f64()),
        "import timings"
    );
    tracing::info!(
        rows,
        columns,
        bytes,
        seconds = format_args!("{:.3}", started.elapsed().as_secs_f64()),
        file = %cache_file.display(),
        "imported"
    );
    Ok(())
}

/// Takes the cache's sync lock, waiting (and saying so) while another process holds it.
async fn wait_for_lock(cache: &Cache) -> anyhow::Result<SyncLockGuard> {
    let lock = cache.sync_lock();
    if let Some(held) = lock.try_acquire().await? {
        return Ok(held);
    }
    tracing::info!(
        lock = %lock.describe(),
        "another process is syncing this cache; waiting for it to finish"
    );
    tokio::select! {
        held = lock.acquire() => held,
        () = shutdown::signal() => anyhow::bail!("interrupted while waiting; the cache was left as it was"),
    }
}

/// The cache (not serving) and sync settings of `sync` and `worker`, both required.
async fn sync_settings(
    cache: CacheArgs,
    pma: PmaArgs,
) -> anyhow::Result<(PathBuf, Arc<Cache>, SyncSettings)> {
    let (cache_file, shared) = cache.validate()?;
    let settings = pma
        .validate(&cache_file, true)?
        .context("PMA_URL is not set")?;
    sweep_leftovers().await;
    let cache = open_cache(cache_file.clone(), shared, false)?;
    Ok((cache_file, cache, settings))
}

async fn sync(args: SyncArgs) -> anyhow::Result<()> {
    let (cache_file, cache, settings) = sync_settings(args.cache, args.pma).await?;
    let before = cache.version_tag().await;
    let held = match cache.sync_lock().try_acquire().await? {
        Some(held) => held,
        None if args.no_wait => return Err(SyncBusy(cache.sync_lock().describe()).into()),
        None => {
            let held = wait_for_lock(&cache).await?;
            if cache.version_tag().await != before {
                // The sync we waited for wrote a new version: exporting again would only repeat it.
                match cache.latest_record().await {
                    Some(r) => tracing::info!(
                        rows = r.rows,
                        by = r.written_by,
                        "another process refreshed the cache at {}; not exporting again",
                        r.finished_at
                    ),
                    None => tracing::info!(
                        "another process refreshed the cache meanwhile; not exporting again"
                    ),
                }
                held.release().await;
                return Ok(());
            }
            tracing::info!("the other process wrote no new cache; syncing now");
            held
        }
    };
    let progress = Progress::new(None);
    let stop = CancellationToken::new();
    let interrupt = tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown::signal().await;
            stop.cancel();
        }
    });
    // One-shot: the browser is closed before this returns, on every path.
    let mut browser = None;
    let result = sync_once(
        &settings,
        &cache,
        &progress,
        &held,
        &mut browser,
        false,
        &stop,
    )
    .await;
    interrupt.abort();
    let result = match result {
        Err(_) if stop.is_cancelled() => {
            Err(anyhow::anyhow!("interrupted; the cache was left as it was"))
        }
        other => other,
    };
    held.release().await;
    let report = result?;
    tracing::info!(
        rows = report.rows,
        bytes = report.bytes,
        seconds = format_args!("{:.3}", report.duration.as_secs_f64()),
        file = %cache_file.display(),
        "sync succeeded"
    );
    Ok(())
}

async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let (cache_file, cache, settings) = sync_settings(args.cache, args.pma).await?;
    // A restart (or a crash loop) does not sync again while the cache is fresh.
    let first = match cache.age().await {
        Some(age) => args.sync_interval.saturating_sub(age),
        None => Duration::ZERO,
    };
    let stop = CancellationToken::new();
    let alert_settings = args.alerts.validate(Some(args.sync_interval))?;
    let (monitor, alerts) = ops::monitor(&alert_settings, &cache, Some(&settings), Vec::new());
    let alerts = alerts.map(|task| tokio::spawn(task.run(stop.clone())));
    let syncer = Syncer::new(Some(settings), cache, stop.clone());
    syncer.observe(monitor);
    tracing::info!(
        every = %humantime::format_duration(args.sync_interval),
        first_sync_in = %humantime::format_duration(Duration::from_secs(first.as_secs())),
        file = %cache_file.display(),
        "worker started"
    );
    let schedule = tokio::spawn(Arc::clone(&syncer).run_schedule(args.sync_interval, first));
    let forwarded = tokio::spawn(Arc::clone(&syncer).answer_forwarded_refreshes());
    shutdown::signal().await;
    tracing::info!("shutting down");
    stop.cancel();
    syncer.wait_idle().await;
    schedule
        .await
        .context("the schedule stopped unexpectedly")?;
    forwarded
        .await
        .context("the answering of forwarded refreshes stopped unexpectedly")?;
    if let Some(alerts) = alerts {
        alerts
            .await
            .context("the alert task stopped unexpectedly")?;
    }
    Ok(())
}
