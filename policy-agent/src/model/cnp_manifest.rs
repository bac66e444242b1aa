//! ClusterNetworkPolicy manifests -> `ClusterNetworkPolicy`, with the checks
//! the CRD's schema and CEL rules make (network-policy-api v0.2.0,
//! `apis/v1alpha2/clusternetworkpolicy_types.go`): an object the API server
//! would reject is reported by name and skipped, as for NetworkPolicy.
//!
//! Unlike the other wire structs, peers and protocols keep the fields weft
//! does not know (`other`): a peer or protocol with only such fields is a
//! newer CRD's, and the rule must fail closed (`CnpPeer::Unknown`), not be
//! read as if the field were absent.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::cluster_policy::{
    Action, ClusterNetworkPolicy, CnpPeer, CnpPort, CnpRule, NamespacedPods, Subject, Tier,
};
use super::manifest::{check_port_name, cidr, port_number, selector, Meta, SelectorManifest};
use super::Protocol;

/// The API's bound on rules per direction, peers per rule, protocols per
/// rule and networks per peer.
pub const MAX_ITEMS: usize = 25;
/// The API's bound on a rule name's length.
pub const MAX_RULE_NAME: usize = 100;
/// The API's bound on a priority.
pub const MAX_PRIORITY: i64 = 1000;
/// The API's bound on one CIDR's text.
const MAX_CIDR_LEN: usize = 43;

type Unknown = BTreeMap<String, serde_norway::Value>;

#[derive(Debug, Deserialize)]
pub(super) struct CnpManifest {
    metadata: Meta,
    #[serde(default)]
    spec: Option<CnpSpec>,
}

#[derive(Debug, Deserialize)]
struct CnpSpec {
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    subject: Option<SubjectManifest>,
    #[serde(default)]
    ingress: Option<Vec<RuleManifest>>,
    #[serde(default)]
    egress: Option<Vec<RuleManifest>>,
}

