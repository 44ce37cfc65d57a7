//! Test-only faults, compiled only with the `test-faults` feature (which the tests enable, never a
//! build that ships): `PMA_CACHE_FAULT=panic` makes a sync panic once it holds the lock,
//! `PMA_CACHE_FAULT=hang` makes it wait there until it is stopped.

/// Acts on `PMA_CACHE_FAULT`, if the feature is on.
pub async fn hit() {
    #[cfg(feature = "test-faults")]
    match std::env::var("PMA_CACHE_FAULT").as_deref() {
        Ok("panic") => panic!("fault injected by PMA_CACHE_FAULT=panic"),
        Ok("hang") => std::future::pending::<()>().await,
        _ => {}
    }
}
