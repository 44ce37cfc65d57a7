//! Rows without SQL (`GET /tables/{table}`): Datasette's filter conventions (`col__gte=`,
//! `__in`, `__contains`, `__isnull`…), `_col`/`_nocol`, `_sort`/`_sort_desc`, `_size`, and
//! keyset pages whose opaque `_next` token holds the last row's sort value and key, so a page
//! stays right when a new version lands between two requests. A key lookup is answered from
//! the typed view's key index, without a scan.

use base64::Engine as _;
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr::Like;
use datafusion::prelude::{ident, lit, DataFrame, Expr};
use serde::{Deserialize, Serialize};

use super::encode::{DATETIME_FORMAT, DATE_FORMAT};
use super::engine::{engine_error, QueryError};
use super::provider::ROW_COLUMN;
use crate::cache::typed::KEY_SEPARATOR;
use crate::cache::TypedTable;

/// Rows per page when `_size` is not given.
pub const DEFAULT_PAGE: usize = 100;

/// One filter: a column, an operation and its value as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub column: String,
    pub op: Op,
    pub value: String,
}

/// The filter operations (Datasette's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Exact,
    Not,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    NotIn,
    Contains,
    StartsWith,
    EndsWith,
    Like,
    IsNull,
    NotNull,
    Date,
}

impl Op {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "exact" => Self::Exact,
            "not" => Self::Not,
            "gt" => Self::Gt,
            "gte" => Self::Gte,
            "lt" => Self::Lt,
            "lte" => Self::Lte,
            "in" => Self::In,
            "notin" => Self::NotIn,
            "contains" => Self::Contains,
            "startswith" => Self::StartsWith,
            "endswith" => Self::EndsWith,
            "like" => Self::Like,
            "isnull" => Self::IsNull,
            "notnull" => Self::NotNull,
            "date" => Self::Date,
            _ => return None,
        })
    }

    pub const NAMES: &'static str = "exact, not, gt, gte, lt, lte, in, notin, contains, \
                                     startswith, endswith, like, isnull, notnull, date";
}

/// A request for rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowsRequest {
    pub filters: Vec<Filter>,
    /// Only these columns (`_col`), in this order.
    pub columns: Vec<String>,
    /// All but these columns (`_nocol`).
    pub hidden: Vec<String>,
    /// The sort column and whether it sorts descending.
    pub sort: Option<(String, bool)>,
    pub size: Option<usize>,
    pub next: Option<String>,
    /// The row with this key (`/tables/{table}/{key}`).
    pub key: Option<String>,
    /// Answer with each cell's exported text (`_values=text`) instead of its typed value.
    pub text: bool,
}

/// Where a page continues: after the last row's sort value and key, or (for a table without
/// a key) after a number of rows.
#[derive(Debug, Serialize, Deserialize)]
struct Token {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    k: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<usize>,
}

impl Token {
    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a token serializes");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn decode(text: &str) -> Result<Self, QueryError> {
        let bad = || QueryError::Bad("_next is not a token this server gave".into());
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| bad())?;
        serde_json::from_slice(&json).map_err(|_| bad())
    }
}

/// What is needed to cut a page and say where the next one starts.
pub struct Page {
    size: usize,
    /// Column indexes in the answer of the sort column (when not the key) and the key's parts.
    sort: Option<usize>,
    key: Vec<usize>,
    offset: Option<usize>,
}

impl Page {
    /// Cuts `batches` to the page and returns the next page's token, if there are more rows.
    pub fn finish(&self, batches: &mut Vec<RecordBatch>) -> Option<String> {
        let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if total <= self.size {
            return None;
        }
        let mut kept = 0;
        let mut cut = Vec::new();
        for batch in batches.drain(..) {
            let take = (self.size - kept).min(batch.num_rows());
            if take > 0 {
                cut.push(batch.slice(0, take));
                kept += take;
            }
        }
        *batches = cut;
        if let Some(offset) = self.offset {
            return Some(
                Token {
                    s: None,
                    k: Vec::new(),
                    o: Some(offset + self.size),
                }
                .encode(),
            );
        }
        let last = batches.last()?;
        let row = last.num_rows() - 1;
        let text = |column: usize| value_text(last.column(column).as_ref(), row);
        Some(
            Token {
                s: self.sort.map(text),
                k: self
                    .key
                    .iter()
                    .map(|&c| text(c).unwrap_or_default())
                    .collect(),
                o: None,
            }
            .encode(),
        )
    }
}

