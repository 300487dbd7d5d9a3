//! Checks over what the run recorded, judged independently of the code they check (the
//! node's own comparisons are never re-used here):
//!
//! - [`table_contents`]: what partition tables SAY across every table that was in effect
//!   (finding 14 of issue 7), not only their ids;
//! - [`primary_history`]: who ran the cluster, from the storages' point of view and over
//!   virtual time, not from the election's claim comparison.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::world::World;
use crate::actors::master::election::Role;
use crate::proto::{Address, CellState, ClusterState, Nid, NodeState, NodeType, Ptid};

type Rows = Vec<Vec<(Nid, CellState)>>;

/// The readable cells of a table: (partition, node).
fn readable(rows: &Rows) -> BTreeSet<(u32, Nid)> {
    rows.iter()
        .enumerate()
        .flat_map(|(p, r)| {
            r.iter()
                .filter(|(_, s)| s.is_readable())
                .map(move |(n, _)| (p as u32, *n))
        })
        .collect()
}

/// Partition-table contents, after every step, over every table in effect: held by a
/// storage with readable cells of its own in it, one that can serve under it. A table
/// only a primary holds (one it could not send) or only storages without readable cells
/// hold governs no data: any write under a table reaches, with the table, the storages
/// that take it. (The simulator showed both: a primary cut off from every storage outdating
/// a table no one received; a change that reached only storages without cells before the
/// primary was lost; each time another primary rightly reused the id.)
///
/// - one id is one table, across those storages (a table recorded under an id is the
///   only one that id ever names);
/// - a cell that is not readable (OUT_OF_DATE, or absent) in a table never becomes
///   readable (UP_TO_DATE or FEEDING) in a later table: cells only become readable by
///   replication, and there is none yet; so each table's readable cells are a subset of
///   every older table's (tables without any cell excepted). This also judges recovery: a
///   loaded table that says less than the newest one in effect (a cell outdated there shown
///   readable again) fails here, whatever id it was renumbered to;
/// - a primary past RECOVERING (and not STOPPING) shows readable cells only on storages it
///   lists as RUNNING: a storage lost while the cluster runs has its cells outdated at once
///   (the one exception, a row's last readable cell, makes the table not operational and
///   sends the primary back to RECOVERING in the same step).
///
/// Tables seen before every disk was wiped belong to a database that is gone (masters keep
/// no table on disk): a new one made on the empty disks rightly reuses their ids.
pub fn table_contents() -> impl FnMut(&World) -> Result<(), String> {
    // Every table seen: id -> (rows, who showed it first, when).
    let mut seen: BTreeMap<Ptid, (Rows, String, Duration)> = BTreeMap::new();
    // When each table was last shown (a wiped disk may take it again once restarted).
    let mut last_shown: BTreeMap<Ptid, Duration> = BTreeMap::new();
    move |w: &World| {
        if let Some(since) = super::disk_check::every_disk_wiped_since(w) {
            // Every disk was wiped after these were last shown, so none holds them: the
            // next primary finds only empty storages and makes a new database, whose table
            // ids start again (failover seed 536).
            last_shown.retain(|_, at| *at > since);
            seen.retain(|ptid, _| last_shown.contains_key(ptid));
        }
        let mut tables: Vec<(String, Ptid, Rows)> = Vec::new();
        for (i, s) in w.storages() {
            let (Some(pt), Some(nid)) = (s.partition_table(), s.nid()) else {
                continue;
            };
            let Some(ptid) = pt.ptid() else { continue };
            let rows = pt.rows();
            if readable(&rows).iter().any(|(_, n)| *n == nid) {
                tables.push((w.label(i).to_string(), ptid, rows));
            }
        }
        for (i, m) in w.masters() {
            let Role::Primary(p) = m.role() else { continue };
            if matches!(
                p.cluster_state,
                ClusterState::Recovering | ClusterState::Stopping
            ) {
                continue;
            }
            for (part, nid) in readable(&p.pt.rows()) {
                let state = m.nodes().get(nid).map(|n| n.state);
                if state != Some(NodeState::Running) {
                    return Err(format!(
                        "primary {} is {} with table {:?}, whose partition {part} is readable on {nid}, which it lists as {state:?}",
                        w.label(i),
                        p.cluster_state,
                        p.pt.ptid()
                    ));
                }
            }
        }
        for (who, ptid, rows) in tables {
            last_shown.insert(ptid, w.now());
            if let Some((known, first, at)) = seen.get(&ptid) {
                if *known != rows {
                    return Err(format!(
                        "two partition tables with id {ptid}: {who}'s differs from the one {first} showed at {:.3}s",
                        at.as_secs_f64()
                    ));
                }
                continue;
            }
            let cells = readable(&rows);
            if rows.iter().any(|r| !r.is_empty()) {
                // The nearest older and newer tables with cells bound this one.
                let older = seen
                    .range(..ptid)
                    .rev()
                    .find(|(_, (r, _, _))| r.iter().any(|r| !r.is_empty()));
                if let Some((old, (r, by, _))) = older {
                    let before = readable(r);
                    if let Some((p, n)) = cells.difference(&before).next() {
                        return Err(format!(
                            "partition {p} is readable on {n} in table {ptid} ({who}), but was not in the older table {old} ({by}): a cell became readable without replication"
                        ));
                    }
                }
                let newer = seen
                    .range(ptid..)
                    .find(|(_, (r, _, _))| r.iter().any(|r| !r.is_empty()));
                if let Some((new, (r, by, _))) = newer {
                    if let Some((p, n)) = readable(r).difference(&cells).next() {
                        return Err(format!(
                            "partition {p} is readable on {n} in table {new} ({by}), but not in the older table {ptid} ({who}) seen later: a cell became readable without replication"
                        ));
                    }
                }
            }
            seen.insert(ptid, (rows, who, w.now()));
        }
        Ok(())
    }
}

