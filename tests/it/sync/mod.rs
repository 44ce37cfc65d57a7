//! End to end: the real binary, the real phpMyAdmin on the test bed, real Chromium.
//!
//! These tests run one at a time (one browser at a time on a 2-core machine, and exact counts of
//! exports in phpMyAdmin's log).

mod browser_streams;
mod incremental;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::helpers::app::*;
use crate::helpers::eventually;
use crate::helpers::testbed::{testbed, Testbed};
use serde_json::Value;

/// The environment that points a `pma-cache` process at the test bed.
fn pma_env_in(bed: &Testbed, tmp: &Path) -> Vec<(&'static str, String)> {
    let mut env = bed.pma_env();
    // Every process this sync starts inherits it: the leak check looks for it.
    env.push(("TMPDIR", tmp.display().to_string()));
    env
}

/// Replaces one setting of `env`.
fn set_env(env: &mut Vec<(&'static str, String)>, key: &'static str, value: impl Into<String>) {
    env.retain(|(k, _)| *k != key);
    env.push((key, value.into()));
}

/// A private folder holding a small cache: the folder, the cache file, and its bytes.
fn seeded_cache() -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let cache_file = dir.path().join("data_cache.json");
    import_csv(&cache_file, SMALL_CSV).unwrap();
    let before = std::fs::read(&cache_file).unwrap();
    (dir, cache_file, before)
}

