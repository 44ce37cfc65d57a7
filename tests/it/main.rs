//! Every integration test, in one binary, by area. Each talks to real components: the
//! `pma-cache` binary or its library, a private Redis, and the local test bed (MariaDB,
//! phpMyAdmin, Chromium and ChromeDriver; see [`helpers::testbed`]).
//!
//! - [`api`]: the HTTP API against a real server on port 0.
//! - [`export`]: the browser flow against the real phpMyAdmin (4.9.11, 5.1.4, 5.2.1).
//! - [`query`]: `/query` and `/tables`, compared with MariaDB answering the same SQL.
//! - [`deltas`]: `/fetch-data?since=`, through real syncs of the test bed.
//! - [`sync`]: the whole service syncing from the test bed.
//! - [`shared_file`]: several processes on one cache file (its lock, its record).
//! - [`redis_store`]: replicas and a worker sharing versions through Redis.
//! - [`ops`]: logging, metrics, alerts, the dashboard.
//! - [`examples`]: the README's client examples, run as written.
//! - [`demo`]: `bin/demo` from a bare copy of the repository.
//! - [`deploy`]: the contracts between the deployment files and the program.
//! - [`image`]: the Docker image, built on local base images and run.
//!
//! Tests that drive a browser take [`helpers::ONE_BROWSER`] first.

mod helpers;

mod api;
mod deltas;
mod demo;
mod deploy;
mod examples;
mod export;
mod image;
mod ops;
mod query;
mod redis_store;
mod shared_file;
mod sync;
