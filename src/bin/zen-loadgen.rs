//! zen-loadgen: the benchmark tools of zen-gateway (see scripts/bench).
//!
//! - `post`: posts realistic provider bodies (Datagen single and batch,
//!   AiSensy, Karix, Meta; many distinct wamids, out-of-order statuses and
//!   duplicates) at a fixed rate or as fast as possible over N connections,
//!   and reports status codes and the ack latency (HDR histogram; measured
//!   from the scheduled send time at a fixed rate, so a stall is not hidden).
//! - `parse-server`: the baseline, an axum handler that only parses the JSON.
//! - `amqp-ceiling`: a bare publish-with-confirm loop to the same broker,
//!   with the same topology as the gateway's ingest (one publish, two queues).
//! - `receiver`: a client webhook endpoint that counts what it gets
//!   (`/dead/...` paths hang instead), with `GET /count`; with `--print` it
//!   prints each delivery, and with `--secret whsec_…` it checks the
//!   Standard Webhooks signature (the walk-through in the README uses it).
//!
//! Traffic goes only where it is told (loopback in scripts/bench), and every
//! run is bounded by `--duration`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::{get, post};
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;

#[derive(Parser)]
#[command(name = "zen-loadgen", about = "zen-gateway benchmark tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mix {
    /// Datagen single delivery events only.
    Datagen,
    /// Datagen single and batch, AiSensy, Karix and Meta.
    Mixed,
    /// Datagen, never repeating: request k is status k % 3 (sent, delivered,
    /// read) of message k / 3, so the data only grows (long runs).
    Fresh,
}

#[derive(Subcommand)]
enum Command {
    /// Post webhooks and report throughput and ack latency as JSON.
    Post {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Requests per second; 0 = as fast as possible.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, value_enum, default_value_t = Mix::Mixed)]
        mix: Mix,
        /// Distinct messages the events are about.
        #[arg(long, default_value_t = 50_000)]
        messages: u64,
        /// Stop after this many requests (0: run for `--duration`).
        #[arg(long, default_value_t = 0)]
        requests: u64,
    },
    /// The baseline: an axum server whose handler only parses the JSON; with
    /// `--amqp-url`, a bare publish+confirm handler: it also publishes the
    /// body (persistent, mandatory) to two durable lazy priority queues, as
    /// the gateway's ingest does, and answers once the broker confirms.
    ParseServer {
        #[arg(long, default_value_t = 18090)]
        port: u16,
        #[arg(long)]
        amqp_url: Option<String>,
        /// Confirm channels the handler publishes on, in turn.
        #[arg(long, default_value_t = 4)]
        channels: usize,
    },
    /// A bare publish-with-confirm loop; reports messages per second.
    AmqpCeiling {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Publishes in flight at once.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        #[arg(long, default_value_t = 4)]
        channels: usize,
    },
    /// Message lookups by id (`GET /api/v1/messages/{id}`): posts `records`
    /// Datagen and Karix webhooks, waits until they are stored, then looks up
    /// `samples` of them by wamid, by provider id and by `message_id`;
    /// reports latency percentiles per kind as JSON.
    Lookups {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "ADMIN_API_KEY")]
        key: String,
        #[arg(long, default_value_t = 3000)]
        records: u64,
        #[arg(long, default_value_t = 300)]
        samples: u64,
    },
    /// What a payload filter costs per event, in this process: the delivery
    /// body built for each of `events` events (the reference), then the same
    /// with three filters matched against it (an equality, an `$in` on a
    /// nested path with `$exist`, a `$regex` under `$or`); the median of
    /// `rounds` rounds, in ns per event, as JSON.
    FilterCost {
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        #[arg(long, default_value_t = 7)]
        rounds: usize,
    },
    /// What carrying a webhook's trace costs, in this process, export off:
    /// per webhook, the ingest's child of the BSP's `traceparent` (or a new
    /// trace), reading it back from the inbox, a job's copy, and one
    /// attempt's child; the median of `rounds` rounds, in ns per webhook, as
    /// JSON.
    TraceCost {
        #[arg(long, default_value_t = 500_000)]
        webhooks: u64,
        #[arg(long, default_value_t = 7)]
        rounds: usize,
    },
    /// A counting webhook receiver.
    Receiver {
        #[arg(long, default_value_t = 18091)]
        port: u16,
        /// Print each delivery (headers that matter and the body) as a JSON line.
        #[arg(long)]
        print: bool,
        /// The webhook's `whsec_…` secret: check each `webhook-signature`.
        #[arg(long)]
        secret: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        match cli.command {
            Command::Post {
                url,
                rate,
                duration,
                connections,
                mix,
                messages,
                requests,
            } => post_load(url, rate, duration, connections, mix, messages, requests).await,
            Command::ParseServer {
                port,
                amqp_url,
                channels,
            } => match amqp_url {
                None => parse_server(port).await,
                Some(url) => confirm_server(port, url, channels).await,
            },
            Command::Lookups {
                url,
                key,
                records,
                samples,
            } => lookups(url, key, records, samples).await,
            Command::AmqpCeiling {
                url,
                duration,
                in_flight,
                channels,
            } => amqp_ceiling(url, duration, in_flight, channels).await,
            Command::Receiver {
                port,
                print,
                secret,
            } => receiver(port, print, secret).await,
            Command::FilterCost { events, rounds } => filter_cost(events, rounds),
            Command::TraceCost { webhooks, rounds } => trace_cost(webhooks, rounds),
        }
    })
}

