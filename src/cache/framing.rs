//! The bytes of compressed answers, in one place: the variants a snapshot keeps (gzip made to be
//! spliced, zstd frames), and the encoding of streamed answers (event streams, `?refresh=true`)
//! that reuse them.
//!
//! An answer is written as pieces: small framing texts (`id: …\ndata: {"type":…,"payload":`,
//! keep-alives) and, now and then, the 90 MB body. The body is never compressed again:
//! - gzip: one gzip member for the whole stream. Texts go in stored (uncompressed) deflate
//!   blocks; the body is the snapshot's deflate data, which ends on a byte boundary and refers to
//!   nothing before it, so it can sit between any blocks. The CRC-32s are combined; the final
//!   block and trailer close the stream after `done`.
//! - zstd: a sequence of frames, which decoders read as the concatenation of their contents.
//!   Texts go in frames of raw blocks; the body is the snapshot's zstd frame.
//!
//! Every piece ends on a block boundary, so a client decodes each event as soon as it arrives.

use std::collections::VecDeque;
use std::io::Write;

use bytes::{BufMut, Bytes, BytesMut};

use super::format::BODY_PREFIX;

/// gzip level of the precompressed body: 7% smaller than level 6 for 2.7x the time, off the
/// request path (measurements in README, "Compression levels").
pub const GZIP_LEVEL: u32 = 9;
/// zstd level of the precompressed body: 21% smaller than level 3 and 16% smaller than gzip 9;
/// level 12 saves 5% more for 2.4x the time, level 19 20% more for 30x (README).
pub const ZSTD_LEVEL: i32 = 9;
/// The level of the quick variants built first, both at once, so that a compressed client of a
/// new version waits a moment for them instead of being sent the identity body while the
/// variants at [`GZIP_LEVEL`] and [`ZSTD_LEVEL`] are built (README, "Compression levels").
pub const QUICK_LEVEL: i32 = 1;

/// The fixed gzip header the gzip variant starts with (no name, no time, unknown OS).
pub const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
/// A non-final stored deflate block holding `{`.
const BRACE_BLOCK: [u8; 6] = [0x00, 0x01, 0x00, 0xFE, 0xFF, b'{'];
/// The gzip variant's end: an empty final fixed-Huffman block, then CRC-32 and length (8 bytes).
const GZIP_TAIL_LEN: usize = 2 + 8;

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

/// `body` compressed as `encoding` at `level`; gzip in the spliceable form the snapshot keeps.
/// The result holds no spare capacity: the compressors write into buffers sized for the worst
/// case (zstd: more than the body), which would otherwise stay allocated beside the snapshot.
pub fn compress_body(body: &[u8], encoding: Encoding, level: i32) -> anyhow::Result<Vec<u8>> {
    compress_body_until(body, encoding, level, &|| true)
}

/// Bytes compressed between two asks of `keep_going`: a version of 90 MB stops within a few
/// milliseconds of shutdown instead of holding it for seconds.
const CHUNK: usize = 1 << 20;

/// [`compress_body`], asking `keep_going` between chunks and stopping with an error when it
/// says no.
pub fn compress_body_until(
    body: &[u8],
    encoding: Encoding,
    level: i32,
    keep_going: &dyn Fn() -> bool,
) -> anyhow::Result<Vec<u8>> {
    let mut out = match encoding {
        Encoding::Identity => body.to_vec(),
        Encoding::Gzip => gzip_spliceable(body, level.clamp(0, 9) as u32, keep_going)?,
        Encoding::Zstd => {
            let mut enc =
                zstd::stream::write::Encoder::new(Vec::with_capacity(body.len() / 8), level)?;
            enc.set_pledged_src_size(Some(body.len() as u64))?;
            enc.include_contentsize(true)?;
            write_chunks(&mut enc, body, keep_going)?;
            enc.finish()?
        }
    };
    out.shrink_to_fit();
    Ok(out)
}

/// Writes `data` to `out` a [`CHUNK`] at a time while `keep_going` says so.
fn write_chunks(
    out: &mut impl Write,
    data: &[u8],
    keep_going: &dyn Fn() -> bool,
) -> anyhow::Result<()> {
    for chunk in data.chunks(CHUNK) {
        anyhow::ensure!(
            keep_going(),
            "compression stopped: the service is shutting down"
        );
        out.write_all(chunk)?;
    }
    Ok(())
}

