//! End-to-end: `export_table_csv` against the local test bed (real MariaDB, phpMyAdmin, Chromium).

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pma_cache::config::{BrowserSettings, Secret, SyncSettings};
use pma_cache::sync::error::ExportError;
use pma_cache::sync::phpmyadmin::export_table_csv;
use pma_cache::sync::status::Progress;
use support::testbed::{testbed, Testbed};

/// One browser at a time: the checks for leftover processes look at this test process's
/// children, and two cores do not run several Chromiums well.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn settings(
    bed: &Testbed,
    pma_url: &str,
    password: &str,
    webdriver_url: Option<String>,
    failures: &Path,
) -> SyncSettings {
    SyncSettings {
        pma_url: url::Url::parse(pma_url).expect("a URL"),
        username: bed.username.clone(),
        password: Secret::new(password),
        database: bed.database.clone(),
        table: bed.table.clone(),
        browser: BrowserSettings {
            webdriver_url,
            chromedriver_path: PathBuf::from("chromedriver"),
            chrome_path: None,
        },
        timeout: Duration::from_secs(300),
        min_row_ratio: 0.5,
        force: false,
        failures_dir: failures.to_owned(),
    }
}

/// Shows the sync's logs (phases, durations) with `RUST_LOG=info`.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn null_token() -> String {
    format!("NULL-{:016x}", rand::random::<u64>())
}

type Rows = Vec<Vec<Option<String>>>;

fn read_csv(file: &Path, null_token: &str) -> (Vec<String>, Rows) {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(file)
        .expect("the download opens");
    let header: Vec<String> = reader
        .headers()
        .expect("a header row")
        .iter()
        .map(str::to_owned)
        .collect();
    let mut rows: Rows = reader
        .records()
        .map(|r| {
            r.expect("a CSV record")
                .iter()
                .map(|f| (f != null_token).then(|| f.to_owned()))
                .collect()
        })
        .collect();
    let id = header.iter().position(|c| c == "id").expect("an id column");
    rows.sort_by_key(|r| r[id].as_deref().and_then(|v| v.parse::<i64>().ok()));
    (header, rows)
}

/// Processes whose command line names `dir`: Chromium started for that download folder.
fn processes_naming(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    proc_entries()
        .filter_map(|(pid, cmdline)| cmdline.contains(&needle).then_some((pid, cmdline)))
        .collect()
}

/// ChromeDriver processes started by this test process.
fn own_chromedrivers() -> Vec<(u32, String)> {
    let me = std::process::id();
    proc_entries()
        .filter(|(pid, cmdline)| cmdline.contains("chromedriver") && parent_of(*pid) == Some(me))
        .collect()
}

