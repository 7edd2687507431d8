//! The WhatsApp Cloud API webhook shape, `entry[].changes[].value` with
//! `statuses[]`, `messages[]` + `contacts[]`, `errors[]`, or another field's
//! notification. Meta posts it, and BSPs relay it (with their own ids beside
//! Meta's). Every array element is its own event. Since 2026 a user may be
//! known by a business-scoped user id (BSUID) and a username instead of a
//! phone number: statuses carry `recipient_user_id`, messages
//! `from_user_id`, `contacts[]` the `user_id` and `profile.username`; system
//! messages report a changed number or BSUID, `user_preferences` a
//! marketing stop or resume, and `smb_message_echoes` the messages a
//! business sent from the WhatsApp Business app. docs/PROVIDERS.md, "Meta
//! Cloud API".

use serde_json::Value;

use super::json::{at, status_key, text, time};
use super::{Parsed, RawWebhook};
use crate::model::{
    ContactEvent, Direction, MarketingPreference, MessageEvent, Status, UNKNOWN_STATUS_EVENT_TYPE,
    UserIdentity,
};

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
        "played" => Some(Status::Played),
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
                let echoes = array(value, "message_echoes");
                let preferences = array(value, "user_preferences");
                for echo in echoes {
                    match self.echo_event(echo, &business, webhook) {
                        Ok(m) => out.events.push(webhook.event(
                            next(),
                            format!("{}.message_echo", self.prefix),
                            Status::Sent.event_type().into(),
                            echo.clone(),
                            Some(m),
                        )),
                        Err(reason) => out
                            .unrecognized
                            .push(webhook.unrecognized(reason, echo.to_string())),
                    }
                }
                for preference in preferences {
                    match preference_event(preference, &business, webhook) {
                        Ok(contact) => {
                            let mut event = webhook.event(
                                next(),
                                format!("{}.user_preferences", self.prefix),
                                MARKETING_PREFERENCE_EVENT.into(),
                                preference.clone(),
                                None,
                            );
                            event.contact = Some(contact);
                            out.events.push(event);
                        }
                        Err(reason) => out
                            .unrecognized
                            .push(webhook.unrecognized(reason, preference.to_string())),
                    }
                }
                if !echoes.is_empty() || !preferences.is_empty() {
                    continue;
                }
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
                    match self.status_event(status, value, &business, webhook) {
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
                    if let Some(kind) = identifier_change(message) {
                        // A changed number or BSUID: about the user, not a
                        // message; it links the old identifiers to the new.
                        let mut event = webhook.event(
                            next(),
                            format!("{}.system", self.prefix),
                            kind.to_owned(),
                            message.clone(),
                            None,
                        );
                        event.contact = Some(change_event(message, &business, webhook));
                        out.events.push(event);
                        continue;
                    }
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
        &self, status: &Value, value: &Value, business: &Option<String>, webhook: &RawWebhook<'_>,
    ) -> Result<MessageEvent, &'static str> {
        let wamid = text(status, &["id"]).ok_or("status without id")?;
        let group = text(status, &["recipient_type"]).as_deref() == Some("group");
        let user = (!group).then(|| {
            let phone = text(status, &["recipient_id"]);
            let user_id = text(status, &["recipient_user_id"]);
            identity(
                phone,
                user_id,
                text(status, &["recipient_parent_user_id"]),
                value,
            )
        });
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
            user: user.filter(|u| !u.is_empty()),
        })
    }

    /// A message the business sent from the WhatsApp Business app on a
    /// number also on the API: an outbound record of its own, marked as
    /// sent from the app, which its later statuses find.
    fn echo_event(
        &self, echo: &Value, business: &Option<String>, webhook: &RawWebhook<'_>,
    ) -> Result<MessageEvent, &'static str> {
        let wamid = text(echo, &["id"]).ok_or("message echo without id")?;
        let ts = echo.get("timestamp");
        let user = UserIdentity {
            phone: text(echo, &["to"]),
            user_id: text(echo, &["to_user_id"]),
            parent_user_id: text(echo, &["to_parent_user_id"]),
            username: None,
        };
        Ok(MessageEvent {
            wamid: Some(wamid),
            direction: Direction::Outbound,
            phone_number: text(echo, &["to"]),
            business_number: text(echo, &["from"]).or_else(|| business.clone()),
            dedup_key: status_key(Some("sent"), ts),
            status: Some(Status::Sent),
            raw_status: Some("echo".into()),
            occurred_at: ts.and_then(time).unwrap_or(webhook.received_at),
            billing: Some(serde_json::json!({"origin": {"sent_from": "whatsapp_business_app"}})),
            user: (!user.is_empty()).then_some(user),
            ..Default::default()
        })
    }

    fn inbound_event(
        &self, message: &Value, value: &Value, business: &Option<String>, webhook: &RawWebhook<'_>,
    ) -> Result<MessageEvent, &'static str> {
        let wamid = text(message, &["id"]).ok_or("message without id")?;
        let from = text(message, &["from"]);
        let from_user_id = text(message, &["from_user_id"]);
        let profile_name = contact_of(value, &from, &from_user_id)
            .and_then(|c| at(c, &["profile", "name"]).cloned());
        let user = identity(
            from.clone(),
            from_user_id,
            text(message, &["from_parent_user_id"]),
            value,
        );
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
            user: (!user.is_empty()).then_some(user),
            dedup_key: "received".into(),
        })
    }
}

/// The unified type of a marketing preference change (`user_preferences`).
pub const MARKETING_PREFERENCE_EVENT: &str = "contact.marketing_preference";

