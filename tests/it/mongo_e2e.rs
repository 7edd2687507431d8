//! The gateway on MongoDB (FerretDB in CI): legacy document shape, the
//! migration of legacy duplicates, and a database outage under ingest.

use std::time::Duration;

use bson::{Bson, doc};
use chrono::{TimeZone, Utc};
use futures::TryStreamExt;
use serde_json::Value;

use crate::helpers::*;
use crate::services::{self, PrivateFerret};

#[tokio::test]
async fn the_gateway_on_mongodb_writes_legacy_shaped_documents() {
    let Some(uri) = services::mongo_uri() else {
        return;
    };
    let db_name = services::unique_db_name();
    let app = spawn_app_with(|s| {
        s.backends.mongo_uri = Some(zen_gateway::config::SecretUrl::new(uri.clone()));
        s.backends.database_name = db_name.clone();
    })
    .await;
    let resp = app
        .post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
        .await;
    assert_eq!(resp.status(), 200);
    let wamid = "wamid.HBgMOTE5ODEyMzQ1Njc4FQIAERgSNDdCRkE1RTZEMDlDM0IyRjFBAA==";
    let rec = app
        .wait_for_message(wamid, |m| m["current_status"] == "delivered")
        .await;
    assert_eq!(rec["delivered_at"], "2025-06-10T07:20:07Z");
    let ready = app.wait_ready(|r| r["store"]["up"] == true).await;
    assert_eq!(ready["store"]["backend"], "mongodb");
    assert_eq!(ready["store"]["up"], true);

    let client = zen_gateway::backends::mongo::client(&uri).await.unwrap();
    let db = client.database(&db_name);
    let doc = db
        .collection::<bson::Document>("unified_message_tracking")
        .find_one(doc! {"wamid": wamid})
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(doc.get("_id"), Some(Bson::ObjectId(_))));
    assert!(matches!(doc.get("created_at"), Some(Bson::DateTime(_))));
    assert!(matches!(doc.get("delivered_at"), Some(Bson::DateTime(_))));
    let history = doc.get_array("status_history").unwrap();
    let entry = history[0].as_document().unwrap();
    assert!(matches!(entry.get("timestamp"), Some(Bson::DateTime(_))));
    assert_eq!(entry.get_str("source").unwrap(), "datagen");
    for field in [
        "message_id",
        "bsp",
        "phone_number",
        "business_number",
        "current_status",
        "project_owner_id",
    ] {
        assert!(doc.get_str(field).is_ok(), "{field} must be a string");
    }
    app.stop().await;
    db.drop().await.unwrap();
}

