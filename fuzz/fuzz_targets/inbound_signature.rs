//! Inbound signature checking must never panic, and must never accept a
//! signature it did not compute for the body.
#![no_main]

use axum::http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use zen_gateway::inbound_auth::{InboundAuth, InboundCredentials, hmac_sha256_hex};
use zen_gateway::model::Bsp;
use zen_gateway::providers::Providers;

fuzz_target!(|data: &[u8]| {
    // Split the input: first byte picks the provider, then signature | body.
    let Some((&pick, rest)) = data.split_first() else { return };
    let bsp = Bsp::ALL[pick as usize % Bsp::ALL.len()];
    let split = rest.iter().position(|&b| b == b'|').unwrap_or(rest.len());
    let (signature, body) = (&rest[..split], rest.get(split + 1..).unwrap_or(&[]));
    let auth = InboundAuth::new(
        [(
            bsp,
            InboundCredentials {
                token: Some("tok".into()),
                secret: Some("sec".into()),
                verify_token: None,
            },
        )],
        Providers::new(),
    )
    .with_public_url(Some("https://gw.example.com".into()), false);
    let header = Providers::new().get(bsp).unwrap().signature_header();
    let mut headers = HeaderMap::new();
    headers.insert("x-webhook-token", HeaderValue::from_static("tok"));
    if let Ok(v) = HeaderValue::from_bytes(signature) {
        headers.insert(header.name, v);
    }
    let verdict = auth.verify(bsp, &headers, "/webhook", None, body);
    let expected = format!("{}{}", header.prefix, hmac_sha256_hex(b"sec", body));
    // AiSensy also accepts its compact re-serialisation; Twilio signs the URL.
    if verdict.is_ok() && bsp != Bsp::Aisensy && bsp != Bsp::Twilio {
        assert_eq!(signature.trim_ascii(), expected.as_bytes());
    }
});
