//! Logging, and traces ([`traces`]).
//!
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
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

pub mod traces;

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

/// Keeps the writer thread, and the span exporter; dropping it writes out
/// what is buffered (spans, then log lines).
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
    spans: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.spans.take() {
            let _ = provider.shutdown_with_timeout(std::time::Duration::from_secs(5));
        }
    }
}

/// Installs the global subscriber, logs only; a second call is a no-op
/// (tests).
pub fn init(format: LogFormat) -> LogGuard {
    install(format, None)
}

/// Installs the global subscriber with span export when the standard
/// `OTEL_EXPORTER_OTLP_*` variables ask for it ([`traces`]). Call with the
/// runtime entered (gRPC export runs on it).
pub fn init_with_traces(format: LogFormat) -> Result<LogGuard, traces::TraceSetupError> {
    let export = traces::export_from_env()?;
    Ok(install(format, export))
}

fn install(format: LogFormat, export: Option<traces::Export>) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("zen-log")
        .finish(Stdout);
    let counter = writer.error_counter();
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let (provider, tracer) = match export {
        Some(e) => (Some(e.provider), Some(e.tracer)),
        None => (None, None),
    };
    // (A layer's type names the subscriber under it: one per format.)
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(writer)
        // Its own complaint about a failed write goes to stderr, and a
        // failed write to stderr panics: never.
        .log_internal_errors(false);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(tracer.map(|t| tracing_opentelemetry::layer().with_tracer(t)))
            .try_init(),
        LogFormat::Text => builder
            .finish()
            .with(tracer.map(|t| tracing_opentelemetry::layer().with_tracer(t)))
            .try_init(),
    };
    if installed.is_ok() {
        let _ = OVERFLOW.set(counter);
        LogGuard {
            _writer: Some(guard),
            spans: provider,
        }
    } else {
        LogGuard {
            _writer: None,
            spans: None,
        }
    }
}
