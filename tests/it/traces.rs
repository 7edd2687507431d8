//! Traces: a delivery continues the trace of the BSP's request, on every
//! inbox and forwarding queue; with `OTEL_EXPORTER_OTLP_*` set, the real
//! binary exports the webhook's spans to a local OTLP receiver, over
//! HTTP/protobuf and over gRPC.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::response::IntoResponse;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde_json::json;

use crate::helpers::*;
use crate::receiver::{Behavior, Receiver};

const BSP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const BSP_SPAN: &str = "00f067aa0ba902b7";

fn bsp_traceparent() -> String {
    format!("00-{BSP_TRACE}-{BSP_SPAN}-01")
}

/// `(trace id, span id)` of a well-formed `traceparent`.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent:?}");
    assert_eq!(parts[0], "00", "{traceparent:?}");
    assert_eq!(parts[1].len(), 32, "{traceparent:?}");
    assert_eq!(parts[2].len(), 16, "{traceparent:?}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// Posts a Datagen status for `wamid`, with the BSP's `traceparent` when
/// given.
async fn post_traced(client: &reqwest::Client, base: &str, wamid: &str, traceparent: Option<&str>) {
    let mut req = client
        .post(format!("{base}/webhook/datagen"))
        .header("content-type", "application/json")
        .body(datagen_status(wamid, "sent", 1_749_540_000_000));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// Each attempt continues the BSP's trace with a span id of its own; a
/// webhook that came without one gets a trace of its own, the same on every
/// attempt. (Export off: nothing but the header.)
async fn deliveries_continue_the_inbound_trace(app: TestApp) {
    let rx = Receiver::start().await;
    rx.set("traced", Behavior::Sequence(vec![500, 200]));
    rx.set("untraced", Behavior::Sequence(vec![500, 200]));
    for (path, number) in [("traced", "918071234567"), ("untraced", "918071234568")] {
        app.create_webhook(json!({
            "project_owner_id": "o", "webhook_url": rx.url(path),
            "topics": ["*"], "business_numbers": [number],
        }))
        .await;
    }
    post_traced(
        &app.client,
        &app.url(""),
        "wamid.trace-1",
        Some(&bsp_traceparent()),
    )
    .await;
    let untraced = datagen_status("wamid.trace-2", "sent", 1_749_540_000_000)
        .replace("918071234567", "918071234568");
    // A malformed header is not a trace: the webhook starts its own.
    let r = app
        .client
        .post(app.url("/webhook/datagen"))
        .header("content-type", "application/json")
        .header("traceparent", "00-nope")
        .body(untraced)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let got = rx.wait_for("traced", 2, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 2, "a failed attempt, then a delivered one");
    let attempts: Vec<(String, String)> =
        got.iter().map(|r| ids(&r.header("traceparent"))).collect();
    for (trace, span) in &attempts {
        assert_eq!(trace, BSP_TRACE, "the delivery continues the BSP's trace");
        assert_ne!(span, BSP_SPAN, "with a span of its own");
    }
    assert_ne!(attempts[0].1, attempts[1].1, "a span per attempt");

    let got = rx.wait_for("untraced", 2, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 2);
    let (first, second) = (
        ids(&got[0].header("traceparent")),
        ids(&got[1].header("traceparent")),
    );
    assert_ne!(first.0, BSP_TRACE);
    assert_eq!(first.0, second.0, "one trace for every attempt");
    assert_ne!(first.1, second.1);
    app.stop().await;
}

#[tokio::test]
async fn deliveries_continue_the_inbound_trace_embedded() {
    let app = spawn_app_with(|s| {
        s.forward.allow_private = true;
        s.forward.retry_delays = "100".parse().unwrap();
    })
    .await;
    deliveries_continue_the_inbound_trace(app).await;
}

/// Through the broker: the inbox message carries the trace in its
/// `traceparent` header, the forwarding job in its body.
#[tokio::test]
async fn deliveries_continue_the_inbound_trace_rabbitmq() {
    let Some(app) = spawn_app_on_rabbitmq(|s| {
        s.forward.allow_private = true;
        s.forward.retry_delays = "100".parse().unwrap();
    })
    .await
    else {
        return;
    };
    deliveries_continue_the_inbound_trace(app).await;
}

// --- Export -----------------------------------------------------------------

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    service: String,
    /// The `uri` attribute (request spans).
    uri: Option<String>,
}

type Spans = Arc<Mutex<Vec<ReceivedSpan>>>;

fn keep(spans: &Spans, request: ExportTraceServiceRequest) {
    let mut out = spans.lock().unwrap();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| match &v.value {
                Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                    Some(s.clone())
                }
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                let uri = s
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "uri")
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(
                            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                                s,
                            ),
                        ) => Some(s.clone()),
                        _ => None,
                    });
                out.push(ReceivedSpan {
                    uri,
                    name: s.name,
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_span_id: hex::encode(&s.parent_span_id),
                    service: service.clone(),
                });
            }
        }
    }
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body.
async fn http_receiver(spans: Spans) -> SocketAddr {
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let spans = spans.clone();
            async move {
                let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                    return axum::http::StatusCode::BAD_REQUEST.into_response();
                };
                keep(&spans, req);
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

struct GrpcCollector(Spans);

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self, request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver: the collector's generated service over h2c.
async fn grpc_receiver(spans: Spans) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(GrpcCollector(spans));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let svc = hyper_util::service::TowerToHyperService::new(service);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(io, svc)
                .await;
            });
        }
    });
    addr
}

