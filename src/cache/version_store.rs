//! [`VersionStore`]: where versions live, chosen once from the settings. Callers see the few
//! verbs they need (the current version's facts and record, load, publish, follow the news,
//! take the sync lock), never a path or a Redis command.
//!
//! - the cache file ([`FileStore`]): one machine or one volume;
//! - Redis ([`RedisStore`]), with the file as a local copy: replicas that share no disk.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::convert::Converted;
use super::file_store::{FileLockGuard, FileStore};
use super::format;
use super::record::VersionRecord;
use super::redis_store::{RedisLockGuard, RedisStore};
use super::snapshot::Snapshot;
use crate::config::SharedSettings;

/// Redis keys are named after this.
const REDIS_PREFIX: &str = "pma-cache";

/// How often the file is looked at for a version written by another process.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// How often a replica asks Redis for the current version, in case it missed the news.
pub const SHARED_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// How long a start waits for Redis before starting from the local copy.
const REDIS_START_WAIT: Duration = Duration::from_secs(5);

/// How often a waiting process checks whether the sync lock came free.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// Where versions live.
#[derive(Debug)]
pub enum VersionStore {
    File(FileStore),
    Redis(Arc<RedisStore>),
}

/// The sync lock, held while syncing. Dropping it releases a file lock at once; a Redis lock
/// should be given back with [`SyncLockGuard::release`] (dropped, it stops being renewed and
/// expires).
#[derive(Debug)]
pub enum SyncLockGuard {
    File(FileLockGuard),
    Redis(RedisLockGuard),
}

impl SyncLockGuard {
    /// Gives the lock back.
    pub async fn release(self) {
        match self {
            SyncLockGuard::File(guard) => drop(guard),
            SyncLockGuard::Redis(guard) => guard.release().await,
        }
    }
}

/// A version loaded from the store, ready to serve.
#[derive(Debug)]
pub struct Loaded {
    pub snapshot: Snapshot,
    pub record: Option<VersionRecord>,
}

impl VersionStore {
    /// The store the settings choose: Redis when `shared` is set (the file at `cache_file` its
    /// local copy), else the file. Removes leftovers of killed writers beside the file.
    pub fn open(
        cache_file: std::path::PathBuf,
        shared: Option<SharedSettings>,
    ) -> anyhow::Result<Arc<Self>> {
        let file = FileStore::new(cache_file);
        file.remove_stale_temporaries();
        let store = match shared {
            None => VersionStore::File(file),
            Some(s) => VersionStore::Redis(Arc::new(RedisStore::open(
                s.redis_url.expose(),
                REDIS_PREFIX,
                s.lock_ttl,
                s.signing_key,
                s.max_bytes,
                file,
            )?)),
        };
        Ok(Arc::new(store))
    }

    /// Redis, when versions are shared through it.
    pub fn redis(&self) -> Option<&Arc<RedisStore>> {
        match self {
            VersionStore::File(_) => None,
            VersionStore::Redis(redis) => Some(redis),
        }
    }

    /// The cache file: the store, or Redis' local copy.
    pub fn file(&self) -> &FileStore {
        match self {
            VersionStore::File(file) => file,
            VersionStore::Redis(redis) => redis.local(),
        }
    }

    /// The cache file's path.
    pub fn path(&self) -> &Path {
        self.file().path()
    }

    /// Where the sync lock lives, for messages.
    pub fn describe_lock(&self) -> String {
        match self {
            VersionStore::File(file) => file.lock_path().display().to_string(),
            VersionStore::Redis(_) => "the Redis sync lock".into(),
        }
    }

    /// Takes the sync lock if it is free. `Ok(None)`: another process holds it.
    pub async fn try_lock(&self) -> anyhow::Result<Option<SyncLockGuard>> {
        match self {
            VersionStore::File(file) => Ok(file.try_lock()?.map(SyncLockGuard::File)),
            VersionStore::Redis(redis) => Ok(redis.take_lock().await?.map(SyncLockGuard::Redis)),
        }
    }

