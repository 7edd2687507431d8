//! kill -9 under load: every webhook that got a 200 is applied after restart.

use std::process::Command;
use std::time::Duration;

use crate::helpers::*;

struct Gateway {
    child: GatewayProcess,
    base: String,
}

fn start_gateway(data_dir: &std::path::Path, port: u16) -> Gateway {
    Gateway {
        child: spawn_gateway_process(data_dir, port, &[("RUST_LOG", "warn")], None),
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn wait_healthy(client: &reqwest::Client, base: &str) {
    wait_until_ok(client, &format!("{base}/health")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_event_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut gw = start_gateway(dir.path(), port);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    wait_healthy(&client, &gw.base).await;
    // The container health check agrees.
    let hc = Command::new(env!("CARGO_BIN_EXE_zen-gateway"))
        .arg("healthcheck")
        .env_clear()
        .env("SERVER_PORT", port.to_string())
        .env("KEYS_JSON", dir.path().join("no-Keys.json"))
        .status()
        .unwrap();
    assert!(hc.success());

    // Eight senders post distinct events until the process dies under them.
    let load = BackgroundLoad::start_at(&client, &gw.base, "kill", 8, Duration::ZERO, "delivered");
    load.until_more_acked(200, Duration::from_secs(20)).await;
    gw.child.kill().expect("SIGKILL"); // kill -9: no shutdown path runs
    gw.child.wait().unwrap();
    let acked = load.finish().await.acked;
    assert!(
        acked.len() > 50,
        "too little load before the kill: {}",
        acked.len()
    );

    let mut gw = start_gateway(dir.path(), free_port());
    wait_healthy(&client, &gw.base).await;
    let mut missing = Vec::new();
    for wamid in &acked {
        let found = eventually_within(Duration::from_secs(6), async || {
            let r = client
                .get(format!("{}/api/v1/messages/{wamid}", gw.base))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap();
            r.status() == 200
                && r.json::<serde_json::Value>().await.unwrap()["current_status"] == "delivered"
        })
        .await;
        if !found {
            missing.push(wamid.clone());
        }
    }
    gw.child.kill().ok();
    gw.child.wait().ok();
    eprintln!(
        "kill -9: {} acked before the kill, {} missing after restart",
        acked.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "acked but lost: {missing:?}");
}
