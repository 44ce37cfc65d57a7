//! Versions shared through Redis (`REDIS_URL`): for several `serve` replicas and a worker that
//! share no disk. The cache file is kept as a local copy, to start from when Redis is
//! unreachable at boot.
//!
//! - `<prefix>:current` — a hash holding the current version: `meta` (JSON [`SharedMeta`]) and
//!   `body` (the `/fetch-data` body: the document with [`BODY_PREFIX`] in place of its `{`, one
//!   zstd frame at the snapshot's level, which replicas serve as their zstd variant as it is).
//!   Both fields are written by one `HSET` inside a `MULTI`, so a reader never sees half a
//!   version; only the current version is kept.
//! - `<prefix>:versions` — the channel on which each new version id is published.
//! - `<prefix>:lock` — the sync lock: `SET NX PX` with a random token, renewed while the sync
//!   runs, released by a script that deletes it only while it still holds our token.
//! - `<prefix>:deltas` — the last change sets between versions (see [`super::delta`]), each
//!   entry `<from>><to>` and a newline before its shared form, appended by the replicas that
//!   compute them (the first of several computing the same one wins: `<prefix>:deltas:ids`
//!   holds the ids listed), capped; a replica that missed versions or starts late takes the
//!   chain that ends at its version from there.
//! - `<prefix>:refresh` — the channel on which a replica without phpMyAdmin settings forwards a
//!   refresh request (a random id) to the worker; the worker answers on `<prefix>:refresh:<id>`.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::convert::Converted;
use super::file_store::FileStore;
use super::format::{self, BODY_PREFIX, BODY_ROOM};
use super::framing::zstd_body_of;
use super::record::VersionRecord;
use super::snapshot::Snapshot;

/// A version as Redis holds it, beside its body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedMeta {
    pub record: VersionRecord,
    pub columns: Vec<String>,
    /// Length of the uncompressed document.
    pub document_bytes: usize,
    /// CRC-32 of the uncompressed document.
    pub checksum: u32,
    /// The hash of the document's columns and rows ([`super::format::DataHasher`]), when the
    /// publisher knew it: replicas then serve the checked document without parsing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hash: Option<u64>,
}

/// One field read from Redis.
type Bytes = Vec<u8>;

/// A version compressed and described, ready to publish.
#[derive(Debug)]
pub struct Prepared {
    pub meta: SharedMeta,
    body: bytes::Bytes,
}

impl Prepared {
    /// The zstd frame of the `/fetch-data` body, for the publisher's own snapshot.
    pub fn zstd_body(&self) -> bytes::Bytes {
        self.body.clone()
    }
}

/// The current version as read from Redis: its metadata, the document in a buffer with
/// [`BODY_ROOM`] spare bytes in front (as the snapshot wants it), and the zstd frame it came in.
pub type Loaded = (SharedMeta, Vec<u8>, bytes::Bytes);

/// A Redis server that holds the current version, its news and the sync lock; and the local
/// copy of the current version.
#[derive(Debug)]
pub struct RedisStore {
    local: FileStore,
    /// The id of the version in memory (or being loaded), so each is loaded once.
    known_version: Mutex<Option<String>>,
    client: redis::Client,
    conn: ConnectionManager,
    current: String,
    channel: String,
    refresh_channel: String,
    lock_key: String,
    deltas_key: String,
    delta_ids_key: String,
    lock_ttl: Duration,
    /// The last error talking to Redis, cleared by the next success; shown in `/status`.
    last_error: Mutex<Option<String>>,
}

/// Renews the lock while held; its release deletes the key only if it still holds `token`.
const RENEW: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end"#;
const RELEASE: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;
/// Appends a change set unless listed already, then drops the oldest past the cap.
const APPEND_DELTA: &str = r#"
if redis.call("SISMEMBER", KEYS[2], ARGV[1]) == 1 then return 0 end
redis.call("SADD", KEYS[2], ARGV[1])
redis.call("RPUSH", KEYS[1], ARGV[2])
while redis.call("LLEN", KEYS[1]) > tonumber(ARGV[3]) do
  local old = redis.call("LPOP", KEYS[1])
  local cut = string.find(old, "\n", 1, true)
  if cut then redis.call("SREM", KEYS[2], string.sub(old, 1, cut - 1)) end
