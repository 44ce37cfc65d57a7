//! A new version made from the one held and the rows an incremental export brought: the held
//! rows that still stand, and the exported ones in their place or in key order among them.
//!
//! A full export lists rows in the table's primary-key order (InnoDB's clustered index), so the
//! merged version keeps that order: each exported row takes the place of the held row with its
//! key, or goes where its key sorts. The held version must itself be in key order (checked);
//! otherwise the merge is refused and the sync exports the whole table. Each row is the very
//! text the converter makes of its CSV, so the merged document is byte for byte the document a
//! full export of the same table would give.

use std::cmp::Ordering;

use anyhow::{anyhow, bail, Context};

use super::convert::{push_json_string, Converted};
use super::delta::KnownChanges;
use super::format::{DataHasher, BODY_ROOM};
use super::rows::RowIndex;
use super::schema::ValueKind;
use super::snapshot::Snapshot;
use super::typed::{TypedTable, KEY_SEPARATOR};

/// How keys sort: each part as a number (integer key columns), or by its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOrder {
    numeric: Vec<bool>,
}

impl KeyOrder {
    /// The order of `view`'s key: integer parts by value, others by their bytes (which is
    /// MySQL's order for binary and ASCII keys; others are checked before use).
    pub fn of(view: &TypedTable) -> Self {
        let numeric = view
            .schema
            .key
            .iter()
            .map(|k| {
                matches!(
                    view.schema.kind_of(k),
                    ValueKind::Integer | ValueKind::Unsigned
                )
            })
            .collect();
        Self { numeric }
    }

    pub fn compare(&self, a: &str, b: &str) -> Ordering {
        let mut parts = a.split(KEY_SEPARATOR).zip(b.split(KEY_SEPARATOR));
        let mut i = 0;
        loop {
            let Some((x, y)) = parts.next() else {
                return Ordering::Equal;
            };
            let numeric = self.numeric.get(i).copied().unwrap_or(false);
            let order = match (numeric, x.parse::<i128>(), y.parse::<i128>()) {
                (true, Ok(x), Ok(y)) => x.cmp(&y),
                _ => x.as_bytes().cmp(y.as_bytes()),
            };
            if order != Ordering::Equal {
                return order;
            }
            i += 1;
        }
    }
}

/// What a merge changed, for the log and the change set.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MergeCounts {
    pub inserted: usize,
    pub updated: usize,
    pub deleted: usize,
    /// Exported rows equal to the rows held.
    pub unchanged: usize,
}

/// What a merged version is made of, for its index and typed view: the version merged into
/// (its ETag), the merged rows as (from that version?, row), where each sits in the new body,
/// and the exported rows' typed view.
#[derive(Debug)]
pub struct MergedParts {
    pub from: String,
    pub order: Vec<(bool, u32)>,
    pub rows: RowIndex,
    pub fresh_view: Option<TypedTable>,
}

/// How a merge went: its counts, and the keys it changed (the change set's, for free).
#[derive(Debug)]
pub struct Merged {
    pub converted: Converted,
    pub counts: MergeCounts,
    pub changes: KnownChanges,
}

/// The key of every row of `view`, by row number; an error if a row has none.
pub fn keys_by_row(view: &TypedTable) -> anyhow::Result<Vec<&str>> {
    let mut keys: Vec<Option<&str>> = vec![None; view.rows()];
    for (key, row) in view.keys() {
        if let Some(slot) = keys.get_mut(row) {
            *slot = Some(key);
        }
    }
    keys.into_iter()
        .enumerate()
        .map(|(row, key)| key.ok_or_else(|| anyhow!("row {row} has no key")))
        .collect()
}

