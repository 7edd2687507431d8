//! Service outages under load: RabbitMQ stopped and started (503 while it is
//! down, never a 200 without a confirm; recovery without a restart; nothing
//! acked lost), a broker that stops confirming publishes (its connection
//! given up, not waited on forever), Redis stopped mid-run (degraded,
//! nothing lost, dedup still right on one replica). Its own test binary,
//! tests one at a time: they stop or alarm shared services that no other
//! test may be using meanwhile (cargo runs test binaries one after another).

#[path = "it/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "it/services.rs"]
#[allow(dead_code)]
mod services;

use std::process::Command;
use std::time::Duration;

use helpers::*;
use serde_json::Value;

/// One outage at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rabbitmqctl(arg: &str) {
    let status = Command::new("timeout")
        .args(["120", "rabbitmqctl", "-q", arg])
        .status()
        .expect("rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {arg} failed");
}

/// Starts the broker app again even if the test fails half-way.
struct RestartOnDrop;
impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args(["120", "rabbitmqctl", "-q", "start_app"])
            .status();
    }
}

async fn ready(app: &TestApp) -> (u16, Value) {
    app.ready().await
}

/// A gateway whose inbox is the single broker, with its own queue prefix
/// (returned), answering 503 after 2 s without a confirm; once it is ready.
/// `None` without the broker.
async fn on_the_broker() -> Option<(TestApp, String)> {
    let url = services::rabbitmq_url()?;
    let prefix = services::unique_prefix();
    let app = spawn_app_with(|s| {
        s.backends.rabbitmq_url = Some(zen_gateway::config::SecretUrl::new(url.clone()));
        s.rabbitmq.queue_prefix = prefix.clone();
        s.ingest.ack_timeout = Duration::from_millis(2000);
    })
    .await;
    eventually_within(Duration::from_secs(10), async || ready(&app).await.0 == 200).await;
    Some((app, prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_gives_503s_then_heals_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let Some((app, prefix)) = on_the_broker().await else {
        return;
    };
    let mut acked = Vec::new();
    for i in 0..10 {
        let w = format!("wamid.mq-before-{i}");
        let r = app
            .post_webhook("/webhook/datagen", datagen_status(&w, "sent", i))
            .await;
        assert_eq!(r.status(), 200);
        acked.push((w, "sent"));
    }

    // Steady load from four senders through the whole outage.
    let load = BackgroundLoad::start(
        &app,
        &format!("mq-load-{prefix}"),
        4,
        Duration::from_millis(5),
    );
    load.until_more_acked(50, Duration::from_secs(10)).await;
    let _guard = RestartOnDrop;
    let outage = std::time::Instant::now();
    rabbitmqctl("stop_app");
    let mut refused = 0;
    for i in 0..10 {
        let w = format!("wamid.mq-down-{i}");
        let r = app
            .post_webhook("/webhook/datagen", datagen_status(&w, "sent", i))
            .await;
        match r.status().as_u16() {
            503 => refused += 1,
            200 => panic!("a 200 while the broker is down: {w}"),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(refused, 10);
    let (code, body) = ready(&app).await;
    assert_eq!(code, 503);
    assert_eq!(body["inbox"]["up"], false);

    rabbitmqctl("start_app");
    let mut healed = false;
    healed |= eventually_within(Duration::from_secs(30), async || ready(&app).await.0 == 200).await;
    assert!(
        healed,
        "the gateway did not reconnect by itself: {}",
        ready(&app).await.1
    );
    let outage = outage.elapsed();
    // The load goes on against the healed broker for a while.
    load.until_more_acked(50, Duration::from_secs(10)).await;
    let load = load.finish().await;
    // Every acked event must be applied; the time it takes is reported.
    let applying = std::time::Instant::now();
    let mut missing: Vec<&String> = load.acked.iter().collect();
    eventually_within(Duration::from_secs(90), async || {
        let mut still = Vec::new();
        for w in std::mem::take(&mut missing) {
            if app.get_message(w).await.status() != 200 {
                still.push(w);
            }
        }
        missing = still;
        missing.is_empty()
    })
    .await;
    assert!(
        missing.is_empty(),
        "acked but not applied after 90 s: {} of {}, e.g. {:?}; ready: {}",
        missing.len(),
        load.acked.len(),
        missing.first(),
        ready(&app).await.1
    );
    let applied_after = applying.elapsed();
    for i in 0..10 {
        let w = format!("wamid.mq-after-{i}");
        let r = app
            .post_webhook("/webhook/datagen", datagen_status(&w, "delivered", i))
            .await;
        assert_eq!(r.status(), 200);
        acked.push((w, "delivered"));
    }
    for (w, status) in &acked {
        app.wait_for_message(w, |m| m["current_status"] == *status)
            .await;
    }
    println!(
        "chaos: broker outage: {:.1} s down (stop_app .. ready again) under 4 steady senders: \
         {} acked and all stored ({:.1} s after recovery), {} refused with 503, {} other errors; \
         plus 30 sequential probes (10 refused while down); 0 lost",
        outage.as_secs_f64(),
        load.acked.len() + acked.len(),
        applied_after.as_secs_f64(),
        load.refused_503 + refused,
        load.other,
    );
    app.stop().await;
}

/// Restarts Redis through the services script even if the test fails.
struct RedisBackOnDrop;
impl Drop for RedisBackOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services")).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_degrades_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let Some(url) = services::redis_url() else {
        return;
    };
    let app = spawn_app_with(|s| {
        s.backends.redis_url = Some(zen_gateway::config::SecretUrl::new(url.clone()))
    })
    .await;
    app.wait_ready(|r| r["cache"]["up"] == true).await;
    let _guard = RedisBackOnDrop;
    let status = Command::new("redis-cli")
        .args(["-u", &url, "shutdown", "nosave"])
        .status()
        .unwrap();
    let _ = status; // the connection drops as the server stops
    app.wait_ready(|r| r["cache"]["up"] == false).await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    for i in 0..20 {
        let w = format!("wamid.redis-down-{tag}-{i}");
        let body = datagen_status(&w, "read", 1_000 + i);
        for _ in 0..2 {
            // Each event twice: dedup falls back to the store.
            let r = app.post_webhook("/webhook/datagen", body.clone()).await;
            assert_eq!(r.status(), 200, "ingest must not depend on Redis");
        }
    }
    // The probes show the last background reading (every 2 s).
    let body = app.wait_ready(|r| r["cache"]["up"] == false).await;
    let (code, _) = ready(&app).await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["cache"]["up"], false);
    for i in 0..20 {
        let rec = app
            .wait_for_message(&format!("wamid.redis-down-{tag}-{i}"), |m| {
                m["current_status"] == "read"
            })
            .await;
        assert_eq!(rec["status_history"].as_array().unwrap().len(), 1);
    }
    drop(_guard); // Redis back
    let back = eventually_within(Duration::from_secs(10), async || {
        ready(&app).await.1["status"] == "ready"
    })
    .await;
    assert!(back, "the cache did not come back by itself");
    println!(
        "chaos: redis outage: 40 posts (20 events twice) acked while down, 20 records with one entry each, 0 lost; ready said degraded, then ready again"
    );
    app.stop().await;
}

/// Puts the single broker's memory threshold back even if the test fails.
struct WatermarkBackOnDrop;
impl Drop for WatermarkBackOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args([
                "60",
                "rabbitmqctl",
                "-q",
                "set_vm_memory_high_watermark",
                "0.4",
            ])
            .status();
    }
}

