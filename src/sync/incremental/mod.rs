//! Syncs that export what changed, not the whole table, between full exports.
//!
//! - **By row digest** (tables with a key): MySQL sums the table up in buckets of rows (see
//!   [`sql`]); the buckets whose sums changed since the last sync are exported again, and their
//!   rows replace the held ones of the same buckets (a held row missing from them was deleted).
//! - **By cursor** (`SYNC_CURSOR`): the rows whose cursor is at or after the highest value seen
//!   at the last sync (less `SYNC_CURSOR_OVERLAP`) are exported, and the key column alone, to
//!   find deletions.
//!
//! Both read their next starting point (the sums, the cursor's highest value) *before* the rows,
//! so a row written in between is exported again next time rather than missed. The merge
//! ([`crate::cache::merge`]) gives the document a full export would give; a merged row count
//! unequal to the table's, a change of columns, types or key, and a change too large to be worth
//! it make the sync a full export instead. [`SyncMemory`] holds what the next sync compares with,
//! in this process only: its first sync is full, and so is any sync after a failed one or after
//! another process wrote the version served.

pub mod sql;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context};
use time::OffsetDateTime;

use self::sql::BucketSum;
use crate::cache::delta::KnownChanges;
use crate::cache::format::rfc3339;
use crate::cache::merge::{merge, MergeCounts, Merged};
use crate::cache::schema::ValueKind;
use crate::cache::typed::KEY_SEPARATOR;
use crate::cache::{csv_to_cache_json, Converted, Snapshot, TableSchema, TypedTable};
use crate::config::SyncSettings;
use crate::sync::error::ExportError;
use crate::sync::phpmyadmin::{give_up_browser, open_export_form};
use crate::sync::query_export::{export_query_csv, QueryAnswer};
use crate::sync::session::Browser;
use crate::sync::status::{Phase, Progress};
use crate::sync::structure::read_structure;

/// How a sync read the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncKind {
    Full,
    RowHash,
    Cursor,
}

impl SyncKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncKind::Full => "full",
            SyncKind::RowHash => "row_hash",
            SyncKind::Cursor => "cursor",
        }
    }
}

/// An incremental export re-exports at most this share of the table; beyond it a full export
/// costs about as much and is simpler.
const MAX_CHANGED_SHARE: f64 = 0.25;

/// What the next sync compares with: the version the last sync made here, and the table's
/// state read just before its rows.
#[derive(Debug, Default)]
pub struct SyncMemory {
    held: Option<Held>,
    /// The next sync is a full export (`POST /refresh?full=true`).
    full_requested: bool,
}

#[derive(Debug)]
struct Held {
    /// The version made (its ETag): an incremental sync merges into this version only.
    etag: String,
    schema: TableSchema,
    last_full: Instant,
    state: State,
}

#[derive(Debug)]
enum State {
    RowHash {
        key: Vec<String>,
        buckets: u32,
        sums: Vec<BucketSum>,
    },
    Cursor {
        key: Vec<String>,
        kind: ValueKind,
        /// The cursor's highest value when the rows were read; `None` for an empty table.
        mark: Option<String>,
    },
}

/// The merged table of an incremental sync, and what the next sync compares with.
pub struct Changes {
    pub converted: Converted,
    pub schema: TableSchema,
    pub kind: SyncKind,
    pub counts: MergeCounts,
    /// The keys the merge changed, for the change set.
    pub known: KnownChanges,
    pub export_bytes: usize,
    pub next: Next,
}

/// What an incremental sync found.
pub enum Incremental {
    Merged(Box<Changes>),
    /// A full export is needed instead, and why.
    NeedsFull(String),
}

/// The table's state read before a sync's rows, kept once its version is served.
#[derive(Debug)]
pub struct Next(Option<State>);

impl Next {
    /// Nothing for the next sync to compare with: it is a full export.
    pub fn none() -> Self {
        Self(None)
    }
}

impl SyncMemory {
    /// Makes the next sync a full export.
    pub fn request_full(&mut self) {
        self.full_requested = true;
    }

    /// Forgets the held state: the next sync is a full export.
    pub fn forget(&mut self) {
        self.held = None;
    }

