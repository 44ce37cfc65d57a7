//! Dispatches each subcommand to what runs it: `serve` ([`Application`]), `worker`
//! ([`Worker`]), and the one-shot `import` and `sync` ([`crate::oneshot`]).

use crate::app::Application;
use crate::config::Command;
use crate::oneshot;
use crate::shutdown;
use crate::startup::sweep_leftovers;
use crate::worker::Worker;

pub use crate::oneshot::{SyncBusy, EXIT_SYNC_BUSY};

/// Runs `command` to completion.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let config = args.validate()?;
            sweep_leftovers().await;
            let app = Application::build(config).await?;
            app.run_until_stopped(shutdown::signal()).await
        }
        Command::Worker(args) => {
            let config = args.validate()?;
            sweep_leftovers().await;
            let worker = Worker::build(config).await?;
            worker.run_until_stopped(shutdown::signal()).await
        }
        Command::Import(args) => oneshot::import(args).await,
        Command::Sync(args) => oneshot::sync(args).await,
    }
}
