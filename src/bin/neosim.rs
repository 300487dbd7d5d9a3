//! `neosim`: run, sweep, replay and benchmark simulated clusters.
//!
//! Every failure (a panic inside a run included) prints its seed and the one command that
//! replays it; `replay` always ends with `trace-hash: <hex>`, equal for two replays of the
//! same seed, in one process or two. `replay --script NAME` replays a scripted test's run.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use neo::sim::scenario::{self, RunOptions, Scenario};
use neo::sim::script;
use neo::sim::sweep::{self, SweepOptions};

#[derive(Parser)]
#[command(
    name = "neosim",
    about = "Deterministic simulation of NEO clusters",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Scenario to run (election, recovery, verification, failover, operator, commits).
    #[arg(long, value_parser = parse_scenario)]
    scenario: Scenario,
    /// Re-introduce a known bug, to check that the scenario catches it.
    #[arg(long, value_parser = scenario::mutant)]
    mutant: Option<&'static str>,
    /// Number of masters (drawn from the seed when absent).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=32))]
    masters: Option<u64>,
    /// Number of storages (cluster scenarios; drawn from the seed when absent).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=32))]
    storages: Option<u64>,
}

/// `println!` that does not panic when stdout is a closed pipe (`neosim replay ... | head`).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Standard output for node logs, ignoring a closed pipe.
struct QuietStdout;

impl Write for QuietStdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stdout().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stdout().flush();
        Ok(())
    }
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    s.parse()
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one seed (a random one unless given) and print its outcome.
    Run {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        seed: Option<u64>,
        /// Print one line per step.
        #[arg(long)]
        trace: bool,
    },
    /// Run seeds START..START+N; exit status 0 only if none failed.
    Sweep {
        #[command(flatten)]
        common: Common,
        /// How many seeds.
        #[arg(long)]
        seeds: u64,
        /// First seed (random, and printed, when absent).
        #[arg(long)]
        start: Option<u64>,
        /// Parallel runs (default: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Stop at the first failure.
        #[arg(long)]
        stop_at_first: bool,
    },
    /// Replay one seed exactly; ends with `trace-hash: <hex>`.
    Replay {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        seed: u64,
        /// Replay a scripted test's run (election: elect, crash-primary, partition-primary,
        /// network-only) instead of the scenario's swarm.
        #[arg(long, value_parser = script::script)]
        script: Option<&'static str>,
        /// Print one line per step, and the nodes' logs.
        #[arg(long)]
        trace: bool,
    },
    /// Measure simulated seconds per wall second and seeds per minute.
    Bench {
        #[command(flatten)]
        common: Common,
        /// Run for at least this many wall seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
}

fn options(common: &Common, seed: u64, trace: bool) -> RunOptions {
    RunOptions {
        scenario: common.scenario,
        seed,
        mutant: common.mutant,
        masters: common.masters.map(|n| n as usize),
        storages: common.storages.map(|n| n as usize),
        trace,
    }
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u64 ^ (std::process::id() as u64).rotate_left(32)) % 1_000_000_000
}

/// Node logs on stdout, between the trace's lines.
fn log_nodes() {
    tracing_subscriber::fmt()
        .without_time()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(|| QuietStdout)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NEO_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
}

fn run_one(opts: &RunOptions) -> ExitCode {
    if opts.trace {
        log_nodes();
    }
    say!(
        "scenario: {}, seed: {}{}",
        opts.scenario,
        opts.seed,
        opts.mutant
            .map(|m| format!(", mutant: {m}"))
            .unwrap_or_default()
    );
    let plan = scenario::plan(opts);
    say!("shape: {}", plan.shape());
    say!("swarm: {}", plan.swarm);
    let report = sweep::run_caught(opts);
    say!(
        "simulated: {:.3}s in {} steps",
        report.sim_time.as_secs_f64(),
        report.steps
    );
    if !report.summary.is_empty() {
        say!("summary: {}", report.summary);
    }
    let code = match &report.failure {
        None => {
            say!("outcome: ok");
            ExitCode::SUCCESS
        }
        Some(f) => {
            say!("outcome: FAILED at {:.6}s: {}", f.at.as_secs_f64(), f.what);
            say!("replay: {}", opts.replay_command());
            ExitCode::FAILURE
        }
    };
    say!("trace-hash: {:016x}", report.trace_hash);
    code
}

