//! What failed: dead-lettered deliveries and quarantined webhooks, with
//! filters, and replay of one entry, a selection or everything a filter
//! matches, after a confirmation.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect};
use chrono::{DateTime, Utc};
use maud::html;
use serde::Deserialize;

use super::layout::{self, Section};
use super::session::{Operator, Session};
use super::{ConsoleError, FormFields, PageResult, parse_time, time_field};
use crate::error::ApiError;
use crate::forwarding::ReplayFilter;
use crate::http::AppState;
use crate::model::Bsp;
use crate::queue::QueueError;

/// Entries a list page reads (newest first) and filters.
const SCAN: usize = 500;
/// Pages of [`SCAN`] entries one "replay everything that matches" reads
/// from the quarantine at most (100,000 entries).
const QUARANTINE_PAGES: usize = 200;

#[derive(Debug, Default, Deserialize)]
pub struct FailureQuery {
    webhook_id: Option<String>,
    bsp: Option<String>,
    since: Option<String>,
    until: Option<String>,
    replayed: Option<u64>,
}

fn given(v: Option<&str>) -> Option<String> {
    v.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn inbox_unavailable(e: QueueError) -> ConsoleError {
    tracing::warn!(error = %e, "inbox unavailable to the console");
    ApiError::Unavailable("the inbox").into()
}

fn in_range(t: DateTime<Utc>, since: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>) -> bool {
    since.is_none_or(|s| t >= s) && until.is_none_or(|u| t < u)
}

/// `GET /console/dlq`.
pub async fn dlq(
    Operator(session): Operator, State(state): State<AppState>, Query(p): Query<FailureQuery>,
) -> PageResult {
    let filter = ReplayFilter {
        ids: None,
        webhook_id: given(p.webhook_id.as_deref()),
        since: parse_time("since", p.since.as_deref())?,
        until: parse_time("until", p.until.as_deref())?,
    };
    let dead: Vec<_> = state
        .forwarding
        .queue()
        .list_dead(SCAN)
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .filter(|d| filter.matches(&d.id, &d.job, Some(d.dead_at)))
        .collect();
    let total = state
        .forwarding
        .queue()
        .dead_depth()
        .await
        .map_err(ApiError::from)?;
    let content = html! {
        @if let Some(n) = p.replayed { (layout::notice(&format!("Replayed {n} deliveries: they are back on the forwarding queue."))) }
        p { (total) " dead-lettered deliveries in all. They are kept until replayed (or pruned by DLQ_RETENTION)." }
        form.filters method="get" action="/console/dlq" {
            div.field { label for="webhook_id" { "Webhook id" } input #webhook_id name="webhook_id" value=[filter.webhook_id.as_deref()]; }
            div.field { label for="since" { "Died from (UTC)" } input #since type="datetime-local" name="since" value=(time_field(filter.since)); }
            div.field { label for="until" { "Died before (UTC)" } input #until type="datetime-local" name="until" value=(time_field(filter.until)); }
            div.field { button type="submit" { "Filter" } }
        }
        @if dead.is_empty() {
            p { "Nothing here matches." }
        } @else {
            form method="post" action="/console/dlq/replay" {
                (layout::csrf(&session))
                @if let Some(w) = &filter.webhook_id { input type="hidden" name="webhook_id" value=(w); }
                input type="hidden" name="since" value=(time_field(filter.since));
                input type="hidden" name="until" value=(time_field(filter.until));
                table {
                    caption { "Dead-lettered deliveries, newest first (of the newest " (SCAN) ")" }
                    thead { tr { th scope="col" { span.visually-hidden { "Select" } } th scope="col" { "Died" } th scope="col" { "Reason" }
                        th scope="col" { "Webhook" } th scope="col" { "Event" } th scope="col" { "Attempts" } th scope="col" { span.visually-hidden { "Replay" } } } }
                    tbody {
                        @for d in &dead {
                            tr {
                                td { input type="checkbox" name="ids" value=(d.id) id=(format!("dead-{}", d.id)) aria-label=(format!("Select delivery {}", d.id)); }
                                td { (layout::time(d.dead_at)) }
                                td { (d.reason) }
                                td { a href=(format!("/console/webhooks/{}", d.job.webhook_id)) { (d.job.webhook_url) } }
                                td { (d.job.event_type) br; small { (d.job.event_id) } }
                                td { (d.job.attempt_count) }
                                td { button type="submit" name="one" value=(d.id) aria-label=(format!("Replay delivery {}", d.id)) { "Replay" } }
                            }
                        }
                    }
                }
                div.actions {
                    button type="submit" name="scope" value="selected" { "Replay selected" }
                    button type="submit" name="scope" value="matching" { "Replay everything that matches the filter" }
                }
            }
        }
    };
    Ok(layout::page("Dead letters", &session, Section::Dlq, content).into_response())
}

/// What a replay form asks for.
struct ReplayAsk {
    ids: Vec<String>,
    matching: bool,
    confirmed: bool,
}

/// A row's own button replays that entry alone; otherwise the checked ones.
fn replay_ask(form: &FormFields) -> ReplayAsk {
    ReplayAsk {
        ids: match form.get("one") {
            Some(one) => vec![one],
            None => form.all("ids"),
        },
        matching: form.get("scope").as_deref() == Some("matching"),
        confirmed: form.get("confirm").as_deref() == Some("yes"),
    }
}

/// The confirmation step: the same form again, with what it will do.
fn confirm_page(
    session: &Session, section: Section, action: &str, form: &FormFields, what: String,
) -> PageResult {
    let content = html! {
        p { (what) }
        form method="post" action=(action) {
            @for (k, v) in &form.0 {
                @if k != "confirm" && k != "csrf" { input type="hidden" name=(k) value=(v); }
            }
            (layout::csrf(session))
            input type="hidden" name="confirm" value="yes";
            div.actions {
                button type="submit" { "Yes, replay" }
                a href=(if section == Section::Dlq { "/console/dlq" } else { "/console/quarantine" }) { "Cancel" }
            }
        }
    };
    Ok(layout::page("Confirm the replay", session, section, content).into_response())
}

/// `POST /console/dlq/replay`: confirm, then replay.
pub async fn replay_dlq(
    Operator(session): Operator, State(state): State<AppState>, body: Bytes,
) -> PageResult {
    let form = FormFields::checked_for(&session, &body)?;
    let ask = replay_ask(&form);
    let filter = if ask.matching {
        ReplayFilter {
            ids: None,
            webhook_id: form.get("webhook_id"),
            since: parse_time("since", form.get("since").as_deref())?,
            until: parse_time("until", form.get("until").as_deref())?,
        }
    } else if ask.ids.is_empty() {
        return Err(ApiError::BadRequest("Select at least one delivery to replay.".into()).into());
    } else {
        ReplayFilter::ids(ask.ids.clone())
    };
    if !ask.confirmed {
        let what = if ask.matching {
            let n = state
                .forwarding
                .queue()
                .list_dead(SCAN)
                .await
                .map_err(ApiError::from)?
                .iter()
                .filter(|d| filter.matches(&d.id, &d.job, Some(d.dead_at)))
                .count();
            let scope = match (&filter.webhook_id, filter.since, filter.until) {
                (None, None, None) => "every dead-lettered delivery".to_owned(),
                _ => "every dead-lettered delivery that matches the filter".to_owned(),
            };
            format!(
                "Replay {scope} ({n}{} found now)? Each goes back on the forwarding queue with fresh attempts.",
                if n == SCAN { "+" } else { "" }
            )
        } else {
            format!(
                "Replay the {} selected deliveries? Each goes back on the forwarding queue with fresh attempts.",
                ask.ids.len()
            )
        };
        return confirm_page(&session, Section::Dlq, "/console/dlq/replay", &form, what);
    }
    let n = state
        .forwarding
        .queue()
        .replay_dead(&filter)
        .await
        .map_err(ApiError::from)?;
    tracing::info!(replayed = n, "console: DLQ replay");
    Ok(Redirect::to(&format!("/console/dlq?replayed={n}")).into_response())
}

/// `GET /console/quarantine`.
pub async fn quarantine(
    Operator(session): Operator, State(state): State<AppState>, Query(p): Query<FailureQuery>,
) -> PageResult {
    let bsp = given(p.bsp.as_deref())
        .map(|b| {
            Bsp::parse(&b)
                .ok_or_else(|| ApiError::BadRequest(format!("bsp: unknown provider {b:?}")))
        })
        .transpose()?;
    let since = parse_time("since", p.since.as_deref())?;
    let until = parse_time("until", p.until.as_deref())?;
    let entries: Vec<_> = state
        .inbox
        .list_quarantined(SCAN, None)
        .await
        .map_err(inbox_unavailable)?
        .into_iter()
        .filter(|e| bsp.is_none_or(|b| e.bsp == b) && in_range(e.quarantined_at, since, until))
        .collect();
    let total = state
        .inbox
        .quarantine_depth()
        .await
        .map_err(inbox_unavailable)?;
    let content = html! {
        @if let Some(n) = p.replayed { (layout::notice(&format!("Replayed {n} webhooks: they are back in the inbox."))) }
        p { (total) " webhooks in quarantine: processing them failed every time. Replay puts them back in the inbox." }
        form.filters method="get" action="/console/quarantine" {
            div.field {
                label for="bsp" { "Provider" }
                select #bsp name="bsp" {
                    option value="" { "any" }
                    @for b in Bsp::ALL { option value=(b.as_str()) selected[bsp == Some(b)] { (b.as_str()) } }
                }
            }
            div.field { label for="since" { "Set aside from (UTC)" } input #since type="datetime-local" name="since" value=(time_field(since)); }
            div.field { label for="until" { "Set aside before (UTC)" } input #until type="datetime-local" name="until" value=(time_field(until)); }
            div.field { button type="submit" { "Filter" } }
        }
        @if entries.is_empty() {
            p { "Nothing here matches." }
        } @else {
            form method="post" action="/console/quarantine/replay" {
                (layout::csrf(&session))
                @if let Some(b) = bsp { input type="hidden" name="bsp" value=(b.as_str()); }
                input type="hidden" name="since" value=(time_field(since));
                input type="hidden" name="until" value=(time_field(until));
                table {
                    caption { "Quarantined webhooks, newest first (of the newest " (SCAN) ")" }
                    thead { tr { th scope="col" { span.visually-hidden { "Select" } } th scope="col" { "Set aside" } th scope="col" { "Provider" }
                        th scope="col" { "Attempts" } th scope="col" { "Error" } th scope="col" { "Body" } th scope="col" { span.visually-hidden { "Replay" } } } }
                    tbody {
                        @for e in &entries {
                            tr {
                                td { input type="checkbox" name="ids" value=(e.event_id) aria-label=(format!("Select webhook {}", e.event_id)); }
                                td { (layout::time(e.quarantined_at)) }
                                td { (e.bsp.as_str()) }
                                td { (e.attempts) }
                                td { (e.error) }
                                td { details { summary { (layout::truncated(&e.body, 60)) } pre { (e.body) } } }
                                td { button type="submit" name="one" value=(e.event_id) aria-label=(format!("Replay webhook {}", e.event_id)) { "Replay" } }
                            }
                        }
                    }
                }
                div.actions {
                    button type="submit" name="scope" value="selected" { "Replay selected" }
                    button type="submit" name="scope" value="matching" { "Replay everything that matches the filter" }
                }
            }
        }
    };
    Ok(layout::page("Quarantine", &session, Section::Quarantine, content).into_response())
}

/// `POST /console/quarantine/replay`: confirm, then replay.
pub async fn replay_quarantine(
    Operator(session): Operator, State(state): State<AppState>, body: Bytes,
) -> PageResult {
    let form = FormFields::checked_for(&session, &body)?;
    let ask = replay_ask(&form);
    let ids = if ask.matching {
        let bsp = form.get("bsp").and_then(|b| Bsp::parse(&b));
        let since = parse_time("since", form.get("since").as_deref())?;
        let until = parse_time("until", form.get("until").as_deref())?;
        // Page through the quarantine (bounded), newest first.
        let mut ids = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..QUARANTINE_PAGES {
            let page = state
                .inbox
                .list_quarantined(SCAN, after.as_deref())
                .await
                .map_err(inbox_unavailable)?;
            let Some(last) = page.last() else { break };
            after = Some(last.event_id.clone());
            let full = page.len() == SCAN;
            ids.extend(
                page.into_iter()
                    .filter(|e| {
                        bsp.is_none_or(|b| e.bsp == b) && in_range(e.quarantined_at, since, until)
                    })
                    .map(|e| e.event_id),
            );
            if !full {
                break;
            }
        }
        ids
    } else {
        ask.ids.clone()
    };
    if ids.is_empty() {
        return Err(
            ApiError::BadRequest("Nothing to replay: select at least one webhook.".into()).into(),
        );
    }
    if !ask.confirmed {
        let what = format!(
            "Replay {} quarantined webhooks? Each goes back in the inbox, to be processed again.",
            ids.len()
        );
        return confirm_page(
            &session,
            Section::Quarantine,
            "/console/quarantine/replay",
            &form,
            what,
        );
    }
    let mut n = 0;
    for chunk in ids.chunks(SCAN) {
        n += state
            .inbox
            .replay_quarantined(Some(chunk))
            .await
            .map_err(inbox_unavailable)?;
    }
    tracing::info!(replayed = n, "console: quarantine replay");
    Ok(Redirect::to(&format!("/console/quarantine?replayed={n}")).into_response())
}
