//! Model -> this node's PolicyIr. Pure: no I/O, unit-tested without root.
//!
//! Semantics (networking.k8s.io/v1): a pod is isolated in a direction only if
//! some policy with that direction in its policyTypes selects it; an isolated
//! pod may exchange traffic only with what some rule of such a policy allows;
//! rules and peers are OR'ed, namespaceSelector and podSelector in one peer
//! AND'ed; a named port resolves on the pod that serves it (the local pod for
//! ingress, each destination pod for egress). Only local pods are compiled:
//! ingress is enforced at the destination's node, egress at the source's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::rc::Rc;

use ipnetwork::{IpNetwork, Ipv4Network};
use weft_conf::hash::fnv1a64;

use super::cidr::{aggregate, subtract};
use super::ir::{Direction, Group, GroupPorts, PeerKey, PolicyIr, PortGroup, Triple};
use crate::model::{LabelSelector, Model, NetworkPolicy, Peer, Pod, PortRef, Protocol, Rule};

/// An endPort range up to this many ports becomes triples (one hash entry
/// per port); a wider one becomes a group rule with a port range.
const MAX_EXPANDED_RANGE: u32 = 16;

/// How the compiler chooses between representations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Single-port rules whose peers are at most this many networks become
    /// triples (a fixed cost per packet, elements = targets x ports x
    /// peers); rules with more peers (a namespace selector over a big
    /// cluster) become their peers' port group (one rule per distinct peers,
    /// elements = targets x ports + peers). Deciding on the peers alone means
    /// targets coming and going never switch a rule between the two.
    pub triple_peers: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options { triple_peers: DEFAULT_TRIPLE_PEERS }
    }
}

/// The default of `Options::triple_peers` (weft-agent `--triple-peers`).
pub const DEFAULT_TRIPLE_PEERS: usize = 16;

/// The whole IPv4 space: a rule with no peers allows every address.
const ANYWHERE: Ipv4Network = Ipv4Network::new_checked(Ipv4Addr::UNSPECIFIED, 0).unwrap();

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

/// Compiles `model` for node `node`. `cluster_cidr` is the cluster's pod
/// network (for the IR's transit rule). Returns the IR and notes on what could
/// not be enforced as written (e.g. IPv6 ipBlocks on this IPv4 data path).
pub fn compile(model: &Model, node: &str, cluster_cidr: Option<Ipv4Network>) -> (PolicyIr, Vec<String>) {
    compile_with(model, node, cluster_cidr, Options::default())
}

/// `compile` with `options`.
pub fn compile_with(
    model: &Model,
    node: &str,
    cluster_cidr: Option<Ipv4Network>,
    options: Options,
) -> (PolicyIr, Vec<String>) {
    let (mut ir, notes) = compile_some(model, node, cluster_cidr, options, |p| !p.audit);
    // Audit policies: the rules as if they were enforced too; traffic the
    // enforced rules admit but these would deny is logged, not dropped.
    if model.policies.values().any(|p| p.audit) {
        let (full, _) = compile_some(model, node, cluster_cidr, options, |_| true);
        ir.audit = true;
        ir.audit_ingress = full.ingress;
        ir.audit_egress = full.egress;
    }
    (ir, notes)
}

