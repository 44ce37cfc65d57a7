//! The cache: the file on disk, the snapshot in memory, and the news of its replacement.
//!
//! - [`format`] — the cache file's format and the body layout built from it.
//! - [`convert`] — CSV to cache JSON.
//! - [`store`] — atomic writes and reads of the cache file, and each version's record.
//! - [`lock`] — the sync lock shared by every process of one cache.
//! - [`shared`] — versions shared through Redis, for replicas that share no disk.
//! - [`snapshot`] — the ready-to-send bodies the API serves.
//!
//! Readers never wait: the current snapshot sits behind an [`ArcSwapOption`], so a request takes a
//! reference-counted handle and a new cache is swapped in without blocking anyone. Event streams
//! follow versions through a [`watch`] channel: only the newest matters, so a subscriber that
//! falls behind holds the version it is sending and never a queue of older ones.

pub mod convert;
pub mod format;
pub mod lock;
pub mod shared;
pub mod snapshot;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwapOption;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use convert::{csv_to_cache_json, json_capacity_for_csv, ConvertError, Converted};
pub use lock::{SyncLock, SyncLockGuard};
pub use shared::SharedStore;
pub use snapshot::{Encoding, Snapshot};
use store::FileStamp;
pub use store::VersionRecord;

/// How often `serve` looks for a cache file written by another process.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// How often a replica asks Redis for the current version, in case it missed the news.
pub const SHARED_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The newest served version, for event streams; `None` until a cache is served.
pub type Versions = watch::Receiver<Option<Arc<Snapshot>>>;

/// The served cache and where its versions live: the file, or Redis with the file as a local
/// copy to start from when Redis is unreachable.
#[derive(Debug)]
pub struct Cache {
    path: PathBuf,
    shared: Option<Arc<SharedStore>>,
    /// The id of the shared version in memory (or being loaded), so each is loaded once.
    known_version: Mutex<Option<String>>,
    lock: SyncLock,
    current: ArcSwapOption<Snapshot>,
    /// The record of the served version, when it has one.
    record: ArcSwapOption<VersionRecord>,
    /// The file version in memory (or being loaded), so each version is loaded once.
    known: Mutex<Option<FileStamp>>,
    /// Why the file on disk could not be used, if it could not.
    load_error: Mutex<Option<String>>,
    /// The same snapshot as `current`, for subscribers to wait on.
    versions: watch::Sender<Option<Arc<Snapshot>>>,
    /// Whether this process serves the cache (keeps snapshots) or only writes the file.
    serving: bool,
}

impl Cache {
    /// An empty served cache backed by `path`; call [`Cache::reload_if_changed`] to load the file.
    pub fn new(path: impl Into<PathBuf>) -> Arc<Self> {
        Self::open(path.into(), None, true)
    }

    /// A cache that only writes the file, for the standalone worker and one-off commands: it
    /// keeps no snapshot in memory, so the process holds one copy of the data at most.
    pub fn file_only(path: impl Into<PathBuf>) -> Arc<Self> {
        Self::open(path.into(), None, false)
    }

    /// A cache whose versions live in `shared` (Redis) when given, else in the file at `path`;
    /// `serving` keeps the current snapshot in memory for the API.
    pub fn open(path: PathBuf, shared: Option<Arc<SharedStore>>, serving: bool) -> Arc<Self> {
        Arc::new(Self {
            lock: match &shared {
                Some(store) => SyncLock::Shared(Arc::clone(store)),
                None => SyncLock::beside(&path),
            },
            shared,
            known_version: Mutex::new(None),
            path,
            current: ArcSwapOption::empty(),
            record: ArcSwapOption::empty(),
            known: Mutex::new(None),
            load_error: Mutex::new(None),
            versions: watch::Sender::new(None),
            serving,
        })
    }

