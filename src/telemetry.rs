//! Logging: `tracing` with human-readable lines, or JSON lines when
//! `LOG_FORMAT=json`. The filter comes from `RUST_LOG` (default `info`).
//! Conventions: a readable message plus dotted fields (`event.id`, `bsp`);
//! never log secrets or webhook bodies (they carry customers' messages).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; a second call is a no-op (tests).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
