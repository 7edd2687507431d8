//! The HTTP server's own limits: idle connections (HTTP/1 or HTTP/2) are
//! closed, and at most MAX_CONNECTIONS are open at once.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Reads until the server closes the connection; the time it took.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, read_all)
        .await
        .ok()
        .map(|_| start.elapsed())
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let app = spawn_app_with(|s| {
        s.http.idle_timeout = std::time::Duration::from_secs(1);
        s.http.header_read_timeout = std::time::Duration::from_secs(30);
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    // HTTP/2 with prior knowledge: the preface and an empty SETTINGS frame,
    // then nothing.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let took = closed_within(&mut stream, Duration::from_secs(10))
        .await
        .expect("an idle HTTP/2 connection must be closed");
    assert!(took >= Duration::from_millis(500), "{took:?}");
    app.stop().await;
}

#[tokio::test]
async fn at_the_connection_cap_new_clients_wait_for_a_free_slot() {
    let app = spawn_app_with(|s| {
        s.http.max_connections = 2;
        s.http.header_read_timeout = std::time::Duration::from_secs(30);
        s.http.idle_timeout = std::time::Duration::from_secs(30);
    })
    .await;
    let first = TcpStream::connect(app.addr).await.unwrap();
    let _second = TcpStream::connect(app.addr).await.unwrap();
    let client = reqwest::Client::new();
    let waited = client
        .get(app.url("/health"))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(waited.is_err(), "a third connection was served at the cap");
    drop(first);
    let served = client
        .get(app.url("/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    app.stop().await;
}
