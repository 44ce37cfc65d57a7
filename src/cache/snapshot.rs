//! The in-memory snapshot: the `/fetch-data` body, serialised once per new cache, plus its
//! compressed variants, built once off the request path. Requests only clone `Bytes` handles.

use std::hash::Hasher;
use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bytes::Bytes;

use super::convert::Converted;
use super::format::{check_document, BODY_PREFIX, BODY_ROOM};

/// A content encoding the API can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }
}

/// One version of the cache, ready to send.
#[derive(Debug)]
pub struct Snapshot {
    /// The identity `/fetch-data` body.
    pub body: Bytes,
    gzip: OnceLock<Bytes>,
    zstd: OnceLock<Bytes>,
    /// Strong validator of the identity body, quoted (`"…"`).
    pub etag: String,
    /// The strong ETag of each encoded representation: the identity tag marked with the encoding.
    etag_gzip: String,
    etag_zstd: String,
    /// `last_modified` as an HTTP date, for the `Last-Modified` header.
    pub http_date: String,
    pub last_updated: String,
    pub last_modified: SystemTime,
    pub count: usize,
    /// Size of the cache file in bytes.
    pub file_size: u64,
}

impl Snapshot {
    /// Builds a snapshot from a buffer holding a cache file at `buf[BODY_ROOM..]`, validating it.
    /// The buffer becomes the response body in place: no copy of the data is made.
    pub fn from_cache_buffer(buf: Vec<u8>) -> anyhow::Result<Self> {
        anyhow::ensure!(buf.len() > BODY_ROOM, "the cache file is empty");
        let facts = check_document(&buf[BODY_ROOM..])?;
        let (last_updated, count) = (facts.last_updated, facts.count);
        let last_modified = parse_rfc3339(&last_updated)
            .with_context(|| format!("last_updated {last_updated:?} is not an RFC 3339 time"))?;
        Self::assemble(buf, last_updated, last_modified, count)
    }

    /// Builds a snapshot from a table this process just converted: already known to be valid.
    pub fn from_converted(converted: Converted) -> Self {
        let last_modified =
            parse_rfc3339(&converted.last_updated).unwrap_or_else(|_| SystemTime::now());
        Self::assemble(
            converted.buf,
            converted.last_updated,
            last_modified,
            converted.count,
        )
        .expect("a converted table is a complete cache document")
    }

    fn assemble(
        mut buf: Vec<u8>,
        last_updated: String,
        last_modified: SystemTime,
        count: usize,
    ) -> anyhow::Result<Self> {
        let file_size = (buf.len() - BODY_ROOM) as u64;
        // The document starts with `{` after optional white space; the prefix ends on that byte.
        let open = BODY_ROOM
            + buf[BODY_ROOM..]
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .context("the cache file is blank")?;
        let start = open + 1 - BODY_PREFIX.len();
        buf[start..=open].copy_from_slice(BODY_PREFIX);
        let body = Bytes::from(buf).slice(start..);
        let etag = etag_of(&body);
        let marked =
            |encoding: Encoding| format!("{}-{}\"", etag.trim_end_matches('"'), encoding.token());
        Ok(Self {
            etag_gzip: marked(Encoding::Gzip),
            etag_zstd: marked(Encoding::Zstd),
            etag,
            http_date: httpdate::fmt_http_date(last_modified),
            body,
            gzip: OnceLock::new(),
            zstd: OnceLock::new(),
            last_updated,
            last_modified,
            count,
            file_size,
        })
    }

    /// The body in `encoding`, if that variant is built (identity always is).
    pub fn encoded(&self, encoding: Encoding) -> Option<&Bytes> {
        match encoding {
            Encoding::Identity => Some(&self.body),
            Encoding::Gzip => self.gzip.get(),
            Encoding::Zstd => self.zstd.get(),
        }
    }

