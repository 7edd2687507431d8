//! Per-URL circuit breakers, per replica: after `threshold` consecutive
//! failures a URL's circuit opens; after `cooldown` exactly **one** probe is
//! let through; its success closes the circuit, its failure re-opens it for
//! another cooldown. While open, jobs for that URL are parked (rescheduled
//! without spending an attempt), so they never hold up other URLs.
//! Entries expire after an hour idle, so the map stays bounded.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
    /// Deliveries to this URL in flight now.
    in_flight: u32,
    /// When a slot of this URL was last taken or given back.
    last_progress: Option<Instant>,
    /// When this URL's queued jobs were last parked in bulk.
    bulk_parked_at: Option<Instant>,
    /// The URL's own cap on deliveries in flight (its webhook's
    /// `max_in_flight`), in place of the shared default.
    limit: Option<u32>,
    /// When its current run of consecutive failures began.
    failing_since: Option<Instant>,
    /// Whether that run was reported as `endpoint.failing`.
    failing_reported: bool,
}

/// A URL whose slots are all taken and none freed for this long is
/// [stalled](Breakers::stalled). A healthy endpoint at its cap frees a slot
/// every few milliseconds; one with 2 s responses, every 80 ms or so.
pub const STALL_AFTER: Duration = Duration::from_millis(100);

/// What the breaker allows for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go.
    Allow,
    /// Half-open: this request is the single probe.
    Probe,
    /// Open: park the job for (at least) this long.
    Reject(Duration),
}

pub struct Breakers {
    states: moka::sync::Cache<String, Arc<Mutex<State>>>,
    threshold: u32,
    cooldown: Duration,
    /// How long the probe can take (the request timeout): jobs arriving
    /// meanwhile wait that long, not less, or a large backlog of parked
    /// jobs would cycle through the queue and crowd out other URLs.
    probe_window: Duration,
    /// Most deliveries in flight to one URL: a slow or hanging endpoint
    /// can hold at most this many of the forwarder's slots, even before
    /// its circuit opens.
    per_url_limit: u32,
}

/// Releases a URL's in-flight slot when the delivery ends.
pub struct InFlight<'a> {
    breakers: &'a Breakers,
    url: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.breakers.state(&self.url).lock() {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.last_progress = Some(Instant::now());
        }
    }
}

