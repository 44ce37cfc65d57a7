//! The cache: the file on disk, the snapshot in memory, and the news of its replacement.
//!
//! - [`convert`] — CSV to cache JSON.
//! - [`store`] — atomic writes and reads of the cache file.
//! - [`snapshot`] — the ready-to-send bodies the API serves.
//!
//! Readers never wait: the current snapshot sits behind an [`ArcSwapOption`], so a request takes a
//! reference-counted handle and a new cache is swapped in without blocking anyone.

pub mod convert;
pub mod snapshot;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwapOption;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use convert::{csv_to_cache_json, ConvertError, Converted};
pub use snapshot::{Encoding, Snapshot};
use store::FileStamp;

/// How often `serve` looks for a cache file written by another process.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// News for SSE subscribers.
#[derive(Debug, Clone)]
pub enum CacheEvent {
    /// A new cache is being served.
    Updated(Arc<Snapshot>),
    /// A sync failed; the previous cache is still served.
    SyncFailed(Arc<str>),
}

/// The served cache and the file behind it.
#[derive(Debug)]
pub struct Cache {
    path: PathBuf,
    current: ArcSwapOption<Snapshot>,
    /// The file version in memory (or being loaded), so each version is loaded once.
    known: Mutex<Option<FileStamp>>,
    /// Why the file on disk could not be used, if it could not.
    load_error: Mutex<Option<String>>,
    events: broadcast::Sender<CacheEvent>,
    /// Whether this process serves the cache (keeps snapshots) or only writes the file.
    serving: bool,
}

impl Cache {
    /// An empty served cache backed by `path`; call [`Cache::reload_if_changed`] to load the file.
    pub fn new(path: impl Into<PathBuf>) -> Arc<Self> {
        Self::with_mode(path.into(), true)
    }

    /// A cache that only writes the file, for the standalone worker and one-off commands: it
    /// keeps no snapshot in memory, so the process holds one copy of the data at most.
    pub fn file_only(path: impl Into<PathBuf>) -> Arc<Self> {
        Self::with_mode(path.into(), false)
    }

    fn with_mode(path: PathBuf, serving: bool) -> Arc<Self> {
        Arc::new(Self {
            path,
            current: ArcSwapOption::empty(),
            known: Mutex::new(None),
            load_error: Mutex::new(None),
            events: broadcast::channel(16).0,
            serving,
        })
    }

    /// Rows in the current cache: the served snapshot's, or the file's when only writing it.
    pub fn row_count(&self) -> Option<usize> {
        if self.serving {
            self.current().map(|s| s.count)
        } else {
            store::read_row_count(&self.path)
        }
    }

    /// The cache file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The snapshot being served, if any.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Why the cache file on disk is not being served, if it is present but unusable.
    pub fn load_error(&self) -> Option<String> {
        lock(&self.load_error).clone()
    }

    /// Subscribes to cache news.
    pub fn subscribe(&self) -> broadcast::Receiver<CacheEvent> {
        self.events.subscribe()
    }

    /// Tells subscribers that a sync failed.
    pub fn publish_failure(&self, message: &str) {
        let _ = self.events.send(CacheEvent::SyncFailed(message.into()));
    }

    /// Writes a freshly converted table to the cache file, atomically, and serves it.
    pub async fn replace(self: &Arc<Self>, converted: Converted) -> anyhow::Result<()> {
        let cache = Arc::clone(self);
        let snapshot = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<Snapshot>> {
            {
                // Held across the rename so the watcher never mistakes our file for a stranger's.
                let mut known = lock(&cache.known);
                store::write_atomic(&cache.path, converted.cache_bytes())?;
                *known = FileStamp::of(&cache.path)?;
            }
            *lock(&cache.load_error) = None;
            Ok(cache.serving.then(|| Snapshot::from_converted(converted)))
        })
        .await
        .context("the cache writer stopped")??;
        if let Some(snapshot) = snapshot {
            self.install(snapshot);
        }
        Ok(())
    }

    /// Loads the cache file if it is not the version already served. Returns whether a new
    /// snapshot is served. A missing file keeps what is served; an invalid one is reported and
    /// ignored, and the previous snapshot stays.
    pub async fn reload_if_changed(self: &Arc<Self>) -> anyhow::Result<bool> {
        let cache = Arc::clone(self);
        let loaded = tokio::task::spawn_blocking(move || cache.load_changed_file())
            .await
            .context("the cache reader stopped")?;
        match loaded {
            Ok(Some(snapshot)) => {
                *lock(&self.load_error) = None;
                self.install(snapshot);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => {
                *lock(&self.load_error) = Some(format!("{e:#}"));
                Err(e)
            }
        }
    }

    fn load_changed_file(&self) -> anyhow::Result<Option<Snapshot>> {
        {
            let mut known = lock(&self.known);
            let now = FileStamp::of(&self.path)
                .with_context(|| format!("cannot stat {}", self.path.display()))?;
            if now.is_none() || now == *known {
                return Ok(None);
            }
            *known = now;
        }
        let Some((buf, stamp)) = store::read_cache_buffer(&self.path)? else {
            return Ok(None);
        };
        *lock(&self.known) = Some(stamp);
        Snapshot::from_cache_buffer(buf)
            .with_context(|| format!("{} is not a valid cache file", self.path.display()))
            .map(Some)
    }

    /// Serves `snapshot`, tells subscribers, and builds its compressed variants off the request
    /// path (requests get identity until each variant is ready).
    fn install(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        let snapshot = Arc::new(snapshot);
        self.current.store(Some(Arc::clone(&snapshot)));
        tracing::info!(
            rows = snapshot.count,
            bytes = snapshot.body.len(),
            last_updated = %snapshot.last_updated,
            "serving a new cache"
        );
        let _ = self.events.send(CacheEvent::Updated(Arc::clone(&snapshot)));
        for encoding in [Encoding::Zstd, Encoding::Gzip] {
            let snapshot = Arc::clone(&snapshot);
            // Finishes on its own within seconds; holds only its snapshot.
            tokio::task::spawn_blocking(move || match snapshot.compress(encoding) {
                Ok(took) => tracing::debug!(
                    encoding = encoding.token(),
                    seconds = took.as_secs_f64(),
                    bytes = snapshot.encoded(encoding).map_or(0, |b| b.len()),
                    "compressed variant ready"
                ),
                Err(e) => tracing::warn!(encoding = encoding.token(), "compression failed: {e:#}"),
            });
        }
        snapshot
    }

    /// Watches the cache file for versions written by another process (a standalone worker,
    /// `pma-cache import`) and serves each within [`WATCH_INTERVAL`], until `shutdown`.
    pub async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.reload_if_changed().await {
                tracing::error!("{e:#}; still serving the previous cache");
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are plain data that stay consistent even if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
