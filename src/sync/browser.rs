//! The browser: a ChromeDriver process started for one sync (or a remote WebDriver server) and a
//! headless Chromium session driven through fantoccini.
//!
//! [`Browser`] owns everything a sync starts: the WebDriver session, the ChromeDriver process and
//! Chromium's profile folder. [`Browser::close`] ends them in order; if the sync's future is
//! dropped instead (its deadline passed), `Drop` still shuts ChromeDriver down, which ends its
//! Chromium, so no browser process outlives the sync.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use axum::http::Method;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::config::BrowserSettings;
use crate::sync::phpmyadmin::ExportError;

/// How long one ordinary WebDriver command may take. fantoccini sets no limit of its own.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long ChromeDriver may take to answer `/status` with `ready: true`.
const CHROMEDRIVER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a new session (Chromium's start) may take.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// Chromium's fixed window size: large enough that no element covers the export button.
const WINDOW_SIZE: &str = "1920,1080";
/// The name prefix of Chromium's profile folder, made inside the download folder.
const PROFILE_PREFIX: &str = ".chrome-profile-";

/// Runs one WebDriver step with a time limit, naming the step in the error.
pub async fn step<T, E>(
    what: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.with_context(|| format!("{what} failed")),
        Err(_) => Err(anyhow!("{what} timed out after {}s", limit.as_secs())),
    }
}

/// A headless Chromium session and whatever was started for it.
pub struct Browser {
    client: Option<Client>,
    driver: Option<ChromeDriver>,
    profile: Option<tempfile::TempDir>,
    download_dir: PathBuf,
}

impl Browser {
    /// Starts a session that downloads into `download_dir`: through `settings.webdriver_url` when
    /// set, otherwise through a ChromeDriver started here on a free loopback port.
    pub async fn start(
        settings: &BrowserSettings,
        download_dir: &Path,
    ) -> Result<Self, ExportError> {
        let download_dir = std::fs::create_dir_all(download_dir)
            .and_then(|()| download_dir.canonicalize())
            .with_context(|| format!("cannot use {} as download folder", download_dir.display()))
            .map_err(ExportError::Fatal)?;
        // The profile lives in the download folder so that a remote WebDriver sharing that folder
        // sees the same path, and so that every Chromium process names the folder it serves.
        let profile = tempfile::Builder::new()
            .prefix(PROFILE_PREFIX)
            .tempdir_in(&download_dir)
            .context("cannot create Chromium's profile folder")
            .map_err(ExportError::Fatal)?;

        let mut browser = Browser {
            client: None,
            driver: None,
            profile: Some(profile),
            download_dir,
        };
        match browser.open_session(settings).await {
            Ok(()) => Ok(browser),
            Err(e) => {
                browser.close().await;
                Err(e)
            }
        }
    }

    async fn open_session(&mut self, settings: &BrowserSettings) -> Result<(), ExportError> {
        let webdriver_url = match &settings.webdriver_url {
            Some(url) => url.clone(),
            None => {
                let driver = ChromeDriver::start(&settings.chromedriver_path).await?;
                let url = driver.url();
                self.driver = Some(driver);
                url
            }
        };
        let caps = self.capabilities(settings.chrome_path.as_deref());
        let client = step(
            "starting a Chromium session",
            SESSION_TIMEOUT,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(caps)
                .connect(&webdriver_url),
        )
        .await
        .with_context(|| format!("WebDriver at {webdriver_url}"))
        .map_err(ExportError::Transient)?;
        self.client = Some(client);
        self.allow_downloads().await.map_err(ExportError::Transient)
    }

