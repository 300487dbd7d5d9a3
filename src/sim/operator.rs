//! The simulated operator: a process that runs neoctl's commands against the admin node,
//! as `neoctl` does (a connection to the admin, one request, its answer, close), at random
//! moments of a run. What it asked and what it was answered goes to a shared log the
//! scenario reads (it does not feed back into the run).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use crate::actors::{Actor, ConnId, Ctx, Event, TimerId};
use crate::ctl::{requests, CtlCommand};
use crate::proto::{Address, ClusterState, ErrorCode, Message, Nid, NodeType, Packet};
use crate::rng;

/// What the operator did: each command with the answer (or why there was none).
#[derive(Clone, Debug, Default)]
pub struct OperatorLog {
    pub done: Vec<(String, String)>,
    /// Whether a `set cluster STOPPING` was acknowledged.
    pub stop_acked: bool,
}

/// What the operator may do.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    pub admin: Address,
    /// Node ids it may name: storages S1..=storages (and a few more, for nodes that took a
    /// new id), masters M1..=masters.
    pub storages: u32,
    pub masters: u32,
    /// Mean time between two commands.
    pub every: Duration,
    /// Whether `set cluster STOPPING` is among the commands drawn.
    pub may_stop: bool,
    /// Whether `start` is among the commands drawn.
    pub may_start: bool,
    /// Run these commands once, in order, instead of drawing them.
    pub script: Option<Vec<CtlCommand>>,
}

/// A neoctl command drawn at random, weighted towards the harmless ones.
fn draw_command(cx: &mut Ctx, cfg: &OperatorConfig) -> CtlCommand {
    let storage = |cx: &mut Ctx| {
        let n = rng::between(cx.rng(), 1, cfg.storages as u64 + 2) as u32;
        Nid::new(NodeType::Storage, n)
    };
    loop {
        let cmd = match rng::below(cx.rng(), 22) {
            0..=2 if cfg.may_start => CtlCommand::Start,
            0..=2 => continue,
            3..=5 => CtlCommand::Add(Vec::new()),
            6 => CtlCommand::Add(vec![storage(cx)]),
            7..=9 => CtlCommand::Tweak {
                dry_run: rng::chance(cx.rng(), 0.3),
                nids: Vec::new(),
            },
            10 => CtlCommand::Tweak {
                dry_run: false,
                nids: vec![storage(cx)],
            },
            11 | 12 => CtlCommand::Drop(storage(cx)),
            13 | 14 => CtlCommand::Kill(storage(cx)),
            15 => {
                let n = rng::between(cx.rng(), 1, cfg.masters.max(1) as u64) as u32;
                CtlCommand::Kill(Nid::new(NodeType::Master, n))
            }
            16 | 17 => CtlCommand::SetReplicas(rng::below(cx.rng(), 3) as u32),
            18 if cfg.may_stop => CtlCommand::SetCluster(ClusterState::Stopping),
            18 => continue,
            19 => CtlCommand::PrintPt {
                min: None,
                max: None,
            },
            20 => CtlCommand::PrintNode { node_type: None },
            _ => CtlCommand::PrintCluster,
        };
        return cmd;
    }
}

pub struct Operator {
    cfg: OperatorConfig,
    log: Rc<RefCell<OperatorLog>>,
    /// The command in progress: its connection, the requests left to send, the answers.
    current: Option<(ConnId, CtlCommand, Vec<Packet>, usize)>,
    next_id: u32,
    timer: Option<TimerId>,
    /// Position in the script.
    step: usize,
}

impl Operator {
    pub fn new(cfg: OperatorConfig, log: Rc<RefCell<OperatorLog>>) -> Operator {
        Operator {
            cfg,
            log,
            current: None,
            next_id: 0,
            timer: None,
            step: 0,
        }
    }

    fn arm(&mut self, cx: &mut Ctx, after: Duration) {
        self.timer = Some(cx.set_timer(after, 1));
    }

    fn wait(&self, cx: &mut Ctx) -> Duration {
        let e = self.cfg.every;
        rng::duration(cx.rng(), e / 4, e + e * 3 / 4)
    }

    fn send_next(&mut self, cx: &mut Ctx) {
        let Some((conn, cmd, answers, _)) = &self.current else {
            return;
        };
        let reqs = requests(cmd);
        let Some(packet) = reqs.get(answers.len()).cloned() else {
            return;
        };
        let conn = *conn;
        self.next_id = self.next_id.wrapping_add(1);
        cx.send(
            conn,
            Message {
                id: self.next_id,
                packet,
            },
        );
        if let Some((_, _, _, id)) = &mut self.current {
            *id = self.next_id as usize;
        }
    }

    fn finish(&mut self, cx: &mut Ctx, outcome: String) {
        if let Some((conn, cmd, answers, _)) = self.current.take() {
            cx.close(conn);
            let stop = cmd == CtlCommand::SetCluster(ClusterState::Stopping);
            let acked = matches!(
                answers.first(),
                Some(Packet::Error {
                    code: ErrorCode::Ack,
                    ..
                })
            );
            let mut log = self.log.borrow_mut();
            log.stop_acked |= stop && acked;
            log.done.push((format!("{cmd:?}"), outcome));
        }
        let after = self.wait(cx);
        self.arm(cx, after);
    }

    fn issue(&mut self, cx: &mut Ctx) {
        let cmd = match &self.cfg.script {
            Some(script) => match script.get(self.step) {
                Some(c) => c.clone(),
                None => return,
            },
            None => draw_command(cx, &self.cfg),
        };
        self.step += 1;
        let conn = cx.connect(&self.cfg.admin);
        self.current = Some((conn, cmd, Vec::new(), 0));
        self.send_next(cx);
        // neoctl gives up on an admin that does not answer.
        self.timer = Some(cx.set_timer(Duration::from_secs(10), 2));
    }
}

impl Actor for Operator {
    fn start(&mut self, cx: &mut Ctx) {
        self.current = None;
        let after = self.wait(cx);
        self.arm(cx, after);
    }

    fn handle(&mut self, cx: &mut Ctx, ev: Event) {
        match ev {
            Event::Timer { id, token } if Some(id) == self.timer => {
                if token == 2 {
                    self.finish(cx, "no answer in time".into());
                } else if self.current.is_none() {
                    self.issue(cx);
                }
            }
            Event::Received { conn, msg } => {
                let Some((c, cmd, answers, id)) = &mut self.current else {
                    return;
                };
                if *c != conn || msg.id as usize != *id {
                    return;
                }
                answers.push(msg.packet);
                let done = answers.len() >= requests(cmd).len()
                    || matches!(answers.last(), Some(Packet::Error { .. }));
                if done {
                    let outcome = match crate::ctl::render(cmd, answers) {
                        Ok(text) => text,
                        Err(e) => format!("{e:?}"),
                    };
                    self.finish(cx, outcome);
                } else {
                    self.send_next(cx);
                }
            }
            Event::Closed { conn, reason }
                if self.current.as_ref().is_some_and(|(c, ..)| *c == conn) =>
            {
                self.finish(cx, format!("connection closed: {reason:?}"));
            }
            Event::Accepted { conn } => cx.close(conn),
            _ => {}
        }
    }
}
