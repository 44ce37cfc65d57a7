//! What each route takes: its methods and its query parameters. A parameter a route does not
//! know is refused with a `400` naming it (a typo such as `?refesh=true`, or a feature the
//! server does not have such as `?limit=5`, would otherwise be answered with the whole table as
//! if it had been understood); a wrong method gets a `405` naming the methods the route takes.

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The query parameters each route takes. `api_key` is listed where a key is checked: whether it
/// is accepted there is the key check's answer, which says why.
fn known_params(route: &str) -> &'static [&'static str] {
    match route {
        "/fetch-data" => &["refresh", "stream", "payload", "since", "follow", "api_key"],
        "/query" => &["sql", "p", "_format", "_shape", "stream", "api_key"],
        "/refresh" => &["retry_login", "full", "api_key"],
        "/status" | "/metrics" | "/failures/latest.png" | "/tables" => &["api_key"],
        _ => &[],
    }
}

/// The methods each route answers, as the `Allow` header lists them (axum sets that header
/// from the router; a test checks that the two agree).
pub fn allowed_methods(path: &str) -> &'static str {
    match path {
        "/refresh" => "POST",
        "/query" => "GET,HEAD,POST",
        _ => "GET,HEAD",
    }
}

/// Refuses a request whose query names a parameter its route does not take.
pub async fn reject_unknown_params(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    // A table's rows take filters named after its columns: `rows::parse_request` checks those.
    let route = route.filter(|r| !r.starts_with("/tables/"));
    if let (Some(route), Some(query)) = (route, request.uri().query()) {
        if let Err(e) = check_known(&route, query) {
            return e.into_response();
        }
    }
    next.run(request).await
}

fn check_known(route: &str, query: &str) -> Result<(), ApiError> {
    let known = known_params(route);
    let mut unknown: Vec<String> = Vec::new();
    for (key, _) in url::form_urlencoded::parse(query.as_bytes()) {
        if !known.contains(&key.as_ref()) && !unknown.iter().any(|u| *u == key) {
            unknown.push(key.into_owned());
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    let names = unknown
        .iter()
        .map(|u| format!("'{u}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let takes = match known.iter().filter(|k| **k != "api_key").count() {
        0 => format!("{route} takes no query parameters"),
        _ => format!(
            "{route} takes {}",
            known
                .iter()
                .filter(|k| **k != "api_key")
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let noun = if unknown.len() == 1 {
        "parameter"
    } else {
        "parameters"
    };
    Err(ApiError::BadRequest(format!(
        "Unknown query {noun} {names}: {takes}"
    )))
}

/// The answer to a method the route does not take.
pub async fn method_not_allowed(method: Method, request: Request) -> ApiError {
    let path = request.uri().path().to_owned();
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        allowed: allowed_methods(&path),
        path,
    }
}

/// What each event of a stream carries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// The whole `/fetch-data` body (`payload=full`, the default).
    #[default]
    Full,
    /// Only `last_updated`, `count` and `etag` (`payload=none`), for clients that fetch with
    /// their ETag when told something changed.
    None,
    /// The whole table first, then the rows changed since the version the subscriber holds
    /// (`payload=delta`); event ids are versions.
    Delta,
}

/// The query parameters of `/fetch-data`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FetchParams {
    pub refresh: bool,
    pub stream: bool,
    pub payload: Payload,
    /// The ETag of the version the client holds: answer with the changes since.
    pub since: Option<String>,
    /// Keep the event stream open across versions instead of ending after one update.
    pub follow: bool,
}

impl FetchParams {
    /// Parses the query; malformed values are refused (unknown parameters were refused before,
    /// by [`reject_unknown_params`]).
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut params = Self::default();
        let mut payload_given = false;
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match key.as_ref() {
                "refresh" => &mut params.refresh,
                "stream" => &mut params.stream,
                "follow" => &mut params.follow,
                "since" => {
                    if value.trim().is_empty() {
                        return Err(ApiError::BadRequest(
                            "'since' takes the ETag of the version you hold, as /fetch-data sent it"
                                .into(),
                        ));
                    }
                    params.since = Some(value.into_owned());
                    continue;
                }
                "payload" => {
                    payload_given = true;
                    params.payload = match value.to_ascii_lowercase().as_str() {
                        "full" => Payload::Full,
                        "none" => Payload::None,
                        "delta" => Payload::Delta,
                        _ => {
                            return Err(ApiError::BadRequest(
                                "Invalid value for 'payload': expected full, none or delta".into(),
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
        if params.follow && !params.stream {
            return Err(ApiError::BadRequest(
                "'follow' applies only to event streams (stream=true)".into(),
            ));
        }
        if params.since.is_some() && params.stream && params.payload != Payload::Delta {
            return Err(ApiError::BadRequest(
                "'since' on an event stream needs payload=delta".into(),
            ));
        }
        if params.since.is_some() && params.refresh && !params.stream {
            return Err(ApiError::BadRequest(
                "'since' asks for the changes since a version; it goes without refresh (or on \
                 an event stream with payload=delta)"
                    .into(),
            ));
        }
        Ok(params)
    }
}

/// A query boolean: `true/false`, `1/0`, `yes/no`, any case.
pub fn parse_bool(key: &str, value: &str) -> Result<bool, ApiError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ApiError::BadRequest(format!(
            "Invalid value for '{key}': expected true or false"
        ))),
    }
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
                since: None,
                follow: false,
            }
        );
        let p = FetchParams::parse(Some("since=W%2F%22ab-1%22")).unwrap();
        assert_eq!(p.since.as_deref(), Some("W/\"ab-1\""));
        assert!(FetchParams::parse(Some("since=")).is_err());
        assert!(FetchParams::parse(Some("since=x&stream=true")).is_err());
        let p = FetchParams::parse(Some("since=x&stream=true&payload=delta&follow=1")).unwrap();
        assert_eq!((p.payload, p.follow), (Payload::Delta, true));
        assert!(FetchParams::parse(Some("follow=true")).is_err());
        assert!(FetchParams::parse(Some("since=x&refresh=true")).is_err());
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
    fn unknown_parameters_are_named_with_what_the_route_takes() {
        assert!(check_known("/fetch-data", "refresh=true&stream=1&payload=none").is_ok());
        let err = check_known("/fetch-data", "limit=5&columns=id,total&limit=6").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Unknown query parameters 'limit', 'columns': /fetch-data takes refresh, stream, payload, since, follow"
        );
        let err = check_known("/status", "verbose=1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Unknown query parameter 'verbose': /status takes no query parameters"
        );
        assert!(check_known("/status", "api_key=k").is_ok());
        assert!(check_known("/health", "api_key=k").is_err());
    }
}
