//! The invariants the simulator checks: judgements of the decisions nodes report
//! (`Observation`s, checked as they happen), safety properties of the global state
//! (checked after every step), and the convergence conditions of the liveness phase.

use super::net::NodeIdx;
use super::world::World;
use crate::actors::master::election::Role;
use crate::actors::Observation;
use std::collections::BTreeMap;

use crate::proto::{ClusterState, NodeState, Tid};

/// Judge one reported decision.
pub fn judge(o: &Observation) -> Result<(), String> {
    match o {
        Observation::AcceptedMaster {
            own: Some(own),
            peer: Some(peer),
        } if peer < own => Err(format!(
            "election: a recovering master claiming {own:?} accepted the older claim {peer:?} instead of yielding"
        )),
        Observation::ClusterStarted {
            ptid,
            missing,
            startup_allowed: false,
        } if !missing.is_empty() => Err(format!(
            "split brain: a primary started the cluster on table {ptid:?} without {missing:?}, which hold readable cells"
        )),
        Observation::Yielded { own, to } if to >= own => {
            Err(format!("election: the claim {own:?} yielded to the younger claim {to:?}"))
        }
        _ => Ok(()),
    }
}

/// The ids primaries handed out (`Observation::HandedOut`): none twice, and each above
/// every id handed out anywhere before its primary started the cluster (a new primary
/// starts above the reservations of the previous ones). A primary cut off from its
/// storages may still hand out ids it reserved while a new one serves: those are below
/// the new primary's, never equal.
#[derive(Default, Debug)]
pub struct HandedOut {
    /// OID ranges: first -> (last, node).
    oids: BTreeMap<u64, (u64, NodeIdx)>,
    ttids: BTreeMap<Tid, NodeIdx>,
    /// Per node, the greatest OID and TTID handed out when it last started the cluster.
    floors: BTreeMap<NodeIdx, (Option<u64>, Option<Tid>)>,
}