/// Deterministic pseudo-random numbers (xorshift): reproducible runs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const STATUSES: [&str; 4] = ["sent", "Delivered", "Read", "failed"];

async fn lookups(url: String, key: String, records: u64, samples: u64) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let tag = std::process::id();
    // Half keyed by wamid (Datagen), half by Karix's own id.
    for i in 0..records {
        let (route, body) = if i % 2 == 0 {
            (
                "datagen",
                datagen_event(
                    tag as u64 * 1_000_000 + i,
                    "Delivered",
                    1_749_540_000_000 + i,
                ),
            )
        } else {
            (
                "karix",
                json!({"channel": "WABA", "appDetails": {"type": "LIVE"},
                "events": {"eventType": "DELIVERY EVENTS", "timestamp": 1_749_540_000_000_u64 + i,
                           "mid": format!("karix-{tag}-{i}")},
                "notificationAttributes": {"status": "DELIVERED", "reason": "", "code": ""},
                "recipient": {"to": "919812345678"}, "sender": {"from": "918071234567"}}),
            )
        };
        client
            .post(format!("{url}/webhook/{route}"))
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
    }
    let get = |id: String| {
        let (client, url, key) = (client.clone(), url.clone(), key.clone());
        async move {
            let started = std::time::Instant::now();
            let r = client
                .get(format!("{url}/api/v1/messages/{id}"))
                .bearer_auth(&key)
                .send()
                .await?;
            let status = r.status();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            anyhow::Ok((status, body, started.elapsed()))
        }
    };
    // The last Karix record (odd indexes are Karix).
    let last_odd = if (records - 1) % 2 == 1 {
        records - 1
    } else {
        records.saturating_sub(2)
    };
    let last = format!("karix-{tag}-{last_odd}");
    for _ in 0..600 {
        if get(last.clone()).await?.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut report = serde_json::Map::new();
    for kind in ["wamid", "provider_id", "message_id"] {
        let mut hist = Histogram::<u64>::new(3)?;
        for n in 0..samples {
            let i = (n * 7919) % records;
            let wamid = format!("wamid.bench{:012}", tag as u64 * 1_000_000 + (i & !1));
            let karix = format!("karix-{tag}-{}", i | 1);
            let id = match kind {
                "wamid" => wamid,
                "provider_id" => karix,
                _ => get(wamid).await?.1["message_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            };
            let (status, _, took) = get(id).await?;
            anyhow::ensure!(status == 200, "{kind} lookup: HTTP {status}");
            hist.record(took.as_micros().max(1) as u64)?;
        }
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        report.insert(
            kind.into(),
            json!({"p50_ms": ms(0.5), "p95_ms": ms(0.95), "max_ms": hist.max() as f64 / 1000.0}),
        );
    }
    println!("{}", serde_json::Value::Object(report));
    Ok(())
}

fn datagen_event(wamid: u64, status: &str, ts: u64) -> serde_json::Value {
    json!({
        "channel": "whatsapp",
        "events": {"eventType": "DELIVERY EVENTS", "timestamp": ts, "date": "2025-06-10", "mid": format!("wamid.bench{wamid:012}")},
        "notificationAttributes": {"status": status, "reason": "", "code": ""},
        "recipient": {"to": format!("9198{:08}", wamid % 100_000_000), "recipient_type": "individual",
                      "reference": {"cust_ref": "", "messageTag1": "", "parent_campaign_id": "665f1a2b3c4d5e6f7a8b9c0e"}},
        "sender": {"from": "918071234567"}
    })
}

/// A pool of (route, body) pairs; events come out of order and repeat.
fn bodies(mix: Mix, messages: u64, n: usize) -> Vec<(&'static str, Bytes)> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let m = rng.next() % messages.max(1);
        let s = (rng.next() % 4) as usize;
        let ts = 1_749_540_000_000 + m * 10 + s as u64;
        let kind = match mix {
            Mix::Datagen | Mix::Fresh => 0,
            Mix::Mixed => rng.next() % 10,
        };
        let (route, body) = match kind {
            0..=5 => ("/webhook/datagen", datagen_event(m, STATUSES[s], ts)),
            6 => (
                "/webhook/datagen",
                json!(
                    (0..5)
                        .map(|i| datagen_event((m + i) % messages.max(1), STATUSES[s], ts))
                        .collect::<Vec<_>>()
                ),
            ),
            7 => (
                "/webhook/aisensy",
                json!({
                    "id": format!("{:024x}", rng.next()), "created_at": "2025-06-10T07:21:36.000Z",
                    "topic": "message.status.updated", "project_id": "6651c0ffee1234567890abcd", "delivery_attempt": "1",
                    "data": {"message": {"id": format!("{m:024x}"), "messageId": format!("wamid.bench{m:012}"),
                        "phone_number": "919876543210", "status": STATUSES[s].to_uppercase(), "read_at": ts,
                        "delivered_at": ts, "sent_at": ts, "failureResponse": {}}}
                }),
            ),
            8 => (
                "/webhook/karix",
                json!({
                    "channel": "WABA", "appDetails": {"type": "LIVE", "id": ""},
                    "events": {"eventType": "DELIVERY EVENTS", "timestamp": ts, "mid": format!("1769{m:014}")},
                    "notificationAttributes": {"status": STATUSES[s].to_lowercase(), "reason": "", "code": "000"},
                    "recipient": {"to": "919876543210", "reference": {"cust_ref": "ORD"}},
                    "sender": {"from": "918071234567"}
                }),
            ),
            _ => (
                "/webhook/meta",
                json!({
                    "object": "whatsapp_business_account",
                    "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
                        "messaging_product": "whatsapp",
                        "metadata": {"display_phone_number": "918071234567", "phone_number_id": "1"},
                        "statuses": [{"id": format!("wamid.bench{m:012}"), "status": STATUSES[s].to_lowercase(),
                                      "timestamp": (ts / 1000).to_string(), "recipient_id": "919876543210"}]}}]}]
                }),
            ),
        };
        out.push((route, Bytes::from(body.to_string())));
    }
    out
}

