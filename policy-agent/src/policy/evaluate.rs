//! Deciding one connection, the pure part of `weft-agent explain`: from the
//! model, which policies isolate each end and which rule (by policy name and
//! index) admits it; and from a node's compiled IR, what the kernel rules
//! decide. Both are kept so that explain can say why in policy terms and
//! check that the compiled rules agree.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Serialize;

use super::family::{self, Family};
use super::ir::{FamilyIr, GroupPorts};
use super::tiers::{self, ClusterVerdict, Conn, Way};
use crate::model::{Action, Model, NetworkPolicy, Peer, Pod, PolicyPort, PortRef, Protocol, Rule, Tier};

/// One end of a connection. Both ends of one connection are of one family.
#[derive(Debug, Clone, Copy)]
pub enum Party<'m> {
    /// A pod, by its IPv4 address.
    Pod(&'m Pod),
    /// A pod, by its IPv6 address.
    Pod6(&'m Pod),
    /// A node's or an external address (no policy applies to it as a pod).
    Addr(IpAddr),
}

impl Party<'_> {
    /// Its address in the connection's family.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Party::Pod(p) => p.ip.map(IpAddr::V4),
            Party::Pod6(p) => p.ip6.map(IpAddr::V6),
            Party::Addr(ip) => Some(*ip),
        }
    }

    /// True if the connection is IPv6.
    pub fn is_v6(&self) -> bool {
        match self {
            Party::Pod(_) => false,
            Party::Pod6(_) => true,
            Party::Addr(ip) => ip.is_ipv6(),
        }
    }

    /// The pod policy applies to: None for an address or a host-network pod.
    pub fn pod(&self) -> Option<&Pod> {
        match self {
            // A hostNetwork pod has the node's address and no policy of its own.
            Party::Pod(p) | Party::Pod6(p) if !p.host_network => Some(p),
            _ => None,
        }
    }
}

/// `pod`'s address in the family of `v6`.
pub fn address_of(pod: &Pod, v6: bool) -> Option<IpAddr> {
    if v6 {
        pod.ip6.map(IpAddr::V6)
    } else {
        pod.ip.map(IpAddr::V4)
    }
}

/// One direction's decision at one end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Policies that isolate this end in this direction ("ns/name").
    pub isolated_by: Vec<String>,
    /// Rules that admit the connection ("ns/name rule N", N from 1).
    pub admitted_by: Vec<String>,
    /// The ClusterNetworkPolicy rule that decided this direction, if one did
    /// (an Admin rule before NetworkPolicy, a Baseline rule after it).
    pub cluster_verdict: Option<ClusterVerdict>,
    /// The tiers walked, in order (empty without ClusterNetworkPolicies),
    /// e.g. ["Admin Pass by cnp/a/0", "NetworkPolicy denied by x/y"].
    pub walk: Vec<String>,
}

impl Decision {
    /// True if this direction lets the connection through.
    pub fn allows(&self) -> bool {
        match &self.cluster_verdict {
            Some(v) => v.allows,
            None => self.isolated_by.is_empty() || !self.admitted_by.is_empty(),
        }
    }

    /// The walk as one line: "Admin Pass by cnp/a/0 -> NetworkPolicy denied by x/y".
    pub fn walk_line(&self) -> String {
        self.walk.join(" -> ")
    }
}

/// Egress of `src` (a pod) and ingress of `dst` (a pod) for `proto`/`port`,
/// per the NetworkPolicy API, inside ClusterNetworkPolicy's tiers
/// (`tiers::settle`). None for an end that is not a pod.
pub fn decide(
    model: &Model,
    src: Party,
    dst: Party,
    proto: Protocol,
    port: u16,
) -> (Option<Decision>, Option<Decision>) {
    decide_via(model, src, dst, proto, port, false)
}

/// `decide` for a connection `dst` received through a Service's virtual IP
/// (`via_service`): the same but for a pod reaching itself (hairpin), which
/// ClusterNetworkPolicy then judges as any other connection.
pub fn decide_via(
    model: &Model,
    src: Party,
    dst: Party,
    proto: Protocol,
    port: u16,
    via_service: bool,
) -> (Option<Decision>, Option<Decision>) {
    let conn = |way| OneWay { model, src, dst, proto, port, via_service, way };
    (decide_way(&conn(Way::Egress)), decide_way(&conn(Way::Ingress)))
}

/// One direction of `decide`: the egress of `src` or the ingress of `dst`
/// (None if that end is not a pod). The denied log needs only the one that
/// dropped the connection.
pub fn decide_one(
    model: &Model,
    src: Party,
    dst: Party,
    proto: Protocol,
    port: u16,
    way: Way,
) -> Option<Decision> {
    decide_way(&OneWay { model, src, dst, proto, port, via_service: false, way })
}

/// A connection and the direction of it to decide.
struct OneWay<'m> {
    model: &'m Model,
    src: Party<'m>,
    dst: Party<'m>,
    proto: Protocol,
    port: u16,
    via_service: bool,
    way: Way,
}

/// A policy's rules of one direction.
type RulesOf = fn(&NetworkPolicy) -> Option<&[Rule]>;

fn decide_way(c: &OneWay) -> Option<Decision> {
    let OneWay { model, src, dst, proto, port, via_service, way } = *c;
    let (me, other, rules_of): (_, _, RulesOf) = match way {
        Way::Egress => (src.pod()?, dst, |p| p.egress.as_deref()),
        Way::Ingress => (dst.pod()?, src, |p| p.ingress.as_deref()),
    };
    // A named port resolves on the server: the destination.
    let mut d = direction(model, me, rules_of, |rule| {
        peers_match(model, rule, me, other) && ports_match(&rule.ports, proto, port, dst.pod())
    });
    let conn = Conn { model, way, me, other, proto, port, via_service };
    tiers::settle(&mut d, &conn);
    Some(d)
}

