//! AiSensy project webhooks: an envelope `{id, topic, project_id, created_at,
//! delivery_attempt, data}`; message topics carry `data.message.*` with
//! UPPERCASE statuses and epoch-ms `*_at` times. docs/PROVIDERS.md, "AiSensy".
//!
//! Dedup is on the envelope `id` (AiSensy delivers at least once, retrying
//! with the same id). Contact and template topics are kept and forwarded but
//! not tracked as messages; unknown topics are kept as unrecognized.

use serde_json::Value;

use super::json::{at, text, time};
use super::{CredentialEnv, Parsed, Provider, RawWebhook, SignatureHeader};
use crate::model::{Bsp, Direction, MessageEvent, Status, UNKNOWN_STATUS_EVENT_TYPE};

pub struct Aisensy;

/// Topics that are kept and forwarded without a message record.
const NON_MESSAGE_TOPICS: &[&str] = &[
    "contact.created",
    "contact.attribute.updated",
    "contact.tag.updated",
    "contact.campaign.sent",
    "contact.campaign.delivered",
    "contact.campaign.read",
    "wa_template.status.updated",
];

fn map_status(raw: &str) -> Option<Status> {
    match raw.trim().to_ascii_uppercase().as_str() {
        "SENT" => Some(Status::Sent),
        "DELIVERED" => Some(Status::Delivered),
        "READ" => Some(Status::Read),
        "FAILED" => Some(Status::Failed),
        _ => None,
    }
}

/// `failureResponse` counts only when it carries a code or a reason.
fn failure(msg: &Value) -> (Option<String>, Option<String>) {
    (
        text(msg, &["failureResponse", "code"]),
        text(msg, &["failureResponse", "reason"]),
    )
}

/// The status of a message payload: the explicit `status`, else the latest
/// non-null `*_at`; a failure marker means failed when nothing says better.
fn status_of(msg: &Value) -> (Option<Status>, Option<String>) {
    let raw = text(msg, &["status"]);
    if let Some(s) = raw.as_deref().and_then(map_status) {
        return (Some(s), raw);
    }
    let (code, reason) = failure(msg);
    if raw.is_none() {
        let inferred = [
            ("read_at", Status::Read),
            ("delivered_at", Status::Delivered),
            ("failed_at", Status::Failed),
            ("sent_at", Status::Sent),
        ]
        .into_iter()
        .filter_map(|(field, s)| msg.get(field).and_then(time).map(|t| (t, s)))
        .max_by_key(|(t, s)| (*t, *s))
        .map(|(_, s)| s);
        if inferred.is_some() {
            return (inferred, None);
        }
        if code.is_some() || reason.is_some() {
            return (Some(Status::Failed), None);
        }
    }
    (None, raw)
}

fn at_field(status: Status) -> Option<&'static str> {
    match status {
        Status::Sent => Some("sent_at"),
        Status::Delivered => Some("delivered_at"),
        Status::Read => Some("read_at"),
        Status::Failed => Some("failed_at"),
        Status::Accepted | Status::Received | Status::Played => None,
    }
}

impl Provider for Aisensy {
    fn bsp(&self) -> Bsp {
        Bsp::Aisensy
    }

