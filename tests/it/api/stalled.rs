//! Subscribers that stop reading: dropped after `SSE_WRITE_TIMEOUT`, and while they last they
//! pin the version they were being sent, never the versions that land after it.
//!
//! A stalled subscriber is a raw connection with a small receive buffer that never reads: the
//! server's writes stop once the kernel's buffers are full, in the middle of a large event.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::load::{
    count, import_in_background, read_to_end, rss_of, subscribe, subscribe_with, wait_for_version,
};
use crate::helpers::app::*;

/// The number of open event streams, from `/metrics`.
pub(super) async fn subscribers(app: &TestApp) -> u64 {
    let text = app
        .get_with("/metrics", &[("X-API-Key", KEY)])
        .await
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("pma_cache_sse_subscribers "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no pma_cache_sse_subscribers in:\n{text}")) as u64
}

/// Waits until `/metrics` counts `n` open event streams.
pub(super) async fn wait_for_subscribers(app: &TestApp, n: u64, limit: Duration) {
    let what = format!("{n} event streams open");
    crate::helpers::eventually(limit, &what, || async {
        match subscribers(app).await {
            open if open == n => Ok(()),
            open => Err(format!("{open} open")),
        }
    })
    .await
}

/// A subscriber that stops reading in the middle of a large event is disconnected once its
/// writes have made no progress for `SSE_WRITE_TIMEOUT`, while a subscriber that reads gets
/// every event and `/fetch-data` keeps answering. The body (about 8 MB) is larger than what
/// the kernel buffers between the two ends, so the server's writes stall for real.
#[tokio::test]
async fn a_subscriber_that_stops_reading_is_dropped_after_the_write_timeout() {
    const ROWS: usize = 60_000;
    let app = spawn_app_with(Options {
        // The process itself is under test (its memory, its signals, its log).
        process: true,
        seed: Some(leak(orders_csv(ROWS, "first"))),
        env: vec![
            ("SSE_WRITE_TIMEOUT", "2s".into()),
            ("RUST_LOG", "info".into()),
        ],
        ..Options::default()
    })
    .await;
    wait_for_version(&app, ROWS).await;
    let body_len = app.get_fetch_data("").await.bytes().await.unwrap().len();

    let mut stalled = subscribe(&app, "").await;
    let reader = tokio::spawn(read_to_end(subscribe(&app, "").await));
    wait_for_subscribers(&app, 2, Duration::from_secs(20)).await;

    // The stalled one goes; the reader stays (it waits for the next version).
    wait_for_subscribers(&app, 1, Duration::from_secs(60)).await;
    let r = app.get_fetch_data("").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["count"], ROWS);

    // The connection was closed before the whole event arrived.
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stalled.read_to_end(&mut received))
        .await
        .expect("the server closed the stalled connection")
        .ok();
    assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(count(&received, b"{\"type\":\"cached\""), 1);
    assert!(
        received.len() < body_len,
        "{} bytes received of a {body_len} byte event",
        received.len()
    );
    assert_eq!(count(&received, b"{\"type\":\"done\"}"), 0);

    import_in_background(&app, "id,name\n7,fresh\n".into()).await;
    let bytes = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the reader's stream ends after done")
        .unwrap();
    assert_eq!(count(&bytes, b"{\"type\":\"cached\""), 1);
    assert_eq!(count(&bytes, b"first order 59999, shipped"), 1);
    assert_eq!(count(&bytes, b"{\"type\":\"updated\""), 1);
    assert_eq!(count(&bytes, b"{\"type\":\"done\"}"), 1);
    wait_for_subscribers(&app, 0, Duration::from_secs(20)).await;
}

/// SIGTERM stops the server within its shutdown grace even while a subscriber that stopped
/// reading holds a write of a large event (it would otherwise wait for `SSE_WRITE_TIMEOUT`, here
/// ten minutes); `stop` allows 10 s.
#[tokio::test]
async fn sigterm_stops_the_server_even_while_a_stalled_subscriber_holds_a_write() {
    const ROWS: usize = 60_000;
    let app = spawn_app_with(Options {
        // The process itself is under test (its memory, its signals, its log).
        process: true,
        seed: Some(leak(orders_csv(ROWS, "first"))),
        env: vec![("SSE_WRITE_TIMEOUT", "10m".into())],
        ..Options::default()
    })
    .await;
    wait_for_version(&app, ROWS).await;
    let stalled = subscribe(&app, "").await;
    wait_for_subscribers(&app, 1, Duration::from_secs(20)).await;
    let status = app.stop();
    assert!(status.success(), "{status}");
    drop(stalled);
}