    /// Why this sync must export the whole table, or `None` when it may export the changes
    /// to `current` (the version served now).
    pub fn full_reason(
        &mut self,
        settings: &SyncSettings,
        current: Option<&Snapshot>,
    ) -> Option<String> {
        if std::mem::take(&mut self.full_requested) {
            return Some("a full export was asked for".into());
        }
        if settings.full_every.is_zero() {
            return Some("SYNC_FULL_EVERY is 0".into());
        }
        let Some(held) = &self.held else {
            return Some("first sync of this process (or after a failed one)".into());
        };
        if held.last_full.elapsed() >= settings.full_every {
            return Some(format!(
                "the last full export is older than SYNC_FULL_EVERY ({})",
                humantime::format_duration(settings.full_every)
            ));
        }
        match current {
            Some(current) if current.etag == held.etag && current.typed().is_some() => None,
            Some(_) => Some("the version served is not the one this process made".into()),
            None => Some("no version is served".into()),
        }
    }

    /// Keeps what the next sync compares with, once the version `etag` it made is served.
    pub fn remember(&mut self, etag: String, schema: Option<TableSchema>, next: Next, full: bool) {
        let last_full = match (&self.held, full) {
            (Some(held), false) => held.last_full,
            _ => Instant::now(),
        };
        self.held = match (schema, next.0) {
            (Some(schema), Some(state)) => Some(Held {
                etag,
                schema,
                last_full,
                state,
            }),
            _ => None,
        };
    }
}

/// Before a full export: opens the export form, reads the table's structure and takes the
/// state the next sync compares with (the bucket sums, or the cursor's mark). Fails the sync
/// only when phpMyAdmin rejects the login (never tried twice); any other failure leaves the next
/// sync a full export too, and the log says why.
pub async fn read_before_full(
    settings: &SyncSettings,
    browser: &mut Option<Browser>,
    current: Option<&Snapshot>,
    null_token: &str,
    progress: &Progress,
) -> anyhow::Result<Next> {
    if settings.full_every.is_zero() {
        return Ok(Next(None));
    }
    let started = Instant::now();
    match state_now(settings, browser, current, null_token, progress).await {
        Ok((state, _)) => {
            tracing::debug!(
                seconds = started.elapsed().as_secs_f64(),
                "read the table's state for the next incremental sync"
            );
            Ok(Next(Some(state)))
        }
        Err(e) => {
            if let Some(ExportError::LoginRejected(message)) = e.downcast_ref::<ExportError>() {
                let message = settings.password.scrub(message);
                if let Some(b) = browser.take() {
                    b.close().await;
                }
                return Err(crate::sync::error::LoginRejected {
                    user: settings.username.clone(),
                    message,
                }
                .into());
            }
            if let Some(b) = browser.take() {
                let failed = ExportError::Transient(anyhow!("{e:#}"));
                let _ = give_up_browser(settings, &mut Some(b), failed).await;
            }
            tracing::warn!("the next sync will be a full export too: {e:#}");
            Ok(Next(None))
        }
    }
}

async fn state_now(
    settings: &SyncSettings,
    browser: &mut Option<Browser>,
    current: Option<&Snapshot>,
    null_token: &str,
    progress: &Progress,
) -> anyhow::Result<(State, usize)> {
    let schema = at_form_with_structure(settings, browser, progress).await?;
    let key = key_of(settings, &schema)?;
    let columns: Vec<String> = schema.columns.iter().map(|c| c.name.clone()).collect();
    let b = browser.as_mut().expect("the browser is at the form");
    match &settings.cursor {
        Some(cursor) => {
            let kind = cursor_kind(&schema, cursor)?;
            let (mark, _rows, bytes) = read_mark(b, settings, cursor, null_token, progress).await?;
            Ok((State::Cursor { key, kind, mark }, bytes))
        }
        None => {
            // Sized by the version held, else by the row count phpMyAdmin's export page shows.
            let rows = match current {
                Some(current) => current.count,
                None => page_row_count(b).await,
            };
            let buckets = sql::buckets_for(rows);
            let query =
                sql::bucket_sums(&settings.database, &settings.table, &key, &columns, buckets);
            let text = csv_of(b, settings, &query, null_token, progress).await?;
            let sums = sql::read_bucket_sums(&text, null_token, buckets)?;
            Ok((State::RowHash { key, buckets, sums }, text.len()))
        }
    }
}

