//! Shared state between processes: the sync lock, what each version records, and the cache
//! folder's failure modes (full or read-only disk, leftovers of killed writers). Real
//! `pma-cache` processes; the test-only fault hook (`PMA_CACHE_FAULT`, `test-faults` feature) stands in
//! for a long or crashing sync, so no phpMyAdmin is needed here.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::app::*;
use crate::helpers::{eventually, eventually_blocking};
use serde_json::Value;

fn sync_command(cache_file: &Path, env: &[(&'static str, String)]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.arg("sync")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CACHE_FILE", cache_file)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    cmd
}

fn lock_path(cache_file: &Path) -> PathBuf {
    PathBuf::from(format!("{}.lock", cache_file.display()))
}

fn lock_is_held(cache_file: &Path) -> bool {
    let Ok(file) = File::open(lock_path(cache_file)) else {
        return false;
    };
    matches!(file.try_lock(), Err(TryLockError::WouldBlock))
}

/// Starts a `pma-cache sync` that takes the lock and hangs, and waits until it holds the lock.
fn start_hanging_file_sync(cache_file: &Path) -> Child {
    let mut child = sync_command(cache_file, &faulty_pma_env("hang"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually_blocking(Duration::from_secs(20), "the sync takes the lock", || {
        assert!(child.try_wait().unwrap().is_none(), "the sync exited early");
        lock_is_held(cache_file)
            .then_some(())
            .ok_or_else(|| "free".to_owned())
    });
    child
}

async fn wait_for_status(app: &TestApp, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(20), what, || async {
        let status = app.get_status().await;
        match ok(&status) {
            true => Ok(status),
            false => Err(status.to_string()),
        }
    })
    .await
}

#[tokio::test]
async fn while_another_process_syncs_refresh_answers_already_in_progress_and_sigkill_frees_the_lock(
) {
    let dir = tempfile::tempdir().unwrap();
    let cache_file = dir.path().join("data_cache.json");
    import_csv(&cache_file, SMALL_CSV).unwrap();
    let mut holder = start_hanging_file_sync(&cache_file);

    let app = spawn_app_with(Options {
        cache_file: Some(cache_file.clone()),
        env: faulty_pma_env("hang"),
        ..Options::default()
    })
    .await;
    let response = app.post_refresh().await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "already in progress");

    let out = sync_command(&cache_file, &faulty_pma_env("hang"))
        .arg("--no-wait")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another process is syncing"), "{stderr}");

    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(
        !lock_is_held(&cache_file),
        "the kernel frees the lock of a killed holder at once"
    );
    drop(app);
}

#[test]
fn a_waiting_sync_exits_0_without_exporting_when_the_other_process_wrote_a_version() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let cache_file = dir.path().join("data_cache.json");
    import_csv(&cache_file, SMALL_CSV).unwrap();
    let mut holder = start_hanging_file_sync(&cache_file);
    // Its fault hook would panic if it exported.
    let mut waiting = sync_command(&cache_file, &faulty_pma_env("panic"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(waiting.stderr.take().unwrap()).lines();
    let mut log = String::new();
    while !log.contains("waiting for it to finish") {
        let line = lines.next().expect("the sync says it waits").unwrap();
        log.push_str(&line);
        log.push('\n');
    }
    // The holder's new version lands (written as a sync writes it: record, then the cache).
    let fresh = dir.path().join("fresh.json");
    import_csv(&fresh, "id\n1\n2\n3\n").unwrap();
    std::fs::rename(
        format!("{}.meta", fresh.display()),
        format!("{}.meta", cache_file.display()),
    )
    .unwrap();
    std::fs::rename(&fresh, &cache_file).unwrap();
    holder.kill().unwrap();
    holder.wait().unwrap();

    for line in lines {
        log.push_str(&line.unwrap());
        log.push('\n');
    }
    let status = waiting.wait().unwrap();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("another process refreshed the cache at"),
        "{log}"
    );
    assert!(log.contains("not exporting again"), "{log}");
}

#[tokio::test]
async fn a_panicking_sync_is_reported_as_a_failure_and_frees_the_single_flight() {
    let app = spawn_app_with_env(faulty_pma_env("panic")).await;
    let stream = app.get_fetch_data("?stream=true&refresh=true").await;
    let events = read_events(stream, Duration::from_secs(20)).await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, ["cached", "error", "done"], "{events:?}");
    // Subscribers get the code; the cause is in /status, for admins.
    assert_eq!(events[1]["code"], "sync_failed", "{events:?}");

    let status = wait_for_status(&app, "idle", |s| s["sync"]["state"] == "idle").await;
    assert!(
        status["sync"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("panic"),
        "{status}"
    );
    let body: Value = app.post_refresh().await.json().await.unwrap();
    assert_eq!(
        body["status"], "triggered",
        "the single flight is free again"
    );
    wait_for_status(&app, "two failures counted", |s| {
        s["sync"]["consecutive_failures"] == 2
    })
    .await;
}

#[tokio::test]
async fn status_shows_the_last_sync_of_another_process_from_the_version_record() {
    let app = spawn_app().await;
    let status = app.get_status().await;
    let sync = &status["sync"];
    assert!(sync["last_success"].is_string(), "{status}");
    assert_eq!(sync["last_rows"], 2, "{status}");
    assert!(
        sync["last_written_by"]
            .as_str()
            .unwrap()
            .starts_with("pma-cache import (pid "),
        "{status}"
    );
}

#[tokio::test]
async fn temporary_files_of_dead_writers_are_removed_at_start_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cache_file = dir.path().join("data_cache.json");
    let dead = dir.path().join(".pma-cache-4000000000-x1.tmp");
    let live = dir
        .path()
        .join(format!(".pma-cache-{}-x2.tmp", std::process::id()));
    std::fs::write(&dead, b"half a cache").unwrap();
    std::fs::write(&live, b"half a cache").unwrap();
    import_csv(&cache_file, SMALL_CSV).unwrap();
    assert!(!dead.exists(), "a dead writer's file is removed");
    assert!(live.exists(), "a running writer's file is left alone");
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (the tests run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn big_csv(rows: usize) -> String {
    let mut csv = String::from("id,text\n");
    for i in 0..rows {
        csv.push_str(&format!(
            "{i},some text that takes room in the cache file\n"
        ));
    }
    csv
}

#[test]
fn a_full_disk_fails_clearly_keeps_the_old_cache_and_leaves_no_temporary_file() {
    let disk = Tmpfs::mount("256k");
    let cache_file = disk.path().join("data_cache.json");
    import_csv(&cache_file, SMALL_CSV).unwrap();
    let before = std::fs::read(&cache_file).unwrap();
    // The helper writes the CSV beside the cache: it fits, its JSON does not.
    let err = import_csv(&cache_file, &big_csv(2500)).unwrap_err();
    assert!(err.contains("the disk is full"), "{err}");
    assert!(err.contains(&disk.path().display().to_string()), "{err}");
    assert_eq!(std::fs::read(&cache_file).unwrap(), before);
    assert_no_temporaries(disk.path());
}

#[test]
fn a_read_only_cache_folder_fails_clearly_and_keeps_the_old_cache() {
    let disk = Tmpfs::mount("1m");
    let cache_file = disk.path().join("data_cache.json");
    import_csv(&cache_file, SMALL_CSV).unwrap();
    let before = std::fs::read(&cache_file).unwrap();
    let csv = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(csv.path(), "id\n1\n").unwrap();
    disk.remount("ro");
    let out = Command::new(binary())
        .arg("import")
        .arg(csv.path())
        .arg("--cache-file")
        .arg(&cache_file)
        .output()
        .unwrap();
    disk.remount("rw");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("read-only"), "{err}");
    assert!(err.contains(&disk.path().display().to_string()), "{err}");
    assert_eq!(std::fs::read(&cache_file).unwrap(), before);
    assert_no_temporaries(disk.path());
}

/// Runs `pma-cache worker` on `cache_file` until its log contains `until`, then stops it.
fn worker_log_until(cache_file: &Path, until: &str) -> String {
    use std::io::{BufRead, BufReader};
    let mut worker = Command::new(binary())
        .arg("worker")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CACHE_FILE", cache_file)
        .env("SYNC_INTERVAL", "1h")
        .env("WORKER_PORT", "0")
        .envs(faulty_pma_env("panic"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = String::new();
    for line in BufReader::new(worker.stderr.take().unwrap()).lines() {
        log.push_str(&line.unwrap());
        log.push('\n');
        if log.contains(until) {
            break;
        }
    }
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert!(log.contains(until), "{log}");
    log
}

#[test]
fn a_restarted_worker_waits_for_the_rest_of_the_interval_when_the_cache_is_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let cache_file = dir.path().join("data_cache.json");
    import_csv(&cache_file, SMALL_CSV).unwrap();
    let log = worker_log_until(&cache_file, "worker started");
    assert!(log.contains("first_sync_in=59m"), "{log}");
}

#[test]
fn a_worker_syncs_at_once_when_the_cache_is_old_and_says_which_attempt_failed() {
    let dir = tempfile::tempdir().unwrap();
    let cache_file = dir.path().join("data_cache.json");
    std::fs::write(
        &cache_file,
        r#"{"last_updated":"2020-01-01T00:00:00Z","count":1,"columns":["id"],"data":[{"id":"1"}]}"#,
    )
    .unwrap();
    let log = worker_log_until(&cache_file, "attempt 2 follows");
    assert!(log.contains("first_sync_in=0s"), "{log}");
    assert!(log.contains("scheduled sync attempt 1 failed"), "{log}");
}
