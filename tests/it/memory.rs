//! Memory per input is bounded: the largest body under the limit, built to
//! cost the most (thousands of statuses for one message, forwarded to
//! several webhooks whose endpoint is down), keeps the real binary's peak
//! RSS under a stated bound.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// Peak RSS the gateway (debug build, as tests run it) may reach for the
/// worst body under the 1 MiB default limit (measured: about 157 MB with 11,000 statuses,
/// fanned out to three webhooks, a slice at a time; the
/// README's bounds table has the figures).
const PEAK_RSS_BOUND_KB: u64 = 256 * 1024;

fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A Meta body with `n` statuses for one message, each at a new time.
fn meta_statuses(wamid: &str, n: usize) -> String {
    const STATUSES: [&str; 3] = ["sent", "delivered", "read"];
    let statuses: Vec<Value> = (0..n)
        .map(|i| {
            let status = STATUSES[i % 3];
            json!({"id": wamid, "status": status,
                   "timestamp": (1_749_540_000 + i).to_string(),
                   "recipient_id": "919876543210"})
        })
        .collect();
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1",
        "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "918071234567", "phone_number_id": "1"},
            "statuses": statuses}}]}]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_costliest_body_under_the_limit_keeps_peak_rss_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn_gateway_process(
        dir.path(),
        port,
        &[("RUST_LOG", "warn"), ("FORWARD_ALLOW_PRIVATE", "true")],
        None,
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_until_ok(&client, &format!("{base}/health")).await;
    let mut hooks = Vec::new();
    for h in 0..3 {
        // Port 9 (discard) refuses: every delivery fails and is retried.
        let hook = create_webhook_at(
            &client,
            &base,
            json!({"project_owner_id": "o", "webhook_url": format!("http://127.0.0.1:9/h{h}"),
                   "topics": ["*"], "business_numbers": ["918071234567"]}),
        )
        .await;
        hooks.push(hook["id"].as_str().unwrap().to_owned());
    }
    let wamid = "wamid.rss";
    // As many statuses as fit under the limit.
    let mut n = 500;
    while meta_statuses(wamid, n + 500).len() <= 1_048_576 {
        n += 500;
    }
    let body = meta_statuses(wamid, n);
    let before = peak_rss_kb(child.id());
    let resp = client
        .post(format!("{base}/webhook/meta"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Processed: every event is counted on the (bounded) record.
    let mut counted = 0;
    eventually_within(Duration::from_secs(30), async || {
        let r = client
            .get(format!("{base}/api/v1/messages/{wamid}"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let m: Value = r.json().await.unwrap();
            counted = m["status_history"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| 1 + h["collapsed"].as_u64().unwrap_or(0))
                .sum::<u64>();
        }
        counted == n as u64
    })
    .await;
    assert_eq!(counted, n as u64);
    // Its fan-out finished too (the inbox entry is acked after it): a
    // reading of the backlogs taken since says the inbox is empty.
    let posted = chrono::Utc::now();
    let fanned_out = eventually_within(Duration::from_secs(60), async || {
        let r: Value = client
            .get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let fresh = r["as_of"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| t > posted);
        fresh && r["inbox_depth"] == 0 && r["forward_depth"].as_u64() > Some(0)
    })
    .await;
    assert!(fanned_out, "the fan-out never finished");
    // And the first forwarding attempts ran: this process's own count of
    // failed attempts says so.
    let attempted = eventually_within(Duration::from_secs(30), async || {
        let metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .filter(|l| l.starts_with("zen_deliveries_total{outcome=\"retry\"}"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .any(|n| n >= hooks.len() as f64)
    })
    .await;
    assert!(attempted, "the deliveries were never attempted");
    let peak = peak_rss_kb(child.id());
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("{n} statuses: peak RSS {before} kB before, {peak} kB after");
    assert!(
        peak < PEAK_RSS_BOUND_KB,
        "peak RSS {peak} kB for {n} statuses (bound {PEAK_RSS_BOUND_KB} kB)"
    );
}
