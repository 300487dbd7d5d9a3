//! Finding the primary master (NEO's bootstrap): try the known masters in turn, follow the
//! hints of `NotPrimaryMaster`, and report when every master was tried without success.
//! Secondary masters then claim the primary role; other nodes start over.

use std::collections::BTreeSet;

use crate::proto::Address;

pub struct PrimaryFinder {
    known: BTreeSet<Address>,
    /// Our own address, never a candidate (masters).
    own: Option<Address>,
    /// The master we try or follow.
    target: Option<Address>,
    /// Masters tried since we last found a primary.
    tried: BTreeSet<Address>,
}

impl PrimaryFinder {
    pub fn new(known: impl IntoIterator<Item = Address>, own: Option<Address>) -> PrimaryFinder {
        let mut known: BTreeSet<Address> = known.into_iter().collect();
        if let Some(o) = &own {
            known.insert(o.clone());
        }
        PrimaryFinder {
            known,
            own,
            target: None,
            tried: BTreeSet::new(),
        }
    }

    /// Every master address known, ours included.
    pub fn known(&self) -> &BTreeSet<Address> {
        &self.known
    }

    pub fn learn(&mut self, address: &Address) {
        self.known.insert(address.clone());
    }

    pub fn target(&self) -> Option<&Address> {
        self.target.as_ref()
    }

    fn candidate(&self, a: &Address) -> bool {
        Some(a) != self.own.as_ref() && !self.tried.contains(a)
    }

    /// Start following `address` (an election outcome, a hint).
    pub fn follow(&mut self, address: Address) {
        self.learn(&address);
        self.target = Some(address);
    }

    /// The target accepted us: next time, every master is a candidate again.
    pub fn found(&mut self) {
        self.tried.clear();
    }

    /// The primary we were identified by is gone: try it again first.
    pub fn lost(&mut self) -> Option<Address> {
        self.tried.clear();
        self.target.clone()
    }

    /// The target could not be reached, or is not primary and gave `hint`: follow the hint
    /// if it is new, else the next untried master in turn. None when all were tried.
    pub fn next(&mut self, hint: Option<Address>) -> Option<Address> {
        if let Some(t) = self.target.take() {
            self.tried.insert(t.clone());
            self.target = Some(t);
        }
        if let Some(h) = hint {
            self.learn(&h);
            if self.candidate(&h) {
                self.target = Some(h.clone());
                return Some(h);
            }
        }
        // Round robin, from the master after the last one tried.
        let after = self.target.clone();
        let next = after
            .as_ref()
            .and_then(|a| {
                self.known
                    .range(a.clone()..)
                    .skip(1)
                    .find(|a| self.candidate(a))
            })
            .or_else(|| self.known.iter().find(|a| self.candidate(a)))
            .cloned();
        if let Some(n) = &next {
            self.target = Some(n.clone());
        }
        next
    }

    /// Every master was tried: start a new round.
    pub fn restart(&mut self) -> Option<Address> {
        self.tried.clear();
        self.target = None;
        self.next(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(p: u16) -> Address {
        Address::new("h", p)
    }

    #[test]
    fn tries_every_master_then_reports_exhaustion() {
        let mut f = PrimaryFinder::new([a(1), a(2), a(3)], Some(a(2)));
        assert_eq!(f.restart(), Some(a(1)));
        assert_eq!(f.next(None), Some(a(3)), "our own address is skipped");
        assert_eq!(f.next(None), None);
        assert_eq!(f.restart(), Some(a(1)));
    }

    #[test]
    fn follows_new_hints_only() {
        let mut f = PrimaryFinder::new([a(1), a(2), a(3)], None);
        assert_eq!(f.restart(), Some(a(1)));
        assert_eq!(f.next(Some(a(3))), Some(a(3)));
        // A hint back to a master already tried is stale: take the next untried one.
        assert_eq!(f.next(Some(a(1))), Some(a(2)));
        // A hint may teach a new master.
        assert_eq!(f.next(Some(a(9))), Some(a(9)));
        assert!(f.known().contains(&a(9)));
        f.found();
        assert_eq!(f.lost(), Some(a(9)));
        assert_eq!(
            f.next(None),
            Some(a(1)),
            "after a loss every master is a candidate again"
        );
    }
}
