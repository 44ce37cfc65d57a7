//! The table's structure, read in the same browser session as the export: phpMyAdmin's
//! structure-only SQL export of the table (its `CREATE TABLE`), fetched by the export page
//! itself from its own form, so no second login or page load is needed. Works alike on
//! phpMyAdmin 4.9, 5.1 and 5.2.
//!
//! The form is posted with `single_table=true` (4.9 and 5.1 offer no SQL export of a table
//! without it), backquoted names, and `IF NOT EXISTS` (which keeps the keys inside the
//! `CREATE TABLE`; the parser also reads them from a later `ALTER TABLE`). A missing table
//! still answers 200 with no `CREATE TABLE`, so the answer is checked for one.

use anyhow::anyhow;
use fantoccini::Client;
use serde::Deserialize;

use crate::cache::TableSchema;
use crate::config::SyncSettings;
use crate::sync::error::ExportError;
use crate::sync::session::{step, STEP_TIMEOUT};

const STRUCTURE_JS: &str = r#"
const done = arguments[arguments.length - 1];
(async () => {
  const go = document.getElementById('buttonGo');
  const f = go && go.form;
  if (!f) return {ok: false, error: 'the export form is not on the page'};
  const fd = new FormData(f);
  for (const k of [...fd.keys()]) if (k.startsWith('sql_') || k.startsWith('csv_')) fd.delete(k);
  fd.delete('remember_template');
  const set = {
    what: 'sql', single_table: 'true', export_type: 'table', quick_or_custom: 'quick',
    output_format: 'sendit', compression: 'none', charset: 'utf-8',
    sql_structure_or_data: 'structure', sql_create_table: 'something',
    sql_backquotes: 'something', sql_if_not_exists: 'something',
  };
  for (const [k, v] of Object.entries(set)) fd.set(k, v);
  const r = await fetch(f.action, {method: 'POST', body: fd, credentials: 'same-origin'});
  const text = await r.text();
  const ctype = r.headers.get('content-type') || '';
  return {ok: r.ok && /\bCREATE TABLE\b/i.test(text), status: r.status, ctype: ctype,
          text: text.length > 1000000 ? text.slice(0, 1000000) : text};
})().then(done, e => done({ok: false, error: String(e)}));
"#;

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Fetched {
    ok: bool,
    status: u16,
    ctype: String,
    text: String,
    error: Option<String>,
}

/// Reads the table's `CREATE TABLE` from the export page the browser shows. Failing to read
/// it never fails the export: the version then has no declared types (every column is text
/// in the typed view), and the log says why.
pub async fn read_structure(client: &Client, settings: &SyncSettings) -> Option<TableSchema> {
    match fetch_structure(client, settings).await {
        Ok(schema) => {
            tracing::debug!(
                table = %schema.table,
                columns = schema.columns.len(),
                key = ?schema.key,
                "read the table's structure"
            );
            Some(schema)
        }
        Err(e) => {
            tracing::warn!(
                "cannot read the table's structure from phpMyAdmin, so its columns are text \
                 for queries: {e:#}"
            );
            None
        }
    }
}

async fn fetch_structure(client: &Client, settings: &SyncSettings) -> anyhow::Result<TableSchema> {
    let value = step(
        "reading the table's structure",
        STEP_TIMEOUT,
        client.execute_async(STRUCTURE_JS, vec![]),
    )
    .await
    .map_err(|e: ExportError| anyhow!("{e}"))?;
    let fetched: Fetched = serde_json::from_value(value)?;
    if let Some(error) = fetched.error {
        anyhow::bail!("{error}");
    }
    if !fetched.ok {
        anyhow::bail!(
            "phpMyAdmin's structure export answered {} ({}) without a CREATE TABLE",
            fetched.status,
            fetched.ctype
        );
    }
    TableSchema::from_sql(&fetched.text, Some(&settings.table))
}
