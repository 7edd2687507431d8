//! Adapter tests: every shared fixture and the field paths and spellings of
//! docs/PROVIDERS.md, through the public `Providers::parse`.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use zen_gateway::model::{Bsp, Direction, Status, UnifiedEvent};
use zen_gateway::providers::{Parsed, Providers, RawWebhook};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn received() -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000, 0).unwrap()
}

fn parse(bsp: Bsp, body: &str) -> Parsed {
    Providers::new().parse(&RawWebhook {
        event_id: "evt",
        bsp,
        received_at: received(),
        body: body.as_bytes(),
    })
}

fn one(bsp: Bsp, body: &str) -> UnifiedEvent {
    let p = parse(bsp, body);
    assert!(p.unrecognized.is_empty(), "{:?}", p.unrecognized);
    assert_eq!(p.events.len(), 1, "{:?}", p.events);
    p.events.into_iter().next().unwrap()
}

fn ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).unwrap()
}

/// The queue priority ingest gives a body (the code that runs).
fn priority(bsp: Bsp, body: &str) -> u8 {
    Providers::new().probe(bsp, body).unwrap().priority
}

// ---------- Datagen ----------

#[test]
fn datagen_delivery_fixture() {
    let e = one(Bsp::Datagen, &fixture("datagen_delivered.json"));
    let m = e.message.as_ref().unwrap();
    assert_eq!(e.event_id, "evt-0");
    assert_eq!(e.legacy_type, "datagen.delivery");
    assert_eq!(e.unified_type, "message.delivered");
    assert_eq!(
        m.wamid.as_deref(),
        Some("wamid.HBgMOTE5ODEyMzQ1Njc4FQIAERgSNDdCRkE1RTZEMDlDM0IyRjFBAA==")
    );
    assert_eq!(m.status, Some(Status::Delivered));
    assert_eq!(m.raw_status.as_deref(), Some("Delivered"));
    assert_eq!(m.occurred_at, ms(1_749_540_007_000));
    assert_eq!(m.phone_number.as_deref(), Some("919812345678"));
    assert_eq!(m.business_number.as_deref(), Some("918071234567"));
    assert_eq!(m.campaign_id.as_deref(), Some("665f1a2b3c4d5e6f7a8b9c0e"));
    assert_eq!(m.error_code, None);
    assert_eq!(m.direction, Direction::Outbound);
    assert_eq!(
        priority(Bsp::Datagen, &fixture("datagen_delivered.json")),
        0
    );
    assert_eq!(e.raw["events"]["eventType"], "DELIVERY EVENTS");
}

#[test]
fn datagen_status_spellings() {
    for (raw, expected) in [
        ("sent", Some(Status::Sent)),
        ("delivered", Some(Status::Delivered)),
        ("Delivered", Some(Status::Delivered)),
        ("read", Some(Status::Read)),
        ("Read", Some(Status::Read)),
        (" READ ", Some(Status::Read)),
        ("failed", Some(Status::Failed)),
        ("Not Sent", Some(Status::Failed)),
        ("dropped", Some(Status::Failed)),
        ("enqueued", None),
        ("undelivered", None),
    ] {
        let body = json!({"events": {"eventType": "DELIVERY EVENTS", "timestamp": 1, "mid": "wamid.s"},
                          "notificationAttributes": {"status": raw}});
        let e = one(Bsp::Datagen, &body.to_string());
        let m = e.message.unwrap();
        assert_eq!(m.status, expected, "{raw}");
        assert_eq!(m.raw_status.as_deref(), Some(raw.trim()));
        if expected.is_none() {
            assert_eq!(e.unified_type, "message.unknown");
            assert_eq!(m.history_status(), raw.trim().to_lowercase());
        }
    }
}

#[test]
fn datagen_batch_with_whitespace_tags_errors_and_a_bad_element() {
    let p = parse(Bsp::Datagen, &fixture("datagen_batch.json"));
    assert_eq!(p.events.len(), 3);
    assert_eq!(p.unrecognized.len(), 1);
    assert_eq!(p.unrecognized[0].body, "\"not an event\"");
    let ids: Vec<_> = p.events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["evt-0", "evt-1", "evt-3"]);

    let first = p.events[0].message.as_ref().unwrap();
    assert_eq!(first.campaign_id.as_deref(), Some("cmp-7"));
    assert_eq!(first.project_id.as_deref(), Some("prj-3"));
    assert_eq!(first.tags["cust_ref"], "ORD-9");
    assert_eq!(first.tags["messageTag3"], "chat_send");

    let failed = p.events[1].message.as_ref().unwrap();
    assert_eq!(failed.status, Some(Status::Failed));
    assert_eq!(failed.error_code.as_deref(), Some("131026"));
    assert_eq!(failed.reason.as_deref(), Some("Message undeliverable"));

    let image = &p.events[2];
    assert_eq!(image.legacy_type, "datagen.user_message");
    assert_eq!(
        image.message.as_ref().unwrap().direction,
        Direction::Inbound
    );
    // A batch is queued at the status reports' priority, inbound or not.
    assert_eq!(priority(Bsp::Datagen, &fixture("datagen_batch.json")), 0);
}

