//! The HTTP API, against the real binary on port 0 with a cache written by `pma-cache import`.

mod guards;
mod load;
mod stalled;
mod streams;

use std::io::Read;
use std::time::Duration;

use crate::helpers::app::*;
use crate::helpers::eventually;
use serde_json::{json, Value};

#[tokio::test]
async fn health_answers_without_a_key() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ok"}));
}

#[tokio::test]
async fn fetch_data_returns_the_imported_table_exactly() {
    let app = spawn_app().await;
    let r = app.get_fetch_data("").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "success");
    assert_eq!(body["count"], 2);
    assert_eq!(body["columns"], json!(["id", "name", "note"]));
    assert_eq!(
        body["data"],
        json!([
            {"id": "1", "name": "Ada \"the\" first", "note": "NULL"},
            {"id": "2", "name": "", "note": "multi\nline"},
        ])
    );
    assert!(body["last_updated"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_unauthorized() {
    let app = spawn_app().await;
    for key in [None, Some("wrong"), Some(""), Some(&KEY[..KEY.len() - 1])] {
        let mut req = app.client.get(app.url("/fetch-data"));
        if let Some(key) = key {
            req = req.header("X-API-Key", key);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "key {key:?}");
        assert!(r.headers().contains_key("www-authenticate"));
        let body: Value = r.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        match key {
            None | Some("") => {
                assert!(message.starts_with("Missing API key"), "{message}");
                assert!(message.contains("X-API-Key header"), "{message}");
                assert!(message.contains("API_KEY"), "{message}");
            }
            Some(_) => assert!(message.starts_with("Wrong API key"), "{message}"),
        }
        assert!(!message.contains(KEY), "{message}");
    }
    for path in ["/status", "/fetch-data?stream=true"] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = app.client.post(app.url("/refresh")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn every_rotated_key_is_accepted() {
    let app = spawn_app().await;
    for key in [KEY, OTHER_KEY] {
        let r = app.get_with("/fetch-data", &[("X-API-Key", key)]).await;
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn the_api_key_query_parameter_is_accepted_only_on_event_streams() {
    let app = spawn_app().await;
    let r = app.get_stream_with_key_in_url(READ_KEY).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    drop(r);
    for path in [
        format!("/fetch-data?api_key={KEY}"),
        format!("/fetch-data?stream=false&api_key={KEY}"),
        format!("/fetch-data?refresh=true&api_key={KEY}"),
        format!("/status?api_key={KEY}"),
    ] {
        let r = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("X-API-Key header"),
            "{path}: {body}"
        );
    }
    // Even with the right header: the key must not travel in the URL.
    let r = app
        .get_with(&format!("/fetch-data?api_key={KEY}"), &[("X-API-Key", KEY)])
        .await;
    assert_eq!(r.status(), 401);
    let r = app
        .client
        .post(app.url(&format!("/refresh?api_key={KEY}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // `stream=true` beside the key opens no other route (refused, whichever check says so
    // first).
    for path in [
        format!("/metrics?stream=true&api_key={KEY}"),
        format!("/status?stream=true&api_key={KEY}"),
    ] {
        let r = app.client.get(app.url(&path)).send().await.unwrap();
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
    }
    let r = app
        .client
        .post(app.url(&format!("/refresh?stream=true&api_key={KEY}")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    // A live query is an event stream too.
    let r = app
        .client
        .get(app.url(&format!(
            "/query?stream=true&sql=SELECT%201&api_key={READ_KEY}"
        )))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 401);
}

#[tokio::test]
async fn every_answer_says_nosniff_and_carries_a_restrictive_csp() {
    let app = spawn_app().await;
    for path in ["/health", "/fetch-data", "/status", "/nowhere", "/"] {
        let r = app.get_with(path, &[("X-API-Key", KEY)]).await;
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        match path {
            // The dashboard runs its own script and style, and nothing else.
            "/" => assert!(csp.contains("script-src 'self'"), "{csp}"),
            _ => assert!(csp.starts_with("default-src 'none'"), "{path}: {csp}"),
        }
    }
    let r = app.client.get(app.url("/fetch-data")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'none'"));
}

#[tokio::test]
async fn no_cache_yet_is_503_with_retry_after() {
    let app = spawn_app_with(Options::default()).await;
    let r = app.get_fetch_data("").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "error", "message": "No cached data"})
    );
    let status = app.get_status().await;
    assert_eq!(status["cache"]["exists"], false);
}

#[tokio::test]
async fn a_corrupt_cache_file_at_start_is_reported_and_kept_until_a_complete_one_replaces_it() {
    let corrupt =
        br#"{"last_updated":"2026-01-01T00:00:00Z","count":3,"columns":["id"],"data":[{"id":"1"}"#;
    let app = spawn_app_with(Options {
        cache_contents: Some(corrupt.to_vec()),
        // Its log is under test.
        process: true,
        ..Options::default()
    })
    .await;
    let r = app.get_fetch_data("").await;
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "error", "message": "Error reading cache"})
    );
    let status = app.get_status().await;
    assert!(
        status["cache"]["error"]
            .as_str()
            .unwrap()
            .contains("not a valid cache file"),
        "{status}"
    );
    assert!(app.logs().contains("not a valid cache file"));
    assert_eq!(
        std::fs::read(&app.cache_file).unwrap(),
        corrupt,
        "the file is left alone"
    );

    import_csv(&app.cache_file, SMALL_CSV).unwrap();
    let body = poll_until_ok(&app).await;
    assert_eq!(body["count"], 2);
}

async fn poll_until_ok(app: &TestApp) -> Value {
    eventually(Duration::from_secs(5), "the cache is served", || async {
        let r = app.get_fetch_data("").await;
        match r.status().as_u16() {
            200 => Ok(r.json().await.unwrap()),
            status => Err(format!("status {status}")),
        }
    })
    .await
}

#[tokio::test]
async fn an_import_from_another_process_is_served_within_two_seconds() {
    let app = spawn_app().await;
    import_csv(&app.cache_file, "id,name\n9,new\n").unwrap();
    let started = tokio::time::Instant::now();
    loop {
        let body: Value = app.get_fetch_data("").await.json().await.unwrap();
        if body["count"] == 1 {
            assert_eq!(body["data"], json!([{"id": "9", "name": "new"}]));
            break;
        }
        // Generous bound for a loaded machine; the server polls every 0.5 s.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "new cache not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_unchanged_cache_answers_304_to_its_etag_in_any_encoding() {
    let app = spawn_app().await;
    app.wait_for_encodings().await;
    for encoding in ["identity", "gzip", "zstd"] {
        let r = app
            .get_raw(
                "/fetch-data",
                &[("X-API-Key", KEY), ("Accept-Encoding", encoding)],
            )
            .await;
        let etag = r.headers()["etag"].to_str().unwrap().to_owned();
        assert!(
            etag.starts_with("W/\"") && etag.ends_with('"'),
            "weak etag over the data: {etag}"
        );
        assert!(r.headers().contains_key("last-modified"));
        let r = app
            .get_raw(
                "/fetch-data",
                &[("X-API-Key", KEY), ("If-None-Match", &etag)],
            )
            .await;
        assert_eq!(r.status(), 304, "{encoding}");
        assert!(r.bytes().await.unwrap().is_empty());
    }
    let r = app
        .get_raw(
            "/fetch-data",
            &[("X-API-Key", KEY), ("If-None-Match", "\"something-else\"")],
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn gzip_and_zstd_bodies_decode_to_the_identity_body() {
    let app = spawn_app().await;
    app.wait_for_encodings().await;

    let identity = app.get_fetch_data_encoded("identity").await;
    assert!(identity.headers().get("content-encoding").is_none());
    let identity = identity.bytes().await.unwrap();

    let gz = app.get_fetch_data_encoded("gzip").await;
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    assert_eq!(gz.headers()["vary"], "Accept-Encoding");
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&gz.bytes().await.unwrap()[..])
        .read_to_end(&mut decoded)
        .unwrap();
    assert_eq!(decoded, identity);

    let zs = app.get_fetch_data_encoded("gzip;q=0.5, zstd").await;
    assert_eq!(zs.headers()["content-encoding"], "zstd");
    let decoded = zstd::decode_all(&zs.bytes().await.unwrap()[..]).unwrap();
    assert_eq!(decoded, identity);

    let none = app.get_fetch_data_encoded("br").await;
    assert!(
        none.headers().get("content-encoding").is_none(),
        "unknown coding falls back"
    );
    let none = app.get_fetch_data_encoded("gzip;q=0, zstd;q=0").await;
    assert!(
        none.headers().get("content-encoding").is_none(),
        "q=0 refuses a coding"
    );
}

/// The weak ETag of a response without its encoding mark.
fn base_etag(r: &reqwest::Response) -> String {
    let tag = r.headers()["etag"].to_str().unwrap();
    tag.trim_end_matches('"')
        .trim_end_matches("-gzip")
        .trim_end_matches("-zstd")
        .to_owned()
}

#[tokio::test]
async fn a_compressed_client_never_gets_the_identity_body_of_a_new_version() {
    let app = spawn_app_with(Options {
        seed: Some(leak(orders_csv(100_000, "first"))),
        ..Options::default()
    })
    .await;
    for (round, accept) in ["gzip", "zstd", "gzip"].into_iter().enumerate() {
        let before = app.get_fetch_data_encoded(accept).await;
        let old = base_etag(&before);
        drop(before);
        let cache_file = app.cache_file.clone();
        let csv = orders_csv(100_000, &format!("round {round}"));
        let import = tokio::task::spawn_blocking(move || import_csv(&cache_file, &csv));
        // Ask again and again: the first answer of the new version is the one to check.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let r = app.get_fetch_data_encoded(accept).await;
            assert_eq!(r.status(), 200);
            if base_etag(&r) != old {
                assert_eq!(
                    r.headers()
                        .get("content-encoding")
                        .map(|v| v.to_str().unwrap()),
                    Some(accept),
                    "round {round}: the first answer of the new version"
                );
                let body = r.bytes().await.unwrap();
                let json = match accept {
                    "gzip" => {
                        let mut out = Vec::new();
                        flate2::read::GzDecoder::new(&body[..])
                            .read_to_end(&mut out)
                            .unwrap();
                        out
                    }
                    _ => zstd::decode_all(&body[..]).unwrap(),
                };
                let doc: Value = serde_json::from_slice(&json).unwrap();
                assert_eq!(doc["count"], 100_000);
                assert!(
                    doc["data"][0]["note"]
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("round {round}")),
                    "{}",
                    doc["data"][0]
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: the new version was never served"
            );
        }
        import.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn malformed_parameters_and_unknown_routes_get_clear_errors() {
    let app = spawn_app().await;
    let r = app.get_fetch_data("?refresh=perhaps").await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "error", "message": "Invalid value for 'refresh': expected true or false"})
    );
    let r = app.get_fetch_data("?stream=2").await;
    assert_eq!(r.status(), 400);
    let r = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("Not found: no such route"),
        "{body}"
    );
    // No failure yet is not a wrong path.
    let r = app
        .get_with("/failures/latest.png", &[("X-API-Key", KEY)])
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "error", "message": "No failure screenshot yet: one is kept each time a sync fails"})
    );
}

