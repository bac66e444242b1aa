//! PolicyIr -> ipsets + the iptables-restore payloads of weft's chains, one
//! per address family (iptables for IPv4, ip6tables for IPv6, the same
//! layout over sets of family inet or inet6). Pure.
//!
//! The packet path (jumped to first from FORWARD in filter, and in mangle,
//! whose copy has every ACCEPT a RETURN: kernel.rs):
//!
//! ```text
//! WEFT-FORWARD   ESTABLISHED,RELATED                     ACCEPT   replies first
//!                (IPv6) ICMPv6 neighbour solicitation/advertisement   ACCEPT
//!                src in this node's pod CIDR, not a known local pod   DROP   (fail closed)
//!                dst in this node's pod CIDR, not a known local pod   DROP
//!                src in weft-out-iso                      -> WEFT-EGRESS
//!                dst in weft-in-iso                       -> WEFT-INGRESS
//!                src or dst in weft-local                 ACCEPT
//!                dst in the cluster CIDR                  ACCEPT   transit (NodePort to another node)
//! WEFT-INGRESS   (dst, dport, src) in weft-in (hash:ip,port,net)   RETURN
//!                one rule per port group: (dst, dport) in weft-is-<key>
//!                  (hash:ip,port), src in weft-ip-<key> (hash:net)  RETURN
//!                one rule per group: dst in targets, src in peers, ports   RETURN
//!                DROP
//! WEFT-EGRESS    the same with (src, dport, dst) in weft-out
//! ```
//!
//! With ClusterNetworkPolicy on this node, the two jumps to WEFT-EGRESS and
//! WEFT-INGRESS become jumps of every local pod to its tiers, which go to
//! NetworkPolicy's chains themselves (`cluster_direction`); without, not
//! one line differs.
//!
//! IPv6's sets carry a 6 (weft-local6, weft-in-iso6, weft-in6, weft-i6s-<key>
//! ...). A new connection to or from an isolated pod costs a fixed number of
//! set lookups for rules with few peers, plus one rule per distinct
//! many-peer definition (port group) and per rule without a single port
//! (group) that this node's pods have; replies cost one conntrack match.
//! Group and port group sets are named after the peer key (the peers as
//! written), so a pod joining or leaving the peers patches a set in place;
//! only a new peer definition rewrites the chains.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use weft_conf::hash::fnv1a64;

use crate::backend::ObjectCounts;
use crate::model::{Action, Protocol, Tier};
use crate::nflog;
use crate::policy::class_change::Block;
use crate::policy::family::Family;
use crate::policy::{
    Cell, Class, ClusterIr, Direction, FamilyIr, GroupPorts, PeerKey, PolicyIr, Region, Triple,
};

pub const FORWARD_CHAIN: &str = "WEFT-FORWARD";
pub const INGRESS_CHAIN: &str = "WEFT-INGRESS";
pub const EGRESS_CHAIN: &str = "WEFT-EGRESS";
pub const AUDIT_INGRESS_CHAIN: &str = "WEFT-AUDIT-IN";
pub const AUDIT_EGRESS_CHAIN: &str = "WEFT-AUDIT-OUT";
/// Every chain weft declares (and so flushes and, on cleanup, deletes).
pub const CHAINS: [&str; 5] =
    [FORWARD_CHAIN, INGRESS_CHAIN, EGRESS_CHAIN, AUDIT_INGRESS_CHAIN, AUDIT_EGRESS_CHAIN];
/// ClusterNetworkPolicy's chains: declared only while some local pod is a
/// subject (kernel.rs deletes them when they go), so a node without
/// ClusterNetworkPolicy has exactly the chains it had before them.
pub const CNP_CHAINS: [&str; 8] = [
    CNP_INGRESS.admin,
    CNP_INGRESS.np,
    CNP_INGRESS.baseline,
    CNP_INGRESS.deny,
    CNP_EGRESS.admin,
    CNP_EGRESS.np,
    CNP_EGRESS.baseline,
    CNP_EGRESS.deny,
];
/// Every ipset weft creates starts with this.
pub const SET_PREFIX: &str = "weft-";
pub const LOCAL_SET: &str = "weft-local";
pub const LOCAL6_SET: &str = "weft-local6";

/// The ipset types weft uses (all present on the kernels we run on; this one
/// lacks hash:net,net and hash:net,port,net).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetType {
    HashIp,
    HashNet,
    HashIpPort,
    HashIpPortNet,
}

impl SetType {
    pub fn as_str(self) -> &'static str {
        match self {
            SetType::HashIp => "hash:ip",
            SetType::HashNet => "hash:net",
            SetType::HashIpPort => "hash:ip,port",
            SetType::HashIpPortNet => "hash:ip,port,net",
        }
    }
}

/// One ipset: its name, type, family and members as `ipset add` takes them, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SetSpec {
    pub name: String,
    pub kind: SetType,
    /// Family inet6 (IPv6 members), else inet.
    pub inet6: bool,
    pub members: Vec<String>,
}

impl SetSpec {
    /// `family inet` or `family inet6`, as `ipset create` takes it.
    pub fn family(&self) -> &'static str {
        if self.inet6 {
            "inet6"
        } else {
            "inet"
        }
    }
}

/// What `render` produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Both families' sets.
    pub sets: Vec<SetSpec>,
    /// The `iptables-restore --noflush` payload (filter table, weft's chains only).
    pub rules: String,
    /// The same for `ip6tables-restore`.
    pub rules6: String,
    /// The node has IPv6 to enforce (an IPv6 pod CIDR or pod): without, it
    /// needs no ip6tables chain (kernel.rs).
    pub v6: bool,
}

pub(super) struct Names {
    pub(super) iso: &'static str,
    pub(super) allow: &'static str,
    pub(super) chain: &'static str,
    /// Prefix of group sets: "weft-i" / "weft-e" ("weft-i6" / "weft-e6").
    pub(super) group: &'static str,
    /// The match flags of the allow set: which packet fields make (pod, port, peer).
    pub(super) allow_flags: &'static str,
    /// The match flags of a (pod, port) set.
    pub(super) allow_flags_pod_port: &'static str,
    /// The flag of the local pod and of the peer for single-address sets.
    pub(super) pod_flag: &'static str,
    pub(super) peer_flag: &'static str,
    pub(super) log_prefix: &'static str,
    /// Audit: log what is not admitted and let it pass.
    pub(super) audit: bool,
}

