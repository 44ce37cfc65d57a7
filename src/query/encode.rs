//! Query answers in the formats clients read: JSON (objects or arrays), NDJSON, CSV, the Arrow
//! IPC stream and Parquet.
//!
//! JSON is written here rather than by Arrow's JSON writer because the answer must read as
//! MySQL writes values: every digit of a decimal as a JSON number (never through a float),
//! dates as `YYYY-MM-DD` and times as `YYYY-MM-DD HH:MM:SS`; the value texts come from Arrow's
//! own formatter ([`ArrayFormatter`]), so only the JSON framing is this module's.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::Serialize;

/// MySQL's way of writing dates and times.
pub const DATE_FORMAT: &str = "%Y-%m-%d";
pub const DATETIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.f";

/// The format of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Ndjson,
    Csv,
    Arrow,
    Parquet,
}

impl Format {
    /// The format named by `?_format=`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "json" => Self::Json,
            "ndjson" | "jsonl" => Self::Ndjson,
            "csv" => Self::Csv,
            "arrow" => Self::Arrow,
            "parquet" => Self::Parquet,
            _ => return None,
        })
    }

    /// The format an `Accept` header prefers, if it names one of ours.
    pub fn from_accept(accept: &str) -> Option<Self> {
        accept.split(',').find_map(|part| {
            let media = part.split(';').next().unwrap_or_default().trim();
            Some(match media {
                "application/json" => Self::Json,
                "application/x-ndjson" | "application/jsonl" => Self::Ndjson,
                "text/csv" => Self::Csv,
                "application/vnd.apache.arrow.stream" => Self::Arrow,
                "application/vnd.apache.parquet" | "application/x-parquet" => Self::Parquet,
                _ => return None,
            })
        })
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Ndjson => "application/x-ndjson",
            Self::Csv => "text/csv; charset=utf-8",
            Self::Arrow => "application/vnd.apache.arrow.stream",
            Self::Parquet => "application/vnd.apache.parquet",
        }
    }

    /// Whether answers in this format stop at QUERY_MAX_ROWS.
    pub fn is_capped(self) -> bool {
        self == Self::Json
    }
}

/// How JSON rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Shape {
    /// Objects keyed by column name.
    #[default]
    Objects,
    /// Arrays in column order (which keeps duplicate column names apart).
    Arrays,
}

/// The name answers give a column's type.
pub fn type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => "integer".into(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            "unsigned".into()
        }
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => format!("decimal({p},{s})"),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => "double".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(_, _) => "datetime".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Null => "null".into(),
        other => other.to_string().to_ascii_lowercase(),
    }
}

#[derive(Serialize)]
struct ColumnOut<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    type_name: String,
}

/// How a column's values are written in JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
enum JsonKind {
    /// The formatter's text, as is (integers, decimals).
    Number,
    /// A float: its text when finite, else null.
    Float,
    Bool,
    /// The formatter's text, quoted and escaped.
    Text,
}

fn json_kind(data_type: &DataType) -> JsonKind {
    match data_type {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => JsonKind::Number,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => JsonKind::Float,
        DataType::Boolean => JsonKind::Bool,
        _ => JsonKind::Text,
    }
}

fn format_options() -> FormatOptions<'static> {
    FormatOptions::new()
        .with_date_format(Some(DATE_FORMAT))
        .with_datetime_format(Some(DATETIME_FORMAT))
        .with_timestamp_format(Some(DATETIME_FORMAT))
        .with_timestamp_tz_format(Some(DATETIME_FORMAT))
}

/// Writes each row of `batches` as JSON (an object or an array) through `each`.
fn write_json_rows(
    out: &mut Vec<u8>,
    schema: &Schema,
    batches: &[RecordBatch],
    shape: Shape,
    limit: usize,
    separator: &[u8],
) -> anyhow::Result<usize> {
    let keys: Vec<Vec<u8>> = schema
        .fields()
        .iter()
        .map(|f| {
            let mut k = serde_json::to_vec(f.name()).expect("a string serializes");
            k.push(b':');
            k
        })
        .collect();
    let kinds: Vec<JsonKind> = schema
        .fields()
        .iter()
        .map(|f| json_kind(f.data_type()))
        .collect();
    let options = format_options();
    let mut written = 0usize;
    let mut text = String::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            if written == limit {
                return Ok(written);
            }
            if written > 0 {
                out.extend_from_slice(separator);
            }
            out.push(if shape == Shape::Objects { b'{' } else { b'[' });
            for (i, column) in batch.columns().iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if shape == Shape::Objects {
                    out.extend_from_slice(&keys[i]);
                }
                if column.is_null(row) {
                    out.extend_from_slice(b"null");
                    continue;
                }
                text.clear();
                use std::fmt::Write as _;
                write!(text, "{}", formatters[i].value(row))?;
                match kinds[i] {
                    JsonKind::Number => out.extend_from_slice(text.as_bytes()),
                    JsonKind::Float => match text.parse::<f64>() {
                        Ok(f) if f.is_finite() => out.extend_from_slice(text.as_bytes()),
                        _ => out.extend_from_slice(b"null"),
                    },
                    JsonKind::Bool => out.extend_from_slice(text.as_bytes()),
                    JsonKind::Text => serde_json::to_writer(&mut *out, text.as_str())?,
                }
            }
            out.push(if shape == Shape::Objects { b'}' } else { b']' });
            written += 1;
        }
    }
    Ok(written)
}

