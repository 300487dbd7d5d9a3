//! Identifiers and time stamps on the wire: node ids (NEO's namespaces, shown as `S1`/`M1`/
//! `C1`/`A1`), ZODB TIDs (the 8-byte packed UTC timestamp), OIDs, partition-table ids, wall
//! time and listening addresses.
//!
//! Calendar arithmetic lives here and nowhere else: a TID encodes a date with 31-day months,
//! so turning it into wall time and carrying seconds into minutes needs real calendar rules.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::states::NodeType;

/// Wall-clock time: nanoseconds since the Unix epoch, UTC. Actors get it from `Ctx::now`,
/// which the simulator skews per node.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct WallTime(pub u64);

impl WallTime {
    pub const NANOS_PER_SEC: u64 = 1_000_000_000;

    pub fn from_secs(secs: u64) -> WallTime {
        WallTime(secs * Self::NANOS_PER_SEC)
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / Self::NANOS_PER_SEC as f64
    }

    pub fn saturating_add(self, d: Duration) -> WallTime {
        WallTime(self.0.saturating_add(d.as_nanos() as u64))
    }

    pub fn saturating_sub(self, d: Duration) -> WallTime {
        WallTime(self.0.saturating_sub(d.as_nanos() as u64))
    }

    /// `YYYY-MM-DD hh:mm:ss.ffffff` (UTC), as neoctl prints time stamps.
    pub fn to_datetime_string(self) -> String {
        let secs = (self.0 / Self::NANOS_PER_SEC) as i64;
        let micros = (self.0 % Self::NANOS_PER_SEC) / 1000;
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let s = secs.rem_euclid(86_400);
        format!(
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{micros:06}",
            s / 3600,
            s / 60 % 60,
            s % 60
        )
    }
}

impl fmt::Debug for WallTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_datetime_string())
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A node id: a signed 32-bit integer whose high byte is the node type's namespace and whose
/// low 24 bits number nodes of that type from 1. Only storage ids are persistent.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Nid(pub i32);

impl Nid {
    pub const MAX_NUMBER: u32 = 0x00ff_ffff;

    fn namespace(ty: NodeType) -> i32 {
        match ty {
            NodeType::Storage => 0x00,
            NodeType::Master => -0x10,
            NodeType::Client => -0x20,
            NodeType::Admin => -0x30,
        }
    }

    /// The `n`th id of a node type; `n` is in `1..=0xffffff`.
    pub fn new(ty: NodeType, n: u32) -> Nid {
        assert!(
            (1..=Self::MAX_NUMBER).contains(&n),
            "node number {n} out of range"
        );
        Nid((Self::namespace(ty) << 24) + n as i32)
    }

    pub fn node_type(self) -> Option<NodeType> {
        let ns = self.0 >> 24;
        NodeType::ALL
            .iter()
            .copied()
            .find(|&ty| Self::namespace(ty) == ns)
    }

    pub fn number(self) -> u32 {
        (self.0 & Self::MAX_NUMBER as i32) as u32
    }
}

impl fmt::Display for Nid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.node_type() {
            Some(ty) => write!(f, "{}{}", ty.letter(), self.number()),
            None => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Debug for Nid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Nid {
    type Err = String;

    fn from_str(s: &str) -> Result<Nid, String> {
        let bad = || {
            format!("invalid node id {s:?} (expected a type letter and a number, like S1 or M2)")
        };
        let mut chars = s.chars();
        let letter = chars.next().ok_or_else(bad)?;
        let ty = NodeType::ALL
            .iter()
            .copied()
            .find(|ty| ty.letter() == letter.to_ascii_uppercase())
            .ok_or_else(bad)?;
        let n: u32 = chars.as_str().parse().map_err(|_| bad())?;
        if !(1..=Self::MAX_NUMBER).contains(&n) {
            return Err(bad());
        }
        Ok(Nid::new(ty, n))
    }
}

/// A ZODB transaction id: high 32 bits count minutes in a calendar of 31-day months since
/// 1900-01-01 (UTC), low 32 bits are the seconds within the minute scaled by 2^32/60.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Tid(pub u64);

/// Year, month, day, hour, minute: the fields packed in a TID's high word.
type Minute = (i64, u32, u32, u32, u32);

impl Tid {
    pub const ZERO: Tid = Tid(0);
    /// The greatest TID SQLite can store (it has signed 64-bit integers only).
    pub const MAX: Tid = Tid(0x7fff_ffff_ffff_ffff);
    pub const INVALID: Tid = Tid(u64::MAX);

