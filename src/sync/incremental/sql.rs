//! The queries of incremental syncs, run by MySQL through phpMyAdmin's export, and the reading
//! of their small answers.
//!
//! Rows are grouped in buckets by their key: `CRC32(key text) % buckets`, where a composite
//! key's text is its parts joined by the unit separator (the text the typed view indexes
//! rows by), in UTF-8, so this process puts a held row in the same bucket as MySQL. Each bucket
//! is summed up by its row count and the XOR of its rows' 128-bit digests. A row's digest is the
//! first half of the SHA-256 of every column's text as `length:text`, or `~` for SQL NULL, so NULL and the text `NULL`, and values holding any
//! separator, never digest alike; this process computes the same digest from the rows it holds
//! ([`super::digest`]), so the sums it compares with are those of what it serves.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::cache::schema::ValueKind;

/// A bucket's sum: its rows, and the XOR of their digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketSum {
    pub rows: u64,
    pub digest: u128,
}

/// `name` as a MySQL identifier.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `text` as a MySQL string literal (quotes doubled, backslashes escaped).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

fn table(database: &str, table: &str) -> String {
    format!("{}.{}", ident(database), ident(table))
}

/// The key's text: the column, or the parts joined by the unit separator (CHAR(31)).
fn key_text(key: &[String]) -> String {
    match key {
        [one] => utf8(&ident(one)),
        parts => format!(
            "CONCAT_WS(CHAR(31 USING utf8mb4), {})",
            parts
                .iter()
                .map(|p| utf8(&ident(p)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// An expression's text in UTF-8, as the export writes it.
fn utf8(expression: &str) -> String {
    format!("CONVERT({expression} USING utf8mb4)")
}

/// The bucket of a key's text, as MySQL computes it in these queries.
pub fn bucket_of(key_text: &str, buckets: u32) -> u32 {
    crc32fast::hash(key_text.as_bytes()) % buckets
}

/// Each bucket's row count and digest sum, one row per bucket that holds rows:
/// `b`, `n`, `x` and `y` (the two 64-bit halves of the sum, in hex).
pub fn bucket_sums(
    database: &str,
    table_name: &str,
    key: &[String],
    columns: &[String],
    buckets: u32,
) -> String {
    let fields: Vec<String> = columns
        .iter()
        .map(|c| {
            // Not converted to UTF-8 (which doubles the query's time): a column in another
            // character set digests apart only in its rows with non-ASCII text, whose buckets
            // are then exported every time, never missed.
            let c = ident(c);
            format!("IFNULL(CONCAT(OCTET_LENGTH({c}), ':', {c}), '~')")
        })
        .collect();
    format!(
        "SELECT b, COUNT(*) AS n, \
         HEX(BIT_XOR(CAST(CONV(SUBSTRING(h, 1, 16), 16, 10) AS UNSIGNED))) AS x, \
         HEX(BIT_XOR(CAST(CONV(SUBSTRING(h, 17, 16), 16, 10) AS UNSIGNED))) AS y \
         FROM (SELECT CRC32({}) % {buckets} AS b, SHA2(CONCAT({}), 256) AS h FROM {}) AS r \
         GROUP BY b",
        key_text(key),
        fields.join(", "),
        table(database, table_name)
    )
}

/// Every row of the buckets `which` (of `buckets`).
pub fn rows_in_buckets(
    database: &str,
    table_name: &str,
    key: &[String],
    buckets: u32,
    which: &[u32],
) -> String {
    in_buckets("*", database, table_name, key, buckets, which)
}

/// The keys of the rows of the buckets `which` (of `buckets`).
pub fn keys_in_buckets(
    database: &str,
    table_name: &str,
    key: &[String],
    buckets: u32,
    which: &[u32],
) -> String {
    let parts: Vec<String> = key.iter().map(|k| ident(k)).collect();
    in_buckets(&parts.join(", "), database, table_name, key, buckets, which)
}

/// `SELECT columns` of the rows whose key falls in the buckets `which` (of `buckets`).
fn in_buckets(
    columns: &str,
    database: &str,
    table_name: &str,
    key: &[String],
    buckets: u32,
    which: &[u32],
) -> String {
    let list: Vec<String> = which.iter().map(u32::to_string).collect();
    format!(
        "SELECT {columns} FROM {} WHERE CRC32({}) % {buckets} IN ({})",
        table(database, table_name),
        key_text(key),
        list.join(",")
    )
}

/// The cursor's highest value (`mark`): one look at an index on the cursor column. (The row
/// count comes from the key sums, which read every key anyway.)
pub fn cursor_mark(database: &str, table_name: &str, cursor: &str) -> String {
    format!(
        "SELECT MAX({}) AS mark FROM {}",
        ident(cursor),
        table(database, table_name)
    )
}

/// Every row whose cursor is at or after `mark` less `overlap`, or has no cursor value.
pub fn rows_since(
    database: &str,
    table_name: &str,
    cursor: &str,
    kind: ValueKind,
    mark: &str,
    overlap: Duration,
) -> anyhow::Result<String> {
    let c = ident(cursor);
    let from = match kind {
        ValueKind::Date | ValueKind::DateTime => {
            format!("{} - INTERVAL {} SECOND", literal(mark), overlap.as_secs())
        }
        ValueKind::Integer | ValueKind::Unsigned => {
            let value: i128 = mark
                .trim()
                .parse()
                .with_context(|| format!("the cursor's last value {mark:?} is not an integer"))?;
            (value - i128::from(u32::try_from(overlap.as_secs()).unwrap_or(u32::MAX))).to_string()
        }
        ValueKind::Decimal { .. } => {
            let mark = mark.trim();
            let digits = mark.strip_prefix('-').unwrap_or(mark);
            let number = !digits.is_empty()
                && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
                && mark.parse::<f64>().is_ok();
            anyhow::ensure!(number, "the cursor's last value {mark:?} is not a number");
            format!("{mark} - {}", overlap.as_secs())
        }
        ValueKind::Double => {
            let value: f64 = mark
                .trim()
                .parse()
                .with_context(|| format!("the cursor's last value {mark:?} is not a number"))?;
            format!("{:?}", value - overlap.as_secs_f64())
        }
        ValueKind::Text => bail!(
            "SYNC_CURSOR names `{cursor}`, a text column: a cursor must be a date, time or number"
        ),
    };
    Ok(format!(
        "SELECT * FROM {} WHERE {c} >= {from} OR {c} IS NULL",
        table(database, table_name)
    ))
}

/// A small export as read: its header's names, then its rows.
pub type Table = (Vec<String>, Vec<Vec<Option<String>>>);

/// Reads CSV with a header row: the header's names, then the rows (SQL NULL as `None`).
pub fn read_csv(text: &str, null_token: &str) -> anyhow::Result<Table> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(false)
        .from_reader(text.as_bytes());
    let mut records = reader.records();
    let header: Vec<String> = match records.next() {
        Some(r) => r
            .context("reading the export's header")?
            .iter()
            .map(str::to_owned)
            .collect(),
        None => bail!("the export is empty: no header row"),
    };
    let mut rows = Vec::new();
    for record in records {
        let record = record.context("reading the export")?;
        rows.push(
            record
                .iter()
                .map(|f| (f != null_token).then(|| f.to_owned()))
                .collect(),
        );
    }
    Ok((header, rows))
}

/// The bucket sums of a [`bucket_sums`] export, by bucket.
pub fn read_bucket_sums(
    text: &str,
    null_token: &str,
    buckets: u32,
) -> anyhow::Result<Vec<BucketSum>> {
    let (header, rows) = read_csv(text, null_token)?;
    anyhow::ensure!(
        header == ["b", "n", "x", "y"],
        "the bucket sums came with the columns {header:?}"
    );
    let mut sums = vec![BucketSum::default(); buckets as usize];
    for row in rows {
        let field = |i: usize| -> anyhow::Result<&str> {
            row.get(i)
                .and_then(|v| v.as_deref())
                .ok_or_else(|| anyhow!("a bucket sum lacks a value"))
        };
        let bucket: u32 = field(0)?.parse().context("a bucket number")?;
        let sum = sums
            .get_mut(bucket as usize)
            .ok_or_else(|| anyhow!("bucket {bucket} is out of range"))?;
        let half = |i| u64::from_str_radix(field(i)?, 16).context("a digest sum");
        *sum = BucketSum {
            rows: field(1)?.parse().context("a bucket's row count")?,
            digest: (u128::from(half(2)?) << 64) | u128::from(half(3)?),
        };
    }
    Ok(sums)
}

/// How many buckets a table of about `rows` rows is summed in: about 16 rows each (a changed
/// row costs its bucket's rows in the next export), at least 64, at most 2^18.
pub fn buckets_for(rows: usize) -> u32 {
    ((rows / 16).max(64).next_power_of_two()).min(1 << 18) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_texts_are_quoted() {
        assert_eq!(ident("a`b"), "`a``b`");
        assert_eq!(literal(r"it's \ok"), r"'it''s \\ok'");
        assert_eq!(
            keys_in_buckets("shop", "orders", &["a".into()], 8, &[3]),
            "SELECT `a` FROM `shop`.`orders` WHERE CRC32(CONVERT(`a` USING utf8mb4)) % 8 IN (3)"
        );
        assert_eq!(
            rows_in_buckets("shop", "orders", &["a".into(), "b".into()], 64, &[1, 7]),
            "SELECT * FROM `shop`.`orders` WHERE CRC32(CONCAT_WS(CHAR(31 USING utf8mb4), \
             CONVERT(`a` USING utf8mb4), CONVERT(`b` USING utf8mb4))) % 64 IN (1,7)"
        );
    }

    #[test]
    fn cursor_queries_follow_the_column_type() {
        let five = Duration::from_secs(300);
        let q = rows_since(
            "s",
            "t",
            "u",
            ValueKind::DateTime,
            "2026-01-01 00:00:00",
            five,
        )
        .unwrap();
        assert!(
            q.ends_with("WHERE `u` >= '2026-01-01 00:00:00' - INTERVAL 300 SECOND OR `u` IS NULL"),
            "{q}"
        );
        let q = rows_since("s", "t", "u", ValueKind::Integer, "1000", five).unwrap();
        assert!(q.contains("`u` >= 700 OR"), "{q}");
        let decimal = ValueKind::Decimal {
            precision: 10,
            scale: 2,
        };
        let q = rows_since("s", "t", "u", decimal, "12.50", five).unwrap();
        assert!(q.contains("`u` >= 12.50 - 300 OR"), "{q}");
        assert!(rows_since("s", "t", "u", decimal, "1)--", five).is_err());
        assert!(rows_since("s", "t", "u", ValueKind::Integer, "1; DROP", five).is_err());
        assert!(rows_since("s", "t", "u", ValueKind::Text, "x", five).is_err());
    }

    #[test]
    fn bucket_sums_are_read_by_bucket() {
        let csv = "\"b\",\"n\",\"x\",\"y\"\n\"3\",\"2\",\"FF\",\"1\"\n";
        let sums = read_bucket_sums(csv, "NULL~t", 4).unwrap();
        assert_eq!(
            sums[3],
            BucketSum {
                rows: 2,
                digest: (0xFF << 64) | 1
            }
        );
        assert_eq!(sums[0], BucketSum::default());
        assert!(
            read_bucket_sums("\"b\",\"n\",\"x\",\"y\"\n\"9\",\"1\",\"0\",\"0\"\n", "N", 4).is_err()
        );
        assert!(read_bucket_sums("\"id\"\n", "N", 4).is_err());
    }

    #[test]
    fn buckets_grow_with_the_table() {
        assert_eq!(buckets_for(0), 64);
        assert_eq!(buckets_for(102_052), 8192);
        assert_eq!(buckets_for(1_020_520), 65_536);
        assert_eq!(buckets_for(usize::MAX / 2), 1 << 18);
        // MySQL's CRC32 is the IEEE CRC-32 of the text's bytes.
        assert_eq!(crc32fast::hash(b"123"), 0x884863D2);
    }
}
