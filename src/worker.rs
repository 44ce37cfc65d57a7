//! `worker`: the standalone sync worker. It syncs when the cache is older than
//! `SYNC_INTERVAL`, then every `SYNC_INTERVAL`, answers refreshes forwarded by replicas, and
//! serves `/health` and `/metrics` on an address of its own (`WORKER_HOST`, `WORKER_PORT`) for
//! orchestrators' probes and Prometheus.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::cache::{CacheSettings, DeltaSettings};
use crate::config::{ServerLimits, WorkerConfig};
use crate::startup::{Access, ServiceSettings, Services};

/// A built, not yet running, worker.
#[derive(Debug)]
pub struct Worker {
    listener: TcpListener,
    services: Services,
    state: AppState,
    sync_interval: Duration,
}

impl Worker {
    /// Binds the worker's `/health` and `/metrics` listener and opens the cache (not served:
    /// the worker keeps no snapshot in memory).
    pub async fn build(config: WorkerConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}:{} (WORKER_HOST, WORKER_PORT)",
                    config.host, config.port
                )
            })?;
        if config.keys.is_empty() {
            tracing::info!(
                "no ADMIN_API_KEY or METRICS_KEY: the worker's /metrics answers without a key"
            );
        }
        let services = Services::build(ServiceSettings {
            cache_file: config.cache_file.clone(),
            cache: CacheSettings {
                table: config.sync.table.clone(),
                key: config.sync.key.clone(),
                deltas: DeltaSettings::default(),
                // The worker keeps the version it published: its next sync exports what
                // changed and merges it in, and with Redis the change set to the next version
                // is shared with the replicas.
                keep_only: true,
            },
            shared: config.shared,
            serving: false,
            sync: Some(config.sync),
            alerts: &config.alerts,
            secrets: config.keys.secrets(),
            query: None,
        })?;
        let access = Access {
            keys: config.keys,
            ..Access::default()
        };
        let state = services.app_state(access, Some(config.sync_interval));
        Ok(Self {
            listener,
            services,
            state,
            sync_interval: config.sync_interval,
        })
    }

    /// The address of the worker's `/health` and `/metrics`.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs until `stop` completes, then ends the sync in progress (its browser shut down) and
    /// every other task.
    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            mut services,
            state,
            sync_interval,
        } = self;
        // A restart (or a crash loop) does not sync again while the cache is fresh.
        let first = match services.cache.age().await {
            Some(age) => sync_interval.saturating_sub(age),
            None => Duration::ZERO,
        };
        services.start(Some((sync_interval, first)));
        tracing::info!(
            every = %humantime::format_duration(sync_interval),
            first_sync_in = %humantime::format_duration(Duration::from_secs(first.as_secs())),
            file = %services.cache.path().display(),
            health = %format!("http://{}/health", listener.local_addr()?),
            "worker started"
        );
        let app = api::worker_router(state);
        let result = services
            .serve_until_stopped(
                listener,
                &ServerLimits {
                    write_timeout: api::SHUTDOWN_GRACE,
                    ..ServerLimits::default()
                },
                app,
                stop,
            )
            .await;
        result.context("the worker's HTTP server failed")
    }
}
