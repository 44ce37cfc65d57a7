//! Failure evidence: a screenshot and the page source of a failed sync, kept in
//! `failures_dir` (the newest [`KEEP_FAILURES`] pairs) so an operator can see what the browser saw.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use fantoccini::Client;

use crate::sync::session::step;

/// How many failed-page pairs (screenshot + source) are kept.
pub const KEEP_FAILURES: usize = 5;

/// Keeps a screenshot and the page source in `dir`, then prunes the folder to the newest few.
/// Best effort: a failure here is logged, never returned.
pub async fn save_failure(client: &Client, dir: &Path) {
    let stem = failure_stem(time::OffsetDateTime::now_utc());
    let shot = step(
        "taking a screenshot",
        Duration::from_secs(10),
        client.screenshot(),
    )
    .await;
    let source = step(
        "reading the page source",
        Duration::from_secs(10),
        client.source(),
    )
    .await;
    let url = step(
        "reading the page address",
        Duration::from_secs(5),
        client.current_url(),
    )
    .await
    .map(|u| u.to_string())
    .unwrap_or_default();
    let dir = dir.to_owned();
    let saved = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        // The page may show the user name and the database: private to pma-cache's user.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // A folder made by an older version (0755) is made private too.
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        let png = dir.join(format!("{stem}.png"));
        let page = dir.join(format!("{stem}.html"));
        let write = |path: &std::path::Path, bytes: &[u8]| -> std::io::Result<()> {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)?
                .write_all(bytes)
        };
        if let Ok(bytes) = &shot {
            write(&png, bytes)?;
        }
        let html = match &source {
            Ok(html) => format!("<!-- {url} -->\n{html}"),
            Err(e) => format!("<!-- {url} -->\n<!-- page source unavailable: {e:#} -->\n"),
        };
        write(&page, html.as_bytes())?;
        prune_failures(&dir, KEEP_FAILURES)?;
        Ok((png, page))
    })
    .await;
    match saved {
        Ok(Ok((png, page))) => tracing::warn!(
            screenshot = %png.display(),
            page = %page.display(),
            "saved the failed page"
        ),
        Ok(Err(e)) => tracing::warn!("could not save the failed page: {e:#}"),
        Err(e) => tracing::warn!("could not save the failed page: {e}"),
    }
}

const STEM_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]-[minute]-[second].[subsecond digits:3]Z"
);

/// A failure file's name without extension: the UTC time, sortable and safe in file names.
fn failure_stem(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(STEM_FORMAT)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn is_failure_stem(stem: &str) -> bool {
    time::PrimitiveDateTime::parse(stem, STEM_FORMAT).is_ok()
}

/// Deletes all but the newest `keep` failure pairs in `dir`; other files are left alone.
pub fn prune_failures(dir: &Path, keep: usize) -> std::io::Result<()> {
    let mut stems: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let ext = path.extension().and_then(|e| e.to_str());
        if !matches!(ext, Some("png" | "html")) {
            continue;
        }
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
            if is_failure_stem(stem) && !stems.iter().any(|s| s == stem) {
                stems.push(stem.to_owned());
            }
        }
    }
    stems.sort_unstable_by(|a, b| b.cmp(a));
    for stem in stems.iter().skip(keep) {
        for ext in ["png", "html"] {
            match std::fs::remove_file(dir.join(format!("{stem}.{ext}"))) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_sort_by_time_and_are_recognised() {
        let a = failure_stem(time::macros::datetime!(2024-01-02 03:04:05.678 UTC));
        let b = failure_stem(time::macros::datetime!(2024-01-02 03:04:06 UTC));
        assert_eq!(a, "2024-01-02T03-04-05.678Z");
        assert!(a < b);
        assert!(is_failure_stem(&a));
        assert!(!is_failure_stem("notes"));
    }

    #[test]
    fn pruning_keeps_the_newest_pairs_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        for second in 0..8 {
            let stem = failure_stem(
                time::macros::datetime!(2024-01-01 00:00:00 UTC) + Duration::from_secs(second),
            );
            std::fs::write(dir.path().join(format!("{stem}.png")), b"png").unwrap();
            std::fs::write(dir.path().join(format!("{stem}.html")), b"html").unwrap();
        }
        std::fs::write(dir.path().join("README.txt"), b"keep me").unwrap();
        prune_failures(dir.path(), 5).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 11, "{names:?}");
        assert!(names.contains(&"README.txt".to_owned()));
        assert!(names.contains(&"2024-01-01T00-00-07.000Z.png".to_owned()));
        assert!(
            !names.iter().any(|n| n.starts_with("2024-01-01T00-00-02")),
            "{names:?}"
        );
    }
}
