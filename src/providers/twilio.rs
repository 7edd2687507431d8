//! Twilio's WhatsApp webhooks (docs/PROVIDERS.md, "Twilio"): status callbacks and
//! inbound messages, both `application/x-www-form-urlencoded`.
//! - `MessageSid` is Twilio's id (the record's provider id); there is no
//!   wamid and no event time, so the receive time is the event's.
//! - `From` / `To` carry `whatsapp:+<E.164>`; the prefix is stripped.
//! - `undelivered` and `failed` are failed, with `ErrorCode` and
//!   `ErrorMessage`; `queued`, `accepted` and `scheduled` are accepted.
//! - `X-Twilio-Signature` (base64 HMAC-SHA1 of the public URL and the
//!   sorted parameters) is checked when `TWILIO_AUTH_TOKEN` is set.
//! - The answer is an empty TwiML `<Response/>`, which Twilio accepts for
//!   both kinds (it sends no reply).
//!
//! On RabbitMQ the legacy queue carries the parameters as a JSON object;
//! the adapter reads both forms.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{BodyFormat, CredentialEnv, Parsed, Provider, RawWebhook, SignatureHeader};
use crate::model::{Bsp, Direction, MessageEvent, Status, UNKNOWN_STATUS_EVENT_TYPE};

pub struct Twilio;

/// The most parameters read from one body (Twilio sends a few dozen).
const MAX_PARAMS: usize = 512;

fn map_status(raw: &str) -> Option<Status> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "queued" | "accepted" | "scheduled" => Some(Status::Accepted),
        "sending" | "sent" => Some(Status::Sent),
        "delivered" => Some(Status::Delivered),
        "read" => Some(Status::Read),
        "undelivered" | "failed" => Some(Status::Failed),
        "received" => Some(Status::Received),
        _ => None,
    }
}

/// The body's parameters: form-encoded as Twilio posts them, or the JSON
/// object the RabbitMQ queue carries. The first value of a repeated key wins.
fn params(body: &[u8]) -> Option<BTreeMap<String, String>> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    if start.is_some_and(|i| body[i] == b'{') {
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
            return None;
        };
        return Some(
            obj.into_iter()
                .take(MAX_PARAMS)
                .filter_map(|(k, v)| match v {
                    Value::String(s) => Some((k, s)),
                    Value::Number(n) => Some((k, n.to_string())),
                    _ => None,
                })
                .collect(),
        );
    }
    let mut out = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(body).take(MAX_PARAMS) {
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    Some(out)
}

/// `whatsapp:+919800000000` → `919800000000`.
fn number(v: Option<&String>) -> Option<String> {
    let v = v?.trim();
    let v = v.strip_prefix("whatsapp:").unwrap_or(v);
    let v = v.trim_start_matches('+');
    (!v.is_empty()).then(|| v.to_owned())
}

fn is_status_callback(p: &BTreeMap<String, String>) -> bool {
    p.contains_key("MessageStatus")
        || p.get("SmsStatus")
            .is_some_and(|s| !s.eq_ignore_ascii_case("received"))
}

impl Provider for Twilio {
    fn bsp(&self) -> Bsp {
        Bsp::Twilio
    }

