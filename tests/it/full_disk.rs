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

/// The data directory *and* the gateway's stdout log on one small
/// filesystem, as in a container: logging never costs a response. While
/// the disk refuses writes every webhook gets an answer (a 503 with
/// `Retry-After`, never a dropped connection), accepting resumes within 5 s
/// of space coming back, and every acked webhook is stored.
#[tokio::test]
async fn with_the_log_on_the_full_disk_every_request_gets_an_answer() {
    let Some(disk) = Mount::tmpfs("6m") else {
        eprintln!("full_disk: cannot mount a tmpfs here (not root?); skipped");
        return;
    };
    let data = disk.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let log = disk.0.join("gateway.log");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // Debug lines on every request: the log competes for the space.
    let mut child = spawn_gateway_process(
        &data,
        port,
        &[
            ("ROLES", "ingest"),
            ("RUST_LOG", "debug"),
            ("INGEST_ACK_TIMEOUT_MS", "2000"),
        ],
        Some(&log),
    );
    let client = reqwest::Client::new();
    wait_until_ok(&client, &format!("{base}/health")).await;
    let pad = "x".repeat(30_000);
    let body = |i: usize| {
        datagen_status(
            &format!("wamid.logdisk-{i}"),
            "sent",
            1_749_540_000_000 + i as i64,
        )
        .replacen(
            "\"events\":{",
            &format!("\"events\":{{\"pad\":\"{pad}\","),
            1,
        )
    };
    let post = |i: usize| {
        client
            .post(format!("{base}/webhook/datagen"))
            .header("content-type", "application/json")
            .body(body(i))
            .send()
    };
    let started = std::time::Instant::now();
    let (mut acked, mut refused, mut first_503, mut last_200) = (Vec::new(), 0, None, None);
    for i in 0..2000 {
        let resp = post(i)
            .await
            .unwrap_or_else(|e| panic!("request {i} got no answer: {e}"));
        match resp.status().as_u16() {
            200 => {
                acked.push(i);
                last_200 = Some(started.elapsed());
            }
            503 => {
                assert!(
                    resp.headers().contains_key("retry-after"),
                    "a 503 says when to retry"
                );
                first_503.get_or_insert(started.elapsed());
                refused += 1;
                if refused >= 20 {
                    break;
                }
            }
            other => panic!("request {i}: unexpected {other}"),
        }
    }
    assert!(
        refused >= 20,
        "the disk never filled ({} acked)",
        acked.len()
    );
    // The lines the full disk refused are counted.
    let counted = eventually_within(Duration::from_secs(5), async || {
        let Ok(r) = client.get(format!("{base}/metrics")).send().await else {
            return false;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .filter_map(|l| l.strip_prefix("zen_log_lines_dropped_total "))
            .any(|v| v.trim().parse::<f64>().is_ok_and(|n| n > 0.0))
    })
    .await;
    assert!(
        counted,
        "zen_log_lines_dropped_total counts the refused lines"
    );
    // Space comes back: accepted again within 5 s, without a restart.
    disk.resize("64m");
    let back_from = std::time::Instant::now();
    let back = eventually_within(Duration::from_secs(5), async || {
        post(100_000).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let back_after = back_from.elapsed();
    assert!(back, "not accepting within 5 s of space coming back");
    acked.push(100_000);
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "full disk with its log: {} acked, last 200 at {:?}, first 503 at {:?}, accepting again {:?} after space came back",
        acked.len(),
        last_200,
        first_503,
        back_after
    );
    // Every acked webhook is stored, by a gateway on the same file.
    let app = spawn_app_in(&data, |_| {}).await;
    for i in &acked {
        app.wait_for_message(&format!("wamid.logdisk-{i}"), |m| {
            m["current_status"] == "sent"
        })
        .await;
    }
    app.stop().await;
}
