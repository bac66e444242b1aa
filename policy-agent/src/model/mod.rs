//! The agent's view of the cluster: the few fields of Nodes, Namespaces,
//! Pods, NetworkPolicies and ClusterNetworkPolicies that routing and the
//! policy compiler read. Services are not here: policy applies to pods after
//! kube-proxy's DNAT.
//!
//! No k8s-openapi here: `manifest` declares small serde structs for exactly
//! these fields (ignoring every other field, as a client of a newer API
//! server must) and validates them into the types below, so the compiler only
//! ever sees well-formed objects. The same parser takes YAML files (the
//! testbed) and the objects the API server serves (`source::kube`).

pub mod cluster_policy;
mod cnp_manifest;
pub mod label_syntax;
pub mod manifest;
pub mod selector;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Bound;
use std::sync::Arc;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

pub use cluster_policy::{
    Action, ClusterNetworkPolicy, CnpPeer, CnpPort, CnpRule, NamespacedPods, Subject, Tier,
};
pub use manifest::{parse_manifests, parse_objects, Object};
pub use selector::{LabelSelector, Labels, Operator, Requirement};

/// One node as the agent needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    /// metadata.labels: what a ClusterNetworkPolicy `nodes` peer selects on.
    pub labels: Labels,
    /// The first IPv4 CIDR of spec.podCIDR and spec.podCIDRs, normalised to its
    /// network address; None if there is none.
    pub pod_cidr: Option<Ipv4Network>,
    /// The first IPv6 CIDR of spec.podCIDRs (dual-stack and IPv6 clusters).
    pub pod_cidr6: Option<Ipv6Network>,
    /// The first IPv4 InternalIP in status.addresses.
    pub internal_ip: Option<Ipv4Addr>,
    /// Every IP address of status.addresses, in order.
    pub addresses: Vec<IpAddr>,
    /// The first IPv6 InternalIP in status.addresses (the gateway of the
    /// node's IPv6 pod CIDR in host-gw mode).
    pub internal_ip6: Option<Ipv6Addr>,
}

impl Node {
    /// Its pod CIDRs, IPv4 first: one, or one per family on a dual-stack node.
    pub fn pod_cidrs(&self) -> Vec<IpNetwork> {
        let v4 = self.pod_cidr.map(IpNetwork::V4);
        v4.into_iter().chain(self.pod_cidr6.map(IpNetwork::V6)).collect()
    }
}

/// A namespace and its labels (`kubernetes.io/metadata.name` always among them,
/// as the API server guarantees).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// A transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// The lower-case name iptables and ipset use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// A port given by number or by the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => f.write_str(n),
        }
    }
}

/// A container port a pod declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// spec.nodeName: None until scheduled.
    pub node: Option<String>,
    /// The first IPv4 address of status.podIP / status.podIPs; None until the
    /// kubelet has reported it, and once the pod is terminal (phase Succeeded
    /// or Failed): only pods with an address that is theirs count for policy.
    pub ip: Option<Ipv4Addr>,
    /// The first IPv6 address of status.podIPs, on the same terms as `ip`.
    pub ip6: Option<Ipv6Addr>,
    /// spec.hostNetwork: such a pod has the node's address and no policy applies to it.
    pub host_network: bool,
    /// Every container's ports, in order.
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    /// "namespace/name".
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The number `port` stands for on this pod for `protocol`: a number as
    /// is, a name by the first container port of that name and protocol.
    pub fn resolve_port(&self, port: &PortRef, protocol: Protocol) -> Option<u16> {
        match port {
            PortRef::Number(n) => Some(*n),
            PortRef::Name(name) => self
                .ports
                .iter()
                .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.port),
        }
    }
}

/// A port of a NetworkPolicy rule: one port, a range (`end_port`), or every
/// port of the protocol (`port` None).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PolicyPort {
    pub protocol: Protocol,
    pub port: Option<PortRef>,
    /// Only with a numeric `port`, and >= it (checked at parse).
    pub end_port: Option<u16>,
}

/// A peer of a NetworkPolicy rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Peer {
    /// Pods matching `pods` in the namespaces matching `namespaces`, or in the
    /// policy's own namespace when `namespaces` is None.
    Pods { namespaces: Option<LabelSelector>, pods: LabelSelector },
    /// Addresses in `cidr` but in none of `except`.
    IpBlock { cidr: IpNetwork, except: Vec<IpNetwork> },
}

/// One ingress or egress rule: traffic from/to any of `peers` (every peer if
/// empty) on any of `ports` (every port if empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PolicyPort>,
}

/// A NetworkPolicy, validated, with its policyTypes resolved: `ingress` is
/// Some exactly when the policy isolates the selected pods for ingress (then
/// an empty list allows nothing), likewise `egress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
    /// Annotated `weft.io/audit: "true"`: enforced only as a log of what it
    /// would deny; such traffic passes.
    pub audit: bool,
}

