//! The cache: where versions live, the snapshot in memory, and the news of its replacement.
//!
//! - [`version_store`] — [`VersionStore`], the one seam for where versions live, chosen once
//!   from the settings: [`file_store`] (the cache file and its `flock`) or [`redis_store`]
//!   (Redis and its lock, the file as a local copy).
//! - [`files`] — atomic writes and reads of files; [`record`] — who wrote each version.
//! - [`format`] — the cache file's format and the body layout built from it.
//! - [`convert`] — CSV to cache JSON.
//! - [`schema`] — the table's declared columns and key; [`typed`] — the typed, columnar view
//!   of each version that queries read.
//! - [`rows`] — where each row sits in a version's body, and its hash; [`delta`] — the change
//!   sets between versions and the log of the last ones.
//! - [`snapshot`] — the ready-to-send bodies the API serves, with the typed view.
//! - [`framing`] — the bytes of compressed answers: the variants' gzip and zstd framing, and the
//!   encoding of streamed answers that splice them; [`pieces`] — variants built of pieces, on
//!   every core, each version taking the unchanged pieces of the one before.
//! - [`merge`] — a new version made of the one held and the rows an incremental sync exported.
//!
//! [`Cache`] is what a process serves: readers never wait, since the current snapshot sits
//! behind an [`ArcSwapOption`], so a request takes a reference-counted handle and a new version
//! is swapped in without blocking anyone. Event streams follow versions through a [`watch`]
//! channel: only the newest matters, so a subscriber that falls behind holds the version it is
//! sending and never a queue of older ones. Processes that serve nothing (`worker`, `sync`,
//! `import`) talk to the store alone.

pub mod convert;
pub mod delta;
pub mod file_store;
pub mod files;
pub mod format;
pub mod framing;
pub mod merge;
pub mod pieces;
pub mod record;
pub mod redis_store;
pub mod rows;
pub mod schema;
pub mod snapshot;
pub mod typed;
pub mod version_store;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use convert::{csv_to_cache_json, json_capacity_for_csv, ConvertError, Converted};
pub use delta::{bare_etag, CatchUp, ChangeSet, DeltaLog, DeltaSettings, KnownChanges};
pub use framing::Encoding;
pub use record::VersionRecord;
pub use redis_store::RedisStore;
pub use schema::TableSchema;
pub use snapshot::Snapshot;
pub use typed::TypedTable;
pub use version_store::{
    Loaded, SyncLockGuard, VersionStore, SHARED_CHECK_INTERVAL, WATCH_INTERVAL,
};

/// The newest served version, for event streams; `None` until a cache is served.
pub type Versions = watch::Receiver<Option<Arc<Snapshot>>>;

/// What a process serves: the current snapshot and its record, the news of each new one, and
/// the store the versions come from.
#[derive(Debug)]
pub struct Cache {
    store: Arc<VersionStore>,
    /// The table's name when a version does not declare it (PMA_TABLE).
    table: String,
    current: ArcSwapOption<Snapshot>,
    /// The record of the served version, when it has one.
    record: ArcSwapOption<VersionRecord>,
    /// The same snapshot as `current`, for subscribers to wait on.
    versions: watch::Sender<Option<Arc<Snapshot>>>,
    /// Where the compression of each new version runs, and what stops it.
    background: OnceLock<(TaskTracker, CancellationToken)>,
    /// The primary key to use instead of the declared one (PMA_KEY).
    key: Option<Vec<String>>,
    /// The last change sets. Locked while a version is installed, so a client never sees a
    /// version without the change set that led to it.
    deltas: Arc<Mutex<DeltaLog>>,
    delta_settings: DeltaSettings,
    /// See [`CacheSettings::keep_only`].
    keep_only: bool,
}

/// How a process serves versions: the table's name when a version does not declare it
/// (PMA_TABLE), the key to use instead of the declared one (PMA_KEY), and the change sets kept.
#[derive(Debug, Clone, Default)]
pub struct CacheSettings {
    pub table: String,
    pub key: Option<Vec<String>>,
    pub deltas: DeltaSettings,
    /// The process serves nothing: it keeps the last version it published only for its next
    /// sync to merge into and to compute the change set to the next one, shared through Redis
    /// (a `worker`).
    pub keep_only: bool,
}

