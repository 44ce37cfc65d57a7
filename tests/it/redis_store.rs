//! Replicas sharing versions and the sync lock through a real Redis: real `pma-cache serve`
//! processes on port 0 and a private `redis-server`. New versions come from `pma-cache import`
//! (fast); long syncs from the test-only fault hook (`PMA_CACHE_FAULT`, `test-faults` feature).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::app::*;
use crate::helpers::redis::Redis;
use crate::helpers::{eventually, eventually_blocking};
use serde_json::Value;

async fn replica(redis: &Redis, extra: Vec<(&'static str, String)>) -> TestApp {
    let mut env = vec![
        ("REDIS_URL", redis.url()),
        ("REDIS_SIGNING_KEY", Redis::SIGNING_KEY.into()),
    ];
    env.extend(extra);
    spawn_app_with(Options {
        env,
        ..Options::default()
    })
    .await
}

/// Imports `csv` through Redis from a process of its own; returns its output.
fn import_shared(redis: &Redis, csv: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("in.csv");
    std::fs::write(&csv_path, csv).unwrap();
    Command::new(binary())
        .arg("import")
        .arg(&csv_path)
        .env("CACHE_FILE", dir.path().join("data_cache.json"))
        .env("REDIS_URL", redis.url())
        .env("REDIS_SIGNING_KEY", Redis::SIGNING_KEY)
        .output()
        .unwrap()
}

fn csv_with_rows(rows: usize) -> String {
    let mut csv = String::from("id,name\n");
    for i in 0..rows {
        csv.push_str(&format!("{i},row {i}\n"));
    }
    csv
}

async fn served_count(app: &TestApp) -> Option<u64> {
    let r = app.get_fetch_data("").await;
    if r.status() != 200 {
        return None;
    }
    let body: Value = r.json().await.unwrap();
    body["count"].as_u64()
}

async fn wait_until_served(app: &TestApp, count: u64) {
    wait_until_all_serve(&[app], count, Duration::from_secs(20), String::new).await;
}

/// Waits until every one of `apps` serves `count` rows; `context` says more on a failure.
async fn wait_until_all_serve(
    apps: &[&TestApp],
    count: u64,
    limit: Duration,
    context: impl Fn() -> String,
) {
    let what = format!("every replica serves {count} rows");
    eventually(limit, &what, || async {
        let mut served = Vec::new();
        for app in apps {
            served.push(served_count(app).await);
        }
        match served.iter().all(|s| *s == Some(count)) {
            true => Ok(()),
            false => Err(format!("{served:?}\n{}", context())),
        }
    })
    .await
}

/// A `pma-cache sync` that takes the Redis lock and hangs, with its private folder.
fn start_hanging_redis_sync(redis: &Redis, ttl: &str) -> (Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(binary())
        .arg("sync")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CACHE_FILE", dir.path().join("data_cache.json"))
        .env("REDIS_URL", redis.url())
        .env("REDIS_SIGNING_KEY", Redis::SIGNING_KEY)
        .env("REDIS_LOCK_TTL", ttl)
        .envs(faulty_pma_env("hang"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, dir)
}

fn wait_for_lock_key(redis: &Redis) {
    eventually_blocking(
        Duration::from_secs(20),
        "the sync takes the Redis lock",
        || match redis.command("EXISTS pma-cache:lock") {
            held if held == ":1" => Ok(()),
            other => Err(other),
        },
    );
}

async fn refresh_answer(app: &TestApp) -> String {
    let body: Value = app.post_refresh().await.json().await.unwrap();
    body["status"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_follow_a_version_published_by_another_process_and_a_late_one_serves_at_once() {
    let redis = Redis::start();
    let a = replica(&redis, vec![]).await;
    let b = replica(&redis, vec![]).await;
    assert_eq!(a.get_fetch_data("").await.status(), 503);
    let stream = a.get_fetch_data("?stream=true").await;
    let events = tokio::spawn(read_events(stream, Duration::from_secs(20)));

    let out = import_shared(&redis, &csv_with_rows(5));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until_served(&a, 5).await;
    wait_until_served(&b, 5).await;
    let kinds: Vec<String> = events
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(kinds, ["cached", "updated", "done"]);

    let late = replica(&redis, vec![]).await;
    assert_eq!(
        served_count(&late).await,
        Some(5),
        "a late replica serves at once"
    );
    let status = late.get_status().await;
    assert!(
        status["sync"]["last_written_by"]
            .as_str()
            .unwrap()
            .starts_with("pma-cache import"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_serves_the_published_zstd_frame_from_the_swap_on_and_it_decodes_to_identity() {
    let redis = Redis::start();
    let app = replica(&redis, vec![]).await;
    let out = import_shared(&redis, &csv_with_rows(50));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until_served(&app, 50).await;

    // No wait for a compressor: the variant came with the version.
    let zstd_answer = app.get_fetch_data_encoded("zstd").await;
    assert_eq!(zstd_answer.headers()["content-encoding"], "zstd");
    let frame = zstd_answer.bytes().await.unwrap();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let published: Vec<u8> = redis::cmd("HGET")
        .arg("pma-cache:current")
        .arg("body")
        .query(&mut conn)
        .unwrap();
    assert_eq!(frame, published, "the frame Redis holds, as it is");
    let identity = app
        .get_fetch_data_encoded("identity")
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(zstd::decode_all(&frame[..]).unwrap(), identity);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_refreshes_on_three_replicas_start_exactly_one_sync() {
    let redis = Redis::start();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&redis, faulty_pma_env("hang")).await);
    }
    let answers = futures_util::future::join_all(
        replicas
            .iter()
            .flat_map(|r| (0..5).map(move |_| refresh_answer(r))),
    )
    .await;
    assert_eq!(
        answers.iter().filter(|a| *a == "triggered").count(),
        1,
        "{answers:?}"
    );
    assert!(answers
        .iter()
        .all(|a| a == "triggered" || a == "already in progress"));
    // The one sync started hangs (the fault hook): exactly one replica shows it running.
    let mut running = 0;
    for replica in &replicas {
        running += usize::from(replica.get_status().await["sync"]["state"] == "running");
    }
    assert_eq!(running, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_down_replicas_keep_serving_and_after_it_returns_empty_the_next_version_reaches_all(
) {
    let mut redis = Redis::start();
    let a = replica(&redis, vec![]).await;
    let b = replica(&redis, vec![]).await;
    assert!(import_shared(&redis, &csv_with_rows(3)).status.success());
    wait_until_served(&a, 3).await;
    wait_until_served(&b, 3).await;

    redis.kill();
    let out = import_shared(&redis, &csv_with_rows(4));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Redis"), "{stderr}");
    assert_eq!(served_count(&a).await, Some(3));
    // The periodic check notices Redis is gone; /status says so.
    eventually(
        Duration::from_secs(20),
        "/status shows the Redis error",
        || async {
            let status = a.get_status().await;
            let error = status["cache"]["error"].as_str().unwrap_or_default();
            match error.contains("Redis") {
                true => Ok(()),
                false => Err(status.to_string()),
            }
        },
    )
    .await;
    assert_eq!(served_count(&b).await, Some(3), "still 200 with Redis down");

    redis.restart();
    let out = import_shared(&redis, &csv_with_rows(6));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until_served(&a, 6).await;
    wait_until_served(&b, 6).await;
    assert!(a.get_status().await["cache"]["error"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_lock_holder_blocks_syncs_only_until_its_lock_expires() {
    let redis = Redis::start();
    let app = replica(&redis, faulty_pma_env("hang")).await;
    let (mut holder, _dir) = start_hanging_redis_sync(&redis, "2s");
    wait_for_lock_key(&redis);
    assert_eq!(refresh_answer(&app).await, "already in progress");
    holder.kill().unwrap();
    holder.wait().unwrap();
    eventually(Duration::from_secs(20), "the lock expires", || async {
        match refresh_answer(&app).await.as_str() {
            "triggered" => Ok(()),
            "already in progress" => Err("already in progress".to_owned()),
            other => panic!("{other}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_longer_than_the_lock_expiry_keeps_its_lock() {
    let redis = Redis::start();
    let app = replica(&redis, faulty_pma_env("hang")).await;
    let (mut holder, _dir) = start_hanging_redis_sync(&redis, "1s");
    wait_for_lock_key(&redis);
    // Several lifetimes of the lock pass; it is renewed, so no other sync may start.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!(refresh_answer(&app).await, "already in progress");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
}

/// A `pma-cache worker` publishing to `redis` from the test bed's table `table`, its log in
/// its folder; killed when dropped.
struct Worker {
    child: Child,
    dir: tempfile::TempDir,
}

impl Worker {
    fn start(redis: &Redis, table: &str) -> Self {
        let bed = crate::helpers::testbed::testbed();
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
        let child = Command::new(binary())
            .arg("worker")
            .envs(bed.pma_env())
            .env("PMA_TABLE", table)
            .env("CACHE_FILE", dir.path().join("data_cache.json"))
            .env("REDIS_URL", redis.url())
            .env("REDIS_SIGNING_KEY", Redis::SIGNING_KEY)
            .env("SYNC_INTERVAL", "1h")
            .env("WORKER_PORT", "0")
            .env("TMPDIR", dir.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("worker.log")).unwrap_or_default()
    }

    /// Stops the worker as an orchestrator does (SIGTERM) and waits for it.
    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "worker: {status}\n{}", self.log());
        self.log()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_without_phpmyadmin_settings_forwards_refreshes_to_the_worker() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = crate::helpers::testbed::testbed();
    // A table of its own, so that changing it disturbs no other test.
    let table = "refresh_forwarded";
    bed.sql(&format!(
        "DROP TABLE IF EXISTS shop.{table}; \
         CREATE TABLE shop.{table} (id INT PRIMARY KEY, status VARCHAR(20)); \
         INSERT INTO shop.{table} VALUES (1, 'paid'), (2, 'pending');"
    ));
    let redis = Redis::start();
    let a = replica(&redis, vec![]).await;
    let b = replica(&redis, vec![]).await;

    // No worker yet: the replica says so, and what to check.
    let r = a.post_refresh().await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.starts_with("No worker answered"), "{message}");
    assert!(message.contains("REDIS_URL"), "{message}");

    // The worker's first sync reaches both replicas.
    let worker = Worker::start(&redis, table);
    wait_until_all_serve(&[&a, &b], 2, Duration::from_secs(120), || worker.log()).await;

    // A refresh asked of replica b, as an event stream, brings the worker's next version.
    bed.sql(&format!(
        "INSERT INTO shop.{table} VALUES (3, 'new'); UPDATE shop.{table} SET status = 'shipped' WHERE id = 1;"
    ));
    let stream = b
        .get_fetch_data("?stream=true&refresh=true&payload=none")
        .await;
    let events = read_events(stream, Duration::from_secs(120)).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["cached", "updated", "done"],
        "{events:?}\n{}",
        worker.log()
    );
    assert_eq!(events[0]["count"], 2);
    assert_eq!(events[1]["count"], 3);
    // ... and replica a serves it too, cell for cell.
    wait_until_all_serve(&[&a], 3, Duration::from_secs(20), || worker.log()).await;
    let body: Value = a.get_fetch_data("").await.json().await.unwrap();
    assert_eq!(
        body["data"][0],
        serde_json::json!({"id": "1", "status": "shipped"})
    );

    // POST /refresh through replica a: triggered by the worker, then the version lands.
    bed.sql(&format!("DELETE FROM shop.{table} WHERE id = 2;"));
    assert_eq!(refresh_answer(&a).await, "triggered");
    wait_until_all_serve(&[&a, &b], 2, Duration::from_secs(120), || worker.log()).await;
    let log = worker.stop();
    assert_eq!(
        log.matches("refresh request from a replica").count(),
        2,
        "{log}"
    );
    // The worker kept what it published and computed the change set to each next version.
    assert_eq!(log.matches("change set computed").count(), 2, "{log}");

    // The worker gone, the replicas say so again (and keep serving what they hold).
    let r = b.post_refresh().await;
    assert_eq!(r.status(), 503);
    assert_eq!(served_count(&b).await, Some(2));
    bed.sql(&format!("DROP TABLE shop.{table};"));
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_type_their_view_from_the_schema_the_publisher_sent() {
    let redis = Redis::start();
    let a = replica(&redis, vec![]).await;
    let b = replica(&redis, vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("in.csv");
    std::fs::write(
        &csv_path,
        "id,price\n1,9.50\n2,10.00\n3,18446744073709551615\n",
    )
    .unwrap();
    let schema = dir.path().join("t.sql");
    std::fs::write(
        &schema,
        "CREATE TABLE `orders` (`id` bigint(20) unsigned NOT NULL, `price` decimal(30,2), \
         PRIMARY KEY (`id`))",
    )
    .unwrap();
    let out = Command::new(binary())
        .arg("import")
        .arg(&csv_path)
        .arg("--schema")
        .arg(&schema)
        .env("CACHE_FILE", dir.path().join("data_cache.json"))
        .env("REDIS_URL", redis.url())
        .env("REDIS_SIGNING_KEY", Redis::SIGNING_KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for app in [&a, &b] {
        wait_until_served(app, 3).await;
        let tables: Value = app
            .get_with("/tables", &[("X-API-Key", KEY)])
            .await
            .json()
            .await
            .unwrap();
        let columns = &tables["tables"][0]["columns"];
        assert_eq!(columns[0]["type"], "unsigned", "{tables}");
        assert_eq!(columns[1]["type"], "decimal(30,2)", "{tables}");
        assert_eq!(tables["tables"][0]["key"], serde_json::json!(["id"]));
        // Typed, so 9.50 < 10.00 (as text it would not be).
        let answer = app
            .client
            .get(app.url("/query"))
            .header("X-API-Key", KEY)
            .query(&[("sql", "SELECT SUM(price) AS s, MAX(price) AS m FROM orders")])
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            answer
                .contains(r#""rows":[{"s":18446744073709551634.50,"m":18446744073709551615.00}]"#),
            "{answer}"
        );
    }
}

/// `rows` rows, the names of those in `renamed` changed.
fn csv_with_renamed(rows: usize, renamed: &[usize]) -> String {
    let mut csv = String::from("id,name\n");
    for i in 0..rows {
        let name = match renamed.contains(&i) {
            true => format!("renamed {i}"),
            false => format!("row {i}"),
        };
        csv.push_str(&format!("{i},{name}\n"));
    }
    csv
}

async fn delta_body(app: &TestApp, since: &str) -> (reqwest::StatusCode, String) {
    let r = app
        .client
        .get(app.url("/fetch-data"))
        .header("X-API-Key", KEY)
        .query(&[("since", since)])
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_starts_late_answers_deltas_as_the_others_do() {
    let redis = Redis::start();
    let keyed = || vec![("PMA_KEY", "id".to_owned())];
    let a = replica(&redis, keyed()).await;
    let mut etags = Vec::new();
    for (rows, renamed) in [(100, &[][..]), (101, &[5][..]), (102, &[5, 7][..])] {
        let out = import_shared(&redis, &csv_with_renamed(rows, renamed));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until_served(&a, rows as u64).await;
        let r = a.get_fetch_data("").await;
        etags.push(r.headers()["etag"].to_str().unwrap().to_owned());
    }
    // Replica a held every version: it answers from the first.
    let (status, from_a) = delta_body(&a, &etags[0]).await;
    assert_eq!(status, 200, "{from_a}");
    let delta: Value = serde_json::from_str(&from_a).unwrap();
    let mut upserted: Vec<&str> = delta["upserted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    upserted.sort_unstable();
    assert_eq!(upserted, ["renamed 5", "renamed 7", "row 100", "row 101"]);

    // Replica b starts after all three: it takes the change sets a shared, and answers the
    // same `since` with the same bytes.
    let b = replica(&redis, keyed()).await;
    wait_until_served(&b, 102).await;
    let from_b = eventually(
        Duration::from_secs(20),
        "b answers from the first version",
        || async {
            match delta_body(&b, &etags[0]).await {
                (reqwest::StatusCode::OK, body) => Ok(body),
                (status, body) => Err(format!("{status}: {body}")),
            }
        },
    )
    .await;
    assert_eq!(from_b, from_a);
    let (status, _) = delta_body(&b, &etags[1]).await;
    assert_eq!(status, 200);
    let (status, _) = delta_body(&b, &etags[2]).await;
    assert_eq!(status, 304);

    // A replica that keeps one change set: the version before the last is expired there.
    let mut one = keyed();
    one.push(("DELTA_VERSIONS", "1".to_owned()));
    let c = replica(&redis, one).await;
    wait_until_served(&c, 102).await;
    eventually(
        Duration::from_secs(20),
        "c answers from the version before",
        || async {
            match delta_body(&c, &etags[1]).await {
                (reqwest::StatusCode::OK, _) => Ok(()),
                (status, body) => Err(format!("{status}: {body}")),
            }
        },
    )
    .await;
    let (status, body) = delta_body(&c, &etags[0]).await;
    assert_eq!(status, 410, "{body}");
    assert!(body.contains("DELTA_VERSIONS"), "{body}");
}

/// Writes a version into Redis as a publisher would: `meta` naming the body's length and
/// SHA-256, signed with `key`; then announces it.
fn write_version(redis: &Redis, meta: &Value, body: &[u8], key: &str) {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use sha2::Digest;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut meta = meta.clone();
    meta["body_bytes"] = body.len().into();
    meta["body_sha256"] = b64(&sha2::Sha256::digest(body)).into();
    let version = meta["record"]["version"].as_str().unwrap().to_owned();
    let meta = serde_json::to_vec(&meta).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(b"pma-cache version 1\n");
    mac.update(&(meta.len() as u64).to_le_bytes());
    mac.update(&meta);
    let tag = b64(&mac.finalize().into_bytes());
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("HSET")
        .arg("pma-cache:current")
        .arg("meta")
        .arg(meta)
        .arg("body")
        .arg(body)
        .arg("mac")
        .arg(tag)
        .exec(&mut conn)
        .unwrap();
    redis::cmd("PUBLISH")
        .arg("pma-cache:versions")
        .arg(version)
        .exec(&mut conn)
        .unwrap();
}

/// The current version's `meta` and `body` as Redis holds them.
fn read_version(redis: &Redis) -> (Value, Vec<u8>) {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let (meta, body): (Vec<u8>, Vec<u8>) = redis::cmd("HMGET")
        .arg("pma-cache:current")
        .arg("meta")
        .arg("body")
        .query(&mut conn)
        .unwrap();
    (serde_json::from_slice(&meta).unwrap(), body)
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_refuses_versions_it_cannot_trust_once_each_and_keeps_serving_its_own() {
    let redis = Redis::start();
    let app = spawn_app_with(Options {
        env: vec![
            ("REDIS_URL", redis.url()),
            ("REDIS_SIGNING_KEY", Redis::SIGNING_KEY.into()),
        ],
        process: true,
        ..Options::default()
    })
    .await;
    assert!(import_shared(&redis, &csv_with_rows(5)).status.success());
    wait_until_served(&app, 5).await;
    let served = app.get_fetch_data("").await.bytes().await.unwrap();
    let (meta, body) = read_version(&redis);
    let forged = |version: &str, change: &dyn Fn(&mut Value)| {
        let mut meta = meta.clone();
        meta["record"]["version"] = version.into();
        change(&mut meta);
        meta
    };
    // The right bytes under a key the replica does not hold; a petabyte declared, signed; a
    // zstd bomb (1 GiB of zeros in a few KB) declared as a small document, signed.
    let mut bomb = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        std::io::Write::write_all(&mut bomb, &zeros).unwrap();
    }
    let bomb = bomb.finish().unwrap();
    let hostile: [(&str, Value, &[u8], &str, &str); 3] = [
        (
            "wrong key",
            forged("forged-1", &|_| {}),
            &body,
            "another-signing-key-000",
            "not signed with REDIS_SIGNING_KEY",
        ),
        (
            "huge size",
            forged("forged-2", &|m| m["document_bytes"] = (1u64 << 50).into()),
            &body,
            Redis::SIGNING_KEY,
            "declares a document of 1125899906842624 bytes",
        ),
        (
            "zstd bomb",
            forged("forged-3", &|m| m["document_bytes"] = 1000.into()),
            &bomb,
            Redis::SIGNING_KEY,
            "does not match its size and checksum",
        ),
    ];
    for (what, meta, body, key, reason) in &hostile {
        write_version(&redis, meta, body, key);
        eventually(
            Duration::from_secs(20),
            &format!("{what} is refused"),
            || async {
                match app.logs().contains(reason) {
                    true => Ok(()),
                    false => Err(app.logs()),
                }
            },
        )
        .await;
        // Announced again, and polled for a while: not read again.
        write_version(&redis, meta, body, key);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let tries = app.logs().matches(reason).count();
        assert_eq!(tries, 1, "{what}: tried {tries} times\n{}", app.logs());
        assert_eq!(
            app.get_fetch_data("").await.bytes().await.unwrap(),
            served,
            "{what}: the replica still serves its version"
        );
        let rss = rss_bytes(app.pid());
        assert!(rss < 512 << 20, "{what}: the replica holds {rss} bytes");
    }
    // A version signed by a real publisher is taken at once.
    assert!(import_shared(&redis, &csv_with_rows(7)).status.success());
    wait_until_served(&app, 7).await;
}

#[tokio::test]
async fn redis_without_a_signing_key_is_refused_at_start() {
    let out = Command::new(binary())
        .arg("serve")
        .env_clear()
        .env("API_KEY", READ_KEY)
        .env("REDIS_URL", "redis://127.0.0.1:9/")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("REDIS_SIGNING_KEY is not set"), "{stderr}");
}
