//! The sync: fetch the table through phpMyAdmin in a real browser, convert it, and replace the cache.

pub mod browser;
pub mod phpmyadmin;
pub mod status;