    /// Takes the sync lock, waiting while another process holds it.
    pub async fn lock(&self) -> anyhow::Result<SyncLockGuard> {
        loop {
            if let Some(guard) = self.try_lock().await? {
                return Ok(guard);
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }

    /// Why the current version could not be loaded, if it could not: Redis' last error, or
    /// the file's.
    pub fn load_error(&self) -> Option<String> {
        let redis = self.redis().and_then(|r| r.error());
        redis.or_else(|| self.file().load_error())
    }

    /// Rows in the current version. `Ok(None)`: there is none; an error: there is one but its
    /// row count cannot be known.
    pub async fn row_count(self: &Arc<Self>) -> anyhow::Result<Option<usize>> {
        if let Some(redis) = self.redis() {
            return Ok(redis.current_meta().await?.map(|m| m.record.rows));
        }
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || store.file().row_count())
            .await
            .context("the cache reader stopped")?
    }

    /// The size in bytes of the current version's document, if there is one.
    pub async fn document_bytes(&self) -> Option<usize> {
        match self.redis() {
            Some(redis) => redis.current_meta().await.ok()?.map(|m| m.document_bytes),
            None => self.file().document_bytes(),
        }
    }

    /// How old the current version's data is (from its `last_updated`).
    pub async fn age(self: &Arc<Self>) -> Option<Duration> {
        let last_updated = match self.redis() {
            Some(redis) => redis.current_meta().await.ok()??.record.last_updated,
            None => {
                let store = Arc::clone(self);
                tokio::task::spawn_blocking(move || store.file().facts())
                    .await
                    .ok()?
                    .ok()??
                    .last_updated
            }
        };
        let t = time::OffsetDateTime::parse(
            &last_updated,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?;
        Some(
            std::time::SystemTime::now()
                .duration_since(t.into())
                .unwrap_or_default(),
        )
    }

    /// Names the current version, to notice one written meanwhile by another process.
    pub async fn version_tag(&self) -> Option<String> {
        match self.redis() {
            Some(redis) => redis
                .current_meta()
                .await
                .ok()
                .flatten()
                .map(|m| m.record.version),
            None => self.file().version_tag(),
        }
    }

    /// The record of the current version.
    pub async fn latest_record(self: &Arc<Self>) -> Option<VersionRecord> {
        if let Some(redis) = self.redis() {
            return redis.current_meta().await.ok().flatten().map(|m| m.record);
        }
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || store.file().latest_record())
            .await
            .ok()
            .flatten()
    }

    /// Makes a freshly converted table the current version, with its record: published to
    /// Redis (if that fails, nothing changes) and kept as the local copy, or written to the
    /// file atomically. Returns the table, and the zstd frame of its body when Redis got one
    /// (for the publisher's own snapshot).
    pub async fn publish(
        self: &Arc<Self>,
        converted: Converted,
        record: &VersionRecord,
    ) -> anyhow::Result<(Converted, Option<Bytes>)> {
        let (converted, frame) = match self.redis() {
            Some(redis) => {
                let (converted, frame) = redis.publish_converted(converted, record).await?;
                (converted, Some(frame))
            }
            None => (converted, None),
        };
        let store = Arc::clone(self);
        let record = record.clone();
        let local_copy = frame.is_some();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Converted> {
            match store.file().write(&[converted.cache_bytes()], &record) {
                Err(e) if local_copy => tracing::warn!("{e:#}; the local copy was not updated"),
                other => other?,
            }
            Ok(converted)
        })
        .await
        .context("the cache writer stopped")?
        .map(|converted| (converted, frame))
    }

    /// The first version at start: from Redis when shared (a few seconds at most), else, or
    /// when Redis is unreachable or empty, from the file.
    pub async fn load_initial(self: &Arc<Self>) -> anyhow::Result<Option<Loaded>> {
        if let Some(redis) = self.redis() {
            match tokio::time::timeout(REDIS_START_WAIT, redis.load_new()).await {
                Ok(Ok(Some((snapshot, record)))) => {
                    return Ok(Some(Loaded {
                        snapshot,
                        record: Some(record),
                    }))
                }
                Ok(Ok(None)) => tracing::warn!("Redis holds no version yet; trying the local copy"),
                Ok(Err(e)) => tracing::warn!("{e:#}; starting from the local copy"),
                Err(_) => tracing::warn!(
                    "Redis did not answer in {}s; starting from the local copy",
                    REDIS_START_WAIT.as_secs()
                ),
            }
        }
        self.load_file().await
    }

    /// The current version if it is not the one known (loaded or written by this process).
    pub async fn load_new(self: &Arc<Self>) -> anyhow::Result<Option<Loaded>> {
        match self.redis() {
            Some(redis) => Ok(redis.load_new().await?.map(|(snapshot, record)| Loaded {
                snapshot,
                record: Some(record),
            })),
            None => self.load_file().await,
        }
    }

    async fn load_file(self: &Arc<Self>) -> anyhow::Result<Option<Loaded>> {
        let store = Arc::clone(self);
        let loaded = tokio::task::spawn_blocking(move || store.file().load_new())
            .await
            .context("the cache reader stopped")??;
        Ok(loaded.map(|(snapshot, record)| Loaded { snapshot, record }))
    }

    /// After a version from Redis is served: keeps it as the local copy to start from when
    /// Redis is unreachable. Nothing to do for the file.
    pub async fn keep_local_copy(self: &Arc<Self>, snapshot: Arc<Snapshot>, record: VersionRecord) {
        if self.redis().is_none() {
            return;
        }
        let store = Arc::clone(self);
        let written = tokio::task::spawn_blocking(move || {
            let document = [&b"{"[..], &snapshot.body[format::BODY_PREFIX.len()..]];
            store.file().write(&document, &record)
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("{e:#}; the local copy was not updated"),
            Err(e) => {
                tracing::warn!("the cache writer stopped: {e}; the local copy was not updated")
            }
        }
    }

    /// Calls `on_news` whenever a new version may be there, until `stop`: in Redis, told by its
    /// news within a moment (and every [`SHARED_CHECK_INTERVAL`] too, for news missed); for
    /// the file, every [`WATCH_INTERVAL`].
    pub async fn follow(&self, on_news: impl Fn(), stop: CancellationToken) {
        let every = match self.redis() {
            Some(_) => SHARED_CHECK_INTERVAL,
            None => WATCH_INTERVAL,
        };
        let ticks = async {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => on_news(),
                }
            }
        };
        match self.redis() {
            Some(redis) => {
                let news = redis.follow(|_| on_news(), stop.clone());
                tokio::join!(news, ticks);
            }
            None => ticks.await,
        }
    }
}
