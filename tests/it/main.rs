//! One integration-test binary: every test spawns the real gateway on a
//! random port (or as a child process) and talks HTTP to it.

mod helpers;

mod cache_conformance;
mod console;
mod contact_store_conformance;
mod contract;
mod crash_safety;
mod docs;
mod forward_queue_conformance;
mod forwarding;
mod full_disk;
mod http_limits;
mod inbox_conformance;
mod ingest;
mod memory;
mod messages;
mod meta_users;
mod mongo_e2e;
mod openapi;
mod pipeline;
mod poison;
mod providers_e2e;
mod rabbitmq_e2e;
mod rabbitmq_forwarding;
mod receiver;
mod redis_e2e;
mod retention;
mod security;
mod services;
mod session_store_conformance;
mod store_conformance;
mod traces;
mod upgrade;
mod webhook_store_conformance;
