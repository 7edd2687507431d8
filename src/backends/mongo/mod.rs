//! MongoDB (or a wire-compatible server): the message store
//! (`unified_message_tracking`, `unrecognized_webhooks`) and the client
//! webhooks with their delivery logs, in the legacy collections and types.

pub mod collections;
pub mod contacts;
mod prune;
mod read;
pub mod sessions;
pub mod store;
pub mod webhooks;

pub use collections::META;
pub use contacts::MongoContactStore;
pub use sessions::MongoSessionStore;
pub use store::{MongoStore, SCHEMA_VERSION, client, client_options};
pub use webhooks::MongoWebhookStore;
