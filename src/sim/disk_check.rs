//! What a storage restarted with a wiped disk must never do: its old cells are gone with its
//! data, so it never holds a readable (UP_TO_DATE or FEEDING) cell under its old node id in
//! the table of the primary it follows, and never serves its old cells (operational with a
//! readable cell of its old id in its own table). The same holds for any id that had
//! readable cells when the disk was wiped: an empty disk under such an id (taken from a
//! missing node) would serve data it does not have. A pure function of the world, for
//! scenarios to add as an invariant.
//!
//! Swapped disks need no check here: the refused process never runs (it stops at start).
//!
//! A wipe may also lose data for good, or leave an old id in the table that the cluster
//! rightly waits for in RECOVERING until an operator decides (NEO's `neoctl drop` or
//! `start`); [`lost_to_a_wipe`] says so, for liveness checks.

use std::time::Duration;

use super::disk::DiskEventKind;
use super::world::World;
use crate::proto::Nid;
use crate::pt::PartitionTable;

/// Whether `pt` holds a readable cell of `nid`.
fn readable_cell(pt: &PartitionTable, nid: Nid) -> Option<u32> {
    (0..pt.partitions()).find(|p| pt.cell(*p, nid).is_some_and(|s| s.is_readable()))
}

/// After every step: no storage restarted with a wiped disk holds or serves its old cells.
pub fn wiped_disks_never_serve(w: &World) -> Result<(), String> {
    for e in w.disk_events() {
        let (DiskEventKind::Wiped, Some(old)) = (&e.kind, e.old_nid) else {
            continue;
        };
        if whole_cluster_wiped_since(w, e.at) {
            // Every disk lost what it held since: nothing remembers the old cluster, and a
            // new database made on the empty disks may rightly reuse its ids.
            continue;
        }
        let n = &w.nodes[e.node];
        // Only the processes started on the new disk.
        if !n.is_up() || n.started_at < e.at {
            continue;
        }
        let Some(s) = n.storage() else { continue };
        let Some(old) = s.nid().filter(|n| *n == old || e.readable.contains(n)) else {
            continue;
        };
        if let Some(p) = s
            .partition_table()
            .filter(|_| s.is_operational())
            .and_then(|pt| readable_cell(pt, old))
        {
            return Err(format!(
                "{}, restarted with a wiped disk at {:.3}s, serves the old cell {p} of {old}",
                n.label,
                e.at.as_secs_f64()
            ));
        }
        let Some(primary) = s.primary() else { continue };
        for (i, m) in w.masters() {
            if m.address() != primary || !w.nodes[i].is_up() {
                continue;
            }
            if let Some(p) = m.primary_table().and_then(|pt| readable_cell(pt, old)) {
                return Err(format!(
                    "{}, restarted with a wiped disk at {:.3}s, is {old} with the readable cell {p} in the table of its primary {}",
                    n.label,
                    e.at.as_secs_f64(),
                    w.label(i)
                ));
            }
        }
    }
    Ok(())
}

/// Whether every storage's disk was wiped at or after `at`, or a wipe since then took the
/// last copy of some data: the old cluster is gone (the primary waits for it, or finds no
/// table at all and makes a new database), so what follows is no longer its history.
fn whole_cluster_wiped_since(w: &World, at: Duration) -> bool {
    w.disk_events().iter().any(|e| e.lost_data && e.at >= at)
        || every_disk_wiped_since(w).is_some_and(|since| since >= at)
}

/// The latest time at or after which every storage's disk was wiped (`None` while some
/// disk never was): nothing written before it survives anywhere, so a primary finding only
/// empty storages makes a new database, whose ids (node and table ids) start again.
pub fn every_disk_wiped_since(w: &World) -> Option<Duration> {
    (0..w.nodes.len())
        .filter(|i| w.disks.has(*i))
        .map(|i| {
            w.disk_events()
                .iter()
                .filter(|e| e.node == i && e.kind == DiskEventKind::Wiped)
                .map(|e| e.at)
                .max()
        })
        .min()
        .flatten()
}

/// Why the cluster may rightly never be RUNNING with all its data again: a wipe took the
/// last copy of some data, or a table some running node holds still lists the old id of a
/// wiped storage, which no running storage has any more. A primary in RECOVERING waits for
/// every node of its table (one may hold a newer table), so only an operator can decide to
/// go on without it (`neoctl drop` or `start`).
pub fn lost_to_a_wipe(w: &World) -> Option<String> {
    if let Some(e) = w.disk_events().iter().find(|e| e.lost_data) {
        return Some(format!(
            "{} was wiped at {:.3}s with the last copy of some data",
            w.label(e.node),
            e.at.as_secs_f64()
        ));
    }
    let live: Vec<Nid> = w
        .storages()
        .filter(|(i, _)| w.nodes[*i].is_up())
        .filter_map(|(_, s)| s.nid())
        .collect();
    let tables = w
        .masters()
        .filter(|(i, _)| w.nodes[*i].is_up())
        .filter_map(|(_, m)| m.primary_table())
        .chain(
            w.storages()
                .filter(|(i, _)| w.nodes[*i].is_up())
                .filter_map(|(_, s)| s.partition_table()),
        );
    for pt in tables {
        for e in w.disk_events() {
            let (DiskEventKind::Wiped, Some(old)) = (&e.kind, e.old_nid) else {
                continue;
            };
            if live.contains(&old) {
                continue;
            }
            if pt.nodes().contains(&old) {
                return Some(format!(
                    "{} was wiped at {:.3}s, and its old id {old} is still in table {:?}",
                    w.label(e.node),
                    e.at.as_secs_f64(),
                    pt.ptid()
                ));
            }
        }
    }
    None
}
