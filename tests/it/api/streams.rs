//! Event streams and validators against the real binary: encodings spliced from the
//! precompressed body, decoded by curl, Python `requests` and this crate's decoders; validators
//! that survive a sync finding the same rows; odd cache file layouts.

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::app::*;
use crate::helpers::eventually;

/// Every event's JSON in `raw` (an identity event stream).
fn events_of(raw: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(raw).unwrap();
    assert!(
        text.ends_with("\n\n"),
        "the stream ends on an event boundary"
    );
    text.split("\n\n")
        .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

/// Reads a whole event stream (until the server ends it after `done`), sent with `accept`,
/// while another process imports `next` after a moment. Returns the bytes on the wire.
async fn stream_with_update(app: &TestApp, accept: &str, next: &str) -> (Option<String>, Vec<u8>) {
    let r = app
        .get_raw(
            "/fetch-data?stream=true",
            &[("X-API-Key", KEY), ("Accept-Encoding", accept)],
        )
        .await;
    assert_eq!(r.status(), 200);
    let encoding = r
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_owned());
    let (cache_file, next) = (app.cache_file.clone(), next.to_owned());
    // The stream follows versions from before its headers were sent: a version imported from
    // now on is its `updated`, however soon it lands.
    let importer = tokio::task::spawn_blocking(move || import_csv(&cache_file, &next).unwrap());
    let bytes = tokio::time::timeout(Duration::from_secs(60), r.bytes())
        .await
        .expect("the stream ends after done")
        .unwrap();
    importer.await.unwrap();
    (encoding, bytes.to_vec())
}

#[tokio::test]
async fn event_streams_are_gzip_or_zstd_spliced_from_the_precompressed_body() {
    let first = orders_csv(20_000, "first");
    let second = orders_csv(20_000, "second");
    let mut sizes = Vec::new();
    for accept in ["identity", "gzip", "zstd", "gzip, zstd;q=0.5"] {
        let app = spawn_app_with(Options {
            seed: Some(leak(first.clone())),
            ..Options::default()
        })
        .await;
        app.wait_for_encodings().await;
        let identity_body = app
            .get_raw("/fetch-data", &[("X-API-Key", KEY)])
            .await
            .bytes()
            .await
            .unwrap();
        let (encoding, wire) = stream_with_update(&app, accept, &second).await;
        let plain = match encoding.as_deref() {
            None => wire.clone(),
            Some("gzip") => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&wire[..])
                    .read_to_end(&mut out)
                    .expect("one complete gzip member");
                out
            }
            Some("zstd") => zstd::decode_all(&wire[..]).unwrap(),
            Some(other) => panic!("unexpected encoding {other}"),
        };
        let expected = match accept {
            "identity" => None,
            "zstd" => Some("zstd"),
            _ => Some("gzip"),
        };
        assert_eq!(encoding.as_deref(), expected, "{accept}");
        let events = events_of(&plain);
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["cached", "updated", "done"], "{accept}");
        assert_eq!(
            serde_json::to_vec(&events[0]["payload"]).unwrap().len(),
            serde_json::to_vec(&serde_json::from_slice::<Value>(&identity_body).unwrap())
                .unwrap()
                .len()
        );
        assert_eq!(events[0]["payload"]["count"], 20_000);
        assert_eq!(events[1]["payload"]["count"], 20_000);
        assert!(events[1]["payload"]["data"][5]["note"]
            .as_str()
            .unwrap()
            .starts_with("second"));
        sizes.push((accept, wire.len(), plain.len()));
    }
    eprintln!("bytes on the wire (accept, wire, decoded): {sizes:?}");
    let identity = sizes[0].1;
    for (accept, wire, plain) in &sizes[1..] {
        assert_eq!(*plain, identity, "{accept}: same events once decoded");
        assert!(
            wire * 5 < identity,
            "{accept}: {wire} bytes on the wire for {identity} of events"
        );
    }
}

/// The URL and headers of a stream that ends at once: `cached`, then the refresh it asked for
/// is refused (no sync source), then `done`.
fn short_stream_url(app: &TestApp) -> String {
    app.url("/fetch-data?stream=true&refresh=true")
}