#[derive(Debug, Deserialize)]
struct SubjectManifest {
    #[serde(default)]
    namespaces: Option<SelectorManifest>,
    #[serde(default)]
    pods: Option<NamespacedPodManifest>,
    #[serde(flatten)]
    other: Unknown,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NamespacedPodManifest {
    #[serde(default)]
    namespace_selector: Option<SelectorManifest>,
    #[serde(default)]
    pod_selector: Option<SelectorManifest>,
}

#[derive(Debug, Deserialize)]
struct RuleManifest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    from: Option<Vec<PeerManifest>>,
    #[serde(default)]
    to: Option<Vec<PeerManifest>>,
    #[serde(default)]
    protocols: Option<Vec<ProtocolManifest>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PeerManifest {
    #[serde(default)]
    namespaces: Option<SelectorManifest>,
    #[serde(default)]
    pods: Option<NamespacedPodManifest>,
    #[serde(default)]
    networks: Option<Vec<String>>,
    #[serde(default)]
    nodes: Option<SelectorManifest>,
    #[serde(default)]
    domain_names: Option<Vec<String>>,
    #[serde(flatten)]
    other: Unknown,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProtocolManifest {
    #[serde(default)]
    tcp: Option<ProtocolPorts>,
    #[serde(default)]
    udp: Option<ProtocolPorts>,
    #[serde(default)]
    sctp: Option<ProtocolPorts>,
    #[serde(default)]
    destination_named_port: Option<String>,
    #[serde(flatten)]
    other: Unknown,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProtocolPorts {
    #[serde(default)]
    destination_port: Option<PortManifest>,
    #[serde(flatten)]
    other: Unknown,
}

#[derive(Debug, Deserialize)]
struct PortManifest {
    #[serde(default)]
    number: Option<i64>,
    #[serde(default)]
    range: Option<RangeManifest>,
}

#[derive(Debug, Deserialize)]
struct RangeManifest {
    start: i64,
    end: i64,
}

/// Validates one ClusterNetworkPolicy; Err names the field.
pub(super) fn cluster_network_policy(m: CnpManifest) -> Result<ClusterNetworkPolicy, String> {
    let name = m.metadata.name()?;
    let generation = m.metadata.generation();
    let spec = m.spec.ok_or("spec is required")?;
    let tier = match spec.tier.as_deref() {
        Some("Admin") => Tier::Admin,
        Some("Baseline") => Tier::Baseline,
        Some(other) => return Err(format!("spec.tier {other:?} is not Admin or Baseline")),
        None => return Err("spec.tier is required".into()),
    };
    let priority = match spec.priority {
        Some(p @ 0..=MAX_PRIORITY) => p as u16,
        Some(p) => return Err(format!("spec.priority {p} is not in 0-{MAX_PRIORITY}")),
        None => return Err("spec.priority is required".into()),
    };
    let subject = subject(spec.subject.ok_or("spec.subject is required")?)?;
    let ingress = rules(spec.ingress, Direction::Ingress)?;
    let egress = rules(spec.egress, Direction::Egress)?;
    Ok(ClusterNetworkPolicy { name, generation, tier, priority, subject, ingress, egress })
}

fn subject(s: SubjectManifest) -> Result<Subject, String> {
    let at = "spec.subject";
    match (s.namespaces, s.pods, s.other.is_empty()) {
        (Some(ns), None, true) => Ok(Subject::Namespaces(selector(Some(ns), &format!("{at}.namespaces"))?)),
        (None, Some(p), true) => Ok(Subject::Pods(namespaced_pods(p, &format!("{at}.pods"))?)),
        (None, None, true) => Err(format!("{at}: one of namespaces or pods is required")),
        // Unlike a peer, an unknown subject cannot fail closed: it selects no pod weft could name.
        _ => Err(format!("{at}: exactly one of namespaces or pods ({})", field_names(&s.other))),
    }
}

fn namespaced_pods(p: NamespacedPodManifest, at: &str) -> Result<NamespacedPods, String> {
    let pods = p.pod_selector.ok_or_else(|| format!("{at}.podSelector is required"))?;
    Ok(NamespacedPods {
        namespaces: selector(p.namespace_selector, &format!("{at}.namespaceSelector"))?,
        pods: selector(Some(pods), &format!("{at}.podSelector"))?,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

fn rules(list: Option<Vec<RuleManifest>>, dir: Direction) -> Result<Vec<CnpRule>, String> {
    let (field, peers_key) = match dir {
        Direction::Ingress => ("spec.ingress", "from"),
        Direction::Egress => ("spec.egress", "to"),
    };
    let list = list.unwrap_or_default();
    if list.len() > MAX_ITEMS {
        return Err(format!("{field}: {} rules, at most {MAX_ITEMS}", list.len()));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.into_iter().enumerate() {
        out.push(rule(r, dir, &format!("{field}[{i}]"), peers_key)?);
    }
    Ok(out)
}

fn rule(r: RuleManifest, dir: Direction, at: &str, peers_key: &str) -> Result<CnpRule, String> {
    if let Some(name) = &r.name {
        if name.chars().count() > MAX_RULE_NAME {
            return Err(format!("{at}.name: {} characters, at most {MAX_RULE_NAME}", name.chars().count()));
        }
    }
    let name = r.name.filter(|n| !n.is_empty());
    let action = match r.action.as_deref() {
        Some("Accept") => Action::Accept,
        Some("Deny") => Action::Deny,
        Some("Pass") => Action::Pass,
        Some(other) => return Err(format!("{at}.action {other:?} is not Accept, Deny or Pass")),
        None => return Err(format!("{at}.action is required")),
    };
    let raw_peers = if dir == Direction::Ingress { r.from } else { r.to };
    let raw_peers = raw_peers.ok_or_else(|| format!("{at}.{peers_key} is required"))?;
    bounded(raw_peers.len(), &format!("{at}.{peers_key}"))?;
    let mut peers = Vec::with_capacity(raw_peers.len());
    for (j, p) in raw_peers.into_iter().enumerate() {
        peers.push(peer(p, dir, action, &format!("{at}.{peers_key}[{j}]"))?);
    }
    let mut ports = Vec::new();
    if let Some(list) = r.protocols {
        bounded(list.len(), &format!("{at}.protocols"))?;
        for (j, p) in list.into_iter().enumerate() {
            ports.push(protocol(p, &format!("{at}.protocols[{j}]"))?);
        }
    }
    let addresses_only = peers.iter().any(|p| match p {
        CnpPeer::Networks(_) | CnpPeer::Nodes(_) => true,
        CnpPeer::Unknown(fields) => fields.iter().any(|f| f == "domainNames"),
        _ => false,
    });
    if addresses_only && ports.iter().any(|p| matches!(p, CnpPort::Named(_))) {
        return Err(format!(
            "{at}: networks/nodes/domainNames peer cannot be set with destinationNamedPort \
             (networks and nodes have no named ports)"
        ));
    }
    Ok(CnpRule { name, action, peers, ports })
}

/// MinItems=1, MaxItems=25.
fn bounded(n: usize, at: &str) -> Result<(), String> {
    match n {
        0 => Err(format!("{at}: at least one item")),
        n if n > MAX_ITEMS => Err(format!("{at}: {n} items, at most {MAX_ITEMS}")),
        _ => Ok(()),
    }
}

fn peer(p: PeerManifest, dir: Direction, action: Action, at: &str) -> Result<CnpPeer, String> {
    let egress = dir == Direction::Egress;
    let mut known = BTreeSet::new();
    let mut unknown: Vec<String> = p.other.keys().cloned().collect();
    // A field of the other direction's peer is, for this one, a field it does not know.
    for (field, set, ours) in [
        ("namespaces", p.namespaces.is_some(), true),
        ("pods", p.pods.is_some(), true),
        ("networks", p.networks.is_some(), egress),
        ("nodes", p.nodes.is_some(), egress),
        ("domainNames", p.domain_names.is_some(), egress),
    ] {
        match (set, ours) {
            (true, true) => drop(known.insert(field)),
            (true, false) => unknown.push(field.into()),
            _ => {}
        }
    }
    if known.len() + unknown.len() > 1 {
        let mut all: Vec<String> = known.iter().map(|s| s.to_string()).chain(unknown).collect();
        all.sort();
        return Err(format!("{at}: exactly one field per peer, not {}", all.join(", ")));
    }
    if known.is_empty() && unknown.is_empty() {
        return Err(format!("{at}: a peer needs one field (namespaces, pods, networks or nodes)"));
    }
    if let Some(names) = p.domain_names.filter(|_| egress) {
        if action != Action::Accept {
            return Err(format!("{at}.domainNames: only in Accept rules"));
        }
        bounded(names.len(), &format!("{at}.domainNames"))?;
        // Not implemented: an Accept with it fails closed (matches nothing).
        return Ok(CnpPeer::Unknown(vec!["domainNames".into()]));
    }
    if !unknown.is_empty() {
        return Ok(CnpPeer::Unknown(unknown));
    }
    if let Some(ns) = p.namespaces {
        return Ok(CnpPeer::Namespaces(selector(Some(ns), &format!("{at}.namespaces"))?));
    }
    if let Some(pods) = p.pods {
        return Ok(CnpPeer::Pods(namespaced_pods(pods, &format!("{at}.pods"))?));
    }
    if let Some(nodes) = p.nodes {
        return Ok(CnpPeer::Nodes(selector(Some(nodes), &format!("{at}.nodes"))?));
    }
    networks(p.networks.unwrap_or_default(), &format!("{at}.networks"))
}

fn networks(list: Vec<String>, at: &str) -> Result<CnpPeer, String> {
    bounded(list.len(), at)?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (k, s) in list.iter().enumerate() {
        if s.len() > MAX_CIDR_LEN {
            return Err(format!("{at}[{k}]: {} characters, at most {MAX_CIDR_LEN}", s.len()));
        }
        if !s.contains('/') {
            return Err(format!("{at}[{k}] {s:?}: Invalid CIDR format provided"));
        }
        // listType=set: the API server rejects a repeated item.
        if !seen.insert(s.as_str()) {
            return Err(format!("{at}[{k}] {s:?}: duplicate"));
        }
        out.push(cidr(s, &format!("{at}[{k}]"))?);
    }
    Ok(CnpPeer::Networks(out))
}

fn protocol(p: ProtocolManifest, at: &str) -> Result<CnpPort, String> {
    let given = [p.tcp.is_some(), p.udp.is_some(), p.sctp.is_some(), p.destination_named_port.is_some()];
    let known = given.iter().filter(|&&g| g).count();
    match (known, p.other.is_empty()) {
        (0, true) => return Err(format!("{at}: one of tcp, udp, sctp or destinationNamedPort is required")),
        (0, false) => return Ok(CnpPort::Unknown(p.other.keys().cloned().collect())),
        (1, true) => {}
        _ => return Err(format!("{at}: exactly one of tcp, udp, sctp or destinationNamedPort")),
    }
    if let Some(name) = p.destination_named_port {
        check_port_name(&name).map_err(|e| format!("{at}.destinationNamedPort: {e}"))?;
        return Ok(CnpPort::Named(name));
    }
    let (protocol, ports, field) = match (p.tcp, p.udp, p.sctp) {
        (Some(t), _, _) => (Protocol::Tcp, t, "tcp"),
        (_, Some(u), _) => (Protocol::Udp, u, "udp"),
        (_, _, Some(s)) => (Protocol::Sctp, s, "sctp"),
        _ => unreachable!("one of them is set: counted above"),
    };
    let at = format!("{at}.{field}");
    if !ports.other.is_empty() {
        return Ok(CnpPort::Unknown(ports.other.keys().map(|k| format!("{field}.{k}")).collect()));
    }
    let port = ports.destination_port.ok_or_else(|| format!("{at}: destinationPort is required"))?;
    let at = format!("{at}.destinationPort");
    match (port.number, port.range) {
        (Some(n), None) => {
            let n = port_number(n, &format!("{at}.number"))?;
            Ok(CnpPort::Ports { protocol, start: n, end: n })
        }
        (None, Some(r)) => {
            let start = port_number(r.start, &format!("{at}.range.start"))?;
            let end = port_number(r.end, &format!("{at}.range.end"))?;
            if start >= end {
                return Err(format!("{at}.range: Start port must be less than End port ({start} >= {end})"));
            }
            Ok(CnpPort::Ports { protocol, start, end })
        }
        _ => Err(format!("{at}: exactly one of number or range")),
    }
}

fn field_names(other: &Unknown) -> String {
    if other.is_empty() {
        "both given".into()
    } else {
        format!("unknown: {}", other.keys().cloned().collect::<Vec<_>>().join(", "))
    }
}

#[cfg(test)]
#[path = "cnp_manifest_tests.rs"]
mod tests;
