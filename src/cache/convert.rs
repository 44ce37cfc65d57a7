//! CSV to cache JSON, as one streaming pass.
//!
//! The output is the cache file (`{"last_updated":..,"count":..,"columns":[..],"data":[..]}`)
//! built in memory behind [`BODY_ROOM`] spare bytes, so the API can turn the very same buffer into
//! its response body without copying 80 MB (see [`crate::cache::Snapshot::from_cache_buffer`]).
//! Every value is kept byte for byte; only fields equal to the NULL token become `null`.

use std::io::Read;

use super::format::{DataHasher, BODY_ROOM};

/// Digits reserved for `count` until the number of rows is known.
const COUNT_ROOM: usize = 20;

/// Why a CSV file could not be converted. Nothing is written when this happens.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("the CSV file is empty: it needs a header row with the column names")]
    NoHeader,
    #[error("the CSV header has no columns")]
    NoColumns,
    #[error("the CSV header names column {0:?} twice")]
    DuplicateColumn(String),
    #[error("line {line}: expected {expected} fields (one per column), found {found}")]
    WrongFieldCount {
        line: u64,
        expected: usize,
        found: usize,
    },
    #[error("line {line}: column {column:?} is not valid UTF-8")]
    InvalidUtf8 { line: u64, column: String },
    #[error("line {line}: {message}")]
    Csv { line: u64, message: String },
    #[error("reading the CSV failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A converted table: the cache file's bytes at `buf[BODY_ROOM..]`.
#[derive(Debug)]
pub struct Converted {
    pub buf: Vec<u8>,
    pub count: usize,
    pub columns: Vec<String>,
    pub last_updated: String,
    /// The hash of the columns and records (see [`DataHasher`]).
    pub data_hash: u64,
    /// How a merged table was made (see [`super::merge`]), so that its rows' index and typed
    /// view come from the merge instead of a read of the whole body.
    pub merged: Option<Box<super::merge::MergedParts>>,
}

impl Converted {
    /// The cache file's bytes.
    pub fn cache_bytes(&self) -> &[u8] {
        &self.buf[BODY_ROOM..]
    }
}

/// Bytes to reserve for the JSON of a CSV file of `csv_bytes`: JSON is about 2.3x the CSV for
/// typical tables, so most inputs need one allocation.
pub fn json_capacity_for_csv(csv_bytes: usize) -> usize {
    csv_bytes.saturating_mul(5) / 2 + 4096
}

/// Converts CSV (first row = column names) into cache JSON stamped `last_updated`.
/// Fields exactly equal to `null_token` become `null`; with `None`, every field is a string.
/// `json_capacity` is reserved up front (see [`json_capacity_for_csv`]): growing the buffer
/// later copies it, and holds the old and the new buffer at once for a moment.
pub fn csv_to_cache_json(
    reader: impl Read,
    null_token: Option<&str>,
    last_updated: &str,
    json_capacity: usize,
) -> Result<Converted, ConvertError> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_reader(reader);
    let mut record = csv::ByteRecord::new();

    if !read_record(&mut csv, &mut record)? {
        return Err(ConvertError::NoHeader);
    }
    let columns = header_columns(&record)?;
    // `"name":` for every column, escaped once.
    let keys: Vec<Vec<u8>> = columns
        .iter()
        .map(|c| {
            let mut k = Vec::with_capacity(c.len() + 3);
            push_json_string(&mut k, c.as_bytes());
            k.push(b':');
            k
        })
        .collect();
    let keys_len: usize = keys.iter().map(Vec::len).sum();

    let mut buf = Vec::with_capacity(BODY_ROOM + json_capacity);
    buf.resize(BODY_ROOM, b' ');
    buf.extend_from_slice(b"{\"last_updated\":");
    push_json_string(&mut buf, last_updated.as_bytes());
    buf.extend_from_slice(b",\"count\":");
    let count_at = buf.len();
    buf.resize(count_at + COUNT_ROOM, b' ');
    buf.extend_from_slice(b",\"columns\":[");
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        push_json_string(&mut buf, c.as_bytes());
    }
    buf.extend_from_slice(b"],\"data\":[");

    let null = null_token.map(str::as_bytes);
    let mut hash = DataHasher::new(&columns);
    let mut count = 0usize;
    while read_record(&mut csv, &mut record)? {
        let line = line_of(&record);
        if record.len() != columns.len() {
            // A blank line at the end of a file is not a record.
            if record.len() == 1 && record[0].is_empty() {
                continue;
            }
            return Err(ConvertError::WrongFieldCount {
                line,
                expected: columns.len(),
                found: record.len(),
            });
        }
        if let Some(i) = first_invalid_utf8_field(&record) {
            return Err(ConvertError::InvalidUtf8 {
                line,
                column: columns[i].clone(),
            });
        }
        buf.reserve(record.as_slice().len() + keys_len + 2 * record.len() + 8);
        if count > 0 {
            buf.push(b',');
        }
        let record_at = buf.len();
        buf.push(b'{');
        for (i, (field, key)) in record.iter().zip(&keys).enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(key);
            if Some(field) == null {
                buf.extend_from_slice(b"null");
            } else {
                push_json_string(&mut buf, field);
            }
        }
        buf.push(b'}');
        hash.record(&buf[record_at..]);
        count += 1;
    }
    buf.extend_from_slice(b"]}");
    close_count_room(&mut buf, count_at, count);
    Ok(Converted {
        buf,
        count,
        columns,
        last_updated: last_updated.to_owned(),
        data_hash: hash.finish(count),
        merged: None,
    })
}

