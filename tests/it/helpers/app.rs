//! The app under test, each test with its own cache folder, on port 0: built in this process
//! with `Application::build` (the address from its listener) when its settings allow, or the
//! real `pma-cache serve` as a process of its own where the process is under test (its log, its
//! memory, its signals, an environment of its own).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Admin keys (ADMIN_API_KEY): what most tests send, since they may do everything.
pub const KEY: &str = "test-key-3f9a6c1e";
pub const OTHER_KEY: &str = "rotated-key-77b2d0";
/// A read key (API_KEY).
pub const READ_KEY: &str = "read-key-5c8e21d4a7";
/// A metrics key (METRICS_KEY).
pub const METRICS_KEY: &str = "metrics-key-9a3f7e10";

pub const SMALL_CSV: &str = "id,name,note\n1,\"Ada \"\"the\"\" first\",NULL\n2,,\"multi\nline\"\n";

/// A CSV of `rows` order-like rows, about 120 bytes each; `tag` starts every note.
pub fn orders_csv(rows: usize, tag: &str) -> String {
    let mut csv = String::from("id,customer,email,total,note\n");
    for i in 0..rows {
        csv.push_str(&format!(
            "{i},Customer {n},c{n}@example.com,{}.{:02},\"{tag} order {i}, shipped\"\n",
            i * 7 % 1000,
            i % 100,
            n = i % 5000
        ));
    }
    csv
}

/// A generated CSV as the `'static` text [`Options::seed`] takes (tests are short-lived).
pub fn leak(csv: String) -> &'static str {
    Box::leak(csv.into_boxed_str())
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_pma-cache")
}

/// A running server.
pub struct TestApp {
    pub base: String,
    /// The server's private folder, removed when the app is dropped.
    _dir: tempfile::TempDir,
    pub cache_file: PathBuf,
    pub client: reqwest::Client,
    /// A client that leaves `Content-Encoding` alone, to see what was sent.
    pub raw_client: reqwest::Client,
    runner: Runner,
}

/// How the server runs.
enum Runner {
    /// `pma-cache serve`, its log collected as it comes.
    Process {
        child: Child,
        log: Arc<Mutex<String>>,
    },
    /// `Application` on a runtime of its own thread, stopped by sending on `stop`.
    InProcess {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

/// Options for [`spawn_app_with`].
#[derive(Default)]
pub struct Options {
    /// CSV imported before the server starts.
    pub seed: Option<&'static str>,
    /// Raw bytes written as the cache file before the server starts.
    pub cache_contents: Option<Vec<u8>>,
    pub env: Vec<(&'static str, String)>,
    /// Serve this cache file (shared with other processes) instead of a private one.
    pub cache_file: Option<PathBuf>,
    /// Run `pma-cache serve` as a process even when the app could run in this one: for tests
    /// of the process itself (its log, memory or signals).
    pub process: bool,
}

/// A server with a small cache imported.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options {
        seed: Some(SMALL_CSV),
        ..Options::default()
    })
    .await
}

/// A server with a small cache imported and the settings `env`.
pub async fn spawn_app_with_env(env: Vec<(&'static str, String)>) -> TestApp {
    spawn_app_with(Options {
        seed: Some(SMALL_CSV),
        env,
        ..Options::default()
    })
    .await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let cache_file = options
        .cache_file
        .clone()
        .unwrap_or_else(|| dir.path().join("data_cache.json"));
    if let Some(csv) = options.seed {
        import_csv(&cache_file, csv).expect("seed import");
    }
    if let Some(bytes) = &options.cache_contents {
        std::fs::write(&cache_file, bytes).unwrap();
    }
    let in_process = !options.process && options.env.iter().all(|(k, _)| is_setting(k));
    let (addr, runner) = match in_process {
        true => start_in_process(&cache_file, &options.env),
        false => start_process(&cache_file, &options.env).await,
    };
    TestApp {
        base: format!("http://{addr}"),
        _dir: dir,
        cache_file,
        client: reqwest::Client::new(),
        raw_client: reqwest::Client::builder()
            .no_gzip()
            .no_zstd()
            .no_brotli()
            .build()
            .unwrap(),
        runner,
    }
}

/// The `serve` settings, by the environment variable each is read from, with their flags.
fn serve_flags() -> std::collections::HashMap<String, String> {
    use clap::CommandFactory;
    let command = pma_cache::config::Cli::command();
    let serve = command
        .find_subcommand("serve")
        .expect("a serve subcommand");
    serve
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_string_lossy().into_owned();
            Some((env, format!("--{}", a.get_long()?)))
        })
        .collect()
}