/// A new version made ready to serve, with the change set from the version served before it.
struct Prepared {
    snapshot: Snapshot,
    change: Option<ChangeSet>,
}

impl Cache {
    /// An empty cache serving versions from `store`; [`Cache::load_initial`] loads the first.
    pub fn new(store: Arc<VersionStore>, settings: CacheSettings) -> Arc<Self> {
        Arc::new(Self {
            store,
            table: settings.table,
            current: ArcSwapOption::empty(),
            record: ArcSwapOption::empty(),
            versions: watch::Sender::new(None),
            background: OnceLock::new(),
            key: settings.key,
            deltas: Arc::new(Mutex::new(DeltaLog::new(settings.deltas))),
            delta_settings: settings.deltas,
            keep_only: settings.keep_only,
        })
    }

    /// How a client holding the version `since` catches up with the current one, and the
    /// current snapshot (`None` when nothing is served).
    pub fn catch_up(&self, since: &str) -> Option<(Arc<Snapshot>, CatchUp)> {
        let log = self.deltas.lock().expect("delta log lock");
        let current = self.current()?;
        let catch_up = log.catch_up(since, &current.etag);
        Some((current, catch_up))
    }

    /// Change sets kept, and the bytes they hold.
    pub fn deltas_kept(&self) -> (usize, usize) {
        self.deltas.lock().expect("delta log lock").kept()
    }

    /// Makes `snapshot` ready to serve, off the runtime: its typed view, its rows' index and
    /// the change set from the version served now.
    async fn prepare(
        &self,
        mut snapshot: Snapshot,
        schema: Option<TableSchema>,
        known: Option<KnownChanges>,
        merged: Option<Box<merge::MergedParts>>,
    ) -> anyhow::Result<Prepared> {
        let (table, key, previous) = (self.table.clone(), self.key.clone(), self.current());
        tokio::task::spawn_blocking(move || {
            // A merged version's view is the held one's and the exported rows', interleaved.
            let from_merge = merged.and_then(|parts| {
                let previous = previous.as_ref()?;
                if bare_etag(&previous.etag) != bare_etag(&parts.from) {
                    return None;
                }
                TypedTable::merged(previous.typed()?, parts.fresh_view.as_ref()?, &parts.order)
            });
            match from_merge {
                Some(view) => {
                    tracing::info!(
                        rows = view.rows(),
                        seconds = view.build_time.as_secs_f64(),
                        "typed view merged"
                    );
                    snapshot.attach_typed(Some(view), schema.as_ref().map(TableSchema::digest));
                }
                None => attach_typed_view(&mut snapshot, schema.as_ref(), &table, key.as_deref()),
            }
            let change = previous.and_then(|previous| {
                if previous.same_data_as(&snapshot) {
                    return None;
                }
                // What an incremental sync merged is the change set; else every row is compared.
                let from_known = known
                    .as_ref()
                    .map(|known| delta::from_known(&previous, &snapshot, known));
                let set = match from_known {
                    Some(Ok(set)) => Ok(set),
                    Some(Err(e)) => {
                        tracing::debug!(
                            "the merged keys give no change set ({e}); comparing every row"
                        );
                        delta::compute(&previous, &snapshot)
                    }
                    None => delta::compute(&previous, &snapshot),
                };
                match set {
                    Ok(set) => {
                        tracing::info!(
                            upserted = set.upserted(),
                            deleted = set.deleted(),
                            bytes = set.memory_bytes(),
                            seconds = set.took.as_secs_f64(),
                            "change set computed"
                        );
                        Some(set)
                    }
                    Err(e) => {
                        tracing::info!("no change set for this version: {e}");
                        None
                    }
                }
            });
            Prepared { snapshot, change }
        })
        .await
        .map_err(|e| anyhow::anyhow!("the snapshot builder stopped: {e}"))
    }