fn read_record<R: Read>(
    csv: &mut csv::Reader<R>,
    record: &mut csv::ByteRecord,
) -> Result<bool, ConvertError> {
    csv.read_byte_record(record).map_err(|e| {
        let line = e.position().map(|p| p.line()).unwrap_or(0);
        match e.into_kind() {
            csv::ErrorKind::Io(io) => ConvertError::Io(io),
            other => ConvertError::Csv {
                line,
                message: format!("{other:?}"),
            },
        }
    })
}

fn line_of(record: &csv::ByteRecord) -> u64 {
    record.position().map(|p| p.line()).unwrap_or(0)
}

fn header_columns(record: &csv::ByteRecord) -> Result<Vec<String>, ConvertError> {
    let mut columns = Vec::with_capacity(record.len());
    for field in record {
        let name = std::str::from_utf8(field).map_err(|_| ConvertError::InvalidUtf8 {
            line: 1,
            column: String::from_utf8_lossy(field).into_owned(),
        })?;
        if columns.iter().any(|c| c == name) {
            return Err(ConvertError::DuplicateColumn(name.to_owned()));
        }
        columns.push(name.to_owned());
    }
    if columns.is_empty() || (columns.len() == 1 && columns[0].is_empty()) {
        return Err(ConvertError::NoColumns);
    }
    Ok(columns)
}

/// The index of the first field that is not valid UTF-8, if any. Validates the record's bytes
/// at once: when they are valid, a field can only be invalid by starting inside a character
/// split across two fields, that is, with a continuation byte.
fn first_invalid_utf8_field(record: &csv::ByteRecord) -> Option<usize> {
    let all_valid = std::str::from_utf8(record.as_slice()).is_ok()
        && record
            .iter()
            .all(|f| f.first().is_none_or(|&b| !is_continuation(b)));
    if all_valid {
        return None;
    }
    record.iter().position(|f| std::str::from_utf8(f).is_err())
}

fn is_continuation(byte: u8) -> bool {
    byte & 0xC0 == 0x80
}

/// Writes `count` into the room reserved for it and closes the gap.
fn close_count_room(buf: &mut Vec<u8>, at: usize, count: usize) {
    let digits = count.to_string();
    let end = at + COUNT_ROOM;
    buf[at..at + digits.len()].copy_from_slice(digits.as_bytes());
    buf.copy_within(end.., at + digits.len());
    buf.truncate(buf.len() - (COUNT_ROOM - digits.len()));
}

