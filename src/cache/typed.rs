//! The typed, columnar view of a version: one Arrow column per table column, typed by the
//! table's declared types (see [`super::schema`]), plus an index of the rows by primary key.
//! Built once per version, off the request path, before the version is served, so the body
//! `/fetch-data` sends and the rows queries see are always the same version's.
//!
//! The view is read from the served body itself (the compact cache JSON), so every process
//! builds the same view from the same bytes whichever way the version reached it (its own sync,
//! the cache file, Redis). Each cell is first taken as its exported text, then converted by
//! Arrow's cast kernels; a text the column's type cannot hold (MySQL's zero date
//! `0000-00-00 00:00:00`) becomes null and is counted per column, never dropped silently.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use datafusion::arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use datafusion::arrow::compute::{cast_with_options, interleave, CastOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::schema::{TableSchema, ValueKind};

/// Joins the texts of a composite key's parts in the key index (a control character that
/// MySQL identifiers and typical key values never hold).
pub const KEY_SEPARATOR: char = '\u{1f}';

/// The most threads one build uses to cast columns.
const MAX_BUILD_THREADS: usize = 4;

/// A version's rows, typed.
pub struct TypedTable {
    /// The declared structure (every column text when the types are unknown).
    pub schema: Arc<TableSchema>,
    /// The kind of each column, in column order.
    pub kinds: Vec<ValueKind>,
    /// Every row, one Arrow column per table column.
    pub batch: RecordBatch,
    /// Per column, the values its type could not hold (null in the view).
    pub unrepresentable: Vec<usize>,
    /// Row number by key text (the parts joined by [`KEY_SEPARATOR`]); `None` without a key.
    key_index: Option<HashMap<Box<str>, u32>>,
    /// Whether the key is one column whose exported text is the canonical text of its typed
    /// value, so a typed value's text finds its row in the index.
    key_exact: bool,
    /// How long the view took to build.
    pub build_time: Duration,
}

impl fmt::Debug for TypedTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedTable")
            .field("table", &self.schema.table)
            .field("rows", &self.batch.num_rows())
            .field("bytes", &self.memory_bytes())
            .finish_non_exhaustive()
    }
}

impl TypedTable {
    /// Builds the view of the compact cache JSON `body` with the declared `schema` (or every
    /// column text, for a table `table` whose types are unknown). Blocking: call it off the
    /// runtime's threads.
    pub fn build(body: &[u8], schema: Option<&TableSchema>, table: &str) -> anyhow::Result<Self> {
        Self::build_with_key(body, schema, table, None)
    }

