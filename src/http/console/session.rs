//! Console sign-in: a session cookie signed with a key derived from the
//! admin key (so it is valid on every replica, and changing the admin key
//! ends every session), a CSRF token derived from the session, revocation on
//! sign-out, and a per-address limit on sign-in attempts.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::http::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "zen_console";
/// Sign-in attempts one address may make per [`ATTEMPT_WINDOW`].
pub const MAX_ATTEMPTS: u32 = 10;
const ATTEMPT_WINDOW: Duration = Duration::from_secs(60);

/// When the cookie gets `Secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecureCookie {
    /// `PUBLIC_BASE_URL` is https.
    Always,
    /// Behind a proxy that says so in `X-Forwarded-Proto`.
    WhenForwardedHttps,
    /// Plain HTTP (a browser would not send a `Secure` cookie back).
    Never,
}

/// The console's sign-in state, shared by its handlers.
pub struct Console {
    /// `None`: no admin key, no one signs in.
    key: Option<[u8; 32]>,
    admin_key: Option<Arc<str>>,
    ttl: Duration,
    secure: SecureCookie,
    /// Nonces of sessions signed out before they expired.
    revoked: moka::sync::Cache<String, ()>,
    /// Sign-in attempts per address in the current window (bounded).
    attempts: moka::sync::Cache<IpAddr, Arc<AtomicU32>>,
    trust_forwarded: bool,
    /// The previous overview sample, for rates.
    pub(super) last_sample: std::sync::Mutex<Option<super::overview::Sample>>,
}

/// A signed-in operator's session.
#[derive(Debug, Clone)]
pub struct Session {
    nonce: String,
    /// The token every console form carries.
    pub csrf: String,
}

type HmacSha256 = Hmac<Sha256>;

impl Console {
    pub fn new(
        admin_key: Option<Arc<str>>,
        ttl: Duration,
        public_base_url: Option<&str>,
        trust_forwarded: bool,
    ) -> Console {
        let key = admin_key.as_deref().map(|k| {
            let mut mac = HmacSha256::new_from_slice(k.as_bytes()).expect("any key length");
            mac.update(b"zen-gateway console session v1");
            mac.finalize().into_bytes().into()
        });
        let secure = match public_base_url {
            Some(u) if u.starts_with("https://") => SecureCookie::Always,
            _ if trust_forwarded => SecureCookie::WhenForwardedHttps,
            _ => SecureCookie::Never,
        };
        Console {
            key,
            admin_key,
            ttl,
            secure,
            revoked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            attempts: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ATTEMPT_WINDOW)
                .build(),
            trust_forwarded,
            last_sample: std::sync::Mutex::new(None),
        }
    }

    fn mac(&self, key: &[u8; 32], parts: &[&str]) -> String {
        let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
        for p in parts {
            mac.update(p.as_bytes());
            mac.update(b"\n");
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// Counts one sign-in attempt from `addr`; false past the limit.
    pub fn allow_attempt(&self, addr: IpAddr) -> bool {
        let n = self
            .attempts
            .get_with(addr, || Arc::new(AtomicU32::new(0)))
            .fetch_add(1, Ordering::Relaxed);
        n < MAX_ATTEMPTS
    }

    /// Whether `given` is the admin key (in constant time).
    pub fn key_matches(&self, given: &str) -> bool {
        self.admin_key
            .as_deref()
            .is_some_and(|k| bool::from(given.trim().as_bytes().ct_eq(k.as_bytes())))
    }

    /// A new session and its `Set-Cookie` value; `None` without an admin key.
    pub fn sign_in(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let key = self.key.as_ref()?;
        let expires = Utc::now().timestamp() + self.ttl.as_secs() as i64;
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let expires = expires.to_string();
        let mac = self.mac(key, &["session", &expires, &nonce]);
        let value = format!(
            "{COOKIE}={expires}.{nonce}.{mac}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.ttl.as_secs(),
            if self.is_secure(headers) {
                "; Secure"
            } else {
                ""
            }
        );
        HeaderValue::from_str(&value).ok()
    }

    /// The `Set-Cookie` value that clears the cookie, after revoking it.
    pub fn sign_out(&self, session: &Session, headers: &HeaderMap) -> HeaderValue {
        self.revoked.insert(session.nonce.clone(), ());
        let value = format!(
            "{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if self.is_secure(headers) {
                "; Secure"
            } else {
                ""
            }
        );
        HeaderValue::from_str(&value).expect("ASCII")
    }

    fn is_secure(&self, headers: &HeaderMap) -> bool {
        match self.secure {
            SecureCookie::Always => true,
            SecureCookie::Never => false,
            SecureCookie::WhenForwardedHttps => headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').next().map(str::trim) == Some("https")),
        }
    }

    /// The session a request's cookie proves, if it is valid, unexpired and
    /// not signed out.
    pub fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let key = self.key.as_ref()?;
        let value = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .next()?;
        let mut parts = value.splitn(3, '.');
        let (expires, nonce, mac) = (parts.next()?, parts.next()?, parts.next()?);
        let expected = self.mac(key, &["session", expires, nonce]);
        if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
            return None;
        }
        if expires.parse::<i64>().ok()? <= Utc::now().timestamp() {
            return None;
        }
        if self.revoked.contains_key(nonce) {
            return None;
        }
        Some(Session {
            csrf: self.mac(key, &["csrf", nonce])[..32].to_owned(),
            nonce: nonce.to_owned(),
        })
    }

    /// The client's address: the peer, or the first `X-Forwarded-For` hop
    /// behind a trusted proxy.
    pub fn client_addr(&self, parts_headers: &HeaderMap, peer: Option<SocketAddr>) -> IpAddr {
        let forwarded = parts_headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
            .filter(|_| self.trust_forwarded);
        forwarded.unwrap_or_else(|| peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip()))
    }
}

impl Session {
    /// Whether a form's token is this session's.
    pub fn csrf_matches(&self, given: &str) -> bool {
        bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// A console request from a signed-in operator; anyone else is sent to the
/// sign-in page (a page) or refused (a fragment or a form).
pub struct Operator(pub Session);

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match state.console.session(&parts.headers) {
            Some(s) => Ok(Operator(s)),
            None if parts.method == axum::http::Method::GET
                && !parts.uri.path().ends_with("/live") =>
            {
                let next = parts
                    .uri
                    .path_and_query()
                    .map_or("/console", |p| p.as_str());
                let to = format!(
                    "/console/login?next={}",
                    url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
                );
                Err(Redirect::to(&to).into_response())
            }
            None => Err(super::ConsoleError::SignedOut.into_response()),
        }
    }
}

/// The peer's address, when the server recorded it.
pub fn peer(parts: &Parts) -> Option<SocketAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}
