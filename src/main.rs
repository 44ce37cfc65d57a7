use std::process::ExitCode;

use clap::Parser;
use pma_cache::config::{Cli, ConfigError};

/// jemalloc for every allocation, the C compressors' included: each new version frees an 83 MB
/// body and its compressed variants, and glibc's malloc kept much of that in its arenas. A
/// `serve` replica through Redis after 5–6 versions of the 83.5 MB table (debug build): glibc
/// 214 MiB, mimalloc 282 MiB, jemalloc 152 MiB; with a file cache, glibc 163 MiB, jemalloc
/// 128 MiB (README, "Replicas through Redis").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let logging = pma_cache::telemetry::init(cli.log_format);
    // jemalloc's own threads give freed pages back as they age (10 s); without them it does so
    // only when the process next allocates, and an idle server would keep the versions it freed.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!("cannot start the allocator's background threads: {e}");
    }
    let result = pma_cache::commands::run(cli.command).await;
    drop(logging);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            pma_cache::telemetry::print_error(format_args!("error: {e:#}"));
            if e.is::<ConfigError>() {
                ExitCode::from(2)
            } else if e.is::<pma_cache::commands::SyncBusy>() {
                ExitCode::from(pma_cache::commands::EXIT_SYNC_BUSY)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
