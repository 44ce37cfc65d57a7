//! The ChromeDriver process: started on a free loopback port, asked over HTTP whether it is
//! ready, and shut down with everything it started.
//!
//! ChromeDriver runs in a process group of its own, and Chromium stays in it. Ending the group
//! ends every browser process at once, which is what [`Drop`] does (one `kill` system call, no
//! waiting) when a sync is abandoned without [`ChromeDriver::shutdown`].
//!
//! The group is led by a small supervisor, a `sh` that starts ChromeDriver and then reads a
//! pipe from this process. The pipe closes when this process ends, however it ends (SIGKILL
//! included), and the supervisor then kills the whole group: no browser outlives pma-cache.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use axum::http::{header, Method, Request};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::sync::error::ExportError;

/// The supervisor: starts ChromeDriver (`$@`), waits for its stdin (our pipe) to close, then
/// kills its process group. Exits 127 at once when the program cannot be found.
const SUPERVISOR: &str = r#"command -v "$1" >/dev/null 2>&1 || exit 127
"$@" </dev/null &
read -r _
kill -KILL 0"#;

/// The supervisor's name on its command line (`$0`): how [`crate::sync::leftovers`] tells a group
/// this program started from a ChromeDriver someone else runs (`WEBDRIVER_URL`), which it must
/// never end.
pub const SUPERVISOR_NAME: &str = "pma-cache-chromedriver-supervisor";

/// How long ChromeDriver may take to answer `/status` with `ready: true`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A ChromeDriver process started by this program, with its Chromium.
pub struct ChromeDriver {
    /// The supervisor (see [`SUPERVISOR`]); ChromeDriver is its child.
    child: Option<Child>,
    /// The write end of the supervisor's pipe: dropping it ends the group.
    lifeline: Option<tokio::process::ChildStdin>,
    /// ChromeDriver's process group (its pid), kept apart: `Child::id` is gone once waited for.
    group: Option<rustix::process::Pid>,
    addr: SocketAddr,
    http: HttpClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    log_tasks: Vec<JoinHandle<()>>,
}

impl ChromeDriver {
    /// Starts `program` on a free loopback port, with `temp_dir` as the temporary folder of it
    /// and the browsers it starts, and waits until it is ready.
    pub async fn start(program: &Path, temp_dir: &Path) -> Result<Self, ExportError> {
        // A free port can be taken between probing and ChromeDriver's bind: try a few.
        let mut last_error = None;
        for _ in 0..3 {
            match Self::start_on_free_port(program, temp_dir).await {
                Ok(driver) => return Ok(driver),
                Err(e @ ExportError::Fatal(_)) => return Err(e),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    async fn start_on_free_port(program: &Path, temp_dir: &Path) -> Result<Self, ExportError> {
        let port = free_loopback_port()
            .context("cannot find a free loopback port for chromedriver")
            .map_err(ExportError::Transient)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut child = Command::new("sh")
            .args(["-c", SUPERVISOR, SUPERVISOR_NAME])
            .arg(program)
            .arg(format!("--port={port}"))
            .env("TMPDIR", temp_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ExportError::Fatal(anyhow::Error::new(e).context("cannot run sh")))?;
        let lifeline = child.stdin.take();
        let mut log_tasks = Vec::new();
        if let Some(out) = child.stdout.take() {
            log_tasks.push(tokio::spawn(forward_lines(out)));
        }
        if let Some(err) = child.stderr.take() {
            log_tasks.push(tokio::spawn(forward_lines(err)));
        }
        let group = child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32));
        let mut driver = ChromeDriver {
            child: Some(child),
            lifeline,
            group,
            addr,
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
            log_tasks,
        };
        driver.wait_ready(program).await?;
        tracing::debug!(%addr, "chromedriver is ready");
        Ok(driver)
    }

    /// The WebDriver address to connect a session to.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    async fn wait_ready(&mut self, program: &Path) -> Result<(), ExportError> {
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(exit))) = self.child.as_mut().map(Child::try_wait) {
                if exit.code() == Some(127) {
                    return Err(ExportError::Fatal(anyhow!(
                        "cannot start {}: not found; install chromium-driver (bin/setup) or set \
                         CHROMEDRIVER_PATH",
                        program.display()
                    )));
                }
                return Err(ExportError::Transient(anyhow!(
                    "chromedriver ({} --port={}) exited before it was ready: {exit}",
                    program.display(),
                    self.addr.port()
                )));
            }
            let answer =
                tokio::time::timeout(Duration::from_secs(2), self.request(Method::GET, "/status"))
                    .await;
            if let Ok(Ok(body)) = answer {
                if status_is_ready(&body) {
                    return Ok(());
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(ExportError::Transient(anyhow!(
                    "chromedriver did not become ready within {}s ({} --port={}); \
                     install chromium-driver (bin/setup) if it is missing",
                    READY_TIMEOUT.as_secs(),
                    program.display(),
                    self.addr.port()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One request to ChromeDriver's own endpoints; the body of a 2xx answer.
    async fn request(&self, method: Method, path: &str) -> anyhow::Result<Bytes> {
        let body = if method == Method::POST { "{}" } else { "" };
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))?;
        let response = self.http.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status.is_success(), "chromedriver answered {status}");
        Ok(body)
    }

    /// Asks ChromeDriver to end its sessions and exit, then ends whatever is left of its
    /// process group (Chromium helpers that outlive their parent).
    pub async fn shutdown(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.request(Method::POST, "/shutdown"),
        )
        .await;
        // Closing the pipe tells the supervisor to end the group (whatever /shutdown left).
        drop(self.lifeline.take());
        if let Some(mut child) = self.child.take() {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                tracing::warn!("chromedriver's supervisor did not exit; killing its group");
            }
            let _ = child.kill().await;
        }
        if let Some(group) = self.group.take() {
            kill_group(group);
        }
        for task in self.log_tasks.drain(..) {
            // The pipes close when ChromeDriver and Chromium are gone; don't wait for stragglers.
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // Reached only when a sync was abandoned without `shutdown`: end the whole group now.
        // Tokio reaps the killed child in the background (`kill_on_drop`).
        if let (Some(_child), Some(group)) = (self.child.take(), self.group.take()) {
            kill_group(group);
        }
        for task in &self.log_tasks {
            task.abort();
        }
    }
}

/// Sends SIGKILL to ChromeDriver's process group (ChromeDriver and its Chromium).
fn kill_group(group: rustix::process::Pid) {
    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
}

async fn forward_lines(stream: impl tokio::io::AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(target: "chromedriver", "{line}");
    }
}

fn free_loopback_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn status_is_ready(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/value/ready").and_then(|r| r.as_bool()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chromedriver_status_must_say_ready() {
        assert!(status_is_ready(
            br#"{"value":{"ready":true,"message":"ok"}}"#
        ));
        assert!(!status_is_ready(br#"{"value":{"ready":false}}"#));
        assert!(!status_is_ready(b"not json"));
    }
}