/// Exports what changed since the held version `current` and merges it in (see the module's
/// notes). An error leaves nothing half-made: the caller keeps the version served.
pub async fn sync_changes(
    settings: &SyncSettings,
    memory: &SyncMemory,
    browser: &mut Option<Browser>,
    current: &Arc<Snapshot>,
    null_token: &str,
    progress: &Progress,
) -> anyhow::Result<Incremental> {
    let held = memory
        .held
        .as_ref()
        .ok_or_else(|| anyhow!("no state held"))?;
    let result = changes(settings, held, browser, current, null_token, progress).await;
    if let Err(e) = &result {
        if let Some(export) = e.downcast_ref::<ExportError>() {
            if let ExportError::LoginRejected(message) = export {
                let message = settings.password.scrub(message);
                if let Some(b) = browser.take() {
                    b.close().await;
                }
                return Err(crate::sync::error::LoginRejected {
                    user: settings.username.clone(),
                    message,
                }
                .into());
            }
        }
        if let Some(b) = browser.take() {
            let _ = give_up_browser(
                settings,
                &mut Some(b),
                ExportError::Transient(anyhow!("the incremental export failed")),
            )
            .await;
        }
    }
    result
}

async fn changes(
    settings: &SyncSettings,
    held: &Held,
    browser: &mut Option<Browser>,
    current: &Arc<Snapshot>,
    null_token: &str,
    progress: &Progress,
) -> anyhow::Result<Incremental> {
    let schema = at_form_with_structure(settings, browser, progress).await?;
    if schema != held.schema {
        return Ok(Incremental::NeedsFull(
            "the table's columns, types or key changed".into(),
        ));
    }
    super::fault::hit_named("incremental").await?;
    let b = browser.as_mut().expect("the browser is at the form");
    let mut export_bytes = 0;
    let (fresh_csv, keep, expected, next, kind) = match &held.state {
        State::RowHash { key, buckets, sums } => {
            let columns: Vec<String> = schema.columns.iter().map(|c| c.name.clone()).collect();
            let query =
                sql::bucket_sums(&settings.database, &settings.table, key, &columns, *buckets);
            let text = csv_of(b, settings, &query, null_token, progress).await?;
            export_bytes += text.len();
            let now = sql::read_bucket_sums(&text, null_token, *buckets)?;
            let changed: Vec<u32> = (0..*buckets)
                .filter(|&i| now[i as usize] != sums[i as usize])
                .collect();
            let rows: u64 = now.iter().map(|s| s.rows).sum();
            let to_export: u64 = changed.iter().map(|&i| now[i as usize].rows).sum();
            progress.note("buckets changed", format!("{} of {buckets}", changed.len()));
            if to_export as f64 > MAX_CHANGED_SHARE * rows as f64 && to_export > 1000 {
                return Ok(Incremental::NeedsFull(format!(
                    "{to_export} of {rows} rows are in changed buckets: a full export is cheaper"
                )));
            }
            let fresh = if changed.is_empty() {
                None
            } else {
                let query = sql::rows_in_buckets(
                    &settings.database,
                    &settings.table,
                    key,
                    *buckets,
                    &changed,
                );
                match export_query_csv(b, settings, &query, null_token, progress).await? {
                    QueryAnswer::Csv(text) => Some(text),
                    QueryAnswer::TooLarge => {
                        return Ok(Incremental::NeedsFull(
                            "the changed rows are too large for an incremental export".into(),
                        ))
                    }
                }
            };
            let changed: HashSet<u32> = changed.into_iter().collect();
            let buckets = *buckets;
            let keep = Keep::OutsideBuckets { buckets, changed };
            let next = State::RowHash {
                key: key.clone(),
                buckets,
                sums: now,
            };
            (fresh, keep, rows as usize, next, SyncKind::RowHash)
        }
        State::Cursor { key, kind, mark } => {
            let cursor = settings
                .cursor
                .as_deref()
                .ok_or_else(|| anyhow!("SYNC_CURSOR is no longer set"))?;
            let Some(mark) = mark else {
                return Ok(Incremental::NeedsFull(
                    "the cursor had no value at the last sync".into(),
                ));
            };
            let (new_mark, rows, bytes) =
                read_mark(b, settings, cursor, null_token, progress).await?;
            export_bytes += bytes;
            let text = csv_of(
                b,
                settings,
                &sql::keys(&settings.database, &settings.table, key),
                null_token,
                progress,
            )
            .await?;
            export_bytes += text.len();
            let keys = read_keys(&text, null_token, key.len())?;
            if keys.len() != rows {
                return Ok(Incremental::NeedsFull(format!(
                    "the table had {rows} rows, then {} keys: it changed during the sync",
                    keys.len()
                )));
            }
            let query = sql::rows_since(
                &settings.database,
                &settings.table,
                cursor,
                *kind,
                mark,
                settings.cursor_overlap,
            )?;
            let fresh = match export_query_csv(b, settings, &query, null_token, progress).await? {
                QueryAnswer::Csv(text) => text,
                QueryAnswer::TooLarge => {
                    return Ok(Incremental::NeedsFull(
                        "the changed rows are too large for an incremental export".into(),
                    ))
                }
            };
            let next = State::Cursor {
                key: key.clone(),
                kind: *kind,
                mark: new_mark,
            };
            (Some(fresh), Keep::Keys(keys), rows, next, SyncKind::Cursor)
        }
    };
    export_bytes += fresh_csv.as_ref().map_or(0, String::len);
    progress.enter(Phase::Converting);
    let columns: Vec<String> = schema.columns.iter().map(|c| c.name.clone()).collect();
    let (current, token) = (Arc::clone(current), null_token.to_owned());
    let (table, key_override, schema_for_view) =
        (settings.table.clone(), settings.key.clone(), schema.clone());
    let merged = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let fresh_csv = fresh_csv.unwrap_or_else(|| header_csv(&columns));
        let now = rfc3339(OffsetDateTime::now_utc().replace_nanosecond(0)?);
        let fresh = csv_to_cache_json(
            fresh_csv.as_bytes(),
            Some(&token),
            &now,
            fresh_csv.len() * 3,
        )
        .context("the exported rows could not be converted")?;
        anyhow::ensure!(
            fresh.columns == columns,
            "the exported columns {:?} differ from the table's",
            fresh.columns
        );
        let view = TypedTable::build_with_key(
            &fresh.buf[crate::cache::format::BODY_ROOM..],
            Some(&schema_for_view),
            &table,
            key_override.as_deref(),
        )?;
        if let Keep::OutsideBuckets { buckets, changed } = &keep {
            if let Some((key, _)) = view
                .keys()
                .find(|(key, _)| !changed.contains(&sql::bucket_of(key, *buckets)))
            {
                anyhow::bail!(
                    "the row with key {key:?} came from a bucket this process puts it out of"
                );
            }
        }
        let drop_held = |_: usize, key: &str| keep.drops(key);
        merge(&current, &drop_held, &fresh, &view, &now)
    })
    .await
    .context("the merge stopped")?;
    let Merged {
        converted,
        counts,
        changes: known,
    } = match merged {
        Ok(merged) => merged,
        Err(e) => return Ok(Incremental::NeedsFull(format!("the merge failed: {e:#}"))),
    };
    if converted.count != expected {
        return Ok(Incremental::NeedsFull(format!(
            "the merged table has {} rows but the table has {expected}",
            converted.count
        )));
    }
    Ok(Incremental::Merged(Box::new(Changes {
        converted,
        schema,
        kind,
        counts,
        known,
        export_bytes,
        next: Next(Some(next)),
    })))
}

