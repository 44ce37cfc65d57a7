//! Converting the download while Chromium still writes it.
//!
//! Chromium writes a download to `NAME.crdownload` and renames it to `NAME` once complete: the
//! same file (inode), so a descriptor opened on the partial file reads the whole download. A
//! [`FollowedConversion`] reads it with a [`GrowingFile`] on a blocking thread, which waits at
//! the end of what is written so far. Only the async side, which watches the folder, knows when
//! the download is complete: it tells the reader the final size ([`FollowedConversion::finish`])
//! or tells it to give up ([`FollowedConversion::abandon`], also on drop and when the sync's
//! token fires), and the thread always ends soon after.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cache::format::rfc3339;
use crate::cache::{csv_to_cache_json, ConvertError, Converted};

/// How long the reader sleeps at the end of the bytes written so far before looking again.
const WAIT_FOR_BYTES: Duration = Duration::from_millis(5);

/// What the async side tells the reader.
#[derive(Debug, Default)]
struct Control {
    /// The download's final size, once it is complete.
    end: OnceLock<u64>,
    /// Fired to make the reader give up.
    stop: CancellationToken,
}

/// A file that is still being written, read to its final size: at the end of the bytes written
/// so far, [`Read::read`] waits for more until the final size is known and reached, and fails
/// when told to give up or when the final file turns out shorter than what was announced.
#[derive(Debug)]
pub struct GrowingFile {
    file: File,
    read: u64,
    control: Arc<Control>,
}

impl Read for GrowingFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.control.stop.is_cancelled() {
                return Err(io::Error::other(
                    "the download was abandoned before it completed",
                ));
            }
            let end = self.control.end.get().copied();
            let room = match end {
                Some(end) => buf.len().min(end.saturating_sub(self.read) as usize),
                None => buf.len(),
            };
            if room == 0 && !buf.is_empty() {
                return Ok(0);
            }
            let n = self.file.read(&mut buf[..room])?;
            if n > 0 {
                self.read += n as u64;
                return Ok(n);
            }
            if let Some(end) = end {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the download ends after {} bytes, {end} expected",
                        self.read
                    ),
                ));
            }
            // Only ever on a blocking thread (see `FollowedConversion::start`).
            std::thread::sleep(WAIT_FOR_BYTES);
        }
    }
}

/// The conversion of a download in progress, on a blocking thread of its own.
#[derive(Debug)]
pub struct FollowedConversion {
    control: Arc<Control>,
    task: Option<JoinHandle<Result<Converted, ConvertError>>>,
    /// The followed file's device and inode.
    identity: (u64, u64),
}

impl FollowedConversion {
    /// Starts converting `file` (opened on the download while it is written) into the cache's
    /// JSON, SQL NULL being `null_token`, with `json_capacity` bytes reserved for it (the
    /// download's size is not known yet). The reader gives up when `stop` fires.
    pub fn start(
        file: File,
        null_token: String,
        json_capacity: usize,
        stop: CancellationToken,
    ) -> io::Result<Self> {
        let meta = file.metadata()?;
        let control = Arc::new(Control {
            end: OnceLock::new(),
            stop,
        });
        let reader = GrowingFile {
            file,
            read: 0,
            control: Arc::clone(&control),
        };
        let task = tokio::task::spawn_blocking(move || {
            let now = OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            csv_to_cache_json(reader, Some(&null_token), &rfc3339(now), json_capacity)
        });
        Ok(Self {
            control,
            task: Some(task),
            identity: (meta.dev(), meta.ino()),
        })
    }

