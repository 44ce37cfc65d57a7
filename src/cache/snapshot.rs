//! The in-memory snapshot: the `/fetch-data` body, serialised once per new cache, plus its
//! compressed variants, built once off the request path. Requests only clone `Bytes` handles.
//!
//! The body is compact JSON whatever the file's layout (a pretty-printed file is compacted on
//! load), so it fits on one SSE `data:` line. The gzip variant ends its deflate data with a sync
//! flush, so event streams can splice those same bytes into their own gzip stream; the zstd
//! variant is a sequence of frames, which zstd streams may concatenate. Both are built of
//! pieces that the next version reuses (see [`super::pieces`]). Validators follow the data:
//! the ETag is a weak tag over columns and rows, and `Last-Modified` stays put while a sync finds
//! the same rows.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use tokio::sync::Notify;

use super::convert::Converted;
use super::format::{check_document, DocumentFacts, BODY_PREFIX, BODY_ROOM};
use super::framing::{self, compress_body_until, Encoding, GZIP_LEVEL, ZSTD_LEVEL};
#[cfg(test)]
use super::framing::{zstd_body_of, QUICK_LEVEL};
use super::pieces::Pieced;
use super::rows::RowIndex;
use super::typed::TypedTable;

/// A compressed variant of the body: first a quick one ([`framing::QUICK_LEVEL`]), then the one at the
/// level chosen for its encoding, which takes its place.
#[derive(Debug, Default)]
struct Variant {
    /// The best bytes built so far; empty until the first build ends, and after it if it failed.
    bytes: ArcSwapOption<Bytes>,
    /// Set once the first build has ended, successfully or not.
    settled: OnceLock<()>,
}

impl Variant {
    fn get(&self) -> Option<Bytes> {
        self.bytes.load_full().map(|b| Bytes::clone(&b))
    }

    /// Keeps `bytes` (when given) as the variant and marks it settled.
    fn set(&self, bytes: Option<Bytes>) {
        if let Some(bytes) = bytes {
            self.bytes.store(Some(Arc::new(bytes)));
        }
        let _ = self.settled.set(());
    }
}

/// One version of the cache, ready to send.
#[derive(Debug)]
pub struct Snapshot {
    /// The identity `/fetch-data` body, compact JSON.
    pub body: Bytes,
    /// Each compressed variant (see [`Variant`]).
    gzip: Variant,
    zstd: Variant,
    /// CRC-32 of the body after its opening `{`, set with the gzip variant.
    rest_crc: OnceLock<u32>,
    /// Set once each variant is at its chosen level.
    gzip_final: OnceLock<()>,
    zstd_final: OnceLock<()>,
    /// Woken when a variant is set.
    variant_ready: Notify,
    /// Each variant at its chosen level, built of pieces: what the next version takes its
    /// unchanged pieces from (see [`super::pieces`]).
    gzip_pieces: OnceLock<Arc<Pieced>>,
    zstd_pieces: OnceLock<Arc<Pieced>>,
    /// Weak validator of the data (columns and rows), quoted (`W/"…"`).
    pub etag: String,
    /// The ETag of each encoded representation: the identity tag marked with the encoding.
    etag_gzip: String,
    etag_zstd: String,
    /// Hash of the columns and rows (and the declared types), to tell a new version with the
    /// same data.
    data_hash: u64,
    /// The typed view of the rows, for queries.
    typed: Option<Arc<TypedTable>>,
    /// Where each row sits in the body and its hash, found on first use.
    rows: OnceLock<Result<Arc<RowIndex>, String>>,
    /// When this data was first served (an unchanged sync keeps it), for `Last-Modified`.
    pub data_modified: SystemTime,
    /// `data_modified` as an HTTP date.
    pub http_date: String,
    pub last_updated: String,
    pub last_modified: SystemTime,
    pub count: usize,
    /// Size of the cache file in bytes.
    pub file_size: u64,
}

/// The weak validators of data with `data_hash` and `count` rows: identity, gzip, zstd.
fn etags(data_hash: u64, count: usize) -> [String; 3] {
    let etag = format!("W/\"{data_hash:016x}-{count:x}\"");
    let marked =
        |encoding: Encoding| format!("{}-{}\"", etag.trim_end_matches('"'), encoding.token());
    let (gzip, zstd) = (marked(Encoding::Gzip), marked(Encoding::Zstd));
    [etag, gzip, zstd]
}

