//! Content encodings for streamed answers (event streams, `?refresh=true`) that reuse the
//! snapshot's precompressed body.
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

use bytes::{BufMut, Bytes, BytesMut};

use crate::cache::snapshot::GZIP_HEADER;
use crate::cache::{Encoding, Snapshot};

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

    /// Appends the snapshot's body after its opening `{` (gzip only, from the gzip variant),
    /// for answers that put their own fields first.
    pub fn body_after_brace(&mut self, snapshot: &Snapshot, out: &mut VecDeque<Bytes>) -> bool {
        let Self::Gzip { crc, header_sent } = self else {
            return false;
        };
        let Some((deflate, rest_crc)) = snapshot.deflate_after_brace() else {
            return false;
        };
        if !std::mem::replace(header_sent, true) {
            out.push_back(Bytes::from_static(&GZIP_HEADER));
        }
        crc.combine(&crc32fast::Hasher::new_with_initial_len(
            rest_crc,
            snapshot.body.len() as u64 - 1,
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
                let (deflate, body_crc) = Snapshot::deflate_part(&gzip);
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
    use crate::cache::snapshot::compress_body;
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