fn value_text(array: &dyn Array, row: usize) -> Option<String> {
    if array.is_null(row) {
        return None;
    }
    let options = FormatOptions::new()
        .with_date_format(Some(DATE_FORMAT))
        .with_timestamp_format(Some(DATETIME_FORMAT));
    let formatter = ArrayFormatter::try_new(array, &options).ok()?;
    Some(formatter.value(row).to_string())
}

/// The column `name`'s type, or a `400` naming it.
fn column_type(view: &TypedTable, name: &str) -> Result<DataType, QueryError> {
    view.batch
        .schema()
        .field_with_name(name)
        .map(|f| f.data_type().clone())
        .map_err(|_| QueryError::Bad(format!("unknown column `{name}`")))
}

/// `text` as a value of `column`'s type, or a `400` naming both.
fn typed_value(view: &TypedTable, column: &str, text: &str) -> Result<Expr, QueryError> {
    let data_type = column_type(view, column)?;
    let value = ScalarValue::try_from_string(text.to_owned(), &data_type)
        .ok()
        .filter(|v| !v.is_null())
        .ok_or_else(|| {
            QueryError::Bad(format!(
                "{text:?} is not a valid {} for column `{column}`",
                super::encode::type_name(&data_type)
            ))
        })?;
    Ok(lit(value))
}

fn like(column: &str, pattern: String, view: &TypedTable) -> Result<Expr, QueryError> {
    let data_type = column_type(view, column)?;
    let text = if matches!(data_type, DataType::Utf8) {
        ident(column)
    } else {
        datafusion::prelude::cast(ident(column), DataType::Utf8)
    };
    Ok(Expr::Like(Like::new(
        false,
        Box::new(text),
        Box::new(lit(pattern)),
        Some('\\'),
        false,
    )))
}

fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

fn truthy(filter: &Filter) -> Result<bool, QueryError> {
    match filter.value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(QueryError::Bad(format!(
            "{}__{:?} takes 1 or 0, not {other:?}",
            filter.column, filter.op
        ))),
    }
}

fn filter_expr(view: &TypedTable, f: &Filter) -> Result<Expr, QueryError> {
    let c = || ident(f.column.as_str());
    let value = || typed_value(view, &f.column, &f.value);
    let list = || -> Result<Vec<Expr>, QueryError> {
        f.value
            .split(',')
            .map(|v| typed_value(view, &f.column, v.trim()))
            .collect()
    };
    column_type(view, &f.column)?;
    Ok(match f.op {
        Op::Exact => c().eq(value()?),
        Op::Not => c().not_eq(value()?),
        Op::Gt => c().gt(value()?),
        Op::Gte => c().gt_eq(value()?),
        Op::Lt => c().lt(value()?),
        Op::Lte => c().lt_eq(value()?),
        Op::In => c().in_list(list()?, false),
        Op::NotIn => c().in_list(list()?, true),
        Op::Contains => like(&f.column, format!("%{}%", escape_like(&f.value)), view)?,
        Op::StartsWith => like(&f.column, format!("{}%", escape_like(&f.value)), view)?,
        Op::EndsWith => like(&f.column, format!("%{}", escape_like(&f.value)), view)?,
        Op::Like => like(&f.column, f.value.clone(), view)?,
        Op::IsNull => {
            if truthy(f)? {
                c().is_null()
            } else {
                c().is_not_null()
            }
        }
        Op::NotNull => {
            if truthy(f)? {
                c().is_not_null()
            } else {
                c().is_null()
            }
        }
        Op::Date => {
            let day = ScalarValue::try_from_string(f.value.clone(), &DataType::Date32)
                .ok()
                .filter(|v| !v.is_null())
                .ok_or_else(|| {
                    QueryError::Bad(format!(
                        "{:?} is not a date (YYYY-MM-DD) for column `{}`",
                        f.value, f.column
                    ))
                })?;
            datafusion::prelude::cast(c(), DataType::Date32).eq(lit(day))
        }
    })
}

/// The key text of a request that names one row: `/tables/{table}/{key}`, or a table with a
/// one-column key filtered on that column alone with `__exact`.
fn asked_key<'a>(view: &TypedTable, request: &'a RowsRequest) -> Option<&'a str> {
    if let Some(key) = &request.key {
        return Some(key);
    }
    match (view.schema.key.as_slice(), request.filters.as_slice()) {
        ([key], [f]) if f.op == Op::Exact && &f.column == key && request.next.is_none() => {
            Some(&f.value)
        }
        _ => None,
    }
}

