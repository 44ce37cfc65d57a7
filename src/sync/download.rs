//! The download: find the file Chromium saves, hand it over for reading as soon as it appears,
//! wait until it is complete, and refuse what is not CSV (an HTML page saved under a CSV name).

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use fantoccini::Client;

use crate::sync::error::ExportError;
use crate::sync::page::{chrome_error, page_state};

/// A download that has not grown for this long is given up.
const DOWNLOAD_STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the download folder is listed: a listing is cheap, and the time between the
/// download's last byte and its conversion's end waits for it.
const FOLDER_POLL: Duration = Duration::from_millis(10);
/// How often the page is looked at while no download has appeared: phpMyAdmin may have answered
/// with a page (its login page, an error) instead of a file.
const PAGE_CHECK: Duration = Duration::from_millis(500);

/// Told of the download's file, opened, as soon as it appears (usually `*.crdownload`, which
/// Chromium renames when complete), so that it can be read while it is written.
pub type OnDownload<'a> = &'a mut (dyn FnMut(std::fs::File) + Send);

/// The names in `dir`, to tell the new download from what was there before.
pub fn entries(dir: &Path) -> anyhow::Result<HashSet<OsString>> {
    let mut names = HashSet::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        names.insert(entry?.file_name());
    }
    Ok(names)
}

/// A new file in the download folder, as seen by one look.
#[derive(Debug, PartialEq, Eq)]
struct Download {
    path: PathBuf,
    size: u64,
    partial: bool,
}

fn new_downloads(dir: &Path, before: &HashSet<OsString>) -> anyhow::Result<Vec<Download>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if before.contains(&name) || name.to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let partial = name.to_string_lossy().ends_with(".crdownload");
        found.push(Download {
            path: entry.path(),
            size: meta.len(),
            partial,
        });
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// What the export's request brought.
#[derive(Debug)]
pub enum Answer {
    /// The finished download.
    File(PathBuf),
    /// phpMyAdmin's login page instead: its session ended.
    LoginPage,
}

/// Opens the file to read while it is written: the partial one when there is one, else the only
/// new file (a download so small that it completed between two looks). `None` when there is
/// nothing yet, or the file was renamed between the look and the opening.
fn open_download(found: &[Download]) -> Option<std::fs::File> {
    let partial = found.iter().find(|d| d.partial);
    let chosen = match (partial, found) {
        (Some(d), _) => d,
        (None, [only]) => only,
        _ => return None,
    };
    std::fs::File::open(&chosen.path).ok()
}

