//! Deltas between versions, through real syncs of a table on the test bed: a client that holds
//! some version and applies `/fetch-data?since=` holds the current one, cell for cell.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::helpers::app::{read_events, spawn_app_with, Options, TestApp, KEY};
use crate::helpers::testbed::testbed;

/// A table of its own, so that changing it disturbs no other test.
const TABLE: &str = "delta_probe";

/// A client's copy of the table: each row by its key.
type Mirror = BTreeMap<String, Map<String, Value>>;

fn mirror_of(body: &Value) -> Mirror {
    body["data"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            let row = row.as_object().expect("a row object").clone();
            (row["id"].as_str().expect("an id").to_owned(), row)
        })
        .collect()
}

/// Applies a delta to `mirror` as a client would.
fn apply(mirror: &mut Mirror, delta: &Value) {
    for key in delta["deleted"].as_array().expect("deleted keys") {
        let key = key.as_str().expect("a key's text");
        assert!(
            mirror.remove(key).is_some(),
            "deleted {key}, which the client does not hold"
        );
    }
    for row in delta["upserted"].as_array().expect("upserted rows") {
        let row = row.as_object().expect("a row object").clone();
        mirror.insert(row["id"].as_str().expect("an id").to_owned(), row);
    }
}

/// Runs one sync through the server's event stream and waits for its end.
async fn sync(app: &TestApp) {
    let r = app
        .get_fetch_data("?stream=true&refresh=true&payload=none")
        .await;
    assert_eq!(r.status(), 200);
    let events = read_events(r, Duration::from_secs(240)).await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types.last(),
        Some(&"done"),
        "the sync ends: {events:?}\n{}",
        app.logs()
    );
    assert!(!types.contains(&"error"), "{events:?}");
}

/// The served version: its ETag as a zstd client holds it, and its body.
async fn whole(app: &TestApp) -> (String, Value) {
    let r = app.get_fetch_data("").await;
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    (etag, r.json().await.unwrap())
}

/// An ETag without its encoding's mark: the version's own tag.
fn identity(etag: &str) -> String {
    etag.replace("-zstd\"", "\"").replace("-gzip\"", "\"")
}

/// An event stream read one event at a time: each event's id and data.
struct Events {
    stream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: Vec<u8>,
}

impl Events {
    /// Opens `query` (a path and its query) as an event stream.
    async fn open(app: &TestApp, query: &str, last_event_id: Option<&str>) -> Self {
        let mut request = app.client.get(app.url(query)).header("X-API-Key", KEY);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 200, "{query}");
        Self {
            stream: Box::pin(r.bytes_stream()),
            buf: Vec::new(),
        }
    }

    async fn next(&mut self, limit: Duration) -> (String, Value) {
        use futures_util::StreamExt;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let id = text.lines().find_map(|l| l.strip_prefix("id: "));
                if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return (
                        id.unwrap_or_default().to_owned(),
                        serde_json::from_str(data).unwrap(),
                    );
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.unwrap()),
                Ok(None) => panic!("the stream ended"),
                Err(_) => panic!("no event within {limit:?}"),
            }
        }
    }
}

/// The bare version an event id or ETag names.
fn bare(etag: &str) -> String {
    identity(etag)
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_owned()
}

