//! Helpers shared by the integration tests: the app under test ([`app`]), the test bed
//! ([`testbed`]), a private Redis ([`redis`]).

use std::future::Future;
use std::time::{Duration, Instant};

pub mod app;
pub mod redis;
pub mod testbed;

/// Taken by every test that drives a browser (a sync, an export, the dashboard): one browser at a
/// time on a 2-core machine, so that none times out waiting for the CPU.
pub static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A loopback port free now (for a process that binds it itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How often [`eventually`] asks again.
const POLL: Duration = Duration::from_millis(50);

/// Asks `check` again and again until it gives `Ok`, for `limit` at most, and returns what it
/// gave; past `limit` fails the test with `what` and the last `Err` (what was seen instead).
pub async fn eventually<T, Fut>(limit: Duration, what: &str, mut check: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => {
                panic!("{what}: not within {limit:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// [`eventually`] for a check that blocks (outside a runtime).
pub fn eventually_blocking<T>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => {
                panic!("{what}: not within {limit:?}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}
