//! The Karix RCM callback family, shared by Karix and Datagen (a Karix
//! reseller): `events{eventType, timestamp, mid}`,
//! `notificationAttributes{status, reason, code}`, `recipient{to, reference}`,
//! `sender{from}` for delivery events, `eventContent.message` for user
//! messages. docs/PROVIDERS.md, "Datagen" and "Karix".

use serde_json::Value;

use super::json::{at, status_key, text, time};
use super::{Parsed, RawWebhook};
use crate::model::{Bsp, Direction, MessageEvent, Status, UNKNOWN_STATUS_EVENT_TYPE};

/// How one member of the family differs.
pub struct Flavor {
    pub bsp: Bsp,
    /// Datagen puts the wamid in `events.mid`; Karix puts its own id there.
    pub mid_is_wamid: bool,
}

/// `recipient.reference` echoes kept as tags.
const REFERENCE_TAGS: &[&str] = &[
    "cust_ref",
    "messageTag1",
    "messageTag2",
    "messageTag3",
    "conversationId",
];

/// Maps an RCM status string (any case, trimmed) to a unified status.
pub fn map_status(raw: &str) -> Option<Status> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "sent" => Some(Status::Sent),
        "delivered" => Some(Status::Delivered),
        "read" => Some(Status::Read),
        "failed" | "not sent" | "dropped" => Some(Status::Failed),
        _ => None,
    }
}

/// Parses a body that is one event object or (leading whitespace allowed) a
/// JSON array of them.
/// An RCM object is an inbound user message when it has `eventContent`.
pub fn is_inbound(object: &str) -> Result<bool, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "eventContent")]
        event_content: Option<serde::de::IgnoredAny>,
    }
    Ok(serde_json::from_str::<Probe>(object)?
        .event_content
        .is_some())
}

pub fn parse_body(flavor: &Flavor, webhook: &RawWebhook<'_>) -> Parsed {
    let value: Value = match serde_json::from_slice(webhook.body) {
        Ok(v) => v,
        Err(e) => return Parsed::unrecognized_body(webhook, format!("body is not JSON: {e}")),
    };
    let mut parsed = Parsed::default();
    // The legacy BSP-queue form of a batch, as RabbitMQ delivers it back.
    let value = match value {
        Value::Object(mut obj) if obj.get("batch_data").is_some_and(Value::is_array) => {
            obj.remove("batch_data").unwrap_or_default()
        }
        other => other,
    };
    match value {
        Value::Array(items) => {
            for (index, item) in items.into_iter().enumerate() {
                parse_item(flavor, webhook, index, item, &mut parsed);
            }
        }
        item @ Value::Object(_) => parse_item(flavor, webhook, 0, item, &mut parsed),
        _ => return Parsed::unrecognized_body(webhook, "body is neither an object nor an array"),
    }
    parsed
}

fn parse_item(
    flavor: &Flavor, webhook: &RawWebhook<'_>, index: usize, item: Value, out: &mut Parsed,
) {
    let result = if !item.is_object() {
        Err("event is not a JSON object")
    } else if is_delivery(&item) {
        delivery(flavor, webhook, &item)
    } else if at(&item, &["eventContent", "message"]).is_some_and(Value::is_object) {
        inbound(flavor, webhook, &item)
    } else {
        Err("neither a delivery event nor a user message")
    };
    match result {
        Ok(message) => {
            let (legacy_type, unified_type) = event_types(flavor.bsp, &message);
            out.events
                .push(webhook.event(index, legacy_type, unified_type, item, Some(message)));
        }
        Err(reason) => out
            .unrecognized
            .push(webhook.unrecognized(reason, item.to_string())),
    }
}

fn is_delivery(item: &Value) -> bool {
    at(item, &["notificationAttributes", "status"]).is_some()
        || text(item, &["events", "eventType"])
            .is_some_and(|t| t.eq_ignore_ascii_case("DELIVERY EVENTS"))
}

