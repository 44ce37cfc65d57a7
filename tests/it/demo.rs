//! `bin/demo` as a new user runs it: from a copy of the repository's files in a folder with no
//! `../shared` beside it, up to "serving", and stopped at several moments (a failure while the
//! test bed starts, Ctrl-C, SIGTERM), leaving nothing running. The pma-cache binary under test
//! is passed as `PMA_CACHE_BIN` so that the demo does not build a release of its own.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::helpers::app::binary;
use crate::helpers::{eventually_blocking, free_port};

const DEMO_KEY: &str = "demo-test-key-0a1b2c3d";

/// A copy of the files git tracks (as they are in the working tree), in `<tmp>/clone`.
fn copy_of_the_repository() -> (tempfile::TempDir, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let clone = tmp.path().join("clone");
    let listed = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .expect("git lists the repository's files");
    assert!(listed.status.success());
    for name in listed.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).unwrap();
        let (from, to) = (root.join(name), clone.join(name));
        if !from.exists() {
            continue; // deleted in the working tree
        }
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap();
    }
    assert!(
        !tmp.path().join("shared").exists(),
        "the copy must have no ../shared beside it"
    );
    (tmp, clone)
}

/// A running `bin/demo`, in a process group of its own (as a terminal would start it), with its
/// output lines arriving on a channel.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    output: Vec<String>,
    port: u16,
}

impl Demo {
    fn start(clone: &Path, path: Option<&str>) -> Self {
        let port = free_port();
        let mut command = Command::new(clone.join("bin/demo"));
        command
            .current_dir(clone)
            .env("PMA_CACHE_BIN", binary())
            .env("DEMO_ROWS", "60")
            .env("PORT", port.to_string())
            .env("API_KEY", DEMO_KEY)
            .env("HOST", "127.0.0.1")
            .env_remove("PMA_TARBALLS")
            .env_remove("PMA_TESTBED_ENV")
            .env_remove("CACHE_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(path) = path {
            command.env("PATH", path);
        }
        let mut child = command.spawn().expect("bin/demo starts");
        let (send, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let send = send.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if send.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            output: Vec::new(),
            port,
        }
    }

    /// Waits for an output line containing `needle`, or for `ready` to hold.
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let done = ready(&line);
                    self.output.push(line);
                    if done {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if ready("") {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the demo ended before {what}:\n{}", self.output.join("\n"))
                }
            }
            assert!(
                Instant::now() < deadline,
                "the demo never reached {what}:\n{}",
                self.output.join("\n")
            );
        }
    }

    fn signal(&self, signal: &str, group: bool) {
        let target = match group {
            true => format!("-{}", self.child.id()),
            false => self.child.id().to_string(),
        };
        let status = Command::new("kill")
            .args([signal, "--", &target])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the demo to exit; returns its exit code and everything it printed.
    fn wait(mut self) -> (Option<i32>, String) {
        let status = eventually_blocking(Duration::from_secs(120), "the demo stops", || {
            self.child
                .try_wait()
                .unwrap()
                .ok_or_else(|| self.output.join("\n"))
        });
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.output.push(line);
        }
        (status.code(), self.output.join("\n"))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", self.child.id())])
                .status();
            let _ = self.child.wait();
        }
    }
}

/// The processes whose command line or working folder is inside `dir` (the demo's MariaDB,
/// phpMyAdmin, ChromeDriver, Chromium and server all are).
fn processes_in(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == std::process::id().to_string() {
            continue;
        }
        let proc = entry.path();
        let cmdline = std::fs::read(proc.join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        let cwd = std::fs::read_link(proc.join("cwd"))
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
        let zombie = stat.rsplit(") ").next().is_some_and(|s| s.starts_with('Z'));
        if !zombie && (cmdline.contains(&dir) || cwd.starts_with(&dir)) {
            found.push(format!("{name}: {cmdline} (in {cwd})"));
        }
    }
    found
}

fn assert_nothing_left_in(dir: &Path, output: &str) {
    // What the demo stopped may take a moment to be reaped.
    eventually_blocking(Duration::from_secs(20), "nothing left running", || {
        let left = processes_in(dir);
        match left.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "{}\n\nthe demo's output:\n{output}",
                left.join("\n")
            )),
        }
    });
}

/// A folder whose `chromedriver` fails at once, first on a copy of `PATH`: the test bed's start
/// fails halfway, after MariaDB and phpMyAdmin are up.
fn path_with_a_broken_chromedriver(tmp: &Path) -> String {
    let bin = tmp.join("broken-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("chromedriver");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'chromedriver: broken on purpose' >&2\nexit 1\n",
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn the_demo_runs_from_a_bare_clone_and_leaves_nothing_running_however_it_stops() {
    let _one = crate::helpers::ONE_BROWSER.blocking_lock();
    let (tmp, clone) = copy_of_the_repository();
    let pids = clone.join("target/demo/pids");

    // 1. The test bed fails halfway (its ChromeDriver cannot start): a clear failure, and what
    //    had started (MariaDB, phpMyAdmin) is stopped.
    let path = path_with_a_broken_chromedriver(tmp.path());
    let mut demo = Demo::start(&clone, Some(&path));
    demo.wait_until("the test bed's start", |l| l.contains("starting MariaDB"));
    let (code, output) = demo.wait();
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("ChromeDriver exited while starting"),
        "{output}"
    );
    assert!(output.contains("demo: bin/testbed up failed"), "{output}");
    assert!(
        !output.contains("shared/phpmyadmin"),
        "the demo never asks for the older phpMyAdmin releases:\n{output}"
    );
    assert_nothing_left_in(&clone, &output);

    // 2. SIGTERM while the test bed starts, once MariaDB runs.
    let mut demo = Demo::start(&clone, None);
    demo.wait_until("MariaDB's start", |_| {
        std::fs::read_to_string(&pids).is_ok_and(|p| p.contains("TESTBED_MARIADB_PID"))
    });
    demo.signal("-TERM", false);
    let (code, output) = demo.wait();
    assert_eq!(code, Some(143), "{output}");
    assert_nothing_left_in(&clone, &output);

    // 3. Ctrl-C (SIGINT to the whole group, as a terminal sends it) during the first sync.
    let mut demo = Demo::start(&clone, None);
    demo.wait_until("the first sync", |l| {
        l.contains("first sync from phpMyAdmin")
    });
    std::thread::sleep(Duration::from_millis(1500));
    demo.signal("-INT", true);
    let (code, output) = demo.wait();
    assert_ne!(code, Some(0), "{output}");
    assert_nothing_left_in(&clone, &output);

    // 4. Up to "serving", answering with the demo's rows; then SIGTERM.
    let mut demo = Demo::start(&clone, None);
    demo.wait_until("serving", |l| l.contains("pma-cache is serving"));
    let answer = Command::new("curl")
        .args(["-sS", "-H", &format!("X-API-Key: {DEMO_KEY}")])
        .arg(format!("http://127.0.0.1:{}/fetch-data", demo.port))
        .output()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&answer.stdout).unwrap();
    assert_eq!(body["count"], 60, "{body}");
    let running = processes_in(&clone);
    for what in ["mariadbd", "php", "pma-cache"] {
        assert!(
            running.iter().any(|p| p.contains(what)),
            "the check sees the demo's {what}: {running:#?}"
        );
    }
    demo.signal("-TERM", false);
    let (code, output) = demo.wait();
    assert!(
        output.contains("demo: stopping the server, MariaDB, phpMyAdmin and ChromeDriver"),
        "{output}"
    );
    assert_eq!(code, Some(143), "{output}");
    assert_nothing_left_in(&clone, &output);
}