    /// Runs the compression of each new version on `tasks`, stopped by `stop` (set once, by
    /// the composition root; until then a version's compression runs on a tracker of its own).
    pub fn run_background_work_on(&self, tasks: TaskTracker, stop: CancellationToken) {
        let _ = self.background.set((tasks, stop));
    }

    /// Where the versions live.
    pub fn store(&self) -> &Arc<VersionStore> {
        &self.store
    }

    /// Rows in the current version: the served snapshot's, else the store's.
    pub async fn row_count(&self) -> anyhow::Result<Option<usize>> {
        match self.current() {
            Some(snapshot) => Ok(Some(snapshot.count)),
            None => self.store.row_count().await,
        }
    }

    /// How old the current version's data is: the served snapshot's, else the store's.
    pub async fn age(&self) -> Option<Duration> {
        match self.current() {
            Some(snapshot) => Some(snapshot.age()),
            None => self.store.age().await,
        }
    }

    /// The record of the version being served, if it has one.
    pub fn served_record(&self) -> Option<Arc<VersionRecord>> {
        self.record.load_full()
    }

    /// The cache file's path.
    pub fn path(&self) -> &Path {
        self.store.path()
    }

    /// The snapshot being served, if any.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Why the current version is not being served, if it is present but unusable.
    pub fn load_error(&self) -> Option<String> {
        self.store.load_error()
    }

    /// Subscribes to served versions (`borrow_and_update` gives the current one).
    pub fn subscribe(&self) -> Versions {
        self.versions.subscribe()
    }

    /// Serves a table this process has just published to the store, with its record (and, from
    /// Redis, the zstd frame published, which it need not compress again).
    pub async fn serve_published(
        &self,
        mut converted: Converted,
        record: VersionRecord,
        zstd_frame: Option<Bytes>,
        known: Option<KnownChanges>,
    ) -> anyhow::Result<()> {
        let mut merged = converted.merged.take();
        let mut snapshot = Snapshot::from_converted(converted);
        if let Some(parts) = merged.as_mut() {
            let rows = std::mem::replace(
                &mut parts.rows,
                rows::RowIndex::from_parts(Vec::new(), Vec::new(), Vec::new()),
            );
            snapshot.set_row_index(rows);
        }
        let Prepared { snapshot, change } = self
            .prepare(snapshot, record.schema.clone(), known, merged)
            .await?;
        if self.keep_only {
            self.keep(snapshot, record, change);
            return Ok(());
        }
        if let Some(frame) = zstd_frame {
            snapshot.adopt_zstd(frame);
        }
        self.install(snapshot, Some(Arc::new(record)), change);
        Ok(())
    }

    /// Keeps `snapshot` as the version published, without serving it (no compressed variants,
    /// no subscribers), and shares the change set that led to it.
    fn keep(&self, snapshot: Snapshot, record: VersionRecord, change: Option<ChangeSet>) {
        let snapshot = Arc::new(snapshot);
        let made_here = self.swap_in(&snapshot, Some(Arc::new(record)), change);
        self.share(&snapshot, made_here);
    }

    /// Makes `snapshot` the current version with its record and the change set that led to it,
    /// under the delta log's lock (so a client never sees a version without it). Returns that
    /// change set when this process computed it, to share.
    fn swap_in(
        &self,
        snapshot: &Arc<Snapshot>,
        record: Option<Arc<VersionRecord>>,
        change: Option<ChangeSet>,
    ) -> Option<Arc<ChangeSet>> {
        let mut deltas = self.deltas.lock().expect("delta log lock");
        self.record.store(record);
        self.current.store(Some(Arc::clone(snapshot)));
        let computed = change.is_some();
        deltas.served(&snapshot.etag, change);
        deltas.last().filter(|_| computed)
    }

    /// Shares the change set this process computed for `snapshot`'s version, and takes the
    /// chain of shared ones, in the background (Redis only).
    fn share(&self, snapshot: &Snapshot, made_here: Option<Arc<ChangeSet>>) {
        let Some(redis) = self.store.redis() else {
            return;
        };
        if self.delta_settings.versions == 0 {
            return;
        }
        let (tasks, _) = self
            .background
            .get()
            .cloned()
            .unwrap_or_else(|| (TaskTracker::new(), CancellationToken::new()));
        tasks.spawn(share_change_sets(
            Arc::clone(redis),
            Arc::clone(&self.deltas),
            bare_etag(&snapshot.etag).to_owned(),
            made_here,
            self.delta_settings,
        ));
    }