#[tokio::test]
async fn unknown_query_parameters_are_a_400_naming_them_on_every_route() {
    let app = spawn_app().await;
    let r = app.get_fetch_data("?limit=5&columns=id,total").await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "error", "message":
            "Unknown query parameters 'limit', 'columns': /fetch-data takes refresh, stream, payload, since, follow"})
    );
    let r = app.get_fetch_data("?refesh=true").await;
    assert_eq!(r.status(), 400);
    let cases = [
        (app.client.get(app.url("/status?verbose=1")), "verbose"),
        (app.client.post(app.url("/refresh?fast=true")), "fast"),
        (app.client.get(app.url("/metrics?name=x")), "name"),
        (app.client.get(app.url("/health?deep=1")), "deep"),
        (app.client.get(app.url("/?lang=en")), "lang"),
        (app.client.get(app.url("/failures/latest.png?t=1")), "t"),
    ];
    for (request, name) in cases {
        let r = request.header("X-API-Key", KEY).send().await.unwrap();
        assert_eq!(r.status(), 400, "{name}");
        let body: Value = r.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("Unknown query parameter '{name}'")),
            "{message}"
        );
    }
    // Known parameters still work.
    assert_eq!(app.get_fetch_data("?refresh=false").await.status(), 200);
}

#[tokio::test]
async fn a_wrong_method_gets_a_json_405_that_lists_the_allowed_ones() {
    let app = spawn_app().await;
    let get_refresh = app.client.get(app.url("/refresh")).header("X-API-Key", KEY);
    let put_health = app.client.put(app.url("/health"));
    for (request, allowed) in [(get_refresh, "POST"), (put_health, "GET,HEAD")] {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 405);
        // The header comes from the router, the message from the API: they agree.
        assert_eq!(r.headers()["allow"], allowed);
        assert_eq!(r.headers()["content-type"], "application/json");
        let body: Value = r.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(message.ends_with(&format!(": use {allowed}")), "{message}");
        assert!(message.starts_with("Method "), "{message}");
    }
    let r = app.get_with("/refresh", &[("X-API-Key", KEY)]).await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "Method GET is not allowed on /refresh: use POST"
    );
}

