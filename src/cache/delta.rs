//! Change sets between versions: the rows a version inserted or updated (whole) and the keys it
//! deleted, found by the table's primary key and each row's hash; and the log of the last
//! change sets, from which a client holding an older version is brought up to date with one
//! merged delta instead of the whole table.
//!
//! A change set is a function of the two versions alone (rows in the new version's order,
//! deleted keys in the old one's), so every process that computes it from the same versions
//! computes the same bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::snapshot::Snapshot;
use super::typed::KEY_SEPARATOR;

/// How many change sets are kept, and in how much memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaSettings {
    /// The last this many change sets are kept (DELTA_VERSIONS); 0 keeps none.
    pub versions: usize,
    /// Their rows' bytes together stay under this (DELTA_MEMORY); the oldest go first.
    pub memory_bytes: usize,
}

impl Default for DeltaSettings {
    fn default() -> Self {
        Self {
            versions: 48,
            memory_bytes: 64 << 20,
        }
    }
}

/// What happened to one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Inserted,
    Updated,
    Deleted,
}

/// One row's change: its key (the index's text) and, unless deleted, its object as the body
/// holds it.
#[derive(Debug, Clone)]
struct Change {
    key: Box<str>,
    kind: Kind,
    row: Option<Bytes>,
}

/// The changes from one version to the next.
#[derive(Debug)]
pub struct ChangeSet {
    /// The versions' ETags, bare (see [`bare_etag`]).
    pub from: String,
    pub to: String,
    changes: Vec<Change>,
    /// Bytes the rows hold.
    bytes: usize,
    /// How long it took to compute.
    pub took: Duration,
}

impl ChangeSet {
    pub fn upserted(&self) -> usize {
        self.changes.iter().filter(|c| c.row.is_some()).count()
    }

    pub fn deleted(&self) -> usize {
        self.changes.len() - self.upserted()
    }

    pub fn memory_bytes(&self) -> usize {
        self.bytes + self.changes.len() * std::mem::size_of::<Change>()
    }
}

/// An ETag as a client may hold it (`W/"…"`, `"…"`, with the encoding's mark), bare: the
/// version's own tag, the same for every encoding.
pub fn bare_etag(tag: &str) -> &str {
    let tag = tag.trim().trim_start_matches("W/").trim_matches('"');
    tag.strip_suffix("-gzip")
        .or_else(|| tag.strip_suffix("-zstd"))
        .unwrap_or(tag)
}

/// Why two versions have no change set between them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoDelta {
    #[error("the table has no primary key (set PMA_KEY to name one)")]
    NoKey,
    #[error("the columns or the key changed between the versions")]
    ColumnsChanged,
    #[error("{0}")]
    Unreadable(String),
}

/// Whether `snapshot`'s version can have deltas, and if not, why.
pub fn deltas_possible(snapshot: &Snapshot) -> Result<(), NoDelta> {
    match snapshot.typed() {
        Some(view) if view.has_key() => Ok(()),
        Some(_) => Err(NoDelta::NoKey),
        None => Err(NoDelta::Unreadable(
            "the version has no typed view, so its rows have no identity".into(),
        )),
    }
}

