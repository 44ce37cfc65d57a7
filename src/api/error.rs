//! The one error type at the HTTP boundary: each variant says what the client sees; causes are
//! logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Seconds a client should wait before asking again when no cache is ready.
pub const RETRY_AFTER_SECONDS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no key was sent.
    #[error("Missing API key: send it in the X-API-Key header (or as Authorization: Bearer <key>); it is the value of the server's API_KEY setting (on Render, the API_KEY that render.yaml generates)")]
    MissingKey,
    /// 401: a key was sent but it is none of the configured ones.
    #[error("Wrong API key: the key sent is not one of the server's API_KEY values; check it, or ask whoever runs the server for the current one")]
    WrongKey,
    /// 401: an `api_key` query parameter outside an event stream.
    #[error("The api_key query parameter is accepted only on GET /fetch-data?stream=true and GET /query?stream=true (for EventSource); send the key in the X-API-Key header")]
    KeyInQuery,
    /// 400: a malformed parameter; the message names it.
    #[error("{0}")]
    BadRequest(String),
    /// 404: no such route.
    #[error("Not found: no such route (the routes are /fetch-data, /query, /tables, /status, /refresh, /metrics, /health and / for the dashboard)")]
    NotFound,
    /// 404: the failure screenshot route, when no sync has failed with a screenshot yet.
    #[error("No failure screenshot yet: one is kept each time a sync fails")]
    NoFailureScreenshot,
    /// 405: the route exists but not with this method; the router's `Allow` header lists the
    /// methods it takes, as the message does.
    #[error("Method {method} is not allowed on {path}: use {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    /// 400: a query was stopped at its time or memory limit.
    #[error("{0}")]
    QueryStopped(String),
    /// 404: no row has the key asked for, or no such table.
    #[error("{0}")]
    NoSuchRow(String),
    /// 503: queries cannot be answered now (no typed view of the served version).
    #[error("{0}")]
    QueryUnavailable(String),
    /// 500: the engine failed on a query it accepted.
    #[error("{0}")]
    QueryFailed(String),
    /// 410: the version a delta was asked from is unknown or no longer kept.
    #[error("{0}")]
    VersionGone(String),
    /// 503: nothing cached yet.
    #[error("No cached data")]
    NoCache,
    /// 500: the cache file exists but cannot be served.
    #[error("Error reading cache")]
    CacheUnreadable,
    /// 503: a refresh was asked for but no phpMyAdmin is configured and no Redis to reach a
    /// worker through.
    #[error("No sync source configured: set PMA_URL, PMA_USERNAME, PMA_PASSWORD and PMA_DATABASE, or REDIS_URL to forward refreshes to a `pma-cache worker`")]
    SyncNotConfigured,
    /// 503: a refresh asked for while the service is stopping.
    #[error("The service is shutting down: no new sync starts; ask again once it is back")]
    ShuttingDown,
    /// 503: the refresh was forwarded through Redis but no worker answered.
    #[error("No worker answered: this server has no phpMyAdmin settings and forwards refreshes through Redis to `pma-cache worker`, and none answered within 3 s; check that the worker runs with the same REDIS_URL")]
    NoWorker,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingKey | ApiError::WrongKey | ApiError::KeyInQuery => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::BadRequest(_) | ApiError::QueryStopped(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound | ApiError::NoFailureScreenshot | ApiError::NoSuchRow(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::QueryUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::QueryFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::VersionGone(_) => StatusCode::GONE,
            ApiError::NoCache
            | ApiError::SyncNotConfigured
            | ApiError::NoWorker
            | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::CacheUnreadable => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            Json(json!({"status": "error", "message": self.to_string()})),
        )
            .into_response();
        let headers = response.headers_mut();
        match self {
            ApiError::MissingKey | ApiError::WrongKey | ApiError::KeyInQuery => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("ApiKey header=\"X-API-Key\""),
                );
            }
            ApiError::NoCache => {
                headers.insert(header::RETRY_AFTER, RETRY_AFTER_SECONDS.into());
            }
            _ => {}
        }
        response
    }
}