/// Who ran the cluster, judged from the storages: a storage that is operational serves
/// under the primary it follows. At any time, all the operational storages follow one
/// primary: two groups of storages serving under two
/// primaries is a split brain, whatever the masters believe of their claims. Also kept:
/// the virtual time each master became primary and left RECOVERING, for the message.
pub fn primary_history() -> impl FnMut(&World) -> Result<(), String> {
    // Master label -> since when it has been a primary past RECOVERING.
    let mut past_recovering: BTreeMap<String, Duration> = BTreeMap::new();
    move |w: &World| {
        // Every master node, crashed ones too (they have no actor, and are no primary).
        for n in &w.nodes {
            if super::builder::node_type(&n.label) != Some(NodeType::Master) {
                continue;
            }
            let label = n.label.clone();
            let up = n.is_up()
                && matches!(n.master().map(|m| m.role()), Some(Role::Primary(p)) if p.cluster_state != ClusterState::Recovering);
            if up {
                past_recovering.entry(label).or_insert(w.now());
            } else {
                past_recovering.remove(&label);
            }
        }
        let mut serving: BTreeMap<Address, Vec<&str>> = BTreeMap::new();
        for (i, s) in w.storages() {
            if !w.nodes[i].is_up() || !s.is_operational() {
                continue;
            }
            let Some(primary) = s.primary() else { continue };
            // A storage that has not heard yet that its primary's process died (the reset
            // is on its way) serves under nobody: only a live primary coordinates.
            let alive = w
                .nodes
                .iter()
                .any(|n| n.address == *primary && n.is_up() && n.master().is_some());
            if !alive {
                continue;
            }
            serving.entry(primary.clone()).or_default().push(w.label(i));
        }
        if serving.len() > 1 {
            let groups: Vec<String> = serving
                .iter()
                .map(|(a, s)| format!("{s:?} under {a}"))
                .collect();
            let since: Vec<String> = past_recovering
                .iter()
                .map(|(m, t)| format!("{m} since {:.3}s", t.as_secs_f64()))
                .collect();
            return Err(format!(
                "split brain: operational storages serve under two primaries: {}; primaries past RECOVERING: {}",
                groups.join(", "),
                since.join(", ")
            ));
        }
        Ok(())
    }
}