async fn delta_since(app: &TestApp, since: &str, accept: &str) -> reqwest::Response {
    app.client
        .get(app.url("/fetch-data"))
        .header("X-API-Key", KEY)
        .header("Accept-Encoding", accept)
        .query(&[("since", since)])
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_applying_deltas_holds_each_new_version_cell_for_cell() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let big = "x".repeat(20 * 1024);
    let mut setup = format!(
        "DROP TABLE IF EXISTS shop.{TABLE}; \
         CREATE TABLE shop.{TABLE} (id INT PRIMARY KEY, status VARCHAR(20) NULL, \
         note TEXT NULL, total DECIMAL(10,2) NOT NULL); INSERT INTO shop.{TABLE} VALUES "
    );
    let rows: Vec<String> = (1..=40)
        .map(|i| format!("({i}, 'paid', 'note {i}', {i}.50)"))
        .collect();
    setup.push_str(&rows.join(", "));
    bed.sql(&setup);
    let mut env = bed.pma_env();
    env.retain(|(k, _)| *k != "PMA_TABLE");
    env.push(("PMA_TABLE", TABLE.into()));
    let app = spawn_app_with(Options {
        env,
        ..Options::default()
    })
    .await;

    // The changes of each new version, in SQL on the source.
    let steps = [
        // Inserts; a value to the text NULL, another to SQL NULL; a 20 KB text; a deletion.
        format!(
            "INSERT INTO shop.{TABLE} VALUES (41, 'new', NULL, 1.00), (42, 'new', 'later gone', 2.00); \
             UPDATE shop.{TABLE} SET status = 'NULL' WHERE id = 3; \
             UPDATE shop.{TABLE} SET status = NULL WHERE id = 4; \
             UPDATE shop.{TABLE} SET note = '{big}' WHERE id = 5; \
             DELETE FROM shop.{TABLE} WHERE id = 6;"
        ),
        // A row deleted, the row deleted before re-inserted, a new row updated.
        format!(
            "DELETE FROM shop.{TABLE} WHERE id = 7; \
             INSERT INTO shop.{TABLE} VALUES (6, 'back', 'again', 6.60); \
             UPDATE shop.{TABLE} SET total = 99.99 WHERE id = 41;"
        ),
        // A row inserted two versions ago deleted; quotes and commas in a text.
        format!(
            "DELETE FROM shop.{TABLE} WHERE id = 42; \
             UPDATE shop.{TABLE} SET note = 'a \"quoted\", text; with\\nlines' WHERE id = 8;"
        ),
    ];

    sync(&app).await;
    let mut versions = vec![whole(&app).await];
    assert_eq!(versions[0].1["count"], 40);
    let (_, tables) = {
        let r = app.get_with("/tables", &[("X-API-Key", KEY)]).await;
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(tables["tables"][0]["key"], serde_json::json!(["id"]));
    assert_eq!(tables["tables"][0]["deltas"]["available"], true, "{tables}");

    // A subscriber that stays: the whole table first, then each version's changes.
    let mut follower = Events::open(
        &app,
        "/fetch-data?stream=true&payload=delta&follow=true",
        None,
    )
    .await;
    let (id, first) = follower.next(Duration::from_secs(30)).await;
    assert_eq!(first["type"], "cached");
    assert_eq!(id, bare(&versions[0].0), "event ids are versions");
    let mut followed = mirror_of(&first["payload"]);
    assert_eq!(followed, mirror_of(&versions[0].1));

    for step in &steps {
        bed.sql(step);
        sync(&app).await;
        let (etag, body) = whole(&app).await;
        let expected = mirror_of(&body);
        let (id, event) = follower.next(Duration::from_secs(30)).await;
        assert_eq!(event["type"], "updated", "{event}");
        assert_eq!(id, bare(&etag));
        apply(&mut followed, &event["delta"]);
        assert_eq!(followed, expected, "the follower's copy");
        assert_ne!(etag, versions.last().unwrap().0, "the data changed");
        // From every version held before: one delta brings the client to this one.
        for (since, old) in &versions {
            let r = delta_since(&app, since, "zstd").await;
            assert_eq!(r.status(), 200, "since {since}");
            let bytes = r.bytes().await.unwrap();
            let delta: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::from_slice(&zstd::decode_all(&bytes[..]).unwrap()).unwrap()
            });
            assert_eq!(delta["status"], "success");
            assert_eq!(delta["since"], since.as_str());
            assert_eq!(delta["etag"], identity(&etag).as_str());
            assert_eq!(delta["count"], body["count"]);
            assert_eq!(delta["last_updated"], body["last_updated"]);
            let mut mirror = mirror_of(old);
            apply(&mut mirror, &delta);
            assert_eq!(mirror, expected, "since {since}: {delta}");
        }
        versions.push((etag, body));
    }

    // From the first version, three change sets merged: row 42, inserted then deleted, is in
    // neither list; row 6, deleted then re-inserted, is an upsert only.
    let r = delta_since(&app, &versions[0].0, "identity").await;
    let delta: Value = r.json().await.unwrap();
    let upserted: Vec<&str> = delta["upserted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let deleted: Vec<&str> = delta["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(
        !upserted.contains(&"42") && !deleted.contains(&"42"),
        "{delta}"
    );
    assert!(
        upserted.contains(&"6") && !deleted.contains(&"6"),
        "{delta}"
    );
    assert_eq!(deleted, ["7"], "{delta}");
    let row5 = delta["upserted"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "5")
        .unwrap();
    assert_eq!(row5["note"].as_str().unwrap().len(), 20 * 1024);
    let row3 = &versions[3].1["data"].as_array().unwrap()[2];
    let row4 = &versions[3].1["data"].as_array().unwrap()[3];
    assert_eq!(row3["status"], "NULL", "the text NULL stays text");
    assert_eq!(row4["status"], Value::Null, "SQL NULL is null");

    // The current version: 304, nothing to send.
    let current = versions.last().unwrap().0.clone();
    let r = delta_since(&app, &current, "identity").await;
    assert_eq!(r.status(), 304);

    // A sync that changes nothing makes no new version: the deltas still answer.
    sync(&app).await;
    assert_eq!(whole(&app).await.0, current);
    let r = delta_since(&app, &versions[2].0, "identity").await;
    assert_eq!(r.status(), 200);
    let (_, tables) = {
        let r = app.get_with("/tables", &[("X-API-Key", KEY)]).await;
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(tables["tables"][0]["deltas"]["change_sets_kept"], 3);

    // An EventSource that reconnects with the last id it got is sent one delta, not the table.
    let mut again = Events::open(
        &app,
        "/fetch-data?stream=true&payload=delta",
        Some(&bare(&versions[1].0)),
    )
    .await;
    let (id, event) = again.next(Duration::from_secs(30)).await;
    assert_eq!(event["type"], "cached");
    assert!(event.get("payload").is_none(), "{event}");
    assert_eq!(id, bare(&current));
    let mut mirror = mirror_of(&versions[1].1);
    apply(&mut mirror, &event["delta"]);
    assert_eq!(mirror, mirror_of(&versions[3].1));
    // One that holds the current version is sent no rows; one with an unknown id, the table.
    let mut held = Events::open(
        &app,
        &format!(
            "/fetch-data?stream=true&payload=delta&since={}",
            bare(&current)
        ),
        None,
    )
    .await;
    let (_, event) = held.next(Duration::from_secs(30)).await;
    assert_eq!(event["delta"]["upserted"], serde_json::json!([]), "{event}");
    assert_eq!(event["delta"]["deleted"], serde_json::json!([]), "{event}");
    let mut unknown = Events::open(
        &app,
        "/fetch-data?stream=true&payload=delta",
        Some("0000-1"),
    )
    .await;
    let (_, event) = unknown.next(Duration::from_secs(30)).await;
    assert_eq!(mirror_of(&event["payload"]), mirror_of(&versions[3].1));
    // An unknown version named in the URL is a 410, as without a stream.
    let r = app
        .get_fetch_data("?stream=true&payload=delta&since=0000-1")
        .await;
    assert_eq!(r.status(), 410);

    // Unknown versions: 410 with what to do.
    for since in ["W/\"0000000000000000-1\"", "whatever"] {
        let r = delta_since(&app, since, "identity").await;
        assert_eq!(r.status(), 410);
        let body: Value = r.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("fetch the whole table"), "{message}");
    }

    // 'since' with a stream is refused.
    let r = app.get_fetch_data("?since=x&stream=true").await;
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_without_a_key_has_no_deltas_and_says_so() {
    // An import without a schema: every column text, no key.
    let app = spawn_app_with(Options {
        seed: Some(crate::helpers::app::SMALL_CSV),
        ..Options::default()
    })
    .await;
    let (etag, _) = whole(&app).await;
    let r = delta_since(&app, &etag, "identity").await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("PMA_KEY"), "{message}");
    let r = app.get_fetch_data("?stream=true&payload=delta").await;
    assert_eq!(r.status(), 400);
    let r = app.get_with("/tables", &[("X-API-Key", KEY)]).await;
    let tables: Value = r.json().await.unwrap();
    assert_eq!(tables["tables"][0]["deltas"]["available"], false);

    // PMA_KEY names the key: deltas are possible.
    let keyed = spawn_app_with(Options {
        seed: Some(crate::helpers::app::SMALL_CSV),
        env: vec![("PMA_KEY", "id".into())],
        ..Options::default()
    })
    .await;
    let (etag, _) = whole(&keyed).await;
    let r = delta_since(&keyed, &etag, "identity").await;
    assert_eq!(r.status(), 304);
}

