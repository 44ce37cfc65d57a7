//! Where each row of a version sits in its body, and a hash of each row's text: what a row's
//! exported text is read from (`/tables?_values=text`, the rows of a change set) and what tells
//! a changed row from an unchanged one between two versions.
//!
//! A row's hash is over its object's bytes in the compact body, which the converter writes the
//! same way for the same cells (columns in order, one escaping), so two rows hash alike exactly
//! when their cells are alike, SQL NULL and the text `NULL` included.

use std::ops::Range;

use anyhow::{anyhow, Context};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The rows of one version's body.
#[derive(Debug)]
pub struct RowIndex {
    /// Where each row's object starts in the body, and its length.
    starts: Vec<u64>,
    lengths: Vec<u32>,
    /// The hash of each row's object.
    hashes: Vec<u64>,
}

/// The part of the cache document that holds the rows, each kept as its raw text.
#[derive(Deserialize)]
struct Document<'a> {
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
}

impl RowIndex {
    /// Finds and hashes the rows of the compact cache JSON `body`. Blocking: one read of the
    /// whole body.
    pub fn build(body: &[u8]) -> anyhow::Result<Self> {
        let document: Document =
            serde_json::from_slice(body).context("finding the rows in the version's body")?;
        let base = body.as_ptr() as usize;
        let rows = document.data.len();
        let mut index = Self {
            starts: Vec::with_capacity(rows),
            lengths: Vec::with_capacity(rows),
            hashes: Vec::with_capacity(rows),
        };
        for row in document.data {
            let text = row.get().as_bytes();
            let length =
                u32::try_from(text.len()).map_err(|_| anyhow!("a row of more than 4 GiB"))?;
            index.starts.push((text.as_ptr() as usize - base) as u64);
            index.lengths.push(length);
            index.hashes.push(xxhash_rust::xxh3::xxh3_64(text));
        }
        Ok(index)
    }

    /// An index whose rows are known already: where each starts in the body, its length and
    /// its hash (a merged version's, see [`super::merge`]).
    pub fn from_parts(starts: Vec<u64>, lengths: Vec<u32>, hashes: Vec<u64>) -> Self {
        Self {
            starts,
            lengths,
            hashes,
        }
    }

    /// Rows in the version.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Where row `row`'s object sits in the body.
    pub fn span(&self, row: usize) -> Option<Range<usize>> {
        let start = usize::try_from(*self.starts.get(row)?).ok()?;
        Some(start..start + *self.lengths.get(row)? as usize)
    }

    /// The hash of row `row`'s object.
    pub fn hash(&self, row: usize) -> Option<u64> {
        self.hashes.get(row).copied()
    }

    /// Bytes the index holds.
    pub fn memory_bytes(&self) -> usize {
        self.starts.capacity() * 8 + self.lengths.capacity() * 4 + self.hashes.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_row_and_tells_null_from_the_text_null() {
        let body = br#"{"columns":["a"],"data":[{"a":null},{"a":"NULL"},{"a":null},{"a":"x\"y"}]}"#;
        let index = RowIndex::build(body).unwrap();
        assert_eq!(index.len(), 4);
        assert_eq!(&body[index.span(1).unwrap()], br#"{"a":"NULL"}"#);
        assert_eq!(&body[index.span(3).unwrap()], br#"{"a":"x\"y"}"#);
        assert_eq!(index.hash(0), index.hash(2));
        assert_ne!(index.hash(0), index.hash(1));
        assert!(index.span(4).is_none());
    }
}
