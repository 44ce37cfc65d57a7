//! Many subscribers: the server's memory stays bounded by what it must hold (the version being
//! sent and the newest), not by the number of subscribers.
//!
//! Subscribers here are plain TCP connections, so a thousand of them cost the test little.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stalled::wait_for_subscribers;
use crate::helpers::app::*;

/// The server's resident and peak resident memory, in bytes.
pub(super) fn rss_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Opens an event stream on a raw connection with a small receive buffer (so a subscriber
/// that does not read stalls the server's writes soon).
pub(super) async fn subscribe(app: &TestApp, query: &str) -> TcpStream {
    subscribe_with(app, query, "identity").await
}

/// [`subscribe`], asking for the content encoding `accept`.
pub(super) async fn subscribe_with(app: &TestApp, query: &str, accept: &str) -> TcpStream {
    let addr = app.base.trim_start_matches("http://");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut conn = socket.connect(addr.parse().unwrap()).await.unwrap();
    let request = format!(
        "GET /fetch-data?stream=true{query} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {KEY}\r\n\
         Accept-Encoding: {accept}\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    conn
}

/// Reads a subscriber's stream until the server closes it; returns the bytes read.
pub(super) async fn read_to_end(mut conn: TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    while let Ok(n @ 1..) = conn.read(&mut buf).await {
        out.extend_from_slice(&buf[..n]);
    }
    out
}

pub(super) fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// Waits until the served cache has `rows` rows and its compressed variants are built.
pub(super) async fn wait_for_version(app: &TestApp, rows: usize) {
    let what = format!("{rows} rows served in every encoding");
    crate::helpers::eventually(Duration::from_secs(60), &what, || async {
        let status = app.get_status().await;
        let encodings = status["cache"]["encodings"].as_array().map_or(0, Vec::len);
        match status["cache"]["count"] == rows && encodings == 3 {
            true => Ok(()),
            false => Err(status.to_string()),
        }
    })
    .await
}

pub(super) async fn import_in_background(app: &TestApp, csv: String) {
    let cache_file = app.cache_file.clone();
    tokio::task::spawn_blocking(move || import_csv(&cache_file, &csv).unwrap())
        .await
        .unwrap();
}

/// A thousand subscribers share the snapshot's bytes: each costs its connection's buffers, not
/// a copy of the payload. Bound: two versions of the body (the one being sent and the new one)
/// plus 64 KiB per subscriber (hyper's read and write buffers, the stream's state; measured at
/// about 32 KiB); a copy of the 260 KB payload per subscriber would be 260 MB.
#[tokio::test]
async fn a_thousand_subscribers_get_cached_then_updated_with_bounded_memory() {
    const SUBSCRIBERS: usize = 1000;
    let app = spawn_app_with(Options {
        // The process itself is under test (its memory, its signals, its log).
        process: true,
        seed: Some(leak(orders_csv(2_000, "first"))),
        // The default caps take a thousand streams with one key.
        env: vec![("RUST_LOG", "info".into())],
        ..Options::default()
    })
    .await;
    wait_for_version(&app, 2_000).await;
    let body_len = app.get_fetch_data("").await.bytes().await.unwrap().len() as u64;
    let (before, _) = rss_of(app.pid());

    let mut readers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let conn = subscribe(&app, "").await;
        readers.push(tokio::spawn(read_to_end(conn)));
    }
    // The server holds all thousand streams open (each subscribed before its `cached` event, so
    // the new version reaches every one as `updated`).
    wait_for_subscribers(&app, SUBSCRIBERS as u64, Duration::from_secs(60)).await;
    let (with_subscribers, _) = rss_of(app.pid());

    import_in_background(&app, orders_csv(2_000, "second")).await;
    let mut done = 0;
    for reader in readers {
        let bytes = tokio::time::timeout(Duration::from_secs(120), reader)
            .await
            .expect("every stream ends after done")
            .unwrap();
        assert_eq!(count(&bytes, b"{\"type\":\"cached\""), 1);
        assert_eq!(count(&bytes, b"{\"type\":\"updated\""), 1);
        assert_eq!(count(&bytes, b"second order 1999, shipped"), 1);
        done += count(&bytes, b"{\"type\":\"done\"}");
    }
    assert_eq!(done, SUBSCRIBERS);
    let (_, peak) = rss_of(app.pid());
    let growth = peak.saturating_sub(before);
    let bound = 2 * body_len + SUBSCRIBERS as u64 * 64 * 1024;
    eprintln!(
        "RSS before {before}, with {SUBSCRIBERS} subscribers {with_subscribers}, peak {peak}; \
         growth {growth} (bound {bound}, {} per subscriber)",
        with_subscribers.saturating_sub(before) / SUBSCRIBERS as u64
    );
    assert!(
        growth < bound,
        "memory grew by {growth} bytes (bound {bound})"
    );
}
