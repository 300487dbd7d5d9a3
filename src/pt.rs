//! The partition table: which storage nodes hold which partitions, in which cell state.
//!
//! `np` partitions (rows), each with cells `(node, state)`, at most one per node; `nr` the
//! wanted number of replicas (a partition should have `nr + 1` readable cells). The id
//! (`ptid`) grows by one with every change; change lists are what `NotifyPartitionChanges`
//! carries. The master owns the authoritative table and runs `make`, `tweak`, `outdate`
//! and `drop_nodes`; other nodes keep a copy and `apply` changes.
//!
//! Pure data and functions: node states come in as arguments.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::proto::{CellState, Nid, Ptid};

/// One change of a cell: DISCARDED means the cell is removed.
pub type Change = (u32, Nid, CellState);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTable {
    ptid: Option<Ptid>,
    replicas: u32,
    /// Each row's cells, ordered by node id.
    rows: Vec<BTreeMap<Nid, CellState>>,
    /// Nodes the table counts as members: those with cells, and storages added with
    /// `neoctl add` that have none yet (tweak gives them some).
    nodes: BTreeSet<Nid>,
}

/// The most partitions a table may have (as neo.conf's `partitions` allows): a table from a
/// peer or a disk with more is refused before anything is sized by it.
pub const MAX_PARTITIONS: u32 = 65_535;

/// Check a whole table a peer sent (`SendPartitionTable`, `AnswerPartitionTable`) before
/// building it: a plausible id, 1 to `MAX_PARTITIONS` rows, some cells, storage node ids
/// only, no node twice in a row. The error names what is wrong, for the protocol error.
pub fn check_table(ptid: Option<Ptid>, rows: &[Vec<(Nid, CellState)>]) -> Result<(), String> {
    if let Some(p) = ptid.filter(|p| !p.is_plausible()) {
        return Err(format!("impossible partition table id {p}"));
    }
    if rows.is_empty() || rows.len() > MAX_PARTITIONS as usize {
        return Err(format!("a partition table of {} partitions", rows.len()));
    }
    if rows.iter().all(|r| r.is_empty()) {
        // Every table is made over at least one node, and never loses its last cells.
        return Err("a partition table without any cell".into());
    }
    for (offset, row) in rows.iter().enumerate() {
        check_cells(offset, row.iter().map(|(n, _)| *n))?;
        if let Some((n, _)) = row.iter().find(|(_, s)| *s == CellState::Discarded) {
            return Err(format!("a DISCARDED cell of {n} in a whole table"));
        }
        let mut seen = BTreeSet::new();
        if let Some((n, _)) = row.iter().find(|(n, _)| !seen.insert(*n)) {
            return Err(format!("{n} twice in partition {offset}"));
        }
    }
    Ok(())
}

/// Every node of a row must be a storage.
fn check_cells(offset: usize, nids: impl Iterator<Item = Nid>) -> Result<(), String> {
    for n in nids {
        if n.node_type() != Some(crate::proto::NodeType::Storage) {
            return Err(format!("{n} is not a storage node (partition {offset})"));
        }
    }
    Ok(())
}

