//! Optional authentication of inbound webhooks, per provider, off by default
//! (BSPs mostly send none; PROVIDERS.md). Two checks, each active when
//! configured, both must pass when both are:
//! - a shared token in `X-Webhook-Token` or the `?token=` query parameter;
//! - an HMAC-SHA256 of the raw body, hex, in the provider's signature header
//!   (AiSensy `X-AiSensy-Signature`, Meta `X-Hub-Signature-256: sha256=…`,
//!   others `X-Webhook-Signature`).
//!
//! Comparisons are constant-time. A failure is a 401 and nothing is stored.

use std::collections::HashMap;

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::model::Bsp;
use crate::providers::Providers;

/// What one provider's webhooks must present.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct InboundCredentials {
    pub token: Option<Secret>,
    pub secret: Option<Secret>,
    /// The `hub.verify_token` of the provider's subscription handshake.
    pub verify_token: Option<Secret>,
}

impl InboundCredentials {
    pub fn is_configured(&self) -> bool {
        self.token.is_some() || self.secret.is_some() || self.verify_token.is_some()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthFailure {
    #[error("missing or wrong webhook token")]
    Token,
    #[error("missing or invalid webhook signature")]
    Signature,
}

#[derive(Clone, Default)]
pub struct InboundAuth {
    by_bsp: HashMap<Bsp, InboundCredentials>,
    providers: Providers,
}

pub const TOKEN_HEADER: &str = "x-webhook-token";

/// Hex HMAC-SHA256 of `body` with `secret`'s bytes.
pub fn hmac_sha256_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn signature_matches(secret: &[u8], body: &[u8], signature: &[u8]) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(signature).is_ok()
}

impl InboundAuth {
    pub fn new(
        by_bsp: impl IntoIterator<Item = (Bsp, InboundCredentials)>,
        providers: Providers,
    ) -> Self {
        InboundAuth {
            by_bsp: by_bsp.into_iter().collect(),
            providers,
        }
    }

    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    /// The `hub.verify_token` configured for `bsp`'s subscription handshake.
    pub fn verify_token(&self, bsp: Bsp) -> Option<&str> {
        self.by_bsp
            .get(&bsp)?
            .verify_token
            .as_ref()
            .map(Secret::expose)
    }

    /// Checks a webhook against `bsp`'s credentials, if it has any. `query`
    /// is the raw query string; its `token` is read only when a token is
    /// configured and the header does not carry it.
    pub fn verify(
        &self,
        bsp: Bsp,
        headers: &HeaderMap,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<(), AuthFailure> {
        let Some(creds) = self.by_bsp.get(&bsp) else {
            return Ok(());
        };
        if let Some(expected) = creds.token.as_ref().map(Secret::expose) {
            let given = match headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) {
                Some(header) => std::borrow::Cow::Borrowed(header),
                None => query
                    .and_then(|q| {
                        url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token")
                    })
                    .map(|(_, v)| v)
                    .unwrap_or_default(),
            };
            if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) || given.is_empty() {
                return Err(AuthFailure::Token);
            }
        }
        if let Some(secret) = creds.secret.as_ref().map(Secret::expose) {
            let provider = self.providers.get(bsp).ok_or(AuthFailure::Signature)?;
            let header = provider.signature_header();
            let signature = headers
                .get(header.name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .and_then(|v| v.strip_prefix(header.prefix))
                .and_then(|hex_sig| hex::decode(hex_sig).ok())
                .ok_or(AuthFailure::Signature)?;
            let raw_ok = signature_matches(secret.as_bytes(), body, &signature);
            // A sender that signs its parsed object: accept the compact
            // re-serialisation too (key order is preserved).
            let compact_ok = || {
                serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| serde_json::to_vec(&v).ok())
                    .is_some_and(|compact| {
                        signature_matches(secret.as_bytes(), &compact, &signature)
                    })
            };
            if !(raw_ok || (provider.signs_compact_json() && compact_ok())) {
                return Err(AuthFailure::Signature);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth(bsp: Bsp, token: Option<&str>, secret: Option<&str>) -> InboundAuth {
        InboundAuth::new(
            [(
                bsp,
                InboundCredentials {
                    token: token.map(Into::into),
                    secret: secret.map(Into::into),
                    verify_token: None,
                },
            )],
            Providers::new(),
        )
    }

    #[test]
    fn unconfigured_providers_pass() {
        let a = auth(Bsp::Karix, Some("t"), None);
        assert_eq!(
            a.verify(Bsp::Datagen, &HeaderMap::new(), None, b"{}"),
            Ok(())
        );
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query() {
        let a = auth(Bsp::Datagen, Some("s3cret"), None);
        let mut h = HeaderMap::new();
        assert_eq!(
            a.verify(Bsp::Datagen, &h, None, b"{}"),
            Err(AuthFailure::Token)
        );
        assert_eq!(
            a.verify(Bsp::Datagen, &h, Some("a=1&token=nope"), b"{}"),
            Err(AuthFailure::Token)
        );
        assert_eq!(
            a.verify(Bsp::Datagen, &h, Some("token=s3cret"), b"{}"),
            Ok(())
        );
        h.insert(TOKEN_HEADER, HeaderValue::from_static("s3cret"));
        assert_eq!(a.verify(Bsp::Datagen, &h, None, b"{}"), Ok(()));
    }

    #[test]
    fn meta_signatures_carry_the_sha256_prefix() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let a = auth(Bsp::Meta, None, Some("app-secret"));
        let mut h = HeaderMap::new();
        assert_eq!(
            a.verify(Bsp::Meta, &h, None, body),
            Err(AuthFailure::Signature)
        );
        let sig = format!("sha256={}", hmac_sha256_hex(b"app-secret", body));
        h.insert("x-hub-signature-256", HeaderValue::from_str(&sig).unwrap());
        assert_eq!(a.verify(Bsp::Meta, &h, None, body), Ok(()));
        assert_eq!(
            a.verify(Bsp::Meta, &h, None, b"{\"tampered\":1}"),
            Err(AuthFailure::Signature)
        );
    }

    #[test]
    fn aisensy_signatures_over_the_compact_body_are_accepted() {
        let body = b"{ \"topic\" : \"message.created\",\n  \"id\": \"1\" }";
        let compact = br#"{"topic":"message.created","id":"1"}"#;
        let a = auth(Bsp::Aisensy, None, Some("k"));
        let mut h = HeaderMap::new();
        h.insert(
            "x-aisensy-signature",
            HeaderValue::from_str(&hmac_sha256_hex(b"k", compact)).unwrap(),
        );
        assert_eq!(a.verify(Bsp::Aisensy, &h, None, body), Ok(()));
        h.insert("x-aisensy-signature", HeaderValue::from_static("00ff"));
        assert_eq!(
            a.verify(Bsp::Aisensy, &h, None, body),
            Err(AuthFailure::Signature)
        );
    }
}
