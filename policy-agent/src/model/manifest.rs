//! Kubernetes manifests -> model objects. Wire structs name only the fields
//! weft reads and ignore the rest; `validate_*` turn them into model types and
//! reject what the API server would reject (or what weft cannot enforce), so a
//! bad object is reported by name and skipped rather than half-applied.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::Deserialize;

use super::cluster_policy::ClusterNetworkPolicy;
use super::cnp_manifest::cluster_network_policy;
use super::label_syntax::{check_key, check_labels, check_value};
use super::{
    ContainerPort, LabelSelector, Labels, Namespace, NetworkPolicy, Node, Operator, Peer, Pod, PolicyPort,
    PortRef, Protocol, Requirement, Rule,
};

/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// One object weft reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Node(Node),
    Namespace(Namespace),
    Pod(Arc<Pod>),
    NetworkPolicy(Arc<NetworkPolicy>),
    ClusterNetworkPolicy(ClusterNetworkPolicy),
}

impl Object {
    /// "Kind name" or "Kind namespace/name": how reports name it.
    pub fn key(&self) -> String {
        match self {
            Object::Node(n) => format!("Node {}", n.name),
            Object::Namespace(n) => format!("Namespace {}", n.name),
            Object::Pod(p) => format!("Pod {}", p.key()),
            Object::NetworkPolicy(p) => format!("NetworkPolicy {}", p.key()),
            Object::ClusterNetworkPolicy(p) => format!("ClusterNetworkPolicy {}", p.name),
        }
    }
}

/// One object that could not be read: its key when its kind and name were
/// readable, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectError {
    pub key: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for ObjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{k}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// Parses one YAML file (`---`-separated documents, `kind: List` unwrapped)
/// into its objects, each Ok or the reason it is skipped. Kinds weft does not
/// read are ignored. Err when the file is not YAML at all.
pub fn parse_objects(text: &str) -> Result<Vec<Result<Object, ObjectError>>, String> {
    let mut values = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        values.push(serde_norway::Value::deserialize(doc).map_err(|e| e.to_string())?);
    }
    let mut out = Vec::new();
    for v in values {
        collect(v, &mut out);
    }
    Ok(out)
}

/// `parse_objects` where any error fails the whole file (for callers that
/// write the manifests themselves, and for tests).
pub fn parse_manifests(text: &str) -> Result<Vec<Object>, String> {
    parse_objects(text)?.into_iter().map(|r| r.map_err(|e| e.to_string())).collect()
}

/// Parses one object as the API server serves it (any serde value with
/// `kind`, e.g. a k8s-openapi object): the same validation as a manifest
/// file's documents, so both sources accept and reject the same objects.
pub fn parse_serialized<T: serde::Serialize>(obj: &T) -> Vec<Result<Object, ObjectError>> {
    let mut out = Vec::new();
    match serde_norway::to_value(obj) {
        Ok(v) => collect(v, &mut out),
        Err(e) => out.push(Err(ObjectError { key: None, reason: e.to_string() })),
    }
    out
}

/// The head of any manifest: enough to pick its kind and name it.
#[derive(Debug, Deserialize)]
struct Head {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<HeadMeta>,
}

#[derive(Debug, Deserialize)]
struct HeadMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

fn collect(value: serde_norway::Value, out: &mut Vec<Result<Object, ObjectError>>) {
    if value.is_null() {
        // An empty document (e.g. a trailing `---`).
        return;
    }
    let head: Head = match serde_norway::from_value(value.clone()) {
        Ok(h) => h,
        Err(e) => return out.push(Err(ObjectError { key: None, reason: e.to_string() })),
    };
    let Some(kind) = head.kind else {
        return out.push(Err(ObjectError { key: None, reason: "a document without `kind`".into() }));
    };
    let name = head.metadata.as_ref().and_then(|m| m.name.clone()).unwrap_or_default();
    let namespace = head.metadata.and_then(|m| m.namespace).unwrap_or_else(|| "default".into());
    let key = match kind.as_str() {
        "Node" | "Namespace" | "ClusterNetworkPolicy" => format!("{kind} {name}"),
        _ => format!("{kind} {namespace}/{name}"),
    };
    let parsed = match kind.as_str() {
        "List"
        | "NodeList"
        | "PodList"
        | "NamespaceList"
        | "NetworkPolicyList"
        | "ClusterNetworkPolicyList" => {
            match serde_norway::from_value::<List>(value) {
                Ok(list) => list.items.into_iter().for_each(|item| collect(item, out)),
                Err(e) => out.push(Err(ObjectError { key: Some(kind), reason: e.to_string() })),
            }
            return;
        }
        "Node" => decode(value).and_then(node).map(Object::Node),
        "Namespace" => decode(value).and_then(namespace_of).map(Object::Namespace),
        "Pod" => decode(value).and_then(pod).map(|p| Object::Pod(Arc::new(p))),
        "NetworkPolicy" => decode(value).and_then(network_policy).map(|p| Object::NetworkPolicy(Arc::new(p))),
        "ClusterNetworkPolicy" => {
            decode(value).and_then(cluster_network_policy).map(Object::ClusterNetworkPolicy)
        }
        _ => return,
    };
    out.push(parsed.map_err(|reason| ObjectError { key: Some(key), reason }));
}