#[test]
fn datagen_inbound_messages_of_every_type_are_user_messages() {
    let text = one(Bsp::Datagen, &fixture("datagen_inbound_text.json"));
    let m = text.message.as_ref().unwrap();
    assert_eq!(text.legacy_type, "datagen.user_message");
    assert_eq!(text.unified_type, "message.received");
    assert_eq!(m.status, Some(Status::Received));
    assert_eq!(m.phone_number.as_deref(), Some("919812345678"));
    assert_eq!(m.business_number.as_deref(), Some("918071234567"));
    assert_eq!(
        m.content.as_ref().unwrap()["text"]["body"],
        "Is the offer valid tomorrow?"
    );
    assert_eq!(
        priority(Bsp::Datagen, &fixture("datagen_inbound_text.json")),
        5
    );

    // No message id: events.mid is the wamid for Datagen.
    let button = one(Bsp::Datagen, &fixture("datagen_inbound_button.json"));
    let m = button.message.as_ref().unwrap();
    assert_eq!(m.wamid.as_deref(), Some("wamid.button-reply-1"));
    assert_eq!(
        m.content.as_ref().unwrap()["button"]["text"],
        "Yes, interested"
    );
    assert_eq!(
        priority(Bsp::Datagen, &fixture("datagen_inbound_button.json")),
        5
    );
}

#[test]
fn datagen_missing_optional_fields_fall_back() {
    let e = one(
        Bsp::Datagen,
        r#"{"events":{"eventType":"DELIVERY EVENTS","mid":"wamid.bare"},"notificationAttributes":{"status":"sent"}}"#,
    );
    let m = e.message.unwrap();
    assert_eq!(m.occurred_at, received());
    assert_eq!(m.phone_number, None);
    assert_eq!(m.campaign_id, None);
}

