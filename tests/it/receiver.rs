//! A client webhook endpoint for tests: an axum server on port 0 that
//! records every request and answers as told, per path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

#[derive(Debug, Clone)]
pub enum Behavior {
    Status(u16),
    /// Answers these in turn, then the last one forever.
    Sequence(Vec<u16>),
    RetryAfter(u16, u64),
    Hang(Duration),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct Shared {
    behavior: HashMap<String, Behavior>,
    calls: HashMap<String, usize>,
    received: Vec<Received>,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
}

async fn handle(
    State(shared): State<Arc<Mutex<Shared>>>, Path(path): Path<String>, headers: HeaderMap,
    body: Bytes,
) -> Response {
    let behavior = {
        let mut s = shared.lock().unwrap();
        s.received.push(Received {
            path: path.clone(),
            headers,
            body,
            at: Instant::now(),
        });
        let n = s.calls.entry(path.clone()).or_insert(0);
        *n += 1;
        let call = *n;
        match s
            .behavior
            .get(&path)
            .cloned()
            .unwrap_or(Behavior::Status(200))
        {
            Behavior::Sequence(seq) => Behavior::Status(seq[(call - 1).min(seq.len() - 1)]),
            other => other,
        }
    };
    match behavior {
        Behavior::Status(code) => {
            (StatusCode::from_u16(code).unwrap(), "receiver says hi").into_response()
        }
        Behavior::RetryAfter(code, secs) => (
            StatusCode::from_u16(code).unwrap(),
            [("retry-after", secs.to_string())],
            "slow down",
        )
            .into_response(),
        Behavior::Hang(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
        Behavior::Sequence(_) => unreachable!(),
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let app = Router::new()
            .route("/{path}", post(handle))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, shared }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    pub fn set(&self, path: &str, b: Behavior) {
        self.shared
            .lock()
            .unwrap()
            .behavior
            .insert(path.to_owned(), b);
    }

    pub fn received(&self, path: &str) -> Vec<Received> {
        self.shared
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` got at least `n` requests.
    pub async fn wait_for(&self, path: &str, n: usize, within: Duration) -> Vec<Received> {
        crate::helpers::eventually_within(within, async || self.received(path).len() >= n).await;
        self.received(path)
    }
}
