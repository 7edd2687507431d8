//! Meta's 2026 users: a user known only by a business-scoped user id
//! (BSUID) and a username is followed end to end, on both stores: the
//! records carry their identity, their messages are listed by user id
//! (across a change of it), their contact is found by any identifier, and
//! their marketing opt-out is kept, the latest by its own time.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::services;

const BUSINESS: &str = "15550001111";
const USER: &str = "IN.1502576394655843";
const PARENT: &str = "IN.ENT.11815799212886844830";
const NEW_USER: &str = "IN.2602576394655999";
const USERNAME: &str = "asha.k";

/// A Cloud API webhook of one change.
fn meta(field: &str, value: Value) -> String {
    let mut value = value;
    value["messaging_product"] = json!("whatsapp");
    value["metadata"] =
        json!({"display_phone_number": BUSINESS, "phone_number_id": "106540352242922"});
    json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398",
        "changes": [{"field": field, "value": value}]}]})
    .to_string()
}

fn status(wamid: &str, status: &str, ts: i64, user: &str) -> String {
    let contact = if user == "IN.999" {
        json!({"user_id": user})
    } else {
        json!({"user_id": user, "parent_user_id": PARENT, "profile": {"username": USERNAME}})
    };
    meta(
        "messages",
        json!({
            "contacts": [contact],
            "statuses": [{"id": wamid, "status": status, "timestamp": ts.to_string(),
                "recipient_user_id": user}],
        }),
    )
}

/// Polls a contact until `done` holds: a batch's contacts are written after
/// its records, so a record seen does not yet mean its contact is.
async fn wait_contact(app: &TestApp, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let reached = eventually_within(std::time::Duration::from_secs(15), async || {
        last = app.admin_get(path).await;
        done(&last)
    })
    .await;
    assert!(
        reached,
        "{path} never reached the expected state; last: {last}"
    );
    last
}

