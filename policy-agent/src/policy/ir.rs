//! The compiled policy of one node, backend-neutral, one half per address
//! family (`FamilyIr`). Everything is in terms of this node's local pods (by
//! address) and peer networks of that family; a renderer maps it to ipsets +
//! iptables chains (ip6tables for IPv6), or to nftables sets and rules.
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
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::family::Family;
use crate::model::{Action, Protocol, Tier};

/// (local pod, protocol, port, peer network): the pod may receive from (or,
/// for egress, send to) the peer network on that port.
pub type Triple<A = Ipv4Addr> = (A, Protocol, u16, <A as Family>::Net);

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
#[serde(bound = "")]
pub struct Group<A: Family = Ipv4Addr> {
    pub key: PeerKey,
    pub targets: BTreeSet<A>,
    pub peers: Vec<A::Net>,
    pub ports: GroupPorts,
}

/// (local pod, protocol, port) targets may exchange traffic with `peers`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(bound = "")]
pub struct PortGroup<A: Family = Ipv4Addr> {
    pub key: PeerKey,
    pub targets: BTreeSet<(A, Protocol, u16)>,
    pub peers: Vec<A::Net>,
}

/// One direction (ingress or egress) on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(bound = "")]
pub struct Direction<A: Family = Ipv4Addr> {
    /// Local pods some policy of this direction selects.
    pub isolated: BTreeSet<A>,
    pub triples: BTreeSet<Triple<A>>,
    /// Sorted by key; one per peer key.
    pub port_groups: Vec<PortGroup<A>>,
    /// Sorted; groups with the same peer key and ports are merged.
    pub groups: Vec<Group<A>>,
}

impl<A: Family> Default for Direction<A> {
    fn default() -> Self {
        Direction {
            isolated: BTreeSet::new(),
            triples: BTreeSet::new(),
            port_groups: Vec::new(),
            groups: Vec::new(),
        }
    }
}

impl<A: Family> Direction<A> {
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
    pub fn peers_of(&self, key: PeerKey) -> Option<&[A::Net]> {
        if let Ok(i) = self.port_group_index(key) {
            return Some(&self.port_groups[i].peers);
        }
        let from = self.groups.partition_point(|g| g.key < key);
        self.groups.get(from).filter(|g| g.key == key).map(|g| g.peers.as_slice())
    }
}

/// A cell of the (protocol, port) space that a ClusterNetworkPolicy region covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Cell {
    /// Destination ports `lo..=hi` of one protocol.
    Ports(Protocol, u16, u16),
    /// Every protocol but TCP, UDP and SCTP (whatever their ports).
    Other,
}

impl Cell {
    /// True if a packet of `proto` (None: neither TCP, UDP nor SCTP) to `port` is in the cell.
    pub fn holds(self, proto: Option<Protocol>, port: u16) -> bool {
        match (self, proto) {
            (Cell::Ports(p, lo, hi), Some(q)) => p == q && (lo..=hi).contains(&port),
            (Cell::Other, None) => true,
            _ => false,
        }
    }
}

/// Peers x cells with one verdict, for every subject of its class.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(bound = "")]
pub struct Region<A: Family = Ipv4Addr> {
    pub action: Action,
    pub cells: Vec<Cell>,
    /// Aggregated, disjoint.
    pub peers: Vec<A::Net>,
}

/// Local pods that the same ClusterNetworkPolicies select, in one tier and
/// direction, and the disjoint regions their rules resolve to: first match
/// wins was settled at compile time, so a packet needs one lookup per
/// verdict, whatever the number of policies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(bound = "")]
pub struct Class<A: Family = Ipv4Addr> {
    pub subjects: BTreeSet<A>,
    pub regions: Vec<Region<A>>,
    /// The cells where a pod this agent does not know yet (an address of the
    /// cluster's pod networks no known pod holds: a pod just started on
    /// another node) is denied, before any region: those a Deny rule with
    /// pod or namespace peers covers, since that pod may be one of them.
    pub unknown: Vec<Cell>,
    /// Who the class is (its tier, direction, policies and the port names
    /// it resolves), not what it holds: it names the class's kernel
    /// objects, which then stay put while subjects and peers come and go.
    pub key: u64,
}

/// Above this many (subject, peer network, cell) combinations a region is
/// not spelled out as set elements, which grow with their product (a Deny
/// from a team's 1,000 pods to 300 local subjects), but matched by one rule
/// over a set of its class's subjects and a set of its peers, which grow
/// with their sum: the price is one rule per such region on a new
/// connection's path, as NetworkPolicy's port groups pay.
pub const MAX_REGION_ELEMENTS: usize = 4096;

