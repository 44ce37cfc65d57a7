//! Helpers shared by the integration tests: the app under test ([`app`]), the test bed
//! ([`testbed`]), a private Redis ([`redis`]).

pub mod app;
pub mod redis;
pub mod testbed;

/// Taken by every test that drives a browser (a sync, an export, the dashboard): one browser at a
/// time on a 2-core machine, so that none times out waiting for the CPU.
pub static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