/// Serves `csv` as the app's next version, as another process's import does, and waits until
/// the app serves `rows` rows.
async fn import_version(app: &TestApp, csv: &str, rows: u64) {
    crate::helpers::app::import_csv(&app.cache_file, csv).unwrap();
    crate::helpers::eventually(
        Duration::from_secs(20),
        "the new version served",
        || async {
            let body: Value = app.get_fetch_data("").await.json().await.unwrap();
            match body["count"].as_u64() {
                Some(n) if n == rows => Ok(()),
                other => Err(format!("{other:?} rows")),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_query_is_sent_again_only_when_its_answer_changes_and_evaluated_once_per_version() {
    use crate::helpers::app::orders_csv;
    let app = spawn_app_with(Options {
        seed: Some(crate::helpers::app::leak(orders_csv(10, "first"))),
        process: true,
        ..Options::default()
    })
    .await;
    let live = "/query?stream=true&sql=SELECT%20COUNT(*)%20AS%20n%20FROM%20orders";
    let open = || Events::open(&app, live, None);
    let (mut one, mut two) = (open().await, open().await);
    for subscriber in [&mut one, &mut two] {
        let (_, event) = subscriber.next(Duration::from_secs(30)).await;
        assert_eq!(event["type"], "result", "{event}");
        assert_eq!(event["answer"]["rows"], serde_json::json!([{"n": 10}]));
    }

    // The same count in a new version: nothing is sent. Then one more row: it is.
    import_version(&app, &orders_csv(10, "second"), 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    import_version(&app, &orders_csv(11, "third"), 11).await;
    let mut versions = Vec::new();
    for subscriber in [&mut one, &mut two] {
        let (_, event) = subscriber.next(Duration::from_secs(30)).await;
        assert_eq!(
            event["answer"]["rows"],
            serde_json::json!([{"n": 11}]),
            "{event}"
        );
        versions.push(event["version"].clone());
    }
    assert_eq!(versions[0], versions[1]);

    // Evaluated once per version (three served) for both subscribers, not once per subscriber.
    let evaluated = app.logs().matches("query answered").count();
    assert!(
        (2..=3).contains(&evaluated),
        "{evaluated} evaluations:\n{}",
        app.logs()
    );

    // A live query the engine refuses is a plain 400, before any event.
    let r = app
        .get_with(
            "/query?stream=true&sql=DELETE%20FROM%20orders",
            &[("X-API-Key", KEY)],
        )
        .await;
    assert_eq!(r.status(), 400);
}