/// `compile` over the policies `include` keeps.
fn compile_some(
    model: &Model,
    node: &str,
    cluster_cidr: Option<Ipv4Network>,
    options: Options,
    include: impl Fn(&NetworkPolicy) -> bool,
) -> (PolicyIr, Vec<String>) {
    // Pods by namespace: a policy selects targets, and a peer without a
    // namespace selector selects peers, in one namespace only.
    let mut by_ns: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for p in model.pods.values().filter(|p| p.ip.is_some() && !p.host_network) {
        by_ns.entry(p.namespace.as_str()).or_default().push(p);
    }
    let mut c = Compiler {
        model,
        options,
        by_ns,
        peers: BTreeMap::new(),
        notes: Vec::new(),
        ingress: Acc::default(),
        egress: Acc::default(),
    };
    let mut local: BTreeSet<Ipv4Addr> = BTreeSet::new();
    // Many policies of a namespace select the same pods.
    let mut selected: BTreeMap<(&str, &LabelSelector), Rc<[&Pod]>> = BTreeMap::new();
    for policy in model.policies.values().filter(|p| include(p)) {
        let targets = selected
            .entry((policy.namespace.as_str(), &policy.pod_selector))
            .or_insert_with(|| {
                c.by_ns
                    .get(policy.namespace.as_str())
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|p| p.node.as_deref() == Some(node) && policy.pod_selector.matches(&p.labels))
                    .collect()
            })
            .clone();
        if targets.is_empty() {
            continue;
        }
        if let Some(rules) = &policy.ingress {
            c.direction(Dir::Ingress, policy, rules, &targets);
        }
        if let Some(rules) = &policy.egress {
            c.direction(Dir::Egress, policy, rules, &targets);
        }
    }
    local.extend(c.by_ns.values().flatten().filter(|p| p.node.as_deref() == Some(node)).filter_map(|p| p.ip));
    let ir = PolicyIr {
        local,
        pod_cidr: model.nodes.get(node).and_then(|n| n.pod_cidr),
        cluster_cidr,
        ingress: c.ingress.finish(),
        egress: c.egress.finish(),
        ..PolicyIr::default()
    };
    (ir, c.notes)
}

/// Resolved peer networks, shared by the rules that name the same peers.
type Nets = Rc<[Ipv4Network]>;

/// A port group's target: (local pod, protocol, port).
type PodPort = (Ipv4Addr, Protocol, u16);

/// One direction being built; groups keyed by (peer key, ports) so rules
/// that differ only in their targets share one group, port groups by peer key.
#[derive(Default)]
struct Acc {
    dir: Direction,
    /// Triples as they come (many repeat): sorted and deduplicated once.
    triples: Vec<Triple>,
    groups: BTreeMap<(PeerKey, GroupPorts), (Nets, BTreeSet<Ipv4Addr>)>,
    port_groups: BTreeMap<PeerKey, (Nets, BTreeSet<PodPort>)>,
}

impl Acc {
    fn finish(mut self) -> Direction {
        self.triples.sort_unstable();
        self.triples.dedup();
        self.dir.triples = self.triples.into_iter().collect();
        self.dir.groups = self
            .groups
            .into_iter()
            .map(|((key, ports), (peers, targets))| Group { key, targets, peers: peers.to_vec(), ports })
            .collect();
        self.dir.port_groups = self
            .port_groups
            .into_iter()
            .map(|(key, (peers, targets))| PortGroup { key, targets, peers: peers.to_vec() })
            .collect();
        self.dir
    }
}

/// A rule's peers, resolved: the pods it names and the networks it allows.
struct Peers<'m> {
    key: PeerKey,
    /// Pods named by selector peers (for egress named ports).
    pods: Vec<&'m Pod>,
    /// Every allowed network (pods as /32s, ipBlocks minus excepts), aggregated.
    nets: Nets,
    /// True for a rule without peers: every address.
    anywhere: bool,
}

/// A rule's peers as written, in a canonical order: each with the namespace
/// it means when it has no namespace selector (the policy's own).
type PeerDef<'m> = Vec<(Option<&'m str>, &'m Peer)>;

struct Compiler<'m> {
    model: &'m Model,
    options: Options,
    /// Every pod with an address, on any node, by namespace.
    by_ns: BTreeMap<&'m str, Vec<&'m Pod>>,
    /// Peers resolved so far: many policies name the same peers.
    peers: BTreeMap<PeerDef<'m>, Rc<Peers<'m>>>,
    notes: Vec<String>,
    ingress: Acc,
    egress: Acc,
}

