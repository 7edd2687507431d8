//! Gupshup webhooks, in the three shapes it posts (docs/PROVIDERS.md, "Gupshup"):
//! - v2 `message-event`: `payload.type` is the status (`enqueued`, `failed`,
//!   `sent`, `delivered`, `read`, `deleted`). On delivery reports
//!   `payload.id` is the wamid and `payload.gsId` Gupshup's own id; on
//!   `enqueued` / `failed` without a `gsId`, `payload.id` is Gupshup's id
//!   (and `enqueued` names the wamid in `payload.payload.whatsappMessageId`).
//!   The event time is `payload.payload.ts` (seconds) when present, else the
//!   envelope's millisecond `timestamp` (when Gupshup posted it).
//! - v2 `message`: an inbound user message (`payload.type` text, image, file,
//!   audio, video, contact, location, button_reply, list_reply…, with
//!   `context` for replies).
//! - v3: the Cloud API shape with `gs_id` beside each status and a
//!   top-level `gs_app_id` ([`cloud_api`]).
//! - the enterprise format: a JSON array of up to 20 delivery reports
//!   (`externalId`, `eventType`, `eventTs` in ms, `destAddr`, `cause`,
//!   `errorCode`).
//!
//! A record is found by its wamid or its Gupshup id. Other v2 types
//! (`user-event`, `billing-event`) are kept as notifications.

use serde_json::Value;

use super::cloud_api::{self, CloudApi};
use super::json::{at, status_key, text, time};
use super::{CredentialEnv, Parsed, Provider, RawWebhook};
use crate::model::{Bsp, Direction, MessageEvent, Status, UNKNOWN_STATUS_EVENT_TYPE};

pub struct Gupshup;

const V3: CloudApi = CloudApi {
    prefix: "gupshup",
    provider_id_key: Some("gs_id"),
};

/// The most events one enterprise-format body is read for (Gupshup sends at
/// most 20; the rest of a longer array is kept as unrecognized).
const ENTERPRISE_MAX: usize = 1000;

fn map_status(raw: &str) -> Option<Status> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "enqueued" => Some(Status::Accepted),
        "sent" => Some(Status::Sent),
        "delivered" => Some(Status::Delivered),
        "read" => Some(Status::Read),
        "failed" => Some(Status::Failed),
        _ => None,
    }
}

impl Provider for Gupshup {
    fn bsp(&self) -> Bsp {
        Bsp::Gupshup
    }

    fn name(&self) -> &'static str {
        "Gupshup"
    }

    fn routes(&self) -> &'static [&'static str] {
        &["/webhook/gupshup"]
    }

    fn summary(&self) -> &'static str {
        "Gupshup webhooks: v2 message events and inbound messages, v3 (Cloud API shape) events, and the enterprise array of delivery reports."
    }

    fn ack_body(&self) -> &'static str {
        r#"{"status":200,"message":"Gupshup webhook received successfully"}"#
    }

    fn credential_env(&self) -> CredentialEnv {
        CredentialEnv {
            token: "GUPSHUP_WEBHOOK_TOKEN",
            secret: "GUPSHUP_WEBHOOK_SECRET",
            verify_token: None,
        }
    }

    /// v2 `type: "message"`, or v3 `messages`.
    /// Its enterprise API posts batches as JSON arrays.
    fn takes_batches(&self) -> bool {
        true
    }

    fn is_inbound(&self, object: &str) -> Result<bool, serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct Envelope<'a> {
            #[serde(rename = "type", borrow)]
            kind: Option<std::borrow::Cow<'a, str>>,
            entry: Option<serde::de::IgnoredAny>,
        }
        let envelope: Envelope<'_> = serde_json::from_str(object)?;
        if envelope.entry.is_some() {
            return cloud_api::is_inbound(object);
        }
        Ok(envelope.kind.as_deref() == Some("message"))
    }

    fn parse(&self, webhook: &RawWebhook<'_>) -> Parsed {
        let body: Value = match serde_json::from_slice(webhook.body) {
            Ok(v) => v,
            Err(e) => return Parsed::unrecognized_body(webhook, format!("body is not JSON: {e}")),
        };
        if let Value::Array(items) = &body {
            return enterprise(webhook, items);
        }
        if body.get("entry").is_some() {
            return V3.parse(webhook);
        }
        let kind = text(&body, &["type"]);
        let Some(payload) = body.get("payload").filter(|p| p.is_object()) else {
            return Parsed::unrecognized_body(webhook, "no payload object");
        };
        let envelope_time = body.get("timestamp").and_then(time);
        let result = match kind.as_deref() {
            Some("message-event") => {
                status_event(payload, envelope_time, webhook).map(|m| (m, "gupshup.message-event"))
            }
            Some("message") => {
                inbound_event(payload, envelope_time, webhook).map(|m| (m, "gupshup.message"))
            }
            Some(other) => {
                // user-event, billing-event, …: kept and forwarded.
                return Parsed {
                    events: vec![webhook.event(
                        0,
                        format!("gupshup.{other}"),
                        other.to_owned(),
                        body.clone(),
                        None,
                    )],
                    unrecognized: Vec::new(),
                };
            }
            None => Err("no type"),
        };
        match result {
            Ok((m, legacy)) => {
                let unified = m
                    .status
                    .map(Status::event_type)
                    .unwrap_or(UNKNOWN_STATUS_EVENT_TYPE);
                Parsed {
                    events: vec![webhook.event(
                        0,
                        legacy.to_owned(),
                        unified.to_owned(),
                        body.clone(),
                        Some(m),
                    )],
                    unrecognized: Vec::new(),
                }
            }
            Err(reason) => Parsed::unrecognized_body(webhook, reason),
        }
    }
}