/// The `contacts[]` entry of a user known by phone or BSUID, else the first.
fn contact_of<'a>(
    value: &'a Value, phone: &Option<String>, user_id: &Option<String>,
) -> Option<&'a Value> {
    let contacts = array(value, "contacts");
    contacts
        .iter()
        .find(|c| {
            (phone.is_some() && text(c, &["wa_id"]) == *phone)
                || (user_id.is_some() && text(c, &["user_id"]) == *user_id)
        })
        .or_else(|| contacts.first())
}

/// A user's identity from the ids an object names, completed from the
/// matching `contacts[]` entry (its `wa_id`, `user_id` and username).
fn identity(
    phone: Option<String>, user_id: Option<String>, parent_user_id: Option<String>, value: &Value,
) -> UserIdentity {
    let contact = (phone.is_some() || user_id.is_some())
        .then(|| contact_of(value, &phone, &user_id))
        .flatten()
        // Only an entry that names this user (a lone entry does).
        .filter(|c| {
            array(value, "contacts").len() == 1
                || (phone.is_some() && text(c, &["wa_id"]) == phone)
                || (user_id.is_some() && text(c, &["user_id"]) == user_id)
        });
    let from_contact = |path: &[&str]| contact.and_then(|c| text(c, path));
    UserIdentity {
        phone: phone.or_else(|| from_contact(&["wa_id"])),
        user_id: user_id.or_else(|| from_contact(&["user_id"])),
        parent_user_id: parent_user_id.or_else(|| from_contact(&["parent_user_id"])),
        username: from_contact(&["profile", "username"]),
    }
}

/// The system message types that report a changed identifier.
fn identifier_change(message: &Value) -> Option<&'static str> {
    if text(message, &["type"]).as_deref() != Some("system") {
        return None;
    }
    match text(message, &["system", "type"]).as_deref() {
        Some("user_changed_number") => Some("contact.user_changed_number"),
        Some("user_changed_user_id") => Some("contact.user_changed_user_id"),
        _ => None,
    }
}

/// What a changed number or BSUID says: the user's identifiers before
/// (`from`, `from_user_id`, `system.previous_user_id`, …) and after
/// (`system.wa_id`, `system.user_id`, …).
fn change_event(
    message: &Value, business: &Option<String>, webhook: &RawWebhook<'_>,
) -> ContactEvent {
    let system = |key: &str| text(message, &["system", key]);
    let number_changed = system("type").as_deref() == Some("user_changed_number");
    let previous = UserIdentity {
        phone: text(message, &["from"]),
        user_id: system("previous_user_id").or_else(|| text(message, &["from_user_id"])),
        parent_user_id: system("previous_parent_user_id")
            .or_else(|| text(message, &["from_parent_user_id"])),
        username: None,
    };
    let user = UserIdentity {
        // A changed BSUID keeps the number (when one is shared at all).
        phone: if number_changed {
            system("wa_id")
        } else {
            text(message, &["from"])
        },
        user_id: system("user_id"),
        parent_user_id: system("parent_user_id"),
        username: None,
    };
    ContactEvent {
        business_number: business.clone(),
        user,
        previous,
        preference: None,
        at: message
            .get("timestamp")
            .and_then(time)
            .unwrap_or(webhook.received_at),
    }
}

/// A `user_preferences[]` entry: the user's marketing stop or resume.
fn preference_event(
    entry: &Value, business: &Option<String>, webhook: &RawWebhook<'_>,
) -> Result<ContactEvent, &'static str> {
    let value = text(entry, &["value"])
        .map(|v| v.to_ascii_lowercase())
        .filter(|v| v == "stop" || v == "resume")
        .ok_or("user preference without a stop or resume value")?;
    let user = UserIdentity {
        phone: text(entry, &["wa_id"]),
        user_id: text(entry, &["user_id"]),
        parent_user_id: text(entry, &["parent_user_id"]),
        username: None,
    };
    if user.is_empty() {
        return Err("user preference without a user");
    }
    let at = entry
        .get("timestamp")
        .and_then(time)
        .unwrap_or(webhook.received_at);
    Ok(ContactEvent {
        business_number: business.clone(),
        user,
        previous: UserIdentity::default(),
        preference: Some(MarketingPreference {
            value,
            at,
            detail: text(entry, &["detail"]),
            category: text(entry, &["category"]),
        }),
        at,
    })
}

/// A status's `pricing` (`billable`, `pricing_model` — `PMP` per message
/// since 2025 —, `type` such as `regular` or `free_customer_service`,
/// `category`), `conversation` (`id`, `origin`, `expiration_timestamp`),
/// and for a group send the `group` it went to (`recipient_id`, the
/// participant), kept on the record when they are small.
fn billing(status: &Value) -> Option<Value> {
    let mut out = serde_json::Map::new();
    for key in ["pricing", "conversation"] {
        if let Some(v) = status.get(key).filter(|v| v.is_object()) {
            out.insert(key.to_owned(), v.clone());
        }
    }
    if text(status, &["recipient_type"]).as_deref() == Some("group") {
        let mut group = serde_json::Map::new();
        for (from, to) in [
            ("recipient_id", "id"),
            ("recipient_participant_id", "participant_id"),
            ("recipient_participant_user_id", "participant_user_id"),
        ] {
            if let Some(v) = text(status, &[from]) {
                group.insert(to.to_owned(), Value::String(v));
            }
        }
        out.insert("group".to_owned(), Value::Object(group));
    }
    let out = Value::Object(out);
    (out.as_object().is_some_and(|o| !o.is_empty()) && out.to_string().len() <= BILLING_CAP)
        .then_some(out)
}
