//! The shrink guard: an export much smaller than the cache is refused, so that a broken export
//! (an empty table, a half page) never replaces good data.

use anyhow::bail;

use crate::config::SyncSettings;

/// Refuses an export that would wipe good data: zero rows, far fewer than the cache holds, or
/// any export when the cached row count cannot be known (`previous` is an error). It fails
/// closed: only `SYNC_FORCE` lets such an export through.
pub fn check_row_count(
    settings: &SyncSettings,
    previous: anyhow::Result<Option<usize>>,
    rows: usize,
) -> anyhow::Result<()> {
    check(settings.force, settings.min_row_ratio, previous, rows)
}

/// The guard with `SYNC_FORCE` and `SYNC_MIN_ROW_RATIO` as given.
fn check(
    force: bool,
    min_row_ratio: f64,
    previous: anyhow::Result<Option<usize>>,
    rows: usize,
) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    let previous = previous.map_err(|e| {
        anyhow::anyhow!(
            "the export has {rows} rows but the cached row count cannot be known ({e:#}); \
             the cache was kept (set SYNC_FORCE=true to replace it)"
        )
    })?;
    if rows == 0 {
        bail!(
            "the export has no rows; the cache{} was kept (set SYNC_FORCE=true to accept an empty table)",
            previous.map(|n| format!(" ({n} rows)")).unwrap_or_default()
        );
    }
    if let Some(previous) = previous {
        let floor = (previous as f64 * min_row_ratio).ceil() as usize;
        if rows < floor {
            bail!(
                "the export has {rows} rows, far fewer than the {previous} cached (minimum {floor}, \
                 SYNC_MIN_ROW_RATIO={}); the cache was kept (set SYNC_FORCE=true to accept it)",
                min_row_ratio
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_far_smaller_than_the_cache_or_empty_is_refused_unless_forced() {
        assert!(check(false, 0.5, Ok(Some(100)), 60).is_ok());
        let err = check(false, 0.5, Ok(Some(100)), 40).unwrap_err();
        assert!(
            format!("{err}").contains("far fewer than the 100 cached"),
            "{err}"
        );
        assert!(check(false, 0.5, Ok(None), 0).is_err());
        assert!(check(false, 0.5, Ok(None), 5).is_ok());
        assert!(check(false, 0.5, Err(anyhow::anyhow!("unreadable")), 5).is_err());
        assert!(check(true, 0.5, Ok(Some(100)), 0).is_ok());
        assert!(check(true, 0.5, Err(anyhow::anyhow!("unreadable")), 5).is_ok());
    }
}
