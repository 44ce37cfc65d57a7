//! Questions over each version: read-only SQL (`/query`) and rows without SQL (`/tables`), run
//! by DataFusion over the version's typed view ([`crate::cache::typed`]).
//!
//! - [`sql`] — MySQL-flavoured SQL: parsed, refused unless one read-only query, MySQL's
//!   functions rewritten into the engine's.
//! - [`rows`] — Datasette-style filters, sorting, keyset pages and key lookups.
//! - [`provider`] — the table queries read: the typed view, with key filters answered from
//!   its key index.
//! - [`text`] — rows in their exported text, read from the version's body.
//! - [`engine`] — where queries run: their own threads, time and memory limits, one session
//!   per version, answers kept per version.
//! - [`encode`] — answers as JSON, NDJSON, CSV, Arrow IPC and Parquet.

pub mod encode;
pub mod engine;
pub mod provider;
pub mod rows;
pub mod sql;
pub mod text;

pub use encode::{Format, Shape};
pub use engine::{Answer, Ask, Param, QueryEngine, QueryError, Question};
