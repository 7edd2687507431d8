//! Client webhooks: list, create, edit, deactivate, rotate, test; each
//! one's delivery log and breaker. The rules are the forwarding room's
//! ([`crate::forwarding::webhooks`]), as for the admin API.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect};
use maud::{Markup, html};

use super::layout::{self, Section};
use super::session::{Operator, Session};
use super::{ConsoleError, FormFields, PageResult};
use crate::error::ApiError;
use crate::forwarding::WebhookConfig;
use crate::forwarding::signing::whsec;
use crate::forwarding::webhooks::{Cleared, NewWebhook, WebhookChanges, WebhookOptions};
use crate::http::AppState;

const DELIVERIES: usize = 100;

fn list_field(form: &FormFields, name: &str) -> Option<Vec<String>> {
    form.get(name).map(|v| {
        v.split([',', '\n'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

fn number_field(form: &FormFields, name: &str) -> Result<Option<u64>, ConsoleError> {
    form.get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                crate::error::ApiError::Unprocessable(format!("{name}: must be a whole number"))
                    .into()
            })
        })
        .transpose()
}

fn breaker_state(state: &AppState, url: &str) -> String {
    let breakers = state.forwarding.breakers();
    match breakers.open_for(url) {
        Some(left) => format!("open (next probe in {}s)", left.as_secs()),
        None if breakers.failing(url) => "failing".into(),
        None => "closed".into(),
    }
}

/// `GET /console/webhooks`.
pub async fn list(Operator(session): Operator, State(state): State<AppState>) -> PageResult {
    list_page(&state, &session, None).await
}

async fn list_page(state: &AppState, session: &Session, error: Option<String>) -> PageResult {
    let hooks = state.forwarding.webhooks().list_webhooks(None).await?;
    let content = html! {
        @if let Some(e) = error { p.error role="alert" { (e) } }
        @if hooks.is_empty() {
            p { "No client webhooks yet." }
        } @else {
            table {
                caption { "Client webhooks" }
                thead { tr { th scope="col" { "URL" } th scope="col" { "Owner" } th scope="col" { "Topics" }
                    th scope="col" { "Active" } th scope="col" { "Signed" } th scope="col" { "Breaker" } } }
                tbody {
                    @for w in &hooks {
                        tr {
                            td { a href=(format!("/console/webhooks/{}", w.id)) { (w.webhook_url) } }
                            td { (w.project_owner_id) }
                            td { (w.topics.join(", ")) }
                            td { (if w.is_active() { "yes" } else { "no" }) }
                            td { (if w.shared_secret.is_empty() { "no" } else { "yes" }) }
                            td { (breaker_state(state, &w.webhook_url)) }
                        }
                    }
                }
            }
        }
        h2 { "Register a webhook" }
        form.stacked method="post" action="/console/webhooks" {
            (layout::csrf(session))
            label for="owner" { "Owner (project_owner_id)" }
            input #owner name="project_owner_id" required;
            label for="url" { "URL" }
            input #url type="url" name="webhook_url" placeholder="https://client.example.com/hooks" required;
            label for="topics" { "Topics (comma-separated; * for every event)" }
            input #topics name="topics" value="*";
            label for="numbers" { "Business numbers (comma-separated; empty for all of the owner's)" }
            input #numbers name="business_numbers";
            label.check { input type="checkbox" name="enable_auth" checked; " Sign deliveries" }
            button type="submit" { "Register" }
        }
    };
    Ok(layout::page("Client webhooks", session, Section::Webhooks, content).into_response())
}

/// `POST /console/webhooks`: registers one and shows its secret once.
pub async fn create(
    Operator(session): Operator, State(state): State<AppState>, body: Bytes,
) -> PageResult {
    let form = FormFields::checked_for(&session, &body)?;
    let input = NewWebhook {
        project_owner_id: form.get("project_owner_id").unwrap_or_default(),
        webhook_url: form.get("webhook_url").unwrap_or_default(),
        options: WebhookOptions {
            topics: list_field(&form, "topics"),
            enable_auth: Some(form.checked("enable_auth")),
            business_numbers: list_field(&form, "business_numbers"),
            ..Default::default()
        },
        ..Default::default()
    };
    match state
        .forwarding
        .create_webhook(input)
        .await
        .map_err(ApiError::from)
    {
        Ok(w) => {
            tracing::info!(webhook.id = %w.id, webhook.url = %w.webhook_url, "console: webhook registered");
            let notice = secret_notice(&w, "Registered.");
            show_page(&state, &session, &w.id, Some(notice)).await
        }
        Err(e) if !e.status().is_server_error() => {
            list_page(&state, &session, Some(e.to_string())).await
        }
        Err(e) => Err(e.into()),
    }
}

fn secret_notice(w: &WebhookConfig, what: &str) -> Markup {
    html! {
        div.notice role="status" {
            p { (what) }
            @if !w.shared_secret.is_empty() {
                p { "Signing secret, shown this once: " code #secret { (whsec(&w.shared_secret)) } }
                p.hint { "Legacy form (64 hex): " code { (w.shared_secret) } }
            }
        }
    }
}

/// `GET /console/webhooks/{id}`.
pub async fn show(
    Operator(session): Operator, State(state): State<AppState>, Path(id): Path<String>,
) -> PageResult {
    show_page(&state, &session, &id, None).await
}

async fn show_page(
    state: &AppState, session: &Session, id: &str, notice: Option<Markup>,
) -> PageResult {
    let w = state.forwarding.webhook(id).await.map_err(ApiError::from)?;
    let deliveries = state
        .forwarding
        .webhooks()
        .list_deliveries(&w.id, DELIVERIES)
        .await?;
    let action = |what: &str| format!("/console/webhooks/{}/{what}", w.id);
    let content = html! {
        @if let Some(n) = notice { (n) }
        dl.summary {
            dt { "URL" } dd { (w.webhook_url) }
            dt { "Owner" } dd { (w.project_owner_id) }
            dt { "Active" } dd { (if w.is_active() { "yes" } else { "no" }) }
            dt { "Signed" } dd { (if w.shared_secret.is_empty() { "no" } else { "yes" }) }
            dt { "Breaker" } dd #breaker { (breaker_state(state, &w.webhook_url)) }
            dt { "id" } dd { (w.id) }
        }
        div.actions {
            form method="post" action=(action("test")) {
                (layout::csrf(session))
                button type="submit" { "Send a test event" }
            }
            form method="post" action=(action("rotate")) {
                (layout::csrf(session))
                label for="grace" { "Old secret also signs for (hours, 0–168)" }
                input #grace name="grace_hours" inputmode="numeric" value="24" size="4";
                button type="submit" { "Rotate the secret" }
            }
            form method="post" action=(action("active")) {
                (layout::csrf(session))
                @if w.is_active() {
                    input type="hidden" name="active" value="false";
                    button.danger type="submit" { "Deactivate" }
                } @else {
                    input type="hidden" name="active" value="true";
                    button type="submit" { "Activate" }
                }
            }
        }
        h2 { "Edit" }
        form.stacked method="post" action=(format!("/console/webhooks/{}", w.id)) {
            (layout::csrf(session))
            label for="url" { "URL" }
            input #url type="url" name="webhook_url" value=(w.webhook_url) required;
            label for="topics" { "Topics (comma-separated)" }
            input #topics name="topics" value=(w.topics.join(", ")) required;
            label for="numbers" { "Business numbers (comma-separated; empty for all)" }
            input #numbers name="business_numbers" value=(w.business_numbers.as_deref().unwrap_or_default().join(", "));
            label for="timeout" { "Timeout per attempt, ms (empty: the global one)" }
            input #timeout name="timeout_ms" inputmode="numeric" value=[w.timeout_ms];
            label for="inflight" { "Most deliveries in flight (empty: the global share)" }
            input #inflight name="max_in_flight" inputmode="numeric" value=[w.max_in_flight];
            label for="filter" { "Payload filter, JSON (empty: every event of the topics)" }
            textarea #filter name="filter" rows="4" placeholder=r#"{"event_type": "message.failed", "data.errors.0.code": {"$in": [131026]}}"# {
                (w.filter.as_ref().map(|f| f.to_string()).unwrap_or_default())
            }
            button type="submit" { "Save" }
        }
        h2 { "Delivery log" }
        @if deliveries.is_empty() {
            p { "No deliveries yet." }
        } @else {
            table #deliveries {
                caption { "The newest " (DELIVERIES) " deliveries, one row per event" }
                thead { tr { th scope="col" { "Created" } th scope="col" { "Event" } th scope="col" { "Status" }
                    th scope="col" { "Attempts" } th scope="col" { "Code" } th scope="col" { "Response (truncated)" } th scope="col" { "Error" } th scope="col" { "Last attempt" } } }
                tbody {
                    @for d in &deliveries {
                        tr {
                            td { (layout::time(d.created_at)) }
                            td { (d.event_type) br; small { (d.event_id) } }
                            td { (format!("{:?}", d.status).to_lowercase()) }
                            td { (d.attempt_count) }
                            td { (d.status_code.map(|c| c.to_string()).unwrap_or_default()) }
                            td { code { (layout::truncated(d.response_body.as_deref().unwrap_or(""), 200)) } }
                            td { (d.error_message.as_deref().unwrap_or("")) }
                            td { (layout::time(d.last_attempt_at)) }
                        }
                    }
                }
            }
        }
    };
    let title = format!("Webhook {}", w.webhook_url);
    Ok(layout::page(&title, session, Section::Webhooks, content).into_response())
}

