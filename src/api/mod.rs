//! The HTTP API.
//!
//! - [`auth`] — API keys and their roles.
//! - [`limits`] — the refresh interval and the caps on event streams.
//! - [`params`] — what each route takes: methods and query parameters, parsed.
//! - [`negotiate`] — which encoding an answer goes in.
//! - [`fetch`] — `/fetch-data` from ready-made bytes.
//! - [`sse`] — `/fetch-data?stream=true`.
//! - [`query`] — `/query` (read-only SQL) and `/tables` (columns, types, filtered rows).
//! - [`live`] — `/query?stream=true`: a query answered again when a new version changes it.
//! - [`status`] — `/health`, `/status`, `/refresh`.
//! - [`error`] — the one error type clients see.

pub mod auth;
pub mod dashboard;
pub mod error;
pub mod fetch;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod negotiate;
pub mod params;
pub mod query;
pub mod sse;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use socket2::SockRef;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutWriter;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::cache::Cache;
use crate::config::ServerLimits;
use crate::ops::Monitor;
use crate::query::QueryEngine;
use crate::sync::Syncer;

/// Shared context of every handler.
#[derive(Clone, Debug)]
pub struct AppState {
    pub cache: Arc<Cache>,
    pub syncer: Arc<Syncer>,
    pub keys: Arc<auth::KeyRing>,
    /// One sync per REFRESH_MIN_INTERVAL through the API.
    pub refresh_gate: Arc<limits::RefreshGate>,
    /// Event streams open, per key and in all.
    pub streams: Arc<limits::StreamSlots>,
    /// Ends open event streams when the server stops.
    pub shutdown: CancellationToken,
    pub sync_interval: Option<Duration>,
    /// Recent syncs, metrics, staleness threshold.
    pub monitor: Arc<Monitor>,
    /// Runs `/query` and `/tables` (`serve` only).
    pub query: Option<Arc<QueryEngine>>,
}

/// The API's routes; `cors_origins` empty sends no CORS headers.
pub fn router(state: AppState, cors_origins: &[String]) -> Router {
    let authed = Router::new()
        .route("/status", get(status::status))
        .route("/fetch-data", get(fetch::fetch_data))
        .route("/refresh", post(status::refresh))
        .route("/metrics", get(metrics::metrics))
        .route("/query", get(query::query_get).post(query::query_post))
        .route("/tables", get(query::tables))
        .route("/tables/{table}", get(query::table_rows))
        .route("/tables/{table}/{key}", get(query::table_row))
        .route(
            "/failures/latest.png",
            get(dashboard::latest_failure_screenshot),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    let routes = Router::new()
        .route("/health", get(status::health))
        .route("/", get(dashboard::index))
        .route("/dashboard.js", get(dashboard::script))
        .route("/dashboard.css", get(dashboard::style))
        .merge(authed);
    let mut app = finish(routes, state);
    if !cors_origins.is_empty() {
        app = app.layer(cors_layer(cors_origins));
    }
    app
}

/// The worker's routes: `/health`, and `/metrics` behind the worker's keys when it has any.
pub fn worker_router(state: AppState) -> Router {
    let metrics = Router::new().route("/metrics", get(metrics::metrics));
    let metrics = match state.keys.is_empty() {
        true => metrics,
        false => metrics.route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        )),
    };
    let routes = Router::new()
        .route("/health", get(status::health))
        .merge(metrics);
    finish(routes, state)
}

/// What every route shares: JSON answers to unknown paths and wrong methods, the check of query
/// parameters, request counting and the request log. Keep it after the last route is added.
fn finish(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(|| async { error::ApiError::NotFound })
        .method_not_allowed_fallback(params::method_not_allowed)
        .layer(middleware::from_fn(params::reject_unknown_params))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::count_requests,
        ))
        .layer(middleware::from_fn(log_request))
        // No browser guesses another type than the one declared, and an answer loads nothing
        // and runs nothing if a browser shows it (the dashboard's page sets its own policy).
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(API_CSP),
        ))
        .with_state(state)
}

/// The content security policy of every answer but the dashboard's page.
pub const API_CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn cors_layer(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::HEAD, Method::POST])
        .allow_headers([
            HeaderName::from_static(auth::API_KEY_HEADER),
            header::CONTENT_TYPE,
            header::IF_NONE_MATCH,
            header::CACHE_CONTROL,
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([header::ETAG, header::LAST_MODIFIED, header::RETRY_AFTER])
        .max_age(Duration::from_secs(3600))
}

/// Logs each request's method, path (never the query: it may hold `api_key`), status, content
/// encoding and time.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let encoding = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .to_owned();
    tracing::info!(
        %method,
        path,
        status = response.status().as_u16(),
        encoding,
        ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
        "request"
    );
    response
}

