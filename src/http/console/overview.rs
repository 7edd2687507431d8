//! The overview: webhooks per second by provider, processing lag, backlogs,
//! open breakers and backends, from the numbers `/metrics` exports, the live
//! part refreshed by the page's script.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::State;
use axum::response::IntoResponse;
use maud::{Markup, html};

use super::PageResult;
use super::layout::{self, Section};
use super::session::Operator;
use crate::http::AppState;

/// How often the page asks for the live part, in ms.
const REFRESH_MS: u32 = 5000;

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

/// `GET /console`.
pub async fn page(Operator(session): Operator, State(state): State<AppState>) -> PageResult {
    let live = live_part(&state).await;
    let content = html! {
        section #live data-refresh="/console/overview/live" data-every=(REFRESH_MS) {
            (live)
        }
        p.hint { "Refreshes every " (REFRESH_MS / 1000) " s, from the same numbers as /metrics (this replica's)." }
    };
    Ok(layout::page("Overview", &session, Section::Overview, content).into_response())
}

/// `GET /console/overview/live`: the refreshing part alone.
pub async fn live(Operator(_): Operator, State(state): State<AppState>) -> PageResult {
    Ok(live_part(&state).await.into_response())
}

async fn live_part(state: &AppState) -> Markup {
    let gauges = state.probes.latest();
    let now = sample(&crate::metrics::handle().render());
    let (rates, lag) = {
        let mut last = state
            .console
            .last_sample
            .lock()
            .unwrap_or_else(|e| e.into_inner());
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
            // The first look (or two at once): no rate yet; the lag
            // since start.
            None => {
                let lag = (now.lag_count > 0.0).then(|| now.lag_sum / now.lag_count);
                if last.is_none() {
                    *last = Some(now);
                }
                (None, lag)
            }
        }
    };
    let depth = |d: Option<u64>| d.map_or_else(|| "unavailable".to_owned(), |d| d.to_string());
    html! {
        div.cards {
            div.card {
                h2 { "Webhooks per second" }
                @match &rates {
                    Some(rates) if rates.values().any(|r| *r > 0.0) => {
                        table { tbody {
                            @for (bsp, r) in rates.iter().filter(|(_, r)| **r > 0.0) {
                                tr { th scope="row" { (bsp) } td.num { (format!("{r:.1}")) } }
                            }
                        } }
                    }
                    Some(_) => p.big { "0" }
                    None => p { "Measuring…" }
                }
            }
            div.card {
                h2 { "Processing lag" }
                p.big { (lag.map_or_else(|| "—".to_owned(), |l| format!("{:.0} ms", l * 1000.0))) }
                p.hint { "receive → applied, mean" }
            }
            div.card {
                h2 { "Backlogs" }
                table { tbody {
                    tr { th scope="row" { "Inbox" } td.num #inbox-depth { (depth(gauges.inbox_depth)) } }
                    tr { th scope="row" { "Forwarding queue" } td.num { (depth(gauges.forward_depth)) } }
                    tr { th scope="row" { a href="/console/dlq" { "Dead letters" } } td.num { (depth(gauges.dlq_depth)) } }
                    tr { th scope="row" { a href="/console/quarantine" { "Quarantine" } } td.num { (depth(gauges.quarantine_depth)) } }
                } }
            }
            div.card {
                h2 { "Open breakers" }
                p.big { (gauges.breakers_open) }
                p.hint { a href="/console/webhooks" { "client webhooks" } }
            }
            div.card #inbound {
                h2 { "Webhook routes" }
                @let trust = state.auth.report();
                table { tbody {
                    tr { th scope="row" { "Verified" } td { (names(&trust.verified)) } }
                    tr {
                        th scope="row" { "Open" }
                        td { @if trust.open.is_empty() { "none" } @else { span.status.down title="no token or signature is checked: anyone who reaches these routes can write records" { (names(&trust.open)) } } }
                    }
                    tr { th scope="row" { "Refused" } td { (names(&trust.refused)) } }
                } }
                p.hint { "Open: no token or signature is checked (docs/SECURITY.md)." }
            }
            div.card {
                h2 { "Backends" }
                table { tbody {
                    @for (role, h) in &gauges.backends {
                        tr {
                            th scope="row" { (role) }
                            td { (h.backend) }
                            td { @if h.up { span.status.up { "up" } } @else { span.status.down title=[h.detail.as_deref()] { "down" } } }
                        }
                    }
                } }
            }
        }
        p.hint { "As of " (layout::time(chrono::Utc::now())) }
    }
}

/// Providers as a list, or "none".
fn names(bsps: &[crate::model::Bsp]) -> String {
    if bsps.is_empty() {
        return "none".into();
    }
    bsps.iter()
        .map(|b| b.as_str())
        .collect::<Vec<_>>()
        .join(", ")
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
