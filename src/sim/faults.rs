//! The fault model: a swarm of faults drawn per seed (each kind on or off, with its own
//! rate and size), printed before the run, and the injector that applies them while the
//! safety phase lasts.
//!
//! Swarm testing: a seed that turns most faults off explores deep paths a seed with every
//! fault at once never reaches, and the other way round.

use std::fmt;
use std::time::Duration;

use super::disk::IoRates;
use super::net::Latency;
use super::world::World;
use crate::rng::{self, ChaCha8Rng};

/// How often one kind of fault strikes (chance per injector tick) and how long it lasts.
#[derive(Clone, Debug)]
pub struct Rate {
    pub per_tick: f64,
    pub min: Duration,
    pub max: Duration,
}

impl Rate {
    fn draw(
        rng: &mut ChaCha8Rng,
        on: f64,
        per_tick: (f64, f64),
        min: Duration,
        max: Duration,
    ) -> Option<Rate> {
        rng::chance(rng, on).then(|| Rate {
            per_tick: per_tick.0 + rng::unit(rng) * (per_tick.1 - per_tick.0),
            min,
            max: rng::duration(rng, min, max),
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.0}%/s {:?}..{:?}",
            self.per_tick * 100.0,
            self.min,
            self.max
        )
    }
}

/// One seed's fault mix.
#[derive(Clone, Debug)]
pub struct Swarm {
    pub latency: Latency,
    /// Process crashes; the duration is the time until restart.
    pub crash: Option<Rate>,
    pub pause: Option<Rate>,
    pub partition: Option<Rate>,
    /// Chance that a partition is one way.
    pub one_way: f64,
    pub clog: Option<Rate>,
    /// Chance per tick of resetting one connection.
    pub reset: f64,
    /// Largest initial clock offset, and drift, of any node.
    pub clock_offset: Duration,
    pub drift_ppm: i64,
    /// Clock jumps (either way); the duration is the size of the jump.
    pub clock_jump: Option<Rate>,
    pub buggify: bool,
    /// Chance that a storage's database read fails with EIO (per call).
    pub read_errors: f64,
    /// Chance that a storage's database write fails with EIO or ENOSPC (per call).
    pub write_errors: f64,
    /// Slow database calls: chance per call, and the longest (the node stalls that long).
    pub slow_io: Option<(f64, Duration)>,
    /// Restarts of a storage with a wiped disk; the duration is the time until restart.
    pub wipe: Option<Rate>,
    /// Restarts of a storage with another running storage's disk (refused).
    pub swap: Option<Rate>,
}

impl Swarm {
    /// No faults at all: only latency. For scripted tests.
    pub fn calm() -> Swarm {
        Swarm {
            latency: Latency {
                min: Duration::from_micros(100),
                max: Duration::from_millis(2),
                slow_p: 0.0,
                slow_max: Duration::ZERO,
            },
            crash: None,
            pause: None,
            partition: None,
            one_way: 0.0,
            clog: None,
            reset: 0.0,
            clock_offset: Duration::ZERO,
            drift_ppm: 0,
            clock_jump: None,
            buggify: false,
            read_errors: 0.0,
            write_errors: 0.0,
            slow_io: None,
            wipe: None,
            swap: None,
        }
    }

    /// The disks' I/O fault rates.
    pub fn io_rates(&self) -> IoRates {
        let (slow, slow_max) = self.slow_io.unwrap_or_default();
        IoRates {
            read_error: self.read_errors,
            write_error: self.write_errors,
            slow,
            slow_max,
        }
    }

    pub fn draw(rng: &mut ChaCha8Rng) -> Swarm {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let min = rng::duration(rng, Duration::from_micros(50), ms(1));
        let latency = Latency {
            min,
            max: min + rng::duration(rng, Duration::ZERO, ms(20)),
            slow_p: *rng::pick(rng, &[0.0, 0.001, 0.01, 0.05]),
            slow_max: rng::duration(rng, ms(50), s(3)),
        };
        let skewed = rng::chance(rng, 0.5);
        let mut swarm = Swarm {
            latency,
            crash: Rate::draw(rng, 0.5, (0.005, 0.05), ms(100), s(30)),
            pause: Rate::draw(rng, 0.3, (0.005, 0.03), ms(50), s(20)),
            partition: Rate::draw(rng, 0.5, (0.005, 0.05), ms(500), s(40)),
            one_way: rng::unit(rng) * 0.5,
            clog: Rate::draw(rng, 0.3, (0.005, 0.05), ms(50), s(10)),
            reset: if rng::chance(rng, 0.3) {
                rng::unit(rng) * 0.05
            } else {
                0.0
            },
            clock_offset: if skewed {
                rng::duration(rng, Duration::ZERO, s(30))
            } else {
                Duration::ZERO
            },
            drift_ppm: if skewed {
                rng::between(rng, 0, 200) as i64
            } else {
                0
            },
            clock_jump: Rate::draw(rng, 0.25, (0.002, 0.02), ms(1), s(120)),
            buggify: rng::chance(rng, 0.5),
            ..Swarm::calm()
        };
        // Disk faults are drawn last, so the draws above (and a seed's other faults) stay
        // what they were before disks could fail.
        let rate = |rng: &mut ChaCha8Rng, on: f64, max: f64| {
            if rng::chance(rng, on) {
                rng::unit(rng) * max
            } else {
                0.0
            }
        };
        swarm.read_errors = rate(rng, 0.25, 0.1);
        swarm.write_errors = rate(rng, 0.25, 0.1);
        swarm.slow_io =
            rng::chance(rng, 0.25).then(|| (rng::unit(rng) * 0.2, rng::duration(rng, ms(1), s(3))));
        swarm.wipe = Rate::draw(rng, 0.2, (0.002, 0.02), ms(100), s(30));
        swarm.swap = Rate::draw(rng, 0.2, (0.002, 0.02), ms(100), s(10));
        swarm
    }
}

