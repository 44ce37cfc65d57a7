//! The bucket sums of the rows this process holds, computed as MySQL computes them in
//! [`super::sql::bucket_sums`]: what an incremental sync compares MySQL's sums with. Summing what
//! is held (rather than keeping MySQL's sums from before the last export) means a row that
//! changed while it was exported, even back to its old value, differs at the next sync.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;

use anyhow::anyhow;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use sha2::{Digest, Sha256};

use super::sql::{bucket_of, BucketSum};
use crate::cache::rows::RowIndex;

/// The digest of one row, from its values in column order (`None`: SQL NULL): the first 128
/// bits of the SHA-256 of each value as `length:text` (length in bytes) or `~`.
pub fn row_digest(values: &[Option<Cow<'_, str>>]) -> u128 {
    let mut hasher = Sha256::new();
    let mut length = [0u8; 24];
    for value in values {
        match value {
            None => hasher.update(b"~"),
            Some(text) => {
                let mut at = &mut length[..];
                let _ = write!(at, "{}:", text.len());
                let used = 24 - at.len();
                hasher.update(&length[..used]);
                hasher.update(text.as_bytes());
            }
        }
    }
    let digest = hasher.finalize();
    u128::from_be_bytes(digest[..16].try_into().expect("SHA-256 has 32 bytes"))
}

/// The digest of a key's columns alone, from its text (parts joined by the unit separator):
/// what MySQL's sums over the key columns hold for its row.
pub fn key_digest(key: &str) -> u128 {
    let parts: Vec<Option<Cow<'_, str>>> = key
        .split(crate::cache::typed::KEY_SEPARATOR)
        .map(|p| Some(Cow::Borrowed(p)))
        .collect();
    row_digest(&parts)
}

/// The sums of `keys` (key texts) in `buckets` buckets, by their key columns alone.
pub fn key_sums(keys: &[&str], buckets: u32) -> Vec<BucketSum> {
    let mut sums = vec![BucketSum::default(); buckets as usize];
    for key in keys {
        let sum = &mut sums[bucket_of(key, buckets) as usize];
        sum.rows += 1;
        sum.digest ^= key_digest(key);
    }
    sums
}

/// The values of one row object of a body, in order.
fn row_values(row: &[u8]) -> anyhow::Result<Vec<Option<Cow<'_, str>>>> {
    let mut de = serde_json::Deserializer::from_slice(row);
    let values = de.deserialize_map(RowVisitor)?;
    Ok(values)
}

struct RowVisitor;

impl<'de> Visitor<'de> for RowVisitor {
    type Value = Vec<Option<Cow<'de, str>>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = Vec::with_capacity(map.size_hint().unwrap_or(16));
        while map.next_key::<de::IgnoredAny>()?.is_some() {
            values.push(map.next_value::<Option<Text<'de>>>()?.map(|t| t.0));
        }
        Ok(values)
    }
}

/// A string value, borrowed from the body when it holds no escape.
struct Text<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

/// The sums, in `buckets` buckets, of the rows of `body` (with its row index and each row's key
/// text) for which `counted(row)` holds, on up to `workers` threads. Blocking.
pub fn sums_of(
    body: &[u8],
    rows: &RowIndex,
    keys: &[&str],
    buckets: u32,
    counted: &(dyn Fn(usize) -> bool + Sync),
    workers: usize,
) -> anyhow::Result<Vec<BucketSum>> {
    anyhow::ensure!(keys.len() == rows.len(), "a key for every row");
    let workers = workers.clamp(1, 16);
    let per = rows.len().div_ceil(workers).max(1);
    let parts: Vec<anyhow::Result<Vec<BucketSum>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || -> anyhow::Result<Vec<BucketSum>> {
                    let mut sums = vec![BucketSum::default(); buckets as usize];
                    for row in (w * per)..((w + 1) * per).min(rows.len()) {
                        if !counted(row) {
                            continue;
                        }
                        let span = rows.span(row).ok_or_else(|| anyhow!("row {row}"))?;
                        let values = row_values(&body[span])?;
                        let sum = &mut sums[bucket_of(keys[row], buckets) as usize];
                        sum.rows += 1;
                        sum.digest ^= row_digest(&values);
                    }
                    Ok(sums)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a digest thread panicked")))
            })
            .collect()
    });
    let mut total = vec![BucketSum::default(); buckets as usize];
    for part in parts {
        for (sum, add) in total.iter_mut().zip(part?) {
            sum.rows += add.rows;
            sum.digest ^= add.digest;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_the_text_null_and_separators_digest_apart() {
        let row = |values: &[Option<&str>]| {
            row_digest(
                &values
                    .iter()
                    .map(|v| v.map(Cow::Borrowed))
                    .collect::<Vec<_>>(),
            )
        };
        assert_ne!(row(&[None]), row(&[Some("NULL")]));
        assert_ne!(row(&[Some("a:b"), Some("")]), row(&[Some("a"), Some("b")]));
        assert_ne!(row(&[Some("")]), row(&[None]));
        // MySQL: SHA2(CONCAT('1:', 'x', '~'), 256) starts with this (checked on MariaDB 10.11).
        let mut sha = Sha256::new();
        sha.update(b"1:x~");
        let want = u128::from_be_bytes(sha.finalize()[..16].try_into().unwrap());
        assert_eq!(row(&[Some("x"), None]), want);
    }

    #[test]
    fn a_bodys_rows_are_summed_by_bucket() {
        let body = br#"{"data":[{"id":"1","n":null},{"id":"2","n":"a\"b"}]}"#;
        let rows = RowIndex::build(body).unwrap();
        let sums = sums_of(body, &rows, &["1", "2"], 4, &|_| true, 2).unwrap();
        let mut want = vec![BucketSum::default(); 4];
        for (key, values) in [
            ("1", vec![Some("1".into()), None]),
            ("2", vec![Some("2".into()), Some("a\"b".into())]),
        ] {
            let sum = &mut want[bucket_of(key, 4) as usize];
            sum.rows += 1;
            sum.digest ^= row_digest(&values);
        }
        assert_eq!(sums, want);
        let only_first = sums_of(body, &rows, &["1", "2"], 4, &|r| r == 0, 1).unwrap();
        assert_eq!(only_first.iter().map(|s| s.rows).sum::<u64>(), 1);
        assert_eq!(
            only_first[bucket_of("1", 4) as usize].digest,
            row_digest(&[Some("1".into()), None])
        );
    }
}