end
return 1
"#;

impl RedisStore {
    /// Connects lazily to `url` (`redis://` or `rediss://`, user and password in the URL): a
    /// replica starts even while Redis is down, and the connection comes back by itself. `local`
    /// is the local copy.
    pub fn open(
        url: &str,
        prefix: &str,
        lock_ttl: Duration,
        local: FileStore,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).context("REDIS_URL is not a valid Redis URL")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(20)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .context("cannot set up the Redis connection")?;
        Ok(Self {
            local,
            known_version: Mutex::new(None),
            client,
            conn,
            current: format!("{prefix}:current"),
            channel: format!("{prefix}:versions"),
            refresh_channel: format!("{prefix}:refresh"),
            lock_key: format!("{prefix}:lock"),
            deltas_key: format!("{prefix}:deltas"),
            delta_ids_key: format!("{prefix}:deltas:ids"),
            lock_ttl,
            last_error: Mutex::new(None),
        })
    }

    /// The local copy of the current version.
    pub fn local(&self) -> &FileStore {
        &self.local
    }

    /// The last error talking to Redis, if the last exchange failed.
    pub fn error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn note<T>(&self, result: redis::RedisResult<T>, what: &str) -> anyhow::Result<T> {
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(v) => {
                *last = None;
                Ok(v)
            }
            Err(e) => {
                let message = format!("Redis: cannot {what}: {e}");
                *last = Some(message.clone());
                Err(anyhow::anyhow!(message))
            }
        }
    }

    /// Compresses `document` (a cache file's bytes, compact JSON) into the zstd variant of its
    /// body and describes it, ready to publish. CPU-heavy: call from a blocking thread.
    pub fn prepare(
        document: &[u8],
        record: &VersionRecord,
        columns: Vec<String>,
        data_hash: Option<u64>,
    ) -> anyhow::Result<Prepared> {
        let mut crc = flate2::Crc::new();
        crc.update(document);
        let body = zstd_body_of(document).context("cannot compress the version")?;
        Ok(Prepared {
            meta: SharedMeta {
                record: record.clone(),
                columns,
                document_bytes: document.len(),
                checksum: crc.sum(),
                data_hash,
            },
            body: body.into(),
        })
    }

    /// Publishes a prepared version as the current one, atomically, and announces it. The
    /// previous version stays if this fails.
    pub async fn publish(&self, version: &Prepared) -> anyhow::Result<()> {
        let meta_json = serde_json::to_vec(&version.meta)?;
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .hset_multiple(
                &self.current,
                &[("meta", meta_json.as_slice()), ("body", &version.body[..])],
            )
            .ignore()
            .publish(&self.channel, &version.meta.record.version)
            .ignore()
            .query_async(&mut conn)
            .await;
        self.note(result, "publish the new version")
    }

    /// The metadata of the current version, `None` when Redis holds none.
    pub async fn current_meta(&self) -> anyhow::Result<Option<SharedMeta>> {
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("HGET")
            .arg(&self.current)
            .arg("meta")
            .query_async(&mut conn)
            .await;
        let Some(json) = self.note(result, "read the current version")? else {
            return Ok(None);
        };
        serde_json::from_slice(&json)
            .context("the version metadata in Redis is not valid")
            .map(Some)
    }

    /// The current version, checked against its checksum.
    pub async fn load(&self) -> anyhow::Result<Option<Loaded>> {
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<(Option<Bytes>, Option<Bytes>)> = redis::cmd("HMGET")
            .arg(&self.current)
            .arg("meta")
            .arg("body")
            .query_async(&mut conn)
            .await;
        let (Some(meta), Some(body)) = self.note(result, "read the current version")? else {
            return Ok(None);
        };
        let meta: SharedMeta =
            serde_json::from_slice(&meta).context("the version metadata in Redis is not valid")?;
        let expected = (meta.document_bytes, meta.checksum);
        let body = bytes::Bytes::from(body);
        let frame = body.clone();
        let buf = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
            // The body is the document with BODY_PREFIX in place of its `{`: decoded in place,
            // putting the `{` back leaves the document at BODY_ROOM.
            let mut buf = Vec::with_capacity(BODY_ROOM + expected.0);
            zstd::stream::read::Decoder::new(&body[..])?.read_to_end(&mut buf)?;
            let matches = buf.len() == BODY_ROOM + expected.0 && buf.starts_with(BODY_PREFIX) && {
                buf[BODY_ROOM] = b'{';
                let mut crc = flate2::Crc::new();
                crc.update(&buf[BODY_ROOM..]);
                crc.sum() == expected.1
            };
            anyhow::ensure!(matches, "the version in Redis does not match its checksum");
            Ok(buf)
        })
        .await
        .context("the decompressor stopped")??;
        Ok(Some((meta, buf, frame)))
    }

    /// Shares a change set (its `from` and `to` versions and its shared form), keeping the last
    /// `cap` listed. `Ok(false)`: it was listed already.
    pub async fn share_change_set(
        &self,
        from: &str,
        to: &str,
        shared: &[u8],
        cap: usize,
    ) -> anyhow::Result<bool> {
        let id = format!("{from}>{to}");
        let mut entry = Vec::with_capacity(id.len() + 1 + shared.len());
        entry.extend_from_slice(id.as_bytes());
        entry.push(b'\n');
        entry.extend_from_slice(shared);
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<i64> = redis::Script::new(APPEND_DELTA)
            .key(&self.deltas_key)
            .key(&self.delta_ids_key)
            .arg(&id)
            .arg(entry)
            .arg(cap.max(1))
            .invoke_async(&mut conn)
            .await;
        self.note(result, "share a change set").map(|n| n == 1)
    }

    /// The change sets shared, oldest first: each one's `from`, `to` and shared form. Entries
    /// that are not `<from>><to>\n…` are left out.
    pub async fn shared_change_sets(&self) -> anyhow::Result<Vec<(String, String, Vec<u8>)>> {
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<Vec<Vec<u8>>> = redis::cmd("LRANGE")
            .arg(&self.deltas_key)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await;
        let entries = self.note(result, "read the shared change sets")?;
        Ok(entries
            .into_iter()
            .filter_map(|mut entry| {
                let cut = entry.iter().position(|b| *b == b'\n')?;
                let id = std::str::from_utf8(&entry[..cut]).ok()?;
                let (from, to) = id.split_once('>')?;
                let (from, to) = (from.to_owned(), to.to_owned());
                entry.drain(..=cut);
                Some((from, to, entry))
            })
            .collect())
    }

    /// Calls `on_news` with each version id announced, until `stop`. Reconnects by itself.
    pub async fn follow(&self, on_news: impl Fn(String), stop: CancellationToken) {
        self.listen(&self.channel, "new versions", true, on_news, stop)
            .await;
    }

    /// Calls `on_request` with the id of each refresh request a replica forwards, until `stop`.
    /// Reconnects by itself.
    pub async fn follow_refresh_requests(
        &self,
        on_request: impl Fn(String),
        stop: CancellationToken,
    ) {
        self.listen(
            &self.refresh_channel,
            "refresh requests",
            false,
            on_request,
            stop,
        )
        .await;
    }

    /// Calls `on_message` with each message on `channel`, until `stop`; with `catch_up`, also
    /// once with an empty message each time the subscription starts, for what was published
    /// while nobody listened.
    async fn listen(
        &self,
        channel: &str,
        what: &str,
        catch_up: bool,
        on_message: impl Fn(String),
        stop: CancellationToken,
    ) {
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = tokio::select! {
                () = stop.cancelled() => return,
                r = tokio::time::timeout(Duration::from_secs(5), subscribed) => r,
            };
            match pubsub {
                Ok(Ok(pubsub)) => {
                    tracing::info!("following {what} in Redis");
                    if catch_up {
                        on_message(String::new());
                    }
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            msg = messages.next() => match msg {
                                Some(msg) => on_message(msg.get_payload().unwrap_or_default()),
                                None => break,
                            },
                        }
                    }
                    tracing::warn!("lost the Redis subscription to {what}; reconnecting");
                }
                Ok(Err(e)) => tracing::debug!("cannot subscribe to Redis: {e}"),
                Err(_) => tracing::debug!("subscribing to Redis timed out"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Forwards a refresh request to whichever worker listens, and returns its answer; `None`
    /// when no worker listens or none answers within `wait`.
    pub async fn forward_refresh(&self, wait: Duration) -> anyhow::Result<Option<String>> {
        use rand::distributions::{Alphanumeric, DistString};
        let id = Alphanumeric.sample_string(&mut rand::thread_rng(), 16);
        let reply_channel = format!("{}:{id}", self.refresh_channel);
        // Subscribed before asking, so that the answer cannot come before we listen.
        let subscribed = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&reply_channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::time::timeout(Duration::from_secs(5), subscribed)
            .await
            .map_err(|_| anyhow::anyhow!("Redis: subscribing for the worker's answer timed out"))?;
        let pubsub = self.note(pubsub, "subscribe for the worker's answer")?;
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(&self.refresh_channel)
            .arg(&id)
            .query_async(&mut conn)
            .await;
        if self.note(result, "forward the refresh request")? == 0 {
            return Ok(None);
        }
        let mut messages = pubsub.into_on_message();
        match tokio::time::timeout(wait, messages.next()).await {
            Ok(Some(msg)) => Ok(Some(msg.get_payload().unwrap_or_default())),
            Ok(None) | Err(_) => Ok(None),
        }
    }

    /// Sends `answer` to the replica that forwarded refresh request `id`.
    pub async fn answer_refresh(&self, id: &str, answer: &str) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(format!("{}:{id}", self.refresh_channel))
            .arg(answer)
            .query_async(&mut conn)
            .await;
        self.note(result, "answer a forwarded refresh request")
            .map(drop)
    }

    /// Takes the lock with `token` if it is free. `Ok(false)`: another process holds it.
    pub async fn try_lock(&self, token: &str) -> anyhow::Result<bool> {
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(&self.lock_key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(self.lock_ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await;
        Ok(self.note(result, "take the sync lock")?.is_some())
    }

    /// Extends the lock while `token` still holds it. `Ok(false)`: it was lost.
    pub async fn renew_lock(&self, token: &str) -> anyhow::Result<bool> {
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<i64> = redis::Script::new(RENEW)
            .key(&self.lock_key)
            .arg(token)
            .arg(self.lock_ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        Ok(self.note(result, "renew the sync lock")? == 1)
    }

    /// Releases the lock if `token` still holds it.
    pub async fn unlock(&self, token: &str) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<i64> = redis::Script::new(RELEASE)
            .key(&self.lock_key)
            .arg(token)
            .invoke_async(&mut conn)
            .await;
        self.note(result, "release the sync lock").map(drop)
    }

    /// How long the lock lives without renewal.
    pub fn lock_ttl(&self) -> Duration {
        self.lock_ttl
    }
}

/// The Redis lock, held while syncing: renewed until [`RedisLockGuard::release`]; dropped, it
/// stops being renewed and expires after `REDIS_LOCK_TTL`.
#[derive(Debug)]
pub struct RedisLockGuard {
    store: Arc<RedisStore>,
    token: String,
    renewal: Option<(DropGuard, tokio::task::JoinHandle<()>)>,
}

impl RedisLockGuard {
    /// Gives the lock back: stops the renewal and deletes the key if it is still ours.
    pub async fn release(mut self) {
        if let Some((stop, task)) = self.renewal.take() {
            drop(stop);
            let _ = task.await;
        }
        if let Err(e) = self.store.unlock(&self.token).await {
            tracing::warn!("{e:#}; it expires by itself");
        }
    }
}

/// Keeps a Redis lock alive: renews it at a third of its lifetime until `stop`.
async fn renew(store: Arc<RedisStore>, token: String, stop: CancellationToken) {
    let every = store.lock_ttl() / 3;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match store.renew_lock(&token).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!("the Redis sync lock was lost (expired); another sync may start");
                return;
            }
            Err(e) => tracing::warn!("{e:#}; retrying"),
        }
    }
}

