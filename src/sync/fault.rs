//! Test-only faults, compiled only with the `test-faults` feature (which the tests enable, never a
//! build that ships): `PMA_CACHE_FAULT=panic` makes a sync panic once it holds the lock,
//! `PMA_CACHE_FAULT=hang` makes it wait there until it is stopped, and
//! `PMA_CACHE_FAULT=incremental` makes every incremental export fail midway.

/// Acts on `PMA_CACHE_FAULT`, if the feature is on.
pub async fn hit() {
    #[cfg(feature = "test-faults")]
    match std::env::var("PMA_CACHE_FAULT").as_deref() {
        Ok("panic") => panic!("fault injected by PMA_CACHE_FAULT=panic"),
        Ok("hang") => std::future::pending::<()>().await,
        _ => {}
    }
}

/// Fails when `PMA_CACHE_FAULT` names `point`, if the feature is on.
pub async fn hit_named(point: &str) -> anyhow::Result<()> {
    #[cfg(feature = "test-faults")]
    if std::env::var("PMA_CACHE_FAULT").as_deref() == Ok(point) {
        anyhow::bail!("fault injected by PMA_CACHE_FAULT={point}");
    }
    let _ = point;
    Ok(())
}
