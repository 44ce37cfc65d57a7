//! `GET /metrics`: the key, the format, the request and stream counts, the cache gauges.

use std::time::Duration;

use super::scrape;
use crate::helpers::app::*;

#[tokio::test]
async fn metrics_need_the_key_as_a_bearer_token_or_the_header() {
    let app = spawn_app().await;
    let url = app.url("/metrics");
    let without = app.client.get(&url).send().await.unwrap();
    assert_eq!(without.status(), 401);
    let wrong = app
        .client
        .get(&url)
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let basic = app
        .client
        .get(&url)
        .basic_auth(KEY, Some("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    let header = app
        .client
        .get(&url)
        .header("X-API-Key", OTHER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(header.status(), 200);
    let bearer = app.client.get(&url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(bearer.status(), 200);
    let content_type = bearer.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
}

#[tokio::test]
async fn metrics_describe_the_cache_and_count_requests_by_route_template() {
    let app = spawn_app().await;
    for _ in 0..3 {
        let response = app
            .get_with("/status?secret-looking=abc123", &[("X-API-Key", KEY)])
            .await;
        // An unknown parameter is refused; its request is still counted, by route.
        assert_eq!(response.status(), 400);
    }
    assert_eq!(app.get_fetch_data("").await.status(), 200);
    let missing = app
        .client
        .get(app.url("/no/such/page?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let m = scrape(&app).await;
    assert_eq!(
        m[r#"pma_cache_http_requests_total{route="/status",status="400"}"#],
        3.0
    );
    assert_eq!(
        m[r#"pma_cache_http_requests_total{route="/fetch-data",status="200"}"#],
        1.0
    );
    assert_eq!(
        m[r#"pma_cache_http_requests_total{route="unmatched",status="404"}"#],
        1.0
    );
    assert!(
        !m.keys()
            .any(|k| k.contains("abc123") || k.contains("/no/such") || k.contains('?')),
        "no query or raw path in labels: {:?}",
        m.keys().collect::<Vec<_>>()
    );
    assert_eq!(m["pma_cache_rows"], 2.0);
    assert!(m["pma_cache_age_seconds"] < 600.0, "{m:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - m["pma_cache_last_success_timestamp_seconds"]).abs() < 600.0);
    assert_eq!(m["pma_cache_stale_after_seconds"], 7200.0);
    assert_eq!(m[r#"pma_cache_syncs_total{result="success"}"#], 0.0);
    assert_eq!(m[r#"pma_cache_syncs_total{result="failure"}"#], 0.0);
    assert_eq!(m["pma_cache_sync_duration_seconds_count"], 0.0);
    assert_eq!(m["pma_cache_sync_in_progress"], 0.0);
    assert_eq!(m["pma_cache_sync_consecutive_failures"], 0.0);
    assert_eq!(
        m[&format!(
            "pma_cache_build_info{{version={:?}}}",
            env!("CARGO_PKG_VERSION")
        )],
        1.0
    );
}

#[tokio::test]
async fn open_event_streams_are_counted_while_they_last() {
    let app = spawn_app().await;
    assert_eq!(scrape(&app).await["pma_cache_sse_subscribers"], 0.0);
    let streams: Vec<_> = futures_util::future::join_all((0..3).map(|_| {
        app.client
            .get(app.url("/fetch-data?stream=true"))
            .header("X-API-Key", KEY)
            .send()
    }))
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    assert_eq!(scrape(&app).await["pma_cache_sse_subscribers"], 3.0);
    drop(streams);
    crate::helpers::eventually(Duration::from_secs(20), "no stream counted", || async {
        match scrape(&app).await["pma_cache_sse_subscribers"] {
            0.0 => Ok(()),
            open => Err(format!("{open} streams counted")),
        }
    })
    .await;
}
