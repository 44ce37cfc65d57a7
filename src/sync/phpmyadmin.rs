//! The phpMyAdmin flow, as a person would do it in the browser: log in, open the table's export
//! page, export CSV with a NULL token, and collect the downloaded file.
//!
//! Every wait polls the page for its outcome (no fixed sleeps), and every WebDriver command runs
//! under [`STEP_TIMEOUT`] because fantoccini has no timeout of its own.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use fantoccini::{Client, Locator};
use serde_json::{json, Value};

use crate::config::SyncSettings;
use crate::sync::browser::{step, Browser, STEP_TIMEOUT};
use crate::sync::status::{Phase, Progress};

/// Why an export failed. The caller retries only [`ExportError::Transient`].
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// phpMyAdmin refused the credentials; holds phpMyAdmin's own message. Never retried:
    /// retrying a wrong password can lock an account.
    #[error("phpMyAdmin rejected the login: {0}")]
    LoginRejected(String),
    /// Worth another try: the browser crashed, a step timed out, a connection was refused.
    #[error(transparent)]
    Transient(anyhow::Error),
    /// Another try will not help: the table is missing, the export is an HTML page, ...
    #[error(transparent)]
    Fatal(anyhow::Error),
}

/// How long the login form may take to show, and the login to come back with an answer.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a page load may take (phpMyAdmin pages on a slow host).
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the export page may show neither the export form nor an error before giving up.
const EXPORT_FORM_GRACE: Duration = Duration::from_secs(3);
/// A download that has not grown for this long is given up.
const DOWNLOAD_STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a wait looks at the page or the download folder.
const POLL: Duration = Duration::from_millis(50);

/// A finished export: the CSV file, and the browser shutting down in the background.
#[derive(Debug)]
pub struct Export {
    pub csv: PathBuf,
    /// Completes when the browser session, ChromeDriver and Chromium have ended. Await it: the
    /// sync converts the CSV meanwhile instead of waiting for the browser to close.
    pub browser_closed: tokio::task::JoinHandle<()>,
}

/// Exports `settings.table` as CSV into `download_dir`. SQL NULL is written as `null_token`. The
/// browser session, and any process started for it, is ended on every path: before returning an
/// error, and in the background (see [`Export::browser_closed`]) after a success.
pub async fn export_table_csv(
    settings: &SyncSettings,
    download_dir: &Path,
    null_token: &str,
    progress: &Progress,
) -> Result<Export, ExportError> {
    progress.enter(Phase::StartingBrowser);
    let browser = Browser::start(&settings.browser, download_dir)
        .await
        .map_err(|e| redact(e, settings.password.expose()))?;
    match run(&browser, settings, null_token, progress).await {
        Ok(csv) => Ok(Export {
            csv,
            browser_closed: tokio::spawn(browser.close()),
        }),
        Err(e) => {
            browser.save_failure(&settings.failures_dir).await;
            browser.close().await;
            Err(redact(e, settings.password.expose()))
        }
    }
}

async fn run(
    browser: &Browser,
    settings: &SyncSettings,
    null_token: &str,
    progress: &Progress,
) -> Result<PathBuf, ExportError> {
    let client = browser.client();
    progress.enter(Phase::LoggingIn);
    open_login_page(client, &settings.pma_url).await?;
    log_in(client, &settings.username, settings.password.expose()).await?;

    progress.enter(Phase::Exporting);
    open_export_page(client, settings).await?;
    choose_csv_options(client, null_token).await?;
    let before = entries(browser.download_dir()).map_err(ExportError::Transient)?;
    click_export(client).await?;

    progress.enter(Phase::Downloading);
    let file = wait_for_download(client, browser.download_dir(), &before, settings.timeout).await?;
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    progress.note("downloaded bytes", size);
    check_is_csv(&file)?;
    Ok(file)
}