pub(super) const INGRESS: Names = Names {
    iso: "weft-in-iso",
    allow: "weft-in",
    chain: INGRESS_CHAIN,
    group: "weft-i",
    allow_flags: "dst,dst,src",
    allow_flags_pod_port: "dst,dst",
    pod_flag: "dst",
    peer_flag: "src",
    log_prefix: nflog::PREFIX_INGRESS,
    audit: false,
};

pub(super) const EGRESS: Names = Names {
    iso: "weft-out-iso",
    allow: "weft-out",
    chain: EGRESS_CHAIN,
    group: "weft-e",
    allow_flags: "src,dst,dst",
    allow_flags_pod_port: "src,dst",
    pod_flag: "src",
    peer_flag: "dst",
    log_prefix: nflog::PREFIX_EGRESS,
    audit: false,
};

pub(super) const AUDIT_INGRESS: Names = Names {
    iso: "weft-ain-iso",
    allow: "weft-ain",
    chain: AUDIT_INGRESS_CHAIN,
    group: "weft-ai",
    log_prefix: nflog::PREFIX_AUDIT_INGRESS,
    audit: true,
    ..INGRESS
};

pub(super) const AUDIT_EGRESS: Names = Names {
    iso: "weft-aout-iso",
    allow: "weft-aout",
    chain: AUDIT_EGRESS_CHAIN,
    group: "weft-ae",
    log_prefix: nflog::PREFIX_AUDIT_EGRESS,
    audit: true,
    ..EGRESS
};

/// ClusterNetworkPolicy's chains and verdict sets in one direction.
pub(super) struct CnpNames {
    /// The Admin tier, jumped to for every local pod.
    pub(super) admin: &'static str,
    /// NetworkPolicy, gone to from Admin on Pass or no match.
    pub(super) np: &'static str,
    /// The Baseline tier, gone to when NetworkPolicy does not isolate.
    pub(super) baseline: &'static str,
    /// Logs and drops.
    pub(super) deny: &'static str,
    /// hash:ip,port,net sets of (subject, protocol:port, peer) per verdict
    /// that needs a rule (a Pass, and Baseline's Accept, are the chains' own
    /// fall-through).
    pub(super) admin_deny: &'static str,
    pub(super) admin_accept: &'static str,
    pub(super) baseline_deny: &'static str,
    /// hash:ip,port,net sets of (subject, protocol:port, anywhere) where a
    /// pod not known yet is denied (`Class::unknown`), per tier.
    pub(super) admin_unknown: &'static str,
    pub(super) baseline_unknown: &'static str,
}

pub(super) const CNP_INGRESS: CnpNames = CnpNames {
    admin: "WEFT-CNP-AIN",
    np: "WEFT-CNP-NPIN",
    baseline: "WEFT-CNP-BIN",
    deny: "WEFT-CNP-DIN",
    admin_deny: "weft-admin-in-deny",
    admin_accept: "weft-admin-in-accept",
    baseline_deny: "weft-base-in-deny",
    admin_unknown: "weft-admin-in-unk",
    baseline_unknown: "weft-base-in-unk",
};

pub(super) const CNP_EGRESS: CnpNames = CnpNames {
    admin: "WEFT-CNP-AOUT",
    np: "WEFT-CNP-NPOUT",
    baseline: "WEFT-CNP-BOUT",
    deny: "WEFT-CNP-DOUT",
    admin_deny: "weft-admin-out-deny",
    admin_accept: "weft-admin-out-accept",
    baseline_deny: "weft-base-out-deny",
    admin_unknown: "weft-admin-out-unk",
    baseline_unknown: "weft-base-out-unk",
};

/// The names of one family's objects.
pub(super) struct FamilyNames {
    pub(super) local: &'static str,
    pub(super) ingress: Names,
    pub(super) egress: Names,
    pub(super) audit_ingress: Names,
    pub(super) audit_egress: Names,
    /// The chains are the same in both families (each its own table), the sets not.
    pub(super) cnp_ingress: CnpNames,
    pub(super) cnp_egress: CnpNames,
    /// Prefixes of the sets of a class's subjects and of a region's peers
    /// (named after the class and region they serve, `class_set`).
    pub(super) cnp_subjects: &'static str,
    pub(super) cnp_peers: &'static str,
    /// Every known pod's address (hash:ip) and every node's pod CIDR
    /// (hash:net): an address in the second and not the first is a pod
    /// not known yet.
    pub(super) cnp_pods: &'static str,
    pub(super) cnp_pod_cidrs: &'static str,
}

pub(super) const V4: FamilyNames = FamilyNames {
    local: LOCAL_SET,
    ingress: INGRESS,
    egress: EGRESS,
    audit_ingress: AUDIT_INGRESS,
    audit_egress: AUDIT_EGRESS,
    cnp_ingress: CNP_INGRESS,
    cnp_egress: CNP_EGRESS,
    cnp_subjects: "weft-cs",
    cnp_peers: "weft-cp",
    cnp_pods: "weft-cnp-pods",
    cnp_pod_cidrs: "weft-cnp-podnets",
};

pub(super) const V6: FamilyNames = FamilyNames {
    local: LOCAL6_SET,
    ingress: Names { iso: "weft-in-iso6", allow: "weft-in6", group: "weft-i6", ..INGRESS },
    egress: Names { iso: "weft-out-iso6", allow: "weft-out6", group: "weft-e6", ..EGRESS },
    audit_ingress: Names { iso: "weft-ain-iso6", allow: "weft-ain6", group: "weft-ai6", ..AUDIT_INGRESS },
    audit_egress: Names { iso: "weft-aout-iso6", allow: "weft-aout6", group: "weft-ae6", ..AUDIT_EGRESS },
    cnp_ingress: CnpNames {
        admin_deny: "weft-admin-in-deny6",
        admin_accept: "weft-admin-in-accept6",
        baseline_deny: "weft-base-in-deny6",
        admin_unknown: "weft-admin-in-unk6",
        baseline_unknown: "weft-base-in-unk6",
        ..CNP_INGRESS
    },
    cnp_egress: CnpNames {
        admin_deny: "weft-admin-out-deny6",
        admin_accept: "weft-admin-out-accept6",
        baseline_deny: "weft-base-out-deny6",
        admin_unknown: "weft-admin-out-unk6",
        baseline_unknown: "weft-base-out-unk6",
        ..CNP_EGRESS
    },
    // Seven characters, so that `keyed` stays within 24.
    cnp_subjects: "weft-6s",
    cnp_peers: "weft-6p",
    cnp_pods: "weft-cnp-pods6",
    cnp_pod_cidrs: "weft-cnp-podnets6",
};

