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

use ipnetwork::{IpNetwork, Ipv4Network};

use super::cidr::{aggregate, subtract};
use super::ir::{Direction, Group, GroupPorts, PolicyIr};
use crate::model::{Model, NetworkPolicy, Peer, Pod, PortRef, Protocol, Rule};

/// An endPort range up to this many ports becomes triples (one hash entry
/// per port); a wider one becomes a group rule with a port range.
const MAX_EXPANDED_RANGE: u32 = 16;

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
    let (mut ir, notes) = compile_some(model, node, cluster_cidr, |p| !p.audit);
    // Audit policies: the rules as if they were enforced too; traffic the
    // enforced rules admit but these would deny is logged, not dropped.
    if model.policies.values().any(|p| p.audit) {
        let (full, _) = compile_some(model, node, cluster_cidr, |_| true);
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
    include: impl Fn(&NetworkPolicy) -> bool,
) -> (PolicyIr, Vec<String>) {
    let pods: Vec<&Pod> = model.pods.values().filter(|p| p.ip.is_some() && !p.host_network).collect();
    let local: Vec<&Pod> = pods.iter().copied().filter(|p| p.node.as_deref() == Some(node)).collect();
    let mut c = Compiler { model, pods, notes: Vec::new(), ingress: Acc::default(), egress: Acc::default() };
    for policy in model.policies.values().filter(|p| include(p)) {
        let targets: Vec<&Pod> = local
            .iter()
            .copied()
            .filter(|p| p.namespace == policy.namespace && policy.pod_selector.matches(&p.labels))
            .collect();
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
    let ir = PolicyIr {
        local: local.iter().filter_map(|p| p.ip).collect(),
        pod_cidr: model.nodes.get(node).and_then(|n| n.pod_cidr),
        cluster_cidr,
        ingress: c.ingress.finish(),
        egress: c.egress.finish(),
        ..PolicyIr::default()
    };
    (ir, c.notes)
}

/// One direction being built; groups keyed by (peers, ports) so rules that
/// differ only in their targets share one group.
#[derive(Default)]
struct Acc {
    dir: Direction,
    groups: BTreeMap<(Vec<Ipv4Network>, GroupPorts), BTreeSet<Ipv4Addr>>,
}

impl Acc {
    fn finish(mut self) -> Direction {
        self.dir.groups = self
            .groups
            .into_iter()
            .map(|((peers, ports), targets)| Group { targets, peers, ports })
            .collect();
        self.dir
    }
}

/// A rule's peers, resolved: the pods it names and the networks it allows.
struct Peers<'m> {
    /// Pods named by selector peers (for egress named ports).
    pods: Vec<&'m Pod>,
    /// Every allowed network (pods as /32s, ipBlocks minus excepts), aggregated.
    nets: Vec<Ipv4Network>,
    /// True for a rule without peers: every address.
    anywhere: bool,
}

struct Compiler<'m> {
    model: &'m Model,
    /// Every pod with an address, on any node.
    pods: Vec<&'m Pod>,
    notes: Vec<String>,
    ingress: Acc,
    egress: Acc,
}

