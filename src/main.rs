use std::process::ExitCode;

use clap::Parser;
use pma_cache::config::{Cli, ConfigError};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let logging = pma_cache::telemetry::init(cli.log_format);
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