/// The change set from `old` to `new`. Blocking: reads both versions' row indexes (building
/// the new one's) and compares every key.
pub fn compute(old: &Snapshot, new: &Snapshot) -> Result<ChangeSet, NoDelta> {
    let started = Instant::now();
    deltas_possible(old)?;
    deltas_possible(new)?;
    let (old_view, new_view) = (old.typed().expect("checked"), new.typed().expect("checked"));
    if old_view.schema.key != new_view.schema.key
        || old_view.batch.schema().fields() != new_view.batch.schema().fields()
    {
        return Err(NoDelta::ColumnsChanged);
    }
    let old_rows = old.row_index().map_err(NoDelta::Unreadable)?;
    let new_rows = new.row_index().map_err(NoDelta::Unreadable)?;
    let mut upserts: Vec<(usize, Box<str>, Kind)> = Vec::new();
    for (key, new_row) in new_view.keys() {
        match old_view.row_of_key(key) {
            None => upserts.push((new_row, key.into(), Kind::Inserted)),
            Some(old_row) if old_rows.hash(old_row) != new_rows.hash(new_row) => {
                upserts.push((new_row, key.into(), Kind::Updated));
            }
            Some(_) => {}
        }
    }
    upserts.sort_unstable_by_key(|(row, ..)| *row);
    let mut deletes: Vec<(usize, Box<str>)> = old_view
        .keys()
        .filter(|(key, _)| new_view.row_of_key(key).is_none())
        .map(|(key, row)| (row, key.into()))
        .collect();
    deletes.sort_unstable_by_key(|(row, _)| *row);
    assemble(old, new, upserts, deletes, started)
}

/// The keys a sync knows changed between the version it merged into (`from`, its ETag) and the
/// one it made: an incremental sync's merge. The change set then comes from these keys alone,
/// without comparing every row of the two versions.
#[derive(Debug, Clone, Default)]
pub struct KnownChanges {
    pub from: String,
    pub inserted: Vec<String>,
    pub updated: Vec<String>,
    pub deleted: Vec<String>,
}

/// The change set from `old` to `new` when `known` says what changed between them (the same
/// change set [`compute`] finds). Blocking, but reads only the changed rows.
pub fn from_known(
    old: &Snapshot,
    new: &Snapshot,
    known: &KnownChanges,
) -> Result<ChangeSet, NoDelta> {
    let started = Instant::now();
    deltas_possible(old)?;
    deltas_possible(new)?;
    if bare_etag(&known.from) != bare_etag(&old.etag) {
        return Err(NoDelta::Unreadable(
            "the changes known lead from another version".into(),
        ));
    }
    let (old_view, new_view) = (old.typed().expect("checked"), new.typed().expect("checked"));
    if old_view.schema.key != new_view.schema.key
        || old_view.batch.schema().fields() != new_view.batch.schema().fields()
    {
        return Err(NoDelta::ColumnsChanged);
    }
    let row_in = |view: &super::typed::TypedTable, key: &str| {
        view.row_of_key(key)
            .ok_or_else(|| NoDelta::Unreadable(format!("the key {key:?} is not in the version")))
    };
    let mut upserts = Vec::with_capacity(known.inserted.len() + known.updated.len());
    for (keys, kind) in [
        (&known.inserted, Kind::Inserted),
        (&known.updated, Kind::Updated),
    ] {
        for key in keys {
            upserts.push((row_in(new_view, key)?, key.as_str().into(), kind));
        }
    }
    upserts.sort_unstable_by_key(|(row, ..)| *row);
    let mut deletes = Vec::with_capacity(known.deleted.len());
    for key in &known.deleted {
        deletes.push((row_in(old_view, key)?, key.as_str().into()));
    }
    deletes.sort_unstable_by_key(|(row, _)| *row);
    assemble(old, new, upserts, deletes, started)
}

/// The change set of `upserts` (row in `new`, key, kind) and `deletes` (row in `old`, key), each
/// in its version's row order.
fn assemble(
    old: &Snapshot,
    new: &Snapshot,
    upserts: Vec<(usize, Box<str>, Kind)>,
    deletes: Vec<(usize, Box<str>)>,
    started: Instant,
) -> Result<ChangeSet, NoDelta> {
    let new_rows = new.row_index().map_err(NoDelta::Unreadable)?;
    let mut bytes = 0;
    let mut changes = Vec::with_capacity(upserts.len() + deletes.len());
    for (row, key, kind) in upserts {
        let span = new_rows
            .span(row)
            .ok_or_else(|| NoDelta::Unreadable(format!("row {row} is not in the body")))?;
        let text = Bytes::copy_from_slice(&new.body[span]);
        bytes += text.len() + key.len();
        changes.push(Change {
            key,
            kind,
            row: Some(text),
        });
    }
    for (_, key) in deletes {
        bytes += key.len();
        changes.push(Change {
            key,
            kind: Kind::Deleted,
            row: None,
        });
    }
    Ok(ChangeSet {
        from: bare_etag(&old.etag).to_owned(),
        to: bare_etag(&new.etag).to_owned(),
        changes,
        bytes,
        took: started.elapsed(),
    })
}

