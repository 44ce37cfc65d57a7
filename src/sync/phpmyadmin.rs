//! The phpMyAdmin flow, as a person would do it in the browser: log in, open the table's export
//! page, export CSV with a NULL token, and collect the downloaded file.

use std::path::{Path, PathBuf};

use crate::config::SyncSettings;
use crate::sync::status::Progress;

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

/// Exports `settings.table` as CSV into `download_dir` and returns the file's path. SQL NULL is
/// written as `null_token`. The browser session, and any process started for it, is ended on
/// every path.
pub async fn export_table_csv(
    settings: &SyncSettings,
    download_dir: &Path,
    null_token: &str,
    progress: &Progress,
) -> Result<PathBuf, ExportError> {
    let _ = (settings, download_dir, null_token, progress);
    Err(ExportError::Fatal(anyhow::anyhow!("not implemented")))
}
