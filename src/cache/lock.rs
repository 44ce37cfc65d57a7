//! The sync lock: one sync at a time for everything that shares a cache.
//!
//! On one disk it is an OS advisory lock (`flock`) on a file beside the cache,
//! `data_cache.json.lock`. The kernel releases it when the holder's file is closed, including
//! when the process dies by SIGKILL, so a crashed sync never blocks the next one. With Redis it
//! is a key with a random token and an expiry, renewed while the sync runs: a holder that dies
//! stops renewing and the next sync may run once the key expires.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::shared::SharedStore;

/// How often a waiting process checks whether the lock came free.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// The lock that every syncing process of one cache takes for the whole sync.
#[derive(Debug, Clone)]
pub enum SyncLock {
    /// `flock` on a file beside the cache.
    File(PathBuf),
    /// A key in the shared Redis.
    Shared(Arc<SharedStore>),
}

/// Held while syncing. Dropping it releases a file lock at once; a Redis lock should be given
/// back with [`SyncLockGuard::release`] (dropped, it stops being renewed and expires).
#[derive(Debug)]
pub struct SyncLockGuard(Held);

#[derive(Debug)]
enum Held {
    // Closing the file releases the flock.
    File(#[allow(dead_code)] File),
    Shared {
        store: Arc<SharedStore>,
        token: String,
        renewal: Option<(DropGuard, tokio::task::JoinHandle<()>)>,
    },
}

impl SyncLock {
    /// The lock for the cache file at `cache_file`: `<cache_file>.lock`.
    pub fn beside(cache_file: &Path) -> Self {
        let mut name = cache_file.as_os_str().to_owned();
        name.push(".lock");
        Self::File(name.into())
    }

    /// Where the lock lives, for messages.
    pub fn describe(&self) -> String {
        match self {
            SyncLock::File(path) => path.display().to_string(),
            SyncLock::Shared(_) => "the Redis sync lock".into(),
        }
    }

    /// Takes the lock if it is free. `Ok(None)`: another process holds it.
    pub async fn try_acquire(&self) -> anyhow::Result<Option<SyncLockGuard>> {
        match self {
            SyncLock::File(path) => {
                let file = open_lock_file(path)?;
                match file.try_lock() {
                    Ok(()) => Ok(Some(SyncLockGuard(Held::File(file)))),
                    Err(TryLockError::WouldBlock) => Ok(None),
                    Err(TryLockError::Error(e)) => {
                        Err(e).with_context(|| format!("cannot lock {}", path.display()))
                    }
                }
            }
            SyncLock::Shared(store) => {
                let token = format!("{:032x}", rand::random::<u128>());
                if !store.try_lock(&token).await? {
                    return Ok(None);
                }
                let stop = CancellationToken::new();
                let renewal = tokio::spawn(renew(Arc::clone(store), token.clone(), stop.clone()));
                Ok(Some(SyncLockGuard(Held::Shared {
                    store: Arc::clone(store),
                    token,
                    renewal: Some((stop.drop_guard(), renewal)),
                })))
            }
        }
    }

    /// Takes the lock, waiting while another process holds it.
    pub async fn acquire(&self) -> anyhow::Result<SyncLockGuard> {
        loop {
            if let Some(guard) = self.try_acquire().await? {
                return Ok(guard);
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }
}

impl SyncLockGuard {
    /// Gives the lock back: stops the renewal and deletes a Redis lock if it is still ours.
    pub async fn release(mut self) {
        if let Held::Shared {
            store,
            token,
            renewal,
        } = &mut self.0
        {
            if let Some((stop, task)) = renewal.take() {
                drop(stop);
                let _ = task.await;
            }
            if let Err(e) = store.unlock(token).await {
                tracing::warn!("{e:#}; it expires by itself");
            }
        }
    }
}

/// Keeps a Redis lock alive: renews it at a third of its lifetime until `stop`.
async fn renew(store: Arc<SharedStore>, token: String, stop: CancellationToken) {
    let every = store.lock_ttl() / 3;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match store.renew_lock(&token).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!("the Redis sync lock was lost (expired); another sync may start");
                return;
            }
            Err(e) => tracing::warn!("{e:#}; retrying"),
        }
    }
}

fn open_lock_file(path: &Path) -> anyhow::Result<File> {
    let created = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .open(path);
    // A lock file made earlier still locks on a folder that became read-only; the write
    // that follows then reports the real problem.
    created
        .or_else(|e| File::open(path).map_err(|_| e))
        .map_err(|e| with_cause(e, path))
        .with_context(|| format!("cannot open the sync lock {}", path.display()))
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

    #[tokio::test]
    async fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let lock = SyncLock::beside(&dir.path().join("c.json"));
        assert!(lock.describe().ends_with("c.json.lock"));
        let first = lock.try_acquire().await.unwrap().expect("free at first");
        assert!(lock.try_acquire().await.unwrap().is_none());
        first.release().await;
        assert!(lock.try_acquire().await.unwrap().is_some());
    }
}
