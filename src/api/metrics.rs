//! `GET /metrics` and the request counting behind it.

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use prometheus_client::metrics::gauge::Gauge;
use time::OffsetDateTime;

use super::AppState;
use crate::ops::metrics::HttpLabels;

/// The media type of the OpenMetrics text format, which Prometheus reads.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`: every metric, the cache's gauges as of now.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let metrics = &state.monitor.metrics;
    let snapshot = state.cache.current();
    metrics
        .rows
        .set(snapshot.as_ref().map_or(0, |s| s.count as i64));
    let age = snapshot.as_ref().map(|s| s.age().as_secs_f64());
    metrics.age_seconds.set(age.unwrap_or(0.0));
    metrics.last_success_timestamp.set(age.map_or(0.0, |age| {
        OffsetDateTime::now_utc().unix_timestamp() as f64 - age.round()
    }));
    metrics
        .stale_after_seconds
        .set(state.monitor.stale_after.as_secs_f64());
    metrics
        .sync_in_progress
        .set(i64::from(state.syncer.status().state == "running"));
    ([(header::CONTENT_TYPE, OPENMETRICS)], metrics.encode()).into_response()
}

/// Counts each answered request by route template and status; keeps the open event streams
/// gauge while a stream's body is alive.
pub async fn count_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let response = next.run(request).await;
    let metrics = &state.monitor.metrics;
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    let is_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !is_stream {
        return response;
    }
    let open = OpenStream::new(metrics.sse_subscribers.clone());
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _ = &open;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// One open event stream, counted while it lives.
struct OpenStream(Gauge);

impl OpenStream {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}
