//! The ingest path: validate a webhook body and make it durable in the inbox.
//! Nothing here waits for the store, the cache or a client endpoint.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;

use crate::error::ApiError;
use crate::model::Bsp;
use crate::queue::{Inbox, InboxEntry, QueueError};

/// Accepts webhooks into the inbox.
#[derive(Clone)]
pub struct Ingest {
    inbox: Arc<dyn Inbox>,
    ack_timeout: Duration,
}

impl Ingest {
    pub fn new(inbox: Arc<dyn Inbox>, ack_timeout: Duration) -> Self {
        Ingest { inbox, ack_timeout }
    }

    /// Returns the event id once the body is durable. Errors map to 400 (not
    /// JSON) or 503 (the inbox could not take it in time: the BSP retries;
    /// a body that was committed anyway is deduplicated downstream).
    pub async fn accept(&self, bsp: Bsp, body: Bytes) -> Result<String, ApiError> {
        // Only checks well-formedness: the adapters parse for real in the
        // processor, where a surprise costs nothing but an `unrecognized` row.
        // JSON is UTF-8 (RFC 8259); skipping a string does not check that.
        let text = std::str::from_utf8(&body)
            .map_err(|e| ApiError::InvalidJson(format!("not UTF-8: {e}")))?;
        let probe = probe(bsp, text).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        let event_id = uuid::Uuid::now_v7().to_string();
        let entry = InboxEntry {
            event_id: event_id.clone(),
            bsp,
            received_at: Utc::now(),
            body,
            priority: probe.priority,
            batch_len: probe.batch_len,
        };
        match tokio::time::timeout(self.ack_timeout, self.inbox.append(entry)).await {
            Ok(Ok(())) => Ok(event_id),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(QueueError::Timeout(self.ack_timeout).into()),
        }
    }
}

/// What ingest learns about a body in its one validating pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub priority: u8,
    pub batch_len: Option<usize>,
}

#[derive(serde::Deserialize)]
struct ObjectProbe<'a> {
    #[serde(rename = "eventContent")]
    event_content: Option<serde::de::IgnoredAny>,
    #[serde(borrow)]
    topic: Option<&'a serde_json::value::RawValue>,
}

/// Validates `text` as JSON and finds its queue priority and batch size.
/// Inbound user messages get priority 5 (Datagen/Karix `eventContent`,
/// AiSensy `message.sender.user`); everything else 0.
pub fn probe(bsp: Bsp, text: &str) -> Result<Probe, serde_json::Error> {
    use serde::de::IgnoredAny;
    match text.trim_start().as_bytes().first() {
        Some(b'[') => {
            let items: Vec<IgnoredAny> = serde_json::from_str(text)?;
            Ok(Probe {
                priority: 0,
                batch_len: Some(items.len()),
            })
        }
        Some(b'{') => match serde_json::from_str::<ObjectProbe<'_>>(text) {
            Ok(p) => {
                let inbound = match bsp {
                    Bsp::Datagen | Bsp::Karix => p.event_content.is_some(),
                    Bsp::Aisensy => p
                        .topic
                        .is_some_and(|t| t.get() == "\"message.sender.user\""),
                    Bsp::Meta => false,
                };
                Ok(Probe {
                    priority: if inbound { 5 } else { 0 },
                    batch_len: None,
                })
            }
            // Valid JSON the probe cannot read (say, a duplicate key): no
            // priority, but still accepted.
            Err(_) => serde_json::from_str::<IgnoredAny>(text).map(|_| Probe::default()),
        },
        _ => serde_json::from_str::<IgnoredAny>(text).map(|_| Probe::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_priority_and_batches() {
        assert_eq!(
            probe(Bsp::Datagen, " [1, {}, []]").unwrap().batch_len,
            Some(3)
        );
        assert_eq!(
            probe(Bsp::Datagen, r#"{"eventContent":{"message":{}}}"#)
                .unwrap()
                .priority,
            5
        );
        assert_eq!(probe(Bsp::Karix, r#"{"events":{}}"#).unwrap().priority, 0);
        assert_eq!(
            probe(Bsp::Aisensy, r#"{"topic":"message.sender.user"}"#)
                .unwrap()
                .priority,
            5
        );
        assert_eq!(probe(Bsp::Aisensy, r#"{"topic":5}"#).unwrap().priority, 0);
        assert_eq!(
            probe(Bsp::Aisensy, r#"{"a":1,"a":2}"#).unwrap(),
            Probe::default()
        );
        assert!(probe(Bsp::Datagen, "{").is_err());
        assert!(probe(Bsp::Datagen, "[1,").is_err());
        assert!(probe(Bsp::Datagen, "").is_err());
    }
}