/// `POST /console/webhooks/{id}`: the edit form.
pub async fn update(
    Operator(session): Operator, State(state): State<AppState>, Path(id): Path<String>, body: Bytes,
) -> PageResult {
    let form = FormFields::checked_for(&session, &body)?;
    let timeout_ms = number_field(&form, "timeout_ms")?;
    let max_in_flight =
        number_field(&form, "max_in_flight")?.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    let business_numbers = list_field(&form, "business_numbers").filter(|n| !n.is_empty());
    // An emptied filter is `{}`: none.
    let filter = match form.get("filter").map(|f| f.trim().to_owned()) {
        Some(f) if !f.is_empty() => Some(
            serde_json::from_str(&f)
                .map_err(|e| ApiError::Unprocessable(format!("filter: not JSON: {e}")))?,
        ),
        _ => Some(serde_json::json!({})),
    };
    // An emptied field goes back to the default.
    let clear = Cleared {
        business_numbers: business_numbers.is_none(),
        timeout_ms: timeout_ms.is_none(),
        max_in_flight: max_in_flight.is_none(),
    };
    let input = WebhookChanges {
        webhook_url: form.get("webhook_url"),
        options: WebhookOptions {
            topics: list_field(&form, "topics"),
            business_numbers,
            timeout_ms,
            max_in_flight,
            filter,
            ..Default::default()
        },
        clear,
        ..Default::default()
    };
    match state
        .forwarding
        .update_webhook(&id, input)
        .await
        .map_err(ApiError::from)
    {
        Ok((w, _)) => {
            tracing::info!(webhook.id = %w.id, "console: webhook edited");
            show_page(&state, &session, &id, Some(layout::notice("Saved."))).await
        }
        Err(e) if !e.status().is_server_error() => {
            let notice = html! { p.error role="alert" { (e.to_string()) } };
            show_page(&state, &session, &id, Some(notice)).await
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /console/webhooks/{id}/rotate`.
pub async fn rotate(
    Operator(session): Operator, State(state): State<AppState>, Path(id): Path<String>, body: Bytes,
) -> PageResult {
    let form = FormFields::checked_for(&session, &body)?;
    let hours = number_field(&form, "grace_hours")?.unwrap_or(24);
    let grace = std::time::Duration::from_secs(hours.saturating_mul(3600));
    let w = state
        .forwarding
        .rotate_secret(&id, grace)
        .await
        .map_err(ApiError::from)?;
    tracing::info!(webhook.id = %w.id, grace_hours = hours, "console: webhook secret rotated");
    let notice = secret_notice(
        &w,
        if hours == 0 {
            "Rotated: the old secret no longer signs."
        } else {
            "Rotated: the old secret signs beside the new one until the grace period ends."
        },
    );
    show_page(&state, &session, &id, Some(notice)).await
}

/// `POST /console/webhooks/{id}/test`.
pub async fn test(
    Operator(session): Operator, State(state): State<AppState>, Path(id): Path<String>, body: Bytes,
) -> PageResult {
    FormFields::checked_for(&session, &body)?;
    let o = state
        .forwarding
        .send_test(&id)
        .await
        .map_err(ApiError::from)?;
    let text = match (o.success, o.status_code, &o.error) {
        (true, code, _) => format!(
            "Test event delivered: HTTP {} in {} ms.",
            code.unwrap_or(200),
            o.duration_ms
        ),
        (false, Some(code), _) => format!(
            "Test event refused: HTTP {code} in {} ms. {}",
            o.duration_ms,
            layout::truncated(o.response_body.as_deref().unwrap_or(""), 200)
        ),
        (false, None, e) => format!(
            "Test event not delivered: {}",
            e.as_deref().unwrap_or("no answer")
        ),
    };
    show_page(&state, &session, &id, Some(layout::notice(&text))).await
}

/// `POST /console/webhooks/{id}/active`: deactivate or activate.
pub async fn set_active(
    Operator(session): Operator, State(state): State<AppState>, Path(id): Path<String>, body: Bytes,
) -> PageResult {
    let form = FormFields::checked_for(&session, &body)?;
    let active = form.get("active").as_deref() == Some("true");
    state
        .forwarding
        .set_active(&id, active)
        .await
        .map_err(ApiError::from)?;
    tracing::info!(webhook.id = %id, active, "console: webhook activation changed");
    Ok(Redirect::to(&format!("/console/webhooks/{id}")).into_response())
}
