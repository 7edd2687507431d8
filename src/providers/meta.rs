//! Meta WhatsApp Cloud API webhooks (and any BSP relaying Meta's shape):
//! `entry[].changes[].value` with `statuses[]` or `messages[]` + `contacts[]`.
//! Every array element is its own event. PROVIDERS.md §2.

use serde_json::Value;

use super::json::{at, raw_scalar, text, time};
use super::{CredentialEnv, Parsed, Provider, RawWebhook, SignatureHeader};
use crate::model::{Bsp, Direction, MessageEvent, Status, UNKNOWN_STATUS_EVENT_TYPE, UnifiedEvent};

pub struct Meta;

fn map_status(raw: &str) -> Option<Status> {
    match raw.trim().to_ascii_lowercase().as_str() {
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

impl Provider for Meta {
    fn bsp(&self) -> Bsp {
        Bsp::Meta
    }

    fn name(&self) -> &'static str {
        "Meta"
    }

    fn routes(&self) -> &'static [&'static str] {
        &["/webhook/meta"]
    }

    fn summary(&self) -> &'static str {
        "WhatsApp Cloud API (Meta) notifications; `X-Hub-Signature-256` checked when `META_APP_SECRET` is set."
    }

    fn ack_body(&self) -> &'static str {
        r#"{"status":200,"message":"Meta webhook received successfully"}"#
    }

    fn credential_env(&self) -> CredentialEnv {
        CredentialEnv {
            token: "META_WEBHOOK_TOKEN",
            secret: "META_APP_SECRET",
            verify_token: Some("META_VERIFY_TOKEN"),
        }
    }

    fn signature_header(&self) -> SignatureHeader {
        SignatureHeader {
            name: "x-hub-signature-256",
            prefix: "sha256=",
        }
    }

    /// Inbound user messages are `entry[].changes[].value.messages`.
    fn is_inbound(&self, object: &str) -> Result<bool, serde_json::Error> {
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

    fn parse(&self, webhook: &RawWebhook<'_>) -> Parsed {
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
                if statuses.is_empty() && messages.is_empty() {
                    // Another webhook field (template status, account update…):
                    // kept and forwardable, not a message.
                    out.events.push(event(
                        webhook,
                        next(),
                        format!("meta.{field}"),
                        field.clone(),
                        change.clone(),
                        None,
                    ));
                    continue;
                }
                for status in statuses {
                    match status_event(status, &business, webhook) {
                        Ok(m) => {
                            let unified = m
                                .status
                                .map(Status::event_type)
                                .unwrap_or(UNKNOWN_STATUS_EVENT_TYPE);
                            out.events.push(event(
                                webhook,
                                next(),
                                "meta.status".into(),
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
                    match inbound_event(message, value, &business, webhook) {
                        Ok(m) => out.events.push(event(
                            webhook,
                            next(),
                            "meta.message".into(),
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
}

fn event(
    webhook: &RawWebhook<'_>,
    index: usize,
    legacy_type: String,
    unified_type: String,
    raw: Value,
    message: Option<MessageEvent>,
) -> UnifiedEvent {
    UnifiedEvent {
        event_id: webhook.event_id_at(index),
        bsp: Bsp::Meta,
        legacy_type,
        unified_type,
        received_at: webhook.received_at,
        raw,
        message,
    }
}

fn status_event(
    status: &Value,
    business: &Option<String>,
    webhook: &RawWebhook<'_>,
) -> Result<MessageEvent, &'static str> {
    let wamid = text(status, &["id"]).ok_or("status without id")?;
    let raw_status = text(status, &["status"]);
    let mapped = raw_status.as_deref().and_then(map_status);
    let ts = status.get("timestamp");
    let first_error = array(status, "errors").first();
    let error_text = |path: &[&str]| first_error.and_then(|e| text(e, path));
    Ok(MessageEvent {
        wamid: Some(wamid),
        bsp_message_id: None,
        direction: Direction::Outbound,
        phone_number: text(status, &["recipient_id"]),
        business_number: business.clone(),
        dedup_key: format!(
            "{}|{}",
            raw_status.as_deref().unwrap_or("").to_ascii_lowercase(),
            raw_scalar(ts)
        ),
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
    })
}

fn inbound_event(
    message: &Value,
    value: &Value,
    business: &Option<String>,
    webhook: &RawWebhook<'_>,
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
        dedup_key: "received".into(),
    })
}
