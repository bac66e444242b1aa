//! Host-gw routing, the pure part: which routes this node wants (every other
//! node's pod CIDR via that node's InternalIP) and what to change in the
//! kernel to get there. `route_table.rs` does the netlink I/O.
//!
//! Ownership: weft marks its routes with its own route protocol number
//! (`WEFT_PROTO`, shown by `ip route` as `proto 87`), lists only routes with that
//! mark, and so never changes or deletes a route it did not add.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::model::Model;

/// The route protocol (rtm_protocol) that marks weft's routes: 0x57, "W".
pub const WEFT_PROTO: u8 = 0x57;

/// A host-gw route: `dst via gw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: Ipv4Network,
    pub gw: Ipv4Addr,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} via {}", self.dst, self.gw)
    }
}

/// One change to the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    /// A desired route that is missing.
    Add(Route),
    /// A weft route to the right destination via the wrong gateway.
    Replace { old: Route, new: Route },
    /// A weft route that is no longer desired.
    Delete(Route),
}

impl std::fmt::Display for RouteChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteChange::Add(r) => write!(f, "added {r}"),
            RouteChange::Replace { old, new } => write!(f, "replaced {old} with via {}", new.gw),
            RouteChange::Delete(r) => write!(f, "deleted {r}"),
        }
    }
}

