//! The security suite: each finding of the review, as an attacker or a
//! careless operator meets it, against the real gateway (docs/SECURITY.md
//! says what each setting defends against). Cases where the store matters
//! run on SQLite and on MongoDB (FerretDB).

use std::net::IpAddr;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, RETRY_AFTER, SET_COOKIE};
use serde_json::{Value, json};
use zen_gateway::config::{InboundCredentials, SecretUrl, Settings};
use zen_gateway::model::Bsp;

use crate::helpers::*;
use crate::receiver::{Behavior, Receiver};
use crate::services;

const DATAGEN_TOKEN: &str = "dg-token-5f0c1e";

/// A Meta Cloud API status for `wamid`, as an unauthenticated sender would
/// post it.
fn meta_status(wamid: &str, status: &str, ts: i64) -> String {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "918071234567", "phone_number_id": "1"},
            "statuses": [{"id": wamid, "status": status, "timestamp": ts.to_string(),
                          "recipient_id": "919812345678"}]
        }}]}]
    })
    .to_string()
}

fn datagen_verified(s: &mut Settings) {
    s.inbound.insert(
        Bsp::Datagen,
        InboundCredentials {
            token: Some(DATAGEN_TOKEN.into()),
            ..Default::default()
        },
    );
}

/// A client that does not follow redirects (the console's answers).
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A client whose connections come from `ip` (another loopback address:
/// another client as far as the gateway can tell).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

// --- Inbound trust -------------------------------------------------------

/// With Datagen verified, an unsigned Meta status for the same wamid used
/// to answer 200 and turn the record `read`. Now every route without
/// credentials is refused once one is verified: the record stays as the
/// verified route left it, and nothing is stored.
async fn an_unsigned_route_cannot_rewrite_a_verified_record(tweak: impl FnOnce(&mut Settings)) {
    let app = spawn_app_with(|s| {
        datagen_verified(s);
        tweak(s);
    })
    .await;
    let wamid = "wamid.trust-1";
    let signed = app
        .client
        .post(app.url("/webhook/datagen"))
        .header("x-webhook-token", DATAGEN_TOKEN)
        .body(datagen_status(wamid, "Delivered", 1_749_540_000_000))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200);
    app.wait_for_message(wamid, |m| m["current_status"] == "delivered")
        .await;

    let forged = app
        .post_webhook("/webhook/meta", meta_status(wamid, "read", 1_749_540_100))
        .await;
    assert_eq!(forged.status(), 401);
    let body: Value = forged.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("only verified webhooks"),
        "{body}"
    );
    // Refused before the inbox: nothing of it was stored.
    let (_, ready) = app.ready().await;
    assert_eq!(ready["inbound"]["verified"], json!(["datagen"]), "{ready}");
    assert!(
        ready["inbound"]["refused"]
            .as_array()
            .unwrap()
            .contains(&json!("meta"))
    );
    let rec = app.get_message(wamid).await.json::<Value>().await.unwrap();
    assert_eq!(rec["current_status"], "delivered");
    assert_eq!(rec["status_history"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn an_unsigned_route_cannot_rewrite_a_verified_record_sqlite() {
    an_unsigned_route_cannot_rewrite_a_verified_record(|_| {}).await;
}

#[tokio::test]
async fn an_unsigned_route_cannot_rewrite_a_verified_record_mongodb() {
    let Some(uri) = services::mongo_uri() else {
        return;
    };
    let name = services::unique_db_name();
    an_unsigned_route_cannot_rewrite_a_verified_record(|s| {
        s.backends.mongo_uri = Some(SecretUrl::new(uri.clone()));
        s.backends.database_name = name.clone();
    })
    .await;
    let client = zen_gateway::backends::mongo::client(&uri).await.unwrap();
    client.database(&name).drop().await.unwrap();
}

/// A route the operator names open stays open beside a verified one, and
/// says so in `/ready`.
#[tokio::test]
async fn a_route_named_open_accepts_and_is_reported() {
    let app = spawn_app_with(|s| {
        datagen_verified(s);
        s.access.inbound_open_routes = [Bsp::Meta].into();
    })
    .await;
    let r = app
        .post_webhook(
            "/webhook/meta",
            meta_status("wamid.open-1", "sent", 1_749_540_000),
        )
        .await;
    assert_eq!(r.status(), 200);
    let (_, ready) = app.ready().await;
    assert_eq!(ready["inbound"]["open"], json!(["meta"]));
    // The console's overview says so too.
    let client = no_redirects();
    let cookie = sign_in(&client, &app.url("")).await;
    let page = client
        .get(app.url("/console"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let card = &page[page.find("Webhook routes").expect("the routes card")..];
    let open = &card[card.find(">Open<").unwrap()..card.find(">Refused<").unwrap()];
    assert!(open.contains("meta"), "{open}");
    assert_eq!(
        app.post_webhook("/webhook/karix", fixture("karix_sent.json"))
            .await
            .status(),
        401
    );
    app.stop().await;
}

/// At start one WARN line names every open route; with
/// `INBOUND_REQUIRE_AUTH=true` the gateway refuses to start while any is.
#[tokio::test]
async fn the_start_names_open_routes_and_require_auth_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let refused = run_command(dir.path(), &[("INBOUND_REQUIRE_AUTH", "true")], &["serve"]);
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("INBOUND_REQUIRE_AUTH") && err.contains("/webhook/meta"),
        "{err}"
    );
    // Every route verified or refused: it starts.
    let ok = run_command(
        dir.path(),
        &[
            ("INBOUND_REQUIRE_AUTH", "true"),
            ("DATAGEN_WEBHOOK_TOKEN", "t"),
        ],
        &["check-config"],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // A route named open must have no credentials.
    let named = run_command(
        dir.path(),
        &[
            ("INBOUND_OPEN_ROUTES", "datagen"),
            ("DATAGEN_WEBHOOK_TOKEN", "t"),
        ],
        &["check-config"],
    );
    assert_eq!(named.status.code(), Some(2));

    let port = free_port();
    let log = dir.path().join("gateway.log");
    let mut child = spawn_gateway_process(dir.path(), port, &[], Some(&log));
    let client = reqwest::Client::new();
    wait_until_ok(&client, &format!("http://127.0.0.1:{port}/health")).await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let warn: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("webhook routes open"))
        .collect();
    assert_eq!(warn.len(), 1, "{text}");
    for route in ["/webhook/datagen", "/webhook/meta", "/webhook/twilio"] {
        assert!(warn[0].contains(route), "{}", warn[0]);
    }
    assert!(warn[0].contains("WARN"), "{}", warn[0]);
}

// --- Guessing the admin key ----------------------------------------------

/// 60 wrong keys used to get 60 × 401. Past the limit the client gets 429
/// with `Retry-After`, even with the right key (a right guess must look
/// like any other), and `X-Forwarded-For` from a client that is not a
/// trusted proxy changes nothing. Another client is not affected.
#[tokio::test]
async fn wrong_admin_keys_are_limited_per_client() {
    let app = spawn_app().await;
    let call = |key: &str, xff: Option<String>| {
        let mut req = app.client.get(app.url("/api/v1/webhooks")).bearer_auth(key);
        if let Some(x) = xff {
            req = req.header("x-forwarded-for", x);
        }
        req.send()
    };
    for n in 0..10 {
        let r = call("guess", Some(format!("198.51.100.{n}")))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {n}");
    }
    let r = call("guess", Some("198.51.100.99".into())).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()[RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], 429);
    let r = call(ADMIN_KEY, None).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right key"
    );
    // The console's sign-in shares the budget.
    let login = no_redirects()
        .post(app.url("/console/login"))
        .form(&[("key", ADMIN_KEY)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(login.headers().get(RETRY_AFTER).is_some());
    // Another client.
    let other = client_from("127.0.0.2")
        .get(app.url("/api/v1/webhooks"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    app.stop().await;
}

/// Behind a trusted proxy, the client is the rightmost hop the proxies did
/// not add: what a client writes at the left of `X-Forwarded-For` is not
/// believed.
#[tokio::test]
async fn behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client() {
    let app = spawn_app_with(|s| {
        s.access.trusted_proxies = "127.0.0.1/32".parse().unwrap();
        s.access.auth_failure_limit = 3;
    })
    .await;
    let call = |key: &str, xff: String| {
        app.client
            .get(app.url("/api/v1/webhooks"))
            .bearer_auth(key)
            .header("x-forwarded-for", xff)
            .send()
    };
    for n in 0..3 {
        let r = call("guess", format!("10.9.9.{n}, 203.0.113.5"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = call("guess", "10.9.9.77, 203.0.113.5".into())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = call(ADMIN_KEY, "203.0.113.6".into()).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "another client behind the proxy"
    );
    app.stop().await;
}

// --- Sessions ------------------------------------------------------------

async fn sign_in(client: &reqwest::Client, base: &str) -> String {
    let resp = client
        .post(format!("{base}/console/login"))
        .form(&[("key", ADMIN_KEY)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let set = resp.headers()[SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

async fn sign_out(client: &reqwest::Client, base: &str, cookie: &str) {
    let page = client
        .get(format!("{base}/console"))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = page.find(r#"name="csrf" value=""#).unwrap() + 19;
    let csrf = &page[at..at + 32];
    let out = client
        .post(format!("{base}/console/logout"))
        .header(COOKIE, cookie)
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
}

async fn console_status(client: &reqwest::Client, base: &str, cookie: &str) -> StatusCode {
    client
        .get(format!("{base}/console"))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap()
        .status()
}

/// A signed-out cookie replayed after a restart used to open the console
/// again (the revocation lived in memory).
#[tokio::test]
async fn a_sign_out_holds_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir.path(), |_| {}).await;
    let client = no_redirects();
    let cookie = sign_in(&client, &app.url("")).await;
    assert_eq!(console_status(&client, &app.url(""), &cookie).await, 200);
    sign_out(&client, &app.url(""), &cookie).await;
    assert_eq!(
        console_status(&client, &app.url(""), &cookie).await,
        StatusCode::SEE_OTHER
    );
    app.stop().await;
    let app = spawn_app_in(dir.path(), |_| {}).await;
    let replayed = client
        .get(app.url("/console"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), StatusCode::SEE_OTHER);
    assert!(
        replayed.headers()[LOCATION]
            .to_str()
            .unwrap()
            .starts_with("/console/login")
    );
    // A live session survives the restart too.
    let live = sign_in(&client, &app.url("")).await;
    app.stop().await;
    let app = spawn_app_in(dir.path(), |_| {}).await;
    assert_eq!(console_status(&client, &app.url(""), &live).await, 200);
    app.stop().await;
}

/// On shared backends a sign-out on one replica holds on the others.
#[tokio::test]
async fn a_sign_out_holds_on_every_replica() {
    let Some(uri) = services::mongo_uri() else {
        return;
    };
    let name = services::unique_db_name();
    let on_mongo = |s: &mut Settings| {
        s.backends.mongo_uri = Some(SecretUrl::new(uri.clone()));
        s.backends.database_name = name.clone();
    };
    let a = spawn_app_with(on_mongo).await;
    let b = spawn_app_with(on_mongo).await;
    let client = no_redirects();
    let cookie = sign_in(&client, &a.url("")).await;
    assert_eq!(console_status(&client, &b.url(""), &cookie).await, 200);
    sign_out(&client, &a.url(""), &cookie).await;
    assert_eq!(
        console_status(&client, &b.url(""), &cookie).await,
        StatusCode::SEE_OTHER
    );
    a.stop().await;
    b.stop().await;
    let client = zen_gateway::backends::mongo::client(&uri).await.unwrap();
    client.database(&name).drop().await.unwrap();
}

// --- What waits for an operator ------------------------------------------

/// `prune --older-than 1s` used to remove the DLQ entries waiting for a
/// replay. A blanket age now covers what is kept for the record only, and
/// says what it left; the DLQ and the quarantine go by their own retention
/// or an explicit purge.
#[tokio::test]
async fn a_blanket_prune_keeps_what_waits_for_an_operator() {
    let app = spawn_app_with(|s| s.forward.allow_private = true).await;
    let rx = Receiver::start().await;
    rx.set("refuses", Behavior::Status(400));
    app.create_webhook(json!({
        "project_owner_id": "owner-1",
        "webhook_url": rx.url("refuses"),
        "topics": ["*"],
        "business_numbers": ["918071234567"],
    }))
    .await;
    // One delivery dead at once (a 400), one inbox entry quarantined.
    let poisoned = "wamid.prune-poison";
    let conn = rusqlite::Connection::open(app.data_dir.join("zen.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch(&format!(
        "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.wamid = '{poisoned}'
         BEGIN SELECT RAISE(ABORT, 'refused by test'); END;"
    ))
    .unwrap();
    for (wamid, status) in [("wamid.prune-dead", "sent"), (poisoned, "sent")] {
        let r = app
            .post_webhook(
                "/webhook/datagen",
                datagen_status(wamid, status, 1_749_540_000_000),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let waited = eventually_within(Duration::from_secs(30), async || {
        let dlq = app.admin_get("/api/v1/dlq").await;
        let quarantine = app.admin_get("/api/v1/quarantine").await;
        dlq.as_array().is_some_and(|a| a.len() == 1)
            && quarantine.as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    assert!(waited, "a dead letter and a quarantined entry");
    conn.execute_batch("DROP TRIGGER poison").unwrap();

    let pruned = command_json(&app.data_dir, &["prune", "--older-than", "1ms"]);
    assert!(
        pruned["removed"]["messages"].as_u64().unwrap() >= 1,
        "{pruned}"
    );
    assert_eq!(pruned["removed"]["dlq"], 0, "{pruned}");
    assert_eq!(pruned["removed"]["quarantine"], 0, "{pruned}");
    let skipped = pruned["skipped"].to_string();
    assert!(
        skipped.contains("DLQ_RETENTION") && skipped.contains("dlq purge"),
        "{skipped}"
    );
    assert_eq!(
        app.admin_get("/api/v1/dlq").await.as_array().unwrap().len(),
        1
    );
    assert_eq!(
        app.admin_get("/api/v1/quarantine")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Asked for explicitly, they go.
    let purged = command_json(&app.data_dir, &["dlq", "purge", "--older-than", "0s"]);
    assert_eq!(purged["purged"], 1, "{purged}");
    let purged = command_json(
        &app.data_dir,
        &["quarantine", "purge", "--older-than", "0s"],
    );
    assert_eq!(purged["purged"], 1, "{purged}");
    assert!(
        app.admin_get("/api/v1/dlq")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
    app.stop().await;
}

// --- Backups -------------------------------------------------------------

/// The backup used to be created 0644 (the file holds message contents
/// and webhook secrets) and, copied in steps, could restart forever under
/// steady writes. It is created 0600, taken in one read transaction, and
/// `--verify` runs SQLite's integrity check on the copy.
#[tokio::test]
async fn a_backup_is_private_verified_and_finishes_under_writes() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    for i in 0..200 {
        let body = datagen_status(&format!("wamid.bk-{i}"), "sent", 1_749_540_000_000 + i);
        assert_eq!(
            app.post_webhook("/webhook/datagen", body).await.status(),
            200
        );
    }
    let load = BackgroundLoad::start(&app, "bk-writers", 4, Duration::ZERO);
    let copy_dir = tempfile::tempdir().unwrap();
    let copy = copy_dir.path().join("zen-backup.db");
    let data_dir = app.data_dir.clone();
    let copy_arg = copy.clone();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            command_json(
                &data_dir,
                &["backup", "--verify", copy_arg.to_str().unwrap()],
            )
        }),
    )
    .await
    .expect("the backup finishes under four steady writers")
    .unwrap();
    let outcome = load.finish().await;
    assert!(!outcome.acked.is_empty(), "the writers wrote meanwhile");
    assert_eq!(report["integrity"], "ok", "{report}");
    let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    app.stop().await;
}

// --- Logs ----------------------------------------------------------------

/// At debug level, no log line carries the admin key, an inbound token or
/// secret, a webhook's signing secret or the metrics token: the span of a
/// request used to print its URI, `?token=` and all.
#[tokio::test]
async fn no_secret_reaches_the_log_at_debug_level() {
    const META_SECRET: &str = "meta-app-secret-77a1";
    const VERIFY: &str = "verify-token-0c3d";
    const METRICS: &str = "metrics-token-9e2b";
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("gateway.log");
    let mut child = spawn_gateway_process(
        dir.path(),
        port,
        &[
            ("RUST_LOG", "debug"),
            ("DATAGEN_WEBHOOK_TOKEN", DATAGEN_TOKEN),
            ("META_APP_SECRET", META_SECRET),
            ("META_VERIFY_TOKEN", VERIFY),
            ("METRICS_TOKEN", METRICS),
            ("FORWARD_ALLOW_PRIVATE", "true"),
            ("FORWARD_RETRY_DELAYS_MS", "100"),
        ],
        Some(&log),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_until_ok(&client, &format!("{base}/health")).await;
    let rx = Receiver::start().await;
    let hook = create_webhook_at(
        &client,
        &base,
        json!({"project_owner_id": "o", "webhook_url": rx.url("hook"), "topics": ["*"],
               "business_numbers": ["918071234567"]}),
    )
    .await;
    let shared = hook["shared_secret"].as_str().unwrap().to_owned();
    let whsec = hook["signing_secret"].as_str().unwrap().to_owned();
    let wamid = "wamid.logs-1";
    let ok = client
        .post(format!("{base}/webhook/datagen?token={DATAGEN_TOKEN}&x=1"))
        .body(datagen_status(wamid, "sent", 1_749_540_000_000))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let wrong = client
        .post(format!("{base}/webhook/datagen?token=not-{DATAGEN_TOKEN}"))
        .body(datagen_status(wamid, "sent", 1_749_540_000_000))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let meta = meta_status(wamid, "read", 1_749_540_100);
    let sig = zen_gateway::inbound_auth::hmac_sha256_hex(META_SECRET.as_bytes(), meta.as_bytes());
    let signed = client
        .post(format!("{base}/webhook/meta"))
        .header("x-hub-signature-256", format!("sha256={sig}"))
        .body(meta)
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200);
    let handshake = client
        .get(format!(
            "{base}/webhook/meta?hub.mode=subscribe&hub.verify_token={VERIFY}&hub.challenge=42"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(handshake.status(), 200);
    for key in [ADMIN_KEY, "wrong-admin-key"] {
        client
            .get(format!("{base}/api/v1/messages/{wamid}"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
    }
    let login = no_redirects()
        .post(format!("{base}/console/login"))
        .form(&[("key", ADMIN_KEY)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let metrics = client
        .get(format!("{base}/metrics"))
        .bearer_auth(METRICS)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert_eq!(
        rx.wait_for("hook", 2, Duration::from_secs(20)).await.len(),
        2
    );
    let _ = child.kill();
    let _ = child.wait();

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("DEBUG"), "the log is at debug level");
    assert!(text.contains("[redacted]"), "the request span was logged");
    for secret in [
        DATAGEN_TOKEN,
        META_SECRET,
        VERIFY,
        METRICS,
        ADMIN_KEY,
        &shared,
        &whsec,
        whsec.trim_start_matches("whsec_"),
    ] {
        let line = text.lines().find(|l| l.contains(secret));
        assert!(line.is_none(), "{secret} in the log: {line:?}");
    }
}

// --- Probes --------------------------------------------------------------

/// `/metrics` and `/ready` used to count rows on every request,
/// unauthenticated. They now show the last background reading: a flood of
/// probes costs no backend work, and `METRICS_TOKEN` guards `/metrics`.
#[tokio::test]
async fn probes_read_no_backend_per_request_and_metrics_can_be_guarded() {
    let app = spawn_app_with(|s| s.access.metrics_token = Some("scrape-me".into())).await;
    let unguarded = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(unguarded.status(), StatusCode::UNAUTHORIZED);
    let scrape = async || {
        app.client
            .get(app.url("/metrics"))
            .bearer_auth("scrape-me")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let refreshes = |text: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with("zen_probe_refreshes_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let before = refreshes(&scrape().await);
    let started = std::time::Instant::now();
    for _ in 0..200 {
        assert!(app.ready().await.0 == 200);
        scrape().await;
    }
    let after = refreshes(&scrape().await);
    // One refresh per PROBE_REFRESH at most (the counter is process-wide:
    // other apps of this test binary refresh too, so the bound is loose).
    let allowed = started.elapsed().as_secs_f64() / 2.0 + 1.0;
    assert!(
        after - before <= allowed * 8.0 && after - before < 200.0,
        "{} refreshes for 400 probes",
        after - before
    );
    app.stop().await;
}

// --- Forwarding edges ----------------------------------------------------

/// A `FORWARD_PROXY` given by host name (here `localhost`, a private
/// address) used to be refused by the SSRF resolver: every delivery went
/// to the DLQ. The proxy is the operator's and trusted; the target behind
/// it is still checked.
#[tokio::test]
async fn a_proxy_named_by_host_name_carries_deliveries() {
    let proxy = Receiver::start().await;
    let app = spawn_app_with(|s| {
        s.forward.proxy = Some(SecretUrl::new(format!(
            "http://localhost:{}",
            proxy.addr.port()
        )));
        s.forward.retry_delays = "100".parse().unwrap();
    })
    .await;
    // A public literal address: the proxy (the receiver) answers for it.
    app.create_webhook(json!({
        "project_owner_id": "o", "webhook_url": "http://93.184.216.34/proxied",
        "topics": ["*"], "business_numbers": ["918071234567"],
    }))
    .await;
    let r = app
        .post_webhook(
            "/webhook/datagen",
            datagen_status("wamid.proxy-1", "sent", 1_749_540_000_000),
        )
        .await;
    assert_eq!(r.status(), 200);
    let got = proxy.wait_for("proxied", 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "delivered through the proxy");
    assert!(
        app.admin_get("/api/v1/dlq")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
    app.stop().await;
}

/// A target whose name does not resolve now used to be dead-lettered at
/// once; DNS failing says nothing of the target, so it is retried.
#[tokio::test]
async fn a_dns_failure_is_retried_not_dead_lettered() {
    let proxy = Receiver::start().await;
    let app = spawn_app_with(|s| {
        s.forward.proxy = Some(SecretUrl::new(format!("http://{}", proxy.addr)));
        s.forward.retry_delays = "50,50".parse().unwrap();
    })
    .await;
    let hook = app
        .create_webhook(json!({
            "project_owner_id": "o", "webhook_url": "http://no-such-host.invalid/x",
            "topics": ["*"], "business_numbers": ["918071234567"],
        }))
        .await;
    let r = app
        .post_webhook(
            "/webhook/datagen",
            datagen_status("wamid.dns-1", "sent", 1_749_540_000_000),
        )
        .await;
    assert_eq!(r.status(), 200);
    let dead = eventually_within(Duration::from_secs(20), async || {
        app.admin_get("/api/v1/dlq")
            .await
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    assert!(dead);
    let dlq = app.admin_get("/api/v1/dlq").await;
    let reason = dlq[0]["reason"].as_str().unwrap();
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    let id = hook["id"].as_str().unwrap();
    let logs = app
        .admin_get(&format!("/api/v1/webhooks/{id}/deliveries"))
        .await;
    assert_eq!(logs[0]["attempt_count"], 3, "{logs}");
    app.stop().await;
}

/// Twilio signs the URL it calls as configured, trailing slash and all;
/// the router trims the slash, and the check used to see the trimmed path.
#[tokio::test]
async fn twilio_signatures_hold_with_a_trailing_slash() {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let app = spawn_app_with(|s| {
        s.http.public_base_url = Some("https://gw.example.com".into());
        s.inbound.insert(
            Bsp::Twilio,
            InboundCredentials {
                secret: Some("twilio-token".into()),
                ..Default::default()
            },
        );
    })
    .await;
    let body = "MessageSid=SM1&MessageStatus=delivered&To=whatsapp%3A%2B919812345678";
    let sign = |url: &str| {
        let mut params: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        params.sort();
        let mut data = url.to_owned();
        for (k, v) in params {
            data.push_str(&k);
            data.push_str(&v);
        }
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"twilio-token").unwrap();
        mac.update(data.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    };
    for (path, signed_url) in [
        ("/webhook/twilio/", "https://gw.example.com/webhook/twilio/"),
        ("/webhook/twilio", "https://gw.example.com/webhook/twilio"),
        (
            "/webhook/twilio",
            "https://gw.example.com:443/webhook/twilio",
        ),
    ] {
        let r = app
            .client
            .post(app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", sign(signed_url))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} signed as {signed_url}");
    }
    app.stop().await;
}

/// `check-config` says which backends the binary was built with, beside
/// what the settings ask for (the test binary is built with `full`).
#[test]
fn check_config_says_which_backends_the_binary_has() {
    let dir = tempfile::tempdir().unwrap();
    let shown = command_json(dir.path(), &["check-config"]);
    assert_eq!(
        shown["built_with"],
        json!({"mongodb": true, "rabbitmq": true, "redis": true, "otlp": true}),
        "{shown}"
    );
}