impl Snapshot {
    /// Builds a snapshot from a buffer holding a cache file at `buf[BODY_ROOM..]`, validating it.
    /// The buffer becomes the response body in place: no copy of the data is made.
    pub fn from_cache_buffer(mut buf: Vec<u8>) -> anyhow::Result<Self> {
        anyhow::ensure!(buf.len() > BODY_ROOM, "the cache file is empty");
        let file_size = (buf.len() - BODY_ROOM) as u64;
        compact_json(&mut buf, BODY_ROOM);
        let facts = check_document(&buf[BODY_ROOM..])?;
        let (last_updated, count, data_hash) = (facts.last_updated, facts.count, facts.data_hash);
        let last_modified = parse_rfc3339(&last_updated)
            .with_context(|| format!("last_updated {last_updated:?} is not an RFC 3339 time"))?;
        Self::assemble(
            buf,
            file_size,
            last_updated,
            last_modified,
            count,
            data_hash,
        )
    }

    /// Builds a snapshot from a table this process just converted. The converter wrote compact,
    /// complete JSON and already knows its facts, so nothing is parsed again: serving a new
    /// version right after its durable write takes no pass over its bytes.
    pub fn from_converted(converted: Converted) -> Self {
        let facts = DocumentFacts {
            last_updated: converted.last_updated,
            count: converted.count,
            data_hash: converted.data_hash,
        };
        Self::from_known_document(converted.buf, facts)
            .expect("a converted table is a compact cache document")
    }

    /// Builds a snapshot from a buffer holding, at `buf[BODY_ROOM..]`, a compact and complete
    /// cache document whose facts are known: converted by this process, or published so and
    /// checked against its checksum. Nothing is parsed.
    pub fn from_known_document(buf: Vec<u8>, facts: DocumentFacts) -> anyhow::Result<Self> {
        anyhow::ensure!(buf.len() > BODY_ROOM, "the cache document is empty");
        let file_size = (buf.len() - BODY_ROOM) as u64;
        let DocumentFacts {
            last_updated,
            count,
            data_hash,
        } = facts;
        let last_modified = parse_rfc3339(&last_updated)
            .with_context(|| format!("last_updated {last_updated:?} is not an RFC 3339 time"))?;
        Self::assemble(
            buf,
            file_size,
            last_updated,
            last_modified,
            count,
            data_hash,
        )
    }

    fn assemble(
        mut buf: Vec<u8>,
        file_size: u64,
        last_updated: String,
        last_modified: SystemTime,
        count: usize,
        data_hash: u64,
    ) -> anyhow::Result<Self> {
        // Compacted: the document's `{` is the first byte; the prefix ends on that byte.
        anyhow::ensure!(
            buf.get(BODY_ROOM) == Some(&b'{'),
            "the cache file is not an object"
        );
        let start = BODY_ROOM + 1 - BODY_PREFIX.len();
        buf[start..=BODY_ROOM].copy_from_slice(BODY_PREFIX);
        let body = Bytes::from(buf).slice(start..);
        let [etag, etag_gzip, etag_zstd] = etags(data_hash, count);
        Ok(Self {
            etag_gzip,
            etag_zstd,
            etag,
            data_hash,
            typed: None,
            rows: OnceLock::new(),
            data_modified: last_modified,
            http_date: httpdate::fmt_http_date(last_modified),
            body,
            gzip: Variant::default(),
            zstd: Variant::default(),
            rest_crc: OnceLock::new(),
            gzip_final: OnceLock::new(),
            zstd_final: OnceLock::new(),
            variant_ready: Notify::new(),
            gzip_pieces: OnceLock::new(),
            zstd_pieces: OnceLock::new(),
            last_updated,
            last_modified,
            count,
            file_size,
        })
    }

    /// Attaches the version's typed view, whose declared types (their digest, when known) become
    /// part of the validators: a change of types or key is a new representation.
    pub fn attach_typed(&mut self, typed: Option<TypedTable>, schema_digest: Option<u64>) {
        if let Some(digest) = schema_digest {
            self.data_hash ^= digest.rotate_left(17);
            [self.etag, self.etag_gzip, self.etag_zstd] = etags(self.data_hash, self.count);
        }
        self.typed = typed.map(Arc::new);
    }

