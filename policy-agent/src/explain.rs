//! `weft-agent explain SRC DST:PORT[/PROTO]`: why a connection passes or not,
//! in policy terms, from the cluster state. For each node on the path it
//! names the traffic class and what the compiled rules (the IR the kernel
//! enforces) decide; for each end, the policies that isolate it and the rule
//! that admits the connection, or that none does. If the compiled rules and
//! the policies disagree, it says so: that is a weft bug.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::model::{Model, Node, Pod, Protocol};
use crate::policy::compile;
use crate::policy::evaluate::{address_of, decide, decide_one, ir_verdict, Decision, IrVerdict, Party};
use crate::policy::tiers::Way;

/// One node on the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hop {
    pub node: String,
    /// local->local, local->other, other->local, or node->local (not forwarded).
    pub class: String,
    pub egress: Option<IrVerdict>,
    pub ingress: Option<IrVerdict>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub src: String,
    pub dst: String,
    pub protocol: Protocol,
    pub port: u16,
    /// What the compiled rules of the nodes on the path do.
    pub allowed: bool,
    /// What the policies (NetworkPolicy and ClusterNetworkPolicy tiers) say.
    pub allowed_by_policy: bool,
    pub hops: Vec<Hop>,
    /// The policies' view of each end (None: not a pod).
    pub egress: Option<Decision>,
    pub ingress: Option<Decision>,
    /// Set when the compiled rules and the policies disagree.
    pub disagreement: Option<String>,
}

/// An end as given on the command line, resolved.
struct End<'m> {
    label: String,
    party: Party<'m>,
    /// The node whose FORWARD sees this end's packets as local (a pod's node).
    node: Option<String>,
    /// A node itself (traffic from it to its own pods is not forwarded).
    is_node: Option<String>,
}

/// The family of a connection between `src` and `dst` as given: IPv6 if
/// either is an IPv6 address, IPv4 if either is an IPv4 one; between names,
/// IPv4 unless an end has no IPv4 address (an IPv6-only pod or node).
fn is_v6(model: &Model, src: &str, dst: &str) -> bool {
    let ends = [src, dst];
    if ends.iter().any(|e| e.parse::<Ipv6Addr>().is_ok()) {
        return true;
    }
    if ends.iter().any(|e| e.parse::<Ipv4Addr>().is_ok()) {
        return false;
    }
    ends.iter().any(|e| match e.strip_prefix("node/") {
        Some(name) => {
            model.nodes.get(name).is_some_and(|n| n.internal_ip.is_none() && n.internal_ip6.is_some())
        }
        None => model.pods.get(*e).is_some_and(|p| p.ip.is_none() && p.ip6.is_some()),
    })
}

/// The pod (not on the host network) that has address `ip`, found by `pod_at`.
pub type PodAt<'m, 'f> = &'f dyn Fn(IpAddr) -> Option<&'m Pod>;

/// The pod with address `ip` in `model`, not on the host network: the first
/// by key, looked for among every pod.
pub fn pod_at(model: &Model, ip: IpAddr) -> Option<&Pod> {
    model.pods.values().map(|p| &**p).find(|p| address_of(p, ip.is_ipv6()) == Some(ip) && !p.host_network)
}

