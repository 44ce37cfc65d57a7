//! Why an export failed, split by what the caller does about it: retry, give up, or give up and
//! not touch the account again.

use anyhow::anyhow;

use crate::config::Secret;

/// A sync that ended because phpMyAdmin refused the credentials: the syncer tries no login
/// again until the settings change or an admin asks for one.
#[derive(Debug, thiserror::Error)]
#[error("phpMyAdmin rejected the login for user {user:?} (not retried): {message}")]
pub struct LoginRejected {
    pub user: String,
    pub message: String,
}

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
    pub fn redact(self, password: &Secret) -> Self {
        let scrub = |e: anyhow::Error| {
            let text = format!("{e:#}");
            let clean = password.scrub(&text);
            if clean == text {
                e
            } else {
                anyhow!(clean)
            }
        };
        match self {
            ExportError::LoginRejected(m) => ExportError::LoginRejected(password.scrub(&m)),
            ExportError::Transient(e) => ExportError::Transient(scrub(e)),
            ExportError::Fatal(e) => ExportError::Fatal(scrub(e)),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_survives_in_an_error() {
        let secret = Secret::new("s3cret");
        let e = ExportError::LoginRejected("bad s3cret here".into()).redact(&secret);
        assert_eq!(
            e.to_string(),
            "phpMyAdmin rejected the login: bad [redacted] here"
        );
        let e = ExportError::Transient(anyhow!("typed s3cret").context("step")).redact(&secret);
        assert!(!format!("{e:#}").contains("s3cret"));
    }

    #[test]
    fn a_short_password_is_hidden_where_it_stands_alone_and_leaves_words_whole() {
        let secret = Secret::new("a");
        let e = ExportError::LoginRejected("Access denied for 'pma' (password: a)".into())
            .redact(&secret);
        assert_eq!(
            e.to_string(),
            "phpMyAdmin rejected the login: Access denied for 'pma' (password: [redacted])"
        );
        let e = ExportError::Fatal(anyhow!("table a missing")).redact(&Secret::new("ab"));
        assert_eq!(format!("{e:#}"), "table a missing");
        let e = ExportError::Fatal(anyhow!("ab,ab")).redact(&Secret::new("ab"));
        assert_eq!(format!("{e:#}"), "[redacted],[redacted]");
    }
}
