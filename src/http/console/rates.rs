//! Rates between two looks at the metrics: webhooks per second by
//! provider and the processing lag, for the overview. Kept per console
//! (one per replica), from the Prometheus text `/metrics` renders.

use std::collections::BTreeMap;
use std::time::Instant;

/// The counters of one look at the metrics, for rates between two looks.
pub struct Sample {
    at: Instant,
    accepted: BTreeMap<String, f64>,
    lag_sum: f64,
    lag_count: f64,
}

/// A series' labels, as (name, value) pairs.
type Labels<'a> = Vec<(&'a str, &'a str)>;

/// One metric line of the Prometheus text: name, labels, value.
fn parse_line(line: &str) -> Option<(&str, Labels<'_>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => {
            let labels = rest
                .trim_end_matches('}')
                .split("\",")
                .filter_map(|kv| {
                    let (k, v) = kv.split_once("=\"")?;
                    Some((k, v.trim_end_matches('"')))
                })
                .collect();
            (name, labels)
        }
        None => (series, Vec::new()),
    };
    Some((name, labels, value))
}

fn sample(text: &str) -> Sample {
    let mut s = Sample {
        at: Instant::now(),
        accepted: BTreeMap::new(),
        lag_sum: 0.0,
        lag_count: 0.0,
    };
    for (name, labels, value) in text.lines().filter_map(parse_line) {
        let label = |k: &str| labels.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        match name {
            "zen_webhooks_received_total" if label("outcome") == Some("accepted") => {
                if let Some(bsp) = label("bsp") {
                    *s.accepted.entry(bsp.to_owned()).or_default() += value;
                }
            }
            "zen_processing_lag_seconds_sum" => s.lag_sum += value,
            "zen_processing_lag_seconds_count" => s.lag_count += value,
            _ => {}
        }
    }
    s
}

/// The last look, shared by every operator of this replica.
#[derive(Default)]
pub struct Rates(std::sync::Mutex<Option<Sample>>);

/// Accepted webhooks per second by provider (none on the first look), and
/// the mean processing lag in seconds.
pub type Look = (Option<BTreeMap<String, f64>>, Option<f64>);

impl Rates {
    /// Takes a look at `metrics` (the Prometheus text) and compares it with
    /// the last one.
    pub fn look(&self, metrics: &str) -> Look {
        let now = sample(metrics);
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let computed = last.as_ref().and_then(|prev| {
            let secs = now.at.duration_since(prev.at).as_secs_f64();
            (secs >= 0.5).then(|| {
                let rates: BTreeMap<String, f64> = now
                    .accepted
                    .iter()
                    .map(|(bsp, n)| {
                        let before = prev.accepted.get(bsp).copied().unwrap_or(0.0);
                        (bsp.clone(), ((n - before) / secs).max(0.0))
                    })
                    .collect();
                let count = now.lag_count - prev.lag_count;
                let lag = (count > 0.0).then(|| (now.lag_sum - prev.lag_sum) / count);
                (Some(rates), lag)
            })
        });
        match computed {
            Some(c) => {
                *last = Some(now);
                c
            }
            // The first look (or two at once): no rate yet; the lag since
            // start.
            None => {
                let lag = (now.lag_count > 0.0).then(|| now.lag_sum / now.lag_count);
                if last.is_none() {
                    *last = Some(now);
                }
                (None, lag)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_accepted_webhooks_and_lag_from_the_prometheus_text() {
        let text = "# TYPE zen_webhooks_received_total counter\n\
            zen_webhooks_received_total{bsp=\"datagen\",outcome=\"accepted\"} 12\n\
            zen_webhooks_received_total{bsp=\"datagen\",outcome=\"invalid\"} 3\n\
            zen_webhooks_received_total{outcome=\"accepted\",bsp=\"meta\"} 2\n\
            zen_processing_lag_seconds_sum 1.5\n\
            zen_processing_lag_seconds_count 3\n";
        let s = sample(text);
        assert_eq!(s.accepted.get("datagen"), Some(&12.0));
        assert_eq!(s.accepted.get("meta"), Some(&2.0));
        assert_eq!((s.lag_sum, s.lag_count), (1.5, 3.0));
    }
}
