//! Operators' requests, relayed by the admin node from neoctl: start the cluster, stop it,
//! kill and drop nodes, add pending storages, tweak the partition table, set the number of
//! replicas, and the information `neoctl print ids` shows. Refusals are DENIED answers
//! with a message for the operator.

use tracing::info;

use super::{Master, Role};
use crate::actors::{ConnId, Ctx};
use crate::proto::{ClusterState, ErrorCode, Message, Nid, NodeState, NodeType, Packet};

impl Master {
    pub(super) fn on_admin_request(&mut self, cx: &mut Ctx, conn: ConnId, msg: Message) {
        if msg.packet
            == (Packet::SetClusterState {
                state: ClusterState::Stopping,
            })
        {
            // Answer first: stopping closes every connection.
            self.links
                .answer(cx, conn, msg.id, Packet::ack("the cluster is stopping"));
            self.stop_cluster(cx);
            return;
        }
        let answer = match self.admin_answer(cx, msg.packet) {
            Ok(p) => p,
            Err(why) => Packet::error(ErrorCode::Denied, why),
        };
        self.links.answer(cx, conn, msg.id, answer);
    }

    fn admin_answer(&mut self, cx: &mut Ctx, packet: Packet) -> Result<Packet, String> {
        let Role::Primary(p) = &self.role else {
            return Err("not the primary master".into());
        };
        let state = p.cluster_state;
        let running_only = |what: &str| -> Result<(), String> {
            if state == ClusterState::Running {
                Ok(())
            } else {
                Err(format!(
                    "{what} is only possible in RUNNING state (the cluster is {state})"
                ))
            }
        };
        match packet {
            Packet::SetClusterState { state: to } => self.set_cluster_state_request(cx, to),
            Packet::SetNodeState { nid, state: to } => self.set_node_state_request(cx, nid, to),
            Packet::AddPendingNodes { nids } => {
                running_only("adding nodes")?;
                Ok(Packet::ack(self.add_pending(cx, &nids)))
            }
            Packet::TweakPartitionTable { dry_run, nids } => {
                running_only("tweaking the partition table")?;
                self.tweak_request(cx, dry_run, &nids)
            }
            Packet::SetNumReplicas { num_replicas } => {
                running_only("changing the number of replicas")?;
                if let Role::Primary(p) = &mut self.role {
                    p.pt.set_replicas(num_replicas);
                }
                self.broadcast_pt_changes(cx, Vec::new());
                Ok(Packet::ack(format!("replicas set to {num_replicas}")))
            }
            Packet::AskRecovery => Ok(Packet::AnswerRecovery {
                ptid: p.pt.ptid(),
                backup_tid: p.backup_tid,
                truncate_tid: p.truncate_tid,
            }),
            Packet::AskLastIDs => Ok(Packet::AnswerLastIDs {
                last_tid: p.tm.last_tid(),
                last_oid: p.tm.last_oid(),
                first_tid: None,
            }),
            Packet::AskLastTransaction => Ok(Packet::AnswerLastTransaction {
                tid: p.tm.last_tid(),
            }),
            Packet::AskClusterState => Ok(Packet::AnswerClusterState { state: Some(state) }),
            other => Err(format!("{} is not an administrative request", other.name())),
        }
    }

    fn set_cluster_state_request(
        &mut self,
        cx: &mut Ctx,
        to: ClusterState,
    ) -> Result<Packet, String> {
        let state = self.cluster_state().expect("primary");
        match to {
            ClusterState::Verifying => {
                // `neoctl start`: allow recovery to finish without every node.
                if state != ClusterState::Recovering {
                    return Err(format!("the cluster is already {state}"));
                }
                if self.storages().is_empty() && self.waiting_new_storages().is_empty() {
                    return Err("no storage node is connected".into());
                }
                info!("{}: start requested by the operator", self.me());
                if let Role::Primary(p) = &mut self.role {
                    p.startup_allowed = true;
                }
                self.try_start(cx);
                Ok(Packet::ack(
                    "the cluster will start as soon as its table is operational",
                ))
            }
            other => Err(format!("cannot switch to {other} from {state}")),
        }
    }

    /// STOPPING: every node is told to stop, then this master exits.
    fn stop_cluster(&mut self, cx: &mut Ctx) {
        info!("{}: stopping the cluster", self.me());
        self.set_cluster_state(cx, ClusterState::Stopping);
        let storages: Vec<Nid> = self.storages().into_iter().map(|(_, n, _)| n).collect();
        for nid in storages {
            if let Some(info) = self.nodes.set_state(nid, NodeState::Down).cloned() {
                self.broadcast_nodes(cx, &[info], None);
            }
        }
        // Our answers and notifications leave before the connections close.
        self.links.close_all(cx);
        cx.exit("cluster stopped", true);
    }

