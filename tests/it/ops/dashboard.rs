//! The dashboard in a real headless Chromium, through the test bed's ChromeDriver.

use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use super::{pma_env_at, wait_for_recent};
use crate::helpers::app::*;
use crate::helpers::testbed::testbed;

async fn headless_chromium(webdriver_url: &str) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                        "--window-size=1100,1000", "--lang=en-US"]}),
    );
    ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(webdriver_url)
        .await
        .expect("ChromeDriver from the test bed")
}

async fn text(browser: &Client, id: &str) -> String {
    browser
        .find(Locator::Id(id))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits until the element `id` shows text that `wanted` accepts; returns it.
async fn wait_for_text(browser: &Client, id: &str, wanted: impl Fn(&str) -> bool) -> String {
    let what = format!("#{id} shows what is wanted");
    crate::helpers::eventually(Duration::from_secs(240), &what, || async {
        let shown = text(browser, id).await;
        match wanted(&shown) {
            true => Ok(shown),
            false => Err(format!("{shown:?}")),
        }
    })
    .await
}

async fn click(browser: &Client, what: Locator<'_>) {
    browser.find(what).await.unwrap().click().await.unwrap();
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_asks_for_the_key_then_shows_the_cache_and_a_refresh() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let app = spawn_app_with_env(pma_env_at(bed, &bed.pma_url)).await;
    let browser = headless_chromium(&bed.webdriver_url).await;
    let result = async {
        browser.goto(&app.url("/")).await.unwrap();
        // Before the key: a form, and no data anywhere on the page.
        let key_input = browser
            .wait()
            .for_element(Locator::Id("key"))
            .await
            .unwrap();
        assert!(key_input.is_displayed().await.unwrap());
        assert!(!browser
            .find(Locator::Id("board"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap());
        assert_eq!(text(&browser, "rows").await, "");
        let help = text(&browser, "key-help").await;
        assert!(
            help.contains("API_KEY") && help.contains("Render"),
            "the prompt says where the key comes from: {help}"
        );

        key_input.send_keys(KEY).await.unwrap();
        click(&browser, Locator::Css("#login button[type=submit]")).await;
        wait_for_text(&browser, "rows", |t| t == "2").await;
        assert_eq!(
            wait_for_text(&browser, "sync-state", |t| !t.is_empty()).await,
            "idle"
        );
        assert!(!browser
            .find(Locator::Id("login"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap());
        let url = browser.current_url().await.unwrap();
        assert!(
            !url.as_str().contains(KEY),
            "the key never goes in the URL: {url}"
        );

        // Refresh now: the live phase shows, then the new rows and the sync in the history.
        click(&browser, Locator::Id("refresh")).await;
        wait_for_text(&browser, "refresh-result", |t| t == "triggered").await;
        wait_for_text(&browser, "sync-state", |t| t == "running").await;
        let phase = wait_for_text(&browser, "phase", |t| !t.is_empty()).await;
        assert!(
            [
                "starting browser",
                "logging in",
                "exporting",
                "downloading",
                "converting",
                "writing"
            ]
            .contains(&phase.as_str()),
            "{phase}"
        );
        let status = wait_for_recent(&app, 1).await;
        let rows = status["cache"]["count"].as_u64().unwrap().to_string();
        wait_for_text(&browser, "rows", |t| digits(t) == rows).await;
        wait_for_text(&browser, "sync-state", |t| t == "idle").await;
        // The answer "triggered" goes once the sync it started has ended.
        wait_for_text(&browser, "refresh-result", str::is_empty).await;
        let history = wait_for_text(&browser, "history", |t| t.contains("success")).await;
        assert!(digits(&history).contains(&rows), "{history}");
        assert_eq!(
            browser
                .find_all(Locator::Css("#chart svg rect.success"))
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(!text(&browser, "last-updated").await.is_empty());
        // The chart has a scale: 0, half and the top, in seconds.
        let mut ticks = Vec::new();
        for tick in browser
            .find_all(Locator::Css("#chart svg text.tick"))
            .await
            .unwrap()
        {
            ticks.push(tick.html(true).await.unwrap());
        }
        assert_eq!(ticks.len(), 3, "{ticks:?}");
        assert_eq!(ticks[0], "0 s", "{ticks:?}");
        assert!(ticks.iter().all(|t| t.ends_with(" s")), "{ticks:?}");

        let png = browser.screenshot().await.unwrap();
        let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
        std::fs::write(&out, png).unwrap();
        eprintln!("dashboard screenshot: {}", out.display());

        // Forgetting the key leaves no data on the page.
        click(&browser, Locator::Id("sign-out")).await;
        assert_eq!(text(&browser, "rows").await, "");
        assert_eq!(text(&browser, "history").await, "");
    }
    .await;
    browser.close().await.ok();
    result
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_runs_a_query_and_draws_label_number_pairs() {
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let app = spawn_app().await;
    let browser = headless_chromium(&bed.webdriver_url).await;
    let result = async {
        browser.goto(&app.url("/")).await.unwrap();
        let key_input = browser
            .wait()
            .for_element(Locator::Id("key"))
            .await
            .unwrap();
        key_input.send_keys(KEY).await.unwrap();
        click(&browser, Locator::Css("#login button[type=submit]")).await;
        // Headings are shown in capitals (CSS); the text is the table's name.
        wait_for_text(&browser, "query-table-name", |t| {
            t.eq_ignore_ascii_case("orders")
        })
        .await;
        let sql = browser.find(Locator::Id("sql")).await.unwrap();
        assert_eq!(
            sql.prop("value").await.unwrap().as_deref(),
            Some("SELECT * FROM `orders` LIMIT 20"),
            "a first query is offered"
        );

        // A label and a number: a table and a chart.
        sql.clear().await.unwrap();
        sql.send_keys("SELECT name, COUNT(*) AS n FROM orders GROUP BY name ORDER BY n DESC, name")
            .await
            .unwrap();
        click(&browser, Locator::Id("run-query")).await;
        wait_for_text(&browser, "query-info", |t| t.starts_with("2 rows")).await;
        let head = text(&browser, "query-head").await;
        assert!(head.contains("name") && head.contains('n'), "{head}");
        let rows = text(&browser, "query-rows").await;
        assert!(rows.contains("Ada \"the\" first"), "{rows}");
        let bars = browser
            .find_all(Locator::Css("#query-chart svg rect"))
            .await
            .unwrap();
        assert_eq!(bars.len(), 2);

        // Not pairs: a table alone. A refused statement: its reason.
        sql.clear().await.unwrap();
        sql.send_keys("SELECT * FROM orders").await.unwrap();
        click(&browser, Locator::Id("run-query")).await;
        wait_for_text(&browser, "query-info", |t| t.starts_with("2 rows in")).await;
        assert!(browser
            .find_all(Locator::Css("#query-chart svg"))
            .await
            .unwrap()
            .is_empty());
        sql.clear().await.unwrap();
        sql.send_keys("DELETE FROM orders").await.unwrap();
        click(&browser, Locator::Id("run-query")).await;
        let error = wait_for_text(&browser, "query-error", |t| !t.is_empty()).await;
        assert!(error.contains("DELETE is refused"), "{error}");

        click(&browser, Locator::Id("sign-out")).await;
        assert_eq!(text(&browser, "query-rows").await, "");
    }
    .await;
    browser.close().await.ok();
    result
}
