//! Webhook alerts: a JSON `POST` with a `text` (what Slack, Mattermost and similar incoming
//! webhooks show) and structured fields, when a sync fails, when one succeeds after failures,
//! and when the cache grows older than `STALE_AFTER`.
//!
//! A sync only queues an alert (never waits); one background task delivers them, a few attempts
//! each with a timeout, and checks the cache's age. A failure that goes on is alerted once, then
//! again only every `ALERT_REPEAT_AFTER`. No password or key ever appears: known secrets are
//! scrubbed from every text sent.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::AlertLabels;
use super::CacheFacts;
use crate::cache::format::rfc3339;
use crate::cache::Cache;
use crate::config::{AlertSettings, Secret};

/// Attempts to deliver one alert.
const ATTEMPTS: u32 = 3;
/// Deadline of one delivery attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before the second attempt; doubled before each further one.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Alerts waiting for delivery at most; more are dropped (and logged) rather than wait.
const QUEUED_ALERTS: usize = 32;

/// What happened.
#[derive(Debug, Clone)]
pub enum AlertEvent {
    /// A sync failed after its retries.
    SyncFailed { error: String, consecutive: u64 },
    /// A sync succeeded after `failures` failed ones.
    Recovered { failures: u64, rows: usize },
}

/// Queues alerts for delivery; does nothing when no webhook is configured.
#[derive(Debug, Clone, Default)]
pub struct Alerts {
    queue: Option<mpsc::Sender<AlertEvent>>,
}

impl Alerts {
    /// Alerts per `settings`, with the task that delivers them (`None` without a webhook).
    /// `source` names the table in alert texts; `secrets` are scrubbed from every text.
    pub fn new(
        settings: &AlertSettings,
        cache: Arc<Cache>,
        source: Option<String>,
        secrets: Vec<Secret>,
        sent: Family<AlertLabels, Counter>,
    ) -> (Self, Option<AlertTask>) {
        let Some(webhook) = settings.webhook.clone() else {
            return (Self::default(), None);
        };
        let (queue, incoming) = mpsc::channel(QUEUED_ALERTS);
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            // The alert goes to the address configured, never where an answer points to.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pma-cache/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the TLS backend is compiled in");
        let task = AlertTask {
            incoming,
            webhook,
            client,
            cache,
            source,
            secrets: secrets
                .into_iter()
                .filter(|s| !s.expose().is_empty())
                .collect(),
            stale_after: settings.stale_after,
            repeat_after: settings.repeat_after,
            last_failure_alert: None,
            last_stale_alert: None,
            sent,
        };
        (Self { queue: Some(queue) }, Some(task))
    }

    /// Queues `event` without waiting; a full queue drops it with a log line.
    pub fn send(&self, event: AlertEvent) {
        if let Some(queue) = &self.queue {
            if let Err(e) = queue.try_send(event) {
                tracing::warn!("alert dropped: {e}");
            }
        }
    }
}

/// Delivers alerts and watches the cache's age, until shutdown.
#[derive(Debug)]
pub struct AlertTask {
    incoming: mpsc::Receiver<AlertEvent>,
    webhook: url::Url,
    client: reqwest::Client,
    cache: Arc<Cache>,
    source: Option<String>,
    secrets: Vec<Secret>,
    stale_after: Duration,
    repeat_after: Duration,
    last_failure_alert: Option<Instant>,
    last_stale_alert: Option<Instant>,
    sent: Family<AlertLabels, Counter>,
}