    /// The version's typed view, when it could be built.
    /// Where each row sits in the body and its hash. Blocking the first time (a read of the
    /// whole body): the version's builder calls it before the version is served.
    pub fn row_index(&self) -> Result<&Arc<RowIndex>, String> {
        self.rows
            .get_or_init(|| {
                RowIndex::build(&self.body)
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Takes `index` as the rows' index (a merged version's, known from the merge).
    pub fn set_row_index(&mut self, index: RowIndex) {
        let _ = self.rows.set(Ok(Arc::new(index)));
    }

    pub fn typed(&self) -> Option<&Arc<TypedTable>> {
        self.typed.as_ref()
    }

    /// Whether `other` holds the same columns and rows.
    pub fn same_data_as(&self, other: &Snapshot) -> bool {
        self.data_hash == other.data_hash && self.count == other.count
    }

    /// Keeps `previous`'s `Last-Modified` when the data did not change, so that validators
    /// follow the rows, not the time of the last sync.
    pub fn keep_data_date_of(&mut self, previous: &Snapshot) {
        if self.same_data_as(previous) {
            self.data_modified = previous.data_modified;
            self.http_date.clone_from(&previous.http_date);
        }
    }

    fn cell(&self, encoding: Encoding) -> Option<&Variant> {
        match encoding {
            Encoding::Identity => None,
            Encoding::Gzip => Some(&self.gzip),
            Encoding::Zstd => Some(&self.zstd),
        }
    }

    /// The body in `encoding`, if that variant is built (identity always is).
    pub fn encoded(&self, encoding: Encoding) -> Option<Bytes> {
        match self.cell(encoding) {
            None => Some(self.body.clone()),
            Some(variant) => variant.get(),
        }
    }

    /// The body in `encoding` once a first variant is built (a quick one comes within a moment
    /// of the version); `None` if building it failed.
    pub async fn encoded_when_ready(&self, encoding: Encoding) -> Option<Bytes> {
        let Some(variant) = self.cell(encoding) else {
            return Some(self.body.clone());
        };
        loop {
            let notified = self.variant_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if variant.settled.get().is_some() {
                return variant.get();
            }
            notified.await;
        }
    }

    /// Whether the variant in `encoding` still waits for its first build.
    pub fn is_pending(&self, encoding: Encoding) -> bool {
        self.cell(encoding)
            .is_some_and(|variant| variant.settled.get().is_none())
    }

    /// The deflate data of the body after its opening `{` with its CRC-32, once the gzip
    /// variant is built, for answers that put their own fields first.
    pub fn deflate_after_brace(&self) -> Option<(Bytes, u32)> {
        let gzip = self.encoded(Encoding::Gzip)?;
        Some((framing::deflate_after_brace(&gzip), *self.rest_crc.get()?))
    }

    /// The ETag of the body in `encoding`.
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

    /// Takes `frame`, one zstd frame of the `/fetch-data` body made from this version's
    /// document as given (see [`zstd_body_of`]), as the zstd variant, when the body is that
    /// document unchanged (the file was compact JSON already). Returns whether it did.
    pub fn adopt_zstd(&self, frame: Bytes) -> bool {
        if self.body.len() as u64 != BODY_ROOM as u64 + self.file_size {
            return false;
        }
        self.zstd.set(Some(frame));
        self.zstd_final.set(()).is_ok() && {
            self.variant_ready.notify_waiters();
            true
        }
    }

    /// Whether the variant in `encoding` is at its chosen level (adopted, or built so).
    pub fn is_final(&self, encoding: Encoding) -> bool {
        match encoding {
            Encoding::Identity => true,
            Encoding::Gzip => self.gzip_final.get().is_some(),
            Encoding::Zstd => self.zstd_final.get().is_some(),
        }
    }

    /// Builds a compressed variant at `level` (the quick one, or the level chosen for it:
    /// [`Snapshot::final_level`]) and serves it from now on. CPU-heavy: call from a blocking
    /// thread. `keep_going` is asked between chunks; when it says no, compression stops with an
    /// error. A failed first build marks the variant unavailable; a failed later one (or a
    /// stopped one) keeps the variant built before.
    pub fn compress_until(
        &self,
        encoding: Encoding,
        level: i32,
        keep_going: &dyn Fn() -> bool,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let Some(variant) = self.cell(encoding) else {
            return Ok(Duration::ZERO);
        };
        if encoding == Encoding::Gzip {
            let _ = self
                .rest_crc
                .get_or_init(|| crc32fast::hash(&self.body[1..]));
        }
        let result = compress_body_until(&self.body, encoding, level, keep_going);
        let (bytes, result) = match result {
            Ok(mut bytes) => {
                bytes.shrink_to_fit();
                (Some(Bytes::from(bytes)), Ok(started.elapsed()))
            }
            Err(e) => (None, Err(e)),
        };
        let done = bytes.is_some();
        variant.set(bytes);
        if done && level == Self::final_level(encoding) {
            match encoding {
                Encoding::Gzip => self.gzip_final.set(()).ok(),
                _ => self.zstd_final.set(()).ok(),
            };
        }
        self.variant_ready.notify_waiters();
        result
    }

    /// Serves `pieced` (this body in its encoding) from now on; at the encoding's chosen level it
    /// is final, and kept for the next version to take its pieces from.
    pub fn set_pieced(&self, pieced: Pieced) {
        let Some(variant) = self.cell(pieced.encoding) else {
            return;
        };
        if pieced.encoding == Encoding::Gzip {
            let _ = self.rest_crc.get_or_init(|| pieced.rest_crc);
        }
        variant.set(Some(pieced.bytes.clone()));
        if pieced.level == Self::final_level(pieced.encoding) {
            let (done, kept) = match pieced.encoding {
                Encoding::Gzip => (&self.gzip_final, &self.gzip_pieces),
                _ => (&self.zstd_final, &self.zstd_pieces),
            };
            let _ = kept.set(Arc::new(pieced));
            let _ = done.set(());
        }
        self.variant_ready.notify_waiters();
    }

    /// Marks the variant in `encoding` as unavailable if nothing was ever built for it.
    pub fn give_up_variant(&self, encoding: Encoding) {
        if let Some(variant) = self.cell(encoding) {
            variant.set(None);
            self.variant_ready.notify_waiters();
        }
    }

    /// The variant in `encoding` at its chosen level as pieces, once built so.
    pub fn pieces(&self, encoding: Encoding) -> Option<Arc<Pieced>> {
        match encoding {
            Encoding::Gzip => self.gzip_pieces.get().cloned(),
            Encoding::Zstd => self.zstd_pieces.get().cloned(),
            Encoding::Identity => None,
        }
    }

    /// The level each encoding's variant ends at.
    pub fn final_level(encoding: Encoding) -> i32 {
        match encoding {
            Encoding::Gzip => GZIP_LEVEL as i32,
            _ => ZSTD_LEVEL,
        }
    }

    /// Age of the cache.
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.last_modified)
            .unwrap_or_default()
    }
}

