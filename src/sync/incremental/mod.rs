//! Syncs that export what changed, not the whole table, between full exports.
//!
//! - **By row digest** (tables with a key): MySQL sums the table up in buckets of rows (see
//!   [`sql`]); this process sums up the rows it holds the same way ([`digest`]). The buckets
//!   whose sums differ are exported again, and their rows replace the held ones of the same
//!   buckets (a held row missing from them was deleted). Since the held sums describe the rows
//!   held, a row that changed while it was exported differs at the next sync, whatever it
//!   changed to.
//! - **By cursor** (`SYNC_CURSOR`): the rows whose cursor is at or after the highest value seen
//!   at the last sync (less `SYNC_CURSOR_OVERLAP`) are exported, and the key column alone, to
//!   find deletions. The highest value is read *before* the rows, so a row written in between is
//!   exported again next time rather than missed.
//!
//! The merge ([`crate::cache::merge`]) gives the document a full export would give: rows keep
//! the primary key's order, so the key must be the table's primary key, of integers or dates
//! (whose order is their text's). A merged row count unequal to the table's, a change of
//! columns, types or key, and a change too large to be worth it make the sync a full export
//! instead. [`SyncMemory`] holds what the next sync compares with, in this process only: its
//! first sync is full, and so is any sync after a failed one or after another process wrote the
//! version served.

pub mod digest;
pub mod sql;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context};
use time::OffsetDateTime;

use self::sql::BucketSum;
use crate::cache::delta::KnownChanges;
use crate::cache::format::rfc3339;
use crate::cache::merge::{keys_by_row, merge, MergeCounts, Merged};
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
        /// The held keys summed up in buckets (digests of the key columns alone): deletions
        /// are looked for only in the buckets whose sums changed. Empty until the version is
        /// made ([`after_full`]).
        key_buckets: u32,
        key_sums: Vec<BucketSum>,
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

/// Before a full export with a cursor: opens the export form and reads the cursor's highest
/// value, which the next sync starts from. Fails the sync only when phpMyAdmin rejects the
/// login (never tried twice); any other failure leaves the next sync a full export too, and the
/// log says why. Without a cursor there is nothing to read: the rows' sums are taken from the
/// version made ([`after_full`]).
pub async fn read_before_full(
    settings: &SyncSettings,
    browser: &mut Option<Browser>,
    null_token: &str,
    progress: &Progress,
) -> anyhow::Result<Next> {
    let Some(cursor) = settings
        .cursor
        .as_deref()
        .filter(|_| !settings.full_every.is_zero())
    else {
        return Ok(Next(None));
    };
    match cursor_state(settings, cursor, browser, null_token, progress).await {
        Ok(state) => Ok(Next(Some(state))),
        Err(e) => {
            if let Some(rejected) = login_rejected(settings, browser, &e).await {
                return Err(rejected);
            }
            let e = settings.password.scrub(&format!("{e:#}"));
            if let Some(b) = browser.take() {
                let failed = ExportError::Transient(anyhow!("{e}"));
                let _ = give_up_browser(settings, &mut Some(b), failed).await;
            }
            tracing::warn!("the next sync will be a full export too: {e}");
            Ok(Next(None))
        }
    }
}

async fn cursor_state(
    settings: &SyncSettings,
    cursor: &str,
    browser: &mut Option<Browser>,
    null_token: &str,
    progress: &Progress,
) -> anyhow::Result<State> {
    let schema = at_form_with_structure(settings, browser, progress).await?;
    let key = key_of(settings, &schema)?;
    let kind = cursor_kind(&schema, cursor)?;
    let b = browser.as_mut().expect("the browser is at the form");
    let (mark, _bytes) = read_mark(b, settings, cursor, null_token, progress).await?;
    Ok(State::Cursor {
        key,
        kind,
        mark,
        key_buckets: 0,
        key_sums: Vec::new(),
    })
}

