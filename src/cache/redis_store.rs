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
//! - Nothing read from Redis is trusted: whoever can write to it may not hold the secret. Each
//!   version's `meta` is signed (`mac`, HMAC-SHA256 with REDIS_SIGNING_KEY) and names its
//!   body's length and SHA-256, and each change set is signed; sizes are checked in Redis before
//!   anything is read (scripts), `meta` is checked before the body is read, the body's length
//!   against `meta` and REDIS_MAX_BYTES before it is read, and it is decompressed with a hard
//!   limit of the size `meta` declares. A version refused for its content is remembered and
//!   not read again until another is announced; the replica keeps serving what it has.
//! - `<prefix>:refresh` — the channel on which a replica without phpMyAdmin settings forwards a
//!   refresh request (a random id) to the worker; the worker answers on `<prefix>:refresh:<id>`.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::convert::Converted;
use super::file_store::FileStore;
use super::format::{self, BODY_PREFIX, BODY_ROOM};
use super::framing::zstd_body_of;
use super::record::VersionRecord;
use super::snapshot::Snapshot;
use crate::config::Secret;

/// A version Redis holds that was refused for what it is (its size, signature, checksum or
/// content), not for a failure to read it: not read again until another one is announced.
#[derive(Debug, thiserror::Error)]
#[error("the version in Redis was refused: {reason}")]
pub struct Refused {
    reason: String,
    /// What stands for the refused record until another is announced: its version id when its
    /// metadata could be trusted that far, else a hash of what was read.
    id: String,
}

impl Refused {
    fn new(id: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            id: id.into(),
        }
    }
}

/// Largest `meta` field read: a version's record and column names.
const MAX_META_BYTES: u64 = 4 << 20;

/// The least REDIS_MAX_BYTES defaults to, whatever the size of the version served.
const MIN_DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// How a signature starts, so that a version's and a change set's can never be swapped.
const VERSION_MAC: &[u8] = b"pma-cache version 1\n";
const CHANGE_SET_MAC: &[u8] = b"pma-cache change set 1\n";
const RETRY_LOGIN_MAC: &[u8] = b"pma-cache retry login 1\n";

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
    /// Length of the body (the zstd frame) as published.
    #[serde(default)]
    pub body_bytes: u64,
    /// SHA-256 of the body, base64: the signature covers `meta` only, and `meta` vouches for
    /// the body through this, so the body is read only once `meta` is known to be ours.
    #[serde(default)]
    pub body_sha256: String,
}

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
    /// What every version and change set is signed with.
    signing_key: Secret,
    /// REDIS_MAX_BYTES, when set.
    max_bytes: Option<u64>,
    /// The document size of the last version published or loaded, for the default bound.
    last_document_bytes: std::sync::atomic::AtomicU64,
}

/// The `meta` and `mac` fields, only when within `ARGV[1]` and `ARGV[2]` bytes; their sizes
/// otherwise, so that nothing oversized is ever sent; nothing when there is no version.
const READ_META: &str = r#"
local m = redis.call("HSTRLEN", KEYS[1], "meta")
local t = redis.call("HSTRLEN", KEYS[1], "mac")
if m == 0 then return {} end
if m > tonumber(ARGV[1]) or t > tonumber(ARGV[2]) then return {m, t} end
return redis.call("HMGET", KEYS[1], "meta", "mac")
"#;
/// The `body` field, only when it is exactly `ARGV[1]` bytes long; its length otherwise.
const READ_BODY: &str = r#"
local b = redis.call("HSTRLEN", KEYS[1], "body")
if b ~= tonumber(ARGV[1]) then return b end
return redis.call("HGET", KEYS[1], "body")
"#;
/// Largest `mac` field read (a base64 HMAC-SHA256 is 44 bytes).
const MAX_TAG_BYTES: u64 = 64;
/// The last `ARGV[3]` change sets listed, oldest first, each at most `ARGV[1]` bytes (larger
/// ones are left out), the newest ones that fit in `ARGV[2]` bytes together.
const READ_CHANGE_SETS: &str = r#"
local entries = redis.call("LRANGE", KEYS[1], -tonumber(ARGV[3]), -1)
local out, total = {}, 0
for i = #entries, 1, -1 do
  local n = string.len(entries[i])
  if n <= tonumber(ARGV[1]) then
    total = total + n
    if total > tonumber(ARGV[2]) then break end
    table.insert(out, 1, entries[i])
  end
