//! API-key authentication: the `X-API-Key` header (or `Authorization: Bearer <key>`, what
//! Prometheus' scrape configuration sends), or the `api_key` query parameter for browsers'
//! `EventSource`, which cannot send headers. The query parameter is accepted only where
//! `EventSource` needs it, `GET /fetch-data?stream=true` and `GET /query?stream=true`: anywhere
//! else a key in the URL would end up in proxy and access logs for no reason, so it is refused
//! with a pointer to the header. Keys are compared as SHA-256 digests in constant time, so the
//! time taken says nothing of a key's length or content.

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::config::Secret;

/// The header clients send their key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Lets the request through only with a configured key.
pub async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    let from_header = headers
        .get(API_KEY_HEADER)
        .map(|v| v.as_bytes().to_vec())
        .or_else(|| {
            let authorization = headers.get(header::AUTHORIZATION)?;
            bearer_token(authorization.as_bytes()).map(<[u8]>::to_vec)
        });
    let query = request.uri().query();
    let in_query = query_key(query);
    if in_query.is_some() && !url_key_allowed(request.method(), request.uri().path(), query) {
        return Err(ApiError::KeyInQuery);
    }
    // An empty key is no key: say how to send one rather than that it is wrong.
    match from_header.or(in_query).filter(|key| !key.is_empty()) {
        Some(key) if key_matches(&state.api_keys, &key) => Ok(next.run(request).await),
        Some(_) => Err(ApiError::WrongKey),
        None => Err(ApiError::MissingKey),
    }
}

/// The token of an `Authorization: Bearer <key>` header (what Prometheus sends).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

fn query_key(query: Option<&str>) -> Option<Vec<u8>> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "api_key")
        .map(|(_, v)| v.into_owned().into_bytes())
}

/// Whether a key in the URL is accepted: on the event streams a browser's `EventSource` opens.
fn url_key_allowed(method: &Method, path: &str, query: Option<&str>) -> bool {
    method == Method::GET && matches!(path, "/fetch-data" | "/query") && is_stream(query)
}

/// Whether the query asks for an event stream.
fn is_stream(query: Option<&str>) -> bool {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "stream")
        .last()
        .is_some_and(|(k, v)| super::params::parse_bool(&k, &v).unwrap_or(false))
}

/// Compares `given` with every key, without stopping early: their SHA-256 digests, of one
/// length whatever the keys', in constant time.
fn key_matches(keys: &[Secret], given: &[u8]) -> bool {
    let given = Sha256::digest(given);
    let matched = keys.iter().fold(subtle::Choice::from(0), |acc, key| {
        acc | Sha256::digest(key.expose().as_bytes()).ct_eq(&given)
    });
    matched.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_configured_key_matches_and_nothing_else_does() {
        let keys = [Secret::new("old-key"), Secret::new("new-key")];
        assert!(key_matches(&keys, b"old-key"));
        assert!(key_matches(&keys, b"new-key"));
        assert!(!key_matches(&keys, b"new-ke"));
        assert!(!key_matches(&keys, b""));
    }

    #[test]
    fn a_bearer_token_is_the_key_and_other_schemes_are_not() {
        assert_eq!(bearer_token(b"Bearer abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic YWJjOmRlZg=="), None);
        assert_eq!(bearer_token(b"abc"), None);
    }

    #[test]
    fn the_query_key_is_url_decoded() {
        assert_eq!(
            query_key(Some("stream=true&api_key=a%2Bb")),
            Some(b"a+b".to_vec())
        );
        assert_eq!(query_key(Some("stream=true")), None);
    }

    #[test]
    fn only_event_streams_take_the_key_from_the_query() {
        assert!(is_stream(Some("stream=true&api_key=k")));
        assert!(is_stream(Some("api_key=k&stream=1")));
        assert!(!is_stream(Some("api_key=k")));
        assert!(!is_stream(Some("stream=false&api_key=k")));
        assert!(!is_stream(Some("stream=maybe")));
        assert!(!is_stream(None));
    }

    #[test]
    fn the_url_key_is_taken_only_on_the_streams_eventsource_opens() {
        let stream = Some("stream=true&api_key=k");
        assert!(url_key_allowed(&Method::GET, "/fetch-data", stream));
        assert!(url_key_allowed(&Method::GET, "/query", stream));
        assert!(!url_key_allowed(&Method::GET, "/metrics", stream));
        assert!(!url_key_allowed(&Method::GET, "/status", stream));
        assert!(!url_key_allowed(&Method::POST, "/refresh", stream));
        assert!(!url_key_allowed(&Method::POST, "/query", stream));
        assert!(!url_key_allowed(
            &Method::GET,
            "/fetch-data",
            Some("api_key=k")
        ));
    }
}
