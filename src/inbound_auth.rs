//! Authentication of inbound webhooks, per provider, and the trust of each
//! provider's routes (docs/SECURITY.md). Two checks, each active when
//! configured, both must pass when both are:
//! - a shared token in `X-Webhook-Token` or the `?token=` query parameter;
//! - an HMAC-SHA256 of the raw body, hex, in the provider's signature header
//!   (AiSensy `X-AiSensy-Signature`, Meta `X-Hub-Signature-256: sha256=…`,
//!   others `X-Webhook-Signature`; Twilio's HMAC-SHA1 of its URL and form).
//!
//! A route whose provider has neither is *open* while no route is verified,
//! or when named in `INBOUND_OPEN_ROUTES`; otherwise it is *refused*
//! ([`crate::config::route_trust`]). Comparisons are constant-time. A
//! failure is a 401 and nothing is stored.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::http::HeaderMap;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub use crate::config::InboundCredentials;
use crate::config::{RouteTrust, Secret, TrustReport, route_trust};
use crate::model::Bsp;
use crate::providers::Providers;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthFailure {
    #[error("missing or wrong webhook token")]
    Token,
    #[error("missing or invalid webhook signature")]
    Signature,
    /// The route has no credentials while others are verified, and is not
    /// named open.
    #[error("this route accepts only verified webhooks")]
    RouteRefused,
}

#[derive(Clone)]
pub struct InboundAuth {
    by_bsp: HashMap<Bsp, InboundCredentials>,
    /// Each provider's route trust, computed once.
    trust: HashMap<Bsp, RouteTrust>,
    report: TrustReport,
    providers: Providers,
    public_base_url: Option<String>,
    trust_forwarded: bool,
}

/// The most secrets one provider's list is tried with.
const MAX_SECRETS: usize = 16;

/// What Twilio signs: the URL, then each parameter's name and value, sorted
/// by name.
pub fn twilio_signed_data(url: &str, body: &[u8]) -> String {
    let mut params: Vec<(String, String)> = url::form_urlencoded::parse(body)
        .take(1024)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    params.sort();
    let mut out = url.to_owned();
    for (k, v) in params {
        out.push_str(&k);
        out.push_str(&v);
    }
    out
}