#[test]
fn unrecognized_bodies_are_kept_whole() {
    for body in [
        "[1,2",
        "42",
        r#"{"hello":"world"}"#,
        r#"{"events":{"eventType":"DELIVERY EVENTS"}}"#,
    ] {
        let p = parse(Bsp::Datagen, body);
        assert!(p.events.is_empty(), "{body}");
        assert_eq!(p.unrecognized.len(), 1, "{body}");
        assert!(!p.unrecognized[0].reason.is_empty());
    }
    let p = parse(Bsp::Datagen, r#"{"hello":"world"}"#);
    assert_eq!(p.unrecognized[0].body, r#"{"hello":"world"}"#);
}

// ---------- Karix ----------

#[test]
fn karix_mid_is_its_own_id_not_a_wamid() {
    let sent = one(Bsp::Karix, &fixture("karix_sent.json"));
    let m = sent.message.as_ref().unwrap();
    assert_eq!(m.wamid, None);
    assert_eq!(m.bsp_message_id.as_deref(), Some("176901234567890123456"));
    assert_eq!(m.status, Some(Status::Sent));
    assert_eq!(sent.legacy_type, "karix.message_sent");
    assert_eq!(m.tags["messageTag1"], "cmp:diwali_2025;row:1001");
    assert_eq!(m.tags["conversationId"], "conv-919876543210");

    let delivered = one(Bsp::Karix, &fixture("karix_delivered.json"));
    let m = delivered.message.as_ref().unwrap();
    assert_eq!(m.status, Some(Status::Delivered));
    // "000" is Karix's success code, not an error.
    assert_eq!(m.error_code, None);
    assert_eq!(m.occurred_at, ms(1_749_540_005_000));

    let failed = one(Bsp::Karix, &fixture("karix_failed.json"));
    let m = failed.message.as_ref().unwrap();
    assert_eq!(m.status, Some(Status::Failed));
    assert_eq!(m.raw_status.as_deref(), Some("dropped"));
    assert_eq!(m.error_code.as_deref(), Some("131026"));
    assert_eq!(m.reason.as_deref(), Some("Message undeliverable"));
    assert_eq!(failed.legacy_type, "karix.message_failed");
    assert_eq!(failed.unified_type, "message.failed");
}

#[test]
fn karix_inbound_takes_the_wamid_from_the_message() {
    let e = one(Bsp::Karix, &fixture("karix_inbound_text.json"));
    let m = e.message.unwrap();
    assert_eq!(
        m.wamid.as_deref(),
        Some("wamid.HBgMOTE5ODc2NTQzMjEwFQIAEhgWM0VCMEQ1RTZGNzA4MTkyQTNCNEMA")
    );
    assert_eq!(
        m.bsp_message_id.as_deref(),
        Some("ABEGkZiHZUMhAgo6N0bGq1AbCdEf")
    );
    assert_eq!(m.direction, Direction::Inbound);
    assert_eq!(e.legacy_type, "karix.user_message");
}

// ---------- AiSensy ----------

#[test]
fn aisensy_status_updates() {
    let read = one(Bsp::Aisensy, &fixture("aisensy_status_read.json"));
    let m = read.message.as_ref().unwrap();
    assert_eq!(read.legacy_type, "aisensy.message.status.updated");
    assert_eq!(read.unified_type, "message.read");
    assert_eq!(
        m.wamid.as_deref(),
        Some("wamid.HBgMOTE5ODc2NTQzMjEwFQIAERgSM0VCMEE4QzdGNEQyRTlBMUIwAA==")
    );
    assert_eq!(
        m.bsp_message_id.as_deref(),
        Some("6667a1b2c3d4e5f6a7b8c9d0")
    );
    assert_eq!(m.status, Some(Status::Read));
    assert_eq!(m.occurred_at, ms(1_749_540_095_000));
    assert_eq!(m.phone_number.as_deref(), Some("919876543210"));
    assert_eq!(m.campaign_id.as_deref(), Some("6660f00dba5eba11c0ffee01"));
    assert_eq!(m.project_id.as_deref(), Some("6651c0ffee1234567890abcd"));
    assert_eq!(m.tags["campaign_name"], "diwali_2025_offer");
    assert_eq!(m.dedup_key, "aisensy:6667b0000000000000000001");
    assert_eq!(m.error_code, None);

    let failed = one(Bsp::Aisensy, &fixture("aisensy_status_failed.json"));
    let m = failed.message.as_ref().unwrap();
    assert_eq!(m.status, Some(Status::Failed));
    assert_eq!(m.occurred_at, ms(1_749_540_004_000));
    assert_eq!(m.error_code.as_deref(), Some("131026"));
    assert_eq!(m.reason.as_deref(), Some("Message undeliverable"));
}

#[test]
fn aisensy_numeric_ids_and_inferred_statuses() {
    let e = one(Bsp::Aisensy, &fixture("aisensy_numeric_id_no_status.json"));
    let m = e.message.unwrap();
    assert_eq!(m.dedup_key, "aisensy:987654321");
    assert_eq!(m.status, Some(Status::Delivered));
    assert_eq!(m.occurred_at, ms(1_749_540_150_000));
    // Blank failureResponse fields are not an error.
    assert_eq!(m.error_code, None);

    let failed_only = json!({"id": "n1", "topic": "message.status.updated", "data": {"message": {
        "id": "x1", "failureResponse": {"code": 470, "reason": "expired"}}}});
    let m = one(Bsp::Aisensy, &failed_only.to_string()).message.unwrap();
    assert_eq!(m.status, Some(Status::Failed));
    assert_eq!(m.error_code.as_deref(), Some("470"));

    let lower = json!({"id": "n2", "topic": "message.status.updated", "data": {"message": {
        "messageId": "wamid.l", "status": "delivered", "delivered_at": 1_749_540_000_000_i64}}});
    assert_eq!(
        one(Bsp::Aisensy, &lower.to_string())
            .message
            .unwrap()
            .status,
        Some(Status::Delivered)
    );
}

#[test]
fn aisensy_inbound_is_tracked_and_prioritised() {
    let e = one(Bsp::Aisensy, &fixture("aisensy_inbound.json"));
    let m = e.message.as_ref().unwrap();
    assert_eq!(e.legacy_type, "aisensy.message.sender.user");
    assert_eq!(e.unified_type, "message.received");
    assert_eq!(m.direction, Direction::Inbound);
    assert_eq!(m.status, Some(Status::Received));
    assert_eq!(
        m.content.as_ref().unwrap()["content"]["text"],
        "Hi, is the Diwali offer still valid?"
    );
    assert_eq!(m.content.as_ref().unwrap()["type"], "TEXT");
    assert_eq!(priority(Bsp::Aisensy, &fixture("aisensy_inbound.json")), 5);
}

#[test]
fn aisensy_contact_and_template_topics_are_kept_untracked() {
    let e = one(Bsp::Aisensy, &fixture("aisensy_contact_created.json"));
    assert!(e.message.is_none());
    assert_eq!(e.legacy_type, "aisensy.contact.created");
    assert_eq!(e.raw["data"]["contact"]["name"], "Anita");
    // The whole envelope is kept, not just {topic, data, id} (legacy D11).
    assert_eq!(e.raw["delivery_attempt"], "1");

    let tpl = json!({"id": "t1", "topic": "wa_template.status.updated", "data": {"name": "x"}});
    assert!(one(Bsp::Aisensy, &tpl.to_string()).message.is_none());

    // message.created from the customer repeats message.sender.user.
    let echo = json!({"id": "c1", "topic": "message.created",
                      "data": {"message": {"id": "m", "messageId": "wamid.m", "sender": "USER"}}});
    assert!(one(Bsp::Aisensy, &echo.to_string()).message.is_none());
    let bot = json!({"id": "c2", "topic": "message.created",
                     "data": {"message": {"id": "m2", "messageId": "wamid.m2", "sender": "BOT", "status": "SENT", "sent_at": 5000}}});
    let m = one(Bsp::Aisensy, &bot.to_string()).message.unwrap();
    assert_eq!(m.status, Some(Status::Sent));
}

#[test]
fn aisensy_unknown_topics_and_shapes_are_unrecognized() {
    for body in [
        json!({"id": "u1", "topic": "billing.updated", "data": {}}),
        json!({"id": "u2", "data": {}}),
        json!({"id": "u3", "topic": "message.status.updated", "data": {}}),
        json!({"id": "u4", "topic": "message.status.updated", "data": {"message": {"status": "SENT"}}}),
        json!(["not", "an", "envelope"]),
    ] {
        let p = parse(Bsp::Aisensy, &body.to_string());
        assert!(p.events.is_empty(), "{body}");
        assert_eq!(p.unrecognized.len(), 1, "{body}");
    }
}

// ---------- Meta ----------

#[test]
fn meta_statuses() {
    let sent = one(Bsp::Meta, &fixture("meta_status_sent.json"));
    let m = sent.message.as_ref().unwrap();
    assert_eq!(sent.unified_type, "message.sent");
    assert_eq!(
        m.wamid.as_deref(),
        Some("wamid.HBgMOTE5ODc2NTQzMjEwFQIAERgSM0VCMEE4QzdGNEQyRTlBMUIwAA==")
    );
    assert_eq!(m.occurred_at, ms(1_749_540_002_000));
    assert_eq!(m.phone_number.as_deref(), Some("919876543210"));
    assert_eq!(m.business_number.as_deref(), Some("918071234567"));
    assert_eq!(
        m.tags["biz_opaque_callback_data"],
        "cmp=diwali_2025;aud=42;row=1001"
    );
    assert_eq!(sent.raw["pricing"]["category"], "marketing");

    let failed = one(Bsp::Meta, &fixture("meta_status_failed.json"));
    let m = failed.message.as_ref().unwrap();
    assert_eq!(m.status, Some(Status::Failed));
    assert_eq!(m.error_code.as_deref(), Some("131026"));
    assert_eq!(m.reason.as_deref(), Some("Message undeliverable"));
}

#[test]
fn meta_inbound_and_batches() {
    let e = one(Bsp::Meta, &fixture("meta_inbound_text.json"));
    let m = e.message.as_ref().unwrap();
    assert_eq!(e.unified_type, "message.received");
    assert_eq!(m.phone_number.as_deref(), Some("919876543210"));
    assert_eq!(m.content.as_ref().unwrap()["profile_name"], "Ravi Kumar");
    assert_eq!(m.occurred_at, ms(1_749_540_120_000));
    assert_eq!(priority(Bsp::Meta, &fixture("meta_inbound_text.json")), 5);

    let p = parse(Bsp::Meta, &fixture("meta_batch.json"));
    assert!(p.unrecognized.is_empty());
    assert_eq!(p.events.len(), 4);
    let ids: std::collections::HashSet<_> = p.events.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids.len(), 4, "event ids are distinct");
    let statuses: Vec<_> = p
        .events
        .iter()
        .map(|e| e.message.as_ref().unwrap().status)
        .collect();
    assert_eq!(
        statuses,
        [
            Some(Status::Delivered),
            Some(Status::Read),
            None,
            Some(Status::Received)
        ]
    );
    let inbound = p.events[3].message.as_ref().unwrap();
    assert_eq!(inbound.content.as_ref().unwrap()["profile_name"], "Asha");
    assert_eq!(
        inbound.content.as_ref().unwrap()["context"]["id"],
        "wamid.meta-b1"
    );
}

#[test]
fn meta_other_shapes() {
    let tpl = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "message_template_status_update", "value": {"event": "APPROVED"}}]}]});
    let e = one(Bsp::Meta, &tpl.to_string());
    assert!(e.message.is_none());
    assert_eq!(e.legacy_type, "meta.message_template_status_update");
    for body in [
        json!({"object": "page"}),
        json!({"entry": [{"changes": [{"value": 3}]}]}),
    ] {
        let p = parse(Bsp::Meta, &body.to_string());
        assert!(p.events.is_empty(), "{body}");
        assert_eq!(p.unrecognized.len(), 1, "{body}");
    }
}