/// Resolves `s` (NAMESPACE/POD, an address or node/NAME) in the family of `v6`.
fn resolve<'m>(model: &'m Model, pod_at: PodAt<'m, '_>, s: &str, v6: bool) -> Result<End<'m>, String> {
    let family = if v6 { "IPv6" } else { "IPv4" };
    if let Some(name) = s.strip_prefix("node/") {
        let node = model.nodes.get(name).ok_or_else(|| format!("no node {name}"))?;
        let ip = if v6 { node.internal_ip6.map(IpAddr::V6) } else { node.internal_ip.map(IpAddr::V4) };
        let ip = ip.ok_or_else(|| format!("node {name} has no {family} InternalIP"))?;
        return Ok(End { label: s.into(), party: Party::Addr(ip), node: None, is_node: Some(name.into()) });
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        if let Some(p) = pod_at(ip).filter(|p| address_of(p, v6) == Some(ip)) {
            return Ok(End {
                label: format!("{} ({ip})", p.key()),
                party: if v6 { Party::Pod6(p) } else { Party::Pod(p) },
                node: p.node.clone(),
                is_node: None,
            });
        }
        let node_ip =
            |n: &Node| if v6 { n.internal_ip6.map(IpAddr::V6) } else { n.internal_ip.map(IpAddr::V4) };
        let node = model.nodes.values().find(|n| node_ip(n) == Some(ip)).map(|n| n.name.clone());
        // An address of a node's pod CIDR that no pod holds: that node's
        // rules see it as local, and drop it (fail closed).
        let in_cidr = |n: &Node| n.pod_cidrs().iter().any(|c| c.contains(ip));
        let owner = model.nodes.values().find(|n| in_cidr(n)).map(|n| n.name.clone());
        return Ok(End { label: s.into(), party: Party::Addr(ip), node: owner, is_node: node });
    }
    let pod = model
        .pods
        .get(s)
        .ok_or_else(|| format!("no pod {s} (give NAMESPACE/POD, an address or node/NAME)"))?;
    let ip = address_of(pod, v6).ok_or_else(|| format!("pod {s} has no {family} address"))?;
    let party = if v6 { Party::Pod6(pod) } else { Party::Pod(pod) };
    Ok(End { label: format!("{s} ({ip})"), party, node: pod.node.clone(), is_node: None })
}

/// Parses `DST:PORT[/PROTO]` (PROTO tcp, udp or sctp; default tcp; an IPv6
/// DST as `[ADDR]`).
pub fn parse_target(s: &str) -> Result<(String, u16, Protocol), String> {
    let (addr, rest) = s.rsplit_once(':').ok_or_else(|| format!("{s:?}: want DST:PORT[/PROTO]"))?;
    let (port, proto) = rest.split_once('/').unwrap_or((rest, "tcp"));
    let port: u16 = port.parse().map_err(|_| format!("{s:?}: bad port {port:?}"))?;
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        other => return Err(format!("{s:?}: protocol {other:?} is not tcp, udp or sctp")),
    };
    // An IPv6 address may come in brackets, as in a URL: [fd00::2]:80.
    let addr = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(addr);
    Ok((addr.to_string(), port, proto))
}

/// What the policies alone say of a connection (no rule compiled): each
/// end as resolved, and its direction's decision (None: not a pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyView {
    pub src: String,
    pub dst: String,
    pub egress: Option<Decision>,
    pub ingress: Option<Decision>,
}

/// Both ends of `src` -> `dst`, resolved in the connection's family.
fn ends<'m>(
    model: &'m Model,
    pod_at: PodAt<'m, '_>,
    src: &str,
    dst: &str,
) -> Result<(End<'m>, End<'m>), String> {
    let v6 = is_v6(model, src, dst);
    let (s, d) = (resolve(model, pod_at, src, v6)?, resolve(model, pod_at, dst, v6)?);
    let mixed = |e: &End| e.party.ip().is_some_and(|ip| ip.is_ipv6() != v6);
    if mixed(&s) || mixed(&d) {
        return Err(format!("{src} and {dst} are of different address families"));
    }
    Ok((s, d))
}

/// The policies' view of `src` -> `dst`:`port`/`proto` in `model`, as
/// `explain` gives it but without compiling any node's rules: what the
/// denied log needs per connection. `pod_at` finds a pod by address
/// (`pod_at`, or an index of the model's); with `only`, the other
/// direction is not decided (None).
pub fn policies<'m>(
    model: &'m Model,
    pod_at: PodAt<'m, '_>,
    src: &str,
    dst: &str,
    port: u16,
    proto: Protocol,
    only: Option<Way>,
) -> Result<PolicyView, String> {
    let (s, d) = ends(model, pod_at, src, dst)?;
    let one = |way| match only {
        Some(o) if o != way => None,
        _ => decide_one(model, s.party, d.party, proto, port, way),
    };
    let (egress, ingress) = (one(Way::Egress), one(Way::Ingress));
    Ok(PolicyView { src: s.label, dst: d.label, egress, ingress })
}

