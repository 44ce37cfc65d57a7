//! `/query` (read-only SQL) and `/tables` (the table's columns and types; its rows, filtered,
//! without SQL). Answers come from the query engine ([`crate::query`]), per version, with a
//! strong ETag; the format follows `?_format=` or `Accept`, the encoding `Accept-Encoding`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::error::ApiError;
use super::fetch::current_snapshot;
use super::negotiate::quality;
use super::AppState;
use crate::cache::delta::deltas_possible;
use crate::cache::framing::{compress_body, Encoding};
use crate::query::rows::parse_request;
use crate::query::{Answer, Ask, Format, Param, QueryEngine, QueryError, Question, Shape};

/// Answers smaller than this go uncompressed: compression would save nothing worth the time.
const COMPRESS_FROM: usize = 1024;
/// The zstd and gzip levels of query answers: fast, since each answer is compressed as sent.
const ANSWER_ZSTD_LEVEL: i32 = 3;
const ANSWER_GZIP_LEVEL: i32 = 6;

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Bad(m) => ApiError::BadRequest(m),
            QueryError::Timeout(_) | QueryError::Memory(_) => ApiError::QueryStopped(e.to_string()),
            QueryError::NotFound(m) => ApiError::NoSuchRow(m),
            QueryError::Unavailable(m) => ApiError::QueryUnavailable(m),
            QueryError::Internal(m) => ApiError::QueryFailed(m),
        }
    }
}

fn engine(state: &AppState) -> Result<&Arc<QueryEngine>, ApiError> {
    state
        .query
        .as_ref()
        .ok_or_else(|| ApiError::QueryUnavailable("this process answers no queries".into()))
}

/// The query string's pairs, decoded.
fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The answer's format and shape, from `_format`/`_shape` or `Accept`.
fn format_and_shape(
    pairs: &[(String, String)],
    headers: &HeaderMap,
) -> Result<(Format, Shape), ApiError> {
    let mut format = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .and_then(Format::from_accept)
        .unwrap_or(Format::Json);
    let mut shape = Shape::Objects;
    for (name, value) in pairs {
        match name.as_str() {
            "_format" => {
                format = Format::from_name(value).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "_format must be json, ndjson, csv, arrow or parquet, not {value:?}"
                    ))
                })?
            }
            "_shape" => {
                shape = match value.as_str() {
                    "objects" => Shape::Objects,
                    "arrays" => Shape::Arrays,
                    other => {
                        return Err(ApiError::BadRequest(format!(
                            "_shape must be objects or arrays, not {other:?}"
                        )))
                    }
                }
            }
            _ => {}
        }
    }
    Ok((format, shape))
}

/// Sends `answer`: `304` when the client holds it, else its bytes, compressed as accepted.
pub(super) async fn send(answer: Arc<Answer>, headers: &HeaderMap) -> Response {
    let etag = HeaderValue::from_str(&answer.etag).ok();
    if let (Some(tag), Some(held)) = (&etag, headers.get(header::IF_NONE_MATCH)) {
        let held = held.to_str().unwrap_or_default();
        if held
            .split(',')
            .any(|t| t.trim() == tag.to_str().unwrap_or_default() || t.trim() == "*")
        {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            response.headers_mut().insert(header::ETAG, tag.clone());
            return response;
        }
    }
    let accept = headers.get(header::ACCEPT_ENCODING);
    let encoding = if answer.body.len() < COMPRESS_FROM {
        Encoding::Identity
    } else if quality(accept, Encoding::Zstd) > 0.0 {
        Encoding::Zstd
    } else if quality(accept, Encoding::Gzip) > 0.0 {
        Encoding::Gzip
    } else {
        Encoding::Identity
    };
    let body: Bytes = match encoding {
        Encoding::Identity => answer.body.clone(),
        encoding => {
            let plain = answer.body.clone();
            let level = match encoding {
                Encoding::Zstd => ANSWER_ZSTD_LEVEL,
                _ => ANSWER_GZIP_LEVEL,
            };
            match tokio::task::spawn_blocking(move || compress_body(&plain, encoding, level)).await
            {
                Ok(Ok(bytes)) => Bytes::from(bytes),
                _ => return send_plain(&answer, etag),
            }
        }
    };
    let mut response = Response::new(Body::from(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(answer.content_type),
    );
    if encoding != Encoding::Identity {
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(encoding.token()),
        );
    }
    h.insert(
        header::VARY,
        HeaderValue::from_static("accept, accept-encoding"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    if let Some(tag) = etag {
        h.insert(header::ETAG, tag);
    }
    response
}

fn send_plain(answer: &Answer, etag: Option<HeaderValue>) -> Response {
    let mut response = Response::new(Body::from(answer.body.clone()));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(answer.content_type),
    );
    if let Some(tag) = etag {
        h.insert(header::ETAG, tag);
    }
    response
}

/// Answers SQL with its parameters, as `/query` (GET or POST) was asked.
async fn ask_sql(
    state: &AppState,
    sql: String,
    params: Vec<Param>,
    (format, shape): (Format, Shape),
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let question = Question::Sql { sql, params };
    let sql = Ask {
        question,
        format,
        shape,
    };
    ask(state, sql, headers).await
}

async fn ask(state: &AppState, ask: Ask, headers: &HeaderMap) -> Result<Response, ApiError> {
    let engine = engine(state)?;
    let snapshot = current_snapshot(state)?;
    let answer = engine.answer(&snapshot, ask).await?;
    Ok(send(answer, headers).await)
}

/// `GET /query?sql=…&p=…`: read-only SQL, its parameters bound in order.
pub async fn query_get(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pairs = pairs(query.as_deref());
    let (format, shape) = format_and_shape(&pairs, &headers)?;
    let mut sql = None;
    let mut params = Vec::new();
    for (name, value) in &pairs {
        match name.as_str() {
            "sql" => sql = Some(value.clone()),
            "p" => params.push(Param::Text(value.clone())),
            _ => {}
        }
    }
    let sql = sql.ok_or_else(|| {
        ApiError::BadRequest("/query needs the SQL: ?sql=SELECT … (or POST it)".into())
    })?;
    let mut stream = false;
    for (name, value) in pairs.iter().filter(|(n, _)| n == "stream") {
        stream = super::params::parse_bool(name, value)?;
    }
    if stream {
        let slot = state.streams.for_caller(caller.as_deref())?;
        let ask = Ask {
            question: Question::Sql { sql, params },
            format,
            shape,
        };
        return super::live::stream(state, ask, slot).await;
    }
    ask_sql(&state, sql, params, (format, shape), &headers).await
}

/// The JSON body of `POST /query`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    sql: String,
    #[serde(default)]
    params: Vec<serde_json::Value>,
}

