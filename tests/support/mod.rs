//! Helpers shared by the integration tests.

pub mod app;
pub mod redis;
pub mod testbed;