fn run_script(common: &Common, name: &'static str, seed: u64, trace: bool) -> ExitCode {
    if trace {
        log_nodes();
    }
    let masters = common.masters.unwrap_or(3) as usize;
    say!(
        "scenario: {}, script: {name}, seed: {seed}",
        common.scenario
    );
    let r = match std::panic::catch_unwind(|| script::run_script(name, seed, masters, trace)) {
        Ok(r) => r,
        Err(_) => {
            say!("outcome: FAILED: panicked (message above)");
            say!("replay: {}", script::replay_command(name, seed, masters));
            return ExitCode::FAILURE;
        }
    };
    say!(
        "simulated: {:.3}s in {} steps",
        r.sim_time.as_secs_f64(),
        r.steps
    );
    let code = match &r.failure {
        None => {
            say!("outcome: ok");
            ExitCode::SUCCESS
        }
        Some(f) => {
            say!("outcome: FAILED: {f}");
            say!("replay: {}", script::replay_command(name, seed, masters));
            ExitCode::FAILURE
        }
    };
    say!("trace-hash: {:016x}", r.trace_hash);
    code
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            common,
            seed,
            trace,
        } => run_one(&options(&common, seed.unwrap_or_else(random_seed), trace)),
        Cmd::Replay {
            common,
            seed,
            script: Some(name),
            trace,
        } => run_script(&common, name, seed, trace),
        Cmd::Replay {
            common,
            seed,
            script: None,
            trace,
        } => run_one(&options(&common, seed, trace)),
        Cmd::Sweep {
            common,
            seeds,
            start,
            jobs,
            stop_at_first,
        } => {
            let start = start.unwrap_or_else(random_seed);
            let base = options(&common, start, false);
            say!(
                "sweep: scenario {}, seeds {}..{}{}",
                base.scenario,
                start,
                start.saturating_add(seeds),
                base.mutant
                    .map(|m| format!(", mutant {m}"))
                    .unwrap_or_default()
            );
            let opts = SweepOptions {
                base,
                count: seeds,
                jobs: jobs
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                stop_at_first,
                determinism_every: 50,
                progress: true,
            };
            let r = sweep::sweep(&opts);
            if let Some(f) = &r.first {
                say!("FAILED seed {}: {}", f.opts.seed, f.what);
                say!("  shape: {}; swarm: {}", f.report.shape, f.report.swarm);
                say!("  replay: {}", f.opts.replay_command());
                if r.failures.len() > 1 {
                    say!("other failed seeds:");
                    for (seed, what) in r.failures.iter().skip(1).take(100) {
                        say!("  {seed}: {what}");
                    }
                }
            }
            say!(
                "simulated {:.0}s in {:.1}s of wall time ({:.0}x)",
                r.sim_time.as_secs_f64(),
                r.wall.as_secs_f64(),
                r.sim_time.as_secs_f64() / r.wall.as_secs_f64().max(1e-9)
            );
            say!("seeds: {}, failed: {}", r.run, r.failed);
            if r.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Bench { common, seconds } => {
            let base = options(&common, 1, false);
            let r = sweep::bench(&base, Duration::from_secs_f64(seconds));
            let shape = base
                .masters
                .map_or("masters drawn per seed".to_string(), |n| {
                    format!("{n} masters")
                });
            say!(
                "{} ({shape}): {:.0} simulated s per wall s, {:.0} seeds per minute per core ({} seeds, {:.1}s simulated each, {:.2}s wall, {:.0} steps/s)",
                base.scenario,
                r.sim_seconds_per_wall_second(),
                r.seeds_per_minute(),
                r.seeds,
                r.sim_time.as_secs_f64() / r.seeds as f64,
                r.wall.as_secs_f64(),
                r.steps as f64 / r.wall.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
    }
}
