//! The WebDriver session: headless Chromium through a ChromeDriver started here (or a remote
//! WebDriver server), its capabilities, the CDP commands the flow needs, and [`step`], the
//! time limit every WebDriver command runs under (fantoccini has none of its own).
//!
//! [`Browser`] owns everything a session starts: the session, the ChromeDriver process and
//! Chromium's profile folder. [`Browser::close`] ends them in order; if a `Browser` is dropped
//! instead, `Drop` ends ChromeDriver's process group at once without waiting.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use axum::http::Method;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use crate::config::BrowserSettings;
use crate::sync::chromedriver::ChromeDriver;
use crate::sync::error::ExportError;
use crate::sync::leftovers;

/// How long one ordinary WebDriver command may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new session (Chromium's start) may take.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// Chromium's fixed window size: large enough that no element covers the export button.
const WINDOW_SIZE: &str = "1920,1080";
/// Chromium's profile folder, inside the browser's folder (a dot name: never a download).
const PROFILE: &str = ".chrome-profile";
/// How long a kept browser may take to show it is alive.
const ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one WebDriver command with a time limit. A failure or a timeout is
/// [`ExportError::Transient`] and names the step.
pub async fn step<T, E>(
    what: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, ExportError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(ExportError::Transient(
            anyhow::Error::new(e).context(format!("{what} failed")),
        )),
        Err(_) => Err(ExportError::Transient(anyhow!(
            "{what} timed out after {}s",
            limit.as_secs()
        ))),
    }
}

/// A headless Chromium session and whatever was started for it.
pub struct Browser {
    client: Option<Client>,
    driver: Option<ChromeDriver>,
    /// The browser's own folder: downloads land in it, Chromium's profile is inside it.
    folder: Option<tempfile::TempDir>,
    download_dir: PathBuf,
    /// The export page address that worked, so a later sync goes straight to it.
    pub export_url: Option<url::Url>,
}

/// The folder, inside the browser's own, that ChromeDriver and Chromium get as `TMPDIR`.
const BROWSER_TEMP: &str = ".tmp";

impl Browser {
    /// Starts a session that downloads into a new folder of its own (see
    /// [`leftovers::folder`]): through `settings.webdriver_url` when set, otherwise through a
    /// ChromeDriver started here on a free loopback port.
    pub async fn start(settings: &BrowserSettings) -> Result<Self, ExportError> {
        let folder = leftovers::folder("browser")
            .context("cannot create the browser's download folder")
            .map_err(ExportError::Fatal)?;
        let download_dir = folder.path().to_owned();
        // Chromium's own temporary folders (`org.chromium.Chromium.*`) go inside ours, so that
        // they are private and swept with it when a killed run leaves them.
        let temp_dir = download_dir.join(BROWSER_TEMP);
        std::fs::create_dir(&temp_dir)
            .context("cannot create the browser's temporary folder")
            .map_err(ExportError::Fatal)?;
        let mut browser = Browser {
            client: None,
            driver: None,
            folder: Some(folder),
            download_dir,
            export_url: None,
        };
        match browser.open_session(settings).await {
            Ok(()) => Ok(browser),
            Err(e) => {
                browser.close().await;
                Err(e)
            }
        }
    }

    /// Whether the browser still answers: ChromeDriver runs and the session replies within a
    /// few seconds. A crashed or hung browser is replaced instead of reused.
    pub async fn is_alive(&mut self) -> bool {
        if let Some(driver) = &mut self.driver {
            if !driver.is_running() {
                return false;
            }
        }
        let Some(client) = &self.client else {
            return false;
        };
        step("checking the browser", ALIVE_TIMEOUT, client.current_url())
            .await
            .is_ok()
    }

    async fn open_session(&mut self, settings: &BrowserSettings) -> Result<(), ExportError> {
        let webdriver_url = match &settings.webdriver_url {
            Some(url) => url.clone(),
            None => {
                let temp_dir = self.download_dir.join(BROWSER_TEMP);
                let driver = ChromeDriver::start(&settings.chromedriver_path, &temp_dir).await?;
                let url = driver.url();
                self.driver = Some(driver);
                url
            }
        };
        let caps = self.capabilities(settings.chrome_path.as_deref());
        let client = step(
            &format!("starting a Chromium session (WebDriver at {webdriver_url})"),
            SESSION_TIMEOUT,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(caps)
                .connect(&webdriver_url),
        )
        .await?;
        self.client = Some(client);
        self.allow_downloads().await
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
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            // This machine has no internet: keep Chromium from dialling out on its own.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-breakpad",
            "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,\
             AutofillServerCommunication,CertificateTransparencyComponentUpdater",
            "--metrics-recording-only",
            "--no-first-run",
            "--no-default-browser-check",
            "--no-pings",
            "--password-store=basic",
            "--use-mock-keychain",
            "--mute-audio",
        ]
        .map(str::to_owned)
        .into();
        args.push(format!("--window-size={WINDOW_SIZE}"));
        // Every Chromium process names the folder it serves: leftovers::clean_stale relies on it.
        args.push(format!(
            "--user-data-dir={}",
            self.download_dir.join(PROFILE).display()
        ));
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
        // Scripts that export a query's result may run for minutes on a large table; every step
        // has its own time limit (see `step`), so WebDriver's 30 s default is lifted.
        caps.insert("timeouts".into(), json!({"script": 3_600_000}));
        caps.insert("goog:chromeOptions".into(), options);
        caps
    }

    /// New headless Chromium ignores the download prefs unless told over CDP where to save.
    async fn allow_downloads(&self) -> Result<(), ExportError> {
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

    /// Ends the session, then ChromeDriver (and with it Chromium), then removes the folder.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let closed = step(
                "closing the browser session",
                Duration::from_secs(15),
                client.close(),
            );
            if let Err(e) = closed.await {
                tracing::warn!("{e:#}");
            }
        }
        if let Some(driver) = self.driver.take() {
            driver.shutdown().await;
        }
        if let Some(folder) = self.folder.take() {
            let removed = tokio::task::spawn_blocking(move || {
                let path = folder.path().to_owned();
                folder.close().map_err(|e| (path, e))
            });
            if let Ok(Err((path, e))) = removed.await {
                tracing::debug!("could not remove {}: {e}", path.display());
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Only reached with parts still open when a sync was abandoned without `close`. Dropping
        // the client asks fantoccini to end the session; dropping ChromeDriver ends its process
        // group at once. The folder is removed off the runtime's threads.
        drop(self.client.take());
        drop(self.driver.take());
        if let Some(folder) = self.folder.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || drop(folder))),
                Err(_) => drop(folder),
            }
        }
    }
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