async fn post_load(
    url: String, rate: u64, duration: u64, connections: usize, mix: Mix, messages: u64,
    requests: u64,
) -> anyhow::Result<()> {
    let pool = Arc::new(match mix {
        Mix::Fresh => Vec::new(),
        _ => bodies(mix, messages, 20_000),
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(30))
        .build()?;
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(duration);
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let (client, pool, issued, url) =
            (client.clone(), pool.clone(), issued.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut codes = std::collections::BTreeMap::<u16, u64>::new();
            let mut errors = 0u64;
            loop {
                let k = issued.fetch_add(1, Ordering::Relaxed);
                if requests > 0 && k >= requests {
                    break;
                }
                let scheduled = if rate > 0 {
                    let at = started + Duration::from_secs_f64(k as f64 / rate as f64);
                    if at >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(at.into()).await;
                    at
                } else {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    now
                };
                let fresh;
                let (route, body) = match mix {
                    Mix::Fresh => {
                        let (m, s) = (k / 3, (k % 3) as usize);
                        let ts = 1_749_540_000_000 + k * 10;
                        fresh = Bytes::from(datagen_event(m, STATUSES[s], ts).to_string());
                        ("/webhook/datagen", &fresh)
                    }
                    _ => {
                        let (route, body) = &pool[(k as usize) % pool.len()];
                        (*route, body)
                    }
                };
                let resp = client
                    .post(format!("{url}{route}"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match resp {
                    Ok(r) => {
                        *codes.entry(r.status().as_u16()).or_default() += 1;
                        let _ = r.bytes().await;
                    }
                    Err(_) => errors += 1,
                }
                let _ = hist.record(scheduled.elapsed().as_micros().max(1) as u64);
            }
            (hist, codes, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut codes = std::collections::BTreeMap::<u16, u64>::new();
    let mut errors = 0;
    for t in tasks {
        let (h, c, e) = t.await?;
        hist.add(h)?;
        for (k, v) in c {
            *codes.entry(k).or_default() += v;
        }
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = codes.get(&200).copied().unwrap_or(0);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        json!({
            "requests": hist.len(),
            "ok": ok,
            "status": codes.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "errors": errors,
            "seconds": elapsed,
            "ok_per_second": ok as f64 / elapsed,
            "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999), "max": hist.max() as f64 / 1000.0},
        })
    );
    Ok(())
}

async fn parse_server(port: u16) -> anyhow::Result<()> {
    async fn parse_only(
        body: Bytes,
    ) -> (StatusCode, [(&'static str, &'static str); 1], &'static str) {
        match serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            Ok(_) => (
                StatusCode::OK,
                [("content-type", "application/json; charset=utf-8")],
                r#"{"status":200,"message":"Datagen webhook received successfully"}"#,
            ),
            Err(_) => (
                StatusCode::BAD_REQUEST,
                [("content-type", "application/json")],
                "{}",
            ),
        }
    }
    let app = Router::new().route("/webhook/{bsp}", post(parse_only));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// Checks a Standard Webhooks signature from its headers, independently of
/// the gateway's signing code: the key is the base64 after `whsec_`, the
/// signed content `{webhook-id}.{webhook-timestamp}.{body}`.
fn standard_webhooks_valid(secret: &str, headers: &axum::http::HeaderMap, body: &[u8]) -> bool {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use hmac::Mac;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(sigs)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(key) = STANDARD.decode(secret.trim_start_matches("whsec_")) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key) else {
        return false;
    };
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    sigs.split(' ').any(|s| s == expected)
}

async fn receiver(port: u16, print: bool, secret: Option<String>) -> anyhow::Result<()> {
    let count = Arc::new(AtomicU64::new(0));
    let secret: Option<Arc<str>> = secret.map(Into::into);
    let c = count.clone();
    let app = Router::new()
        .route(
            "/count",
            get(move || {
                let c = c.clone();
                async move { c.load(Ordering::Relaxed).to_string() }
            }),
        )
        .route(
            "/{*path}",
            post(
                move |axum::extract::Path(path): axum::extract::Path<String>,
                      headers: axum::http::HeaderMap,
                      body: Bytes| {
                    let count = count.clone();
                    let secret = secret.clone();
                    async move {
                        if print {
                            let h = |name: &str| {
                                headers
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_owned()
                            };
                            let signature = match &secret {
                                Some(s) if standard_webhooks_valid(s, &headers, &body) => "valid",
                                Some(_) => "INVALID",
                                None => "not checked (no --secret)",
                            };
                            let body: serde_json::Value = serde_json::from_slice(&body)
                                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into());
                            println!(
                                "{}",
                                json!({
                                    "path": format!("/{path}"),
                                    "x-event-type": h("x-event-type"),
                                    "x-event-id": h("x-event-id"),
                                    "x-attempt-count": h("x-attempt-count"),
                                    "webhook-id": h("webhook-id"),
                                    "x-webhook-signature": h("x-webhook-signature"),
                                    "signature": signature,
                                    "body": body,
                                })
                            );
                        }
                        if path.starts_with("dead") {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                        count.fetch_add(1, Ordering::Relaxed);
                        StatusCode::OK
                    }
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The gateway's ingest topology, on the bench's own names: a direct
/// exchange and two durable lazy priority queues bound to it (one publish,
/// two copies), emptied. Returns the channel that declared it.
async fn bench_topology(conn: &lapin::Connection) -> anyhow::Result<lapin::Channel> {
    use lapin::ExchangeKind;
    use lapin::options::*;
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

    let setup = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-mode"),
        AMQPValue::LongString(LongString::from("lazy")),
    );
    args.insert(ShortString::from("x-max-priority"), AMQPValue::LongInt(10));
    setup
        .exchange_declare(
            "zen_bench_exchange".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for q in BENCH_QUEUES {
        setup
            .queue_declare(
                q.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args.clone(),
            )
            .await?;
        setup
            .queue_purge(q.into(), QueuePurgeOptions::default())
            .await?;
        setup
            .queue_bind(
                q.into(),
                "zen_bench_exchange".into(),
                "datagen".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(setup)
}

const BENCH_QUEUES: [&str; 2] = ["zen_bench_a", "zen_bench_b"];

/// `n` channels in confirm mode.
async fn confirm_channels(
    conn: &lapin::Connection, n: usize,
) -> anyhow::Result<Vec<lapin::Channel>> {
    let mut chans = Vec::new();
    for _ in 0..n.max(1) {
        let ch = conn.create_channel().await?;
        ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await?;
        chans.push(ch);
    }
    Ok(chans)
}

/// Publishes `body` as the gateway's ingest does (persistent, mandatory) and
/// waits for the broker's confirm; whether it was acked.
async fn publish_confirmed(ch: &lapin::Channel, body: &[u8]) -> Result<bool, lapin::Error> {
    let confirm = ch
        .basic_publish(
            "zen_bench_exchange".into(),
            "datagen".into(),
            lapin::options::BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
        )
        .await?
        .await?;
    Ok(confirm.is_ack())
}

/// See `Command::ParseServer` with `--amqp-url`.
async fn confirm_server(port: u16, url: String, channels: usize) -> anyhow::Result<()> {
    #[derive(Clone)]
    struct Publishers {
        chans: Arc<Vec<lapin::Channel>>,
        next: Arc<AtomicU64>,
    }
    async fn publish(
        axum::extract::State(p): axum::extract::State<Publishers>, body: Bytes,
    ) -> (StatusCode, [(&'static str, &'static str); 1], &'static str) {
        let json = [("content-type", "application/json; charset=utf-8")];
        if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            return (StatusCode::BAD_REQUEST, json, "{}");
        }
        let i = p.next.fetch_add(1, Ordering::Relaxed) as usize % p.chans.len();
        match publish_confirmed(&p.chans[i], &body).await {
            Ok(true) => (
                StatusCode::OK,
                json,
                r#"{"status":200,"message":"Datagen webhook received successfully"}"#,
            ),
            _ => (StatusCode::SERVICE_UNAVAILABLE, json, "{}"),
        }
    }
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
    let setup = bench_topology(&conn).await?;
    let publishers = Publishers {
        chans: Arc::new(confirm_channels(&conn, channels).await?),
        next: Arc::new(AtomicU64::new(0)),
    };
    let app = Router::new()
        .route("/webhook/{bsp}", post(publish))
        .with_state(publishers);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    for q in BENCH_QUEUES {
        let _ = setup
            .queue_delete(q.into(), lapin::options::QueueDeleteOptions::default())
            .await;
    }
    served?;
    Ok(())
}

async fn amqp_ceiling(
    url: String, duration: u64, in_flight: usize, channels: usize,
) -> anyhow::Result<()> {
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
    let setup = bench_topology(&conn).await?;
    let body = datagen_event(1, "Delivered", 1_749_540_000_000)
        .to_string()
        .into_bytes();
    let chans = confirm_channels(&conn, channels).await?;
    let confirmed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(duration);
    let mut tasks = Vec::new();
    for i in 0..in_flight.max(1) {
        let ch = chans[i % chans.len()].clone();
        let (body, confirmed) = (body.clone(), confirmed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if publish_confirmed(&ch, &body).await? {
                    confirmed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<(), lapin::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let n = confirmed.load(Ordering::Relaxed);
    for q in BENCH_QUEUES {
        let _ = setup
            .queue_delete(q.into(), lapin::options::QueueDeleteOptions::default())
            .await;
    }
    println!(
        "{}",
        json!({"confirmed": n, "seconds": secs, "per_second": n as f64 / secs})
    );
    Ok(())
}

/// See `Command::TraceCost`.
fn trace_cost(webhooks: u64, rounds: usize) -> anyhow::Result<()> {
    use zen_gateway::telemetry::traces::TraceParent;
    let inbound = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let round = |bsp_sent_one: bool| {
        let started = Instant::now();
        for _ in 0..webhooks {
            let kept = if bsp_sent_one {
                TraceParent::parse(std::hint::black_box(inbound))
                    .map_or_else(TraceParent::root, |t| t.child())
            } else {
                TraceParent::root()
            };
            let read_back = TraceParent::parse(kept.as_str());
            let job = read_back.clone();
            let sent = job.map(|t| t.child());
            std::hint::black_box(sent);
        }
        started.elapsed().as_nanos() as f64 / webhooks.max(1) as f64
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let with = median((0..rounds.max(1)).map(|_| round(true)).collect());
    let without = median((0..rounds.max(1)).map(|_| round(false)).collect());
    println!(
        "{}",
        json!({"with_inbound_traceparent_ns": with, "without_ns": without,
            "webhooks": webhooks, "rounds": rounds})
    );
    Ok(())
}

/// See `Command::FilterCost`.
fn filter_cost(events: u64, rounds: usize) -> anyhow::Result<()> {
    use zen_gateway::forwarding::filter::Filter;
    let raw = json!({"statuses": [{"id": "wamid.HBgMOTE5ODc2NTQzMjEwFQIAERgSM0VCMEE4QzdGNEQyRTlBMUIwAA==",
        "status": "failed", "timestamp": "1749540002", "recipient_id": "919876543210",
        "errors": [{"code": 131026, "title": "Message undeliverable"}]}]});
    let message = json!({"campaign_id": "diwali-2026", "current_status": "failed",
        "phone_number": "919876543210", "business_number": "918071234567"});
    let filters = [
        ("equality", json!({"event_type": "message.failed"})),
        (
            "in_and_exist",
            json!({"data.statuses.0.errors.0.code": {"$in": [131026, 131047]},
            "message": {"campaign_id": {"$exist": true}}}),
        ),
        (
            "regex_or",
            json!({"$or": [{"event_type": "message.read"},
            {"message.campaign_id": {"$regex": "^diwali-20[0-9]{2}$"}}]}),
        ),
    ];
    let compiled: Vec<(&str, Filter)> = filters
        .iter()
        .map(|(name, f)| Ok((*name, Filter::compile(f)?)))
        .collect::<anyhow::Result<_>>()?;
    let body = |k: u64| {
        json!({"event_type": "message.failed", "event_id": format!("evt-{k}"),
            "data": raw, "message": message})
    };
    // One round: ns per event of building the body, and of building it and
    // matching `filter` when given.
    let round = |filter: Option<&Filter>| {
        let started = Instant::now();
        let mut kept = 0u64;
        for k in 0..events {
            let b = body(k);
            if filter.is_none_or(|f| f.matches(&b)) {
                kept += 1;
            }
        }
        std::hint::black_box(kept);
        started.elapsed().as_nanos() as f64 / events.max(1) as f64
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut out = serde_json::Map::new();
    let reference = median((0..rounds.max(1)).map(|_| round(None)).collect());
    out.insert("body_only_ns".into(), json!(reference));
    for (name, f) in &compiled {
        let with = median((0..rounds.max(1)).map(|_| round(Some(f))).collect());
        out.insert(
            (*name).into(),
            json!({"with_body_ns": with, "filter_ns": with - reference}),
        );
    }
    out.insert("events".into(), json!(events));
    out.insert("rounds".into(), json!(rounds));
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