/// Which held rows an incremental sync keeps.
enum Keep {
    /// Those outside the changed buckets.
    OutsideBuckets { buckets: u32, changed: HashSet<u32> },
    /// Those whose key is still in the table.
    Keys(HashSet<String>),
}

impl Keep {
    fn drops(&self, key: &str) -> bool {
        match self {
            Keep::OutsideBuckets { buckets, changed } => {
                changed.contains(&sql::bucket_of(key, *buckets))
            }
            Keep::Keys(keys) => !keys.contains(key),
        }
    }
}

/// Opens the export form and reads the table's structure there.
async fn at_form_with_structure(
    settings: &SyncSettings,
    browser: &mut Option<Browser>,
    progress: &Progress,
) -> anyhow::Result<TableSchema> {
    open_export_form(settings, browser, progress).await?;
    let b = browser.as_ref().expect("the browser is at the form");
    read_structure(b.client(), settings)
        .await
        .ok_or_else(|| anyhow!("the table's structure could not be read"))
}

/// The table's row count as the export page shows it (0 when it shows none).
async fn page_row_count(browser: &Browser) -> usize {
    let shown = crate::sync::page::run_js(
        browser.client(),
        "reading the table's row count",
        "const l = document.getElementById('limit_to'); return l ? l.value : null;",
        vec![],
    )
    .await;
    shown
        .ok()
        .and_then(|v| v.as_str().and_then(|s| s.trim().parse().ok()))
        .unwrap_or(0)
}

