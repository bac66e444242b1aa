//! ClusterNetworkPolicy's tiers on the model, the pure part: for one end and
//! one direction, the walk Admin (by priority, then rule order) ->
//! NetworkPolicy -> Baseline -> default allow, as network-policy-api v0.2.0
//! defines it. `evaluate::decide` computes the NetworkPolicy tier and calls
//! `settle` to put the cluster tiers around it.
//!
//! - Accept and Deny end the walk; Pass ends the tier. An egress Accept does
//!   not touch ingress at the destination: each direction walks on its own.
//! - NetworkPolicy decides for an end it isolates; only an end no
//!   NetworkPolicy isolates reaches Baseline.
//! - Host-network pods are never subjects nor pod peers (`Party::pod`); a pod
//!   reaching its own address is exempt; `networks` match pod addresses too.
//! - A rule holding a peer or protocol weft does not know fails closed: an
//!   Accept matches nothing, a Deny or Pass denies everything.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use serde::Serialize;

use super::evaluate::{Decision, Party};
use crate::model::{
    Action, ClusterNetworkPolicy, CnpPeer, CnpPort, CnpRule, Labels, Model, NamespacedPods, Pod, Protocol,
    Subject, Tier,
};

/// Which direction of `me` is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// `me` sends to the other end.
    Egress,
    /// `me` receives from the other end.
    Ingress,
}

/// A final verdict of a cluster tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterVerdict {
    pub tier: Tier,
    /// `cnp/<policy>/<rule name or index>`.
    pub rule: String,
    pub allows: bool,
}

/// What one tier did with a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TierOutcome {
    /// A rule decided (Accept or Deny).
    Final(ClusterVerdict),
    /// A Pass rule (by this rule id): the next tier decides.
    Pass(String),
    /// No rule of the tier matched.
    NoMatch,
}

/// The connection as one end sees it.
pub struct Conn<'a> {
    pub model: &'a Model,
    pub way: Way,
    /// The end being judged (the subject).
    pub me: &'a Pod,
    pub other: Party<'a>,
    pub proto: Protocol,
    pub port: u16,
    /// Reached through a Service's virtual IP: a pod reaching itself that
    /// way (hairpin) is subject to ClusterNetworkPolicy, unlike one reaching
    /// its own address.
    pub via_service: bool,
}

/// Puts the cluster tiers around `d`, the NetworkPolicy tier's decision for
/// `c.me` in direction `c.way`: sets `d.cluster_verdict` when a cluster tier
/// decides, and `d.walk` to the tiers walked. Nothing when the model has no
/// ClusterNetworkPolicy (then `d` is NetworkPolicy's alone).
pub fn settle(d: &mut Decision, c: &Conn) {
    if c.model.cluster_policies.is_empty() {
        return;
    }
    let mine = super::evaluate::address_of(c.me, c.other.is_v6());
    if !c.via_service && mine.is_some() && c.other.ip() == mine {
        d.walk.push("own address: no ClusterNetworkPolicy applies".into());
        return;
    }
    match walk_tier(c, Tier::Admin) {
        TierOutcome::Final(v) => return finish(d, v),
        TierOutcome::Pass(rule) => d.walk.push(format!("Admin Pass by {rule}")),
        TierOutcome::NoMatch => d.walk.push("Admin: no rule matches".into()),
    }
    if !d.isolated_by.is_empty() {
        d.walk.push(if d.admitted_by.is_empty() {
            format!("NetworkPolicy denied by {}", d.isolated_by.join(", "))
        } else {
            format!("NetworkPolicy allowed by {}", d.admitted_by.join(", "))
        });
        return;
    }
    d.walk.push("NetworkPolicy: not isolated".into());
    match walk_tier(c, Tier::Baseline) {
        TierOutcome::Final(v) => finish(d, v),
        TierOutcome::Pass(rule) => d.walk.push(format!("Baseline Pass by {rule} -> default allow")),
        TierOutcome::NoMatch => d.walk.push("Baseline: no rule matches -> default allow".into()),
    }
}

fn finish(d: &mut Decision, v: ClusterVerdict) {
    let what = if v.allows { "Accept" } else { "Deny" };
    d.walk.push(format!("{} {what} by {}", v.tier, v.rule));
    d.cluster_verdict = Some(v);
}