/// Waits for a finished download: a new file that is not `*.crdownload` and whose size held
/// between two looks. The file is passed to `on_download` as soon as it appears. While nothing
/// arrives, the page is checked for an error, or the login page, instead.
pub async fn wait_for_download(
    client: &Client,
    dir: &Path,
    before: &HashSet<OsString>,
    limit: Duration,
    on_download: OnDownload<'_>,
) -> Result<Answer, ExportError> {
    let started = Instant::now();
    let mut handed_over = false;
    let mut last_growth = Instant::now();
    let mut last_total = 0u64;
    let mut candidate: Option<(PathBuf, u64)> = None;
    let mut next_page_check = Instant::now() + PAGE_CHECK;
    loop {
        let found = new_downloads(dir, before).map_err(ExportError::Transient)?;
        if !handed_over {
            if let Some(file) = open_download(&found) {
                tracing::debug!(
                    seconds = format_args!("{:.3}", started.elapsed().as_secs_f64()),
                    "the download's file appeared: {:?}",
                    found
                );
                on_download(file);
                handed_over = true;
            }
        }
        let total: u64 = found.iter().map(|d| d.size).sum();
        if total != last_total {
            last_total = total;
            last_growth = Instant::now();
        }
        let finished: Vec<&Download> = found.iter().filter(|d| !d.partial).collect();
        if found.iter().all(|d| !d.partial) && finished.len() == 1 {
            let now = (finished[0].path.clone(), finished[0].size);
            if candidate.as_ref() == Some(&now) {
                return Ok(Answer::File(now.0));
            }
            candidate = Some(now);
        } else {
            candidate = None;
        }
        if finished.len() > 1 {
            return Err(ExportError::Fatal(anyhow!(
                "more than one new file appeared in {}: {:?}",
                dir.display(),
                finished.iter().map(|d| &d.path).collect::<Vec<_>>()
            )));
        }
        if found.is_empty() && Instant::now() >= next_page_check {
            // No download yet: phpMyAdmin may have answered with a page instead of a file.
            next_page_check = Instant::now() + PAGE_CHECK;
            if let Some(error) = chrome_error(client).await? {
                return Err(ExportError::Transient(anyhow!(
                    "the export request failed: {error}"
                )));
            }
            let state = page_state(client).await?;
            // Before the error boxes: the login page of an ended session may carry one.
            if state.ready && state.login_form {
                return Ok(Answer::LoginPage);
            }
            if state.ready && !state.export_form && !state.errors.is_empty() {
                return Err(ExportError::Fatal(anyhow!(
                    "phpMyAdmin answered the export with an error page: {}",
                    state.message()
                )));
            }
        }
        if started.elapsed() > limit {
            return Err(ExportError::Transient(anyhow!(
                "the download did not finish within {}s ({last_total} bytes so far)",
                limit.as_secs()
            )));
        }
        if last_growth.elapsed() > DOWNLOAD_STALL_TIMEOUT {
            return Err(ExportError::Transient(anyhow!(
                "the download stalled: no new bytes for {}s ({last_total} bytes so far)",
                DOWNLOAD_STALL_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(FOLDER_POLL).await;
    }
}

/// Refuses an empty file or an HTML page saved under a CSV name.
pub fn check_is_csv(file: &Path) -> Result<(), ExportError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(1024);
    std::fs::File::open(file)
        .and_then(|f| f.take(1024).read_to_end(&mut head))
        .with_context(|| format!("cannot read the download {}", file.display()))
        .map_err(ExportError::Transient)?;
    if head.is_empty() {
        return Err(ExportError::Fatal(anyhow!(
            "phpMyAdmin returned an empty file instead of CSV ({})",
            file.display()
        )));
    }
    if looks_like_html(&head) {
        let page = std::fs::read(file).unwrap_or_default();
        let said = html_error_text(&String::from_utf8_lossy(&page))
            .map(|m| format!(": phpMyAdmin said: {m}"))
            .unwrap_or_default();
        return Err(ExportError::Fatal(anyhow!(
            "phpMyAdmin returned an HTML page instead of CSV (session expired, or a missing table?) \
             in {}{said}",
            file.display()
        )));
    }
    Ok(())
}

/// The text of the first error box in a phpMyAdmin page, tags stripped, shortened; the MySQL
/// error itself when the box quotes one.
pub fn html_error_text(html: &str) -> Option<String> {
    let start = ["alert-danger", "class=\"error\""]
        .iter()
        .filter_map(|marker| html.find(marker))
        .min()?;
    let from = html[start..].find('>').map(|i| start + i + 1)?;
    let chunk: String = html[from..].chars().take(4000).collect();
    let mut text = String::new();
    let mut in_tag = false;
    for c in chunk.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text
        .replace("&nbsp;", " ")
        .replace("&#039;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = match text.split_once("MySQL said:") {
        Some((_, said)) => said.trim().to_owned(),
        None => text,
    };
    let short: String = text.chars().take(300).collect();
    (!short.is_empty()).then_some(short)
}

/// True when the start of a file looks like an HTML page rather than CSV.
fn looks_like_html(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let text = text.trim_start_matches('\u{feff}').trim_start();
    let lower = text.to_ascii_lowercase();
    text.starts_with('<') || lower.contains("<!doctype") || lower.contains("<html")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_pages_are_told_from_csv() {
        assert!(looks_like_html(b"<!DOCTYPE HTML>\n<html lang=\"en\">"));
        assert!(looks_like_html(
            b"\n\n  <html><body>Your session has expired"
        ));
        assert!(looks_like_html("\u{feff}<!doctype html>".as_bytes()));
        assert!(!looks_like_html(b"\"id\",\"name\"\n\"1\",\"#1001\"\n"));
        assert!(!looks_like_html(b"id,note\n1,\"a < b\"\n"));
    }

    #[test]
    fn the_error_box_of_an_html_page_is_quoted() {
        let page = r#"<!DOCTYPE html><html><body><div class="alert alert-danger" role="alert">
            <h1>Error</h1><p>SQL query:</p><code>SELECT 1</code><p>MySQL said: </p>
            <code>#1146 - Table &#039;shop.x&#039; doesn&#039;t exist</code></div></body></html>"#;
        assert_eq!(
            html_error_text(page).as_deref(),
            Some("#1146 - Table 'shop.x' doesn't exist")
        );
        assert_eq!(html_error_text("<html><body>fine</body></html>"), None);
    }

    #[test]
    fn only_new_finished_files_count_as_the_download() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.csv"), b"x").unwrap();
        std::fs::create_dir(dir.path().join(".chrome-profile-1")).unwrap();
        let before = entries(dir.path()).unwrap();
        std::fs::write(dir.path().join("orders.csv.crdownload"), b"abc").unwrap();
        let found = new_downloads(dir.path(), &before).unwrap();
        assert_eq!(found.len(), 1);
        assert!(found[0].partial);
        std::fs::rename(
            dir.path().join("orders.csv.crdownload"),
            dir.path().join("orders.csv"),
        )
        .unwrap();
        let found = new_downloads(dir.path(), &before).unwrap();
        assert_eq!(
            found,
            vec![Download {
                path: dir.path().join("orders.csv"),
                size: 3,
                partial: false
            }]
        );
    }
}