// ---------- Gupshup, Twilio, 360dialog, Meta in full ----------

/// Every event of `bodies`, parsed and applied one body at a time (as the
/// processor does), in the given order; the records that result.
fn final_records(bsp: Bsp, bodies: &[String]) -> Vec<zen_gateway::model::MessageRecord> {
    use zen_gateway::store::working_set::WorkingSet;
    let mut set = WorkingSet::<()>::default();
    for body in bodies {
        let parsed = parse(bsp, body);
        assert!(parsed.unrecognized.is_empty(), "{:?}", parsed.unrecognized);
        set.apply(&parsed.events, received());
    }
    let mut out: Vec<_> = set.changed().map(|s| s.record.clone()).collect();
    for r in &mut out {
        r.message_id.clear();
        r.created_at = received();
        r.updated_at = received();
    }
    out.sort_by(|a, b| a.bsp_message_id.cmp(&b.bsp_message_id));
    out
}

/// Same final state whatever the arrival order, with duplicates.
fn same_state_in_any_order(bsp: Bsp, bodies: &[String]) -> Vec<zen_gateway::model::MessageRecord> {
    let reference = final_records(bsp, bodies);
    let mut reversed: Vec<String> = bodies.iter().rev().cloned().collect();
    reversed.extend(bodies.iter().cloned());
    let mut rotated = bodies.to_vec();
    rotated.rotate_left(bodies.len() / 2);
    rotated.push(bodies[0].clone());
    for order in [reversed, rotated] {
        let got = final_records(bsp, &order);
        assert_eq!(
            serde_json::to_value(&got).unwrap(),
            serde_json::to_value(&reference).unwrap()
        );
    }
    reference
}