/// The policies of `tier` in evaluation order: priority, then name (equal
/// priorities may be applied in any order; by name, at least the same every time).
pub fn in_order(model: &Model, tier: Tier) -> Vec<&ClusterNetworkPolicy> {
    let mut v: Vec<_> = model.cluster_policies.values().filter(|p| p.tier == tier).collect();
    v.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    v
}

/// What `tier` alone does with `c`: the action of its first matching rule
/// (a fail-closed Deny or Pass as Deny), None if no rule matches.
#[cfg(test)]
pub(crate) fn tier_action(c: &Conn, tier: Tier) -> Option<Action> {
    match walk_tier(c, tier) {
        TierOutcome::Final(v) if v.allows => Some(Action::Accept),
        TierOutcome::Final(_) => Some(Action::Deny),
        TierOutcome::Pass(_) => Some(Action::Pass),
        TierOutcome::NoMatch => None,
    }
}

fn walk_tier(c: &Conn, tier: Tier) -> TierOutcome {
    // A pod not known yet may be any pod: the first Deny naming pods or
    // namespaces (on its ports) holds it, before any other rule.
    if unknown_pod(c.model, &c.other) {
        for policy in
            in_order(c.model, tier).into_iter().filter(|p| subject_selects(c.model, &p.subject, c.me))
        {
            let rules = match c.way {
                Way::Egress => &policy.egress,
                Way::Ingress => &policy.ingress,
            };
            let pod_peers =
                |r: &CnpRule| r.peers.iter().any(|p| matches!(p, CnpPeer::Namespaces(_) | CnpPeer::Pods(_)));
            if let Some(i) = rules.iter().position(|r| {
                r.action == Action::Deny && !r.fails_closed() && pod_peers(r) && ports_match(c, &r.ports)
            }) {
                let rule = policy.rule_id(rules, i);
                return TierOutcome::Final(ClusterVerdict { tier, rule, allows: false });
            }
        }
    }
    for policy in in_order(c.model, tier) {
        if !subject_selects(c.model, &policy.subject, c.me) {
            continue;
        }
        let rules = match c.way {
            Way::Egress => &policy.egress,
            Way::Ingress => &policy.ingress,
        };
        for (i, rule) in rules.iter().enumerate() {
            let action = match (rule.fails_closed(), rule.action) {
                // Fail closed: an Accept matches nothing, a Deny or Pass denies everything.
                (true, Action::Accept) => continue,
                (true, _) => Action::Deny,
                (false, a) if rule_matches(c, rule) => a,
                (false, _) => continue,
            };
            let id = policy.rule_id(rules, i);
            return match action {
                Action::Accept => TierOutcome::Final(ClusterVerdict { tier, rule: id, allows: true }),
                Action::Deny => TierOutcome::Final(ClusterVerdict { tier, rule: id, allows: false }),
                Action::Pass => TierOutcome::Pass(id),
            };
        }
    }
    TierOutcome::NoMatch
}

/// True if `other` is an address of some node's pod CIDR that no pod
/// holds: a pod this node does not know yet (just started elsewhere).
pub fn unknown_pod(model: &Model, other: &Party) -> bool {
    let Party::Addr(ip) = *other else { return false };
    let in_pod_cidr = model.nodes.values().any(|n| {
        n.pod_cidr.is_some_and(|c| IpNetwork::V4(c).contains(ip))
            || n.pod_cidr6.is_some_and(|c| IpNetwork::V6(c).contains(ip))
    });
    in_pod_cidr
        && !model.pods.values().any(|p| {
            !p.host_network && (p.ip.map(IpAddr::V4) == Some(ip) || p.ip6.map(IpAddr::V6) == Some(ip))
        })
}

/// True if `subject` applies to `pod` (never a host-network pod).
pub fn subject_selects(model: &Model, subject: &Subject, pod: &Pod) -> bool {
    !pod.host_network && selects(subject, &model.namespace_labels(&pod.namespace), &pod.labels)
}

/// True if `subject` applies to a pod with `labels` in a namespace with `ns_labels`.
pub(crate) fn selects(subject: &Subject, ns_labels: &Labels, labels: &Labels) -> bool {
    match subject {
        Subject::Namespaces(sel) => sel.matches(ns_labels),
        Subject::Pods(np) => np.namespaces.matches(ns_labels) && np.pods.matches(labels),
    }
}