/// Opens phpMyAdmin and waits until the login form is displayed (it is hidden until JavaScript
/// runs).
async fn open_login_page(client: &Client, url: &url::Url) -> Result<(), ExportError> {
    let unreachable = |detail: String| {
        ExportError::Transient(anyhow!("phpMyAdmin at {url} is unreachable: {detail}"))
    };
    if let Err(e) = step(
        "opening phpMyAdmin",
        PAGE_TIMEOUT,
        client.goto(url.as_str()),
    )
    .await
    {
        let detail = format!("{e:#}");
        if detail.contains("net::ERR_") {
            return Err(unreachable(detail));
        }
        return Err(ExportError::Transient(e));
    }
    if let Some(error) = chrome_error(client).await? {
        return Err(unreachable(error));
    }

    let started = Instant::now();
    loop {
        let found = step(
            "looking for the login form",
            STEP_TIMEOUT,
            client.find_all(Locator::Css("#input_username")),
        )
        .await
        .map_err(ExportError::Transient)?;
        if let Some(field) = found.first() {
            let shown = step(
                "checking the login form",
                STEP_TIMEOUT,
                field.is_displayed(),
            )
            .await
            .map_err(ExportError::Transient)?;
            if shown {
                return Ok(());
            }
        }
        if started.elapsed() > LOGIN_TIMEOUT {
            let title = step("reading the page title", STEP_TIMEOUT, client.title())
                .await
                .unwrap_or_default();
            return Err(ExportError::Transient(anyhow!(
                "phpMyAdmin's login form did not appear at {url} within {}s (page title: {title:?})",
                LOGIN_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The error of a Chromium error page (connection refused, DNS failure), if that is what shows.
async fn chrome_error(client: &Client) -> Result<Option<String>, ExportError> {
    let url = step(
        "reading the page address",
        STEP_TIMEOUT,
        client.current_url(),
    )
    .await
    .map_err(ExportError::Transient)?;
    if url.scheme() != "chrome-error" {
        return Ok(None);
    }
    let code = run_js(
        client,
        "reading Chromium's error page",
        "const e = document.querySelector('.error-code'); \
         return e ? e.textContent.trim() : document.body.innerText.slice(0, 200);",
        vec![],
    )
    .await
    .ok()
    .and_then(|v| v.as_str().map(str::to_owned))
    .unwrap_or_default();
    Ok(Some(if code.is_empty() {
        "Chromium error page".to_owned()
    } else {
        code
    }))
}

/// Reads the page's state in one round trip. Texts are whitespace-collapsed.
const PAGE_STATE_JS: &str = r#"
const q = s => document.querySelector(s);
// Only shown messages count: phpMyAdmin keeps some (the HTTPS mismatch warning) hidden in the page.
const shown = e => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden';
const texts = s => Array.from(document.querySelectorAll(s)).filter(shown)
  .map(e => e.textContent.replace(/\s+/g, ' ').trim()).filter(t => t);
const all = [...texts('.alert-danger[role=alert]'), ...texts('div.error'), ...texts('#pma_errors')];
const errors = all.filter((t, i) => all.indexOf(t) === i && !all.some((o, j) => j !== i && o !== t && o.includes(t)));
return {
  submitted: !!window.__pmaCacheSubmitted,
  ready: document.readyState !== 'loading',
  loginForm: !!q('#login_form'),
  loggedIn: !q('#login_form') && !!(q('#pma_navigation') || q('a.logout')),
  exportForm: !!q('form[name=dump]'),
  errors: errors,
  title: document.title,
};
"#;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PageState {
    submitted: bool,
    ready: bool,
    login_form: bool,
    logged_in: bool,
    export_form: bool,
    errors: Vec<String>,
    title: String,
}

impl PageState {
    fn message(&self) -> String {
        self.errors.join(" ")
    }
}

async fn page_state(client: &Client) -> Result<PageState, ExportError> {
    let value = run_js(client, "reading the page", PAGE_STATE_JS, vec![])
        .await
        .map_err(ExportError::Transient)?;
    serde_json::from_value(value)
        .context("unexpected page state")
        .map_err(ExportError::Transient)
}

async fn run_js(
    client: &Client,
    what: &str,
    script: &str,
    args: Vec<Value>,
) -> anyhow::Result<Value> {
    step(what, STEP_TIMEOUT, client.execute(script, args)).await
}

/// Types the credentials, submits, and waits for phpMyAdmin's answer.
async fn log_in(client: &Client, username: &str, password: &str) -> Result<(), ExportError> {
    for (selector, value, what) in [
        ("#input_username", username, "typing the user name"),
        ("#input_password", password, "typing the password"),
    ] {
        let field = step(what, STEP_TIMEOUT, client.find(Locator::Css(selector)))
            .await
            .map_err(ExportError::Transient)?;
        step(what, STEP_TIMEOUT, field.clear())
            .await
            .map_err(ExportError::Transient)?;
        step(what, STEP_TIMEOUT, field.send_keys(value))
            .await
            .map_err(ExportError::Transient)?;
    }
    // Marks this document, so that the wait below only reads the page that answers the login.
    run_js(
        client,
        "marking the login page",
        "window.__pmaCacheSubmitted = true; return null;",
        vec![],
    )
    .await
    .map_err(ExportError::Transient)?;
    let go = step(
        "finding the login button",
        STEP_TIMEOUT,
        client.find(Locator::Css("#input_go")),
    )
    .await
    .map_err(ExportError::Transient)?;
    step("submitting the login form", PAGE_TIMEOUT, go.click())
        .await
        .map_err(ExportError::Transient)?;

    let started = Instant::now();
    loop {
        let state = page_state(client).await?;
        if !state.submitted && state.ready {
            if state.logged_in {
                return Ok(());
            }
            if !state.errors.is_empty() {
                return Err(login_failure(state.message()));
            }
        }
        if started.elapsed() > LOGIN_TIMEOUT {
            return Err(ExportError::Transient(anyhow!(
                "phpMyAdmin gave no answer to the login within {}s (page title: {:?})",
                LOGIN_TIMEOUT.as_secs(),
                state.title
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A refused login is final; phpMyAdmin failing to reach its own MySQL server is not.
fn login_failure(message: String) -> ExportError {
    const SERVER_DOWN: [&str; 5] = [
        "(HY000/2002)",
        "(HY000/2003)",
        "(HY000/2006)",
        "Connection refused",
        "server has gone away",
    ];
    if SERVER_DOWN.iter().any(|s| message.contains(s)) {
        ExportError::Transient(anyhow!(
            "phpMyAdmin cannot reach its MySQL server: {message}"
        ))
    } else {
        ExportError::LoginRejected(message)
    }
}

/// Opens the table's export page: phpMyAdmin 5.1+ route first, then the 4.9/5.0 script.
async fn open_export_page(client: &Client, settings: &SyncSettings) -> Result<(), ExportError> {
    let mut modern = settings
        .pma_url
        .join("index.php")
        .context("building the export page address")
        .map_err(ExportError::Fatal)?;
    modern
        .query_pairs_mut()
        .append_pair("route", "/table/export")
        .append_pair("db", &settings.database)
        .append_pair("table", &settings.table);
    let mut legacy = settings
        .pma_url
        .join("tbl_export.php")
        .context("building the export page address")
        .map_err(ExportError::Fatal)?;
    legacy
        .query_pairs_mut()
        .append_pair("db", &settings.database)
        .append_pair("table", &settings.table);

    let mut last = PageState::default();
    for url in [&modern, &legacy] {
        step(
            "opening the export page",
            PAGE_TIMEOUT,
            client.goto(url.as_str()),
        )
        .await
        .map_err(ExportError::Transient)?;
        if let Some(error) = chrome_error(client).await? {
            return Err(ExportError::Transient(anyhow!(
                "phpMyAdmin at {} is unreachable: {error}",
                settings.pma_url
            )));
        }
        let started = Instant::now();
        loop {
            let state = page_state(client).await?;
            if state.ready && state.export_form {
                return Ok(());
            }
            if state.ready && state.login_form {
                return Err(ExportError::Transient(anyhow!(
                    "phpMyAdmin asked to log in again on the export page: {}",
                    state.message()
                )));
            }
            if state.ready && started.elapsed() > EXPORT_FORM_GRACE {
                last = state;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
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

async fn choose_csv_options(client: &Client, null_token: &str) -> Result<(), ExportError> {
    let format = step(
        "finding the format list",
        STEP_TIMEOUT,
        client.find(Locator::Css("#plugins")),
    )
    .await
    .map_err(ExportError::Transient)?;
    step(
        "choosing the CSV format",
        STEP_TIMEOUT,
        format.select_by_value("csv"),
    )
    .await
    .map_err(|e| ExportError::Fatal(e.context("phpMyAdmin offers no CSV export")))?;
    let result = run_js(
        client,
        "setting the CSV options",
        CSV_OPTIONS_JS,
        vec![json!(null_token)],
    )
    .await
    .map_err(ExportError::Transient)?;
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

async fn click_export(client: &Client) -> Result<(), ExportError> {
    let go = step(
        "finding the Export button",
        STEP_TIMEOUT,
        client.find(Locator::Css("#buttonGo")),
    )
    .await
    .map_err(ExportError::Transient)?;
    // At small window sizes other elements can cover the button; bring it to the middle first.
    run_js(
        client,
        "scrolling to the Export button",
        "document.getElementById('buttonGo').scrollIntoView({block: 'center'}); return null;",
        vec![],
    )
    .await
    .map_err(ExportError::Transient)?;
    if let Err(e) = step("clicking the Export button", PAGE_TIMEOUT, go.click()).await {
        let detail = format!("{e:#}");
        if !detail.contains("click intercepted") && !detail.contains("not interactable") {
            return Err(ExportError::Transient(e));
        }
        tracing::warn!("the Export button could not be clicked ({detail}); submitting by script");
        run_js(
            client,
            "clicking the Export button by script",
            "document.getElementById('buttonGo').click(); return null;",
            vec![],
        )
        .await
        .map_err(ExportError::Transient)?;
    }
    Ok(())
}

/// The names in `dir`, to tell the new download from what was there before.
fn entries(dir: &Path) -> anyhow::Result<HashSet<OsString>> {
    let mut names = HashSet::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        names.insert(entry?.file_name());
    }
    Ok(names)
}

/// A new file in the download folder, as seen by one look.
#[derive(Debug, PartialEq, Eq)]
struct Download {
    path: PathBuf,
    size: u64,
    partial: bool,
}

fn new_downloads(dir: &Path, before: &HashSet<OsString>) -> anyhow::Result<Vec<Download>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if before.contains(&name) || name.to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let partial = name.to_string_lossy().ends_with(".crdownload");
        found.push(Download {
            path: entry.path(),
            size: meta.len(),
            partial,
        });
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// Waits for a finished download: a new file that is not `*.crdownload` and whose size held
/// between two looks. While nothing arrives, the page is checked for an error instead.
async fn wait_for_download(
    client: &Client,
    dir: &Path,
    before: &HashSet<OsString>,
    limit: Duration,
) -> Result<PathBuf, ExportError> {
    let started = Instant::now();
    let mut last_growth = Instant::now();
    let mut last_total = 0u64;
    let mut candidate: Option<(PathBuf, u64)> = None;
    let mut next_page_check = Instant::now() + Duration::from_secs(2);
    loop {
        let found = new_downloads(dir, before).map_err(ExportError::Transient)?;
        let total: u64 = found.iter().map(|d| d.size).sum();
        if total != last_total {
            last_total = total;
            last_growth = Instant::now();
        }
        let finished: Vec<&Download> = found.iter().filter(|d| !d.partial).collect();
        if found.iter().all(|d| !d.partial) && finished.len() == 1 {
            let now = (finished[0].path.clone(), finished[0].size);
            if candidate.as_ref() == Some(&now) {
                return Ok(now.0);
            }
            candidate = Some(now);
        } else {
            candidate = None;
        }
        if finished.len() > 1 {
            return Err(ExportError::Fatal(anyhow!(
                "more than one new file appeared in {}: {:?}",
                dir.display(),
                finished.iter().map(|d| &d.path).collect::<Vec<_>>()
            )));
        }
        if found.is_empty() && Instant::now() >= next_page_check {
            // No download yet: phpMyAdmin may have answered with a page instead of a file.
            next_page_check = Instant::now() + Duration::from_secs(2);
            if let Some(error) = chrome_error(client).await? {
                return Err(ExportError::Transient(anyhow!(
                    "the export request failed: {error}"
                )));
            }
            let state = page_state(client).await?;
            if state.ready && !state.export_form && !state.errors.is_empty() {
                return Err(ExportError::Fatal(anyhow!(
                    "phpMyAdmin answered the export with an error page: {}",
                    state.message()
                )));
            }
            if state.ready && state.login_form {
                return Err(ExportError::Transient(anyhow!(
                    "phpMyAdmin answered the export with its login page (session expired?)"
                )));
            }
        }
        if started.elapsed() > limit {
            return Err(ExportError::Transient(anyhow!(
                "the download did not finish within {}s ({last_total} bytes so far)",
                limit.as_secs()
            )));
        }
        if last_growth.elapsed() > DOWNLOAD_STALL_TIMEOUT {
            return Err(ExportError::Transient(anyhow!(
                "the download stalled: no new bytes for {}s ({last_total} bytes so far)",
                DOWNLOAD_STALL_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Refuses an empty file or an HTML page saved under a CSV name.
fn check_is_csv(file: &Path) -> Result<(), ExportError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(1024);
    std::fs::File::open(file)
        .and_then(|f| f.take(1024).read_to_end(&mut head))
        .with_context(|| format!("cannot read the download {}", file.display()))
        .map_err(ExportError::Transient)?;
    if head.is_empty() {
        return Err(ExportError::Fatal(anyhow!(
            "phpMyAdmin returned an empty file instead of CSV ({})",
            file.display()
        )));
    }
    if looks_like_html(&head) {
        let page = std::fs::read(file).unwrap_or_default();
        let said = html_error_text(&String::from_utf8_lossy(&page))
            .map(|m| format!(": phpMyAdmin said: {m}"))
            .unwrap_or_default();
        return Err(ExportError::Fatal(anyhow!(
            "phpMyAdmin returned an HTML page instead of CSV (session expired, or a missing table?) \
             in {}{said}",
            file.display()
        )));
    }
    Ok(())
}

/// The text of the first error box in a phpMyAdmin page, tags stripped, shortened; the MySQL
/// error itself when the box quotes one.
fn html_error_text(html: &str) -> Option<String> {
    let start = ["alert-danger", "class=\"error\""]
        .iter()
        .filter_map(|marker| html.find(marker))
        .min()?;
    let from = html[start..].find('>').map(|i| start + i + 1)?;
    let chunk: String = html[from..].chars().take(4000).collect();
    let mut text = String::new();
    let mut in_tag = false;
    for c in chunk.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text
        .replace("&nbsp;", " ")
        .replace("&#039;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = match text.split_once("MySQL said:") {
        Some((_, said)) => said.trim().to_owned(),
        None => text,
    };
    let short: String = text.chars().take(300).collect();
    (!short.is_empty()).then_some(short)
}

/// True when the start of a file looks like an HTML page rather than CSV.
fn looks_like_html(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let text = text.trim_start_matches('\u{feff}').trim_start();
    let lower = text.to_ascii_lowercase();
    text.starts_with('<') || lower.contains("<!doctype") || lower.contains("<html")
}

/// Removes the password from an error's text, should phpMyAdmin or a driver ever echo it.
fn redact(error: ExportError, password: &str) -> ExportError {
    if password.is_empty() {
        return error;
    }
    match error {
        ExportError::LoginRejected(m) if m.contains(password) => {
            ExportError::LoginRejected(m.replace(password, "[redacted]"))
        }
        ExportError::Transient(e) if format!("{e:#}").contains(password) => {
            ExportError::Transient(anyhow!(format!("{e:#}").replace(password, "[redacted]")))
        }
        ExportError::Fatal(e) if format!("{e:#}").contains(password) => {
            ExportError::Fatal(anyhow!(format!("{e:#}").replace(password, "[redacted]")))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_pages_are_told_from_csv() {
        assert!(looks_like_html(b"<!DOCTYPE HTML>\n<html lang=\"en\">"));
        assert!(looks_like_html(
            b"\n\n  <html><body>Your session has expired"
        ));
        assert!(looks_like_html("\u{feff}<!doctype html>".as_bytes()));
        assert!(!looks_like_html(b"\"id\",\"name\"\n\"1\",\"#1001\"\n"));
        assert!(!looks_like_html(b"id,note\n1,\"a < b\"\n"));
    }

    #[test]
    fn the_error_box_of_an_html_page_is_quoted() {
        let page = r#"<!DOCTYPE html><html><body><div class="alert alert-danger" role="alert">
            <h1>Error</h1><p>SQL query:</p><code>SELECT 1</code><p>MySQL said: </p>
            <code>#1146 - Table &#039;shop.x&#039; doesn&#039;t exist</code></div></body></html>"#;
        assert_eq!(
            html_error_text(page).as_deref(),
            Some("#1146 - Table 'shop.x' doesn't exist")
        );
        assert_eq!(html_error_text("<html><body>fine</body></html>"), None);
    }

    #[test]
    fn a_refused_login_is_final_but_a_down_server_is_not() {
        let denied = "Cannot log in to the MySQL server mysqli::real_connect(): (HY000/1045): \
                      Access denied for user 'pma'@'localhost' (using password: YES)";
        assert!(
            matches!(login_failure(denied.into()), ExportError::LoginRejected(m) if m == denied)
        );
        let down = "Cannot log in to the MySQL server mysqli::real_connect(): (HY000/2002): \
                    Connection refused";
        assert!(matches!(
            login_failure(down.into()),
            ExportError::Transient(_)
        ));
    }

    #[test]
    fn the_password_never_survives_in_an_error() {
        let e = redact(
            ExportError::LoginRejected("bad s3cret here".into()),
            "s3cret",
        );
        assert_eq!(
            e.to_string(),
            "phpMyAdmin rejected the login: bad [redacted] here"
        );
        let e = redact(
            ExportError::Transient(anyhow!("typed s3cret").context("step")),
            "s3cret",
        );
        assert!(!format!("{e:#}").contains("s3cret"));
    }

    #[test]
    fn only_new_finished_files_count_as_the_download() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.csv"), b"x").unwrap();
        std::fs::create_dir(dir.path().join(".chrome-profile-1")).unwrap();
        let before = entries(dir.path()).unwrap();
        std::fs::write(dir.path().join("orders.csv.crdownload"), b"abc").unwrap();
        let found = new_downloads(dir.path(), &before).unwrap();
        assert_eq!(found.len(), 1);
        assert!(found[0].partial);
        std::fs::rename(
            dir.path().join("orders.csv.crdownload"),
            dir.path().join("orders.csv"),
        )
        .unwrap();
        let found = new_downloads(dir.path(), &before).unwrap();
        assert_eq!(
            found,
            vec![Download {
                path: dir.path().join("orders.csv"),
                size: 3,
                partial: false
            }]
        );
    }
}
