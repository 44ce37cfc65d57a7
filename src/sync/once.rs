//! One sync, start to finish: export the table (with retries), convert it while it downloads,
//! check it against the shrink guard, and replace the cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::incremental::{self, Incremental, SyncKind, SyncMemory};
use super::leftovers;
use super::retries::{export_with_retries, Exported};
use super::session::Browser;
use super::shrink_guard::check_row_count;
use super::status::{Phase, Progress};
use crate::cache::format::rfc3339;
use crate::cache::{
    csv_to_cache_json, json_capacity_for_csv, Cache, Converted, Destination, KnownChanges,
    Snapshot, SyncLockGuard, TableSchema, VersionRecord,
};
use crate::config::SyncSettings;

/// What a successful sync did.
#[derive(Debug, Clone)]
pub struct SyncReport {
    pub rows: usize,
    pub bytes: usize,
    pub duration: Duration,
    /// How the table was read, and why a full export when it was one.
    pub kind: SyncKind,
    pub full_reason: Option<String>,
    /// The CSV bytes phpMyAdmin produced for this sync.
    pub export_bytes: usize,
}

/// What a sync keeps from the one before for the next: the browser in `browser` (none: one is
/// started), kept there after the sync with `keep` (else closed while the CSV converts), and
/// what an incremental sync compares with (see [`super::incremental`]).
#[derive(Debug)]
pub struct Between<'a> {
    pub browser: &'a mut Option<Browser>,
    pub keep: bool,
    pub memory: &'a mut SyncMemory,
}

/// What the steps of a sync report.
struct Done {
    rows: usize,
    bytes: usize,
    kind: SyncKind,
    full_reason: Option<String>,
    export_bytes: usize,
}

