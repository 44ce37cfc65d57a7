//! pma-cache serves a phpMyAdmin table as an instantly available JSON cache.
//!
//! - [`config`] — the command line and environment, validated at start-up.
//! - [`cache`] — the cache file format, its atomic store, the CSV conversion and the in-memory
//!   snapshot that the API serves.
//! - [`sync`] — the worker that logs into phpMyAdmin through a headless browser, exports the table
//!   and replaces the cache.
//! - [`api`] — the HTTP API: auth, `/fetch-data`, SSE, `/refresh`, `/status`.
//! - [`ops`] — watching it run: recent syncs, Prometheus metrics, webhook alerts.
//! - [`app`] — the `serve` application that ties them together; [`commands`]: every subcommand.

pub mod api;
pub mod app;
pub mod cache;
pub mod commands;
pub mod config;
pub mod ops;
pub mod shutdown;
pub mod sync;
pub mod telemetry;