#[tokio::test]
async fn host_accepts_a_name_resolved_when_binding() {
    let app = spawn_app_with_env(vec![("HOST", "localhost".into())]).await;
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.get_fetch_data("").await.status(), 200);
}

#[tokio::test]
async fn refresh_without_a_sync_source_says_so() {
    let app = spawn_app().await;
    let r = app.post_refresh().await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("PMA_URL"),
        "{body}"
    );

    // fetch-data still answers with the cache and explains.
    let r = app.get_fetch_data("?refresh=true").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["count"], 2);
    assert!(
        body["_info"].as_str().unwrap().contains("no sync source"),
        "{body}"
    );
}

/// The events of the stream `r` while a new version, `csv`, is imported: `cached`, `updated`
/// and `done`, checked.
async fn events_while_importing(
    app: &TestApp,
    r: reqwest::Response,
    csv: &'static str,
) -> Vec<Value> {
    let cache_file = app.cache_file.clone();
    // The stream follows versions from before its headers were sent: a version imported from
    // now on is its `updated`, however soon it lands.
    let importer = tokio::task::spawn_blocking(move || import_csv(&cache_file, csv).unwrap());
    let events = read_events(r, Duration::from_secs(15)).await;
    importer.await.unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["cached", "updated", "done"], "{events:?}");
    events
}

