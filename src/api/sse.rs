//! `GET /fetch-data?stream=true`: Server-Sent Events, "cached, then updated".
//!
//! Each event is one `data:` line of JSON (`{"type":"cached","payload":…}`, then `updated` or
//! `error`, then `done`). With `payload=none` the snapshot events carry only `last_updated`,
//! `count` and `etag`. The 90 MB payload is sent from the snapshot's shared bytes, not copied
//! into an event string, and in the encoding the client accepts from the snapshot's
//! precompressed bytes (see [`crate::cache::framing`]), never compressed again per subscriber.
//!
//! A subscriber follows versions through a `watch` channel: however slowly it reads, it holds
//! the version it is sending and nothing older is queued for it. A subscriber that takes no data
//! for `SSE_WRITE_TIMEOUT` is dropped by the connection's write timeout, or by the kernel's
//! when the bytes already left the process (see [`super::serve`]).
//! The stream ends on `done`, on shutdown, or when the client goes away.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::broadcast::{self, error::RecvError};

use super::error::ApiError;
use super::limits::StreamSlot;
use super::negotiate::accepted_encoding;
use super::params::Payload;
use super::AppState;
use crate::cache::delta::{self, bare_etag};
use crate::cache::framing::StreamEncoder;
use crate::cache::{CatchUp, Encoding, Snapshot, Versions};
use crate::sync::{SyncOutcome, Trigger};

const NO_CACHE: &str = "No cached data";
/// Time between keep-alive comments on an idle stream.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
const KEEP_ALIVE: &str = ": keep-alive\n\n";

/// Which snapshot event is being prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Cached,
    Updated,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Cached => "cached",
            Kind::Updated => "updated",
        }
    }
}

struct EventStream {
    versions: Versions,
    outcomes: broadcast::Receiver<SyncOutcome>,
    /// Encoded chunks ready to send.
    queue: VecDeque<Bytes>,
    encoder: StreamEncoder,
    /// A snapshot event waiting for the body in the stream's encoding to be built.
    waiting: Option<(Kind, Arc<Snapshot>)>,
    /// Why the refresh asked for cannot run, reported after the `cached` event.
    refusal: Option<ApiError>,
    next_id: u64,
    finished: bool,
    payload: Payload,
    /// Keep going after an update (`follow=true`).
    follow: bool,
    /// With `payload=delta`: the version the subscriber holds (bare ETag), once it holds one.
    held: Option<String>,
    /// With `payload=delta`: a snapshot event to send as the changes since `held`.
    pending_delta: Option<Kind>,
    state: AppState,
    /// This stream's place under MAX_STREAMS, freed when it ends.
    _slot: StreamSlot,
}

impl EventStream {
    fn push_text(&mut self, text: &str) {
        self.encoder.text(text.as_bytes(), &mut self.queue);
    }

    fn push_event(&mut self, json: &str) {
        let id = self.next_event_id(None);
        let text = format!("id: {id}\ndata: {json}\n\n");
        self.push_text(&text);
    }

    /// The next event's id: with `payload=delta`, the version the event brings the subscriber
    /// to (what a reconnecting `EventSource` sends back as `Last-Event-ID`), else a counter.
    fn next_event_id(&mut self, version: Option<&Snapshot>) -> String {
        match (self.payload, version, &self.held) {
            (Payload::Delta, Some(snapshot), _) => bare_etag(&snapshot.etag).to_owned(),
            (Payload::Delta, None, Some(held)) => held.clone(),
            _ => {
                self.next_id += 1;
                (self.next_id - 1).to_string()
            }
        }
    }

    /// Sends a snapshot event now if its body is ready in this stream's encoding, else keeps it
    /// until it is.
    fn push_snapshot(&mut self, kind: Kind, snapshot: Arc<Snapshot>) {
        if self.payload == Payload::Delta && self.held.is_some() {
            self.pending_delta = Some(kind);
            return;
        }
        if self.payload == Payload::None {
            let json = serde_json::json!({
                "type": kind.as_str(),
                "last_updated": snapshot.last_updated,
                "count": snapshot.count,
                "etag": snapshot.etag,
            });
            self.push_event(&json.to_string());
            return self.after_snapshot(kind);
        }
        match self.encoder.encoding() {
            Encoding::Identity => self.push_full(kind, &snapshot, None),
            encoding => match snapshot.encoded(encoding) {
                Some(variant) => self.push_full(kind, &snapshot, Some(variant)),
                None => self.waiting = Some((kind, snapshot)),
            },
        }
    }