impl AlertTask {
    /// Runs until `shutdown`; an alert being delivered then is abandoned.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(
            webhook_host = self.webhook.host_str().unwrap_or("?"),
            stale_after = %humantime::format_duration(self.stale_after),
            "alerts on"
        );
        let mut check = tokio::time::interval(staleness_check_every(self.stale_after));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let payload = tokio::select! {
                () = shutdown.cancelled() => break,
                Some(event) = self.incoming.recv() => self.on_event(event).await,
                _ = check.tick() => self.check_staleness().await,
            };
            if let Some((event, payload)) = payload {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.deliver(event, &payload) => {}
                }
            }
        }
    }

    async fn on_event(&mut self, event: AlertEvent) -> Option<(&'static str, Value)> {
        let facts = CacheFacts::of(&self.cache).await;
        match event {
            AlertEvent::SyncFailed { error, consecutive } => {
                let repeat_due = self
                    .last_failure_alert
                    .is_none_or(|at| at.elapsed() >= self.repeat_after);
                if consecutive > 1 && !repeat_due {
                    tracing::debug!(consecutive, "sync failure already alerted");
                    return None;
                }
                self.last_failure_alert = Some(Instant::now());
                let again = if consecutive > 1 {
                    format!(" ({consecutive} failures in a row)")
                } else {
                    String::new()
                };
                let text = format!(
                    "{} sync failed{again}; the previous cache is still served: {error}",
                    self.name()
                );
                Some(self.payload("sync_failed", text, Some(error), facts, consecutive))
            }
            AlertEvent::Recovered { failures, rows } => {
                self.last_failure_alert = None;
                let text = format!(
                    "{} recovered: a sync succeeded after {failures} failed ({rows} rows)",
                    self.name()
                );
                let facts = CacheFacts {
                    rows: Some(rows),
                    ..facts
                };
                Some(self.payload("recovered", text, None, facts, 0))
            }
        }
    }

    async fn check_staleness(&mut self) -> Option<(&'static str, Value)> {
        let stale = CacheFacts::quick_age(&self.cache)
            .await
            .is_some_and(|age| age > self.stale_after);
        if !stale {
            self.last_stale_alert = None;
            return None;
        }
        if self
            .last_stale_alert
            .is_some_and(|at| at.elapsed() < self.repeat_after)
        {
            return None;
        }
        let facts = CacheFacts::of(&self.cache).await;
        let age = facts.age.unwrap_or_default();
        self.last_stale_alert = Some(Instant::now());
        let text = format!(
            "{} cache is stale: last updated {} ago (STALE_AFTER {})",
            self.name(),
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            humantime::format_duration(self.stale_after)
        );
        Some(self.payload("stale", text, None, facts, 0))
    }

    fn name(&self) -> String {
        match &self.source {
            Some(source) => format!("pma-cache ({source}):"),
            None => "pma-cache:".to_owned(),
        }
    }

    fn payload(
        &self,
        event: &'static str,
        text: String,
        error: Option<String>,
        facts: CacheFacts,
        consecutive_failures: u64,
    ) -> (&'static str, Value) {
        let last_success = facts
            .age
            .and_then(|age| SystemTime::now().checked_sub(age))
            .map(|t| {
                rfc3339(
                    OffsetDateTime::from(t)
                        .replace_nanosecond(0)
                        .unwrap_or(t.into()),
                )
            });
        let payload = json!({
            "text": self.scrub(&text),
            "event": event,
            "error": error.map(|e| self.scrub(&e)),
            "last_success": last_success,
            "cache_age_seconds": facts.age.map(|a| a.as_secs()),
            "rows": facts.rows,
            "consecutive_failures": consecutive_failures,
            "table": self.source,
        });
        (event, payload)
    }

    /// Replaces every known secret in `text`.
    fn scrub(&self, text: &str) -> String {
        self.secrets
            .iter()
            .fold(text.to_owned(), |t, s| s.scrub(&t))
    }

    async fn deliver(&self, event: &'static str, payload: &Value) {
        let host = self.webhook.host_str().unwrap_or("?");
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let sent = match self
                .client
                .post(self.webhook.clone())
                .json(payload)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) if r.status().is_redirection() => Err(format!(
                    "the webhook answered {} (a redirect, which is not followed: set \
                     ALERT_WEBHOOK_URL to the final address)",
                    r.status()
                )),
                Ok(r) => Err(format!("the webhook answered {}", r.status())),
                Err(e) => Err(e.without_url().to_string()),
            };
            match sent {
                Ok(()) => {
                    tracing::info!(event, webhook_host = host, "alert sent");
                    self.count(event, "sent");
                    return;
                }
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(
                        event,
                        attempt,
                        retry_in = %humantime::format_duration(backoff),
                        "alert delivery to {host} failed, will retry: {e}"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(e) => {
                    tracing::error!(
                        event,
                        "alert delivery to {host} failed {ATTEMPTS} times, giving up: {e}"
                    );
                    self.count(event, "failed");
                }
            }
        }
    }

    fn count(&self, event: &'static str, result: &'static str) {
        self.sent
            .get_or_create(&AlertLabels { event, result })
            .inc();
    }
}

/// How often the cache's age is checked: a tenth of the threshold, between 1 s and 1 min.
fn staleness_check_every(stale_after: Duration) -> Duration {
    (stale_after / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_is_checked_often_enough_but_not_constantly() {
        assert_eq!(
            staleness_check_every(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert_eq!(
            staleness_check_every(Duration::from_secs(300)),
            Duration::from_secs(30)
        );
        assert_eq!(
            staleness_check_every(Duration::from_secs(7200)),
            Duration::from_secs(60)
        );
    }
}
