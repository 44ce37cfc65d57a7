//! The cache file as the store of versions: every process that shares the file (a `serve`, a
//! `worker` or `sync` on the same disk) sees each version, and its lock, an OS advisory lock
//! (`flock`) on `<cache>.lock` beside it, lets one sync run at a time. The kernel releases the
//! lock when the holder's file is closed, including when the process dies by SIGKILL, so a
//! crashed sync never blocks the next one.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;

use super::files::{self, with_cause, FileStamp};
use super::format::DocumentFacts;
use super::record::VersionRecord;
use super::snapshot::Snapshot;

/// The cache file, the version of it this process knows, and its lock.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    lock_path: PathBuf,
    /// The version in memory, loaded or written by this process, so each is loaded once and
    /// our own write is never mistaken for a stranger's.
    known: Mutex<Option<FileStamp>>,
    /// Why the file on disk could not be used, if it could not.
    load_error: Mutex<Option<String>>,
}

/// The file lock, held while syncing; closing the file (dropping this) releases it.
#[derive(Debug)]
pub struct FileLockGuard(#[allow(dead_code)] File);

impl FileStore {
    /// The store at `path`, its lock at `<path>.lock`.
    pub fn new(path: PathBuf) -> Self {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        Self {
            path,
            lock_path: lock_path.into(),
            known: Mutex::new(None),
            load_error: Mutex::new(None),
        }
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file, for messages.
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// Takes the lock if it is free. `Ok(None)`: another process holds it. Blocking, briefly.
    pub fn try_lock(&self) -> anyhow::Result<Option<FileLockGuard>> {
        let file = open_lock_file(&self.lock_path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(FileLockGuard(file))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", self.lock_path.display()))
            }
        }
    }

    /// Why the file on disk is not being served, if it is present but unusable.
    pub fn load_error(&self) -> Option<String> {
        lock(&self.load_error).clone()
    }

    /// The records in the file, counted as a stream; `Ok(None)` when there is no file. Blocking.
    pub fn row_count(&self) -> anyhow::Result<Option<usize>> {
        files::read_row_count(&self.path)
    }

    /// The size of the file, if there is one.
    pub fn document_bytes(&self) -> Option<usize> {
        let len = std::fs::metadata(&self.path).ok()?.len();
        usize::try_from(len).ok()
    }

    /// The facts of the file, from parsing all of it. Blocking.
    pub fn facts(&self) -> anyhow::Result<Option<DocumentFacts>> {
        files::read_facts(&self.path)
    }

    /// Names the version in the file, to notice one written meanwhile by another process.
    pub fn version_tag(&self) -> Option<String> {
        FileStamp::of(&self.path)
            .ok()
            .flatten()
            .map(|s| format!("{s:?}"))
    }

    /// The record of the version in the file, if its sidecar holds it. Blocking.
    pub fn latest_record(&self) -> Option<VersionRecord> {
        let facts = self.facts().ok()??;
        VersionRecord::read_matching(&self.path, &facts.last_updated, facts.count)
    }

    /// Writes the record, then the document (given in parts), atomically, as the known version.
    /// Blocking.
    pub fn write(&self, document: &[&[u8]], record: &VersionRecord) -> anyhow::Result<()> {
        // Held across the rename so the watcher never mistakes our file for a stranger's.
        let mut known = lock(&self.known);
        record.write(&self.path)?;
        files::write_atomic_parts(&self.path, document)?;
        *known = FileStamp::of(&self.path)?;
        *lock(&self.load_error) = None;
        Ok(())
    }

    /// Loads the file if it is not the version known, as a snapshot with its record. A missing
    /// file gives `None`; an invalid one is an error, remembered for `/status`, and the version
    /// known stays. Blocking.
    pub fn load_new(&self) -> anyhow::Result<Option<(Snapshot, Option<VersionRecord>)>> {
        let loaded = self.load_changed();
        match &loaded {
            Ok(Some(_)) => *lock(&self.load_error) = None,
            Ok(None) => {}
            Err(e) => *lock(&self.load_error) = Some(format!("{e:#}")),
        }
        loaded
    }

    fn load_changed(&self) -> anyhow::Result<Option<(Snapshot, Option<VersionRecord>)>> {
        {
            let mut known = lock(&self.known);
            let now = FileStamp::of(&self.path)
                .with_context(|| format!("cannot stat {}", self.path.display()))?;
            if now.is_none() || now == *known {
                return Ok(None);
            }
            *known = now;
        }
        let Some((buf, stamp)) = files::read_cache_buffer(&self.path)? else {
            return Ok(None);
        };
        *lock(&self.known) = Some(stamp);
        let snapshot = Snapshot::from_cache_buffer(buf)
            .with_context(|| format!("{} is not a valid cache file", self.path.display()))?;
        let record =
            VersionRecord::read_matching(&self.path, &snapshot.last_updated, snapshot.count);
        Ok(Some((snapshot, record)))
    }

    /// Removes temporary files that killed writers left beside the cache.
    pub fn remove_stale_temporaries(&self) {
        files::remove_stale_temporaries(&files::folder_of(&self.path));
    }
}

fn open_lock_file(path: &Path) -> anyhow::Result<File> {
    let created = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        // Another user who could open it could `flock` it and stop every sync.
        .mode(0o600)
        .open(path);
    // A lock file made earlier still locks on a folder that became read-only; the write
    // that follows then reports the real problem.
    let file = created
        .or_else(|e| File::open(path).map_err(|_| e))
        .map_err(|e| with_cause(e, path))
        .with_context(|| format!("cannot open the sync lock {}", path.display()))?;
    // One made by an older version (0644) is made private too; not ours to change: left as is.
    let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
    Ok(file)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are plain data that stay consistent even if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("c.json"));
        assert!(store.lock_path().ends_with("c.json.lock"));
        let first = store.try_lock().unwrap().expect("free at first");
        assert!(store.try_lock().unwrap().is_none());
        drop(first);
        assert!(store.try_lock().unwrap().is_some());
    }
}