/// How long requests still being answered may go on once shutdown begins. Event streams end at
/// once; this is for downloads in flight, and it keeps a client that stopped reading from holding
/// the process for up to `SSE_WRITE_TIMEOUT` (a container is killed after 10 s by default).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a connection refused at the cap is given to take its `503` and close.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Refusals under way at once; connections beyond the cap past these are closed at once, so
/// that a flood cannot use the descriptors kept for the rest.
const REFUSALS_AT_ONCE: usize = 64;

/// The answer to a connection beyond MAX_CONNECTIONS: written straight to the socket, since no
/// HTTP connection is built for it (that is what the cap saves); the client has not been read.
const BUSY_ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 116\r\n\
\r\n\
{\"status\":\"error\",\"message\":\"The server has as many connections open as it allows (MAX_CONNECTIONS); retry shortly\"}";

/// Serves the API on `listener` until `shutdown` completes, then finishes open requests for up
/// to [`SHUTDOWN_GRACE`]. Before any request is read, and so before any key is checked:
/// - at most `max_connections` are open; one more is answered `503` and closed;
/// - a connection that has not sent a whole request head `header_read_timeout` after it
///   opened, or after its last answer (idle keep-alive), is closed (hyper's timer);
/// - a connection whose writes make no progress for `write_timeout` is closed (see
///   [`accepted`]).
///
/// This is hyper's connection builder with a timer, and hyper-util's graceful shutdown;
/// `axum::serve` has no timer, so its header-read timeout is off.
pub async fn serve(
    listener: TcpListener,
    limits: &ServerLimits,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // HTTP/1.1 only: what browsers, clients and proxies send to a service like this (TLS and
    // HTTP/2 end at the proxy in front). hyper-util's auto builder would first wait, with no
    // timeout, for the bytes that tell HTTP/2 from HTTP/1, so a silent socket stayed open.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let service = TowerToHyperService::new(app);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let graceful = GracefulShutdown::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a connection reset before it was taken: wait a
                    // moment (what axum::serve does) rather than spin.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            let Ok(refusing) = Arc::clone(&refusals).try_acquire_owned() else {
                drop(stream);
                continue;
            };
            connections.spawn(async move {
                let _ = tokio::time::timeout(REFUSAL_TIME, refuse(stream)).await;
                drop(refusing);
            });
            continue;
        };
        let io = accepted(stream, addr, limits.write_timeout);
        let connection = builder.serve_connection(TokioIo::new(io), service.clone());
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, "connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    tokio::select! {
        () = graceful.shutdown() => Ok(()),
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            // The connections' tasks end with the runtime, when the process exits.
            tracing::warn!(
                "connections still open {}s after shutdown began (clients not reading): left to close on exit",
                SHUTDOWN_GRACE.as_secs()
            );
            Ok(())
        }
    }
}

/// Answers `503` to a connection beyond the cap, then reads what the client sent until it
/// closes: closing with its request unread would make the kernel reset the connection, and the
/// client would see a reset instead of the answer.
async fn refuse(mut stream: TcpStream) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    stream.write_all(BUSY_ANSWER).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 4096];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

/// A connection that ends when the client takes no data for `write_timeout`, instead of
/// waiting forever, so what it was being sent is freed:
/// - a write of ours that makes no progress fails after `write_timeout` (the event being sent
///   is larger than what the kernel buffers);
/// - the kernel aborts the connection when data it holds stays unacknowledged, or unsent because
///   the client's receive window is shut, for `write_timeout` (`TCP_USER_TIMEOUT`). This catches
///   a client whose events all fitted in the kernel's buffers: our writes of keep-alives would
///   otherwise keep succeeding into the socket's send buffer forever.
fn accepted(
    stream: TcpStream,
    addr: SocketAddr,
    write_timeout: Duration,
) -> Pin<Box<TimeoutWriter<TcpStream>>> {
    if let Err(e) = SockRef::from(&stream).set_tcp_user_timeout(Some(write_timeout)) {
        tracing::warn!(%addr, "cannot set TCP_USER_TIMEOUT: {e}");
    }
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%addr, "cannot set TCP_NODELAY: {e}");
    }
    let mut stream = TimeoutWriter::new(stream);
    stream.set_timeout(Some(write_timeout));
    Box::pin(stream)
}
