//! Logging in to phpMyAdmin (cookie auth): wait for the form, type, submit, read the answer.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use fantoccini::{Client, Locator};

use crate::sync::error::ExportError;
use crate::sync::page::{page_state, run_js, PAGE_TIMEOUT, POLL};
use crate::sync::session::{step, STEP_TIMEOUT};

/// How long the login form may take to show, and the login to come back with an answer.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Types the credentials into the shown login form, submits, and waits for phpMyAdmin's answer.
pub async fn log_in(client: &Client, username: &str, password: &str) -> Result<(), ExportError> {
    for (selector, value, what) in [
        ("#input_username", username, "typing the user name"),
        ("#input_password", password, "typing the password"),
    ] {
        let field = step(what, STEP_TIMEOUT, client.find(Locator::Css(selector))).await?;
        step(what, STEP_TIMEOUT, field.clear()).await?;
        step(what, STEP_TIMEOUT, field.send_keys(value)).await?;
    }
    // Marks this document, so that the wait below only reads the page that answers the login.
    run_js(
        client,
        "marking the login page",
        "window.__pmaCacheSubmitted = true; return null;",
        vec![],
    )
    .await?;
    let go = step(
        "finding the login button",
        STEP_TIMEOUT,
        client.find(Locator::Css("#input_go")),
    )
    .await?;
    step("submitting the login form", PAGE_TIMEOUT, go.click()).await?;

    let started = Instant::now();
    loop {
        let state = page_state(client).await?;
        if !state.submitted && state.ready {
            if state.logged_in || state.export_form {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
