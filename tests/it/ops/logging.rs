//! A log output that is closed or full loses log lines, never requests.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

use crate::helpers::app::*;

/// Starts `serve` with stdout and stderr as pipes; returns it, its address and its stderr, read
/// up to the "listening" line and no further.
fn serve_on_pipes(dir: &std::path::Path, format: &str) -> (Child, String, BufReader<ChildStderr>) {
    let cache_file = dir.join("data_cache.json");
    import_csv(&cache_file, SMALL_CSV).unwrap();
    let mut child = Command::new(binary())
        .arg("serve")
        .env_clear()
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("API_KEY", KEY)
        .env("CACHE_FILE", &cache_file)
        .env("RUST_LOG", "debug")
        .env("LOG_FORMAT", format)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "serve exited");
        if let Some((_, rest)) = line.split_once("listening on http://") {
            break rest.split('"').next().unwrap().trim().to_owned();
        }
    };
    (child, addr, stderr)
}

/// Sends enough requests to log well over a pipe's 64 KiB; each must be answered.
async fn every_request_is_answered(addr: &str) {
    let client = reqwest::Client::new();
    for i in 0..1500 {
        let response = tokio::time::timeout(
            Duration::from_secs(20),
            client
                .get(format!("http://{addr}/status"))
                .header("X-API-Key", KEY)
                .send(),
        )
        .await
        .unwrap_or_else(|_| panic!("request {i} got no answer"))
        .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(response.status(), 200, "request {i}");
    }
}

#[tokio::test]
async fn a_server_whose_log_reader_has_gone_still_answers_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, stderr) = serve_on_pipes(dir.path(), "human");
    drop(stderr);
    drop(child.stdout.take());
    every_request_is_answered(&addr).await;
    assert!(child.try_wait().unwrap().is_none(), "the server exited");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn a_server_whose_log_reader_stopped_reading_still_answers_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, stderr) = serve_on_pipes(dir.path(), "json");
    every_request_is_answered(&addr).await;
    assert!(child.try_wait().unwrap().is_none(), "the server exited");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stderr);
}

#[tokio::test]
async fn json_logs_are_one_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, mut stderr) = serve_on_pipes(dir.path(), "json");
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no request line");
        let object: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            object["timestamp"].is_string() && object["level"].is_string(),
            "{line}"
        );
        if object["message"] == "request" {
            assert_eq!(object["path"], "/health", "{line}");
            assert_eq!(object["status"], 200, "{line}");
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
