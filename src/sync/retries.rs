//! Retries of a transient export failure (browser crash, timeout, connection refused), with
//! backoff; a rejected login or a missing table is not retried.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use tokio_util::sync::CancellationToken;

use super::error::{ExportError, LoginRejected};
use super::follow::FollowedConversion;
use super::phpmyadmin::export_table_csv;
use super::session::Browser;
use super::status::Progress;
use crate::cache::TableSchema;
use crate::config::SyncSettings;

/// Export attempts for transient failures (browser crash, timeout, connection refused).
const EXPORT_ATTEMPTS: u32 = 3;
/// Wait before the second attempt; doubled before each further one.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);

/// The export's CSV, and the conversion that has been reading it since it appeared, if any.
pub struct Exported {
    pub csv: PathBuf,
    /// The table's declared structure, when phpMyAdmin gave it.
    pub schema: Option<TableSchema>,
    pub following: Option<FollowedConversion>,
}

/// Exports the table, trying again after a transient failure; the CSV comes with the conversion
/// that followed its download, if any.
pub async fn export_with_retries(
    settings: &SyncSettings,
    browser: &mut Option<Browser>,
    null_token: &str,
    json_capacity: usize,
    progress: &Progress,
    stop: &CancellationToken,
) -> anyhow::Result<Exported> {
    let what = format!(
        "exporting {}.{} from phpMyAdmin at {}",
        settings.database, settings.table, settings.pma_url
    );
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=EXPORT_ATTEMPTS {
        let mut following = None;
        let mut follow = |file: std::fs::File| match FollowedConversion::start(
            file,
            null_token.to_owned(),
            json_capacity,
            stop.child_token(),
        ) {
            Ok(conversion) => following = Some(conversion),
            Err(e) => tracing::warn!(
                "cannot read the download while it is written; it is converted once complete: {e}"
            ),
        };
        let exported =
            export_table_csv(settings, browser, null_token, progress, stop, &mut follow).await;
        if exported.is_err() {
            // The conversion of a failed attempt reads a file that will not complete.
            if let Some(conversion) = following.take() {
                conversion.abandon().await;
            }
        }
        match exported {
            Ok((csv, schema)) => {
                return Ok(Exported {
                    csv,
                    schema,
                    following,
                })
            }
            Err(ExportError::Transient(e)) if attempt < EXPORT_ATTEMPTS => {
                tracing::warn!(
                    attempt,
                    retry_in = %humantime::format_duration(backoff),
                    "{what} failed, will retry: {e:#}"
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => bail!("{what} was cancelled"),
                }
                backoff *= 2;
            }
            Err(ExportError::LoginRejected(message)) => {
                return Err(LoginRejected {
                    user: settings.username.clone(),
                    message,
                }
                .into())
            }
            Err(ExportError::Transient(e)) => {
                return Err(e.context(format!("{what} failed {EXPORT_ATTEMPTS} times")))
            }
            Err(ExportError::Fatal(e)) => return Err(e.context(what)),
            Err(ExportError::Cancelled) => bail!("{what} was cancelled"),
        }
    }
    unreachable!("the last attempt returns")
}
