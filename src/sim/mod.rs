//! The deterministic simulator: whole clusters in one thread, in virtual time, from a seed.
//!
//! - `world`: nodes, the event queue, and the controls faults use;
//! - `net`: TCP-like connections, latency, partitions, clogging;
//! - `clock`: per-node wall clocks with offset, drift and jumps;
//! - `faults`: the swarm (each seed's fault mix) and its injector;
//! - `check`: invariants and convergence conditions; `history`: checks over what the run
//!   recorded (what tables said, who ran the cluster);
//! - `trace`: the rolling hash and the printed trace;
//! - `scenario`: the scenarios' names, a seed's plan, and what a run of a seed does;
//! - `builder`: the shared cluster builder; `scenarios`: one file per scenario;
//! - `operator`: neoctl's commands through the admin node; `hostile`: the hostile peer;
//! - `sweep`: many seeds, benchmarks.

pub mod builder;
pub mod check;
pub mod clock;
pub mod faults;
pub mod history;
pub mod hostile;
pub mod net;
pub mod operator;
pub mod scenario;
pub mod scenarios;
pub mod sweep;
pub mod trace;
pub mod world;

pub use scenario::{run, RunOptions, RunReport, Scenario, MUTANTS};
pub use world::{Failure, World};
