//! The table a version's queries read: the typed view's columns, in two zero-copy partitions so
//! scans use two threads, and a filter on the primary key (`id = 5`, `id IN (5, 6)`) answered
//! from the view's key index instead of a scan.
//!
//! The engine's own in-memory table scans every row for any filter; a lookup by key is the
//! most common question a client asks of one table, so this provider claims those filters
//! (as inexact: the engine still checks each row it gets) and hands the engine just the rows
//! the index names.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{BinaryExpr, Operator, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::Expr;

use crate::cache::TypedTable;

/// The name of the row-number column of the table `/tables` reads (the row's place in the
/// version, to find its exported text).
pub const ROW_COLUMN: &str = "__pma_cache_row";

/// A version's rows as the engine's table.
#[derive(Debug)]
pub struct VersionTable {
    view: Arc<TypedTable>,
    schema: SchemaRef,
    /// Every row (and the row numbers, when asked for).
    batch: RecordBatch,
    partitions: Vec<Vec<RecordBatch>>,
    /// The one key column whose filters the key index answers, and its type.
    key: Option<(String, DataType)>,
}

impl VersionTable {
    /// The table of `view`, with a last column [`ROW_COLUMN`] when `row_numbers`.
    pub fn new(view: Arc<TypedTable>, row_numbers: bool) -> Result<Self> {
        let mut batch = view.batch.clone();
        if row_numbers {
            let rows = u32::try_from(batch.num_rows()).unwrap_or(u32::MAX);
            let mut fields: Vec<Field> = batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.push(Field::new(ROW_COLUMN, DataType::UInt32, false));
            let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
            columns.push(Arc::new(UInt32Array::from_iter_values(0..rows)));
            batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        }
        let half = batch.num_rows().div_ceil(2);
        let partitions = if half == 0 {
            vec![vec![batch.clone()]]
        } else {
            vec![
                vec![batch.slice(0, half)],
                vec![batch.slice(half, batch.num_rows() - half)],
            ]
        };
        let key = view.exact_key_column().and_then(|name| {
            let field = batch.schema().field_with_name(name).ok()?.clone();
            Some((name.to_owned(), field.data_type().clone()))
        });
        Ok(Self {
            schema: batch.schema(),
            view,
            batch,
            partitions,
            key,
        })
    }

    /// Every row (with the row numbers, when asked for).
    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }

    /// The key texts `filter` asks for, when it is `key = literal` or `key IN (literals…)`
    /// with literals of the key's own type (whose text is the exported text).
    fn asked_keys(&self, filter: &Expr) -> Option<Vec<String>> {
        let (key, key_type) = self.key.as_ref()?;
        let is_key = |e: &Expr| matches!(e, Expr::Column(c) if c.name == *key);
        let text = |e: &Expr| match e {
            Expr::Literal(v, _) if v.data_type() == *key_type => literal_text(v),
            _ => None,
        };
        match filter {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => {
                if is_key(left) {
                    text(right).map(|t| vec![t])
                } else if is_key(right) {
                    text(left).map(|t| vec![t])
                } else {
                    None
                }
            }
            Expr::InList(InList {
                expr,
                list,
                negated: false,
            }) if is_key(expr) => list.iter().map(text).collect(),
            _ => None,
        }
    }
}

/// The text of a literal as MySQL exports a value of its type: integers and text only (the
/// key kinds whose exported text is checked to be canonical, see
/// [`TypedTable::exact_key_column`]).
fn literal_text(value: &ScalarValue) -> Option<String> {
    match value {
        ScalarValue::Int64(Some(v)) => Some(v.to_string()),
        ScalarValue::UInt64(Some(v)) => Some(v.to_string()),
        ScalarValue::Utf8(Some(v)) => Some(v.clone()),
        _ => None,
    }
}

#[async_trait]
impl TableProvider for VersionTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.asked_keys(f).is_some() {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(keys) = filters.iter().find_map(|f| self.asked_keys(f)) {
            let mut rows: Vec<u32> = keys
                .iter()
                .filter_map(|k| self.view.row_of_key(k))
                .filter_map(|r| u32::try_from(r).ok())
                .collect();
            rows.sort_unstable();
            rows.dedup();
            let batch = take_record_batch(&self.batch, &UInt32Array::from(rows))?;
            return Ok(MemorySourceConfig::try_new_exec(
                &[vec![batch]],
                self.schema(),
                projection.cloned(),
            )?);
        }
        Ok(MemorySourceConfig::try_new_exec(
            &self.partitions,
            self.schema(),
            projection.cloned(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::schema::TableSchema;
    use datafusion::prelude::{col, lit};

    fn table(ids: &[&str]) -> VersionTable {
        let rows: Vec<String> = ids
            .iter()
            .map(|id| format!(r#"{{"id":"{id}","v":"x"}}"#))
            .collect();
        let body = format!(r#"{{"columns":["id","v"],"data":[{}]}}"#, rows.join(","));
        let schema = TableSchema::from_sql(
            "CREATE TABLE t (id bigint NOT NULL, v text, PRIMARY KEY (id))",
            None,
        )
        .unwrap();
        let view = TypedTable::build(body.as_bytes(), Some(&schema), "t").unwrap();
        VersionTable::new(Arc::new(view), false).unwrap()
    }

    #[test]
    fn key_filters_of_the_keys_type_are_claimed_and_others_are_not() {
        let t = table(&["1", "2", "30"]);
        assert_eq!(
            t.asked_keys(&col("id").eq(lit(30i64))),
            Some(vec!["30".into()])
        );
        assert_eq!(
            t.asked_keys(&lit(2i64).eq(col("id"))),
            Some(vec!["2".into()])
        );
        assert_eq!(
            t.asked_keys(&col("id").in_list(vec![lit(1i64), lit(2i64)], false)),
            Some(vec!["1".into(), "2".into()])
        );
        assert_eq!(
            t.asked_keys(&col("id").in_list(vec![lit(1i64)], true)),
            None
        );
        assert_eq!(t.asked_keys(&col("id").gt(lit(1i64))), None);
        assert_eq!(t.asked_keys(&col("v").eq(lit("x"))), None);
        assert_eq!(t.asked_keys(&col("id").eq(lit("1"))), None, "another type");
    }

    #[test]
    fn a_key_written_with_leading_zeros_is_never_looked_up_by_value() {
        let t = table(&["1", "007"]);
        assert_eq!(t.asked_keys(&col("id").eq(lit(7i64))), None);
    }
}