impl HandedOut {
    pub fn observe(&mut self, node: NodeIdx, o: &Observation) -> Result<(), String> {
        match o {
            Observation::ClusterStarted { ptid: None, .. } => {
                // A new database (every disk empty): ids start over.
                *self = HandedOut::default();
            }
            Observation::ClusterStarted { .. } => {
                let oid = self.oids.values().map(|(l, _)| *l).max();
                let ttid = self.ttids.keys().next_back().copied();
                self.floors.insert(node, (oid, ttid));
            }
            Observation::HandedOut { oids, ttid } => {
                let floor = self.floors.get(&node).copied().unwrap_or_default();
                if let Some((first, last)) = oids.map(|(f, l)| (f.0, l.0)) {
                    if floor.0.is_some_and(|f| first <= f) {
                        return Err(format!(
                            "OIDs {first}..={last} handed out, not above {} handed out before this primary started",
                            floor.0.unwrap_or_default()
                        ));
                    }
                    let before = self.oids.range(..=last).next_back();
                    if let Some((f, (l, who))) = before.filter(|(_, (l, _))| *l >= first) {
                        return Err(format!(
                            "OIDs {first}..={last} handed out, overlapping {f}..={l} handed out by node {who}"
                        ));
                    }
                    self.oids.insert(first, (last, node));
                }
                if let Some(t) = ttid {
                    if floor.1.is_some_and(|f| *t <= f) {
                        return Err(format!(
                            "TTID {t:?} handed out, not above {:?} handed out before this primary started",
                            floor.1.unwrap_or_default()
                        ));
                    }
                    if let Some(who) = self.ttids.insert(*t, node) {
                        return Err(format!("TTID {t:?} handed out again (first by node {who})"));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Safety of the election, after every step.
pub fn election_safety(w: &World) -> Result<(), String> {
    let mut past_recovering = vec![];
    for (i, m) in w.masters() {
        m.check_invariants()
            .map_err(|e| format!("{}: {e}", w.label(i)))?;
        if m.following().is_some_and(|(p, _)| p == m.address()) {
            return Err(format!("election: {} follows itself", w.label(i)));
        }
        if matches!(m.role(), Role::Primary(p) if p.cluster_state != ClusterState::Recovering) {
            past_recovering.push(i);
        }
    }
    // A primary cut off from its storages believes it is past RECOVERING until its idle
    // checks tell it otherwise (DEAD_AFTER), so two such beliefs may overlap that long.
    // What must never happen is two primaries that can both serve: each with every
    // partition readable on storages that follow it and that it counts as running.
    let serving: Vec<&str> = past_recovering
        .into_iter()
        .filter(|i| can_serve(w, *i))
        .map(|i| w.label(i))
        .collect();
    if serving.len() > 1 {
        return Err(format!(
            "two primaries past RECOVERING can both serve: {serving:?}"
        ));
    }
    Ok(())
}

/// Whether the master at `i` (a primary) can serve: its table is operational on the
/// storages that follow it and that it counts as running.
pub fn can_serve(w: &World, i: usize) -> bool {
    let Some(m) = w.nodes[i].master() else {
        return false;
    };
    let Some(pt) = m.primary_table() else {
        return false;
    };
    let followers: Vec<crate::proto::Nid> = w
        .storages()
        .filter(|(j, s)| w.nodes[*j].is_up() && s.primary() == Some(m.address()))
        .filter_map(|(_, s)| s.nid())
        .filter(|n| {
            m.nodes()
                .get(*n)
                .is_some_and(|info| info.state == NodeState::Running)
        })
        .collect();
    pt.operational(|n| followers.contains(&n), &[])
}

/// Whether the election converged: among running masters exactly one primary, every other
/// one an identified secondary naming it, and the primary listing them all as running.
/// The error says what is still missing.
pub fn election_converged(w: &World) -> Result<(), String> {
    election_converged_among(w, |_| true)
}

/// `election_converged`, counting only the running masters that `member` selects (the side
/// of a partition, say).
pub fn election_converged_among(w: &World, member: impl Fn(usize) -> bool) -> Result<(), String> {
    let up: Vec<_> = w
        .masters()
        .filter(|(i, _)| w.nodes[*i].is_up() && member(*i))
        .collect();
    if up.is_empty() {
        return Ok(());
    }
    let primaries: Vec<_> = up
        .iter()
        .filter(|(_, m)| matches!(m.role(), Role::Primary(_)))
        .collect();
    let [(pi, p)] = primaries.as_slice() else {
        let labels: Vec<&str> = primaries.iter().map(|(i, _)| w.label(*i)).collect();
        return Err(format!(
            "{} primaries among {} running masters: {labels:?}",
            primaries.len(),
            up.len()
        ));
    };
    for (i, m) in &up {
        if i == pi {
            continue;
        }
        match m.following() {
            Some((primary, s))
                if s.identified && primary == p.address() && s.primary_nid == p.nid() => {}
            _ => {
                let other = m.role();
                return Err(format!(
                    "{} is not an identified secondary of {}: {other:?}",
                    w.label(*i),
                    w.label(*pi)
                ));
            }
        }
        let listed = p.nodes().by_address(m.address());
        if !listed.is_some_and(|n| n.state == NodeState::Running && n.nid == m.nid()) {
            return Err(format!(
                "primary {} does not list {} as running: {listed:?}",
                w.label(*pi),
                w.label(*i)
            ));
        }
    }
    Ok(())
}

/// The current primary, if exactly one running master plays it.
pub fn primary(w: &World) -> Option<NodeIdx> {
    let mut p = w
        .masters()
        .filter(|(i, m)| w.nodes[*i].is_up() && matches!(m.role(), Role::Primary(_)))
        .map(|(i, _)| i);
    let first = p.next();
    if p.next().is_some() {
        None
    } else {
        first
    }
}
