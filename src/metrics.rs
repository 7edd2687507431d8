//! Prometheus metrics (`GET /metrics`), through the `metrics` facade.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `zen_webhooks_received_total` | counter | `bsp`, `outcome` (accepted, invalid, unauthorized, too_large, unavailable) |
//! | `zen_ingest_ack_seconds` | histogram | `bsp` |
//! | `zen_events_total` | counter | `bsp`, `type` (unified event type) |
//! | `zen_duplicates_total` | counter | |
//! | `zen_unrecognized_total` | counter | `bsp` |
//! | `zen_processing_lag_seconds` | histogram | (receive → applied) |
//! | `zen_deliveries_total` | counter | `outcome` (success, retry, dead, parked) |
//! | `zen_delivery_seconds` | histogram | |
//! | `zen_inbox_depth`, `zen_forward_queue_depth`, `zen_forward_dlq_depth`, `zen_breakers_open` | gauge | (read at scrape) |
//! | `zen_backend_up` | gauge | `role`, `backend` (read at scrape) |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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

/// Counts one webhook by its outcome.
pub fn webhook(bsp: &'static str, outcome: &'static str) {
    metrics::counter!("zen_webhooks_received_total", "bsp" => bsp, "outcome" => outcome)
        .increment(1);
}