    /// Loads the first version at start. Returns whether one is served.
    pub async fn load_initial(self: &Arc<Self>) -> anyhow::Result<bool> {
        let loaded = self.store.load_initial().await?;
        Ok(self.serve_loaded(loaded).await)
    }

    /// Loads the store's current version if it is not the one served. Returns whether a new
    /// snapshot is served; an unusable version is an error and the previous snapshot stays.
    pub async fn reload(self: &Arc<Self>) -> anyhow::Result<bool> {
        let loaded = self.store.load_new().await?;
        Ok(self.serve_loaded(loaded).await)
    }

    async fn serve_loaded(&self, loaded: Option<Loaded>) -> bool {
        let Some(Loaded { snapshot, record }) = loaded else {
            return false;
        };
        let schema = record.as_ref().and_then(|r| r.schema.clone());
        let (snapshot, change) = match self.prepare(snapshot, schema, None, None).await {
            Ok(Prepared { snapshot, change }) => (snapshot, change),
            Err(e) => {
                tracing::error!("{e:#}; still serving the version held");
                return false;
            }
        };
        let record = record.map(Arc::new);
        let snapshot = self.install(snapshot, record.clone(), change);
        if let Some(record) = record {
            self.store
                .keep_local_copy(snapshot, (*record).clone())
                .await;
        }
        true
    }

    /// Serves `snapshot`, tells subscribers, and builds its compressed variants off the request
    /// path (a compressed request waits for the quick variant, which comes within a moment).
    fn install(
        &self,
        mut snapshot: Snapshot,
        record: Option<Arc<VersionRecord>>,
        change: Option<ChangeSet>,
    ) -> Arc<Snapshot> {
        let mut before = [None, None];
        if let Some(previous) = self.current() {
            snapshot.keep_data_date_of(&previous);
            // Only the previous variants' pieces are kept for the build, not its body.
            before = [
                previous.pieces(Encoding::Zstd),
                previous.pieces(Encoding::Gzip),
            ];
        }
        let snapshot = Arc::new(snapshot);
        let made_here = self.swap_in(&snapshot, record, change);
        tracing::info!(
            rows = snapshot.count,
            bytes = snapshot.body.len(),
            last_updated = %snapshot.last_updated,
            "serving a new cache"
        );
        self.versions.send_replace(Some(Arc::clone(&snapshot)));
        let building = Arc::clone(&snapshot);
        let (tasks, stop) = self
            .background
            .get()
            .cloned()
            .unwrap_or_else(|| (TaskTracker::new(), CancellationToken::new()));
        self.share(&snapshot, made_here);
        // Finishes on its own within seconds, or within moments of shutdown.
        tasks.spawn_blocking(move || build_variants(&building, before, &stop));
        snapshot
    }

    /// Serves each version another process writes, until `shutdown`: the store tells when one
    /// may be there (see [`VersionStore::follow`]).
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let news = tokio::sync::Notify::new();
        let follow = self.store.follow(|| news.notify_one(), shutdown.clone());
        let reload = async {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = news.notified() => {}
                }
                if let Err(e) = self.reload().await {
                    tracing::error!("{e:#}; still serving the version held");
                }
            }
        };
        tokio::join!(follow, reload);
    }
}

/// Where a sync or an import puts a new version: the store, and this process's cache when it
/// serves one (which then also answers for the current version without asking the store).
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    pub store: &'a Arc<VersionStore>,
    pub serving: Option<&'a Cache>,
}