impl RedisStore {
    /// Takes the sync lock if it is free, renewed while held (the renewal is owned by the
    /// guard and ends with it). `Ok(None)`: another process holds it.
    pub async fn take_lock(self: &Arc<Self>) -> anyhow::Result<Option<RedisLockGuard>> {
        let token = format!("{:032x}", rand::random::<u128>());
        if !self.try_lock(&token).await? {
            return Ok(None);
        }
        let stop = CancellationToken::new();
        let renewal = tokio::spawn(renew(Arc::clone(self), token.clone(), stop.clone()));
        Ok(Some(RedisLockGuard {
            store: Arc::clone(self),
            token,
            renewal: Some((stop.drop_guard(), renewal)),
        }))
    }

    /// Compresses and publishes a freshly converted table as the current version, then keeps
    /// the local copy. Returns the table and the zstd frame replicas serve, for this process's
    /// own snapshot. If publishing fails nothing changes.
    pub async fn publish_converted(
        &self,
        converted: Converted,
        record: &VersionRecord,
    ) -> anyhow::Result<(Converted, bytes::Bytes)> {
        *lock(&self.known_version) = Some(record.version.clone());
        let (converted, prepared) = tokio::task::spawn_blocking({
            let record = record.clone();
            move || {
                let prepared = RedisStore::prepare(
                    converted.cache_bytes(),
                    &record,
                    converted.columns.clone(),
                    Some(converted.data_hash),
                );
                (converted, prepared)
            }
        })
        .await
        .context("the compressor stopped")?;
        let prepared = prepared?;
        self.publish(&prepared)
            .await
            .context("the new version was not published; the previous one stays")?;
        Ok((converted, prepared.zstd_body()))
    }