/// The names of family `A`'s objects.
pub(super) fn names<A: Family>() -> &'static FamilyNames {
    if inet6::<A>() {
        &V6
    } else {
        &V4
    }
}

fn inet6<A: Family>() -> bool {
    A::BITS == 128
}

impl Rendered {
    /// Its rules (`-A` lines), sets and set members.
    pub fn counts(&self) -> ObjectCounts {
        ObjectCounts {
            rules: [&self.rules, &self.rules6]
                .iter()
                .flat_map(|r| r.lines())
                .filter(|l| l.starts_with("-A"))
                .count(),
            sets: self.sets.len(),
            elements: self.sets.iter().map(|s| s.members.len()).sum(),
        }
    }
}

/// Renders `ir`: both families, each its own chains over its own sets.
pub fn render(ir: &PolicyIr) -> Rendered {
    let (mut sets, rules) = render_family(&ir.v4);
    let (sets6, rules6) = render_family(&ir.v6);
    sets.extend(sets6);
    let v6 = ir.v6.pod_cidr.is_some() || !ir.v6.local.is_empty();
    Rendered { sets, rules, rules6, v6 }
}

/// One family's sets and restore payload.
fn render_family<A: Family>(ir: &FamilyIr<A>) -> (Vec<SetSpec>, String) {
    let n = names::<A>();
    let local = n.local;
    let mut sets = vec![ip_set(local, &ir.local)];
    let cnp = !ir.cluster.is_empty();
    let mut rules = String::from("*filter\n");
    let cnp_chains: &[&str] = if cnp { &CNP_CHAINS } else { &[] };
    for c in CHAINS.iter().chain(cnp_chains) {
        let _ = writeln!(rules, ":{c} - [0:0]");
    }
    let f = FORWARD_CHAIN;
    let _ = writeln!(
        rules,
        "-A {f} -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"weft: replies\" -j ACCEPT"
    );
    if inet6::<A>() {
        // Address resolution, as ARP is for IPv4: no policy governs it.
        for kind in ["neighbour-solicitation", "neighbour-advertisement"] {
            let _ = writeln!(rules, "-A {f} -p ipv6-icmp -m icmp6 --icmpv6-type {kind} -j ACCEPT");
        }
    }
    if let Some(own) = ir.pod_cidr {
        for (flag, addr) in [("src", "-s"), ("dst", "-d")] {
            let _ = writeln!(
                rules,
                "-A {f} {addr} {own} -m set ! --match-set {local} {flag} -m comment --comment \"weft: no known pod has this address yet\" -j DROP"
            );
        }
    }
    if cnp {
        // Every local pod meets ClusterNetworkPolicy's tiers, which go to
        // NetworkPolicy's chains themselves where the Admin tier passes.
        let _ = writeln!(rules, "-A {f} -m set --match-set {local} src -j {}", n.cnp_egress.admin);
        let _ = writeln!(rules, "-A {f} -m set --match-set {local} dst -j {}", n.cnp_ingress.admin);
    } else {
        let _ = writeln!(rules, "-A {f} -m set --match-set {} src -j {EGRESS_CHAIN}", n.egress.iso);
        let _ = writeln!(rules, "-A {f} -m set --match-set {} dst -j {INGRESS_CHAIN}", n.ingress.iso);
    }
    if ir.audit {
        let _ =
            writeln!(rules, "-A {f} -m set --match-set {} src -j {AUDIT_EGRESS_CHAIN}", n.audit_egress.iso);
        let _ =
            writeln!(rules, "-A {f} -m set --match-set {} dst -j {AUDIT_INGRESS_CHAIN}", n.audit_ingress.iso);
    }
    for flag in ["src", "dst"] {
        let _ = writeln!(rules, "-A {f} -m set --match-set {local} {flag} -j ACCEPT");
    }
    if let Some(cluster) = ir.cluster_cidr {
        let _ = writeln!(
            rules,
            "-A {f} -d {cluster} -m comment --comment \"weft: transit to a pod on another node\" -j ACCEPT"
        );
    }
    for (dir, names) in [(&ir.ingress, &n.ingress), (&ir.egress, &n.egress)] {
        direction(dir, names, &mut sets, &mut rules);
    }
    if cnp {
        sets.push(ip_set(n.cnp_pods, &ir.cluster.known));
        sets.push(net_set::<A>(n.cnp_pod_cidrs, &ir.cluster.pod_cidrs));
        for ingress in [true, false] {
            cluster_direction(&ir.cluster, ingress, n, &mut sets, &mut rules);
        }
    }
    if ir.audit {
        for (dir, names) in [(&ir.audit_ingress, &n.audit_ingress), (&ir.audit_egress, &n.audit_egress)] {
            direction(dir, names, &mut sets, &mut rules);
        }
    }
    rules.push_str("COMMIT\n");
    (sets, rules)
}

fn direction<A: Family>(dir: &Direction<A>, n: &Names, sets: &mut Vec<SetSpec>, rules: &mut String) {
    sets.push(ip_set(n.iso, &dir.isolated));
    let members = dir.triples.iter().flat_map(triple_members).collect();
    sets.push(spec::<A>(n.allow, SetType::HashIpPortNet, members));
    let c = n.chain;
    let _ = writeln!(rules, "-A {c} -m set --match-set {} {} -j RETURN", n.allow, n.allow_flags);
    // Sets named after the peer key (and ports): a pod joining the peers
    // patches a set; only a new peer definition adds a rule.
    let mut names: BTreeSet<String> = sets.iter().map(|s| s.name.clone()).collect();
    let mut add = |s: SetSpec, sets: &mut Vec<SetSpec>| {
        if names.insert(s.name.clone()) {
            sets.push(s);
        }
    };
    // (targets set, its match flags, peer key, peers, port match) per rule.
    let port_groups = dir.port_groups.iter().map(|g| {
        let members = g.targets.iter().map(pod_port_member).collect();
        let targets = spec::<A>(&port_group_set(n, g.key), SetType::HashIpPort, members);
        (targets, n.allow_flags_pod_port, g.key, &g.peers, String::new())
    });
    let groups = dir.groups.iter().map(|g| {
        let ports = ports_match(g.ports);
        let targets = ip_set(&group_set(n, g.key, g.ports), &g.targets);
        (targets, n.pod_flag, g.key, &g.peers, ports)
    });
    for (targets, flags, key, peers, ports) in port_groups.chain(groups) {
        let peers = net_set::<A>(&peer_set(n, key), peers);
        let _ = writeln!(
            rules,
            "-A {c} -m set --match-set {} {flags} -m set --match-set {} {}{ports} -j RETURN",
            targets.name, peers.name, n.peer_flag
        );
        add(targets, sets);
        add(peers, sets);
    }
    log_denied(rules, c, n.log_prefix);
    if !n.audit {
        let _ = writeln!(rules, "-A {c} -m comment --comment \"weft: denied by NetworkPolicy\" -j DROP");
    }
}

