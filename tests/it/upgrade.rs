//! Upgrades: a gateway started on a data file the previous release wrote
//! migrates it, serves what it held and processes its waiting inbox.

use crate::helpers::*;

#[tokio::test]
async fn a_gateway_on_a_previous_release_file_serves_and_processes_it() {
    let dir = tempfile::tempdir().unwrap();
    // Compiled in: the test does not depend on the checkout it was built from.
    let fixture = include_str!("../fixtures/zen-db-v1.sql");
    rusqlite::Connection::open(dir.path().join("zen.db"))
        .unwrap()
        .execute_batch(fixture)
        .unwrap();
    let app = spawn_app_in(dir.path(), |_| {}).await;
    // A record it had stored…
    let old = app
        .wait_for_message("wamid.v1-message", |m| m["current_status"] == "delivered")
        .await;
    assert_eq!(old["campaign_id"], "cmp-1");
    // …the webhook it had registered…
    let hooks = app.admin_get("/api/v1/webhooks").await;
    assert_eq!(hooks[0]["id"], "665f0000000000000000aaaa", "{hooks}");
    // …and the webhook that waited in its inbox, now processed.
    app.wait_for_message(
        "wamid.HBgMOTE5ODEyMzQ1Njc4FQIAERgSNDdCRkE1RTZEMDlDM0IyRjFBAA==",
        |m| m["current_status"] == "delivered",
    )
    .await;
    app.stop().await;
}