    /// [`TypedTable::build`], with `key` (PMA_KEY) in place of the declared primary key.
    pub fn build_with_key(
        body: &[u8],
        schema: Option<&TableSchema>,
        table: &str,
        key: Option<&[String]>,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let text = read_text_columns(body).context("reading the rows for the typed view")?;
        let mut schema = match schema {
            Some(s) => s.clone(),
            None => TableSchema::all_text(table, &text.columns),
        };
        if let Some(key) = key {
            if let Some(missing) = key.iter().find(|k| !text.columns.contains(k)) {
                anyhow::bail!(
                    "PMA_KEY names the column `{missing}`, which the table does not have"
                );
            }
            schema.key = key.to_vec();
        }
        let key_parts: Vec<usize> = schema
            .key
            .iter()
            .map(|k| text.columns.iter().position(|c| c == k))
            .collect::<Option<_>>()
            .unwrap_or_default();
        let has_key = !key_parts.is_empty() && key_parts.len() == schema.key.len();
        let kinds: Vec<ValueKind> = text.columns.iter().map(|n| schema.kind_of(n)).collect();
        // The key index and the columns' casts run side by side, a few threads at most (the
        // build runs on a blocking thread, off the runtime).
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_BUILD_THREADS);
        let (key_index, converted) = std::thread::scope(|scope| {
            let arrays = &text.arrays;
            let index = has_key.then(|| {
                let parts = &key_parts;
                scope.spawn(move || index_keys(arrays, parts))
            });
            let casts: Vec<_> = (0..workers)
                .map(|worker| {
                    let kinds = &kinds;
                    scope.spawn(move || {
                        (worker..arrays.len())
                            .step_by(workers)
                            .map(|i| (i, convert(arrays[i].clone(), kinds[i])))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut converted: Vec<Option<anyhow::Result<(ArrayRef, usize)>>> =
                (0..arrays.len()).map(|_| None).collect();
            for cast in casts {
                for (i, result) in cast.join().unwrap_or_default() {
                    converted[i] = Some(result);
                }
            }
            (index.and_then(|h| h.join().ok()), converted)
        });
        let key_exact = match key_parts.as_slice() {
            [part] => match kinds[*part] {
                ValueKind::Text => true,
                ValueKind::Integer | ValueKind::Unsigned => canonical_integers(&text.arrays[*part]),
                _ => false,
            },
            _ => false,
        };
        let mut fields = Vec::with_capacity(text.columns.len());
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(text.columns.len());
        let mut unrepresentable = Vec::with_capacity(text.columns.len());
        for ((name, kind), result) in text.columns.iter().zip(&kinds).zip(converted) {
            let (typed, lost) = result
                .ok_or_else(|| anyhow!("a thread converting the columns stopped"))?
                .with_context(|| format!("converting column `{name}` to {}", kind.name()))?;
            let nullable = schema.column(name).is_none_or(|c| c.nullable) || lost > 0;
            fields.push(Field::new(name, typed.data_type().clone(), nullable));
            arrays.push(typed);
            unrepresentable.push(lost);
        }
        let arrow_schema: SchemaRef = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(arrow_schema, arrays)
            .map_err(|e| anyhow!("assembling the typed view: {e}"))?;
        Ok(Self {
            schema: Arc::new(schema),
            kinds,
            batch,
            unrepresentable,
            key_index,
            key_exact,
            build_time: started.elapsed(),
        })
    }

    /// The view of a version merged from the rows of two others (see [`super::merge`]):
    /// `order` lists its rows as (from `held`?, row in that view), and each column is taken
    /// from the two views' columns, without reading any text again. `None` when the views do
    /// not match (types, key), or `held` has values its types could not hold (which rows held
    /// them is not known, so their count would not be): the view is then built from the body.
    /// Blocking.
    pub fn merged(held: &Self, fresh: &Self, order: &[(bool, u32)]) -> Option<Self> {
        let started = Instant::now();
        let matching = held.schema == fresh.schema
            && held.kinds == fresh.kinds
            && held.key_index.is_some()
            && fresh.key_index.is_some()
            && held.batch.num_columns() == fresh.batch.num_columns()
            && held.unrepresentable.iter().all(|&n| n == 0);
        if !matching {
            return None;
        }
        let indices: Vec<(usize, usize)> = order
            .iter()
            .map(|&(from_held, row)| (usize::from(!from_held), row as usize))
            .collect();
        let mut fields = Vec::with_capacity(held.batch.num_columns());
        let mut arrays = Vec::with_capacity(held.batch.num_columns());
        for (i, field) in held.batch.schema().fields().iter().enumerate() {
            let (a, b) = (held.batch.column(i), fresh.batch.column(i));
            if a.data_type() != b.data_type() {
                return None;
            }
            let column = interleave(&[a.as_ref(), b.as_ref()], &indices).ok()?;
            let nullable = field.is_nullable() || fresh.batch.schema().field(i).is_nullable();
            fields.push(Field::new(
                field.name(),
                column.data_type().clone(),
                nullable,
            ));
            arrays.push(column);
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).ok()?;
        let keys_of = |view: &Self| -> Vec<Option<Box<str>>> {
            let mut keys = vec![None; view.rows()];
            for (key, row) in view.keys() {
                if let Some(slot) = keys.get_mut(row) {
                    *slot = Some(key.into());
                }
            }
            keys
        };
        let (mut held_keys, mut fresh_keys) = (keys_of(held), keys_of(fresh));
        let mut index = HashMap::with_capacity(order.len());
        for (at, &(from_held, row)) in order.iter().enumerate() {
            let keys = if from_held {
                &mut held_keys
            } else {
                &mut fresh_keys
            };
            let key = keys.get_mut(row as usize)?.take()?;
            index.insert(key, u32::try_from(at).ok()?);
        }
        Some(Self {
            schema: Arc::clone(&held.schema),
            kinds: held.kinds.clone(),
            batch,
            unrepresentable: fresh.unrepresentable.clone(),
            key_index: Some(index),
            key_exact: held.key_exact && fresh.key_exact,
            build_time: started.elapsed(),
        })
    }

    /// Rows in the view.
    pub fn rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// Bytes the view's columns hold.
    pub fn memory_bytes(&self) -> usize {
        self.batch.get_array_memory_size()
    }

    /// Whether rows can be found by key.
    pub fn has_key(&self) -> bool {
        self.key_index.is_some()
    }

    /// The key column, when the key is one column whose rows a typed value (an integer's or a
    /// text's canonical text) finds in the index.
    pub fn exact_key_column(&self) -> Option<&str> {
        match (
            self.key_exact,
            self.key_index.is_some(),
            self.schema.key.as_slice(),
        ) {
            (true, true, [key]) => Some(key),
            _ => None,
        }
    }

    /// Every key (its parts joined by [`KEY_SEPARATOR`]) and its row; none without a key.
    pub fn keys(&self) -> impl Iterator<Item = (&str, usize)> {
        self.key_index
            .iter()
            .flatten()
            .map(|(key, &row)| (key.as_ref(), row as usize))
    }

    /// The row whose key is `key` (a composite key's parts joined by [`KEY_SEPARATOR`]).
    pub fn row_of_key(&self, key: &str) -> Option<usize> {
        self.key_index.as_ref()?.get(key).map(|&r| r as usize)
    }
}

/// The arrow type of a kind.
pub fn arrow_type(kind: ValueKind) -> DataType {
    match kind {
        ValueKind::Integer => DataType::Int64,
        ValueKind::Unsigned => DataType::UInt64,
        ValueKind::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
        ValueKind::Double => DataType::Float64,
        ValueKind::Date => DataType::Date32,
        ValueKind::DateTime => DataType::Timestamp(TimeUnit::Microsecond, None),
        ValueKind::Text => DataType::Utf8,
    }
}

/// Converts a text column to `kind`; returns the column and how many texts its type could not
/// hold (nulls that were not null as text).
fn convert(texts: StringArray, kind: ValueKind) -> anyhow::Result<(ArrayRef, usize)> {
    let texts: ArrayRef = Arc::new(texts);
    if kind == ValueKind::Text {
        return Ok((texts, 0));
    }
    let options = CastOptions {
        safe: true,
        ..Default::default()
    };
    let typed = cast_with_options(&texts, &arrow_type(kind), &options)?;
    let lost = typed.null_count() - texts.null_count();
    Ok((typed, lost))
}

/// Whether every text is an integer as MySQL writes one (`0`, `-12`, `7`: no sign on zero, no
/// leading zeros, no `+`), so the text of its value is the text itself.
fn canonical_integers(texts: &StringArray) -> bool {
    texts.iter().all(|text| {
        let Some(text) = text else { return false };
        let digits = text.strip_prefix('-').unwrap_or(text);
        let canonical_digits = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        canonical_digits && !(text.starts_with('-') && digits == "0")
    })
}

fn index_keys(arrays: &[StringArray], parts: &[usize]) -> HashMap<Box<str>, u32> {
    let rows = arrays.first().map_or(0, Array::len);
    let mut index = HashMap::with_capacity(rows);
    let mut key = String::new();
    for row in 0..rows {
        key.clear();
        for (i, &part) in parts.iter().enumerate() {
            if i > 0 {
                key.push(KEY_SEPARATOR);
            }
            key.push_str(arrays[part].value(row));
        }
        // A duplicate key (not possible under a primary key) keeps its first row.
        index
            .entry(key.as_str().into())
            .or_insert(u32::try_from(row).unwrap_or(u32::MAX));
    }
    index
}

/// The document's columns and each column's cells as text (null for JSON null).
struct TextColumns {
    columns: Vec<String>,
    arrays: Vec<StringArray>,
}

/// Reads the cache document's `columns` and `data` straight into one text builder per column:
/// no value is allocated on its own (a custom serde visitor, since the rows are objects keyed
/// by column name and the builders are chosen by the `columns` read before them).
fn read_text_columns(body: &[u8]) -> anyhow::Result<TextColumns> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let columns = Document.deserialize(&mut de)?;
    de.end()?;
    Ok(columns)
}

struct Document;

impl<'de> DeserializeSeed<'de> for Document {
    type Value = TextColumns;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<TextColumns, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Document {
    type Value = TextColumns;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a cache document")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TextColumns, A::Error> {
        let mut columns: Option<Vec<String>> = None;
        let mut builders: Option<Vec<StringBuilder>> = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "columns" => columns = Some(map.next_value()?),
                "data" => {
                    let names = columns.as_deref().ok_or_else(|| {
                        de::Error::custom("the document's data comes before its columns")
                    })?;
                    let mut b: Vec<StringBuilder> =
                        names.iter().map(|_| StringBuilder::new()).collect();
                    map.next_value_seed(Rows {
                        names,
                        builders: &mut b,
                    })?;
                    builders = Some(b);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let columns = columns.ok_or_else(|| de::Error::missing_field("columns"))?;
        let builders = builders.ok_or_else(|| de::Error::missing_field("data"))?;
        Ok(TextColumns {
            columns,
            arrays: builders.into_iter().map(|mut b| b.finish()).collect(),
        })
    }
}

struct Rows<'a> {
    names: &'a [String],
    builders: &'a mut [StringBuilder],
}

impl<'de> DeserializeSeed<'de> for Rows<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Rows<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of rows")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut seen = vec![false; self.names.len()];
        while seq
            .next_element_seed(Row {
                names: self.names,
                builders: self.builders,
                seen: &mut seen,
            })?
            .is_some()
        {}
        Ok(())
    }
}