    fn push_full(&mut self, kind: Kind, snapshot: &Snapshot, variant: Option<Bytes>) {
        let id = self.next_event_id(Some(snapshot));
        let before = format!(
            "id: {id}\ndata: {{\"type\":\"{}\",\"payload\":",
            kind.as_str()
        );
        if self.payload == Payload::Delta {
            self.held = Some(bare_etag(&snapshot.etag).to_owned());
        }
        self.push_text(&before);
        self.encoder.body(&snapshot.body, variant, &mut self.queue);
        self.push_text("}\n\n");
        self.after_snapshot(kind);
    }

    /// Ends the stream after `updated`; after `cached`, reports a refresh that cannot run.
    fn after_snapshot(&mut self, kind: Kind) {
        match kind {
            Kind::Updated if self.follow => {}
            Kind::Updated => self.finish(),
            Kind::Cached => {
                if let Some(refusal) = self.refusal.take() {
                    self.push_error(refusal.code(), &refusal.to_string());
                    self.finish();
                }
            }
        }
    }

    fn push_nothing_cached(&mut self) {
        let json = match self.payload {
            Payload::Full | Payload::Delta => {
                serde_json::json!({"type": "cached", "payload": null, "message": NO_CACHE})
            }
            Payload::None => serde_json::json!({
                "type": "cached", "last_updated": null, "count": null, "etag": null, "message": NO_CACHE,
            }),
        };
        self.push_event(&json.to_string());
    }

    /// Sends the changes from the version the subscriber holds to the current one (empty when
    /// it holds the current one), merged off the runtime; the whole table when they are not
    /// kept.
    async fn push_delta(&mut self, kind: Kind) {
        let Some(since) = self.held.clone() else {
            return;
        };
        let Some((current, catch_up)) = self.state.cache.catch_up(&since) else {
            return;
        };
        let sets = match catch_up {
            CatchUp::Current => Vec::new(),
            CatchUp::Apply(sets) => sets,
            CatchUp::Gone => {
                // Not kept (or not computable): the subscriber gets the whole table instead.
                self.held = None;
                return self.push_snapshot(kind, current);
            }
        };
        let target = Arc::clone(&current);
        let body = tokio::task::spawn_blocking(move || {
            delta::delta_body(&since, &target, &delta::merge(&sets))
        })
        .await;
        let Ok(body) = body else {
            self.held = None;
            return self.push_snapshot(kind, current);
        };
        let id = self.next_event_id(Some(&current));
        self.held = Some(id.clone());
        let before = format!(
            "id: {id}\ndata: {{\"type\":\"{}\",\"delta\":",
            kind.as_str()
        );
        self.push_text(&before);
        self.encoder.text(&body, &mut self.queue);
        self.push_text("}\n\n");
        self.after_snapshot(kind);
    }

    /// An `error` event: a stable code and a short message, never a sync's details (they stay
    /// in the log and the admin's `/status`).
    fn push_error(&mut self, code: &str, message: &str) {
        let json =
            serde_json::json!({"type": "error", "code": code, "message": message}).to_string();
        self.push_event(&json);
    }

    fn finish(&mut self) {
        self.push_event("{\"type\":\"done\"}");
        self.encoder.finish(&mut self.queue);
        self.finished = true;
    }

