//! Per-node wall clocks in virtual time: an offset, a drift, and jumps (backwards too).
//! TIDs and election timestamps come from wall time, so skew is a fault worth simulating.
//! Monotonic time (`Ctx::elapsed`) is the virtual time since the process started.

use std::time::Duration;

use crate::proto::WallTime;

#[derive(Clone, Debug, Default)]
pub struct NodeClock {
    /// Constant offset from true time, in nanoseconds.
    pub offset_ns: i64,
    /// Rate error in parts per million.
    pub drift_ppm: i64,
}

impl NodeClock {
    /// The node's wall clock at virtual time `now`, for a run whose true time started at
    /// `epoch`.
    pub fn wall(&self, epoch: WallTime, now: Duration) -> WallTime {
        let now_ns = now.as_nanos() as i128;
        let t = epoch.0 as i128
            + now_ns
            + now_ns * self.drift_ppm as i128 / 1_000_000
            + self.offset_ns as i128;
        WallTime(t.clamp(0, u64::MAX as i128) as u64)
    }

    /// Step the clock (an NTP correction, an operator's mistake).
    pub fn jump(&mut self, by_ns: i64) {
        self.offset_ns = self.offset_ns.saturating_add(by_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_drift_and_jumps() {
        let epoch = WallTime::from_secs(1_000);
        let mut c = NodeClock {
            offset_ns: -500,
            drift_ppm: 100,
        };
        assert_eq!(
            c.wall(epoch, Duration::from_secs(10)).0,
            1_010_000_000_000 + 1_000_000 - 500
        );
        let before = c.wall(epoch, Duration::from_secs(10));
        c.jump(-2_000_000_000);
        // A second later, the clock reads a second less than before the jump back.
        let after = c.wall(epoch, Duration::from_secs(11));
        assert_eq!(before.0 - after.0, 1_000_000_000 - 100_000);
    }
}
