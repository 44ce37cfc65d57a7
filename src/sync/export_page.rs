//! The table's export page: open it, choose CSV with the options the converter expects, and
//! press Export.

use std::time::Instant;

use anyhow::{anyhow, Context};
use fantoccini::{Client, Locator};
use serde_json::json;

use crate::config::SyncSettings;
use crate::sync::error::ExportError;
use crate::sync::login::{log_in, LOGIN_TIMEOUT};
use crate::sync::page::{open, page_state, run_js, PageState, PAGE_TIMEOUT, POLL};
use crate::sync::session::{step, Browser, STEP_TIMEOUT};
use crate::sync::status::{Phase, Progress};

/// How long the export page may show neither the export form nor an error before giving up.
const EXPORT_FORM_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Brings the browser to the table's export form: straight to the address that worked before,
/// else phpMyAdmin 5.1+'s route, then 4.9/5.0's script. When phpMyAdmin shows its login form
/// instead (a new browser, an expired session, a restarted phpMyAdmin), logs in there and opens
/// the export page again.
pub async fn reach_export_form(
    browser: &mut Browser,
    settings: &SyncSettings,
    progress: &Progress,
) -> Result<(), ExportError> {
    let remembered = browser.export_url.take();
    let urls = match &remembered {
        Some(url) => vec![url.clone()],
        None => export_page_urls(settings)?.to_vec(),
    };
    let client = browser.client();
    let mut logged_in = false;
    let mut last = PageState::default();
    for url in urls {
        open(client, "opening the export page", &url).await?;
        let mut started = Instant::now();
        loop {
            let state = page_state(client).await?;
            if state.ready && state.export_form {
                check_table_exists(client, settings).await?;
                if progress.current() == Some(Phase::LoggingIn) {
                    progress.enter(Phase::Exporting);
                }
                browser.export_url = Some(url);
                return Ok(());
            }
            if state.ready && state.login_shown {
                if logged_in {
                    return Err(ExportError::Transient(anyhow!(
                        "phpMyAdmin asked to log in again right after a login: {}",
                        state.message()
                    )));
                }
                if progress.current() != Some(Phase::LoggingIn) {
                    tracing::info!("phpMyAdmin's session ended; logging in again");
                    progress.enter(Phase::LoggingIn);
                }
                log_in(client, &settings.username, settings.password.expose()).await?;
                logged_in = true;
                // phpMyAdmin answers the login with its home page: back to the export page
                // at once, without waiting for the home page's own requests.
                open(client, "opening the export page", &url).await?;
                started = Instant::now();
                continue;
            }
            if state.ready && state.login_form && started.elapsed() > LOGIN_TIMEOUT {
                return Err(ExportError::Transient(anyhow!(
                    "phpMyAdmin's login form did not appear at {url} within {}s (page title: {:?})",
                    LOGIN_TIMEOUT.as_secs(),
                    state.title
                )));
            }
            // A logged-in page without the form will not grow one (phpMyAdmin 4.9 ignores
            // `route=`); any other page gets a short grace to finish.
            let given_up = state.logged_in || started.elapsed() > EXPORT_FORM_GRACE;
            if state.ready && !state.login_form && given_up {
                last = state;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }
    if remembered.is_some() {
        return Err(ExportError::Transient(anyhow!(
            "the export page that worked before shows no export form now: {}",
            last.title
        )));
    }
    let shown = if last.errors.is_empty() {
        format!("page title {:?}", last.title)
    } else {
        last.message()
    };
    Err(ExportError::Fatal(anyhow!(
        "phpMyAdmin shows no export form for table `{}`.`{}` (does it exist? check PMA_DATABASE and \
         PMA_TABLE): {shown}",
        settings.database,
        settings.table
    )))
}

/// phpMyAdmin 5 shows the export form even for a table that does not exist; its row count
/// field (`#limit_to`) is then empty, where an existing table, even an empty one, has a number.
async fn check_table_exists(client: &Client, settings: &SyncSettings) -> Result<(), ExportError> {
    let rows = run_js(
        client,
        "reading the table's row count",
        "const l = document.getElementById('limit_to'); return l ? l.value : null;",
        vec![],
    )
    .await?;
    if rows.as_str().is_some_and(|r| r.trim().is_empty()) {
        return Err(ExportError::Fatal(anyhow!(
            "the table `{table}` does not exist in the database `{db}`, or there is no database \
             `{db}` (phpMyAdmin knows no row count for `{db}`.`{table}`): check PMA_DATABASE and \
             PMA_TABLE",
            db = settings.database,
            table = settings.table
        )));
    }
    Ok(())
}

/// The export page's addresses: phpMyAdmin 5.1+ (`route=`), then 4.9/5.0 (`tbl_export.php`).
fn export_page_urls(settings: &SyncSettings) -> Result<[url::Url; 2], ExportError> {
    let page = |path: &str, route: bool| -> Result<url::Url, ExportError> {
        let mut url = settings
            .pma_url
            .join(path)
            .context("building the export page address")
            .map_err(ExportError::Fatal)?;
        let mut query = url.query_pairs_mut();
        if route {
            query.append_pair("route", "/table/export");
        }
        query
            .append_pair("db", &settings.database)
            .append_pair("table", &settings.table);
        drop(query);
        Ok(url)
    };
    Ok([page("index.php", true)?, page("tbl_export.php", false)?])
}

/// Sets the CSV options. Quick mode hides them but still posts them, so they are set directly.
const CSV_OPTIONS_JS: &str = r#"
const nullToken = arguments[0];
const el = id => document.getElementById(id);
const missing = [];
const setValue = (id, v) => { const e = el(id); if (!e) { missing.push(id); return; }
  e.value = v; e.dispatchEvent(new Event('change', {bubbles: true})); };
const setChecked = (id, on) => { const e = el(id); if (!e) { missing.push(id); return; }
  e.checked = on; e.dispatchEvent(new Event('change', {bubbles: true})); };
const asFile = el('radio_dump_asfile');
if (asFile) { asFile.checked = true; asFile.dispatchEvent(new Event('change', {bubbles: true})); }
setValue('text_csv_separator', ',');
setValue('text_csv_enclosed', '"');
setValue('text_csv_escaped', '"');
setValue('text_csv_null', nullToken);
setChecked('checkbox_csv_columns', true);
setChecked('checkbox_csv_removeCRLF', false);
const v = id => el(id) ? (el(id).type === 'checkbox' ? el(id).checked : el(id).value) : null;
return {
  missing: missing,
  format: v('plugins'),
  check: [v('text_csv_separator'), v('text_csv_enclosed'), v('text_csv_escaped'), v('text_csv_null'),
          v('checkbox_csv_columns'), v('checkbox_csv_removeCRLF')],
};
"#;

pub async fn choose_csv_options(client: &Client, null_token: &str) -> Result<(), ExportError> {
    let format = step(
        "finding the format list",
        STEP_TIMEOUT,
        client.find(Locator::Css("#plugins")),
    )
    .await?;
    step(
        "choosing the CSV format",
        STEP_TIMEOUT,
        format.select_by_value("csv"),
    )
    .await
    .map_err(|e| ExportError::Fatal(anyhow!("phpMyAdmin offers no CSV export: {e:#}")))?;
    let result = run_js(
        client,
        "setting the CSV options",
        CSV_OPTIONS_JS,
        vec![json!(null_token)],
    )
    .await?;
    let missing = result["missing"].as_array().cloned().unwrap_or_default();
    if !missing.is_empty() {
        return Err(ExportError::Fatal(anyhow!(
            "phpMyAdmin's export page lacks the CSV options {missing:?}"
        )));
    }
    let expected = json!([",", "\"", "\"", null_token, true, false]);
    if result["format"] != json!("csv") || result["check"] != expected {
        return Err(ExportError::Fatal(anyhow!(
            "the CSV options did not stick: format {}, options {}",
            result["format"],
            result["check"]
        )));
    }
    Ok(())
}

pub async fn click_export(client: &Client) -> Result<(), ExportError> {
    let go = step(
        "finding the Export button",
        STEP_TIMEOUT,
        client.find(Locator::Css("#buttonGo")),
    )
    .await?;
    // At small window sizes other elements can cover the button; bring it to the middle first.
    run_js(
        client,
        "scrolling to the Export button",
        "document.getElementById('buttonGo').scrollIntoView({block: 'center'}); return null;",
        vec![],
    )
    .await?;
    if let Err(e) = step("clicking the Export button", PAGE_TIMEOUT, go.click()).await {
        let detail = format!("{e:#}");
        if !detail.contains("click intercepted") && !detail.contains("not interactable") {
            return Err(e);
        }
        tracing::warn!("the Export button could not be clicked ({detail}); submitting by script");
        run_js(
            client,
            "clicking the Export button by script",
            "document.getElementById('buttonGo').click(); return null;",
            vec![],
        )
        .await?;
    }
    Ok(())
}
