//! Prometheus metrics (`GET /metrics`), through the `metrics` facade. The
//! README's table is this one (a test checks both against the names the
//! code registers).
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `zen_webhooks_received_total` | counter | `bsp`, `outcome` (accepted, invalid, unauthorized, too_large, unavailable) | webhooks answered, by how |
//! | `zen_ingest_ack_seconds` | histogram | `bsp` | receipt → durable (the 200) |
//! | `zen_events_total` | counter | `bsp`, `type` (unified event type) | events applied (duplicates not counted) |
//! | `zen_duplicates_total` | counter | | events the store or the dedup cache took for duplicates |
//! | `zen_unrecognized_total` | counter | `bsp` | bodies or elements no adapter understood (kept) |
//! | `zen_processing_lag_seconds` | histogram | | receipt → applied |
//! | `zen_processor_batch_entries` | summary | | inbox entries per batch the processor took (up to `PROCESSOR_BATCH_SIZE`; small batches under load mean per-batch costs dominate) |
//! | `zen_quarantined_total` | counter | `bsp` | inbox entries set aside after their attempts |
//! | `zen_deliveries_total` | counter | `outcome` (success, retry, dead, parked, duplicate) | delivery attempts and their ends |
//! | `zen_delivery_seconds` | histogram | | one delivery attempt |
//! | `zen_operational_events_total` | counter | `kind` (endpoint.disabled, endpoint.failing) | operational events raised |
//! | `zen_inbox_depth`, `zen_forward_queue_depth`, `zen_forward_dlq_depth`, `zen_quarantine_depth`, `zen_breakers_open` | gauge | | backlogs and open circuits (background reading, every 2 s) |
//! | `zen_backend_up` | gauge | `role`, `backend` | each backend up (1) or down (background reading) |
//! | `zen_probe_refreshes_total` | counter | | background readings of the backends for `/ready` and `/metrics` |
//! | `zen_forward_filtered_total` | counter | `webhook_id` | events a webhook's payload filter kept from it |
//! | `zen_log_lines_dropped_total` | counter | | log lines dropped: the log buffer full (stdout not drained) or stdout refusing writes (its disk full); never a request held up (background reading, every 2 s) |
//! | `zen_store_commands_total` | counter | `op` (the command: find, insert, update, …) | commands sent to MongoDB, from the driver's command monitoring |
//! | `zen_sqlite_transaction_seconds` | histogram | `lane` (acked: holds webhook appends or API writes, synced to disk; background: bookkeeping only) | the embedded writer's time per transaction |
//! | `zen_pruned_total` | counter | `kind` (messages, delivery_logs, unrecognized, notifications, dlq, quarantine, sessions) | rows retention removed |
//! | `zen_console_sign_ins_total` | counter | `outcome` (success, wrong_key, limited) | console sign-ins |
//! | `zen_admin_auth_failures_total` | counter | | admin API calls with a wrong key |
//! | `zen_http_connection_limit_reached_total` | counter | | times `MAX_CONNECTIONS` held new connections back |
//! | `zen_broker_connections_lost_total` | counter | | RabbitMQ connections given up and replaced: the node went away, or a publish confirm or an ack did not come within 10 s |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::model::Bsp;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder, installed on first use (tests build several
/// apps in one process; they share it).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let buckets = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Fails only if another recorder is installed; then ours stays local.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The webhook outcomes `zen_webhooks_received_total` counts.
const WEBHOOK_OUTCOMES: [&str; 5] = [
    "accepted",
    "invalid",
    "unauthorized",
    "too_large",
    "unavailable",
];

/// The ingest path's metric handles, registered once: a `counter!` call
/// hashes its labels and looks the series up on every webhook.
struct IngestMetrics {
    /// `[bsp][outcome]`, in `Bsp::ALL` and `WEBHOOK_OUTCOMES` order.
    received: Vec<Vec<metrics::Counter>>,
    ack_seconds: Vec<metrics::Histogram>,
}

fn ingest_metrics() -> &'static IngestMetrics {
    static METRICS: OnceLock<IngestMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        // Handles taken before the recorder is installed would record nowhere.
        handle();
        IngestMetrics {
            received: Bsp::ALL
                .iter()
                .map(|bsp| {
                    WEBHOOK_OUTCOMES
                        .iter()
                        .map(|outcome| {
                            metrics::counter!("zen_webhooks_received_total", "bsp" => bsp.as_str(), "outcome" => *outcome)
                        })
                        .collect()
                })
                .collect(),
            ack_seconds: Bsp::ALL
                .iter()
                .map(|bsp| metrics::histogram!("zen_ingest_ack_seconds", "bsp" => bsp.as_str()))
                .collect(),
        }
    })
}

fn bsp_index(bsp: Bsp) -> usize {
    Bsp::ALL.iter().position(|b| *b == bsp).unwrap_or(0)
}

/// Counts one webhook by its outcome.
pub fn webhook(bsp: Bsp, outcome: &'static str) {
    match WEBHOOK_OUTCOMES.iter().position(|o| *o == outcome) {
        Some(i) => ingest_metrics().received[bsp_index(bsp)][i].increment(1),
        None => metrics::counter!("zen_webhooks_received_total", "bsp" => bsp.as_str(), "outcome" => outcome)
            .increment(1),
    }
}

/// The embedded writer's time per transaction, from `BEGIN` until durable,
/// for transactions of one `lane` ("acked" or "background").
pub fn sqlite_transaction_seconds(lane: &'static str) -> metrics::Histogram {
    // Handles taken before the recorder is installed would record nowhere.
    handle();
    metrics::histogram!("zen_sqlite_transaction_seconds", "lane" => lane)
}

/// Records how long a webhook took to become durable.
pub fn ingest_ack(bsp: Bsp, elapsed: std::time::Duration) {
    ingest_metrics().ack_seconds[bsp_index(bsp)].record(elapsed.as_secs_f64());
}
