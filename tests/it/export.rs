//! End-to-end: `export_table_csv` against the local test bed (real MariaDB, phpMyAdmin, Chromium).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::testbed::{testbed, Testbed};
use datafusion::arrow::array::Array;
use pma_cache::cache::{csv_to_cache_json, TableSchema, TypedTable};
use pma_cache::config::{BrowserSettings, Secret, SyncSettings};
use pma_cache::sync::error::ExportError;
use pma_cache::sync::follow::FollowedConversion;
use pma_cache::sync::phpmyadmin::export_table_csv;
use pma_cache::sync::session::Browser;
use pma_cache::sync::status::Progress;
use tokio_util::sync::CancellationToken;

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
        key: None,
        browser: BrowserSettings {
            webdriver_url,
            chromedriver_path: PathBuf::from("chromedriver"),
            chrome_path: None,
        },
        timeout: Duration::from_secs(300),
        min_row_ratio: 0.5,
        force: false,
        failures_dir: failures.to_owned(),
        browser_idle_timeout: Duration::ZERO,
        full_every: Duration::from_secs(24 * 3600),
        cursor: None,
        cursor_overlap: Duration::from_secs(300),
    }
}

/// Shows the sync's logs (phases, durations) with `RUST_LOG=info`.
/// What every browser test here starts from: one browser at a time (the checks for leftover
/// processes look at this test process's children), logs, the test bed, and a private folder
/// whose `failures/` takes the evidence of failed exports.
struct BrowserTest {
    _one: tokio::sync::MutexGuard<'static, ()>,
    bed: &'static Testbed,
    work: tempfile::TempDir,
}

impl BrowserTest {
    async fn start() -> Self {
        let one = crate::helpers::ONE_BROWSER.lock().await;
        init_logs();
        Self {
            _one: one,
            bed: testbed(),
            work: tempfile::tempdir().unwrap(),
        }
    }

    /// Where failed exports leave their evidence.
    fn failures(&self) -> PathBuf {
        self.work.path().join("failures")
    }

    /// Settings for the bed's table at `pma_url` with `password`, through the ChromeDriver at
    /// `webdriver_url` (`None`: the export starts its own).
    fn settings_at(
        &self,
        pma_url: &str,
        password: &str,
        webdriver_url: Option<String>,
    ) -> SyncSettings {
        settings(self.bed, pma_url, password, webdriver_url, &self.failures())
    }
}

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

/// One export with a new browser, closed afterwards. The CSV is moved next to the failures
/// folder (the browser's folder goes with the browser).
async fn export_once(
    settings: &SyncSettings,
    token: &str,
) -> (Result<PathBuf, ExportError>, PathBuf) {
    let mut kept = None;
    let result = export_with(settings, &mut kept, token)
        .await
        .map(|(csv, _schema)| csv);
    let folder = browser_folder(&kept, &result);
    let result = result.map(|csv| {
        let kept_csv = settings.failures_dir.with_file_name("export.csv");
        std::fs::copy(&csv, &kept_csv).unwrap();
        kept_csv
    });
    if let Some(browser) = kept.take() {
        browser.close().await;
    }
    (result, folder)
}

/// [`export_with`]'s CSV alone.
async fn export_csv(
    settings: &SyncSettings,
    kept: &mut Option<Browser>,
    token: &str,
) -> Result<PathBuf, ExportError> {
    export_with(settings, kept, token).await.map(|(csv, _)| csv)
}

async fn export_with(
    settings: &SyncSettings,
    kept: &mut Option<Browser>,
    token: &str,
) -> Result<(PathBuf, Option<TableSchema>), ExportError> {
    export_table_csv(
        settings,
        kept,
        token,
        &Progress::new(None),
        &CancellationToken::new(),
        &mut |_| {},
    )
    .await
}

