//! Looking at the page the browser shows: opening an address (and telling Chromium's own error
//! pages apart), running a script, and reading phpMyAdmin's state in one round trip.

use std::time::Duration;

use anyhow::{anyhow, Context};
use fantoccini::Client;
use serde_json::Value;

use crate::sync::error::ExportError;
use crate::sync::session::{step, STEP_TIMEOUT};

/// How long a page load may take (phpMyAdmin pages on a slow host).
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a wait looks at the page or the download folder.
pub const POLL: Duration = Duration::from_millis(50);

/// Chromium's network errors that another try will not fix: the address itself is wrong.
const FATAL_NET_ERRORS: [&str; 5] = [
    "ERR_UNSAFE_PORT",
    "ERR_NAME_NOT_RESOLVED",
    "ERR_INVALID_URL",
    "ERR_DISALLOWED_URL_SCHEME",
    "ERR_BLOCKED_BY_CLIENT",
];

/// Opens `url`. A Chromium error page (connection refused, blocked port, unknown host) is an
/// error that names Chromium's code at once, instead of a wait for a form that never comes.
pub async fn open(client: &Client, what: &str, url: &url::Url) -> Result<(), ExportError> {
    if let Err(e) = step(what, PAGE_TIMEOUT, client.goto(url.as_str())).await {
        let detail = format!("{e:#}");
        return Err(match net_error_code(&detail) {
            Some(code) => unreachable(url, code),
            None => e,
        });
    }
    match chrome_error(client).await? {
        Some(code) => Err(unreachable(url, &code)),
        None => Ok(()),
    }
}

fn unreachable(url: &url::Url, code: &str) -> ExportError {
    let e = anyhow!("phpMyAdmin at {url} is unreachable: {code}");
    if FATAL_NET_ERRORS.iter().any(|f| code.contains(f)) {
        ExportError::Fatal(e)
    } else {
        ExportError::Transient(e)
    }
}

/// The `net::ERR_...` code in a WebDriver error's text.
fn net_error_code(detail: &str) -> Option<&str> {
    let start = detail.find("net::ERR_")?;
    let code = &detail[start..];
    let end = code
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(code.len());
    Some(&code[..end])
}

/// Tells a Chromium error page (connection refused, blocked port, unknown host) by its
/// `neterror` body, whatever address it shows, and reads its code.
const CHROME_ERROR_JS: &str = r#"
const body = document.body;
if (location.protocol !== 'chrome-error:' && !(body && body.classList.contains('neterror'))) return null;
const e = document.querySelector('.error-code');
const code = e ? e.textContent.trim() : (body ? body.innerText.slice(0, 200) : '');
return code || 'Chromium error page';
"#;

/// The error code of a Chromium error page, if that is what shows.
pub async fn chrome_error(client: &Client) -> Result<Option<String>, ExportError> {
    let code = run_js(
        client,
        "looking for Chromium's error page",
        CHROME_ERROR_JS,
        vec![],
    )
    .await?;
    Ok(code.as_str().map(str::to_owned))
}

/// Runs `script` in the page; its return value.
pub async fn run_js(
    client: &Client,
    what: &str,
    script: &str,
    args: Vec<Value>,
) -> Result<Value, ExportError> {
    step(what, STEP_TIMEOUT, client.execute(script, args)).await
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
const user = q('#input_username');
return {
  submitted: !!window.__pmaCacheSubmitted,
  ready: document.readyState !== 'loading',
  loginForm: !!q('#login_form'),
  loginShown: !!user && shown(user),
  loggedIn: !q('#login_form') && !!(q('#pma_navigation') || q('a.logout')),
  exportForm: !!q('form[name=dump]'),
  errors: errors,
  title: document.title,
  address: location.href,
};
"#;

/// What a phpMyAdmin page shows, as far as the flow cares.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PageState {
    /// The page is the one the login was submitted from (the answer has not loaded yet).
    pub submitted: bool,
    /// The document has been parsed.
    pub ready: bool,
    pub login_form: bool,
    /// The login form is displayed (phpMyAdmin hides it until its scripts ran).
    pub login_shown: bool,
    pub logged_in: bool,
    pub export_form: bool,
    /// Shown error messages, deduplicated.
    pub errors: Vec<String>,
    pub title: String,
    pub address: String,
}

impl PageState {
    /// The shown error messages as one text.
    pub fn message(&self) -> String {
        self.errors.join(" ")
    }
}

/// Reads the state of the page shown now.
pub async fn page_state(client: &Client) -> Result<PageState, ExportError> {
    let value = run_js(client, "reading the page", PAGE_STATE_JS, vec![]).await?;
    serde_json::from_value(value)
        .context("unexpected page state")
        .map_err(ExportError::Transient)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chromium_error_codes_are_found_and_sorted_by_whether_retrying_helps() {
        let detail =
            "opening phpMyAdmin failed: unknown error: net::ERR_UNSAFE_PORT\n  (Session info)";
        assert_eq!(net_error_code(detail), Some("net::ERR_UNSAFE_PORT"));
        assert_eq!(net_error_code("timed out"), None);
        let url = url::Url::parse("http://127.0.0.1:6000/").unwrap();
        assert!(matches!(
            unreachable(&url, "net::ERR_UNSAFE_PORT"),
            ExportError::Fatal(_)
        ));
        assert!(matches!(
            unreachable(&url, "ERR_CONNECTION_REFUSED"),
            ExportError::Transient(_)
        ));
    }
}