/// The first packet of a denied connection goes to the agent's log (a
/// dropped packet never confirms its conntrack entry, so retransmits are
/// NEW again: the agent folds those), at most `LOG_RATE` a second: a flood
/// is cut in the kernel, before it costs the agent anything.
fn log_denied(rules: &mut String, chain: &str, prefix: &str) {
    let _ = writeln!(
        rules,
        "-A {chain} -m conntrack --ctstate NEW -m limit --limit {}/sec --limit-burst {} \
         -j NFLOG --nflog-group {} --nflog-prefix {prefix} --nflog-size {}",
        nflog::LOG_RATE,
        nflog::LOG_BURST,
        nflog::GROUP,
        nflog::SNAPLEN
    );
}

/// A region cell of at most this many ports is one set member per port; a
/// wider one is a rule of its own (as NetworkPolicy's port groups bound it).
const MAX_SET_PORTS: u32 = 256;

/// A region with all of these cells is every packet to its peers.
const EVERY_CELL: [Cell; 4] = [
    Cell::Ports(Protocol::Tcp, 0, u16::MAX),
    Cell::Ports(Protocol::Udp, 0, u16::MAX),
    Cell::Ports(Protocol::Sctp, 0, u16::MAX),
    Cell::Other,
];

/// ClusterNetworkPolicy's chains in one direction, for the chains above:
///
/// ```text
/// WEFT-CNP-AOUT   (src,dport,dst) in weft-admin-out-deny    -> WEFT-CNP-DOUT
///                 (src,dport,dst) in weft-admin-out-accept  RETURN (NetworkPolicy skipped)
///                 wide cells: src in a class, dst in a region's peers, ports   the same
///                 -g WEFT-CNP-NPOUT                          Pass, or no match
/// WEFT-CNP-NPOUT  src in weft-out-iso                        -g WEFT-EGRESS
///                 -g WEFT-CNP-BOUT
/// WEFT-CNP-BOUT   (src,dport,dst) in weft-base-out-deny     -> WEFT-CNP-DOUT
///                 wide cells, Deny only
///                 RETURN                                     Accept, Pass, no match
/// WEFT-CNP-DOUT   log as NetworkPolicy's denials, DROP
/// ```
///
/// Regions are disjoint and a pod is in one class per tier, so the order of
/// a tier's rules does not matter, and a verdict the chain reaches anyway
/// (Pass; Baseline's Accept) needs no rule. Pass and no match are gotos, so
/// NetworkPolicy's RETURN lands in WEFT-FORWARD; Accept is a RETURN, so an
/// egress Accept still meets the ingress chains of a local destination.
fn cluster_direction<A: Family>(
    cluster: &ClusterIr<A>,
    ingress: bool,
    n: &FamilyNames,
    sets: &mut Vec<SetSpec>,
    rules: &mut String,
) {
    let (np, c) = if ingress { (&n.ingress, &n.cnp_ingress) } else { (&n.egress, &n.cnp_egress) };
    let mut named: BTreeSet<String> = sets.iter().map(|s| s.name.clone()).collect();
    for tier in [Tier::Admin, Tier::Baseline] {
        let t = TierRules::of(tier, ingress, n);
        let parts: Vec<ClassPart> =
            by_key(cluster.get(tier, ingress)).map(|class| t.part(class, n, true)).collect();
        // A pod not known yet first, then the verdict sets, then the wide rules.
        for part in &parts {
            rules.push_str(&part.unknown_rules);
        }
        let _ = writeln!(
            rules,
            "-A {} {} -m set --match-set {} {} -j {}",
            t.chain, t.unknown, t.unknown_set, np.allow_flags, c.deny
        );
        let unknown = parts.iter().flat_map(|p| p.unknown.iter().cloned()).collect();
        sets.push(spec::<A>(t.unknown_set, SetType::HashIpPortNet, unknown));
        for (v, (_, name, target)) in t.verdicts.iter().enumerate() {
            let _ = writeln!(rules, "-A {} -m set --match-set {name} {} {target}", t.chain, np.allow_flags);
            let members = parts.iter().flat_map(|p| p.members[v].iter().cloned()).collect();
            sets.push(spec::<A>(name, SetType::HashIpPortNet, members));
        }
        for part in parts {
            rules.push_str(&part.wide);
            sets.extend(part.sets.into_iter().filter(|s| named.insert(s.name.clone())));
        }
        let _ = writeln!(rules, "-A {} {}", t.chain, t.no_match);
        if tier == Tier::Admin {
            // NetworkPolicy decides for the pods it isolates, Baseline for the others.
            let _ =
                writeln!(rules, "-A {} -m set --match-set {} {} -g {}", c.np, np.iso, np.pod_flag, np.chain);
            let _ = writeln!(rules, "-A {} -g {}", c.np, c.baseline);
        }
    }
    // Logged as NetworkPolicy's denials are, so the agent's denied log has them.
    log_denied(rules, c.deny, np.log_prefix);
    let _ = writeln!(
        rules,
        "-A {} -m comment --comment \"weft: denied by ClusterNetworkPolicy\" -j DROP",
        c.deny
    );
}

/// `classes` in the order of their keys: a class's rules keep their place
/// while its subjects change (the classes' own order follows subjects).
fn by_key<A: Family>(classes: &[Class<A>]) -> impl Iterator<Item = &Class<A>> {
    let mut sorted: Vec<&Class<A>> = classes.iter().collect();
    sorted.sort_by_key(|c| c.key);
    sorted.into_iter()
}

