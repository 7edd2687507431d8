//! Traces: the W3C trace context of every webhook, carried from the BSP's
//! request through the inbox, the processor and the store to each delivery
//! attempt; spans exported over OTLP when it is configured.
//!
//! - **Always** (a header's worth of work per webhook): an accepted webhook
//!   keeps a `traceparent` in its inbox entry (the BSP's trace when its
//!   request had one, else a new one); each forwarding job carries it, and
//!   each delivery attempt sends a `traceparent` of that trace with a span id
//!   of its own. Delivery log lines carry `trace_id`.
//! - **Export** is on when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and `OTEL_SDK_DISABLED` is
//!   not `true`); otherwise no span is built for it and nothing is sent.
//!   Then the request, `process`, `store` and `deliver` spans are real spans
//!   of the one trace; the protocol comes from `OTEL_EXPORTER_OTLP_PROTOCOL`
//!   (or `…_TRACES_PROTOCOL`): `http/protobuf` (the default) or `grpc`.
//!   Headers, timeout, sampler, service name and resource come from the
//!   standard variables, read by the OpenTelemetry SDK.
//!
//! Only `traceparent` travels with a webhook (55 bytes): `tracestate` is
//! vendor data of the BSP's tracer, not ours to keep.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header (and the AMQP header an inbox message carries it in).
pub const TRACEPARENT: &str = "traceparent";

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (OTLP configured at start).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// A W3C `traceparent` value (`00-<trace id>-<span id>-<flags>`), as an
/// inbox entry and a forwarding job carry it. Only built from a valid
/// context, so it always parses back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TraceParent(String);

impl TraceParent {
    /// A well-formed `traceparent` value, or `None`.
    pub fn parse(value: &str) -> Option<TraceParent> {
        // What this gateway writes (every inbox entry carries one) is taken
        // as it is; anything else goes through the W3C propagator.
        if is_canonical(value) {
            return Some(TraceParent(value.to_owned()));
        }
        let sc = span_context_of(value)?;
        Some(TraceParent::of(&sc))
    }

    /// The header value of a valid span context: what the W3C propagator
    /// writes (a test holds them equal), without building a `Context` and a
    /// map for it on every webhook.
    fn of(sc: &SpanContext) -> TraceParent {
        let flags = sc.trace_flags() & TraceFlags::SAMPLED;
        TraceParent(format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            flags.to_u8()
        ))
    }

    /// A new trace (this process is its root).
    pub fn root() -> TraceParent {
        let ids = RandomIdGenerator::default();
        TraceParent::of(&SpanContext::new(
            ids.new_trace_id(),
            ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ))
    }

    /// The same trace, a span id of its own: what a hop sends when no
    /// exported span stands for it.
    pub fn child(&self) -> TraceParent {
        match self.span_context() {
            Some(sc) => TraceParent::of(&SpanContext::new(
                sc.trace_id(),
                RandomIdGenerator::default().new_span_id(),
                sc.trace_flags(),
                false,
                TraceState::NONE,
            )),
            None => TraceParent::root(),
        }
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trace id, 32 hex digits (what log lines carry as `trace_id`).
    pub fn trace_id(&self) -> &str {
        self.0.get(3..35).unwrap_or("")
    }

    fn span_context(&self) -> Option<SpanContext> {
        span_context_of(&self.0)
    }

    /// This as the remote parent of a span.
    fn context(&self) -> Context {
        self.span_context()
            .map(|sc| Context::new().with_remote_span_context(sc))
            .unwrap_or_default()
    }
}

impl TryFrom<String> for TraceParent {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        TraceParent::parse(&s).ok_or_else(|| format!("not a W3C traceparent: {s:?}"))
    }
}

impl From<TraceParent> for String {
    fn from(t: TraceParent) -> String {
        t.0
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads the `traceparent` of a document another publisher may have
/// written: one that is not well-formed is dropped, never an error (a job
/// is not poison for its trace).
pub fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<TraceParent>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value
        .as_ref()
        .and_then(|v| v.as_str())
        .and_then(TraceParent::parse))
}

