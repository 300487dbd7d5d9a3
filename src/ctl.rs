//! neoctl's logic: command-line words to requests for the admin node, answers to the text
//! neoctl prints (NEO's formats). Pure: `bin/neoctl.rs` does the I/O.

use std::fmt::Write as _;

use crate::proto::{
    CellState, ClusterState, ErrorCode, Nid, NodeInfo, NodeState, NodeType, Packet, Ptid,
};
use crate::pt::PartitionTable;

/// A neoctl command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CtlCommand {
    PrintCluster,
    PrintIds,
    PrintPt {
        min: Option<u32>,
        max: Option<u32>,
    },
    PrintNode {
        node_type: Option<NodeType>,
    },
    PrintPrimary,
    Start,
    SetCluster(ClusterState),
    SetReplicas(u32),
    /// Empty: all pending nodes.
    Add(Vec<Nid>),
    Drop(Nid),
    Kill(Nid),
    Tweak {
        dry_run: bool,
        nids: Vec<Nid>,
    },
}

pub const USAGE: &str = "\
commands:
  print cluster                 the cluster's state
  print ids                     last ids (OID, TID) and partition table id
  print pt [min [max]]          the partition table (all partitions, or min..max)
  print node [TYPE]             nodes (TYPE: master, storage, client, admin)
  print primary                 the primary master's node id
  start                         let the cluster start without every storage
  set cluster STATE             e.g. set cluster STOPPING
  set replicas N                the number of replicas
  add NID...|all                let pending storages serve
  drop NID                      remove a stopped storage for good (it erases its data)
  kill NID                      stop a storage or a secondary master
  tweak [-n] [NID...]           balance the partition table (-n: only show it),
                                excluding the listed nodes";

fn nid(word: &str) -> Result<Nid, String> {
    word.parse()
}

fn number(word: &str, what: &str) -> Result<u32, String> {
    word.parse()
        .map_err(|_| format!("{what} must be a number, not {word:?}"))
}

/// Parse neoctl's command words.
pub fn parse(words: &[String]) -> Result<CtlCommand, String> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let cmd = match w.as_slice() {
        ["print", "cluster"] => CtlCommand::PrintCluster,
        ["print", "ids"] => CtlCommand::PrintIds,
        ["print", "pt", rest @ ..] if rest.len() <= 2 => CtlCommand::PrintPt {
            min: rest.first().map(|m| number(m, "min")).transpose()?,
            max: rest.get(1).map(|m| number(m, "max")).transpose()?,
        },
        ["print", "node"] => CtlCommand::PrintNode { node_type: None },
        ["print", "node", ty] => CtlCommand::PrintNode {
            node_type: Some(ty.parse()?),
        },
        ["print", "primary"] => CtlCommand::PrintPrimary,
        ["start"] => CtlCommand::Start,
        ["set", "cluster", state] => CtlCommand::SetCluster(state.parse()?),
        ["set", "replicas", n] => CtlCommand::SetReplicas(number(n, "replicas")?),
        ["add", "all"] => CtlCommand::Add(Vec::new()),
        ["add", nids @ ..] if !nids.is_empty() => {
            CtlCommand::Add(nids.iter().map(|n| nid(n)).collect::<Result<_, _>>()?)
        }
        ["drop", n] => CtlCommand::Drop(nid(n)?),
        ["kill", n] => CtlCommand::Kill(nid(n)?),
        ["tweak", rest @ ..] => {
            let dry_run = rest.first() == Some(&"-n");
            let nids = rest
                .iter()
                .skip(dry_run as usize)
                .map(|n| nid(n))
                .collect::<Result<_, _>>()?;
            CtlCommand::Tweak { dry_run, nids }
        }
        [] => return Err("no command given".into()),
        _ => return Err(format!("unknown or malformed command: {}", w.join(" "))),
    };
    Ok(cmd)
}