fn decode<T: serde::de::DeserializeOwned>(value: serde_norway::Value) -> Result<T, String> {
    serde_norway::from_value(value).map_err(|e| e.to_string())
}

#[derive(Debug, Deserialize)]
struct List {
    #[serde(default)]
    items: Vec<serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Option<Labels>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    /// Set by the API server, bumped on every change of the spec.
    #[serde(default)]
    generation: Option<i64>,
}

/// The annotation that puts a NetworkPolicy in audit mode: what it would
/// deny is logged and passes.
pub const AUDIT_ANNOTATION: &str = "weft.io/audit";

impl Meta {
    pub(super) fn name(&self) -> Result<String, String> {
        check_name(&self.name, "metadata.name")?;
        Ok(self.name.clone())
    }
    pub(super) fn generation(&self) -> Option<i64> {
        self.generation
    }
    fn namespace(&self) -> Result<String, String> {
        let ns = self.namespace.clone().unwrap_or_else(|| "default".into());
        check_name(&ns, "metadata.namespace")?;
        Ok(ns)
    }
    fn labels(&self) -> Result<Labels, String> {
        let labels = self.labels.clone().unwrap_or_default();
        check_labels(&labels, "metadata.labels")?;
        Ok(labels)
    }
}

/// A DNS subdomain, as object names are: 1-253 of [a-z0-9.-], alphanumeric at both ends.
fn check_name(name: &str, field: &str) -> Result<(), String> {
    let ok_chars =
        name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ok_ends = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 253 || !ok_chars || !ok_ends {
        return Err(format!("{field} {name:?} is not a valid name"));
    }
    Ok(())
}

// ---- Node

#[derive(Debug, Deserialize)]
struct NodeManifest {
    metadata: Meta,
    #[serde(default)]
    spec: NodeSpec,
    #[serde(default)]
    status: NodeStatus,
}

#[derive(Debug, Default, Deserialize)]
struct NodeSpec {
    #[serde(default, rename = "podCIDR")]
    pod_cidr: Option<String>,
    /// Dual-stack nodes list one CIDR per family; podCIDR is the first.
    #[serde(default, rename = "podCIDRs")]
    pod_cidrs: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct NodeAddress {
    #[serde(rename = "type")]
    kind: String,
    address: String,
}

#[derive(Debug, Default, Deserialize)]
struct NodeStatus {
    #[serde(default)]
    addresses: Vec<NodeAddress>,
}

fn node(m: NodeManifest) -> Result<Node, String> {
    let name = m.metadata.name()?;
    // The first of each family of podCIDR and podCIDRs (an IPv6-first
    // dual-stack node has its IPv4 CIDR second).
    let given = m.spec.pod_cidr.iter().map(|s| ("spec.podCIDR", s));
    let given = given.chain(m.spec.pod_cidrs.iter().map(|s| ("spec.podCIDRs", s)));
    let (mut pod_cidr, mut pod_cidr6) = (None, None);
    for (field, s) in given.filter(|(_, s)| !s.is_empty()) {
        match s.parse::<IpNetwork>() {
            Ok(IpNetwork::V4(n)) => {
                pod_cidr = pod_cidr.or(Some(normal_v4(n)));
            }
            Ok(IpNetwork::V6(n)) => {
                // The prefix came from a valid network, so it is valid again.
                pod_cidr6 = pod_cidr6.or(Some(Ipv6Network::new(n.network(), n.prefix()).unwrap_or(n)));
            }
            Err(e) => return Err(format!("{field} {s:?}: {e}")),
        }
    }
    let internal = || m.status.addresses.iter().filter(|a| a.kind == "InternalIP");
    let internal_ip = internal().find_map(|a| a.address.parse::<Ipv4Addr>().ok());
    let internal_ip6 = internal().find_map(|a| a.address.parse::<Ipv6Addr>().ok());
    // Every IP of status.addresses (InternalIP, ExternalIP, ...): what a CNP `nodes` peer selects.
    let addresses = m.status.addresses.iter().filter_map(|a| a.address.parse::<IpAddr>().ok()).collect();
    let labels = m.metadata.labels()?;
    Ok(Node { name, labels, pod_cidr, pod_cidr6, internal_ip, internal_ip6, addresses })
}

fn normal_v4(n: Ipv4Network) -> Ipv4Network {
    // The prefix came from a valid network, so it is valid again.
    Ipv4Network::new(n.network(), n.prefix()).unwrap_or(n)
}

fn normal(n: IpNetwork) -> IpNetwork {
    IpNetwork::new(n.network(), n.prefix()).unwrap_or(n)
}

// ---- Namespace

#[derive(Debug, Deserialize)]
struct NamespaceManifest {
    metadata: Meta,
}

fn namespace_of(m: NamespaceManifest) -> Result<Namespace, String> {
    let name = m.metadata.name()?;
    let mut labels = m.metadata.labels()?;
    // The API server sets it and nobody can change it.
    labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
    Ok(Namespace { name, labels })
}

// ---- Pod

#[derive(Debug, Deserialize)]
struct PodManifest {
    metadata: Meta,
    #[serde(default)]
    spec: PodSpec,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    host_network: bool,
    #[serde(default)]
    containers: Vec<Container>,
}

#[derive(Debug, Default, Deserialize)]
struct Container {
    #[serde(default)]
    ports: Vec<ContainerPortManifest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerPortManifest {
    #[serde(default)]
    name: Option<String>,
    container_port: i64,
    #[serde(default)]
    protocol: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default)]
    phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<PodIp>,
}

