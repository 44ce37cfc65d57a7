//! The local test bed (MariaDB, phpMyAdmin, ChromeDriver) as the tests see it.
//!
//! `testbed()` uses the bed named by `$PMA_TESTBED_ENV` (the path of a bed's `env` file), or
//! starts one with `bin/testbed up target/testbed` (which reuses a running bed). The bed stays up
//! after the tests; `bin/testbed down target/testbed` stops it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A running test bed.
#[derive(Debug)]
pub struct Testbed {
    /// phpMyAdmin's address, ending in `/`.
    pub pma_url: String,
    pub username: String,
    pub password: String,
    pub database: String,
    pub table: String,
    /// MariaDB's Unix socket; root logs in over it without a password.
    pub mariadb_socket: PathBuf,
    /// The bed's ChromeDriver.
    pub webdriver_url: String,
    /// The folder that holds the bed's data and logs.
    pub dir: PathBuf,
    /// The released phpMyAdmins the bed serves beside Debian's, as (version, address), or why
    /// it could not serve them; see [`Testbed::versions`].
    releases: Result<Vec<(&'static str, String)>, String>,
}

/// The test bed, started on first use.
pub fn testbed() -> &'static Testbed {
    static BED: OnceLock<Testbed> = OnceLock::new();
    BED.get_or_init(|| {
        let env_file = match std::env::var_os("PMA_TESTBED_ENV") {
            Some(path) => PathBuf::from(path),
            None => start_local_bed(),
        };
        Testbed::from_env_file(&env_file)
    })
}