#[tokio::test]
async fn migrate_merges_the_legacy_duplicates_then_indexes() {
    let Some(uri) = services::mongo_uri() else {
        return;
    };
    let db_name = services::unique_db_name();
    let client = zen_gateway::backends::mongo::client(&uri).await.unwrap();
    let db = client.database(&db_name);
    let coll = db.collection::<bson::Document>("unified_message_tracking");
    let t = |s: i64| bson::DateTime::from_chrono(Utc.timestamp_opt(1_749_540_000 + s, 0).unwrap());
    let legacy = |wamid: &str, status: &str, history: Vec<(&str, i64)>, created: i64| {
        doc! {
            "_id": bson::oid::ObjectId::new(),
            "message_id": bson::oid::ObjectId::new().to_hex(),
            "wamid": wamid, "bsp": "datagen", "bsp_message_id": "",
            "phone_number": "", "business_number": "", "current_status": status,
            "status_history": history.into_iter().map(|(s, at)| doc! {"status": s, "source": "datagen", "timestamp": t(at)}).collect::<Vec<_>>(),
            "project_owner_id": "919812345678",
            "created_at": t(created), "updated_at": t(created),
        }
    };
    // What the legacy gateway wrote for one message: the implicit insert, the
    // extra `CreateMessage` document, and a late `sent` that regressed `read`.
    coll.insert_many([
        legacy("wamid.M1", "sent", vec![("sent", 1)], 1),
        legacy("wamid.M1", "sent", vec![("sent", 1)], 2),
        legacy(
            "wamid.M1",
            "sent",
            vec![("sent", 1), ("read", 5), ("sent", 6)],
            3,
        ),
        legacy("wamid.M2", "enqueued", vec![("enqueued", 1)], 1),
    ])
    .await
    .unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zen-gateway"))
        .arg("migrate")
        .env_clear()
        .env("MONGO_URI", &uri)
        .env("DATABASE_NAME", &db_name)
        .env("KEYS_JSON", "/nonexistent/Keys.json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["merged_groups"], 1);
    assert_eq!(report["removed_documents"], 2);

    let docs: Vec<bson::Document> = coll
        .find(doc! {"wamid": "wamid.M1"})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(docs.len(), 1);
    let m1 = &docs[0];
    assert_eq!(m1.get_str("current_status").unwrap(), "read");
    // sent@1 (three identical copies → one), read@5, sent@6.
    assert_eq!(m1.get_array("status_history").unwrap().len(), 3);
    assert_eq!(m1.get_datetime("read_at").unwrap(), &t(5));
    assert_eq!(m1.get_datetime("sent_at").unwrap(), &t(1));
    assert_eq!(m1.get_datetime("created_at").unwrap(), &t(1));
    assert_eq!(m1.get_str("project_owner_id").unwrap(), "919812345678");
    let m2 = coll
        .find_one(doc! {"wamid": "wamid.M2"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m2.get_str("current_status").unwrap(), "enqueued");

    let names = coll.list_index_names().await.unwrap();
    for name in [
        "wamid_unique",
        "bsp_message_id_unique",
        "project_owner_id_created_at",
        "created_at_message_id",
        "current_status_created_at_message_id",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
    let log_indexes = db
        .collection::<bson::Document>("webhook_delivery_logs")
        .list_index_names()
        .await
        .unwrap();
    for name in ["webhook_id_created_at", "event_id"] {
        assert!(
            log_indexes.iter().any(|n| n == name),
            "{name} missing from {log_indexes:?}"
        );
    }
    // Running it again changes nothing.
    let store = zen_gateway::backends::mongo::MongoStore::new(db.clone());
    let again = store.migrate().await.unwrap();
    assert_eq!(again.merged_groups, 0);

    // The gateway goes on from the merged document.
    use zen_gateway::store::MessageStore;
    let rec = store.find_message("wamid.M1").await.unwrap().unwrap();
    assert_eq!(rec.current_status, "read");
    db.drop().await.unwrap();
}

#[tokio::test]
async fn a_database_outage_pauses_processing_and_loses_nothing() {
    let Some(bin) = services::ferretdb_bin() else {
        return;
    };
    let ferret_dir = tempfile::tempdir().unwrap();
    let mut ferret = PrivateFerret::new(bin, ferret_dir.path());
    let uri = ferret.uri();
    // The database is down when the gateway starts: no crash loop.
    let app = spawn_app_with(|s| {
        s.backends.mongo_uri = Some(zen_gateway::config::SecretUrl::new(uri.clone()))
    })
    .await;
    for i in 0..20 {
        let resp = app
            .post_webhook(
                "/webhook/datagen",
                datagen_status(&format!("wamid.out-{i}"), "sent", 1_000 + i),
            )
            .await;
        assert_eq!(resp.status(), 200, "ingest must not wait for the database");
    }
    let ready = app
        .wait_ready(|r| r["store"]["up"] == false && r["inbox_depth"].as_u64() > Some(0))
        .await;
    assert_eq!(ready["store"]["up"], false);
    assert_eq!(ready["status"], "degraded");
    assert!(ready["inbox_depth"].as_u64().unwrap() > 0);

    ferret.start().await;
    for i in 0..20 {
        app.wait_for_message(&format!("wamid.out-{i}"), |m| m["current_status"] == "sent")
            .await;
    }

    // Down again under steady load, more traffic, back up.
    let load = BackgroundLoad::start(&app, "mongo-load", 4, Duration::from_millis(20));
    load.until_more_acked(20, Duration::from_secs(10)).await;
    ferret.stop();
    let outage = std::time::Instant::now();
    for i in 20..40 {
        let resp = app
            .post_webhook(
                "/webhook/datagen",
                datagen_status(&format!("wamid.out-{i}"), "delivered", 2_000 + i),
            )
            .await;
        assert_eq!(resp.status(), 200);
    }
    // The load goes on while the store is down: the backlog grows.
    load.until_more_acked(20, Duration::from_secs(10)).await;
    let backlog = app
        .wait_ready(|r| r["inbox_depth"].as_u64() > Some(0))
        .await["inbox_depth"]
        .as_u64()
        .unwrap_or(0);
    ferret.start().await;
    let outage = outage.elapsed();
    load.until_more_acked(20, Duration::from_secs(10)).await;
    let load = load.finish().await;
    assert_eq!(
        load.refused_503 + load.other,
        0,
        "ingest must not wait for the database"
    );
    for w in &load.acked {
        app.wait_for_message(w, |m| m["current_status"] == "sent")
            .await;
    }
    println!(
        "chaos: mongo outage: {:.1} s down under 4 steady senders: {} acked (0 refused), \
         inbox backlog {backlog} while down, all stored after; 0 lost",
        outage.as_secs_f64(),
        load.acked.len() + 40
    );
    for i in 20..40 {
        app.wait_for_message(&format!("wamid.out-{i}"), |m| {
            m["current_status"] == "delivered"
        })
        .await;
    }
    // The probes' next reading says so too.
    let ready = app.wait_ready(|r| r["store"]["up"] == true).await;
    assert_eq!(ready["store"]["up"], true);
    app.stop().await;
}

/// A database a newer gateway wrote is refused at start with a message that
/// says so; an older (or new) one is marked as this gateway's.
#[tokio::test]
async fn a_database_from_a_newer_gateway_is_refused() {
    let Some(uri) = services::mongo_uri() else {
        return;
    };
    let db_name = services::unique_db_name();
    let client = zen_gateway::backends::mongo::client(&uri).await.unwrap();
    let db = client.database(&db_name);
    let meta = db.collection::<bson::Document>(zen_gateway::backends::mongo::META);
    // A fresh database becomes ours.
    let store = zen_gateway::backends::mongo::MongoStore::new(db.clone());
    assert_eq!(
        store.check_schema().await.unwrap(),
        zen_gateway::backends::mongo::SCHEMA_VERSION
    );
    meta.update_one(doc! {"_id": "schema"}, doc! {"$set": {"version": 99_i64}})
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.backends.mongo_uri = Some(zen_gateway::config::SecretUrl::new(uri.clone()));
    settings.backends.database_name = db_name.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = zen_gateway::app::Application::build_with_listener(settings, listener)
        .await
        .err()
        .expect("refused");
    let why = format!("{refused:#}");
    assert!(
        why.contains("newer zen-gateway") && why.contains("schema 99"),
        "{why}"
    );
    db.drop().await.unwrap();
}

/// What a batch of statuses for stored messages costs the server: the
/// lookups and one update command, and no lookup keys written again (each was written when its message was; the server had to refuse
/// every one of them as a duplicate).
#[tokio::test]
async fn statuses_for_stored_messages_cost_a_lookup_and_an_update() {
    let Some(uri) = services::mongo_uri() else {
        return;
    };
    let commands = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut opts = mongodb::options::ClientOptions::parse(&uri).await.unwrap();
    let log = commands.clone();
    opts.command_event_handler = Some(mongodb::event::EventHandler::callback(
        move |event: mongodb::event::command::CommandEvent| {
            if let mongodb::event::command::CommandEvent::Started(s) = event {
                let target = s.command.get_str(&s.command_name).unwrap_or("").to_owned();
                log.lock()
                    .unwrap()
                    .push(format!("{} {target}", s.command_name));
            }
        },
    ));
    let client = mongodb::Client::with_options(opts).unwrap();
    let db_name = services::unique_db_name();
    let store = zen_gateway::backends::mongo::MongoStore::new(client.database(&db_name));
    store.ensure_indexes().await.unwrap();
    use zen_gateway::store::MessageStore;
    let wamids: Vec<String> = (0..20).map(|n| format!("wamid.cost-{n}")).collect();
    let batch = |s: &str, secs: i64| -> Vec<_> {
        wamids
            .iter()
            .map(|w| {
                let mut ev = crate::store_conformance::status(
                    zen_gateway::model::Bsp::Datagen,
                    Some(w),
                    None,
                    s,
                    secs,
                );
                ev.event_id = format!("{w}-{s}");
                ev
            })
            .collect()
    };
    store.apply(&batch("sent", 1)).await.unwrap();
    commands.lock().unwrap().clear();
    let applied = store.apply(&batch("delivered", 2)).await.unwrap();
    assert!(applied.iter().flatten().all(|a| !a.duplicate));
    let sent = commands.lock().unwrap().clone();
    assert!(
        !sent.iter().any(|c| c.starts_with("insert")),
        "no key is written again: {sent:?}"
    );
    assert_eq!(
        sent,
        [
            "find unified_message_tracking",
            "update unified_message_tracking"
        ],
        "one lookup of the 20 wamids, one update of the 20 records"
    );
    client.database(&db_name).drop().await.unwrap();
}

/// A replica set's URI settings reach the driver as written (the gateway
/// fills in only what the URI leaves unset), and the write concern and
/// retryable writes a production URI carries work against the test server.
#[tokio::test]
async fn replica_set_settings_reach_the_driver() {
    use mongodb::options::{Acknowledgment, ReadPreference};
    let opts = zen_gateway::backends::mongo::client_options(
        "mongodb://a.example:27017,b.example:27017,c.example:27017/?replicaSet=rs0&w=majority&retryWrites=true&retryReads=true&readPreference=primaryPreferred&serverSelectionTimeoutMS=7000",
    )
    .await
    .unwrap();
    assert_eq!(opts.hosts.len(), 3);
    assert_eq!(opts.repl_set_name.as_deref(), Some("rs0"));
    assert_eq!(
        opts.write_concern.as_ref().and_then(|w| w.w.clone()),
        Some(Acknowledgment::Majority)
    );
    assert_eq!(opts.retry_writes, Some(true));
    assert_eq!(opts.retry_reads, Some(true));
    assert!(matches!(
        opts.selection_criteria,
        Some(mongodb::options::SelectionCriteria::ReadPreference(
            ReadPreference::PrimaryPreferred { .. }
        ))
    ));
    assert_eq!(
        opts.server_selection_timeout,
        Some(Duration::from_secs(7)),
        "the URI wins"
    );
    assert_eq!(
        opts.connect_timeout,
        Some(Duration::from_secs(10)),
        "our default fills the gap"
    );

    // The same settings a replica set would take, on the wire server.
    let Some(uri) = services::mongo_uri() else {
        return;
    };
    let sep = if uri.contains('?') { '&' } else { '?' };
    let tuned = format!("{uri}{sep}w=majority&retryWrites=true&journal=true");
    let db_name = services::unique_db_name();
    let app = spawn_app_with(|s| {
        s.backends.mongo_uri = Some(zen_gateway::config::SecretUrl::new(tuned.clone()));
        s.backends.database_name = db_name.clone();
    })
    .await;
    assert_eq!(
        app.post_webhook("/webhook/datagen", fixture("datagen_delivered.json"))
            .await
            .status(),
        200
    );
    app.wait_for_message(
        "wamid.HBgMOTE5ODEyMzQ1Njc4FQIAERgSNDdCRkE1RTZEMDlDM0IyRjFBAA==",
        |m| m["current_status"] == "delivered",
    )
    .await;
    app.stop().await;
    let client = zen_gateway::backends::mongo::client(&uri).await.unwrap();
    client.database(&db_name).drop().await.unwrap();
}
