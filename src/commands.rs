//! What each subcommand does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::app::Application;
use crate::cache::{csv_to_cache_json, store, Cache};
use crate::config::{
    validate_cache_file, CacheArgs, Command, ImportArgs, PmaArgs, SyncArgs, SyncSettings,
    WorkerArgs,
};
use crate::shutdown;
use crate::sync::status::{rfc3339, Progress};
use crate::sync::{sync_once, Syncer};

/// Runs `command` to completion.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let app = Application::build(args.validate()?).await?;
            app.run_until_stopped(shutdown::signal()).await
        }
        Command::Import(args) => import(args).await,
        Command::Worker(args) => worker(args).await,
        Command::Sync(args) => sync(args).await,
    }
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let cache_file = validate_cache_file(args.cache.cache_file)?;
    let csv_path = args.file;
    let null = args.null;
    let (rows, columns, bytes) = tokio::task::spawn_blocking({
        let cache_file = cache_file.clone();
        move || -> anyhow::Result<_> {
            let file = std::fs::File::open(&csv_path)
                .with_context(|| format!("cannot read {}", csv_path.display()))?;
            let size = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
            let now = rfc3339(OffsetDateTime::now_utc().replace_nanosecond(0)?);
            let started = std::time::Instant::now();
            let converted = csv_to_cache_json(file, null.as_deref(), &now, size)
                .with_context(|| format!("{} was not imported", csv_path.display()))?;
            let converted_in = started.elapsed();
            store::write_atomic(&cache_file, converted.cache_bytes())?;
            tracing::debug!(
                convert_seconds = converted_in.as_secs_f64(),
                write_seconds = (started.elapsed() - converted_in).as_secs_f64(),
                "import timings"
            );
            Ok((
                converted.count,
                converted.columns.len(),
                converted.cache_bytes().len(),
            ))
        }
    })
    .await??;
    tracing::info!(
        rows,
        columns,
        bytes,
        file = %cache_file.display(),
        "imported"
    );
    Ok(())
}

/// The cache file and sync settings of `sync` and `worker`, both required.
fn sync_settings(cache: CacheArgs, pma: PmaArgs) -> anyhow::Result<(PathBuf, SyncSettings)> {
    let cache_file = validate_cache_file(cache.cache_file)?;
    let settings = pma
        .validate(&cache_file, true)?
        .context("PMA_URL is not set")?;
    Ok((cache_file, settings))
}

async fn sync(args: SyncArgs) -> anyhow::Result<()> {
    let (cache_file, settings) = sync_settings(args.cache, args.pma)?;
    let cache = Cache::file_only(&cache_file);
    let progress = Progress::new(None);
    let report = tokio::select! {
        r = sync_once(&settings, &cache, &progress) => r?,
        () = shutdown::signal() => anyhow::bail!("interrupted; the cache was left as it was"),
    };
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
    let (cache_file, settings) = sync_settings(args.cache, args.pma)?;
    let cache = Cache::file_only(&cache_file);
    let stop = CancellationToken::new();
    let syncer = Syncer::new(Some(settings), cache, stop.clone());
    tracing::info!(
        every = %humantime::format_duration(args.sync_interval),
        file = %cache_file.display(),
        "worker started"
    );
    let schedule =
        tokio::spawn(Arc::clone(&syncer).run_schedule(args.sync_interval, Duration::ZERO));
    shutdown::signal().await;
    tracing::info!("shutting down");
    stop.cancel();
    syncer.wait_idle().await;
    schedule
        .await
        .context("the schedule stopped unexpectedly")?;
    Ok(())
}