/// The real binary with export on: the delivery continues the BSP's trace,
/// and the receiver gets the webhook's spans, one trace from the request
/// to the delivery attempt.
async fn spans_reach_an_otlp_receiver(protocol: &str, receiver: SocketAddr, spans: Spans) {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    let port = free_port();
    let log = dir.path().join("gateway.log");
    let endpoint = format!("http://{receiver}");
    let mut child = spawn_gateway_process(
        dir.path(),
        port,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("FORWARD_ALLOW_PRIVATE", "true"),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info,zen_gateway=debug"),
        ],
        Some(&log),
    );
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ok(&client, &format!("{base}/health")).await;
    create_webhook_at(
        &client,
        &base,
        json!({
            "project_owner_id": "o", "webhook_url": rx.url("otlp"),
            "topics": ["*"], "business_numbers": ["918071234567"],
        }),
    )
    .await;
    // Probes and scrapes, which are not traced.
    for path in ["/", "/ready", "/metrics"] {
        client.get(format!("{base}{path}")).send().await.unwrap();
    }
    post_traced(&client, &base, "wamid.otlp-1", Some(&bsp_traceparent())).await;
    let got = rx.wait_for("otlp", 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1);
    let (trace, delivery_span) = ids(&got[0].header("traceparent"));
    assert_eq!(trace, BSP_TRACE);

    let complete = eventually_within(Duration::from_secs(20), async || {
        let spans = spans.lock().unwrap();
        ["request", "process", "store", "deliver"]
            .iter()
            .all(|name| {
                spans
                    .iter()
                    .any(|s| s.trace_id == BSP_TRACE && s.name == *name)
            })
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let probes: Vec<ReceivedSpan> = spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| {
            s.uri
                .as_deref()
                .is_some_and(|u| ["/", "/health", "/ready", "/metrics"].contains(&u))
        })
        .cloned()
        .collect();
    assert!(probes.is_empty(), "{protocol}: probes traced: {probes:#?}");
    let spans: Vec<ReceivedSpan> = spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id == BSP_TRACE)
        .cloned()
        .collect();
    assert!(complete, "{protocol}: {spans:#?}");
    let named = |name: &str| spans.iter().find(|s| s.name == name).unwrap();
    let (request, process, store, deliver) = (
        named("request"),
        named("process"),
        named("store"),
        named("deliver"),
    );
    // One chain: the BSP's span → request → process → store, and
    // process → deliver, whose id the endpoint got.
    assert_eq!(request.parent_span_id, BSP_SPAN);
    assert_eq!(process.parent_span_id, request.span_id);
    assert_eq!(store.parent_span_id, process.span_id);
    assert_eq!(deliver.parent_span_id, process.span_id);
    assert_eq!(deliver.span_id, delivery_span);
    assert_eq!(request.service, "zen-gateway");
    // The attribute the probes are told apart by is there.
    assert!(
        request
            .uri
            .as_deref()
            .is_some_and(|u| u.starts_with("/webhook/")),
        "{request:?}"
    );
    // Log lines in the webhook's spans carry its trace id.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().any(|l| l.contains("webhook accepted")
            && l.contains(&format!("\"trace_id\":\"{BSP_TRACE}\""))),
        "no log line names the trace:\n{text}"
    );
}

#[tokio::test]
async fn spans_reach_an_otlp_receiver_over_http() {
    let spans = Spans::default();
    let addr = http_receiver(spans.clone()).await;
    spans_reach_an_otlp_receiver("http/protobuf", addr, spans).await;
}

#[tokio::test]
async fn spans_reach_an_otlp_receiver_over_grpc() {
    let spans = Spans::default();
    let addr = grpc_receiver(spans.clone()).await;
    spans_reach_an_otlp_receiver("grpc", addr, spans).await;
}

/// An OTLP protocol the gateway cannot speak is refused at start, by name.
#[tokio::test]
async fn an_unknown_otlp_protocol_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_command(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ],
        &["serve"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{err}");
}
