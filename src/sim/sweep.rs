//! Many seeds: sweeps (on every core, with progress on a terminal) and the simulator
//! benchmark.
//!
//! This is the one place of the simulator that uses threads and the wall clock: each thread
//! runs whole worlds, one at a time, so every run stays single-threaded and deterministic;
//! only the order in which seeds finish varies, and the report does not depend on it.
//!
//! A panic inside a run (a node, a checker, the simulator) is caught and reported as that
//! seed's failure, with its message and where it happened: a sweep never loses a seed. While
//! a run is caught, the panic hook records the panic instead of printing it (one report per
//! seed, not a screenful per thread); panics elsewhere print as usual.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::cell::{Cell, RefCell};
use std::io::{IsTerminal, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use super::scenario::{plan, run, RunOptions, RunReport};
use super::world::Failure;

/// A mutant name no scenario knows: the world panics in runs of odd seeds, so tests can
/// prove that a panic is reported with its seed (see `World::run_until`).
pub const PANIC_HOOK: &str = "test-hook-panic-inside-a-run";

thread_local! {
    /// Whether this thread is inside a caught run.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// The last panic caught on this thread: message and location.
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Install (once) the hook that records panics of caught runs instead of printing them.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !CATCHING.with(Cell::get) {
                return previous(info);
            }
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            let place = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            CAUGHT.with(|c| *c.borrow_mut() = Some(format!("{message}{place}")));
        }));
    });
}

/// Run one seed; a panic inside the run is its failure (the report then has the plan's
/// shape and swarm, and no trace).
pub fn run_caught(opts: &RunOptions) -> RunReport {
    install_hook();
    CATCHING.with(|c| c.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(|| run(opts)));
    CATCHING.with(|c| c.set(false));
    match result {
        Ok(report) => report,
        Err(_) => {
            let what = CAUGHT
                .with(|c| c.borrow_mut().take())
                .unwrap_or_else(|| "(no message)".into());
            let p = plan(opts);
            RunReport {
                summary: String::new(),
                shape: p.shape(),
                swarm: p.swarm.to_string(),
                failure: Some(Failure {
                    at: Duration::ZERO,
                    what: format!("panicked: {what}"),
                }),
                trace_hash: 0,
                sim_time: Duration::ZERO,
                steps: 0,
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// The first seed's options; seeds `base.seed .. base.seed + count` are run.
    pub base: RunOptions,
    pub count: u64,
    pub jobs: usize,
    /// Stop at the first failure (mutant hunts).
    pub stop_at_first: bool,
    /// Run every n-th seed twice and require equal trace hashes (0 = never).
    pub determinism_every: u64,
    /// Show progress on stderr when it is a terminal.
    pub progress: bool,
}

#[derive(Clone, Debug)]
pub struct SweepFailure {
    pub opts: RunOptions,
    pub report: RunReport,
    pub what: String,
}

#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    pub run: u64,
    pub failed: u64,
    /// The failure with the smallest seed.
    pub first: Option<SweepFailure>,
    /// Every failed seed with what failed, by seed.
    pub failures: Vec<(u64, String)>,
    pub sim_time: Duration,
    pub wall: Duration,
}

/// Run one seed, and again if asked to check determinism. Returns the report and what
/// failed, if anything.
pub fn run_checked(opts: &RunOptions, twice: bool) -> (RunReport, Option<String>) {
    let report = run_caught(opts);
    if let Some(f) = &report.failure {
        let what = if report.steps == 0 {
            f.what.clone()
        } else {
            format!("{} (at {:.3}s)", f.what, f.at.as_secs_f64())
        };
        return (report, Some(what));
    }
    if twice {
        let again = run_caught(opts);
        if again.trace_hash != report.trace_hash {
            let what = format!(
                "nondeterminism: the same seed gave trace hashes {:016x} and {:016x}",
                report.trace_hash, again.trace_hash
            );
            return (report, Some(what));
        }
    }
    (report, None)
}

pub fn sweep(opts: &SweepOptions) -> SweepReport {
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let result = Mutex::new(SweepReport::default());
    let show = opts.progress && std::io::stderr().is_terminal();
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= opts.count || stop.load(Ordering::Relaxed) {
                    return;
                }
                let mut o = opts.base.clone();
                o.seed = opts.base.seed.wrapping_add(i);
                let twice = opts.determinism_every > 0 && i % opts.determinism_every == 0;
                let (report, failed) = run_checked(&o, twice);
                let mut r = result.lock().expect("no panics while holding it");
                r.run += 1;
                r.sim_time += report.sim_time;
                if let Some(what) = failed {
                    r.failed += 1;
                    r.failures.push((o.seed, what.clone()));
                    if r.first.as_ref().is_none_or(|f| f.opts.seed > o.seed) {
                        r.first = Some(SweepFailure {
                            opts: o,
                            report,
                            what,
                        });
                    }
                    if opts.stop_at_first {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if show && (n % 10 == 0 || n == opts.count) {
                    eprint!(
                        "\r{}: {n}/{} seeds, {} failed ",
                        opts.base.scenario, opts.count, r.failed
                    );
                    let _ = std::io::stderr().flush();
                }
            });
        }
    });
    if show {
        eprintln!();
    }
    let mut r = result.into_inner().expect("threads joined");
    r.failures.sort();
    r.wall = started.elapsed();
    r
}

#[derive(Clone, Debug)]
pub struct BenchReport {
    pub seeds: u64,
    pub sim_time: Duration,
    pub wall: Duration,
    pub steps: u64,
}

impl BenchReport {
    pub fn sim_seconds_per_wall_second(&self) -> f64 {
        self.sim_time.as_secs_f64() / self.wall.as_secs_f64()
    }

    pub fn seeds_per_minute(&self) -> f64 {
        self.seeds as f64 * 60.0 / self.wall.as_secs_f64()
    }
}

/// Run seeds one after the other on this thread for at least `min_wall` (and at least one).
pub fn bench(base: &RunOptions, min_wall: Duration) -> BenchReport {
    let started = Instant::now();
    let mut r = BenchReport {
        seeds: 0,
        sim_time: Duration::ZERO,
        wall: Duration::ZERO,
        steps: 0,
    };
    while r.seeds == 0 || started.elapsed() < min_wall {
        let mut o = base.clone();
        o.seed = base.seed.wrapping_add(r.seeds);
        let report = run_caught(&o);
        r.seeds += 1;
        r.sim_time += report.sim_time;
        r.steps += report.steps;
    }
    r.wall = started.elapsed();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::scenario::Scenario;

    #[test]
    fn a_panic_inside_a_run_is_that_seeds_failure_not_a_lost_sweep() {
        let mut base = RunOptions::new(Scenario::Election, 10);
        base.mutant = Some(PANIC_HOOK);
        base.masters = Some(1);
        let r = sweep(&SweepOptions {
            base,
            count: 4,
            jobs: 2,
            stop_at_first: false,
            determinism_every: 0,
            progress: false,
        });
        assert_eq!(r.run, 4, "every seed ran");
        let failed: Vec<u64> = r.failures.iter().map(|(s, _)| *s).collect();
        assert_eq!(failed, vec![11, 13], "{:?}", r.failures);
        let first = r.first.expect("a failure");
        assert_eq!(first.opts.seed, 11);
        assert!(
            first.what.contains("panicked: test hook") && first.what.contains("world.rs"),
            "{}",
            first.what
        );
        assert!(first.opts.replay_command().contains("--seed 11"));
        // The hook is off outside caught runs: this thread's panics still panic.
        assert!(panic::catch_unwind(|| panic!("plain")).is_err());
    }
}