/// A stalled subscriber whose event fits whole in the kernel's buffers (a small table, in gzip)
/// leaves the server no write to wait on: the kernel holds the bytes and the client's window is
/// shut. It is dropped all the same, by the kernel's `TCP_USER_TIMEOUT`, before the next
/// keep-alive (15 s) could even be written.
#[tokio::test]
async fn a_stalled_subscriber_is_dropped_even_when_its_event_fits_in_the_kernels_buffers() {
    let app = spawn_app_with(Options {
        // The process itself is under test (its memory, its signals, its log).
        process: true,
        seed: Some(leak(orders_csv(2_000, "small"))),
        env: vec![("SSE_WRITE_TIMEOUT", "2s".into())],
        ..Options::default()
    })
    .await;
    wait_for_version(&app, 2_000).await;
    let gzip_len = app
        .get_raw(
            "/fetch-data",
            &[("X-API-Key", KEY), ("Accept-Encoding", "gzip")],
        )
        .await
        .bytes()
        .await
        .unwrap()
        .len();
    assert!(gzip_len < 100_000, "the event is small: {gzip_len} bytes");

    let stalled = subscribe_with(&app, "", "gzip").await;
    wait_for_subscribers(&app, 1, Duration::from_secs(20)).await;
    // Dropped within the write timeout and the kernel's probes, not at the next keep-alive.
    wait_for_subscribers(&app, 0, Duration::from_secs(12)).await;
    assert_eq!(app.get_fetch_data("").await.status(), 200);
    drop(stalled);
}

/// Twenty subscribers stop reading in the middle of the first version's `cached` event, then six
/// new versions land. The subscribers pin that one version's body (shared by all twenty), never
/// the versions after it: RSS does not grow with the number of versions.
///
/// RSS also counts what the allocator keeps of freed versions. The server's allocator
/// (jemalloc, with its background threads) gives freed pages back within seconds, so the bounds
/// are checked once it has had the time to, within a deadline; with glibc's malloc RSS climbed
/// by about a body per version even with no subscriber at all (`bench/sse` runs both cases).
///
/// What the server holds at the end: the first version's body (8 MB, the stalled subscribers'),
/// the current version's body with its gzip and zstd variants (about 1.3 bodies), and what it
/// held before any subscriber (the process, and the first version as the current one: `base`).
/// So the growth over `base` is about one body; the bound allows three: that body, and up to two
/// bodies of freed versions the allocator has not given back yet (a version is read, compacted
/// and compressed while the previous one is still served). Between the second version and the
/// last one nothing more is held, so the bound there is one body of allocator slack; a server
/// that kept each version would grow by 1.3 bodies per version, 6.5 bodies in all.
#[tokio::test]
async fn stalled_subscribers_pin_one_version_however_many_versions_land() {
    const ROWS: usize = 60_000;
    const STALLED: usize = 20;
    const VERSIONS: usize = 6;
    let app = spawn_app_with(Options {
        // The process itself is under test (its memory, its signals, its log).
        process: true,
        seed: Some(leak(orders_csv(ROWS, "v0"))),
        env: vec![
            ("SSE_WRITE_TIMEOUT", "10m".into()),
            ("RUST_LOG", "info".into()),
        ],
        ..Options::default()
    })
    .await;
    wait_for_version(&app, ROWS).await;
    let json = app.get_status().await["cache"]["size_bytes"]
        .as_u64()
        .unwrap();
    let (base, _) = rss_of(app.pid());

    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(subscribe(&app, "").await);
    }
    wait_for_subscribers(&app, STALLED as u64, Duration::from_secs(30)).await;
    let mut rss = Vec::new();
    for v in 1..=VERSIONS {
        import_in_background(&app, orders_csv(ROWS - v, &format!("v{v}"))).await;
        wait_for_version(&app, ROWS - v).await;
        rss.push(rss_of(app.pid()).0);
    }
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    assert_eq!(
        subscribers(&app).await,
        STALLED as u64,
        "the stalled subscribers were kept (SSE_WRITE_TIMEOUT=10m)"
    );
    // The allocator gives freed pages back a while after (jemalloc's decay): the bounds must
    // hold once it has, within the deadline.
    let bound = (rss[0] + json).min(base + 3 * json);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = rss[VERSIONS - 1];
    while last > bound && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = rss_of(app.pid()).0;
    }
    let (_, peak) = rss_of(app.pid());
    eprintln!(
        "JSON {}; RSS before subscribers {}, after each version {:?}, at the end {}, peak {}",
        mb(json),
        mb(base),
        rss.iter().map(|&r| mb(r)).collect::<Vec<_>>(),
        mb(last),
        mb(peak)
    );
    assert!(
        last <= rss[0] + json,
        "RSS grew from {} after the second version to {} after the last",
        mb(rss[0]),
        mb(last)
    );
    assert!(
        last <= base + 3 * json,
        "RSS {} after the last version, {} before the subscribers, {} of JSON",
        mb(last),
        mb(base),
        mb(json)
    );
    drop(stalled);
}