async fn a_bsuid_only_user_is_followed_end_to_end(app: TestApp) {
    let t = 1_767_225_600_i64;
    let posts = [
        status("wamid.bsuid-1", "sent", t, USER),
        status("wamid.bsuid-1", "delivered", t + 5, USER),
        status("wamid.bsuid-1", "read", t + 9, USER),
        // Another user of the same business: never in this user's list.
        status("wamid.other-1", "delivered", t + 6, "IN.999"),
        // The user writes back: no phone number, `from_user_id` only.
        meta(
            "messages",
            json!({
                "contacts": [{"user_id": USER, "profile": {"name": "Asha", "username": USERNAME}}],
                "messages": [{"from_user_id": USER, "id": "wamid.bsuid-in-1", "timestamp": (t + 20).to_string(),
                    "type": "text", "text": {"body": "stop sending offers"}}],
            }),
        ),
        // An opt-out, then an older resume that arrives after it: the stop stays.
        meta(
            "user_preferences",
            json!({"user_preferences": [{"user_id": USER, "category": "marketing_messages",
                "value": "stop", "detail": "User requested to stop marketing messages",
                "timestamp": t + 30}]}),
        ),
        meta(
            "user_preferences",
            json!({"user_preferences": [{"user_id": USER, "category": "marketing_messages",
                "value": "resume", "timestamp": t + 25}]}),
        ),
        // The user's BSUID changes; later statuses name the new one.
        meta(
            "messages",
            json!({"messages": [{"from_user_id": USER, "id": "wamid.system-1", "timestamp": (t + 40).to_string(),
                "type": "system", "system": {"type": "user_changed_user_id", "user_id": NEW_USER,
                    "body": "User changed"}}]}),
        ),
        status("wamid.bsuid-2", "delivered", t + 50, NEW_USER),
    ];
    for body in posts {
        let resp = app.post_webhook("/webhook/meta", body).await;
        assert_eq!(resp.status(), 200);
    }
    app.barrier().await;

    // The record carries the user as Meta named them.
    let rec = app
        .wait_for_message("wamid.bsuid-1", |m| m["current_status"] == "read")
        .await;
    app.wait_for_message("wamid.bsuid-2", |m| m["current_status"] == "delivered")
        .await;
    // Not implied by the last one: an entry the store refused once (FerretDB
    // under load) is retried after the ones behind it.
    app.wait_for_message("wamid.bsuid-in-1", |_| true).await;
    assert_eq!(rec["recipient"]["user_id"], USER, "{rec}");
    assert_eq!(
        rec["recipient"]["parent_user_id"], PARENT,
        "from contacts[]"
    );
    assert_eq!(rec["recipient"]["username"], USERNAME);
    assert!(
        rec["recipient"].get("phone").is_none(),
        "no phone was shared: {rec}"
    );

    // One contact, whichever identifier finds it.
    let contact = wait_contact(&app, &format!("/api/v1/contacts/{USER}"), |c| {
        c["current"]["user_id"] == NEW_USER && c["marketing_preference"]["value"] == "stop"
    })
    .await;
    // Their messages (their contact is written: its ids list them), and
    // only theirs, under the old and the new user id.
    for id in [USER, NEW_USER] {
        let page = app
            .admin_get(&format!("/api/v1/messages?user_id={id}&limit=50"))
            .await;
        let mut ids: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["wamid"].as_str().unwrap_or_default())
            .collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            ["wamid.bsuid-1", "wamid.bsuid-2", "wamid.bsuid-in-1"],
            "messages of {id}: {page}"
        );
    }

    let contact_id = contact["contact_id"]
        .as_str()
        .expect("a contact")
        .to_owned();
    for id in [NEW_USER, PARENT, USERNAME] {
        let found = app
            .admin_get(&format!("/api/v1/contacts/{id}?business_number={BUSINESS}"))
            .await;
        assert_eq!(found["contact_id"], contact_id.as_str(), "{id}: {found}");
    }
    assert_eq!(contact["business_number"], BUSINESS);
    assert_eq!(contact["current"]["user_id"], NEW_USER, "{contact}");
    assert_eq!(contact["current"]["username"], USERNAME);
    assert_eq!(
        contact["marketing_preference"]["value"], "stop",
        "{contact}"
    );
    let kinds: Vec<(&str, &str)> = contact["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["kind"].as_str().unwrap(), i["value"].as_str().unwrap()))
        .collect();
    for want in [
        ("user_id", USER),
        ("user_id", NEW_USER),
        ("parent_user_id", PARENT),
        ("username", USERNAME),
    ] {
        assert!(kinds.contains(&want), "{want:?} in {kinds:?}");
    }
    assert_eq!(contact["changes"][0]["from"], USER, "{contact}");
    assert_eq!(contact["changes"][0]["to"], NEW_USER);
    let missing = app
        .admin_send(reqwest::Method::GET, "/api/v1/contacts/IN.404", None)
        .await;
    assert_eq!(missing.status(), 404);

    // The console shows the contact with their opt-out and their messages,
    // and a message links to its user's contact.
    let (_, cookie) = crate::console::sign_in(&app).await;
    let (status, page) =
        crate::console::get(&app, &cookie, &format!("/console/contacts/{USER}")).await;
    assert_eq!(status, 200);
    for text in [
        NEW_USER,
        USERNAME,
        "stop",
        "wamid.bsuid-1",
        "wamid.bsuid-2",
        "wamid.bsuid-in-1",
    ] {
        assert!(page.contains(text), "{text} on the contact page");
    }
    assert!(!page.contains("wamid.other-1"));
    let (status, page) =
        crate::console::get(&app, &cookie, "/console/messages/wamid.bsuid-1").await;
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!(
            "/console/contacts/{USER}?business_number={BUSINESS}"
        )),
        "a link to the contact"
    );

    // The other shapes, through the pipeline to the store.
    for f in [
        "meta_status_played.json",
        "meta_status_group.json",
        "meta_message_echoes.json",
        "meta_user_changed_number.json",
    ] {
        assert_eq!(
            app.post_webhook("/webhook/meta", fixture(f)).await.status(),
            200
        );
    }
    // A status of the echoed message, later: it lands on the echo's record.
    let echo = "wamid.HBgMOTE5OEVDSE8wMDAx";
    let echo_delivered = json!({"object": "whatsapp_business_account", "entry": [{"id": "102345678901234",
        "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "918071234567", "phone_number_id": "109876543210987"},
            "statuses": [{"id": echo, "status": "delivered", "timestamp": "1767226310", "recipient_id": "919800000002"}]}}]}]});
    app.post_webhook("/webhook/meta", echo_delivered.to_string())
        .await;
    app.barrier().await;
    let rec = app
        .wait_for_message(echo, |m| m["current_status"] == "delivered")
        .await;
    assert_eq!(rec["direction"], "outbound");
    assert_eq!(
        rec["bsp_data"]["origin"]["sent_from"], "whatsapp_business_app",
        "{rec}"
    );
    assert_eq!(rec["status_history"].as_array().unwrap().len(), 2, "{rec}");
    let played = app
        .wait_for_message("wamid.HBgMOTE5OFZPSUNFMDAwMQ==", |m| {
            m["current_status"] == "played"
        })
        .await;
    assert_eq!(played["played_at"], "2026-01-01T00:01:40Z", "{played}");
    let group = app
        .wait_for_message("wamid.HBgMOTE5OEdST1VQMDAwMQ==", |m| {
            m["current_status"] == "delivered"
        })
        .await;
    assert_eq!(
        group["bsp_data"]["group"]["id"], "120363025246125486",
        "{group}"
    );
    // The new number finds the contact that had the old one.
    let moved = wait_contact(
        &app,
        "/api/v1/contacts/919812345678?business_number=918071234567",
        |c| c["current"]["phone"] == "919812345678",
    )
    .await;
    assert_eq!(moved["current"]["phone"], "919812345678", "{moved}");
    assert_eq!(moved["changes"][0]["from"], "919876543210", "{moved}");
    app.stop().await;
}

#[tokio::test]
async fn a_bsuid_only_user_on_the_embedded_store() {
    a_bsuid_only_user_is_followed_end_to_end(spawn_app().await).await;
}

#[tokio::test]
async fn a_bsuid_only_user_on_mongodb() {
    let Some(uri) = services::mongo_uri() else {
        return;
    };
    let db_name = services::unique_db_name();
    let app = spawn_app_with(|s| {
        s.backends.mongo_uri = Some(zen_gateway::config::SecretUrl::new(uri.clone()));
        s.backends.database_name = db_name.clone();
    })
    .await;
    a_bsuid_only_user_is_followed_end_to_end(app).await;
    let client = zen_gateway::backends::mongo::client(&uri).await.unwrap();
    client.database(&db_name).drop().await.unwrap();
}