#[derive(Debug, Deserialize)]
struct PodIp {
    ip: String,
}

fn pod(m: PodManifest) -> Result<Pod, String> {
    let name = m.metadata.name()?;
    let namespace = m.metadata.namespace()?;
    let mut ports = Vec::new();
    for c in &m.spec.containers {
        for p in &c.ports {
            let port = port_number(p.container_port, "containerPort")?;
            let protocol = protocol(p.protocol.as_deref())?;
            if let Some(n) = &p.name {
                check_port_name(n)?;
            }
            ports.push(ContainerPort { name: p.name.clone(), port, protocol });
        }
    }
    let ips = || m.status.pod_ip.iter().chain(m.status.pod_ips.iter().map(|p| &p.ip));
    // A terminated pod keeps its status.podIP, but the address is free for the
    // next pod: it no longer stands for this one.
    let terminal = matches!(m.status.phase.as_deref(), Some("Succeeded" | "Failed"));
    let ip = ips().find_map(|s| s.parse::<Ipv4Addr>().ok()).filter(|_| !terminal);
    let ip6 = ips().find_map(|s| s.parse::<Ipv6Addr>().ok()).filter(|_| !terminal);
    Ok(Pod {
        namespace,
        name,
        labels: m.metadata.labels()?,
        node: m.spec.node_name.filter(|n| !n.is_empty()),
        ip,
        ip6,
        host_network: m.spec.host_network,
        ports,
    })
}

/// A port as the API writes it: a number or a name.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    Str(String),
}

// ---- NetworkPolicy