/// The zstd variant of the body a cache `document` (compact JSON) becomes, made from the
/// document without building the body: frames at [`ZSTD_LEVEL`] holding [`BODY_PREFIX`] and the
/// document after its `{`, cut every [`ZSTD_FRAME_BYTES`] and compressed on every core (a zstd
/// stream is a sequence of frames). A publisher makes it once for every replica
/// ([`Snapshot::adopt_zstd`]). CPU-heavy.
pub fn zstd_body_of(document: &[u8]) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(
        document.first() == Some(&b'{'),
        "the document is not a JSON object"
    );
    let rest = &document[1..];
    let first_len = rest.len().min(ZSTD_FRAME_BYTES);
    let mut first = Vec::with_capacity(BODY_PREFIX.len() + first_len);
    first.extend_from_slice(BODY_PREFIX);
    first.extend_from_slice(&rest[..first_len]);
    let mut pieces: Vec<&[u8]> = vec![&first];
    pieces.extend(rest[first_len..].chunks(ZSTD_FRAME_BYTES));
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(pieces.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut frames: Vec<(usize, Vec<u8>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<Vec<(usize, Vec<u8>)>> {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(piece) = pieces.get(i) else {
                            return Ok(done);
                        };
                        done.push((i, zstd::bulk::compress(piece, ZSTD_LEVEL)?));
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            all.extend(
                handle
                    .join()
                    .map_err(|_| anyhow::anyhow!("a compression thread panicked"))??,
            );
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    frames.sort_unstable_by_key(|(i, _)| *i);
    let mut out = Vec::with_capacity(frames.iter().map(|(_, f)| f.len()).sum());
    for (_, frame) in frames {
        out.extend_from_slice(&frame);
    }
    Ok(out)
}

/// The body bytes in each frame of [`zstd_body_of`]: a few per core for a large table.
const ZSTD_FRAME_BYTES: usize = 8 << 20;

/// gzip made to be cut up: the body's opening `{` in a stored block of its own, then the rest
/// compressed and ended with a sync flush, then an empty final block. The deflate data between
/// header and final block, with or without the `{`, can be reused inside another gzip stream,
/// since it refers back to nothing before it.
fn gzip_spliceable(
    body: &[u8],
    level: u32,
    keep_going: &dyn Fn() -> bool,
) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(body.first() == Some(&b'{'), "the body is not a JSON object");
    let mut out = Vec::with_capacity(body.len() / 8);
    out.extend_from_slice(&GZIP_HEADER);
    out.extend_from_slice(&BRACE_BLOCK);
    let mut enc = flate2::write::DeflateEncoder::new(out, flate2::Compression::new(level));
    write_chunks(&mut enc, &body[1..], keep_going)?;
    enc.flush()?;
    let mut out = std::mem::take(enc.get_mut());
    drop(enc);
    let mut crc = crc32fast::Hasher::new();
    crc.update(body);
    out.extend_from_slice(&[0x03, 0x00]);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    Ok(out)
}

/// The deflate data of a gzip variant (ending on a byte boundary, no final block) with the
/// CRC-32 of the body, for splicing into another gzip stream.
pub fn deflate_part(gzip: &Bytes) -> (Bytes, u32) {
    let tail = &gzip[gzip.len() - 8..];
    let crc = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    (
        gzip.slice(GZIP_HEADER.len()..gzip.len() - GZIP_TAIL_LEN),
        crc,
    )
}

/// The deflate data of a gzip variant after the body's opening `{` (its own stored block).
pub fn deflate_after_brace(gzip: &Bytes) -> Bytes {
    let rest = GZIP_HEADER.len() + BRACE_BLOCK.len();
    gzip.slice(rest..gzip.len() - GZIP_TAIL_LEN)
}

/// Largest stored deflate block.
const STORED_MAX: usize = u16::MAX as usize;
/// Largest zstd block.
const ZSTD_BLOCK_MAX: usize = 128 * 1024;

/// Encodes one event stream's pieces into chunks to send.
#[derive(Debug)]
pub enum StreamEncoder {
    Identity,
    Gzip {
        /// CRC-32 and length of everything sent so far.
        crc: crc32fast::Hasher,
        header_sent: bool,
    },
    Zstd,
}

impl StreamEncoder {
    pub fn new(encoding: Encoding) -> Self {
        match encoding {
            Encoding::Identity => Self::Identity,
            Encoding::Gzip => Self::Gzip {
                crc: crc32fast::Hasher::new(),
                header_sent: false,
            },
            Encoding::Zstd => Self::Zstd,
        }
    }

    pub fn encoding(&self) -> Encoding {
        match self {
            Self::Identity => Encoding::Identity,
            Self::Gzip { .. } => Encoding::Gzip,
            Self::Zstd => Encoding::Zstd,
        }
    }

    /// Appends a short text.
    pub fn text(&mut self, text: &[u8], out: &mut VecDeque<Bytes>) {
        if text.is_empty() {
            return;
        }
        match self {
            Self::Identity => out.push_back(Bytes::copy_from_slice(text)),
            Self::Gzip { crc, header_sent } => {
                let mut chunk = BytesMut::with_capacity(text.len() + 16);
                if !std::mem::replace(header_sent, true) {
                    chunk.put_slice(&GZIP_HEADER);
                }
                stored_blocks(text, &mut chunk);
                crc.update(text);
                out.push_back(chunk.freeze());
            }
            Self::Zstd => out.push_back(raw_zstd_frame(text)),
        }
    }

    /// Appends a body after its opening `{` (gzip only), for answers that put their own fields
    /// first: `spliced` is the deflate data of the body's gzip variant after the `{` with its
    /// CRC-32 (what `Snapshot::deflate_after_brace` gives),
    /// `body_len` the body's length. Returns whether it did (not without `spliced`).
    pub fn body_after_brace(
        &mut self,
        spliced: Option<(Bytes, u32)>,
        body_len: usize,
        out: &mut VecDeque<Bytes>,
    ) -> bool {
        let Self::Gzip { crc, header_sent } = self else {
            return false;
        };
        let Some((deflate, rest_crc)) = spliced else {
            return false;
        };
        if !std::mem::replace(header_sent, true) {
            out.push_back(Bytes::from_static(&GZIP_HEADER));
        }
        crc.combine(&crc32fast::Hasher::new_with_initial_len(
            rest_crc,
            body_len as u64 - 1,
        ));
        out.push_back(deflate);
        true
    }

    /// Appends the snapshot's body, using `variant` (the body already compressed in this
    /// stream's encoding) when there is one; without it the body is sent uncompressed inside
    /// the encoding, never compressed here.
    pub fn body(&mut self, body: &Bytes, variant: Option<Bytes>, out: &mut VecDeque<Bytes>) {
        match (self, variant) {
            (Self::Identity, _) => out.push_back(body.clone()),
            (Self::Gzip { crc, header_sent }, Some(gzip)) => {
                if !std::mem::replace(header_sent, true) {
                    out.push_back(Bytes::from_static(&GZIP_HEADER));
                }
                let (deflate, body_crc) = deflate_part(&gzip);
                crc.combine(&crc32fast::Hasher::new_with_initial_len(
                    body_crc,
                    body.len() as u64,
                ));
                out.push_back(deflate);
            }
            (Self::Zstd, Some(frame)) => out.push_back(frame),
            (encoder, None) => {
                for piece in body.chunks(ZSTD_BLOCK_MAX.min(STORED_MAX)) {
                    encoder.text(piece, out);
                }
            }
        }
    }

    /// Closes the encoding after the last event.
    pub fn finish(&mut self, out: &mut VecDeque<Bytes>) {
        if let Self::Gzip { crc, header_sent } = self {
            let mut tail = BytesMut::with_capacity(20);
            if !std::mem::replace(header_sent, true) {
                tail.put_slice(&GZIP_HEADER);
            }
            // An empty final block with fixed Huffman codes, then CRC-32 and length.
            tail.put_slice(&[0x03, 0x00]);
            tail.put_u32_le(crc.clone().finalize());
            tail.put_u32_le(crc.total_len() as u32);
            out.push_back(tail.freeze());
        }
    }
}

/// `data` as non-final stored deflate blocks.
fn stored_blocks(data: &[u8], out: &mut BytesMut) {
    let mut pieces = data.chunks(STORED_MAX).peekable();
    if pieces.peek().is_none() {
        return;
    }
    for piece in pieces {
        let len = piece.len() as u16;
        out.put_u8(0x00);
        out.put_u16_le(len);
        out.put_u16_le(!len);
        out.put_slice(piece);
    }
}

/// `data` as one zstd frame of raw blocks, with its content size.
fn raw_zstd_frame(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 24);
    out.put_u32_le(0xFD2F_B528);
    let size = data.len() as u64;
    // Single segment (bit 5): the window is the content size, given in 1, 2, 4 or 8 bytes.
    if size < 256 {
        out.put_u8(0x20);
        out.put_u8(size as u8);
    } else if size < 65536 + 256 {
        out.put_u8(0x60);
        out.put_u16_le((size - 256) as u16);
    } else if size <= u64::from(u32::MAX) {
        out.put_u8(0xA0);
        out.put_u32_le(size as u32);
    } else {
        out.put_u8(0xE0);
        out.put_u64_le(size);
    }
    let mut blocks = data.chunks(ZSTD_BLOCK_MAX).peekable();
    if blocks.peek().is_none() {
        out.put_slice(&[0x01, 0x00, 0x00]); // one empty last raw block
    }
    while let Some(block) = blocks.next() {
        let last = u32::from(blocks.peek().is_none());
        let header = ((block.len() as u32) << 3) | last;
        out.put_slice(&header.to_le_bytes()[..3]);
        out.put_slice(block);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn concat(out: &VecDeque<Bytes>) -> Vec<u8> {
        out.iter().flat_map(|b| b.iter().copied()).collect()
    }

    fn pieces_of(encoder: &mut StreamEncoder, body: &Bytes, out: &mut VecDeque<Bytes>) {
        let variant = match encoder.encoding() {
            Encoding::Identity => None,
            e => Some(Bytes::from(compress_body(body, e, 3).unwrap())),
        };
        encoder.text(b"id: 1\ndata: {\"payload\":", out);
        encoder.body(body, variant, out);
        encoder.text(b"}\n\n", out);
        encoder.text(&vec![b'k'; 70_000], out);
        encoder.body(body, None, out);
        encoder.text(b"", out);
        encoder.finish(out);
    }

    fn expected(body: &[u8]) -> Vec<u8> {
        let mut want = b"id: 1\ndata: {\"payload\":".to_vec();
        want.extend_from_slice(body);
        want.extend_from_slice(b"}\n\n");
        want.extend_from_slice(&vec![b'k'; 70_000]);
        want.extend_from_slice(body);
        want
    }

    fn body() -> Bytes {
        let text: String = (0..40_000)
            .map(|i| format!("{{\"id\":\"{i}\"}},"))
            .collect();
        Bytes::from(text)
    }

    #[test]
    fn a_gzip_stream_of_spliced_pieces_decodes_to_the_texts_and_bodies() {
        let body = body();
        let mut out = VecDeque::new();
        pieces_of(&mut StreamEncoder::new(Encoding::Gzip), &body, &mut out);
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&concat(&out)[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, expected(&body));
    }

    #[test]
    fn a_zstd_stream_of_frames_decodes_to_the_texts_and_bodies() {
        let body = body();
        let mut out = VecDeque::new();
        pieces_of(&mut StreamEncoder::new(Encoding::Zstd), &body, &mut out);
        let decoded = zstd::decode_all(&concat(&out)[..]).unwrap();
        assert_eq!(decoded, expected(&body));
        for size in [0, 255, 256, 65_791, 65_792, 300_000] {
            let data = vec![b'x'; size];
            let frame = raw_zstd_frame(&data);
            assert_eq!(zstd::decode_all(&frame[..]).unwrap(), data, "size {size}");
        }
    }

    #[test]
    fn identity_is_the_pieces_themselves() {
        let body = body();
        let mut out = VecDeque::new();
        pieces_of(&mut StreamEncoder::new(Encoding::Identity), &body, &mut out);
        assert_eq!(concat(&out), expected(&body));
    }
}