/// A change set as replicas share it through Redis: JSON (each row the very text the body holds),
/// zstd-compressed.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire<'a> {
    from: &'a str,
    to: &'a str,
    #[serde(borrow)]
    changes: Vec<WireChange<'a>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WireChange<'a> {
    key: &'a str,
    /// `i`nserted, `u`pdated or `d`eleted.
    kind: char,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    row: Option<&'a serde_json::value::RawValue>,
}

impl ChangeSet {
    /// The shared form of this change set. Blocking (compression).
    pub fn encode(&self) -> anyhow::Result<Vec<u8>> {
        let rows: Vec<Option<&serde_json::value::RawValue>> = self
            .changes
            .iter()
            .map(|c| {
                c.row
                    .as_ref()
                    .map(|r| serde_json::from_slice(r))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let wire = Wire {
            from: &self.from,
            to: &self.to,
            changes: self
                .changes
                .iter()
                .zip(rows)
                .map(|(c, row)| WireChange {
                    key: &c.key,
                    kind: match c.kind {
                        Kind::Inserted => 'i',
                        Kind::Updated => 'u',
                        Kind::Deleted => 'd',
                    },
                    row,
                })
                .collect(),
        };
        let json = serde_json::to_vec(&wire)?;
        Ok(zstd::bulk::compress(&json, 3)?)
    }

    /// A change set from its shared form, refused when it would take more than `limit` bytes
    /// decoded or is not a change set. Blocking (decompression).
    pub fn decode(shared: &[u8], limit: usize) -> anyhow::Result<Self> {
        use anyhow::Context;
        let json = zstd::bulk::decompress(shared, limit)
            .context("a shared change set does not decompress within DELTA_MEMORY")?;
        let wire: Wire =
            serde_json::from_slice(&json).context("a shared change set is not valid")?;
        let mut bytes = 0;
        let mut changes = Vec::with_capacity(wire.changes.len());
        for c in wire.changes {
            let kind = match (c.kind, c.row.is_some()) {
                ('i', true) => Kind::Inserted,
                ('u', true) => Kind::Updated,
                ('d', false) => Kind::Deleted,
                _ => anyhow::bail!("a shared change set has a change of unknown kind"),
            };
            let row = c.row.map(|r| Bytes::copy_from_slice(r.get().as_bytes()));
            bytes += c.key.len() + row.as_ref().map_or(0, Bytes::len);
            changes.push(Change {
                key: c.key.into(),
                kind,
                row,
            });
        }
        Ok(Self {
            from: wire.from.to_owned(),
            to: wire.to.to_owned(),
            changes,
            bytes,
            took: Duration::ZERO,
        })
    }
}

/// The last change sets, each following the one before.
#[derive(Debug, Default)]
pub struct DeltaLog {
    settings: DeltaSettings,
    /// The version served (bare ETag).
    current: Option<String>,
    sets: VecDeque<Arc<ChangeSet>>,
    bytes: usize,
}

/// How a client at some version is brought to the current one.
#[derive(Debug)]
pub enum CatchUp {
    /// It holds the current version.
    Current,
    /// These change sets, in order, from its version to the current one.
    Apply(Vec<Arc<ChangeSet>>),
    /// Its version is unknown, or older than the kept change sets.
    Gone,
}

impl DeltaLog {
    pub fn new(settings: DeltaSettings) -> Self {
        Self {
            settings,
            ..Default::default()
        }
    }

    /// Records that the version `to` is served, with the change set that led to it (none when
    /// it could not be computed: then no older version can catch up).
    pub fn served(&mut self, to: &str, set: Option<ChangeSet>) {
        let to = bare_etag(to);
        self.current = Some(to.to_owned());
        if self.sets.back().is_some_and(|s| s.to == to) {
            return; // The same data again: not a new version for deltas.
        }
        let follows = |set: &ChangeSet| self.sets.back().is_none_or(|last| last.to == set.from);
        match set {
            Some(set) if set.to == to && self.settings.versions > 0 => {
                if !follows(&set) {
                    self.clear();
                }
                self.bytes += set.memory_bytes();
                self.sets.push_back(Arc::new(set));
                while self.sets.len() > self.settings.versions
                    || (self.bytes > self.settings.memory_bytes && !self.sets.is_empty())
                {
                    if let Some(old) = self.sets.pop_front() {
                        self.bytes -= old.memory_bytes();
                    }
                }
            }
            _ => self.clear(),
        }
    }

    fn clear(&mut self) {
        self.sets.clear();
        self.bytes = 0;
    }

    /// How a client holding `since` catches up with `current`.
    pub fn catch_up(&self, since: &str, current: &str) -> CatchUp {
        let (since, current) = (bare_etag(since), bare_etag(current));
        if since == current {
            return CatchUp::Current;
        }
        if self.sets.back().is_none_or(|last| last.to != current) {
            return CatchUp::Gone;
        }
        match self.sets.iter().position(|s| s.from == since) {
            Some(first) => CatchUp::Apply(self.sets.iter().skip(first).cloned().collect()),
            None => CatchUp::Gone,
        }
    }

    /// Takes `chain` (change sets, oldest first, each following the one before, the last
    /// ending at the version served) instead of the change sets kept here when it reaches
    /// further back: a replica that missed versions, or started late, then answers as far back
    /// as the one that computed them. `false`: not taken.
    pub fn adopt(&mut self, chain: Vec<ChangeSet>) -> bool {
        let links = chain.windows(2).all(|w| w[0].to == w[1].from);
        let ends_here = chain.last().map(|s| s.to.as_str()) == self.current.as_deref();
        if !links || !ends_here || chain.len() <= self.sets.len() {
            return false;
        }
        self.clear();
        for set in chain {
            let to = set.to.clone();
            self.served(&to, Some(set));
        }
        true
    }

    /// The change set that led to the version served, if kept.
    pub fn last(&self) -> Option<Arc<ChangeSet>> {
        self.sets
            .back()
            .filter(|s| Some(s.to.as_str()) == self.current.as_deref())
            .cloned()
    }

    /// Change sets kept, and the bytes they hold.
    pub fn kept(&self) -> (usize, usize) {
        (self.sets.len(), self.bytes)
    }
}

/// Of the change sets shared between replicas (each one's `from` and `to`, oldest first), the
/// longest chain that ends at `current`, at most `max` long: their indexes, oldest first.
/// Several sets may end at the same version (a replica that missed one computes its own across
/// it); the chain goes through whichever reaches furthest back, and never round a loop (data
/// that comes back to an earlier version).
pub fn chain_to(shared: &[(String, String)], current: &str, max: usize) -> Vec<usize> {
    fn longest<'a>(
        shared: &'a [(String, String)],
        to: &'a str,
        left: usize,
        path: &mut Vec<&'a str>,
    ) -> Vec<usize> {
        let mut best = Vec::new();
        if left == 0 {
            return best;
        }
        for (i, (from, end)) in shared.iter().enumerate().rev() {
            if end != to || path.contains(&from.as_str()) {
                continue;
            }
            path.push(from);
            let mut chain = longest(shared, from, left - 1, path);
            path.pop();
            chain.push(i);
            if chain.len() > best.len() {
                best = chain;
            }
        }
        best
    }
    let current = bare_etag(current);
    longest(shared, current, max, &mut vec![current])
}

/// Change sets merged into one: each key's last state, a row inserted then deleted left out.
#[derive(Debug, Default)]
pub struct Merged {
    /// Rows to insert or replace, as the body holds them.
    pub upserted: Vec<Bytes>,
    /// Keys of deleted rows, as JSON (a text, or an array of texts for a composite key).
    pub deleted: Vec<String>,
}

/// Merges `sets` (in order) into the changes from the first one's `from` to the last one's `to`.
pub fn merge(sets: &[Arc<ChangeSet>]) -> Merged {
    struct State<'a> {
        existed: bool,
        row: Option<&'a Bytes>,
        order: (usize, usize),
    }
    let mut states: HashMap<&str, State> = HashMap::new();
    for (s, set) in sets.iter().enumerate() {
        for (c, change) in set.changes.iter().enumerate() {
            let state = states.entry(&change.key).or_insert(State {
                existed: change.kind != Kind::Inserted,
                row: None,
                order: (s, c),
            });
            state.row = change.row.as_ref();
            state.order = (s, c);
        }
    }
    let mut states: Vec<(&str, State)> = states
        .into_iter()
        .filter(|(_, s)| s.existed || s.row.is_some())
        .collect();
    states.sort_unstable_by_key(|(_, s)| s.order);
    let mut merged = Merged::default();
    for (key, state) in states {
        match state.row {
            Some(row) => merged.upserted.push(row.clone()),
            None => merged.deleted.push(key_json(key)),
        }
    }
    merged
}