    /// Loads the version Redis holds if it is not the one known, as a snapshot (its zstd
    /// variant the frame Redis holds, as published) with its record. `Ok(None)`: nothing new.
    pub async fn load_new(&self) -> anyhow::Result<Option<(Snapshot, VersionRecord)>> {
        let Some(meta) = self.current_meta().await? else {
            return Ok(None);
        };
        if lock(&self.known_version).as_deref() == Some(meta.record.version.as_str()) {
            return Ok(None);
        }
        let Some((meta, buf, frame)) = self.load().await? else {
            return Ok(None);
        };
        *lock(&self.known_version) = Some(meta.record.version.clone());
        // Checked against its checksum: with its facts published, the document is not parsed.
        let facts = meta.data_hash.map(|data_hash| format::DocumentFacts {
            last_updated: meta.record.last_updated.clone(),
            count: meta.record.rows,
            data_hash,
        });
        let snapshot = tokio::task::spawn_blocking(move || match facts {
            Some(facts) => Snapshot::from_known_document(buf, facts),
            None => Snapshot::from_cache_buffer(buf),
        })
        .await
        .context("the cache reader stopped")?
        .context("the version in Redis is not valid")?;
        snapshot.adopt_zstd(frame);
        Ok(Some((snapshot, meta.record)))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are plain data that stay consistent even if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
