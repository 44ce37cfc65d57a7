//! Files on disk: atomic, durable replacement and reading of the cache file, the stamp that
//! tells one version of it from another, and the sweep of temporary files killed writers left.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use serde::Deserialize;

use super::format::{check_document, BODY_ROOM};

/// An I/O error with a plain word on the usual causes of a failing write.
pub fn with_cause(e: io::Error, path: &Path) -> anyhow::Error {
    let cause = match e.kind() {
        io::ErrorKind::StorageFull => Some("the disk is full"),
        io::ErrorKind::ReadOnlyFilesystem => Some("the file system is read-only"),
        io::ErrorKind::PermissionDenied => Some("permission denied"),
        io::ErrorKind::QuotaExceeded => Some("the disk quota is exceeded"),
        _ => None,
    };
    match cause {
        Some(cause) => anyhow::Error::new(e).context(format!("{cause} ({})", path.display())),
        None => anyhow::Error::new(e),
    }
}

/// Temporary files of an unfinished write start with this, then the writer's process id.
const TEMP_PREFIX: &str = ".pma-cache-";

/// Identifies one version of the cache file, to notice when another process replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

impl FileStamp {
    fn from_metadata(m: &fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.modified().ok(),
        }
    }

    /// The stamp of the file at `path`, or `None` if there is no file.
    pub fn of(path: &Path) -> std::io::Result<Option<Self>> {
        match fs::metadata(path) {
            Ok(m) => Ok(Some(Self::from_metadata(&m))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The folder that holds `file`.
pub fn folder_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Replaces `path` with `contents` so that a reader, or a crash at any moment, sees the old file
/// or the new one, never a mix: write a temporary file in the same folder, fsync it, rename it
/// over the target, fsync the folder. On failure the old file is intact and no temporary file is
/// left; the error names the path and the cause (disk full, read-only, permission).
pub fn write_atomic(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_atomic_parts(path, &[contents])
}

/// [`write_atomic`] of the concatenation of `parts`.
pub fn write_atomic_parts(path: &Path, parts: &[&[u8]]) -> anyhow::Result<()> {
    replace_file(path, parts, true)
}

/// Replaces `path` with `contents` so that a reader sees the old file or the new one, without
/// waiting for the disk: after a crash the old version, or none, may be there. For files whose
/// loss costs nothing.
pub fn write_atomic_unsynced(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    replace_file(path, &[contents], false)
}

/// Whether the files pma-cache writes are readable by the group (CACHE_GROUP_READABLE), set
/// once at start. Process-wide, like the umask it stands beside.
static GROUP_READABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes the files written from now on readable by the group (`true`) or private (`false`).
pub fn set_group_readable(readable: bool) {
    GROUP_READABLE.store(readable, std::sync::atomic::Ordering::Relaxed);
}

/// The mode of a file pma-cache writes: 0600, or 0640 when the group may read it.
pub fn file_mode() -> u32 {
    match GROUP_READABLE.load(std::sync::atomic::Ordering::Relaxed) {
        true => 0o640,
        false => 0o600,
    }
}

fn replace_file(path: &Path, parts: &[&[u8]], durable: bool) -> anyhow::Result<()> {
    let dir = folder_of(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| with_cause(e, &dir))
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    parts
        .iter()
        .try_for_each(|part| tmp.write_all(part))
        .and_then(|()| match durable {
            true => tmp.as_file().sync_all(),
            false => Ok(()),
        })
        .map_err(|e| with_cause(e, &dir))
        .with_context(|| format!("cannot write the new version of {}", path.display()))?;
    // Private to the user pma-cache runs as (a separate `serve` runs as the same user), or
    // readable by its group when CACHE_GROUP_READABLE says so.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(file_mode()))?;
    tmp.persist(path)
        .map_err(|e| with_cause(e.error, path))
        .with_context(|| format!("cannot rename the new version over {}", path.display()))?;
    if !durable {
        return Ok(());
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync the folder {}", dir.display()))?;
    Ok(())
}

/// Removes the temporary files that writers which are no longer running left in `dir` (a
/// process killed while writing). Those of a running process are left alone. Returns how many
/// were removed.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .filter(|n| n.ends_with(".tmp"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => {
                removed += 1;
                tracing::info!(file = %entry.path().display(), "removed a temporary file of a dead process");
            }
            Err(e) => {
                tracing::warn!(file = %entry.path().display(), "cannot remove a stale temporary file: {e}")
            }
        }
    }
    removed
}