/// Runs one sync: export the table through phpMyAdmin, convert it, check it, and replace the
/// cache. On any error the cache is left as it was. The caller holds the cache's sync lock
/// (`_held`) for the whole sync.
///
/// The export uses the browser `between` holds (starting one if there is none), kept there,
/// logged in, for the next sync when it says so. A failed sync forgets what an incremental sync
/// compares with, so the next one is a full export.
/// The sync ends early when `cancel` fires or `settings.timeout` passes: the export stops at its
/// next step and the browser is closed before this returns.
pub async fn sync_once(
    settings: &SyncSettings,
    destination: Destination<'_>,
    progress: &Progress,
    _held: &SyncLockGuard,
    between: Between<'_>,
    cancel: &CancellationToken,
) -> anyhow::Result<SyncReport> {
    let Between {
        browser,
        keep,
        memory,
    } = between;
    let started = Instant::now();
    let stop = cancel.child_token();
    let mut steps = Box::pin(sync_steps(
        settings,
        destination,
        progress,
        browser,
        keep,
        &stop,
        memory,
    ));
    let mut timed_out = false;
    let result = tokio::select! {
        r = &mut steps => r,
        () = tokio::time::sleep(settings.timeout) => {
            timed_out = true;
            stop.cancel();
            (&mut steps).await
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
    drop(steps);
    progress.finish_current();
    let done = match result {
        Ok(done) => done,
        Err(e) => {
            memory.forget();
            return Err(e);
        }
    };
    Ok(SyncReport {
        rows: done.rows,
        bytes: done.bytes,
        duration: started.elapsed(),
        kind: done.kind,
        full_reason: done.full_reason,
        export_bytes: done.export_bytes,
    })
}

async fn sync_steps(
    settings: &SyncSettings,
    destination: Destination<'_>,
    progress: &Progress,
    browser: &mut Option<Browser>,
    keep: bool,
    stop: &CancellationToken,
    memory: &mut SyncMemory,
) -> anyhow::Result<Done> {
    let started = Instant::now();
    let started_at = OffsetDateTime::now_utc();
    super::fault::hit().await;
    let current = destination.serving.and_then(Cache::current);
    let null_token = null_token();
    let mut full_reason = memory.full_reason(settings, current.as_deref());
    if let (None, Some(held)) = (&full_reason, &current) {
        let changes = tokio::select! {
            changes = incremental::sync_changes(settings, memory, browser, held, &null_token, progress) => changes,
            () = stop.cancelled() => {
                if let Some(b) = browser.take() {
                    b.close().await;
                }
                Err(anyhow::anyhow!("the incremental export was stopped"))
            }
        };
        let changes = changes
            .context("the incremental sync failed; the next sync exports the whole table")?;
        match changes {
            Incremental::Merged(changes) => {
                let incremental::Changes {
                    converted,
                    schema,
                    kind,
                    counts,
                    known,
                    export_bytes,
                    next,
                } = *changes;
                tracing::info!(
                    kind = kind.as_str(),
                    inserted = counts.inserted,
                    updated = counts.updated,
                    deleted = counts.deleted,
                    unchanged = counts.unchanged,
                    export_bytes,
                    "merged the changed rows"
                );
                if !keep {
                    if let Some(b) = browser.take() {
                        b.close().await;
                    }
                }
                check_row_count(settings, Ok(Some(held.count)), converted.count)?;
                if stop.is_cancelled() {
                    bail!("the sync was stopped before writing");
                }
                let (rows, bytes) = (converted.count, converted.cache_bytes().len());
                let written = Written {
                    kind,
                    schema: Some(schema.clone()),
                    started_at,
                    started,
                    known: Some(known),
                };
                match publish(&destination, progress, converted, written).await? {
                    Some(served) => memory.remember(served.etag.clone(), Some(schema), next, false),
                    None => memory.forget(),
                }
                return Ok(Done {
                    rows,
                    bytes,
                    kind,
                    full_reason: None,
                    export_bytes,
                });
            }
            Incremental::NeedsFull(why) => full_reason = Some(why),
        }
    }
    let full_reason = full_reason.unwrap_or_default();
    tracing::info!(reason = %full_reason, "exporting the whole table");
    // Only a process that keeps the version it makes can merge into it next time.
    let next = match destination.serving {
        Some(_) => incremental::read_before_full(settings, browser, &null_token, progress).await?,
        None => incremental::Next::none(),
    };
    // Room for the new version's JSON, reserved before the download starts so that the buffer
    // never grows (and is copied) while the CSV arrives: the previous version's size and 1/8.
    let json_capacity = destination
        .document_bytes()
        .await
        .map_or(0, |bytes| bytes.saturating_add(bytes / 8));
    // The CSV is moved here, out of the browser's folder, so that the browser can close (or take
    // the next download) while it converts.
    let work = leftovers::folder("sync").context("cannot create a work folder")?;
    // The shrink guard's row count, read while the export runs: the file is read as a stream, so
    // the old table is never held beside the new one.
    let counting = destination.row_count();
    let exporting = export_with_retries(
        settings,
        browser,
        &null_token,
        json_capacity,
        progress,
        stop,
    );
    let (exported, previous) = tokio::join!(exporting, counting);
    let closing = match keep {
        true => None,
        false => browser.take().map(|b| tokio::spawn(b.close())),
    };
    let csv_path = work.path().join("export.csv");
    let (converted, last_byte, schema) = match exported {
        Ok(mut exported) => {
            let last_byte = std::fs::metadata(&exported.csv).and_then(|m| m.modified());
            let schema = exported.schema.take();
            progress.enter(Phase::Converting);
            let converted = finish_conversion(exported, &csv_path, null_token).await;
            (converted, last_byte.ok(), schema)
        }
        Err(e) => (Err(e), None, None),
    };
    if let Some(closing) = closing {
        if let Err(e) = closing.await {
            tracing::warn!("closing the browser failed: {e}");
        }
    }
    let converted = converted?;
    let export_bytes = csv_path.metadata().map_or(0, |m| m.len() as usize);
    progress.note("rows", converted.count);
    progress.note("json bytes", converted.cache_bytes().len());

    check_row_count(settings, previous, converted.count)?;
    if stop.is_cancelled() {
        bail!("the sync was stopped before writing");
    }

    let (rows, bytes) = (converted.count, converted.cache_bytes().len());
    let schema = schema.filter(|s| matches_columns(s, &converted.columns));
    let written = Written {
        kind: SyncKind::Full,
        schema: schema.clone(),
        started_at,
        started,
        known: None,
    };
    let served = publish(&destination, progress, converted, written).await?;
    // The download's file was last modified by its last byte: from there to here is what a
    // refresh waits for beyond the export itself.
    if let Some(tail) = last_byte.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        tracing::info!(
            seconds = format_args!("{:.3}", tail.as_secs_f64()),
            "from the download's last byte to the durable cache file"
        );
    }
    match served {
        Some(served) => {
            let next = incremental::after_full(settings, next, &served, schema.as_ref()).await;
            memory.remember(served.etag.clone(), schema, next, true);
        }
        None => memory.forget(),
    }
    Ok(Done {
        rows,
        bytes,
        kind: SyncKind::Full,
        full_reason: Some(full_reason),
        export_bytes,
    })
}

/// How a new version was made, for its record.
struct Written {
    kind: SyncKind,
    schema: Option<TableSchema>,
    started_at: OffsetDateTime,
    started: Instant,
    /// The keys an incremental sync changed (its change set).
    known: Option<KnownChanges>,
}

/// Writes `converted` as the new version, with its record, and serves it when this process
/// serves the cache. Gives the version served afterwards when it is this one (not one another
/// process wrote since): what the next incremental sync merges into.
async fn publish(
    destination: &Destination<'_>,
    progress: &Progress,
    converted: Converted,
    written: Written,
) -> anyhow::Result<Option<Arc<Snapshot>>> {
    progress.enter(Phase::Writing);
    let mut record = VersionRecord::made_now(
        converted.last_updated.clone(),
        converted.count,
        written.started_at,
        written.started,
        written.schema,
    );
    record.sync_kind = Some(written.kind.as_str().to_owned());
    let stamp = converted.last_updated.clone();
    let path = destination.store.path();
    destination
        .publish_with(converted, record, written.known)
        .await
        .with_context(|| format!("cannot write the cache file {}", path.display()))?;
    Ok(destination
        .serving
        .and_then(Cache::current)
        .filter(|served| served.last_updated == stamp))
}

/// Moves the CSV to `csv_path` (so that the browser can close or take the next download) and
/// ends its conversion: the one that followed the download when it read this very file, else a
/// conversion of the whole file.
async fn finish_conversion(
    exported: Exported,
    csv_path: &Path,
    null_token: String,
) -> anyhow::Result<Converted> {
    let Exported { csv, following, .. } = exported;
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

/// Whether `schema` declares exactly the exported columns (a table changed between the two
/// reads is exported again next time; until then its columns are text).
fn matches_columns(schema: &TableSchema, columns: &[String]) -> bool {
    let same = schema.columns.len() == columns.len()
        && schema
            .columns
            .iter()
            .zip(columns)
            .all(|(s, c)| s.name == *c);
    if !same {
        tracing::warn!(
            "the table's structure and the exported columns differ; its columns are text for              queries until the next sync"
        );
    }
    same
}
