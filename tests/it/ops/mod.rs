//! Operating the service: logging that cannot take it down, metrics, alerts, the dashboard.
//!
//! The tests that sync run one at a time (one browser at a time on a 2-core machine).

mod alerts;
mod dashboard;
mod logging;
mod metrics;

use std::collections::HashMap;
use std::time::Duration;

use crate::helpers::app::*;
use crate::helpers::testbed::Testbed;
use serde_json::Value;
use tokio::sync::mpsc;

/// The test bed's settings with phpMyAdmin reached at `pma_url`. The server starts its own
/// ChromeDriver, which ends with it; the bed's serves the dashboard test's browser.
fn pma_env_at(bed: &Testbed, pma_url: &str) -> Vec<(&'static str, String)> {
    let mut env = bed.pma_env();
    env.retain(|(k, _)| *k != "PMA_URL");
    env.push(("PMA_URL", pma_url.to_owned()));
    env
}

/// A local webhook receiver: every POST body, in order.
struct Receiver {
    url: String,
    bodies: mpsc::UnboundedReceiver<String>,
}

impl Receiver {
    async fn start() -> Self {
        let (tx, bodies) = mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: String| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(body);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, bodies }
    }

    /// The next alert: its JSON and its raw text.
    async fn next(&mut self, limit: Duration) -> (Value, String) {
        let raw = tokio::time::timeout(limit, self.bodies.recv())
            .await
            .expect("no alert arrived")
            .unwrap();
        (serde_json::from_str(&raw).unwrap(), raw)
    }

    /// An alert that has arrived already, if any.
    fn try_next(&mut self) -> Option<String> {
        self.bodies.try_recv().ok()
    }
}

/// A TCP relay to phpMyAdmin that can be switched off: while off, nothing listens on its port
/// (connections are refused, as when the server is down).
struct Switch {
    url: String,
    up: tokio::sync::watch::Sender<bool>,
}

impl Switch {
    async fn start(target: &str) -> Self {
        let target = url::Url::parse(target).unwrap();
        let target = format!(
            "{}:{}",
            target.host_str().unwrap(),
            target.port_or_known_default().unwrap()
        );
        let first = relay_socket(0);
        let addr = first.local_addr().unwrap();
        let url = format!("http://{addr}/");
        let (up, mut wanted) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            let mut socket = Some(first);
            loop {
                if !*wanted.borrow_and_update() {
                    drop(socket.take());
                    if wanted.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                let listener = socket
                    .take()
                    .unwrap_or_else(|| relay_socket(addr.port()))
                    .listen(64)
                    .unwrap();
                loop {
                    tokio::select! {
                        changed = wanted.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            break;
                        }
                        accepted = listener.accept() => {
                            let (mut inbound, _) = accepted.unwrap();
                            let target = target.clone();
                            tokio::spawn(async move {
                                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                                }
                            });
                        }
                    }
                }
            }
        });
        Self { url, up }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// A loopback socket on `port` (0: any), reusable at once after the previous one closed.
fn relay_socket(port: u16) -> tokio::net::TcpSocket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .unwrap();
    socket
}

/// `/metrics` parsed by a Prometheus text parser: each sample's value by name and labels
/// (`name{a="1",b="2"}` with labels sorted, or `name`).
async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let response = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let mut values = HashMap::new();
    for sample in scrape.samples {
        let mut labels: Vec<(String, String)> = sample
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        let key = if labels.is_empty() {
            sample.metric.clone()
        } else {
            let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            format!("{}{{{}}}", sample.metric, inner.join(","))
        };
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => continue,
        };
        values.insert(key, value);
    }
    values
}

/// Waits for the sync in progress (or about to start) to be recorded as the `n`th recent one;
/// returns `/status`.
async fn wait_for_recent(app: &TestApp, n: usize) -> Value {
    let what = format!("sync {n} finished");
    crate::helpers::eventually(Duration::from_secs(240), &what, || async {
        let status = app.get_status().await;
        let recent = status["sync"]["recent"].as_array().map_or(0, Vec::len);
        match recent >= n && status["sync"]["state"] == "idle" {
            true => Ok(status),
            false => Err(status.to_string()),
        }
    })
    .await
}