    fn set_node_state_request(
        &mut self,
        cx: &mut Ctx,
        nid: Nid,
        to: NodeState,
    ) -> Result<Packet, String> {
        let Some(node) = self.nodes.get(nid).cloned() else {
            return Err(format!("unknown node {nid}"));
        };
        let connected = self.conn_of(nid);
        match (node.node_type, to) {
            (NodeType::Master, NodeState::Down) => {
                if Some(nid) == self.nid {
                    return Err("the primary master cannot be killed".into());
                }
                let Some(_) = connected else {
                    return Err(format!("{nid} is not connected"));
                };
                self.tell_state(cx, nid, NodeState::Down);
                Ok(Packet::ack(format!("{nid} told to stop")))
            }
            (NodeType::Storage, NodeState::Down) => {
                // Kill: only if the others can go on without it.
                if node.state != NodeState::Running || connected.is_none() {
                    return Err(format!("{nid} is not running"));
                }
                if let Role::Primary(p) = &mut self.role {
                    p.pt.drop_nodes(&[nid], true).map_err(|e| e.0)?;
                }
                self.tell_state(cx, nid, NodeState::Down);
                Ok(Packet::ack(format!("{nid} told to stop")))
            }
            (NodeType::Storage, NodeState::Unknown) => {
                // Drop: forget the node and its cells for good.
                if node.state == NodeState::Running {
                    return Err(format!("{nid} is running: kill it first"));
                }
                let changes = match &mut self.role {
                    Role::Primary(p) => p.pt.drop_nodes(&[nid], false).map_err(|e| e.0)?,
                    _ => unreachable!("checked"),
                };
                self.broadcast_pt_changes(cx, changes);
                if let Some(conn) = connected {
                    self.tell_state(cx, nid, NodeState::Unknown);
                    // It erases its data and exits: end its link now, so that no link
                    // names a node we no longer list (simulator: operator seed 175).
                    self.links.close(cx, conn);
                    self.storage_lost(cx, nid);
                }
                if let Some(mut info) = self.nodes.remove(nid) {
                    info.state = NodeState::Unknown;
                    self.broadcast_nodes(cx, &[info], None);
                }
                info!("{}: {nid} dropped", self.me());
                Ok(Packet::ack(format!("{nid} dropped")))
            }
            (ty, st) => Err(format!("cannot set a {ty} node {st}")),
        }
    }

    /// Tell one node its own new state (it stops on DOWN, erases itself on UNKNOWN).
    fn tell_state(&mut self, cx: &mut Ctx, nid: Nid, state: NodeState) {
        let Some(conn) = self.conn_of(nid) else {
            return;
        };
        let Some(mut info) = self.nodes.get(nid).cloned() else {
            return;
        };
        info.state = state;
        let timestamp = self.monotonic_time(cx);
        self.links.notify(
            cx,
            conn,
            Packet::NotifyNodeInformation {
                timestamp,
                nodes: vec![info],
            },
        );
    }

    /// `neoctl add`: pending storages (all if `nids` is empty) start serving, without cells
    /// until a tweak gives them some.
    fn add_pending(&mut self, cx: &mut Ctx, nids: &[Nid]) -> String {
        let added: Vec<Nid> = self
            .storages()
            .into_iter()
            .filter(|(_, n, s)| *s == NodeState::Pending && (nids.is_empty() || nids.contains(n)))
            .map(|(_, n, _)| n)
            .collect();
        if added.is_empty() {
            return "No node added".into();
        }
        for nid in &added {
            if let Some(info) = self.nodes.set_state(*nid, NodeState::Running).cloned() {
                self.broadcast_nodes(cx, &[info], None);
            }
            self.start_operation(cx, *nid);
        }
        if let Role::Primary(p) = &mut self.role {
            p.pt.add_nodes(&added);
        }
        let names: Vec<String> = added.iter().map(|n| n.to_string()).collect();
        format!("Nodes added: {}", names.join(", "))
    }

    fn tweak_request(
        &mut self,
        cx: &mut Ctx,
        dry_run: bool,
        nids: &[Nid],
    ) -> Result<Packet, String> {
        let Role::Primary(p) = &self.role else {
            unreachable!("checked")
        };
        // Excluded: the nodes listed and every pending storage; a node that is down must be
        // listed, so that nobody tweaks data onto a node by mistake.
        let mut drop: Vec<Nid> = nids.to_vec();
        for n in p.pt.nodes() {
            match self.nodes.get(*n).map(|i| i.state) {
                Some(NodeState::Running) => {}
                Some(NodeState::Pending) => drop.push(*n),
                _ if nids.contains(n) => {}
                _ => return Err(format!("{n} is not running: list it to exclude it")),
            }
        }
        let mut pt = p.pt.clone();
        let changes = pt.tweak(&drop).map_err(|e| e.0)?;
        let running = |n: Nid| {
            self.nodes
                .get(n)
                .is_some_and(|i| i.state == NodeState::Running)
        };
        if !pt.operational(running, &[]) {
            return Err("the table would not be operational".into());
        }
        let answer = Packet::AnswerTweakPartitionTable {
            changed: !changes.is_empty(),
            rows: pt.rows(),
        };
        if !dry_run && !changes.is_empty() {
            info!(
                "{}: partition table tweaked ({} changes)",
                self.me(),
                changes.len()
            );
            if let Role::Primary(p) = &mut self.role {
                p.pt = pt;
            }
            self.broadcast_pt_changes(cx, changes);
        }
        Ok(answer)
    }
}