/// An export whose CSV is converted while Chromium writes it, as the sync does: the JSON must be
/// what converting the finished file makes. Returns the CSV and whether the conversion read the
/// very file that was downloaded. It may not have, rarely: Chromium can start a download again
/// in a new file (the sync then converts the finished file, which this checks too).
async fn export_following(
    settings: &SyncSettings,
    kept: &mut Option<Browser>,
    token: &str,
) -> Result<(PathBuf, bool), ExportError> {
    let mut following = None;
    let mut follow = |file| {
        following = Some(
            FollowedConversion::start(file, token.to_owned(), 0, CancellationToken::new()).unwrap(),
        )
    };
    let exported = export_table_csv(
        settings,
        kept,
        token,
        &Progress::new(None),
        &CancellationToken::new(),
        &mut follow,
    )
    .await;
    let following = following.expect("the download was handed over as soon as it appeared");
    let csv = match exported {
        Ok((csv, _schema)) => csv,
        Err(e) => {
            following.abandon().await;
            return Err(e);
        }
    };
    let whole = csv_to_cache_json(std::fs::File::open(&csv).unwrap(), Some(token), "T", 0).unwrap();
    if !following.follows(&csv) {
        eprintln!("the conversion followed another file than {csv:?}: {following:?}");
        following.abandon().await;
        return Ok((csv, false));
    }
    let size = std::fs::metadata(&csv).unwrap().len();
    let followed = following
        .finish(size)
        .await
        .expect("the followed conversion");
    let unstamped = |bytes: &[u8]| {
        let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        v["last_updated"] = "T".into();
        v
    };
    assert_eq!(
        unstamped(followed.cache_bytes()),
        unstamped(whole.cache_bytes())
    );
    Ok((csv, true))
}

fn settings_for(settings: &SyncSettings, pma_url: &str) -> SyncSettings {
    SyncSettings {
        pma_url: url::Url::parse(pma_url).unwrap(),
        ..settings.clone()
    }
}

fn browser_folder(kept: &Option<Browser>, result: &Result<PathBuf, ExportError>) -> PathBuf {
    match (kept, result) {
        (Some(browser), _) => browser.download_dir().to_owned(),
        (None, Ok(csv)) => csv.parent().unwrap().to_owned(),
        // Closed already; any folder of this process will do for the leak check.
        (None, Err(_)) => own_folder_prefix(),
    }
}

/// The start of the names of the browser folders this test process makes.
fn own_folder_prefix() -> PathBuf {
    std::env::temp_dir().join(format!("pma-cache-browser-{}-", std::process::id()))
}

/// Processes whose command line names `needle`: Chromium started for that folder.
fn processes_naming(needle: &str) -> Vec<(u32, String)> {
    proc_entries()
        .filter_map(|(pid, cmdline)| cmdline.contains(needle).then_some((pid, cmdline)))
        .collect()
}

