//! Routing to other nodes, the pure part: which peers this node has (every
//! other node's pod CIDR and InternalIP; `overlay::plan` turns them into
//! routes by mode), the IPv6 pod CIDRs' host-gw routes (via each node's IPv6
//! InternalIP; no IPv6 overlay), and what to change in the kernel to get there.
//! `route_table.rs` does the netlink I/O.
//!
//! Ownership: weft marks its routes with its own route protocol number
//! (`WEFT_PROTO`, shown by `ip route` as `proto 87`), lists only routes with that
//! mark, and so never changes or deletes a route it did not add.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::model::{Model, Node};

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

/// A weft route: `dst via gw [dev weft.vxlan onlink] [table REPLY_TABLE]`;
/// `dst` and `gw` are of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub table: Table,
    pub dst: IpNetwork,
    pub gw: IpAddr,
    pub dev: Dev,
}

impl Route {
    /// A host-gw route in the main table: `dst via gw`.
    pub fn direct(dst: impl Into<IpNetwork>, gw: impl Into<IpAddr>) -> Route {
        Route { table: Table::Main, dst: dst.into(), gw: gw.into(), dev: Dev::Underlay }
    }
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
    let overlaps = |a: Ipv4Network, b: Ipv4Network| a.contains(b.network()) || b.contains(a.network());
    let peers = model.nodes.values().map(|n| (n, n.pod_cidr, n.internal_ip));
    peers_of(model.nodes.get(me).and_then(|n| n.pod_cidr), me, "IPv4", peers, overlaps)
}

/// The IPv6 pod CIDRs node `me` routes (host-gw), as `desired_routes`; a
/// node without an IPv6 pod CIDR is no peer in IPv6 and gets no note.
pub fn desired_routes6(model: &Model, me: &str) -> (BTreeMap<Ipv6Network, Ipv6Addr>, Vec<String>) {
    let overlaps = |a: Ipv6Network, b: Ipv6Network| a.contains(b.network()) || b.contains(a.network());
    let peers =
        model.nodes.values().filter(|n| n.pod_cidr6.is_some()).map(|n| (n, n.pod_cidr6, n.internal_ip6));
    peers_of(model.nodes.get(me).and_then(|n| n.pod_cidr6), me, "IPv6", peers, overlaps)
}

/// The peers of one family: each other node's (pod CIDR, InternalIP) unless
/// one is missing or the CIDR overlaps `own` or an earlier peer's.
fn peers_of<'m, N: Copy + Ord + Display, A>(
    own: Option<N>,
    me: &str,
    family: &str,
    nodes: impl Iterator<Item = (&'m Node, Option<N>, Option<A>)>,
    overlaps: impl Fn(N, N) -> bool,
) -> (BTreeMap<N, A>, Vec<String>) {
    let mut routes = BTreeMap::new();
    let mut notes = Vec::new();
    for (node, cidr, gw) in nodes.filter(|(n, _, _)| n.name != me) {
        let (Some(dst), Some(gw)) = (cidr, gw) else {
            notes
                .push(format!("node {}: no {family} podCIDR or no {family} InternalIP, no route", node.name));
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
            labels: Default::default(),
            pod_cidr: Some(format!("10.244.{n}.0/24").parse().unwrap()),
            pod_cidr6: Some(format!("fd00::af4:{n}00/120").parse().unwrap()),
            internal_ip: Some(Ipv4Addr::new(172, 31, 0, 10 + n as u8)),
            addresses: vec![],
            internal_ip6: Some(format!("fd00::ac1f:{:x}", 10 + n).parse().unwrap()),
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
    fn ipv6_pod_cidrs_via_each_nodes_ipv6_internal_ip() {
        let mut v4_only = node(3);
        v4_only.pod_cidr6 = None;
        let mut no_ip6 = node(4);
        no_ip6.internal_ip6 = None;
        let mut overlapping_me = node(5);
        overlapping_me.pod_cidr6 = Some("fd00::af4:0/112".parse().unwrap());
        let m = model([node(1), node(2), v4_only, no_ip6, overlapping_me]);
        let (want, notes) = desired_routes6(&m, "node-1");
        let want: Vec<_> = want.into_iter().map(|(dst, gw)| Route::direct(dst, gw)).collect();
        assert_eq!(want, [r("fd00::af4:200/120", "fd00::ac1f:c")]);
        // A node without an IPv6 pod CIDR is no IPv6 peer and no note.
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("node-4: no IPv6 podCIDR or no IPv6 InternalIP"), "{notes:?}");
        // Both families side by side in one plan: an IPv6 route is replaced and deleted like an IPv4 one.
        let desired = [r("10.244.2.0/24", "172.31.0.12"), r("fd00::af4:200/120", "fd00::ac1f:c")];
        let current = [r("fd00::af4:200/120", "fd00::ac1f:63"), r("fd00::af4:900/120", "fd00::ac1f:13")];
        assert_eq!(
            plan(&desired, &current),
            [
                RouteChange::Add(desired[0]),
                RouteChange::Replace { old: current[0], new: desired[1] },
                RouteChange::Delete(current[1]),
            ]
        );
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
        assert_eq!(
            want,
            BTreeMap::from([("10.244.5.0/24".parse().unwrap(), "172.31.0.15".parse().unwrap())])
        );
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