impl<A: Family> Class<A> {
    /// True if `r` (one of this class's regions) is matched by a rule of its
    /// own rather than by elements of the verdict sets (`MAX_REGION_ELEMENTS`).
    pub fn grouped(&self, r: &Region<A>) -> bool {
        // A cell of up to 256 ports is that many ipset members (one per
        // port); wider ones and nftables' intervals are one.
        let width = |c: &Cell| match *c {
            Cell::Ports(_, lo, hi) if hi - lo < 256 => usize::from(hi - lo) + 1,
            _ => 1,
        };
        let cells: usize = r.cells.iter().map(width).sum();
        self.subjects.len().saturating_mul(r.peers.len()).saturating_mul(cells) > MAX_REGION_ELEMENTS
    }
}

/// ClusterNetworkPolicy on this node in one family: per tier and direction,
/// the classes of its subjects (sorted). Empty without ClusterNetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(bound = "")]
pub struct ClusterIr<A: Family = Ipv4Addr> {
    pub admin_ingress: Vec<Class<A>>,
    pub admin_egress: Vec<Class<A>>,
    pub baseline_ingress: Vec<Class<A>>,
    pub baseline_egress: Vec<Class<A>>,
    /// Every node's pod CIDR, and every address a known pod holds: what
    /// tells a pod not known yet (`Class::unknown`). Empty when no class
    /// has unknown cells.
    pub pod_cidrs: Vec<A::Net>,
    pub known: BTreeSet<A>,
}

impl<A: Family> Default for ClusterIr<A> {
    fn default() -> Self {
        ClusterIr {
            admin_ingress: Vec::new(),
            admin_egress: Vec::new(),
            baseline_ingress: Vec::new(),
            baseline_egress: Vec::new(),
            pod_cidrs: Vec::new(),
            known: BTreeSet::new(),
        }
    }
}

impl<A: Family> ClusterIr<A> {
    /// True if no local pod is the subject of a rule: the backends then
    /// render no ClusterNetworkPolicy chain at all.
    pub fn is_empty(&self) -> bool {
        [Tier::Admin, Tier::Baseline]
            .into_iter()
            .all(|t| self.get(t, true).is_empty() && self.get(t, false).is_empty())
    }

    /// The classes of `tier` in one direction (ingress, else egress).
    pub fn get(&self, tier: Tier, ingress: bool) -> &[Class<A>] {
        match (tier, ingress) {
            (Tier::Admin, true) => &self.admin_ingress,
            (Tier::Admin, false) => &self.admin_egress,
            (Tier::Baseline, true) => &self.baseline_ingress,
            (Tier::Baseline, false) => &self.baseline_egress,
        }
    }

    pub fn get_mut(&mut self, tier: Tier, ingress: bool) -> &mut Vec<Class<A>> {
        match (tier, ingress) {
            (Tier::Admin, true) => &mut self.admin_ingress,
            (Tier::Admin, false) => &mut self.admin_egress,
            (Tier::Baseline, true) => &mut self.baseline_ingress,
            (Tier::Baseline, false) => &mut self.baseline_egress,
        }
    }

    /// True if the classes or the pod networks of `self` and `other`
    /// differ: what re-renders the rules (the known pods are patched).
    pub fn regions_differ(&self, other: &ClusterIr<A>) -> bool {
        [Tier::Admin, Tier::Baseline]
            .into_iter()
            .any(|t| [true, false].into_iter().any(|i| self.get(t, i) != other.get(t, i)))
            || self.pod_cidrs != other.pod_cidrs
    }

    /// True if `peer` is an address of the cluster's pod networks that no
    /// known pod holds (meaningful only while a class has unknown cells).
    pub fn unknown_pod(&self, peer: A) -> bool {
        self.pod_cidrs.iter().any(|n| super::family::contains(*n, peer)) && !self.known.contains(&peer)
    }

    /// What `tier` decides for local `subject` and `peer` in one direction:
    /// Deny for a pod not known yet on the class's unknown cells, else the
    /// verdict of the region holding the packet, if any.
    pub fn decide(
        &self,
        tier: Tier,
        ingress: bool,
        subject: A,
        peer: A,
        proto: Option<Protocol>,
        port: u16,
    ) -> Option<Action> {
        let class = self.get(tier, ingress).iter().find(|c| c.subjects.contains(&subject))?;
        if self.unknown_pod(peer) && class.unknown.iter().any(|c| c.holds(proto, port)) {
            return Some(Action::Deny);
        }
        class
            .regions
            .iter()
            .find(|r| {
                r.cells.iter().any(|c| c.holds(proto, port))
                    && r.peers.iter().any(|n| super::family::contains(*n, peer))
            })
            .map(|r| r.action)
    }
}

/// What this node enforces in one address family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(bound = "")]
pub struct FamilyIr<A: Family = Ipv4Addr> {
    /// The addresses of this node's pods (hostNetwork pods excluded).
    pub local: BTreeSet<A>,
    /// This node's pod CIDR: addresses in it that are not `local` belong to no
    /// known pod, and are dropped until the agent knows them (fail closed).
    pub pod_cidr: Option<A::Net>,
    /// The cluster's pod network: traffic to it that is neither from nor to a
    /// local pod is transit (e.g. a NodePort DNATed to a pod on another node)
    /// and is accepted here; policy applies at the pod's own node.
    pub cluster_cidr: Option<A::Net>,
    pub ingress: Direction<A>,
    pub egress: Direction<A>,
    /// True if audit policies exist: `audit_*` then hold every policy's view
    /// (audit ones as if enforced); what it denies and the enforced view
    /// admits is logged and passes.
    pub audit: bool,
    pub audit_ingress: Direction<A>,
    pub audit_egress: Direction<A>,
    /// ClusterNetworkPolicy's Admin and Baseline tiers (policy::cluster).
    pub cluster: ClusterIr<A>,
}