impl Destination<'_> {
    /// The size of the current version's document, if there is one.
    pub async fn document_bytes(&self) -> Option<usize> {
        match self.serving.and_then(Cache::current) {
            Some(snapshot) => usize::try_from(snapshot.file_size).ok(),
            None => self.store.document_bytes().await,
        }
    }

    /// Rows in the current version (see [`VersionStore::row_count`]).
    pub async fn row_count(&self) -> anyhow::Result<Option<usize>> {
        match self.serving {
            Some(cache) => cache.row_count().await,
            None => self.store.row_count().await,
        }
    }

    /// Publishes a freshly converted table as the current version, with its record, and
    /// serves it when this process serves the cache.
    pub async fn publish(&self, converted: Converted, record: VersionRecord) -> anyhow::Result<()> {
        self.publish_with(converted, record, None).await
    }

    /// [`Destination::publish`], with the keys an incremental sync changed (its change set).
    pub async fn publish_with(
        &self,
        converted: Converted,
        record: VersionRecord,
        known: Option<KnownChanges>,
    ) -> anyhow::Result<()> {
        let (converted, frame) = self.store.publish(converted, &record).await?;
        if let Some(cache) = self.serving {
            cache
                .serve_published(converted, record, frame, known)
                .await?;
        }
        Ok(())
    }
}