fn start_local_bed() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("testbed");
    let output = Command::new(root.join("bin").join("testbed"))
        .arg("up")
        .arg(&dir)
        .arg("--releases")
        .output()
        .unwrap_or_else(|e| panic!("cannot run bin/testbed: {e}"));
    if !output.status.success() {
        panic!(
            "bin/testbed up failed:\n{}\nThe test bed needs MariaDB, phpMyAdmin, Chromium and \
             ChromeDriver: run bin/setup (or bin/test) first.",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

impl Testbed {
    /// Reads a bed's `env` file (KEY=value lines).
    pub fn from_env_file(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!(
                "cannot read the test bed's env file {}: {e}",
                path.display()
            )
        });
        let vars: HashMap<&str, &str> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let get = |key: &str| -> String {
            vars.get(key)
                .unwrap_or_else(|| {
                    panic!(
                        "{} has no {key}: restart the bed (bin/testbed down, then up)",
                        path.display()
                    )
                })
                .to_string()
        };
        Testbed {
            pma_url: get("PMA_URL"),
            username: get("PMA_USERNAME"),
            password: get("PMA_PASSWORD"),
            database: get("PMA_DATABASE"),
            table: get("PMA_TABLE"),
            mariadb_socket: PathBuf::from(get("TESTBED_MARIADB_SOCKET")),
            webdriver_url: get("TESTBED_WEBDRIVER_URL"),
            dir: PathBuf::from(get("TESTBED_DIR")),
            releases: match (
                vars.get("TESTBED_RELEASES_MISSING"),
                vars.get("TESTBED_RELEASES"),
            ) {
                (Some(why), _) if !why.is_empty() => Err(why.to_string()),
                (_, Some(&"1")) => Ok(vec![
                    ("4.9.11", get("PMA_URL_4_9")),
                    ("5.1.4", get("PMA_URL_5_1")),
                ]),
                _ => Err(format!(
                    "the test bed in {} was started without the released phpMyAdmins: \
                     start it with `bin/testbed up DIR --releases` (bin/test does)",
                    path.display()
                )),
            },
        }
    }

    /// Every phpMyAdmin the bed serves, as (version, address): Debian's 5.2.1 (`pma_url`) and
    /// the released 4.9.11 and 5.1.4. Fails the test, saying how to provide them, when the bed
    /// could not serve the released ones.
    pub fn versions(&self) -> Vec<(&'static str, String)> {
        let releases = self
            .releases
            .clone()
            .unwrap_or_else(|why| panic!("cannot test every phpMyAdmin version: {why}"));
        let mut all = vec![("5.2.1", self.pma_url.clone())];
        all.extend(releases);
        all
    }

    /// The settings that point a `pma-cache` process at this bed's phpMyAdmin table. Every sync
    /// is a full export (`SYNC_FULL_EVERY=0`), one export each, as the tests that count exports
    /// expect; the tests of incremental syncs set their own.
    pub fn pma_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PMA_URL", self.pma_url.clone()),
            ("PMA_USERNAME", self.username.clone()),
            ("PMA_PASSWORD", self.password.clone()),
            ("PMA_DATABASE", self.database.clone()),
            ("PMA_TABLE", self.table.clone()),
            ("SYNC_TIMEOUT", "3m".into()),
            ("SYNC_FULL_EVERY", "0".into()),
        ]
    }

    /// How many logins phpMyAdmin 5.2 (`pma_url`) has been sent so far: the login form's POSTs,
    /// counted in its request log.
    pub fn logins_served(&self) -> usize {
        let log = std::fs::read_to_string(self.dir.join("php.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.ends_with("POST /index.php?route=/") || l.ends_with("POST /index.php"))
            .count()
    }

    /// Runs SQL as MariaDB's root and returns the tab-separated output, without a header row.
    pub fn sql(&self, sql: &str) -> String {
        let output = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.mariadb_socket.display()))
            .args(["-uroot", "--batch", "--raw", "--skip-column-names"])
            .arg("--default-character-set=utf8mb4")
            .arg("-e")
            .arg(sql)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mariadb (run bin/setup): {e}"));
        if !output.status.success() {
            panic!(
                "SQL failed: {sql}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        String::from_utf8(output.stdout).expect("mariadb prints UTF-8")
    }

    /// The whole table exactly as MariaDB holds it, sorted by `id` (or the first column):
    /// column names, then rows where SQL NULL is `None` and the text `NULL` is `Some("NULL")`.
    pub fn table_as_rows(&self, db: &str, table: &str) -> (Vec<String>, Vec<Vec<Option<String>>>) {
        let columns: Vec<String> = self
            .sql(&format!(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = '{}' AND TABLE_NAME = '{}' ORDER BY ORDINAL_POSITION",
                db.replace('\'', "''"),
                table.replace('\'', "''")
            ))
            .lines()
            .map(str::to_owned)
            .collect();
        assert!(
            !columns.is_empty(),
            "table `{db}`.`{table}` has no columns (does it exist?)"
        );
        // Each value travels as the hex of its text: no escaping, no newline or tab in the way,
        // and SQL NULL stays NULL (HEX(NULL) is NULL) while the text 'NULL' becomes 4E554C4C.
        let select: Vec<String> = columns
            .iter()
            .map(|c| format!("HEX(CAST({} AS CHAR CHARACTER SET utf8mb4))", ident(c)))
            .collect();
        let order = if columns.iter().any(|c| c == "id") {
            "`id`"
        } else {
            "1"
        };
        let out = self.sql(&format!(
            "SELECT {} FROM {}.{} ORDER BY {order}",
            select.join(", "),
            ident(db),
            ident(table)
        ));
        let rows = out
            .lines()
            .map(|line| {
                let fields: Vec<Option<String>> = line.split('\t').map(decode_hex_field).collect();
                assert_eq!(
                    fields.len(),
                    columns.len(),
                    "bad line from mariadb: {line:?}"
                );
                fields
            })
            .collect();
        (columns, rows)
    }
}

fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn decode_hex_field(field: &str) -> Option<String> {
    if field == "NULL" {
        return None;
    }
    let bytes: Vec<u8> = (0..field.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&field[i..i + 2], 16).expect("HEX() output"))
        .collect();
    Some(String::from_utf8(bytes).expect("the table holds UTF-8 text"))
}
