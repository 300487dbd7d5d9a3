//! The node table: every node a master knows (or a node learnt from its primary), with
//! NEO's node-id allocation and the routing rule of `NotifyNodeInformation`.

use std::collections::BTreeMap;

use crate::proto::{Address, Nid, NodeInfo, NodeState, NodeType, WallTime};

#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct NodeTable {
    nodes: BTreeMap<Nid, NodeInfo>,
}

impl NodeTable {
    pub fn get(&self, nid: Nid) -> Option<&NodeInfo> {
        self.nodes.get(&nid)
    }

    pub fn by_address(&self, address: &Address) -> Option<&NodeInfo> {
        self.nodes
            .values()
            .find(|n| n.address.as_ref() == Some(address))
    }

    pub fn iter(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    pub fn of_type(&self, ty: NodeType) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values().filter(move |n| n.node_type == ty)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Add or replace a node (it must have a nid). Another entry with the same address is
    /// a previous incarnation under another id: it is removed and returned.
    pub fn upsert(&mut self, info: NodeInfo) -> Option<NodeInfo> {
        let nid = info.nid.expect("table entries have a nid");
        let stale = info.address.as_ref().and_then(|a| {
            self.nodes
                .values()
                .find(|n| n.nid != Some(nid) && n.address.as_ref() == Some(a))
                .and_then(|n| n.nid)
        });
        let removed = stale.and_then(|s| self.nodes.remove(&s));
        self.nodes.insert(nid, info);
        removed
    }

    /// Change a node's state; returns the updated entry if it changed.
    pub fn set_state(&mut self, nid: Nid, state: NodeState) -> Option<&NodeInfo> {
        let n = self.nodes.get_mut(&nid)?;
        if n.state == state {
            return None;
        }
        n.state = state;
        Some(n)
    }

    pub fn remove(&mut self, nid: Nid) -> Option<NodeInfo> {
        self.nodes.remove(&nid)
    }

    /// Replace everything with a primary's full list.
    pub fn replace_all(&mut self, list: &[NodeInfo]) {
        self.nodes.clear();
        self.apply(list);
    }

    /// Apply a primary's change list: UNKNOWN means forgotten.
    pub fn apply(&mut self, list: &[NodeInfo]) {
        for info in list {
            let Some(nid) = info.nid else { continue };
            if info.state == NodeState::Unknown {
                self.nodes.remove(&nid);
            } else {
                self.upsert(info.clone());
            }
        }
    }

    /// Apply a primary's `NotifyNodeInformation` as a node following it does: the first one
    /// after identification (`last` is None) is the full list, later ones must be newer.
    /// Returns None for a stale one; otherwise the masters it names and what it tells of
    /// `own` (DOWN: stop; UNKNOWN: dropped).
    pub fn notified(
        &mut self,
        last: &mut Option<WallTime>,
        timestamp: WallTime,
        nodes: &[NodeInfo],
        own: Option<Nid>,
    ) -> Option<Notified> {
        match *last {
            Some(l) if timestamp <= l => return None,
            Some(_) => self.apply(nodes),
            None => self.replace_all(nodes),
        }
        *last = Some(timestamp);
        Some(Notified {
            masters: nodes
                .iter()
                .filter(|n| n.node_type == NodeType::Master)
                .filter_map(|n| n.address.clone())
                .collect(),
            told: nodes
                .iter()
                .find(|n| n.nid.is_some() && n.nid == own)
                .map(|n| n.state)
                .filter(|s| matches!(s, NodeState::Down | NodeState::Unknown)),
        })
    }

    /// NEO's node-id allocation: keep the id a node proposes if it is of the right type,
    /// not `own`, and either unknown or known with the same address; otherwise the lowest
    /// free number of the type.
    pub fn allocate_nid(
        &self,
        ty: NodeType,
        proposed: Option<Nid>,
        address: Option<&Address>,
        own: Option<Nid>,
    ) -> Nid {
        if let Some(p) = proposed {
            let keep = p.node_type() == Some(ty)
                && Some(p) != own
                && self
                    .nodes
                    .get(&p)
                    .is_none_or(|n| n.address.as_ref() == address);
            if keep {
                return p;
            }
        }
        (1..=Nid::MAX_NUMBER)
            .map(|n| Nid::new(ty, n))
            .find(|nid| Some(*nid) != own && !self.nodes.contains_key(nid))
            .expect("node ids exhausted")
    }
}

/// What a node learns from a primary's node notification (see `NodeTable::notified`).
pub struct Notified {
    pub masters: Vec<Address>,
    pub told: Option<NodeState>,
}

/// Whether a node of type `receiver` is told about nodes of type `about` (NEO's routing of
/// `NotifyNodeInformation`): admins and storages hear of everyone, clients of every node
/// but clients, masters of masters and admins.
pub fn hears_about(receiver: NodeType, about: NodeType) -> bool {
    match receiver {
        NodeType::Admin | NodeType::Storage => true,
        NodeType::Client => about != NodeType::Client,
        NodeType::Master => matches!(about, NodeType::Master | NodeType::Admin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(n: u32, port: u16) -> NodeInfo {
        NodeInfo {
            node_type: NodeType::Master,
            address: Some(Address::new("h", port)),
            nid: Some(Nid::new(NodeType::Master, n)),
            state: NodeState::Running,
            id_timestamp: None,
        }
    }

    #[test]
    fn allocation_follows_neo() {
        let mut t = NodeTable::default();
        let m = |n| Nid::new(NodeType::Master, n);
        let a1 = Address::new("h", 1);
        // Empty table: the proposal is kept, or the lowest number is used.
        assert_eq!(
            t.allocate_nid(NodeType::Master, None, Some(&a1), None),
            m(1)
        );
        assert_eq!(
            t.allocate_nid(NodeType::Master, Some(m(5)), Some(&a1), None),
            m(5)
        );
        t.upsert(master(1, 1));
        t.upsert(master(2, 2));
        // Known with the same address: kept; with another address: a fresh number.
        assert_eq!(
            t.allocate_nid(NodeType::Master, Some(m(1)), Some(&a1), None),
            m(1)
        );
        assert_eq!(
            t.allocate_nid(
                NodeType::Master,
                Some(m(1)),
                Some(&Address::new("h", 3)),
                None
            ),
            m(3)
        );
        // Never the allocator's own id, never another type's id.
        assert_eq!(
            t.allocate_nid(NodeType::Master, Some(m(4)), None, Some(m(4))),
            m(3)
        );
        assert_eq!(
            t.allocate_nid(
                NodeType::Master,
                Some(Nid::new(NodeType::Storage, 9)),
                None,
                None
            ),
            m(3)
        );
        assert_eq!(
            t.allocate_nid(NodeType::Storage, None, None, None),
            Nid::new(NodeType::Storage, 1)
        );
    }

    #[test]
    fn same_address_replaces_previous_incarnation() {
        let mut t = NodeTable::default();
        t.upsert(master(1, 1));
        let old = t.upsert(master(2, 1));
        assert_eq!(old.unwrap().nid, Some(Nid::new(NodeType::Master, 1)));
        assert_eq!(t.len(), 1);
        let mut gone = master(2, 1);
        gone.state = NodeState::Unknown;
        t.apply(&[gone]);
        assert!(t.is_empty());
    }

    #[test]
    fn routing() {
        assert!(hears_about(NodeType::Master, NodeType::Admin));
        assert!(!hears_about(NodeType::Master, NodeType::Storage));
        assert!(!hears_about(NodeType::Client, NodeType::Client));
        assert!(hears_about(NodeType::Storage, NodeType::Client));
    }
}
