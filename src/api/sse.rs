//! `GET /fetch-data?stream=true`: Server-Sent Events, "cached, then updated".
//!
//! Each event is one `data:` line of JSON (`{"type":"cached","payload":…}`, then `updated` or
//! `error`, then `done`). With `payload=none` the snapshot events carry only `last_updated`,
//! `count` and `etag`. The 80 MB payload is sent from the snapshot's shared bytes, not copied
//! into an event string. The stream ends on `done`, on shutdown, or when the client goes away.

use std::collections::VecDeque;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::broadcast::{self, error::RecvError};

use super::fetch::Payload;
use super::AppState;
use crate::cache::{CacheEvent, Snapshot};
use crate::sync::Trigger;

const NO_CACHE: &str = "No cached data";

struct EventStream {
    events: broadcast::Receiver<CacheEvent>,
    queue: VecDeque<Bytes>,
    next_id: u64,
    finished: bool,
    payload: Payload,
    state: AppState,
}

impl EventStream {
    fn push_event(&mut self, json_before: &str, payload: Option<&Bytes>, json_after: &str) {
        self.queue.push_back(Bytes::from(format!(
            "id: {}\ndata: {json_before}",
            self.next_id
        )));
        if let Some(payload) = payload {
            self.queue.push_back(payload.clone());
        }
        self.queue
            .push_back(Bytes::from(format!("{json_after}\n\n")));
        self.next_id += 1;
    }

    fn push_snapshot(&mut self, kind: &str, snapshot: &Snapshot) {
        match self.payload {
            Payload::Full => {
                let before = format!("{{\"type\":\"{kind}\",\"payload\":");
                self.push_event(&before, Some(&snapshot.body), "}");
            }
            Payload::None => {
                let json = serde_json::json!({
                    "type": kind,
                    "last_updated": snapshot.last_updated,
                    "count": snapshot.count,
                    "etag": snapshot.etag,
                });
                self.push_event(&json.to_string(), None, "");
            }
        }
    }

    fn push_nothing_cached(&mut self) {
        let json = match self.payload {
            Payload::Full => {
                serde_json::json!({"type": "cached", "payload": null, "message": NO_CACHE})
            }
            Payload::None => serde_json::json!({
                "type": "cached", "last_updated": null, "count": null, "etag": null, "message": NO_CACHE,
            }),
        };
        self.push_event(&json.to_string(), None, "");
    }

    fn push_error(&mut self, message: &str) {
        let json = serde_json::json!({"type": "error", "message": message}).to_string();
        self.push_event(&json, None, "");
    }

    fn finish(&mut self) {
        self.push_event("{\"type\":\"done\"}", None, "");
        self.finished = true;
    }

    /// The next chunk to send, waiting for news when there is nothing queued.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.queue.pop_front() {
                return Some(chunk);
            }
            if self.finished {
                return None;
            }
            tokio::select! {
                () = self.state.shutdown.cancelled() => return None,
                () = tokio::time::sleep(self.state.sse_keepalive) => {
                    self.queue.push_back(Bytes::from_static(b": keep-alive\n\n"));
                }
                event = self.events.recv() => match event {
                    Ok(CacheEvent::Updated(snapshot)) => {
                        self.push_snapshot("updated", &snapshot);
                        self.finish();
                    }
                    Ok(CacheEvent::SyncFailed(message)) => {
                        self.push_error(&message);
                        self.finish();
                    }
                    // Missed news: the newest snapshot is what counts.
                    Err(RecvError::Lagged(_)) => match self.state.cache.current() {
                        Some(snapshot) => {
                            self.push_snapshot("updated", &snapshot);
                            self.finish();
                        }
                        None => continue,
                    },
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
}

/// Starts the event stream; with `refresh`, also starts a sync.
pub async fn stream(state: AppState, refresh: bool, payload: Payload) -> Response {
    // Subscribe before reading the snapshot, so an update between the two is not missed.
    let events = state.cache.subscribe();
    let mut stream = EventStream {
        events,
        queue: VecDeque::new(),
        next_id: 1,
        finished: false,
        payload,
        state: state.clone(),
    };
    match state.cache.current() {
        Some(snapshot) => stream.push_snapshot("cached", &snapshot),
        None => stream.push_nothing_cached(),
    }
    if refresh && state.syncer.trigger().await == Trigger::NotConfigured {
        stream.push_error(&super::error::ApiError::SyncNotConfigured.to_string());
        stream.finish();
    }
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        s.next_chunk()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), s))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
