//! The one-shot commands: `import` (a local CSV into the cache) and `sync` (one sync, then
//! exit). They open only the cache: no monitor, no schedule, no HTTP.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::cache::format::rfc3339;
use crate::cache::{
    csv_to_cache_json, json_capacity_for_csv, Destination, SyncLockGuard, TableSchema,
    VersionRecord, VersionStore,
};
use crate::config::{CacheArgs, ImportArgs, PmaArgs, SyncArgs, SyncSettings};
use crate::shutdown;
use crate::startup::sweep_leftovers;
use crate::sync::incremental::SyncMemory;
use crate::sync::once::Between;
use crate::sync::status::Progress;
use crate::sync::sync_once;

/// The exit status of `pma-cache sync --no-wait` when another process is syncing the same cache
/// (`EX_TEMPFAIL`: try again later).
pub const EXIT_SYNC_BUSY: u8 = 75;

/// Another process holds the sync lock and `--no-wait` was given.
#[derive(Debug, thiserror::Error)]
#[error("another process is syncing this cache (it holds {0}); not waiting (--no-wait)")]
pub struct SyncBusy(String);

/// `import`: converts a local CSV into the cache, atomically, under the sync lock.
pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let (cache_file, shared) = args.cache.validate()?;
    let schema = match &args.schema {
        Some(path) => Some(TableSchema::from_file(path)?),
        None => None,
    };
    sweep_leftovers().await;
    let store = VersionStore::open(cache_file.clone(), shared)?;
    let held = wait_for_lock(&store).await?;
    let result = import_locked(&store, args.file, args.null, schema, &cache_file).await;
    held.release().await;
    result
}

async fn import_locked(
    store: &Arc<VersionStore>,
    csv_path: PathBuf,
    null: Option<String>,
    schema: Option<TableSchema>,
    cache_file: &std::path::Path,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let started_at = OffsetDateTime::now_utc();
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
    if let Some(schema) = &schema {
        let declared: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        anyhow::ensure!(
            declared == converted.columns,
            "the schema's table `{}` has the columns {declared:?}, the CSV {:?}: nothing was \
             imported",
            schema.table,
            converted.columns
        );
    }
    let record = VersionRecord::made_now(
        converted.last_updated.clone(),
        rows,
        started_at,
        started,
        schema,
    );
    Destination {
        store,
        serving: None,
    }
    .publish(converted, record)
    .await?;
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
async fn wait_for_lock(store: &VersionStore) -> anyhow::Result<SyncLockGuard> {
    if let Some(held) = store.try_lock().await? {
        return Ok(held);
    }
    tracing::info!(
        lock = %store.describe_lock(),
        "another process is syncing this cache; waiting for it to finish"
    );
    tokio::select! {
        held = store.lock() => held,
        () = shutdown::signal() => anyhow::bail!("interrupted while waiting; the cache was left as it was"),
    }
}

/// The store and sync settings of `sync`, both required.
async fn sync_settings(
    cache: CacheArgs,
    pma: PmaArgs,
) -> anyhow::Result<(PathBuf, Arc<VersionStore>, SyncSettings)> {
    let (cache_file, shared) = cache.validate()?;
    let settings = pma
        .validate(&cache_file, true)?
        .context("PMA_URL is not set")?;
    sweep_leftovers().await;
    let store = VersionStore::open(cache_file.clone(), shared)?;
    Ok((cache_file, store, settings))
}

/// `sync`: one sync, then exit; waits for (or, with `--no-wait`, refuses) another process
/// syncing the same cache.
pub async fn sync(args: SyncArgs) -> anyhow::Result<()> {
    let (cache_file, store, settings) = sync_settings(args.cache, args.pma).await?;
    let before = store.version_tag().await;
    let held = match store.try_lock().await? {
        Some(held) => held,
        None if args.no_wait => return Err(SyncBusy(store.describe_lock()).into()),
        None => {
            let held = wait_for_lock(&store).await?;
            if store.version_tag().await != before {
                // The sync we waited for wrote a new version: exporting again would only repeat it.
                match store.latest_record().await {
                    Some(r) => tracing::info!(
                        rows = r.rows,
                        by = r.written_by,
                        "another process refreshed the cache at {}; not exporting again",
                        rfc3339(r.finished_at)
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
    // One-shot: the browser is closed before this returns, on every path.
    let mut browser = None;
    // A one-shot sync holds no version to merge into: it always exports the whole table.
    let mut memory = SyncMemory::default();
    let result = {
        let sync = sync_once(
            &settings,
            Destination {
                store: &store,
                serving: None,
            },
            &progress,
            &held,
            Between {
                browser: &mut browser,
                keep: false,
                memory: &mut memory,
            },
            &stop,
        );
        tokio::pin!(sync);
        // Ctrl-C or SIGTERM stops the sync at its next step; it still ends (browser closed) here.
        let result = tokio::select! {
            result = &mut sync => result,
            () = shutdown::signal() => {
                stop.cancel();
                sync.await
            }
        };
        result
    };
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