/// Whether `name` is a `serve` setting (and so can be given to an app in this process).
fn is_setting(name: &str) -> bool {
    name != "LOG_FORMAT" && serve_flags().contains_key(name)
}

/// The settings an app in this process runs with: the test's and the defaults, never this test
/// process's own environment.
fn serve_config(
    cache_file: &Path,
    env: &[(&'static str, String)],
) -> pma_cache::config::ServeConfig {
    use clap::{CommandFactory, FromArgMatches};
    use pma_cache::config::{Cli, Command as Subcommand};
    let flags = serve_flags();
    let mut settings: Vec<(&str, String)> = vec![
        ("PORT", "0".into()),
        ("HOST", "127.0.0.1".into()),
        ("API_KEY", READ_KEY.into()),
        ("ADMIN_API_KEY", format!("{KEY},{OTHER_KEY}")),
        ("METRICS_KEY", METRICS_KEY.into()),
        // Tests refresh back to back; the one that checks the interval sets its own.
        ("REFRESH_MIN_INTERVAL", "0".into()),
        ("CACHE_FILE", cache_file.display().to_string()),
    ];
    for (name, value) in env {
        settings.retain(|(n, _)| n != name);
        settings.push((name, value.clone()));
    }
    let mut args = vec!["pma-cache".to_owned(), "serve".to_owned()];
    args.extend(
        settings
            .iter()
            .map(|(name, value)| format!("{}={value}", flags[*name])),
    );
    let command = Cli::command().mut_subcommand("serve", |serve| serve.mut_args(|a| a.env(None)));
    let matches = command.try_get_matches_from(&args).expect("valid settings");
    let cli = Cli::from_arg_matches(&matches).expect("valid settings");
    let Subcommand::Serve(serve) = cli.command else {
        unreachable!("serve was asked for")
    };
    serve.validate().expect("valid settings")
}

/// Builds the app here, on a runtime of its own thread (so that a test's blocking calls never
/// stall it); returns its address, from its listener.
fn start_in_process(cache_file: &Path, env: &[(&'static str, String)]) -> (String, Runner) {
    let config = serve_config(cache_file, env);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (address, built) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let app = pma_cache::app::Application::build(config)
                .await
                .expect("the app builds");
            address.send(app.local_addr().expect("an address")).unwrap();
            app.run_until_stopped(async move {
                let _ = stopped.await;
            })
            .await
            .expect("the app stops cleanly");
        });
    });
    let addr = built
        .recv_timeout(Duration::from_secs(20))
        .expect("the app was built within 20 s");
    (
        addr.to_string(),
        Runner::InProcess {
            stop: Some(stop),
            thread: Some(thread),
        },
    )
}

