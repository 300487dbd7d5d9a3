//! The deterministic simulator: whole clusters in one thread, in virtual time, from a seed.
//!
//! - `world`: nodes, the event queue, and the controls faults use;
//! - `net`: TCP-like connections, latency, partitions, clogging;
//! - `clock`: per-node wall clocks with offset, drift and jumps;
//! - `disk`: the storages' disks and their faults; `disk_check`: what wiped disks must not do;
//! - `faults`: the swarm (each seed's fault mix) and its injector;
//! - `check`: invariants and convergence conditions; `history`: checks over what the run
//!   recorded (what tables said, who ran the cluster);
//! - `trace`: the rolling hash and the printed trace;
//! - `scenario`: the scenarios' names, a seed's plan, and what a run of a seed does;
//! - `builder`: the shared cluster builder; `scenarios`: one file per scenario;
//! - `script`: scripted runs tests make and `neosim` replays;
//! - `operator`: neoctl's commands through the admin node; `hostile`: the hostile peer;
//! - `workload`: the commits scenario's simulated clients (list-append) and their history;
//! - `sweep`: many seeds (a panic is a seed's failure), benchmarks.

pub mod builder;
pub mod check;
pub mod clock;
pub mod disk;
pub mod disk_check;
pub mod faults;
pub mod history;
pub mod hostile;
pub mod isolation;
pub mod net;
pub mod operator;
pub mod scenario;
pub mod scenarios;
pub mod script;
pub mod sweep;
pub mod trace;
pub mod workload;
pub mod world;

pub use scenario::{run, RunOptions, RunReport, Scenario, MUTANTS};
pub use world::{Failure, World};