fn status_event(
    payload: &Value, envelope_time: Option<chrono::DateTime<chrono::Utc>>, webhook: &RawWebhook<'_>,
) -> Result<MessageEvent, &'static str> {
    let raw_status = text(payload, &["type"]).ok_or("message-event without payload.type")?;
    let id = text(payload, &["id"]);
    let gs_id = text(payload, &["gsId"]);
    let lower = raw_status.to_ascii_lowercase();
    let (wamid, provider_id) = match (&gs_id, lower.as_str()) {
        // A delivery report: Meta's id, and Gupshup's beside it.
        (Some(_), _) => (id, gs_id.clone()),
        // Gupshup's own id; `enqueued` may name the wamid inside.
        (None, "enqueued" | "failed") => (text(payload, &["payload", "whatsappMessageId"]), id),
        // A report more than a week after sending carries no gsId.
        (None, _) => (id, None),
    };
    if wamid.is_none() && provider_id.is_none() {
        return Err("message-event without an id");
    }
    let inner_ts = at(payload, &["payload", "ts"]);
    let status = map_status(&raw_status);
    let failed = status == Some(Status::Failed);
    Ok(MessageEvent {
        wamid,
        bsp_message_id: provider_id,
        direction: Direction::Outbound,
        phone_number: text(payload, &["destination"]),
        business_number: None,
        dedup_key: status_key(Some(&lower), inner_ts),
        status,
        raw_status: Some(raw_status),
        occurred_at: inner_ts
            .and_then(time)
            .or(envelope_time)
            .unwrap_or(webhook.received_at),
        error_code: failed
            .then(|| text(payload, &["payload", "code"]))
            .flatten(),
        reason: failed
            .then(|| text(payload, &["payload", "reason"]))
            .flatten(),
        campaign_id: None,
        project_id: None,
        content: None,
        tags: Default::default(),
        billing: None,
        user: None,
    })
}

fn inbound_event(
    payload: &Value, envelope_time: Option<chrono::DateTime<chrono::Utc>>, webhook: &RawWebhook<'_>,
) -> Result<MessageEvent, &'static str> {
    let wamid = text(payload, &["id"]).ok_or("message without payload.id")?;
    Ok(MessageEvent {
        wamid: Some(wamid),
        bsp_message_id: None,
        direction: Direction::Inbound,
        phone_number: text(payload, &["source"]).or_else(|| text(payload, &["sender", "phone"])),
        business_number: None,
        status: Some(Status::Received),
        raw_status: text(payload, &["type"]),
        occurred_at: envelope_time.unwrap_or(webhook.received_at),
        error_code: None,
        reason: None,
        campaign_id: None,
        project_id: None,
        // Type, content, sender and reply `context` as Gupshup gives them.
        content: Some(payload.clone()),
        tags: Default::default(),
        billing: None,
        user: None,
        dedup_key: "received".into(),
    })
}

/// The enterprise format: one delivery report per element.
fn enterprise(webhook: &RawWebhook<'_>, items: &[Value]) -> Parsed {
    let mut out = Parsed::default();
    for (index, item) in items.iter().enumerate() {
        if index >= ENTERPRISE_MAX {
            out.unrecognized.push(webhook.unrecognized(
                format!("enterprise report past the first {ENTERPRISE_MAX}"),
                item.to_string(),
            ));
            continue;
        }
        let Some(id) = text(item, &["externalId"]) else {
            out.unrecognized.push(
                webhook.unrecognized("enterprise report without externalId", item.to_string()),
            );
            continue;
        };
        let raw_status = text(item, &["eventType"]);
        let status = raw_status.as_deref().and_then(map_status);
        let ts = item.get("eventTs");
        let failed = status == Some(Status::Failed);
        let m = MessageEvent {
            wamid: None,
            bsp_message_id: Some(id),
            direction: Direction::Outbound,
            phone_number: text(item, &["destAddr"]),
            business_number: text(item, &["srcAddr"]),
            dedup_key: status_key(raw_status.as_deref(), ts),
            status,
            raw_status,
            occurred_at: ts.and_then(time).unwrap_or(webhook.received_at),
            error_code: failed
                .then(|| text(item, &["errorCode"]).or_else(|| text(item, &["errCode"])))
                .flatten(),
            reason: failed.then(|| text(item, &["cause"])).flatten(),
            campaign_id: None,
            project_id: None,
            content: None,
            tags: Default::default(),
            billing: None,
            user: None,
        };
        let unified = m
            .status
            .map(Status::event_type)
            .unwrap_or(UNKNOWN_STATUS_EVENT_TYPE);
        out.events.push(webhook.event(
            index,
            "gupshup.enterprise".into(),
            unified.into(),
            item.clone(),
            Some(m),
        ));
    }
    if out.events.is_empty() && out.unrecognized.is_empty() {
        return Parsed::unrecognized_body(webhook, "empty array");
    }
    out
}
