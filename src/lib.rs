//! NEO, the distributed, redundant and scalable storage for ZODB, as a
//! deterministic-simulation actor system.
//!
//! The map of the crate:
//! - [`proto`]: identifiers (node ids, TIDs, OIDs), states, the packet catalogue, framing.
//! - [`actors`]: the node roles as sans-IO state machines, and the contract (`Actor`, `Ctx`,
//!   `Event`, `Effect`) through which they act on the world.
//! - [`sim`]: the deterministic simulator: whole clusters in one thread from a seed, with
//!   faults, invariant checks, traces and the scenarios `neosim` and `sim-tests` run.
//! - [`runtime`]: production wiring: actix, TCP, timers and the system clock.
//! - [`client`]: the blocking Rust client library (the client role on a thread of its own).
//! - [`db`]: the storage node's disk: the `Backend` trait, SQLite and MySQL/MariaDB.
//! - [`ctl`]: neoctl's commands and output formats.
//! - [`config`]: `neo.conf` and the command lines of the node programs.
//! - [`pt`]: the partition table (make, tweak, outdate, drop), pure and property-tested.
//! - [`rng`]: the seeded random draws every component uses.
//!
//! Code under `actors`, `proto` (and later `pt`, `db`) never touches the clock, sockets,
//! threads, OS randomness or `HashMap` order; `clippy.toml` enforces it, and only `runtime`,
//! `client`, `bin` and the simulator's sweep driver are allowed exceptions.

pub mod actors;
pub mod client;
pub mod config;
pub mod ctl;
pub mod db;
pub mod proto;
pub mod pt;
pub mod rng;
pub mod runtime;
pub mod sim;