/// The row a key lookup asks for, from the key index (`rows` is the table `/tables` reads:
/// the view's columns and the row numbers), when the request is one.
pub fn by_key(
    rows: &RecordBatch,
    view: &TypedTable,
    request: &RowsRequest,
) -> Result<Option<RecordBatch>, QueryError> {
    let Some(key) = asked_key(view, request) else {
        return Ok(None);
    };
    if !view.has_key() {
        return Err(QueryError::Bad(format!(
            "the table `{}` has no primary key, so rows cannot be looked up by key",
            view.schema.table
        )));
    }
    let key = key.replace(',', &KEY_SEPARATOR.to_string());
    let batch = match view.row_of_key(&key) {
        Some(row) => rows.slice(row, 1),
        None if request.key.is_some() => {
            return Err(QueryError::NotFound(format!(
                "no row of `{}` has the key {:?}",
                view.schema.table,
                key.replace(KEY_SEPARATOR, ",")
            )))
        }
        None => rows.slice(0, 0),
    };
    let mut names = kept_columns(view, request)?;
    if request.text {
        names.push(ROW_COLUMN.to_owned());
    }
    let schema = batch.schema();
    let indexes: Vec<usize> = names
        .iter()
        .map(|n| schema.index_of(n).expect("checked above"))
        .collect();
    batch
        .project(&indexes)
        .map(Some)
        .map_err(|e| QueryError::Internal(e.to_string()))
}

/// The columns a request keeps, in order.
fn kept_columns(view: &TypedTable, request: &RowsRequest) -> Result<Vec<String>, QueryError> {
    for name in request.columns.iter().chain(&request.hidden) {
        column_type(view, name)?;
    }
    let all = view.batch.schema();
    let names: Vec<String> = if request.columns.is_empty() {
        all.fields().iter().map(|f| f.name().clone()).collect()
    } else {
        request.columns.clone()
    };
    Ok(names
        .into_iter()
        .filter(|n| !request.hidden.contains(n))
        .collect())
}

/// Plans a page of rows: filters, order (the sort column, then the key), the continuation of
/// `_next`, the columns, one row more than the page to tell whether another follows.
///
/// `table` is the table `/tables` reads (the view's columns and the row numbers).
pub fn plan(
    table: DataFrame,
    view: &TypedTable,
    request: &RowsRequest,
    max_rows: usize,
) -> Result<(DataFrame, Option<Page>), QueryError> {
    let size = request.size.unwrap_or(DEFAULT_PAGE).clamp(1, max_rows);
    let mut frame = table;
    for filter in &request.filters {
        frame = frame
            .filter(filter_expr(view, filter)?)
            .map_err(engine_error)?;
    }
    let key: Vec<String> = if view.has_key() {
        view.schema.key.clone()
    } else {
        Vec::new()
    };
    let sort = match &request.sort {
        Some((column, descending)) => {
            column_type(view, column)?;
            (!(key.len() == 1 && key[0] == *column && !descending))
                .then(|| (column.clone(), *descending))
        }
        None => None,
    };
    let token = request.next.as_deref().map(Token::decode).transpose()?;
    let mut offset = None;
    if key.is_empty() {
        offset = Some(token.as_ref().and_then(|t| t.o).unwrap_or(0));
    } else if let Some(token) = &token {
        if token.k.len() != key.len() {
            return Err(QueryError::Bad(
                "_next is not a token this server gave".into(),
            ));
        }
        let after_key = after(view, &key, &token.k)?;
        let condition = match (&sort, &token.s) {
            (None, _) => after_key,
            (Some((column, descending)), Some(last)) => {
                let c = || ident(column.as_str());
                match last {
                    Some(v) => {
                        let v = typed_value(view, column, v)?;
                        let beyond = if *descending {
                            c().lt(v.clone())
                        } else {
                            c().gt(v.clone())
                        };
                        beyond.or(c().eq(v).and(after_key)).or(c().is_null())
                    }
                    None => c().is_null().and(after_key),
                }
            }
            (Some(_), None) => {
                return Err(QueryError::Bad(
                    "_next is not a token this server gave".into(),
                ))
            }
        };
        frame = frame.filter(condition).map_err(engine_error)?;
    }
    let mut order = Vec::new();
    if let Some((column, descending)) = &sort {
        order.push(ident(column.as_str()).sort(!descending, false));
    }
    for part in &key {
        order.push(ident(part.as_str()).sort(true, false));
    }
    if !order.is_empty() {
        frame = frame.sort(order).map_err(engine_error)?;
    }
    frame = frame
        .limit(offset.unwrap_or(0), Some(size + 1))
        .map_err(engine_error)?;
    let mut names = kept_columns(view, request)?;
    // The page's token needs the sort value and key of its last row: kept in the answer.
    let mut ensure = |name: &String| {
        if !names.contains(name) {
            names.push(name.clone());
        }
    };
    if let Some((column, _)) = &sort {
        ensure(column);
    }
    key.iter().for_each(&mut ensure);
    if request.text {
        ensure(&ROW_COLUMN.to_owned());
    }
    let exprs: Vec<Expr> = names.iter().map(|n| ident(n.as_str())).collect();
    frame = frame.select(exprs).map_err(engine_error)?;
    let position = |name: &str| names.iter().position(|n| n == name);
    let page = Page {
        size,
        sort: sort.as_ref().and_then(|(c, _)| position(c)),
        key: key.iter().filter_map(|k| position(k)).collect(),
        offset,
    };
    Ok((frame, Some(page)))
}