/// Explains `src` -> `dst`:`port`/`proto` in `model`; `cluster_cidrs` are
/// the cluster's pod networks (at most one per family).
pub fn explain(
    model: &Model,
    cluster_cidrs: &[IpNetwork],
    src: &str,
    dst: &str,
    port: u16,
    proto: Protocol,
) -> Result<Explanation, String> {
    let (s, d) = ends(model, &|ip| pod_at(model, ip), src, dst)?;
    let (sip, dip) = (s.party.ip(), d.party.ip());
    let mut nodes: Vec<String> = [s.node.clone(), d.node.clone()].into_iter().flatten().collect();
    nodes.dedup();
    let mut hops = Vec::new();
    for node in nodes {
        let (src_local, dst_local) = (s.node.as_deref() == Some(&node), d.node.as_deref() == Some(&node));
        // The node's own address to its own pod goes out through OUTPUT, not FORWARD.
        if s.is_node.as_deref() == Some(&node) && dst_local {
            hops.push(Hop { node, class: "node->local (not forwarded)".into(), egress: None, ingress: None });
            continue;
        }
        let ir = compile(model, &node, cluster_cidrs).0;
        let class = match (src_local, dst_local) {
            (true, true) => "local->local",
            (true, false) => "local->other",
            (false, true) => "other->local",
            (false, false) => "transit",
        };
        let verdict = |ingress: bool, pod: Option<IpAddr>, peer: Option<IpAddr>| match (pod, peer) {
            (Some(IpAddr::V4(pod)), Some(IpAddr::V4(peer))) => {
                ir_verdict(&ir.v4, ingress, pod, peer, proto, port)
            }
            (Some(IpAddr::V6(pod)), Some(IpAddr::V6(peer))) => {
                ir_verdict(&ir.v6, ingress, pod, peer, proto, port)
            }
            // An end without an address: no rule of the family names it.
            _ => IrVerdict::NotLocal,
        };
        hops.push(Hop {
            node,
            class: class.into(),
            egress: src_local.then(|| verdict(false, sip, dip)),
            ingress: dst_local.then(|| verdict(true, dip, sip)),
        });
    }
    let allowed = hops
        .iter()
        .all(|h| h.egress.is_none_or(IrVerdict::allows) && h.ingress.is_none_or(IrVerdict::allows));
    let host_path = hops.iter().any(|h| h.class.starts_with("node->local"));
    let (egress, ingress) = decide(model, s.party, d.party, proto, port);
    let by_policy = host_path
        || (egress.as_ref().is_none_or(Decision::allows) && ingress.as_ref().is_none_or(Decision::allows));
    let why = "a weft bug, please report it";
    // An address no known pod holds is dropped whatever the policies say.
    let unknown = hops.iter().any(|h| [h.egress, h.ingress].contains(&Some(IrVerdict::UnknownLocal)));
    let disagreement = (allowed != by_policy && !unknown).then(|| {
        format!(
            "the compiled rules {} but the policies {}: {why}",
            if allowed { "admit it" } else { "deny it" },
            if by_policy { "allow it" } else { "deny it" }
        )
    });
    Ok(Explanation {
        src: s.label,
        dst: d.label,
        protocol: proto,
        port,
        allowed,
        allowed_by_policy: by_policy,
        hops,
        egress,
        ingress,
        disagreement,
    })
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.allowed { "allowed" } else { "DENIED" };
        writeln!(f, "{} -> {}:{}/{}: {verdict}", self.src, self.dst, self.port, self.protocol)?;
        for h in &self.hops {
            let side = |v: Option<IrVerdict>, what: &str| match v {
                None => None,
                Some(IrVerdict::NotIsolated) => Some(format!("{what}: not isolated")),
                Some(IrVerdict::Admitted) => Some(format!("{what}: admitted")),
                Some(IrVerdict::Denied) => Some(format!("{what}: DENIED")),
                Some(IrVerdict::UnknownLocal) => {
                    Some(format!("{what}: DROPPED, no known pod has this address yet"))
                }
                Some(IrVerdict::NotLocal) => None,
            };
            let parts: Vec<String> =
                [side(h.egress, "egress"), side(h.ingress, "ingress")].into_iter().flatten().collect();
            let parts = if parts.is_empty() { String::new() } else { format!(": {}", parts.join("; ")) };
            writeln!(f, "  on {} ({}){parts}", h.node, h.class)?;
        }
        for (what, who, d) in [("egress", &self.src, &self.egress), ("ingress", &self.dst, &self.ingress)] {
            let Some(d) = d else { continue };
            if !d.walk.is_empty() {
                writeln!(f, "  {what} of {who}, tiers: {}", d.walk_line())?;
            }
            if d.isolated_by.is_empty() {
                writeln!(f, "  {what} of {who}: no policy isolates it")?;
            } else if d.admitted_by.is_empty() {
                writeln!(
                    f,
                    "  {what} of {who}: isolated by {}; no rule admits {}:{}/{}",
                    d.isolated_by.join(", "),
                    if what == "egress" { &self.dst } else { &self.src },
                    self.port,
                    self.protocol
                )?;
            } else {
                writeln!(
                    f,
                    "  {what} of {who}: isolated by {}; admitted by {}",
                    d.isolated_by.join(", "),
                    d.admitted_by.join(", ")
                )?;
            }
        }
        if let Some(d) = &self.disagreement {
            writeln!(f, "  WARNING: {d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let text = "
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 172.31.0.11}]}
---
kind: Node
metadata: {name: node-2}
spec: {podCIDR: 10.244.2.0/24}
status: {addresses: [{type: InternalIP, address: 172.31.0.12}]}
---
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1, containers: [{ports: [{name: web, containerPort: 80}]}]}
status: {podIP: 10.244.1.2}
---
kind: Pod
metadata: {name: b, namespace: y, labels: {pod: b}}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.3}
---
kind: Pod
metadata: {name: c, namespace: y, labels: {pod: c}}
spec: {nodeName: node-2}
status: {podIP: 10.244.2.2}
---
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
---
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: web}]}]
";
        Model::of_manifests(text)
    }

    fn cluster() -> Vec<IpNetwork> {
        ["10.244.0.0/16", "fd00:244::/56"].iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn a_denied_connection_names_the_isolating_policies() {
        let e = explain(&model(), &cluster(), "y/b", "x/a", 81, Protocol::Tcp).unwrap();
        assert!(!e.allowed && e.disagreement.is_none(), "{e}");
        let text = e.to_string();
        assert!(text.starts_with("y/b (10.244.1.3) -> x/a (10.244.1.2):81/TCP: DENIED"), "{text}");
        assert!(text.contains("on node-1 (local->local): egress: not isolated; ingress: DENIED"), "{text}");
        assert!(text.contains("ingress of x/a (10.244.1.2): isolated by x/deny, x/from-y; no rule admits y/b (10.244.1.3):81/TCP"), "{text}");
    }

    #[test]
    fn an_admitted_connection_names_the_rule_across_nodes() {
        let e = explain(&model(), &cluster(), "y/c", "x/a", 80, Protocol::Tcp).unwrap();
        assert!(e.allowed && e.disagreement.is_none(), "{e}");
        let classes: Vec<(&str, &str)> = e.hops.iter().map(|h| (h.node.as_str(), h.class.as_str())).collect();
        assert_eq!(classes, [("node-2", "local->other"), ("node-1", "other->local")]);
        assert_eq!(e.hops.len(), 2);
        assert!(e.to_string().contains("admitted by x/from-y rule 1"), "{e}");
    }

    #[test]
    fn the_tier_walk_is_shown_and_decides_on_the_policies_side() {
        let mut m = model();
        let cnp = "kind: ClusterNetworkPolicy\nmetadata: {name: guard}\nspec:\n  tier: Admin\n  priority: 1\n  \
                   subject: {namespaces: {}}\n  ingress:\n    - {name: pass-y, action: Pass, from: [{namespaces: {matchLabels: {ns: y}}}]}\n";
        for o in crate::model::parse_manifests(cnp).unwrap() {
            assert!(m.insert(o));
        }
        let e = explain(&m, &cluster(), "y/b", "x/a", 81, Protocol::Tcp).unwrap();
        assert!(
            !e.allowed_by_policy && e.disagreement.is_none(),
            "Pass: NetworkPolicy denies, as the rules do: {e}"
        );
        assert!(e.to_string().contains("ingress of x/a (10.244.1.2), tiers: Admin Pass by cnp/guard/pass-y -> NetworkPolicy denied by x/deny, x/from-y"), "{e}");
        // An Admin Accept: the compiled rules skip NetworkPolicy as the policies do.
        let accept = cnp.replace("Pass", "Accept");
        let mut m = model();
        for o in crate::model::parse_manifests(&accept).unwrap() {
            assert!(m.insert(o));
        }
        let e = explain(&m, &cluster(), "y/b", "x/a", 81, Protocol::Tcp).unwrap();
        assert!(e.allowed && e.allowed_by_policy, "{e}");
        assert_eq!(e.disagreement, None);
    }

    #[test]
    fn nodes_addresses_and_bad_input() {
        let m = model();
        let from_node = explain(&m, &cluster(), "node/node-1", "x/a", 81, Protocol::Tcp).unwrap();
        assert!(from_node.allowed, "the node's own traffic to its pod is not forwarded: {from_node}");
        let remote_node = explain(&m, &cluster(), "node/node-2", "x/a", 81, Protocol::Tcp).unwrap();
        assert!(!remote_node.allowed, "{remote_node}");
        let by_ip = explain(&m, &cluster(), "10.244.1.3", "10.244.1.2", 80, Protocol::Tcp).unwrap();
        assert!(by_ip.allowed && by_ip.src.starts_with("y/b"), "{by_ip}");
        assert!(explain(&m, &cluster(), "x/nobody", "x/a", 80, Protocol::Tcp).is_err());
        assert_eq!(parse_target("x/a:81/udp"), Ok(("x/a".into(), 81, Protocol::Udp)));
        assert_eq!(parse_target("10.244.1.2:80"), Ok(("10.244.1.2".into(), 80, Protocol::Tcp)));
        assert!(
            parse_target("x/a").is_err()
                && parse_target("x/a:99999").is_err()
                && parse_target("x/a:1/icmp").is_err()
        );
        assert_eq!(parse_target("[fd00::2]:80"), Ok(("fd00::2".into(), 80, Protocol::Tcp)));
    }

    #[test]
    fn ipv6_endpoints_are_explained_in_ipv6() {
        let text = "
kind: Node
metadata: {name: node-1}
spec: {podCIDRs: [10.244.1.0/24, 'fd00:244:1::/64']}
---
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1}
status: {podIPs: [{ip: 10.244.1.2}, {ip: 'fd00:244:1::2'}]}
---
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: node-1}
status: {podIPs: [{ip: 10.244.1.3}, {ip: 'fd00:244:1::3'}]}
---
kind: NetworkPolicy
metadata: {name: from-b6, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: 'fd00:244:1::3/128'}}], ports: [{port: 80}]}]
";
        let m = Model::of_manifests(text);
        let v6 = explain(&m, &cluster(), "fd00:244:1::3", "x/a", 80, Protocol::Tcp).unwrap();
        assert!(v6.allowed && v6.allowed_by_policy && v6.disagreement.is_none(), "{v6}");
        assert!(v6.dst.contains("fd00:244:1::2"), "x/a by its IPv6 address: {v6}");
        let v4 = explain(&m, &cluster(), "10.244.1.3", "x/a", 80, Protocol::Tcp).unwrap();
        assert!(
            !v4.allowed && !v4.allowed_by_policy && v4.disagreement.is_none(),
            "an IPv6 block admits no IPv4: {v4}"
        );
        let by_name = explain(&m, &cluster(), "x/b", "x/a", 80, Protocol::Tcp).unwrap();
        assert!(!by_name.allowed, "names are IPv4 when both ends have IPv4: {by_name}");
        let unknown = explain(&m, &cluster(), "fd00:244:1::3", "fd00:244:1::9", 80, Protocol::Tcp).unwrap();
        assert!(
            !unknown.allowed && unknown.disagreement.is_none(),
            "an unknown address of the pod CIDR is dropped: {unknown}"
        );
        assert!(
            explain(&m, &cluster(), "fd00:244:1::3", "10.244.1.2", 80, Protocol::Tcp).is_err(),
            "mixed families"
        );
    }
}
