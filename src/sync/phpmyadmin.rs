//! The phpMyAdmin flow, as a person would do it in the browser: open the table's export page,
//! log in there if phpMyAdmin asks, export CSV with a NULL token, and collect the downloaded file.
//! A kept browser that still shows the last export's form submits it again without loading it,
//! and logs in again when phpMyAdmin answers with its login page.
//! The steps live in their own rooms ([`login`](super::login),
//! [`export_page`](super::export_page), [`download`](super::download)); this file puts them in
//! order and decides what happens to the browser.
//!
//! Every wait polls the page for its outcome (no fixed sleeps), and every WebDriver command runs
//! under a time limit (see [`step`](super::session::step)).

use std::path::PathBuf;

use anyhow::anyhow;

use tokio_util::sync::CancellationToken;

use crate::cache::TableSchema;
use crate::config::SyncSettings;
use crate::sync::download::{check_is_csv, entries, wait_for_download, Answer, OnDownload};
use crate::sync::error::ExportError;
use crate::sync::evidence::save_failure;
use crate::sync::export_page::{choose_csv_options, click_export, reach_export_form};
use crate::sync::page::page_state;
use crate::sync::session::Browser;
use crate::sync::status::{Phase, Progress};
use crate::sync::structure::read_structure;

/// An export: the CSV's path in the browser's folder, and the table's structure when it could
/// be read (see [`crate::sync::structure`]).
pub type Export = (PathBuf, Option<TableSchema>);

/// Exports `settings.table` as CSV with the browser in `kept`, starting one if there is none or
/// the one there no longer answers; SQL NULL is written as `null_token`. Returns the CSV's path
/// in the browser's folder; the caller removes it when done. `on_download` gets the download's
/// file as soon as it appears, to read it while it is written.
///
/// After a success the browser stays in `kept`, logged in, for the next export. After a failure
/// or a cancellation it is closed (and awaited), and `kept` is empty.
pub async fn export_table_csv(
    settings: &SyncSettings,
    kept: &mut Option<Browser>,
    null_token: &str,
    progress: &Progress,
    cancel: &CancellationToken,
    on_download: OnDownload<'_>,
) -> Result<Export, ExportError> {
    let outcome = tokio::select! {
        r = export(settings, kept, null_token, progress, on_download) => r,
        () = cancel.cancelled() => Err(ExportError::Cancelled),
    };
    match outcome {
        Ok(csv) => Ok(csv),
        Err(e) => Err(give_up_browser(settings, kept, e).await),
    }
}

/// After a failed export: keeps the evidence of the page (unless cancelled), closes the
/// browser, and returns the error with the password redacted.
pub async fn give_up_browser(
    settings: &SyncSettings,
    kept: &mut Option<Browser>,
    e: ExportError,
) -> ExportError {
    if let Some(browser) = kept.take() {
        if !matches!(e, ExportError::Cancelled) {
            save_failure(browser.client(), &settings.failures_dir).await;
        }
        browser.close().await;
    }
    e.redact(&settings.password)
}

/// Brings the browser in `kept` (starting one if there is none or it no longer answers) to
/// the table's export form, logged in; a kept browser that still shows the last export's form
/// stays there. Returns whether it was already there.
pub async fn open_export_form(
    settings: &SyncSettings,
    kept: &mut Option<Browser>,
    progress: &Progress,
) -> Result<bool, ExportError> {
    if let Some(mut browser) = kept.take() {
        if browser.is_alive().await {
            *kept = Some(browser);
        } else {
            tracing::warn!("the kept browser does not answer; starting a new one");
            browser.close().await;
        }
    }
    let warm = kept.is_some();
    if warm {
        progress.enter(Phase::Exporting);
    } else {
        progress.enter(Phase::StartingBrowser);
        *kept = Some(Browser::start(&settings.browser).await?);
        progress.enter(Phase::LoggingIn);
    }
    let browser = kept.as_mut().expect("a browser was kept or started");
    if warm && shows_last_export_form(browser).await? {
        return Ok(true);
    }
    reach_export_form(browser, settings, progress).await?;
    Ok(false)
}

async fn export(
    settings: &SyncSettings,
    kept: &mut Option<Browser>,
    null_token: &str,
    progress: &Progress,
    on_download: OnDownload<'_>,
) -> Result<Export, ExportError> {
    let at_last_form = open_export_form(settings, kept, progress).await?;
    let browser = kept.as_mut().expect("a browser was kept or started");
    if at_last_form {
        // The last export's page, with its session's token, is still there: submit it again
        // instead of loading it again. An ended session answers with the login page.
        let schema = read_structure(browser.client(), settings).await;
        match submit(browser, settings, null_token, progress, &mut *on_download).await? {
            Answer::File(file) => return Ok((checked(file, progress)?, schema)),
            Answer::LoginPage => {
                tracing::info!("phpMyAdmin answered the export with its login page")
            }
        }
        reach_export_form(browser, settings, progress).await?;
    }
    let schema = read_structure(browser.client(), settings).await;
    match submit(browser, settings, null_token, progress, on_download).await? {
        Answer::File(file) => Ok((checked(file, progress)?, schema)),
        Answer::LoginPage => Err(ExportError::Transient(anyhow!(
            "phpMyAdmin answered the export with its login page (session expired?)"
        ))),
    }
}

/// Whether the browser still shows the export form of the last export, logged in.
async fn shows_last_export_form(browser: &Browser) -> Result<bool, ExportError> {
    let Some(url) = &browser.export_url else {
        return Ok(false);
    };
    let state = page_state(browser.client()).await?;
    Ok(state.ready && state.export_form && !state.login_form && state.address == url.as_str())
}

/// Sets the CSV options on the export form shown, presses Export, and waits for the answer.
async fn submit(
    browser: &Browser,
    settings: &SyncSettings,
    null_token: &str,
    progress: &Progress,
    on_download: OnDownload<'_>,
) -> Result<Answer, ExportError> {
    let client = browser.client();
    choose_csv_options(client, null_token).await?;
    let before = entries(browser.download_dir()).map_err(ExportError::Transient)?;
    click_export(client).await?;
    progress.enter(Phase::Downloading);
    wait_for_download(
        client,
        browser.download_dir(),
        &before,
        settings.timeout,
        on_download,
    )
    .await
}

/// The downloaded file, once it is known to be CSV.
fn checked(file: PathBuf, progress: &Progress) -> Result<PathBuf, ExportError> {
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    progress.note("downloaded bytes", size);
    check_is_csv(&file)?;
    Ok(file)
}
