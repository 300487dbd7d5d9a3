//! What every simulation test file shares: seed ranges from the environment, sweeps on
//! every core, and failure messages with the replay command.
#![allow(dead_code, clippy::disallowed_methods, clippy::disallowed_types)]

use neo::sim::scenario::{self, RunOptions, Scenario};
use neo::sim::script::{replay_command, run_script};
use neo::sim::sweep::{run_checked, sweep, SweepOptions};
use neo::sim::MUTANTS;

pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed range of a test: `NEO_SIM_SEEDS` (or `default`) seeds from `NEO_SIM_SEED_START`.
pub fn seeds(default: u64) -> std::ops::Range<u64> {
    let start = env("NEO_SIM_SEED_START", 0);
    let count = env("NEO_SIM_SEEDS", default);
    // No seeds would make every test pass without running anything.
    assert!(count > 0, "NEO_SIM_SEEDS must be at least 1");
    start..start + count
}

pub fn jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sweep a scenario over the test's seed range; panic with the first failure's seed and
/// replay command.
pub fn sweep_passes(scenario: Scenario, default_seeds: u64) {
    let range = seeds(default_seeds);
    let report = sweep(&SweepOptions {
        base: RunOptions::new(scenario, range.start),
        count: range.end - range.start,
        jobs: jobs(),
        stop_at_first: false,
        determinism_every: 50,
        progress: false,
    });
    if let Some(f) = &report.first {
        panic!(
            "{} of {} seeds failed; first: seed {}: {}\n  shape: {}; swarm: {}\n  replay: {}\n  all: {:?}",
            report.failed,
            report.run,
            f.opts.seed,
            f.what,
            f.report.shape,
            f.report.swarm,
            f.opts.replay_command(),
            report.failures.iter().map(|(s, _)| s).collect::<Vec<_>>()
        );
    }
    assert_eq!(report.run, range.end - range.start);
    eprintln!(
        "{scenario} sweep: {} seeds, {:.0} simulated s in {:.1} s",
        report.run,
        report.sim_time.as_secs_f64(),
        report.wall.as_secs_f64()
    );
}

/// Each mutant of `scenario` must make a sweep fail within 1,000 seeds.
pub fn mutants_are_caught(scenario: Scenario) {
    let mutants: Vec<_> = MUTANTS
        .iter()
        .filter(|(_, sc, _)| *sc == scenario)
        .collect();
    assert!(!mutants.is_empty(), "no mutant for {scenario}");
    for (name, sc, what) in mutants {
        let start = env("NEO_SIM_SEED_START", 0);
        let mut from = start;
        // Caught by the mutant, not by a bug the seed finds anyway: a seed that fails
        // without the mutant too is skipped (the plain sweeps report it).
        let (seed, caught) = loop {
            let count = (start + 1000).saturating_sub(from);
            assert!(count > 0, "mutant {name} ({what}) survived 1000 seeds");
            let mut base = RunOptions::new(*sc, from);
            base.mutant = Some(scenario::mutant(name).unwrap());
            let report = sweep(&SweepOptions {
                base,
                count,
                jobs: jobs(),
                stop_at_first: true,
                determinism_every: 0,
                progress: false,
            });
            let first = report
                .first
                .unwrap_or_else(|| panic!("mutant {name} ({what}) survived 1000 seeds"));
            let mut plain = first.opts.clone();
            plain.mutant = None;
            match run_checked(&plain, false) {
                (_, None) => break (first.opts.seed, first.what),
                (_, Some(also)) => {
                    eprintln!(
                        "mutant {name}: seed {} fails without the mutant too ({also}); replay: {}",
                        plain.seed,
                        plain.replay_command()
                    );
                    from = plain.seed + 1;
                }
            }
        };
        eprintln!("mutant {name} caught by seed {seed}: {caught}");
    }
}

/// Seeds that once found a bug (see BUGS.md) keep running in every test run.
pub fn regressions_pass(scenario: Scenario, seeds: &[u64]) {
    for &seed in seeds {
        let opts = RunOptions::new(scenario, seed);
        let (report, failed) = run_checked(&opts, true);
        if let Some(what) = failed {
            panic!(
                "seed {seed}: {what}\n  swarm: {}\n  replay: {}",
                report.swarm,
                opts.replay_command()
            );
        }
    }
}

/// Run a script (`neo::sim::script`) for each count of masters over the test's seed range,
/// each run caught; panic with every failure's replay command (which replays that run).
pub fn script_passes(name: &str, masters: &[usize], default_seeds: u64) {
    let mut failures = Vec::new();
    for &m in masters {
        for seed in seeds(default_seeds) {
            let r = std::panic::catch_unwind(|| run_script(name, seed, m, false));
            let what = match r {
                Ok(r) => r.failure,
                Err(p) => Some(format!(
                    "panicked: {}",
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                )),
            };
            if let Some(what) = what {
                failures.push(format!(
                    "seed {seed} ({m} masters): {what}\n  replay: {}",
                    replay_command(name, seed, m)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "script {name}: {} failed runs:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
