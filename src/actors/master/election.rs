//! Master election and the secondary role (NEO's algorithm since 1.8: "the oldest claimant
//! wins, during RECOVERING").
//!
//! A master playing primary in RECOVERING is a *claimant*: its claim is (election timestamp,
//! address). It connects to every known master and asks to be identified with its claim. A
//! claimant that receives an older claim yields and follows the older one; otherwise it
//! accepts, and the requester follows the acceptor. A primary past RECOVERING accepts
//! everyone, so it always wins. A secondary answers every identification with
//! `NotPrimaryMaster`, keeps one connection to its primary, and when that primary is gone
//! it tries the other masters, then claims again with a fresh timestamp.

use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use super::cluster::Primary;
use super::{Master, Peer};
use crate::actors::{CloseReason, ConnId, Ctx, Observation};
use crate::proto::{Address, Message, Nid, NodeInfo, NodeState, NodeType, Packet, WallTime};

/// A claim to the primary role: older wins, ties broken by the smaller address.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Claim {
    pub ts: WallTime,
    pub address: Address,
}

/// What a master is doing.
#[derive(Clone, Debug)]
pub enum Role {
    /// Before `start`.
    Starting,
    Primary(Box<Primary>),
    Secondary(Secondary),
}

/// A secondary's state; the master it follows (or tries) is `Master::following`.
#[derive(Clone, Debug)]
pub struct Secondary {
    pub primary_nid: Option<Nid>,
    /// Whether that master accepted us.
    pub identified: bool,
    conn: Option<ConnId>,
}

impl Master {
    /// Claim the primary role with a fresh timestamp.
    pub(super) fn play_primary(&mut self, cx: &mut Ctx) {
        self.links.close_all(cx);
        let ts = self.monotonic_time(cx);
        let address = self.cfg.bind.clone();
        let nid = self
            .nodes
            .allocate_nid(NodeType::Master, self.nid, Some(&address), None);
        self.nid = Some(nid);
        // Other masters count as down until they identify to us.
        let others: Vec<Nid> = self
            .nodes
            .of_type(NodeType::Master)
            .filter_map(|n| n.nid)
            .filter(|n| *n != nid)
            .collect();
        for other in others {
            self.nodes.set_state(other, NodeState::Down);
        }
        self.nodes.upsert(NodeInfo {
            node_type: NodeType::Master,
            address: Some(address.clone()),
            nid: Some(nid),
            state: NodeState::Running,
            id_timestamp: Some(ts),
        });
        // Nodes other than masters are learnt again, from the storages, during recovery.
        let others: Vec<Nid> = self
            .nodes
            .iter()
            .filter(|n| n.node_type != NodeType::Master)
            .filter_map(|n| n.nid)
            .collect();
        for n in others {
            self.nodes.remove(n);
        }
        info!("role: primary {nid} (claim at {ts:?})");
        let claim = Claim { ts, address };
        let primary = Primary::new(claim, self.cfg.partitions, self.cfg.replicas);
        self.role = Role::Primary(Box::new(primary));
        self.election_tick(cx);
    }

    /// Periodic work of the election and of the secondary role.
    pub(super) fn election_tick(&mut self, cx: &mut Ctx) {
        match &self.role {
            Role::Primary(p) => {
                let Some(claim) = p.electing().cloned() else {
                    return;
                };
                let targets: Vec<Address> = self
                    .finder
                    .known()
                    .iter()
                    .filter(|a| **a != self.cfg.bind && !self.linked_to(a))
                    .cloned()
                    .collect();
                for address in targets {
                    // Simulation: a claim that reaches a master late.
                    if cx.buggify("election-late-claim") {
                        continue;
                    }
                    if self.may_connect(cx, &address) {
                        let conn = cx.connect(&address);
                        self.links.insert(cx, conn, Peer::Election(address));
                        let req = self.identification(Some(claim.ts));
                        self.links.ask(cx, conn, req, super::Asked::Identification);
                    }
                }
            }
            Role::Secondary(s) if s.conn.is_none() => self.connect_to_primary(cx),
            _ => {}
        }
    }

    /// Whether some connection already links us to the master at `address`.
    fn linked_to(&self, address: &Address) -> bool {
        self.links.iter().any(|(_, p)| match p {
            Peer::Election(a) | Peer::ToPrimary(a) => a == address,
            Peer::Node(nid) => {
                self.nodes.get(*nid).and_then(|n| n.address.as_ref()) == Some(address)
            }
            Peer::Incoming => false,
        })
    }

    /// Whether the master at `address` is identified as our own secondary.
    fn is_our_secondary(&self, address: &Address) -> bool {
        self.links.iter().any(|(_, p)| match p {
            Peer::Node(nid) => {
                self.nodes.get(*nid).and_then(|n| n.address.as_ref()) == Some(address)
            }
            _ => false,
        })
    }

    /// An older claimant asked us to identify it: give up our claim and follow it.
    pub(super) fn yield_to(&mut self, cx: &mut Ctx, conn: ConnId, own: Claim, to: Claim) {
        info!(
            "{}: yielding to the older claim of {}",
            self.me(),
            to.address
        );
        cx.observe(Observation::Yielded {
            own,
            to: to.clone(),
        });
        self.links.close(cx, conn);
        self.learn_master(&to.address);
        self.become_secondary(cx, to.address, None);
    }

