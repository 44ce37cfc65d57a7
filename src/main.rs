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

/// How long jemalloc keeps freed pages for reuse before giving them back (its default is 10 s).
const DIRTY_DECAY_MS: isize = 1000;

/// Makes jemalloc give freed memory back soon. Its own threads do it as pages age; without them
/// it does so only when the process next allocates, and an idle server would keep the versions
/// it freed. With the default 10 s, a version freed by a sync (a body the table's size and its
/// typed view) still counts in the process's memory while the next is built: `serve` with
/// 102,052 rows settled at 3.0 to 3.9× the JSON between syncs and peaked at 4.0 to 5.2× through
/// them; after a second, 2.1× and 4.1×. Given back at once, the peak was 3.7×, but every page
/// freed on the request path would then be returned and faulted in again (README, "Incremental
/// syncs").
fn tune_allocator() -> Result<(), tikv_jemalloc_ctl::Error> {
    use tikv_jemalloc_ctl::{arenas, background_thread, Access, AsName};
    background_thread::write(true)?;
    // Arenas made from now on, then those that exist (writing to one not made yet fails).
    b"arenas.dirty_decay_ms\0".name().write(DIRTY_DECAY_MS)?;
    b"arenas.muzzy_decay_ms\0".name().write(0isize)?;
    for arena in 0..arenas::narenas::read()? {
        for (key, ms) in [("dirty", DIRTY_DECAY_MS), ("muzzy", 0)] {
            let name = format!("arena.{arena}.{key}_decay_ms\0");
            let _ = name.as_str().name().write(ms);
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let logging = pma_cache::telemetry::init(cli.log_format);
    if let Err(e) = tune_allocator() {
        tracing::warn!("cannot tune the allocator: {e}");
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
