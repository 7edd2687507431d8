//! A full disk on the embedded default, for real: the data directory is a
//! small tmpfs the test mounts (skipped where mounting is not permitted).
//! Ingest answers 503 (never a 200 without a commit), `/ready` says why,
//! the process stays up, nothing acknowledged is lost, and it accepts again
//! by itself once space is back.

use std::process::Command;
use std::time::Duration;

use crate::helpers::*;

struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(size: &str) -> Option<Mount> {
        let dir = tempfile::tempdir().ok()?.keep();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Mount(dir))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn a_full_disk_refuses_with_503_loses_nothing_and_recovers_by_itself() {
    let Some(disk) = Mount::tmpfs("6m") else {
        eprintln!("full_disk: cannot mount a tmpfs here (not root?); skipped");
        return;
    };
    // Ingest alone, so that the inbox holds every body and the disk fills
    // (a processor would delete each entry once applied, and the file would
    // reuse the pages).
    let app = spawn_app_in(&disk.0, |s| {
        s.ingest.ack_timeout = Duration::from_secs(2);
        s.roles = "ingest".parse().unwrap();
    })
    .await;
    let pad = "x".repeat(60_000);
    let body = |i: usize| {
        datagen_status(
            &format!("wamid.disk-{i}"),
            "sent",
            1_749_540_000_000 + i as i64,
        )
        .replacen(
            "\"events\":{",
            &format!("\"events\":{{\"pad\":\"{pad}\","),
            1,
        )
    };
    let mut acked = Vec::new();
    let mut refused = 0;
    for i in 0..400 {
        match app
            .post_webhook("/webhook/datagen", body(i))
            .await
            .status()
            .as_u16()
        {
            200 => acked.push(i),
            503 => {
                refused += 1;
                if refused >= 5 {
                    break;
                }
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        refused >= 5,
        "the disk never filled ({} acked)",
        acked.len()
    );
    assert!(!acked.is_empty());
    // /ready says why, and the process is up.
    let (code, ready) = app.ready().await;
    assert_eq!(code, 503, "{ready}");
    let why = ready.to_string().to_lowercase();
    assert!(why.contains("full"), "{ready}");
    assert_eq!(
        app.client
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Space comes back: accepted again without a restart.
    disk.resize("64m");
    let back = eventually_within(Duration::from_secs(10), async || {
        app.post_webhook("/webhook/datagen", body(10_000))
            .await
            .status()
            == 200
    })
    .await;
    assert!(back, "ingest did not recover once space was back");
    app.stop().await;
    // Every acknowledged webhook reaches its record, processed by a gateway
    // on the same file.
    let app = spawn_app_in(&disk.0, |_| {}).await;
    for i in acked.iter().copied().chain([10_000]) {
        app.wait_for_message(&format!("wamid.disk-{i}"), |m| {
            m["current_status"] == "sent"
        })
        .await;
    }
    app.stop().await;
}
