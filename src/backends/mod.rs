//! The backends, one folder (or file) each, implementing every role trait
//! they serve; the role modules (`queue`, `store`, `forwarding`, `cache`)
//! hold the traits and the domain rules (docs/DESIGN.md has the map).

pub mod memory;
pub mod mongo;
pub mod rabbitmq;
pub mod redis;
pub mod sqlite;