#[tokio::test]
async fn sse_sends_cached_then_updated_then_done_when_another_process_imports() {
    let app = spawn_app().await;
    let r = app.get_stream_with_key_in_url(READ_KEY).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(r.headers()["x-accel-buffering"], "no");
    let events = events_while_importing(&app, r, "id,name\n7,fresh\n").await;
    assert_eq!(events[0]["payload"]["count"], 2);
    assert_eq!(events[0]["payload"]["status"], "success");
    assert_eq!(
        events[1]["payload"]["data"],
        json!([{"id": "7", "name": "fresh"}])
    );
}

#[tokio::test]
async fn sse_events_carry_ids_and_the_first_says_when_nothing_is_cached() {
    let app = spawn_app_with(Options::default()).await;
    let r = app.get_fetch_data("?stream=true&refresh=true").await;
    let raw = String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap();
    assert!(raw.starts_with("id: 1\ndata: "), "{raw}");
    assert!(raw.contains("id: 2\n"), "{raw}");
    let events: Vec<Value> = raw
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(
        events[0],
        json!({"type": "cached", "payload": null, "message": "No cached data"})
    );
    // No sync source: the refresh it asked for is reported as an error, then the stream ends.
    assert_eq!(events[1]["type"], "error");
    assert_eq!(events[2], json!({"type": "done"}));
}

