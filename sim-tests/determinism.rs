//! The determinism self-check across processes: `neosim replay` of one seed of each
//! scenario (and of a scripted run), run twice as separate processes, prints the same
//! `trace-hash:` line both times, equal to the hash of the same run in this process. The
//! hash covers what every node received and what it emitted, so a run that depends on
//! anything but (build, scenario, seed) shows here.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::process::Command;

use neo::sim::scenario::{RunOptions, Scenario};
use neo::sim::script::run_script;
use neo::sim::sweep::run_caught;

/// Run `neosim replay` with `args`; its trace hash.
fn replay(args: &[String]) -> u64 {
    let out = Command::new(env!("CARGO_BIN_EXE_neosim"))
        .arg("replay")
        .args(args)
        .output()
        .expect("neosim runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("trace-hash: "))
        .unwrap_or_else(|| panic!("no trace-hash line in:\n{stdout}"));
    u64::from_str_radix(line.trim(), 16).expect("a hex hash")
}

#[test]
fn two_processes_replay_one_seed_of_each_scenario_alike() {
    // Seed 0 of the recovery scenario has I/O faults and swapped-disk restarts.
    let start = common::seeds(1).start;
    for (scenario, seed) in Scenario::ALL
        .iter()
        .flat_map(|sc| [(*sc, start), (*sc, start + 3)])
    {
        let args = vec![
            "--scenario".to_string(),
            scenario.to_string(),
            "--seed".into(),
            seed.to_string(),
        ];
        let first = replay(&args);
        let second = replay(&args);
        assert_eq!(
            first, second,
            "{scenario} seed {seed}: two processes gave {first:016x} and {second:016x}"
        );
        let here = run_caught(&RunOptions::new(scenario, seed)).trace_hash;
        assert_eq!(
            first, here,
            "{scenario} seed {seed}: neosim gave {first:016x}, this process {here:016x}"
        );
    }
}

#[test]
fn two_processes_replay_a_scripted_run_alike() {
    let seed = common::seeds(1).start + 5;
    let args: Vec<String> = [
        "--scenario",
        "election",
        "--script",
        "crash-primary",
        "--seed",
        &seed.to_string(),
        "--masters",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let first = replay(&args);
    assert_eq!(first, replay(&args), "seed {seed}");
    assert_eq!(
        first,
        run_script("crash-primary", seed, 3, false).trace_hash,
        "seed {seed}"
    );
}
