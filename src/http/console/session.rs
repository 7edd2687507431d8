//! Console sign-in: a session cookie signed with a key derived from the
//! admin key (changing the admin key ends every session), kept live in the
//! store ([`crate::sessions`]) so that a sign-out or an expiry holds across
//! restarts and on every replica, and a CSRF token derived from the session.
//! Wrong keys count against the client's failed attempts, shared with the
//! admin API ([`crate::http::attempts`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::http::AppState;
use crate::sessions::{SessionStore, id_hash};
use crate::store::StoreResult;

/// The session cookie's name.
pub const COOKIE: &str = "zen_console";

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
    /// Which sessions are live (signed in, not signed out, not expired).
    sessions: Arc<dyn SessionStore>,
    /// The overview's last look at the metrics, for rates.
    pub(super) rates: super::rates::Rates,
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
        admin_key: Option<Arc<str>>, ttl: Duration, public_base_url: Option<&str>,
        trust_forwarded: bool, sessions: Arc<dyn SessionStore>,
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
            sessions,
            rates: super::rates::Rates::default(),
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

    /// Whether `given` is the admin key (in constant time).
    pub fn key_matches(&self, given: &str) -> bool {
        self.admin_key
            .as_deref()
            .is_some_and(|k| bool::from(given.trim().as_bytes().ct_eq(k.as_bytes())))
    }

    /// Starts a session and gives its `Set-Cookie` value; `None` without an
    /// admin key.
    pub async fn sign_in(&self, headers: &HeaderMap) -> StoreResult<Option<HeaderValue>> {
        let Some(key) = self.key.as_ref() else {
            return Ok(None);
        };
        let expires_at =
            Utc::now() + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::hours(8));
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        self.sessions
            .start_session(&id_hash(&nonce), expires_at)
            .await?;
        let expires = expires_at.timestamp().to_string();
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
        Ok(HeaderValue::from_str(&value).ok())
    }

    /// Ends the session in the store, and gives the `Set-Cookie` value that
    /// clears the cookie.
    pub async fn sign_out(
        &self, session: &Session, headers: &HeaderMap,
    ) -> StoreResult<HeaderValue> {
        self.sessions.end_session(&id_hash(&session.nonce)).await?;
        let value = format!(
            "{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if self.is_secure(headers) {
                "; Secure"
            } else {
                ""
            }
        );
        Ok(HeaderValue::from_str(&value).expect("ASCII"))
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

    /// The session a request's cookie proves, if its signature holds, it
    /// has not expired, and the store still has it live (not signed out,
    /// on any replica, before or after a restart).
    pub async fn session(&self, headers: &HeaderMap) -> StoreResult<Option<Session>> {
        let Some((nonce, csrf)) = self.signed_session(headers) else {
            return Ok(None);
        };
        if !self
            .sessions
            .session_live(&id_hash(&nonce), Utc::now())
            .await?
        {
            return Ok(None);
        }
        Ok(Some(Session { csrf, nonce }))
    }

    /// The nonce and CSRF token of a cookie whose signature holds and whose
    /// expiry is ahead (no store read: a forged cookie costs nothing).
    fn signed_session(&self, headers: &HeaderMap) -> Option<(String, String)> {
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
        Some((
            nonce.to_owned(),
            self.mac(key, &["csrf", nonce])[..32].to_owned(),
        ))
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
        let session = state
            .console
            .session(&parts.headers)
            .await
            .map_err(|e| super::ConsoleError::from(e).into_response())?;
        match session {
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
