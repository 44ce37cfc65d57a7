//! Compressed variants made of pieces: the body cut at row boundaries chosen by the rows
//! themselves, each piece compressed on its own, on every core, and kept for the next version.
//!
//! A cut falls after a row whose hash ends in [`CUT_BITS`] zero bits (or once a piece reaches
//! [`MAX_PIECE`]), so a run of unchanged rows makes the same pieces in the next version however
//! many rows were inserted or deleted elsewhere: a new version compresses only the pieces its
//! changes touch and takes the others, compressed bytes and all, from the version before. A
//! table of a million rows changed in a hundred places is ready in well under a second instead
//! of a minute on one core.
//!
//! The pieces join without any framing of their own, in the forms [`super::framing`] splices:
//! - gzip: each piece is raw deflate data ended by a sync flush (byte-aligned, referring to
//!   nothing before it), so the pieces in order, between the gzip header with the body's `{`
//!   in a stored block and an empty final block, are one deflate stream; the CRC-32s combine.
//! - zstd: each piece is one frame; a zstd stream is a sequence of frames.
//!
//! Deflate looks back 32 KiB, so independent pieces of about a megabyte cost gzip nothing; zstd's
//! window is larger, and pieces cost it a few per cent (README, "Compression of large tables").

use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use super::framing::{Encoding, GZIP_HEADER};
use super::rows::RowIndex;

/// A piece ends after a row whose hash has this many low zero bits: about 2^10 rows a piece.
pub const CUT_BITS: u32 = 10;
/// A piece ends here at the latest, whatever its rows.
pub const MAX_PIECE: usize = 4 << 20;
/// A non-final stored deflate block holding `{`.
const BRACE_BLOCK: [u8; 6] = [0x00, 0x01, 0x00, 0xFE, 0xFF, b'{'];

/// Where a body is cut: the head (everything before the first row), then runs of rows, the last
/// one ending with the body.
pub fn cuts(body: &[u8], rows: &RowIndex) -> Vec<Range<usize>> {
    let mask = (1u64 << CUT_BITS) - 1;
    let mut cuts = Vec::with_capacity(rows.len() / (1 << CUT_BITS) * 2 + 2);
    let mut start = 0;
    for row in 0..rows.len() {
        let Some(span) = rows.span(row) else { break };
        if row == 0 {
            cuts.push(0..span.start);
            start = span.start;
        }
        let next = rows.span(row + 1).map_or(body.len(), |s| s.start);
        let cut = rows.hash(row).is_some_and(|h| h & mask == 0) || next - start >= MAX_PIECE;
        if cut && next < body.len() {
            cuts.push(start..next);
            start = next;
        }
    }
    if start < body.len() || cuts.is_empty() {
        cuts.push(start..body.len());
    }
    cuts
}

/// One compressed piece of a variant.
#[derive(Debug, Clone)]
struct Piece {
    /// Where its bytes sit in the variant.
    at: Range<usize>,
    /// CRC-32 and length of what it holds (gzip).
    crc: u32,
    len: usize,
}

/// A variant built of pieces, with where each piece sits, by the hash of what it holds: what the
/// next version takes its unchanged pieces from.
#[derive(Debug)]
pub struct Pieced {
    pub encoding: Encoding,
    pub level: i32,
    /// The whole variant.
    pub bytes: Bytes,
    /// CRC-32 of the body after its `{` (gzip).
    pub rest_crc: u32,
    pieces: HashMap<u128, Piece>,
}