    /// Whether the file at `path` is the one being read (Chromium's rename keeps the inode).
    pub fn follows(&self, path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == self.identity)
    }

    /// Tells the reader the download is complete at `size` bytes and waits for the conversion.
    pub async fn finish(mut self, size: u64) -> anyhow::Result<Converted> {
        let _ = self.control.end.set(size);
        let task = self.task.take().expect("a conversion is joined once");
        task.await
            .context("the converter stopped")?
            .context("the exported CSV could not be converted")
    }

    /// Makes the reader give up and waits for its thread to end.
    pub async fn abandon(mut self) {
        self.control.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FollowedConversion {
    /// A conversion dropped unjoined (its sync was dropped) still ends its thread soon.
    fn drop(&mut self) {
        if self.task.is_some() {
            self.control.stop.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const CSV: &str =
        "\"id\",\"name\",\"note\"\n\"1\",\"a\",NULL~x\n\"2\",\"b, \"\"c\"\"\",\"two\nlines\"\n";

    fn rows(n: usize) -> String {
        let mut csv = String::from(CSV);
        for i in 3..n {
            csv.push_str(&format!("\"{i}\",\"name {i}\",\"note {i}\"\n"));
        }
        csv
    }

    fn whole(csv: &str) -> Vec<u8> {
        let c = csv_to_cache_json(csv.as_bytes(), Some("NULL~x"), "T", 0).unwrap();
        c.cache_bytes().to_vec()
    }

    /// The JSON without its `last_updated` stamp, which is the time of the conversion.
    fn unstamped(bytes: &[u8]) -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        v["last_updated"] = "T".into();
        v
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_file_written_in_pieces_and_renamed_converts_as_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("t.csv.crdownload");
        let done = dir.path().join("t.csv");
        let csv = rows(5000);
        let mut writer = File::create(&partial).unwrap();
        let conversion = FollowedConversion::start(
            File::open(&partial).unwrap(),
            "NULL~x".into(),
            0,
            CancellationToken::new(),
        )
        .unwrap();
        let bytes = csv.clone().into_bytes();
        let (from, to) = (partial.clone(), done.clone());
        std::thread::spawn(move || {
            // Pieces that cut fields, quotes and lines anywhere.
            for piece in bytes.chunks(7919) {
                writer.write_all(piece).unwrap();
                writer.flush().unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            std::fs::rename(from, to).unwrap();
        })
        .join()
        .unwrap();
        assert!(conversion.follows(&done));
        let size = std::fs::metadata(&done).unwrap().len();
        let converted = conversion.finish(size).await.unwrap();
        assert_eq!(converted.count, 4999);
        assert_eq!(
            unstamped(converted.cache_bytes()),
            unstamped(&whole(&csv)),
            "the same JSON as from the finished file"
        );
        let stamp = &converted.cache_bytes()[..40];
        assert!(
            std::str::from_utf8(stamp)
                .unwrap()
                .starts_with("{\"last_updated\":\""),
            "{stamp:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_conversion_waits_for_bytes_until_the_download_completes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv.crdownload");
        let mut writer = File::create(&path).unwrap();
        let conversion = FollowedConversion::start(
            File::open(&path).unwrap(),
            "NULL~x".into(),
            0,
            CancellationToken::new(),
        )
        .unwrap();
        let (head, tail) = CSV.split_at(30);
        writer.write_all(head.as_bytes()).unwrap();
        // The reader is at the end of the written bytes now, and must not take it as the end.
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer.write_all(tail.as_bytes()).unwrap();
        let converted = conversion.finish(CSV.len() as u64).await.unwrap();
        assert_eq!(unstamped(converted.cache_bytes()), unstamped(&whole(CSV)));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_abandoned_download_ends_its_reader_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv.crdownload");
        std::fs::write(&path, &CSV[..30]).unwrap();
        let control = Arc::new(Control::default());
        let mut reader = GrowingFile {
            file: File::open(&path).unwrap(),
            read: 0,
            control: Arc::clone(&control),
        };
        let reading = std::thread::spawn(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).map(|_| all)
        });
        std::thread::sleep(Duration::from_millis(30));
        control.stop.cancel();
        let err = reading.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("abandoned"), "{err}");

        // The same through a conversion, whose thread is joined.
        let conversion = FollowedConversion::start(
            File::open(&path).unwrap(),
            "NULL~x".into(),
            0,
            CancellationToken::new(),
        )
        .unwrap();
        conversion.abandon().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_sync_token_stops_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv.crdownload");
        std::fs::write(&path, &CSV[..30]).unwrap();
        let stop = CancellationToken::new();
        let conversion =
            FollowedConversion::start(File::open(&path).unwrap(), "NULL~x".into(), 0, stop.clone())
                .unwrap();
        stop.cancel();
        let err = conversion.finish(10_000).await.unwrap_err();
        assert!(format!("{err:#}").contains("abandoned"), "{err:#}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_download_shorter_than_its_final_size_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv.crdownload");
        std::fs::write(&path, CSV).unwrap();
        let conversion = FollowedConversion::start(
            File::open(&path).unwrap(),
            "NULL~x".into(),
            0,
            CancellationToken::new(),
        )
        .unwrap();
        let err = conversion.finish(CSV.len() as u64 + 100).await.unwrap_err();
        assert!(format!("{err:#}").contains("expected"), "{err:#}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_download_cut_inside_a_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv.crdownload");
        let cut = &CSV[..CSV.len() - 13];
        std::fs::write(&path, cut).unwrap();
        let conversion = FollowedConversion::start(
            File::open(&path).unwrap(),
            "NULL~x".into(),
            0,
            CancellationToken::new(),
        )
        .unwrap();
        // Chromium removes the partial file of a failed download: the descriptor still reads it.
        std::fs::remove_file(&path).unwrap();
        let err = conversion.finish(cut.len() as u64).await.unwrap_err();
        assert!(format!("{err:#}").contains("line 3"), "{err:#}");
    }
}
