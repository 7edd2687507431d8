//! Logging: `tracing` with human-readable lines, or JSON lines when
//! `LOG_FORMAT=json`. The filter comes from `RUST_LOG` (default `info`).
//! Conventions: a readable message plus dotted fields (`event.id`, `bsp`);
//! never log secrets or webhook bodies (they carry customers' messages).
//!
//! Logging never blocks or fails a request: lines go through a bounded
//! in-memory buffer to a writer thread (`tracing-appender`, lossy). A line
//! that finds the buffer full (stdout is a pipe nobody drains), or that
//! stdout refuses (its disk is full), is dropped and counted
//! (`zen_log_lines_dropped_total`); nothing is written to stderr about it,
//! since stderr may be on the same full disk. Colours only on a terminal,
//! and never with `NO_COLOR`.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Lines the buffer holds before new ones are dropped.
const BUFFERED_LINES: usize = 64 * 1024;

/// Lines stdout refused.
static REFUSED: AtomicU64 = AtomicU64::new(0);
/// Lines dropped with the buffer full.
static OVERFLOW: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped since start: buffer full, or stdout refusing writes.
pub fn lines_dropped() -> u64 {
    REFUSED.load(Ordering::Relaxed) + OVERFLOW.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Stdout for the writer thread: a line it cannot take is counted, not an
/// error (the thread goes on with the next).
struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stdout().write_all(buf).is_err() {
            REFUSED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stdout().flush();
        Ok(())
    }
}

/// Keeps the writer thread; dropping it writes out what is buffered.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
}

/// Installs the global subscriber; a second call is a no-op (tests).
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("zen-log")
        .finish(Stdout);
    let counter = writer.error_counter();
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(writer)
        // Its own complaint about a failed write goes to stderr, and a
        // failed write to stderr panics: never.
        .log_internal_errors(false);
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if installed.is_ok() {
        let _ = OVERFLOW.set(counter);
        LogGuard {
            _writer: Some(guard),
        }
    } else {
        LogGuard { _writer: None }
    }
}