end
return out
"#;

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
        signing_key: Secret,
        max_bytes: Option<u64>,
        local: FileStore,
    ) -> anyhow::Result<Self> {
        // A connection whose peer is gone (a network cut, Redis restarted elsewhere) is noticed
        // within seconds, by keep-alive probes while idle (the subscription) and by the user
        // timeout while a request waits, instead of the kernel's minutes: the replica then
        // reconnects and catches up as soon as the network is back.
        let tcp = redis::io::tcp::TcpSettings::default()
            .set_nodelay(true)
            .set_keepalive(
                socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(1))
                    .with_interval(Duration::from_secs(1))
                    .with_retries(2),
            )
            .set_user_timeout(Duration::from_secs(3));
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .context("REDIS_URL is not a valid Redis URL")?
            .set_tcp_settings(tcp);
        let client = redis::Client::open(info).context("REDIS_URL is not a valid Redis URL")?;
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
            signing_key,
            max_bytes,
            last_document_bytes: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The largest document or body read: REDIS_MAX_BYTES, else 8 times the last version's
    /// document, at least 2 GiB.
    fn max_bytes(&self) -> u64 {
        self.max_bytes.unwrap_or_else(|| {
            let last = self
                .last_document_bytes
                .load(std::sync::atomic::Ordering::Relaxed);
            last.saturating_mul(8).max(MIN_DEFAULT_MAX_BYTES)
        })
    }

    /// The signature of `parts` (after `domain`), each with its length so that none can be
    /// moved into another.
    fn sign(&self, domain: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.signing_key.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(domain);
        for part in parts {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        mac
    }

    /// Whether `tag` (base64) signs `parts`, compared in constant time.
    fn signed(&self, domain: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
        let Some(tag) = decode_tag(tag) else {
            return false;
        };
        self.sign(domain, parts).verify_slice(&tag).is_ok()
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
                body_bytes: body.len() as u64,
                body_sha256: encode_tag(&Sha256::digest(&body)),
            },
            body: body.into(),
        })
    }

    /// Publishes a prepared version as the current one, atomically, and announces it. The
    /// previous version stays if this fails.
    pub async fn publish(&self, version: &Prepared) -> anyhow::Result<()> {
        let meta_json = serde_json::to_vec(&version.meta)?;
        let mac = encode_tag(
            &self
                .sign(VERSION_MAC, &[&meta_json])
                .finalize()
                .into_bytes(),
        );
        self.last_document_bytes.store(
            version.meta.document_bytes as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &self.current,
                &[
                    ("meta", meta_json.as_slice()),
                    ("body", &version.body[..]),
                    ("mac", mac.as_bytes()),
                ],
            )
            .ignore()
            .publish(&self.channel, &version.meta.record.version)
            .ignore();
        let result: redis::RedisResult<()> = self
            .again_if_dropped(|mut conn| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut conn).await }
            })
            .await;
        self.note(result, "publish the new version")
    }

    /// The metadata of the current version, `None` when Redis holds none.
    /// The current version's `meta`, checked: within its bounds and signed with our key, its
    /// document and body within REDIS_MAX_BYTES. `Err(Refused)` otherwise.
    pub async fn current_meta(&self) -> anyhow::Result<Option<SharedMeta>> {
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<Vec<redis::Value>> = redis::Script::new(READ_META)
            .key(&self.current)
            .arg(MAX_META_BYTES)
            .arg(MAX_TAG_BYTES)
            .invoke_async(&mut conn)
            .await;
        let fields = self.note(result, "read the current version")?;
        let (meta, tag) = match <[redis::Value; 2]>::try_from(fields) {
            Ok([redis::Value::BulkString(meta), redis::Value::BulkString(tag)]) => (meta, tag),
            Ok([redis::Value::Int(meta), redis::Value::Int(tag)]) => {
                return Err(Refused::new(
                    format!("oversized {meta} {tag}"),
                    format!("its metadata and signature take {meta} and {tag} bytes, over the bounds ({MAX_META_BYTES} and {MAX_TAG_BYTES})"),
                )
                .into())
            }
            Ok([redis::Value::BulkString(meta), _]) => {
                return Err(Refused::new(fingerprint(&meta), "it is not signed (no mac)").into())
            }
            Err(fields) if fields.is_empty() => return Ok(None),
            _ => {
                return Err(
                    Refused::new("malformed", "its fields are not what a version holds").into(),
                )
            }
        };
        if !self.signed(VERSION_MAC, &[&meta], &tag) {
            return Err(Refused::new(
                fingerprint(&meta),
                "it is not signed with REDIS_SIGNING_KEY (a publisher with another key, or a write by someone without it)",
            )
            .into());
        }
        let parsed: SharedMeta = serde_json::from_slice(&meta).map_err(|e| {
            Refused::new(
                fingerprint(&meta),
                format!("its metadata is not valid ({e})"),
            )
        })?;
        let max = self.max_bytes();
        if parsed.document_bytes as u64 > max || parsed.body_bytes > max {
            return Err(Refused::new(
                parsed.record.version.clone(),
                format!(
                    "it declares a document of {} bytes and a body of {}, over REDIS_MAX_BYTES ({max})",
                    parsed.document_bytes, parsed.body_bytes
                ),
            )
            .into());
        }
        Ok(Some(parsed))
    }

    /// The current version: its `meta` checked ([`Self::current_meta`]), then its body read only
    /// if it has the length `meta` gives, checked against the SHA-256 `meta` gives, and
    /// decompressed no further than the document `meta` declares, then checked against its
    /// checksum. `Err(Refused)` for a version that is not acceptable as it is.
    async fn load(&self, meta: SharedMeta) -> anyhow::Result<Option<Loaded>> {
        let id = meta.record.version.clone();
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<redis::Value> = redis::Script::new(READ_BODY)
            .key(&self.current)
            .arg(meta.body_bytes)
            .invoke_async(&mut conn)
            .await;
        let body = match self.note(result, "read the current version")? {
            redis::Value::BulkString(body) => body,
            redis::Value::Int(length) => {
                // Published again since `meta` was read, or tampered with: either way, not this.
                return Err(Refused::new(
                    id,
                    format!(
                        "its body is {length} bytes, not the {} its metadata gives",
                        meta.body_bytes
                    ),
                )
                .into());
            }
            _ => return Ok(None),
        };
        let expected = (meta.document_bytes, meta.checksum, meta.body_sha256.clone());
        let body = bytes::Bytes::from(body);
        let frame = body.clone();
        let buf = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
            if encode_tag(&Sha256::digest(&body)) != expected.2 {
                return Err(Refused::new(id, "its body is not the one its metadata names").into());
            }
            // The body is the document with BODY_PREFIX in place of its `{`: decoded in place,
            // putting the `{` back leaves the document at BODY_ROOM. Never more than declared
            // is decoded: one byte more is enough to refuse it.
            let limit = BODY_ROOM + expected.0;
            let mut buf = Vec::with_capacity(limit);
            zstd::stream::read::Decoder::new(&body[..])
                .and_then(|decoder| decoder.take(limit as u64 + 1).read_to_end(&mut buf))
                .map_err(|e| Refused::new(&id, format!("its body does not decompress ({e})")))?;
            let matches = buf.len() == limit && buf.starts_with(BODY_PREFIX) && {
                buf[BODY_ROOM] = b'{';
                let mut crc = flate2::Crc::new();
                crc.update(&buf[BODY_ROOM..]);
                crc.sum() == expected.1
            };
            if !matches {
                return Err(Refused::new(id, "it does not match its size and checksum").into());
            }
            Ok(buf)
        })
        .await
        .context("the decompressor stopped")??;
        self.last_document_bytes
            .store(expected.0 as u64, std::sync::atomic::Ordering::Relaxed);
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
        let mac = encode_tag(
            &self
                .sign(CHANGE_SET_MAC, &[id.as_bytes(), shared])
                .finalize()
                .into_bytes(),
        );
        let mut entry = Vec::with_capacity(id.len() + mac.len() + 2 + shared.len());
        entry.extend_from_slice(id.as_bytes());
        entry.push(b'\n');
        entry.extend_from_slice(mac.as_bytes());
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

    /// The last `cap` change sets shared, oldest first: each one's `from`, `to` and shared form,
    /// at most `memory` bytes in all. Entries that are not `<from>><to>\n<signature>\n…`, or whose
    /// signature is not ours, are left out (and counted in the log).
    pub async fn shared_change_sets(
        &self,
        memory: usize,
        cap: usize,
    ) -> anyhow::Result<Vec<(String, String, Vec<u8>)>> {
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<Vec<Vec<u8>>> = redis::Script::new(READ_CHANGE_SETS)
            .key(&self.deltas_key)
            .arg(memory)
            .arg(memory)
            .arg(cap.max(1))
            .invoke_async(&mut conn)
            .await;
        let entries = self.note(result, "read the shared change sets")?;
        let listed = entries.len();
        let sets: Vec<_> = entries
            .into_iter()
            .filter_map(|mut entry| {
                let cut = entry.iter().position(|b| *b == b'\n')?;
                let id = std::str::from_utf8(&entry[..cut]).ok()?.to_owned();
                let rest = &entry[cut + 1..];
                let tag_end = rest.iter().position(|b| *b == b'\n')?;
                let (tag, shared) = (&rest[..tag_end], &rest[tag_end + 1..]);
                if !self.signed(CHANGE_SET_MAC, &[id.as_bytes(), shared], tag) {
                    return None;
                }
                let (from, to) = id.split_once('>')?;
                let (from, to) = (from.to_owned(), to.to_owned());
                entry.drain(..cut + 1 + tag_end + 1);
                Some((from, to, entry))
            })
            .collect();
        if sets.len() < listed {
            tracing::warn!(
                refused = listed - sets.len(),
                "change sets in Redis not signed with REDIS_SIGNING_KEY (or malformed) were left out"
            );
        }
        Ok(sets)
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
    ///
    /// With `retry_login`, the request asks the worker to log in again after phpMyAdmin
    /// rejected it; that part is signed, so that only a holder of REDIS_SIGNING_KEY can ask.
    pub async fn forward_refresh(
        &self,
        wait: Duration,
        retry_login: bool,
        full: bool,
    ) -> anyhow::Result<Option<String>> {
        use rand::distributions::{Alphanumeric, DistString};
        let id = Alphanumeric.sample_string(&mut rand::thread_rng(), 16);
        let mut request = match retry_login {
            false => id.clone(),
            true => format!(
                "{id} retry_login {}",
                encode_tag(
                    &self
                        .sign(RETRY_LOGIN_MAC, &[id.as_bytes()])
                        .finalize()
                        .into_bytes()
                )
            ),
        };
        if full {
            request.push_str(" full");
        }
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
            .arg(&request)
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

    /// A forwarded refresh request's id, and whether it asks, signed, to log in again.
    pub fn read_refresh_request(&self, request: &str) -> (String, bool, bool) {
        let mut parts = request.split(' ');
        let id = parts.next().unwrap_or_default().to_owned();
        let (mut retry_login, mut full) = (false, false);
        while let Some(part) = parts.next() {
            match part {
                "retry_login" => {
                    retry_login = parts.next().is_some_and(|tag| {
                        self.signed(RETRY_LOGIN_MAC, &[id.as_bytes()], tag.as_bytes())
                    })
                }
                "full" => full = true,
                _ => {}
            }
        }
        (id, retry_login, full)
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
        let mut set = redis::cmd("SET");
        set.arg(&self.lock_key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(self.lock_ttl.as_millis() as u64);
        let result: redis::RedisResult<Option<String>> = self
            .again_if_dropped(|mut conn| {
                let set = &set;
                async move { set.query_async(&mut conn).await }
            })
            .await;
        Ok(self.note(result, "take the sync lock")?.is_some())
    }

    /// Runs `request` on the shared connection, and once more when the connection had dropped
    /// (Redis restarted, a network cut healed): the manager reconnects after such a failure,
    /// and a request that could not be sent is safe to send again. Without this, the first
    /// sync after a Redis restart would fail on the dead connection.
    async fn again_if_dropped<T, F, Fut>(&self, request: F) -> redis::RedisResult<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match request(self.conn.clone()).await {
            Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                tracing::info!("the Redis connection had dropped ({e}); asking again");
                request(self.conn.clone()).await
            }
            other => other,
        }
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
    /// A version refused for what it is ([`Refused`]) is reported once, then left alone until
    /// another is announced.
    pub async fn load_new(&self) -> anyhow::Result<Option<(Snapshot, VersionRecord)>> {
        let meta = match self.current_meta().await {
            Ok(Some(meta)) => meta,
            Ok(None) => return Ok(None),
            Err(e) => return self.refused(e),
        };
        if lock(&self.known_version).as_deref() == Some(meta.record.version.as_str()) {
            return Ok(None);
        }
        let (meta, buf, frame) = match self.load(meta).await {
            Ok(Some(loaded)) => loaded,
            Ok(None) => return Ok(None),
            Err(e) => return self.refused(e),
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

impl RedisStore {
    /// Reports a refused record once: remembered by its id, it is not read again until
    /// another is announced. Other errors (Redis unreachable) pass as they are, to be retried.
    fn refused<T>(&self, e: anyhow::Error) -> anyhow::Result<Option<T>> {
        let Some(refused) = e.downcast_ref::<Refused>() else {
            return Err(e);
        };
        let mut known = lock(&self.known_version);
        if known.as_deref() == Some(refused.id.as_str()) {
            return Ok(None);
        }
        *known = Some(refused.id.clone());
        Err(e.context(
            "the version in Redis was not loaded, and is not read again until another is announced; the version in memory is still served",
        ))
    }
}

/// What stands for a record that cannot be trusted as far as its version id.
fn fingerprint(bytes: &[u8]) -> String {
    format!("unsigned {:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

fn encode_tag(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode_tag(text: &[u8]) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are plain data that stay consistent even if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
