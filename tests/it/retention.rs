//! A year of running on the embedded default: `zen-gateway prune` beside a
//! running gateway, the file's freed pages, and an online backup that a
//! gateway starts on.

use serde_json::Value;

use crate::helpers::*;

fn command(data_dir: &std::path::Path, args: &[&str]) -> Value {
    command_json(data_dir, args)
}

#[tokio::test]
async fn prune_beside_a_running_gateway_removes_what_retention_does_not_keep() {
    let app = spawn_app().await;
    for i in 0..20 {
        let body = datagen_status(&format!("wamid.prune-{i}"), "sent", 1_749_540_000_000 + i);
        assert_eq!(
            app.post_webhook("/webhook/datagen", body).await.status(),
            200
        );
    }
    app.wait_for_message("wamid.prune-19", |m| m["current_status"] == "sent")
        .await;
    // A new embedded file hands freed pages back to the file system.
    let db = rusqlite::Connection::open(app.data_dir.join("zen.db")).unwrap();
    let auto_vacuum: i64 = db
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(auto_vacuum, 2, "incremental");
    drop(db);
    // The configured retention keeps messages forever (the default): nothing.
    let kept = command(&app.data_dir, &["prune"]);
    assert_eq!(kept["removed"]["messages"], 0, "{kept}");
    // Everything before now: a zero age.
    let pruned = command(&app.data_dir, &["prune", "--older-than", "0s"]);
    assert_eq!(pruned["removed"]["messages"], 20, "{pruned}");
    assert_eq!(app.get_message("wamid.prune-3").await.status(), 404);
    // The gateway goes on, on the same file.
    let body = datagen_status("wamid.after-prune", "delivered", 1_749_540_100_000);
    assert_eq!(
        app.post_webhook("/webhook/datagen", body).await.status(),
        200
    );
    app.wait_for_message("wamid.after-prune", |m| m["current_status"] == "delivered")
        .await;
    app.stop().await;
}

#[tokio::test]
async fn an_online_backup_starts_a_gateway_with_the_data() {
    let app = spawn_app().await;
    for i in 0..50 {
        let body = datagen_status(&format!("wamid.backup-{i}"), "read", 1_749_540_000_000 + i);
        assert_eq!(
            app.post_webhook("/webhook/datagen", body).await.status(),
            200
        );
    }
    app.wait_for_message("wamid.backup-49", |m| m["current_status"] == "read")
        .await;
    // Taken while the gateway serves (and writes: more webhooks meanwhile).
    let load = BackgroundLoad::start(
        &app,
        "during-backup",
        2,
        std::time::Duration::from_millis(5),
    );
    let copy_dir = tempfile::tempdir().unwrap();
    let copy = copy_dir.path().join("zen-backup.db");
    let report = command(&app.data_dir, &["backup", copy.to_str().unwrap()]);
    assert!(report["bytes"].as_u64().unwrap() > 0, "{report}");
    load.finish().await;
    // A backup never overwrites.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_zen-gateway"))
        .env_clear()
        .env("DATA_DIR", &app.data_dir)
        .env("KEYS_JSON", app.data_dir.join("no-Keys.json"))
        .args(["backup", copy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    app.stop().await;

    // Restore: the copy as zen.db of a new data directory.
    let restored = tempfile::tempdir().unwrap();
    std::fs::copy(&copy, restored.path().join("zen.db")).unwrap();
    let app = spawn_app_in(restored.path(), |_| {}).await;
    for i in [0, 25, 49] {
        let rec = app
            .get_message(&format!("wamid.backup-{i}"))
            .await
            .json::<Value>()
            .await
            .unwrap();
        assert_eq!(rec["current_status"], "read");
    }
    app.stop().await;
}
