//! `serve`: binds the socket, loads the cache, and runs the API with the shared services'
//! background work (cache watcher, alerts, schedule) until stopped.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::config::ServeConfig;
use crate::startup::{ServiceSettings, Services};

/// A built, not yet running, API server.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    services: Services,
    state: AppState,
    cors_origins: Vec<String>,
    write_timeout: Duration,
}

impl Application {
    /// Binds the listener and loads the cache, if any. A corrupt cache file is reported and
    /// treated as no cache; it is left on disk until a complete new one replaces it.
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        let services = Services::build(ServiceSettings {
            cache_file: config.cache_file.clone(),
            cache: config.cache.clone(),
            shared: config.shared,
            serving: true,
            sync: config.sync,
            alerts: &config.alerts,
            secrets: config.api_keys.clone(),
            query: Some(config.query.clone()),
        })?;
        let cache = &services.cache;
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
        if !services.syncer.is_configured() {
            match cache.store().redis() {
                Some(_) => tracing::info!(
                    "no PMA_URL: serving versions from Redis; /refresh is forwarded to the worker"
                ),
                None => {
                    tracing::info!("no PMA_URL: serving the cache file only; /refresh answers 503")
                }
            }
        }
        let state = services.app_state(config.api_keys, config.sync_interval);
        Ok(Self {
            listener,
            services,
            state,
            cors_origins: config.cors_allow_origins,
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
        let Self {
            listener,
            mut services,
            state,
            cors_origins,
            write_timeout,
        } = self;
        let schedule = state.sync_interval.map(|every| {
            let first = match state.cache.current() {
                Some(s) => every.saturating_sub(s.age()),
                None => Duration::ZERO,
            };
            (every, first)
        });
        services.start(schedule);
        services
            .tasks
            .spawn(state.cache.clone().watch(services.shutdown.clone()));

        let addr = listener.local_addr()?;
        tracing::info!("listening on http://{addr}");
        let app = api::router(state, &cors_origins);
        let result = services
            .serve_until_stopped(listener, write_timeout, app, stop)
            .await;
        result.context("the HTTP server failed")
    }
}