/// Merges `fresh` (the exported rows, converted, with their typed view) into `held`: held rows
/// for which `drop_held(row, key)` says so go (or are replaced by an exported row with their
/// key), and every exported row is placed by its key. Stamped `last_updated`. Blocking: one pass
/// over the held body.
pub fn merge(
    held: &Snapshot,
    drop_held: &dyn Fn(usize, &str) -> bool,
    fresh: &Converted,
    fresh_view: &TypedTable,
    last_updated: &str,
) -> anyhow::Result<Merged> {
    let held_view = held
        .typed()
        .ok_or_else(|| anyhow!("the version held has no typed view"))?;
    anyhow::ensure!(held_view.has_key(), "the version held has no key");
    let order = KeyOrder::of(held_view);
    let held_rows = held.row_index().map_err(|e| anyhow!(e))?;
    let held_keys = keys_by_row(held_view)?;
    if let Some(at) = held_keys
        .windows(2)
        .position(|w| order.compare(w[0], w[1]) != Ordering::Less)
    {
        bail!(
            "the rows held are not in key order (row {} then {}), so rows cannot be placed as a \
             full export would",
            at,
            at + 1
        );
    }
    let fresh_body = fresh.cache_bytes();
    let fresh_rows = RowIndex::build(fresh_body).context("the exported rows")?;
    let mut fresh_keys: Vec<(&str, usize)> = fresh_view.keys().collect();
    fresh_keys.sort_by(|a, b| order.compare(a.0, b.0));
    if let Some(w) = fresh_keys
        .windows(2)
        .find(|w| order.compare(w[0].0, w[1].0) == Ordering::Equal)
    {
        bail!("the export holds the key {:?} twice", w[0].0);
    }
    anyhow::ensure!(
        fresh_keys.len() == fresh.count,
        "the export has {} rows but {} keys",
        fresh.count,
        fresh_keys.len()
    );

    // The merged rows, as (from the held version?, row).
    let mut merged: Vec<(bool, usize)> = Vec::with_capacity(held.count + fresh.count);
    let mut counts = MergeCounts::default();
    let mut changes = KnownChanges {
        from: held.etag.clone(),
        ..KnownChanges::default()
    };
    let mut matched = vec![false; fresh.count];
    let mut next = fresh_keys.iter().peekable();
    let mut last_fresh: Option<(&str, usize)> = None;
    for (row, key) in held_keys.iter().enumerate() {
        while let Some(&&(fresh_key, fresh_row)) = next.peek() {
            if order.compare(fresh_key, key) == Ordering::Greater {
                break;
            }
            merged.push((false, fresh_row));
            last_fresh = Some((fresh_key, fresh_row));
            next.next();
        }
        if let Some((_, fresh_row)) = last_fresh.filter(|(k, _)| k == key) {
            matched[fresh_row] = true;
            let same = match (held_rows.span(row), fresh_rows.span(fresh_row)) {
                (Some(a), Some(b)) => held.body[a] == fresh_body[b],
                _ => false,
            };
            if same {
                counts.unchanged += 1;
            } else {
                counts.updated += 1;
                changes.updated.push((*key).to_owned());
            }
            continue;
        }
        if drop_held(row, key) {
            counts.deleted += 1;
            changes.deleted.push((*key).to_owned());
            continue;
        }
        merged.push((true, row));
    }
    merged.extend(next.map(|&(_, row)| (false, row)));
    counts.inserted = fresh.count - counts.updated - counts.unchanged;
    changes.inserted = fresh_keys
        .iter()
        .filter(|(_, row)| !matched[*row])
        .map(|(key, _)| (*key).to_owned())
        .collect();

    let columns = &fresh.columns;
    let held_columns = held_view.batch.schema();
    let same_columns = held_columns.fields().len() == columns.len()
        && held_columns
            .fields()
            .iter()
            .zip(columns)
            .all(|(f, c)| f.name() == c);
    anyhow::ensure!(
        same_columns,
        "the exported columns differ from the version held"
    );

    let rows_bytes: usize = merged
        .iter()
        .map(|&(from_held, row)| {
            let index = if from_held { held_rows } else { &fresh_rows };
            index.span(row).map_or(0, |s| s.len() + 1)
        })
        .sum();
    let mut buf = Vec::with_capacity(BODY_ROOM + 256 + rows_bytes + columns.len() * 32);
    buf.resize(BODY_ROOM, b' ');
    buf.extend_from_slice(b"{\"last_updated\":");
    push_json_string(&mut buf, last_updated.as_bytes());
    buf.extend_from_slice(format!(",\"count\":{},\"columns\":[", merged.len()).as_bytes());
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        push_json_string(&mut buf, c.as_bytes());
    }
    buf.extend_from_slice(b"],\"data\":[");
    let mut hash = DataHasher::new(columns);
    let (mut starts, mut lengths, mut hashes) = (
        Vec::with_capacity(merged.len()),
        Vec::with_capacity(merged.len()),
        Vec::with_capacity(merged.len()),
    );
    for (i, &(from_held, row)) in merged.iter().enumerate() {
        let (text, row_hash) = if from_held {
            let span = held_rows
                .span(row)
                .ok_or_else(|| anyhow!("held row {row}"))?;
            (&held.body[span], held_rows.hash(row))
        } else {
            let span = fresh_rows
                .span(row)
                .ok_or_else(|| anyhow!("exported row {row}"))?;
            (&fresh_body[span], fresh_rows.hash(row))
        };
        if i > 0 {
            buf.push(b',');
        }
        // The body a snapshot makes of this buffer starts at its first byte.
        starts.push(buf.len() as u64);
        lengths.push(u32::try_from(text.len()).map_err(|_| anyhow!("a row of more than 4 GiB"))?);
        hashes.push(row_hash.ok_or_else(|| anyhow!("row {row} has no hash"))?);
        buf.extend_from_slice(text);
        hash.record(text);
    }
    buf.extend_from_slice(b"]}");
    let count = merged.len();
    let order = merged
        .iter()
        .map(|&(from_held, row)| u32::try_from(row).map(|row| (from_held, row)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| anyhow!("more than 4 billion rows"))?;
    let parts = MergedParts {
        from: held.etag.clone(),
        order,
        rows: RowIndex::from_parts(starts, lengths, hashes),
        fresh_view: None,
    };
    Ok(Merged {
        converted: Converted {
            buf,
            count,
            columns: columns.clone(),
            last_updated: last_updated.to_owned(),
            data_hash: hash.finish(count),
            merged: Some(Box::new(parts)),
        },
        counts,
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::schema::TableSchema;
    use crate::cache::{csv_to_cache_json, delta};

    const TOKEN: &str = "NULL~t";
    const NOW: &str = "2026-01-01T00:00:00Z";

    fn schema() -> TableSchema {
        TableSchema::from_sql(
            "CREATE TABLE `t` (`id` bigint(20) unsigned NOT NULL, `note` text, PRIMARY KEY (`id`))",
            None,
        )
        .unwrap()
    }

    fn converted(csv: &str) -> Converted {
        csv_to_cache_json(csv.as_bytes(), Some(TOKEN), NOW, 1 << 16).unwrap()
    }

    fn version(csv: &str) -> Snapshot {
        let mut snapshot = Snapshot::from_converted(converted(csv));
        let schema = schema();
        let view = TypedTable::build(&snapshot.body, Some(&schema), "t").unwrap();
        snapshot.attach_typed(Some(view), Some(schema.digest()));
        snapshot
    }

    #[test]
    fn a_merge_gives_the_full_exports_document_and_its_change_set() {
        let old = version(
            "id,note\n1,a\n2,b\n3,NULL~t\n5,\"x,\"\"y\"\"\"\n9,e\n18446744073709551614,f\n",
        );
        // 2 updated, 3 unchanged (exported again), 5 deleted, 4 and the largest key inserted.
        let fresh_csv = "id,note\n3,NULL~t\n2,NULL\n18446744073709551615,max\n4,new\n";
        let new_csv = "id,note\n1,a\n2,NULL\n3,NULL~t\n4,new\n9,e\n18446744073709551614,f\n18446744073709551615,max\n";
        let fresh = converted(fresh_csv);
        let view = TypedTable::build(&fresh.buf[BODY_ROOM..], Some(&schema()), "t").unwrap();
        let gone = |_: usize, key: &str| matches!(key, "2" | "3" | "5");
        let merged = merge(&old, &gone, &fresh, &view, NOW).unwrap();
        let full = converted(new_csv);
        assert_eq!(
            String::from_utf8_lossy(merged.converted.cache_bytes()),
            String::from_utf8_lossy(full.cache_bytes())
        );
        assert_eq!(merged.converted.data_hash, full.data_hash);
        assert_eq!(
            merged.counts,
            MergeCounts {
                inserted: 2,
                updated: 1,
                deleted: 1,
                unchanged: 1
            }
        );
        let new = version(new_csv);
        // The merge's index and typed view are those of the new version read from its body.
        let parts = merged.converted.merged.as_ref().unwrap();
        let index = new.row_index().unwrap();
        assert_eq!(parts.rows.len(), index.len());
        for row in 0..index.len() {
            assert_eq!(parts.rows.span(row), index.span(row), "row {row}");
            assert_eq!(parts.rows.hash(row), index.hash(row), "row {row}");
        }
        let typed = TypedTable::merged(old.typed().unwrap(), &view, &parts.order).unwrap();
        let built = new.typed().unwrap();
        assert_eq!(typed.batch, built.batch);
        let mut keys: Vec<(&str, usize)> = typed.keys().collect();
        let mut want: Vec<(&str, usize)> = built.keys().collect();
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want);
        let known = delta::from_known(&old, &new, &merged.changes).unwrap();
        let compared = delta::compute(&old, &new).unwrap();
        assert_eq!(known.encode().unwrap(), compared.encode().unwrap());
        assert_eq!((known.upserted(), known.deleted()), (3, 1));
    }

    #[test]
    fn rows_held_out_of_key_order_are_refused() {
        let old = version("id,note\n2,a\n1,b\n");
        let fresh = converted("id,note\n");
        let view = TypedTable::build(&fresh.buf[BODY_ROOM..], Some(&schema()), "t").unwrap();
        let error = merge(&old, &|_, _| false, &fresh, &view, NOW).unwrap_err();
        assert!(error.to_string().contains("not in key order"), "{error}");
    }
}
