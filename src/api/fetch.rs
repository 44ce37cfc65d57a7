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
use bytes::Bytes;

use super::encoder::StreamEncoder;
use super::error::ApiError;
use super::params::parse_bool;
use super::{sse, AppState};
use crate::cache::{Encoding, Snapshot};
use crate::sync::Trigger;

/// What each event of a stream carries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// The whole `/fetch-data` body (`payload=full`, the default).
    #[default]
    Full,
    /// Only `last_updated`, `count` and `etag` (`payload=none`), for clients that fetch with
    /// their ETag when told something changed.
    None,
}

/// The query parameters of `/fetch-data`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FetchParams {
    pub refresh: bool,
    pub stream: bool,
    pub payload: Payload,
}

impl FetchParams {
    /// Parses the query; malformed values are refused (unknown parameters were refused before,
    /// by [`super::params`]).
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut params = Self::default();
        let mut payload_given = false;
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match key.as_ref() {
                "refresh" => &mut params.refresh,
                "stream" => &mut params.stream,
                "payload" => {
                    payload_given = true;
                    params.payload = match value.to_ascii_lowercase().as_str() {
                        "full" => Payload::Full,
                        "none" => Payload::None,
                        _ => {
                            return Err(ApiError::BadRequest(
                                "Invalid value for 'payload': expected full or none".into(),
                            ))
                        }
                    };
                    continue;
                }
                _ => continue,
            };
            *slot = parse_bool(&key, &value)?;
        }
        if payload_given && !params.stream {
            return Err(ApiError::BadRequest(
                "'payload' applies only to event streams (stream=true)".into(),
            ));
        }
        Ok(params)
    }
}

/// `GET /fetch-data[?refresh=true][&stream=true]`.
pub async fn fetch_data(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = FetchParams::parse(query.as_deref())?;
    if params.stream {
        return Ok(sse::stream(state, &headers, params.refresh, params.payload).await);
    }
    let info = match params.refresh {
        false => None,
        true => Some(match state.syncer.trigger().await {
            Trigger::Started => "Background refresh triggered",
            Trigger::AlreadyRunning => "Background refresh already in progress",
            // This server only serves the file (a standalone worker may be refreshing it).
            Trigger::NotConfigured => {
                "Refresh not available: this server has no sync source configured"
            }
            Trigger::NoWorker => "Refresh not started: no worker answered through Redis within 3 s",
        }),
    };
    let snapshot = current_snapshot(&state)?;
    Ok(match info {
        None => cached_response(&snapshot, &headers).await,
        Some(info) => response_with_info(&snapshot, &headers, info).await,
    })
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
        gzip.body_after_brace(snapshot, &mut chunks)
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

/// The q-value `accept` gives `encoding` (0 when not accepted).
fn quality(accept: Option<&HeaderValue>, encoding: Encoding) -> f32 {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return 0.0;
    };
    let mut wildcard = None;
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let name = parts.next().unwrap_or("");
        let q = parts
            .find_map(|p| p.strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case(encoding.token()) {
            return q;
        }
        if name == "*" {
            wildcard = Some(q);
        }
    }
    wildcard.unwrap_or(0.0)
}

/// The encoding to answer in: the highest q-value among zstd and gzip; on a tie, the smaller
/// of the two built variants (zstd when not both are built yet).
pub fn accepted_encoding(accept: Option<&HeaderValue>, snapshot: Option<&Snapshot>) -> Encoding {
    let size = |e: Encoding| snapshot.and_then(|s| s.encoded(e)).map(|b| b.len());
    let mut best = (Encoding::Identity, 0.0f32);
    for encoding in [Encoding::Zstd, Encoding::Gzip] {
        let q = quality(accept, encoding);
        if q <= 0.0 {
            continue;
        }
        let smaller = match (size(encoding), size(best.0)) {
            (Some(mine), Some(theirs)) => mine < theirs,
            _ => false,
        };
        if q > best.1 || (q == best.1 && smaller) {
            best = (encoding, q);
        }
    }
    best.0
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
    fn booleans_parse_and_garbage_is_refused() {
        let p = FetchParams::parse(Some("refresh=true&stream=1&api_key=x")).unwrap();
        assert_eq!(
            p,
            FetchParams {
                refresh: true,
                stream: true,
                payload: Payload::Full,
            }
        );
        let p = FetchParams::parse(Some("stream=true&payload=none")).unwrap();
        assert_eq!(p.payload, Payload::None);
        assert!(FetchParams::parse(Some("stream=true&payload=some")).is_err());
        assert!(FetchParams::parse(Some("payload=none")).is_err());
        assert_eq!(FetchParams::parse(None).unwrap(), FetchParams::default());
        let err = FetchParams::parse(Some("refresh=maybe")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid value for 'refresh': expected true or false"
        );
    }

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