/// Why an operation on the table was refused (worded for neoctl's DENIED answer).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl PartitionTable {
    /// An empty table of `partitions` rows.
    pub fn new(partitions: u32, replicas: u32) -> PartitionTable {
        assert!(partitions > 0, "a table has at least one partition");
        PartitionTable {
            ptid: None,
            replicas,
            rows: vec![BTreeMap::new(); partitions as usize],
            nodes: BTreeSet::new(),
        }
    }

    /// A full table as `SendPartitionTable` / `AnswerPartitionTable` carry it.
    pub fn from_rows(
        ptid: Option<Ptid>,
        replicas: u32,
        rows: &[Vec<(Nid, CellState)>],
    ) -> PartitionTable {
        let mut pt = PartitionTable::new(rows.len().max(1) as u32, replicas);
        pt.ptid = ptid;
        for (offset, row) in rows.iter().enumerate() {
            for (nid, state) in row {
                if *state != CellState::Discarded {
                    pt.rows[offset].insert(*nid, *state);
                    pt.nodes.insert(*nid);
                }
            }
        }
        pt
    }

    pub fn ptid(&self) -> Option<Ptid> {
        self.ptid
    }

    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    pub fn partitions(&self) -> u32 {
        self.rows.len() as u32
    }

    /// The rows as the wire carries them.
    pub fn rows(&self) -> Vec<Vec<(Nid, CellState)>> {
        self.rows
            .iter()
            .map(|r| r.iter().map(|(n, s)| (*n, *s)).collect())
            .collect()
    }

    pub fn row(&self, offset: u32) -> impl Iterator<Item = (Nid, CellState)> + '_ {
        self.rows[offset as usize].iter().map(|(n, s)| (*n, *s))
    }

    pub fn cell(&self, offset: u32, nid: Nid) -> Option<CellState> {
        self.rows[offset as usize].get(&nid).copied()
    }

    /// Every node the table counts.
    pub fn nodes(&self) -> &BTreeSet<Nid> {
        &self.nodes
    }

    /// Every row has at least one cell.
    pub fn is_filled(&self) -> bool {
        self.rows.iter().all(|r| !r.is_empty())
    }

    /// Whether the cluster can serve: every row has a readable cell on a running node
    /// (`running`), not counting `excluded` nodes.
    pub fn operational(&self, running: impl Fn(Nid) -> bool, excluded: &[Nid]) -> bool {
        self.is_filled()
            && self.rows.iter().all(|r| {
                r.iter()
                    .any(|(n, s)| s.is_readable() && running(*n) && !excluded.contains(n))
            })
    }

    /// Nodes with at least one readable cell.
    pub fn readable_nodes(&self) -> BTreeSet<Nid> {
        self.rows
            .iter()
            .flat_map(|r| r.iter().filter(|(_, s)| s.is_readable()).map(|(n, _)| *n))
            .collect()
    }

    /// Cells (not FEEDING) each node has, for balance.
    pub fn cell_counts(&self) -> BTreeMap<Nid, usize> {
        let mut counts: BTreeMap<Nid, usize> = self.nodes.iter().map(|n| (*n, 0)).collect();
        for r in &self.rows {
            for (n, s) in r {
                if *s != CellState::Feeding {
                    *counts.entry(*n).or_default() += 1;
                }
            }
        }
        counts
    }

    fn bump(&mut self) {
        // Ids come from peers and disks only when plausible (`Ptid::LIMIT`), so this stays
        // far below `u64::MAX`; saturate rather than wrap if that ever failed.
        let next = self.ptid.map_or(Some(Ptid(1)), Ptid::next);
        self.ptid = Some(next.unwrap_or(Ptid(u64::MAX)));
    }

    fn set(&mut self, offset: u32, nid: Nid, state: CellState, changes: &mut Vec<Change>) {
        let row = &mut self.rows[offset as usize];
        if state == CellState::Discarded {
            if row.remove(&nid).is_some() {
                changes.push((offset, nid, state));
            }
        } else if row.insert(nid, state) != Some(state) {
            self.nodes.insert(nid);
            changes.push((offset, nid, state));
        }
    }

    /// Finish a batch of changes: a new id if anything changed.
    fn commit(&mut self, changes: Vec<Change>) -> Vec<Change> {
        if !changes.is_empty() {
            self.bump();
        }
        changes
    }

    /// Count `nodes` as members (storages added with `neoctl add`).
    pub fn add_nodes(&mut self, nodes: &[Nid]) {
        self.nodes.extend(nodes.iter().copied());
    }

    /// A new table over `nodes`: every cell UP_TO_DATE, id 1.
    pub fn make(&mut self, nodes: &[Nid]) -> Vec<Change> {
        assert!(
            self.ptid.is_none() && !self.is_filled(),
            "make is for a new database"
        );
        self.add_nodes(nodes);
        let changes = self.tweak(&[]).expect("nodes to make a table with");
        self.ptid = Some(Ptid(1));
        changes
    }

    /// Balance the table over its nodes except `drop` (NEO's tweak): each partition gets
    /// `min(nr + 1, nodes)` cells, each node about the same number, and the assignment that
    /// moves the least data (readable cells lost first, then others) is chosen, so a second
    /// tweak with the same nodes changes nothing. New cells are OUT_OF_DATE (UP_TO_DATE in
    /// an empty table); a cell taken away stays as FEEDING while its row lacks readable
    /// cells, and is discarded otherwise. Cells of dropped nodes are left alone: they just
    /// do not count, so those nodes can be killed or dropped once the others caught up.
    pub fn tweak(&mut self, drop: &[Nid]) -> Result<Vec<Change>, Refused> {
        let candidates: Vec<Nid> = self
            .nodes
            .iter()
            .copied()
            .filter(|n| !drop.contains(n))
            .collect();
        if candidates.is_empty() {
            return Err(Refused("Can't remove all nodes.".into()));
        }
        let n = candidates.len();
        let np = self.rows.len();
        let repeats = (self.replicas as usize + 1).min(n);
        // The ideal layout: offsets, each repeated `repeats` times, dealt round-robin to n
        // slots; consecutive slots make the repeats of one offset land on distinct slots.
        let mut options: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); n];
        for k in 0..np * repeats {
            options[k % n].insert((k / repeats) as u32);
        }
        // Cost of giving option j to node i: what the node holds now and would lose,
        // readable cells weighing more than the others.
        let cost: Vec<Vec<u64>> = candidates
            .iter()
            .map(|nid| {
                options
                    .iter()
                    .map(|opt| {
                        self.rows
                            .iter()
                            .enumerate()
                            .filter(|(off, _)| !opt.contains(&(*off as u32)))
                            .filter_map(|(_, r)| r.get(nid))
                            .map(|s| match s {
                                CellState::UpToDate => 1 << 20,
                                CellState::Feeding => 0,
                                _ => 1,
                            })
                            .sum()
                    })
                    .collect()
            })
            .collect();
        let assignment = min_cost_assignment(&cost);
        let empty = self.rows.iter().all(|r| r.is_empty());
        let mut changes = Vec::new();
        for offset in 0..np as u32 {
            let chosen: Vec<Nid> = candidates
                .iter()
                .enumerate()
                .filter(|(i, _)| options[assignment[*i]].contains(&offset))
                .map(|(_, nid)| *nid)
                .collect();
            let mut readable = 0;
            for nid in &chosen {
                match self.cell(offset, *nid) {
                    Some(CellState::Feeding) => {
                        self.set(offset, *nid, CellState::UpToDate, &mut changes);
                        readable += 1;
                    }
                    Some(s) => readable += s.is_readable() as usize,
                    None if empty => {
                        self.set(offset, *nid, CellState::UpToDate, &mut changes);
                        readable += 1;
                    }
                    None => self.set(offset, *nid, CellState::OutOfDate, &mut changes),
                }
            }
            let leaving: Vec<(Nid, CellState)> = self
                .row(offset)
                .filter(|(nid, _)| !chosen.contains(nid) && !drop.contains(nid))
                .collect();
            for (nid, state) in leaving {
                if state.is_readable() && readable < repeats {
                    readable += 1;
                    self.set(offset, nid, CellState::Feeding, &mut changes);
                } else {
                    self.set(offset, nid, CellState::Discarded, &mut changes);
                }
            }
        }
        Ok(self.commit(changes))
    }

    /// A node went down (`lost`), or recovery ends without some nodes: readable cells on
    /// nodes that are not running become OUT_OF_DATE (FEEDING ones are discarded), except
    /// the lost node's cell in a row left without any running readable cell, so that the
    /// cluster can restart with that node later instead of considering the data lost.
    /// `keep_last = false` is the `pt-outdate-last` mutant.
    pub fn outdate(
        &mut self,
        lost: Option<Nid>,
        running: impl Fn(Nid) -> bool,
        keep_last: bool,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        for offset in 0..self.rows.len() as u32 {
            let mut spared = if keep_last { lost } else { None };
            let mut stale = Vec::new();
            for (nid, state) in self.row(offset) {
                if state.is_readable() {
                    if running(nid) {
                        spared = None;
                    } else {
                        stale.push((nid, state));
                    }
                }
            }
            for (nid, state) in stale {
                if Some(nid) == spared {
                    continue;
                }
                let to = if state == CellState::Feeding {
                    CellState::Discarded
                } else {
                    CellState::OutOfDate
                };
                self.set(offset, nid, to, &mut changes);
            }
        }
        self.commit(changes)
    }

    /// Remove nodes (`neoctl drop`): their cells go, a FEEDING cell of an affected row
    /// becomes UP_TO_DATE again. Refused if a row would lose its last UP_TO_DATE or FEEDING
    /// cell. With `dry_run`, only the check (for `neoctl kill`).
    pub fn drop_nodes(&mut self, nodes: &[Nid], dry_run: bool) -> Result<Vec<Change>, Refused> {
        for (offset, row) in self.rows.iter().enumerate() {
            let affected = row.keys().any(|n| nodes.contains(n));
            let remains = row
                .iter()
                .any(|(n, s)| !nodes.contains(n) && s.is_readable());
            let had = row.values().any(|s| s.is_readable());
            if affected && had && !remains {
                return Err(Refused(format!(
                    "Refuse to drop nodes that contain the only readable copies of partition {offset}"
                )));
            }
        }
        if dry_run {
            return Ok(Vec::new());
        }
        let mut changes = Vec::new();
        for offset in 0..self.rows.len() as u32 {
            let affected: Vec<Nid> = self
                .row(offset)
                .map(|(n, _)| n)
                .filter(|n| nodes.contains(n))
                .collect();
            if affected.is_empty() {
                continue;
            }
            for nid in affected {
                self.set(offset, nid, CellState::Discarded, &mut changes);
            }
            let feeding: Vec<Nid> = self
                .row(offset)
                .filter(|(_, s)| *s == CellState::Feeding)
                .map(|(n, _)| n)
                .collect();
            for nid in feeding {
                self.set(offset, nid, CellState::UpToDate, &mut changes);
            }
        }
        for n in nodes {
            self.nodes.remove(n);
        }
        Ok(self.commit(changes))
    }

    /// Change the wanted number of replicas (`neoctl set replicas`): a new id, no tweak.
    pub fn set_replicas(&mut self, replicas: u32) {
        self.replicas = replicas;
        self.bump();
    }

    /// Apply a change list received from the primary; it must be the next id.
    pub fn apply(&mut self, ptid: Ptid, replicas: u32, changes: &[Change]) -> Result<(), String> {
        let expected = self.ptid.map_or(Some(Ptid(1)), Ptid::next);
        if Some(ptid) != expected {
            return Err(format!(
                "partition table change {ptid} does not follow {:?}",
                self.ptid
            ));
        }
        let mut ignored = Vec::new();
        for &(offset, nid, _) in changes {
            if offset as usize >= self.rows.len() {
                return Err(format!("partition {offset} out of range"));
            }
            check_cells(offset as usize, std::iter::once(nid))?;
        }
        for &(offset, nid, state) in changes {
            self.set(offset, nid, state, &mut ignored);
        }
        self.ptid = Some(ptid);
        self.replicas = replicas;
        Ok(())
    }

    /// The compact form `neoctl print pt` shows: a line per node, a letter per partition
    /// (`.` for none), with a ruler of `v` every 10 partitions.
    pub fn render(&self, node_state: impl Fn(Nid) -> char) -> String {
        let mut out = String::new();
        let np = self.rows.len();
        let ruler: String = (0..np)
            .map(|i| if i % 10 == 0 { 'v' } else { ' ' })
            .collect();
        let _ = writeln!(out, "{:<7}  {}", "", ruler.trim_end());
        for nid in &self.nodes {
            let cells: String = self
                .rows
                .iter()
                .map(|r| r.get(nid).map_or('.', |s| s.letter()))
                .collect();
            let _ = writeln!(
                out,
                "{:<5} {}  {}",
                nid.to_string(),
                node_state(*nid),
                cells
            );
        }
        out
    }
}