    /// The WebDriver client of the running session.
    pub fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("the session is open until close")
    }

    /// The folder downloads land in (absolute).
    pub fn download_dir(&self) -> &Path {
        &self.download_dir
    }

    fn capabilities(&self, chrome_path: Option<&Path>) -> Capabilities {
        let profile = self
            .profile
            .as_ref()
            .map(|p| p.path().display().to_string());
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-gpu".to_owned(),
            format!("--window-size={WINDOW_SIZE}"),
            // This machine has no internet: keep Chromium from dialling out on its own.
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-quic".to_owned(),
            "--disable-domain-reliability".to_owned(),
            "--disable-client-side-phishing-detection".to_owned(),
            "--disable-default-apps".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-breakpad".to_owned(),
            "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,\
             AutofillServerCommunication,CertificateTransparencyComponentUpdater"
                .to_owned(),
            "--metrics-recording-only".to_owned(),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--no-pings".to_owned(),
            "--password-store=basic".to_owned(),
            "--use-mock-keychain".to_owned(),
            "--mute-audio".to_owned(),
        ];
        if let Some(profile) = profile {
            args.push(format!("--user-data-dir={profile}"));
        }
        let mut options = json!({
            "args": args,
            "prefs": {
                "download.default_directory": self.download_dir.display().to_string(),
                "download.prompt_for_download": false,
                "download.directory_upgrade": true,
                "safebrowsing.enabled": false,
                "credentials_enable_service": false,
                "profile.password_manager_enabled": false,
                // Images are not needed to drive the forms; skipping them shortens each page.
                "profile.managed_default_content_settings.images": 2,
            },
        });
        if let Some(binary) = chrome_path {
            options["binary"] = json!(binary.display().to_string());
        }
        let mut caps = Capabilities::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert("pageLoadStrategy".into(), json!("normal"));
        caps.insert("goog:chromeOptions".into(), options);
        caps
    }

    /// New headless Chromium ignores the download prefs unless told over CDP where to save.
    async fn allow_downloads(&self) -> anyhow::Result<()> {
        let command = CdpCommand {
            cmd: "Browser.setDownloadBehavior",
            params: json!({
                "behavior": "allow",
                "downloadPath": self.download_dir.display().to_string(),
                "eventsEnabled": true,
            }),
        };
        step(
            "allowing downloads (CDP Browser.setDownloadBehavior)",
            STEP_TIMEOUT,
            self.client().issue_cmd(command),
        )
        .await?;
        Ok(())
    }

    /// Keeps a screenshot and the page source in `dir` for a failed sync, then prunes the folder
    /// to the newest few. Best effort: a failure here is logged, never returned.
    pub async fn save_failure(&self, dir: &Path) {
        let Some(client) = &self.client else { return };
        let stem = failure_stem(time::OffsetDateTime::now_utc());
        let shot = step(
            "taking a screenshot",
            Duration::from_secs(10),
            client.screenshot(),
        )
        .await;
        let source = step(
            "reading the page source",
            Duration::from_secs(10),
            client.source(),
        )
        .await;
        let url = step(
            "reading the page address",
            Duration::from_secs(5),
            client.current_url(),
        )
        .await
        .map(|u| u.to_string())
        .unwrap_or_default();
        let saved = (|| -> anyhow::Result<()> {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            if let Ok(png) = &shot {
                std::fs::write(dir.join(format!("{stem}.png")), png)?;
            }
            let html = match &source {
                Ok(html) => format!("<!-- {url} -->\n{html}"),
                Err(e) => format!("<!-- {url} -->\n<!-- page source unavailable: {e:#} -->\n"),
            };
            std::fs::write(dir.join(format!("{stem}.html")), html)?;
            prune_failures(dir, KEEP_FAILURES)?;
            Ok(())
        })();
        match saved {
            Ok(()) => tracing::warn!(
                screenshot = %dir.join(format!("{stem}.png")).display(),
                page = %dir.join(format!("{stem}.html")).display(),
                "saved the failed page"
            ),
            Err(e) => tracing::warn!("could not save the failed page: {e:#}"),
        }
    }

    /// Ends the session, then ChromeDriver (and with it Chromium), then removes the profile.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            if let Err(e) = step(
                "closing the browser session",
                Duration::from_secs(15),
                client.close(),
            )
            .await
            {
                tracing::warn!("{e:#}");
            }
        }
        if let Some(driver) = self.driver.take() {
            driver.shutdown().await;
        }
        if let Some(profile) = self.profile.take() {
            let path = profile.path().to_owned();
            end_leftover_chromium(&path, Duration::from_secs(3)).await;
            if let Err(e) = profile.close() {
                tracing::debug!("could not remove {}: {e}", path.display());
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Only reached with parts still open when the sync was cancelled mid-way. Dropping the
        // client asks fantoccini to end the session; the ChromeDriver guard shuts down the rest.
        drop(self.client.take());
        drop(self.driver.take());
        if let Some(profile) = self.profile.take() {
            kill_leftover_chromium_now(profile.path());
        }
    }
}

/// How many failed-page pairs (screenshot + source) are kept.
pub const KEEP_FAILURES: usize = 5;

