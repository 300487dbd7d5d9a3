//! One file per scenario, each over the shared cluster builder (`sim::builder`).
//!
//! - `election`: masters only, elections under faults;
//! - `recovery`: masters and storages; the cluster scenarios' shared run;
//! - `verification`: recovery from storages holding half-committed transactions;
//! - `failover`: elections with storages, the primary often lost for good;
//! - `operator`: the admin node and neoctl's commands at random moments;
//! - `commits`: clients committing a list-append workload, its history checked.

pub mod commits;
pub mod election;
pub mod failover;
pub mod operator;
pub mod recovery;
pub mod verification;