    fn name(&self) -> &'static str {
        "AiSensy"
    }

    fn routes(&self) -> &'static [&'static str] {
        &["/webhook/aisensy", "/partner-webhook"]
    }

    fn summary(&self) -> &'static str {
        "AiSensy events."
    }

    fn ack_body(&self) -> &'static str {
        r#"{"status":200,"message":"Aisensy webhook received successfully"}"#
    }

    fn credential_env(&self) -> CredentialEnv {
        CredentialEnv {
            token: "AISENSY_WEBHOOK_TOKEN",
            secret: "AISENSY_WEBHOOK_SECRET",
            verify_token: None,
        }
    }

    fn signature_header(&self) -> SignatureHeader {
        SignatureHeader {
            name: "x-aisensy-signature",
            prefix: "",
        }
    }

    /// AiSensy reportedly signs `JSON.stringify(parsed body)`.
    fn signs_compact_json(&self) -> bool {
        true
    }

    /// An inbound user message is the `message.sender.user` topic.
    fn is_inbound(&self, object: &str) -> Result<bool, serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct Probe<'a> {
            #[serde(borrow)]
            topic: Option<&'a serde_json::value::RawValue>,
        }
        let p: Probe<'_> = serde_json::from_str(object)?;
        Ok(p.topic
            .is_some_and(|t| t.get() == "\"message.sender.user\""))
    }

    fn parse(&self, webhook: &RawWebhook<'_>) -> Parsed {
        let envelope: Value = match serde_json::from_slice(webhook.body) {
            Ok(v) => v,
            Err(e) => return Parsed::unrecognized_body(webhook, format!("body is not JSON: {e}")),
        };
        if !envelope.is_object() {
            return Parsed::unrecognized_body(webhook, "body is not a JSON object");
        }
        let Some(topic) = text(&envelope, &["topic"]) else {
            return Parsed::unrecognized_body(webhook, "no topic");
        };
        let envelope_id = text(&envelope, &["id"]);
        let legacy_type = format!("aisensy.{topic}");
        let created_at = envelope.get("created_at").and_then(time);

        let message = match topic.as_str() {
            "message.status.updated" | "message.created" | "message.sender.user" => {
                let Some(msg) = at(&envelope, &["data", "message"]).filter(|m| m.is_object())
                else {
                    return Parsed::unrecognized_body(
                        webhook,
                        format!("{topic} without data.message"),
                    );
                };
                // message.created repeats every message, customers' included:
                // those are tracked through message.sender.user only.
                let from_user =
                    text(msg, &["sender"]).is_some_and(|s| s.eq_ignore_ascii_case("USER"));
                if topic == "message.created" && from_user {
                    None
                } else {
                    match message_event(
                        &topic,
                        msg,
                        &envelope,
                        envelope_id.as_deref(),
                        created_at,
                        webhook,
                    ) {
                        Ok(m) => Some(m),
                        Err(reason) => return Parsed::unrecognized_body(webhook, reason),
                    }
                }
            }
            t if NON_MESSAGE_TOPICS.contains(&t) => None,
            _ => return Parsed::unrecognized_body(webhook, format!("unknown topic {topic:?}")),
        };
        let unified_type = match &message {
            Some(m) => m
                .status
                .map(Status::event_type)
                .unwrap_or(UNKNOWN_STATUS_EVENT_TYPE)
                .to_owned(),
            None => topic.clone(),
        };
        Parsed {
            events: vec![webhook.event(0, legacy_type, unified_type, envelope, message)],
            unrecognized: Vec::new(),
        }
    }
}

fn message_event(
    topic: &str, msg: &Value, envelope: &Value, envelope_id: Option<&str>,
    created_at: Option<chrono::DateTime<chrono::Utc>>, webhook: &RawWebhook<'_>,
) -> Result<MessageEvent, String> {
    let wamid = text(msg, &["messageId"]);
    let bsp_message_id = text(msg, &["id"]);
    if wamid.is_none() && bsp_message_id.is_none() {
        return Err(format!(
            "{topic}: data.message has neither messageId nor id"
        ));
    }
    let inbound = topic == "message.sender.user";
    let (status, raw_status) = if inbound {
        (Some(Status::Received), Some(topic.to_owned()))
    } else {
        status_of(msg)
    };
    let occurred_at = status
        .and_then(at_field)
        .and_then(|f| msg.get(f))
        .and_then(time)
        .or(created_at)
        .unwrap_or(webhook.received_at);
    let (error_code, reason) = match status {
        Some(Status::Failed) | None => failure(msg),
        _ => (None, None),
    };
    let dedup_key = match envelope_id {
        Some(id) => format!("aisensy:{id}"),
        None => format!(
            "{}|{}",
            raw_status.as_deref().unwrap_or("").to_ascii_lowercase(),
            occurred_at.timestamp_millis()
        ),
    };
    let content = inbound.then(|| {
        serde_json::json!({
            "type": msg.get("message_type"),
            "content": msg.get("message_content"),
            "context": msg.get("context"),
            "user_name": msg.get("userName"),
        })
    });
    Ok(MessageEvent {
        billing: None,
        user: None,
        wamid,
        bsp_message_id,
        direction: if inbound {
            Direction::Inbound
        } else {
            Direction::Outbound
        },
        phone_number: text(msg, &["phone_number"]),
        // AiSensy does not carry the business number; the tenant is the project.
        business_number: None,
        status,
        raw_status,
        occurred_at,
        error_code,
        reason,
        campaign_id: text(msg, &["campaign", "_id"]),
        project_id: text(envelope, &["project_id"]).or_else(|| text(msg, &["project_id"])),
        content,
        tags: text(msg, &["campaign", "name"])
            .map(|v| ("campaign_name".to_owned(), v))
            .into_iter()
            .collect(),
        dedup_key,
    })
}