/// ChromeDriver processes (and their supervisors) started by this test process.
fn own_chromedrivers() -> Vec<(u32, String)> {
    let me = std::process::id();
    proc_entries()
        .filter(|(pid, cmdline)| {
            cmdline.contains("chromedriver")
                && (parent_of(*pid) == Some(me) || parent_of(*pid).and_then(parent_of) == Some(me))
        })
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

/// No browser process of this test process runs, and no browser folder of it is left.
async fn assert_no_browser_left() {
    let prefix = own_folder_prefix().display().to_string();
    let started = Instant::now();
    loop {
        let chromium = processes_naming(&prefix);
        let drivers = own_chromedrivers();
        let folders: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.display().to_string().starts_with(&prefix) && p.is_dir())
            .collect();
        if chromium.is_empty() && drivers.is_empty() && folders.is_empty() {
            return;
        }
        if started.elapsed() > Duration::from_secs(10) {
            panic!(
                "browser processes or folders left behind: {chromium:?} {drivers:?} {folders:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_exported_csv_equals_the_table_exactly() {
    let test = BrowserTest::start().await;
    let bed = test.bed;
    let token = null_token();
    let settings = test.settings_at(&bed.pma_url, &bed.password, None);

    let started = Instant::now();
    let (export, _) = export_once(&settings, &token).await;
    let file = export.unwrap_or_else(|e| panic!("export failed: {e:#}"));
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
    assert_no_browser_left().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_rejected_with_phpmyadmins_message() {
    let test = BrowserTest::start().await;
    let bed = test.bed;
    let failures = test.failures();
    let wrong = "not-the-password-7f3a";
    let settings = test.settings_at(&bed.pma_url, wrong, Some(bed.webdriver_url.clone()));

    let err = export_once(&settings, &null_token())
        .await
        .0
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
    assert_no_browser_left().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_phpmyadmin_fails_at_once_with_chromiums_error_code() {
    let test = BrowserTest::start().await;
    let bed = test.bed;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{closed}/");
    let settings = test.settings_at(&url, &bed.password, None);

    let err = export_once(&settings, &null_token())
        .await
        .0
        .expect_err("a closed port must fail");
    eprintln!("unreachable: {err:#}");
    assert!(
        matches!(err, ExportError::Transient(_)),
        "expected Transient, got {err:#}"
    );
    assert!(format!("{err:#}").contains("unreachable"), "{err:#}");
    assert!(
        format!("{err:#}").contains("ERR_CONNECTION_REFUSED"),
        "{err:#}"
    );
    assert_no_browser_left().await;

    // A port Chromium refuses to visit (X11's): no retry can help, and Chromium says so at once.
    let settings = settings_for(&settings, "http://127.0.0.1:6000/");
    let err = export_once(&settings, &null_token())
        .await
        .0
        .expect_err("a blocked port must fail");
    eprintln!("blocked port: {err:#}");
    assert!(matches!(err, ExportError::Fatal(_)), "{err:#}");
    assert!(format!("{err:#}").contains("ERR_UNSAFE_PORT"), "{err:#}");
    assert_no_browser_left().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_table_is_a_fatal_error() {
    let test = BrowserTest::start().await;
    let bed = test.bed;
    let mut settings =
        test.settings_at(&bed.pma_url, &bed.password, Some(bed.webdriver_url.clone()));
    settings.table = "no_such_table".into();

    let err = export_once(&settings, &null_token())
        .await
        .0
        .expect_err("a missing table must fail");
    eprintln!("missing table: {err:#}");
    assert!(
        matches!(err, ExportError::Fatal(_)),
        "expected Fatal, got {err:#}"
    );
    let message = format!("{err:#}");
    assert!(
        message.contains("`no_such_table` does not exist"),
        "{message}"
    );
    assert!(!message.contains("#1064"), "{message}");
    assert_no_browser_left().await;

    settings.table = bed.table.clone();
    settings.database = "no_such_database".into();
    let err = export_once(&settings, &null_token())
        .await
        .0
        .expect_err("a missing database must fail");
    eprintln!("missing database: {err:#}");
    assert!(matches!(err, ExportError::Fatal(_)), "{err:#}");
    assert!(
        format!("{err:#}").contains("database `no_such_database`"),
        "{err:#}"
    );
    assert_no_browser_left().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_cancelled_by_its_deadline_leaves_no_browser_behind() {
    let test = BrowserTest::start().await;
    let bed = test.bed;
    let settings = test.settings_at(&bed.pma_url, &bed.password, None);
    let token = null_token();
    let progress = Progress::new(None);
    let cancel = CancellationToken::new();

    // Long enough for Chromium to be up, too short for the whole export. Then cancelled: the
    // export closes its browser before it returns.
    let mut kept = None;
    let mut ignore_download = |_| {};
    let err = {
        let export = export_table_csv(
            &settings,
            &mut kept,
            &token,
            &progress,
            &cancel,
            &mut ignore_download,
        );
        tokio::pin!(export);
        let outcome = tokio::time::timeout(Duration::from_millis(1500), &mut export).await;
        assert!(
            outcome.is_err(),
            "the export should still have been running: {outcome:?}"
        );
        cancel.cancel();
        export.await.expect_err("a cancelled export fails")
    };
    assert!(matches!(err, ExportError::Cancelled), "{err:#}");
    assert!(kept.is_none());
    assert_no_browser_left().await;

    // Dropped instead of cancelled (a caller that gives up): Drop ends the browser's processes.
    let mut kept = None;
    let never = CancellationToken::new();
    let export = export_table_csv(
        &settings,
        &mut kept,
        &token,
        &progress,
        &never,
        &mut ignore_download,
    );
    let outcome = tokio::time::timeout(Duration::from_millis(1500), export).await;
    assert!(outcome.is_err(), "still running: {outcome:?}");
    drop(kept);
    assert_no_browser_left().await;
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

    let err = export_once(&settings, &null_token())
        .await
        .0
        .expect_err("no chromedriver, no export");
    assert!(
        matches!(err, ExportError::Fatal(_)),
        "expected Fatal, got {err:#}"
    );
    assert!(format!("{err:#}").contains("bin/setup"), "{err:#}");
}

/// How many times phpMyAdmin 5.2 has served the table's export page so far.
fn export_pages_served(bed: &Testbed) -> usize {
    let log = std::fs::read_to_string(bed.dir.join("php.log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("GET /index.php?route=%2Ftable%2Fexport&"))
        .count()
}

fn assert_csv_equals_table(file: &Path, token: &str, bed: &Testbed) {
    let (columns, expected) = bed.table_as_rows(&bed.database, &bed.table);
    let (header, rows) = read_csv(file, token);
    assert_eq!(header, columns);
    assert_eq!(rows, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_browser_exports_again_and_logs_in_again_when_phpmyadmin_forgot_its_session() {
    let test = BrowserTest::start().await;
    let bed = test.bed;
    let settings = test.settings_at(&bed.pma_url, &bed.password, None);
    let token = null_token();
    let mut kept = None;

    let first = export_csv(&settings, &mut kept, &token)
        .await
        .unwrap_or_else(|e| panic!("first export: {e:#}"));
    std::fs::remove_file(&first).unwrap();
    let folder = kept
        .as_ref()
        .expect("the browser is kept")
        .download_dir()
        .to_owned();

    // The same browser again: the export form still shown is submitted again, no login and no
    // new load of the export page.
    let logins = bed.logins_served();
    let pages = export_pages_served(bed);
    let second = export_csv(&settings, &mut kept, &token)
        .await
        .unwrap_or_else(|e| panic!("second export: {e:#}"));
    assert_eq!(
        kept.as_ref().unwrap().download_dir(),
        folder,
        "same browser"
    );
    assert_eq!(bed.logins_served(), logins, "no new login");
    assert_eq!(
        export_pages_served(bed),
        pages,
        "no new load of the export page"
    );
    assert_csv_equals_table(&second, &token, bed);
    std::fs::remove_file(&second).unwrap();

    // phpMyAdmin forgets every session (as after a restart, or past LoginCookieValidity): it
    // answers the export with its login page, and the same export logs in again.
    for session in std::fs::read_dir(bed.dir.join("php-sessions")).unwrap() {
        let _ = std::fs::remove_file(session.unwrap().path());
    }
    let third = export_csv(&settings, &mut kept, &token)
        .await
        .unwrap_or_else(|e| panic!("export after the session was lost: {e:#}"));
    assert_eq!(
        kept.as_ref().unwrap().download_dir(),
        folder,
        "same browser"
    );
    assert_eq!(bed.logins_served(), logins + 1, "one new login");
    assert_csv_equals_table(&third, &token, bed);

    kept.take().unwrap().close().await;
    assert_no_browser_left().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_browser_whose_chromium_was_killed_is_replaced() {
    let test = BrowserTest::start().await;
    let bed = test.bed;
    let settings = test.settings_at(&bed.pma_url, &bed.password, None);
    let token = null_token();
    let mut kept = None;
    export_csv(&settings, &mut kept, &token)
        .await
        .unwrap_or_else(|e| panic!("first export: {e:#}"));
    let folder = kept.as_ref().unwrap().download_dir().to_owned();

    let chromium: Vec<u32> = processes_naming(&folder.display().to_string())
        .into_iter()
        .filter(|(_, cmdline)| !cmdline.contains("--type="))
        .map(|(pid, _)| pid)
        .collect();
    assert!(
        !chromium.is_empty(),
        "Chromium runs for {}",
        folder.display()
    );
    for pid in chromium {
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
    }

    let csv = export_csv(&settings, &mut kept, &token)
        .await
        .unwrap_or_else(|e| panic!("export after Chromium was killed: {e:#}"));
    assert_ne!(
        kept.as_ref().unwrap().download_dir(),
        folder,
        "a new browser"
    );
    assert_csv_equals_table(&csv, &token, bed);
    kept.take().unwrap().close().await;
    assert_no_browser_left().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_phpmyadmin_version_exports_the_table_exactly_cold_and_warm() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    init_logs();
    let bed = testbed();
    let (mut exports, mut followed) = (0, 0);
    for (version, url) in &bed.versions() {
        let work = tempfile::tempdir().unwrap();
        let settings = settings(bed, url, &bed.password, None, &work.path().join("failures"));
        let token = null_token();
        let mut kept = None;
        for run in ["cold", "warm"] {
            let (csv, read_while_written) = export_following(&settings, &mut kept, &token)
                .await
                .unwrap_or_else(|e| panic!("phpMyAdmin {version}, {run} export: {e:#}"));
            exports += 1;
            followed += usize::from(read_while_written);
            assert_csv_equals_table(&csv, &token, bed);
            std::fs::remove_file(&csv).unwrap();
        }
        kept.take().unwrap().close().await;

        let mut missing = settings.clone();
        missing.table = "no_such_table".into();
        let err = export_once(&missing, &token)
            .await
            .0
            .expect_err("a missing table fails");
        eprintln!("phpMyAdmin {version}, missing table: {err:#}");
        assert!(matches!(err, ExportError::Fatal(_)), "{version}: {err:#}");
        assert!(
            format!("{err:#}").contains("no_such_table"),
            "{version}: {err:#}"
        );
    }
    // Most downloads are read while Chromium writes them; a rare one started again in a new
    // file is converted once finished.
    assert!(
        followed * 2 > exports,
        "only {followed} of {exports} exports were converted while downloading"
    );
    assert_no_browser_left().await;
}

/// A table with every kind of value the typed view distinguishes.
const TYPED_TABLE: &str = "CREATE TABLE typed_probe (\
    id BIGINT UNSIGNED NOT NULL, price DECIMAL(10,2) NULL, ratio DOUBLE NULL, \
    flag TINYINT(1) NOT NULL DEFAULT 0, made DATETIME NULL, day DATE NULL, \
    `a name` VARCHAR(20) NULL, note TEXT NULL, PRIMARY KEY (id))";

#[tokio::test(flavor = "multi_thread")]
async fn every_phpmyadmin_version_gives_the_types_and_key_for_the_typed_view() {
    let test = BrowserTest::start().await;
    let bed = test.bed;
    bed.sql(&format!(
        "SET SESSION sql_mode = ''; DROP TABLE IF EXISTS {db}.typed_probe; USE {db}; {TYPED_TABLE}; \
         INSERT INTO typed_probe VALUES \
         (18446744073709551615, 12345678.91, 0.1, 1, '0000-00-00 00:00:00', '2024-02-29', 'NULL', NULL), \
         (1, NULL, NULL, 0, '2024-01-02 03:04:05', NULL, NULL, 'x');",
        db = bed.database
    ));
    for (version, url) in &bed.versions() {
        let mut settings = test.settings_at(url, &bed.password, None);
        settings.table = "typed_probe".into();
        let token = null_token();
        let mut kept = None;
        let (csv, schema) = export_with(&settings, &mut kept, &token)
            .await
            .unwrap_or_else(|e| panic!("phpMyAdmin {version}: {e:#}"));
        let schema = schema.unwrap_or_else(|| panic!("phpMyAdmin {version} gave no structure"));
        let converted =
            csv_to_cache_json(std::fs::File::open(&csv).unwrap(), Some(&token), "T", 0).unwrap();
        kept.take().unwrap().close().await;
        assert_eq!(schema.table, "typed_probe", "{version}");
        assert_eq!(schema.key, ["id"], "{version}");
        let types: Vec<(String, String, bool)> = schema
            .columns
            .iter()
            .map(|c| (c.name.clone(), schema.kind_of(&c.name).name(), c.nullable))
            .collect();
        let expected = [
            ("id", "unsigned", false),
            ("price", "decimal(10,2)", true),
            ("ratio", "double", true),
            ("flag", "integer", false),
            ("made", "datetime", true),
            ("day", "date", true),
            ("a name", "text", true),
            ("note", "text", true),
        ]
        .map(|(n, t, null)| (n.to_owned(), t.to_owned(), null));
        assert_eq!(types, expected, "phpMyAdmin {version}");

        let mut body = b"{\"status\":\"success\",".to_vec();
        body.extend_from_slice(&converted.cache_bytes()[1..]);
        let view = TypedTable::build(&body, Some(&schema), "typed_probe").unwrap();
        assert_eq!(view.rows(), 2, "{version}");
        assert_eq!(
            view.unrepresentable,
            [0, 0, 0, 0, 1, 0, 0, 0],
            "{version}: the zero date alone cannot be held"
        );
        let row = view
            .row_of_key("18446744073709551615")
            .expect("the maximum key");
        let text = |c: usize| {
            datafusion::arrow::util::display::ArrayFormatter::try_new(
                view.batch.column(c).as_ref(),
                &Default::default(),
            )
            .unwrap()
            .value(row)
            .to_string()
        };
        assert_eq!(text(0), "18446744073709551615", "{version}");
        assert_eq!(text(1), "12345678.91", "{version}");
        assert_eq!(text(6), "NULL", "{version}: the text NULL stays text");
        assert!(
            view.batch.column(7).is_null(row),
            "{version}: SQL NULL is null"
        );
        assert!(
            view.batch.column(4).is_null(row),
            "{version}: the zero date is null"
        );
    }
    bed.sql(&format!("DROP TABLE {}.typed_probe", bed.database));
    assert_no_browser_left().await;
}