#[derive(Debug, Deserialize)]
struct NetworkPolicyManifest {
    metadata: Meta,
    #[serde(default)]
    spec: Option<PolicySpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicySpec {
    #[serde(default)]
    pod_selector: Option<SelectorManifest>,
    #[serde(default)]
    policy_types: Option<Vec<String>>,
    #[serde(default)]
    ingress: Option<Vec<RuleManifest>>,
    #[serde(default)]
    egress: Option<Vec<RuleManifest>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleManifest {
    #[serde(default)]
    from: Option<Vec<PeerManifest>>,
    #[serde(default)]
    to: Option<Vec<PeerManifest>>,
    #[serde(default)]
    ports: Option<Vec<PolicyPortManifest>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PeerManifest {
    #[serde(default)]
    pod_selector: Option<SelectorManifest>,
    #[serde(default)]
    namespace_selector: Option<SelectorManifest>,
    #[serde(default)]
    ip_block: Option<IpBlockManifest>,
}

#[derive(Debug, Deserialize)]
struct IpBlockManifest {
    cidr: String,
    #[serde(default)]
    except: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyPortManifest {
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    port: Option<IntOrString>,
    #[serde(default)]
    end_port: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SelectorManifest {
    #[serde(default)]
    match_labels: Option<Labels>,
    #[serde(default)]
    match_expressions: Option<Vec<RequirementManifest>>,
}

#[derive(Debug, Deserialize)]
struct RequirementManifest {
    key: String,
    operator: String,
    #[serde(default)]
    values: Option<Vec<String>>,
}

fn network_policy(m: NetworkPolicyManifest) -> Result<NetworkPolicy, String> {
    let name = m.metadata.name()?;
    let namespace = m.metadata.namespace()?;
    let spec = m.spec.unwrap_or_default();
    let pod_selector = selector(spec.pod_selector, "spec.podSelector")?;
    // As the API server defaults them (an empty list counts as none, as in
    // its defaults.go): Ingress always, Egress when egress rules exist.
    let (isolates_ingress, isolates_egress) = match spec.policy_types.as_deref() {
        None | Some([]) => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
        Some(types) => {
            for t in types {
                if t != "Ingress" && t != "Egress" {
                    return Err(format!("spec.policyTypes: {t:?} is not Ingress or Egress"));
                }
            }
            (types.iter().any(|t| t == "Ingress"), types.iter().any(|t| t == "Egress"))
        }
    };
    let ingress = rules(spec.ingress, "ingress", "from")?;
    let egress = rules(spec.egress, "egress", "to")?;
    let audit =
        match m.metadata.annotations.as_ref().and_then(|a| a.get(AUDIT_ANNOTATION)).map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(format!(
                    "metadata.annotations.{AUDIT_ANNOTATION} {other:?} is not \"true\" or \"false\""
                ))
            }
        };
    Ok(NetworkPolicy {
        namespace,
        name,
        pod_selector,
        ingress: isolates_ingress.then_some(ingress),
        egress: isolates_egress.then_some(egress),
        audit,
    })
}

/// The rules of one direction; `field` is the peers' key ("from" or "to").
fn rules(list: Option<Vec<RuleManifest>>, dir: &str, field: &str) -> Result<Vec<Rule>, String> {
    let mut out = Vec::new();
    for (i, r) in list.unwrap_or_default().into_iter().enumerate() {
        let at = format!("spec.{dir}[{i}]");
        let peers = if field == "from" { r.from } else { r.to };
        let peers = peers
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(j, p)| peer(p, &format!("{at}.{field}[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let ports = r
            .ports
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(j, p)| policy_port(p, &format!("{at}.ports[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Rule { peers, ports });
    }
    Ok(out)
}

fn peer(p: PeerManifest, at: &str) -> Result<Peer, String> {
    match (p.ip_block, p.pod_selector, p.namespace_selector) {
        (Some(b), None, None) => {
            let cidr = cidr(&b.cidr, &format!("{at}.ipBlock.cidr"))?;
            let mut except = Vec::new();
            for (k, e) in b.except.unwrap_or_default().iter().enumerate() {
                let n = self::cidr(e, &format!("{at}.ipBlock.except[{k}]"))?;
                if n.is_ipv4() != cidr.is_ipv4() || !cidr.contains(n.network()) || n.prefix() < cidr.prefix()
                {
                    return Err(format!("{at}.ipBlock.except[{k}] {e} is not inside cidr {}", b.cidr));
                }
                except.push(n);
            }
            Ok(Peer::IpBlock { cidr, except })
        }
        (Some(_), _, _) => Err(format!("{at}: ipBlock cannot be combined with a selector")),
        (None, None, None) => Err(format!("{at}: a peer needs podSelector, namespaceSelector or ipBlock")),
        (None, pods, namespaces) => Ok(Peer::Pods {
            namespaces: namespaces
                .map(|s| selector(Some(s), &format!("{at}.namespaceSelector")))
                .transpose()?,
            pods: selector(pods, &format!("{at}.podSelector"))?,
        }),
    }
}

pub(super) fn cidr(s: &str, at: &str) -> Result<IpNetwork, String> {
    s.parse::<IpNetwork>().map(normal).map_err(|e| format!("{at} {s:?}: {e}"))
}

fn policy_port(p: PolicyPortManifest, at: &str) -> Result<PolicyPort, String> {
    let protocol = protocol(p.protocol.as_deref()).map_err(|e| format!("{at}: {e}"))?;
    let port = p.port.map(|v| port_ref(v, &format!("{at}.port"))).transpose()?;
    let end_port = match (p.end_port, &port) {
        (None, _) => None,
        (Some(end), Some(PortRef::Number(start))) => {
            let end = port_number(end, &format!("{at}.endPort"))?;
            if end < *start {
                return Err(format!("{at}.endPort {end} is below port {start}"));
            }
            Some(end)
        }
        (Some(_), Some(PortRef::Name(_))) => return Err(format!("{at}.endPort needs a numeric port")),
        (Some(_), None) => return Err(format!("{at}.endPort needs a port")),
    };
    Ok(PolicyPort { protocol, port, end_port })
}

pub(super) fn selector(s: Option<SelectorManifest>, at: &str) -> Result<LabelSelector, String> {
    let s = s.unwrap_or_default();
    let mut match_expressions = Vec::new();
    for (i, r) in s.match_expressions.unwrap_or_default().into_iter().enumerate() {
        let operator = match r.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return Err(format!(
                    "{at}.matchExpressions[{i}].operator {other:?} is not In, NotIn, Exists or DoesNotExist"
                ))
            }
        };
        let values: BTreeSet<String> = r.values.unwrap_or_default().into_iter().collect();
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(format!("{at}.matchExpressions[{i}]: {} needs values", r.operator))
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(format!("{at}.matchExpressions[{i}]: {} takes no values", r.operator))
            }
            _ => {}
        }
        let at_i = format!("{at}.matchExpressions[{i}]");
        check_key(&r.key).map_err(|e| format!("{at_i}: {e}"))?;
        for v in &values {
            check_value(v).map_err(|e| format!("{at_i}.values: {e}"))?;
        }
        match_expressions.push(Requirement { key: r.key, operator, values });
    }
    // Sorted, so the same selector written in another order is the same value.
    match_expressions.sort();
    let match_labels = s.match_labels.unwrap_or_default();
    check_labels(&match_labels, &format!("{at}.matchLabels"))?;
    Ok(LabelSelector { match_labels, match_expressions })
}

fn protocol(p: Option<&str>) -> Result<Protocol, String> {
    match p {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(format!("protocol {other:?} is not TCP, UDP or SCTP")),
    }
}

pub(super) fn port_number(n: i64, field: &str) -> Result<u16, String> {
    u16::try_from(n).ok().filter(|&p| p != 0).ok_or_else(|| format!("{field} {n} is not in 1-65535"))
}

fn port_ref(v: IntOrString, field: &str) -> Result<PortRef, String> {
    match v {
        IntOrString::Int(n) => port_number(n, field).map(PortRef::Number),
        IntOrString::Str(s) => {
            check_port_name(&s).map_err(|e| format!("{field}: {e}"))?;
            Ok(PortRef::Name(s))
        }
    }
}

/// An IANA_SVC_NAME: 1-15 of [a-z0-9-], at least one letter, no leading,
/// trailing or double '-'.
pub(super) fn check_port_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!("port name {s:?} is not a valid IANA service name"))
    }
}

