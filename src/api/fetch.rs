//! `GET /fetch-data`: the cached table, sent from ready-made bytes in the encoding the client
//! accepts, with validators so unchanged data costs a 304. The validators follow the data: the
//! weak ETag is a hash of the columns and rows, and `Last-Modified` is when these rows were first
//! served, so a sync that finds the same rows changes neither.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;

use super::auth::Caller;
use super::error::ApiError;
use super::negotiate::{accepted_encoding, quality};
use super::params::{FetchParams, Payload};
use super::query::send;
use super::{sse, AppState};
use crate::cache::delta;
use crate::cache::framing::StreamEncoder;
use crate::cache::{CatchUp, Encoding, Snapshot};
use crate::query::Answer;
use crate::sync::Trigger;

/// `GET /fetch-data[?refresh=true][&stream=true]`.
pub async fn fetch_data(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = FetchParams::parse(query.as_deref())?;
    if params.stream {
        let slot = state.streams.for_caller(caller.as_deref())?;
        if params.payload == Payload::Delta {
            if let Some(Err(why)) = state.cache.current().map(|s| delta::deltas_possible(&s)) {
                return Err(no_deltas(&why));
            }
            // A version named in the URL that is not known here is a 410, as without a stream
            // (a reconnecting EventSource's Last-Event-ID gets the whole table instead: it
            // cannot read a 410).
            if let Some(since) = &params.since {
                if let Some((_, CatchUp::Gone)) = state.cache.catch_up(since) {
                    return Err(gone(&state, since));
                }
            }
        }
        let options = sse::StreamOptions {
            refresh: params.refresh,
            payload: params.payload,
            follow: params.follow,
            since: params.since,
        };
        return Ok(sse::stream(state, &headers, options, slot).await);
    }
    if let Some(since) = params.since {
        return delta_response(&state, &since, &headers).await;
    }
    let info = match params.refresh {
        false => None,
        true => Some(match state.refresh_gate.admit() {
            Err(_) => {
                "Refresh not started: the last one asked for was less than REFRESH_MIN_INTERVAL ago"
            }
            Ok(turn) => match state.syncer.trigger().await {
                Trigger::Started => {
                    turn.used();
                    "Background refresh triggered"
                }
                Trigger::AlreadyRunning => "Background refresh already in progress",
                Trigger::LoginBlocked => {
                    "Refresh not started: phpMyAdmin rejected the last login (see POST /refresh?retry_login=true)"
                }
                // This server only serves the file (a standalone worker may be refreshing it).
                Trigger::NotConfigured => {
                    "Refresh not available: this server has no sync source configured"
                }
                Trigger::NoWorker => {
                    "Refresh not started: no worker answered through Redis within 3 s"
                }
                Trigger::ShuttingDown => "Refresh not started: the service is shutting down",
            },
        }),
    };
    let snapshot = current_snapshot(&state)?;
    Ok(match info {
        None => cached_response(&snapshot, &headers).await,
        Some(info) => response_with_info(&snapshot, &headers, info).await,
    })
}

fn gone(state: &AppState, since: &str) -> ApiError {
    let (kept, _) = state.cache.deltas_kept();
    ApiError::VersionGone(format!(
        "No changes kept since the version {since}: it is unknown here or older than the last \
         {kept} change sets kept (DELTA_VERSIONS); fetch the whole table without 'since' and ask \
         for changes from its ETag"
    ))
}

fn no_deltas(why: &delta::NoDelta) -> ApiError {
    ApiError::BadRequest(format!(
        "No deltas for this table: {why}; fetch the whole table instead"
    ))
}

/// `GET /fetch-data?since=<etag>`: the rows changed since the version the client holds, `304`
/// when it holds the current one, `410 Gone` when its version is unknown or older than the
/// change sets kept.
async fn delta_response(
    state: &AppState,
    since: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let snapshot = current_snapshot(state)?;
    if let Err(why) = delta::deltas_possible(&snapshot) {
        return Err(no_deltas(&why));
    }
    let Some((current, catch_up)) = state.cache.catch_up(since) else {
        return Err(ApiError::NoCache);
    };
    let sets = match catch_up {
        CatchUp::Current => {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            if let Ok(tag) = HeaderValue::from_str(&current.etag) {
                response.headers_mut().insert(header::ETAG, tag);
            }
            return Ok(response);
        }
        CatchUp::Gone => return Err(gone(state, since)),
        CatchUp::Apply(sets) => sets,
    };
    let since = since.to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        let merged = delta::merge(&sets);
        let rows = merged.upserted.len() + merged.deleted.len();
        let body = delta::delta_body(&since, &current, &merged);
        Answer {
            body: Bytes::from(body),
            content_type: "application/json",
            etag: format!(
                "\"{}..{}\"",
                delta::bare_etag(&since),
                delta::bare_etag(&current.etag)
            ),
            rows,
            truncated: false,
        }
    })
    .await
    .map_err(|e| ApiError::QueryFailed(format!("the delta could not be built: {e}")))?;
    Ok(send(Arc::new(answer), headers).await)
}

