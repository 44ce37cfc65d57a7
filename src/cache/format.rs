//! The cache file's format and the layout of the `/fetch-data` body built from it.
//!
//! A cache file is `{"last_updated":..,"count":..,"columns":[..],"data":[..]}` (keys in any
//! order). The API sends it with [`BODY_PREFIX`] in place of the opening `{`; buffers keep
//! [`BODY_ROOM`] spare bytes in front of the document so that swap happens in place.

use anyhow::Context;
use serde::Deserialize;
use serde_json::value::RawValue;

/// What a `/fetch-data` body starts with; it replaces the cache file's opening `{`.
pub const BODY_PREFIX: &[u8] = b"{\"status\":\"success\",";

/// Spare bytes kept in front of the cache JSON in a buffer: room for [`BODY_PREFIX`].
pub const BODY_ROOM: usize = BODY_PREFIX.len() - 1;

/// The facts of a valid cache document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentFacts {
    pub last_updated: String,
    pub count: usize,
    /// A hash of the columns and the rows (as laid out in the document), for validators that
    /// follow the data rather than the sync time.
    pub data_hash: u64,
}

/// The fields of a cache file, checked while the data stays unparsed.
#[derive(Deserialize)]
struct CacheFileView<'a> {
    last_updated: String,
    count: usize,
    columns: Vec<String>,
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
}

/// Parses and checks a whole cache document: complete JSON, `count` equal to the records held,
/// at least one column, every record an object.
pub fn check_document(doc: &[u8]) -> anyhow::Result<DocumentFacts> {
    anyhow::ensure!(
        doc.iter().any(|b| !b.is_ascii_whitespace()),
        "the cache file is empty"
    );
    let view: CacheFileView<'_> = serde_json::from_slice(doc)
        .context("the cache file is not a complete cache JSON document")?;
    anyhow::ensure!(
        view.count == view.data.len(),
        "the cache file says count {} but holds {} records",
        view.count,
        view.data.len()
    );
    anyhow::ensure!(!view.columns.is_empty(), "the cache file lists no columns");
    if let Some(bad) = view.data.iter().position(|r| !r.get().starts_with('{')) {
        anyhow::bail!("record {bad} of the cache file is not a JSON object");
    }
    let mut hash = DataHasher::new(&view.columns);
    for record in &view.data {
        hash.record(record.get().as_bytes());
    }
    let data_hash = hash.finish(view.count);
    Ok(DocumentFacts {
        last_updated: view.last_updated,
        count: view.count,
        data_hash,
    })
}

/// The hash of a document's columns and records (each as laid out in compact JSON), for
/// validators that follow the data: computed by [`check_document`] from a parsed document, and
/// by the converter as it writes the records, with the same result.
pub struct DataHasher(std::collections::hash_map::DefaultHasher);

impl DataHasher {
    /// Starts the hash of a document with these columns.
    pub fn new(columns: &[String]) -> Self {
        use std::hash::Hasher;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for column in columns {
            h.write(column.as_bytes());
            h.write_u8(0);
        }
        Self(h)
    }

    /// Adds one record, its JSON object as written.
    pub fn record(&mut self, json: &[u8]) {
        use std::hash::Hasher;
        self.0.write(json);
        self.0.write_u8(0);
    }

    /// The hash, once the `count` records are added.
    pub fn finish(mut self, count: usize) -> u64 {
        use std::hash::Hasher;
        self.0.write_usize(count);
        self.0.finish()
    }
}

/// Formats a time as RFC 3339, as the cache's `last_updated` and each version's record hold it.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_may_come_in_any_order() {
        let doc =
            br#"{"data":[{"id":"1"},{"id":"2"}],"columns":["id"],"count":2,"last_updated":"T"}"#;
        assert_eq!(check_document(doc).unwrap().count, 2);
    }

    #[test]
    fn truncated_or_inconsistent_documents_are_refused() {
        let good = r#"{"last_updated":"T","count":1,"columns":["id"],"data":[{"id":"1"}]}"#;
        assert!(check_document(good.as_bytes()).is_ok());
        assert!(check_document(&good.as_bytes()[..good.len() - 2]).is_err());
        assert!(check_document(good.replace("\"count\":1", "\"count\":3").as_bytes()).is_err());
        assert!(check_document(b"  ").is_err());
    }
}