fn selects_pod(model: &Model, np: &NamespacedPods, pod: &Pod) -> bool {
    np.namespaces.matches(&model.namespace_labels(&pod.namespace)) && np.pods.matches(&pod.labels)
}

fn rule_matches(c: &Conn, rule: &CnpRule) -> bool {
    rule.peers.iter().any(|p| peer_matches(c, p)) && ports_match(c, &rule.ports)
}

fn peer_matches(c: &Conn, peer: &CnpPeer) -> bool {
    let ip = c.other.ip();
    match peer {
        CnpPeer::Namespaces(sel) => {
            c.other.pod().is_some_and(|o| sel.matches(&c.model.namespace_labels(&o.namespace)))
        }
        CnpPeer::Pods(np) => c.other.pod().is_some_and(|o| selects_pod(c.model, np, o)),
        CnpPeer::Networks(nets) => ip.is_some_and(|ip| nets.iter().any(|n| n.contains(ip))),
        CnpPeer::Nodes(sel) => ip.is_some_and(|ip| {
            c.model.nodes.values().any(|n| sel.matches(&n.labels) && n.addresses.contains(&ip))
        }),
        // Handled by `fails_closed` before any peer is looked at.
        CnpPeer::Unknown(_) => false,
    }
}

/// True if `ports` (empty: every port) include the connection's; a named
/// port is the destination pod's container port of that name and protocol.
fn ports_match(c: &Conn, ports: &[CnpPort]) -> bool {
    let server = match c.way {
        Way::Ingress => Some(c.me),
        Way::Egress => c.other.pod(),
    };
    ports.is_empty()
        || ports.iter().any(|p| match p {
            CnpPort::Ports { protocol, start, end } => {
                *protocol == c.proto && (*start..=*end).contains(&c.port)
            }
            CnpPort::Named(name) => server.is_some_and(|s| {
                s.ports.iter().any(|cp| {
                    cp.name.as_deref() == Some(name.as_str()) && cp.protocol == c.proto && cp.port == c.port
                })
            }),
            CnpPort::Unknown(_) => false,
        })
}

/// At most this many pairs are listed: 500 policies of one priority over
/// the same pods would make 124,750.
pub const MAX_OVERLAP_PAIRS: usize = 1000;

/// Pairs of policies ("a", "b", a < b) of one tier with the same priority
/// whose subjects share a pod of the model (at most `MAX_OVERLAP_PAIRS`):
/// which of the two applies to that pod's connections is up to the
/// implementation, so the admin is warned.
pub fn same_priority_overlaps(model: &Model) -> Vec<(String, String)> {
    let mut groups: BTreeMap<(Tier, u16), Vec<&ClusterNetworkPolicy>> = BTreeMap::new();
    for p in model.cluster_policies.values() {
        groups.entry((p.tier, p.priority)).or_default().push(p);
    }
    groups.retain(|_, g| g.len() > 1);
    if groups.is_empty() {
        return Vec::new();
    }
    // Pods with the same labels in one namespace are one case (replicas), and
    // a namespace's labels are looked up once.
    let ns_labels: BTreeMap<&str, Cow<Labels>> =
        model.pods.values().map(|p| (p.namespace.as_str(), model.namespace_labels(&p.namespace))).collect();
    let kinds: BTreeSet<(&str, &Labels)> =
        model.pods.values().filter(|p| !p.host_network).map(|p| (p.namespace.as_str(), &p.labels)).collect();
    let mut pairs = BTreeSet::new();
    for group in groups.values() {
        // The distinct sets of the group's policies that select one pod.
        let on: BTreeSet<Vec<usize>> = kinds
            .iter()
            .map(|(ns, labels)| {
                let nl = &ns_labels[ns];
                (0..group.len()).filter(|&i| selects(&group[i].subject, nl, labels)).collect()
            })
            .collect();
        for set in &on {
            for (k, &a) in set.iter().enumerate() {
                for &b in &set[k + 1..] {
                    if pairs.len() >= MAX_OVERLAP_PAIRS {
                        return pairs.into_iter().collect();
                    }
                    pairs.insert((group[a].name.clone(), group[b].name.clone()));
                }
            }
        }
    }
    pairs.into_iter().collect()
}

#[cfg(test)]
#[path = "tiers_tests.rs"]
mod tests;