/// `POST /query`: the SQL as the body (`text/plain` or `application/sql`), or JSON
/// `{"sql": …, "params": […]}`.
pub async fn query_post(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let pairs = pairs(query.as_deref());
    let (format, shape) = format_and_shape(&pairs, &headers)?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the body is not UTF-8 text".into()))?;
    let (sql, mut params) = if is_json {
        let body: QueryBody = serde_json::from_str(text).map_err(|e| {
            ApiError::BadRequest(format!(
                "the JSON body must be {{\"sql\": \"…\", \"params\": […]}}: {e}"
            ))
        })?;
        let params = body
            .params
            .into_iter()
            .enumerate()
            .map(|(i, v)| json_param(v, i + 1))
            .collect::<Result<Vec<_>, _>>()?;
        (body.sql, params)
    } else {
        (text.to_owned(), Vec::new())
    };
    params.extend(
        pairs
            .iter()
            .filter(|(n, _)| n == "p")
            .map(|(_, v)| Param::Text(v.clone())),
    );
    ask_sql(&state, sql, params, (format, shape), &headers).await
}

fn json_param(value: serde_json::Value, n: usize) -> Result<Param, ApiError> {
    Ok(match value {
        serde_json::Value::Null => Param::Null,
        serde_json::Value::Bool(b) => Param::Bool(b),
        serde_json::Value::String(s) => Param::Text(s),
        serde_json::Value::Number(number) => match number.as_i64() {
            Some(i) => Param::Integer(i),
            // Beyond i64 or with a fraction: its exact text, typed where it is used.
            None => Param::Text(number.to_string()),
        },
        other => {
            return Err(ApiError::BadRequest(format!(
                "params[{}] is {other}: a parameter is a string, number, boolean or null",
                n - 1
            )))
        }
    })
}

/// `GET /tables`: the table, its columns with their MySQL and typed-view types, its key, rows
/// and version.
pub async fn tables(State(state): State<AppState>) -> Result<Response, ApiError> {
    let snapshot = current_snapshot(&state)?;
    let Some(view) = snapshot.typed() else {
        return Err(ApiError::QueryUnavailable(
            "the served version has no typed view (see the log for why)".into(),
        ));
    };
    let columns: Vec<_> = view
        .batch
        .schema()
        .fields()
        .iter()
        .zip(&view.kinds)
        .zip(&view.unrepresentable)
        .map(|((field, kind), lost)| {
            let declared = view.schema.column(field.name());
            json!({
                "name": field.name(),
                "mysql_type": declared.map(|c| c.mysql_type.as_str()),
                "type": kind.name(),
                "nullable": declared.is_none_or(|c| c.nullable),
                "unrepresentable": lost,
            })
        })
        .collect();
    let key = if view.has_key() {
        json!(view.schema.key)
    } else {
        json!(null)
    };
    let deltas = match deltas_possible(&snapshot) {
        Ok(()) => {
            let (kept, bytes) = state.cache.deltas_kept();
            json!({"available": true, "change_sets_kept": kept, "bytes": bytes})
        }
        Err(why) => json!({"available": false, "why": why.to_string()}),
    };
    let table = json!({
        "name": view.schema.table,
        "columns": columns,
        "key": key,
        "rows": view.rows(),
        "version": snapshot.etag,
        "typed_view": {
            "bytes": view.memory_bytes(),
            "build_seconds": view.build_time.as_secs_f64(),
        },
        "deltas": deltas,
    });
    Ok(Json(json!({"status": "success", "tables": [table]})).into_response())
}

/// `GET /tables/{table}`: rows, filtered, sorted and paged (see [`crate::query::rows`]).
pub async fn table_rows(
    State(state): State<AppState>,
    Path(table): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    rows(state, table, None, query, headers).await
}

/// `GET /tables/{table}/{key}`: the row with this key (a composite key's parts joined by `,`).
pub async fn table_row(
    State(state): State<AppState>,
    Path((table, key)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    rows(state, table, Some(key), query, headers).await
}

async fn rows(
    state: AppState,
    table: String,
    key: Option<String>,
    query: Option<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let snapshot = current_snapshot(&state)?;
    let name = snapshot
        .typed()
        .map(|v| v.schema.table.clone())
        .unwrap_or_default();
    if table != name {
        return Err(ApiError::NoSuchRow(format!(
            "no table `{table}`: this server serves `{name}` (see /tables)"
        )));
    }
    let pairs = pairs(query.as_deref());
    let (format, shape) = format_and_shape(&pairs, &headers)?;
    let pairs: Vec<_> = pairs.into_iter().filter(|(n, _)| n != "api_key").collect();
    let request = parse_request(&pairs, key)?;
    let ask_rows = Ask {
        question: Question::Rows(request),
        format,
        shape,
    };
    ask(&state, ask_rows, &headers).await
}