/// After a full export made `served` (read with `schema`): what the next sync compares with.
/// By row digest, the sums of the rows served, computed off the runtime (a second or two for a
/// million rows); with a cursor, the mark read before the export (`next`).
pub async fn after_full(
    settings: &SyncSettings,
    next: Next,
    served: &Arc<Snapshot>,
    schema: Option<&TableSchema>,
) -> Next {
    if settings.full_every.is_zero() {
        return Next(None);
    }
    let checked = schema
        .ok_or_else(|| anyhow!("the table's structure could not be read"))
        .and_then(|schema| {
            let key = key_of(settings, schema)?;
            mergeable(schema, &key)?;
            Ok(key)
        });
    let key = match checked {
        Ok(key) => key,
        Err(e) => {
            tracing::warn!("every sync exports the whole table: {e:#}");
            return Next(None);
        }
    };
    if settings.cursor.is_some() {
        let Next(Some(State::Cursor {
            key, kind, mark, ..
        })) = next
        else {
            return Next(None);
        };
        let snapshot = Arc::clone(served);
        let summed = off_runtime(move || {
            let view = snapshot
                .typed()
                .ok_or_else(|| anyhow!("the version has no typed view"))?;
            let keys = keys_by_row(view)?;
            let key_buckets = key_buckets_for(keys.len());
            Ok((key_buckets, digest::key_sums(&keys, key_buckets)))
        })
        .await;
        return match summed {
            Ok((key_buckets, key_sums)) => Next(Some(State::Cursor {
                key,
                kind,
                mark,
                key_buckets,
                key_sums,
            })),
            Err(e) => {
                tracing::warn!("the next sync will be a full export too: {e:#}");
                Next(None)
            }
        };
    }
    let (snapshot, started) = (Arc::clone(served), Instant::now());
    let buckets = sql::buckets_for(snapshot.count);
    let summed = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<BucketSum>> {
        let view = snapshot
            .typed()
            .ok_or_else(|| anyhow!("the version has no typed view"))?;
        let rows = snapshot.row_index().map_err(|e| anyhow!(e))?;
        let keys = keys_by_row(view)?;
        digest::sums_of(&snapshot.body, rows, &keys, buckets, &|_| true, workers())
    })
    .await;
    match summed {
        Ok(Ok(sums)) => {
            tracing::debug!(
                buckets,
                seconds = started.elapsed().as_secs_f64(),
                "summed up the rows for the next incremental sync"
            );
            Next(Some(State::RowHash { key, buckets, sums }))
        }
        Ok(Err(e)) => {
            tracing::warn!("the next sync will be a full export too: {e:#}");
            Next(None)
        }
        Err(e) => {
            tracing::warn!("the digest threads stopped: {e}");
            Next(None)
        }
    }
}

/// Key buckets for a table of `rows` rows: about 256 keys each (the keys of a bucket whose
/// sum changed are exported to find the deleted ones).
fn key_buckets_for(rows: usize) -> u32 {
    (sql::buckets_for(rows) / 16).max(64)
}