    fn pack_high((y, mo, d, h, mi): Minute) -> u32 {
        let v = ((((y - 1900) * 12 + mo as i64 - 1) * 31 + d as i64 - 1) * 24 + h as i64) * 60
            + mi as i64;
        v.clamp(0, u32::MAX as i64) as u32
    }

    fn unpack_high(high: u32) -> Minute {
        let v = high as i64;
        let mi = (v % 60) as u32;
        let v = v / 60;
        let h = (v % 24) as u32;
        let v = v / 24;
        let d = (v % 31) as u32 + 1;
        let v = v / 31;
        let mo = (v % 12) as u32 + 1;
        (v / 12 + 1900, mo, d, h, mi)
    }

    fn minute_to_unix((y, mo, d, h, mi): Minute) -> i64 {
        // A packed date may name a day a month does not have (Feb 31): count it forward from
        // the first of the month, as ZODB's TimeStamp does.
        (days_from_civil(y, mo, 1) + d as i64 - 1) * 86_400 + h as i64 * 3600 + mi as i64 * 60
    }

    fn unix_to_minute(secs: i64) -> Minute {
        let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
        let s = secs.rem_euclid(86_400);
        (y, mo, d, (s / 3600) as u32, (s / 60 % 60) as u32)
    }

    pub fn high(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub fn low(self) -> u32 {
        self.0 as u32
    }

    /// The TID of a wall-clock instant (ZODB's `TimeStamp(*gmtime(t))`), truncating.
    pub fn from_wall(t: WallTime) -> Tid {
        let secs = (t.0 / WallTime::NANOS_PER_SEC) as i64;
        let minute = Self::unix_to_minute(secs);
        let in_minute =
            (secs.rem_euclid(60) as u128) * 1_000_000_000 + (t.0 % WallTime::NANOS_PER_SEC) as u128;
        let low = ((in_minute << 32) / 60_000_000_000).min(u32::MAX as u128) as u64;
        Tid(((Self::pack_high(minute) as u64) << 32) | low)
    }

    /// The first nanosecond whose TID is this one.
    pub fn to_wall(self) -> WallTime {
        let secs = Self::minute_to_unix(Self::unpack_high(self.high()));
        let in_minute = ((self.low() as u128) * 60_000_000_000).div_ceil(1 << 32);
        let nanos = (secs.max(0) as u128) * 1_000_000_000 + in_minute;
        WallTime(nanos.min(u64::MAX as u128) as u64)
    }

    /// NEO's `addTID`: add `n` units to the low word, carrying whole minutes into the date.
    pub fn add_units(self, n: u64) -> Tid {
        let total = self.low() as u128 + n as u128;
        let carry = (total >> 32) as i64;
        let low = (total & 0xffff_ffff) as u64;
        let high = if carry == 0 {
            self.high()
        } else {
            let unix = Self::minute_to_unix(Self::unpack_high(self.high())) + carry * 60;
            Self::pack_high(Self::unix_to_minute(unix))
        };
        Tid(((high as u64) << 32) | low)
    }

    /// ZODB's `laterThan`: this TID if it is greater than `other`, else the next one after it.
    pub fn later_than(self, other: Tid) -> Tid {
        if self > other {
            self
        } else {
            other.add_units(1)
        }
    }

    pub fn to_datetime_string(self) -> String {
        self.to_wall().to_datetime_string()
    }
}

impl fmt::Display for Tid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:016x}", self.0)
    }
}

impl fmt::Debug for Tid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A ZODB object id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Oid(pub u64);

impl Oid {
    pub const ZERO: Oid = Oid(0);
    pub const INVALID: Oid = Oid(u64::MAX);
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:016x}", self.0)
    }
}

