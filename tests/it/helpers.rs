//! `spawn_app()` and friends: the real application on port 0 with a temp data
//! directory, plus typed helpers for the routes the tests call.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zen_gateway::app::Application;
use zen_gateway::config::Settings;

pub const ADMIN_KEY: &str = "test-admin-key";

/// A fixture body from `tests/fixtures/`.
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Settings as a fresh machine has them (no Keys.json, empty environment),
/// pointed at `data_dir`.
pub fn test_settings(data_dir: &Path) -> Settings {
    let mut s = Settings::load_from(Path::new("/nonexistent/Keys.json"), |_| None)
        .expect("default settings");
    s.backends.data_dir = data_dir.to_path_buf();
    s.http.bind_address = std::net::Ipv4Addr::LOCALHOST.into();
    s.http.port = 0;
    s.http.admin_api_key = Some(ADMIN_KEY.into());
    s.http.shutdown_timeout = std::time::Duration::from_secs(10);
    s
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    shutdown: CancellationToken,
    server: JoinHandle<anyhow::Result<()>>,
    _dir: Option<tempfile::TempDir>,
}

/// The gateway on its embedded default in a new temp directory.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut app = spawn_app_in(dir.path(), tweak).await;
    app._dir = Some(dir);
    app
}

/// The gateway on the test broker (its queues under a prefix no other test
/// uses), once connected; `None` when the broker is not there.
pub async fn spawn_app_on_rabbitmq(tweak: impl FnOnce(&mut Settings)) -> Option<TestApp> {
    let url = crate::services::rabbitmq_url()?;
    let prefix = crate::services::unique_prefix();
    let app = spawn_app_with(|s| {
        s.backends.rabbitmq_url = Some(zen_gateway::config::SecretUrl::new(url));
        s.rabbitmq.queue_prefix = prefix;
        tweak(s);
    })
    .await;
    // The broker connection is made in the background.
    app.wait_ready(|r| r["inbox"]["up"] == true).await;
    Some(app)
}

/// The gateway on an existing data directory (restarts).
pub async fn spawn_app_in(data_dir: &Path, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings(data_dir);
    tweak(&mut settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = Application::build_with_listener(settings, listener)
        .await
        .expect("build app");
    let addr = app.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        addr,
        client: reqwest::Client::new(),
        data_dir: data_dir.to_path_buf(),
        shutdown,
        server,
        _dir: None,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post_webhook(&self, path: &str, body: impl Into<String>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.into())
            .send()
            .await
            .expect("post webhook")
    }

    pub async fn get_message(&self, id: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/api/v1/messages/{id}")))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("get message")
    }

    /// Polls the message until `done` holds (processing is asynchronous).
    pub async fn wait_for_message(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let reached = eventually_within(Duration::from_secs(15), async || {
            let resp = self.get_message(id).await;
            if resp.status() == 200 {
                last = resp.json().await.expect("json");
            }
            done(&last)
        })
        .await;
        assert!(
            reached,
            "message {id} never reached the expected state; last seen: {last}"
        );
        last
    }

    /// Waits until everything posted so far has been processed: posts a
    /// status report of its own and waits for its record. The inbox hands
    /// reports out in the order they came, so when this one is stored the
    /// ones before it were applied (or found duplicates): the way to assert
    /// that something did *not* happen without waiting on a clock.
    pub async fn barrier(&self) {
        let wamid = format!("wamid.barrier-{}", uuid::Uuid::new_v4().simple());
        // From a business number no webhook matches: nothing to forward.
        let body = datagen_status(&wamid, "sent", 1).replace("918071234567", "910000000000");
        let r = self.post_webhook("/webhook/datagen", body).await;
        assert_eq!(r.status(), 200, "the barrier was not accepted");
        self.wait_for_message(&wamid, |m| m["current_status"] == "sent")
            .await;
    }

    /// Waits until everything posted so far is processed and forwarded:
    /// [`TestApp::barrier`], then a reading of the backlogs taken after it
    /// with an empty inbox and forwarding queue.
    pub async fn quiesce(&self) {
        self.barrier().await;
        let after = chrono::Utc::now();
        let ready = self
            .wait_ready(|r| {
                let fresh = r["as_of"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t > after);
                fresh && r["inbox_depth"] == 0 && r["forward_depth"] == 0
            })
            .await;
        assert_eq!(ready["forward_depth"], 0, "never quiet: {ready}");
    }

    /// `GET /ready`: status code and body.
    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn ready(&self) -> (u16, Value) {
        let r = self
            .client
            .get(self.url("/ready"))
            .send()
            .await
            .expect("ready");
        (r.status().as_u16(), r.json().await.expect("ready json"))
    }

    /// Polls `/ready` until `done` holds (backends connect in the
    /// background; the probes read them every 2 s); returns the last body
    /// either way.
    pub async fn wait_ready(&self, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        eventually_within(Duration::from_secs(10), async || {
            last = self.ready().await.1;
            done(&last)
        })
        .await;
        last
    }

    /// An admin `GET` as JSON.
    pub async fn admin_get(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("admin get")
            .json()
            .await
            .expect("admin json")
    }

    /// An admin call with an optional JSON body.
    pub async fn admin_send(
        &self, method: reqwest::Method, path: &str, body: Option<Value>,
    ) -> reqwest::Response {
        let req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_KEY);
        match body {
            Some(body) => req.json(&body),
            None => req,
        }
        .send()
        .await
        .expect("admin call")
    }

    /// Registers a client webhook (`POST /api/v1/webhooks`, expecting 201).
    pub async fn create_webhook(&self, body: Value) -> Value {
        create_webhook_at(&self.client, &self.url(""), body).await
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(self) -> Option<tempfile::TempDir> {
        self.shutdown.cancel();
        self.server
            .await
            .expect("server task")
            .expect("server result");
        self._dir
    }
}

