//! zen-gateway: the single entry point for WhatsApp delivery reports and
//! inbound messages from BSPs (Datagen, AiSensy, Karix, Meta Cloud API).
//!
//! It acknowledges a webhook only once the raw body is durable in the inbox,
//! normalizes it into one record per message, and (later stages) hands raw
//! events to RabbitMQ consumers and forwards them to client webhooks.
//! `docs/DESIGN.md` is the contract.

pub mod app;
pub mod backends;
pub mod background;
pub mod cache;
pub mod config;
pub mod contacts;
pub mod error;
pub mod forwarding;
pub mod health;
pub mod http;
pub mod inbound_auth;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod processor;
pub mod providers;
pub mod queue;
pub mod retention;
pub mod sessions;
pub mod store;
pub mod telemetry;