impl fmt::Debug for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oid:{:x}", self.0)
    }
}

/// A partition-table id: 1 for a new table, incremented on every change.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug, Default,
)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Ptid(pub u64);

impl Ptid {
    /// Ids at or above this are impossible: a cluster's first table is 1 and every change
    /// adds one, so no cluster gets near it. Refusing such an id from a peer or a disk leaves
    /// 2^62 increments of headroom below `u64::MAX`, so incrementing an accepted id never
    /// overflows.
    pub const LIMIT: Ptid = Ptid(1 << 62);

    /// Whether a node may accept this id from a peer or its disk (see `LIMIT`).
    pub fn is_plausible(self) -> bool {
        self < Self::LIMIT
    }

    /// The id after this one; `None` only for ids no node accepts (see `LIMIT`).
    pub fn next(self) -> Option<Ptid> {
        self.is_plausible().then(|| Ptid(self.0 + 1))
    }
}

impl fmt::Display for Ptid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A listening address as NEO keeps it: host (name or IP) and port. Ordered as NEO orders
/// `(host, port)` tuples, which matters for the election's tie-break.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Address {
    pub host: String,
    pub port: u16,
}

impl Address {
    pub fn new(host: impl Into<String>, port: u16) -> Address {
        Address {
            host: host.into(),
            port,
        }
    }

    /// Parse `host:port`, `[v6]:port`, or a bare host with `default_port`.
    pub fn parse_with_default(s: &str, default_port: Option<u16>) -> Result<Address, String> {
        let s = s.trim();
        let bad = |why: &str| format!("invalid address {s:?}: {why}");
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None if after.is_empty() => (host, None),
                None => return Err(bad("junk after ']'")),
            }
        } else if s.matches(':').count() == 1 {
            let (h, p) = s.split_once(':').expect("one colon");
            (h, Some(p))
        } else if s.contains(':') {
            // A bare IPv6 address.
            (s, None)
        } else {
            (s, None)
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad("port must be 0-65535"))?,
            None => default_port.ok_or_else(|| bad("a port is required (host:port)"))?,
        };
        Ok(Address::new(host, port))
    }
}

impl FromStr for Address {
    type Err = String;