impl<'m> Compiler<'m> {
    fn direction(&mut self, dir: Dir, policy: &NetworkPolicy, rules: &[Rule], targets: &[&Pod]) {
        let ips: Vec<Ipv4Addr> = targets.iter().filter_map(|p| p.ip).collect();
        self.acc(dir).dir.isolated.extend(ips.iter().copied());
        for rule in rules {
            let peers = self.peers(policy, rule);
            if peers.nets.is_empty() {
                // Peers that match nothing (yet): the rule allows nothing.
                continue;
            }
            if rule.ports.is_empty() {
                self.group(dir, &ips, &peers.nets, GroupPorts::All);
                continue;
            }
            for port in &rule.ports {
                match (&port.port, port.end_port) {
                    (None, _) => self.group(dir, &ips, &peers.nets, GroupPorts::Protocol(port.protocol)),
                    (Some(PortRef::Number(n)), None) => {
                        self.triples(dir, &ips, port.protocol, *n, &peers.nets)
                    }
                    (Some(PortRef::Number(a)), Some(b)) if u32::from(b - a) < MAX_EXPANDED_RANGE => {
                        for n in *a..=b {
                            self.triples(dir, &ips, port.protocol, n, &peers.nets);
                        }
                    }
                    (Some(PortRef::Number(a)), Some(b)) => {
                        self.group(dir, &ips, &peers.nets, GroupPorts::Range(port.protocol, *a, b))
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

    fn triples(&mut self, dir: Dir, ips: &[Ipv4Addr], proto: Protocol, port: u16, nets: &[Ipv4Network]) {
        let set = &mut self.acc(dir).dir.triples;
        for ip in ips {
            for net in nets {
                set.insert((*ip, proto, port, *net));
            }
        }
    }

    fn group(&mut self, dir: Dir, ips: &[Ipv4Addr], nets: &[Ipv4Network], ports: GroupPorts) {
        self.acc(dir).groups.entry((nets.to_vec(), ports)).or_default().extend(ips.iter().copied());
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
                        self.triples(dir, &[ip], proto, port, &peers.nets);
                    }
                }
            }
            Dir::Egress => {
                let ips: Vec<Ipv4Addr> = targets.iter().filter_map(|p| p.ip).collect();
                let dests: Vec<&Pod> = if peers.anywhere { self.pods.clone() } else { peers.pods.clone() };
                for d in dests {
                    if let (Some(dip), Some(port)) = (d.ip, d.resolve_port(&port_ref, proto)) {
                        let net = Ipv4Network::from(dip);
                        self.triples(dir, &ips, proto, port, &[net]);
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

    fn peers(&mut self, policy: &NetworkPolicy, rule: &Rule) -> Peers<'m> {
        if rule.peers.is_empty() {
            return Peers { pods: Vec::new(), nets: vec![ANYWHERE], anywhere: true };
        }
        let mut pods: Vec<&'m Pod> = Vec::new();
        let mut nets: Vec<Ipv4Network> = Vec::new();
        for peer in &rule.peers {
            match peer {
                Peer::Pods { namespaces, pods: sel } => {
                    for p in &self.pods {
                        let ns_ok = match namespaces {
                            None => p.namespace == policy.namespace,
                            Some(ns_sel) => ns_sel.matches(&self.model.namespace_labels(&p.namespace)),
                        };
                        if ns_ok && sel.matches(&p.labels) && !pods.iter().any(|q| std::ptr::eq(*q, *p)) {
                            pods.push(p);
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
        nets.extend(pods.iter().filter_map(|p| p.ip).map(Ipv4Network::from));
        Peers { pods, nets: aggregate(nets), anywhere: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_manifests;

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
        let mut m = Model::default();
        for o in parse_manifests(&text).unwrap_or_else(|e| panic!("{e}\n{text}")) {
            assert!(m.insert(o));
        }
        m
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
        assert_eq!(
            ir.ingress.groups,
            [
                Group {
                    targets: [a].into(),
                    peers: vec![net("0.0.0.0/0")],
                    ports: GroupPorts::Protocol(Protocol::Udp)
                },
                Group {
                    targets: [a].into(),
                    peers: vec![net("0.0.0.0/0")],
                    ports: GroupPorts::Range(Protocol::Tcp, 9000, 9999)
                },
                Group { targets: [a].into(), peers: vec![net("10.244.2.2/32")], ports: GroupPorts::All },
            ]
        );
        assert_eq!(ir.ingress.triples.len(), 6, "8000-8005 expanded");
        assert_eq!(
            ir.egress.groups,
            [Group { targets: [a].into(), peers: vec![net("0.0.0.0/0")], ports: GroupPorts::All }]
        );
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
