//! The client's object cache: revisions `(oid, serial, next_serial)` with their uncompressed
//! data, bounded by bytes of data, evicted least-recently-used, and the snapshot `last_tid`
//! it is right for.
//!
//! An entry whose `next_serial` is None is "current as of `last_tid`": an invalidation
//! closes it (`next_serial = tid`), and a lost track of invalidations drops it
//! (`drop_current`). The blocking library reads it from other threads through
//! [`SharedCache`] without a round trip to the actor, so a hit allocates nothing but the
//! copy of the data handed out: entries live in a slab, linked in LRU order by index, and
//! data is shared as `Arc<[u8]>`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::api::Loaded;
use crate::proto::{Oid, Tid};

/// A hit without copying the data: (data, serial, next_serial).
pub type Hit = (Option<Arc<[u8]>>, Tid, Option<Tid>);

/// The cache as the actor and the library's threads share it.
pub type SharedCache = Arc<Mutex<Cache>>;

/// Lock a shared cache; a poisoned lock (a thread panicked holding it) still holds a
/// consistent cache, as no method panics half-way.
pub fn lock(cache: &SharedCache) -> MutexGuard<'_, Cache> {
    cache.lock().unwrap_or_else(|e| e.into_inner())
}

/// What an entry costs beyond its data (so that empty revisions are bounded too).
const ENTRY_OVERHEAD: u64 = 64;
const NIL: u32 = u32::MAX;

struct Slot {
    oid: Oid,
    serial: Tid,
    next_serial: Option<Tid>,
    data: Option<Arc<[u8]>>,
    /// A backpointer revision's (undo, restore) serial whose data it shares.
    data_serial: Option<Tid>,
    /// LRU neighbours: `prev` is more recently used.
    prev: u32,
    next: u32,
}

impl Slot {
    fn cost(&self) -> u64 {
        ENTRY_OVERHEAD + self.data.as_ref().map_or(0, |d| d.len() as u64)
    }
}

pub struct Cache {
    max_bytes: u64,
    bytes: u64,
    last_tid: Option<Tid>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Each oid's cached revisions (slot indexes), by increasing serial.
    index: BTreeMap<Oid, Vec<u32>>,
    /// Most and least recently used slots.
    head: u32,
    tail: u32,
}

impl Cache {
    pub fn new(max_bytes: u64) -> Cache {
        Cache {
            max_bytes,
            bytes: 0,
            last_tid: None,
            slots: Vec::new(),
            free: Vec::new(),
            index: BTreeMap::new(),
            head: NIL,
            tail: NIL,
        }
    }

    /// The snapshot the "current" entries are right for.
    pub fn last_tid(&self) -> Option<Tid> {
        self.last_tid
    }

    pub fn set_last_tid(&mut self, tid: Option<Tid>) {
        self.last_tid = tid;
    }

    /// Bytes accounted (data plus a fixed cost per entry).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The revision a load asks for, if cached: `at` that serial, `before` the last one
    /// before it, neither the current one as of `last_tid`.
    pub fn get(&mut self, oid: Oid, at: Option<Tid>, before: Option<Tid>) -> Option<Loaded> {
        let i = self.find(oid, at, before)?;
        self.touch(i);
        let s = &self.slots[i as usize];
        Some(Loaded {
            data: s.data.as_deref().map(<[u8]>::to_vec),
            serial: s.serial,
            next_serial: s.next_serial,
            data_serial: s.data_serial,
        })
    }

    /// As `get`, handing out the shared data: (data, serial, next_serial).
    pub fn get_shared(&mut self, oid: Oid, at: Option<Tid>, before: Option<Tid>) -> Option<Hit> {
        let i = self.find(oid, at, before)?;
        self.touch(i);
        let s = &self.slots[i as usize];
        Some((s.data.clone(), s.serial, s.next_serial))
    }

    fn find(&self, oid: Oid, at: Option<Tid>, before: Option<Tid>) -> Option<u32> {
        let revs = self.index.get(&oid)?;
        let slot = |i: &u32| &self.slots[*i as usize];
        match (at, before) {
            (Some(at), _) => revs.iter().copied().find(|i| slot(i).serial == at),
            (None, Some(before)) => {
                let i = *revs.iter().rev().find(|i| slot(i).serial < before)?;
                match slot(&i).next_serial {
                    Some(next) => (next >= before).then_some(i),
                    // Current as of last_tid: right for any `before` up to last_tid + 1.
                    None => self.last_tid.filter(|l| before <= next_tid(*l)).map(|_| i),
                }
            }
            (None, None) => {
                self.last_tid?;
                revs.iter().copied().find(|i| slot(i).next_serial.is_none())
            }
        }
    }