    fn from_str(s: &str) -> Result<Address, String> {
        Address::parse_with_default(s, None)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nid_namespaces_and_text() {
        let s1 = Nid::new(NodeType::Storage, 1);
        assert_eq!(s1.0, 1);
        let m1 = Nid::new(NodeType::Master, 1);
        assert_eq!(m1.0, -0x1000_0000 + 1);
        assert_eq!(Nid::new(NodeType::Client, 3).to_string(), "C3");
        assert_eq!(Nid::new(NodeType::Admin, 1).to_string(), "A1");
        assert_eq!(m1.to_string(), "M1");
        assert_eq!(
            "S12".parse::<Nid>().unwrap(),
            Nid::new(NodeType::Storage, 12)
        );
        assert_eq!("m2".parse::<Nid>().unwrap(), Nid::new(NodeType::Master, 2));
        assert!("X1".parse::<Nid>().is_err());
        assert!("S0".parse::<Nid>().is_err());
        assert!("S".parse::<Nid>().is_err());
        assert!("S16777216".parse::<Nid>().is_err());
    }

    proptest! {
        #[test]
        fn nid_text_round_trips(ty in 0usize..4, n in 1u32..=Nid::MAX_NUMBER) {
            let nid = Nid::new(NodeType::ALL[ty], n);
            prop_assert_eq!(nid.to_string().parse::<Nid>().unwrap(), nid);
            prop_assert_eq!(nid.node_type(), Some(NodeType::ALL[ty]));
        }

        #[test]
        fn tid_wall_round_trip_within_a_unit(secs in 0u64..8_000_000_000, nanos in 0u64..1_000_000_000) {
            let t = WallTime(secs * 1_000_000_000 + nanos);
            let tid = Tid::from_wall(t);
            let back = tid.to_wall();
            // One low-word unit is 60/2^32 s (about 14 ns).
            prop_assert!(back <= t && t.0 - back.0 < 15, "{:?} -> {:?} -> {:?}", t, tid, back);
            prop_assert_eq!(Tid::from_wall(back), tid);
        }

        #[test]
        fn tid_order_follows_time(a in 0u64..8_000_000_000_000_000_000, b in 0u64..8_000_000_000_000_000_000) {
            let (ta, tb) = (Tid::from_wall(WallTime(a)), Tid::from_wall(WallTime(b)));
            if a <= b { prop_assert!(ta <= tb) } else { prop_assert!(ta >= tb) }
        }

        #[test]
        fn tid_add_is_time_addition(secs in 0u64..8_000_000_000, n in 0u64..(1u64 << 40)) {
            let tid = Tid::from_wall(WallTime(secs * 1_000_000_000));
            let added = tid.add_units(n);
            prop_assert!(added > tid || n == 0);
            // Adding n units moves the wall time by n * 60 / 2^32 seconds (within a unit).
            let expect = tid.to_wall().0 as u128 + ((n as u128 * 60_000_000_000) >> 32);
            let got = added.to_wall().0 as u128;
            prop_assert!(expect.abs_diff(got) <= 15, "{} vs {}", expect, got);
        }

        #[test]
        fn later_than_is_strictly_greater(a: u64, b in 0u64..u64::MAX / 2) {
            let (ta, tb) = (Tid(a % (u64::MAX / 2)), Tid(b));
            let l = ta.later_than(tb);
            prop_assert!(l > tb);
            prop_assert!(l >= ta);
        }
    }

    #[test]
    fn tid_matches_zodb_packing() {
        // 1970-01-01 00:00:00: ((70*12)*31)*24*60 minutes since 1900 in the 31-day calendar.
        assert_eq!(Tid::from_wall(WallTime(0)), Tid(0x023c_2b00_0000_0000));
        // 2000-01-01 00:00:30: high = (100*12*31*24*60), low = 30 s = half of 2^32.
        let t = WallTime((days_from_civil(2000, 1, 1) as u64 * 86_400 + 30) * 1_000_000_000);
        assert_eq!(Tid::from_wall(t), Tid((53_568_000u64 << 32) | 0x8000_0000));
        // 2026-03-01: the 31-day calendar skips Feb 29-31, so the day after Feb 28 is 3 * 1440
        // minutes further in the packed form, not one.
        let feb28 = Tid::from_wall(WallTime::from_secs(
            days_from_civil(2026, 2, 28) as u64 * 86_400,
        ));
        let mar1 = Tid::from_wall(WallTime::from_secs(
            days_from_civil(2026, 3, 1) as u64 * 86_400,
        ));
        assert_eq!(mar1.high() - feb28.high(), 4 * 1440);
        assert_eq!(
            WallTime::from_secs(86_400 * 365).to_datetime_string(),
            "1971-01-01 00:00:00.000000"
        );
    }

    #[test]
    fn tid_add_carries_across_month_end() {
        let last = WallTime::from_secs(days_from_civil(2026, 2, 28) as u64 * 86_400 + 86_399);
        let tid = Tid::from_wall(last);
        let next = tid.add_units((1u64 << 32) / 60 + 1);
        assert_eq!(
            &next.to_wall().to_datetime_string()[..19],
            "2026-03-01 00:00:00"
        );
        assert_eq!(tid.later_than(tid), tid.add_units(1));
        assert_eq!(Tid(5).later_than(Tid(2)), Tid(5));
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            "127.0.0.1:10000".parse::<Address>().unwrap(),
            Address::new("127.0.0.1", 10000)
        );
        assert_eq!(
            "[::1]:5".parse::<Address>().unwrap(),
            Address::new("::1", 5)
        );
        assert_eq!(Address::new("::1", 5).to_string(), "[::1]:5");
        assert_eq!(
            Address::parse_with_default("localhost", Some(0)).unwrap(),
            Address::new("localhost", 0)
        );
        assert!("localhost".parse::<Address>().is_err());
        assert!("h:99999".parse::<Address>().is_err());
        assert!(":1".parse::<Address>().is_err());
    }
}