struct Row<'a> {
    names: &'a [String],
    builders: &'a mut [StringBuilder],
    seen: &'a mut [bool],
}

impl<'de> DeserializeSeed<'de> for Row<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Row<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.seen.fill(false);
        let mut next = 0;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            // Rows list their columns in order; look further only when one does not.
            let column = if self.names.get(next).is_some_and(|n| *n == key) {
                next
            } else {
                self.names
                    .iter()
                    .position(|n| *n == key)
                    .ok_or_else(|| de::Error::custom(format!("a row has unknown column {key:?}")))?
            };
            if std::mem::replace(&mut self.seen[column], true) {
                return Err(de::Error::custom(format!("a row has column {key:?} twice")));
            }
            map.next_value_seed(Cell(&mut self.builders[column]))?;
            next = column + 1;
        }
        for (column, seen) in self.seen.iter().enumerate() {
            if !seen {
                self.builders[column].append_null();
            }
        }
        Ok(())
    }
}

/// One cell, appended to its column's builder as it is read.
struct Cell<'a>(&'a mut StringBuilder);

impl<'de> DeserializeSeed<'de> for Cell<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Cell<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a text or null")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.append_value(v);
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.append_null();
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.0.append_null();
        Ok(())
    }
    // Numbers and booleans in a cache file written by hand: kept as their JSON text.
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.append_value(v.to_string());
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.append_value(v.to_string());
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.append_value(v.to_string());
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.append_value(if v { "1" } else { "0" });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Decimal128Array};
    use datafusion::arrow::datatypes::{Int64Type, UInt64Type};

    fn doc(rows: &str) -> Vec<u8> {
        format!(
            r#"{{"status":"success","last_updated":"2026-01-01T00:00:00Z","count":2,"columns":["id","price","made","a name","flag"],"data":[{rows}]}}"#
        )
        .into_bytes()
    }

    fn schema() -> TableSchema {
        TableSchema::from_sql(
            "CREATE TABLE t (id bigint(20) unsigned NOT NULL, price decimal(10,2), made datetime, \
             `a name` varchar(9), flag tinyint(1), PRIMARY KEY (id))",
            None,
        )
        .unwrap()
    }

    #[test]
    fn types_each_column_and_counts_what_a_type_cannot_hold() {
        let body = doc(
            r#"{"id":"18446744073709551615","price":"9.50","made":"0000-00-00 00:00:00","a name":"NULL","flag":"1"},
               {"id":"7","price":null,"made":"2024-02-29 23:59:58","a name":null,"flag":"0"}"#,
        );
        let view = TypedTable::build(&body, Some(&schema()), "t").unwrap();
        assert_eq!(view.rows(), 2);
        let id = view.batch.column(0).as_primitive::<UInt64Type>();
        assert_eq!(id.value(0), u64::MAX);
        let price = view
            .batch
            .column(1)
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap();
        assert_eq!(price.value_as_string(0), "9.50");
        assert!(price.is_null(1));
        assert!(view.batch.column(2).is_null(0), "the zero date is null");
        assert!(view.batch.column(2).is_valid(1));
        let name = view.batch.column(3).as_string::<i32>();
        assert_eq!(name.value(0), "NULL", "the text NULL is text");
        assert!(name.is_null(1), "SQL NULL is null");
        assert_eq!(view.batch.column(4).as_primitive::<Int64Type>().value(0), 1);
        assert_eq!(view.unrepresentable, [0, 0, 1, 0, 0]);
        assert_eq!(view.row_of_key("7"), Some(1));
        assert_eq!(view.row_of_key("8"), None);
        assert_eq!(view.exact_key_column(), Some("id"));
    }

    #[test]
    fn without_a_schema_every_column_is_text_and_there_is_no_key() {
        let body = doc(r#"{"id":"1","price":"2","made":"3","a name":"4","flag":"5"}"#);
        let view = TypedTable::build(&body, None, "t").unwrap();
        assert!(view.kinds.iter().all(|k| *k == ValueKind::Text));
        assert!(!view.has_key());
        assert_eq!(view.schema.table, "t");
    }

    #[test]
    fn a_broken_document_is_an_error() {
        let e = TypedTable::build(b"{\"columns\":[\"a\"],\"data\":[{\"b\":\"1\"}]}", None, "t")
            .unwrap_err();
        assert!(format!("{e:#}").contains("unknown column"), "{e:#}");
    }
}