/// A failure file's name without extension: the UTC time, sortable and safe in file names.
fn failure_stem(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]-[minute]-[second].[subsecond digits:3]Z"
    );
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(&f)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn is_failure_stem(stem: &str) -> bool {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]-[minute]-[second].[subsecond digits:3]Z"
    );
    time::PrimitiveDateTime::parse(stem, &f).is_ok()
}

/// Deletes all but the newest `keep` failure pairs in `dir`; other files are left alone.
pub fn prune_failures(dir: &Path, keep: usize) -> std::io::Result<()> {
    let mut stems: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let ext = path.extension().and_then(|e| e.to_str());
        if !matches!(ext, Some("png" | "html")) {
            continue;
        }
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
            if is_failure_stem(stem) && !stems.iter().any(|s| s == stem) {
                stems.push(stem.to_owned());
            }
        }
    }
    stems.sort_unstable_by(|a, b| b.cmp(a));
    for stem in stems.iter().skip(keep) {
        for ext in ["png", "html"] {
            match std::fs::remove_file(dir.join(format!("{stem}.{ext}"))) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// A ChromeDriver vendor command that passes a Chrome DevTools Protocol command through.
#[derive(Debug)]
struct CdpCommand {
    cmd: &'static str,
    params: serde_json::Value,
}

impl WebDriverCompatibleCommand for CdpCommand {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (Method, Option<String>) {
        let body = json!({ "cmd": self.cmd, "params": self.params });
        (Method::POST, Some(body.to_string()))
    }
}

/// A ChromeDriver process started for one sync. Dropping it shuts ChromeDriver down (which
/// ends its Chromium) and kills it if it lingers.
struct ChromeDriver {
    child: Option<Child>,
    addr: SocketAddr,
    log_tasks: Vec<JoinHandle<()>>,
}

impl ChromeDriver {
    async fn start(program: &Path) -> Result<Self, ExportError> {
        // A free port can be taken between probing and ChromeDriver's bind: try a few.
        let mut last_error = None;
        for _ in 0..3 {
            match Self::start_on_free_port(program).await {
                Ok(driver) => return Ok(driver),
                Err(e @ ExportError::Fatal(_)) => return Err(e),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    async fn start_on_free_port(program: &Path) -> Result<Self, ExportError> {
        let port = free_loopback_port()
            .context("cannot find a free loopback port for chromedriver")
            .map_err(ExportError::Transient)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                let e = anyhow::Error::new(e).context(format!(
                    "cannot start {}: install chromium-driver (bin/setup) or set CHROMEDRIVER_PATH",
                    program.display()
                ));
                ExportError::Fatal(e)
            })?;
        let mut log_tasks = Vec::new();
        if let Some(out) = child.stdout.take() {
            log_tasks.push(tokio::spawn(forward_lines(out)));
        }
        if let Some(err) = child.stderr.take() {
            log_tasks.push(tokio::spawn(forward_lines(err)));
        }
        let mut driver = ChromeDriver {
            child: Some(child),
            addr,
            log_tasks,
        };
        driver.wait_ready(program).await?;
        tracing::debug!(%addr, "chromedriver is ready");
        Ok(driver)
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    async fn wait_ready(&mut self, program: &Path) -> Result<(), ExportError> {
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(exit))) = self.child.as_mut().map(Child::try_wait) {
                return Err(ExportError::Transient(anyhow!(
                    "chromedriver ({} --port={}) exited before it was ready: {exit}",
                    program.display(),
                    self.addr.port()
                )));
            }
            if let Ok(Ok((200, body))) = tokio::time::timeout(
                Duration::from_secs(2),
                http_local(self.addr, "GET", "/status"),
            )
            .await
            {
                if status_is_ready(&body) {
                    return Ok(());
                }
            }
            if started.elapsed() > CHROMEDRIVER_READY_TIMEOUT {
                return Err(ExportError::Transient(anyhow!(
                    "chromedriver did not become ready within {}s ({} --port={}); \
                     install chromium-driver (bin/setup) if it is missing",
                    CHROMEDRIVER_READY_TIMEOUT.as_secs(),
                    program.display(),
                    self.addr.port()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks ChromeDriver to end its sessions and exit; kills it if it has not exited soon after.
    async fn shutdown(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            http_local(self.addr, "POST", "/shutdown"),
        )
        .await;
        if let Some(mut child) = self.child.take() {
            match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!("chromedriver did not exit after /shutdown; killing it");
                    let _ = child.kill().await;
                }
            }
        }
        for task in self.log_tasks.drain(..) {
            // The pipes close when ChromeDriver and Chromium are gone; don't wait for stragglers.
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Cancelled mid-sync: no `.await` here, so shut down with a short blocking request.
        // A SIGKILL alone would orphan Chromium.
        shutdown_blocking(self.addr);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.start_kill();
        for task in &self.log_tasks {
            task.abort();
        }
    }
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

fn status_is_ready(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/value/ready").and_then(|r| r.as_bool()))
        .unwrap_or(false)
}

/// One plain HTTP/1.1 request to ChromeDriver on loopback; returns the status code and body.
async fn http_local(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(request_bytes(addr, method, path).as_bytes())
        .await?;
    // ChromeDriver keeps the connection open despite `Connection: close`: read by Content-Length.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if response_complete(&raw) {
            break;
        }
    }
    Ok(parse_response(&raw))
}

/// True once `raw` holds the headers and as many body bytes as Content-Length announces.
fn response_complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let headers = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let length = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(length) => raw.len() >= end + 4 + length,
        None => false,
    }
}

fn shutdown_blocking(addr: SocketAddr) {
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(request_bytes(addr, "POST", "/shutdown").as_bytes())
        .is_ok()
    {
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = stream.read(&mut chunk) {
            raw.extend_from_slice(&chunk[..n]);
            if response_complete(&raw) {
                break;
            }
        }
    }
}

fn request_bytes(addr: SocketAddr, method: &str, path: &str) -> String {
    let body = if method == "POST" { "{}" } else { "" };
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (status, body.to_owned())
}

/// Pids of processes whose command line names `profile` (Chromium and its helpers).
fn chromium_pids_using(profile: &Path) -> Vec<u32> {
    let needle = profile.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Waits up to `grace` for Chromium processes of `profile` to exit, then kills what remains.
async fn end_leftover_chromium(profile: &Path, grace: Duration) {
    let started = Instant::now();
    while !chromium_pids_using(profile).is_empty() {
        if started.elapsed() > grace {
            kill_leftover_chromium_now(profile);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kill_leftover_chromium_now(profile: &Path) {
    let pids = chromium_pids_using(profile);
    if pids.is_empty() {
        return;
    }
    tracing::warn!(?pids, "killing Chromium processes left behind");
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chromedriver_status_must_say_ready() {
        assert!(status_is_ready(
            r#"{"value":{"ready":true,"message":"ok"}}"#
        ));
        assert!(!status_is_ready(r#"{"value":{"ready":false}}"#));
        assert!(!status_is_ready("not json"));
    }

    #[test]
    fn a_raw_http_response_splits_into_status_and_body() {
        let (status, body) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
        assert_eq!((status, body.as_str()), (200, "{}"));
        assert_eq!(parse_response(b"").0, 0);
        assert!(response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        ));
        assert!(!response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{}"
        ));
    }

    #[test]
    fn failure_names_sort_by_time_and_are_recognised() {
        let a = failure_stem(time::macros::datetime!(2024-01-02 03:04:05.678 UTC));
        let b = failure_stem(time::macros::datetime!(2024-01-02 03:04:06 UTC));
        assert_eq!(a, "2024-01-02T03-04-05.678Z");
        assert!(a < b);
        assert!(is_failure_stem(&a));
        assert!(!is_failure_stem("notes"));
    }

    #[test]
    fn pruning_keeps_the_newest_pairs_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        for second in 0..8 {
            let stem = failure_stem(
                time::macros::datetime!(2024-01-01 00:00:00 UTC) + Duration::from_secs(second),
            );
            std::fs::write(dir.path().join(format!("{stem}.png")), b"png").unwrap();
            std::fs::write(dir.path().join(format!("{stem}.html")), b"html").unwrap();
        }
        std::fs::write(dir.path().join("README.txt"), b"keep me").unwrap();
        prune_failures(dir.path(), 5).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 11, "{names:?}");
        assert!(names.contains(&"README.txt".to_owned()));
        assert!(names.contains(&"2024-01-01T00-00-07.000Z.png".to_owned()));
        assert!(
            !names.iter().any(|n| n.starts_with("2024-01-01T00-00-02")),
            "{names:?}"
        );
    }
}
