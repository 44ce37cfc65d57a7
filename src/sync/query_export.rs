//! A query's result exported as CSV through phpMyAdmin's table export, from the export page the
//! browser shows: the page's own form is posted by the page (`fetch`, its session and token)
//! with `sql_query` and `allrows=1`, which phpMyAdmin 4.9, 5.1 and 5.2 run in place of
//! `SELECT *` (their table export's `sql_query` field). The answer comes back as text: these
//! exports are small (bucket digests, a key list, the changed rows), so no download is needed.
//!
//! phpMyAdmin answers a MySQL error with an HTML page and an ended session with its login page;
//! the first is an error, the second a login and one more try.

use anyhow::anyhow;
use serde::Deserialize;
use serde_json::json;

use crate::config::SyncSettings;
use crate::sync::download::html_error_text;
use crate::sync::error::ExportError;
use crate::sync::export_page::reach_export_form;
use crate::sync::session::{step, Browser, STEP_TIMEOUT};
use crate::sync::status::Progress;

/// The largest answer taken through the page (the caller exports more rows as a full export).
pub const MAX_QUERY_EXPORT_BYTES: usize = 64 << 20;

const QUERY_EXPORT_JS: &str = r#"
const [sql, nullToken, maxBytes] = arguments;
const done = arguments[arguments.length - 1];
(async () => {
  const go = document.getElementById('buttonGo');
  const f = go && go.form;
  if (!f) return {ok: false, error: 'the export form is not on the page'};
  const fd = new FormData(f);
  for (const k of [...fd.keys()]) if (k.startsWith('sql_') || k.startsWith('csv_')) fd.delete(k);
  fd.delete('remember_template');
  const set = {
    what: 'csv', single_table: 'true', export_type: 'table', quick_or_custom: 'quick',
    allrows: '1', sql_query: sql, output_format: 'sendit', compression: 'none', charset: 'utf-8',
    csv_structure_or_data: 'data', csv_separator: ',', csv_enclosed: '"', csv_escaped: '"',
    csv_terminated: 'AUTO', csv_null: nullToken, csv_columns: 'something',
  };
  if (!fd.get('filename_template')) set.filename_template = '@TABLE@';
  for (const [k, v] of Object.entries(set)) fd.set(k, v);
  const r = await fetch(f.action, {method: 'POST', body: fd, credentials: 'same-origin'});
  const ctype = r.headers.get('content-type') || '';
  const text = await r.text();
  if (text.length > maxBytes) return {ok: false, status: r.status, ctype: ctype, too_large: true};
  return {ok: r.ok, status: r.status, ctype: ctype, text: text};
})().then(done, e => done({ok: false, error: String(e)}));
"#;

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Answered {
    ok: bool,
    status: u16,
    ctype: String,
    text: String,
    too_large: bool,
    error: Option<String>,
}

/// What a query export brought.
#[derive(Debug)]
pub enum QueryAnswer {
    /// The result as CSV (a header row, then one row per result row; SQL NULL as the token).
    Csv(String),
    /// More than [`MAX_QUERY_EXPORT_BYTES`].
    TooLarge,
}

/// Exports the result of `sql` as CSV from the export page the browser shows (see the module's
/// notes), logging in again once if phpMyAdmin's session ended.
pub async fn export_query_csv(
    browser: &mut Browser,
    settings: &SyncSettings,
    sql: &str,
    null_token: &str,
    progress: &Progress,
) -> Result<QueryAnswer, ExportError> {
    for attempt in 0..2 {
        let value = step(
            "exporting a query's result",
            settings.timeout.max(STEP_TIMEOUT),
            browser.client().execute_async(
                QUERY_EXPORT_JS,
                vec![json!(sql), json!(null_token), json!(MAX_QUERY_EXPORT_BYTES)],
            ),
        )
        .await?;
        let answered: Answered = serde_json::from_value(value)
            .map_err(|e| ExportError::Transient(anyhow!("reading the query's export: {e}")))?;
        if let Some(error) = answered.error {
            return Err(ExportError::Transient(anyhow!(
                "the query's export failed in the page: {error}"
            )));
        }
        if answered.too_large {
            return Ok(QueryAnswer::TooLarge);
        }
        let html = answered.ctype.contains("html") || looks_like_page(&answered.text);
        if answered.ok && !html {
            progress.note("query export bytes", answered.text.len());
            return Ok(QueryAnswer::Csv(answered.text));
        }
        let login_page = html && answered.text.contains("login_form");
        if login_page && attempt == 0 {
            tracing::info!("phpMyAdmin answered a query export with its login page");
            reach_export_form(browser, settings, progress).await?;
            continue;
        }
        let said = html_error_text(&answered.text)
            .map(|m| format!(": phpMyAdmin said: {m}"))
            .unwrap_or_default();
        return Err(ExportError::Transient(anyhow!(
            "phpMyAdmin answered the query export with {} ({}) instead of CSV{said}",
            answered.status,
            answered.ctype
        )));
    }
    Err(ExportError::Transient(anyhow!(
        "phpMyAdmin asked to log in again right after a login"
    )))
}

fn looks_like_page(text: &str) -> bool {
    let head: String = text
        .chars()
        .take(512)
        .collect::<String>()
        .to_ascii_lowercase();
    let head = head.trim_start();
    head.starts_with('<') || head.contains("<!doctype") || head.contains("<html")
}
