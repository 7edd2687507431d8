//! Limits on guessing the admin key: failed attempts (API bearer keys and
//! console sign-ins, one budget) per client, `AUTH_FAILURE_LIMIT` per
//! `AUTH_FAILURE_WINDOW`, counted with `governor` (GCRA). Past the limit
//! the client is refused with 429 and `Retry-After` *before* its key is
//! checked, so a right guess there looks like any other: the guessing rate
//! is the limit, whatever the client sends.
//!
//! Keyed on [`super::client_addr::client_ip`]; an IPv6 client by its /64,
//! which one host usually holds whole.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Clients remembered at once; past it the least recent go first (an
/// attacker with many addresses cannot grow memory without bound).
const MAX_CLIENTS: u64 = 100_000;
/// How often (in failures) the limiter's idle keys are swept.
const SWEEP_EVERY: u64 = 1024;

pub struct FailedAttempts {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    /// Clients over the limit, until when.
    blocked: moka::sync::Cache<IpAddr, Instant>,
    failures: AtomicU64,
}

/// The client must wait this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds, at least 1 (the `Retry-After` header).
    pub fn secs(self) -> u64 {
        self.0.as_secs_f64().ceil().max(1.0) as u64
    }
}

impl FailedAttempts {
    /// `limit` failures per `window` (both greater than zero).
    pub fn new(limit: u32, window: Duration) -> FailedAttempts {
        let limit = NonZeroU32::new(limit.max(1)).expect("at least 1");
        let period = (window / limit.get()).max(Duration::from_millis(1));
        let quota = Quota::with_period(period)
            .expect("a non-zero period")
            .allow_burst(limit);
        FailedAttempts {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            blocked: moka::sync::Cache::builder()
                .max_capacity(MAX_CLIENTS)
                .time_to_live(window.max(Duration::from_secs(1)))
                .build(),
            failures: AtomicU64::new(0),
        }
    }

    /// Refuses a client over the limit, before anything of its request is
    /// checked.
    pub fn check(&self, client: IpAddr) -> Result<(), RetryAfter> {
        let key = key(client);
        match self.blocked.get(&key) {
            Some(until) => match until.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Err(RetryAfter(left)),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Counts a failed attempt; `Err` when it was one too many (the client
    /// is refused from now until the returned wait is over).
    pub fn fail(&self, client: IpAddr) -> Result<(), RetryAfter> {
        let key = key(client);
        if self.failures.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        match self.limiter.check_key(&key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                self.blocked.insert(key, Instant::now() + wait);
                Err(RetryAfter(wait))
            }
        }
    }
}

/// An IPv4 client by its address, an IPv6 one by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match crate::config::canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_a_client_is_refused_until_its_wait_is_over() {
        let a = FailedAttempts::new(3, Duration::from_secs(60));
        let ip: IpAddr = "203.0.113.5".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(a.check(ip), Ok(()));
            assert_eq!(a.fail(ip), Ok(()));
        }
        let wait = a.fail(ip).unwrap_err();
        assert!(wait.secs() >= 1 && wait.secs() <= 20, "{wait:?}");
        assert!(a.check(ip).is_err());
        // Others are not affected; one IPv6 host's /64 counts as one.
        assert_eq!(a.check("203.0.113.6".parse().unwrap()), Ok(()));
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        for n in 0..3 {
            a.fail(v6(&format!("2001:db8::{n}"))).unwrap();
        }
        assert!(a.fail(v6("2001:db8::ffff")).is_err());
        assert!(a.check(v6("2001:db8::1234")).is_err());
        assert_eq!(a.check(v6("2001:db8:0:1::1")), Ok(()));
    }
}
