//! What a killed pma-cache leaves behind, and how the next one ends it.
//!
//! Every folder a sync makes in the temp folder is named after its process:
//! `pma-cache-<kind>-<pid>-<start time>-<random>`. The start time (in clock ticks since boot, from
//! `/proc`) tells a live owner from a new process that got the same pid. Chromium names the folder
//! on its command line (`--user-data-dir` inside it), so the processes that served a folder are
//! found by it. A ChromeDriver this program started leads their process group under its
//! supervisor; a ChromeDriver run by someone else (`WEBDRIVER_URL`) is never ended.

use std::io;
use std::path::{Path, PathBuf};

use crate::sync::chromedriver;

/// Creates a folder of `kind` for this process in the temp folder, private to its user (0700:
/// it holds the browser's profile and the exported CSV); removed when dropped.
pub fn folder(kind: &str) -> io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let me = std::process::id();
    let start = start_time(me).unwrap_or(0);
    tempfile::Builder::new()
        .prefix(&format!("pma-cache-{kind}-{me}-{start}-"))
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
}

/// Ends the browser processes and removes the folders of pma-cache processes that are gone.
/// Folders of live processes (another `sync` running) are left alone. Returns what was removed.
pub fn clean_stale() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((pid, start)) = name.to_str().and_then(owner) else {
            continue;
        };
        if start_time(pid) == Some(start) {
            continue;
        }
        let path = entry.path();
        end_processes_serving(&path);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => removed.push(path),
            Err(e) => tracing::warn!("cannot remove the stale folder {}: {e}", path.display()),
        }
    }
    if !removed.is_empty() {
        tracing::info!(
            ?removed,
            "removed what earlier, killed pma-cache processes left behind"
        );
    }
    removed
}

/// The owner (pid, start time) a folder's name records, if it is one of ours.
fn owner(name: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix("pma-cache-")?;
    let mut parts = rest.split('-');
    let _kind = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((pid, start))
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
fn start_time(pid: u32) -> Option<u64> {
    stat_field(pid, 22)
}

/// Field `n` (1-based, as in proc(5)) of `/proc/<pid>/stat`; fields after the command name only.
fn stat_field(pid: u32, n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name.split_whitespace().nth(n - 3)?.parse().ok()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
}

/// Kills the processes whose command line names `folder`, and the process group of the ChromeDriver
/// that served them when this program started it (its supervisor leads the group).
fn end_processes_serving(folder: &Path) {
    let needle = folder.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    let pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && cmdline(pid).contains(&needle))
        .collect();
    let mut groups: Vec<u32> = Vec::new();
    for &pid in &pids {
        if let Some(group) = stat_field(pid, 5).map(|g| g as u32) {
            if group != pid && is_our_supervisor(group) && !groups.contains(&group) {
                groups.push(group);
            }
        }
        kill(pid, false);
    }
    for group in groups {
        kill(group, true);
    }
}

/// Whether `pid` is a ChromeDriver supervisor started by pma-cache (see
/// [`chromedriver::SUPERVISOR_NAME`]); its `$0` is the supervisor's name, the word after the script.
fn is_our_supervisor(pid: u32) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    args.len() > 3
        && args[0].ends_with(b"sh")
        && args[1] == b"-c"
        && args[3] == chromedriver::SUPERVISOR_NAME.as_bytes()
}

fn kill(pid: u32, group: bool) {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    let signal = rustix::process::Signal::KILL;
    let _ = if group {
        rustix::process::kill_process_group(pid, signal)
    } else {
        rustix::process::kill_process(pid, signal)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `clean_stale` sweeps the whole temp folder: tests that call it take turns, or one would
    /// remove the other's stale folder first.
    fn one_sweep_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        static SWEEP: std::sync::Mutex<()> = std::sync::Mutex::new(());
        SWEEP.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn folder_names_record_their_owner() {
        let dir = folder("test").unwrap();
        let name = dir.path().file_name().unwrap().to_str().unwrap().to_owned();
        let (pid, start) = owner(&name).unwrap();
        assert_eq!(pid, std::process::id());
        assert_eq!(start_time(pid), Some(start));
        assert_eq!(owner("pma-cache-download-abc"), None);
        assert_eq!(owner("something-else"), None);
    }

    #[test]
    fn folders_are_private_to_their_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = folder("test").unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{mode:o}");
    }

    #[test]
    fn folders_of_live_processes_are_kept_and_of_dead_ones_removed() {
        let _turn = one_sweep_at_a_time();
        let mine = folder("test").unwrap();
        // A pid that is alive (this one) but started at another time: a reused pid.
        let reused =
            std::env::temp_dir().join(format!("pma-cache-test-{}-1-abcdef", std::process::id()));
        std::fs::create_dir_all(&reused).unwrap();
        // Any pma-cache starting on this machine sweeps too: what counts is that the folder went.
        clean_stale();
        assert!(!reused.exists());
        assert!(mine.path().exists());
    }

    #[test]
    fn a_webdriver_someone_else_runs_survives_the_cleanup_of_our_stale_browser() {
        use std::os::unix::process::CommandExt;
        let _turn = one_sweep_at_a_time();
        let stale =
            std::env::temp_dir().join(format!("pma-cache-test-{}-2-webdrv", std::process::id()));
        std::fs::create_dir_all(&stale).unwrap();
        // A ChromeDriver started by someone else leads its group; its "Chromium" names our
        // stale folder, as a browser of a killed pma-cache using WEBDRIVER_URL would.
        let mut driver = std::process::Command::new("sh")
            .args([
                "-c",
                r#"sh -c 'while :; do sleep 1; done' browser "$PROFILE" & sleep 300; :"#,
                "chromedriver",
            ])
            .env("PROFILE", stale.join("profile"))
            .process_group(0)
            .spawn()
            .unwrap();
        let needle = stale.display().to_string();
        let browser_seen = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
                let pid = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok());
                pid.is_some_and(|pid| cmdline(pid).contains(&needle))
            })
        });
        assert!(browser_seen, "the stand-in browser did not start");

        clean_stale();
        let driver_alive = driver.try_wait().unwrap().is_none();
        kill(driver.id(), true);
        let _ = driver.wait();
        assert!(!stale.exists(), "the stale folder is still there");
        assert!(
            driver_alive,
            "the cleanup ended a ChromeDriver it did not start"
        );
    }
}
