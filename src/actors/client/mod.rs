//! The client role: follows the primary master, keeps the partition table and the node
//! list, connects to storages on demand, and serves an application's ZODB calls (`api`).

pub mod api;

pub use api::*;
