//! The run's trace: every step (what a node received, and what it emitted) feeds a rolling
//! hash (so two runs of one seed can be compared cheaply) and, when asked, is printed as one
//! line.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::time::Duration;

/// FNV-1a, 64 bits: tiny, and the same in every build and on every machine, which
/// `std`'s hasher does not promise.
#[derive(Clone)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

pub struct Trace {
    hash: Fnv64,
    print: bool,
    steps: u64,
}

impl Trace {
    pub fn new(print: bool) -> Trace {
        Trace {
            hash: Fnv64::default(),
            print,
            steps: 0,
        }
    }

    /// Record one step: `key` feeds the hash, `line` is printed when tracing.
    pub fn step(&mut self, now: Duration, key: impl Hash, line: impl FnOnce() -> String) {
        self.steps += 1;
        now.hash(&mut self.hash);
        key.hash(&mut self.hash);
        if self.print {
            // A closed pipe (`| head`) is not an error worth dying for.
            let _ = writeln!(std::io::stdout(), "{:>11.6} {}", now.as_secs_f64(), line());
        }
    }

    /// Record what a node emitted during the current step: it feeds the hash only.
    pub fn emit(&mut self, key: impl Hash) {
        key.hash(&mut self.hash);
    }

    pub fn hash(&self) -> u64 {
        self.hash.finish()
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }
}