fn proc_entries() -> impl Iterator<Item = (u32, String)> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&raw).replace('\0', " ")))
        })
        .filter(|(_, cmdline)| !cmdline.is_empty())
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn assert_no_browser_left(download_dir: &Path) {
    let started = Instant::now();
    loop {
        let chromium = processes_naming(download_dir);
        let drivers = own_chromedrivers();
        if chromium.is_empty() && drivers.is_empty() {
            return;
        }
        if started.elapsed() > Duration::from_secs(10) {
            panic!("browser processes left behind: {chromium:?} {drivers:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_exported_csv_equals_the_table_exactly() {
    let _one = ONE_BROWSER.lock().await;
    init_logs();
    let bed = testbed();
    let work = tempfile::tempdir().unwrap();
    let download = work.path().join("download");
    let token = null_token();
    let settings = settings(
        bed,
        &bed.pma_url,
        &bed.password,
        None,
        &work.path().join("failures"),
    );

    let started = Instant::now();
    let export = export_table_csv(&settings, &download, &token, &Progress::new(None))
        .await
        .unwrap_or_else(|e| panic!("export failed: {e:#}"));
    export.browser_closed.await.unwrap();
    let file = export.csv;
    eprintln!("export took {:.2}s", started.elapsed().as_secs_f64());

    let (columns, expected) = bed.table_as_rows(&bed.database, &bed.table);
    let (header, rows) = read_csv(&file, &token);
    assert_eq!(header, columns);
    assert_eq!(rows.len(), expected.len(), "row count");
    for (got, want) in rows.iter().zip(&expected) {
        assert_eq!(got, want, "row with id {:?}", want[0]);
    }
    assert!(
        expected
            .iter()
            .flatten()
            .any(|v| v.as_deref() == Some("NULL")),
        "the bed has text NULL"
    );
    assert!(
        expected.iter().flatten().any(Option::is_none),
        "the bed has SQL NULLs"
    );
    assert_no_browser_left(&download).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_rejected_with_phpmyadmins_message() {
    let _one = ONE_BROWSER.lock().await;
    init_logs();
    let bed = testbed();
    let work = tempfile::tempdir().unwrap();
    let download = work.path().join("download");
    let failures = work.path().join("failures");
    let wrong = "not-the-password-7f3a";
    let settings = settings(
        bed,
        &bed.pma_url,
        wrong,
        Some(bed.webdriver_url.clone()),
        &failures,
    );

    let err = export_table_csv(&settings, &download, &null_token(), &Progress::new(None))
        .await
        .expect_err("a wrong password must fail");
    let ExportError::LoginRejected(message) = &err else {
        panic!("expected LoginRejected, got {err:#}");
    };
    eprintln!("rejected: {message}");
    assert!(
        message.contains("Cannot log in to the MySQL server"),
        "{message}"
    );
    assert!(message.contains("Access denied"), "{message}");
    assert!(
        !format!("{err:#} {err:?}").contains(wrong),
        "the password leaked: {err:#}"
    );
    let kept: Vec<_> = std::fs::read_dir(&failures)
        .expect("failures kept")
        .collect();
    assert_eq!(kept.len(), 2, "a screenshot and the page source");
    assert_no_browser_left(&download).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_phpmyadmin_is_a_transient_error() {
    let _one = ONE_BROWSER.lock().await;
    init_logs();
    let bed = testbed();
    let work = tempfile::tempdir().unwrap();
    let download = work.path().join("download");
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{closed}/");
    let settings = settings(
        bed,
        &url,
        &bed.password,
        None,
        &work.path().join("failures"),
    );

    let err = export_table_csv(&settings, &download, &null_token(), &Progress::new(None))
        .await
        .expect_err("a closed port must fail");
    eprintln!("unreachable: {err:#}");
    assert!(
        matches!(err, ExportError::Transient(_)),
        "expected Transient, got {err:#}"
    );
    assert!(format!("{err:#}").contains("unreachable"), "{err:#}");
    assert_no_browser_left(&download).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_table_is_a_fatal_error() {
    let _one = ONE_BROWSER.lock().await;
    init_logs();
    let bed = testbed();
    let work = tempfile::tempdir().unwrap();
    let download = work.path().join("download");
    let mut settings = settings(
        bed,
        &bed.pma_url,
        &bed.password,
        Some(bed.webdriver_url.clone()),
        &work.path().join("failures"),
    );
    settings.table = "no_such_table".into();

    let err = export_table_csv(&settings, &download, &null_token(), &Progress::new(None))
        .await
        .expect_err("a missing table must fail");
    eprintln!("missing table: {err:#}");
    assert!(
        matches!(err, ExportError::Fatal(_)),
        "expected Fatal, got {err:#}"
    );
    assert!(format!("{err:#}").contains("no_such_table"), "{err:#}");
    assert_no_browser_left(&download).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_cancelled_by_its_deadline_leaves_no_browser_behind() {
    let _one = ONE_BROWSER.lock().await;
    init_logs();
    let bed = testbed();
    let work = tempfile::tempdir().unwrap();
    let download = work.path().join("download");
    let settings = settings(
        bed,
        &bed.pma_url,
        &bed.password,
        None,
        &work.path().join("failures"),
    );
    let token = null_token();
    let progress = Progress::new(None);

    // Long enough for Chromium to be up, too short for the whole export.
    let export = export_table_csv(&settings, &download, &token, &progress);
    let outcome = tokio::time::timeout(Duration::from_millis(1500), export).await;
    assert!(
        outcome.is_err(),
        "the export should still have been running: {outcome:?}"
    );
    assert_no_browser_left(&download).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_chromedriver_is_fatal_and_says_how_to_install_it() {
    let bed = testbed();
    let work = tempfile::tempdir().unwrap();
    let mut settings = settings(
        bed,
        &bed.pma_url,
        &bed.password,
        None,
        &work.path().join("failures"),
    );
    settings.browser.chromedriver_path = work.path().join("no-such-chromedriver");

    let err = export_table_csv(
        &settings,
        &work.path().join("download"),
        &null_token(),
        &Progress::new(None),
    )
    .await
    .expect_err("no chromedriver, no export");
    assert!(
        matches!(err, ExportError::Fatal(_)),
        "expected Fatal, got {err:#}"
    );
    assert!(format!("{err:#}").contains("bin/setup"), "{err:#}");
}