/// The JSON answer: `{"status":"success","version":..,"columns":[..],"rows":[..],
/// "truncated":..}` (and `"next"`, a page's continuation, when given).
pub fn json_answer(
    schema: &Schema,
    batches: &[RecordBatch],
    version: &str,
    shape: Shape,
    max_rows: usize,
    next: Option<&str>,
) -> anyhow::Result<(Bytes, usize, bool)> {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut out = Vec::with_capacity(256 + total.min(max_rows) * 64);
    out.extend_from_slice(b"{\"status\":\"success\",\"version\":");
    serde_json::to_writer(&mut out, version)?;
    out.extend_from_slice(b",\"columns\":");
    let columns: Vec<ColumnOut> = schema
        .fields()
        .iter()
        .map(|f| ColumnOut {
            name: f.name(),
            type_name: type_name(f.data_type()),
        })
        .collect();
    serde_json::to_writer(&mut out, &columns)?;
    out.extend_from_slice(b",\"rows\":[");
    let written = write_json_rows(&mut out, schema, batches, shape, max_rows, b",")?;
    let truncated = total > written;
    out.extend_from_slice(b"],\"truncated\":");
    out.extend_from_slice(if truncated { b"true" } else { b"false" });
    if let Some(next) = next {
        out.extend_from_slice(b",\"next\":");
        serde_json::to_writer(&mut out, next)?;
    }
    out.push(b'}');
    Ok((Bytes::from(out), written, truncated))
}

/// Every row in `format` (not JSON).
pub fn stream_answer(
    format: Format,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    shape: Shape,
) -> anyhow::Result<Bytes> {
    let mut out = Vec::new();
    match format {
        Format::Json => anyhow::bail!("JSON answers are written by json_answer"),
        Format::Ndjson => {
            let n = write_json_rows(&mut out, schema, batches, shape, usize::MAX, b"\n")?;
            if n > 0 {
                out.push(b'\n');
            }
        }
        Format::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .with_date_format(DATE_FORMAT.into())
                .with_datetime_format(DATETIME_FORMAT.into())
                .with_timestamp_format(DATETIME_FORMAT.into())
                .build(&mut out);
            if batches.is_empty() {
                writer.write(&RecordBatch::new_empty(Arc::clone(schema)))?;
            }
            for batch in batches {
                writer.write(batch)?;
            }
        }
        Format::Arrow => {
            let mut writer =
                datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)?;
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
        Format::Parquet => {
            let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(
                &mut out,
                Arc::clone(schema),
                None,
            )?;
            for batch in batches {
                writer.write(batch)?;
            }
            writer.close().context("finishing the Parquet file")?;
        }
    }
    out.flush()?;
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Decimal128Array, Float64Array, StringArray, UInt64Array};
    use datafusion::arrow::datatypes::Field;

    #[test]
    fn json_keeps_every_digit_and_escapes_text() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("sum", DataType::Decimal128(38, 2), true),
            Field::new("f", DataType::Float64, true),
            Field::new("t", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(UInt64Array::from(vec![u64::MAX, 1])),
                Arc::new(
                    Decimal128Array::from(vec![
                        Some(123_456_789_012_345_678_901_234_567_i128),
                        None,
                    ])
                    .with_precision_and_scale(38, 2)
                    .unwrap(),
                ),
                Arc::new(Float64Array::from(vec![Some(0.1), Some(f64::NAN)])),
                Arc::new(StringArray::from(vec![Some("a \"q\"\n"), None])),
            ],
        )
        .unwrap();
        let (body, rows, truncated) =
            json_answer(&schema, &[batch], "W/\"v\"", Shape::Objects, 1, None).unwrap();
        assert_eq!((rows, truncated), (1, true));
        let text = std::str::from_utf8(&body).unwrap();
        assert!(
            text.contains(r#"{"id":18446744073709551615,"sum":1234567890123456789012345.67,"f":0.1,"t":"a \"q\"\n"}"#),
            "{text}"
        );
        assert!(text.ends_with(r#""truncated":true}"#), "{text}");
    }

    #[test]
    fn formats_are_named_and_negotiated() {
        assert_eq!(Format::from_name("Parquet"), Some(Format::Parquet));
        assert_eq!(Format::from_name("xml"), None);
        assert_eq!(
            Format::from_accept("text/html, text/csv;q=0.9"),
            Some(Format::Csv)
        );
        assert_eq!(Format::from_accept("*/*"), None);
    }
}