/// The requests a command sends, in order.
pub fn requests(cmd: &CtlCommand) -> Vec<Packet> {
    match cmd {
        CtlCommand::PrintCluster => vec![Packet::AskClusterState],
        CtlCommand::PrintIds => vec![Packet::AskRecovery, Packet::AskLastIDs],
        CtlCommand::PrintPt { min, max } => vec![
            Packet::AskPartitionList {
                min_offset: min.unwrap_or(0),
                max_offset: max.map_or(0, |m| m.saturating_add(1)),
                nid: None,
            },
            Packet::AskNodeList {
                node_type: Some(NodeType::Storage),
            },
        ],
        CtlCommand::PrintNode { node_type } => vec![Packet::AskNodeList {
            node_type: *node_type,
        }],
        CtlCommand::PrintPrimary => vec![Packet::AskPrimary],
        CtlCommand::Start => vec![Packet::SetClusterState {
            state: ClusterState::Verifying,
        }],
        CtlCommand::SetCluster(state) => vec![Packet::SetClusterState { state: *state }],
        CtlCommand::SetReplicas(n) => vec![Packet::SetNumReplicas { num_replicas: *n }],
        CtlCommand::Add(nids) => vec![Packet::AddPendingNodes { nids: nids.clone() }],
        CtlCommand::Drop(nid) => vec![Packet::SetNodeState {
            nid: *nid,
            state: NodeState::Unknown,
        }],
        CtlCommand::Kill(nid) => vec![Packet::SetNodeState {
            nid: *nid,
            state: NodeState::Down,
        }],
        CtlCommand::Tweak { dry_run, nids } => vec![Packet::TweakPartitionTable {
            dry_run: *dry_run,
            nids: nids.clone(),
        }],
    }
}

/// How a command failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CtlError {
    /// The request was refused (DENIED): the message says why.
    Denied(String),
    /// NOT_READY and other errors: printed as `ERROR: ...`.
    Error(String),
}

fn check(answer: &Packet) -> Result<(), CtlError> {
    match answer {
        Packet::Error {
            code: ErrorCode::Ack,
            ..
        } => Ok(()),
        Packet::Error {
            code: ErrorCode::Denied,
            message,
        } => Err(CtlError::Denied(message.clone())),
        Packet::Error {
            code: ErrorCode::NotReady,
            message,
        } => Err(CtlError::Error(message.clone())),
        Packet::Error { code, message } => Err(CtlError::Error(format!("{code}: {message}"))),
        _ => Ok(()),
    }
}

fn unexpected(p: &Packet) -> CtlError {
    CtlError::Error(format!("unexpected answer {}", p.name()))
}

/// The text neoctl prints for the answers of `cmd` (in the order of `requests`).
pub fn render(cmd: &CtlCommand, answers: &[Packet]) -> Result<String, CtlError> {
    for a in answers {
        check(a)?;
    }
    let first = answers
        .first()
        .ok_or_else(|| CtlError::Error("no answer".into()))?;
    let mut out = String::new();
    match (cmd, first) {
        // Without a state or a primary there is nothing true to print: an error, so that
        // scripts see a non-zero exit status.
        (CtlCommand::PrintCluster, Packet::AnswerClusterState { state }) => {
            out = state
                .ok_or_else(|| CtlError::Error("the cluster state is unknown".into()))?
                .to_string();
        }
        (CtlCommand::PrintPrimary, Packet::AnswerPrimary { primary_nid }) => {
            out = primary_nid
                .ok_or_else(|| CtlError::Error("no primary master".into()))?
                .to_string();
        }
        (
            CtlCommand::PrintIds,
            Packet::AnswerRecovery {
                ptid, backup_tid, ..
            },
        ) => {
            if let Some(b) = backup_tid {
                let _ = writeln!(out, "backup_tid = {b} ({})", b.to_datetime_string());
            } else if let Some(Packet::AnswerLastIDs {
                last_tid, last_oid, ..
            }) = answers.get(1)
            {
                let _ = writeln!(
                    out,
                    "last_oid = {}",
                    last_oid.map_or("None".into(), |o| o.to_string())
                );
                let _ = writeln!(
                    out,
                    "last_tid = {}",
                    last_tid.map_or("None".into(), |t| format!(
                        "{t} ({})",
                        t.to_datetime_string()
                    ))
                );
            }
            let _ = write!(
                out,
                "last_ptid = {}",
                ptid.map_or("None".into(), |p| p.to_string())
            );
        }
        (
            CtlCommand::PrintPt { min, max },
            Packet::AnswerPartitionList {
                ptid,
                num_replicas,
                rows,
            },
        ) => {
            let states: Vec<NodeInfo> = match answers.get(1) {
                Some(Packet::AnswerNodeList { nodes }) => nodes.clone(),
                _ => Vec::new(),
            };
            out = render_pt(
                *ptid,
                *num_replicas,
                rows,
                &states,
                min.is_some() || max.is_some(),
            );
        }
        (CtlCommand::PrintNode { .. }, Packet::AnswerNodeList { nodes }) => {
            out = render_nodes(nodes)
        }
        (CtlCommand::Tweak { .. }, Packet::AnswerTweakPartitionTable { changed, rows }) => {
            if !changed {
                out = "No change done.".into();
            } else {
                let rows: Vec<(u32, Vec<(Nid, CellState)>)> = rows
                    .iter()
                    .cloned()
                    .enumerate()
                    .map(|(i, r)| (i as u32, r))
                    .collect();
                out = render_pt(None, 0, &rows, &[], false);
            }
        }
        (
            _,
            Packet::Error {
                code: ErrorCode::Ack,
                message,
            },
        ) => out = message.clone(),
        (_, other) => return Err(unexpected(other)),
    }
    Ok(out.trim_end().to_string())
}