/// Starts `pma-cache serve` with `env` on top of a clean environment; returns its address (from
/// the "listening on" line) and the process.
async fn start_process(cache_file: &Path, env: &[(&'static str, String)]) -> (String, Runner) {
    let mut cmd = Command::new(binary());
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("API_KEY", READ_KEY)
        .env("ADMIN_API_KEY", format!("{KEY},{OTHER_KEY}"))
        .env("METRICS_KEY", METRICS_KEY)
        .env("REFRESH_MIN_INTERVAL", "0")
        .env("CACHE_FILE", cache_file)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        match *k {
            // The address is read from the "listening on" line, whatever level a test asks for.
            "RUST_LOG" => cmd.env(k, format!("{v},pma_cache::app=info")),
            _ => cmd.env(k, v),
        };
    }
    let mut child = cmd.spawn().expect("start pma-cache serve");
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let addr = super::eventually(Duration::from_secs(20), "the server listens", || {
        let seen = log.lock().unwrap().clone();
        let exited = child.try_wait().ok().flatten();
        async move {
            if let Some(status) = exited {
                panic!("pma-cache serve exited with {status}:\n{seen}");
            }
            seen.lines()
                .find_map(|l| {
                    l.split_once("listening on http://")
                        .map(|(_, a)| a.trim().to_owned())
                })
                .ok_or(seen)
        }
    })
    .await;
    (addr, Runner::Process { child, log })
}

/// Runs `pma-cache import` as its own process; returns its stderr on failure.
pub fn import_csv(cache_file: &Path, csv: &str) -> Result<(), String> {
    let csv_path = cache_file.with_extension(format!("{}.csv", rand_suffix()));
    std::fs::write(&csv_path, csv).unwrap();
    let out = Command::new(binary())
        .arg("import")
        .arg(&csv_path)
        .arg("--cache-file")
        .arg(cache_file)
        .output()
        .unwrap();
    std::fs::remove_file(&csv_path).ok();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

impl TestApp {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        match &self.runner {
            Runner::Process { child, .. } => child.id(),
            Runner::InProcess { .. } => panic!("{IN_PROCESS}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get_fetch_data(&self, query: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/fetch-data{query}")))
            .header("X-API-Key", KEY)
            .send()
            .await
            .unwrap()
    }

    /// `GET path` with `headers`, the body left as sent (no decompression).
    pub async fn get_raw(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        Self::get_by(&self.raw_client, self.url(path), headers).await
    }

    /// `GET path` with `headers`, a compressed body decoded.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        Self::get_by(&self.client, self.url(path), headers).await
    }

    async fn get_by(
        client: &reqwest::Client,
        url: String,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = client.get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    /// `GET /fetch-data?stream=true` with the key in the URL, as a browser's `EventSource` sends
    /// it.
    pub async fn get_stream_with_key_in_url(&self, key: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/fetch-data?stream=true&api_key={key}")))
            .send()
            .await
            .unwrap()
    }

    /// `GET /fetch-data` with `Accept-Encoding: accept`, the body left as sent.
    pub async fn get_fetch_data_encoded(&self, accept: &str) -> reqwest::Response {
        self.raw_client
            .get(self.url("/fetch-data"))
            .header("X-API-Key", KEY)
            .header("Accept-Encoding", accept)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_refresh(&self) -> reqwest::Response {
        self.client
            .post(self.url("/refresh"))
            .header("X-API-Key", KEY)
            .send()
            .await
            .unwrap()
    }

    /// `POST /refresh?query` with the admin key.
    pub async fn post_refresh_with(&self, query: &str) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/refresh?{query}")))
            .header("X-API-Key", KEY)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_status(&self) -> serde_json::Value {
        self.client
            .get(self.url("/status"))
            .header("X-API-Key", KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until the compressed variants of the current cache are built.
    pub async fn wait_for_encodings(&self) {
        super::eventually(Duration::from_secs(20), "every encoding ready", || async {
            let status = self.get_status().await;
            match status["cache"]["encodings"].as_array().map_or(0, Vec::len) {
                3 => Ok(()),
                _ => Err(status.to_string()),
            }
        })
        .await
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        match &self.runner {
            Runner::Process { log, .. } => log.lock().unwrap().clone(),
            Runner::InProcess { .. } => panic!("{IN_PROCESS}"),
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let Runner::Process { child, .. } = &mut self.runner else {
            panic!("{IN_PROCESS}");
        };
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        super::eventually_blocking(
            Duration::from_secs(10),
            "the server stops on SIGTERM",
            || {
                child
                    .try_wait()
                    .unwrap()
                    .ok_or_else(|| "still running".to_owned())
            },
        )
    }
}

const IN_PROCESS: &str =
    "this app runs in the test's process: spawn it with `Options { process: true, .. }` to read its log, its pid or stop it by signal";

impl Drop for TestApp {
    fn drop(&mut self) {
        match &mut self.runner {
            Runner::Process { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Runner::InProcess { stop, thread } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
        }
    }
}

/// Reads server-sent events until `done` or `limit`; returns each event's `data` as JSON.
pub async fn read_events(response: reqwest::Response, limit: Duration) -> Vec<serde_json::Value> {
    use futures_util::StreamExt;
    let mut stream = response.bytes_stream();
    let mut buf = Vec::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(chunk)) => chunk.unwrap(),
            Ok(None) | Err(_) => return events,
        };
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8(block).unwrap();
            if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
                let event: serde_json::Value = serde_json::from_str(data).unwrap();
                let done = event["type"] == "done";
                events.push(event);
                if done {
                    return events;
                }
            }
        }
    }
}

/// Fails when a temporary cache file was left in `dir`.
pub fn assert_no_temporaries(dir: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// phpMyAdmin settings that pass validation, with the test-only fault hook (`PMA_CACHE_FAULT`,
/// compiled in by the `test-faults` feature the tests turn on) set to `fault`: `hang` or `panic` once a sync holds the lock, so the
/// settings are never used.
pub fn faulty_pma_env(fault: &str) -> Vec<(&'static str, String)> {
    vec![
        ("PMA_URL", "http://127.0.0.1:9/".into()),
        ("PMA_USERNAME", "u".into()),
        ("PMA_PASSWORD", "p".into()),
        ("PMA_DATABASE", "d".into()),
        ("PMA_CACHE_FAULT", fault.into()),
    ]
}
