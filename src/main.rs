use std::process::ExitCode;

use clap::Parser;
use pma_cache::config::{Cli, ConfigError};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    pma_cache::telemetry::init();
    match pma_cache::commands::run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.is::<ConfigError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