/// Shares the change set this process computed for the version `current` (if any) through
/// Redis, then takes the longest chain of shared change sets that ends at `current` when it
/// reaches further back than the ones kept here. Errors are logged: deltas then reach back as
/// far as this process saw.
async fn share_change_sets(
    redis: Arc<redis_store::RedisStore>,
    log: Arc<Mutex<DeltaLog>>,
    current: String,
    made_here: Option<Arc<ChangeSet>>,
    settings: DeltaSettings,
) {
    // Several sets may end at one version (replicas that missed different versions), so twice
    // the kept number are listed.
    let cap = settings.versions.saturating_mul(2);
    if let Some(set) = made_here {
        let shared = tokio::task::spawn_blocking({
            let set = Arc::clone(&set);
            move || set.encode()
        })
        .await;
        match shared {
            Ok(Ok(shared)) => {
                if let Err(e) = redis
                    .share_change_set(&set.from, &set.to, &shared, cap)
                    .await
                {
                    tracing::warn!("{e:#}; other replicas compute their own");
                }
            }
            Ok(Err(e)) => tracing::warn!("cannot encode the change set to share it: {e:#}"),
            Err(e) => tracing::warn!("the change set encoder stopped: {e}"),
        }
    }
    let shared = match redis.shared_change_sets(settings.memory_bytes, cap).await {
        Ok(shared) => shared,
        Err(e) => {
            tracing::warn!("{e:#}; deltas reach back as far as this process saw");
            return;
        }
    };
    let ids: Vec<(String, String)> = shared
        .iter()
        .map(|(from, to, _)| (from.clone(), to.clone()))
        .collect();
    let chain = delta::chain_to(&ids, &current, settings.versions);
    if chain.len() <= log.lock().expect("delta log lock").kept().0 {
        return;
    }
    let mut shared: Vec<Option<Vec<u8>>> = shared.into_iter().map(|(_, _, s)| Some(s)).collect();
    let blobs: Vec<Vec<u8>> = chain.iter().filter_map(|i| shared[*i].take()).collect();
    let decoded = tokio::task::spawn_blocking(move || {
        blobs
            .iter()
            .map(|blob| ChangeSet::decode(blob, settings.memory_bytes))
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .await;
    let chain = match decoded {
        Ok(Ok(chain)) => chain,
        Ok(Err(e)) => {
            tracing::warn!("{e:#}; the shared change sets are not used");
            return;
        }
        Err(e) => {
            tracing::warn!("the change set decoder stopped: {e}");
            return;
        }
    };
    let count = chain.len();
    if log.lock().expect("delta log lock").adopt(chain) {
        tracing::info!(
            change_sets = count,
            "took the change sets other replicas shared: deltas reach back {count} versions"
        );
    }
}

/// Builds the typed view of `snapshot` with its declared `schema` and attaches it. A version
/// whose view cannot be built is still served whole (`/fetch-data`); queries then say why they
/// cannot answer. Blocking.
fn attach_typed_view(
    snapshot: &mut Snapshot,
    schema: Option<&TableSchema>,
    table: &str,
    key: Option<&[String]>,
) {
    let digest = schema.map(TableSchema::digest);
    let built = std::thread::scope(|scope| {
        let shared: &Snapshot = snapshot;
        // The rows' index (for deltas and text answers) is read beside the typed view.
        scope.spawn(move || shared.row_index().map(|_| ()));
        TypedTable::build_with_key(&shared.body, schema, table, key)
    });
    match built {
        Ok(view) => {
            tracing::info!(
                table = %view.schema.table,
                rows = view.rows(),
                typed_columns = view.kinds.iter().filter(|k| **k != schema::ValueKind::Text).count(),
                unrepresentable = view.unrepresentable.iter().sum::<usize>(),
                bytes = view.memory_bytes(),
                seconds = view.build_time.as_secs_f64(),
                "typed view built"
            );
            snapshot.attach_typed(Some(view), digest);
        }
        Err(e) => {
            tracing::error!("the typed view of this version cannot be built: {e:#}");
            snapshot.attach_typed(None, digest);
        }
    }
}

/// A new version with at most this many bytes in pieces the version before lacks gets its
/// variants at the chosen levels at once (about a second on two cores), without quick ones.
const DIRECT_FINAL_BYTES: usize = 16 << 20;

/// Builds the compressed variants `snapshot` lacks, of pieces (see [`pieces`]) on every core:
/// when the version before left its variants' pieces (`before`: zstd, gzip) and most of them
/// hold unchanged rows, straight at the chosen levels, compressing only the new pieces; else
/// the quick ones first, so that a compressed client of the new version waits a moment at most
/// and is never sent the identity body, then each at its chosen level. Blocking.
fn build_variants(
    snapshot: &Snapshot,
    before: [Option<Arc<pieces::Pieced>>; 2],
    stop: &CancellationToken,
) {
    let started = std::time::Instant::now();
    let needed: Vec<(Encoding, Option<Arc<pieces::Pieced>>)> = [Encoding::Zstd, Encoding::Gzip]
        .into_iter()
        .zip(before)
        .filter(|(e, _)| !snapshot.is_final(*e))
        .collect();
    if needed.is_empty() {
        return;
    }
    let keep_going = || !stop.is_cancelled();
    let cuts = match snapshot.row_index() {
        Ok(rows) => pieces::cuts(&snapshot.body, rows),
        // A body whose rows cannot be found is one piece.
        Err(_) => std::iter::once(0..snapshot.body.len()).collect(),
    };
    let workers = pieces::workers();
    let build =
        |encoding: Encoding, level: i32, before: Option<&pieces::Pieced>| match pieces::build(
            &snapshot.body,
            &cuts,
            encoding,
            level,
            before,
            workers,
            &keep_going,
        ) {
            Ok((pieced, built)) => {
                tracing::debug!(
                    encoding = encoding.token(),
                    compression_level = level,
                    pieces_compressed = built.compressed,
                    pieces_reused = built.reused,
                    bytes_compressed = built.compressed_bytes,
                    bytes = pieced.len(),
                    seconds = started.elapsed().as_secs_f64(),
                    "compressed variant ready"
                );
                snapshot.set_pieced(pieced);
                true
            }
            Err(e) => {
                tracing::warn!(
                    encoding = encoding.token(),
                    compression_level = level,
                    "compression failed: {e:#}"
                );
                false
            }
        };
    // Little to compress at the chosen levels (the version before holds the other pieces):
    // straight there; else the quick variants first.
    let quick_first = needed.iter().any(|(encoding, before)| {
        let level = Snapshot::final_level(*encoding);
        pieces::to_compress(&snapshot.body, &cuts, *encoding, level, before.as_deref())
            > DIRECT_FINAL_BYTES
    });
    if quick_first {
        for (encoding, _) in &needed {
            if !build(*encoding, framing::QUICK_LEVEL, None) {
                snapshot.give_up_variant(*encoding);
            }
        }
    }
    for (encoding, before) in &needed {
        if stop.is_cancelled() {
            return;
        }
        if !build(
            *encoding,
            Snapshot::final_level(*encoding),
            before.as_deref(),
        ) && !quick_first
        {
            snapshot.give_up_variant(*encoding);
        }
    }
}