/// One tier's chain in one direction and family: what its rules jump to.
pub(super) struct TierRules<'n> {
    chain: &'static str,
    /// (action, set, target) of each verdict set.
    verdicts: Vec<(Action, &'static str, String)>,
    no_match: String,
    /// The tier's set of cells where a pod not known yet is denied.
    unknown_set: &'static str,
    /// "The peer is a pod not known yet", as matches.
    unknown: String,
    np: &'n Names,
    deny: &'static str,
}

/// One class's share of a tier's chain and sets (`TierRules::part`).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ClassPart {
    /// Rules for a pod not known yet on wide cells, first in the chain.
    pub(super) unknown_rules: String,
    /// Members of the tier's unknown set.
    pub(super) unknown: Vec<String>,
    /// Members of each verdict set, in `TierRules::verdicts` order.
    pub(super) members: Vec<Vec<String>>,
    /// Rules for cells past the sets and for grouped regions, with escapes.
    pub(super) wide: String,
    /// The sets those rules match: the class's subjects, its regions' peers.
    pub(super) sets: Vec<SetSpec>,
}

impl<'n> TierRules<'n> {
    pub(super) fn of(tier: Tier, ingress: bool, n: &'n FamilyNames) -> TierRules<'n> {
        let (np, c) = if ingress { (&n.ingress, &n.cnp_ingress) } else { (&n.egress, &n.cnp_egress) };
        let deny = format!("-j {}", c.deny);
        let (chain, verdicts, no_match, unknown_set) = match tier {
            Tier::Admin => (
                c.admin,
                vec![
                    (Action::Deny, c.admin_deny, deny),
                    (Action::Accept, c.admin_accept, "-j RETURN".into()),
                ],
                format!("-g {}", c.np),
                c.admin_unknown,
            ),
            Tier::Baseline => (
                c.baseline,
                vec![(Action::Deny, c.baseline_deny, deny)],
                "-j RETURN".to_string(),
                c.baseline_unknown,
            ),
        };
        let peer = np.peer_flag;
        let unknown = format!(
            "-m set --match-set {} {peer} -m set ! --match-set {} {peer}",
            n.cnp_pod_cidrs, n.cnp_pods
        );
        TierRules { chain, verdicts, no_match, unknown_set, unknown, np, deny: c.deny }
    }

    pub(super) fn verdict_count(&self) -> usize {
        self.verdicts.len()
    }

    /// The action and set of `TierRules::verdicts` index `v`.
    pub(super) fn verdict(&self, v: usize) -> (Action, &'static str) {
        (self.verdicts[v].0, self.verdicts[v].1)
    }

    pub(super) fn unknown_set(&self) -> &'static str {
        self.unknown_set
    }

    /// `class`'s rules, members and sets in this tier; without `content`,
    /// only its rules and the names of its sets (no members).
    pub(super) fn part<A: Family>(&self, class: &Class<A>, n: &FamilyNames, content: bool) -> ClassPart {
        let (chain, np) = (self.chain, self.np);
        let subjects_name = subjects_set(n, class);
        let subjects = if content {
            ip_set::<A>(&subjects_name, &class.subjects)
        } else {
            spec::<A>(&subjects_name, SetType::HashIp, Vec::new())
        };
        let mut part = ClassPart {
            unknown_rules: String::new(),
            unknown: Vec::new(),
            members: vec![Vec::new(); self.verdicts.len()],
            wide: String::new(),
            sets: Vec::new(),
        };
        let mut subjects_used = false;
        // A pod not known yet: small cells are members, wide ones rules.
        if !class.unknown.is_empty() {
            let rule = |out: &mut String, ports: &str| {
                let _ = writeln!(
                    out,
                    "-A {chain} {} -m set --match-set {} {}{ports} -j {}",
                    self.unknown, subjects.name, np.pod_flag, self.deny
                );
            };
            let anywhere = crate::policy::family::anywhere::<A>();
            if EVERY_CELL.iter().all(|e| class.unknown.contains(e)) {
                rule(&mut part.unknown_rules, "");
            } else {
                for cell in &class.unknown {
                    match *cell {
                        Cell::Ports(p, lo, hi) if u32::from(hi) - u32::from(lo) < MAX_SET_PORTS => {
                            if content {
                                part.unknown.extend(cell_members(
                                    &class.subjects,
                                    p,
                                    lo,
                                    hi,
                                    std::slice::from_ref(&anywhere),
                                ))
                            }
                        }
                        Cell::Ports(p, 0, u16::MAX) => {
                            rule(&mut part.unknown_rules, &ports_match(GroupPorts::Protocol(p)))
                        }
                        Cell::Ports(p, lo, hi) => {
                            rule(&mut part.unknown_rules, &ports_match(GroupPorts::Range(p, lo, hi)))
                        }
                        // Only a rule on every port has it, and then every cell: above.
                        Cell::Other => {}
                    }
                }
            }
            subjects_used |= !part.unknown_rules.is_empty();
        }
        let (mut port_rules, mut other_rules) = (String::new(), String::new());
        for region in &class.regions {
            let Some(v) = self.verdicts.iter().position(|v| v.0 == region.action) else { continue };
            let target = &self.verdicts[v].2;
            let peers = peers_set(n, class, region);
            let peers = if content {
                net_set::<A>(&peers, &region.peers)
            } else {
                spec::<A>(&peers, SetType::HashNet, Vec::new())
            };
            let rule = |out: &mut String, ports: &str| {
                let _ = writeln!(
                    out,
                    "-A {chain} -m set --match-set {} {} -m set --match-set {} {}{ports} {target}",
                    subjects.name, np.pod_flag, peers.name, np.peer_flag
                );
            };
            // A region too big for elements gets rules for all its cells.
            let grouped = class.grouped(region);
            let mut used = false;
            if EVERY_CELL.iter().all(|e| region.cells.contains(e)) {
                rule(&mut port_rules, "");
                used = true;
            } else {
                for cell in &region.cells {
                    match *cell {
                        Cell::Ports(p, lo, hi)
                            if !grouped && u32::from(hi) - u32::from(lo) < MAX_SET_PORTS =>
                        {
                            if content {
                                part.members[v].extend(cell_members(
                                    &class.subjects,
                                    p,
                                    lo,
                                    hi,
                                    &region.peers,
                                ));
                            }
                            continue;
                        }
                        Cell::Ports(p, 0, u16::MAX) => {
                            rule(&mut port_rules, &ports_match(GroupPorts::Protocol(p)))
                        }
                        Cell::Ports(p, lo, hi) => {
                            rule(&mut port_rules, &ports_match(GroupPorts::Range(p, lo, hi)))
                        }
                        // No match says "not TCP, UDP or SCTP": escapes below.
                        Cell::Other => rule(&mut other_rules, ""),
                    }
                    used = true;
                }
            }
            if used {
                part.sets.push(peers);
            }
        }
        if !port_rules.is_empty() || !other_rules.is_empty() {
            subjects_used = true;
            part.wide.push_str(&port_rules);
            if !other_rules.is_empty() {
                // The class's TCP, UDP and SCTP that no port rule took leave
                // first, so that the rules without a protocol match take
                // only the other protocols (no other class has these subjects).
                for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                    let _ = writeln!(
                        part.wide,
                        "-A {chain} -m set --match-set {} {} -p {} {}",
                        subjects.name,
                        np.pod_flag,
                        p.as_str(),
                        self.no_match
                    );
                }
                part.wide.push_str(&other_rules);
            }
        }
        if subjects_used {
            part.sets.insert(0, subjects);
        }
        part
    }
}