    /// Record a revision (`data_serial`: the serial whose data a backpointer revision
    /// shares). A current one (`next_serial` None) replaces an older current entry of the
    /// oid, and is dropped if a newer one is cached.
    pub fn store(
        &mut self,
        oid: Oid,
        serial: Tid,
        next_serial: Option<Tid>,
        data: Option<Arc<[u8]>>,
        data_serial: Option<Tid>,
    ) {
        if next_serial.is_some_and(|n| n <= serial) {
            return;
        }
        let cost = ENTRY_OVERHEAD + data.as_ref().map_or(0, |d| d.len() as u64);
        if cost > self.max_bytes {
            return;
        }
        let revs: Vec<u32> = self.index.get(&oid).cloned().unwrap_or_default();
        for &i in &revs {
            let s = &self.slots[i as usize];
            if s.serial == serial {
                // Known already: learn a closed end, keep the entry.
                if s.next_serial.is_none() && next_serial.is_some() {
                    self.slots[i as usize].next_serial = next_serial;
                }
                self.touch(i);
                return;
            }
            if next_serial.is_none() && s.next_serial.is_none() {
                if s.serial > serial {
                    return;
                }
                self.remove(i);
            }
        }
        let slot = Slot {
            oid,
            serial,
            next_serial,
            data,
            data_serial,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.bytes += cost;
        self.link_front(i);
        let revs = self.index.entry(oid).or_default();
        let pos = revs
            .iter()
            .position(|j| self.slots[*j as usize].serial > serial)
            .unwrap_or(revs.len());
        revs.insert(pos, i);
        while self.bytes > self.max_bytes && self.tail != NIL {
            self.remove(self.tail);
        }
    }

    /// Transaction `tid` changed `oid`: its current entry ends at `tid`.
    pub fn invalidate(&mut self, oid: Oid, tid: Tid) {
        let Some(revs) = self.index.get(&oid) else {
            return;
        };
        for &i in revs {
            let s = &mut self.slots[i as usize];
            if s.next_serial.is_none() && s.serial < tid {
                s.next_serial = Some(tid);
            }
        }
    }

    /// Invalidations were missed: no entry may claim to be current.
    pub fn drop_current(&mut self) {
        let current: Vec<u32> = self
            .index
            .values()
            .flatten()
            .copied()
            .filter(|i| self.slots[*i as usize].next_serial.is_none())
            .collect();
        for i in current {
            self.remove(i);
        }
    }

    /// Forget everything (the database went back in time).
    pub fn clear(&mut self) {
        let max = self.max_bytes;
        let last = self.last_tid;
        *self = Cache::new(max);
        self.last_tid = last;
    }

    fn remove(&mut self, i: u32) {
        self.unlink(i);
        let s = &mut self.slots[i as usize];
        let cost = s.cost();
        s.data = None;
        let oid = s.oid;
        self.bytes -= cost;
        if let Some(revs) = self.index.get_mut(&oid) {
            revs.retain(|j| *j != i);
            if revs.is_empty() {
                self.index.remove(&oid);
            }
        }
        self.free.push(i);
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
        let s = &mut self.slots[i as usize];
        s.prev = NIL;
        s.next = NIL;
    }

    fn link_front(&mut self, i: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = old;
        }
        if old == NIL {
            self.tail = i;
        } else {
            self.slots[old as usize].prev = i;
        }
        self.head = i;
    }

    fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.link_front(i);
        }
    }

    /// Consistency of the bookkeeping (tests).
    #[cfg(test)]
    pub fn check(&self) -> Result<(), String> {
        let mut n = 0;
        let mut bytes = 0;
        let mut i = self.head;
        while i != NIL {
            n += 1;
            bytes += self.slots[i as usize].cost();
            i = self.slots[i as usize].next;
        }
        let indexed: usize = self.index.values().map(|v| v.len()).sum();
        if n != self.len() || indexed != n || bytes != self.bytes {
            return Err(format!(
                "lru {n} indexed {indexed} len {} bytes {bytes}/{}",
                self.len(),
                self.bytes
            ));
        }
        if self.bytes > self.max_bytes {
            return Err("over budget".into());
        }
        Ok(())
    }
}

