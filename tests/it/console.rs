//! The operator console over HTTP: sign-in, session cookie, CSRF, sign-out,
//! the sign-in rate limit, and the pages an operator uses. (The whole
//! journey in a real browser is `tests/browser/`.)

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

use crate::helpers::{ADMIN_KEY, TestApp, datagen_status, spawn_app, spawn_app_with};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in; returns the `Set-Cookie` header and the cookie to send.
pub(crate) async fn sign_in(app: &TestApp) -> (String, String) {
    let resp = client()
        .post(app.url("/console/login"))
        .form(&[("key", ADMIN_KEY), ("next", "/console/messages")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/console/messages");
    let set = resp.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    (set, cookie)
}

pub(crate) async fn get(app: &TestApp, cookie: &str, path: &str) -> (StatusCode, String) {
    let resp = client()
        .get(app.url(path))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// The CSRF token a page's forms carry.
fn csrf_of(page: &str) -> String {
    let at = page
        .find(r#"name="csrf" value=""#)
        .expect("a form with a token")
        + 19;
    page[at..at + 32].to_owned()
}

#[tokio::test]
async fn pages_need_a_session_and_sign_in_sets_a_strict_expiring_cookie() {
    let app = spawn_app().await;
    let resp = client()
        .get(app.url("/console/messages?q=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        resp.headers()[LOCATION],
        "/console/login?next=%2Fconsole%2Fmessages%3Fq%3Dx"
    );
    let (status, _) = get(&app, "", "/console/overview/live").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a fragment is refused, not redirected"
    );

    let (status, page) = get(&app, "", "/console/login").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(r#"<label for="key">Admin key</label>"#));

    let wrong = client()
        .post(app.url("/console/login"))
        .form(&[("key", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(SET_COOKIE).is_none());

    let (set, cookie) = sign_in(&app).await;
    for attr in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=28800",
    ] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: no Secure");
    let (status, page) = get(&app, &cookie, "/console").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Backlogs"));

    // A cookie changed by hand proves nothing.
    let last = if cookie.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &cookie[..cookie.len() - 1]);
    let (status, _) = get(&app, &forged, "/console").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    app.stop().await;
}

#[tokio::test]
async fn the_cookie_is_secure_behind_tls() {
    let app = spawn_app_with(|s| {
        s.http.public_base_url = Some("https://gw.example.com".into());
    })
    .await;
    let (set, _) = sign_in(&app).await;
    assert!(set.contains("; Secure"), "{set}");
    app.stop().await;
}

#[tokio::test]
async fn forms_need_the_csrf_token_and_sign_out_ends_the_session() {
    let app = spawn_app().await;
    let (_, cookie) = sign_in(&app).await;
    let form = [
        ("project_owner_id", "owner-c"),
        ("webhook_url", "https://client.example.com/hook"),
        ("topics", "*"),
        ("enable_auth", "on"),
    ];
    let refused = client()
        .post(app.url("/console/webhooks"))
        .header(COOKIE, &cookie)
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(
        app.admin_get("/api/v1/webhooks")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );

    let (_, page) = get(&app, &cookie, "/console/webhooks").await;
    let csrf = csrf_of(&page);
    let mut with_token = form.to_vec();
    with_token.push(("csrf", &csrf));
    let created = client()
        .post(app.url("/console/webhooks"))
        .header(COOKIE, &cookie)
        .form(&with_token)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::OK);
    let page = created.text().await.unwrap();
    assert!(page.contains("Signing secret, shown this once"), "{page}");
    let hooks = app.admin_get("/api/v1/webhooks").await;
    assert_eq!(hooks[0]["webhook_url"], "https://client.example.com/hook");
    assert_eq!(hooks[0]["auth_enabled"], true);

    let out = client()
        .post(app.url("/console/logout"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(
        out.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (status, _) = get(&app, &cookie, "/console/webhooks").await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "the old cookie no longer works"
    );
    app.stop().await;
}

#[tokio::test]
async fn wrong_keys_are_rate_limited_per_address() {
    let app = spawn_app().await;
    for _ in 0..10 {
        let r = client()
            .post(app.url("/console/login"))
            .form(&[("key", "guess")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // One failure too many; from then on even the right key waits.
    for key in ["guess", ADMIN_KEY] {
        let r = client()
            .post(app.url("/console/login"))
            .form(&[("key", key)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let limited = client()
        .post(app.url("/console/login"))
        .form(&[("key", ADMIN_KEY)])
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(limited.headers().get(SET_COOKIE).is_none());
    app.stop().await;
}

#[tokio::test]
async fn an_operator_finds_a_message_and_reads_its_timeline() {
    let app = spawn_app().await;
    let wamid = "wamid.console-timeline-1";
    for (status, ts) in [
        ("sent", 1_749_540_000_000i64),
        ("Delivered", 1_749_540_005_000),
    ] {
        let r = app
            .post_webhook("/webhook/datagen", datagen_status(wamid, status, ts))
            .await;
        assert_eq!(r.status(), 200);
    }
    app.wait_for_message(wamid, |m| m["current_status"] == "delivered")
        .await;
    let (_, cookie) = sign_in(&app).await;
    let (status, page) = get(&app, &cookie, &format!("/console/messages?q={wamid}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(wamid));
    let record = app.admin_get(&format!("/api/v1/messages/{wamid}")).await;
    let href = format!(
        "/console/messages/{}",
        record["message_id"].as_str().unwrap()
    );
    assert!(page.contains(&href), "the result links to its page");
    let (status, page) = get(&app, &cookie, &href).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Timeline"));
    assert!(
        page.contains("2025-06-10 07:20:00 UTC"),
        "provider time of sent"
    );
    assert!(
        page.contains("2025-06-10 07:20:05 UTC"),
        "provider time of delivered"
    );
    assert!(page.contains(">Delivered<"), "the raw status");

    let (status, page) = get(&app, &cookie, "/console/messages?status=bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("status: unknown status"));
    let (status, _) = get(&app, &cookie, "/console/messages/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn quarantined_webhooks_matching_a_filter_are_replayed_after_a_confirmation() {
    let app = spawn_app().await;
    let wamid = "wamid.console-quarantine-1";
    let conn = rusqlite::Connection::open(app.data_dir.join("zen.db")).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn.execute_batch(&format!(
        "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.wamid = '{wamid}'
         BEGIN SELECT RAISE(ABORT, 'refused by test'); END;"
    ))
    .unwrap();
    let r = app
        .post_webhook(
            "/webhook/datagen",
            datagen_status(wamid, "sent", 1_749_540_000_000),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.wait_ready(|r| r["quarantine_depth"] == 1).await;
    let event_id = app.admin_get("/api/v1/quarantine").await[0]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (_, cookie) = sign_in(&app).await;
    let (status, page) = get(&app, &cookie, "/console/quarantine?bsp=datagen").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&event_id), "the entry is listed");
    assert!(page.contains("refused by test"), "the error is shown");
    let (_, other) = get(&app, &cookie, "/console/quarantine?bsp=meta").await;
    assert!(
        other.contains("Nothing here matches."),
        "the filter applies"
    );
    conn.execute_batch("DROP TRIGGER poison").unwrap();

    let csrf = csrf_of(&page);
    let ask = client()
        .post(app.url("/console/quarantine/replay"))
        .header(COOKIE, &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("scope", "matching"),
            ("bsp", "datagen"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(ask.status(), StatusCode::OK);
    let confirm = ask.text().await.unwrap();
    assert!(
        confirm.contains("Replay 1 quarantined webhooks?"),
        "{confirm}"
    );
    assert_eq!(
        app.admin_get("/api/v1/quarantine")
            .await
            .as_array()
            .unwrap()
            .len(),
        1,
        "nothing happens before the confirmation"
    );
    let done = client()
        .post(app.url("/console/quarantine/replay"))
        .header(COOKIE, &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("scope", "matching"),
            ("bsp", "datagen"),
            ("confirm", "yes"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(done.headers()[LOCATION], "/console/quarantine?replayed=1");
    app.wait_for_message(wamid, |m| m["current_status"] == "sent")
        .await;
    app.stop().await;
}

#[tokio::test]
async fn without_an_admin_key_no_one_signs_in_and_the_page_says_why() {
    let app = spawn_app_with(|s| s.http.admin_api_key = None).await;
    let (status, page) = get(&app, "", "/console/login").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("ADMIN_API_KEY is not set"));
    let r = client()
        .post(app.url("/console/login"))
        .form(&[("key", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().get(SET_COOKIE).is_none());
    app.stop().await;
}
