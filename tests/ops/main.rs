//! Operating the service: logging that cannot take it down, metrics, alerts, the dashboard.

#[path = "../support/mod.rs"]
mod support;

mod logging;
