//! Answers in the exported text (`/tables/{table}?_values=text`): each cell exactly as
//! `/fetch-data` has it (MySQL's zero date included, which the typed view holds as null), read
//! from the version's own body by row number.

use std::collections::HashMap;
use std::sync::Arc;

use super::engine::QueryError;
use super::provider::ROW_COLUMN;
use crate::cache::Snapshot;
use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};

/// Reads rows' exported text from a version's body.
pub struct RowTexts<'a> {
    snapshot: &'a Snapshot,
}

impl<'a> RowTexts<'a> {
    pub fn new(snapshot: &'a Snapshot) -> Self {
        Self { snapshot }
    }

    /// `batches` (which carry [`ROW_COLUMN`]) as the rows' exported text: the same columns but
    /// that one, each as text.
    pub fn as_text(
        &self,
        schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let row_column = schema.index_of(ROW_COLUMN).map_err(|_| {
            QueryError::Internal("the rows' numbers are missing from the answer".into())
        })?;
        let names: Vec<&String> = schema
            .fields()
            .iter()
            .filter(|f| f.name() != ROW_COLUMN)
            .map(|f| f.name())
            .collect();
        let text_schema: SchemaRef = Arc::new(Schema::new(
            names
                .iter()
                .map(|n| Field::new(n.as_str(), DataType::Utf8, true))
                .collect::<Vec<_>>(),
        ));
        let index = self
            .snapshot
            .row_index()
            .map_err(|e| QueryError::Internal(format!("reading the rows' text: {e}")))?;
        let body = &self.snapshot.body;
        let mut out = Vec::with_capacity(batches.len());
        for batch in batches {
            let rows = batch.column(row_column).as_primitive::<UInt32Type>();
            let mut builders: Vec<StringBuilder> =
                names.iter().map(|_| StringBuilder::new()).collect();
            for row in rows.values().iter() {
                let span = index.span(*row as usize).ok_or_else(|| {
                    QueryError::Internal(format!("row {row} is not in the version's body"))
                })?;
                let cells: HashMap<String, serde_json::Value> = serde_json::from_slice(&body[span])
                    .map_err(|e| QueryError::Internal(format!("reading row {row}'s text: {e}")))?;
                for (name, builder) in names.iter().zip(builders.iter_mut()) {
                    match cells.get(name.as_str()) {
                        None | Some(serde_json::Value::Null) => builder.append_null(),
                        Some(serde_json::Value::String(s)) => builder.append_value(s),
                        Some(other) => builder.append_value(other.to_string()),
                    }
                }
            }
            let columns: Vec<ArrayRef> = builders
                .into_iter()
                .map(|mut b| Arc::new(b.finish()) as ArrayRef)
                .collect();
            out.push(
                RecordBatch::try_new(Arc::clone(&text_schema), columns)
                    .map_err(|e| QueryError::Internal(e.to_string()))?,
            );
        }
        Ok((text_schema, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::schema::TableSchema;
    use crate::cache::TypedTable;
    use crate::query::provider::VersionTable;

    #[test]
    fn the_text_is_the_exported_text_where_the_typed_view_holds_null() {
        let doc = br#"{"last_updated":"2026-01-02T03:04:05Z","count":3,"columns":["id","made","note"],"data":[{"id":"1","made":"0000-00-00 00:00:00","note":"NULL"},{"id":"2","made":"2024-02-29 23:59:58","note":null},{"id":"3","made":null,"note":"\"quoted\" \u00e9"}]}"#;
        let mut buf = vec![b' '; crate::cache::format::BODY_ROOM];
        buf.extend_from_slice(doc);
        let snapshot = Snapshot::from_cache_buffer(buf).unwrap();
        let schema = TableSchema::from_sql(
            "CREATE TABLE t (id int NOT NULL, made datetime, note text, PRIMARY KEY (id))",
            None,
        )
        .unwrap();
        let view = Arc::new(TypedTable::build(&snapshot.body, Some(&schema), "t").unwrap());
        assert!(
            view.batch.column(1).is_null(0),
            "the zero date is null typed"
        );
        let table = VersionTable::new(view, true).unwrap();
        // Rows 2 and 0, in that order, as a query would give them.
        let batch = table.batch().slice(2, 1);
        let first = table.batch().slice(0, 1);
        let texts = RowTexts::new(&snapshot);
        let (schema, out) = texts.as_text(&batch.schema(), &[batch, first]).unwrap();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "made", "note"]);
        let made = out[1].column(1).as_string::<i32>();
        assert_eq!(made.value(0), "0000-00-00 00:00:00");
        let note = out[0].column(2).as_string::<i32>();
        assert_eq!(note.value(0), "\"quoted\" é");
        assert!(out[0].column(1).is_null(0), "SQL NULL stays null");
        assert_eq!(out[1].column(2).as_string::<i32>().value(0), "NULL");
    }
}