#[tokio::test]
async fn notify_only_streams_carry_the_version_and_no_rows() {
    let app = spawn_app().await;
    let r = app.get_raw("/fetch-data", &[("X-API-Key", KEY)]).await;
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let r = app.get_fetch_data("?stream=true&payload=none").await;
    assert_eq!(r.status(), 200);
    let events = events_while_importing(&app, r, "id,name\n7,fresh\n").await;
    assert_eq!(events[0]["count"], 2);
    assert_eq!(events[0]["etag"], etag.as_str());
    assert!(events[0]["last_updated"].as_str().unwrap().ends_with('Z'));
    assert!(events[0].get("payload").is_none(), "{:?}", events[0]);
    assert_eq!(events[1]["count"], 1);
    assert!(events[1].get("payload").is_none());

    // The etag it announces is the one that gets a 304.
    let r = app
        .get_with(
            "/fetch-data",
            &[
                ("X-API-Key", KEY),
                ("If-None-Match", events[1]["etag"].as_str().unwrap()),
            ],
        )
        .await;
    assert_eq!(r.status(), 304);

    let r = app.get_fetch_data("?payload=none").await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn keys_never_reach_the_logs() {
    let app = spawn_app_with(Options {
        seed: Some(SMALL_CSV),
        // The process is under test: its log, or its signals.
        process: true,
        ..Options::default()
    })
    .await;
    app.get_fetch_data("").await;
    app.client
        .get(app.url(&format!("/fetch-data?stream=true&api_key={READ_KEY}")))
        .send()
        .await
        .unwrap();
    app.client
        .get(app.url("/status?api_key=guessed-key-123"))
        .send()
        .await
        .unwrap();
    // Log lines reach the log through a queue: wait for the last request's.
    let logs =
        crate::helpers::eventually(Duration::from_secs(10), "requests are logged", || async {
            let logs = app.logs();
            match logs.contains("/fetch-data") && logs.contains("/status") {
                true => Ok(logs),
                false => Err(logs),
            }
        })
        .await;
    for secret in [KEY, OTHER_KEY, READ_KEY, "guessed-key-123"] {
        assert!(!logs.contains(secret), "{secret} leaked into:\n{logs}");
    }
    let status = app.get_status().await.to_string();
    assert!(!status.contains(KEY) && !status.contains(OTHER_KEY));
}

#[tokio::test]
async fn status_reports_the_cache_and_an_idle_unconfigured_sync() {
    let app = spawn_app().await;
    let status = app.get_status().await;
    assert_eq!(status["cache"]["exists"], true);
    assert_eq!(status["cache"]["count"], 2);
    assert_eq!(
        status["cache"]["size_bytes"],
        std::fs::metadata(&app.cache_file).unwrap().len()
    );
    assert!(status["cache"]["age_seconds"].as_u64().unwrap() < 60);
    assert_eq!(status["sync"]["state"], "idle");
    assert_eq!(status["sync"]["configured"], false);
    for field in [
        "phase",
        "started_at",
        "last_success",
        "last_failure",
        "last_error",
        "next_run",
    ] {
        assert!(
            status["sync"].get(field).is_some(),
            "sync.{field} is part of the shape"
        );
    }
}

#[tokio::test]
async fn cors_headers_only_for_configured_origins() {
    let app = spawn_app_with_env(vec![("CORS_ALLOW_ORIGINS", "https://dash.example".into())]).await;
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/fetch-data"))
        .header("Origin", "https://dash.example")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "x-api-key")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://dash.example"
    );
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("x-api-key"), "{allowed}");

    let other = app
        .get_with("/health", &[("Origin", "https://evil.example")])
        .await;
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let plain = spawn_app().await;
    let r = plain
        .get_with("/health", &[("Origin", "https://dash.example")])
        .await;
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly_even_with_an_open_event_stream() {
    let app = spawn_app_with(Options {
        seed: Some(SMALL_CSV),
        // The process is under test: its log, or its signals.
        process: true,
        ..Options::default()
    })
    .await;
    let stream = app.get_fetch_data("?stream=true").await;
    assert_eq!(stream.status(), 200);
    let status = app.stop();
    assert!(status.success(), "{status}");
    drop(stream);
}

#[test]
fn a_missing_api_key_exits_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(binary())
        .arg("serve")
        .env_remove("API_KEY")
        .env("CACHE_FILE", dir.path().join("c.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("API_KEY"), "{stderr}");
}

/// Runs `pma-cache sync` with only `vars` set; returns its exit code and stderr.
fn sync_with_env(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(binary())
        .arg("sync")
        .env_clear()
        .env("CACHE_FILE", dir.path().join("c.json"))
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn boolean_variables_accept_how_people_write_them_and_errors_name_the_variable() {
    for value in ["1", "0", "true", "FALSE", "yes", "No", " TRUE "] {
        let (code, stderr) = sync_with_env(&[("SYNC_FORCE", value)]);
        assert_eq!(code, Some(2), "{stderr}");
        // Parsing went on to the next missing setting.
        assert!(stderr.contains("PMA_URL is not set"), "{value:?}: {stderr}");
    }
    let (code, stderr) = sync_with_env(&[("SYNC_FORCE", "maybe")]);
    assert_eq!(code, Some(2));
    assert!(stderr.starts_with("error: SYNC_FORCE"), "{stderr}");
    assert!(stderr.contains("yes/no"), "{stderr}");
}

#[test]
fn import_refuses_a_ragged_csv_naming_the_line_and_keeps_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache_file = dir.path().join("c.json");
    import_csv(&cache_file, SMALL_CSV).unwrap();
    let before = std::fs::read(&cache_file).unwrap();
    let err = import_csv(&cache_file, "a,b\n1,2\n3\n").unwrap_err();
    assert!(err.contains("line 3: expected 2 fields"), "{err}");
    assert_eq!(std::fs::read(&cache_file).unwrap(), before);
    assert_no_temporaries(dir.path());
}

#[test]
fn import_null_token_turns_only_exact_matches_into_null() {
    let dir = tempfile::tempdir().unwrap();
    let cache_file = dir.path().join("c.json");
    let csv_path = dir.path().join("in.csv");
    std::fs::write(&csv_path, "a,b\n\\N,NULL\n").unwrap();
    let out = std::process::Command::new(binary())
        .args(["import", "--null", "\\N", "--cache-file"])
        .arg(&cache_file)
        .arg(&csv_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&cache_file).unwrap()).unwrap();
    assert_eq!(v["data"], json!([{"a": null, "b": "NULL"}]));
}