    /// The strong ETag of the body in `encoding`.
    pub fn etag(&self, encoding: Encoding) -> &str {
        match encoding {
            Encoding::Identity => &self.etag,
            Encoding::Gzip => &self.etag_gzip,
            Encoding::Zstd => &self.etag_zstd,
        }
    }

    /// The encodings ready to send.
    pub fn encodings(&self) -> Vec<Encoding> {
        [Encoding::Identity, Encoding::Zstd, Encoding::Gzip]
            .into_iter()
            .filter(|e| self.encoded(*e).is_some())
            .collect()
    }

    /// Builds the compressed variants. CPU-heavy: call from a blocking thread.
    pub fn compress(&self, encoding: Encoding) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let (cell, bytes) = match encoding {
            Encoding::Identity => return Ok(Duration::ZERO),
            Encoding::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(self.body.len() / 6),
                    flate2::Compression::new(6),
                );
                enc.write_all(&self.body)?;
                (&self.gzip, enc.finish()?)
            }
            Encoding::Zstd => (&self.zstd, zstd::bulk::compress(&self.body, 3)?),
        };
        let _ = cell.set(Bytes::from(bytes));
        Ok(started.elapsed())
    }

    /// Age of the cache.
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.last_modified)
            .unwrap_or_default()
    }
}

fn etag_of(body: &[u8]) -> String {
    // SipHash over the body plus its length: a strong validator for this representation.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(body);
    format!("\"{:016x}-{:x}\"", h.finish(), body.len())
}

fn parse_rfc3339(s: &str) -> anyhow::Result<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)?;
    Ok(SystemTime::from(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(json: &str) -> Vec<u8> {
        let mut buf = vec![b' '; BODY_ROOM];
        buf.extend_from_slice(json.as_bytes());
        buf
    }

    const GOOD: &str =
        r#"{"last_updated":"2026-01-02T03:04:05Z","count":1,"columns":["id"],"data":[{"id":"1"}]}"#;

    #[test]
    fn the_body_is_the_cache_file_with_a_status_in_front() {
        let s = Snapshot::from_cache_buffer(buffer(GOOD)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
        assert_eq!(v["status"], "success");
        assert_eq!(v["count"], 1);
        assert_eq!(v["data"][0]["id"], "1");
        assert_eq!(s.file_size, GOOD.len() as u64);
        assert_eq!(s.http_date, "Fri, 02 Jan 2026 03:04:05 GMT");
        let base = s.etag(Encoding::Identity).trim_end_matches('"');
        assert_eq!(s.etag(Encoding::Zstd), format!("{base}-zstd\""));
    }

    #[test]
    fn leading_white_space_in_the_file_is_accepted() {
        let s = Snapshot::from_cache_buffer(buffer(&format!("\n  {GOOD}\n"))).unwrap();
        assert!(s.body.starts_with(BODY_PREFIX));
        serde_json::from_slice::<serde_json::Value>(&s.body).unwrap();
    }

    #[test]
    fn truncated_or_inconsistent_files_are_refused() {
        assert!(Snapshot::from_cache_buffer(buffer(&GOOD[..GOOD.len() - 3])).is_err());
        assert!(
            Snapshot::from_cache_buffer(buffer(&GOOD.replace("\"count\":1", "\"count\":2")))
                .is_err()
        );
        assert!(Snapshot::from_cache_buffer(buffer("")).is_err());
        assert!(Snapshot::from_cache_buffer(buffer("[1,2]")).is_err());
    }

    #[test]
    fn compressed_variants_decode_to_the_body() {
        let s = Snapshot::from_cache_buffer(buffer(GOOD)).unwrap();
        assert!(s.encoded(Encoding::Gzip).is_none());
        s.compress(Encoding::Gzip).unwrap();
        s.compress(Encoding::Zstd).unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&s.encoded(Encoding::Gzip).unwrap()[..]),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, s.body);
        let out = zstd::decode_all(&s.encoded(Encoding::Zstd).unwrap()[..]).unwrap();
        assert_eq!(out, s.body);
    }
}
