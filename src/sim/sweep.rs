//! Many seeds: sweeps (on every core, with progress on a terminal) and the simulator
//! benchmark.
//!
//! This is the one place of the simulator that uses threads and the wall clock: each thread
//! runs whole worlds, one at a time, so every run stays single-threaded and deterministic;
//! only the order in which seeds finish varies, and the report does not depend on it.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::scenario::{run, RunOptions, RunReport};

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
    let report = run(opts);
    if let Some(f) = &report.failure {
        let what = format!("{} (at {:.3}s)", f.what, f.at.as_secs_f64());
        return (report, Some(what));
    }
    if twice {
        let again = run(opts);
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
        let report = run(&o);
        r.seeds += 1;
        r.sim_time += report.sim_time;
        r.steps += report.steps;
    }
    r.wall = started.elapsed();
    r
}
