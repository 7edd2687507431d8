//! The `zen-gateway` binary: parse the command line, load the configuration,
//! run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use zen_gateway::app::{Application, cancel_on_signals};
use zen_gateway::backends::mongo::MongoStore;
use zen_gateway::config::Settings;
use zen_gateway::telemetry;

// The request path allocates small, short-lived buffers on every webhook;
// mimalloc's per-thread free lists cost a fraction of glibc malloc's arena
// locking there (see docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "zen-gateway", version, about = "WhatsApp BSP webhook gateway")]
struct Cli {
    /// The legacy Keys.json (read when present; the environment overrides it).
    #[arg(long, env = "KEYS_JSON", default_value = "Keys.json", global = true)]
    keys: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Print the effective configuration with secrets masked, and exit.
    CheckConfig,
    /// Exit 0 when the gateway on SERVER_PORT answers GET /health (for
    /// container health checks; the runtime image has no curl).
    Healthcheck,
    /// Prepare a MongoDB the legacy gateway wrote: merge its duplicate
    /// documents per wamid, then build the indexes. Safe to run again.
    Migrate,
    /// Dead-lettered deliveries on the configured backend.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Inbox entries the processor quarantined (they kept failing).
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
}

#[derive(Subcommand)]
enum QuarantineAction {
    /// List quarantined entries as JSON, newest first, with their errors.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Put entries back into the inbox to be processed again: the given
    /// event ids, or every one with --all.
    Replay {
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// List dead-lettered deliveries as JSON, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Put deliveries back on the forwarding queue with fresh attempts:
    /// the given delivery ids, or every one with --all.
    Replay {
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.keys) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("zen-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!(
                "{}",
                serde_json::to_string_pretty(&settings.masked()).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Serve => serve(settings),
        Command::Migrate => migrate(settings),
        Command::Healthcheck => healthcheck(settings.port),
        Command::Dlq { action } => dlq(settings, action),
        Command::Quarantine { action } => quarantine(settings, action),
        Command::Openapi => {
            println!("{}", zen_gateway::http::openapi::document_json());
            ExitCode::SUCCESS
        }
    }
}

/// The async runtime of a subcommand, or `None` (said on stderr).
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new()
        .inspect_err(|e| eprintln!("zen-gateway: cannot start the runtime: {e}"))
        .ok()
}

fn dlq(settings: Settings, action: DlqAction) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        let queue = zen_gateway::app::forward_queue_for_cli(&settings).await?;
        let out = match action {
            DlqAction::List { limit } => {
                serde_json::to_value(queue.list_dead(limit.clamp(1, 10_000)).await?)?
            }
            DlqAction::Replay { all, ids } => {
                let n = queue
                    .replay_dead(if all { None } else { Some(&ids) })
                    .await?;
                serde_json::json!({ "replayed": n })
            }
        };
        anyhow::Ok(out)
    });
    match result {
        Ok(out) => {
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zen-gateway dlq: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn quarantine(settings: Settings, action: QuarantineAction) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        let inbox = zen_gateway::app::inbox_for_cli(&settings).await?;
        let out = match action {
            QuarantineAction::List { limit } => {
                serde_json::to_value(inbox.list_quarantined(limit.clamp(1, 10_000), None).await?)?
            }
            QuarantineAction::Replay { all, ids } => {
                let n = inbox
                    .replay_quarantined(if all { None } else { Some(&ids) })
                    .await?;
                serde_json::json!({ "replayed": n })
            }
        };
        anyhow::Ok(out)
    });
    match result {
        Ok(out) => {
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zen-gateway quarantine: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(port: u16) -> ExitCode {
    use std::io::{Read, Write};
    let check = || -> std::io::Result<bool> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(head.ends_with(b" 200"))
    };
    match check() {
        Ok(true) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

fn migrate(settings: Settings) -> ExitCode {
    telemetry::init(settings.log_format);
    let Some(uri) = settings.mongo_uri.clone() else {
        eprintln!("zen-gateway migrate: MONGO_URI (Keys.json `mongo_uri`) is not set");
        return ExitCode::from(2);
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        let store = MongoStore::connect(&uri, &settings.database_name).await?;
        store.migrate().await
    });
    match result {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zen-gateway migrate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: Settings) -> ExitCode {
    telemetry::init(settings.log_format);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        let app = Application::build(settings).await?;
        let shutdown = CancellationToken::new();
        cancel_on_signals(shutdown.clone());
        app.run_until_stopped(shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "zen-gateway failed");
            eprintln!("zen-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}
