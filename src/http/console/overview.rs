//! The overview: webhooks per second by provider, processing lag, backlogs,
//! open breakers and backends, from the numbers `/metrics` exports, the live
//! part refreshed by the page's script.

use axum::extract::State;
use axum::response::IntoResponse;
use maud::{Markup, html};

use super::PageResult;
use super::layout::{self, Section};
use super::session::Operator;
use crate::http::AppState;

/// How often the page asks for the live part, in ms.
const REFRESH_MS: u32 = 5000;

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
    let (rates, lag) = state.console.rates.look(&crate::metrics::handle().render());
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
