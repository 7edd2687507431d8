//! The `zen-gateway` binary: parse the command line, load the configuration,
//! run.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use zen_gateway::app::{Application, cancel_on_signals};
use zen_gateway::backends::{Backends, Mode};
use zen_gateway::config::Settings;
use zen_gateway::retention::Awaiting;
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
        action: EntriesAction,
    },
    /// Inbox entries the processor quarantined (they kept failing).
    Quarantine {
        #[command(subcommand)]
        action: EntriesAction,
    },
    /// Remove now what retention no longer keeps (MESSAGE_RETENTION,
    /// DELIVERY_LOG_RETENTION, …), or what is older than --older-than;
    /// safe beside a running gateway. Prints what it removed and what it
    /// left. Dead letters and quarantined entries wait for an operator:
    /// they go only by DLQ_RETENTION / QUARANTINE_RETENTION, or by
    /// `dlq purge` / `quarantine purge`.
    Prune {
        /// One age for messages, delivery logs, unrecognized bodies and
        /// notifications, e.g. 30d (overrides their configured retention).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
    },
    /// Copy the embedded database to FILE, consistently, while a gateway
    /// serves from it (restore: stop, put the copy in DATA_DIR as zen.db,
    /// start).
    Backup {
        /// Where the copy goes; must not exist. Created with mode 0600.
        file: PathBuf,
        /// Open the copy afterwards and run SQLite's integrity check.
        #[arg(long)]
        verify: bool,
    },
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
}