#[test]
fn gupshup_v2_lifecycle_finds_the_record_by_wamid_or_gs_id() {
    let e = one(Bsp::Gupshup, &fixture("gupshup_v2_enqueued.json"));
    let m = e.message.as_ref().unwrap();
    assert_eq!(m.status, Some(Status::Accepted));
    assert_eq!(
        m.bsp_message_id.as_deref(),
        Some("ee4a68a0-1203-4c85-8dc3-49d0b3226a35")
    );
    assert_eq!(m.wamid.as_deref(), Some("gBEGkYaYVSEEAgnZxQ3JmKK6Wvg"));
    let sent = one(Bsp::Gupshup, &fixture("gupshup_v2_sent.json"));
    let m = sent.message.as_ref().unwrap();
    assert_eq!(m.wamid.as_deref(), Some("gBEGkYaYVSEEAgnZxQ3JmKK6Wvg"));
    // The inner `ts` (seconds) is the event time, not the envelope's.
    assert_eq!(m.occurred_at, ms(1_749_540_002_000));
    assert_eq!(sent.legacy_type, "gupshup.message-event");
    assert_eq!(sent.unified_type, "message.sent");
    let bodies: Vec<String> = ["enqueued", "sent", "delivered", "read"]
        .iter()
        .map(|s| fixture(&format!("gupshup_v2_{s}.json")))
        .collect();
    let records = same_state_in_any_order(Bsp::Gupshup, &bodies);
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r.current_status, "read");
    assert_eq!(r.wamid.as_deref(), Some("gBEGkYaYVSEEAgnZxQ3JmKK6Wvg"));
    assert_eq!(r.read_at, Some(ms(1_749_540_004_000)));
    assert_eq!(r.status_history.len(), 4);
}