impl<'m> Compiler<'m> {
    fn direction(&mut self, dir: Dir, policy: &'m NetworkPolicy, rules: &'m [Rule], targets: &[&'m Pod]) {
        let ips: Vec<Ipv4Addr> = targets.iter().filter_map(|p| p.ip).collect();
        self.acc(dir).dir.isolated.extend(ips.iter().copied());
        for rule in rules {
            let peers = self.peers(policy, rule);
            if peers.nets.is_empty() {
                // Peers that match nothing (yet): the rule allows nothing.
                continue;
            }
            if rule.ports.is_empty() {
                self.group(dir, &ips, &peers, GroupPorts::All);
                continue;
            }
            for port in &rule.ports {
                match (&port.port, port.end_port) {
                    (None, _) => self.group(dir, &ips, &peers, GroupPorts::Protocol(port.protocol)),
                    (Some(PortRef::Number(n)), None) => self.allow(dir, &ips, port.protocol, *n, &peers),
                    (Some(PortRef::Number(a)), Some(b)) if u32::from(b - a) < MAX_EXPANDED_RANGE => {
                        for n in *a..=b {
                            self.allow(dir, &ips, port.protocol, n, &peers);
                        }
                    }
                    (Some(PortRef::Number(a)), Some(b)) => {
                        self.group(dir, &ips, &peers, GroupPorts::Range(port.protocol, *a, b))
                    }
                    (Some(PortRef::Name(name)), _) => {
                        self.named(dir, policy, targets, port.protocol, name, &peers)
                    }
                }
            }
        }
    }

    fn acc(&mut self, dir: Dir) -> &mut Acc {
        match dir {
            Dir::Ingress => &mut self.ingress,
            Dir::Egress => &mut self.egress,
        }
    }

    /// `ips` may exchange `proto`/`port` with `peers`: triples for few peers,
    /// else (pod, port) targets of the peers' port group.
    fn allow(&mut self, dir: Dir, ips: &[Ipv4Addr], proto: Protocol, port: u16, peers: &Peers) {
        let few = peers.nets.len() <= self.options.triple_peers;
        let acc = self.acc(dir);
        if few {
            for ip in ips {
                acc.triples.extend(peers.nets.iter().map(|net| (*ip, proto, port, *net)));
            }
        } else {
            let (_, targets) =
                acc.port_groups.entry(peers.key).or_insert_with(|| (peers.nets.clone(), BTreeSet::new()));
            targets.extend(ips.iter().map(|ip| (*ip, proto, port)));
        }
    }

    fn group(&mut self, dir: Dir, ips: &[Ipv4Addr], peers: &Peers, ports: GroupPorts) {
        let (_, targets) = self
            .acc(dir)
            .groups
            .entry((peers.key, ports))
            .or_insert_with(|| (peers.nets.clone(), BTreeSet::new()));
        targets.extend(ips.iter().copied());
    }

    /// A named port: for ingress, resolved on each target (the local pod that
    /// serves it); for egress, on each destination pod, so only selector peers
    /// (or, for a rule without peers, every pod) can match it.
    fn named(
        &mut self,
        dir: Dir,
        policy: &NetworkPolicy,
        targets: &[&Pod],
        proto: Protocol,
        name: &str,
        peers: &Peers,
    ) {
        let port_ref = PortRef::Name(name.to_string());
        match dir {
            Dir::Ingress => {
                for t in targets {
                    if let (Some(ip), Some(port)) = (t.ip, t.resolve_port(&port_ref, proto)) {
                        self.allow(dir, &[ip], proto, port, peers);
                    }
                }
            }
            Dir::Egress => {
                let ips: Vec<Ipv4Addr> = targets.iter().filter_map(|p| p.ip).collect();
                let everyone: Vec<&Pod>;
                let dests = if peers.anywhere {
                    everyone = self.by_ns.values().flatten().copied().collect();
                    &everyone
                } else {
                    &peers.pods
                };
                let triples = &mut self.acc(dir).triples;
                for d in dests {
                    if let (Some(dip), Some(port)) = (d.ip, d.resolve_port(&port_ref, proto)) {
                        triples.extend(ips.iter().map(|ip| (*ip, proto, port, Ipv4Network::from(dip))));
                    }
                }
                if !peers.anywhere && peers.nets.len() > peers.pods.len() {
                    self.notes.push(format!(
                        "NetworkPolicy {}: named port {name} cannot apply to ipBlock peers (no pod names it)",
                        policy.key()
                    ));
                }
            }
        }
    }

    /// The rule's peers, resolved once per distinct definition.
    fn peers(&mut self, policy: &'m NetworkPolicy, rule: &'m Rule) -> Rc<Peers<'m>> {
        let mut def: PeerDef<'m> = rule
            .peers
            .iter()
            .map(|p| match p {
                Peer::Pods { namespaces: None, .. } => (Some(policy.namespace.as_str()), p),
                _ => (None, p),
            })
            .collect();
        def.sort();
        def.dedup();
        if let Some(p) = self.peers.get(&def) {
            return p.clone();
        }
        let resolved = Rc::new(self.resolve(policy, &def));
        self.peers.insert(def, resolved.clone());
        resolved
    }

