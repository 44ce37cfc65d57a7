//! API-key authentication: the `X-API-Key` header (or `Authorization: Bearer <key>`, what
//! Prometheus' scrape configuration sends), or the `api_key` query parameter for browsers'
//! `EventSource`, which cannot send headers. The query parameter is accepted only where
//! `EventSource` needs it, `GET /fetch-data?stream=true` and `GET /query?stream=true`: anywhere
//! else a key in the URL would end up in proxy and access logs for no reason, so it is refused
//! with a pointer to the header. Keys are compared as SHA-256 digests in constant time, so the
//! time taken says nothing of a key's length or content.
//!
//! Each key has a [`Role`]: read keys see data, admin keys also start syncs and see `/status`
//! details, `/metrics` and failure evidence, metrics keys see `/metrics` only. [`needed`] says
//! which a request takes; the handlers find the caller's key and role in the request's
//! extensions ([`Caller`]).

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::config::{ApiKeys, Role};

/// The header clients send their key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The configured keys, kept as their SHA-256 digests.
#[derive(Debug, Default)]
pub struct KeyRing(Vec<([u8; 32], Role)>);

impl KeyRing {
    pub fn new(keys: &ApiKeys) -> Self {
        Self(
            keys.iter()
                .map(|(key, role)| (Sha256::digest(key.expose().as_bytes()).into(), *role))
                .collect(),
        )
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key `given` is, by its place in the ring, and its role: compared with every key,
    /// without stopping early, as digests of one length in constant time.
    fn find(&self, given: &[u8]) -> Option<Caller> {
        let given = Sha256::digest(given);
        let mut found = None;
        for (index, (digest, role)) in self.0.iter().enumerate() {
            let matched: bool = digest.as_slice().ct_eq(given.as_slice()).into();
            if matched && found.is_none() {
                found = Some(Caller {
                    key: index,
                    role: *role,
                });
            }
        }
        found
    }
}

/// Who is asking: which configured key (by its place) and what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub key: usize,
    pub role: Role,
}

impl Caller {
    /// Whether the caller may see details kept for admins.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// What a request takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A read or admin key.
    Read,
    /// A metrics or admin key.
    Metrics,
    /// An admin key; the text says for what.
    Admin(&'static str),
}

/// What `method` on `path` with `query` takes: starting a sync and failure evidence take an
/// admin key, `/metrics` a metrics or admin key, everything else a read key.
pub fn needed(method: &Method, path: &str, query: Option<&str>) -> Need {
    match path {
        "/refresh" if method == Method::POST => Need::Admin("POST /refresh"),
        "/metrics" => Need::Metrics,
        "/failures/latest.png" => Need::Admin("the failure screenshot"),
        "/fetch-data" if flag(query, "refresh") => Need::Admin("refresh=true (it starts a sync)"),
        _ => Need::Read,
    }
}

impl Need {
    fn allows(self, role: Role) -> bool {
        match self {
            Need::Read => matches!(role, Role::Read | Role::Admin),
            Need::Metrics => matches!(role, Role::Metrics | Role::Admin),
            Need::Admin(_) => role == Role::Admin,
        }
    }

    /// Why a key of `role` is refused here.
    fn refusal(self, role: Role) -> String {
        let what = match role {
            Role::Read => "This key (API_KEY) reads data only",
            Role::Metrics => "This key (METRICS_KEY) reads /metrics only",
            Role::Admin => "This key",
        };
        match self {
            Need::Read => format!("{what}: data takes a key from API_KEY or ADMIN_API_KEY"),
            Need::Metrics => {
                format!("{what}: /metrics takes a key from METRICS_KEY or ADMIN_API_KEY")
            }
            Need::Admin(thing) => format!("{what}: {thing} takes a key from ADMIN_API_KEY"),
        }
    }
}

/// Lets the request through only with a configured key whose role allows it; the caller goes
/// into the request's extensions.
pub async fn require_api_key(
    State(state): State<AppState>,
    mut request: Request,
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
    let from_header = from_header.filter(|key| !key.is_empty());
    if in_query.is_some() && !url_key_allowed(request.method(), request.uri().path(), query) {
        return Err(ApiError::KeyInQuery);
    }
    // An empty key is no key: say how to send one rather than that it is wrong.
    let Some(key) = from_header
        .clone()
        .or(in_query.clone())
        .filter(|key| !key.is_empty())
    else {
        return Err(ApiError::MissingKey);
    };
    let caller = state.keys.find(&key).ok_or(ApiError::WrongKey)?;
    // A key in a URL ends up in logs and a page's source: only a read key may be there.
    if from_header.is_none() && in_query.is_some() && caller.role != Role::Read {
        return Err(ApiError::PrivilegedKeyInQuery);
    }
    let need = needed(request.method(), request.uri().path(), query);
    if !need.allows(caller.role) {
        return Err(ApiError::Forbidden(need.refusal(caller.role)));
    }
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
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
    flag(query, "stream")
}

/// Whether the boolean parameter `name` is set and true in `query` (a malformed one is left to
/// the route's own parsing to refuse).
fn flag(query: Option<&str>, name: &str) -> bool {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == name)
        .last()
        .is_some_and(|(k, v)| super::params::parse_bool(&k, &v).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> KeyRing {
        KeyRing(
            [
                ("old-key", Role::Read),
                ("new-key", Role::Read),
                ("admin-key", Role::Admin),
            ]
            .iter()
            .map(|(k, r)| (Sha256::digest(k.as_bytes()).into(), *r))
            .collect(),
        )
    }

    #[test]
    fn any_configured_key_matches_with_its_role_and_nothing_else_does() {
        let ring = ring();
        assert_eq!(ring.find(b"old-key").map(|c| c.role), Some(Role::Read));
        assert_eq!(ring.find(b"new-key").map(|c| c.key), Some(1));
        assert_eq!(ring.find(b"admin-key").map(|c| c.role), Some(Role::Admin));
        assert_eq!(ring.find(b"new-ke"), None);
        assert_eq!(ring.find(b""), None);
    }

    #[test]
    fn syncs_and_evidence_take_an_admin_key_and_metrics_a_metrics_key() {
        let get = Method::GET;
        assert_eq!(needed(&get, "/fetch-data", None), Need::Read);
        assert_eq!(needed(&get, "/status", None), Need::Read);
        assert!(matches!(
            needed(&Method::POST, "/refresh", None),
            Need::Admin(_)
        ));
        assert!(matches!(
            needed(&get, "/fetch-data", Some("stream=true&refresh=1")),
            Need::Admin(_)
        ));
        assert!(matches!(
            needed(&get, "/failures/latest.png", None),
            Need::Admin(_)
        ));
        assert_eq!(needed(&get, "/metrics", None), Need::Metrics);
        assert!(Need::Metrics.allows(Role::Metrics) && Need::Metrics.allows(Role::Admin));
        assert!(!Need::Metrics.allows(Role::Read));
        assert!(!Need::Read.allows(Role::Metrics));
        assert!(!Need::Admin("x").allows(Role::Read));
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