/// The threads a digest of every row uses.
fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Whether rows keyed by `key` can be placed as a full export places them: the key is the
/// table's primary key (the export's order) and every part sorts as its text (integers, by
/// value; dates). A text key's order follows its collation, which this process does not know.
fn mergeable(schema: &TableSchema, key: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(
        schema.key == key,
        "PMA_KEY ({}) is not the table's primary key ({}), whose order a full export follows",
        key.join(","),
        schema.key.join(",")
    );
    for part in key {
        anyhow::ensure!(
            matches!(
                schema.kind_of(part),
                ValueKind::Integer | ValueKind::Unsigned | ValueKind::Date | ValueKind::DateTime
            ),
            "the key column `{part}` is not an integer or a date, so merged rows could not be \
             placed in the order a full export gives"
        );
    }
    Ok(())
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
        if let Some(rejected) = login_rejected(settings, browser, e).await {
            return Err(rejected);
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
    result.map_err(|e| anyhow!(settings.password.scrub(&format!("{e:#}"))))
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
    let too_large = || {
        Ok(Incremental::NeedsFull(
            "an incremental export's answer is too large: a full export instead".into(),
        ))
    };
    let (fresh_csv, keep, expected, kind) = match &held.state {
        State::RowHash { key, buckets, sums } => {
            let columns: Vec<String> = schema.columns.iter().map(|c| c.name.clone()).collect();
            let query =
                sql::bucket_sums(&settings.database, &settings.table, key, &columns, *buckets);
            let Some(text) = csv_of(b, settings, &query, null_token, progress).await? else {
                return too_large();
            };
            export_bytes += text.len();
            let (token, count) = (null_token.to_owned(), *buckets);
            let now = off_runtime(move || sql::read_bucket_sums(&text, &token, count)).await?;
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
                    QueryAnswer::TooLarge => return too_large(),
                }
            };
            let keep = Keep::OutsideBuckets {
                key: key.clone(),
                buckets: *buckets,
                changed: changed.into_iter().collect(),
                sums: sums.clone(),
                now,
            };
            (fresh, keep, rows as usize, SyncKind::RowHash)
        }
        State::Cursor {
            key,
            kind: cursor_kind,
            mark,
            key_buckets,
            key_sums,
        } => {
            let cursor = settings
                .cursor
                .as_deref()
                .ok_or_else(|| anyhow!("SYNC_CURSOR is no longer set"))?;
            let Some(mark) = mark else {
                return Ok(Incremental::NeedsFull(
                    "the cursor had no value at the last sync".into(),
                ));
            };
            let (new_mark, bytes) = read_mark(b, settings, cursor, null_token, progress).await?;
            export_bytes += bytes;
            // Deletions: the buckets of keys whose sums changed, and their keys.
            let query =
                sql::bucket_sums(&settings.database, &settings.table, key, key, *key_buckets);
            let Some(text) = csv_of(b, settings, &query, null_token, progress).await? else {
                return too_large();
            };
            export_bytes += text.len();
            let (token, count) = (null_token.to_owned(), *key_buckets);
            let now = off_runtime(move || sql::read_bucket_sums(&text, &token, count)).await?;
            let rows: u64 = now.iter().map(|s| s.rows).sum();
            let changed: Vec<u32> = (0..*key_buckets)
                .filter(|&i| key_sums.get(i as usize) != now.get(i as usize))
                .collect();
            progress.note(
                "key buckets changed",
                format!("{} of {key_buckets}", changed.len()),
            );
            let present = if changed.is_empty() {
                HashSet::new()
            } else {
                let query = sql::keys_in_buckets(
                    &settings.database,
                    &settings.table,
                    key,
                    *key_buckets,
                    &changed,
                );
                let Some(text) = csv_of(b, settings, &query, null_token, progress).await? else {
                    return too_large();
                };
                export_bytes += text.len();
                let (token, parts) = (null_token.to_owned(), key.len());
                off_runtime(move || read_keys(&text, &token, parts)).await?
            };
            let query = sql::rows_since(
                &settings.database,
                &settings.table,
                cursor,
                *cursor_kind,
                mark,
                settings.cursor_overlap,
            )?;
            let fresh = match export_query_csv(b, settings, &query, null_token, progress).await? {
                QueryAnswer::Csv(text) => text,
                QueryAnswer::TooLarge => return too_large(),
            };
            let keep = Keep::KeyBuckets {
                key: key.clone(),
                kind: *cursor_kind,
                mark: new_mark,
                key_buckets: *key_buckets,
                changed: changed.into_iter().collect(),
                present,
                key_sums: key_sums.clone(),
            };
            (Some(fresh), keep, rows as usize, SyncKind::Cursor)
        }
    };
    export_bytes += fresh_csv.as_ref().map_or(0, String::len);
    progress.enter(Phase::Converting);
    let columns: Vec<String> = schema.columns.iter().map(|c| c.name.clone()).collect();
    let (current, token) = (Arc::clone(current), null_token.to_owned());
    let (table, key_override, schema_for_view) =
        (settings.table.clone(), settings.key.clone(), schema.clone());
    let merged = off_runtime(move || -> anyhow::Result<_> {
        let fresh_csv = fresh_csv.unwrap_or_else(|| header_csv(&columns));
        let now = rfc3339(OffsetDateTime::now_utc().replace_nanosecond(0)?);
        let fresh = csv_to_cache_json(
            fresh_csv.as_bytes(),
            Some(&token),
            &now,
            fresh_csv.len() * 3,
        )
        .context("the exported rows could not be converted")?;
        drop(fresh_csv);
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
        let next = keep.next_state(&fresh, &view);
        let drop_held = |_: usize, key: &str| keep.drops(key);
        let mut merged = merge(&current, &drop_held, &fresh, &view, &now);
        // The exported rows' view, for the merged version's view (see `TypedTable::merged`).
        if let Some(parts) = merged
            .as_mut()
            .ok()
            .and_then(|m| m.converted.merged.as_mut())
        {
            parts.fresh_view = Some(view);
        }
        Ok((merged, next))
    })
    .await?;
    let (merged, next) = merged;
    let next = match next {
        Ok(next) => next,
        Err(e) => return Ok(Incremental::NeedsFull(format!("{e:#}"))),
    };
    let Merged {
        converted,
        counts,
        changes: known,
    } = match merged {
        Ok(merged) => merged,
        Err(e) => return Ok(Incremental::NeedsFull(format!("the merge failed: {e:#}"))),
    };
    let next = with_changes(next, &known);
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

