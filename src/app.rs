//! The `serve` application: binds the socket, loads the cache, and runs the API with its
//! background tasks (cache watcher, sync schedule) until shut down.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::cache::WATCH_INTERVAL;
use crate::config::ServeConfig;
use crate::ops::{self, alerts::AlertTask};
use crate::sync::Syncer;

/// Time between SSE keep-alive comments.
pub const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

/// A built, not yet running, API server.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    cors_origins: Vec<String>,
    alerts: Option<AlertTask>,
    write_timeout: Duration,
}

impl Application {
    /// Binds the listener and loads the cache file, if any. A corrupt cache file is reported
    /// and treated as no cache; it is left on disk until a complete new one replaces it.
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        let cache = crate::commands::open_cache(config.cache_file.clone(), config.shared, true)?;
        match cache.load_initial().await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                file = %config.cache_file.display(),
                "no cache file yet: /fetch-data answers 503 until a sync or `pma-cache import` writes one"
            ),
            Err(e) => tracing::error!(
                "{e:#}; serving no cache until a complete new one is written (the file is kept)"
            ),
        }
        let shutdown = CancellationToken::new();
        let (monitor, alerts) = ops::monitor(
            &config.alerts,
            &cache,
            config.sync.as_ref(),
            config.api_keys.clone(),
        );
        let syncer = Syncer::new(config.sync, cache.clone(), shutdown.clone());
        syncer.observe(monitor.clone());
        if !syncer.is_configured() {
            match cache.shared_store() {
                Some(_) => tracing::info!(
                    "no PMA_URL: serving versions from Redis; /refresh is forwarded to the worker"
                ),
                None => {
                    tracing::info!("no PMA_URL: serving the cache file only; /refresh answers 503")
                }
            }
        }
        Ok(Self {
            listener,
            state: AppState {
                cache,
                syncer,
                api_keys: config.api_keys.into(),
                shutdown,
                sse_keepalive: SSE_KEEPALIVE,
                sync_interval: config.sync_interval,
                monitor,
            },
            cors_origins: config.cors_allow_origins,
            alerts,
            write_timeout: config.sse_write_timeout,
        })
    }

    /// The address the server listens on (its port when built with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs until `stop` completes, then ends every task: open event streams close, a sync in
    /// progress stops and its browser is shut down, the watcher and schedule end.
    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state;
        let tasks = TaskTracker::new();
        if let Some(alerts) = self.alerts {
            tasks.spawn(alerts.run(state.shutdown.clone()));
        }
        tasks.spawn(
            state
                .cache
                .clone()
                .watch(WATCH_INTERVAL, state.shutdown.clone()),
        );
        if let Some(every) = state.sync_interval {
            let first = match state.cache.current() {
                Some(s) => every.saturating_sub(s.age()),
                None => Duration::ZERO,
            };
            tasks.spawn(state.syncer.clone().run_schedule(every, first));
        }
        // With phpMyAdmin settings and Redis, replicas' refresh requests are answered here.
        tasks.spawn(state.syncer.clone().answer_forwarded_refreshes());
        tasks.close();

        let addr = self.listener.local_addr()?;
        tracing::info!("listening on http://{addr}");
        let app = api::router(state.clone(), &self.cors_origins);
        let token = state.shutdown.clone();
        let result = api::serve(self.listener, self.write_timeout, app, async move {
            stop.await;
            tracing::info!("shutting down");
            token.cancel();
        })
        .await;
        state.shutdown.cancel();
        state.syncer.wait_idle().await;
        tasks.wait().await;
        tracing::info!("stopped");
        result.context("the HTTP server failed")
    }
}
