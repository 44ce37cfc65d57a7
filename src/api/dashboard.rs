//! The dashboard at `/`: one page, its script and style built into the binary (it works with no
//! internet). The page holds no data: it asks for the API key, keeps it in `sessionStorage`,
//! and reads `/status` with it in the `X-API-Key` header. The latest failure screenshot is
//! served behind the key.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;
use crate::config::cache_dir;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// Only our own script and style; screenshots arrive as `blob:` images.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the page.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /dashboard.js`.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", DASHBOARD_JS)
}

/// `GET /dashboard.css`.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", DASHBOARD_CSS)
}

/// `GET /failures/latest.png` (key required): the newest failure screenshot, or a 404 that
/// says there is none yet.
pub async fn latest_failure_screenshot(
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let dir = cache_dir(state.cache.path()).join("failures");
    let mut newest: Option<std::path::PathBuf> = None;
    if let Ok(mut entries) = tokio::fs::read_dir(&dir).await {
        while let Ok(Some(entry)) = entries.next_entry().await {
            let path = entry.path();
            // Failure files are named by their UTC time, so the greatest name is the newest.
            if path.extension().is_some_and(|e| e == "png")
                && newest
                    .as_ref()
                    .is_none_or(|n| path.file_name() > n.file_name())
            {
                newest = Some(path);
            }
        }
    }
    let path = newest.ok_or(ApiError::NoFailureScreenshot)?;
    let png = tokio::fs::read(&path).await.map_err(|e| {
        tracing::warn!("cannot read {}: {e}", path.display());
        ApiError::NoFailureScreenshot
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((
        [
            (header::CONTENT_TYPE, "image/png".to_owned()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (header::HeaderName::from_static("x-failure-file"), name),
        ],
        png,
    )
        .into_response())
}
