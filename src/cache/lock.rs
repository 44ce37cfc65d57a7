//! The sync lock: one sync at a time for everything that shares a cache.
//!
//! On one disk it is an OS advisory lock (`flock`) on a file beside the cache,
//! `data_cache.json.lock`. The kernel releases it when the holder's file is closed, including
//! when the process dies by SIGKILL, so a crashed sync never blocks the next one.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

/// How often a waiting process checks whether the lock came free.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// The lock that every syncing process of one cache takes for the whole sync.
#[derive(Debug, Clone)]
pub struct SyncLock {
    path: PathBuf,
}

/// Held while syncing; dropping it releases the lock.
#[derive(Debug)]
pub struct SyncLockGuard {
    // Closing the file releases the flock.
    _file: File,
}

impl SyncLock {
    /// The lock for the cache file at `cache_file`: `<cache_file>.lock`.
    pub fn beside(cache_file: &Path) -> Self {
        let mut name = cache_file.as_os_str().to_owned();
        name.push(".lock");
        Self { path: name.into() }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the lock if it is free. `Ok(None)`: another process holds it.
    pub fn try_acquire(&self) -> anyhow::Result<Option<SyncLockGuard>> {
        let file = self.open()?;
        match file.try_lock() {
            Ok(()) => Ok(Some(SyncLockGuard { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", self.path.display()))
            }
        }
    }

    /// Takes the lock, waiting while another process holds it.
    pub async fn acquire(&self) -> anyhow::Result<SyncLockGuard> {
        loop {
            if let Some(guard) = self.try_acquire()? {
                return Ok(guard);
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Whether another process holds the lock now.
    pub fn is_held_elsewhere(&self) -> anyhow::Result<bool> {
        Ok(self.try_acquire()?.is_none())
    }

    fn open(&self) -> anyhow::Result<File> {
        let created = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o644)
            .open(&self.path);
        // A lock file made earlier still locks on a folder that became read-only; the write
        // that follows then reports the real problem.
        created
            .or_else(|e| File::open(&self.path).map_err(|_| e))
            .map_err(|e| with_cause(e, &self.path))
            .with_context(|| format!("cannot open the sync lock {}", self.path.display()))
    }
}

/// An I/O error with a plain word on the usual causes of a failing write.
pub(crate) fn with_cause(e: io::Error, path: &Path) -> anyhow::Error {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let lock = SyncLock::beside(&dir.path().join("c.json"));
        assert_eq!(lock.path(), dir.path().join("c.json.lock"));
        let first = lock.try_acquire().unwrap().expect("free at first");
        assert!(lock.try_acquire().unwrap().is_none());
        assert!(lock.is_held_elsewhere().unwrap());
        drop(first);
        assert!(lock.try_acquire().unwrap().is_some());
    }
}
