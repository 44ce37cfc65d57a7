//! The cache file on disk: atomic, durable replacement and reading.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context;

use super::convert::BODY_ROOM;

/// Identifies one version of the cache file, to notice when another process replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

impl FileStamp {
    fn from_metadata(m: &fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.modified().ok(),
        }
    }

    /// The stamp of the file at `path`, or `None` if there is no file.
    pub fn of(path: &Path) -> std::io::Result<Option<Self>> {
        match fs::metadata(path) {
            Ok(m) => Ok(Some(Self::from_metadata(&m))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Replaces `path` with `contents` so that a reader, or a crash at any moment, sees the old file
/// or the new one, never a mix: write a temporary file in the same folder, fsync it, rename it
/// over the target, fsync the folder.
pub fn write_atomic(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let dir = crate::config::cache_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".pma-cache-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(contents)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write a temporary file in {}", dir.display()))?;
    // Other processes (a separate `serve`) read this file.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))?;
    tmp.persist(path)
        .with_context(|| format!("cannot rename the new cache over {}", path.display()))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync the folder {}", dir.display()))?;
    Ok(())
}

/// Reads the cache file into a buffer with [`BODY_ROOM`] spare bytes in front, with the stamp
/// of the version read. `Ok(None)` when there is no file.
pub fn read_cache_buffer(path: &Path) -> anyhow::Result<Option<(Vec<u8>, FileStamp)>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let meta = file.metadata()?;
    let stamp = FileStamp::from_metadata(&meta);
    let mut buf = Vec::with_capacity(BODY_ROOM + meta.len() as usize + 1);
    buf.resize(BODY_ROOM, b' ');
    file.read_to_end(&mut buf)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some((buf, stamp)))
}

/// The row count of the cache file, read from its first bytes (`count` comes second in the files
/// this crate writes) without loading the data. `None` when there is no readable count.
pub fn read_row_count(path: &Path) -> Option<usize> {
    let mut head = [0u8; 4096];
    let mut file = File::open(path).ok()?;
    let n = file.read(&mut head).ok()?;
    let text = std::str::from_utf8(&head[..n]).ok()?;
    let after = text.split_once("\"count\":")?.1;
    let digits: &str = &after[..after.find(|c: char| !c.is_ascii_digit())?];
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn the_row_count_is_read_from_the_head_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        assert_eq!(read_row_count(&path), None);
        fs::write(
            &path,
            r#"{"last_updated":"T","count":102052,"columns":[],"data":[]}"#,
        )
        .unwrap();
        assert_eq!(read_row_count(&path), Some(102052));
        fs::write(&path, "garbage").unwrap();
        assert_eq!(read_row_count(&path), None);
    }

    #[test]
    fn a_new_version_has_a_new_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        assert_eq!(FileStamp::of(&path).unwrap(), None);
        write_atomic(&path, b"one").unwrap();
        let first = FileStamp::of(&path).unwrap();
        write_atomic(&path, b"one").unwrap();
        assert_ne!(
            FileStamp::of(&path).unwrap(),
            first,
            "a rename makes a new inode"
        );
    }
}
