//! Access to the real services `scripts/services` starts. Without their URL a
//! test is skipped, unless `ZEN_REQUIRE_SERVICES=1` (CI), where it fails.

fn required() -> bool {
    std::env::var("ZEN_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if required() => panic!(
            "{var} is not set but ZEN_REQUIRE_SERVICES=1: run the tests through scripts/test"
        ),
        _ => {
            eprintln!("skipped: {var} not set (start services with scripts/services)");
            None
        }
    }
}

pub fn mongo_uri() -> Option<String> {
    service_url("ZEN_TEST_MONGO_URI")
}

/// A database name no other test uses.
pub fn unique_db_name() -> String {
    format!("zen_test_{}", uuid::Uuid::new_v4().simple())
}

/// The FerretDB binary `scripts/services` built, for tests that start and
/// stop a private instance (outages).
pub fn ferretdb_bin() -> Option<String> {
    service_url("ZEN_TEST_FERRETDB_BIN")
}

/// A private FerretDB on its own port and data directory; killed on drop.
pub struct PrivateFerret {
    pub port: u16,
    dir: std::path::PathBuf,
    bin: String,
    child: Option<std::process::Child>,
}

impl PrivateFerret {
    pub fn new(bin: String, dir: &std::path::Path) -> PrivateFerret {
        PrivateFerret {
            port: crate::helpers::free_port(),
            dir: dir.to_path_buf(),
            bin,
            child: None,
        }
    }

    pub fn uri(&self) -> String {
        format!(
            "mongodb://127.0.0.1:{}/?serverSelectionTimeoutMS=500&connectTimeoutMS=500",
            self.port
        )
    }

    pub async fn start(&mut self) {
        let child = std::process::Command::new(&self.bin)
            .args(["--listen-addr", &format!("127.0.0.1:{}", self.port)])
            .args(["--sqlite-dir", &self.dir.display().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start ferretdb");
        self.child = Some(child);
        let port = self.port;
        let up = crate::helpers::eventually_within(std::time::Duration::from_secs(5), async || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        assert!(up, "private ferretdb did not start");
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateFerret {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn rabbitmq_url() -> Option<String> {
    service_url("ZEN_TEST_RABBITMQ_URL")
}

/// The three-node RabbitMQ cluster (`scripts/services cluster`): its URL
/// list and the pid file of the node behind the first address. (Used by
/// `tests/chaos.rs`.)
#[allow(dead_code)]
pub fn rabbitmq_cluster() -> Option<(String, String)> {
    Some((
        service_url("ZEN_TEST_RABBITMQ_CLUSTER_URL")?,
        service_url("ZEN_TEST_RABBITMQ_CLUSTER_NODE1_PID")?,
    ))
}

/// A queue/exchange name prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("t{}_", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

pub fn redis_url() -> Option<String> {
    service_url("ZEN_TEST_REDIS_URL")
}