impl NetworkPolicy {
    /// "namespace/name".
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The range of the keys ("ns/name") of namespace `ns`'s objects: no
/// namespace name holds a '/', and '0' follows it.
pub fn namespace_keys(ns: &str) -> (Bound<String>, Bound<String>) {
    (Bound::Included(format!("{ns}/")), Bound::Excluded(format!("{ns}0")))
}

/// The cluster state the agent acts on. Namespaced objects are keyed "ns/name".
///
/// Pods and policies, the kinds that number in the thousands, are shared
/// (`Arc`): a model is copied for each change (the pod reports laid over
/// it, the snapshot kept), and two models compared to find what changed;
/// shared objects make the copy a pointer each and the comparison of an
/// unchanged object a pointer comparison. The policies, which a pod change
/// leaves as they are, are shared as a whole too: a copy of the model
/// copies none of them, and a comparison of two models that share them
/// looks at none (`Arc::make_mut` to change them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Model {
    pub nodes: BTreeMap<String, Node>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<String, Arc<Pod>>,
    pub policies: Arc<BTreeMap<String, Arc<NetworkPolicy>>>,
    /// ClusterNetworkPolicies by name (cluster-scoped).
    pub cluster_policies: BTreeMap<String, ClusterNetworkPolicy>,
}

impl Model {
    /// The model of the manifests in `text`, for tests: panics (with the text)
    /// unless every object parses and is declared once.
    #[cfg(test)]
    pub(crate) fn of_manifests(text: &str) -> Model {
        let mut m = Model::default();
        for o in manifest::parse_manifests(text).unwrap_or_else(|e| panic!("{e}\n{text}")) {
            let key = o.key();
            assert!(m.insert(o), "{key} declared twice");
        }
        m
    }

    /// Adds `obj`; false (and `obj` dropped) if an object of that kind and
    /// key is already present, which stays.
    pub fn insert(&mut self, obj: Object) -> bool {
        fn put<T>(map: &mut BTreeMap<String, T>, key: String, v: T) -> bool {
            match map.entry(key) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(v);
                    true
                }
                std::collections::btree_map::Entry::Occupied(_) => false,
            }
        }
        match obj {
            Object::Node(n) => put(&mut self.nodes, n.name.clone(), n),
            Object::Namespace(n) => put(&mut self.namespaces, n.name.clone(), n),
            Object::Pod(p) => put(&mut self.pods, p.key(), p),
            Object::NetworkPolicy(p) => put(Arc::make_mut(&mut self.policies), p.key(), p),
            Object::ClusterNetworkPolicy(p) => put(&mut self.cluster_policies, p.name.clone(), p),
        }
    }

    /// Puts `obj` in, in place of the object of its kind and key if any.
    pub fn replace(&mut self, obj: Object) {
        match obj {
            Object::Node(n) => drop(self.nodes.insert(n.name.clone(), n)),
            Object::Namespace(n) => drop(self.namespaces.insert(n.name.clone(), n)),
            Object::Pod(p) => drop(self.pods.insert(p.key(), p)),
            Object::NetworkPolicy(p) => drop(Arc::make_mut(&mut self.policies).insert(p.key(), p)),
            Object::ClusterNetworkPolicy(p) => drop(self.cluster_policies.insert(p.name.clone(), p)),
        }
    }

    /// Takes out the object of `obj`'s kind and key.
    pub fn remove(&mut self, obj: &Object) {
        match obj {
            Object::Node(n) => drop(self.nodes.remove(&n.name)),
            Object::Namespace(n) => drop(self.namespaces.remove(&n.name)),
            Object::Pod(p) => drop(self.pods.remove(&p.key())),
            Object::NetworkPolicy(p) => drop(Arc::make_mut(&mut self.policies).remove(&p.key())),
            Object::ClusterNetworkPolicy(p) => drop(self.cluster_policies.remove(&p.name)),
        }
    }

    /// The policies of namespace `ns`, by key (`namespace_keys`), never a look at all.
    pub fn namespace_policies<'m>(
        &'m self,
        ns: &str,
    ) -> impl Iterator<Item = (&'m String, &'m Arc<NetworkPolicy>)> + 'm {
        self.policies.range::<String, _>(namespace_keys(ns))
    }

    /// The labels of namespace `name`; a namespace with no manifest has only
    /// the `kubernetes.io/metadata.name` label the API server would give it.
    /// Borrowed when the namespace has a manifest: selectors are matched
    /// against them per pod and per connection, never worth a copy.
    pub fn namespace_labels(&self, name: &str) -> std::borrow::Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(ns) => std::borrow::Cow::Borrowed(&ns.labels),
            None => std::borrow::Cow::Owned(Labels::from([(
                manifest::NAMESPACE_NAME_LABEL.to_string(),
                name.to_string(),
            )])),
        }
    }

    /// The IPv4 address of pod IP `ip`'s pod, if a pod has it.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.pods.values().map(|p| &**p).find(|p| p.ip.map(IpAddr::V4) == Some(ip))
    }
}

/// A model of `objects`; of two with the same kind and key, the first (as `insert`).
impl FromIterator<Object> for Model {
    fn from_iter<I: IntoIterator<Item = Object>>(objects: I) -> Model {
        let mut m = Model::default();
        for o in objects {
            m.insert(o);
        }
        m
    }
}

/// A problem with one manifest file or one object in it; that object (or file)
/// is skipped, and its last good version, if any, kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceError {
    pub file: String,
    pub reason: String,
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file, self.reason)
    }
}

/// What a source produced at one moment: the model, its generation, and the
/// files or objects it had to skip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// An opaque version of the source's state: for a directory, a hash of its
    /// manifest files' names and bytes, so the testbed computes it without parsing.
    pub generation: String,
    pub model: Model,
    pub errors: Vec<SourceError>,
}
