//! What a storage restarted with a wiped disk must never do: its old cells are gone with its
//! data, so it never holds a readable (UP_TO_DATE or FEEDING) cell under its old node id in
//! the table of the primary it follows, and never serves its old cells (operational with a
//! readable cell of its old id in its own table). A pure function of the world, for scenarios
//! to add as an invariant.
//!
//! Swapped disks need no check here: the refused process never runs (it stops at start).

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
        let n = &w.nodes[e.node];
        // Only the processes started on the new disk.
        if !n.is_up() || n.started_at < e.at {
            continue;
        }
        let Some(s) = n.storage() else { continue };
        if s.nid() != Some(old) {
            continue;
        }
        if let Some(p) = s
            .partition_table()
            .filter(|_| s.is_operational())
            .and_then(|pt| readable_cell(pt, old))
        {
            return Err(format!(
                "{}, restarted with a wiped disk at {:.3}s, serves its old cell {p} as {old}",
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