#[test]
fn gupshup_v2_failures_and_inbound_messages() {
    let failed = one(Bsp::Gupshup, &fixture("gupshup_v2_failed.json"));
    let m = failed.message.as_ref().unwrap();
    assert_eq!(m.status, Some(Status::Failed));
    assert_eq!(m.error_code.as_deref(), Some("1002"));
    assert_eq!(
        m.reason.as_deref(),
        Some("Number Does Not Exists On WhatsApp")
    );
    assert_eq!(m.wamid, None);
    // No event time inside: the envelope's.
    assert_eq!(m.occurred_at, ms(1_749_540_020_000));

    let body = fixture("gupshup_v2_inbound_text.json");
    assert_eq!(priority(Bsp::Gupshup, &body), 5);
    let inbound = one(Bsp::Gupshup, &body);
    let m = inbound.message.as_ref().unwrap();
    assert_eq!(m.direction, Direction::Inbound);
    assert_eq!(m.phone_number.as_deref(), Some("919800000003"));
    let content = m.content.as_ref().unwrap();
    assert_eq!(content["payload"]["text"], "Hi, is my order shipped?");
    assert_eq!(content["context"]["id"], "gBEGkYaYVSEEAgnZxQ3JmKK6Wvg");
    assert_eq!(inbound.unified_type, "message.received");
    assert_eq!(priority(Bsp::Gupshup, &fixture("gupshup_v2_sent.json")), 0);
    // Other v2 types are kept and forwarded, untracked.
    let other = one(
        Bsp::Gupshup,
        r#"{"app":"a","timestamp":1,"version":2,"type":"user-event","payload":{"phone":"9198","type":"opted-in"}}"#,
    );
    assert!(other.message.is_none());
    assert_eq!(other.legacy_type, "gupshup.user-event");
}

#[test]
fn gupshup_v3_and_enterprise_reports() {
    let sent = one(Bsp::Gupshup, &fixture("gupshup_v3_sent.json"));
    let m = sent.message.as_ref().unwrap();
    assert_eq!(
        m.wamid.as_deref(),
        Some("wamid.HBgMOTE5ODAwMDAwMDA0FQIAERgSMDQ4Rj")
    );
    assert_eq!(
        m.bsp_message_id.as_deref(),
        Some("7daeb742-f2dc-4c09-90e0-d879d20f7b98")
    );
    assert_eq!(sent.legacy_type, "gupshup.status");
    let enqueued = one(Bsp::Gupshup, &fixture("gupshup_v3_enqueued.json"));
    let m = enqueued.message.as_ref().unwrap();
    assert_eq!(m.status, Some(Status::Accepted));
    // Milliseconds in v3.
    assert_eq!(m.occurred_at, ms(1_749_540_039_420));
    let records = same_state_in_any_order(
        Bsp::Gupshup,
        &[
            fixture("gupshup_v3_enqueued.json"),
            fixture("gupshup_v3_sent.json"),
        ],
    );
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].current_status, "sent");
    let data = records[0].bsp_data.as_ref().unwrap();
    assert_eq!(data["pricing"]["pricing_model"], "PMP");
    assert_eq!(data["conversation"]["expiration_timestamp"], "1749626400");

    let body = fixture("gupshup_enterprise.json");
    let parsed = parse(Bsp::Gupshup, &body);
    assert_eq!(parsed.events.len(), 3);
    let failed = parsed.events[2].message.as_ref().unwrap();
    assert_eq!(failed.status, Some(Status::Failed));
    assert_eq!(failed.error_code.as_deref(), Some("005"));
    assert_eq!(failed.reason.as_deref(), Some("UNKNOWN_SUBSCRIBER"));
    assert!(
        parsed.events[1]
            .message
            .as_ref()
            .unwrap()
            .error_code
            .is_none()
    );
    let records = same_state_in_any_order(Bsp::Gupshup, &[body]);
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].current_status, "delivered");
    assert_eq!(records[1].current_status, "failed");
}

