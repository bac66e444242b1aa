//! Routing to other nodes, the pure part: which peers this node has (every
//! other node's pod CIDR and InternalIP; `overlay::plan` turns them into
//! routes by mode) and what to change in the kernel to get there.
//! `route_table.rs` does the netlink I/O.
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

/// The routing table a weft route is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Main,
    /// `overlay::REPLY_TABLE`, looked up for traffic from this node's pods.
    Replies,
}

/// Which link a route leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dev {
    /// The one the kernel finds for the gateway (host-gw: the underlay).
    Underlay,
    /// The VXLAN device, `onlink` (the gateway is a VTEP, not on a subnet of it).
    Overlay,
}

/// A weft route: `dst via gw [dev weft.vxlan onlink] [table REPLY_TABLE]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub table: Table,
    pub dst: Ipv4Network,
    pub gw: Ipv4Addr,
    pub dev: Dev,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} via {}", self.dst, self.gw)?;
        if self.dev == Dev::Overlay {
            write!(f, " dev {} onlink", crate::overlay::VXLAN_DEVICE)?;
        }
        if self.table == Table::Replies {
            write!(f, " table {}", crate::overlay::REPLY_TABLE)?;
        }
        Ok(())
    }
}

/// One change to the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    /// A desired route that is missing.
    Add(Route),
    /// A weft route to the right destination via the wrong gateway or link.
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

/// The changes that turn `current` (weft's routes in the kernel) into
/// `desired` (one route per table and destination). A destination with
/// several weft routes keeps the right one, if any, and loses the rest.
/// Deletes come last, so a replaced node stays reachable.
pub fn plan(desired: &[Route], current: &[Route]) -> Vec<RouteChange> {
    let mut changes = Vec::new();
    let mut deletes = Vec::new();
    let same_key = |a: &Route, b: &Route| a.table == b.table && a.dst == b.dst;
    for &want in desired {
        let here: Vec<Route> = current.iter().copied().filter(|r| same_key(r, &want)).collect();
        match (here.contains(&want), here.first()) {
            (true, _) => deletes.extend(here.into_iter().filter(|r| *r != want)),
            (false, None) => changes.push(RouteChange::Add(want)),
            (false, Some(&old)) => {
                changes.push(RouteChange::Replace { old, new: want });
                deletes.extend(here.into_iter().skip(1));
            }
        }
    }
    deletes.extend(current.iter().copied().filter(|r| !desired.iter().any(|d| same_key(d, r))));
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
            internal_ip6: None,
        }
    }

    fn model(nodes: impl IntoIterator<Item = Node>) -> Model {
        Model { nodes: nodes.into_iter().map(|n| (n.name.clone(), n)).collect(), ..Model::default() }
    }

    fn r(dst: &str, gw: &str) -> Route {
        Route { table: Table::Main, dst: dst.parse().unwrap(), gw: gw.parse().unwrap(), dev: Dev::Underlay }
    }

    #[test]
    fn every_other_node_via_its_internal_ip() {
        let m = model([node(1), node(2), node(3)]);
        let (want, notes) = desired_routes(&m, "node-1");
        let want: Vec<_> = want.into_iter().map(|(dst, gw)| r(&dst.to_string(), &gw.to_string())).collect();
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
        let desired = [r("10.244.2.0/24", "172.31.0.12"), r("10.244.3.0/24", "172.31.0.13")];
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
        assert_eq!(plan(&[], &current), [RouteChange::Delete(current[0])]);
        // The same gateway through the overlay (a mode switch) is replaced;
        // a reply route of the same destination is another table's.
        let overlay = Route { dev: Dev::Overlay, ..current[0] };
        let reply = Route { table: Table::Replies, ..overlay };
        assert_eq!(
            plan(&[overlay], &[current[0], reply]),
            [RouteChange::Replace { old: current[0], new: overlay }, RouteChange::Delete(reply)]
        );
    }
}
