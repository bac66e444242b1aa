//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`), validated: the
//! cluster-scoped Admin and Baseline tiers around NetworkPolicy. Parsing and
//! the API's schema and CEL checks are in `cnp_manifest`; what a rule decides
//! is in `policy::tiers`.
//!
//! A peer or protocol weft does not know (a newer CRD, an experimental field
//! weft does not implement) is kept as data, `Unknown`, not an error: the API
//! requires that such a rule fail closed (an Accept matches nothing, a Deny or
//! Pass denies everything), which an error (the object skipped) would not do.

use ipnetwork::IpNetwork;
use serde::Serialize;

use super::{LabelSelector, Protocol};

/// Which tier a policy sits in: before NetworkPolicy, or after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Tier {
    Admin,
    Baseline,
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        })
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Action {
    /// Allowed; no further rule of this direction (ingress at the destination still applies to egress).
    Accept,
    /// Dropped; nothing further.
    Deny,
    /// The rest of this tier is skipped; the next tier decides.
    Pass,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        })
    }
}

/// Pods matching `pods` in namespaces matching `namespaces` (empty: all).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct NamespacedPods {
    pub namespaces: LabelSelector,
    pub pods: LabelSelector,
}

/// The pods a policy applies to (host-network pods never).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Subject {
    /// Every pod of the namespaces matching the selector.
    Namespaces(LabelSelector),
    Pods(NamespacedPods),
}

/// One peer of a rule (`from` or `to`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum CnpPeer {
    /// Every pod (not host-network) of the namespaces matching the selector.
    Namespaces(LabelSelector),
    Pods(NamespacedPods),
    /// Egress only: addresses in any of the CIDRs, pod addresses included.
    Networks(Vec<IpNetwork>),
    /// Egress only (experimental): the `status.addresses` of the nodes matching the selector.
    Nodes(LabelSelector),
    /// A peer with no field weft reads (its fields named): the rule fails closed.
    Unknown(Vec<String>),
}

/// One entry of a rule's `protocols`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum CnpPort {
    /// `protocol` on ports `start..=end` (every port: 1..=65535).
    Ports { protocol: Protocol, start: u16, end: u16 },
    /// The destination pod's container port of that name (experimental).
    Named(String),
    /// An entry with no field weft reads (its fields named): the rule fails closed.
    Unknown(Vec<String>),
}

/// One ingress or egress rule, in precedence order within its policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct CnpRule {
    /// The rule's `name`, up to 100 characters; None if not given.
    pub name: Option<String>,
    pub action: Action,
    /// 1 to 25 peers (checked at parse).
    pub peers: Vec<CnpPeer>,
    /// Empty: every protocol and port.
    pub ports: Vec<CnpPort>,
}

impl CnpRule {
    /// True if the rule holds a peer or protocol weft cannot read: the API's
    /// fail-closed case (Accept matches nothing, Deny and Pass deny everything).
    pub fn fails_closed(&self) -> bool {
        self.peers.iter().any(|p| matches!(p, CnpPeer::Unknown(_)))
            || self.ports.iter().any(|p| matches!(p, CnpPort::Unknown(_)))
    }
}

/// A ClusterNetworkPolicy, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterNetworkPolicy {
    pub name: String,
    /// metadata.generation, as the API server set it (None from a manifest
    /// file without one): what a node reports it realized, for the CNP's
    /// status. It changes only with the spec, so comparing it costs nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    pub tier: Tier,
    /// 0..=1000, lower first.
    pub priority: u16,
    pub subject: Subject,
    /// At most 25 each; empty: the policy does not touch that direction.
    pub ingress: Vec<CnpRule>,
    pub egress: Vec<CnpRule>,
}

impl ClusterNetworkPolicy {
    /// How logs, counters and explain name rule `index` of `rules`:
    /// `cnp/<policy>/<rule name, or its index from 0>`.
    pub fn rule_id(&self, rules: &[CnpRule], index: usize) -> String {
        match rules.get(index).and_then(|r| r.name.as_deref()) {
            Some(name) => format!("cnp/{}/{name}", self.name),
            None => format!("cnp/{}/{index}", self.name),
        }
    }

    /// True if a rule of either direction fails closed (see `CnpRule::fails_closed`).
    pub fn fails_closed(&self) -> bool {
        self.ingress.iter().chain(&self.egress).any(CnpRule::fails_closed)
    }
}