#[tokio::test]
async fn curl_and_python_requests_decode_compressed_event_streams() {
    let csv = orders_csv(5_000, "tools");
    let app = spawn_app_with(Options {
        seed: Some(leak(csv)),
        ..Options::default()
    })
    .await;
    app.wait_for_encodings().await;
    let url = short_stream_url(&app);
    let key_header = format!("X-API-Key: {KEY}");

    // curl --compressed asks for what this curl decodes, then decodes it.
    for accept in [None, Some("gzip"), Some("zstd")] {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--fail",
            "--compressed",
            "-D",
            "-",
            "-H",
            &key_header,
        ]);
        if let Some(accept) = accept {
            cmd.args(["-H", &format!("Accept-Encoding: {accept}")]);
        }
        let out = cmd
            .arg(&url)
            .output()
            .expect("curl is installed (bin/setup)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        match accept {
            Some(accept) => assert!(
                head.contains(&format!("content-encoding: {accept}")),
                "{head}"
            ),
            None => assert!(head.contains("content-encoding: "), "{head}"),
        }
        let events = events_of(body.as_bytes());
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["cached", "error", "done"], "curl {accept:?}");
        assert_eq!(events[0]["payload"]["count"], 5_000);
    }

    // Python requests (gzip; zstd only with the zstandard module installed).
    let script = r#"
import json, sys, requests
url, key = sys.argv[1], sys.argv[2]
with requests.get(url, headers={"X-API-Key": key}, stream=True, timeout=30) as r:
    enc = r.headers.get("Content-Encoding")
    for line in r.iter_lines(chunk_size=1 << 20):
        if line.startswith(b"data: "):
            event = json.loads(line[6:])
            print(enc, event["type"], (event.get("payload") or {}).get("count"))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &url, KEY])
        .output()
        .expect("python3 with requests is installed (bin/setup)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "gzip cached 5000\ngzip error None\ngzip done None\n"
    );
}

#[tokio::test]
async fn refresh_answers_gzip_with_its_info_in_front() {
    let app = spawn_app().await;
    app.wait_for_encodings().await;
    let r = app
        .get_raw(
            "/fetch-data?refresh=true",
            &[("X-API-Key", KEY), ("Accept-Encoding", "gzip")],
        )
        .await;
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&r.bytes().await.unwrap()[..])
        .read_to_end(&mut out)
        .unwrap();
    let body: Value = serde_json::from_slice(&out).unwrap();
    assert!(body["_info"].as_str().unwrap().contains("no sync source"));
    assert_eq!(body["status"], "success");
    assert_eq!(body["count"], 2);
}

#[tokio::test]
async fn an_import_of_the_same_rows_keeps_the_validators_and_answers_304() {
    let app = spawn_app().await;
    let get = |header: Option<(&'static str, String)>| {
        let mut req = app
            .raw_client
            .get(app.url("/fetch-data"))
            .header("X-API-Key", KEY);
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        req.send()
    };
    let first = get(None).await.unwrap();
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let modified = first.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_owned();
    let first: Value = first.json().await.unwrap();

    // The same rows again, a second later: a new version (new last_updated), same data.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    import_csv(&app.cache_file, SMALL_CSV).unwrap();
    let second: Value = eventually(Duration::from_secs(10), "the import is served", || async {
        let body: Value = get(None).await.unwrap().json().await.unwrap();
        match body["last_updated"] != first["last_updated"] {
            true => Ok(body),
            false => Err(body["last_updated"].to_string()),
        }
    })
    .await;
    assert_eq!(second["data"], first["data"]);

    let r = get(Some(("If-None-Match", etag.clone()))).await.unwrap();
    assert_eq!(r.status(), 304, "same rows, same ETag");
    let r = get(Some(("If-Modified-Since", modified.clone())))
        .await
        .unwrap();
    assert_eq!(r.status(), 304, "same rows, same Last-Modified");
    assert_eq!(r.headers()["last-modified"], modified.as_str());

    // Different rows: both validators move on.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    import_csv(&app.cache_file, "id,name,note\n1,changed,x\n").unwrap();
    let r = eventually(
        Duration::from_secs(10),
        "the new rows are served",
        || async {
            let r = get(Some(("If-None-Match", etag.clone()))).await.unwrap();
            match r.status().as_u16() {
                200 => Ok(r),
                status => Err(format!("status {status}")),
            }
        },
    )
    .await;
    assert_ne!(r.headers()["last-modified"], modified.as_str());
    let r = get(Some(("If-Modified-Since", modified))).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_pretty_printed_cache_file_is_sent_as_one_line_per_event() {
    let doc = json!({
        "last_updated": "2026-01-02T03:04:05Z",
        "count": 2,
        "columns": ["id", "note"],
        "data": [{"id": "1", "note": "line one\nline two"}, {"id": "2", "note": "  indented  "}],
    });
    let app = spawn_app_with(Options {
        cache_contents: Some(serde_json::to_vec_pretty(&doc).unwrap()),
        ..Options::default()
    })
    .await;
    let r = app.get_fetch_data("?stream=true&refresh=true").await;
    let raw = r.bytes().await.unwrap();
    let events = events_of(&raw);
    assert_eq!(events.len(), 3, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(events[0]["payload"]["data"], doc["data"]);
    let body: Value = app.get_fetch_data("").await.json().await.unwrap();
    assert_eq!(body["data"], doc["data"]);
}