fn span_context_of(value: &str) -> Option<SpanContext> {
    let carrier = OneHeader(value);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// `00-<32 hex>-<16 hex>-<00|01>`, lower-case, neither id all zeros: the form
/// [`TraceParent::of`] writes, which the propagator reads back unchanged.
fn is_canonical(value: &str) -> bool {
    let b = value.as_bytes();
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |s: &[u8]| s.iter().any(|&c| c != b'0');
    b.len() == 55
        && b.starts_with(b"00-")
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(&b[3..35])
        && nonzero(&b[3..35])
        && hex(&b[36..52])
        && nonzero(&b[36..52])
        && matches!(&b[53..], b"00" | b"01")
}

/// A carrier holding one `traceparent`.
struct OneHeader<'a>(&'a str);

impl Extractor for OneHeader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// The `traceparent` an inbound request carries, when well-formed.
pub fn inbound(headers: &axum::http::HeaderMap) -> Option<TraceParent> {
    let value = headers.get(TRACEPARENT)?.to_str().ok()?;
    TraceParent::parse(value)
}

/// Makes `span` continue `parent` (exporting only; otherwise spans are not
/// traced and this is a no-op).
pub fn continue_trace(span: &tracing::Span, parent: Option<&TraceParent>) {
    if let (true, Some(parent)) = (exporting(), parent) {
        let _ = span.set_parent(parent.context());
    }
}

/// Makes a request's span a child of the caller's, when its request
/// carried a `traceparent` (exporting only: the header is not even read
/// otherwise).
pub fn continue_inbound(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if exporting() {
        continue_trace(span, inbound(headers).as_ref());
    }
}

/// What a hop carries on, or sends, for `span`: with export, the span's own
/// context (so the next hop is its child); without, a child of `parent`, or
/// a new trace.
pub fn carried(span: &tracing::Span, parent: Option<&TraceParent>) -> TraceParent {
    if exporting() {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            return TraceParent::of(&sc);
        }
    }
    parent.map_or_else(TraceParent::root, TraceParent::child)
}

/// Why traces could not be set up (the gateway refuses to start).
#[derive(Debug, thiserror::Error)]
pub enum TraceSetupError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL {0:?} is not supported: use http/protobuf or grpc")]
    Protocol(String),
    #[error(
        "OTEL_EXPORTER_OTLP_ENDPOINT is set, but this zen-gateway was built without OTLP export: \
         build it with `--features otlp` (or `full`, as the Docker image is)"
    )]
    NotBuilt,
    #[cfg(feature = "otlp")]
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The OTLP transport the environment asks for, when export is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    HttpProtobuf,
    Grpc,
}

/// Reads the standard variables: `None` when export is off.
pub fn transport_from_env(
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<Transport>, TraceSetupError> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
        && set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
    {
        return Ok(None);
    }
    let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".into());
    match protocol.trim() {
        "http/protobuf" => Ok(Some(Transport::HttpProtobuf)),
        "grpc" => Ok(Some(Transport::Grpc)),
        other => Err(TraceSetupError::Protocol(other.to_owned())),
    }
}

/// The exporting provider and its tracer. Dropping the provider's last
/// handle flushes what is buffered (see [`super::LogGuard`]).
pub struct Export {
    pub provider: SdkTracerProvider,
    pub tracer: SdkTracer,
}

/// Builds the OTLP exporter the environment asks for (`None`: export off).
/// gRPC needs a Tokio runtime entered: its channel runs on it.
pub fn export_from_env() -> Result<Option<Export>, TraceSetupError> {
    let Some(transport) = transport_from_env(|k| std::env::var(k).ok())? else {
        return Ok(None);
    };
    build_export(transport)
}

#[cfg(not(feature = "otlp"))]
fn build_export(_: Transport) -> Result<Option<Export>, TraceSetupError> {
    Err(TraceSetupError::NotBuilt)
}

