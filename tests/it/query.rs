//! `/query` and `/tables` against a real server whose cache holds the test bed's `orders`
//! table, typed by its `CREATE TABLE`: answers compared with MariaDB's own answer to the same
//! SQL text, refusals, limits, formats read by real readers, pages across versions.

use std::path::Path;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::helpers::app::{binary, spawn_app_with, Options, TestApp, KEY};
use crate::helpers::testbed::{testbed, Testbed};

const NULL: &str = "NULL~query-test";

/// Writes the bed's `orders` (the rows whose id passes `keep`) as the cache at `cache_file`,
/// typed by MariaDB's own `CREATE TABLE`, through `pma-cache import --schema`.
fn import_orders(bed: &Testbed, cache_file: &Path, keep: impl Fn(i64) -> bool) {
    let (header, rows) = bed.table_as_rows(&bed.database, &bed.table);
    let dir = cache_file.parent().unwrap();
    let csv_path = dir.join(format!("orders-{}.csv", rand::random::<u32>()));
    let mut writer = csv::Writer::from_path(&csv_path).unwrap();
    writer.write_record(&header).unwrap();
    let id = header.iter().position(|c| c == "id").unwrap();
    for row in &rows {
        let row_id: i64 = row[id].as_deref().unwrap().parse().unwrap();
        if keep(row_id) {
            writer
                .write_record(row.iter().map(|v| v.as_deref().unwrap_or(NULL)))
                .unwrap();
        }
    }
    writer.flush().unwrap();
    let create = bed.sql(&format!("SHOW CREATE TABLE {}.{}", bed.database, bed.table));
    let create = create.split_once('\t').expect("name, then the statement").1;
    let schema_path = dir.join("orders.sql");
    std::fs::write(&schema_path, create).unwrap();
    let out = std::process::Command::new(binary())
        .arg("import")
        .arg(&csv_path)
        .arg("--cache-file")
        .arg(cache_file)
        .arg("--null")
        .arg(NULL)
        .arg("--schema")
        .arg(&schema_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(csv_path).unwrap();
}

async fn orders_app(env: Vec<(&'static str, String)>) -> (TestApp, tempfile::TempDir) {
    let bed = testbed();
    let dir = tempfile::tempdir().unwrap();
    let cache_file = dir.path().join("orders.json");
    import_orders(bed, &cache_file, |_| true);
    let app = spawn_app_with(Options {
        cache_file: Some(cache_file),
        env,
        ..Options::default()
    })
    .await;
    (app, dir)
}

impl TestApp {
    async fn query(&self, sql: &str, extra: &[(&str, &str)]) -> reqwest::Response {
        let mut query = vec![("sql", sql)];
        query.extend_from_slice(extra);
        self.client
            .get(self.url("/query"))
            .header("X-API-Key", KEY)
            .query(&query)
            .send()
            .await
            .unwrap()
    }

    async fn get_json(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let response = self.get_with(path, &[("X-API-Key", KEY)]).await;
        let status = response.status();
        (status, response.json().await.unwrap())
    }
}

/// MariaDB's answer to `sql` on the bed's database, as text cells (`NULL` for null).
fn mariadb_answer(bed: &Testbed, sql: &str) -> Vec<Vec<String>> {
    bed.sql(&format!("USE {}; {sql}", bed.database))
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// Our answer's rows as text cells, every digit as sent.
async fn our_answer(app: &TestApp, sql: &str) -> Vec<Vec<String>> {
    let response = app.query(sql, &[("_shape", "arrays")]).await;
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{sql}: {body}");
    #[derive(serde::Deserialize)]
    struct Answer {
        rows: Vec<Vec<Box<RawValue>>>,
        truncated: bool,
    }
    let answer: Answer = serde_json::from_str(&body).unwrap();
    assert!(!answer.truncated);
    answer
        .rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|cell| match cell.get() {
                    "null" => "NULL".to_owned(),
                    text if text.starts_with('"') => serde_json::from_str(text).unwrap(),
                    number => number.to_owned(),
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_equal_mariadbs_to_the_same_sql() {
    let bed = testbed();
    let (app, _dir) = orders_app(vec![]).await;
    let queries = [
        // Exact decimal sums and the extremes.
        "SELECT COUNT(*), SUM(total), MIN(total), MAX(total), SUM(lineitem_quantity) FROM orders",
        // Revenue per day: date grouping.
        "SELECT DATE(created_at) AS day, SUM(total) AS revenue, COUNT(*) AS n FROM orders \
         GROUP BY DATE(created_at) ORDER BY day",
        "SELECT DATE_FORMAT(created_at, '%Y-%m') AS month, SUM(total), ROUND(SUM(total), 1) \
         FROM orders GROUP BY DATE_FORMAT(created_at, '%Y-%m') ORDER BY month",
        "SELECT YEAR(created_at), MONTH(created_at), COUNT(DISTINCT email) FROM orders \
         GROUP BY YEAR(created_at), MONTH(created_at) ORDER BY 1, 2",
        "SELECT financial_status, COUNT(*) AS n, SUM(total) FROM orders \
         GROUP BY financial_status ORDER BY financial_status",
        "SELECT IFNULL(fulfillment_status, 'none') AS f, COUNT(*) FROM orders \
         GROUP BY IFNULL(fulfillment_status, 'none') ORDER BY 2 DESC, 1",
        "SELECT billing_country, COUNT(*) AS c FROM orders GROUP BY billing_country \
         HAVING COUNT(*) > 5 ORDER BY c DESC, billing_country",
        // Window functions.
        "SELECT id, total, RANK() OVER (ORDER BY total DESC, id) AS r, \
         SUM(total) OVER (ORDER BY id) AS running FROM orders ORDER BY id LIMIT 20",
        // The table joined with itself.
        "SELECT a.id, b.id, a.currency FROM orders a JOIN orders b \
         ON a.currency = b.currency AND a.id + 1 = b.id ORDER BY a.id LIMIT 20",
        // MySQL's LIMIT offset, n.
        "SELECT id, `total` FROM `orders` ORDER BY id LIMIT 5, 10",
        // A CTE with a subquery, CASE, BETWEEN, IN and LIKE.
        "WITH big AS (SELECT * FROM orders WHERE total > (SELECT AVG(total) FROM orders)) \
         SELECT COUNT(*) FROM big",
        "SELECT CASE WHEN total BETWEEN 0 AND 50 THEN 'small' ELSE 'big' END AS size, COUNT(*) \
         FROM orders WHERE currency IN ('USD', 'EUR') AND email LIKE '%@%' \
         GROUP BY CASE WHEN total BETWEEN 0 AND 50 THEN 'small' ELSE 'big' END ORDER BY size",
        // Dates and text functions.
        "SELECT id, DATE_SUB(created_at, INTERVAL 30 DAY), DATE(created_at), HOUR(created_at), \
         DAY(created_at), UPPER(currency), LOWER(billing_country), CONCAT(currency, '-', id) \
         FROM orders ORDER BY id LIMIT 10",
        "SELECT COUNT(*) FROM orders WHERE created_at >= DATE_SUB('2025-06-01', INTERVAL 30 DAY)",
        "SELECT COALESCE(discount_code, fulfillment_status, 'x'), COUNT(*) FROM orders \
         GROUP BY COALESCE(discount_code, fulfillment_status, 'x') ORDER BY 2 DESC, 1 LIMIT 5",
        "SELECT id, IF(total > 100, 'big', 'small'), TRIM(currency), REPLACE(currency, 'U', 'u'), \
         SUBSTR(billing_country, 1, 1), ABS(discount_amount - total), AVG(total) OVER () \
         FROM orders ORDER BY id LIMIT 10",
        "SELECT id FROM orders WHERE id < 3 UNION SELECT id FROM orders WHERE id > 497 ORDER BY id",
        "SELECT AVG(total), AVG(subtotal) FROM orders",
        // Lookups by key, answered from the key index: one key, several, one missing, the
        // key beside another condition, and the key compared with a text.
        "SELECT id, name, created_at, subtotal, total, discount_code, cancelled_at FROM orders WHERE id = 7",
        "SELECT id, total FROM orders WHERE id IN (3, 7, 99999999, 250) ORDER BY id",
        "SELECT id FROM orders WHERE id = 99999999 UNION ALL SELECT COUNT(*) FROM orders",
        "SELECT id, total FROM orders WHERE total > 0 AND id = 12",
        "SELECT id FROM orders WHERE id = '12' OR id = 13 ORDER BY id",
        "SELECT a.id, b.total FROM orders a JOIN orders b ON b.id = a.id WHERE a.id = 5",
    ];
    for sql in queries {
        let theirs = mariadb_answer(bed, sql);
        let ours = our_answer(&app, sql).await;
        assert!(!theirs.is_empty(), "{sql}: MariaDB answered nothing");
        assert_eq!(ours, theirs, "{sql}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn parameters_are_bound_not_pasted() {
    let bed = testbed();
    let (app, _dir) = orders_app(vec![]).await;
    let sql = "SELECT id, total FROM orders WHERE total > $1 AND financial_status = $2 ORDER BY id";
    let ours = app
        .query(sql, &[("p", "100.5"), ("p", "paid"), ("_shape", "arrays")])
        .await;
    assert_eq!(ours.status(), 200);
    let ours: Value = ours.json().await.unwrap();
    let theirs = mariadb_answer(
        bed,
        "SELECT id, total FROM orders WHERE total > 100.5 AND financial_status = 'paid' ORDER BY id",
    );
    assert_eq!(ours["rows"].as_array().unwrap().len(), theirs.len());
    assert!(!theirs.is_empty());

    // A value that would be SQL if pasted is only a value.
    let injected = app
        .query(
            "SELECT COUNT(*) FROM orders WHERE financial_status = $1",
            &[("p", "paid' OR '1'='1")],
        )
        .await;
    let injected: Value = injected.json().await.unwrap();
    assert_eq!(injected["rows"][0]["count(*)"], 0, "{injected}");

    // POST, as JSON with parameters and as plain SQL.
    let posted: Value = app
        .client
        .post(app.url("/query"))
        .header("X-API-Key", KEY)
        .json(&serde_json::json!({"sql": "SELECT COUNT(*) AS n FROM orders WHERE id <= $1", "params": [10]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(posted["rows"][0]["n"], 10, "{posted}");
    let plain = app
        .client
        .post(app.url("/query"))
        .header("X-API-Key", KEY)
        .body("SELECT COUNT(*) AS n FROM orders")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    let plain: Value = plain.json().await.unwrap();
    assert_eq!(plain["rows"][0]["n"].as_u64(), Some(bed_rows(bed)));

    let missing = app.query("SELECT $1", &[]).await;
    assert_eq!(missing.status(), 400);
    let message = missing.json::<Value>().await.unwrap()["message"].to_string();
    assert!(message.contains("1 parameter"), "{message}");
}

fn bed_rows(bed: &Testbed) -> u64 {
    bed.sql(&format!(
        "SELECT COUNT(*) FROM {}.{}",
        bed.database, bed.table
    ))
    .trim()
    .parse()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn anything_but_one_read_only_query_is_refused_with_the_reason() {
    let (app, _dir) = orders_app(vec![]).await;
    for (sql, why) in [
        ("DELETE FROM orders", "change rows"),
        ("UPDATE orders SET total = 0", "change rows"),
        ("INSERT INTO orders (id) VALUES (1)", "change rows"),
        ("DROP TABLE orders", "change the schema"),
        ("CREATE TABLE x (a INT)", "change the schema"),
        ("SET @a = 1", "change settings"),
        ("COPY orders TO '/tmp/x.csv'", ""),
        ("SELECT 1; DROP TABLE orders", "one statement at a time"),
        ("SELECT * FROM '/etc/passwd'", ""),
        ("SELECT * FROM nothing_here", "nothing_here"),
        ("SELECT no_such_column FROM orders", "no_such_column"),
        ("SELEKT 1", "cannot be parsed"),
    ] {
        let response = app.query(sql, &[]).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 400, "{sql}: {body}");
        assert_eq!(body["status"], "error", "{sql}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(why), "{sql}: {message}");
    }
    // The table is still whole.
    let (status, answer) = app
        .get_json("/query?sql=SELECT%20COUNT(*)%20AS%20n%20FROM%20orders")
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["rows"][0]["n"].as_u64(), Some(bed_rows(testbed())));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_past_its_time_is_stopped_while_fetch_data_answers() {
    let (app, _dir) = orders_app(vec![
        ("QUERY_TIMEOUT", "500ms".into()),
        ("QUERY_CACHE", "0".into()),
    ])
    .await;
    // 500 x 500 x 500 rows, each a text to build and measure: many seconds of work.
    let slow =
        "SELECT SUM(LENGTH(CONCAT(a.note, b.email, c.email))) FROM orders a, orders b, orders c";
    let started = std::time::Instant::now();
    let (stopped, fetched) = tokio::join!(app.query(slow, &[]), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let response = app.get_fetch_data("").await;
        let status = response.status();
        let body = response.bytes().await.unwrap();
        (status, body.len())
    });
    assert_eq!(fetched.0, 200, "/fetch-data answers while a query runs");
    assert!(fetched.1 > 1000);
    let status = stopped.status();
    let message = stopped.json::<Value>().await.unwrap()["message"].to_string();
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("QUERY_TIMEOUT"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stopped, not run to its end"
    );
    // Later queries run again once the stopped one has let go of the query threads (it
    // stops at its next pause, which an unoptimised build reaches slowly).
    crate::helpers::eventually(Duration::from_secs(30), "a later query answers", || async {
        let after = app.query("SELECT COUNT(*) AS n FROM orders", &[]).await;
        let status = after.status();
        let body = after.text().await.unwrap();
        if status == 200 {
            Ok(())
        } else {
            Err(body)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_past_its_memory_is_stopped_and_others_go_on() {
    let (app, _dir) = orders_app(vec![
        ("QUERY_MEMORY", "1MiB".into()),
        ("QUERY_TIMEOUT", "60s".into()),
    ])
    .await;
    // Grouping 250,000 joined rows needs far more than 1 MiB, with no disk to spill to.
    let hungry =
        "SELECT a.note, b.email, COUNT(*) FROM orders a, orders b GROUP BY a.note, b.email";
    let response = app.query(hungry, &[]).await;
    let status = response.status();
    let message = response.json::<Value>().await.unwrap()["message"].to_string();
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("QUERY_MEMORY"), "{message}");
    let after = app.query("SELECT COUNT(*) AS n FROM orders", &[]).await;
    assert_eq!(after.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_format_is_read_by_a_real_reader() {
    let (app, _dir) = orders_app(vec![]).await;
    let sql = "SELECT id, total, created_at, note FROM orders ORDER BY id LIMIT 50";
    let rows_of =
        |batches: &[RecordBatch]| batches.iter().map(RecordBatch::num_rows).sum::<usize>();

    let csv = app.query(sql, &[("_format", "csv")]).await;
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        ["id", "total", "created_at", "note"]
    );
    let records: Vec<_> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 50);
    assert_eq!(&records[0][0], "1");

    let ndjson = app
        .client
        .get(app.url("/query"))
        .header("X-API-Key", KEY)
        .header("Accept", "application/x-ndjson")
        .query(&[("sql", sql)])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 50);
    assert_eq!(lines[0]["id"], 1);

    let arrow = app
        .query(sql, &[("_format", "arrow")])
        .await
        .bytes()
        .await
        .unwrap();
    let reader =
        datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(arrow), None)
            .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    assert_eq!(rows_of(&batches), 50);
    assert_eq!(
        batches[0].schema().field(1).data_type(),
        &datafusion::arrow::datatypes::DataType::Decimal128(12, 2)
    );

    let parquet = app
        .query(sql, &[("_format", "parquet")])
        .await
        .bytes()
        .await
        .unwrap();
    let reader =
        datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(parquet)
            .unwrap()
            .build()
            .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    assert_eq!(rows_of(&batches), 50);

    // JSON stops at QUERY_MAX_ROWS and says so.
    let (app_capped, _dir2) = orders_app(vec![("QUERY_MAX_ROWS", "7".into())]).await;
    let (status, capped) = app_capped
        .get_json("/query?sql=SELECT%20id%20FROM%20orders")
        .await;
    assert_eq!(status, 200);
    assert_eq!(capped["rows"].as_array().unwrap().len(), 7);
    assert_eq!(capped["truncated"], true);
    let bad = app.query(sql, &[("_format", "xml")]).await;
    assert_eq!(bad.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_query_on_the_same_version_is_a_304_and_a_new_version_is_not() {
    let bed = testbed();
    let (app, dir) = orders_app(vec![]).await;
    let sql = "SELECT financial_status, SUM(total) FROM orders GROUP BY financial_status";
    let first = app.query(sql, &[]).await;
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert!(!etag.starts_with("W/"), "a strong validator: {etag}");
    let again = app
        .client
        .get(app.url("/query"))
        .header("X-API-Key", KEY)
        .header("If-None-Match", &etag)
        .query(&[("sql", sql)])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    import_orders(bed, &dir.path().join("orders.json"), |id| id != 3);
    let new_etag = crate::helpers::eventually(Duration::from_secs(20), "the new version", || {
        let app = &app;
        let etag = etag.clone();
        async move {
            let response = app.query(sql, &[]).await;
            let tag = response.headers()["etag"].to_str().unwrap().to_owned();
            if tag != etag {
                Ok(tag)
            } else {
                Err(tag)
            }
        }
    })
    .await;
    assert_ne!(new_etag, etag);
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_tells_each_columns_types_and_the_key() {
    let (app, _dir) = orders_app(vec![]).await;
    let (status, tables) = app.get_json("/tables").await;
    assert_eq!(status, 200, "{tables}");
    let table = &tables["tables"][0];
    assert_eq!(table["name"], "orders");
    assert_eq!(table["key"], serde_json::json!(["id"]));
    assert_eq!(table["rows"].as_u64(), Some(bed_rows(testbed())));
    let column = |name: &str| {
        table["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no column {name}: {table}"))
            .clone()
    };
    assert_eq!(column("total")["type"], "decimal(12,2)");
    assert_eq!(column("total")["mysql_type"], "decimal(12,2)");
    assert_eq!(column("id")["type"], "integer");
    assert_eq!(column("created_at")["type"], "datetime");
    assert_eq!(column("note")["type"], "text");
    assert_eq!(column("lineitem_quantity")["type"], "integer");
    let fetched = app.get_raw("/fetch-data", &[("X-API-Key", KEY)]).await;
    assert_eq!(
        table["version"].as_str().unwrap(),
        fetched.headers()["etag"].to_str().unwrap(),
        "/tables and /fetch-data speak of the same version"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_are_filtered_sorted_and_looked_up_by_key() {
    let bed = testbed();
    let (app, _dir) = orders_app(vec![]).await;
    let (status, page) = app
        .get_json(
            "/tables/orders?total__gte=100&financial_status=paid&_col=id&_col=total&_size=max",
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let theirs = mariadb_answer(
        bed,
        "SELECT id FROM orders WHERE total >= 100 AND financial_status = 'paid' ORDER BY id",
    );
    let ours: Vec<String> = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].to_string())
        .collect();
    assert_eq!(
        ours,
        theirs.iter().map(|r| r[0].clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        page["columns"],
        serde_json::json!([{"name": "id", "type": "integer"}, {"name": "total", "type": "decimal(12,2)"}])
    );

    let (status, row) = app.get_json("/tables/orders/7").await;
    assert_eq!(status, 200, "{row}");
    assert_eq!(row["rows"][0]["id"], 7);
    let total = mariadb_answer(bed, "SELECT total FROM orders WHERE id = 7");
    let raw = app
        .get_with("/tables/orders/7?_col=total", &[("X-API-Key", KEY)])
        .await
        .text()
        .await
        .unwrap();
    assert!(
        raw.contains(&format!("\"rows\":[{{\"total\":{}}}]", total[0][0])),
        "every digit of the decimal: {raw}"
    );
    let (status, missing) = app.get_json("/tables/orders/999999").await;
    assert_eq!(status, 404, "{missing}");
    let (status, exact) = app.get_json("/tables/orders?id__exact=7").await;
    assert_eq!(status, 200);
    assert_eq!(exact["rows"], row["rows"]);

    for (query, named) in [
        ("no_such__gte=1", "no_such"),
        ("total__gte=lots", "total"),
        ("total__around=1", "__around"),
        ("_sort=nope", "nope"),
        ("_next=garbage", "_next"),
    ] {
        let (status, body) = app.get_json(&format!("/tables/orders?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(named),
            "{query}: {body}"
        );
    }
    let (status, _) = app.get_json("/tables/customers").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_in_text_are_the_rows_fetch_data_sends() {
    let (app, _dir) = orders_app(vec![]).await;
    let (status, fetched) = app.get_json("/fetch-data").await;
    assert_eq!(status, 200);
    let by_id: std::collections::HashMap<String, Value> = fetched["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["id"].as_str().unwrap().to_owned(), row.clone()))
        .collect();

    // A filtered, sorted page and the page after it: every row the very object /fetch-data
    // holds, every column text.
    let first = "/tables/orders?_values=text&total__gte=100&_sort_desc=total&_size=25";
    let (status, page) = app.get_json(first).await;
    assert_eq!(status, 200, "{page}");
    assert!(page["columns"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["type"] == "text"));
    let (status, typed) = app
        .get_json("/tables/orders?total__gte=100&_sort_desc=total&_size=25")
        .await;
    assert_eq!(status, 200);
    let next = page["next"].as_str().expect("a next page").to_owned();
    let (status, second) = app.get_json(&format!("{first}&_next={next}")).await;
    assert_eq!(status, 200, "{second}");
    let rows: Vec<&Value> = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["rows"].as_array().unwrap())
        .collect();
    assert_eq!(rows.len(), 50);
    for (i, row) in rows.iter().enumerate() {
        let id = row["id"].as_str().expect("the id as text");
        assert_eq!(*row, &by_id[id], "row {i}");
        if i < 25 {
            assert_eq!(
                typed["rows"][i]["id"].to_string(),
                id,
                "the same rows typed and in text"
            );
        }
    }

    // A key lookup, whole and with some columns.
    let (status, one) = app.get_json("/tables/orders/7?_values=text").await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["rows"][0], by_id["7"]);
    let (_, some) = app
        .get_json("/tables/orders/7?_values=text&_col=total,email&_shape=arrays")
        .await;
    assert_eq!(
        some["rows"][0],
        serde_json::json!([by_id["7"]["total"], by_id["7"]["email"]])
    );

    let (status, bad) = app.get_json("/tables/orders?_values=raw").await;
    assert_eq!(status, 400);
    assert!(
        bad["message"].as_str().unwrap().contains("_values"),
        "{bad}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_stay_right_when_a_new_version_lands_between_them() {
    let bed = testbed();
    let (app, dir) = orders_app(vec![]).await;
    let cache_file = dir.path().join("orders.json");
    let (status, first) = app
        .get_json("/tables/orders?_sort=total&_size=40&_col=id")
        .await;
    assert_eq!(status, 200, "{first}");
    let first_ids: Vec<i64> = first["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(first_ids.len(), 40);
    let next = first["next"].as_str().expect("a next page").to_owned();
    let last = *first_ids.last().unwrap();

    // A new version without two rows of the first page and one of what follows.
    let follows = mariadb_answer(
        bed,
        &format!(
            "SELECT id FROM orders WHERE (total, id) > (SELECT total, id FROM orders WHERE id = {last}) \
             ORDER BY total, id LIMIT 1"
        ),
    )[0][0]
        .parse::<i64>()
        .unwrap();
    let gone = [first_ids[0], first_ids[1], follows];
    let before = app.get_fetch_data("").await.headers()["etag"].clone();
    import_orders(bed, &cache_file, |id| !gone.contains(&id));
    crate::helpers::eventually(Duration::from_secs(20), "the new version", || async {
        let tag = app.get_fetch_data("").await.headers()["etag"].clone();
        if tag != before {
            Ok(())
        } else {
            Err(format!("{tag:?}"))
        }
    })
    .await;

    let mut rest = Vec::new();
    let mut token = Some(next);
    while let Some(t) = token {
        let (status, page) = app
            .get_json(&format!(
                "/tables/orders?_sort=total&_size=40&_col=id&_next={t}"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        rest.extend(
            page["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_i64().unwrap()),
        );
        token = page["next"].as_str().map(str::to_owned);
    }
    let expected: Vec<i64> = mariadb_answer(
        bed,
        &format!(
            "SELECT id FROM orders WHERE (total, id) > (SELECT total, id FROM orders WHERE id = {last}) \
             AND id NOT IN ({}) ORDER BY total, id",
            gone.map(|g| g.to_string()).join(",")
        ),
    )
    .iter()
    .map(|r| r[0].parse().unwrap())
    .collect();
    assert_eq!(
        rest, expected,
        "the pages after the first, from the new version"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_query_example_runs_as_written() {
    let (app, dir) = orders_app(vec![]).await;
    let code = crate::examples::readme_example("py");
    let (out, _) = crate::examples::run_python(
        &code,
        &[("PMA_CACHE_URL", &app.base), ("PMA_CACHE_KEY", KEY)],
        dir.path(),
    )
    .await;
    let months = mariadb_answer(
        testbed(),
        "SELECT COUNT(DISTINCT DATE_FORMAT(created_at, '%Y-%m')) FROM orders \
         WHERE financial_status = 'paid'",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len().to_string(),
        (months[0][0].parse::<usize>().unwrap() + 1).to_string(),
        "one line a month, then the top customers:\n{out}"
    );
    assert!(
        lines.last().unwrap().starts_with("top customers: [("),
        "{out}"
    );
}