    /// Rows in the current cache, from the served snapshot or by parsing the file. `Ok(None)`:
    /// there is no cache; an error: the file is there but its row count cannot be known.
    pub async fn row_count(&self) -> anyhow::Result<Option<usize>> {
        if let Some(snapshot) = self.current() {
            return Ok(Some(snapshot.count));
        }
        if let Some(shared) = &self.shared {
            return Ok(shared.current_meta().await?.map(|m| m.record.rows));
        }
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || store::read_row_count(&path))
            .await
            .context("the cache reader stopped")?
    }

    /// The size in bytes of the current cache document, if there is one: a sync reserves room
    /// for the new version from it.
    pub async fn document_bytes(&self) -> Option<usize> {
        if let Some(snapshot) = self.current() {
            return usize::try_from(snapshot.file_size).ok();
        }
        if let Some(shared) = &self.shared {
            return shared.current_meta().await.ok()?.map(|m| m.document_bytes);
        }
        let len = tokio::fs::metadata(&self.path).await.ok()?.len();
        usize::try_from(len).ok()
    }

    /// How old the cache's data is (from its `last_updated`); `None` when there is no valid cache.
    pub async fn age(&self) -> Option<Duration> {
        if let Some(snapshot) = self.current() {
            return Some(snapshot.age());
        }
        let last_updated = match &self.shared {
            Some(shared) => shared.current_meta().await.ok()??.record.last_updated,
            None => {
                let path = self.path.clone();
                tokio::task::spawn_blocking(move || store::read_facts(&path))
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
        match &self.shared {
            Some(shared) => shared
                .current_meta()
                .await
                .ok()
                .flatten()
                .map(|m| m.record.version),
            None => FileStamp::of(&self.path)
                .ok()
                .flatten()
                .map(|s| format!("{s:?}")),
        }
    }

    /// The record of the newest version: the served one's, or the file's when only writing it.
    pub async fn latest_record(&self) -> Option<VersionRecord> {
        if self.serving {
            return self.record.load_full().map(|r| (*r).clone());
        }
        if let Some(shared) = &self.shared {
            return shared.current_meta().await.ok().flatten().map(|m| m.record);
        }
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let facts = store::read_facts(&path).ok()??;
            VersionRecord::read_matching(&path, &facts.last_updated, facts.count)
        })
        .await
        .ok()
        .flatten()
    }

    /// The record of the version being served, if it has one.
    pub fn served_record(&self) -> Option<Arc<VersionRecord>> {
        self.record.load_full()
    }

    /// Redis, when versions are shared through it.
    pub fn shared_store(&self) -> Option<&Arc<SharedStore>> {
        self.shared.as_ref()
    }

    /// The lock every process syncing this cache takes for the whole sync.
    pub fn sync_lock(&self) -> &SyncLock {
        &self.lock
    }

    /// Removes temporary files that killed writers left beside the cache.
    pub fn remove_stale_temporaries(&self) {
        store::remove_stale_temporaries(&store::folder_of(&self.path));
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
        let shared = self.shared.as_ref().and_then(|s| s.error());
        shared.or_else(|| lock(&self.load_error).clone())
    }

    /// Subscribes to served versions (`borrow_and_update` gives the current one).
    pub fn subscribe(&self) -> Versions {
        self.versions.subscribe()
    }

    /// Makes a freshly converted table the current version, with its record, and serves it.
    /// With Redis it is published there first (if that fails, nothing changes) and the file is
    /// kept as a local copy; otherwise the file is replaced atomically.
    pub async fn replace(
        self: &Arc<Self>,
        converted: Converted,
        record: VersionRecord,
    ) -> anyhow::Result<()> {
        let (converted, zstd_body) = match &self.shared {
            Some(shared) => {
                *lock(&self.known_version) = Some(record.version.clone());
                let (converted, prepared) = tokio::task::spawn_blocking({
                    let record = record.clone();
                    move || {
                        let prepared = SharedStore::prepare(
                            converted.cache_bytes(),
                            &record,
                            converted.columns.clone(),
                            Some(converted.data_hash),
                        );
                        (converted, prepared)
                    }
                })
                .await
                .context("the compressor stopped")?;
                let prepared = prepared?;
                shared
                    .publish(&prepared)
                    .await
                    .context("the new version was not published; the previous one stays")?;
                (converted, Some(prepared.zstd_body()))
            }
            None => (converted, None),
        };
        let cache = Arc::clone(self);
        let record = Arc::new(record);
        let written = Arc::clone(&record);
        let local_copy = self.shared.is_some();
        let snapshot = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<Snapshot>> {
            let written = cache.write_file(&[converted.cache_bytes()], &written);
            match written {
                Err(e) if local_copy => tracing::warn!("{e:#}; the local copy was not updated"),
                other => other?,
            }
            Ok(cache.serving.then(|| Snapshot::from_converted(converted)))
        })
        .await
        .context("the cache writer stopped")??;
        if let Some(snapshot) = snapshot {
            // The frame every replica serves: this process need not compress it again.
            if let Some(frame) = zstd_body {
                snapshot.adopt_zstd(frame);
            }
            self.install(snapshot, Some(record));
        }
        Ok(())
    }

    /// Writes the record, then the cache file, atomically. Blocking.
    fn write_file(&self, document: &[&[u8]], record: &VersionRecord) -> anyhow::Result<()> {
        // Held across the rename so the watcher never mistakes our file for a stranger's.
        let mut known = lock(&self.known);
        record.write(&self.path)?;
        store::write_atomic_parts(&self.path, document)?;
        *known = FileStamp::of(&self.path)?;
        *lock(&self.load_error) = None;
        Ok(())
    }

    /// Loads the first version at start: from Redis when shared (a few seconds at most), else,
    /// or when Redis is unreachable or empty, from the file. Returns whether one is served.
    pub async fn load_initial(self: &Arc<Self>) -> anyhow::Result<bool> {
        if self.shared.is_some() {
            match tokio::time::timeout(Duration::from_secs(5), self.reload_if_shared_changed())
                .await
            {
                Ok(Ok(true)) => return Ok(true),
                Ok(Ok(false)) => {
                    tracing::warn!("Redis holds no version yet; trying the local copy")
                }
                Ok(Err(e)) => tracing::warn!("{e:#}; starting from the local copy"),
                Err(_) => {
                    tracing::warn!("Redis did not answer in 5 s; starting from the local copy")
                }
            }
        }
        self.reload_if_changed().await
    }

    /// Loads the version Redis holds if it is not the one served. Returns whether a new
    /// snapshot is served. The local copy is refreshed in the background.
    pub async fn reload_if_shared_changed(self: &Arc<Self>) -> anyhow::Result<bool> {
        let Some(shared) = &self.shared else {
            return Ok(false);
        };
        let Some(meta) = shared.current_meta().await? else {
            return Ok(false);
        };
        if lock(&self.known_version).as_deref() == Some(meta.record.version.as_str()) {
            return Ok(false);
        }
        let Some((meta, buf, frame)) = shared.load().await? else {
            return Ok(false);
        };
        *lock(&self.known_version) = Some(meta.record.version.clone());
        // Checked against its checksum: with its facts published, the document is not parsed.
        let facts = meta.data_hash.map(|data_hash| format::DocumentFacts {
            last_updated: meta.record.last_updated.clone(),
            count: meta.record.rows,
            data_hash,
        });
        let snapshot = tokio::task::spawn_blocking(move || match facts {
            Some(facts) => Snapshot::from_known_document(buf, facts),
            None => Snapshot::from_cache_buffer(buf),
        })
        .await
        .context("the cache reader stopped")?
        .context("the version in Redis is not valid")?;
        // The zstd variant is the frame Redis holds, as published: no compression here.
        snapshot.adopt_zstd(frame);
        let record = Arc::new(meta.record);
        let snapshot = self.install(snapshot, Some(Arc::clone(&record)));
        // The local copy to start from when Redis is unreachable, written once the new version
        // is served.
        let cache = Arc::clone(self);
        let written = tokio::task::spawn_blocking(move || {
            let document = [&b"{"[..], &snapshot.body[format::BODY_PREFIX.len()..]];
            cache.write_file(&document, &record)
        })
        .await
        .context("the cache writer stopped")?;
        if let Err(e) = written {
            tracing::warn!("{e:#}; the local copy was not updated");
        }
        Ok(true)
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
            Ok(Some((snapshot, record))) => {
                *lock(&self.load_error) = None;
                self.install(snapshot, record.map(Arc::new));
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => {
                *lock(&self.load_error) = Some(format!("{e:#}"));
                Err(e)
            }
        }
    }

    fn load_changed_file(&self) -> anyhow::Result<Option<(Snapshot, Option<VersionRecord>)>> {
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
        let snapshot = Snapshot::from_cache_buffer(buf)
            .with_context(|| format!("{} is not a valid cache file", self.path.display()))?;
        let record =
            VersionRecord::read_matching(&self.path, &snapshot.last_updated, snapshot.count);
        Ok(Some((snapshot, record)))
    }

    /// Serves `snapshot`, tells subscribers, and builds its compressed variants off the request
    /// path (a compressed request waits for the quick variant, which comes within a moment).
    fn install(&self, mut snapshot: Snapshot, record: Option<Arc<VersionRecord>>) -> Arc<Snapshot> {
        if let Some(previous) = self.current() {
            snapshot.keep_data_date_of(&previous);
        }
        let snapshot = Arc::new(snapshot);
        self.record.store(record);
        self.current.store(Some(Arc::clone(&snapshot)));
        tracing::info!(
            rows = snapshot.count,
            bytes = snapshot.body.len(),
            last_updated = %snapshot.last_updated,
            "serving a new cache"
        );
        self.versions.send_replace(Some(Arc::clone(&snapshot)));
        let building = Arc::clone(&snapshot);
        // Finishes on its own within seconds; holds only its snapshot.
        tokio::task::spawn_blocking(move || build_variants(&building));
        snapshot
    }

    /// Watches for versions written by another process and serves each, until `shutdown`: in
    /// Redis, told by its news within a moment (checked every [`SHARED_CHECK_INTERVAL`] too, for
    /// news missed); on disk, the cache file every `every`.
    pub async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        if let Some(shared) = self.shared.clone() {
            let news = tokio::sync::Notify::new();
            let listen = shared.follow(|_| news.notify_one(), shutdown.clone());
            let reload = async {
                let mut tick = tokio::time::interval(SHARED_CHECK_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = news.notified() => {}
                        _ = tick.tick() => {}
                    }
                    if let Err(e) = self.reload_if_shared_changed().await {
                        tracing::error!("{e:#}; still serving the version held");
                    }
                }
            };
            tokio::join!(listen, reload);
            return;
        }
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

/// Builds the compressed variants `snapshot` lacks: the quick ones first, side by side, so that
/// a compressed client of the new version waits a moment at most and is never sent the identity
/// body; then each at its chosen level, which replaces the quick one. Blocking.
fn build_variants(snapshot: &Snapshot) {
    let needed: Vec<Encoding> = [Encoding::Zstd, Encoding::Gzip]
        .into_iter()
        .filter(|e| !snapshot.is_final(*e))
        .collect();
    let build = |encoding: Encoding, level: i32| match snapshot.compress(encoding, level) {
        Ok(took) => tracing::debug!(
            encoding = encoding.token(),
            level,
            seconds = took.as_secs_f64(),
            bytes = snapshot.encoded(encoding).map_or(0, |b| b.len()),
            "compressed variant ready"
        ),
        Err(e) => tracing::warn!(
            encoding = encoding.token(),
            level,
            "compression failed: {e:#}"
        ),
    };
    std::thread::scope(|scope| {
        for &encoding in &needed {
            scope.spawn(move || build(encoding, snapshot::QUICK_LEVEL));
        }
    });
    for encoding in needed {
        build(encoding, Snapshot::final_level(encoding));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are plain data that stay consistent even if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