/// What `dlq` and `quarantine` do with their entries.
#[derive(Subcommand)]
enum EntriesAction {
    /// List the entries as JSON, newest first, with their errors.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Put entries back to be processed again with fresh attempts: the
    /// given ids (delivery ids for `dlq`, event ids for `quarantine`), or
    /// every one with --all; `dlq` also takes --webhook, --since and
    /// --until (RFC 3339), each narrowing the replay.
    Replay {
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[arg(required_unless_present_any = ["all", "webhook", "since", "until"])]
        ids: Vec<String>,
        /// dlq: only this webhook's deliveries.
        #[arg(long)]
        webhook: Option<String>,
        /// dlq: only deliveries that died at or after this time.
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// dlq: only deliveries that died before this time.
        #[arg(long)]
        until: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Remove entries older than --older-than for good (0s: every one).
    /// Nothing else removes them but their own retention.
    Purge {
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
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
            let mut shown = settings.masked();
            // Which backends this binary has, beside what the settings ask.
            shown["built_with"] = serde_json::json!(zen_gateway::config::Built::THIS);
            println!(
                "{}",
                serde_json::to_string_pretty(&shown).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Serve => serve(settings),
        Command::Migrate => migrate(settings),
        Command::Healthcheck => healthcheck(settings.http.port),
        Command::Dlq { action } => command("dlq", settings, |settings| {
            entries(Awaiting::Dlq, action, settings)
        }),
        Command::Quarantine { action } => command("quarantine", settings, |settings| {
            entries(Awaiting::Quarantine, action, settings)
        }),
        Command::Prune { older_than } => command("prune", settings, |settings| async move {
            let configured = settings.retention.policy();
            let retention = older_than.map_or(configured, |age| {
                zen_gateway::retention::Retention::older_than(age, &configured)
            });
            let mut pruner = pruner(&settings).await?;
            pruner.retention = retention;
            let removed = pruner.prune_all().await?;
            // Said, so that nobody believes a blanket age emptied them.
            let left =
                |name: &str, age: Option<std::time::Duration>, env: &str, cmd: &str| match age {
                    None => format!(
                        "{name} kept: {env}=0 keeps it until replayed or `{cmd} --older-than <age>`"
                    ),
                    Some(a) => format!(
                        "{name} pruned by {env}={} only; older entries: `{cmd} --older-than <age>`",
                        humantime::format_duration(a)
                    ),
                };
            Ok(serde_json::json!({
                "removed": removed,
                "skipped": [
                    left("dead letters", retention.dlq, "DLQ_RETENTION", "zen-gateway dlq purge"),
                    left("quarantine", retention.quarantine, "QUARANTINE_RETENTION", "zen-gateway quarantine purge"),
                ],
            }))
        }),
        Command::Backup { file, verify } => {
            match zen_gateway::backends::sqlite::backup_to(&settings.sqlite_path(), &file, verify) {
                Ok(report) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("zen-gateway backup: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Openapi => {
            println!(
                "{}",
                zen_gateway::http::openapi::document_json(&settings.providers)
            );
            ExitCode::SUCCESS
        }
    }
}

/// `dlq` and `quarantine`: the entries that wait for an operator, listed,
/// replayed or purged on the configured backend.
async fn entries(
    kind: Awaiting, action: EntriesAction, settings: Settings,
) -> anyhow::Result<serde_json::Value> {
    let mut backends = Backends::from_settings(&settings, Mode::Command);
    Ok(match action {
        EntriesAction::List { limit } => {
            let limit = limit.clamp(1, 10_000);
            match kind {
                Awaiting::Dlq => {
                    serde_json::to_value(backends.forward_queue().await?.list_dead(limit).await?)?
                }
                Awaiting::Quarantine => serde_json::to_value(
                    backends
                        .inbox()
                        .await?
                        .list_quarantined(limit, None)
                        .await?,
                )?,
            }
        }
        EntriesAction::Replay {
            all,
            ids,
            webhook,
            since,
            until,
        } => {
            let n = match kind {
                Awaiting::Dlq => {
                    let filter = zen_gateway::forwarding::ReplayFilter {
                        ids: (!all && !ids.is_empty()).then_some(ids),
                        webhook_id: webhook,
                        since,
                        until,
                    };
                    backends.forward_queue().await?.replay_dead(&filter).await? as u64
                }
                Awaiting::Quarantine => {
                    if webhook.is_some() || since.is_some() || until.is_some() {
                        anyhow::bail!("--webhook, --since and --until are for `dlq replay`");
                    }
                    if !all && ids.is_empty() {
                        anyhow::bail!("give event ids, or --all");
                    }
                    let inbox = backends.inbox().await?;
                    inbox.replay_quarantined((!all).then_some(&ids[..])).await?
                }
            };
            serde_json::json!({ "replayed": n })
        }
        EntriesAction::Purge { older_than } => {
            let n = pruner(&settings).await?.purge(kind, older_than).await?;
            serde_json::json!({ "purged": n })
        }
    })
}

/// A pruner over the configured backends (the CLI's prune and purges).
async fn pruner(settings: &Settings) -> anyhow::Result<zen_gateway::retention::Pruner> {
    let mut b = Backends::from_settings(settings, Mode::Command);
    Ok(zen_gateway::retention::Pruner {
        store: b.store().await?,
        webhooks: b.webhooks().await?,
        forward_queue: b.forward_queue().await?,
        inbox: b.inbox().await?,
        sessions: b.sessions().await?,
        contacts: b.contacts().await?,
        retention: settings.retention.policy(),
    })
}

/// The async runtime of a subcommand, or `None` (said on stderr).
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new()
        .inspect_err(|e| eprintln!("zen-gateway: cannot start the runtime: {e}"))
        .ok()
}

/// Runs a one-shot command on its own runtime and prints its JSON result.
fn command<F, Fut>(name: &str, settings: Settings, run: F) -> ExitCode
where
    F: FnOnce(Settings) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<serde_json::Value>>,
{
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(run(settings)) {
        Ok(out) => {
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zen-gateway {name}: {e:#}");
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
    let _log = telemetry::init(settings.log_format);
    if settings.backends.mongo_uri.is_none() {
        eprintln!("zen-gateway migrate: MONGO_URI (Keys.json `mongo_uri`) is not set");
        return ExitCode::from(2);
    }
    migrate_mongo(settings)
}

#[cfg(feature = "mongodb")]
fn migrate_mongo(settings: Settings) -> ExitCode {
    use anyhow::Context;
    command("migrate", settings, |settings| async move {
        let mongo = Backends::from_settings(&settings, Mode::Command)
            .mongo()
            .await?;
        let report = mongo.context("MONGO_URI is not set")?.migrate().await?;
        Ok(serde_json::to_value(report)?)
    })
}

/// Not reached: the settings refuse `MONGO_URI` in a build without MongoDB.
#[cfg(not(feature = "mongodb"))]
fn migrate_mongo(_: Settings) -> ExitCode {
    eprintln!("zen-gateway migrate: this build has no MongoDB backend");
    ExitCode::from(2)
}

fn serve(settings: Settings) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    // Declared after the runtime, so dropped before it: the last spans are
    // exported while a gRPC exporter's channel can still run.
    let _log = {
        let _entered = runtime.enter();
        match telemetry::init_with_traces(settings.log_format) {
            Ok(guard) => guard,
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "zen-gateway: {e}");
                return ExitCode::from(2);
            }
        }
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
            // Not `eprintln!`: it panics when stderr's disk is full.
            let _ = writeln!(std::io::stderr(), "zen-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}