    /// The answer of a master we claimed to.
    pub(super) fn on_election_answer(
        &mut self,
        cx: &mut Ctx,
        conn: ConnId,
        address: Address,
        msg: Message,
    ) {
        match msg.packet {
            Packet::AcceptIdentification {
                node_type: NodeType::Master,
                nid,
                your_nid,
            } => {
                // It did not yield: it is older, or past RECOVERING. Follow it on this link.
                if your_nid.is_some() {
                    self.nid = your_nid;
                }
                self.become_secondary(cx, address, Some((conn, nid)));
            }
            Packet::NotPrimaryMaster {
                primary,
                known_masters,
            } => {
                for m in &known_masters {
                    self.learn_master(m);
                }
                self.links.close(cx, conn);
                // Follow its primary, unless the hint is stale: it names us or one of our
                // secondaries, or it comes from a master that follows us by now.
                if let Some(p) = primary {
                    if p != self.cfg.bind
                        && !self.is_our_secondary(&p)
                        && !self.is_our_secondary(&address)
                    {
                        self.become_secondary(cx, p, None);
                    }
                }
            }
            other => {
                let why = format!("unexpected {} in answer to an election claim", other.name());
                self.protocol_error(cx, conn, msg.id, why);
            }
        }
    }

    /// Follow the master at `primary`; `via` is a connection on which it already accepted
    /// us (with its nid), otherwise we connect to it.
    fn become_secondary(
        &mut self,
        cx: &mut Ctx,
        primary: Address,
        via: Option<(ConnId, Option<Nid>)>,
    ) {
        let keep = via.map(|(c, _)| c);
        let others: Vec<ConnId> = self
            .links
            .iter()
            .map(|(c, _)| c)
            .filter(|c| Some(*c) != keep)
            .collect();
        for c in others {
            self.links.close(cx, c);
        }
        self.finder.follow(primary.clone());
        self.role = Role::Secondary(Secondary {
            primary_nid: None,
            identified: false,
            conn: keep,
        });
        match via {
            Some((conn, primary_nid)) => {
                *self.links.get_mut(conn).expect("kept link") = Peer::ToPrimary(primary);
                self.identified_by_primary(primary_nid, self.nid);
            }
            None => self.connect_to_primary(cx),
        }
    }

    fn connect_to_primary(&mut self, cx: &mut Ctx) {
        let Role::Secondary(s) = &self.role else {
            return;
        };
        let Some(address) = self.finder.target().cloned() else {
            return;
        };
        if s.conn.is_some() || !self.may_connect(cx, &address) {
            return; // connected, or the tick tries again
        }
        let conn = cx.connect(&address);
        self.links.insert(cx, conn, Peer::ToPrimary(address));
        let req = self.identification(None);
        self.links.ask(cx, conn, req, super::Asked::Identification);
        if let Role::Secondary(s) = &mut self.role {
            s.conn = Some(conn);
        }
    }

    pub(super) fn identified_by_primary(
        &mut self,
        primary_nid: Option<Nid>,
        your_nid: Option<Nid>,
    ) {
        if your_nid.is_some() {
            self.nid = your_nid;
        }
        self.last_notification = None;
        let me = self.me();
        self.finder.found();
        let Role::Secondary(s) = &mut self.role else {
            return;
        };
        s.identified = true;
        s.primary_nid = primary_nid;
        let target = self
            .finder
            .target()
            .map(|t| t.to_string())
            .unwrap_or_default();
        let primary = primary_nid.map_or(target, |n| n.to_string());
        info!("role: secondary of {primary} (this node is {me})");
    }

    /// Our connection to the primary (or to the master we tried) is gone.
    pub(super) fn primary_lost(&mut self, cx: &mut Ctx, conn: ConnId, reason: CloseReason) {
        let me = self.me();
        let Role::Secondary(s) = &mut self.role else {
            return;
        };
        if s.conn != Some(conn) {
            return;
        }
        s.conn = None;
        let target = self
            .finder
            .target()
            .cloned()
            .unwrap_or_else(|| self.cfg.bind.clone());
        if s.identified {
            // It was up a moment ago: try it again first.
            info!("{me}: lost the primary {target} ({reason:?})");
            s.identified = false;
            s.primary_nid = None;
            self.finder.lost();
            self.connect_to_primary(cx);
        } else {
            debug!("{me}: {target} is not reachable ({reason:?})");
            self.try_next_master(cx, None);
        }
    }

    /// The master we asked is a secondary; `hint` is who it follows.
    pub(super) fn redirected(&mut self, cx: &mut Ctx, hint: Option<Address>) {
        let Role::Secondary(s) = &mut self.role else {
            return;
        };
        s.conn = None;
        s.identified = false;
        self.try_next_master(cx, hint);
    }

    /// Try the hinted master, or the next known one we have not tried since we lost the
    /// primary; when none is left, nobody is primary: claim the role.
    fn try_next_master(&mut self, cx: &mut Ctx, hint: Option<Address>) {
        if self.finder.next(hint).is_some() {
            self.connect_to_primary(cx);
        } else if cx.mutant("election-no-reelect") {
            self.finder.restart();
            self.connect_to_primary(cx);
        } else {
            info!(
                "{}: no primary among the known masters: claiming",
                self.me()
            );
            self.play_primary(cx);
        }
    }
}