impl Breakers {
    /// No per-URL slot cap, 15 s probe window (tests).
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self::with_limits(threshold, cooldown, Duration::from_secs(15), u32::MAX)
    }

    pub fn with_limits(
        threshold: u32, cooldown: Duration, probe_window: Duration, per_url_limit: u32,
    ) -> Self {
        Breakers {
            states: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            threshold: threshold.max(1),
            cooldown,
            probe_window,
            per_url_limit: per_url_limit.max(1),
        }
    }

    /// Sets the URL's own cap on deliveries in flight (`None`: the default
    /// share).
    pub fn set_limit(&self, url: &str, limit: Option<u32>) {
        if let Ok(mut s) = self.state(url).lock() {
            s.limit = limit.map(|l| l.max(1));
        }
    }

    /// Takes one of the URL's in-flight slots, or says how long to wait.
    pub fn enter(&self, url: &str) -> Result<InFlight<'_>, Duration> {
        let state = self.state(url);
        let mut s = state.lock().map_err(|_| Duration::from_millis(100))?;
        if s.in_flight >= s.limit.unwrap_or(self.per_url_limit) {
            return Err(Duration::from_millis(250));
        }
        s.in_flight += 1;
        s.last_progress = Some(Instant::now());
        Ok(InFlight {
            breakers: self,
            url: url.to_owned(),
        })
    }

    /// Like [`enter`](Self::enter), but waits up to `max_wait` for a slot:
    /// a fast endpoint frees one within milliseconds, so its jobs need not
    /// go back to the queue. A [stalled](Self::stalled) URL is not waited
    /// for: that wait would hold a forwarder slot other URLs could use.
    pub async fn enter_within(
        &self, url: &str, max_wait: Duration,
    ) -> Result<InFlight<'_>, Duration> {
        let deadline = Instant::now() + max_wait;
        loop {
            match self.enter(url) {
                Ok(slot) => return Ok(slot),
                Err(wait) if Instant::now() >= deadline || self.stalled(url) => return Err(wait),
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    /// Whether the URL's last delivery failed (slow or dead, not just busy).
    pub fn failing(&self, url: &str) -> bool {
        self.states
            .get(url)
            .and_then(|s| s.lock().ok().map(|s| s.consecutive_failures > 0))
            .unwrap_or(false)
    }

    /// Whether every slot of the URL is taken and none has been given back
    /// for [`STALL_AFTER`]: its requests hang (a dead or overloaded endpoint)
    /// rather than finish quickly, though none may have failed yet.
    pub fn stalled(&self, url: &str) -> bool {
        self.stalled_for(url).is_some()
    }

    /// How long a [stalled](Self::stalled) URL has gone without a slot
    /// given back; `None` when it is not stalled.
    pub fn stalled_for(&self, url: &str) -> Option<Duration> {
        let state = self.states.get(url)?;
        let s = state.lock().ok()?;
        let since = s.last_progress?.elapsed();
        (s.in_flight >= s.limit.unwrap_or(self.per_url_limit) && since >= STALL_AFTER)
            .then_some(since)
    }

    fn state(&self, url: &str) -> Arc<Mutex<State>> {
        self.states.get_with(url.to_owned(), Default::default)
    }

    pub fn admit(&self, url: &str) -> Admission {
        let state = self.state(url);
        let Ok(mut s) = state.lock() else {
            return Admission::Allow;
        };
        match s.opened_at {
            None => Admission::Allow,
            Some(at) => {
                let elapsed = at.elapsed();
                if elapsed < self.cooldown {
                    Admission::Reject(self.cooldown - elapsed)
                } else if s.probe_in_flight {
                    // One probe at a time; the others wait for its verdict,
                    // spread out so they do not all come back at once.
                    let jitter = self
                        .probe_window
                        .mul_f64(uuid::Uuid::new_v4().as_bytes()[0] as f64 / 255.0 * 0.5);
                    Admission::Reject(self.probe_window + jitter)
                } else {
                    s.probe_in_flight = true;
                    Admission::Probe
                }
            }
        }
    }

    /// Closes the circuit. The slot accounting (`in_flight`, progress) is
    /// kept: other deliveries to the URL are still under way, and each gives
    /// its slot back when it ends.
    pub fn record_success(&self, url: &str) {
        if let Ok(mut s) = self.state(url).lock() {
            s.consecutive_failures = 0;
            s.opened_at = None;
            s.probe_in_flight = false;
            s.bulk_parked_at = None;
            s.failing_since = None;
            s.failing_reported = false;
        }
    }

    pub fn record_failure(&self, url: &str) {
        if let Ok(mut s) = self.state(url).lock() {
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            s.failing_since.get_or_insert_with(Instant::now);
            s.probe_in_flight = false;
            if s.consecutive_failures >= self.threshold {
                s.opened_at = Some(Instant::now());
            }
        }
    }

    /// How long the URL has failed, once per run of failures: `Some` the
    /// first time its circuit is open and it has been failing for at least
    /// `after` (the `endpoint.failing` report), `None` otherwise.
    pub fn take_failing_report(&self, url: &str, after: Duration) -> Option<Duration> {
        let state = self.states.get(url)?;
        let mut s = state.lock().ok()?;
        let since = s.failing_since?.elapsed();
        if s.opened_at.is_none() || s.failing_reported || since < after {
            return None;
        }
        s.failing_reported = true;
        Some(since)
    }

    /// Releases a probe that ended without a verdict (e.g. a permanent 4xx).
    pub fn release_probe(&self, url: &str) {
        if let Ok(mut s) = self.state(url).lock() {
            s.probe_in_flight = false;
        }
    }

    /// Whether to park the URL's whole backlog now (at most once a second).
    pub fn should_bulk_park(&self, url: &str) -> bool {
        let state = self.state(url);
        let Ok(mut s) = state.lock() else {
            return false;
        };
        if s.bulk_parked_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return false;
        }
        s.bulk_parked_at = Some(Instant::now());
        true
    }

    /// How much longer the URL's circuit stays open, if it is open and
    /// still cooling down (read-only: no probe is taken).
    pub fn open_for(&self, url: &str) -> Option<Duration> {
        let state = self.states.get(url)?;
        let s = state.lock().ok()?;
        let elapsed = s.opened_at?.elapsed();
        (elapsed < self.cooldown).then(|| self.cooldown - elapsed)
    }

    /// URLs whose circuit is open now.
    pub fn open_count(&self) -> usize {
        self.states
            .iter()
            .filter(|(_, s)| s.lock().map(|s| s.opened_at.is_some()).unwrap_or(false))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_url_is_reported_once_per_run_of_failures() {
        let b = Breakers::with_limits(2, Duration::from_secs(60), Duration::from_secs(1), 2);
        b.record_failure("u");
        // Not open yet.
        assert_eq!(b.take_failing_report("u", Duration::ZERO), None);
        b.record_failure("u");
        assert!(b.take_failing_report("u", Duration::ZERO).is_some());
        assert_eq!(b.take_failing_report("u", Duration::ZERO), None, "once");
        assert_eq!(b.take_failing_report("u", Duration::from_secs(3600)), None);
        b.record_success("u");
        b.record_failure("u");
        b.record_failure("u");
        assert!(
            b.take_failing_report("u", Duration::ZERO).is_some(),
            "a new run"
        );
    }

    #[test]
    fn a_webhooks_own_cap_replaces_the_share() {
        let b = Breakers::with_limits(10, Duration::from_secs(1), Duration::from_secs(1), 2);
        b.set_limit("u", Some(3));
        let held: Vec<_> = (0..3).map(|_| b.enter("u").unwrap()).collect();
        assert!(b.enter("u").is_err());
        drop(held);
        b.set_limit("u", Some(1));
        let one = b.enter("u").unwrap();
        assert!(b.enter("u").is_err());
        drop(one);
        // Back to the shared default.
        b.set_limit("u", None);
        let _a = b.enter("u").unwrap();
        let _b = b.enter("u").unwrap();
        assert!(b.enter("u").is_err());
    }

    #[test]
    fn one_url_gets_at_most_its_share_of_slots() {
        let b = Breakers::with_limits(10, Duration::from_secs(1), Duration::from_secs(1), 2);
        let a1 = b.enter("slow").unwrap();
        let _a2 = b.enter("slow").unwrap();
        assert!(b.enter("slow").is_err());
        assert!(b.enter("fast").is_ok());
        drop(a1);
        assert!(b.enter("slow").is_ok());
    }

    /// A success closes the circuit but gives back no slot of another
    /// delivery: one slow URL still holds at most its share.
    #[test]
    fn a_success_keeps_the_slots_of_deliveries_still_in_flight() {
        let b = Breakers::with_limits(10, Duration::from_secs(1), Duration::from_secs(1), 2);
        let first = b.enter("slow").unwrap();
        let _second = b.enter("slow").unwrap();
        b.record_success("slow");
        assert!(b.enter("slow").is_err());
        drop(first);
        let _third = b.enter("slow").unwrap();
        assert!(b.enter("slow").is_err());
    }

    #[test]
    fn a_url_at_its_cap_with_no_slot_freed_for_a_while_is_stalled() {
        let b = Breakers::with_limits(10, Duration::from_secs(1), Duration::from_secs(1), 2);
        let _a1 = b.enter("hangs").unwrap();
        let a2 = b.enter("hangs").unwrap();
        assert!(!b.stalled("hangs"), "just busy");
        std::thread::sleep(STALL_AFTER + Duration::from_millis(10));
        assert!(b.stalled("hangs"), "no slot freed since");
        let for_now = b.stalled_for("hangs").unwrap();
        assert!(for_now >= STALL_AFTER);
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            b.stalled_for("hangs").unwrap() > for_now,
            "the longer it hangs"
        );
        assert!(!b.stalled("never-seen"));
        drop(a2);
        assert_eq!(b.stalled_for("hangs"), None);
        assert!(!b.stalled("hangs"), "a slot came back");
        let _a3 = b.enter("hangs").unwrap();
        assert!(!b.stalled("hangs"), "at the cap again, but progressing");
    }

    #[test]
    fn open_for_tells_the_remaining_cooldown_without_taking_the_probe() {
        let b = Breakers::new(1, Duration::from_millis(200));
        assert_eq!(b.open_for("u"), None);
        b.record_failure("u");
        let left = b.open_for("u").expect("open");
        assert!(left <= Duration::from_millis(200) && left > Duration::from_millis(100));
        assert_eq!(b.open_for("other"), None);
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(b.open_for("u"), None, "cooled down: due for its probe");
        assert_eq!(b.admit("u"), Admission::Probe, "the probe is still there");
    }

    #[test]
    fn opens_after_threshold_then_lets_one_probe_through() {
        let b = Breakers::new(3, Duration::from_millis(50));
        for _ in 0..2 {
            b.record_failure("u");
        }
        assert_eq!(b.admit("u"), Admission::Allow);
        b.record_failure("u");
        assert!(matches!(b.admit("u"), Admission::Reject(_)));
        assert_eq!(b.admit("other"), Admission::Allow);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit("u"), Admission::Probe);
        assert!(
            matches!(b.admit("u"), Admission::Reject(_)),
            "only one probe"
        );
        b.record_failure("u");
        assert!(matches!(b.admit("u"), Admission::Reject(_)), "re-opened");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit("u"), Admission::Probe);
        b.record_success("u");
        assert_eq!(b.admit("u"), Admission::Allow);
        assert_eq!(b.open_count(), 0);
    }
}
