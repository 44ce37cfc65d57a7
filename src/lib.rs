//! pma-cache serves a phpMyAdmin table as an instantly available JSON cache.
//!
//! - [`config`] — the command line and environment, validated at start-up.
//! - [`cache`] — the cache file format, its atomic store, the CSV conversion and the in-memory
//!   snapshot that the API serves.
//! - [`sync`] — the worker that logs into phpMyAdmin through a headless browser, exports the table
//!   and replaces the cache.
//! - [`query`] — questions over each version: read-only SQL and filtered rows, run by
//!   DataFusion over the version's typed view, in JSON, NDJSON, CSV, Arrow and Parquet.
//! - [`api`] — the HTTP API: auth, `/fetch-data`, SSE, `/refresh`, `/status`, `/query`,
//!   `/tables`.
//! - [`ops`] — watching it run: recent syncs, Prometheus metrics, webhook alerts.
//! - [`startup`] — the composition root: what `serve` and `worker` share, built once, with the
//!   task tracker and cancellation token that own every background task.
//! - [`app`] — `serve`: the API and the shared services; [`worker`]: the standalone sync
//!   worker, with its own `/health` and `/metrics`; [`oneshot`]: `import` and `sync`.
//! - [`commands`] — dispatches each subcommand; [`shutdown`]: the stop signal;
//!   [`telemetry`]: logging.

pub mod api;
pub mod app;
pub mod cache;
pub mod commands;
pub mod config;
pub mod oneshot;
pub mod ops;
pub mod query;
pub mod shutdown;
pub mod startup;
pub mod sync;
pub mod telemetry;
pub mod worker;
