//! Real `neomaster` processes on 127.0.0.1, configured by one neo.conf: they elect one
//! primary; when the primary is killed with SIGKILL another takes over within seconds; the
//! killed master, restarted, becomes a secondary.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::time::Duration;

use common::{free_port, wait_for, Node, TempDir};

/// A master's role, as its last "role:" log line says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Primary(String),
    SecondaryOf(String),
}

fn role(node: &Node) -> Option<Role> {
    let log = node.log();
    let line = log.lines().rev().find(|l| l.contains("role: "))?;
    let rest = &line[line.find("role: ")? + 6..];
    let word = |s: &str| s.split_whitespace().next().map(str::to_string);
    if let Some(r) = rest.strip_prefix("primary ") {
        word(r).map(Role::Primary)
    } else {
        rest.strip_prefix("secondary of ")
            .and_then(word)
            .map(Role::SecondaryOf)
    }
}

/// The primary's nid and index if exactly one master is primary and all others follow it.
fn converged(masters: &[Node]) -> Option<(usize, String)> {
    let roles: Vec<Option<Role>> = masters.iter().map(role).collect();
    let primaries: Vec<(usize, String)> = roles
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Some(Role::Primary(nid)) => Some((i, nid.clone())),
            _ => None,
        })
        .collect();
    let [(p, nid)] = primaries.as_slice() else {
        return None;
    };
    let all_follow = roles
        .iter()
        .enumerate()
        .all(|(i, r)| i == *p || *r == Some(Role::SecondaryOf(nid.clone())));
    all_follow.then(|| (*p, nid.clone()))
}

#[test]
fn three_masters_elect_one_primary_and_survive_its_death() {
    let dir = TempDir::new("election");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let masters_line = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut conf = format!("[DEFAULT]\ncluster: election-test\nmasters: {masters_line}\n");
    for (i, p) in ports.iter().enumerate() {
        conf += &format!("\n[master{}]\nbind: 127.0.0.1:{p}\n", i + 1);
    }
    let conf_path = dir.path().join("neo.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let start = |i: usize, generation: u32| {
        Node::spawn(
            env!("CARGO_BIN_EXE_neomaster"),
            &dir,
            &format!("master{}-{generation}", i + 1),
            &[
                "-f",
                conf_path.to_str().unwrap(),
                "-s",
                &format!("master{}", i + 1),
            ],
        )
    };
    let mut masters: Vec<Node> = (0..3).map(|i| start(i, 0)).collect();

    let (p, nid) = wait_for(Duration::from_secs(10), || converged(&masters)).unwrap_or_else(|| {
        panic!(
            "no single primary after 10 s; logs:\n{}",
            common::logs(&masters)
        )
    });

    masters[p].kill9();
    let survivors = |ms: &[Node]| -> Vec<Node> {
        ms.iter()
            .enumerate()
            .filter(|(i, _)| *i != p)
            .map(|(_, n)| n.clone_view())
            .collect()
    };
    let (_, new_nid) = wait_for(Duration::from_secs(10), || converged(&survivors(&masters)))
        .unwrap_or_else(|| {
            panic!(
                "no new primary 10 s after killing {nid}; logs:\n{}",
                common::logs(&masters)
            )
        });
    assert_ne!(new_nid, nid, "the dead primary cannot still be primary");

    masters[p] = start(p, 1);
    let (p2, final_nid) =
        wait_for(Duration::from_secs(10), || converged(&masters)).unwrap_or_else(|| {
            panic!(
                "the restarted master did not rejoin; logs:\n{}",
                common::logs(&masters)
            )
        });
    assert_ne!(p2, p, "the restarted master took the primary role back");
    assert_eq!(final_nid, new_nid);
    assert_eq!(role(&masters[p]), Some(Role::SecondaryOf(new_nid)));
}