fn per_call(p: f64) -> String {
    if p > 0.0 {
        format!("{:.2}%/call", p * 100.0)
    } else {
        "off".into()
    }
}

impl fmt::Display for Swarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |r: &Option<Rate>| r.as_ref().map_or("off".to_string(), |r| r.to_string());
        write!(
            f,
            "latency {:?}..{:?} (slow {:.1}% up to {:?}); crash {}; pause {}; partition {} (one way {:.0}%); clog {}; reset {:.1}%/s; clock offset ±{:?} drift ±{}ppm jumps {}; buggify {}; disk: read errors {}, write errors (EIO/ENOSPC) {}, slow io {}, wiped-disk restarts {}, swapped-disk restarts {}",
            self.latency.min,
            self.latency.max,
            self.latency.slow_p * 100.0,
            self.latency.slow_max,
            opt(&self.crash),
            opt(&self.pause),
            opt(&self.partition),
            self.one_way * 100.0,
            opt(&self.clog),
            self.reset * 100.0,
            self.clock_offset,
            self.drift_ppm,
            opt(&self.clock_jump),
            if self.buggify { "on" } else { "off" },
            per_call(self.read_errors),
            per_call(self.write_errors),
            self.slow_io.map_or("off".to_string(), |(p, max)| format!(
                "{:.1}%/call up to {max:?}",
                p * 100.0
            )),
            opt(&self.wipe),
            opt(&self.swap),
        )
    }
}

/// Applies a swarm's faults to a world, one round per tick.
pub struct Injector {
    swarm: Swarm,
    rng: ChaCha8Rng,
}

impl Injector {
    pub fn new(swarm: Swarm, rng: ChaCha8Rng) -> Injector {
        Injector { swarm, rng }
    }

    pub fn period(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn strikes(&mut self, rate: &Option<Rate>) -> Option<Duration> {
        let r = rate.as_ref()?;
        rng::chance(&mut self.rng, r.per_tick).then(|| rng::duration(&mut self.rng, r.min, r.max))
    }

    fn any_node(&mut self, w: &World) -> usize {
        rng::below(&mut self.rng, w.nodes.len() as u64) as usize
    }

    /// A running storage (a node with a disk), if any.
    fn running_storage(&mut self, w: &World, except: Option<usize>) -> Option<usize> {
        let up: Vec<usize> = (0..w.nodes.len())
            .filter(|i| w.disks.has(*i) && w.nodes[*i].is_up() && Some(*i) != except)
            .collect();
        (!up.is_empty()).then(|| *rng::pick(&mut self.rng, &up))
    }

    /// Set the disks' I/O fault rates (when the faults start).
    pub fn start(&self, w: &mut World) {
        w.set_disk_faults(&self.swarm.io_rates());
    }

    pub fn tick(&mut self, w: &mut World) {
        let swarm = self.swarm.clone();
        if let Some(down) = self.strikes(&swarm.crash) {
            let n = self.any_node(w);
            if w.nodes[n].is_up() {
                w.crash(n);
                w.restart_after(n, down);
            }
        }
        if let Some(span) = self.strikes(&swarm.pause) {
            let n = self.any_node(w);
            w.pause(n, span);
        }
        if let Some(span) = self.strikes(&swarm.partition) {
            if !w.net.partitioned() && w.nodes.len() > 1 {
                let count = rng::between(&mut self.rng, 1, w.nodes.len() as u64 - 1) as usize;
                let mut side: Vec<usize> = (0..w.nodes.len()).collect();
                // A random subset: shuffle, then take a prefix.
                for i in (1..side.len()).rev() {
                    let j = rng::below(&mut self.rng, i as u64 + 1) as usize;
                    side.swap(i, j);
                }
                side.truncate(count);
                side.sort_unstable();
                let one_way = rng::chance(&mut self.rng, swarm.one_way);
                w.partition(&side, one_way);
                w.heal_partitions_after(span);
            }
        }
        if let Some(span) = self.strikes(&swarm.clog) {
            let n = self.any_node(w);
            w.clog(n, span);
        }
        if swarm.reset > 0.0 && rng::chance(&mut self.rng, swarm.reset) {
            w.reset_random_connection();
        }
        if let Some(size) = self.strikes(&swarm.clock_jump) {
            let n = self.any_node(w);
            let ns = size.as_nanos() as i64;
            let by = if rng::chance(&mut self.rng, 0.5) {
                ns
            } else {
                -ns
            };
            w.jump_clock(n, by);
        }
        if let Some(down) = self.strikes(&swarm.wipe) {
            if let Some(n) = self.running_storage(w, None) {
                w.restart_wiped(n, down);
            }
        }
        if let Some(down) = self.strikes(&swarm.swap) {
            if let Some(n) = self.running_storage(w, None) {
                if let Some(with) = self.running_storage(w, Some(n)) {
                    w.restart_swapped(n, with, down);
                }
            }
        }
    }
}