/// Rows whose key comes after `last` (compared part by part).
fn after(view: &TypedTable, key: &[String], last: &[String]) -> Result<Expr, QueryError> {
    let mut condition: Option<Expr> = None;
    for (part, value) in key.iter().zip(last).rev() {
        let v = typed_value(view, part, value)?;
        let c = ident(part.as_str());
        condition = Some(match condition {
            None => c.gt(v),
            Some(rest) => c.clone().gt(v.clone()).or(c.eq(v).and(rest)),
        });
    }
    condition.ok_or_else(|| QueryError::Internal("a key with no parts".into()))
}

/// Reads a request's parameters (all but the format's and shape's, which the API reads).
pub fn parse_request(
    pairs: &[(String, String)],
    key: Option<String>,
) -> Result<RowsRequest, QueryError> {
    let mut request = RowsRequest {
        key,
        ..Default::default()
    };
    for (name, value) in pairs {
        match name.as_str() {
            "_format" | "_shape" => {}
            "_values" => {
                request.text = match value.as_str() {
                    "typed" => false,
                    "text" => true,
                    other => {
                        return Err(QueryError::Bad(format!(
                            "_values must be typed or text, not {other:?}"
                        )))
                    }
                }
            }
            "_col" => request.columns.extend(value.split(',').map(str::to_owned)),
            "_nocol" => request.hidden.extend(value.split(',').map(str::to_owned)),
            "_sort" => request.sort = Some((value.clone(), false)),
            "_sort_desc" => request.sort = Some((value.clone(), true)),
            "_size" => {
                request.size = Some(if value == "max" {
                    usize::MAX
                } else {
                    value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        QueryError::Bad(format!(
                            "_size must be a positive number or max, not {value:?}"
                        ))
                    })?
                })
            }
            "_next" => request.next = Some(value.clone()),
            other if other.starts_with('_') => {
                return Err(QueryError::Bad(format!(
                    "unknown parameter `{other}` (known: _col, _nocol, _sort, _sort_desc, _size, \
                     _next, _values, _format, _shape, and column filters such as price__gte=10)"
                )))
            }
            filter => {
                let (column, op) = match filter.rsplit_once("__") {
                    Some((column, op)) => match Op::from_name(op) {
                        Some(op) => (column, op),
                        None => {
                            return Err(QueryError::Bad(format!(
                                "unknown filter `__{op}` in `{filter}` (known: {})",
                                Op::NAMES
                            )))
                        }
                    },
                    None => (filter, Op::Exact),
                };
                request.filters.push(Filter {
                    column: column.to_owned(),
                    op,
                    value: value.clone(),
                });
            }
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let t = Token {
            s: Some(Some("2024-01-01 00:00:00".into())),
            k: vec!["7".into()],
            o: None,
        };
        let back = Token::decode(&t.encode()).unwrap();
        assert_eq!(back.k, ["7"]);
        assert!(Token::decode("not a token!").is_err());
    }

    #[test]
    fn parses_filters_and_names_unknown_ones() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let r = parse_request(
            &pairs(&[
                ("total__gte", "10"),
                ("status", "paid"),
                ("_sort_desc", "total"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(r.filters.len(), 2);
        assert_eq!(r.filters[1].op, Op::Exact);
        assert_eq!(r.sort, Some(("total".into(), true)));
        let e = parse_request(&pairs(&[("total__around", "10")]), None).unwrap_err();
        assert!(e.to_string().contains("__around"), "{e}");
        let e = parse_request(&pairs(&[("_limit", "10")]), None).unwrap_err();
        assert!(e.to_string().contains("_limit"), "{e}");
    }
}