#[test]
fn twilio_status_callbacks_and_inbound_messages() {
    let delivered = one(Bsp::Twilio, &fixture("twilio_status_delivered.txt"));
    let m = delivered.message.as_ref().unwrap();
    assert_eq!(m.status, Some(Status::Delivered));
    assert_eq!(
        m.bsp_message_id.as_deref(),
        Some("SM0123456789abcdef0123456789abcdef")
    );
    assert_eq!(m.phone_number.as_deref(), Some("919800000007"));
    assert_eq!(m.business_number.as_deref(), Some("14155238886"));
    // No event time from Twilio: the receive time.
    assert_eq!(m.occurred_at, received());
    assert_eq!(delivered.raw["MessageStatus"], "delivered");
    let undelivered = one(Bsp::Twilio, &fixture("twilio_status_undelivered.txt"));
    let m = undelivered.message.as_ref().unwrap();
    assert_eq!(m.status, Some(Status::Failed));
    assert_eq!(m.error_code.as_deref(), Some("63016"));
    assert!(
        m.reason
            .as_deref()
            .unwrap()
            .starts_with("Failed to send freeform")
    );
    // Delivered after undelivered (multi-device) wins, whatever the order.
    let records = same_state_in_any_order(
        Bsp::Twilio,
        &[
            fixture("twilio_status_undelivered.txt"),
            fixture("twilio_status_delivered.txt"),
        ],
    );
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].current_status, "delivered");

    let body = fixture("twilio_inbound.txt");
    assert_eq!(priority(Bsp::Twilio, &body), 5);
    assert_eq!(
        priority(Bsp::Twilio, &fixture("twilio_status_delivered.txt")),
        0
    );
    let inbound = one(Bsp::Twilio, &body);
    let m = inbound.message.as_ref().unwrap();
    assert_eq!(m.direction, Direction::Inbound);
    assert_eq!(m.phone_number.as_deref(), Some("919800000008"));
    assert_eq!(m.content.as_ref().unwrap()["Body"], "Where is my parcel?");
    assert_eq!(inbound.legacy_type, "twilio.message");
    // The JSON form the RabbitMQ queue carries reads the same.
    let provider = Providers::new();
    let twilio = provider.get(Bsp::Twilio).unwrap();
    let queued = twilio.legacy_queue_body(&bytes::Bytes::from(body.clone()), None);
    let again = one(Bsp::Twilio, std::str::from_utf8(&queued).unwrap());
    assert_eq!(again.message, inbound.message);
}

#[test]
fn dialog360_is_the_cloud_api_under_its_own_label() {
    let e = one(Bsp::Dialog360, &fixture("meta_status_sent.json"));
    assert_eq!(e.bsp, Bsp::Dialog360);
    assert_eq!(e.legacy_type, "360dialog.status");
    assert_eq!(e.message.as_ref().unwrap().status, Some(Status::Sent));
    assert_eq!(
        priority(Bsp::Dialog360, &fixture("meta_inbound_text.json")),
        5
    );
    assert_eq!(Bsp::parse("360dialog"), Some(Bsp::Dialog360));
    assert_eq!(
        serde_json::to_value(Bsp::Dialog360).unwrap(),
        json!("360dialog")
    );
}

#[test]
fn meta_notifications_errors_warnings_and_pricing() {
    let template = one(Bsp::Meta, &fixture("meta_template_status.json"));
    assert!(template.message.is_none());
    assert_eq!(template.legacy_type, "meta.message_template_status_update");
    assert_eq!(template.unified_type, "message_template_status_update");
    let alerts = parse(Bsp::Meta, &fixture("meta_account_alerts.json"));
    let kinds: Vec<_> = alerts
        .events
        .iter()
        .map(|e| e.unified_type.as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "account_alerts",
            "phone_number_quality_update",
            "account_update"
        ]
    );
    let body = fixture("meta_errors_and_deleted.json");
    let parsed = parse(Bsp::Meta, &body);
    assert_eq!(parsed.events[0].legacy_type, "meta.errors");
    assert_eq!(parsed.events[0].raw["value"]["errors"][0]["code"], 131051);
    let records = same_state_in_any_order(Bsp::Meta, &[body]);
    let r = &records[0];
    assert_eq!(r.current_status, "delivered");
    // `warning` is history, not state.
    let statuses: Vec<_> = r.status_history.iter().map(|h| h.status.as_str()).collect();
    assert_eq!(statuses, ["sent", "warning", "delivered"]);
    let data = r.bsp_data.as_ref().unwrap();
    assert_eq!(data["pricing"]["type"], "regular");
    assert_eq!(data["pricing"]["category"], "utility");
    // Only `sent` carries the expiry; later statuses keep it.
    assert_eq!(data["conversation"]["expiration_timestamp"], "1749626470");
}

// ---------- Meta, 2026: users by business-scoped id, echoes, preferences ----------

