//! The ingest path: validate a webhook body and make it durable in the inbox.
//! Nothing here waits for the store, the cache or a client endpoint.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;

use crate::error::ApiError;
use crate::model::Bsp;
use crate::providers::{ProbeError, Providers};
use crate::queue::{Inbox, InboxEntry, QueueError};
use crate::telemetry::traces::TraceParent;

/// Accepts webhooks into the inbox.
#[derive(Clone)]
pub struct Ingest {
    inbox: Arc<dyn Inbox>,
    ack_timeout: Duration,
    providers: Providers,
}

impl Ingest {
    pub fn new(inbox: Arc<dyn Inbox>, ack_timeout: Duration, providers: Providers) -> Self {
        Ingest {
            inbox,
            ack_timeout,
            providers,
        }
    }

    /// Returns the event id once the body is durable. Errors map to 400 (not
    /// JSON, or not one of the route's events) or 503 (the inbox could not take it in time: the BSP retries;
    /// a body that was committed anyway is deduplicated downstream).
    pub async fn accept(
        &self, bsp: Bsp, body: Bytes, trace: TraceParent,
    ) -> Result<String, ApiError> {
        // Only checks well-formedness: the adapters parse for real in the
        // processor, where a surprise costs nothing but an `unrecognized` row.
        // JSON is UTF-8 (RFC 8259); skipping a string does not check that.
        let text = std::str::from_utf8(&body)
            .map_err(|e| ApiError::InvalidJson(format!("not UTF-8: {e}")))?;
        let probe = self.providers.probe(bsp, text).map_err(|e| match e {
            ProbeError::NotJson(e) => ApiError::InvalidJson(e.to_string()),
            ProbeError::NotAnEvent(reason) => ApiError::NotAnEvent(reason),
        })?;
        let event_id = uuid::Uuid::now_v7().to_string();
        let entry = InboxEntry {
            event_id: event_id.clone(),
            bsp,
            received_at: Utc::now(),
            body,
            priority: probe.priority,
            batch_len: probe.batch_len,
            trace: Some(trace),
        };
        match tokio::time::timeout(self.ack_timeout, self.inbox.append(entry)).await {
            Ok(Ok(())) => Ok(event_id),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(QueueError::Timeout(self.ack_timeout).into()),
        }
    }
}
