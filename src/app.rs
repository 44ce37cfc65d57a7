//! `serve`: binds the socket, loads the cache, and runs the API with the shared services'
//! background work (cache watcher, alerts, schedule) until stopped.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::config::{ServeConfig, ServerLimits};
use crate::startup::{Access, ServiceSettings, Services};

/// A built, not yet running, API server.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    services: Services,
    state: AppState,
    cors_origins: Vec<String>,
    limits: ServerLimits,
}

impl Application {
    /// Binds the listener and loads the cache, if any. A corrupt cache file is reported and
    /// treated as no cache; it is left on disk until a complete new one replaces it.
    pub async fn build(mut config: ServeConfig) -> anyhow::Result<Self> {
        config.limits.max_connections = descriptors_for(config.limits.max_connections);
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
            secrets: config.keys.secrets(),
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
        let access = Access {
            keys: config.keys,
            refresh_min_interval: config.refresh_min_interval,
            limits: config.limits.clone(),
        };
        let state = services.app_state(access, config.sync_interval);
        Ok(Self {
            listener,
            services,
            state,
            cors_origins: config.cors_allow_origins,
            limits: config.limits,
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
            limits,
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
            .serve_until_stopped(listener, &limits, app, stop)
            .await;
        result.context("the HTTP server failed")
    }
}

/// Descriptors kept for what is not a client connection: the cache and its files, Redis, the
/// browser's driver, the query threads' files.
const OTHER_DESCRIPTORS: u64 = 256;

/// The connection cap this process can keep: raises the soft limit on open files towards what
/// `max_connections` needs (up to the hard limit); where it cannot reach, lowers the cap so that
/// a full house still leaves descriptors for the rest, and says so.
fn descriptors_for(max_connections: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let needed = max_connections as u64 + OTHER_DESCRIPTORS;
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= needed {
        return max_connections;
    }
    let raised = limit.maximum.map_or(needed, |hard| hard.min(needed));
    let soft = match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(raised),
            maximum: limit.maximum,
        },
    ) {
        Ok(()) => raised,
        Err(_) => soft,
    };
    if soft >= needed {
        return max_connections;
    }
    let cap = usize::try_from(soft.saturating_sub(OTHER_DESCRIPTORS).max(16)).unwrap_or(16);
    tracing::warn!(
        max_connections,
        open_files_limit = soft,
        "MAX_CONNECTIONS is more than the open-files limit allows: at most {cap} connections (raise `ulimit -n`)"
    );
    cap
}