    fn resolve(&mut self, policy: &NetworkPolicy, def: &PeerDef<'m>) -> Peers<'m> {
        let key = fnv1a64(format!("{def:?}").as_bytes());
        if def.is_empty() {
            return Peers { key, pods: Vec::new(), nets: Rc::from([ANYWHERE]), anywhere: true };
        }
        let mut pods: BTreeMap<(&str, &str), &'m Pod> = BTreeMap::new();
        let mut nets: Vec<Ipv4Network> = Vec::new();
        for (own_ns, peer) in def {
            match peer {
                Peer::Pods { namespaces, pods: sel } => {
                    let namespaces: Vec<&'m str> = match (own_ns, namespaces) {
                        (Some(ns), _) => vec![*ns],
                        (None, Some(ns_sel)) => self
                            .by_ns
                            .keys()
                            .copied()
                            .filter(|ns| ns_sel.matches(&self.model.namespace_labels(ns)))
                            .collect(),
                        // A peer without a namespace selector always has its
                        // own namespace (set above).
                        (None, None) => Vec::new(),
                    };
                    for ns in namespaces {
                        for p in self.by_ns.get(ns).into_iter().flatten() {
                            if sel.matches(&p.labels) {
                                pods.insert((p.namespace.as_str(), p.name.as_str()), p);
                            }
                        }
                    }
                }
                Peer::IpBlock { cidr: IpNetwork::V4(block), except } => {
                    let except: Vec<Ipv4Network> = except
                        .iter()
                        .filter_map(|e| match e {
                            IpNetwork::V4(e) => Some(*e),
                            IpNetwork::V6(_) => None,
                        })
                        .collect();
                    nets.extend(subtract(*block, &except));
                }
                Peer::IpBlock { cidr: IpNetwork::V6(block), .. } => self.notes.push(format!(
                    "NetworkPolicy {}: ipBlock {block} is IPv6; the pod network is IPv4, so it matches nothing",
                    policy.key()
                )),
            }
        }
        let pods: Vec<&'m Pod> = pods.into_values().collect();
        nets.extend(pods.iter().filter_map(|p| p.ip).map(Ipv4Network::from));
        Peers { key, pods, nets: Rc::from(aggregate(nets)), anywhere: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Namespaces x, y (labelled ns=<name>), pods a, b in each: x/a and y/a
    /// on node-1, x/b and y/b on node-2, serving serve-80-tcp (x/b's on 8080).
    fn cluster(extra: &str) -> Model {
        let mut text = String::from(
            "kind: Node\nmetadata: {name: node-1}\nspec: {podCIDR: 10.244.1.0/24}\n---\n\
             kind: Node\nmetadata: {name: node-2}\nspec: {podCIDR: 10.244.2.0/24}\n",
        );
        for ns in ["x", "y"] {
            text += &format!("---\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n");
        }
        let pods = [("x", "a", 1, 2, 80), ("x", "b", 2, 2, 8080), ("y", "a", 1, 3, 80), ("y", "b", 2, 3, 80)];
        for (ns, name, node, host, port) in pods {
            text += &format!(
                "---\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{pod: {name}}}}}\n\
                 spec: {{nodeName: node-{node}, containers: [{{ports: [{{name: serve-80-tcp, containerPort: {port}}}]}}]}}\n\
                 status: {{podIP: 10.244.{node}.{host}}}\n"
            );
        }
        text += extra;
        Model::of_manifests(&text)
    }

    fn policy(ns: &str, name: &str, spec: &str) -> String {
        format!("---\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn node1(m: &Model) -> PolicyIr {
        compile(m, "node-1", Some(net("10.244.0.0/16"))).0
    }

    #[test]
    fn without_policies_nothing_is_isolated() {
        let ir = node1(&cluster(""));
        assert_eq!(ir.local, [ip("10.244.1.2"), ip("10.244.1.3")].into());
        assert_eq!(ir.pod_cidr, Some(net("10.244.1.0/24")));
        assert_eq!(ir.ingress, Direction::default());
        assert_eq!(ir.egress, Direction::default());
    }

    #[test]
    fn default_deny_isolates_only_local_selected_pods() {
        let ir = node1(&cluster(&policy("x", "deny", "  podSelector: {}\n")));
        assert_eq!(ir.ingress.isolated, [ip("10.244.1.2")].into(), "x/a only: x/b is on node-2, y/a is in y");
        assert!(ir.ingress.triples.is_empty() && ir.ingress.groups.is_empty());
        assert!(ir.egress.isolated.is_empty(), "ingress-only policy");
        let ir2 = compile(&cluster(&policy("x", "deny", "  podSelector: {}\n")), "node-2", None).0;
        assert_eq!(ir2.ingress.isolated, [ip("10.244.2.2")].into());
    }

    #[test]
    fn allow_from_a_namespace_on_a_port() {
        let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 80}]\n";
        let ir = node1(&cluster(&policy("x", "from-y", spec)));
        let want: BTreeSet<_> = [
            (ip("10.244.1.2"), Protocol::Tcp, 80, net("10.244.1.3/32")),
            (ip("10.244.1.2"), Protocol::Tcp, 80, net("10.244.2.3/32")),
        ]
        .into();
        assert_eq!(ir.ingress.triples, want, "y/a and y/b, wherever they run");
    }

    #[test]
    fn and_within_a_peer_or_across_peers() {
        let and = "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: 80}]\n";
        let or = "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: 80}]\n";
        let peers = |spec: &str| -> BTreeSet<Ipv4Network> {
            node1(&cluster(&policy("x", "p", spec))).ingress.triples.iter().map(|t| t.3).collect()
        };
        assert_eq!(peers(and), [net("10.244.2.3/32")].into(), "y/b only");
        assert_eq!(
            peers(or),
            [net("10.244.1.3/32"), net("10.244.2.2/31")].into(),
            "all of y, and x/b (10.244.2.2 and 10.244.2.3 aggregate)"
        );
    }

    #[test]
    fn named_ports_resolve_on_the_pod_that_serves_them() {
        // Ingress into x/b (node-2), whose serve-80-tcp is 8080.
        let spec = "  podSelector: {}\n  ingress:\n  - ports: [{port: serve-80-tcp}]\n";
        let ir2 = compile(&cluster(&policy("x", "named", spec)), "node-2", None).0;
        assert_eq!(ir2.ingress.triples, [(ip("10.244.2.2"), Protocol::Tcp, 8080, net("0.0.0.0/0"))].into());
        // Egress from x/a to x's pods on serve-80-tcp: 80 on x/a, 8080 on x/b.
        let spec = "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {}}]\n    ports: [{port: serve-80-tcp}]\n";
        let ir = node1(&cluster(&policy("x", "named", spec)));
        let want: BTreeSet<_> = [
            (ip("10.244.1.2"), Protocol::Tcp, 80, net("10.244.1.2/32")),
            (ip("10.244.1.2"), Protocol::Tcp, 8080, net("10.244.2.2/32")),
        ]
        .into();
        assert_eq!(ir.egress.triples, want);
        assert_eq!(ir.egress.isolated, [ip("10.244.1.2")].into());
        assert!(ir.ingress.isolated.is_empty());
    }

    #[test]
    fn ip_blocks_minus_excepts() {
        let spec = "  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 172.31.0.0/24, except: [172.31.0.100/32]}}]\n    ports: [{port: 80, protocol: UDP}]\n";
        let ir = node1(&cluster(&policy("x", "p", spec)));
        let nets: Vec<Ipv4Network> = ir.ingress.triples.iter().map(|t| t.3).collect();
        assert_eq!(nets.len(), 8);
        assert!(!nets.iter().any(|n| n.contains(ip("172.31.0.100"))));
        assert!(ir.ingress.triples.iter().all(|t| t.1 == Protocol::Udp && t.2 == 80));
        let (_, notes) = compile(
            &cluster(&policy(
                "x",
                "p",
                &spec.replace("172.31.0.0/24, except: [172.31.0.100/32]", "fd00::/64"),
            )),
            "node-1",
            None,
        );
        assert!(notes.iter().any(|n| n.contains("IPv6")), "{notes:?}");
    }

    #[test]
    fn rules_without_single_ports_become_groups() {
        let spec = "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n  - ports: [{protocol: UDP}, {port: 8000, endPort: 8005}, {port: 9000, endPort: 9999}]\n  egress: [{}]\n";
        let ir = node1(&cluster(&policy("x", "p", spec)));
        let a = ip("10.244.1.2");
        let anywhere = vec![net("0.0.0.0/0")];
        let shape = |d: &Direction| -> BTreeSet<_> {
            d.groups.iter().map(|g| (g.targets.clone(), g.peers.clone(), g.ports)).collect()
        };
        assert_eq!(
            shape(&ir.ingress),
            [
                ([a].into(), anywhere.clone(), GroupPorts::Protocol(Protocol::Udp)),
                ([a].into(), anywhere.clone(), GroupPorts::Range(Protocol::Tcp, 9000, 9999)),
                ([a].into(), vec![net("10.244.2.2/32")], GroupPorts::All),
            ]
            .into()
        );
        assert_eq!(ir.ingress.triples.len(), 6, "8000-8005 expanded");
        assert_eq!(shape(&ir.egress), [([a].into(), anywhere, GroupPorts::All)].into());
        let keys: BTreeSet<PeerKey> = ir.ingress.groups.iter().map(|g| g.key).collect();
        assert_eq!(keys.len(), 2, "the two rules' peers: pod b, and anywhere");
    }

    /// `n` pods labelled role=client in namespace y on node-2, at addresses
    /// that do not aggregate.
    fn many_clients(n: u32) -> String {
        (0..n)
            .map(|i| {
                format!(
                    "---\nkind: Pod\nmetadata: {{name: c{i}, namespace: y, labels: {{role: client}}}}\n\
                     spec: {{nodeName: node-2}}\nstatus: {{podIP: 10.245.{}.{}}}\n",
                    i / 100,
                    2 * (i % 100) + 1
                )
            })
            .collect()
    }

    #[test]
    fn many_peers_become_a_port_group_keyed_by_the_peers_as_written() {
        let spec = "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]\n    ports: [{port: 80}, {port: 53, protocol: UDP}]\n";
        let few = node1(&cluster(&format!("{}{}", many_clients(16), policy("x", "p", spec))));
        assert_eq!(few.ingress.triples.len(), 32, "16 clients x 2 ports, as triples");
        assert!(few.ingress.port_groups.is_empty());
        // 300 clients (none adjacent, so no aggregation) > 16.
        let text = format!("{}{}{}", many_clients(300), policy("x", "p", spec), policy("y", "q", spec));
        let ir = node1(&cluster(&text));
        assert!(ir.ingress.triples.is_empty(), "{:?}", ir.ingress.triples.len());
        assert_eq!(ir.ingress.port_groups.len(), 1, "both policies name the same peers: one group");
        let g = &ir.ingress.port_groups[0];
        let (xa, ya) = (ip("10.244.1.2"), ip("10.244.1.3"));
        let want = [
            (xa, Protocol::Udp, 53),
            (xa, Protocol::Tcp, 80),
            (ya, Protocol::Udp, 53),
            (ya, Protocol::Tcp, 80),
        ];
        assert_eq!(g.targets, want.into(), "x/a by p, y/a by q");
        assert_eq!(g.peers.len(), 300);
        // One client more: same key, one peer more.
        let more = node1(&cluster(&format!("{}{}", many_clients(301), policy("x", "p", spec))));
        assert_eq!(more.ingress.port_groups[0].key, g.key);
        assert_eq!(more.ingress.port_groups[0].peers.len(), 301);
        // With triple_peers 0, even one peer makes a port group.
        let opts = Options { triple_peers: 0 };
        let one = compile_with(
            &cluster(&format!("{}{}", many_clients(1), policy("x", "p", spec))),
            "node-1",
            None,
            opts,
        )
        .0;
        assert!(one.ingress.triples.is_empty());
        assert_eq!(one.ingress.port_groups.len(), 1);
    }

    #[test]
    fn peers_that_match_nothing_allow_nothing_and_empty_lists_deny() {
        let spec = "  podSelector: {}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: nobody}}}]\n";
        let ir = node1(&cluster(&policy("x", "p", spec)));
        assert_eq!(ir.ingress.isolated.len(), 1);
        assert!(ir.ingress.groups.is_empty() && ir.ingress.triples.is_empty());
        let ir = node1(&cluster(&policy("x", "p", "  podSelector: {}\n  ingress: []\n")));
        assert_eq!((ir.ingress.isolated.len(), ir.ingress.groups.len()), (1, 0), "ingress: [] denies all");
    }

    #[test]
    fn policies_union_and_merge_groups_by_peers_and_ports() {
        let p1 = policy("x", "p1", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}]}]\n");
        let p2 = policy("y", "p2", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}]}]\n");
        let ir = node1(&cluster(&format!("{p1}{p2}")));
        assert_eq!(ir.ingress.isolated, [ip("10.244.1.2"), ip("10.244.1.3")].into());
        assert_eq!(ir.ingress.groups.len(), 1, "{:?}", ir.ingress.groups);
        assert_eq!(ir.ingress.groups[0].targets, ir.ingress.isolated);
        assert_eq!(ir.ingress.groups[0].peers, [net("10.244.1.2/31"), net("10.244.2.2/31")]);
    }

    #[test]
    fn audit_policies_are_compiled_apart() {
        let audit = "---\nkind: NetworkPolicy\nmetadata: {name: try, namespace: x, annotations: {weft.io/audit: 'true'}}\nspec: {podSelector: {}}\n";
        let ir = node1(&cluster(audit));
        assert!(ir.ingress.isolated.is_empty(), "an audit policy isolates nothing");
        assert!(ir.audit);
        assert_eq!(ir.audit_ingress.isolated, [ip("10.244.1.2")].into(), "but would");
        let plain = node1(&cluster(""));
        assert!(!plain.audit && plain.audit_ingress == Direction::default());
    }

    #[test]
    fn host_network_pods_and_pods_without_an_address_are_left_out() {
        let extra = "---\nkind: Pod\nmetadata: {name: h, namespace: x}\nspec: {nodeName: node-1, hostNetwork: true}\nstatus: {podIP: 172.31.0.11}\n\
                     ---\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec: {nodeName: node-1}\n";
        let ir = node1(&cluster(&format!("{extra}{}", policy("x", "deny", "  podSelector: {}\n"))));
        assert_eq!(ir.local, [ip("10.244.1.2"), ip("10.244.1.3")].into());
        assert_eq!(ir.ingress.isolated, [ip("10.244.1.2")].into());
    }
}