#[cfg(feature = "otlp")]
fn build_export(transport: Transport) -> Result<Option<Export>, TraceSetupError> {
    use opentelemetry::trace::TracerProvider;
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    let exporter = match transport {
        Transport::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()?,
        Transport::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_protocol(opentelemetry_otlp::Protocol::Grpc)
            .build()?,
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("zen-gateway");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("zen-gateway");
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Some(Export { provider, tracer }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A build without the exporter refuses an endpoint rather than
    /// running without the traces it asks for.
    #[cfg(not(feature = "otlp"))]
    #[test]
    fn without_the_exporter_built_an_endpoint_is_refused() {
        let refused = build_export(Transport::HttpProtobuf).err().unwrap();
        assert!(matches!(refused, TraceSetupError::NotBuilt));
        assert!(refused.to_string().contains("--features otlp"));
    }

    #[test]
    fn a_traceparent_is_kept_only_when_well_formed() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(tp).unwrap();
        assert_eq!(parsed.as_str(), tp);
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad:?}");
        }
        assert!(serde_json::from_str::<TraceParent>("\"nope\"").is_err());
        let back: TraceParent = serde_json::from_str(&format!("\"{tp}\"")).unwrap();
        assert_eq!(back, parsed);
    }

    /// The shortcut for the canonical form agrees with the propagator on
    /// every value it takes, and leaves every other value to it.
    #[test]
    fn the_canonical_shortcut_agrees_with_the_propagator() {
        let propagated = |v: &str| span_context_of(v).map(|sc| TraceParent::of(&sc));
        let mut values: Vec<String> = (0..200)
            .map(|i| {
                let tp = TraceParent::root().child();
                let flags = if i % 2 == 0 { "00" } else { "01" };
                format!("{}{flags}", &tp.as_str()[..53])
            })
            .collect();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        values.extend(
            [
                tp,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff",
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ]
            .map(String::from),
        );
        for v in &values {
            assert_eq!(TraceParent::parse(v), propagated(v), "{v}");
            if is_canonical(v) {
                assert_eq!(TraceParent::parse(v).unwrap().as_str(), v);
            }
        }
        assert!(is_canonical(tp));
        assert_eq!(values.iter().filter(|v| is_canonical(v)).count(), 202);
    }

    #[test]
    fn the_header_is_written_as_the_w3c_propagator_writes_it() {
        for tp in [TraceParent::root(), TraceParent::root().child()] {
            let sc = tp.span_context().unwrap();
            for flags in [TraceFlags::SAMPLED, TraceFlags::NOT_SAMPLED] {
                let sc =
                    SpanContext::new(sc.trace_id(), sc.span_id(), flags, false, TraceState::NONE);
                let mut out = HashMap::new();
                let cx = Context::new().with_remote_span_context(sc.clone());
                TraceContextPropagator::new().inject_context(&cx, &mut out);
                assert_eq!(TraceParent::of(&sc).as_str(), out[TRACEPARENT]);
            }
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_takes_a_span_of_its_own() {
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child.as_str(), parent.as_str());
        assert!(child.as_str().ends_with("-01"));
        let root = TraceParent::root();
        assert_ne!(root.trace_id(), parent.trace_id());
        assert!(TraceParent::parse(root.as_str()).is_some());
    }

    #[test]
    fn export_is_on_only_with_an_endpoint_and_a_known_protocol() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(transport_from_env(env(&[])).unwrap(), None);
        assert_eq!(
            transport_from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])).unwrap(),
            Some(Transport::HttpProtobuf)
        );
        assert_eq!(
            transport_from_env(env(&[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]))
            .unwrap(),
            Some(Transport::Grpc)
        );
        assert_eq!(
            transport_from_env(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ]))
            .unwrap(),
            None
        );
        assert!(matches!(
            transport_from_env(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ])),
            Err(TraceSetupError::Protocol(_))
        ));
    }
}