fn event_types(bsp: Bsp, m: &MessageEvent) -> (String, String) {
    let unified = m
        .status
        .map(Status::event_type)
        .unwrap_or(UNKNOWN_STATUS_EVENT_TYPE)
        .to_owned();
    let legacy = match (bsp, m.direction) {
        (Bsp::Datagen, Direction::Inbound) => "datagen.user_message".to_owned(),
        (Bsp::Datagen, Direction::Outbound) => "datagen.delivery".to_owned(),
        (_, Direction::Inbound) => format!("{bsp}.user_message"),
        // The legacy Karix event names: karix.message_sent, …_delivered, …
        (_, Direction::Outbound) => format!(
            "{bsp}.message_{}",
            m.status.map(Status::as_str).unwrap_or("unknown")
        ),
    };
    (legacy, unified)
}

fn delivery(
    flavor: &Flavor, webhook: &RawWebhook<'_>, item: &Value,
) -> Result<MessageEvent, &'static str> {
    let mid = text(item, &["events", "mid"]).ok_or("delivery event without events.mid")?;
    let raw_status = text(item, &["notificationAttributes", "status"]);
    let status = raw_status.as_deref().and_then(map_status);
    let ts = at(item, &["events", "timestamp"]);
    let occurred_at = ts.and_then(time).unwrap_or(webhook.received_at);
    // Error details only mean something on failures (Karix sends code "000"
    // with successes).
    let is_failure = status.is_none_or(|s| s == Status::Failed);
    let reference = |key: &str| text(item, &["recipient", "reference", key]);
    let (wamid, bsp_message_id) = if flavor.mid_is_wamid || mid.starts_with("wamid.") {
        (Some(mid), None)
    } else {
        (None, Some(mid))
    };
    Ok(MessageEvent {
        billing: None,
        user: None,
        wamid,
        bsp_message_id,
        direction: Direction::Outbound,
        phone_number: text(item, &["recipient", "to"]),
        business_number: text(item, &["sender", "from"]),
        dedup_key: status_key(raw_status.as_deref(), ts),
        status,
        raw_status,
        occurred_at,
        error_code: is_failure
            .then(|| text(item, &["notificationAttributes", "code"]))
            .flatten(),
        reason: is_failure
            .then(|| text(item, &["notificationAttributes", "reason"]))
            .flatten(),
        campaign_id: reference("parent_campaign_id").or_else(|| reference("campaign_id")),
        project_id: reference("project_id"),
        content: None,
        tags: REFERENCE_TAGS
            .iter()
            .filter_map(|k| reference(k).map(|v| ((*k).to_owned(), v)))
            .collect(),
    })
}

fn inbound(
    flavor: &Flavor, webhook: &RawWebhook<'_>, item: &Value,
) -> Result<MessageEvent, &'static str> {
    let message = at(item, &["eventContent", "message"]).ok_or("no eventContent.message")?;
    let msg_id = text(message, &["id"]);
    let mid = text(item, &["events", "mid"]);
    let wamid = [&msg_id, &mid]
        .into_iter()
        .flatten()
        .find(|id| id.starts_with("wamid."))
        .cloned()
        .or_else(|| {
            flavor
                .mid_is_wamid
                .then(|| msg_id.clone().or_else(|| mid.clone()))
                .flatten()
        });
    // Karix's own id for the inbound message, when it is not the wamid.
    let bsp_message_id = mid.filter(|m| Some(m) != wamid.as_ref());
    if wamid.is_none() && bsp_message_id.is_none() {
        return Err("user message without any message id");
    }
    let ts = at(item, &["events", "timestamp"]);
    Ok(MessageEvent {
        billing: None,
        user: None,
        wamid,
        bsp_message_id,
        direction: Direction::Inbound,
        phone_number: text(message, &["from"]),
        business_number: text(message, &["to"]),
        status: Some(Status::Received),
        raw_status: text(item, &["events", "eventType"]),
        occurred_at: ts.and_then(time).unwrap_or(webhook.received_at),
        error_code: None,
        reason: None,
        campaign_id: None,
        project_id: None,
        content: Some(message.clone()),
        tags: Default::default(),
        dedup_key: "received".to_owned(),
    })
}