/// Removes the white space outside strings from the JSON at `buf[from..]`, in place (a JSON
/// string cannot hold a raw newline, so the result has none).
fn compact_json(buf: &mut Vec<u8>, from: usize) {
    let (mut write, mut in_string, mut escaped) = (from, false, false);
    for read in from..buf.len() {
        let b = buf[read];
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            continue;
        } else if b == b'"' {
            in_string = true;
        }
        buf[write] = b;
        write += 1;
    }
    buf.truncate(write);
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
    fn a_converted_table_gives_the_snapshot_its_file_gives() {
        let csv = "id,name,note\n1,\"a, b\",NULL\n2,\"line\nbreak\",\"\u{e9}\"\n";
        let convert = || {
            crate::cache::csv_to_cache_json(csv.as_bytes(), Some("NULL"), "2026-01-02T03:04:05Z", 0)
                .unwrap()
        };
        let fast = Snapshot::from_converted(convert());
        let parsed = Snapshot::from_cache_buffer(convert().buf).unwrap();
        assert_eq!(fast.body, parsed.body);
        assert_eq!(fast.etag, parsed.etag);
        assert!(fast.same_data_as(&parsed));
        assert_eq!(
            (
                fast.count,
                &fast.last_updated,
                fast.file_size,
                fast.last_modified
            ),
            (
                parsed.count,
                &parsed.last_updated,
                parsed.file_size,
                parsed.last_modified
            )
        );
        let other = crate::cache::csv_to_cache_json(
            "id,name,note\n1,\"a, b\",x\n".as_bytes(),
            Some("NULL"),
            "2026-01-02T03:04:05Z",
            0,
        )
        .unwrap();
        assert_ne!(Snapshot::from_converted(other).etag, fast.etag);
    }

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
        assert!(base.starts_with("W/\""), "{base}");
        assert_eq!(s.etag(Encoding::Zstd), format!("{base}-zstd\""));
    }

    #[test]
    fn leading_white_space_in_the_file_is_accepted() {
        let s = Snapshot::from_cache_buffer(buffer(&format!("\n  {GOOD}\n"))).unwrap();
        assert!(s.body.starts_with(BODY_PREFIX));
        serde_json::from_slice::<serde_json::Value>(&s.body).unwrap();
    }

    #[test]
    fn a_pretty_printed_file_becomes_one_compact_line_with_its_strings_intact() {
        let doc = serde_json::json!({
            "last_updated": "2026-01-02T03:04:05Z",
            "count": 1,
            "columns": ["id", "note"],
            "data": [{"id": "1", "note": "two  spaces,\na \"quoted\\\" newline\r\n\tand tab"}],
        });
        let pretty = serde_json::to_string_pretty(&doc).unwrap() + "\r\n";
        assert!(pretty.contains('\n'));
        let s = Snapshot::from_cache_buffer(buffer(&pretty)).unwrap();
        assert!(!s.body.contains(&b'\n') && !s.body.contains(&b'\r'));
        let v: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
        assert_eq!(v["data"], doc["data"]);
        assert_eq!(s.file_size, pretty.len() as u64);
        // Same data, other layout: same validator.
        let compact = Snapshot::from_cache_buffer(buffer(&doc.to_string())).unwrap();
        assert_eq!(compact.etag, s.etag);
    }

    #[test]
    fn the_etag_follows_the_rows_not_the_sync_time() {
        let a = Snapshot::from_cache_buffer(buffer(GOOD)).unwrap();
        let later = GOOD.replace("2026-01-02T03:04:05Z", "2026-01-02T04:04:05Z");
        let mut b = Snapshot::from_cache_buffer(buffer(&later)).unwrap();
        assert_eq!(a.etag, b.etag);
        assert_ne!(a.http_date, b.http_date);
        b.keep_data_date_of(&a);
        assert_eq!(
            a.http_date, b.http_date,
            "unchanged rows keep Last-Modified"
        );
        assert_eq!(b.last_updated, "2026-01-02T04:04:05Z");
        let mut c =
            Snapshot::from_cache_buffer(buffer(&later.replace("\"1\"}", "\"2\"}"))).unwrap();
        assert_ne!(a.etag, c.etag);
        c.keep_data_date_of(&a);
        assert_ne!(a.http_date, c.http_date);
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
    fn a_published_zstd_frame_is_adopted_only_for_a_compact_document() {
        let frame = Bytes::from(zstd_body_of(GOOD.as_bytes()).unwrap());
        let s = Snapshot::from_cache_buffer(buffer(GOOD)).unwrap();
        assert_eq!(zstd::decode_all(&frame[..]).unwrap(), s.body);
        assert!(s.adopt_zstd(frame.clone()));
        assert_eq!(s.encoded(Encoding::Zstd), Some(frame.clone()));

        let pretty = GOOD.replace(",", ", ");
        let s = Snapshot::from_cache_buffer(buffer(&pretty)).unwrap();
        let frame = Bytes::from(zstd_body_of(pretty.as_bytes()).unwrap());
        assert!(
            !s.adopt_zstd(frame),
            "the body is not the document as given"
        );
        assert!(s.encoded(Encoding::Zstd).is_none());
    }

    #[test]
    fn compressed_variants_decode_to_the_body() {
        let s = Snapshot::from_cache_buffer(buffer(GOOD)).unwrap();
        assert!(s.encoded(Encoding::Gzip).is_none());
        for level in [QUICK_LEVEL, GZIP_LEVEL as i32] {
            s.compress_until(Encoding::Gzip, level, &|| true).unwrap();
        }
        assert!(s.is_final(Encoding::Gzip));
        s.compress_until(Encoding::Zstd, QUICK_LEVEL, &|| true)
            .unwrap();
        assert!(!s.is_final(Encoding::Zstd) && !s.is_pending(Encoding::Zstd));
        let mut out = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&s.encoded(Encoding::Gzip).unwrap()[..]),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, s.body);
        let (deflate, crc) = framing::deflate_part(&s.encoded(Encoding::Gzip).unwrap());
        assert_eq!(crc, crc32fast::hash(&s.body));
        let closed = [&deflate[..], &[0x03, 0x00]].concat();
        let mut out = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::DeflateDecoder::new(&closed[..]),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, s.body, "the deflate part alone decodes to the body");
        let out = zstd::decode_all(&s.encoded(Encoding::Zstd).unwrap()[..]).unwrap();
        assert_eq!(out, s.body);
    }
}