fn direction<'m>(
    model: &'m Model,
    pod: &Pod,
    rules_of: impl Fn(&'m NetworkPolicy) -> Option<&'m [Rule]>,
    admits: impl Fn(&Rule) -> bool,
) -> Decision {
    let mut d = Decision::default();
    // Audit policies deny nothing (see `with_audit_enforced`).
    for (key, policy) in model.namespace_policies(&pod.namespace).filter(|(_, p)| !p.audit) {
        if !policy.pod_selector.matches(&pod.labels) {
            continue;
        }
        let Some(rules) = rules_of(policy) else { continue };
        d.isolated_by.push(key.clone());
        for (i, rule) in rules.iter().enumerate() {
            if admits(rule) {
                d.admitted_by.push(format!("{key} rule {}", i + 1));
            }
        }
    }
    d
}

/// True if the rule's peers include `other`, seen from `me` (the policy's pod).
fn peers_match(model: &Model, rule: &Rule, me: &Pod, other: Party) -> bool {
    if rule.peers.is_empty() {
        return true;
    }
    rule.peers.iter().any(|peer| match peer {
        Peer::Pods { namespaces, pods } => other.pod().is_some_and(|o| {
            let ns_ok = match namespaces {
                None => o.namespace == me.namespace,
                Some(sel) => sel.matches(&model.namespace_labels(&o.namespace)),
            };
            ns_ok && pods.matches(&o.labels)
        }),
        // A block of the other family contains no address of this one.
        Peer::IpBlock { cidr, except } => other
            .ip()
            .is_some_and(|ip| cidr.contains(ip) && !except.iter().any(|e: &IpNetwork| e.contains(ip))),
    })
}

/// True if `ports` (empty: all) include `proto`/`port` on `server` (which
/// resolves named ports).
fn ports_match(ports: &[PolicyPort], proto: Protocol, port: u16, server: Option<&Pod>) -> bool {
    ports.is_empty()
        || ports.iter().any(|p| {
            p.protocol == proto
                && match (&p.port, p.end_port) {
                    (None, _) => true,
                    (Some(PortRef::Number(n)), None) => *n == port,
                    (Some(PortRef::Number(a)), Some(b)) => (*a..=b).contains(&port),
                    (Some(named), _) => server.and_then(|s| s.resolve_port(named, proto)) == Some(port),
                }
        })
}

/// `model` with its audit policies enforced: what they would decide.
pub fn with_audit_enforced(model: &Model) -> Model {
    let mut m = model.clone();
    for p in std::sync::Arc::make_mut(&mut m.policies).values_mut().filter(|p| p.audit) {
        std::sync::Arc::make_mut(p).audit = false;
    }
    m
}

/// What a node's compiled rules do with a packet of this connection in one
/// direction: `pod` is the local end (source for egress, destination for
/// ingress), `peer` the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum IrVerdict {
    /// Not a local pod of this node: this direction is not decided here.
    NotLocal,
    /// An address of this node's pod CIDR that no known pod has: dropped.
    UnknownLocal,
    NotIsolated,
    Admitted,
    Denied,
}

impl IrVerdict {
    pub fn allows(self) -> bool {
        !matches!(self, IrVerdict::UnknownLocal | IrVerdict::Denied)
    }
}

/// Ingress (`ingress` true) or egress of local pod `pod` with `peer` on one node.
pub fn ir_verdict<A: Family>(
    ir: &FamilyIr<A>,
    ingress: bool,
    pod: A,
    peer: A,
    proto: Protocol,
    port: u16,
) -> IrVerdict {
    if !ir.local.contains(&pod) {
        return if ir.pod_cidr.is_some_and(|c| family::contains(c, pod)) {
            IrVerdict::UnknownLocal
        } else {
            IrVerdict::NotLocal
        };
    }
    // ClusterNetworkPolicy's Admin tier, then NetworkPolicy, then Baseline
    // for a pod NetworkPolicy does not isolate (policy::cluster).
    let cluster = |tier| ir.cluster.decide(tier, ingress, pod, peer, Some(proto), port);
    match cluster(Tier::Admin) {
        Some(Action::Accept) => return IrVerdict::Admitted,
        Some(Action::Deny) => return IrVerdict::Denied,
        Some(Action::Pass) | None => {}
    }
    let dir = if ingress { &ir.ingress } else { &ir.egress };
    if !dir.isolated.contains(&pod) {
        return match cluster(Tier::Baseline) {
            Some(Action::Deny) => IrVerdict::Denied,
            _ => IrVerdict::NotIsolated,
        };
    }
    let exact = dir
        .triples
        .iter()
        .any(|(p, pr, po, net)| *p == pod && *pr == proto && *po == port && family::contains(*net, peer));
    let group = dir.groups.iter().any(|g| {
        g.targets.contains(&pod)
            && g.peers.iter().any(|n| family::contains(*n, peer))
            && match g.ports {
                GroupPorts::All => true,
                GroupPorts::Protocol(p) => p == proto,
                GroupPorts::Range(p, a, b) => p == proto && (a..=b).contains(&port),
            }
    });
    let port_group = dir.port_groups.iter().any(|g| {
        g.targets.contains(&(pod, proto, port)) && g.peers.iter().any(|n| family::contains(*n, peer))
    });
    if exact || port_group || group {
        IrVerdict::Admitted
    } else {
        IrVerdict::Denied
    }
}
