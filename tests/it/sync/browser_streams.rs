//! Compressed event streams as a browser reads them: headless Chromium's `EventSource`, driven
//! through the test bed's ChromeDriver, on a stream spliced from the precompressed body.

use std::time::Duration;

use fantoccini::ClientBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use crate::helpers::app::*;
use crate::helpers::testbed::testbed;

/// Opens an `EventSource` on the server's own origin in a fresh headless Chromium (with
/// `extra_args`), has another process import a new version, and returns what the page saw.
async fn events_seen_by_chromium(app: &TestApp, extra_args: &[&str], next: &str) -> Vec<Value> {
    let profile = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--headless=new".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        format!("--user-data-dir={}", profile.path().display()),
    ];
    args.extend(extra_args.iter().map(|a| (*a).to_owned()));
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert("goog:chromeOptions".into(), json!({ "args": args }));
    let client = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&testbed().webdriver_url)
        .await
        .expect("the test bed's ChromeDriver starts Chromium");
    // A page of the server's own whose policy lets it connect to its origin (the API's answers
    // allow nothing).
    client.goto(&app.url("/")).await.unwrap();
    client
        .execute(
            r#"
            window.seen = [];
            const es = new EventSource(`/fetch-data?stream=true&api_key=${arguments[0]}`);
            es.onmessage = (e) => {
              const event = JSON.parse(e.data);
              window.seen.push({type: event.type, count: event.payload?.count ?? null,
                                note: event.payload?.data?.[3]?.note ?? null, chars: e.data.length});
              if (event.type === "done") es.close();
            };
            es.onerror = () => { window.seen.push({type: "onerror"}); es.close(); };
            "#,
            vec![json!(READ_KEY)],
        )
        .await
        .unwrap();
    let (cache_file, next) = (app.cache_file.clone(), next.to_owned());
    // The page's stream is open once it has its `cached` event; the next version comes after.
    crate::helpers::eventually(Duration::from_secs(60), "the page has cached", || async {
        let seen = client.execute("return window.seen;", vec![]).await.unwrap();
        match seen.as_array().is_some_and(|a| !a.is_empty()) {
            true => Ok(()),
            false => Err(seen.to_string()),
        }
    })
    .await;
    tokio::task::spawn_blocking(move || import_csv(&cache_file, &next).unwrap())
        .await
        .unwrap();
    let seen =
        crate::helpers::eventually(Duration::from_secs(60), "the page sees done", || async {
            let seen = client.execute("return window.seen;", vec![]).await.unwrap();
            let last = seen
                .as_array()
                .and_then(|a| a.last())
                .map(|e| e["type"].clone());
            match last == Some(json!("done")) || last == Some(json!("onerror")) {
                true => Ok(seen),
                false => Err(seen.to_string()),
            }
        })
        .await;
    client.close().await.unwrap();
    seen.as_array().unwrap().clone()
}

/// Chromium asks for `gzip, deflate, br, zstd` and gets the smaller variant, zstd: the stream
/// is the cached frame, small raw frames and the updated frame, one after the other. (gzip
/// streams are decoded by curl, Python `requests` and flate2 in `tests/api`.)
#[tokio::test]
async fn chromium_event_source_decodes_a_zstd_stream_of_spliced_frames() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let app = spawn_app_with(Options {
        seed: Some(leak(orders_csv(20_000, "first"))),
        env: vec![("RUST_LOG", "info".into())],
        ..Options::default()
    })
    .await;
    app.wait_for_encodings().await;
    let seen = events_seen_by_chromium(&app, &[], &orders_csv(20_000, "second")).await;
    let types: Vec<&str> = seen.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["cached", "updated", "done"], "{seen:?}");
    assert_eq!(seen[0]["count"], 20_000);
    assert_eq!(seen[0]["note"], "first order 3, shipped");
    assert_eq!(seen[1]["note"], "second order 3, shipped");
    assert!(seen[0]["chars"].as_u64().unwrap() > 2_000_000);
    let logs = app.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("path=\"/fetch-data\""))
        .unwrap_or_else(|| panic!("no request log:\n{logs}"));
    assert!(line.contains("encoding=\"zstd\""), "{line}");
}
