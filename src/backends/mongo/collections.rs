//! The collections the gateway reads and writes, by name: the legacy ones
//! (their names are a contract with the old gateway's consumers) and our
//! own (`zen_*`).

pub const MESSAGES: &str = "unified_message_tracking";
pub const UNRECOGNIZED: &str = "unrecognized_webhooks";
/// Our lookup keys of messages, one document per id string: `_id` =
/// `k:<id>`, and the message document's `_id` under `w` (the id is its
/// wamid), `m` (its `message_id`) or `p` (its provider id, any BSP). A lookup
/// by id is then two `_id` queries, which every MongoDB-compatible server
/// answers from its primary key (the test wire server scans for any other
/// field, and for `$in`). The first message to take an id keeps it.
pub const MESSAGE_KEYS: &str = "zen_message_keys";
/// The gateway's own facts about the database: `{_id: "schema", version}`.
pub const META: &str = "zen_meta";
/// Provider notifications that are not about one message, `_id` = the
/// event id (a redelivery is not kept twice).
pub const NOTIFICATIONS: &str = "zen_notifications";

/// Client webhooks (legacy).
pub const WEBHOOKS: &str = "webhooks";
/// One document per delivery, updated per attempt (legacy).
pub const DELIVERY_LOGS: &str = "webhook_delivery_logs";
/// Business number → project, owned by other services (read only).
pub const PROJECTS: &str = "projects";
/// Secrets of legacy jobs, by delivery id (see
/// `WebhookStore::keep_legacy_secret`).
pub const LEGACY_SECRETS: &str = "zen_legacy_job_secrets";
/// Operator sessions, by the hash of their id.
pub const SESSIONS: &str = "zen_console_sessions";
/// Contacts, one per WhatsApp user per business number (`_id` the
/// contact id).
pub const CONTACTS: &str = "zen_contacts";
/// A contact's identifiers, `_id` `<business number>|<kind>:<value>`, `c`
/// the contact id: any identifier finds its contact by `_id`.
pub const CONTACT_KEYS: &str = "zen_contact_keys";
