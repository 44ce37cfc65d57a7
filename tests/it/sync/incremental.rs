//! Incremental syncs end to end: a server syncing a table of its own on the test bed, changed
//! with SQL between syncs, on every phpMyAdmin version the bed serves. The cache after an
//! incremental sync must hold exactly the rows a full export of the same table gives, byte for
//! byte.

use std::time::Duration;

use serde_json::Value;

use super::{pma_env_in, set_env};
use crate::helpers::app::*;
use crate::helpers::eventually;
use crate::helpers::testbed::{testbed, Testbed};

/// A fresh table `name` in the bed's database: a `BIGINT UNSIGNED` key, text that may be NULL,
/// a 20 KB text, a decimal and an `updated_at` cursor; 400 rows.
fn make_table(bed: &Testbed, name: &str) {
    bed.sql(&format!(
        "USE {db}; DROP TABLE IF EXISTS {name};
         CREATE TABLE {name} (
           id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
           note VARCHAR(200) NULL,
           body MEDIUMTEXT NULL,
           amount DECIMAL(10,2) NULL,
           updated_at DATETIME NOT NULL DEFAULT '2026-01-01 00:00:00'
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
         INSERT INTO {name} (id, note, body, amount, updated_at)
           SELECT seq, IF(seq % 7 = 0, NULL, CONCAT('note ', seq)),
                  IF(seq = 5, REPEAT('0123456789', 2000), CONCAT('body, \"', seq, '\"\\n')),
                  seq * 1.5, '2026-01-01 00:00:00' + INTERVAL seq MINUTE
           FROM seq_1_to_400;",
        db = bed.database,
    ));
}

/// The environment of a server syncing `table` through phpMyAdmin at `url`, incrementally.
fn incremental_env(
    bed: &Testbed,
    tmp: &std::path::Path,
    url: &str,
    table: &str,
) -> Vec<(&'static str, String)> {
    let mut env = pma_env_in(bed, tmp);
    set_env(&mut env, "PMA_URL", url);
    set_env(&mut env, "PMA_TABLE", table);
    set_env(&mut env, "SYNC_FULL_EVERY", "24h");
    env
}

/// Asks for a sync (`query` as `POST /refresh?query`) and waits for it to end; returns
/// `/status` then.
async fn sync_now(app: &TestApp, query: &str) -> Value {
    let before = app.get_status().await;
    let ended = |s: &Value| {
        (
            s["sync"]["last_success"].clone(),
            s["sync"]["last_failure"].clone(),
        )
    };
    let was = ended(&before);
    let answer = app.post_refresh_with(query).await;
    assert_eq!(answer.status(), 202, "{}", answer.text().await.unwrap());
    eventually(Duration::from_secs(180), "the sync ends", || async {
        let status = app.get_status().await;
        match status["sync"]["state"] == "idle" && ended(&status) != was {
            true => Ok(status),
            false => Err(status.to_string()),
        }
    })
    .await
}

/// The served document from `"count"` on: its rows exactly as sent, without the sync time.
async fn served_rows(app: &TestApp) -> String {
    let body = app.get_fetch_data("").await.text().await.unwrap();
    let at = body.find("\"count\"").expect("a count");
    body[at..].to_owned()
}

/// The served rows equal the table's, value for value, NULL apart from the text `NULL`.
async fn assert_served_equals_table(app: &TestApp, bed: &Testbed, table: &str) {
    let body: Value = app.get_fetch_data("").await.json().await.unwrap();
    let (columns, rows) = super::cache_rows(&body);
    let (want_columns, mut want) = bed.table_as_rows(&bed.database, table);
    want.sort_by_key(|r| r[0].as_deref().unwrap_or("").parse::<u64>().unwrap_or(0));
    let mut rows = rows;
    rows.sort_by_key(|r| r[0].as_deref().unwrap_or("").parse::<u64>().unwrap_or(0));
    assert_eq!(columns, want_columns);
    assert_eq!(rows.len(), want.len(), "row count");
    for (got, want) in rows.iter().zip(&want) {
        assert_eq!(got, want, "row with id {:?}", want[0]);
    }
}

fn assert_kind(status: &Value, kind: &str) {
    assert_eq!(
        status["sync"]["last_kind"], kind,
        "the sync's kind: {status:#}"
    );
}

/// Changes that an incremental sync must carry exactly.
fn change_rows(bed: &Testbed, table: &str) {
    bed.sql(&format!(
        "USE {db};
         UPDATE {table} SET note = 'changed', updated_at = NOW() WHERE id = 10;
         INSERT INTO {table} (id, note, body, amount, updated_at) VALUES (1000, 'new', 'b', 1.00, NOW());
         DELETE FROM {table} WHERE id = 20;
         DELETE FROM {table} WHERE id = 30;
         INSERT INTO {table} (id, note, body, amount, updated_at) VALUES (30, 'again', 'b2', 2.00, NOW());
         UPDATE {table} SET note = 'NULL', updated_at = NOW() WHERE id = 40;
         UPDATE {table} SET note = NULL, updated_at = NOW() WHERE id = 41;
         UPDATE {table} SET note = 'a,\"b\"\\nc', updated_at = NOW() WHERE id = 50;
         UPDATE {table} SET body = CONCAT(LEFT(body, 9999), 'X', SUBSTRING(body, 10001)),
                updated_at = NOW() WHERE id = 5;
         INSERT INTO {table} (id, note, body, amount, updated_at)
           VALUES (18446744073709551615, 'max', NULL, NULL, NOW());",
        db = bed.database,
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_sync_by_row_digest_equals_a_full_export_on_every_phpmyadmin() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    for (version, url) in bed.versions() {
        let table = format!("inc_rows_{}", version.replace('.', "_"));
        make_table(bed, &table);
        let tmp = tempfile::tempdir().unwrap();
        let app = spawn_app_with(Options {
            env: incremental_env(bed, tmp.path(), &url, &table),
            ..Options::default()
        })
        .await;
        let first = sync_now(&app, "").await;
        assert_kind(&first, "full");
        assert!(
            first["sync"]["last_full_reason"]
                .as_str()
                .unwrap()
                .contains("first sync"),
            "{first:#}"
        );
        change_rows(bed, &table);
        let second = sync_now(&app, "").await;
        assert_kind(&second, "row_hash");
        assert_served_equals_table(&app, bed, &table).await;
        let incremental = served_rows(&app).await;
        let export_bytes = second["sync"]["last_export_bytes"].as_u64().unwrap();

        // Nothing changed: the sums MySQL computes equal those of the rows held, so nothing
        // but the sums is exported.
        let third = sync_now(&app, "").await;
        assert_kind(&third, "row_hash");
        assert_eq!(served_rows(&app).await, incremental, "{version}");
        let logs = app.logs();
        let merged = logs
            .lines()
            .rfind(|l| l.contains("merged the changed rows"))
            .unwrap();
        assert!(
            merged.contains("inserted=0 updated=0 deleted=0 unchanged=0"),
            "{version}: {merged}"
        );
        assert!(
            third["sync"]["last_export_bytes"].as_u64().unwrap() < export_bytes,
            "{third:#}"
        );

        let full = sync_now(&app, "full=true").await;
        assert_kind(&full, "full");
        assert_eq!(
            served_rows(&app).await,
            incremental,
            "phpMyAdmin {version}: the incremental sync's rows are a full export's, byte for byte"
        );
        let full_bytes = full["sync"]["last_export_bytes"].as_u64().unwrap();
        assert!(
            export_bytes < full_bytes,
            "{version}: {export_bytes} bytes exported incrementally, {full_bytes} in full"
        );
        let record = std::fs::read_to_string(format!("{}.meta", app.cache_file.display())).unwrap();
        assert!(record.contains("\"sync_kind\":\"full\""), "{record}");
        let metrics = app
            .get_with("/metrics", &[("X-API-Key", KEY)])
            .await
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("pma_cache_sync_kinds_total{kind=\"row_hash\"} 2"),
            "{metrics}"
        );
        assert!(app.stop().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_sync_by_cursor_catches_late_and_same_second_rows_and_deletions() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let table = "inc_cursor";
    make_table(bed, table);
    let tmp = tempfile::tempdir().unwrap();
    let mut env = incremental_env(bed, tmp.path(), &bed.pma_url, table);
    set_env(&mut env, "SYNC_CURSOR", "updated_at");
    set_env(&mut env, "SYNC_CURSOR_OVERLAP", "5m");
    let app = spawn_app_with(Options {
        env,
        ..Options::default()
    })
    .await;
    assert_kind(&sync_now(&app, "").await, "full");
    // The highest cursor is row 400's; a row written in that same second, one written by a
    // clock two minutes behind, a deletion and an insert.
    let mark = "'2026-01-01 00:00:00' + INTERVAL 400 MINUTE";
    bed.sql(&format!(
        "USE {db};
         UPDATE {table} SET note = 'same second', updated_at = {mark} WHERE id = 3;
         UPDATE {table} SET note = 'clock behind', updated_at = {mark} - INTERVAL 2 MINUTE WHERE id = 4;
         DELETE FROM {table} WHERE id = 6;
         INSERT INTO {table} (id, note, updated_at) VALUES (500, 'new', {mark});",
        db = bed.database
    ));
    let status = sync_now(&app, "").await;
    assert_kind(&status, "cursor");
    assert_served_equals_table(&app, bed, table).await;
    // Again: the key sums the first incremental sync left find this deletion too.
    bed.sql(&format!(
        "USE {db};
         DELETE FROM {table} WHERE id = 7;
         INSERT INTO {table} (id, note, updated_at) VALUES (502, 'second', {mark} + INTERVAL 1 MINUTE);",
        db = bed.database
    ));
    assert_kind(&sync_now(&app, "").await, "cursor");
    assert_served_equals_table(&app, bed, table).await;
    let incremental = served_rows(&app).await;
    assert_kind(&sync_now(&app, "full=true").await, "full");
    assert_eq!(served_rows(&app).await, incremental);

    // A row written by a clock far behind (before the overlap) is not among the rows since the
    // cursor, but its key is: the counts differ, so the sync exports the whole table instead.
    bed.sql(&format!(
        "USE {db}; INSERT INTO {table} (id, note, updated_at) VALUES (501, 'far behind', '2020-01-01');",
        db = bed.database
    ));
    let status = sync_now(&app, "").await;
    assert_kind(&status, "full");
    let reason = status["sync"]["last_full_reason"].as_str().unwrap();
    assert!(reason.contains("merged table has"), "{reason}");
    assert_served_equals_table(&app, bed, table).await;

    // An incremental sync that would delete more than the shrink guard allows is refused.
    bed.sql(&format!(
        "USE {db}; DELETE FROM {table} WHERE id > 100;",
        db = bed.database
    ));
    let before = served_rows(&app).await;
    let status = sync_now(&app, "").await;
    let error = status["sync"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("SYNC_FORCE"), "{status:#}");
    assert_eq!(
        served_rows(&app).await,
        before,
        "the previous version is served"
    );
    assert!(app.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn full_exports_come_when_due_when_columns_change_and_after_a_failed_incremental_export() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let table = "inc_triggers";
    make_table(bed, table);
    let tmp = tempfile::tempdir().unwrap();
    let mut env = incremental_env(bed, tmp.path(), &bed.pma_url, table);
    set_env(&mut env, "SYNC_FULL_EVERY", "3s");
    let app = spawn_app_with(Options {
        env: env.clone(),
        ..Options::default()
    })
    .await;
    assert_kind(&sync_now(&app, "").await, "full");
    assert_kind(&sync_now(&app, "").await, "row_hash");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let due = sync_now(&app, "").await;
    assert_kind(&due, "full");
    assert!(
        due["sync"]["last_full_reason"]
            .as_str()
            .unwrap()
            .contains("SYNC_FULL_EVERY"),
        "{due:#}"
    );
    bed.sql(&format!(
        "USE {db}; ALTER TABLE {table} ADD COLUMN extra INT NULL;",
        db = bed.database
    ));
    let altered = sync_now(&app, "").await;
    assert_kind(&altered, "full");
    assert!(
        altered["sync"]["last_full_reason"]
            .as_str()
            .unwrap()
            .contains("columns"),
        "{altered:#}"
    );
    assert_served_equals_table(&app, bed, table).await;
    assert!(app.stop().success());

    // Every incremental export fails midway: the sync fails, the version held is served, and
    // the next sync exports the whole table.
    let mut faulty = env;
    set_env(&mut faulty, "SYNC_FULL_EVERY", "24h");
    faulty.push(("PMA_CACHE_FAULT", "incremental".into()));
    let app = spawn_app_with(Options {
        env: faulty,
        ..Options::default()
    })
    .await;
    assert_kind(&sync_now(&app, "").await, "full");
    let before = served_rows(&app).await;
    bed.sql(&format!(
        "USE {db}; UPDATE {table} SET note = 'after the fault' WHERE id = 1;",
        db = bed.database
    ));
    let failed = sync_now(&app, "").await;
    let error = failed["sync"]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("incremental") && failed["sync"]["last_failure"].is_string(),
        "{failed:#}"
    );
    assert_eq!(
        served_rows(&app).await,
        before,
        "the previous version is served"
    );
    let next = sync_now(&app, "").await;
    assert_kind(&next, "full");
    assert_served_equals_table(&app, bed, table).await;
    assert!(app.stop().success());
}