/// The served snapshot, or the error that explains why there is none.
pub fn current_snapshot(state: &AppState) -> Result<Arc<Snapshot>, ApiError> {
    match state.cache.current() {
        Some(s) => Ok(s),
        None if state.cache.load_error().is_some() => Err(ApiError::CacheUnreadable),
        None => Err(ApiError::NoCache),
    }
}

/// The body in the encoding the client prefers. Right after a new version lands, a compressed
/// client waits for its quick variant (a moment) rather than being sent the identity body; only
/// a variant whose build failed falls back to identity.
async fn cached_response(snapshot: &Snapshot, request: &HeaderMap) -> Response {
    let preferred = accepted_encoding(request.get(header::ACCEPT_ENCODING), Some(snapshot));
    let (encoding, body) = match snapshot.encoded_when_ready(preferred).await {
        Some(body) => (preferred, body),
        None => (Encoding::Identity, snapshot.body.clone()),
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    if let Ok(v) = HeaderValue::from_str(snapshot.etag(encoding)) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&snapshot.http_date) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    if not_modified(request, snapshot) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if encoding != Encoding::Identity {
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(encoding.token()),
        );
    }
    (headers, body).into_response()
}

/// The cached body with `"_info"` in front, sent as chunks that share the snapshot's bytes:
/// gzip from the precompressed body when the client takes gzip (waiting for its quick variant
/// right after a new version), else identity.
async fn response_with_info(snapshot: &Snapshot, request: &HeaderMap, info: &str) -> Response {
    let prefix = format!("{{\"_info\":{},", serde_json::Value::from(info));
    let accept = request.get(header::ACCEPT_ENCODING);
    if quality(accept, Encoding::Gzip) > 0.0 {
        snapshot.encoded_when_ready(Encoding::Gzip).await;
    }
    let mut chunks = VecDeque::new();
    let mut gzip = StreamEncoder::new(Encoding::Gzip);
    let gzipped = quality(accept, Encoding::Gzip) > 0.0 && {
        gzip.text(prefix.as_bytes(), &mut chunks);
        gzip.body_after_brace(
            snapshot.deflate_after_brace(),
            snapshot.body.len(),
            &mut chunks,
        )
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzipped {
        gzip.finish(&mut chunks);
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    } else {
        chunks = VecDeque::from([Bytes::from(prefix), snapshot.body.slice(1..)]);
    }
    let chunks = chunks.into_iter().map(Ok::<_, std::convert::Infallible>);
    (
        headers,
        Body::from_stream(futures_util::stream::iter(chunks)),
    )
        .into_response()
}

/// Whether the client's validators match this version of the data: `If-None-Match` names its
/// ETag in any encoding, or, without `If-None-Match`, `If-Modified-Since` is not older than the
/// data.
fn not_modified(request: &HeaderMap, snapshot: &Snapshot) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        return etag_matches(request, &snapshot.etag);
    }
    request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|since| {
            let modified = httpdate::parse_http_date(&snapshot.http_date).ok()?;
            Some(modified <= since)
        })
        .unwrap_or(false)
}

/// Whether `If-None-Match` names the ETag `base` in any encoding (weak comparison).
fn etag_matches(request: &HeaderMap, base: &str) -> bool {
    let base = base.trim_start_matches("W/").trim_matches('"');
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/").trim_matches('"'))
        .any(|tag| {
            tag == "*"
                || tag == base
                || tag
                    .strip_prefix(base)
                    .is_some_and(|rest| rest == "-gzip" || rest == "-zstd")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_accepts_every_encoding_of_the_same_version() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"other\", W/\"abc-12-gzip\""),
        );
        assert!(etag_matches(&h, "W/\"abc-12\""));
        assert!(!etag_matches(&h, "W/\"abc-13\""));
    }
}