/// The routes node `me` wants, by destination, and the reasons other nodes
/// give none (no pod CIDR, no InternalIP, a CIDR that overlaps ours or another's).
pub fn desired_routes(model: &Model, me: &str) -> (BTreeMap<Ipv4Network, Ipv4Addr>, Vec<String>) {
    let own = model.nodes.get(me).and_then(|n| n.pod_cidr);
    let mut routes = BTreeMap::new();
    let mut notes = Vec::new();
    for node in model.nodes.values().filter(|n| n.name != me) {
        let (Some(dst), Some(gw)) = (node.pod_cidr, node.internal_ip) else {
            notes.push(format!("node {}: no podCIDR or no IPv4 InternalIP, no route", node.name));
            continue;
        };
        if own.is_some_and(|o| overlaps(o, dst)) {
            notes.push(format!("node {}: podCIDR {dst} overlaps this node's, no route", node.name));
            continue;
        }
        if let Some(other) = routes.keys().find(|d| overlaps(**d, dst)) {
            notes.push(format!("node {}: podCIDR {dst} overlaps {other}, no route", node.name));
            continue;
        }
        routes.insert(dst, gw);
    }
    (routes, notes)
}

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The changes that turn `current` (weft's routes in the kernel) into `desired`.
/// A destination with several weft routes keeps the right one, if any, and
/// loses the rest. Deletes come last, so a replaced node stays reachable.
pub fn plan(desired: &BTreeMap<Ipv4Network, Ipv4Addr>, current: &[Route]) -> Vec<RouteChange> {
    let mut changes = Vec::new();
    let mut deletes = Vec::new();
    for (&dst, &gw) in desired {
        let want = Route { dst, gw };
        let here: Vec<Route> = current.iter().copied().filter(|r| r.dst == dst).collect();
        match (here.contains(&want), here.first()) {
            (true, _) => deletes.extend(here.into_iter().filter(|r| *r != want)),
            (false, None) => changes.push(RouteChange::Add(want)),
            (false, Some(&old)) => {
                changes.push(RouteChange::Replace { old, new: want });
                deletes.extend(here.into_iter().skip(1));
            }
        }
    }
    deletes.extend(current.iter().copied().filter(|r| !desired.contains_key(&r.dst)));
    deletes.sort();
    deletes.dedup();
    changes.extend(deletes.into_iter().map(RouteChange::Delete));
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Node;

    fn node(n: u32) -> Node {
        Node {
            name: format!("node-{n}"),
            pod_cidr: Some(format!("10.244.{n}.0/24").parse().unwrap()),
            pod_cidr6: None,
            internal_ip: Some(Ipv4Addr::new(172, 31, 0, 10 + n as u8)),
        }
    }

    fn model(nodes: impl IntoIterator<Item = Node>) -> Model {
        Model { nodes: nodes.into_iter().map(|n| (n.name.clone(), n)).collect(), ..Model::default() }
    }

    fn r(dst: &str, gw: &str) -> Route {
        Route { dst: dst.parse().unwrap(), gw: gw.parse().unwrap() }
    }

    #[test]
    fn every_other_node_via_its_internal_ip() {
        let m = model([node(1), node(2), node(3)]);
        let (want, notes) = desired_routes(&m, "node-1");
        let want: Vec<_> = want.into_iter().map(|(dst, gw)| Route { dst, gw }).collect();
        assert_eq!(want, [r("10.244.2.0/24", "172.31.0.12"), r("10.244.3.0/24", "172.31.0.13")]);
        assert!(notes.is_empty());
        // A node that is not (yet) in the model still routes to all the others.
        assert_eq!(desired_routes(&m, "node-9").0.len(), 3);
        assert!(desired_routes(&model([node(1)]), "node-1").0.is_empty());
    }

    #[test]
    fn nodes_without_a_route() {
        let mut no_ip = node(2);
        no_ip.internal_ip = None;
        let mut no_cidr = node(3);
        no_cidr.pod_cidr = None;
        let mut overlapping_me = node(4);
        overlapping_me.pod_cidr = Some("10.244.0.0/16".parse().unwrap());
        let mut dup = node(5);
        dup.name = "node-6".into();
        let m = model([node(1), no_ip, no_cidr, overlapping_me, node(5), dup]);
        let (want, notes) = desired_routes(&m, "node-1");
        let only = r("10.244.5.0/24", "172.31.0.15");
        assert_eq!(want, BTreeMap::from([(only.dst, only.gw)]));
        assert_eq!(notes.len(), 4, "{notes:?}");
    }

    #[test]
    fn plans() {
        let desired: BTreeMap<_, _> = [
            ("10.244.2.0/24".parse().unwrap(), "172.31.0.12".parse().unwrap()),
            ("10.244.3.0/24".parse().unwrap(), "172.31.0.13".parse().unwrap()),
        ]
        .into();
        // table: (current, expected changes)
        let cases: Vec<(Vec<Route>, Vec<RouteChange>)> = vec![
            (
                vec![],
                vec![
                    RouteChange::Add(r("10.244.2.0/24", "172.31.0.12")),
                    RouteChange::Add(r("10.244.3.0/24", "172.31.0.13")),
                ],
            ),
            (vec![r("10.244.2.0/24", "172.31.0.12"), r("10.244.3.0/24", "172.31.0.13")], vec![]),
            (
                vec![r("10.244.2.0/24", "172.31.0.99"), r("10.244.3.0/24", "172.31.0.13")],
                vec![RouteChange::Replace {
                    old: r("10.244.2.0/24", "172.31.0.99"),
                    new: r("10.244.2.0/24", "172.31.0.12"),
                }],
            ),
            (
                vec![
                    r("10.244.9.0/24", "172.31.0.19"),
                    r("10.244.2.0/24", "172.31.0.12"),
                    r("10.244.2.0/24", "172.31.0.98"),
                    r("10.244.3.0/24", "172.31.0.13"),
                ],
                vec![
                    RouteChange::Delete(r("10.244.2.0/24", "172.31.0.98")),
                    RouteChange::Delete(r("10.244.9.0/24", "172.31.0.19")),
                ],
            ),
        ];
        for (current, expected) in cases {
            assert_eq!(plan(&desired, &current), expected, "current {current:?}");
        }
        // Nothing desired: every weft route goes.
        let current = [r("10.244.2.0/24", "172.31.0.12")];
        assert_eq!(plan(&BTreeMap::new(), &current), [RouteChange::Delete(current[0])]);
    }
}
