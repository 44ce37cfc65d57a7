//! The record of who wrote each version, when and how long it took: kept beside the cache file
//! (`<cache>.meta`) and in Redis, so every process can tell who wrote the version it serves.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::write_atomic_unsynced;
use super::schema::TableSchema;

/// What a version records about the sync that made it, so every process (another `serve`, a
/// replica) can tell who wrote the cache it serves, when, and how long it took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Unique per version.
    pub version: String,
    /// The cache's `last_updated`; the record belongs to the version with this stamp and count.
    pub last_updated: String,
    pub rows: usize,
    /// Which process wrote it: command, process id, host.
    pub written_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: time::OffsetDateTime,
    pub duration_seconds: f64,
    /// The table's declared structure, when the sync read it (or `import --schema` gave it);
    /// without it every column is text in the typed view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<TableSchema>,
    /// How the sync that made it read the table: `full`, `row_hash` or `cursor` (none for an
    /// import or a version from before incremental syncs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_kind: Option<String>,
}

impl VersionRecord {
    /// The record of a version this process has just made: a new id, this process as its
    /// writer, finished now, `started` (a sync's or an import's start) giving its duration.
    pub fn made_now(
        last_updated: String,
        rows: usize,
        started_at: time::OffsetDateTime,
        started: std::time::Instant,
        schema: Option<TableSchema>,
    ) -> Self {
        let now = time::OffsetDateTime::now_utc();
        Self {
            version: format!("{:016x}", rand::random::<u64>()),
            last_updated,
            rows,
            written_by: Self::this_process(),
            started_at,
            finished_at: now,
            duration_seconds: started.elapsed().as_secs_f64(),
            schema,
            sync_kind: None,
        }
    }

    /// The sidecar file that holds the record of the version at `cache_file`.
    pub fn path_for(cache_file: &Path) -> PathBuf {
        let mut name = cache_file.as_os_str().to_owned();
        name.push(".meta");
        name.into()
    }

    /// Writes the record beside `cache_file`, atomically. Written before the cache itself: a
    /// reader trusts it only when it matches the version it loaded, so it needs no fsync of its
    /// own: after a crash a lost or older record is ignored, and the cache file's durable write
    /// (which syncs the same folder) follows at once.
    pub fn write(&self, cache_file: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_vec(self)?;
        write_atomic_unsynced(&Self::path_for(cache_file), &json)
    }

    /// The record of the version with `last_updated` and `rows`, if the sidecar holds it.
    pub fn read_matching(cache_file: &Path, last_updated: &str, rows: usize) -> Option<Self> {
        let bytes = fs::read(Self::path_for(cache_file)).ok()?;
        let record: Self = serde_json::from_slice(&bytes).ok()?;
        (record.last_updated == last_updated && record.rows == rows).then_some(record)
    }

    /// Who this process is, for [`VersionRecord::written_by`]: its subcommand, id and host.
    pub fn this_process() -> String {
        let command = std::env::args().nth(1).unwrap_or_default();
        let host = fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown host".into());
        format!("pma-cache {command} (pid {} on {host})", std::process::id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_trusted_only_for_its_own_version() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("c.json");
        let record = VersionRecord {
            version: "v1".into(),
            last_updated: "T".into(),
            rows: 3,
            written_by: VersionRecord::this_process(),
            started_at: time::macros::datetime!(2026-01-01 00:00:00 UTC),
            finished_at: time::macros::datetime!(2026-01-01 00:00:01.5 UTC),
            duration_seconds: 1.5,
            schema: None,
            sync_kind: Some("full".into()),
        };
        record.write(&cache).unwrap();
        assert_eq!(VersionRecord::read_matching(&cache, "T", 3), Some(record));
        assert_eq!(VersionRecord::read_matching(&cache, "T", 4), None);
        assert_eq!(VersionRecord::read_matching(&cache, "U", 3), None);
    }
}