/// Bytes that cannot stand as themselves in a JSON string.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Appends `s` (valid UTF-8) as a JSON string literal.
pub fn push_json_string(buf: &mut Vec<u8>, s: &[u8]) {
    buf.push(b'"');
    if !s.iter().any(|&b| NEEDS_ESCAPE[b as usize]) {
        buf.extend_from_slice(s);
        buf.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => {
                buf.extend_from_slice(&s[start..i]);
                buf.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        buf.extend_from_slice(&s[start..i]);
        buf.extend_from_slice(escape);
        start = i + 1;
    }
    buf.extend_from_slice(&s[start..]);
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn convert(csv: &str, null: Option<&str>) -> Result<Value, ConvertError> {
        let capacity = json_capacity_for_csv(csv.len());
        let c = csv_to_cache_json(csv.as_bytes(), null, "2026-01-02T03:04:05Z", capacity)?;
        let v: Value = serde_json::from_slice(c.cache_bytes()).expect("output is JSON");
        assert_eq!(v["count"], c.count);
        Ok(v)
    }

    #[test]
    fn the_cache_file_has_the_documented_shape_and_key_order() {
        let c = csv_to_cache_json("id,name\n1,a\n".as_bytes(), None, "T", 0).unwrap();
        assert_eq!(
            std::str::from_utf8(c.cache_bytes()).unwrap(),
            r#"{"last_updated":"T","count":1,"columns":["id","name"],"data":[{"id":"1","name":"a"}]}"#
        );
    }

    #[test]
    fn quotes_commas_newlines_and_crlf_survive() {
        let csv =
            "id,text\r\n1,\"say \"\"hi\"\", ok\"\r\n2,\"two\nlines\"\r\n3,\"crlf\r\ninside\"\r\n";
        let v = convert(csv, None).unwrap();
        assert_eq!(v["data"][0]["text"], "say \"hi\", ok");
        assert_eq!(v["data"][1]["text"], "two\nlines");
        assert_eq!(v["data"][2]["text"], "crlf\r\ninside");
        assert_eq!(v["count"], 3);
    }

    #[test]
    fn unicode_tabs_backslashes_and_control_characters_round_trip() {
        let text = "caf\u{e9} \u{1F680}\ttab \\n back\\slash \u{1}";
        let csv = format!("id,text\n1,\"{text}\"\n");
        let v = convert(&csv, None).unwrap();
        assert_eq!(v["data"][0]["text"], text);
    }

    #[test]
    fn empty_fields_stay_empty_strings_without_a_null_token() {
        let v = convert("a,b\n,NULL\n", None).unwrap();
        assert_eq!(v["data"][0], json!({"a": "", "b": "NULL"}));
    }

    #[test]
    fn only_fields_equal_to_the_null_token_become_null() {
        let v = convert("a,b,c\nTOK,NULL,\"TOK \"\n", Some("TOK")).unwrap();
        assert_eq!(v["data"][0], json!({"a": null, "b": "NULL", "c": "TOK "}));
    }

    #[test]
    fn a_row_with_the_wrong_number_of_fields_names_its_line() {
        let err = convert("a,b\n1,2\n3\n", None).unwrap_err();
        assert!(
            matches!(
                err,
                ConvertError::WrongFieldCount {
                    line: 3,
                    expected: 2,
                    found: 1
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "line 3: expected 2 fields (one per column), found 1"
        );
    }

    #[test]
    fn a_line_after_a_multiline_field_is_counted_right() {
        let err = convert("a,b\n1,\"x\ny\"\n1,2,3\n", None).unwrap_err();
        assert!(err.to_string().starts_with("line 4:"), "{err}");
    }

    #[test]
    fn an_empty_file_and_duplicate_columns_are_refused() {
        assert!(matches!(convert("", None), Err(ConvertError::NoHeader)));
        assert!(matches!(
            convert("a,a\n1,2\n", None),
            Err(ConvertError::DuplicateColumn(_))
        ));
    }

    #[test]
    fn invalid_utf8_is_refused_with_its_column() {
        let mut csv = b"a,b\n1,".to_vec();
        csv.extend_from_slice(&[0xff, 0xfe, b'\n']);
        let err = csv_to_cache_json(&csv[..], None, "T", 0).unwrap_err();
        assert!(matches!(err, ConvertError::InvalidUtf8 { line: 2, ref column } if column == "b"));
    }

    #[test]
    fn a_character_split_across_two_fields_is_invalid() {
        // "é" is C3 A9: each half alone is invalid, though the record's bytes together are not.
        let csv = b"a,b\n\xc3,\xa9\n";
        let err = csv_to_cache_json(&csv[..], None, "T", 0).unwrap_err();
        assert!(
            matches!(err, ConvertError::InvalidUtf8 { line: 2, ref column } if column == "a"),
            "{err}"
        );
    }

    #[test]
    fn a_header_only_file_gives_zero_rows_and_a_trailing_blank_line_is_ignored() {
        let v = convert("a,b\n", None).unwrap();
        assert_eq!(v["count"], 0);
        assert_eq!(v["data"], json!([]));
        let v = convert("a,b\n1,2\n\n", None).unwrap();
        assert_eq!(v["count"], 1);
    }

    #[test]
    fn column_order_is_kept_in_every_record() {
        let c = csv_to_cache_json("z,a,m\n1,2,3\n".as_bytes(), None, "T", 0).unwrap();
        let text = std::str::from_utf8(c.cache_bytes()).unwrap();
        assert!(text.contains(r#"{"z":"1","a":"2","m":"3"}"#), "{text}");
    }
}