/// The assignment of rows (agents) to columns (tasks) of a square cost matrix with the
/// smallest total cost (the Hungarian algorithm, O(n³)); ties go to the lowest indices, so
/// the result is deterministic.
fn min_cost_assignment(cost: &[Vec<u64>]) -> Vec<usize> {
    let n = cost.len();
    if n == 0 {
        return Vec::new();
    }
    let inf = i128::MAX / 4;
    // 1-based potentials, as in the classic formulation.
    let mut u = vec![0i128; n + 1];
    let mut v = vec![0i128; n + 1];
    let mut p = vec![0usize; n + 1]; // p[j]: row assigned to column j
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        let mut minv = vec![inf; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = inf;
            let mut j1 = 0;
            for j in 1..=n {
                if !used[j] {
                    let cur = cost[i0 - 1][j - 1] as i128 - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut assignment = vec![0; n];
    for j in 1..=n {
        if p[j] > 0 {
            assignment[p[j] - 1] = j - 1;
        }
    }
    assignment
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::NodeType;
    use proptest::prelude::*;

    fn s(n: u32) -> Nid {
        Nid::new(NodeType::Storage, n)
    }

    fn nodes(k: u32) -> Vec<Nid> {
        (1..=k).map(s).collect()
    }

    fn all_running(_: Nid) -> bool {
        true
    }

    #[test]
    fn make_spreads_replicas_evenly() {
        let mut pt = PartitionTable::new(12, 1);
        let changes = pt.make(&nodes(3));
        assert_eq!(pt.ptid(), Some(Ptid(1)));
        assert_eq!(changes.len(), 24);
        for off in 0..12 {
            let row: Vec<_> = pt.row(off).collect();
            assert_eq!(row.len(), 2, "partition {off}: {row:?}");
            assert!(row.iter().all(|(_, st)| *st == CellState::UpToDate));
        }
        assert!(pt.cell_counts().values().all(|c| *c == 8));
        assert!(pt.operational(all_running, &[]));
    }

    #[test]
    fn assignment_is_optimal() {
        let cost = vec![vec![4, 1, 3], vec![2, 0, 5], vec![3, 2, 2]];
        let a = min_cost_assignment(&cost);
        let total: u64 = a.iter().enumerate().map(|(i, j)| cost[i][*j]).sum();
        assert_eq!(total, 5);
    }

    #[test]
    fn tweak_moves_partitions_to_a_new_node_through_feeding() {
        let mut pt = PartitionTable::new(4, 0);
        pt.make(&nodes(1));
        pt.add_nodes(&[s(2)]);
        let changes = pt.tweak(&[]).unwrap();
        assert_eq!(pt.ptid(), Some(Ptid(2)));
        // Two partitions move: new OUT_OF_DATE cells on S2, the old ones kept as FEEDING.
        let out: Vec<_> = changes
            .iter()
            .filter(|c| c.2 == CellState::OutOfDate)
            .collect();
        let feeding: Vec<_> = changes
            .iter()
            .filter(|c| c.2 == CellState::Feeding)
            .collect();
        assert_eq!((out.len(), feeding.len()), (2, 2), "{changes:?}");
        assert!(out.iter().all(|c| c.1 == s(2)) && feeding.iter().all(|c| c.1 == s(1)));
        assert!(pt.operational(all_running, &[]));
        // Tweaking again with the same nodes changes nothing.
        assert_eq!(pt.tweak(&[]).unwrap(), vec![]);
        assert_eq!(pt.ptid(), Some(Ptid(2)));
    }

    #[test]
    fn outdate_keeps_the_last_readable_cell() {
        let mut pt = PartitionTable::new(2, 1);
        pt.make(&nodes(2));
        let running = |n: Nid| n != s(1);
        let changes = pt.outdate(Some(s(1)), running, true);
        assert_eq!(
            changes,
            vec![
                (0, s(1), CellState::OutOfDate),
                (1, s(1), CellState::OutOfDate)
            ]
        );
        assert!(pt.operational(running, &[]));
        // Now S2 goes too: its cells are the last readable ones, they stay.
        let none = |_: Nid| false;
        assert_eq!(pt.outdate(Some(s(2)), none, true), vec![]);
        assert_eq!(pt.cell(0, s(2)), Some(CellState::UpToDate));
        // The mutant outdates them as well.
        let mut m = pt.clone();
        assert_eq!(m.outdate(Some(s(2)), none, false).len(), 2);
        assert!(m.readable_nodes().is_empty());
    }

    #[test]
    fn drop_refuses_to_lose_the_last_readable_copy() {
        let mut pt = PartitionTable::new(3, 0);
        pt.make(&nodes(2));
        let e = pt.drop_nodes(&[s(1)], false).unwrap_err();
        assert!(e.0.contains("only readable copies of partition"), "{e}");
        let mut pt = PartitionTable::new(3, 1);
        pt.make(&nodes(2));
        let changes = pt.drop_nodes(&[s(1)], false).unwrap();
        assert_eq!(changes.len(), 3);
        assert!(!pt.nodes().contains(&s(1)));
        assert!(pt.operational(all_running, &[]));
    }

    #[test]
    fn apply_requires_the_next_id() {
        let mut master = PartitionTable::new(4, 0);
        master.make(&nodes(2));
        let mut copy = PartitionTable::from_rows(master.ptid(), 0, &master.rows());
        assert_eq!(copy, master);
        master.add_nodes(&[s(3)]);
        let changes = master.tweak(&[]).unwrap();
        assert!(copy.apply(Ptid(3), 0, &changes).is_err());
        copy.apply(master.ptid().unwrap(), 0, &changes).unwrap();
        assert_eq!(copy.rows(), master.rows());
    }

    #[test]
    fn render_is_neoctl_like() {
        let mut pt = PartitionTable::new(3, 0);
        pt.make(&nodes(2));
        let text = pt.render(|_| 'R');
        assert!(
            text.contains("S1    R  U.U") && text.contains("S2    R  .U."),
            "{text}"
        );
    }

    proptest! {
        /// After any sequence of node additions and tweaks, the table is operational,
        /// every partition has min(nr+1, nodes) non-FEEDING cells on member nodes, the nodes'
        /// loads differ by at most one, and a second tweak changes nothing.
        #[test]
        fn tweak_balances_and_is_stable(np in 1u32..40, nr in 0u32..3, first in 1u32..5, added in proptest::collection::vec(1u32..3, 0..4)) {
            let mut pt = PartitionTable::new(np, nr);
            pt.make(&nodes(first));
            let mut total = first;
            for k in added {
                let new: Vec<Nid> = (total + 1..=total + k).map(s).collect();
                total += k;
                pt.add_nodes(&new);
                let before = pt.ptid();
                let changes = pt.tweak(&[]).unwrap();
                prop_assert_eq!(pt.ptid().map(|p| p.0), before.map(|p| p.0 + (!changes.is_empty()) as u64));
                // Replication finishes: OUT_OF_DATE cells become UP_TO_DATE, FEEDING ones go.
                for off in 0..np {
                    let row: Vec<_> = pt.row(off).collect();
                    for (n, st) in row {
                        let to = match st { CellState::OutOfDate => CellState::UpToDate, CellState::Feeding => CellState::Discarded, s => s };
                        let mut ignored = vec![];
                        pt.set(off, n, to, &mut ignored);
                    }
                }
                prop_assert!(pt.operational(all_running, &[]));
            }
            let repeats = ((nr + 1).min(total)) as usize;
            for off in 0..np {
                prop_assert_eq!(pt.row(off).filter(|(_, st)| *st != CellState::Feeding).count(), repeats);
            }
            let counts = pt.cell_counts();
            let (lo, hi) = (counts.values().min().unwrap(), counts.values().max().unwrap());
            prop_assert!(hi - lo <= 1, "unbalanced: {:?}", counts);
            prop_assert_eq!(pt.tweak(&[]).unwrap(), vec![]);
        }

        /// Outdating never leaves a row that had a readable cell without one, and only
        /// touches cells of nodes that are not running.
        #[test]
        fn outdate_never_loses_the_last_readable_cell(np in 1u32..20, nr in 0u32..3, k in 1u32..6, down in proptest::collection::btree_set(1u32..6, 0..6), lost in 1u32..6) {
            let mut pt = PartitionTable::new(np, nr);
            pt.make(&nodes(k));
            let running = |n: Nid| !down.contains(&n.number());
            let before = pt.clone();
            let changes = pt.outdate(Some(s(lost)), running, true);
            for (off, nid, _) in &changes {
                prop_assert!(!running(*nid), "changed a running node's cell {:?}", (off, nid));
            }
            for off in 0..np {
                let lost_readable = before.cell(off, s(lost)).is_some_and(|st| st.is_readable());
                let running_readable = before.row(off).any(|(n, st)| st.is_readable() && running(n));
                if running_readable {
                    // Cells of running nodes are untouched.
                    prop_assert!(pt.row(off).any(|(n, st)| st.is_readable() && running(n)));
                } else if lost_readable {
                    // The lost node's cell is the last hope of this partition: kept.
                    prop_assert!(pt.cell(off, s(lost)).is_some_and(|st| st.is_readable()));
                }
                // Anything else readable on a node that is not running was outdated.
                for (n, st) in pt.row(off) {
                    prop_assert!(!st.is_readable() || running(n) || n == s(lost));
                }
            }
        }

        /// Dropping either refuses, leaving the table as it was, because some row's only
        /// readable cells are on the dropped nodes; or keeps a readable cell in every row.
        #[test]
        fn drop_keeps_data_readable(np in 1u32..20, nr in 0u32..3, k in 1u32..6, gone in proptest::collection::btree_set(1u32..6, 1..4)) {
            let mut pt = PartitionTable::new(np, nr);
            pt.make(&nodes(k));
            let before = pt.clone();
            let gone: Vec<Nid> = gone.into_iter().map(s).collect();
            if pt.drop_nodes(&gone, false).is_ok() {
                for off in 0..np {
                    prop_assert!(pt.row(off).any(|(_, st)| st.is_readable()));
                    prop_assert!(pt.row(off).all(|(n, _)| !gone.contains(&n)));
                }
            } else {
                prop_assert_eq!(&pt, &before);
                prop_assert!((0..np).any(|off| pt
                    .row(off)
                    .filter(|(_, st)| st.is_readable())
                    .all(|(n, _)| gone.contains(&n))));
            }
        }
    }
}