/// The key sums of a cursor state, moved by the keys a merge inserted and deleted: the sums of
/// the merged version's keys.
fn with_changes(state: State, known: &KnownChanges) -> State {
    match state {
        State::Cursor {
            key,
            kind,
            mark,
            key_buckets,
            mut key_sums,
        } => {
            for (keys, added) in [(&known.inserted, true), (&known.deleted, false)] {
                for k in keys {
                    if let Some(sum) = key_sums.get_mut(sql::bucket_of(k, key_buckets) as usize) {
                        sum.digest ^= digest::key_digest(k);
                        sum.rows = match added {
                            true => sum.rows + 1,
                            false => sum.rows.saturating_sub(1),
                        };
                    }
                }
            }
            State::Cursor {
                key,
                kind,
                mark,
                key_buckets,
                key_sums,
            }
        }
        other => other,
    }
}

/// Runs `work` on a blocking thread.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| anyhow!("a sync thread stopped: {e}"))?
}

/// Which held rows an incremental sync keeps, and what the next sync will compare with.
enum Keep {
    /// Those outside the changed buckets; the sums held and MySQL's now.
    OutsideBuckets {
        key: Vec<String>,
        buckets: u32,
        changed: HashSet<u32>,
        sums: Vec<BucketSum>,
        now: Vec<BucketSum>,
    },
    /// Those outside the key buckets whose sums changed, and those whose key is still in the
    /// table; the cursor's mark read now, and the key sums held.
    KeyBuckets {
        key: Vec<String>,
        kind: ValueKind,
        mark: Option<String>,
        key_buckets: u32,
        changed: HashSet<u32>,
        present: HashSet<String>,
        key_sums: Vec<BucketSum>,
    },
}

impl Keep {
    fn drops(&self, key: &str) -> bool {
        match self {
            Keep::OutsideBuckets {
                buckets, changed, ..
            } => changed.contains(&sql::bucket_of(key, *buckets)),
            Keep::KeyBuckets {
                key_buckets,
                changed,
                present,
                ..
            } => changed.contains(&sql::bucket_of(key, *key_buckets)) && !present.contains(key),
        }
    }