impl Pieced {
    /// Compressed bytes the pieces hold.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// What a build did: pieces compressed and taken from the version before.
#[derive(Debug, Default, Clone, Copy)]
pub struct Built {
    pub compressed: usize,
    pub reused: usize,
    pub compressed_bytes: usize,
}

/// Builds `body`'s variant in `encoding` at `level` from the pieces at `cuts`, taking every
/// piece that `before` (an earlier version's variant at the same encoding and level) holds, and
/// compressing the others on up to `workers` threads. `keep_going` is asked between pieces.
/// Blocking and CPU-heavy.
pub fn build(
    body: &[u8],
    cuts: &[Range<usize>],
    encoding: Encoding,
    level: i32,
    before: Option<&Pieced>,
    workers: usize,
    keep_going: &(dyn Fn() -> bool + Sync),
) -> anyhow::Result<(Pieced, Built)> {
    anyhow::ensure!(body.first() == Some(&b'{'), "the body is not a JSON object");
    anyhow::ensure!(encoding != Encoding::Identity, "identity is not compressed");
    // The gzip variant keeps the body's `{` in a stored block of its own.
    let ranges: Vec<Range<usize>> = cuts
        .iter()
        .enumerate()
        .map(|(i, r)| match (i, encoding) {
            (0, Encoding::Gzip) => r.start.max(1)..r.end,
            _ => r.clone(),
        })
        .filter(|r| !r.is_empty())
        .collect();
    let hashes: Vec<u128> = ranges
        .iter()
        .map(|r| xxhash_rust::xxh3::xxh3_128(&body[r.clone()]))
        .collect();
    let before = before.filter(|b| b.encoding == encoding && b.level == level);
    let reused: Vec<Option<&Piece>> = hashes
        .iter()
        .zip(&ranges)
        .map(|(h, r)| {
            before
                .and_then(|b| b.pieces.get(h))
                .filter(|p| p.len == r.len())
        })
        .collect();
    let todo: Vec<usize> = (0..ranges.len()).filter(|&i| reused[i].is_none()).collect();
    let made = compress_all(body, &ranges, &todo, encoding, level, workers, keep_going)?;

    let compressed_bytes: usize = made.iter().map(|(_, bytes, _)| bytes.len()).sum();
    let reused_bytes: usize = reused.iter().flatten().map(|p| p.at.len()).sum();
    let mut out = Vec::with_capacity(compressed_bytes + reused_bytes + 64);
    if encoding == Encoding::Gzip {
        out.extend_from_slice(&GZIP_HEADER);
        out.extend_from_slice(&BRACE_BLOCK);
    }
    let mut made = made.into_iter().peekable();
    let mut pieces = HashMap::with_capacity(ranges.len());
    let mut rest = crc32fast::Hasher::new();
    for (i, range) in ranges.iter().enumerate() {
        let start = out.len();
        let crc = match reused[i] {
            Some(piece) => {
                let before = before.expect("a reused piece has a version before");
                out.extend_from_slice(&before.bytes[piece.at.clone()]);
                piece.crc
            }
            None => {
                let (at, bytes, crc) = made.next().expect("every missing piece was made");
                debug_assert_eq!(at, i);
                out.extend_from_slice(&bytes);
                crc
            }
        };
        if encoding == Encoding::Gzip && range.start > 0 {
            rest.combine(&crc32fast::Hasher::new_with_initial_len(
                crc,
                range.len() as u64,
            ));
        }
        pieces.insert(
            hashes[i],
            Piece {
                at: start..out.len(),
                crc,
                len: range.len(),
            },
        );
    }
    let rest_crc = rest.clone().finalize();
    if encoding == Encoding::Gzip {
        let mut whole = crc32fast::Hasher::new();
        whole.update(b"{");
        whole.combine(&rest);
        out.extend_from_slice(&[0x03, 0x00]);
        out.extend_from_slice(&whole.finalize().to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    }
    out.shrink_to_fit();
    let built = Built {
        compressed: todo.len(),
        reused: ranges.len() - todo.len(),
        compressed_bytes: todo.iter().map(|&i| ranges[i].len()).sum(),
    };
    Ok((
        Pieced {
            encoding,
            level,
            bytes: Bytes::from(out),
            rest_crc,
            pieces,
        },
        built,
    ))
}

/// The body bytes a [`build`] at `level` would compress: those in pieces `before` lacks.
pub fn to_compress(
    body: &[u8],
    cuts: &[Range<usize>],
    encoding: Encoding,
    level: i32,
    before: Option<&Pieced>,
) -> usize {
    let Some(before) = before.filter(|b| b.encoding == encoding && b.level == level) else {
        return body.len();
    };
    cuts.iter()
        .enumerate()
        .map(|(i, r)| match (i, encoding) {
            (0, Encoding::Gzip) => r.start.max(1)..r.end,
            _ => r.clone(),
        })
        .filter(|r| {
            let held = before
                .pieces
                .get(&xxhash_rust::xxh3::xxh3_128(&body[r.clone()]));
            held.is_none_or(|p| p.len != r.len())
        })
        .map(|r| r.len())
        .sum()
}

/// A compressed piece: its index, bytes and CRC-32.
type Made = (usize, Vec<u8>, u32);

/// Compresses the pieces `todo` (indexes into `ranges`) on up to `workers` threads, each taking
/// the next piece from a shared counter; returns them in order with their CRC-32.
fn compress_all(
    body: &[u8],
    ranges: &[Range<usize>],
    todo: &[usize],
    encoding: Encoding,
    level: i32,
    workers: usize,
    keep_going: &(dyn Fn() -> bool + Sync),
) -> anyhow::Result<Vec<Made>> {
    let next = AtomicUsize::new(0);
    let workers = workers.clamp(1, todo.len().max(1));
    let results: Vec<anyhow::Result<Vec<Made>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = todo.get(k) else {
                            return Ok(done);
                        };
                        anyhow::ensure!(
                            keep_going(),
                            "compression stopped: the service is shutting down"
                        );
                        let piece = &body[ranges[i].clone()];
                        let crc = match encoding {
                            Encoding::Gzip => crc32fast::hash(piece),
                            _ => 0,
                        };
                        done.push((i, compress_piece(piece, encoding, level)?, crc));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a compression thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(todo.len());
    for result in results {
        all.extend(result?);
    }
    all.sort_unstable_by_key(|(i, ..)| *i);
    Ok(all)
}

/// One piece: raw deflate ended by a sync flush, or one zstd frame with its size.
fn compress_piece(piece: &[u8], encoding: Encoding, level: i32) -> anyhow::Result<Vec<u8>> {
    match encoding {
        Encoding::Gzip => {
            let mut enc = flate2::write::DeflateEncoder::new(
                Vec::with_capacity(piece.len() / 6),
                flate2::Compression::new(level.clamp(0, 9) as u32),
            );
            enc.write_all(piece)?;
            enc.flush()?;
            let out = std::mem::take(enc.get_mut());
            Ok(out)
        }
        Encoding::Zstd => Ok(zstd::bulk::compress(piece, level)?),
        Encoding::Identity => Ok(piece.to_vec()),
    }
}

/// The threads a build uses: every core.
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn body(rows: usize, tag: &str) -> Vec<u8> {
        let data: Vec<String> = (0..rows)
            .map(|i| format!("{{\"id\":\"{i}\",\"note\":\"row {i} {tag}\"}}"))
            .collect();
        format!(
            "{{\"status\":\"success\",\"last_updated\":\"{tag}\",\"count\":{rows},\"columns\":[\"id\",\"note\"],\"data\":[{}]}}",
            data.join(",")
        )
        .into_bytes()
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn pieces_decode_to_the_body_and_unchanged_runs_are_reused() {
        let first = body(20_000, "v1");
        let rows = RowIndex::build(&first).unwrap();
        let cuts1 = cuts(&first, &rows);
        assert!(cuts1.len() > 5, "{} pieces", cuts1.len());
        assert_eq!(cuts1.first().unwrap().start, 0);
        assert_eq!(cuts1.last().unwrap().end, first.len());
        assert!(cuts1.windows(2).all(|w| w[0].end == w[1].start));
        let go = || true;
        let (gzip1, _) = build(&first, &cuts1, Encoding::Gzip, 6, None, 2, &go).unwrap();
        let (zstd1, _) = build(&first, &cuts1, Encoding::Zstd, 3, None, 2, &go).unwrap();
        assert_eq!(gunzip(&gzip1.bytes), first);
        assert_eq!(zstd::decode_all(&zstd1.bytes[..]).unwrap(), first);
        assert_eq!(gzip1.rest_crc, crc32fast::hash(&first[1..]));

        // One row changed, one inserted: the head piece and the touched ones are compressed.
        let mut second = String::from_utf8(body(20_000, "v1")).unwrap();
        second = second.replacen("\"v1\",\"count\"", "\"v2\",\"count\"", 1);
        second = second.replacen("row 777 v1", "row 777 changed", 1);
        second = second.replacen(
            "{\"id\":\"9000\"",
            "{\"id\":\"new\",\"note\":\"x\"},{\"id\":\"9000\"",
            1,
        );
        let second = second.into_bytes();
        let rows = RowIndex::build(&second).unwrap();
        let cuts2 = cuts(&second, &rows);
        let (gzip2, built) =
            build(&second, &cuts2, Encoding::Gzip, 6, Some(&gzip1), 2, &go).unwrap();
        assert!(built.compressed <= 5, "{built:?}");
        assert!(built.reused >= cuts2.len() - 5, "{built:?}");
        assert_eq!(gunzip(&gzip2.bytes), second);
        let (zstd2, built) =
            build(&second, &cuts2, Encoding::Zstd, 3, Some(&zstd1), 2, &go).unwrap();
        assert!(built.compressed <= 5, "{built:?}");
        assert_eq!(zstd::decode_all(&zstd2.bytes[..]).unwrap(), second);
        // Another level reuses nothing.
        let (_, built) = build(&second, &cuts2, Encoding::Zstd, 1, Some(&zstd1), 2, &go).unwrap();
        assert_eq!(built.reused, 0);
    }

    #[test]
    fn an_empty_table_is_one_piece() {
        let empty = br#"{"status":"success","count":0,"columns":["id"],"data":[]}"#;
        let rows = RowIndex::build(empty).unwrap();
        let cuts = cuts(empty, &rows);
        assert_eq!(cuts, vec![0..empty.len()]);
        let (gzip, _) = build(empty, &cuts, Encoding::Gzip, 9, None, 2, &|| true).unwrap();
        assert_eq!(gunzip(&gzip.bytes), empty);
    }
}
