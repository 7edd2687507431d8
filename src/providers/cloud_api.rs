//! The WhatsApp Cloud API webhook shape, `entry[].changes[].value` with
//! `statuses[]`, `messages[]` + `contacts[]`, `errors[]`, or another field's
//! notification. Meta posts it, and BSPs relay it (with their own ids beside
//! Meta's). Every array element is its own event. docs/PROVIDERS.md, "Meta Cloud API".

use serde_json::Value;

use super::json::{at, status_key, text, time};
use super::{Parsed, RawWebhook};
use crate::model::{Direction, MessageEvent, Status, UNKNOWN_STATUS_EVENT_TYPE};

/// The most bytes of `pricing` + `conversation` kept on a record.
const BILLING_CAP: usize = 4096;

/// One sender of the Cloud API shape (the webhook says which BSP): the
/// prefix of its legacy event types (`<prefix>.status`, `<prefix>.message`,
/// `<prefix>.<field>`), and the key of the sender's own id beside each
/// status, if it adds one.
pub(super) struct CloudApi {
    pub prefix: &'static str,
    pub provider_id_key: Option<&'static str>,
}

fn map_status(raw: &str) -> Option<Status> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "enqueued" | "accepted" => Some(Status::Accepted),
        "sent" => Some(Status::Sent),
        "delivered" => Some(Status::Delivered),
        "read" => Some(Status::Read),
        "failed" => Some(Status::Failed),
        _ => None,
    }
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Whether a Cloud API body carries inbound user messages
/// (`entry[].changes[].value.messages`), validating it as it reads.
pub(super) fn is_inbound(object: &str) -> Result<bool, serde_json::Error> {
    use serde::de::IgnoredAny;
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        entry: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        changes: Vec<Change>,
    }
    #[derive(serde::Deserialize)]
    struct Change {
        value: Option<ChangeValue>,
    }
    #[derive(serde::Deserialize)]
    struct ChangeValue {
        messages: Option<IgnoredAny>,
    }
    let body: Body = serde_json::from_str(object)?;
    Ok(body
        .entry
        .iter()
        .flat_map(|e| &e.changes)
        .any(|c| c.value.as_ref().is_some_and(|v| v.messages.is_some())))
}

impl CloudApi {
    pub fn parse(&self, webhook: &RawWebhook<'_>) -> Parsed {
        let body: Value = match serde_json::from_slice(webhook.body) {
            Ok(v) => v,
            Err(e) => return Parsed::unrecognized_body(webhook, format!("body is not JSON: {e}")),
        };
        if !body.get("entry").is_some_and(Value::is_array) {
            return Parsed::unrecognized_body(webhook, "no entry[] array");
        }
        let mut out = Parsed::default();
        let mut index = 0;
        let mut next = || {
            let i = index;
            index += 1;
            i
        };
        for entry in array(&body, "entry") {
            for change in array(entry, "changes") {
                let Some(value) = change.get("value").filter(|v| v.is_object()) else {
                    out.unrecognized.push(
                        webhook.unrecognized("change without a value object", change.to_string()),
                    );
                    continue;
                };
                let field = text(change, &["field"]).unwrap_or_else(|| "messages".into());
                let business = text(value, &["metadata", "display_phone_number"]);
                let statuses = array(value, "statuses");
                let messages = array(value, "messages");
                let errors = array(value, "errors");
                if statuses.is_empty() && messages.is_empty() {
                    // Another webhook field (template status, account alert,
                    // quality update…) or out-of-band errors alone: kept,
                    // listed and forwardable, not a message.
                    let kind = if errors.is_empty() || field != "messages" {
                        field.clone()
                    } else {
                        "errors".to_owned()
                    };
                    out.events.push(webhook.event(
                        next(),
                        format!("{}.{kind}", self.prefix),
                        kind,
                        change.clone(),
                        None,
                    ));
                    continue;
                }
                if !errors.is_empty() {
                    // Out-of-band errors beside statuses or messages: kept as
                    // their own notification.
                    out.events.push(webhook.event(next(),
                        format!("{}.errors", self.prefix),
                        "errors".into(),
                        serde_json::json!({"field": field, "value": {"errors": errors, "metadata": value.get("metadata")}}),
                        None,
                    ));
                }
                for status in statuses {
                    match self.status_event(status, &business, webhook) {
                        Ok(m) => {
                            let unified = m
                                .status
                                .map(Status::event_type)
                                .unwrap_or(UNKNOWN_STATUS_EVENT_TYPE);
                            out.events.push(webhook.event(
                                next(),
                                format!("{}.status", self.prefix),
                                unified.into(),
                                status.clone(),
                                Some(m),
                            ));
                        }
                        Err(reason) => out
                            .unrecognized
                            .push(webhook.unrecognized(reason, status.to_string())),
                    }
                }
                for message in messages {
                    match self.inbound_event(message, value, &business, webhook) {
                        Ok(m) => out.events.push(webhook.event(
                            next(),
                            format!("{}.message", self.prefix),
                            Status::Received.event_type().into(),
                            message.clone(),
                            Some(m),
                        )),
                        Err(reason) => out
                            .unrecognized
                            .push(webhook.unrecognized(reason, message.to_string())),
                    }
                }
            }
        }
        if out.events.is_empty() && out.unrecognized.is_empty() {
            return Parsed::unrecognized_body(webhook, "no changes in any entry");
        }
        out
    }

