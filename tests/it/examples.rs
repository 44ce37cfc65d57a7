//! The README's client examples, taken from README.md and run as written: the Python one against
//! a real `pma-cache serve` holding 102,052 orders, the browser one in headless Chromium with the
//! demo's settings (`examples/demo.env`). Both ask for a refresh, which a real sync from the test
//! bed's phpMyAdmin answers.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::helpers::app::*;
use crate::helpers::testbed::{testbed, Testbed};
use fantoccini::{ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

/// Rows in the benchmark's generated table, the size the Python example must cope with.
const BIG_ROWS: u64 = 102_052;

/// A hang guard, far above what the examples take (seconds), not a speed check.
const EXAMPLE_DEADLINE: Duration = Duration::from_secs(300);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The body of the README's one fenced block in `language`.
pub(crate) fn readme_example(language: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let fence = format!("\n```{language}\n");
    let mut blocks = readme.match_indices(&fence).map(|(at, _)| {
        let body = &readme[at + fence.len()..];
        body[..body.find("\n```\n").expect("a closed block")].to_owned() + "\n"
    });
    let block = blocks
        .next()
        .unwrap_or_else(|| panic!("README.md has no {language} block"));
    assert!(
        blocks.next().is_none(),
        "README.md has more than one {language} block"
    );
    block
}

/// The demo's settings (KEY=value lines of `examples/demo.env`).
fn demo_settings() -> HashMap<String, String> {
    std::fs::read_to_string(repo().join("examples/demo.env"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// A server whose refresh runs a real sync from the test bed, with a ChromeDriver of its own (one
/// that ends with the server) and its browser folders in `tmp`.
fn syncing_env(bed: &Testbed, tmp: &Path) -> Vec<(&'static str, String)> {
    let mut env = bed.pma_env();
    env.push(("TMPDIR", tmp.display().to_string()));
    env
}

fn bed_rows(bed: &Testbed) -> u64 {
    bed.sql(&format!(
        "SELECT COUNT(*) FROM `{}`.`{}`",
        bed.database, bed.table
    ))
    .trim()
    .parse()
    .unwrap()
}

/// The benchmark's 102,052 generated orders, as a cache file's bytes.
fn big_cache(dir: &Path) -> Vec<u8> {
    let csv = dir.join("orders.csv");
    let cache = dir.join("orders.json");
    let made = std::process::Command::new("python3")
        .arg(repo().join("bench/make_orders_csv.py"))
        .arg(&csv)
        .arg(BIG_ROWS.to_string())
        .output()
        .expect("python3 runs (bin/setup installs it)");
    assert!(made.status.success(), "{made:?}");
    let imported = std::process::Command::new(binary())
        .arg("import")
        .arg(&csv)
        .arg("--cache-file")
        .arg(&cache)
        .output()
        .unwrap();
    assert!(imported.status.success(), "{imported:?}");
    std::fs::read(&cache).unwrap()
}

/// Runs Python `code` as a script; returns its stdout and its peak resident memory in bytes.
pub(crate) async fn run_python(code: &str, env: &[(&str, &str)], dir: &Path) -> (String, u64) {
    let script = dir.join("example.py");
    std::fs::write(&script, code).unwrap();
    // The example runs in this process so that its VmHWM is the example's own peak. Not
    // ru_maxrss: Linux carries it across execve, so it would count this test process's own
    // memory, which the forked child shared before it ran Python.
    let wrapper = "import runpy, sys\n\
                   runpy.run_path(sys.argv[1], run_name='__main__')\n\
                   hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n\
                   print('peak_rss_kib', hwm, file=sys.stderr)\n";
    let child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(wrapper)
        .arg(&script)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs (bin/setup installs it)");
    let out = tokio::time::timeout(EXAMPLE_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the Python example still runs after {EXAMPLE_DEADLINE:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "the Python example failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let peak_kib: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kib "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak_rss_kib in:\n{stderr}"));
    (stdout, peak_kib * 1024)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_example_follows_a_refresh_of_102052_orders_in_bounded_memory() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let dir = tempfile::tempdir().unwrap();
    let cache = big_cache(dir.path());
    let json_bytes = cache.len() as u64;
    let mut env = syncing_env(bed, dir.path());
    // The bed's table is much smaller than the cache: accept it, so the refresh lands.
    env.push(("SYNC_FORCE", "1".into()));
    // The generated table is imported without its CREATE TABLE: name its key.
    env.push(("PMA_KEY", "id".into()));
    let app = spawn_app_with(Options {
        cache_contents: Some(cache),
        env,
        ..Options::default()
    })
    .await;
    let rows = bed_rows(bed);

    let code = readme_example("python");
    let started = std::time::Instant::now();
    let (stdout, peak) = run_python(
        &code,
        &[("PMA_CACHE_URL", &app.base), ("PMA_CACHE_KEY", KEY)],
        dir.path(),
    )
    .await;

    let lines: Vec<&str> = stdout.lines().map(str::trim_end).collect();
    assert_eq!(
        lines,
        [
            format!("fetched {BIG_ROWS} orders"),
            format!("cached 0 changed, 0 deleted {BIG_ROWS} orders"),
            // The bed's table has other columns: no change set, so the whole table comes.
            format!("updated whole table {rows} orders"),
            "done".to_owned(),
        ],
        "{stdout}"
    );
    // Python holds the decoded table as dicts and strings: 5.8x the JSON when measured (457 MB
    // for 79 MB). Reading a 90 MB event line in 512-byte chunks, as an older example did, never
    // ended; the example reads the stream a megabyte at a time, and its events hold only
    // changes unless the server cannot tell what changed.
    eprintln!(
        "Python example: {:.1} s, peak RSS {} MB for {} MB of JSON",
        started.elapsed().as_secs_f64(),
        peak >> 20,
        json_bytes >> 20
    );
    assert!(
        peak < 10 * json_bytes,
        "peak RSS {peak} bytes for {json_bytes} bytes of JSON"
    );
}

/// Serves `html` as `/example.html` on `origin` (`http://host:port`) until dropped.
async fn serve_page(origin: &str, html: String) -> tokio::task::JoinHandle<()> {
    let addr = origin.trim_start_matches("http://");
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot serve the example page on {origin}, the demo's example origin: {e}")
        });
    let page = axum::Router::new().route(
        "/example.html",
        axum::routing::get(move || async move { axum::response::Html(html) }),
    );
    tokio::spawn(async move {
        axum::serve(listener, page).await.unwrap();
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_browser_example_shows_the_table_then_the_refreshed_one_with_the_demo_settings() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let demo = demo_settings();
    let tmp = tempfile::tempdir().unwrap();
    let mut env = syncing_env(bed, tmp.path());
    env.push(("API_KEY", demo["API_KEY"].clone()));
    env.push(("CORS_ALLOW_ORIGINS", demo["CORS_ALLOW_ORIGINS"].clone()));
    env.push(("PMA_KEY", "id".into()));
    let app = spawn_app_with(Options {
        seed: Some(SMALL_CSV),
        env,
        ..Options::default()
    })
    .await;
    let rows = bed_rows(bed);

    // The example talks to the demo's address; this server listens on a free port.
    let demo_url = format!("http://{}:{}", demo["HOST"], demo["PORT"]);
    let html = readme_example("html");
    assert!(html.contains(&format!("\"{demo_url}\"")), "{html}");
    assert!(html.contains(&format!("\"{}\"", demo["API_KEY"])), "{html}");
    let html = html.replace(&format!("\"{demo_url}\""), &format!("\"{}\"", app.base));
    let origin = demo["CORS_ALLOW_ORIGINS"]
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    let page = serve_page(&origin, html).await;

    let mut caps = fantoccini::wd::Capabilities::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                        "--disable-gpu", "--disable-background-networking", "--no-first-run"]}),
    );
    let browser = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&bed.webdriver_url)
        .await
        .expect("the test bed's ChromeDriver starts Chromium");
    let shown = async {
        browser
            .goto(&format!("{origin}/example.html"))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut refreshed = false;
        loop {
            let state = browser
                .find(Locator::Css("#state"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            // The page holds the table: start a sync, as an admin (or the schedule) would.
            if !refreshed && state.contains(" orders, as of ") {
                assert_eq!(app.post_refresh().await.status(), 202);
                refreshed = true;
            }
            if state.ends_with("(up to date)") || tokio::time::Instant::now() > deadline {
                let cells = browser
                    .find_all(Locator::Css("#orders tr"))
                    .await
                    .unwrap()
                    .len();
                break (state, cells);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    .await;
    browser.close().await.unwrap();
    page.abort();

    let (state, table_rows) = shown;
    assert!(
        state.starts_with(&format!("{rows} orders, as of ")) && state.ends_with("(up to date)"),
        "the page says {state:?}; server log:\n{}",
        app.logs()
    );
    assert_eq!(table_rows as u64, rows.min(20));
}