const BSUID: &str = "IN.1502576394655843";

#[test]
fn meta_status_of_a_user_known_only_by_bsuid() {
    let e = one(Bsp::Meta, &fixture("meta_status_bsuid_only.json"));
    let m = e.message.as_ref().unwrap();
    assert_eq!(m.status, Some(Status::Delivered));
    assert_eq!(m.phone_number, None, "no phone was shared");
    let user = m.user.as_ref().expect("the user");
    assert_eq!(user.user_id.as_deref(), Some(BSUID));
    assert_eq!(
        user.parent_user_id.as_deref(),
        Some("IN.ENT.11815799212886844830")
    );
    assert_eq!(user.username.as_deref(), Some("asha.k"));
    let billing = m.billing.as_ref().expect("pricing kept");
    assert_eq!(billing["pricing"]["pricing_model"], "PMP");
    assert_eq!(billing["pricing"]["type"], "regular");
    assert_eq!(billing["pricing"]["category"], "marketing_lite");
}

#[test]
fn meta_played_is_a_status_after_read() {
    let e = one(Bsp::Meta, &fixture("meta_status_played.json"));
    assert_eq!(e.message.as_ref().unwrap().status, Some(Status::Played));
    assert_eq!(e.unified_type, Status::Played.event_type());
    assert!(Status::Played > Status::Read);
}

#[test]
fn meta_group_send_keeps_the_group_and_typed_pricing() {
    let e = one(Bsp::Meta, &fixture("meta_status_group.json"));
    let m = e.message.as_ref().unwrap();
    assert!(m.user.is_none(), "a group is no user");
    let billing = m.billing.as_ref().unwrap();
    assert_eq!(billing["group"]["id"], "120363025246125486");
    assert_eq!(billing["group"]["participant_id"], "919876543210");
    assert_eq!(billing["pricing"]["type"], "free_customer_service");
    assert_eq!(
        billing["pricing"]["category"],
        "authentication-international"
    );
}

#[test]
fn meta_inbound_from_a_bsuid_only_user() {
    let e = one(Bsp::Meta, &fixture("meta_inbound_bsuid.json"));
    let m = e.message.as_ref().unwrap();
    assert_eq!(m.direction, Direction::Inbound);
    let user = m.user.as_ref().unwrap();
    assert_eq!(user.user_id.as_deref(), Some(BSUID));
    assert_eq!(user.username.as_deref(), Some("asha.k"));
}

#[test]
fn meta_identifier_changes_are_contact_events() {
    let e = one(Bsp::Meta, &fixture("meta_user_changed_number.json"));
    assert!(e.message.is_none());
    assert_eq!(e.unified_type, "contact.user_changed_number");
    let c = e.contact.as_ref().unwrap();
    assert_eq!(c.previous.phone.as_deref(), Some("919876543210"));
    assert_eq!(c.user.phone.as_deref(), Some("919812345678"));

    let e = one(Bsp::Meta, &fixture("meta_user_changed_user_id.json"));
    assert_eq!(e.unified_type, "contact.user_changed_user_id");
    let c = e.contact.as_ref().unwrap();
    assert_eq!(c.previous.user_id.as_deref(), Some(BSUID));
    assert_eq!(c.user.user_id.as_deref(), Some("IN.2602576394655999"));
}

#[test]
fn meta_user_preferences_are_a_marketing_preference_event() {
    let e = one(Bsp::Meta, &fixture("meta_user_preferences.json"));
    assert_eq!(e.unified_type, "contact.marketing_preference");
    assert_eq!(e.legacy_type, "meta.user_preferences");
    let c = e.contact.as_ref().unwrap();
    let p = c.preference.as_ref().unwrap();
    assert_eq!(p.value, "stop");
    assert_eq!(c.user.user_id.as_deref(), Some(BSUID));
    assert_eq!(c.user.phone.as_deref(), Some("919876543210"));
}

#[test]
fn meta_echoes_are_outbound_sent_records() {
    let e = one(Bsp::Meta, &fixture("meta_message_echoes.json"));
    assert_eq!(e.legacy_type, "meta.message_echo");
    let m = e.message.as_ref().unwrap();
    assert_eq!(m.direction, Direction::Outbound);
    assert_eq!(m.status, Some(Status::Sent));
    assert_eq!(m.wamid.as_deref(), Some("wamid.HBgMOTE5OEVDSE8wMDAx"));
    assert_eq!(m.phone_number.as_deref(), Some("919800000002"));
}