fn render_pt(
    ptid: Option<Ptid>,
    replicas: u32,
    rows: &[(u32, Vec<(Nid, CellState)>)],
    nodes: &[NodeInfo],
    detailed: bool,
) -> String {
    let mut out = String::new();
    if let Some(p) = ptid {
        let _ = writeln!(out, "# ptid: {p}, replicas: {replicas}");
    }
    if detailed {
        for (offset, cells) in rows {
            let _ = write!(out, "{offset:03} |");
            for (nid, state) in cells {
                let _ = write!(out, " {nid} - {state} |");
            }
            out.push('\n');
        }
        return out;
    }
    let full: Vec<Vec<(Nid, CellState)>> = rows.iter().map(|(_, r)| r.clone()).collect();
    let pt = PartitionTable::from_rows(ptid, replicas, &full);
    let letter = |nid: Nid| {
        nodes
            .iter()
            .find(|n| n.nid == Some(nid))
            .map_or('?', |n| n.state.name().chars().next().unwrap_or('?'))
    };
    out += &pt.render(letter);
    out
}

fn render_nodes(nodes: &[NodeInfo]) -> String {
    if nodes.is_empty() {
        return "Empty list!".into();
    }
    let cols: Vec<[String; 5]> = nodes
        .iter()
        .map(|n| {
            [
                n.nid.map_or("None".into(), |x| x.to_string()),
                n.node_type.to_string(),
                n.address.as_ref().map_or("None".into(), |a| a.to_string()),
                n.state.to_string(),
                n.id_timestamp
                    .map_or("None".into(), |t| t.to_datetime_string()),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..5)
        .map(|i| cols.iter().map(|c| c[i].len()).max().unwrap_or(0))
        .collect();
    cols.iter()
        .map(|c| {
            c.iter()
                .zip(&widths)
                .map(|(v, w)| format!("{v:<w$}"))
                .collect::<Vec<_>>()
                .join(" | ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Address, Tid, WallTime};

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn parses_commands_and_refuses_bad_ones() {
        let s = |n| Nid::new(NodeType::Storage, n);
        assert_eq!(
            parse(&words("print cluster")).unwrap(),
            CtlCommand::PrintCluster
        );
        assert_eq!(
            parse(&words("print pt 1 3")).unwrap(),
            CtlCommand::PrintPt {
                min: Some(1),
                max: Some(3)
            }
        );
        assert_eq!(
            parse(&words("print node storage")).unwrap(),
            CtlCommand::PrintNode {
                node_type: Some(NodeType::Storage)
            }
        );
        assert_eq!(
            parse(&words("set cluster stopping")).unwrap(),
            CtlCommand::SetCluster(ClusterState::Stopping)
        );
        assert_eq!(parse(&words("add all")).unwrap(), CtlCommand::Add(vec![]));
        assert_eq!(
            parse(&words("add S1 S2")).unwrap(),
            CtlCommand::Add(vec![s(1), s(2)])
        );
        assert_eq!(
            parse(&words("tweak -n S3")).unwrap(),
            CtlCommand::Tweak {
                dry_run: true,
                nids: vec![s(3)]
            }
        );
        assert_eq!(
            parse(&words("kill M2")).unwrap(),
            CtlCommand::Kill(Nid::new(NodeType::Master, 2))
        );
        for bad in [
            "",
            "print",
            "print pt x",
            "set cluster SLEEPING",
            "add",
            "drop X1",
            "kill",
            "frobnicate",
            "print node robot",
        ] {
            let e = parse(&words(bad)).unwrap_err();
            assert!(!e.is_empty(), "{bad:?}");
        }
        assert!(parse(&words("set cluster SLEEPING"))
            .unwrap_err()
            .contains("RECOVERING"));
    }

    #[test]
    fn renders_like_neoctl() {
        let m1 = Nid::new(NodeType::Master, 1);
        let s1 = Nid::new(NodeType::Storage, 1);
        let node = |nid, ty, port, state| NodeInfo {
            node_type: ty,
            address: Some(Address::new("127.0.0.1", port)),
            nid: Some(nid),
            state,
            id_timestamp: Some(WallTime::from_secs(86_400)),
        };
        let nodes = vec![
            node(m1, NodeType::Master, 10000, NodeState::Running),
            node(s1, NodeType::Storage, 20000, NodeState::Running),
        ];
        let text = render(
            &CtlCommand::PrintNode { node_type: None },
            &[Packet::AnswerNodeList {
                nodes: nodes.clone(),
            }],
        )
        .unwrap();
        assert_eq!(
            text,
            "M1 | MASTER  | 127.0.0.1:10000 | RUNNING | 1970-01-02 00:00:00.000000\n\
             S1 | STORAGE | 127.0.0.1:20000 | RUNNING | 1970-01-02 00:00:00.000000"
        );
        assert_eq!(
            render(
                &CtlCommand::PrintNode { node_type: None },
                &[Packet::AnswerNodeList { nodes: vec![] }]
            )
            .unwrap(),
            "Empty list!"
        );
        let rows = vec![
            (0, vec![(s1, CellState::UpToDate)]),
            (1, vec![(s1, CellState::OutOfDate)]),
        ];
        let pt = Packet::AnswerPartitionList {
            ptid: Some(Ptid(4)),
            num_replicas: 0,
            rows,
        };
        let text = render(
            &CtlCommand::PrintPt {
                min: None,
                max: None,
            },
            &[pt.clone(), Packet::AnswerNodeList { nodes }],
        )
        .unwrap();
        assert!(
            text.starts_with("# ptid: 4, replicas: 0\n") && text.contains("S1    R  UO"),
            "{text}"
        );
        let text = render(
            &CtlCommand::PrintPt {
                min: Some(0),
                max: Some(1),
            },
            &[pt],
        )
        .unwrap();
        assert!(
            text.contains("000 | S1 - UP_TO_DATE |\n001 | S1 - OUT_OF_DATE |"),
            "{text}"
        );
        let ids = render(
            &CtlCommand::PrintIds,
            &[
                Packet::AnswerRecovery {
                    ptid: Some(Ptid(3)),
                    backup_tid: None,
                    truncate_tid: None,
                },
                Packet::AnswerLastIDs {
                    last_tid: Some(Tid(0x03c0_0000_0000_0001)),
                    last_oid: Some(crate::proto::Oid(7)),
                    first_tid: None,
                },
            ],
        )
        .unwrap();
        assert!(
            ids.starts_with("last_oid = 0x0000000000000007\nlast_tid = 0x03c0000000000001 (")
                && ids.ends_with("last_ptid = 3"),
            "{ids}"
        );
        assert_eq!(
            render(&CtlCommand::Start, &[Packet::ack("ok then")]).unwrap(),
            "ok then"
        );
        assert_eq!(
            render(
                &CtlCommand::Start,
                &[Packet::error(ErrorCode::Denied, "no")]
            ),
            Err(CtlError::Denied("no".into()))
        );
        assert_eq!(
            render(
                &CtlCommand::PrintCluster,
                &[Packet::error(ErrorCode::NotReady, "later")]
            ),
            Err(CtlError::Error("later".into()))
        );
        assert_eq!(
            render(
                &CtlCommand::Tweak {
                    dry_run: false,
                    nids: vec![]
                },
                &[Packet::AnswerTweakPartitionTable {
                    changed: false,
                    rows: vec![]
                }]
            )
            .unwrap(),
            "No change done."
        );
    }
}