/// The key the versions are indexed by: PMA_KEY, else the declared primary key.
fn key_of(settings: &SyncSettings, schema: &TableSchema) -> anyhow::Result<Vec<String>> {
    let key = settings.key.clone().unwrap_or_else(|| schema.key.clone());
    anyhow::ensure!(
        !key.is_empty(),
        "the table has no primary key (set PMA_KEY to name one)"
    );
    Ok(key)
}

fn cursor_kind(schema: &TableSchema, cursor: &str) -> anyhow::Result<ValueKind> {
    anyhow::ensure!(
        schema.column(cursor).is_some(),
        "SYNC_CURSOR names `{cursor}`, which the table does not have"
    );
    match schema.kind_of(cursor) {
        ValueKind::Text => anyhow::bail!(
            "SYNC_CURSOR names `{cursor}`, a text column: a cursor must be a date, time or number"
        ),
        kind => Ok(kind),
    }
}

async fn csv_of(
    browser: &mut Browser,
    settings: &SyncSettings,
    query: &str,
    null_token: &str,
    progress: &Progress,
) -> anyhow::Result<String> {
    match export_query_csv(browser, settings, query, null_token, progress).await? {
        QueryAnswer::Csv(text) => Ok(text),
        QueryAnswer::TooLarge => anyhow::bail!("the query's result is too large"),
    }
}

/// The cursor's highest value and the table's row count, and the bytes exported.
async fn read_mark(
    browser: &mut Browser,
    settings: &SyncSettings,
    cursor: &str,
    null_token: &str,
    progress: &Progress,
) -> anyhow::Result<(Option<String>, usize, usize)> {
    let query = sql::cursor_mark(&settings.database, &settings.table, cursor);
    let text = csv_of(browser, settings, &query, null_token, progress).await?;
    let (header, rows) = sql::read_csv(&text, null_token)?;
    anyhow::ensure!(
        header == ["mark", "n"] && rows.len() == 1,
        "the cursor's mark came as {header:?} with {} rows",
        rows.len()
    );
    let rows_now: usize = rows[0][1]
        .as_deref()
        .ok_or_else(|| anyhow!("no row count"))?
        .parse()
        .context("the row count")?;
    Ok((rows[0][0].clone(), rows_now, text.len()))
}

/// The keys of a key-list export, joined as the typed view joins them.
fn read_keys(text: &str, null_token: &str, parts: usize) -> anyhow::Result<HashSet<String>> {
    let (header, rows) = sql::read_csv(text, null_token)?;
    anyhow::ensure!(header.len() == parts, "the key list has {header:?}");
    let separator = KEY_SEPARATOR.to_string();
    rows.into_iter()
        .map(|row| {
            let parts: Option<Vec<String>> = row.into_iter().collect();
            parts
                .map(|p| p.join(&separator))
                .ok_or_else(|| anyhow!("a key is NULL"))
        })
        .collect()
}

/// A CSV holding only the header row of `columns`.
fn header_csv(columns: &[String]) -> String {
    let quoted: Vec<String> = columns
        .iter()
        .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
        .collect();
    format!("{}\n", quoted.join(","))
}
