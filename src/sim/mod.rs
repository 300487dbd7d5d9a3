//! The deterministic simulator: whole clusters in one thread, in virtual time, from a seed.
//!
//! - `world`: nodes, the event queue, and the controls faults use;
//! - `net`: TCP-like connections, latency, partitions, clogging;
//! - `clock`: per-node wall clocks with offset, drift and jumps;
//! - `disk`: the storages' disks and their faults; `disk_check`: what wiped disks must not do;
//! - `faults`: the swarm (each seed's fault mix) and its injector;
//! - `check`: invariants and convergence conditions;
//! - `trace`: the rolling hash and the printed trace;
//! - `scenario`: what a run of a seed does; `script`: scripted runs tests make and `neosim`
//!   replays; `sweep`: many seeds (a panic is a seed's failure), benchmarks.

pub mod check;
pub mod clock;
pub mod cluster;
pub mod disk;
pub mod disk_check;
pub mod faults;
pub mod net;
pub mod scenario;
pub mod script;
pub mod sweep;
pub mod trace;
pub mod world;

pub use scenario::{run, RunOptions, RunReport, Scenario, MUTANTS};
pub use world::{Failure, World};