/// Runs `pma-cache sync` with `env` on top of the test bed's settings.
fn run_sync(cache_file: &Path, env: &[(&'static str, String)]) -> Output {
    let out = Command::new(binary())
        .arg("sync")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CACHE_FILE", cache_file)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    out
}

/// Processes (other than `except`) started under the private temp folder `tmp`: a browser or
/// driver the sync left behind.
fn processes_under(tmp: &Path, except: Option<u32>) -> Vec<String> {
    let needle = format!("TMPDIR={}", tmp.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if Some(pid) == except || pid == std::process::id() {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!(
                "{pid}: {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    found
}

/// The cache's rows in the table's column order, sorted by id, NULL as `None`.
fn cache_rows(cache: &Value) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let columns: Vec<String> = cache["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let mut rows: Vec<Vec<Option<String>>> = cache["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| {
            let keys: Vec<&String> = record.as_object().unwrap().keys().collect();
            assert_eq!(keys.len(), columns.len());
            columns
                .iter()
                .map(|c| match &record[c] {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    other => panic!("values are strings or null, got {other}"),
                })
                .collect()
        })
        .collect();
    rows.sort_by_key(|r| {
        r[0].as_deref()
            .unwrap_or("")
            .parse::<i64>()
            .unwrap_or(i64::MAX)
    });
    (columns, rows)
}

fn assert_cache_equals_table(cache: &Value, bed: &Testbed) {
    let (columns, rows) = cache_rows(cache);
    let (table_columns, table_rows) = bed.table_as_rows(&bed.database, &bed.table);
    assert_eq!(columns, table_columns, "columns in the table's order");
    assert_eq!(rows.len(), table_rows.len(), "row count");
    for (got, want) in rows.iter().zip(&table_rows) {
        assert_eq!(got, want, "row with id {:?}", want[0]);
    }
    assert_eq!(cache["count"], table_rows.len());
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// How many exports phpMyAdmin has served so far (from its request log).
/// With `SYNC_FORCE` set to `force`, the sync the guard refused goes through: the cache holds
/// the table's `rows`.
fn forced_sync_takes_the_table(
    cache_file: &Path,
    env: &[(&'static str, String)],
    force: &str,
    rows: usize,
) {
    let mut forced = env.to_vec();
    forced.push(("SYNC_FORCE", force.into()));
    let out = run_sync(cache_file, &forced);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_json(cache_file)["count"], rows);
}

/// Exports phpMyAdmin has answered. Each sync posts the export form twice, in one session: the
/// table's structure (SQL), then its rows (CSV); phpMyAdmin's request log tells them apart by
/// neither address nor method, so the posts are counted in pairs.
fn exports_served(bed: &Testbed) -> usize {
    let log = std::fs::read_to_string(bed.dir.join("php.log")).unwrap_or_default();
    let posts = log
        .lines()
        .filter(|l| l.contains("route=/export") || l.contains("export.php"))
        .count();
    posts.div_ceil(2)
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_writes_a_cache_equal_to_the_table_and_leaves_no_browser_behind() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let dir = tempfile::tempdir().unwrap();
    let cache_file = dir.path().join("data_cache.json");
    let out = run_sync(&cache_file, &pma_env_in(bed, dir.path()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sync failed:\n{stderr}");
    let cache = read_json(&cache_file);
    assert_cache_equals_table(&cache, bed);
    // The seeded edge cases survive: the text NULL is not a null, and a real NULL is.
    let values: Vec<&Value> = cache["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_object().unwrap().values())
        .collect();
    assert!(
        values.iter().any(|v| v.as_str() == Some("NULL")),
        "text NULL kept"
    );
    assert!(values.iter().any(|v| v.is_null()), "SQL NULL is null");
    for phase in [
        "starting_browser",
        "logging_in",
        "exporting",
        "downloading",
        "converting",
        "writing",
    ] {
        assert!(stderr.contains(phase), "phase {phase} logged:\n{stderr}");
    }
    assert!(
        !stderr.contains(&bed.password),
        "the password never reaches the log"
    );
    assert_eq!(processes_under(dir.path(), None), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_fails_clearly_without_retrying_and_keeps_the_cache() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let (dir, cache_file, before) = seeded_cache();
    let wrong = "not-the-password-5521";
    let mut env = pma_env_in(bed, dir.path());
    set_env(&mut env, "PMA_PASSWORD", wrong);
    let logins = bed.logins_served();
    let out = run_sync(&cache_file, &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("rejected the login"), "{stderr}");
    assert!(
        stderr.contains("Cannot log in to the MySQL server"),
        "phpMyAdmin's own words:\n{stderr}"
    );
    assert_eq!(
        bed.logins_served() - logins,
        1,
        "a rejected login is not retried:\n{stderr}"
    );
    assert!(
        !stderr.contains(wrong),
        "the password never reaches the log"
    );
    assert_eq!(std::fs::read(&cache_file).unwrap(), before);
    let failures = dir.path().join("failures");
    let kept = std::fs::read_dir(&failures).map_or(0, Iterator::count);
    assert!(
        kept >= 2,
        "screenshot and page source kept in {}",
        failures.display()
    );
    // The evidence (the page may show user and database) is private, as the cache is.
    assert_eq!(open_to_others(dir.path()), Vec::<String>::new());
    assert_eq!(processes_under(dir.path(), None), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn phpmyadmin_down_fails_clearly_and_keeps_the_cache() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let (dir, cache_file, before) = seeded_cache();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let mut env = pma_env_in(bed, dir.path());
    set_env(&mut env, "PMA_URL", url);
    let out = run_sync(&cache_file, &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(
        stderr.contains("failed 3 times"),
        "transient failures are retried:\n{stderr}"
    );
    assert_eq!(std::fs::read(&cache_file).unwrap(), before);
    assert_eq!(processes_under(dir.path(), None), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_far_smaller_than_the_cache_is_refused_unless_forced() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let dir = tempfile::tempdir().unwrap();
    let cache_file = dir.path().join("data_cache.json");
    let table_rows = bed.table_as_rows(&bed.database, &bed.table).1.len();
    let mut big = String::from("id\n");
    for i in 0..table_rows * 3 {
        big.push_str(&format!("{i}\n"));
    }
    import_csv(&cache_file, &big).unwrap();
    let before = std::fs::read(&cache_file).unwrap();
    let env = pma_env_in(bed, dir.path());
    let out = run_sync(&cache_file, &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("far fewer"), "{stderr}");
    assert_eq!(std::fs::read(&cache_file).unwrap(), before);

    forced_sync_takes_the_table(&cache_file, &env, "1", table_rows);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_table_is_refused() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    bed.sql(
        "CREATE DATABASE IF NOT EXISTS e2e_empty; \
         CREATE TABLE IF NOT EXISTS e2e_empty.orders (id INT PRIMARY KEY, name TEXT); \
         DELETE FROM e2e_empty.orders;",
    );
    let dir = tempfile::tempdir().unwrap();
    let cache_file = dir.path().join("data_cache.json");
    let mut env = pma_env_in(bed, dir.path());
    set_env(&mut env, "PMA_DATABASE", "e2e_empty");
    let out = run_sync(&cache_file, &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no rows"), "{stderr}");
    assert!(!cache_file.exists(), "nothing written");
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_subscribers_get_the_cache_then_the_refreshed_table() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let tmp = tempfile::tempdir().unwrap();
    let mut env = pma_env_in(bed, tmp.path());
    // Through the bed's own ChromeDriver: the WEBDRIVER_URL path.
    env.push(("WEBDRIVER_URL", bed.webdriver_url.clone()));
    let app = spawn_app_with(Options {
        seed: Some(SMALL_CSV),
        env,
        ..Options::default()
    })
    .await;
    let r = app.get_fetch_data("?stream=true&refresh=true").await;
    assert_eq!(r.status(), 200);
    let events = read_events(r, Duration::from_secs(180)).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["cached", "updated", "done"], "{}", app.logs());
    assert_eq!(events[0]["payload"]["count"], 2);
    assert_cache_equals_table(&events[1]["payload"], bed);
    let served: Value = app.get_fetch_data("").await.json().await.unwrap();
    assert_eq!(served, events[1]["payload"]);
    let status = app.get_status().await;
    assert_eq!(status["sync"]["state"], "idle");
    assert!(status["sync"]["last_success"].is_string(), "{status}");
    assert!(!app.logs().contains(&bed.password));
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_refreshes_start_exactly_one_export() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let tmp = tempfile::tempdir().unwrap();
    let app = spawn_app_with_env(pma_env_in(bed, tmp.path())).await;
    let exports_before = exports_served(bed);
    let requests = (0..50).map(|_| app.post_refresh());
    let answers = futures_util::future::join_all(requests).await;
    let mut triggered = 0;
    for r in answers {
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        match body["status"].as_str().unwrap() {
            "triggered" => triggered += 1,
            "already in progress" => {}
            other => panic!("unexpected answer {other}"),
        }
    }
    assert_eq!(triggered, 1);
    let status = wait_for_sync_end(&app).await;
    assert!(
        status["sync"]["last_success"].is_string(),
        "{status}\n{}",
        app.logs()
    );
    assert_eq!(
        exports_served(bed) - exports_before,
        1,
        "exactly one export reached phpMyAdmin"
    );
    let body: Value = app.get_fetch_data("").await.json().await.unwrap();
    assert_cache_equals_table(&body, bed);
    // The browser is kept for the next refresh, and ends with the server.
    assert!(app.stop().success());
    assert_eq!(processes_under(tmp.path(), None), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_refresh_is_reported_to_subscribers_and_in_status() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let tmp = tempfile::tempdir().unwrap();
    let mut env = pma_env_in(bed, tmp.path());
    set_env(&mut env, "PMA_PASSWORD", "wrong-password-9931");
    // Incremental syncs on: the state read before the first full export logs in first.
    set_env(&mut env, "SYNC_FULL_EVERY", "24h");
    let app = spawn_app_with(Options {
        seed: Some(SMALL_CSV),
        env,
        ..Options::default()
    })
    .await;
    let logins = bed.logins_served();
    let before = app.get_fetch_data("").await.bytes().await.unwrap();
    let r = app.get_fetch_data("?stream=true&refresh=true").await;
    let events = read_events(r, Duration::from_secs(180)).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["cached", "error", "done"], "{}", app.logs());
    // Subscribers get a code and a short message; the details are for admins and the log.
    assert_eq!(events[1]["code"], "login_rejected", "{}", events[1]);
    let message = events[1]["message"].as_str().unwrap();
    assert!(message.contains("rejected the login"), "{message}");
    assert!(
        !message.contains(&bed.pma_url) && !message.contains(&bed.username),
        "{message}"
    );
    let status = wait_for_sync_end(&app).await;
    let error = status["sync"]["last_error"].as_str().unwrap();
    assert!(error.contains("rejected the login"), "{status}");
    assert_eq!(bed.logins_served() - logins, 1, "one login, never retried");
    // No login is tried again until an admin asks: not on request, not by a stream.
    let r = app.post_refresh().await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("retry_login=true"),
        "{body}"
    );
    let r = app.get_fetch_data("?stream=true&refresh=true").await;
    let events = read_events(r, Duration::from_secs(30)).await;
    assert_eq!(events[1]["code"], "login_blocked", "{events:?}");
    assert_eq!(
        app.get_status().await["sync"]["recent"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let r = app
        .client
        .post(app.url("/refresh?retry_login=true"))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "an admin may ask for another login");
    let status = eventually(
        Duration::from_secs(180),
        "the second login ends",
        || async {
            let status = app.get_status().await;
            match status["sync"]["recent"].as_array().unwrap().len() == 2 {
                true => Ok(status),
                false => Err(status.to_string()),
            }
        },
    )
    .await;
    assert!(!status.to_string().contains("wrong-password-9931"));
    assert!(!app.logs().contains("wrong-password-9931"));
    assert_eq!(
        app.get_fetch_data("").await.bytes().await.unwrap(),
        before,
        "old cache still served"
    );
}

async fn wait_for_sync_end(app: &TestApp) -> Value {
    eventually(Duration::from_secs(180), "the sync ends", || async {
        let status = app.get_status().await;
        let ended = status["sync"]["last_success"].is_string()
            || status["sync"]["last_failure"].is_string();
        match status["sync"]["state"] == "idle" && ended {
            true => Ok(status),
            false => Err(status.to_string()),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standalone_worker_syncs_at_start_and_a_separate_server_serves_its_file() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let tmp = tempfile::tempdir().unwrap();
    // The API, with no phpMyAdmin settings, on an empty cache folder.
    let app = spawn_app_with(Options::default()).await;
    assert_eq!(app.get_fetch_data("").await.status(), 503);
    // The worker's own /health and /metrics, on an address of its own.
    let worker_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let worker_url = format!("http://127.0.0.1:{worker_port}");
    let mut worker = Command::new(binary())
        .arg("worker")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CACHE_FILE", &app.cache_file)
        .env("SYNC_INTERVAL", "1h")
        .env("WORKER_HOST", "127.0.0.1")
        .env("WORKER_PORT", worker_port.to_string())
        .env("ADMIN_API_KEY", KEY)
        .envs(pma_env_in(bed, tmp.path()))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let body: Value = eventually(
        Duration::from_secs(180),
        "the worker writes the cache",
        || {
            if let Ok(Some(status)) = worker.try_wait() {
                panic!("the worker exited with {status}");
            }
            async {
                let r = app.get_fetch_data("").await;
                match r.status().as_u16() {
                    200 => Ok(r.json().await.unwrap()),
                    status => Err(format!("status {status}")),
                }
            }
        },
    )
    .await;
    assert_cache_equals_table(&body, bed);
    let health: Value = app
        .client
        .get(format!("{worker_url}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let r = app
        .client
        .get(format!("{worker_url}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "the worker's /metrics asks for a key (ADMIN_API_KEY or METRICS_KEY)"
    );
    // The sync's outcome reaches the metrics a moment after the cache file.
    let metrics = eventually(
        Duration::from_secs(20),
        "the worker's /metrics counts its sync",
        || async {
            let text = app
                .client
                .get(format!("{worker_url}/metrics"))
                .header("X-API-Key", KEY)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            match text.contains("pma_cache_syncs_total{result=\"success\"} 1") {
                true => Ok(text),
                false => Err(text),
            }
        },
    )
    .await;
    assert!(
        metrics.contains("pma_cache_sync_duration_seconds"),
        "{metrics}"
    );
    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    let out = worker.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the worker stops cleanly on SIGTERM:\n{stderr}"
    );
    assert!(stderr.contains("sync succeeded"), "{stderr}");
    assert!(!stderr.contains(&bed.password));
    assert_eq!(processes_under(tmp.path(), None), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_with_a_sync_interval_fills_a_missing_cache_at_start() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let tmp = tempfile::tempdir().unwrap();
    let mut env = pma_env_in(bed, tmp.path());
    set_env(&mut env, "SYNC_INTERVAL", "1h");
    let app = spawn_app_with(Options {
        env,
        ..Options::default()
    })
    .await;
    let status = wait_for_sync_end(&app).await;
    assert!(status["sync"]["last_success"].is_string(), "{status}");
    assert_eq!(status["sync"]["interval_seconds"], 3600);
    assert!(status["sync"]["next_run"].is_string(), "{status}");
    let body: Value = app.get_fetch_data("").await.json().await.unwrap();
    assert_cache_equals_table(&body, bed);
}

#[tokio::test(flavor = "multi_thread")]
async fn three_syncs_and_refreshes_on_a_server_of_the_same_file_make_exactly_one_export() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let tmp = tempfile::tempdir().unwrap();
    let env = pma_env_in(bed, tmp.path());
    let app = spawn_app_with_env(env.clone()).await;
    let exports_before = exports_served(bed);
    let syncs: Vec<_> = (0..3)
        .map(|_| {
            Command::new(binary())
                .arg("sync")
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("CACHE_FILE", &app.cache_file)
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let refreshes = futures_util::future::join_all((0..5).map(|_| app.post_refresh())).await;
    for r in refreshes {
        assert_eq!(r.status(), 202);
    }
    let mut exporters = 0;
    for sync in syncs {
        let out = tokio::task::spawn_blocking(move || sync.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "every sync exits 0:\n{stderr}");
        if stderr.contains("sync succeeded") {
            exporters += 1;
        } else {
            assert!(
                stderr.contains("another process refreshed the cache at"),
                "{stderr}"
            );
        }
    }
    let status = wait_for_sync_end(&app).await;
    if app.logs().contains("sync succeeded") {
        exporters += 1;
    }
    assert_eq!(exporters, 1, "{status}\n{}", app.logs());
    assert_eq!(
        exports_served(bed) - exports_before,
        1,
        "exactly one export"
    );
    // The server serves that version, whoever wrote it.
    let body = eventually(
        Duration::from_secs(20),
        "the new version is served",
        || async {
            let body: Value = app.get_fetch_data("").await.json().await.unwrap();
            match body["count"] != 2 {
                true => Ok(body),
                false => Err(body["last_updated"].to_string()),
            }
        },
    )
    .await;
    assert_cache_equals_table(&body, bed);
    // A browser the server kept for its next refresh ends with the server.
    assert!(app.stop().success());
    assert_eq!(processes_under(tmp.path(), None), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shrink_guard_reads_a_cache_in_any_key_order_and_refuses_when_the_count_is_unknown() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let dir = tempfile::tempdir().unwrap();
    let cache_file = dir.path().join("data_cache.json");
    let table_rows = bed.table_as_rows(&bed.database, &bed.table).1.len();
    let records: Vec<String> = (0..table_rows * 3)
        .map(|i| format!("{{\"id\":\"{i}\"}}"))
        .collect();
    let reordered = format!(
        "{{\"data\":[{}],\"columns\":[\"id\"],\"count\":{},\"last_updated\":\"2026-01-01T00:00:00Z\"}}",
        records.join(","),
        records.len()
    );
    std::fs::write(&cache_file, &reordered).unwrap();
    let env = pma_env_in(bed, dir.path());
    let out = run_sync(&cache_file, &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("far fewer"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&cache_file).unwrap(), reordered);

    let truncated = &reordered[..reordered.len() / 2];
    std::fs::write(&cache_file, truncated).unwrap();
    let out = run_sync(&cache_file, &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cached row count cannot be known"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&cache_file).unwrap(), truncated);

    forced_sync_takes_the_table(&cache_file, &env, "true", table_rows);
}

/// Names in `tmp` of folders a sync makes (browser downloads, work folders).
fn sync_folders(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pma-cache-") || n.to_lowercase().contains("chromium"))
        .collect()
}

/// Everything pma-cache wrote in `dir`, with its mode, that others than its user may open.
fn open_to_others(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            found.push(format!("{} {mode:o}", entry.path().display()));
        }
        if meta.is_dir() {
            found.extend(open_to_others(&entry.path()));
        }
    }
    found
}

/// Waits (bounded) until no process started under `tmp` runs.
async fn assert_no_process_under(tmp: &Path, what: &str) {
    let started = std::time::Instant::now();
    loop {
        let left = processes_under(tmp, None);
        if left.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: processes left: {left:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_killed_at_any_moment_leaves_the_cache_whole_and_nothing_running() {
    use tokio::io::AsyncBufReadExt;
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    for moment in [
        "starting_browser",
        "logging_in",
        "downloading",
        "converting",
    ] {
        let (dir, cache_file, before) = seeded_cache();
        let tmp = tempfile::tempdir().unwrap();
        let env = pma_env_in(bed, tmp.path());
        let mut child = tokio::process::Command::new(binary())
            .arg("sync")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CACHE_FILE", &cache_file)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let marker = format!("phase=\"{moment}\"");
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            let reached = line.contains("sync phase started") && line.contains(&marker);
            seen.push(line);
            if reached {
                break;
            }
        }
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        assert!(
            seen.last().is_some_and(|l| l.contains(&marker)),
            "{moment} never came:\n{}",
            seen.join("\n")
        );

        let after = std::fs::read(&cache_file).unwrap();
        if after != before {
            assert_cache_equals_table(&read_json(&cache_file), bed);
        }
        assert_no_process_under(tmp.path(), moment).await;

        let out = run_sync(&cache_file, &env);
        assert!(
            out.status.success(),
            "the next sync after a kill while {moment} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_cache_equals_table(&read_json(&cache_file), bed);
        assert_no_process_under(tmp.path(), moment).await;
        // Nothing left in the temp folder, Chromium's own folders included.
        assert_eq!(
            sync_folders(tmp.path()),
            Vec::<String>::new(),
            "after {moment}"
        );
        // The cache, its record and its lock are private to pma-cache's user.
        assert_eq!(
            open_to_others(cache_file.parent().unwrap()),
            Vec::<String>::new(),
            "after {moment}"
        );
        drop(dir);
    }
}
