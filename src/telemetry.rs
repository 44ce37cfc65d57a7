//! Logging: lines on stderr, human-readable or JSON (`LOG_FORMAT`), level from `RUST_LOG`
//! (default `info`).
//!
//! Logging never takes the service down. Lines go through a bounded queue to a writer thread, so
//! a log reader that stops reading (a full pipe) costs log lines, not a blocked runtime thread;
//! and a write to a closed output (`EPIPE`: the reader went away) is dropped quietly instead of
//! making the logging layer report it on that same closed stderr, which panics. SIGPIPE stays
//! ignored, as Rust programs have it by default.

use std::io::{self, IsTerminal, Write};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Log lines waiting for a slow reader at most; further ones are dropped until it catches up.
const QUEUED_LINES: usize = 10_000;

/// Keeps the log writer thread alive; dropping it writes out what is queued (for up to about a
/// second) so the last lines before exit are not lost.
#[must_use = "dropping the guard stops logging"]
pub struct LogGuard(Option<WorkerGuard>);

impl Drop for LogGuard {
    fn drop(&mut self) {
        // The writer thread's own shutdown may print to a closed stdout, which panics; exiting
        // must not fail because of it.
        if let Some(guard) = self.0.take() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(guard)));
        }
    }
}

/// Installs the global subscriber, writing in `format`.
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = format == LogFormat::Human && io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("pma-cache-log")
        .finish(Lossy(io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(ansi)
        .log_internal_errors(false);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    LogGuard(Some(guard))
}

/// Prints a last line on stderr, ignoring a closed or broken stderr (unlike `eprintln!`).
pub fn print_error(message: impl std::fmt::Display) {
    let _ = writeln!(io::stderr(), "{message}");
}

/// A writer that reports every write as done: a log line that cannot be written is lost, and
/// nothing downstream sees an error it might report or panic on.
struct Lossy<W>(W);

impl<W: Write> Write for Lossy<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_closed_output_loses_the_line_without_an_error() {
        let mut w = Lossy(Closed);
        assert_eq!(w.write(b"a line\n").unwrap(), 7);
        w.write_all(b"another\n").unwrap();
        w.flush().unwrap();
    }
}