/// The spellings of one URL a signer may have used: as given, and with the
/// scheme's default port added or removed.
fn twilio_url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    let Ok(parsed) = url::Url::parse(url) else {
        return out;
    };
    let default = match parsed.scheme() {
        "https" => 443,
        "http" => 80,
        _ => return out,
    };
    let Some(host) = parsed.host_str() else {
        return out;
    };
    let authority_end = url
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| url[start..].find(['/', '?']).map(|e| start + e))
        .unwrap_or(url.len());
    let rest = &url[authority_end..];
    let scheme = parsed.scheme();
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let with_default = format!("{scheme}://{host}:{default}{rest}");
    let without = format!("{scheme}://{host}{rest}");
    if url[..authority_end].ends_with(&format!(":{default}")) {
        out.push(without);
    } else if parsed.port().is_none() {
        out.push(with_default);
    }
    out
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
    /// Credentials by provider; every route without any is open when none
    /// has credentials, refused otherwise (see [`InboundAuth::with_open_routes`]).
    pub fn new(
        by_bsp: impl IntoIterator<Item = (Bsp, InboundCredentials)>, providers: Providers,
    ) -> Self {
        let by_bsp: HashMap<Bsp, InboundCredentials> = by_bsp.into_iter().collect();
        let mut auth = InboundAuth {
            by_bsp,
            trust: HashMap::new(),
            report: TrustReport::default(),
            providers,
            public_base_url: None,
            trust_forwarded: false,
        };
        auth = auth.with_open_routes(&BTreeSet::new());
        auth
    }

    /// Routes without credentials that stay open although others are
    /// verified (`INBOUND_OPEN_ROUTES`).
    pub fn with_open_routes(mut self, open: &BTreeSet<Bsp>) -> Self {
        let credentials: BTreeMap<Bsp, InboundCredentials> =
            self.by_bsp.iter().map(|(b, c)| (*b, c.clone())).collect();
        self.trust = Bsp::ALL
            .iter()
            .map(|b| (*b, route_trust(&credentials, open, *b)))
            .collect();
        self.report = TrustReport::of(&credentials, open);
        self
    }

    /// Each provider by the trust of its routes (`/ready`, the console).
    pub fn report(&self) -> &TrustReport {
        &self.report
    }

    /// The trust of `bsp`'s routes.
    pub fn trust(&self, bsp: Bsp) -> RouteTrust {
        self.trust.get(&bsp).copied().unwrap_or(RouteTrust::Refused)
    }

    /// Where the public URL a provider signed comes from: `base` (the
    /// gateway's public origin, `PUBLIC_BASE_URL`) when set, else the
    /// `X-Forwarded-Proto` / `X-Forwarded-Host` headers when `trust_forwarded`
    /// (`TRUST_FORWARDED_HEADERS`: only behind a proxy that sets them).
    pub fn with_public_url(mut self, base: Option<String>, trust_forwarded: bool) -> Self {
        self.public_base_url = base.map(|b| b.trim_end_matches('/').to_owned());
        self.trust_forwarded = trust_forwarded;
        self
    }

    /// The URL the provider called, as it signed it.
    fn public_url(&self, headers: &HeaderMap, path_and_query: &str) -> Option<String> {
        if let Some(base) = &self.public_base_url {
            return Some(format!("{base}{path_and_query}"));
        }
        if !self.trust_forwarded {
            return None;
        }
        let first = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let proto = first("x-forwarded-proto").unwrap_or("https");
        let host = first("x-forwarded-host").or_else(|| first("host"))?;
        Some(format!("{proto}://{host}{path_and_query}"))
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
        &self, bsp: Bsp, headers: &HeaderMap, path_and_query: &str, query: Option<&str>,
        body: &[u8],
    ) -> Result<(), AuthFailure> {
        match self.trust(bsp) {
            RouteTrust::Open => return Ok(()),
            RouteTrust::Refused => return Err(AuthFailure::RouteRefused),
            RouteTrust::Verified => {}
        }
        let Some(creds) = self.by_bsp.get(&bsp) else {
            return Err(AuthFailure::RouteRefused);
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
            // A comma-separated list: one secret per app (several Meta
            // apps may post to one gateway), each tried.
            let secrets: Vec<&[u8]> = secret
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .take(MAX_SECRETS)
                .map(str::as_bytes)
                .collect();
            let header = provider.signature_header();
            let given = headers
                .get(header.name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .and_then(|v| v.strip_prefix(header.prefix))
                .ok_or(AuthFailure::Signature)?;
            let ok = if provider.signs_public_url() {
                let url = self
                    .public_url(headers, path_and_query)
                    .ok_or(AuthFailure::Signature)?;
                let signature = base64::engine::general_purpose::STANDARD
                    .decode(given)
                    .map_err(|_| AuthFailure::Signature)?;
                // Twilio signs the URL as configured in its console, which
                // may spell the default port where the request line does not
                // (or the reverse).
                twilio_url_variants(&url).iter().any(|url| {
                    let signed = twilio_signed_data(url, body);
                    secrets.iter().any(|s| {
                        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(s)
                            .expect("HMAC takes any key length");
                        mac.update(signed.as_bytes());
                        mac.verify_slice(&signature).is_ok()
                    })
                })
            } else {
                let signature = hex::decode(given).map_err(|_| AuthFailure::Signature)?;
                // A sender that signs its parsed object: accept the compact
                // re-serialisation too (key order is preserved).
                let compact = provider
                    .signs_compact_json()
                    .then(|| {
                        serde_json::from_slice::<serde_json::Value>(body)
                            .ok()
                            .and_then(|v| serde_json::to_vec(&v).ok())
                    })
                    .flatten();
                secrets.iter().any(|s| {
                    signature_matches(s, body, &signature)
                        || compact
                            .as_deref()
                            .is_some_and(|c| signature_matches(s, c, &signature))
                })
            };
            if !ok {
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

    #[test]
    fn any_secret_of_a_list_verifies() {
        let a = auth(Bsp::Meta, None, Some("app-one, app-two"));
        let body = b"{\"entry\":[]}";
        for secret in [&b"app-one"[..], b"app-two"] {
            let mut h = HeaderMap::new();
            let sig = format!("sha256={}", hmac_sha256_hex(secret, body));
            h.insert("x-hub-signature-256", HeaderValue::from_str(&sig).unwrap());
            assert_eq!(a.verify(Bsp::Meta, &h, "/webhook/meta", None, body), Ok(()));
        }
        let mut h = HeaderMap::new();
        let sig = format!("sha256={}", hmac_sha256_hex(b"app-three", body));
        h.insert("x-hub-signature-256", HeaderValue::from_str(&sig).unwrap());
        assert_eq!(
            a.verify(Bsp::Meta, &h, "/webhook/meta", None, body),
            Err(AuthFailure::Signature)
        );
    }

    #[test]
    fn twilio_signs_the_public_url_from_config_or_trusted_headers() {
        use base64::Engine;
        let body = b"MessageSid=SM1&MessageStatus=sent";
        let sign = |url: &str| {
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"tok").unwrap();
            mac.update(format!("{url}MessageSidSM1MessageStatussent").as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        };
        let headers = |sig: String, forwarded: bool| {
            let mut h = HeaderMap::new();
            h.insert("x-twilio-signature", HeaderValue::from_str(&sig).unwrap());
            h.insert("host", HeaderValue::from_static("10.0.0.5:8080"));
            if forwarded {
                h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
                h.insert(
                    "x-forwarded-host",
                    HeaderValue::from_static("hooks.example.com"),
                );
            }
            h
        };
        let configured = auth(Bsp::Twilio, None, Some("tok"))
            .with_public_url(Some("https://gw.example.com/".into()), false);
        let h = headers(sign("https://gw.example.com/webhook/twilio"), false);
        assert_eq!(
            configured.verify(Bsp::Twilio, &h, "/webhook/twilio", None, body),
            Ok(())
        );
        // Forwarded headers are ignored unless trusted.
        let h = headers(sign("https://hooks.example.com/webhook/twilio"), true);
        let untrusting = auth(Bsp::Twilio, None, Some("tok"));
        assert_eq!(
            untrusting.verify(Bsp::Twilio, &h, "/webhook/twilio", None, body),
            Err(AuthFailure::Signature)
        );
        let trusting = untrusting.with_public_url(None, true);
        assert_eq!(
            trusting.verify(Bsp::Twilio, &h, "/webhook/twilio", None, body),
            Ok(())
        );
        // Another body under the same signature is refused.
        assert_eq!(
            trusting.verify(Bsp::Twilio, &h, "/webhook/twilio", None, b"MessageSid=SM2"),
            Err(AuthFailure::Signature)
        );
    }

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
    fn a_route_without_credentials_is_open_only_while_none_is_verified_or_when_named() {
        // Nothing configured anywhere: every route is open (legacy).
        let none = InboundAuth::new([], Providers::new());
        assert_eq!(
            none.verify(Bsp::Meta, &HeaderMap::new(), "/webhook/meta", None, b"{}"),
            Ok(())
        );
        assert_eq!(none.report().open.len(), Bsp::ALL.len());
        // One verified route refuses every unnamed one.
        let a = auth(Bsp::Karix, Some("t"), None);
        assert_eq!(
            a.verify(Bsp::Datagen, &HeaderMap::new(), "/webhook", None, b"{}"),
            Err(AuthFailure::RouteRefused)
        );
        let named = a.with_open_routes(&BTreeSet::from([Bsp::Datagen]));
        assert_eq!(
            named.verify(Bsp::Datagen, &HeaderMap::new(), "/webhook", None, b"{}"),
            Ok(())
        );
        assert_eq!(named.trust(Bsp::Karix), RouteTrust::Verified);
        assert_eq!(named.trust(Bsp::Meta), RouteTrust::Refused);
    }

    #[test]
    fn twilio_urls_are_tried_with_and_without_the_default_port() {
        assert_eq!(
            twilio_url_variants("https://gw.example.com/webhook/twilio/?a=1"),
            [
                "https://gw.example.com/webhook/twilio/?a=1",
                "https://gw.example.com:443/webhook/twilio/?a=1"
            ]
        );
        assert_eq!(
            twilio_url_variants("https://gw.example.com:443/webhook/twilio"),
            [
                "https://gw.example.com:443/webhook/twilio",
                "https://gw.example.com/webhook/twilio"
            ]
        );
        assert_eq!(
            twilio_url_variants("http://gw.example.com:8080/webhook/twilio"),
            ["http://gw.example.com:8080/webhook/twilio"]
        );
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query() {
        let a = auth(Bsp::Datagen, Some("s3cret"), None);
        let mut h = HeaderMap::new();
        assert_eq!(
            a.verify(Bsp::Datagen, &h, "/webhook", None, b"{}"),
            Err(AuthFailure::Token)
        );
        assert_eq!(
            a.verify(Bsp::Datagen, &h, "/webhook", Some("a=1&token=nope"), b"{}"),
            Err(AuthFailure::Token)
        );
        assert_eq!(
            a.verify(Bsp::Datagen, &h, "/webhook", Some("token=s3cret"), b"{}"),
            Ok(())
        );
        h.insert(TOKEN_HEADER, HeaderValue::from_static("s3cret"));
        assert_eq!(a.verify(Bsp::Datagen, &h, "/webhook", None, b"{}"), Ok(()));
    }

    #[test]
    fn meta_signatures_carry_the_sha256_prefix() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let a = auth(Bsp::Meta, None, Some("app-secret"));
        let mut h = HeaderMap::new();
        assert_eq!(
            a.verify(Bsp::Meta, &h, "/webhook", None, body),
            Err(AuthFailure::Signature)
        );
        let sig = format!("sha256={}", hmac_sha256_hex(b"app-secret", body));
        h.insert("x-hub-signature-256", HeaderValue::from_str(&sig).unwrap());
        assert_eq!(a.verify(Bsp::Meta, &h, "/webhook", None, body), Ok(()));
        assert_eq!(
            a.verify(Bsp::Meta, &h, "/webhook", None, b"{\"tampered\":1}"),
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
        assert_eq!(a.verify(Bsp::Aisensy, &h, "/webhook", None, body), Ok(()));
        h.insert("x-aisensy-signature", HeaderValue::from_static("00ff"));
        assert_eq!(
            a.verify(Bsp::Aisensy, &h, "/webhook", None, body),
            Err(AuthFailure::Signature)
        );
    }
}