/// Registers a client webhook on the gateway at `base`, expecting 201.
pub async fn create_webhook_at(client: &reqwest::Client, base: &str, body: Value) -> Value {
    let resp = client
        .post(format!("{base}/api/v1/webhooks"))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .expect("create webhook");
    assert_eq!(resp.status(), 201);
    resp.json().await.expect("webhook json")
}

/// A free loopback port (for child processes, which bind it themselves).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A Datagen delivery event for `wamid` with `status` at `ts_ms`.
pub fn datagen_status(wamid: &str, status: &str, ts_ms: i64) -> String {
    serde_json::json!({
        "channel": "whatsapp",
        "events": {"eventType": "DELIVERY EVENTS", "timestamp": ts_ms, "mid": wamid},
        "notificationAttributes": {"status": status, "reason": "", "code": ""},
        "recipient": {"to": "919812345678", "recipient_type": "individual",
                      "reference": {"parent_campaign_id": "cmp-1"}},
        "sender": {"from": "918071234567"}
    })
    .to_string()
}

/// Background senders posting distinct Datagen events (`wamid.<tag>-<s>-<i>`)
/// until stopped: steady load through a fault, or until a process is killed
/// under them.
pub struct BackgroundLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tasks: Vec<JoinHandle<(Vec<String>, usize, usize)>>,
}

/// What the load saw: the wamids answered 200, and how many 503s and other
/// answers (including transport errors) it got.
pub struct LoadOutcome {
    pub acked: Vec<String>,
    pub refused_503: usize,
    pub other: usize,
}

impl BackgroundLoad {
    /// `senders` loops against `app`, each pausing `pause` between posts of
    /// status `sent`.
    pub fn start(app: &TestApp, tag: &str, senders: usize, pause: Duration) -> BackgroundLoad {
        Self::start_at(&app.client, &app.url(""), tag, senders, pause, "sent")
    }