/// Sorted map of labels, for building test objects, manifests and models.
pub fn labels<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Labels {
    pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "
apiVersion: v1
kind: Node
metadata:
  name: node-1
  labels: {kubernetes.io/hostname: node-1}
spec:
  podCIDR: 10.244.1.0/24
  podCIDRs: [10.244.1.0/24]
  taints: []
status:
  addresses:
  - {type: Hostname, address: node-1}
  - {type: InternalIP, address: fd00::11}
  - {type: InternalIP, address: 172.31.0.11}
  capacity: {cpu: '2'}
";

    fn node(name: &str, cidr: &str, ip: &str) -> Node {
        Node {
            name: name.into(),
            labels: Labels::new(),
            pod_cidr: Some(cidr.parse().unwrap()),
            pod_cidr6: None,
            internal_ip: Some(ip.parse().unwrap()),
            addresses: vec![],
            internal_ip6: None,
        }
    }

    fn one(text: &str) -> Object {
        let mut objs = parse_manifests(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(objs.len(), 1, "{objs:?}");
        objs.remove(0)
    }

    fn policy(spec: &str) -> NetworkPolicy {
        let text = format!("kind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n{spec}");
        match one(&text) {
            Object::NetworkPolicy(p) => Arc::unwrap_or_clone(p),
            other => panic!("{other:?}"),
        }
    }

    fn policy_err(spec: &str) -> String {
        let text = format!("kind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n{spec}");
        let r = parse_objects(&text).unwrap();
        match &r[..] {
            [Err(e)] => {
                assert_eq!(e.key.as_deref(), Some("NetworkPolicy x/p"));
                e.reason.clone()
            }
            other => panic!("expected one error for\n{spec}\ngot {other:?}"),
        }
    }

    #[test]
    fn a_node_with_unknown_fields() {
        // Both families of InternalIP, whichever comes first.
        let want = Node {
            labels: labels([("kubernetes.io/hostname", "node-1")]),
            addresses: vec!["fd00::11".parse().unwrap(), "172.31.0.11".parse().unwrap()],
            internal_ip6: "fd00::11".parse().ok(),
            ..node("node-1", "10.244.1.0/24", "172.31.0.11")
        };
        assert_eq!(one(NODE), Object::Node(want));
    }

    #[test]
    fn multi_document_files_and_lists() {
        let text = format!(
            "---\n{NODE}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: web, labels: {{team: a}}}}\n---\n\
             kind: List\nitems:\n- kind: Node\n  metadata: {{name: node-2}}\n  spec: {{podCIDR: 10.244.2.7/24}}\n\
             - kind: ConfigMap\n  metadata: {{name: ignored}}\n---\n"
        );
        let objs = parse_manifests(&text).unwrap();
        assert_eq!(objs.len(), 3);
        let Object::Namespace(ns) = &objs[1] else { panic!("{objs:?}") };
        assert_eq!(ns.labels, labels([("team", "a"), (NAMESPACE_NAME_LABEL, "web")]));
        // Host bits are dropped; no InternalIP means no gateway.
        let Object::Node(n2) = &objs[2] else { panic!("{objs:?}") };
        assert_eq!(*n2, Node { internal_ip: None, ..node("node-2", "10.244.2.0/24", "0.0.0.0") });
    }

    #[test]
    fn one_bad_object_does_not_spoil_its_file() {
        let text = format!(
            "{NODE}---\nkind: Node\nmetadata: {{name: n}}\nspec: {{podCIDR: nope}}\n---\nmetadata: {{}}\n"
        );
        let r = parse_objects(&text).unwrap();
        assert_eq!(r.len(), 3);
        assert!(r[0].is_ok());
        let e = r[1].as_ref().unwrap_err();
        assert_eq!(e.key.as_deref(), Some("Node n"));
        assert!(e.reason.contains("podCIDR"), "{e}");
        assert_eq!(r[2].as_ref().unwrap_err().key, None);
        // Not YAML: the whole file.
        assert!(parse_objects("kind: Node\nmetadata: {name: [").is_err());
        assert!(parse_objects("- just\n- a list\n").unwrap()[0].is_err());
        assert_eq!(parse_manifests("").unwrap(), []);
        assert_eq!(parse_manifests("# only a comment\n").unwrap(), []);
    }

    #[test]
    fn pods_with_ports_and_addresses() {
        let text = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  nodeName: node-1
  containers:
  - name: c
    image: busybox
    ports:
    - {name: serve-80-tcp, containerPort: 80}
    - {name: serve-80-udp, containerPort: 80, protocol: UDP}
  - name: d
    ports: [{containerPort: 9000, protocol: SCTP}]
status:
  podIP: fd00::5
  podIPs: [{ip: fd00::5}, {ip: 10.244.1.5}]
";
        let Object::Pod(p) = one(text) else { panic!() };
        assert_eq!(p.key(), "x/a");
        assert_eq!(p.node.as_deref(), Some("node-1"));
        assert_eq!(p.ip, Some(Ipv4Addr::new(10, 244, 1, 5)));
        assert_eq!(p.ports.len(), 3);
        let name = |n: &str| PortRef::Name(n.into());
        assert_eq!(p.resolve_port(&name("serve-80-udp"), Protocol::Udp), Some(80));
        assert_eq!(p.resolve_port(&name("serve-80-udp"), Protocol::Tcp), None, "the protocol must match too");
        assert_eq!(p.resolve_port(&PortRef::Number(81), Protocol::Tcp), Some(81));
        let Object::Pod(bare) = one("kind: Pod\nmetadata: {name: b}\n") else { panic!() };
        assert_eq!((bare.namespace.as_str(), bare.ip, bare.node.as_deref()), ("default", None, None));
        for bad in [
            "kind: Pod\nmetadata: {name: B}\n",
            "kind: Pod\nmetadata: {name: b}\nspec: {containers: [{ports: [{containerPort: 70000}]}]}\n",
            "kind: Pod\nmetadata: {name: b}\nspec: {containers: [{ports: [{containerPort: 80, protocol: tcp}]}]}\n",
            "kind: Pod\nmetadata: {name: b}\nspec: {containers: [{ports: [{containerPort: 80, name: '80'}]}]}\n",
        ] {
            assert!(parse_manifests(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn terminal_pods_have_no_address() {
        let pod = |phase: &str| {
            let text = format!(
                "kind: Pod\nmetadata: {{name: b, namespace: x}}\nspec: {{nodeName: node-1}}\n\
                 status: {{phase: {phase}, podIP: 10.244.1.9}}\n"
            );
            match one(&text) {
                Object::Pod(p) => p.ip,
                other => panic!("{other:?}"),
            }
        };
        let ip = Some("10.244.1.9".parse().unwrap());
        assert_eq!((pod("Running"), pod("Pending"), pod("Unknown")), (ip, ip, ip));
        assert_eq!((pod("Succeeded"), pod("Failed")), (None, None));
    }

    #[test]
    fn pod_cidr_from_pod_cidr_or_pod_cidrs() {
        let cidr = |spec: &str| {
            let r = parse_objects(&format!("kind: Node\nmetadata: {{name: n}}\nspec: {spec}\n")).unwrap();
            match r.into_iter().next() {
                Some(Ok(Object::Node(n))) => Ok(n.pod_cidr.map(|c| c.to_string())),
                Some(Err(e)) => Err(e.reason),
                other => panic!("{other:?}"),
            }
        };
        let v4 = Ok(Some("10.244.3.0/24".to_string()));
        assert_eq!(cidr("{podCIDR: 10.244.3.0/24}"), v4);
        assert_eq!(cidr("{podCIDRs: [10.244.3.5/24]}"), v4);
        // IPv6-first dual stack: the IPv4 one is second.
        assert_eq!(
            cidr("{podCIDR: 'fd00:10:244:3::/64', podCIDRs: ['fd00:10:244:3::/64', 10.244.3.0/24]}"),
            v4
        );
        assert_eq!(cidr("{podCIDR: '', podCIDRs: []}"), Ok(None));
        assert_eq!(cidr("{podCIDRs: ['fd00::/64']}"), Ok(None));
        let e = cidr("{podCIDRs: [10.244.3.0/24, nope]}").unwrap_err();
        assert!(e.starts_with("spec.podCIDRs \"nope\""), "{e}");
    }

    #[test]
    fn serialized_objects_take_the_manifest_path() {
        let value = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x", "resourceVersion": "7"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        });
        let r = parse_serialized(&value);
        assert!(
            matches!(&r[..], [Ok(Object::NetworkPolicy(p))] if p.key() == "x/p" && p.ingress == Some(vec![]))
        );
        let mut bad = value.clone();
        bad["spec"]["policyTypes"] = serde_json::json!(["Sideways"]);
        let r = parse_serialized(&bad);
        assert!(matches!(&r[..], [Err(e)] if e.key.as_deref() == Some("NetworkPolicy x/p")), "{r:?}");
    }

    #[test]
    fn policy_types_default_as_the_api_server_does() {
        let p = policy("  podSelector: {}\n");
        assert_eq!((p.ingress, p.egress), (Some(vec![]), None), "deny all ingress");
        let p = policy("  podSelector: {}\n  egress: [{}]\n");
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress, Some(vec![Rule::default()]), "[{{}}] allows everything");
        let p = policy("  podSelector: {}\n  egress: []\n");
        assert_eq!(p.egress, None, "an empty egress list does not isolate by default");
        let p = policy("  podSelector: {}\n  policyTypes: []\n");
        assert_eq!((p.ingress, p.egress), (Some(vec![]), None), "policyTypes: [] is defaulted like none");
        let p = policy("  podSelector: {}\n  policyTypes: [Egress]\n");
        assert_eq!((p.ingress, p.egress), (None, Some(vec![])), "deny all egress, ingress untouched");
        let p = policy("  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress: [{}]\n");
        assert_eq!((p.ingress, p.egress), (Some(vec![Rule::default()]), Some(vec![])));
        assert!(policy_err("  policyTypes: [Sideways]\n").contains("Sideways"));
        let Object::NetworkPolicy(empty) = one("kind: NetworkPolicy\nmetadata: {name: p}\n") else {
            panic!()
        };
        assert_eq!((empty.namespace.as_str(), empty.pod_selector.is_empty()), ("default", true));
    }

    #[test]
    fn peers_every_form() {
        let p = policy(
            "  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
    - namespaceSelector: {matchLabels: {ns: y}}
    - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y, z]}]}
      podSelector: {matchExpressions: [{key: pod, operator: Exists}]}
    - ipBlock: {cidr: 172.31.0.0/24, except: [172.31.0.100/32]}
    ports:
    - {port: 80}
    - {protocol: UDP, port: serve-81-udp}
    - {port: 8000, endPort: 8080}
    - {protocol: SCTP}
",
        );
        let rules = p.ingress.unwrap();
        let r = &rules[0];
        assert_eq!(r.peers.len(), 4);
        assert_eq!(
            r.peers[0],
            Peer::Pods { namespaces: None, pods: LabelSelector::of_labels([("pod", "b")]) },
            "podSelector alone: the policy's namespace"
        );
        assert_eq!(
            r.peers[1],
            Peer::Pods {
                namespaces: Some(LabelSelector::of_labels([("ns", "y")])),
                pods: LabelSelector::default()
            }
        );
        let Peer::Pods { namespaces: Some(ns), pods } = &r.peers[2] else { panic!("{:?}", r.peers[2]) };
        assert_eq!(ns.to_string(), "ns in (y,z)");
        assert_eq!(pods.to_string(), "pod");
        assert_eq!(
            r.peers[3],
            Peer::IpBlock {
                cidr: "172.31.0.0/24".parse().unwrap(),
                except: vec!["172.31.0.100/32".parse().unwrap()]
            }
        );
        assert_eq!(
            r.ports[0],
            PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Number(80)), end_port: None }
        );
        assert_eq!(r.ports[1].port, Some(PortRef::Name("serve-81-udp".into())));
        assert_eq!(r.ports[2].end_port, Some(8080));
        assert_eq!(r.ports[3], PolicyPort { protocol: Protocol::Sctp, port: None, end_port: None });
    }

    #[test]
    fn invalid_policies_say_where() {
        let cases = [
            ("  ingress: [{from: [{}]}]\n", "spec.ingress[0].from[0]: a peer needs"),
            ("  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]\n", "cannot be combined"),
            (
                "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n",
                "spec.ingress[0].from[0].ipBlock.cidr",
            ),
            ("  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/24]}}]}]\n", "not inside"),
            ("  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.0/16]}}]}]\n", "not inside"),
            ("  ingress: [{ports: [{port: 0}]}]\n", "spec.ingress[0].ports[0].port 0"),
            ("  ingress: [{ports: [{port: 90, endPort: 80}]}]\n", "below port"),
            ("  ingress: [{ports: [{port: http, endPort: 80}]}]\n", "numeric port"),
            ("  ingress: [{ports: [{endPort: 80}]}]\n", "needs a port"),
            ("  ingress: [{ports: [{protocol: ICMP}]}]\n", "ICMP"),
            ("  ingress: [{ports: [{port: Http_1}]}]\n", "IANA"),
            ("  podSelector: {matchExpressions: [{key: a, operator: In}]}\n", "needs values"),
            (
                "  podSelector: {matchExpressions: [{key: a, operator: Exists, values: [b]}]}\n",
                "takes no values",
            ),
        ];
        for (spec, want) in cases {
            let got = policy_err(spec);
            assert!(got.contains(want), "{spec}: {got:?} does not contain {want:?}");
        }
    }

    #[test]
    fn audit_annotation() {
        let text = |v: &str| {
            format!("kind: NetworkPolicy\nmetadata: {{name: p, namespace: x, annotations: {{weft.io/audit: {v}}}}}\n")
        };
        let Object::NetworkPolicy(p) = one(&text("'true'")) else { panic!() };
        assert!(p.audit);
        let Object::NetworkPolicy(p) = one(&text("'false'")) else { panic!() };
        assert!(!p.audit);
        assert!(!policy("  podSelector: {}\n").audit);
        assert!(parse_manifests(&text("'yes'")).is_err());
    }

    #[test]
    fn labels_the_api_would_reject_are_reported_by_object() {
        let cases = [
            ("kind: Pod\nmetadata: {name: a, namespace: x, labels: {\"bad key\": v}}", "metadata.labels"),
            ("kind: Namespace\nmetadata: {name: n, labels: {app: \"-v\"}}", "metadata.labels[app]"),
            (
                "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: \"a b\"}}",
                "spec.podSelector.matchLabels[app]",
            ),
            (
                "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector:\n    matchExpressions: [{key: \"Example.com/a\", operator: Exists}]",
                "spec.podSelector.matchExpressions[0]",
            ),
        ];
        for (yaml, field) in cases {
            let objects = parse_objects(&format!("apiVersion: v1\n{yaml}\n")).unwrap();
            let [Err(e)] = objects.as_slice() else { panic!("{yaml}: {objects:?}") };
            assert!(e.key.is_some() && e.reason.contains(field), "{yaml}: {e}");
        }
    }

    #[test]
    fn the_same_selector_in_another_order_is_equal() {
        let a = policy("  podSelector: {matchExpressions: [{key: b, operator: Exists}, {key: a, operator: In, values: [y, x]}]}\n");
        let b = policy("  podSelector: {matchExpressions: [{key: a, operator: In, values: [x, y]}, {key: b, operator: Exists}]}\n");
        assert_eq!(a, b);
    }
}