    fn name(&self) -> &'static str {
        "Twilio"
    }

    fn routes(&self) -> &'static [&'static str] {
        &["/webhook/twilio"]
    }

    fn summary(&self) -> &'static str {
        "Twilio WhatsApp status callbacks and inbound messages (form-encoded); `X-Twilio-Signature` checked when `TWILIO_AUTH_TOKEN` is set. Answers an empty TwiML `<Response/>`."
    }

    fn ack_body(&self) -> &'static str {
        r#"<?xml version="1.0" encoding="UTF-8"?><Response></Response>"#
    }

    fn ack_content_type(&self) -> &'static str {
        "text/xml; charset=utf-8"
    }

    fn body_format(&self) -> BodyFormat {
        BodyFormat::Form
    }

    fn credential_env(&self) -> CredentialEnv {
        CredentialEnv {
            token: "TWILIO_WEBHOOK_TOKEN",
            secret: "TWILIO_AUTH_TOKEN",
            verify_token: None,
        }
    }

    fn signature_header(&self) -> SignatureHeader {
        SignatureHeader {
            name: "x-twilio-signature",
            prefix: "",
        }
    }

    fn signs_public_url(&self) -> bool {
        true
    }

    /// Every Twilio callback names its message.
    fn refuse(&self, text: &str) -> Option<&'static str> {
        let named = params(text.as_bytes()).is_some_and(|p| {
            ["MessageSid", "SmsSid"]
                .iter()
                .any(|k| p.get(*k).is_some_and(|v| !crate::model::is_blank(v)))
        });
        (!named).then_some("a Twilio callback carries a MessageSid")
    }

    fn is_inbound(&self, object: &str) -> Result<bool, serde_json::Error> {
        Ok(params(object.as_bytes()).is_some_and(|p| !is_status_callback(&p)))
    }

    /// The parameters as one JSON object, for the queue's consumers.
    fn legacy_queue_body(&self, body: &bytes::Bytes, _batch_len: Option<usize>) -> bytes::Bytes {
        match params(body) {
            Some(p) => serde_json::to_vec(&p)
                .map(Into::into)
                .unwrap_or_else(|_| body.clone()),
            None => body.clone(),
        }
    }

    fn parse(&self, webhook: &RawWebhook<'_>) -> Parsed {
        let Some(p) = params(webhook.body) else {
            return Parsed::unrecognized_body(webhook, "neither form parameters nor a JSON object");
        };
        let Some(sid) = p
            .get("MessageSid")
            .or_else(|| p.get("SmsSid"))
            .filter(|s| !s.trim().is_empty())
        else {
            return Parsed::unrecognized_body(webhook, "no MessageSid");
        };
        let raw: Value = serde_json::to_value(&p).unwrap_or_default();
        let status_callback = is_status_callback(&p);
        let message = if status_callback {
            let raw_status = p
                .get("MessageStatus")
                .or_else(|| p.get("SmsStatus"))
                .cloned();
            let status = raw_status.as_deref().and_then(map_status);
            let failed = status == Some(Status::Failed);
            MessageEvent {
                wamid: None,
                bsp_message_id: Some(sid.trim().to_owned()),
                direction: Direction::Outbound,
                phone_number: number(p.get("To")),
                business_number: number(p.get("From")),
                dedup_key: raw_status.as_deref().unwrap_or("").to_ascii_lowercase(),
                status,
                raw_status,
                // Twilio gives no event time.
                occurred_at: webhook.received_at,
                error_code: failed
                    .then(|| p.get("ErrorCode").cloned())
                    .flatten()
                    .filter(|c| !c.trim().is_empty()),
                reason: failed
                    .then(|| p.get("ErrorMessage").cloned())
                    .flatten()
                    .filter(|c| !c.trim().is_empty()),
                campaign_id: None,
                project_id: None,
                content: None,
                tags: Default::default(),
                billing: None,
                user: None,
            }
        } else {
            MessageEvent {
                wamid: None,
                bsp_message_id: Some(sid.trim().to_owned()),
                direction: Direction::Inbound,
                phone_number: p.get("WaId").cloned().or_else(|| number(p.get("From"))),
                business_number: number(p.get("To")),
                status: Some(Status::Received),
                raw_status: p.get("MessageType").cloned(),
                occurred_at: webhook.received_at,
                error_code: None,
                reason: None,
                campaign_id: None,
                project_id: None,
                content: Some(raw.clone()),
                tags: Default::default(),
                billing: None,
                user: None,
                dedup_key: "received".into(),
            }
        };
        let unified = message
            .status
            .map(Status::event_type)
            .unwrap_or(UNKNOWN_STATUS_EVENT_TYPE);
        Parsed {
            events: vec![webhook.event(
                0,
                if status_callback {
                    "twilio.status".into()
                } else {
                    "twilio.message".into()
                },
                unified.into(),
                raw,
                Some(message),
            )],
            unrecognized: Vec::new(),
        }
    }
}
