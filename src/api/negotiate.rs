//! Content negotiation: which encoding an answer goes in, from `Accept-Encoding` and the
//! variants a snapshot has.

use axum::http::HeaderValue;

use crate::cache::{Encoding, Snapshot};

/// The q-value `accept` gives `encoding` (0 when not accepted).
pub fn quality(accept: Option<&HeaderValue>, encoding: Encoding) -> f32 {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return 0.0;
    };
    let mut wildcard = None;
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let name = parts.next().unwrap_or("");
        let q = parts
            .find_map(|p| p.strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case(encoding.token()) {
            return q;
        }
        if name == "*" {
            wildcard = Some(q);
        }
    }
    wildcard.unwrap_or(0.0)
}

/// The encoding to answer in: the highest q-value among zstd and gzip; on a tie, the smaller
/// of the two built variants (zstd when not both are built yet).
pub fn accepted_encoding(accept: Option<&HeaderValue>, snapshot: Option<&Snapshot>) -> Encoding {
    let size = |e: Encoding| snapshot.and_then(|s| s.encoded(e)).map(|b| b.len());
    let mut best = (Encoding::Identity, 0.0f32);
    for encoding in [Encoding::Zstd, Encoding::Gzip] {
        let q = quality(accept, encoding);
        if q <= 0.0 {
            continue;
        }
        let smaller = match (size(encoding), size(best.0)) {
            (Some(mine), Some(theirs)) => mine < theirs,
            _ => false,
        };
        if q > best.1 || (q == best.1 && smaller) {
            best = (encoding, q);
        }
    }
    best.0
}
