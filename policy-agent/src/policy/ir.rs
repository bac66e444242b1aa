//! The compiled policy of one node, backend-neutral. Everything is in terms
//! of this node's local pods (by IPv4 address) and peer networks; a renderer
//! maps it to ipsets + iptables chains, or to nftables sets and maps.
//!
//! Per direction, a local pod is either not isolated (everything passes in
//! that direction) or isolated, and then a packet passes if a `Triple` names
//! it exactly (pod, protocol, port, peer network: one hash lookup, whatever
//! the number of policies), or a `PortGroup` or a `Group` covers it.
//!
//! Triples are the product of a rule's targets, ports and peers, so they are
//! kept for small products only; a rule whose product is large (many peers:
//! a namespace selector over a big cluster) becomes a `PortGroup`, and the
//! renderers give it a set of (pod, port) targets and a set of peers and one
//! rule: elements then grow with targets plus peers, not their product.
//! Rules without a single port (all ports, a protocol's every port, or a wide
//! endPort range, which would not fit a hash of ports) are `Group`s.
//!
//! Groups and port groups carry the `PeerKey` of their peers as written: the
//! renderers name the peer set after it, so a pod that joins or leaves the
//! peers changes that set's members in place, never the set or the rules.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::Serialize;

use super::guard6::Guard6;
use crate::model::Protocol;

/// (local pod, protocol, port, peer network): the pod may receive from (or,
/// for egress, send to) the peer network on that port.
pub type Triple = (Ipv4Addr, Protocol, u16, Ipv4Network);

/// The ports a group allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum GroupPorts {
    /// Every protocol, every port (a rule with no `ports`).
    All,
    /// Every port of one protocol (a port entry without `port`).
    Protocol(Protocol),
    /// A port range of one protocol, inclusive.
    Range(Protocol, u16, u16),
}

/// What a rule's peers are, not who they are: a hash of the peers as written
/// (with the policy's namespace where a peer means "this namespace"). Rules
/// with the same key have the same peers, whatever the cluster holds.
pub type PeerKey = u64;

/// Local pods `targets` may exchange traffic with `peers` on `ports`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Group {
    pub key: PeerKey,
    pub targets: BTreeSet<Ipv4Addr>,
    pub peers: Vec<Ipv4Network>,
    pub ports: GroupPorts,
}

/// (local pod, protocol, port) targets may exchange traffic with `peers`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortGroup {
    pub key: PeerKey,
    pub targets: BTreeSet<(Ipv4Addr, Protocol, u16)>,
    pub peers: Vec<Ipv4Network>,
}

/// One direction (ingress or egress) on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Direction {
    /// Local pods some policy of this direction selects.
    pub isolated: BTreeSet<Ipv4Addr>,
    pub triples: BTreeSet<Triple>,
    /// Sorted by key; one per peer key.
    pub port_groups: Vec<PortGroup>,
    /// Sorted; groups with the same peer key and ports are merged.
    pub groups: Vec<Group>,
}

impl Direction {
    /// Where group (`key`, `ports`) is, or would go (groups are sorted by key, then ports).
    pub fn group_index(&self, key: PeerKey, ports: GroupPorts) -> Result<usize, usize> {
        self.groups.binary_search_by(|g| (g.key, g.ports).cmp(&(key, ports)))
    }

    /// Where port group `key` is, or would go (port groups are sorted by key).
    pub fn port_group_index(&self, key: PeerKey) -> Result<usize, usize> {
        self.port_groups.binary_search_by_key(&key, |g| g.key)
    }

    /// The peers of `key`: those of its port group, or of any of its groups
    /// (all rules of one key have the same peers).
    pub fn peers_of(&self, key: PeerKey) -> Option<&[Ipv4Network]> {
        if let Ok(i) = self.port_group_index(key) {
            return Some(&self.port_groups[i].peers);
        }
        let from = self.groups.partition_point(|g| g.key < key);
        self.groups.get(from).filter(|g| g.key == key).map(|g| g.peers.as_slice())
    }
}

/// What this node enforces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicyIr {
    /// The addresses of this node's pods (hostNetwork pods excluded).
    pub local: BTreeSet<Ipv4Addr>,
    /// This node's pod CIDR: addresses in it that are not `local` belong to no
    /// known pod, and are dropped until the agent knows them (fail closed).
    pub pod_cidr: Option<Ipv4Network>,
    /// The cluster's pod network: traffic to it that is neither from nor to a
    /// local pod is transit (e.g. a NodePort DNATed to a pod on another node)
    /// and is accepted here; policy applies at the pod's own node.
    pub cluster_cidr: Option<Ipv4Network>,
    pub ingress: Direction,
    pub egress: Direction,
    /// True if audit policies exist: `audit_*` then hold every policy's view
    /// (audit ones as if enforced); what it denies and the enforced view
    /// admits is logged and passes.
    pub audit: bool,
    pub audit_ingress: Direction,
    pub audit_egress: Direction,
    /// IPv6, which this IR does not compile yet: what fails closed.
    pub v6: Guard6,
}

/// What changed in one direction of the IR since the backend last applied
/// it, at the grain the renderers patch sets: enough for a backend to
/// re-render only those elements and diff them against what it applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirtyDirection {
    /// Addresses that joined or left `isolated`.
    pub isolated: BTreeSet<Ipv4Addr>,
    /// Local pods whose triples changed.
    pub triples: BTreeSet<Ipv4Addr>,
    /// (port group, local pod) whose (pod, port) targets changed.
    pub port_groups: BTreeSet<(PeerKey, Ipv4Addr)>,
    /// Groups whose targets changed.
    pub groups: BTreeSet<(PeerKey, GroupPorts)>,
    /// Peer keys whose networks changed.
    pub peers: BTreeSet<PeerKey>,
}

/// What changed in the IR since the backend last applied it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Something the chains depend on changed (groups or port groups came or
    /// went, audit, the CIDRs): the backend renders and applies in full.
    pub structural: bool,
    /// Addresses that joined or left `local`.
    pub local: BTreeSet<Ipv4Addr>,
    pub ingress: DirtyDirection,
    pub egress: DirtyDirection,
    pub audit_ingress: DirtyDirection,
    pub audit_egress: DirtyDirection,
    /// The IPv6 guard's addresses changed (its sets are small: the backend
    /// diffs them whole).
    pub v6: bool,
}