/// The hash:ip,port,net members of a small cell: every subject, port and
/// peer network.
fn cell_members<'a, A: Family>(
    subjects: impl IntoIterator<Item = &'a A> + 'a,
    p: Protocol,
    lo: u16,
    hi: u16,
    peers: &'a [A::Net],
) -> impl Iterator<Item = String> + 'a {
    subjects.into_iter().flat_map(move |&s| {
        (lo..=hi)
            .flat_map(move |port| peers.iter().flat_map(move |&peer| triple_members(&(s, p, port, peer))))
    })
}

/// The set `<prefix>-<hash>` of `class` (and `extra`): named after who
/// the class is (`Class::key`), not what it holds, so that subjects and
/// peers that come and go patch its members and leave the rules as they are.
fn class_set<A: Family>(prefix: &str, class: &Class<A>, extra: &str) -> String {
    keyed(prefix, class.key, extra)
}

/// The peers set of `region` of `class`, where a rule matches it.
pub(super) fn peers_set<A: Family>(n: &FamilyNames, class: &Class<A>, region: &Region<A>) -> String {
    class_set(n.cnp_peers, class, &format!("{:?} {:?}", region.action, region.cells))
}

/// The subjects set of `class`, where a rule matches it.
pub(super) fn subjects_set<A: Family>(n: &FamilyNames, class: &Class<A>) -> String {
    class_set(n.cnp_subjects, class, "")
}

/// True if `region`'s small cells are verdict-set members (not a rule for
/// every cell: a grouped region, or one of every protocol and port).
pub(super) fn spelled<A: Family>(class: &Class<A>, region: &Region<A>) -> bool {
    !class.grouped(region) && !EVERY_CELL.iter().all(|e| region.cells.contains(e))
}

/// The verdict-set members of `block`'s small cells (`cells` alone: an
/// unknown-pod block is every cell only when it is a rule instead).
pub(super) fn block_members<A: Family>(block: &Block<A>) -> Vec<String> {
    if EVERY_CELL.iter().all(|e| block.cells.contains(e)) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for cell in block.cells {
        if let Cell::Ports(p, lo, hi) = *cell {
            if u32::from(hi) - u32::from(lo) < MAX_SET_PORTS {
                out.extend(cell_members(&block.subjects, p, lo, hi, &block.peers));
            }
        }
    }
    out
}

fn spec<A: Family>(name: &str, kind: SetType, mut members: Vec<String>) -> SetSpec {
    members.sort();
    members.dedup();
    SetSpec { name: name.into(), kind, inet6: inet6::<A>(), members }
}

/// A hash:ip set of family `A`.
pub(super) fn ip_set<A: Family>(name: &str, ips: &BTreeSet<A>) -> SetSpec {
    spec::<A>(name, SetType::HashIp, ips.iter().map(A::to_string).collect())
}

/// The hash:net set `name` of peers `nets`.
pub(super) fn net_set<A: Family>(name: &str, nets: &[A::Net]) -> SetSpec {
    spec::<A>(name, SetType::HashNet, net_members::<A>(nets))
}

/// The members of a hash:net set of `nets`.
pub(super) fn net_members<A: Family>(nets: &[A::Net]) -> Vec<String> {
    nets.iter().flat_map(|n| ipset_nets::<A>(*n)).map(net_str::<A>).collect()
}

/// The hash:ip,port,net members of a triple (two for a /0 peer).
pub(super) fn triple_members<A: Family>(
    &(pod, proto, port, peer): &Triple<A>,
) -> impl Iterator<Item = String> {
    ipset_nets::<A>(peer)
        .into_iter()
        .map(move |p| format!("{pod},{}:{port},{}", proto.as_str(), net_str::<A>(p)))
}

/// The hash:ip,port member of a port group's target.
pub(super) fn pod_port_member<A: Family>((ip, proto, port): &(A, Protocol, u16)) -> String {
    format!("{ip},{}:{port}", proto.as_str())
}

/// The port match of a group's rule.
fn ports_match(ports: GroupPorts) -> String {
    match ports {
        GroupPorts::All => String::new(),
        GroupPorts::Protocol(p) => format!(" -p {}", p.as_str()),
        GroupPorts::Range(p, a, b) => format!(" -p {0} -m {0} --dport {a}:{b}", p.as_str()),
    }
}

/// The (pod, port) targets set of port group `key`.
pub(super) fn port_group_set(n: &Names, key: PeerKey) -> String {
    keyed(&format!("{}s", n.group), key, "")
}

/// The pod targets set of group (`key`, `ports`).
pub(super) fn group_set(n: &Names, key: PeerKey, ports: GroupPorts) -> String {
    keyed(&format!("{}t", n.group), key, &ports_match(ports))
}

/// The peers set of `key`.
pub(super) fn peer_set(n: &Names, key: PeerKey) -> String {
    keyed(&format!("{}p", n.group), key, "")
}