/// The first TID after `tid` (a "latest" load reads before it).
pub fn next_tid(tid: Tid) -> Tid {
    Tid(tid.0.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(b: &[u8]) -> Option<Arc<[u8]>> {
        Some(Arc::from(b))
    }

    #[test]
    fn hits_follow_serials_and_the_snapshot() {
        let mut c = Cache::new(1 << 20);
        let o = Oid(1);
        c.set_last_tid(Some(Tid(10)));
        c.store(o, Tid(3), Some(Tid(7)), d(b"a"), None);
        c.store(o, Tid(7), None, d(b"b"), None);
        assert_eq!(
            c.get(o, Some(Tid(3)), None).unwrap().data,
            Some(b"a".to_vec())
        );
        assert_eq!(c.get(o, None, Some(Tid(7))).unwrap().serial, Tid(3));
        assert_eq!(c.get(o, None, Some(Tid(8))).unwrap().serial, Tid(7));
        assert_eq!(c.get(o, None, None).unwrap().serial, Tid(7));
        // Current as of 10 only: a read before 12 may see a revision at 11.
        assert!(c.get(o, None, Some(Tid(11))).is_some());
        assert!(c.get(o, None, Some(Tid(12))).is_none());
        assert!(c.get(o, None, Some(Tid(3))).is_none());
        assert!(c.get(o, Some(Tid(5)), None).is_none());
        // Invalidated at 12: the entry is closed, latest misses.
        c.invalidate(o, Tid(12));
        c.set_last_tid(Some(Tid(12)));
        assert!(c.get(o, None, None).is_none());
        let l = c.get(o, None, Some(Tid(12))).unwrap();
        assert_eq!((l.serial, l.next_serial), (Tid(7), Some(Tid(12))));
        c.check().unwrap();
    }

    #[test]
    fn bounded_by_bytes_least_recently_used_first() {
        let mut c = Cache::new(3 * (ENTRY_OVERHEAD + 100));
        c.set_last_tid(Some(Tid(100)));
        let v = vec![0u8; 100];
        for k in 1..=3 {
            c.store(Oid(k), Tid(1), None, d(&v), None);
        }
        assert!(c.get(Oid(1), None, None).is_some()); // 1 is now the most recent
        c.store(Oid(4), Tid(1), None, d(&v), None);
        assert!(
            c.get(Oid(2), None, None).is_none(),
            "2 was the least recent"
        );
        assert!(c.get(Oid(1), None, None).is_some());
        assert!(c.get(Oid(3), None, None).is_some());
        assert!(c.get(Oid(4), None, None).is_some());
        c.store(Oid(5), Tid(1), None, d(&vec![0u8; 10_000]), None);
        assert!(c.get(Oid(5), None, None).is_none(), "bigger than the cache");
        c.check().unwrap();
        c.drop_current();
        assert!(c.is_empty());
        c.check().unwrap();
    }

    #[test]
    fn a_stale_current_revision_does_not_replace_a_newer_one() {
        let mut c = Cache::new(1 << 20);
        c.set_last_tid(Some(Tid(10)));
        c.store(Oid(1), Tid(8), None, d(b"new"), None);
        c.store(Oid(1), Tid(5), None, d(b"old"), None);
        assert_eq!(c.get(Oid(1), None, None).unwrap().serial, Tid(8));
        c.store(Oid(1), Tid(9), None, d(b"newer"), None);
        assert_eq!(c.get(Oid(1), None, None).unwrap().serial, Tid(9));
        assert_eq!(c.len(), 1);
        c.check().unwrap();
    }

    #[test]
    fn a_backpointer_revision_keeps_its_data_serial() {
        let mut c = Cache::new(1 << 20);
        c.set_last_tid(Some(Tid(10)));
        c.store(Oid(1), Tid(3), Some(Tid(9)), d(b"a"), None);
        c.store(Oid(1), Tid(9), None, d(b"a"), Some(Tid(3)));
        let l = c.get(Oid(1), None, None).unwrap();
        assert_eq!((l.serial, l.data_serial), (Tid(9), Some(Tid(3))));
        assert_eq!(l.data.as_deref(), Some(&b"a"[..]));
        assert_eq!(c.get(Oid(1), Some(Tid(3)), None).unwrap().data_serial, None);
        c.check().unwrap();
    }
}
