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
    /// 401: no key, or a key that is not configured.
    #[error("Unauthorized")]
    Unauthorized,
    /// 401: an `api_key` query parameter outside an event stream.
    #[error("The api_key query parameter is accepted only with stream=true (for EventSource); send the key in the X-API-Key header")]
    KeyInQuery,
    /// 400: a malformed parameter; the message names it.
    #[error("{0}")]
    BadRequest(String),
    /// 404: no such route.
    #[error("Not found")]
    NotFound,
    /// 405: the route exists but not with this method; `Allow` lists the ones it takes.
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// 503: nothing cached yet.
    #[error("No cached data")]
    NoCache,
    /// 500: the cache file exists but cannot be served.
    #[error("Error reading cache")]
    CacheUnreadable,
    /// 503: a refresh was asked for but no phpMyAdmin is configured.
    #[error("No sync source configured: set PMA_URL, PMA_USERNAME, PMA_PASSWORD and PMA_DATABASE")]
    SyncNotConfigured,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized | ApiError::KeyInQuery => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NoCache | ApiError::SyncNotConfigured => StatusCode::SERVICE_UNAVAILABLE,
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
            ApiError::Unauthorized | ApiError::KeyInQuery => {
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