    fn status_event(
        &self, status: &Value, business: &Option<String>, webhook: &RawWebhook<'_>,
    ) -> Result<MessageEvent, &'static str> {
        let wamid = text(status, &["id"]).ok_or("status without id")?;
        let raw_status = text(status, &["status"]);
        let mapped = raw_status.as_deref().and_then(map_status);
        let ts = status.get("timestamp");
        let first_error = array(status, "errors").first();
        let error_text = |path: &[&str]| first_error.and_then(|e| text(e, path));
        Ok(MessageEvent {
            wamid: Some(wamid),
            bsp_message_id: self.provider_id_key.and_then(|k| text(status, &[k])),
            direction: Direction::Outbound,
            phone_number: text(status, &["recipient_id"]),
            business_number: business.clone(),
            dedup_key: status_key(raw_status.as_deref(), ts),
            status: mapped,
            raw_status,
            occurred_at: ts.and_then(time).unwrap_or(webhook.received_at),
            error_code: error_text(&["code"]),
            reason: error_text(&["title"]).or_else(|| error_text(&["message"])),
            campaign_id: None,
            project_id: None,
            content: None,
            // The echo of what the sender attached (often a campaign tag).
            tags: text(status, &["biz_opaque_callback_data"])
                .map(|v| ("biz_opaque_callback_data".to_owned(), v))
                .into_iter()
                .collect(),
            billing: billing(status),
        })
    }

    fn inbound_event(
        &self, message: &Value, value: &Value, business: &Option<String>, webhook: &RawWebhook<'_>,
    ) -> Result<MessageEvent, &'static str> {
        let wamid = text(message, &["id"]).ok_or("message without id")?;
        let from = text(message, &["from"]);
        let profile_name = array(value, "contacts")
            .iter()
            .find(|c| from.is_some() && text(c, &["wa_id"]) == from)
            .or_else(|| array(value, "contacts").first())
            .and_then(|c| at(c, &["profile", "name"]).cloned());
        let mut content = message.clone();
        if let (Some(obj), Some(name)) = (content.as_object_mut(), profile_name) {
            obj.insert("profile_name".into(), name);
        }
        Ok(MessageEvent {
            wamid: Some(wamid),
            bsp_message_id: None,
            direction: Direction::Inbound,
            phone_number: from,
            business_number: business.clone(),
            status: Some(Status::Received),
            raw_status: text(message, &["type"]),
            occurred_at: message
                .get("timestamp")
                .and_then(time)
                .unwrap_or(webhook.received_at),
            error_code: None,
            reason: None,
            campaign_id: None,
            project_id: None,
            content: Some(content),
            tags: Default::default(),
            billing: None,
            dedup_key: "received".into(),
        })
    }
}

/// A status's `pricing` (`billable`, `pricing_model`, `type`, `category`)
/// and `conversation` (`id`, `origin`, `expiration_timestamp`), kept on the
/// record when they are small.
fn billing(status: &Value) -> Option<Value> {
    let mut out = serde_json::Map::new();
    for key in ["pricing", "conversation"] {
        if let Some(v) = status.get(key).filter(|v| v.is_object()) {
            out.insert(key.to_owned(), v.clone());
        }
    }
    let out = Value::Object(out);
    (out.as_object().is_some_and(|o| !o.is_empty()) && out.to_string().len() <= BILLING_CAP)
        .then_some(out)
}