/// A key's JSON: its text, or the array of its parts' texts for a composite key.
fn key_json(key: &str) -> String {
    if key.contains(KEY_SEPARATOR) {
        serde_json::to_string(&key.split(KEY_SEPARATOR).collect::<Vec<_>>())
    } else {
        serde_json::to_string(key)
    }
    .expect("text serializes")
}

/// The delta body: `{"status":"success","since":…,"etag":…,"last_updated":…,"count":…,
/// "columns":[…],"upserted":[…],"deleted":[…]}`, `count` being the rows of the version it
/// brings the client to, as in `/fetch-data`.
pub fn delta_body(since: &str, current: &Snapshot, merged: &Merged) -> Vec<u8> {
    let columns: Vec<String> = current
        .typed()
        .map(|v| {
            v.batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default();
    let size: usize = merged.upserted.iter().map(|r| r.len() + 1).sum::<usize>()
        + merged.deleted.iter().map(|k| k.len() + 1).sum::<usize>()
        + 256;
    let mut out = Vec::with_capacity(size);
    let text = |s: &str| serde_json::to_string(s).expect("text serializes");
    out.extend_from_slice(b"{\"status\":\"success\",\"since\":");
    out.extend_from_slice(text(since).as_bytes());
    out.extend_from_slice(b",\"etag\":");
    out.extend_from_slice(text(&current.etag).as_bytes());
    out.extend_from_slice(b",\"last_updated\":");
    out.extend_from_slice(text(&current.last_updated).as_bytes());
    out.extend_from_slice(format!(",\"count\":{},\"columns\":", current.count).as_bytes());
    out.extend_from_slice(
        serde_json::to_string(&columns)
            .expect("names serialize")
            .as_bytes(),
    );
    out.extend_from_slice(b",\"upserted\":[");
    for (i, row) in merged.upserted.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(row);
    }
    out.extend_from_slice(b"],\"deleted\":[");
    out.extend_from_slice(merged.deleted.join(",").as_bytes());
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(from: &str, to: &str, changes: &[(&str, Kind)]) -> ChangeSet {
        let changes: Vec<Change> = changes
            .iter()
            .map(|(key, kind)| Change {
                key: (*key).into(),
                kind: *kind,
                row: (*kind != Kind::Deleted)
                    .then(|| Bytes::from(format!("{{\"id\":\"{key}\",\"v\":\"{to}\"}}"))),
            })
            .collect();
        let bytes = changes
            .iter()
            .map(|c| c.key.len() + c.row.as_ref().map_or(0, Bytes::len))
            .sum();
        ChangeSet {
            from: from.into(),
            to: to.into(),
            changes,
            bytes,
            took: Duration::ZERO,
        }
    }

    fn log(versions: usize, memory_bytes: usize) -> DeltaLog {
        DeltaLog::new(DeltaSettings {
            versions,
            memory_bytes,
        })
    }

    #[test]
    fn etags_are_compared_bare_in_any_encoding() {
        assert_eq!(bare_etag("W/\"ab-1\""), "ab-1");
        assert_eq!(bare_etag("W/\"ab-1-gzip\""), "ab-1");
        assert_eq!(bare_etag("\"ab-1-zstd\""), "ab-1");
        assert_eq!(bare_etag(" ab-1 "), "ab-1");
    }

    #[test]
    fn a_client_catches_up_from_any_kept_version_and_older_ones_are_gone() {
        let mut log = log(2, usize::MAX);
        log.served("W/\"a\"", None);
        assert!(matches!(log.catch_up("a", "a"), CatchUp::Current));
        log.served("W/\"b\"", Some(set("a", "b", &[("1", Kind::Inserted)])));
        log.served("W/\"c\"", Some(set("b", "c", &[("2", Kind::Inserted)])));
        match log.catch_up("W/\"a-gzip\"", "W/\"c\"") {
            CatchUp::Apply(sets) => assert_eq!(sets.len(), 2),
            other => panic!("{other:?}"),
        }
        // The same data again changes nothing.
        log.served("W/\"c\"", None);
        assert_eq!(log.kept().0, 2);
        // A third set pushes the first out: `a` is gone, `b` still catches up.
        log.served("W/\"d\"", Some(set("c", "d", &[("3", Kind::Inserted)])));
        assert!(matches!(log.catch_up("a", "d"), CatchUp::Gone));
        assert!(matches!(log.catch_up("b", "d"), CatchUp::Apply(s) if s.len() == 2));
        assert!(matches!(log.catch_up("nonsense", "d"), CatchUp::Gone));
        // A version with no change set: nothing older can catch up with it.
        log.served("W/\"e\"", None);
        assert_eq!(log.kept(), (0, 0));
        assert!(matches!(log.catch_up("d", "e"), CatchUp::Gone));
    }

    #[test]
    fn the_oldest_sets_go_first_past_the_memory_bound() {
        let one = set("a", "b", &[("1", Kind::Inserted)]).memory_bytes();
        let mut log = log(48, one * 2);
        log.served("a", None);
        log.served("b", Some(set("a", "b", &[("1", Kind::Inserted)])));
        log.served("c", Some(set("b", "c", &[("2", Kind::Inserted)])));
        log.served("d", Some(set("c", "d", &[("3", Kind::Inserted)])));
        let (kept, bytes) = log.kept();
        assert_eq!(kept, 2);
        assert!(bytes <= one * 2);
        assert!(matches!(log.catch_up("a", "d"), CatchUp::Gone));
        assert!(matches!(log.catch_up("b", "d"), CatchUp::Apply(_)));
    }

    #[test]
    fn a_set_that_does_not_follow_the_last_starts_the_log_again() {
        let mut log = log(48, usize::MAX);
        log.served("b", Some(set("a", "b", &[("1", Kind::Inserted)])));
        log.served("d", Some(set("c", "d", &[("2", Kind::Inserted)])));
        assert_eq!(log.kept().0, 1);
        assert!(matches!(log.catch_up("a", "d"), CatchUp::Gone));
        assert!(matches!(log.catch_up("c", "d"), CatchUp::Apply(_)));
    }

    #[test]
    fn merged_sets_keep_each_keys_last_state() {
        let sets = [
            Arc::new(set(
                "a",
                "b",
                &[
                    ("1", Kind::Inserted),
                    ("2", Kind::Deleted),
                    ("3", Kind::Updated),
                ],
            )),
            Arc::new(set(
                "b",
                "c",
                &[
                    ("1", Kind::Deleted),
                    ("2", Kind::Inserted),
                    ("4", Kind::Deleted),
                ],
            )),
        ];
        let merged = merge(&sets);
        // 1 came and went: not sent. 2 went and came back: its new row. 3: its row of `b`.
        let rows: Vec<&[u8]> = merged.upserted.iter().map(|r| &r[..]).collect();
        assert_eq!(
            rows,
            [
                &b"{\"id\":\"3\",\"v\":\"b\"}"[..],
                b"{\"id\":\"2\",\"v\":\"c\"}"
            ]
        );
        assert_eq!(merged.deleted, ["\"4\""]);
    }

    #[test]
    fn a_shared_change_set_decodes_to_the_same_changes_and_a_bomb_is_refused() {
        let original = set(
            "a",
            "b",
            &[
                ("1", Kind::Inserted),
                ("2", Kind::Deleted),
                ("3", Kind::Updated),
            ],
        );
        let shared = original.encode().unwrap();
        let back = ChangeSet::decode(&shared, 1 << 20).unwrap();
        assert_eq!((back.from.as_str(), back.to.as_str()), ("a", "b"));
        assert_eq!(back.memory_bytes(), original.memory_bytes());
        let rows = |s: &ChangeSet| {
            s.changes
                .iter()
                .map(|c| (c.key.to_string(), c.kind, c.row.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(rows(&back), rows(&original));
        assert!(ChangeSet::decode(&shared, 10).is_err(), "past the limit");
        assert!(ChangeSet::decode(b"not zstd", 1 << 20).is_err());
        let bomb = zstd::bulk::compress(&vec![b' '; 1 << 20], 3).unwrap();
        assert!(ChangeSet::decode(&bomb, 1 << 10).is_err());
    }

    #[test]
    fn the_longest_shared_chain_to_a_version_is_found_round_no_loop() {
        let ids = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(f, t)| (f.to_string(), t.to_string()))
                .collect::<Vec<_>>()
        };
        // b->d was computed by a replica that missed c; the chain through c is longer.
        let shared = ids(&[("a", "b"), ("b", "c"), ("b", "d"), ("c", "d"), ("d", "e")]);
        assert_eq!(chain_to(&shared, "W/\"e\"", 48), [0, 1, 3, 4]);
        assert_eq!(chain_to(&shared, "e", 2), [3, 4]);
        assert_eq!(chain_to(&shared, "c", 48), [0, 1]);
        assert!(chain_to(&shared, "z", 48).is_empty());
        // The data came back to `a`: the chain stops before going round.
        let looped = ids(&[("a", "b"), ("b", "a"), ("a", "b")]);
        assert_eq!(chain_to(&looped, "b", 48), [2]);
    }

    #[test]
    fn a_longer_shared_chain_ending_here_is_adopted() {
        let mut log = log(48, usize::MAX);
        log.served("c", Some(set("b", "c", &[("2", Kind::Inserted)])));
        assert!(
            !log.adopt(vec![set("a", "b", &[]), set("b", "x", &[])]),
            "ends elsewhere"
        );
        assert!(
            !log.adopt(vec![set("a", "b", &[]), set("x", "c", &[])]),
            "broken"
        );
        assert!(log.adopt(vec![set("a", "b", &[]), set("b", "c", &[])]));
        assert!(matches!(log.catch_up("a", "c"), CatchUp::Apply(s) if s.len() == 2));
        assert_eq!(log.last().unwrap().from, "b");
    }

    #[test]
    fn composite_keys_are_sent_as_arrays() {
        let key = format!("7{KEY_SEPARATOR}x\"y");
        assert_eq!(key_json(&key), "[\"7\",\"x\\\"y\"]");
        assert_eq!(key_json("7"), "\"7\"");
    }
}