/// `zen_broker_connections_lost_total`, 0 before the first loss.
async fn broker_connections_lost(app: &TestApp) -> u64 {
    let text = app.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix("zen_broker_connections_lost_total "))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

/// A broker that takes publishes and never confirms them (here its memory
/// alarm: it stops reading from publishing connections; a cluster node
/// reconnected to before its queues have leaders again looks the same).
/// Every webhook times out with a 503, and a timed-out publish ends where
/// the caller stops waiting: the gateway must still see the stall itself and
/// give the connection up, and take 200s again once the broker confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stops_confirming_has_its_connection_replaced() {
    let _serial = SERIAL.lock().await;
    let Some((app, prefix)) = on_the_broker().await else {
        return;
    };
    let mut acked = Vec::new();
    let first = format!("wamid.stall-before-{prefix}");
    let r = app
        .post_webhook("/webhook/datagen", datagen_status(&first, "sent", 1))
        .await;
    assert_eq!(r.status(), 200);
    acked.push(first.clone());
    // Applied and acked: no inbox ack is pending when the alarm goes off.
    app.wait_for_message(&first, |m| m["current_status"] == "sent")
        .await;
    let lost_before = broker_connections_lost(&app).await;

    let guard = WatermarkBackOnDrop;
    let alarm = Command::new("timeout")
        .args([
            "60",
            "rabbitmqctl",
            "-q",
            "set_vm_memory_high_watermark",
            "0",
        ])
        .status()
        .expect("rabbitmqctl");
    assert!(
        alarm.success(),
        "rabbitmqctl set_vm_memory_high_watermark 0"
    );
    let stalled = std::time::Instant::now();
    let (mut refused, mut i) = (0, 0);
    let mut post_one = async || {
        i += 1;
        let w = format!("wamid.stall-{prefix}-{i}");
        let r = app
            .post_webhook("/webhook/datagen", datagen_status(&w, "sent", i))
            .await;
        match r.status().as_u16() {
            // The alarm takes a moment to block the connection.
            200 => acked.push(w),
            503 => refused += 1,
            other => panic!("unexpected {other} while the broker stalls"),
        }
    };
    let replaced = eventually_within(Duration::from_secs(40), async || {
        post_one().await;
        broker_connections_lost(&app).await > lost_before
    })
    .await;
    let noticed_in = stalled.elapsed();
    // Six more seconds of the stall. The new connection's own publishes
    // cannot time out before 10 s; the old one's, posted during the first
    // 10 s, time out now and must not give the new connection up.
    let after_first = std::time::Instant::now();
    eventually_within(Duration::from_secs(10), async || {
        post_one().await;
        after_first.elapsed() > Duration::from_secs(6)
    })
    .await;
    let lost = broker_connections_lost(&app).await - lost_before;
    drop(guard);
    assert!(
        replaced,
        "40 s of unconfirmed publishes ({refused} webhooks answered 503) and the connection \
         was never given up; ready: {}",
        ready(&app).await.1
    );
    assert!(refused > 0, "the alarm never held a publish back");
    assert_eq!(
        lost, 1,
        "connections given up by the 6 s after the first: the old connection's late timeouts \
         gave up its replacement"
    );

    let resumed = std::time::Instant::now();
    let back = eventually_within(Duration::from_secs(30), async || {
        i += 1;
        let w = format!("wamid.stall-after-{prefix}-{i}");
        let r = app
            .post_webhook("/webhook/datagen", datagen_status(&w, "sent", i))
            .await;
        let ok = r.status() == 200;
        if ok {
            acked.push(w);
        }
        ok
    })
    .await;
    assert!(
        back,
        "no 200 within 30 s of the alarm's end: {}",
        ready(&app).await.1
    );
    for w in &acked {
        app.wait_for_message(w, |m| m["current_status"] == "sent")
            .await;
    }
    println!(
        "chaos: a broker that stops confirming: the connection given up {:.1} s into the stall \
         ({refused} webhooks refused with 503 meanwhile), 200s again {:.1} s after the alarm's \
         end; {} acked, all stored",
        noticed_in.as_secs_f64(),
        resumed.elapsed().as_secs_f64(),
        acked.len(),
    );
    app.stop().await;
}
