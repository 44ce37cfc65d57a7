//! Why an export failed, split by what the caller does about it: retry, give up, or give up and
//! not touch the account again.

use anyhow::anyhow;

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
    /// The sync was told to stop (its deadline passed, or the service is shutting down).
    #[error("the export was cancelled")]
    Cancelled,
}

impl ExportError {
    /// Removes `password` from the error's text, should phpMyAdmin or a driver ever echo it.
    pub fn redact(self, password: &str) -> Self {
        if password.is_empty() {
            return self;
        }
        let scrub = |e: anyhow::Error| anyhow!(format!("{e:#}").replace(password, "[redacted]"));
        match self {
            ExportError::LoginRejected(m) if m.contains(password) => {
                ExportError::LoginRejected(m.replace(password, "[redacted]"))
            }
            ExportError::Transient(e) if format!("{e:#}").contains(password) => {
                ExportError::Transient(scrub(e))
            }
            ExportError::Fatal(e) if format!("{e:#}").contains(password) => {
                ExportError::Fatal(scrub(e))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_survives_in_an_error() {
        let e = ExportError::LoginRejected("bad s3cret here".into()).redact("s3cret");
        assert_eq!(
            e.to_string(),
            "phpMyAdmin rejected the login: bad [redacted] here"
        );
        let e = ExportError::Transient(anyhow!("typed s3cret").context("step")).redact("s3cret");
        assert!(!format!("{e:#}").contains("s3cret"));
    }
}
