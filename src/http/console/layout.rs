//! The console's page frame and small shared pieces.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::session::Session;

/// The console's sections, for the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Messages,
    Webhooks,
    Dlq,
    Quarantine,
}

const SECTIONS: [(Section, &str, &str); 5] = [
    (Section::Overview, "/console", "Overview"),
    (Section::Messages, "/console/messages", "Messages"),
    (Section::Webhooks, "/console/webhooks", "Client webhooks"),
    (Section::Dlq, "/console/dlq", "Dead letters"),
    (Section::Quarantine, "/console/quarantine", "Quarantine"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · zen-gateway" }
            link rel="stylesheet" href="/console/assets/console.css";
            script src="/console/assets/console.js" defer {}
        }
    }
}

/// A signed-in page: navigation, sign-out, the content.
pub fn page(title: &str, session: &Session, section: Section, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Console" {
                        span.brand { "zen-gateway" }
                        ul {
                            @for (s, href, label) in SECTIONS {
                                li {
                                    @if s == section {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                        form.signout method="post" action="/console/logout" {
                            (csrf(session))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main { h1 { (title) } (content) }
            }
        }
    }
}

/// A page without navigation (sign-in, errors).
pub fn bare(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { (content) }
        }
    }
}

/// The hidden CSRF field every form carries.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A time as the console shows it (UTC, to the second).
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn time_opt(t: Option<DateTime<Utc>>) -> String {
    t.map(time).unwrap_or_else(|| "—".into())
}

/// At most `max` characters of `s`, marked when cut.
pub fn truncated(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// A notice at the top of a page.
pub fn notice(text: &str) -> Markup {
    html! { p.notice role="status" { (text) } }
}

/// Pretty JSON for a `<pre>`.
pub fn json(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}