/// `<prefix>-<16 hex of the key and extra>`: at most 24 characters, under
/// ipset's 31 with room for a temp suffix.
fn keyed(prefix: &str, key: PeerKey, extra: &str) -> String {
    let h = if extra.is_empty() { key } else { fnv1a64(format!("{key:016x}{extra}").as_bytes()) };
    format!("{prefix}-{h:016x}")
}

/// A network as `ipset save` prints it: a host network as the bare address,
/// so a resync compares like with like.
fn net_str<A: Family>(n: A::Net) -> String {
    if A::prefix(n) == A::BITS {
        A::network(n).to_string()
    } else {
        n.to_string()
    }
}

/// ipset's net types take prefixes from 1: /0 becomes its two halves.
fn ipset_nets<A: Family>(n: A::Net) -> Vec<A::Net> {
    if A::prefix(n) > 0 {
        return vec![n];
    }
    [0, 1u128 << (A::BITS - 1)].into_iter().filter_map(|a| A::net(A::from_u128(a), 1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use crate::policy::{FamilyIr, Group, PortGroup};
    use ipnetwork::{Ipv4Network, Ipv6Network};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn ir() -> PolicyIr {
        let a = ip("10.244.1.2");
        let mut ir = PolicyIr {
            v4: FamilyIr {
                local: [a, ip("10.244.1.3")].into(),
                pod_cidr: Some(net("10.244.1.0/24")),
                cluster_cidr: Some(net("10.244.0.0/16")),
                ..FamilyIr::default()
            },
            ..PolicyIr::default()
        };
        ir.v4.ingress.isolated.insert(a);
        ir.v4.ingress.triples.insert((a, Protocol::Tcp, 80, net("10.244.2.0/24")));
        ir.v4.ingress.triples.insert((a, Protocol::Udp, 81, net("0.0.0.0/0")));
        ir.v4.ingress.groups.push(Group {
            key: 1,
            targets: [a].into(),
            peers: vec![net("172.31.0.0/24")],
            ports: GroupPorts::Range(Protocol::Tcp, 9000, 9999),
        });
        ir.v4.egress.isolated.insert(a);
        ir.v4.egress.groups.push(Group {
            key: 2,
            targets: [a].into(),
            peers: vec![net("0.0.0.0/0")],
            ports: GroupPorts::All,
        });
        ir
    }

    #[test]
    fn golden_rules_and_sets() {
        let r = render(&ir());
        let name = |prefix: &str| r.sets.iter().find(|s| s.name.starts_with(prefix)).unwrap().name.clone();
        let (it, ip_, et, ep) = (name("weft-it-"), name("weft-ip-"), name("weft-et-"), name("weft-ep-"));
        let want = format!(
            r#"*filter
:WEFT-FORWARD - [0:0]
:WEFT-INGRESS - [0:0]
:WEFT-EGRESS - [0:0]
:WEFT-AUDIT-IN - [0:0]
:WEFT-AUDIT-OUT - [0:0]
-A WEFT-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "weft: replies" -j ACCEPT
-A WEFT-FORWARD -s 10.244.1.0/24 -m set ! --match-set weft-local src -m comment --comment "weft: no known pod has this address yet" -j DROP
-A WEFT-FORWARD -d 10.244.1.0/24 -m set ! --match-set weft-local dst -m comment --comment "weft: no known pod has this address yet" -j DROP
-A WEFT-FORWARD -m set --match-set weft-out-iso src -j WEFT-EGRESS
-A WEFT-FORWARD -m set --match-set weft-in-iso dst -j WEFT-INGRESS
-A WEFT-FORWARD -m set --match-set weft-local src -j ACCEPT
-A WEFT-FORWARD -m set --match-set weft-local dst -j ACCEPT
-A WEFT-FORWARD -d 10.244.0.0/16 -m comment --comment "weft: transit to a pod on another node" -j ACCEPT
-A WEFT-INGRESS -m set --match-set weft-in dst,dst,src -j RETURN
-A WEFT-INGRESS -m set --match-set {it} dst -m set --match-set {ip_} src -p tcp -m tcp --dport 9000:9999 -j RETURN
-A WEFT-INGRESS -m conntrack --ctstate NEW -m limit --limit 100/sec --limit-burst 200 -j NFLOG --nflog-group 87 --nflog-prefix weft-deny-in --nflog-size 64
-A WEFT-INGRESS -m comment --comment "weft: denied by NetworkPolicy" -j DROP
-A WEFT-EGRESS -m set --match-set weft-out src,dst,dst -j RETURN
-A WEFT-EGRESS -m set --match-set {et} src -m set --match-set {ep} dst -j RETURN
-A WEFT-EGRESS -m conntrack --ctstate NEW -m limit --limit 100/sec --limit-burst 200 -j NFLOG --nflog-group 87 --nflog-prefix weft-deny-out --nflog-size 64
-A WEFT-EGRESS -m comment --comment "weft: denied by NetworkPolicy" -j DROP
COMMIT
"#
        );
        assert_eq!(r.rules, want, "\n{}", r.rules);
        let set = |n: &str| r.sets.iter().find(|s| s.name == n).unwrap();
        assert_eq!(set("weft-local").members, ["10.244.1.2", "10.244.1.3"]);
        assert_eq!(set("weft-in-iso").members, ["10.244.1.2"]);
        assert_eq!(
            set("weft-in").members,
            [
                "10.244.1.2,tcp:80,10.244.2.0/24",
                "10.244.1.2,udp:81,0.0.0.0/1",
                "10.244.1.2,udp:81,128.0.0.0/1"
            ]
        );
        assert_eq!(set(&ep).members, ["0.0.0.0/1", "128.0.0.0/1"], "/0 as two halves");
        assert!(r.sets.iter().all(|s| s.name.len() <= 24), "{:?}", r.sets);
        assert_eq!(set("weft-out").members, Vec::<String>::new());
    }

    #[test]
    fn group_sets_are_named_after_the_peer_key() {
        let a = render(&ir());
        let names = |r: &Rendered| r.sets.iter().map(|s| s.name.clone()).collect::<BTreeSet<_>>();
        let mut members = ir();
        members.v4.egress.groups[0].peers = vec![net("10.0.0.0/8")];
        let b = render(&members);
        assert_eq!(names(&a), names(&b), "new peers, same key: the same sets");
        assert_eq!(a.rules, b.rules, "and the same rules");
        let mut other = ir();
        other.v4.egress.groups[0].key = 3;
        let (na, nc) = (names(&a), names(&render(&other)));
        assert_eq!(na.difference(&nc).count(), 2, "another key: its targets and peers sets");
        assert_eq!(render(&ir()), a, "deterministic");
    }

    #[test]
    fn port_groups_are_one_rule_over_a_pod_port_set_and_a_peer_set() {
        let a = ip("10.244.1.2");
        let mut ir = ir();
        ir.v4.ingress.port_groups.push(PortGroup {
            key: 1,
            targets: [(a, Protocol::Tcp, 80), (a, Protocol::Udp, 53)].into(),
            peers: vec![net("10.244.2.0/24"), net("10.244.3.7/32")],
        });
        let r = render(&ir);
        let set = |prefix: &str| r.sets.iter().find(|s| s.name.starts_with(prefix)).unwrap();
        let (targets, peers) = (set("weft-is-"), set("weft-ip-"));
        assert_eq!(targets.kind, SetType::HashIpPort);
        assert_eq!(targets.members, ["10.244.1.2,tcp:80", "10.244.1.2,udp:53"]);
        assert_eq!(peers.members, ["10.244.2.0/24", "10.244.3.7"], "shared with the group of key 1");
        let rule = format!(
            "-A WEFT-INGRESS -m set --match-set {} dst,dst -m set --match-set {} src -j RETURN\n",
            targets.name, peers.name
        );
        let at = r.rules.find(&rule).expect(&r.rules);
        assert!(at < r.rules.find("NFLOG").unwrap(), "before the log and the drop");
    }

    #[test]
    fn without_cidrs_no_fail_closed_or_transit_rules() {
        let r = render(&PolicyIr::default());
        assert!(!r.rules.contains(" DROP\n-A WEFT-FORWARD -m set --match-set weft-out-iso"));
        assert!(!r.rules.contains("transit"));
        assert!(!r.rules.contains("no known pod"));
        assert!(!r.rules6.contains("no known pod"));
        assert_eq!(r.sets.len(), 10, "local, and iso and allow per direction, in each family");
        assert!(!r.v6, "no IPv6 to enforce");
    }

    #[test]
    fn ipv6_has_the_same_layout_over_inet6_sets() {
        let mut ir = ir();
        let (a, b): (Ipv6Addr, Ipv6Addr) =
            ("fd00:244:1::2".parse().unwrap(), "fd00:244:1::3".parse().unwrap());
        let net6 = |s: &str| s.parse::<Ipv6Network>().unwrap();
        ir.v6.pod_cidr = Some(net6("fd00:244:1::/64"));
        ir.v6.cluster_cidr = Some(net6("fd00:244::/56"));
        ir.v6.local = [a, b].into();
        ir.v6.ingress.isolated.insert(a);
        ir.v6.ingress.triples.insert((a, Protocol::Tcp, 80, net6("fd00:244:2::/64")));
        ir.v6.ingress.triples.insert((a, Protocol::Udp, 81, net6("::/0")));
        ir.v6.ingress.groups.push(Group {
            key: 1,
            targets: [a].into(),
            peers: vec![net6("fd00:244:3::5/128")],
            ports: GroupPorts::All,
        });
        let r = render(&ir);
        assert!(r.v6);
        let set = |name: &str| r.sets.iter().find(|s| s.name == name).unwrap().clone();
        assert_eq!(set(LOCAL6_SET).members, ["fd00:244:1::2", "fd00:244:1::3"]);
        assert_eq!(set("weft-in-iso6").members, ["fd00:244:1::2"]);
        assert_eq!(
            set("weft-in6").members,
            [
                "fd00:244:1::2,tcp:80,fd00:244:2::/64",
                "fd00:244:1::2,udp:81,8000::/1",
                "fd00:244:1::2,udp:81,::/1"
            ]
        );
        assert!(r.sets.iter().filter(|s| s.name.ends_with('6') || s.name.contains("-i6")).all(|s| s.inet6));
        assert!(r.sets.iter().filter(|s| s.inet6).all(|s| s.name.len() <= 27), "room for -new: {:?}", r.sets);
        let group = |prefix: &str| r.sets.iter().find(|s| s.name.starts_with(prefix)).unwrap().clone();
        assert_eq!(group("weft-i6p-").members, ["fd00:244:3::5"], "a host network as the bare address");
        let lines: Vec<&str> = r.rules6.lines().collect();
        let want_head = [
            "-A WEFT-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"weft: replies\" -j ACCEPT",
            "-A WEFT-FORWARD -p ipv6-icmp -m icmp6 --icmpv6-type neighbour-solicitation -j ACCEPT",
            "-A WEFT-FORWARD -p ipv6-icmp -m icmp6 --icmpv6-type neighbour-advertisement -j ACCEPT",
        ];
        assert_eq!(lines[6..9], want_head, "{}", r.rules6);
        assert!(
            lines[9].starts_with("-A WEFT-FORWARD -s fd00:244:1::/64 -m set ! --match-set weft-local6 src ")
        );
        assert!(
            lines[10].starts_with("-A WEFT-FORWARD -d fd00:244:1::/64 -m set ! --match-set weft-local6 dst ")
        );
        assert_eq!(lines[11], "-A WEFT-FORWARD -m set --match-set weft-out-iso6 src -j WEFT-EGRESS");
        assert_eq!(lines[12], "-A WEFT-FORWARD -m set --match-set weft-in-iso6 dst -j WEFT-INGRESS");
        assert!(r.rules6.contains("-A WEFT-FORWARD -d fd00:244::/56 "), "transit: {}", r.rules6);
        let (it, ip_) = (group("weft-i6t-").name, group("weft-i6p-").name);
        let rule =
            format!("-A WEFT-INGRESS -m set --match-set {it} dst -m set --match-set {ip_} src -j RETURN");
        assert!(lines.contains(&rule.as_str()), "{}", r.rules6);
        assert!(r.rules6.contains("--nflog-prefix weft-deny-in "), "denials are logged in IPv6 too");
        // No rule of one family names a set of the other.
        for s in &r.sets {
            let other = if s.inet6 { &r.rules } else { &r.rules6 };
            assert!(!other.contains(&format!(" {} ", s.name)), "{} in the other family: {other}", s.name);
        }
    }
}

#[cfg(test)]
#[path = "render_cnp_tests.rs"]
mod cnp_tests;
