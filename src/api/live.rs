//! `GET /query?sql=…&stream=true`: a live query. Its answer is sent at once, then again each
//! time a new version changes it (a version that leaves the answer as it was sends nothing),
//! as Server-Sent Events: `{"type":"result","version":"<ETag>","answer":<the /query JSON>}`, or
//! `{"type":"error","message":…}` when a new version makes the query fail. Every subscriber
//! asks the engine, whose answer cache evaluates each question once per version however many
//! share it. The stream stays open until the client leaves or the service stops.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::fetch::current_snapshot;
use super::limits::StreamSlot;
use super::sse::{event_stream_headers, KEEPALIVE};
use super::AppState;
use crate::cache::{Snapshot, Versions};
use crate::query::{Answer, Ask, Format, QueryEngine, QueryError};

struct LiveQuery {
    engine: Arc<QueryEngine>,
    ask: Ask,
    versions: Versions,
    /// What the subscriber holds: the answer's digest without its version.
    sent: Option<u64>,
    queue: VecDeque<Bytes>,
    next_id: u64,
    state: AppState,
    /// This stream's place under MAX_STREAMS, freed when it ends.
    _slot: StreamSlot,
}

impl LiveQuery {
    fn push(&mut self, json: &str) {
        self.queue.push_back(Bytes::from(format!(
            "id: {}\ndata: {json}\n\n",
            self.next_id
        )));
        self.next_id += 1;
    }

    /// Sends `answer` unless the subscriber holds the same rows already.
    fn push_answer(&mut self, snapshot: &Snapshot, answer: &Answer) {
        let digest = rows_digest(snapshot, answer);
        if self.sent == Some(digest) {
            return;
        }
        self.sent = Some(digest);
        let body = String::from_utf8_lossy(&answer.body);
        let version = serde_json::to_string(&snapshot.etag).expect("text serializes");
        self.push(&format!(
            "{{\"type\":\"result\",\"version\":{version},\"answer\":{body}}}"
        ));
    }

    fn push_error(&mut self, e: QueryError) {
        self.sent = None;
        // The engine's message is about the question asked (a column, a type), not the server.
        let json = serde_json::json!({
            "type": "error",
            "code": "query_failed",
            "message": ApiError::from(e).to_string(),
        });
        self.push(&json.to_string());
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.queue.pop_front() {
                return Some(chunk);
            }
            tokio::select! {
                () = self.state.shutdown.cancelled() => return None,
                () = tokio::time::sleep(KEEPALIVE) => return Some(Bytes::from_static(b": keep-alive\n\n")),
                changed = self.versions.changed() => {
                    changed.ok()?;
                    let Some(snapshot) = self.versions.borrow_and_update().clone() else {
                        continue;
                    };
                    match self.engine.answer(&snapshot, self.ask.clone()).await {
                        Ok(answer) => self.push_answer(&snapshot, &answer),
                        Err(e) => self.push_error(e),
                    }
                }
            }
        }
    }
}

/// A digest of the answer's rows: its JSON without the version it names, so that a new version
/// with the same answer sends nothing.
fn rows_digest(snapshot: &Snapshot, answer: &Answer) -> u64 {
    let version = serde_json::to_string(&snapshot.etag).expect("text serializes");
    let body = String::from_utf8_lossy(&answer.body);
    let without = body.replacen(&version, "", 1);
    xxhash_rust::xxh3::xxh3_64(without.as_bytes())
}

/// Starts a live query. A question the engine refuses on the current version is a plain error
/// answer, before any event.
pub async fn stream(state: AppState, mut ask: Ask, slot: StreamSlot) -> Result<Response, ApiError> {
    if !matches!(ask.format, Format::Json) {
        return Err(ApiError::BadRequest(
            "a live query (stream=true) answers JSON events: leave out _format".into(),
        ));
    }
    ask.format = Format::Json;
    let engine = Arc::clone(
        state
            .query
            .as_ref()
            .ok_or_else(|| ApiError::QueryUnavailable("this process answers no queries".into()))?,
    );
    // Subscribe before answering, so that a version landing in between is seen.
    let mut versions = state.cache.subscribe();
    let _ = versions.borrow_and_update();
    let snapshot = current_snapshot(&state)?;
    let first = engine.answer(&snapshot, ask.clone()).await?;
    let mut live = LiveQuery {
        engine,
        ask,
        versions,
        sent: None,
        queue: VecDeque::new(),
        next_id: 1,
        state,
        _slot: slot,
    };
    live.push_answer(&snapshot, &first);
    let body = futures_util::stream::unfold(live, |mut live| async move {
        live.next_chunk()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), live))
    });
    Ok((event_stream_headers(), Body::from_stream(body)).into_response())
}
