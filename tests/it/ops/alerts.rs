//! Webhook alerts and the sync metrics, against the real phpMyAdmin switched off and on.

use std::time::Duration;

use serde_json::Value;

use super::{pma_env_at, scrape, wait_for_recent, Receiver, Switch};
use crate::helpers::app::*;
use crate::helpers::testbed::testbed;

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_is_alerted_once_then_the_recovery_and_metrics_follow() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let mut receiver = Receiver::start().await;
    let switch = Switch::start(&bed.pma_url).await;
    switch.set(false);
    let mut env = pma_env_at(bed, &switch.url);
    env.push(("ALERT_WEBHOOK_URL", receiver.url.clone()));
    let app = spawn_app_with(Options {
        // The process itself is under test (its memory, its signals, its log).
        process: true,
        seed: Some(SMALL_CSV),
        env,
        ..Options::default()
    })
    .await;

    // phpMyAdmin down: the sync fails after its retries, and the failure is alerted.
    assert_eq!(app.post_refresh().await.status(), 202);
    let status = wait_for_recent(&app, 1).await;
    assert_eq!(status["sync"]["recent"][0]["result"], "failure");
    assert_eq!(status["sync"]["consecutive_failures"], 1);
    let (alert, raw) = receiver.next(Duration::from_secs(60)).await;
    assert_eq!(alert["event"], "sync_failed", "{alert}");
    assert!(
        alert["text"].as_str().unwrap().contains("sync failed"),
        "{alert}"
    );
    assert!(
        alert["error"].as_str().unwrap().contains("unreachable"),
        "{alert}"
    );
    assert_eq!(alert["rows"], 2, "{alert}");
    assert!(alert["last_success"].is_string(), "{alert}");
    assert!(alert["cache_age_seconds"].as_u64().is_some(), "{alert}");
    assert!(!raw.contains(&bed.password) && !raw.contains(KEY), "{raw}");

    let m = scrape(&app).await;
    assert_eq!(m[r#"pma_cache_syncs_total{result="failure"}"#], 1.0);
    assert_eq!(m[r#"pma_cache_syncs_total{result="success"}"#], 0.0);
    assert_eq!(m["pma_cache_sync_duration_seconds_count"], 1.0);
    assert!(m["pma_cache_sync_duration_seconds_sum"] > 0.0);
    assert_eq!(m["pma_cache_sync_consecutive_failures"], 1.0);
    assert_eq!(m["pma_cache_rows"], 2.0);
    assert_eq!(
        m[r#"pma_cache_alerts_total{event="sync_failed",result="sent"}"#],
        1.0
    );

    // The failed page's screenshot is served behind the key.
    let shot = app.url("/failures/latest.png");
    assert_eq!(app.client.get(&shot).send().await.unwrap().status(), 401);
    let png = app
        .client
        .get(&shot)
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(png.status(), 200);
    assert!(png.bytes().await.unwrap().starts_with(b"\x89PNG"));

    // A second failure in a row is not alerted again.
    assert_eq!(app.post_refresh().await.status(), 202);
    let status = wait_for_recent(&app, 2).await;
    assert_eq!(status["sync"]["consecutive_failures"], 2);

    // phpMyAdmin back: the next alert is the recovery, not the second failure.
    switch.set(true);
    assert_eq!(app.post_refresh().await.status(), 202);
    let status = wait_for_recent(&app, 3).await;
    assert_eq!(status["sync"]["recent"][0]["result"], "success", "{status}");
    let rows = status["cache"]["count"].as_u64().unwrap();
    assert!(rows > 2);
    let (alert, raw) = receiver.next(Duration::from_secs(60)).await;
    assert_eq!(alert["event"], "recovered", "{alert}");
    assert!(
        alert["text"].as_str().unwrap().contains("after 2 failed"),
        "{alert}"
    );
    assert_eq!(alert["rows"], rows, "{alert}");
    assert_eq!(alert["error"], Value::Null);
    assert!(!raw.contains(&bed.password), "{raw}");

    let m = scrape(&app).await;
    assert_eq!(m[r#"pma_cache_syncs_total{result="failure"}"#], 2.0);
    assert_eq!(m[r#"pma_cache_syncs_total{result="success"}"#], 1.0);
    assert_eq!(m["pma_cache_sync_duration_seconds_count"], 3.0);
    assert_eq!(m["pma_cache_sync_consecutive_failures"], 0.0);
    assert_eq!(m["pma_cache_rows"], rows as f64);
    assert!(m["pma_cache_age_seconds"] < 120.0, "{m:?}");
    assert_eq!(
        m[r#"pma_cache_alerts_total{event="sync_failed",result="sent"}"#],
        1.0
    );
    assert_eq!(
        m[r#"pma_cache_alerts_total{event="recovered",result="sent"}"#],
        1.0
    );
    assert!(!app.logs().contains(&bed.password));
}

/// The small cache's bytes, as if written on 2020-01-01.
fn cache_written_in_2020() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let seeded = dir.path().join("seed.json");
    import_csv(&seeded, SMALL_CSV).unwrap();
    let mut cache: Value = serde_json::from_slice(&std::fs::read(&seeded).unwrap()).unwrap();
    cache["last_updated"] = "2020-01-01T00:00:00Z".into();
    serde_json::to_vec(&cache).unwrap()
}

#[tokio::test]
async fn a_cache_older_than_stale_after_is_alerted() {
    let mut receiver = Receiver::start().await;
    let app = spawn_app_with(Options {
        // The process itself is under test (its memory, its signals, its log).
        process: true,
        cache_contents: Some(cache_written_in_2020()),
        env: vec![
            ("ALERT_WEBHOOK_URL", receiver.url.clone()),
            ("STALE_AFTER", "1h".into()),
        ],
        ..Options::default()
    })
    .await;
    let (alert, _) = receiver.next(Duration::from_secs(60)).await;
    assert_eq!(alert["event"], "stale", "{alert}");
    assert!(alert["text"].as_str().unwrap().contains("stale"), "{alert}");
    assert!(
        alert["cache_age_seconds"].as_u64().unwrap() > 3600,
        "{alert}"
    );
    assert_eq!(alert["last_success"], "2020-01-01T00:00:00Z", "{alert}");
    assert_eq!(alert["rows"], 2, "{alert}");
    let status = app.get_status().await;
    assert_eq!(status["cache"]["stale"], true, "{status}");
    assert_eq!(status["cache"]["stale_after_seconds"], 3600, "{status}");
}

/// Waits until the stale alert has failed for good (its retries spent).
async fn stale_alert_fails(app: &TestApp) {
    crate::helpers::eventually(Duration::from_secs(60), "the stale alert fails", || async {
        let m = super::scrape(app).await;
        match m.get(r#"pma_cache_alerts_total{event="stale",result="failed"}"#) {
            Some(&1.0) => Ok(()),
            other => Err(format!("{other:?}\n{}", app.logs())),
        }
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_webhook_is_retried_and_never_stops_the_server() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let app = spawn_app_with(Options {
        // The process itself is under test (its memory, its signals, its log).
        process: true,
        cache_contents: Some(cache_written_in_2020()),
        env: vec![("ALERT_WEBHOOK_URL", url)],
        ..Options::default()
    })
    .await;
    stale_alert_fails(&app).await;
    let logs = app.logs();
    assert!(
        logs.contains("will retry") && logs.contains("giving up"),
        "{logs}"
    );
    assert_eq!(app.get_fetch_data("").await.status(), 200);
}

#[tokio::test]
async fn a_webhook_that_redirects_is_not_followed() {
    // The configured address answers 307 to the receiver: following it would deliver there.
    let mut receiver = Receiver::start().await;
    let target = receiver.url.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let redirects = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let target = target.clone();
            async move { axum::response::Redirect::temporary(&target) }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, redirects).await.unwrap() });
    let app = spawn_app_with(Options {
        // The process itself is under test (its memory, its signals, its log).
        process: true,
        cache_contents: Some(cache_written_in_2020()),
        env: vec![("ALERT_WEBHOOK_URL", url)],
        ..Options::default()
    })
    .await;
    stale_alert_fails(&app).await;
    assert!(
        app.logs().contains("a redirect, which is not followed"),
        "{}",
        app.logs()
    );
    assert!(receiver.try_next().is_none(), "the redirect was followed");
    server.abort();
}
