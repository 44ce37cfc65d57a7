//! `/health`, `/status` and `/refresh`.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Extension;
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::sync::{Ask, Trigger};

/// `GET /health`: the process answers. Touches neither the disk nor the cache.
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /status`: facts about the cache and the sync. Never shows settings or secrets; the
/// errors' texts (which may name hosts, users and paths) only to an admin key.
pub async fn status(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
) -> Json<Value> {
    let admin = caller.is_some_and(|Extension(c)| c.is_admin());
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
    let mut status = json!({"status": "ok", "cache": cache, "sync": sync});
    if !admin {
        hide_details(&mut status);
    }
    Json(status)
}

/// Replaces the texts of errors with whether there was one: a read key learns that a sync
/// failed, not where phpMyAdmin lives or who logs in.
fn hide_details(status: &mut Value) {
    let hide = |value: &mut Value| {
        if !value.is_null() {
            *value = Value::from("hidden: the details take an admin key (ADMIN_API_KEY)");
        }
    };
    if let Some(error) = status.pointer_mut("/cache/error") {
        hide(error);
    }
    if let Some(error) = status.pointer_mut("/sync/last_error") {
        hide(error);
    }
    // Which host and process wrote the version.
    if let Some(writer) = status.pointer_mut("/sync/last_written_by") {
        hide(writer);
    }
    if let Some(Value::Array(recent)) = status.pointer_mut("/sync/recent") {
        for sync in recent {
            if let Some(error) = sync.get_mut("error") {
                hide(error);
            }
        }
    }
    status["details"] = Value::from("admin only");
}

/// `POST /refresh`: starts a sync in the background unless one is running; a replica without
/// phpMyAdmin settings forwards it to the worker through Redis. At most one per
/// REFRESH_MIN_INTERVAL (`429` with Retry-After); after phpMyAdmin rejected the login, only with
/// `retry_login=true`. `full=true` makes this sync (or the next, if one is running) a full export.
pub async fn refresh(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let mut ask = Ask::default();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "retry_login" => ask.retry_login = super::params::parse_bool(&name, &value)?,
            "full" => ask.full = super::params::parse_bool(&name, &value)?,
            _ => {}
        }
    }
    if state.syncer.login_blocked() && !ask.retry_login {
        return Err(ApiError::LoginBlocked);
    }
    let turn = state.refresh_gate.admit()?;
    let status = match state.syncer.trigger_with(ask).await {
        Trigger::Started => {
            turn.used();
            "triggered"
        }
        Trigger::AlreadyRunning => "already in progress",
        Trigger::LoginBlocked => return Err(ApiError::LoginBlocked),
        Trigger::NotConfigured => return Err(ApiError::SyncNotConfigured),
        Trigger::NoWorker => return Err(ApiError::NoWorker),
        Trigger::ShuttingDown => return Err(ApiError::ShuttingDown),
    };
    Ok((StatusCode::ACCEPTED, Json(json!({"status": status}))))
}
