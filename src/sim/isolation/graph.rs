//! The dependency graph between committed transactions (Adya's ww, wr and rw edges, as Elle
//! derives them from list-append histories) and the two searches the checker runs on it:
//! strongly connected components (Tarjan, iterative) and a shortest path (breadth-first,
//! within a node filter and a step budget) to print one cycle as an example.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use crate::proto::Oid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// The target installed the next version of an object after the source's.
    Ww,
    /// The target read (as the last value it saw) the source's version.
    Wr,
    /// Anti-dependency: the source read a version the target then overwrote.
    Rw,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Ww => "ww",
            Kind::Wr => "wr",
            Kind::Rw => "rw",
        })
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Edge {
    pub to: usize,
    pub kind: Kind,
    pub oid: Oid,
    /// A ww edge into an append that conflict resolution rebased: the target saw the
    /// source's version at commit, not in its snapshot (ZODB's resolution, not SI).
    pub into_resolved: bool,
    /// An rw edge leaving a read checked with readCurrent (or the base of an append).
    pub checked: bool,
}

/// Adjacency lists over transaction indices; transactions that did not commit have none.
pub(super) struct Graph {
    pub adj: Vec<Vec<Edge>>,
}

/// One step of a path or cycle: `from` -edge-> `edge.to`.
pub(super) type Step = (usize, Edge);

impl Graph {
    pub fn new(n: usize) -> Graph {
        Graph {
            adj: vec![Vec::new(); n],
        }
    }

    pub fn add(&mut self, from: usize, edge: Edge) {
        self.adj[from].push(edge);
    }

    pub fn edges(&self) -> impl Iterator<Item = Step> + '_ {
        self.adj
            .iter()
            .enumerate()
            .flat_map(|(a, es)| es.iter().map(move |e| (a, *e)))
    }

    /// The strongly connected components of more than one node, over the edges `keep`
    /// accepts (there are no self edges).
    pub fn sccs(&self, keep: impl Fn(&Edge) -> bool) -> Vec<Vec<usize>> {
        const NONE: usize = usize::MAX;
        let n = self.adj.len();
        let mut index = vec![NONE; n];
        let mut low = vec![0; n];
        let mut on_stack = vec![false; n];
        let mut stack = Vec::new();
        let mut out = Vec::new();
        let mut next = 0;
        // The explicit call stack: (node, next edge to look at).
        let mut calls: Vec<(usize, usize)> = Vec::new();
        for root in 0..n {
            if index[root] != NONE || self.adj[root].is_empty() {
                continue;
            }
            index[root] = next;
            low[root] = next;
            next += 1;
            stack.push(root);
            on_stack[root] = true;
            calls.push((root, 0));
            while let Some(&mut (v, ref mut cursor)) = calls.last_mut() {
                if let Some(e) = self.adj[v].get(*cursor) {
                    *cursor += 1;
                    if !keep(e) {
                        continue;
                    }
                    let w = e.to;
                    if index[w] == NONE {
                        index[w] = next;
                        low[w] = next;
                        next += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        calls.push((w, 0));
                    } else if on_stack[w] {
                        low[v] = low[v].min(index[w]);
                    }
                    continue;
                }
                calls.pop();
                if let Some(&(u, _)) = calls.last() {
                    low[u] = low[u].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut comp = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        comp.push(w);
                        if w == v {
                            break;
                        }
                    }
                    if comp.len() > 1 {
                        comp.sort_unstable();
                        out.push(comp);
                    }
                }
            }
        }
        out
    }

    /// A shortest path from `from` to `to` (a cycle if they are equal) over the edges `keep`
    /// accepts, through nodes `allow` accepts; each edge looked at costs one unit of
    /// `budget`, and an exhausted budget gives None.
    pub fn path(
        &self,
        from: usize,
        to: usize,
        keep: impl Fn(&Edge) -> bool,
        allow: impl Fn(usize) -> bool,
        budget: &mut usize,
    ) -> Option<Vec<Step>> {
        let mut parent: BTreeMap<usize, Step> = BTreeMap::new();
        let mut seen = BTreeSet::from([from]);
        let mut queue = VecDeque::from([from]);
        while let Some(x) = queue.pop_front() {
            for e in &self.adj[x] {
                if *budget == 0 {
                    return None;
                }
                *budget -= 1;
                if !keep(e) {
                    continue;
                }
                if e.to == to {
                    let mut path = vec![(x, *e)];
                    let mut y = x;
                    while y != from {
                        let step = parent[&y];
                        path.push(step);
                        y = step.0;
                    }
                    path.reverse();
                    return Some(path);
                }
                if allow(e.to) && seen.insert(e.to) {
                    parent.insert(e.to, (x, *e));
                    queue.push_back(e.to);
                }
            }
        }
        None
    }

    /// A shortest cycle through the first node of `scc`, within it.
    pub fn cycle_in(&self, scc: &[usize], keep: impl Fn(&Edge) -> bool) -> Option<Vec<Step>> {
        let members: BTreeSet<usize> = scc.iter().copied().collect();
        let mut budget = usize::MAX;
        self.path(scc[0], scc[0], keep, |x| members.contains(&x), &mut budget)
    }
}
