//! API-key authentication: the `X-API-Key` header, or the `api_key` query parameter for browsers'
//! `EventSource`, which cannot send headers. Keys are compared in constant time.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
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
    let from_header = request
        .headers()
        .get(API_KEY_HEADER)
        .map(|v| v.as_bytes().to_vec());
    let given = from_header.or_else(|| query_key(request.uri().query()));
    match given {
        Some(key) if key_matches(&state.api_keys, &key) => Ok(next.run(request).await),
        _ => Err(ApiError::Unauthorized),
    }
}

fn query_key(query: Option<&str>) -> Option<Vec<u8>> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "api_key")
        .map(|(_, v)| v.into_owned().into_bytes())
}

/// Compares `given` with every key, without stopping early, in constant time per key.
fn key_matches(keys: &[Secret], given: &[u8]) -> bool {
    let matched = keys.iter().fold(subtle::Choice::from(0), |acc, key| {
        acc | key.expose().as_bytes().ct_eq(given)
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
    fn the_query_key_is_url_decoded() {
        assert_eq!(
            query_key(Some("stream=true&api_key=a%2Bb")),
            Some(b"a+b".to_vec())
        );
        assert_eq!(query_key(Some("stream=true")), None);
    }
}