impl<A: Family> Default for FamilyIr<A> {
    fn default() -> Self {
        FamilyIr {
            local: BTreeSet::new(),
            pod_cidr: None,
            cluster_cidr: None,
            ingress: Direction::default(),
            egress: Direction::default(),
            audit: false,
            audit_ingress: Direction::default(),
            audit_egress: Direction::default(),
            cluster: ClusterIr::default(),
        }
    }
}

/// What this node enforces: each family compiled on its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicyIr {
    pub v4: FamilyIr<Ipv4Addr>,
    pub v6: FamilyIr<Ipv6Addr>,
}

/// What changed in one direction of the IR since the backend last applied
/// it, at the grain the renderers patch sets: enough for a backend to
/// re-render only those elements and diff them against what it applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyDirection<A: Family = Ipv4Addr> {
    /// Addresses that joined or left `isolated`.
    pub isolated: BTreeSet<A>,
    /// Local pods whose triples changed.
    pub triples: BTreeSet<A>,
    /// (port group, local pod) whose (pod, port) targets changed.
    pub port_groups: BTreeSet<(PeerKey, A)>,
    /// Groups whose targets changed.
    pub groups: BTreeSet<(PeerKey, GroupPorts)>,
    /// Peer keys whose networks changed.
    pub peers: BTreeSet<PeerKey>,
}

impl<A: Family> Default for DirtyDirection<A> {
    fn default() -> Self {
        DirtyDirection {
            isolated: BTreeSet::new(),
            triples: BTreeSet::new(),
            port_groups: BTreeSet::new(),
            groups: BTreeSet::new(),
            peers: BTreeSet::new(),
        }
    }
}

impl<A: Family> DirtyDirection<A> {
    pub fn is_empty(&self) -> bool {
        self.isolated.is_empty()
            && self.triples.is_empty()
            && self.port_groups.is_empty()
            && self.groups.is_empty()
            && self.peers.is_empty()
    }
}

/// ClusterNetworkPolicy classes of one tier and direction that went and
/// came in one change (a class whose subjects or regions changed is in both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassDelta<A: Family = Ipv4Addr> {
    pub tier: Tier,
    pub ingress: bool,
    pub gone: Vec<Class<A>>,
    pub came: Vec<Class<A>>,
}

/// What changed in one family of the IR since the backend last applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyDirty<A: Family = Ipv4Addr> {
    /// Addresses that joined or left `local`.
    pub local: BTreeSet<A>,
    pub ingress: DirtyDirection<A>,
    pub egress: DirtyDirection<A>,
    pub audit_ingress: DirtyDirection<A>,
    pub audit_egress: DirtyDirection<A>,
    /// ClusterNetworkPolicy's regions changed (not whether there are any:
    /// that is structural).
    pub cluster: bool,
    /// With `cluster`, the classes that changed, if known: those that went
    /// and those that came, per tier and direction. A subject is in one
    /// class of a tier and direction, so the other classes' kernel objects
    /// are as they were. None: compare all.
    pub classes: Option<Vec<ClassDelta<A>>>,
    /// Addresses that joined or left ClusterNetworkPolicy's known pods.
    pub known: BTreeSet<A>,
}

impl<A: Family> Default for FamilyDirty<A> {
    fn default() -> Self {
        FamilyDirty {
            local: BTreeSet::new(),
            ingress: DirtyDirection::default(),
            egress: DirtyDirection::default(),
            audit_ingress: DirtyDirection::default(),
            audit_egress: DirtyDirection::default(),
            cluster: false,
            classes: None,
            known: BTreeSet::new(),
        }
    }
}

impl<A: Family> FamilyDirty<A> {
    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.cluster
            && self.known.is_empty()
            && self.local.is_empty()
            && self.ingress.is_empty()
            && self.egress.is_empty()
            && self.audit_ingress.is_empty()
            && self.audit_egress.is_empty()
    }
}

/// What changed in the IR since the backend last applied it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Something the chains depend on changed (groups or port groups came or
    /// went, audit, the CIDRs), in either family: the backend renders and
    /// applies in full.
    pub structural: bool,
    pub v4: FamilyDirty<Ipv4Addr>,
    pub v6: FamilyDirty<Ipv6Addr>,
}

impl Dirty {
    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.structural && self.v4.is_empty() && self.v6.is_empty()
    }

    /// True if ClusterNetworkPolicy's regions changed in either family.
    pub fn cluster(&self) -> bool {
        self.v4.cluster || self.v6.cluster
    }
}