/// Reads the cache file into a buffer with [`BODY_ROOM`] spare bytes in front, with the stamp
/// of the version read. `Ok(None)` when there is no file.
pub fn read_cache_buffer(path: &Path) -> anyhow::Result<Option<(Vec<u8>, FileStamp)>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let meta = file.metadata()?;
    let stamp = FileStamp::from_metadata(&meta);
    let mut buf = Vec::with_capacity(BODY_ROOM + meta.len() as usize + 1);
    buf.resize(BODY_ROOM, b' ');
    file.read_to_end(&mut buf)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some((buf, stamp)))
}

/// The facts (row count, `last_updated`) of the cache file, from parsing all of it. `Ok(None)`
/// when there is no file; an error when it is unreadable or not a valid cache.
pub fn read_facts(path: &Path) -> anyhow::Result<Option<super::format::DocumentFacts>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    check_document(&bytes)
        .with_context(|| format!("{} is not a valid cache file", path.display()))
        .map(Some)
}

/// The number of records in the cache file at `path`, `Ok(None)` when there is none, read as a
/// stream: the shrink guard needs it while the new table is converted, and holding the old table
/// (90 MB) for that would double the sync's memory. An error when the file is not a complete
/// cache document or its `count` does not match its records.
pub fn read_row_count(path: &Path) -> anyhow::Result<Option<usize>> {
    use serde::de::{IgnoredAny, SeqAccess, Visitor};

    /// The records of `data`, counted and dropped one by one.
    struct Records(usize);
    impl<'de> Deserialize<'de> for Records {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Count;
            impl<'de> Visitor<'de> for Count {
                type Value = Records;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an array of records")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Records, A::Error> {
                    let mut n = 0;
                    while seq.next_element::<IgnoredAny>()?.is_some() {
                        n += 1;
                    }
                    Ok(Records(n))
                }
            }
            d.deserialize_seq(Count)
        }
    }
    #[derive(Deserialize)]
    struct Counted {
        count: usize,
        data: Records,
    }

    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let counted: Counted =
        serde_json::from_reader(std::io::BufReader::with_capacity(1 << 20, file))
            .with_context(|| format!("{} is not a valid cache file", path.display()))?;
    anyhow::ensure!(
        counted.count == counted.data.0,
        "{} says count {} but holds {} records",
        path.display(),
        counted.count,
        counted.data.0
    );
    Ok(Some(counted.count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn the_row_count_comes_from_the_parsed_file_whatever_its_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        assert!(read_facts(&path).unwrap().is_none());
        fs::write(
            &path,
            r#"{"data":[{"id":"1"}],"columns":["id"],"count":1,"last_updated":"T"}"#,
        )
        .unwrap();
        assert_eq!(read_facts(&path).unwrap().unwrap().count, 1);
        assert_eq!(read_row_count(&path).unwrap(), Some(1));
        fs::write(
            &path,
            r#"{"last_updated":"T","count":102052,"columns":["id"],"da"#,
        )
        .unwrap();
        assert!(
            read_facts(&path).is_err(),
            "a truncated file has no known count"
        );
        assert!(read_row_count(&path).is_err());
        fs::write(
            &path,
            "{\n  \"count\": 3,\n  \"data\": [{\"id\": \"1\"}, {\"id\": \"2\"}]\n}",
        )
        .unwrap();
        assert!(
            read_row_count(&path).is_err(),
            "a count that does not match the records is not trusted"
        );
        fs::remove_file(&path).unwrap();
        assert_eq!(read_row_count(&path).unwrap(), None);
    }

    #[test]
    fn temporaries_of_dead_writers_are_removed_and_those_of_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir
            .path()
            .join(format!("{TEMP_PREFIX}{}-abc.tmp", std::process::id()));
        // Process ids stop well below this.
        let dead = dir.path().join(format!("{TEMP_PREFIX}4000000000-abc.tmp"));
        let other = dir.path().join("data_cache.json");
        for f in [&live, &dead, &other] {
            fs::write(f, b"x").unwrap();
        }
        assert_eq!(remove_stale_temporaries(dir.path()), 1);
        assert!(live.exists() && other.exists() && !dead.exists());
    }

    #[test]
    fn a_new_version_has_a_new_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        assert_eq!(FileStamp::of(&path).unwrap(), None);
        write_atomic(&path, b"one").unwrap();
        let first = FileStamp::of(&path).unwrap();
        write_atomic(&path, b"one").unwrap();
        assert_ne!(
            FileStamp::of(&path).unwrap(),
            first,
            "a rename makes a new inode"
        );
    }
}