    /// The next chunk to send, waiting for news (or a compressed body) when nothing is queued.
    /// Keep-alives go out whenever the stream has been idle for the keep-alive interval.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.queue.pop_front() {
                return Some(chunk);
            }
            if self.finished {
                return None;
            }
            if let Some(kind) = self.pending_delta.take() {
                self.push_delta(kind).await;
                continue;
            }
            let keepalive = tokio::time::sleep(KEEPALIVE);
            if let Some((kind, snapshot)) = self.waiting.take() {
                let encoding = self.encoder.encoding();
                tokio::select! {
                    () = self.state.shutdown.cancelled() => return None,
                    () = keepalive => {
                        self.waiting = Some((kind, snapshot));
                        self.push_text(KEEP_ALIVE);
                    }
                    variant = snapshot.encoded_when_ready(encoding) => {
                        self.push_full(kind, &snapshot, variant);
                    }
                }
                continue;
            }
            tokio::select! {
                () = self.state.shutdown.cancelled() => return None,
                () = keepalive => {
                    self.push_text(KEEP_ALIVE);
                }
                changed = self.versions.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let newest = self.versions.borrow_and_update().clone();
                    if let Some(snapshot) = newest {
                        self.push_snapshot(Kind::Updated, snapshot);
                    }
                }
                outcome = self.outcomes.recv() => match outcome {
                    Ok(outcome) if !outcome.is_success() => {
                        if let Some((code, message)) = outcome.public_error() {
                            self.push_error(code, message);
                        }
                        if !self.follow {
                            self.finish();
                        }
                    }
                    // A success is told by its version, on `versions`.
                    Ok(_) => {}
                    // Only outcomes were missed; the next one will do.
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
}

/// The headers of every event stream: its type, no caching, and no buffering by a proxy
/// (nginx's `X-Accel-Buffering`), so that each event leaves at once.
pub fn event_stream_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    headers
}

/// What a subscriber asked for.
#[derive(Debug, Default)]
pub struct StreamOptions {
    /// Start a sync too.
    pub refresh: bool,
    pub payload: Payload,
    /// Keep the stream open across versions.
    pub follow: bool,
    /// The version the subscriber holds (`payload=delta`).
    pub since: Option<String>,
}

/// Starts the event stream, in the best encoding `request` accepts; with `refresh`, also
/// starts a sync.
pub async fn stream(
    state: AppState,
    request: &HeaderMap,
    options: StreamOptions,
    slot: StreamSlot,
) -> Response {
    let StreamOptions {
        refresh,
        payload,
        follow,
        since,
    } = options;
    // Subscribe before looking at the current version, so an update between the two is seen.
    let outcomes = state.syncer.subscribe_outcomes();
    let mut versions = state.cache.subscribe();
    let cached = versions.borrow_and_update().clone();
    let encoding = accepted_encoding(request.get(header::ACCEPT_ENCODING), cached.as_deref());
    let refusal = match refresh {
        false => None,
        true => match state.refresh_gate.admit() {
            Err(too_soon) => Some(too_soon),
            Ok(turn) => match state.syncer.trigger().await {
                Trigger::NotConfigured => Some(ApiError::SyncNotConfigured),
                Trigger::NoWorker => Some(ApiError::NoWorker),
                Trigger::ShuttingDown => Some(ApiError::ShuttingDown),
                Trigger::LoginBlocked => Some(ApiError::LoginBlocked),
                Trigger::AlreadyRunning => None,
                Trigger::Started => {
                    turn.used();
                    None
                }
            },
        },
    };
    let mut stream = EventStream {
        versions,
        outcomes,
        queue: VecDeque::new(),
        encoder: StreamEncoder::new(encoding),
        waiting: None,
        refusal,
        next_id: 1,
        finished: false,
        payload,
        follow,
        // A subscriber that says which version it holds (`since`, or `Last-Event-ID` when its
        // `EventSource` reconnects) is sent the changes since, when they are kept.
        held: match payload {
            Payload::Delta => since
                .or_else(|| {
                    request
                        .get("last-event-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                })
                .filter(|v| !v.trim().is_empty())
                .map(|v| bare_etag(&v).to_owned()),
            _ => None,
        },
        pending_delta: None,
        state,
        _slot: slot,
    };
    match cached {
        Some(snapshot) => stream.push_snapshot(Kind::Cached, snapshot),
        None => {
            stream.push_nothing_cached();
            stream.after_snapshot(Kind::Cached);
        }
    }
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        s.next_chunk()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), s))
    });
    let mut headers = event_stream_headers();
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if encoding != Encoding::Identity {
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(encoding.token()),
        );
    }
    (headers, Body::from_stream(body)).into_response()
}