    /// What the next sync compares with once `fresh` (with its `view`) is merged. By row
    /// digest: the held sums, with the changed buckets' replaced by the sums of the rows
    /// exported for them (checked to all belong to those buckets). Blocking.
    fn next_state(&self, fresh: &Converted, view: &TypedTable) -> anyhow::Result<State> {
        match self {
            Keep::OutsideBuckets {
                key,
                buckets,
                changed,
                sums,
                now,
            } => {
                let keys = keys_by_row(view)?;
                if let Some(key) = keys
                    .iter()
                    .find(|key| !changed.contains(&sql::bucket_of(key, *buckets)))
                {
                    anyhow::bail!(
                        "the row with key {key:?} came from a bucket this process puts it out of"
                    );
                }
                let body = &fresh.buf[crate::cache::format::BODY_ROOM..];
                let rows = crate::cache::rows::RowIndex::build(body)?;
                let fresh_sums = digest::sums_of(body, &rows, &keys, *buckets, &|_| true, 1)?;
                let mut next = sums.clone();
                let mut moved = 0;
                for &b in changed {
                    next[b as usize] = fresh_sums[b as usize];
                    moved += usize::from(fresh_sums[b as usize] != now[b as usize]);
                }
                if moved > 0 {
                    tracing::info!(
                        buckets = moved,
                        "buckets changed while they were exported (or digest apart): they are \
                         exported again next time"
                    );
                }
                Ok(State::RowHash {
                    key: key.clone(),
                    buckets: *buckets,
                    sums: next,
                })
            }
            Keep::KeyBuckets {
                key,
                kind,
                mark,
                key_buckets,
                key_sums,
                ..
            } => Ok(State::Cursor {
                key: key.clone(),
                kind: *kind,
                mark: mark.clone(),
                key_buckets: *key_buckets,
                // Adjusted by the merge's inserts and deletions (see `with_changes`).
                key_sums: key_sums.clone(),
            }),
        }
    }
}

/// When `e` is phpMyAdmin rejecting the login: the browser closed, and the error the syncer
/// knows a rejected login by (so that no login is tried again), the password scrubbed.
async fn login_rejected(
    settings: &SyncSettings,
    browser: &mut Option<Browser>,
    e: &anyhow::Error,
) -> Option<anyhow::Error> {
    let Some(ExportError::LoginRejected(message)) = e.downcast_ref::<ExportError>() else {
        return None;
    };
    if let Some(b) = browser.take() {
        b.close().await;
    }
    Some(
        crate::sync::error::LoginRejected {
            user: settings.username.clone(),
            message: settings.password.scrub(message),
        }
        .into(),
    )
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

/// A small query's result as CSV; `None` when it is too large to take through the page.
async fn csv_of(
    browser: &mut Browser,
    settings: &SyncSettings,
    query: &str,
    null_token: &str,
    progress: &Progress,
) -> anyhow::Result<Option<String>> {
    match export_query_csv(browser, settings, query, null_token, progress).await? {
        QueryAnswer::Csv(text) => Ok(Some(text)),
        QueryAnswer::TooLarge => Ok(None),
    }
}

/// The cursor's highest value, and the bytes exported.
async fn read_mark(
    browser: &mut Browser,
    settings: &SyncSettings,
    cursor: &str,
    null_token: &str,
    progress: &Progress,
) -> anyhow::Result<(Option<String>, usize)> {
    let query = sql::cursor_mark(&settings.database, &settings.table, cursor);
    let text = csv_of(browser, settings, &query, null_token, progress)
        .await?
        .ok_or_else(|| anyhow!("the cursor's mark is too large"))?;
    let (header, rows) = sql::read_csv(&text, null_token)?;
    anyhow::ensure!(
        header == ["mark"] && rows.len() == 1,
        "the cursor's mark came as {header:?} with {} rows",
        rows.len()
    );
    Ok((rows[0][0].clone(), text.len()))
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
