//! `/health`, `/status` and `/refresh`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
use crate::sync::Trigger;

/// `GET /health`: the process answers. Touches neither the disk nor the cache.
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /status`: facts about the cache and the sync. Never shows settings or secrets.
pub async fn status(State(state): State<AppState>) -> Json<Value> {
    let cache = match state.cache.current() {
        Some(s) => json!({
            "exists": true,
            "count": s.count,
            "size_bytes": s.file_size,
            "last_updated": s.last_updated,
            "age_seconds": s.age().as_secs(),
            "encodings": s.encodings().iter().map(|e| e.token()).collect::<Vec<_>>(),
            "error": state.cache.load_error(),
            "stale": s.age() > state.monitor.stale_after,
            "stale_after_seconds": state.monitor.stale_after.as_secs(),
        }),
        None => json!({
            "exists": false,
            "count": null,
            "size_bytes": null,
            "last_updated": null,
            "age_seconds": null,
            "encodings": [],
            "error": state.cache.load_error(),
            "stale": false,
            "stale_after_seconds": state.monitor.stale_after.as_secs(),
        }),
    };
    let mut sync = serde_json::to_value(state.syncer.status()).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut sync {
        map.insert("configured".into(), state.syncer.is_configured().into());
        map.insert(
            "interval_seconds".into(),
            state.sync_interval.map(|d| d.as_secs()).into(),
        );
        map.insert(
            "consecutive_failures".into(),
            state.monitor.consecutive_failures().into(),
        );
        map.insert(
            "recent".into(),
            serde_json::to_value(state.monitor.recent()).unwrap_or_default(),
        );
    }
    Json(json!({"status": "ok", "cache": cache, "sync": sync}))
}

/// `POST /refresh`: starts a sync in the background unless one is running; a replica without
/// phpMyAdmin settings forwards it to the worker through Redis.
pub async fn refresh(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let status = match state.syncer.trigger().await {
        Trigger::Started => "triggered",
        Trigger::AlreadyRunning => "already in progress",
        Trigger::NotConfigured => return Err(ApiError::SyncNotConfigured),
        Trigger::NoWorker => return Err(ApiError::NoWorker),
        Trigger::ShuttingDown => return Err(ApiError::ShuttingDown),
    };
    Ok((StatusCode::ACCEPTED, Json(json!({"status": status}))))
}
