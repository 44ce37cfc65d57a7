//! The phpMyAdmin flow, as a person would do it in the browser: log in, open the table's export
//! page, export CSV with a NULL token, and collect the downloaded file. The steps live in their
//! own rooms ([`login`](super::login), [`export_page`](super::export_page),
//! [`download`](super::download)); this file puts them in order.
//!
//! Every wait polls the page for its outcome (no fixed sleeps), and every WebDriver command runs
//! under a time limit (see [`step`](super::session::step)).

use std::path::{Path, PathBuf};

use crate::config::SyncSettings;
use crate::sync::download::{check_is_csv, entries, wait_for_download};
use crate::sync::error::ExportError;
use crate::sync::evidence::save_failure;
use crate::sync::export_page::{choose_csv_options, click_export, open_export_page};
use crate::sync::login::{log_in, wait_for_login_form};
use crate::sync::page::open;
use crate::sync::session::Browser;
use crate::sync::status::{Phase, Progress};

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
        .map_err(|e| e.redact(settings.password.expose()))?;
    match run(&browser, settings, null_token, progress).await {
        Ok(csv) => Ok(Export {
            csv,
            browser_closed: tokio::spawn(browser.close()),
        }),
        Err(e) => {
            save_failure(browser.client(), &settings.failures_dir).await;
            browser.close().await;
            Err(e.redact(settings.password.expose()))
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
    open(client, "opening phpMyAdmin", &settings.pma_url).await?;
    wait_for_login_form(client, &settings.pma_url).await?;
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