    /// The same against the gateway at `base` (a child process), posting
    /// events of `status`.
    pub fn start_at(
        client: &reqwest::Client, base: &str, tag: &str, senders: usize, pause: Duration,
        status: &'static str,
    ) -> BackgroundLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks = (0..senders)
            .map(|s| {
                let (client, url, stop, tag, acked_so_far) = (
                    client.clone(),
                    format!("{base}/webhook/datagen"),
                    stop.clone(),
                    tag.to_owned(),
                    acked.clone(),
                );
                tokio::spawn(async move {
                    let (mut acked, mut refused, mut other) = (Vec::new(), 0, 0);
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let wamid = format!("wamid.{tag}-{s}-{i}");
                        i += 1;
                        let r = client
                            .post(&url)
                            .body(datagen_status(&wamid, status, 1_700_000_000_000 + i))
                            .send()
                            .await;
                        // Paces the load: `pause` after an ack, a short
                        // back-off after a 503 (as a BSP would retry).
                        let wait = match r.map(|r| r.status().as_u16()) {
                            Ok(200) => {
                                acked.push(wamid);
                                acked_so_far.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                pause
                            }
                            Ok(503) => {
                                refused += 1;
                                Duration::from_millis(20)
                            }
                            _ => {
                                other += 1;
                                Duration::ZERO
                            }
                        };
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                    }
                    (acked, refused, other)
                })
            })
            .collect();
        BackgroundLoad { stop, acked, tasks }
    }

    /// Webhooks acked so far.
    pub fn acked(&self) -> usize {
        self.acked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until the load has had `n` more acks than now (at most
    /// `within`): a load that ran, measured by what it did, not by a clock.
    pub async fn until_more_acked(&self, n: usize, within: Duration) {
        let target = self.acked() + n;
        let reached = eventually_within(within, async || self.acked() >= target).await;
        assert!(reached, "the load got fewer than {n} acks in {within:?}");
    }

    pub async fn finish(self) -> LoadOutcome {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut out = LoadOutcome {
            acked: Vec::new(),
            refused_503: 0,
            other: 0,
        };
        for t in self.tasks {
            let (a, r, o) = t.await.expect("sender");
            out.acked.extend(a);
            out.refused_503 += r;
            out.other += o;
        }
        out
    }
}

/// The real binary as a child process on `data_dir` and `port`, with the
/// admin key and no Keys.json, plus `extra` variables. Its output goes to
/// `log` when given (stdout null and stderr inherited otherwise).
pub fn spawn_gateway_process(
    data_dir: &Path, port: u16, extra: &[(&str, &str)], log: Option<&Path>,
) -> GatewayProcess {
    use std::process::{Command, Stdio};
    let (stdout, stderr) = match log {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("log file");
            (
                Stdio::from(file.try_clone().expect("log file")),
                Stdio::from(file),
            )
        }
        None => (Stdio::null(), Stdio::inherit()),
    };
    Command::new(env!("CARGO_BIN_EXE_zen-gateway"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SERVER_PORT", port.to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("DATA_DIR", data_dir)
        .env("ADMIN_API_KEY", ADMIN_KEY)
        .env("KEYS_JSON", data_dir.join("no-Keys.json"))
        .envs(extra.iter().copied())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map(GatewayProcess)
        .expect("spawn zen-gateway")
}

/// A gateway child process, killed (-9) and reaped when dropped: a test
/// that fails half-way leaves no gateway running against the shared
/// services, consuming their queues and the CPU of the tests after it.
pub struct GatewayProcess(pub std::process::Child);

impl std::ops::Deref for GatewayProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for GatewayProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits until `url` answers 200 (a child gateway coming up).
pub async fn wait_until_ok(client: &reqwest::Client, url: &str) {
    let up = eventually_within(Duration::from_secs(10), async || {
        client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(up, "{url} never answered 200");
}

/// Polls `check` until it holds or `within` has passed; whether it held.
/// The one way tests wait for something asynchronous to happen.
pub async fn eventually_within(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the clock is past `t` (a cutoff between two writes).
pub async fn wait_past(t: chrono::DateTime<chrono::Utc>) {
    let past = eventually_within(Duration::from_secs(1), async || chrono::Utc::now() > t).await;
    assert!(past);
}

/// Runs the real binary's subcommand on `data_dir` (no Keys.json, the
/// embedded default, plus `env`), and returns its output.
pub fn run_command(data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_zen-gateway"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATA_DIR", data_dir)
        .env("KEYS_JSON", data_dir.join("no-Keys.json"))
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run zen-gateway")
}

/// [`run_command`], expecting success and JSON on stdout.
pub fn command_json(data_dir: &Path, args: &[&str]) -> Value {
    let out = run_command(data_dir, &[], args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}
