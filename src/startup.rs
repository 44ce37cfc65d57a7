//! The composition root: builds, once, the parts every long-running command shares (the cache
//! and where its versions live, the monitor and its alerts, the syncer) with the one task
//! tracker and the one cancellation token that own every background task. `serve`
//! ([`crate::app::Application`]) and `worker` ([`crate::worker::Worker`]) are two ways to run
//! them; the one-shot commands ([`crate::oneshot`]) open only the store.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::auth::KeyRing;
use crate::api::limits::{RefreshGate, StreamSlots};
use crate::api::{self, AppState};
use crate::cache::{Cache, CacheSettings, VersionStore};
use crate::config::{
    AlertSettings, ApiKeys, QuerySettings, Secret, ServerLimits, SharedSettings, SyncSettings,
};
use crate::ops::{self, alerts::AlertTask, Monitor};
use crate::query::QueryEngine;
use crate::sync::{leftovers, Syncer};

/// Ends what earlier, killed runs left behind (browser folders, a browser still running). Runs
/// once the settings are known to be valid, so a configuration error stays the only line printed.
pub async fn sweep_leftovers() {
    if let Err(e) = tokio::task::spawn_blocking(leftovers::clean_stale).await {
        tracing::warn!("looking for leftovers of earlier runs failed: {e}");
    }
}

/// What `serve` and `worker` share, built once.
#[derive(Debug)]
pub struct Services {
    /// Where versions live.
    pub store: Arc<VersionStore>,
    /// What this process serves: versions loaded from the store (`serve`), or nothing
    /// (`worker`: its cache stays empty, and facts come from the store).
    pub cache: Arc<Cache>,
    pub monitor: Arc<Monitor>,
    pub syncer: Arc<Syncer>,
    /// Runs queries over the served version (`serve` only).
    pub query: Option<Arc<QueryEngine>>,
    /// Every background task runs on this tracker...
    pub tasks: TaskTracker,
    /// ...and stops when this token is cancelled.
    pub shutdown: CancellationToken,
    alerts: Option<AlertTask>,
}

/// Who may call the API and how much: the keys, the least time between refreshes asked for, the
/// caps on connections and streams.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub keys: ApiKeys,
    pub refresh_min_interval: Duration,
    pub limits: ServerLimits,
}

/// The settings [`Services::build`] takes.
#[derive(Debug)]
pub struct ServiceSettings<'a> {
    pub cache_file: PathBuf,
    /// The table's name where a version does not declare it (PMA_TABLE), the key that
    /// overrides the declared one (PMA_KEY), and the change sets kept.
    pub cache: CacheSettings,
    pub shared: Option<SharedSettings>,
    /// Whether this process serves the cache: syncs then serve each new version from memory.
    pub serving: bool,
    pub sync: Option<SyncSettings>,
    pub alerts: &'a AlertSettings,
    /// Scrubbed from every alert, beside the phpMyAdmin password.
    pub secrets: Vec<Secret>,
    /// How queries run, when this process answers them.
    pub query: Option<QuerySettings>,
}

impl Services {
    /// Opens the cache and builds the monitor and the syncer around it.
    pub fn build(settings: ServiceSettings<'_>) -> anyhow::Result<Self> {
        if let Some(sync) = &settings.sync {
            for warning in sync.warnings() {
                tracing::warn!("{warning}");
            }
        }
        let store = VersionStore::open(settings.cache_file, settings.shared)?;
        let keeps = settings.serving || settings.cache.keep_only;
        let cache = Cache::new(Arc::clone(&store), settings.cache);
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        cache.run_background_work_on(tasks.clone(), shutdown.clone());
        let (monitor, alerts) = ops::monitor(
            settings.alerts,
            &cache,
            settings.sync.as_ref(),
            settings.secrets,
        );
        let syncer = Syncer::new(
            settings.sync,
            Arc::clone(&store),
            // A worker keeps what it publishes: the next sync merges into it, and with Redis
            // the change set to it is shared (see `CacheSettings::keep_only`).
            keeps.then(|| Arc::clone(&cache)),
            tasks.clone(),
            shutdown.clone(),
        );
        let query = settings.query.map(QueryEngine::new).transpose()?;
        Ok(Self {
            store,
            cache,
            monitor,
            syncer,
            query,
            tasks,
            shutdown,
            alerts,
        })
    }

    /// Starts the background work every long-running command has: the alerts' delivery, the
    /// monitor following each sync's outcome, the answering of refreshes forwarded by replicas
    /// (with phpMyAdmin settings and Redis), and the schedule, when given as (every, first).
    pub fn start(&mut self, schedule: Option<(Duration, Duration)>) {
        if let Some(alerts) = self.alerts.take() {
            self.tasks.spawn(alerts.run(self.shutdown.clone()));
        }
        self.tasks.spawn(
            Arc::clone(&self.monitor)
                .follow(self.syncer.subscribe_outcomes(), self.shutdown.clone()),
        );
        self.tasks
            .spawn(Arc::clone(&self.syncer).answer_forwarded_refreshes());
        if let Some((every, first)) = schedule {
            self.tasks
                .spawn(Arc::clone(&self.syncer).run_schedule(every, first));
        }
    }

    /// The handlers' shared context, with the keys clients must send and the API's limits.
    pub fn app_state(&self, access: Access, sync_interval: Option<Duration>) -> AppState {
        AppState {
            cache: Arc::clone(&self.cache),
            syncer: Arc::clone(&self.syncer),
            keys: Arc::new(KeyRing::new(&access.keys)),
            refresh_gate: Arc::new(RefreshGate::new(access.refresh_min_interval)),
            streams: Arc::new(StreamSlots::new(&access.limits)),
            shutdown: self.shutdown.clone(),
            sync_interval,
            monitor: Arc::clone(&self.monitor),
            query: self.query.clone(),
        }
    }

    /// Serves `app` on `listener` until `stop` completes, then stops every background task.
    pub async fn serve_until_stopped(
        self,
        listener: TcpListener,
        limits: &ServerLimits,
        app: Router,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let token = self.shutdown.clone();
        let result = api::serve(listener, limits, app, async move {
            stop.await;
            tracing::info!("shutting down");
            token.cancel();
        })
        .await;
        self.stop().await;
        tracing::info!("stopped");
        result
    }

    /// Stops every background task and waits for them: a sync in progress stops and its
    /// browser is shut down, compression of a new version stops, the schedule ends.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.syncer.close_kept_browser().await;
        if let Some(query) = &self.query {
            query.shutdown();
        }
    }
}
