//! Conformance case files (`e2e/cases/*.yaml`): the serde structs of the
//! format and their validation into a `Case`. Validation replays the case's
//! steps against a model of which namespaces, pods, services and policies
//! exist at each step, so a typo (a pod in a matrix that does not exist, a
//! probe of a service that was never created, a NodePort nobody serves, a
//! manifest the agent would reject) fails when the file is loaded, naming the
//! file and the field, not minutes later as a puzzling probe result. Pure: no
//! testbed, no root.
//!
//! Where the case format leaves a detail open, the runner reads it so:
//! - a listed pod without `labels` gets `pod: <name>`, without `ports` the
//!   default ports; a listed pod takes its round-robin slot even when pinned;
//! - a pod's namespace must be among the case's namespaces (or, in a step,
//!   exist by then), as the API server requires;
//! - a Pod manifest naming an existing pod only replaces its labels; a new one
//!   goes to `spec.nodeName` (node-N) or the next round-robin node and serves
//!   its container ports, or the default ports if it declares none;
//! - a Service manifest without `spec.clusterIP` gets 10.96.101.N (N counting
//!   such Services in the case), as an API server would allocate one;
//! - deleting a Namespace deletes its pods, policies and services, as the
//!   namespace controller does; deleting what does not exist is an error;
//! - a probe of `svc/NS/NAME` without `port` uses the service's only port of
//!   the probe's protocol; a NodePort probe needs a service with that nodePort.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use weft_agent::model::manifest::NAMESPACE_NAME_LABEL;
use weft_agent::model::{parse_manifests, ContainerPort, Labels, Object, PortRef, Protocol};

use super::matrix::Matrix;
use crate::error::{E2eError, Result};
use crate::manifests::{self, serve_ports, ServiceManifest};
use crate::pods::{split_pod_name, DEFAULT_PORTS};
use crate::probe::Proto;
use crate::services;

/// Nodes when a case does not say.
pub const DEFAULT_NODES: u32 = 2;
/// Namespaces when a case does not say, each labelled `ns: <name>`.
pub const DEFAULT_NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// Pods in every namespace when a case does not say, each labelled `pod: <name>`.
pub const DEFAULT_PODS: [&str; 3] = ["a", "b", "c"];
/// Cluster IPs of the case's `services:` list: 10.96.100.1, .2, ... in order.
const LISTED_SERVICE_IPS: [u8; 3] = [10, 96, 100];
/// Cluster IPs for Services applied in steps without `spec.clusterIP`.
const APPLIED_SERVICE_IPS: [u8; 3] = [10, 96, 101];
/// The service CIDR (10.96.0.0/12): every cluster IP must be in it, since
/// the nodes route only it towards the lan.
const SERVICE_NET: (Ipv4Addr, u32) = (Ipv4Addr::new(10, 96, 0, 0), 12);
/// The NodePort range of a default API server.
const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;
/// Most services of one kind per case (the last octet of their cluster IP).
const MAX_SERVICES: usize = 254;

/// A validated case, ready to run.
#[derive(Debug, Clone)]
pub struct Case {
    pub file: PathBuf,
    pub name: String,
    pub description: String,
    pub nodes: u32,
    /// In listing order; labels include `kubernetes.io/metadata.name`.
    pub namespaces: Vec<CaseNamespace>,
    /// The pods at the start, in listing order, each with its node.
    pub pods: Vec<CasePod>,
    /// The services at the start.
    pub services: Vec<ServiceManifest>,
    pub steps: Vec<Step>,
}

/// A namespace and its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseNamespace {
    pub name: String,
    pub labels: Labels,
}

/// A pod: "ns/name", its node, labels and container ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasePod {
    pub name: String,
    pub node: u32,
    pub labels: Labels,
    pub ports: Vec<ContainerPort>,
}

/// One step: its changes in order (the `apply` list's, then the `delete`
/// list's), then a wait for the agents, then its probes.
#[derive(Debug, Clone)]
pub struct Step {
    pub changes: Vec<Change>,
    pub probes: Vec<Probe>,
}

/// One change of cluster state, resolved at load time (whether a Pod manifest
/// creates a pod or relabels one depends on the pods of that step).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create or replace a Namespace, Service, NetworkPolicy or ClusterNetworkPolicy: `yaml` is one object.
    Apply { key: String, yaml: String },
    /// Create a pod (CNI ADD, workload, manifest).
    AddPod(CasePod),
    /// Replace an existing pod's labels.
    Relabel { pod: String, labels: Labels },
    /// Delete a pod (workload, CNI DEL, manifest).
    DeletePod(String),
    /// Delete a NetworkPolicy, ClusterNetworkPolicy, Service or Namespace manifest.
    Delete { kind: &'static str, namespace: Option<String>, name: String },
}

/// A probe and what it must show.
#[derive(Debug, Clone)]
pub struct Probe {
    pub proto: Proto,
    pub kind: ProbeKind,
}

#[derive(Debug, Clone)]
pub enum ProbeKind {
    /// Every row pod to every column pod on `port`.
    Matrix { port: u16, expect: Matrix },
    /// One connection; `allow` true: it must connect, false: it must be blocked.
    Single { from: Source, to: Target, allow: bool },
}

/// Where a single probe starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Pod(String),
    /// The external client (172.31.0.100), not a node.
    Ext,
    /// Node N's own netns.
    Node(u32),
}

/// What a single probe connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Pod {
        name: String,
        port: u16,
    },
    /// A service's cluster IP and one of its ports.
    Service {
        namespace: String,
        name: String,
        cluster_ip: Ipv4Addr,
        port: u16,
    },
    /// Node N's lan address and a NodePort.
    NodePort {
        node: u32,
        port: u16,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Pod(p) => f.write_str(p),
            Source::Ext => f.write_str("ext"),
            Source::Node(n) => write!(f, "node/{n}"),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Pod { name, port } => write!(f, "{name}:{port}"),
            Target::Service { namespace, name, port, .. } => write!(f, "svc/{namespace}/{name}:{port}"),
            Target::NodePort { node, port } => write!(f, "nodeport/{node}/{port}"),
        }
    }
}

impl Probe {
    /// How many verdicts it checks: a matrix's cells off the diagonal and not `?`, or one.
    pub fn verdicts(&self) -> usize {
        match &self.kind {
            ProbeKind::Matrix { expect, .. } => expect
                .rows
                .iter()
                .enumerate()
                .flat_map(|(r, from)| expect.cols.iter().enumerate().map(move |(c, to)| (r, c, from == to)))
                .filter(|&(r, c, diagonal)| !diagonal && expect.cells[r][c] != super::matrix::Cell::Any)
                .count(),
            ProbeKind::Single { .. } => 1,
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = proto_name(self.proto);
        match &self.kind {
            ProbeKind::Matrix { port, .. } => write!(f, "matrix {proto} port {port}"),
            ProbeKind::Single { from, to, allow } => {
                write!(f, "{from} -> {to} {proto}, expect {}", if *allow { "allow" } else { "deny" })
            }
        }
    }
}

/// "TCP" or "UDP".
pub fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
    }
}

// ---- the file format

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    nodes: Option<u32>,
    #[serde(default)]
    namespaces: Option<Ordered<Option<Labels>>>,
    #[serde(default)]
    pods: Option<Vec<RawPod>>,
    #[serde(default)]
    services: Vec<RawService>,
    steps: Vec<RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPod {
    name: String,
    #[serde(default)]
    labels: Option<Labels>,
    #[serde(default)]
    node: Option<u32>,
    #[serde(default)]
    ports: Option<Vec<RawPort>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    #[serde(default)]
    name: Option<String>,
    port: u16,
    #[serde(default)]
    protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawService {
    name: String,
    namespace: String,
    #[serde(default)]
    selector: Labels,
    port: u16,
    #[serde(default)]
    target_port: Option<NumberOrName>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    node_port: Option<u16>,
    #[serde(default)]
    external_traffic_policy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NumberOrName {
    Number(u16),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(default)]
    apply: Vec<String>,
    #[serde(default)]
    delete: Vec<RawDelete>,
    #[serde(default)]
    probe: Vec<RawProbe>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelete {
    kind: String,
    #[serde(default)]
    namespace: Option<String>,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    protocol: Option<String>,
    expect: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
}

/// A mapping whose keys keep their order (namespaces are listed in the order
/// the default pods are placed in).
#[derive(Debug)]
struct Ordered<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Ordered<T>, A::Error> {
                let mut out: Vec<(String, T)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, T>()? {
                    if out.iter().any(|(have, _)| *have == k) {
                        return Err(serde::de::Error::custom(format!("{k:?} appears twice")));
                    }
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

// ---- validation

/// Parses and validates the case in `text`, read from `file` (named in errors).
pub fn parse_case(text: &str, file: &Path) -> Result<Case> {
    let bad = |reason: String| E2eError::Case { file: file.to_path_buf(), reason };
    let raw: RawCase = serde_norway::from_str(text).map_err(|e| bad(e.to_string()))?;
    validate(raw, file).map_err(bad)
}

/// What exists at one point of a case, as validation replays it.
#[derive(Debug, Default)]
struct World {
    nodes: u32,
    namespaces: BTreeSet<String>,
    /// Pod names, in creation order.
    pods: Vec<String>,
    /// Pods placed so far (round-robin continues from here).
    placed: usize,
    services: BTreeMap<String, Svc>,
    policies: BTreeSet<String>,
    /// ClusterNetworkPolicy names.
    cluster_policies: BTreeSet<String>,
    /// Services applied in steps that got a cluster IP from us.
    assigned_ips: usize,
}

#[derive(Debug, Clone)]
struct Svc {
    cluster_ip: Ipv4Addr,
    /// (port, protocol, nodePort)
    ports: Vec<(u16, Protocol, Option<u16>)>,
}

impl World {
    fn has_pod(&self, name: &str) -> bool {
        self.pods.iter().any(|p| p == name)
    }

    /// The node a new pod goes to: `pin`, or the next in round-robin order.
    fn place(&mut self, pin: Option<u32>, at: &str) -> std::result::Result<u32, String> {
        let node = match pin {
            Some(n) if n == 0 || n > self.nodes => {
                return Err(format!("{at}: node {n} does not exist (the case has nodes 1..={})", self.nodes))
            }
            Some(n) => n,
            None => (self.placed as u32 % self.nodes) + 1,
        };
        self.placed += 1;
        Ok(node)
    }

    fn node_port_taken(&self, np: u16) -> Option<&str> {
        self.services.iter().find(|(_, s)| s.ports.iter().any(|p| p.2 == Some(np))).map(|(k, _)| k.as_str())
    }

    /// Records service `key`, checking its cluster IP and node ports against the others.
    fn add_service(&mut self, key: String, svc: Svc, at: &str) -> std::result::Result<(), String> {
        if !in_service_net(svc.cluster_ip) {
            return Err(format!(
                "{at}: cluster IP {} is outside the service CIDR 10.96.0.0/12",
                svc.cluster_ip
            ));
        }
        // A Service applied again replaces itself: its own IP and ports do not clash.
        self.services.remove(&key);
        let clash = self.services.iter().find(|(_, s)| s.cluster_ip == svc.cluster_ip);
        if let Some((other, _)) = clash {
            return Err(format!("{at}: cluster IP {} is already service {other}'s", svc.cluster_ip));
        }
        for &(_, _, np) in &svc.ports {
            let Some(np) = np else { continue };
            if !NODE_PORTS.contains(&np) {
                return Err(format!("{at}: nodePort {np} is outside 30000-32767"));
            }
            if let Some(other) = self.node_port_taken(np) {
                return Err(format!("{at}: nodePort {np} is already service {other}'s"));
            }
        }
        self.services.insert(key, svc);
        Ok(())
    }
}

fn in_service_net(ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - SERVICE_NET.1);
    u32::from(ip) & mask == u32::from(SERVICE_NET.0) & mask
}

/// A DNS label (namespace and object names of the testbed): 1-63 of [a-z0-9-],
/// not starting or ending with '-'.
fn check_dns_label(s: &str, at: &str) -> std::result::Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{at}: {s:?} is not a DNS label (1-63 of a-z, 0-9, '-')"))
    }
}

fn protocol(p: Option<&str>, at: &str) -> std::result::Result<Protocol, String> {
    match p {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some(other) => Err(format!("{at}: {other:?} is not TCP or UDP (the workloads serve only these)")),
    }
}

fn proto_of(p: Protocol) -> Proto {
    match p {
        Protocol::Udp => Proto::Udp,
        _ => Proto::Tcp,
    }
}

/// Parses `yaml` with the agent's own parser and expects exactly one object.
fn one_object(yaml: &str, at: &str) -> std::result::Result<Object, String> {
    let mut objs = parse_manifests(yaml).map_err(|e| format!("{at}: {e}"))?;
    match (objs.pop(), objs.is_empty()) {
        (Some(o), true) => Ok(o),
        (None, _) => Err(format!(
            "{at}: not an object weft reads (Namespace, Pod, Service, NetworkPolicy, ClusterNetworkPolicy)"
        )),
        (Some(_), false) => Err(format!("{at}: one object per document (no List)")),
    }
}

fn validate(raw: RawCase, file: &Path) -> std::result::Result<Case, String> {
    let name = raw.name.trim().to_string();
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return Err(format!("name: {:?} must be non-empty and without white space", raw.name));
    }
    let nodes = raw.nodes.unwrap_or(DEFAULT_NODES);
    crate::plan::check_nodes(nodes).map_err(|e| format!("nodes: {e}"))?;
    let mut world = World { nodes, ..World::default() };

    let namespaces = match raw.namespaces {
        None => DEFAULT_NAMESPACES
            .iter()
            .map(|n| (n.to_string(), Some(Labels::from([("ns".to_string(), n.to_string())]))))
            .collect(),
        Some(Ordered(list)) => list,
    };
    if namespaces.is_empty() {
        return Err("namespaces: a case needs at least one namespace".into());
    }
    let mut case_namespaces = Vec::new();
    for (ns, labels) in namespaces {
        check_dns_label(&ns, &format!("namespaces.{ns}"))?;
        let mut labels = labels.unwrap_or_default();
        // As the API server does, and nobody can change it.
        labels.insert(NAMESPACE_NAME_LABEL.into(), ns.clone());
        world.namespaces.insert(ns.clone());
        case_namespaces.push(CaseNamespace { name: ns, labels });
    }

    let raw_pods = match raw.pods {
        Some(p) => p,
        None => case_namespaces
            .iter()
            .flat_map(|ns| {
                DEFAULT_PODS.iter().map(|p| RawPod {
                    name: format!("{}/{p}", ns.name),
                    labels: None,
                    node: None,
                    ports: None,
                })
            })
            .collect(),
    };
    let mut pods = Vec::new();
    for (i, p) in raw_pods.into_iter().enumerate() {
        let pod = case_pod(p, &format!("pods[{i}]"), &mut world)?;
        pods.push(pod);
    }

    let mut services = Vec::new();
    if raw.services.len() > MAX_SERVICES {
        return Err(format!("services: at most {MAX_SERVICES}"));
    }
    for (i, s) in raw.services.into_iter().enumerate() {
        let at = format!("services[{i}]");
        let ip =
            Ipv4Addr::new(LISTED_SERVICE_IPS[0], LISTED_SERVICE_IPS[1], LISTED_SERVICE_IPS[2], i as u8 + 1);
        services.push(case_service(s, ip, &at, &mut world)?);
    }

    if raw.steps.is_empty() {
        return Err("steps: a case needs at least one step".into());
    }
    let mut steps = Vec::new();
    for (i, s) in raw.steps.into_iter().enumerate() {
        steps.push(step(s, &format!("steps[{i}]"), &mut world)?);
    }
    if steps.iter().all(|s| s.probes.is_empty()) {
        return Err("steps: no step has a probe, so the case checks nothing".into());
    }
    Ok(Case {
        file: file.to_path_buf(),
        name,
        description: raw.description.trim().to_string(),
        nodes,
        namespaces: case_namespaces,
        pods,
        services,
        steps,
    })
}

fn case_pod(p: RawPod, at: &str, world: &mut World) -> std::result::Result<CasePod, String> {
    let (ns, pod_name) = split_pod_name(&p.name).map_err(|e| format!("{at}.name: {e}"))?;
    if !world.namespaces.contains(ns) {
        return Err(format!(
            "{at}.name: namespace {ns:?} of pod {} is not among the case's namespaces",
            p.name
        ));
    }
    if world.has_pod(&p.name) {
        return Err(format!("{at}.name: pod {} appears twice", p.name));
    }
    let node = world.place(p.node, &format!("{at}.node"))?;
    let labels = p.labels.unwrap_or_else(|| Labels::from([("pod".to_string(), pod_name.to_string())]));
    let ports = match p.ports {
        None => serve_ports(&DEFAULT_PORTS),
        Some(list) if list.is_empty() => {
            return Err(format!("{at}.ports: empty (leave it out for the default ports 80 and 81)"))
        }
        Some(list) => {
            let mut out = Vec::new();
            for (j, rp) in list.into_iter().enumerate() {
                let pat = format!("{at}.ports[{j}]");
                if rp.port == 0 {
                    return Err(format!("{pat}.port: 0 is not a port"));
                }
                let protocol = protocol(rp.protocol.as_deref(), &format!("{pat}.protocol"))?;
                out.push(ContainerPort { name: rp.name, port: rp.port, protocol });
            }
            out
        }
    };
    // The agent's parser judges the manifest the testbed will write (port names, labels).
    let doc = manifests::pod(ns, pod_name, &labels, node, &ports, None);
    one_object(&manifests::to_yaml(&doc), at)?;
    world.pods.push(p.name.clone());
    Ok(CasePod { name: p.name, node, labels, ports })
}

fn case_service(
    s: RawService,
    ip: Ipv4Addr,
    at: &str,
    world: &mut World,
) -> std::result::Result<ServiceManifest, String> {
    check_dns_label(&s.name, &format!("{at}.name"))?;
    if !world.namespaces.contains(&s.namespace) {
        return Err(format!("{at}.namespace: {:?} is not among the case's namespaces", s.namespace));
    }
    let key = format!("{}/{}", s.namespace, s.name);
    if world.services.contains_key(&key) {
        return Err(format!("{at}.name: service {key} appears twice"));
    }
    if s.selector.is_empty() {
        return Err(format!("{at}.selector: empty (a service without a selector has no endpoints)"));
    }
    if s.port == 0 {
        return Err(format!("{at}.port: 0 is not a port"));
    }
    let proto = protocol(s.protocol.as_deref(), &format!("{at}.protocol"))?;
    let target = match s.target_port {
        None => PortRef::Number(s.port),
        Some(NumberOrName::Number(0)) => return Err(format!("{at}.targetPort: 0 is not a port")),
        Some(NumberOrName::Number(n)) => PortRef::Number(n),
        Some(NumberOrName::Name(n)) => PortRef::Name(n),
    };
    let mut m = ServiceManifest::new(&s.namespace, &s.name, ip, &[]).port(s.port, proto, target);
    m.selector = s.selector;
    if let Some(np) = s.node_port {
        m = m.node_port(np);
    }
    match (s.external_traffic_policy.as_deref(), s.node_port) {
        (None | Some("Cluster"), _) => {}
        (Some("Local"), Some(_)) => m = m.local(),
        (Some("Local"), None) => {
            return Err(format!("{at}.externalTrafficPolicy: Local needs a nodePort"));
        }
        (Some(other), _) => {
            return Err(format!("{at}.externalTrafficPolicy: {other:?} is not Cluster or Local"))
        }
    }
    let value = serde_norway::from_str(&m.to_yaml()).map_err(|e| format!("{at}: {e}"))?;
    services::parse(value).map_err(|e| format!("{at}: {e}"))?;
    let svc = Svc { cluster_ip: ip, ports: vec![(s.port, proto, s.node_port)] };
    world.add_service(key, svc, at)?;
    Ok(m)
}

fn step(s: RawStep, at: &str, world: &mut World) -> std::result::Result<Step, String> {
    let mut changes = Vec::new();
    for (i, text) in s.apply.iter().enumerate() {
        apply(text, &format!("{at}.apply[{i}]"), world, &mut changes)?;
    }
    for (i, d) in s.delete.into_iter().enumerate() {
        delete(d, &format!("{at}.delete[{i}]"), world, &mut changes)?;
    }
    let mut probes = Vec::new();
    for (i, p) in s.probe.into_iter().enumerate() {
        probes.push(probe(p, &format!("{at}.probe[{i}]"), world)?);
    }
    if changes.is_empty() && probes.is_empty() {
        return Err(format!("{at}: an empty step (give apply, delete or probe)"));
    }
    Ok(Step { changes, probes })
}

/// The changes of one `apply` entry: one or more `---` documents.
fn apply(text: &str, at: &str, world: &mut World, out: &mut Vec<Change>) -> std::result::Result<(), String> {
    let mut n = 0;
    for (k, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let dat = if k == 0 { at.to_string() } else { format!("{at} (document {})", k + 1) };
        let mut value = Value::deserialize(doc).map_err(|e| format!("{dat}: not YAML: {e}"))?;
        if value.is_null() {
            continue;
        }
        n += 1;
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        if kind == "Service" && value.pointer("/spec/clusterIP").is_none() {
            // The API server would allocate one; deterministic here, so reruns match.
            world.assigned_ips += 1;
            if world.assigned_ips > MAX_SERVICES {
                return Err(format!("{dat}: too many Services without spec.clusterIP"));
            }
            let [a, b, c] = APPLIED_SERVICE_IPS;
            let ip = Ipv4Addr::new(a, b, c, world.assigned_ips as u8);
            match value.get_mut("spec").and_then(Value::as_object_mut) {
                Some(spec) => {
                    spec.insert("clusterIP".into(), Value::String(ip.to_string()));
                }
                None => return Err(format!("{dat}: a Service needs spec.ports")),
            }
        }
        let yaml = manifests::to_yaml(&value);
        let ns_exists = |ns: &str| {
            if world.namespaces.contains(ns) {
                Ok(())
            } else {
                Err(format!("{dat}: namespace {ns:?} does not exist at this step (apply a Namespace first)"))
            }
        };
        if services::is_service(&value) {
            let s = services::parse(value).map_err(|e| format!("{dat}: {e}"))?;
            ns_exists(&s.namespace)?;
            let Some(cluster_ip) = s.cluster_ip else {
                return Err(format!("{dat}: the runner needs an IPv4 spec.clusterIP (or none, to get one)"));
            };
            for (j, p) in s.ports.iter().enumerate() {
                if !matches!(p.protocol, Protocol::Tcp | Protocol::Udp) {
                    return Err(format!("{dat}: spec.ports[{j}].protocol: only TCP and UDP are served"));
                }
            }
            let ports = s.ports.iter().map(|p| (p.port, p.protocol, p.node_port)).collect();
            world.add_service(s.key(), Svc { cluster_ip, ports }, &dat)?;
            out.push(Change::Apply { key: format!("Service {}", s.key()), yaml });
            continue;
        }
        let obj = one_object(&yaml, &dat)?;
        match obj {
            Object::Namespace(ns) => {
                check_dns_label(&ns.name, &format!("{dat}: metadata.name"))?;
                world.namespaces.insert(ns.name.clone());
                out.push(Change::Apply { key: format!("Namespace {}", ns.name), yaml });
            }
            Object::NetworkPolicy(p) => {
                ns_exists(&p.namespace)?;
                world.policies.insert(p.key());
                out.push(Change::Apply { key: format!("NetworkPolicy {}", p.key()), yaml });
            }
            Object::ClusterNetworkPolicy(p) => {
                world.cluster_policies.insert(p.name.clone());
                out.push(Change::Apply { key: format!("ClusterNetworkPolicy {}", p.name), yaml });
            }
            Object::Pod(p) => {
                let p = std::sync::Arc::unwrap_or_clone(p);
                let name = p.key();
                ns_exists(&p.namespace)?;
                if world.has_pod(&name) {
                    out.push(Change::Relabel { pod: name, labels: p.labels });
                    continue;
                }
                let pin = match p.node.as_deref() {
                    None => None,
                    Some(node) => {
                        Some(node.strip_prefix("node-").and_then(|n| n.parse().ok()).ok_or_else(|| {
                            format!(
                                "{dat}: spec.nodeName {node:?} is not a testbed node (node-1, node-2, ...)"
                            )
                        })?)
                    }
                };
                let node = world.place(pin, &format!("{dat}: spec.nodeName"))?;
                let ports = if p.ports.is_empty() { serve_ports(&DEFAULT_PORTS) } else { p.ports };
                world.pods.push(name.clone());
                out.push(Change::AddPod(CasePod { name, node, labels: p.labels, ports }));
            }
            Object::Node(n) => return Err(format!("{dat}: Node {}: the testbed's nodes are fixed", n.name)),
        }
    }
    if n == 0 {
        return Err(format!("{at}: empty manifest"));
    }
    Ok(())
}

fn delete(
    d: RawDelete,
    at: &str,
    world: &mut World,
    out: &mut Vec<Change>,
) -> std::result::Result<(), String> {
    let need_ns = || {
        d.namespace
            .clone()
            .ok_or_else(|| format!("{at}.namespace: a {} is namespaced: give its namespace", d.kind))
    };
    let gone = |what: String| format!("{at}: {what} does not exist at this step");
    match d.kind.as_str() {
        "NetworkPolicy" => {
            let key = format!("{}/{}", need_ns()?, d.name);
            if !world.policies.remove(&key) {
                return Err(gone(format!("NetworkPolicy {key}")));
            }
            out.push(Change::Delete { kind: "NetworkPolicy", namespace: d.namespace, name: d.name });
        }
        "ClusterNetworkPolicy" => {
            if d.namespace.is_some() {
                return Err(format!(
                    "{at}.namespace: a ClusterNetworkPolicy is cluster-scoped (give only name)"
                ));
            }
            if !world.cluster_policies.remove(&d.name) {
                return Err(gone(format!("ClusterNetworkPolicy {}", d.name)));
            }
            out.push(Change::Delete { kind: "ClusterNetworkPolicy", namespace: None, name: d.name });
        }
        "Service" => {
            let key = format!("{}/{}", need_ns()?, d.name);
            if world.services.remove(&key).is_none() {
                return Err(gone(format!("Service {key}")));
            }
            out.push(Change::Delete { kind: "Service", namespace: d.namespace, name: d.name });
        }
        "Pod" => {
            let key = format!("{}/{}", need_ns()?, d.name);
            if !world.has_pod(&key) {
                return Err(gone(format!("Pod {key}")));
            }
            world.pods.retain(|p| *p != key);
            out.push(Change::DeletePod(key));
        }
        "Namespace" => {
            if d.namespace.is_some() {
                return Err(format!("{at}.namespace: a Namespace is not namespaced (give only name)"));
            }
            let ns = d.name;
            if !world.namespaces.remove(&ns) {
                return Err(gone(format!("Namespace {ns}")));
            }
            // As the namespace controller does: everything in it goes too.
            let prefix = format!("{ns}/");
            for key in world.policies.iter().filter(|k| k.starts_with(&prefix)) {
                let name = key[prefix.len()..].to_string();
                out.push(Change::Delete { kind: "NetworkPolicy", namespace: Some(ns.clone()), name });
            }
            for key in world.services.keys().filter(|k| k.starts_with(&prefix)) {
                let name = key[prefix.len()..].to_string();
                out.push(Change::Delete { kind: "Service", namespace: Some(ns.clone()), name });
            }
            for key in world.pods.iter().filter(|k| k.starts_with(&prefix)) {
                out.push(Change::DeletePod(key.clone()));
            }
            world.policies.retain(|k| !k.starts_with(&prefix));
            world.services.retain(|k, _| !k.starts_with(&prefix));
            world.pods.retain(|k| !k.starts_with(&prefix));
            out.push(Change::Delete { kind: "Namespace", namespace: None, name: ns });
        }
        other => {
            return Err(format!(
                "{at}.kind: {other:?} is not NetworkPolicy, ClusterNetworkPolicy, Service, Pod or Namespace"
            ))
        }
    }
    Ok(())
}

fn probe(p: RawProbe, at: &str, world: &World) -> std::result::Result<Probe, String> {
    let proto = proto_of(protocol(p.protocol.as_deref(), &format!("{at}.protocol"))?);
    let kind = match (p.from, p.to) {
        (None, None) => {
            let port = p.port.ok_or_else(|| format!("{at}.port: a matrix probe needs a port"))?;
            if port == 0 {
                return Err(format!("{at}.port: 0 is not a port"));
            }
            let expect = Matrix::parse(&p.expect).map_err(|e| format!("{at}.expect: {e}"))?;
            for pod in expect.pods() {
                if !world.has_pod(pod) {
                    return Err(format!("{at}.expect: {pod} is not a pod at this step"));
                }
            }
            ProbeKind::Matrix { port, expect }
        }
        (Some(from), Some(to)) => {
            let allow = match p.expect.trim() {
                "allow" => true,
                "deny" => false,
                other => return Err(format!("{at}.expect: {other:?} is not allow or deny")),
            };
            let from = source(&from, &format!("{at}.from"), world)?;
            let to = target(&to, p.port, proto, &format!("{at}.to"), world)?;
            if from == Source::Ext && !matches!(to, Target::NodePort { .. }) {
                return Err(format!(
                    "{at}: ext has no route to pod or cluster IPs (like a real external client); it probes only nodeport/N/PORT"
                ));
            }
            ProbeKind::Single { from, to, allow }
        }
        _ => return Err(format!("{at}: give both from and to (a single probe) or neither (a matrix probe)")),
    };
    Ok(Probe { proto, kind })
}

fn node_number(s: &str, at: &str, world: &World) -> std::result::Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{at}: {s:?} is not a node number"))?;
    if n == 0 || n > world.nodes {
        return Err(format!("{at}: node {n} does not exist (the case has nodes 1..={})", world.nodes));
    }
    Ok(n)
}

fn source(s: &str, at: &str, world: &World) -> std::result::Result<Source, String> {
    if s == "ext" {
        return Ok(Source::Ext);
    }
    if let Some(n) = s.strip_prefix("node/") {
        return Ok(Source::Node(node_number(n, at, world)?));
    }
    split_pod_name(s).map_err(|e| format!("{at}: {s:?} is not ext, node/N or NS/POD: {e}"))?;
    if !world.has_pod(s) {
        return Err(format!("{at}: {s} is not a pod at this step"));
    }
    Ok(Source::Pod(s.to_string()))
}

fn target(
    s: &str,
    port: Option<u16>,
    proto: Proto,
    at: &str,
    world: &World,
) -> std::result::Result<Target, String> {
    let want = match proto {
        Proto::Tcp => Protocol::Tcp,
        Proto::Udp => Protocol::Udp,
    };
    if let Some(rest) = s.strip_prefix("svc/") {
        let (ns, name) =
            rest.split_once('/').ok_or_else(|| format!("{at}: {s:?} is not svc/NAMESPACE/NAME"))?;
        let key = format!("{ns}/{name}");
        let svc = world
            .services
            .get(&key)
            .ok_or_else(|| format!("{at}: service {key} does not exist at this step"))?;
        let ports: Vec<u16> = svc.ports.iter().filter(|p| p.1 == want).map(|p| p.0).collect();
        let port = match (port, ports.as_slice()) {
            (Some(p), _) if ports.contains(&p) => p,
            (Some(p), _) => {
                return Err(format!("{at}: service {key} has no {} port {p}", proto_name(proto)));
            }
            (None, [only]) => *only,
            (None, []) => return Err(format!("{at}: service {key} has no {} port", proto_name(proto))),
            (None, _) => {
                return Err(format!("{at}: service {key} has several {} ports: give port", proto_name(proto)))
            }
        };
        return Ok(Target::Service {
            namespace: ns.into(),
            name: name.into(),
            cluster_ip: svc.cluster_ip,
            port,
        });
    }
    if let Some(rest) = s.strip_prefix("nodeport/") {
        let (node, np) = rest.split_once('/').ok_or_else(|| format!("{at}: {s:?} is not nodeport/N/PORT"))?;
        let node = node_number(node, at, world)?;
        let np: u16 = np.parse().map_err(|_| format!("{at}: {np:?} is not a port"))?;
        if port.is_some() {
            return Err(format!("{at}: a nodeport target carries its port; leave out `port`"));
        }
        let served = world.services.values().flat_map(|s| &s.ports).any(|p| p.2 == Some(np) && p.1 == want);
        if !served {
            return Err(format!("{at}: no service has {} nodePort {np} at this step", proto_name(proto)));
        }
        return Ok(Target::NodePort { node, port: np });
    }
    split_pod_name(s)
        .map_err(|e| format!("{at}: {s:?} is not svc/NS/NAME, nodeport/N/PORT or NS/POD: {e}"))?;
    if !world.has_pod(s) {
        return Err(format!("{at}: {s} is not a pod at this step"));
    }
    let port = port.filter(|&p| p != 0).ok_or_else(|| format!("{at}: a probe of a pod needs `port`"))?;
    Ok(Target::Pod { name: s.into(), port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::TrafficPolicy;

    fn parse(text: &str) -> std::result::Result<Case, String> {
        parse_case(text, Path::new("cases/t.yaml")).map_err(|e| e.to_string())
    }

    /// A case `name: a` + `head`, whose one step applies `doc` (a block
    /// scalar, so its lines stay lines) and then has `tail` (probe etc.).
    fn applying(head: &str, doc: &str, tail: &str) -> String {
        let doc: String = doc.lines().map(|l| format!("        {l}\n")).collect();
        format!("name: a\n{head}steps:\n  - apply:\n      - |\n{doc}{tail}")
    }

    const MATRIX_3: &str = "
    probe:
      - port: 80
        expect: |
          x/a x/b y/a
          x/a . . .
          x/b . . .
          y/a . . .
";

    #[test]
    fn defaults() {
        let c = parse(&format!("name: d\nsteps:\n  - {}", MATRIX_3.trim_start())).unwrap();
        assert_eq!(c.nodes, 2);
        let ns: Vec<&str> = c.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(ns, ["x", "y", "z"]);
        assert_eq!(
            c.namespaces[1].labels,
            weft_agent::model::manifest::labels([("ns", "y"), ("kubernetes.io/metadata.name", "y")])
        );
        let pods: Vec<(&str, u32)> = c.pods.iter().map(|p| (p.name.as_str(), p.node)).collect();
        assert_eq!(
            pods,
            [
                ("x/a", 1),
                ("x/b", 2),
                ("x/c", 1),
                ("y/a", 2),
                ("y/b", 1),
                ("y/c", 2),
                ("z/a", 1),
                ("z/b", 2),
                ("z/c", 1)
            ]
        );
        assert_eq!(c.pods[4].labels, weft_agent::model::manifest::labels([("pod", "b")]));
        let names: Vec<_> = c.pods[0].ports.iter().map(|p| p.name.clone().unwrap_or_default()).collect();
        assert_eq!(names, ["serve-80-tcp", "serve-80-udp", "serve-81-tcp", "serve-81-udp"]);
        assert!(c.services.is_empty());
        let ProbeKind::Matrix { port, expect } = &c.steps[0].probes[0].kind else { panic!() };
        assert_eq!((*port, c.steps[0].probes[0].proto), (80, Proto::Tcp));
        assert_eq!(expect.rows.len(), 3);
    }

    const FULL: &str = r#"
name: full
description: every feature
nodes: 3
namespaces:
  web: {team: web}
  db:
pods:
  - {name: web/a, labels: {app: a}, node: 3}
  - {name: db/a, ports: [{name: serve-80-tcp, port: 80, protocol: TCP}, {port: 81, protocol: UDP}]}
  - {name: web/b}
services:
  - {name: np, namespace: web, selector: {app: a}, port: 80, targetPort: serve-80-tcp,
     nodePort: 30080, externalTrafficPolicy: Local}
  - {name: dns, namespace: db, selector: {pod: a}, port: 53, targetPort: 81, protocol: UDP}
steps:
  - apply:
      - |
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny, namespace: web}
        spec: {podSelector: {}}
      - |
        kind: Namespace
        metadata: {name: extra, labels: {k: v}}
        ---
        kind: Pod
        metadata: {name: p, namespace: extra, labels: {app: p}}
        spec: {nodeName: node-2}
        ---
        kind: Pod
        metadata: {name: a, namespace: web, labels: {app: b}}
        ---
        kind: Service
        metadata: {name: s, namespace: extra}
        spec: {selector: {app: p}, ports: [{port: 8080, targetPort: 80}]}
    probe:
      - port: 81
        protocol: UDP
        expect: |2
              web/a extra/p
          db/a    .     X
      - {from: ext, to: nodeport/2/30080, expect: allow}
      - {from: node/3, to: svc/extra/s, expect: deny}
      - {from: web/b, to: svc/db/dns, protocol: UDP, expect: allow}
      - {from: extra/p, to: db/a, port: 80, expect: deny}
  - delete:
      - {kind: Namespace, name: extra}
      - {kind: NetworkPolicy, namespace: web, name: deny}
      - {kind: Pod, namespace: web, name: b}
    apply:
      - |
        kind: Pod
        metadata: {name: c, namespace: web}
    probe:
      - {from: web/c, to: web/a, port: 80, expect: allow}
"#;

    #[test]
    fn every_feature() {
        let c = parse(FULL).unwrap();
        assert_eq!((c.name.as_str(), c.nodes), ("full", 3));
        assert_eq!(c.namespaces[0].labels.get("team").map(String::as_str), Some("web"));
        assert_eq!(c.namespaces[1].labels.len(), 1, "db: only kubernetes.io/metadata.name");
        let nodes: Vec<u32> = c.pods.iter().map(|p| p.node).collect();
        assert_eq!(nodes, [3, 2, 3], "pinned pods take their round-robin slot too");
        assert_eq!(c.pods[1].ports.len(), 2);
        assert_eq!(c.pods[2].labels.get("pod").map(String::as_str), Some("b"));
        assert_eq!(c.services[0].cluster_ip, Ipv4Addr::new(10, 96, 100, 1));
        assert_eq!(c.services[1].cluster_ip, Ipv4Addr::new(10, 96, 100, 2));
        assert_eq!(c.services[0].external_traffic_policy, TrafficPolicy::Local);

        let s0 = &c.steps[0];
        assert!(matches!(&s0.changes[0], Change::Apply { key, .. } if key == "NetworkPolicy web/deny"));
        assert!(matches!(&s0.changes[1], Change::Apply { key, .. } if key == "Namespace extra"));
        let Change::AddPod(p) = &s0.changes[2] else { panic!("{:?}", s0.changes[2]) };
        assert_eq!((p.name.as_str(), p.node, p.ports.len()), ("extra/p", 2, 4));
        assert!(matches!(&s0.changes[3], Change::Relabel { pod, labels }
            if pod == "web/a" && labels.get("app").map(String::as_str) == Some("b")));
        let Change::Apply { yaml, .. } = &s0.changes[4] else { panic!() };
        assert!(yaml.contains("clusterIP: 10.96.101.1"), "{yaml}");
        let kinds: Vec<String> = s0.probes.iter().map(ToString::to_string).collect();
        assert_eq!(
            kinds,
            [
                "matrix UDP port 81",
                "ext -> nodeport/2/30080 TCP, expect allow",
                "node/3 -> svc/extra/s:8080 TCP, expect deny",
                "web/b -> svc/db/dns:53 UDP, expect allow",
                "extra/p -> db/a:80 TCP, expect deny",
            ]
        );

        // Deleting a namespace takes what is in it; apply comes before delete.
        let s1: Vec<String> = c.steps[1].changes.iter().map(|c| format!("{c:?}")).collect();
        assert!(s1[0].starts_with("AddPod(CasePod { name: \"web/c\", node: 2"), "{s1:?}");
        assert!(s1[1].contains("kind: \"Service\"") && s1[1].contains("\"s\""), "{s1:?}");
        assert_eq!(s1[2], "DeletePod(\"extra/p\")");
        assert!(s1[3].contains("kind: \"Namespace\""), "{s1:?}");
        assert!(s1[4].contains("NetworkPolicy"), "{s1:?}");
        assert_eq!(s1[5], "DeletePod(\"web/b\")");
    }

    /// Each bad file fails with the file and the field in the message.
    #[test]
    fn bad_cases_name_the_file_and_the_field() {
        let step = "steps:\n  - probe:\n      - {from: x/a, to: x/b, port: 80, expect: allow}\n";
        let cases: Vec<(String, &str)> = vec![
            ("steps: []\n".into(), "missing field `name`"),
            (format!("name: a\nnodez: 2\n{step}"), "unknown field `nodez`"),
            (format!("name: a b\n{step}"), "name: \"a b\""),
            (format!("name: a\nnodes: 0\n{step}"), "nodes: invalid node count 0"),
            ("name: a\nsteps: []\n".into(), "steps: a case needs at least one step"),
            ("name: a\nsteps:\n  - apply: []\n".into(), "steps[0]: an empty step"),
            (format!("name: a\nnamespaces: {{X: {{}}}}\n{step}"), "namespaces.X: \"X\" is not a DNS label"),
            (format!("name: a\npods: [{{name: w/a}}]\n{step}"), "pods[0].name: namespace \"w\""),
            (format!("name: a\npods: [{{name: x/a, node: 3}}]\n{step}"), "pods[0].node: node 3 does not exist"),
            (format!("name: a\npods: [{{name: x/a}}, {{name: x/a}}]\n{step}"), "pods[1].name: pod x/a appears twice"),
            (format!("name: a\npods: [{{name: x/a, ports: []}}]\n{step}"), "pods[0].ports: empty"),
            (
                format!("name: a\npods: [{{name: x/a, ports: [{{port: 80, protocol: SCTP}}]}}]\n{step}"),
                "pods[0].ports[0].protocol: \"SCTP\" is not TCP or UDP",
            ),
            (
                format!("name: a\npods: [{{name: x/a, ports: [{{name: Bad_Name, port: 80}}]}}]\n{step}"),
                "pods[0]: ",
            ),
            (
                format!("name: a\nservices: [{{name: s, namespace: w, selector: {{a: b}}, port: 80}}]\n{step}"),
                "services[0].namespace: \"w\"",
            ),
            (
                format!("name: a\nservices: [{{name: s, namespace: x, port: 80}}]\n{step}"),
                "services[0].selector: empty",
            ),
            (
                format!(
                    "name: a\nservices: [{{name: s, namespace: x, selector: {{a: b}}, port: 80, nodePort: 80}}]\n{step}"
                ),
                "services[0]: nodePort 80 is outside",
            ),
            (
                format!(
                    "name: a\nservices: [{{name: s, namespace: x, selector: {{a: b}}, port: 80, externalTrafficPolicy: Local}}]\n{step}"
                ),
                "services[0].externalTrafficPolicy: Local needs a nodePort",
            ),
            (
                "name: a\nsteps:\n  - probe:\n      - {from: x/a, to: x/b, expect: allow}\n".into(),
                "steps[0].probe[0].to: a probe of a pod needs `port`",
            ),
            (
                "name: a\nsteps:\n  - probe:\n      - {from: x/a, to: x/q, port: 80, expect: allow}\n".into(),
                "steps[0].probe[0].to: x/q is not a pod at this step",
            ),
            (
                "name: a\nsteps:\n  - probe:\n      - {from: ext, to: x/b, port: 80, expect: allow}\n".into(),
                "steps[0].probe[0]: ext has no route",
            ),
            (
                "name: a\nsteps:\n  - probe:\n      - {from: node/3, to: x/b, port: 80, expect: allow}\n".into(),
                "steps[0].probe[0].from: node 3 does not exist",
            ),
            (
                "name: a\nsteps:\n  - probe:\n      - {from: x/a, to: x/b, port: 80, expect: maybe}\n".into(),
                "steps[0].probe[0].expect: \"maybe\" is not allow or deny",
            ),
            (
                "name: a\nsteps:\n  - probe:\n      - {from: ext, to: nodeport/1/30080, expect: allow}\n".into(),
                "steps[0].probe[0].to: no service has TCP nodePort 30080",
            ),
            (
                "name: a\nsteps:\n  - probe:\n      - {from: x/a, to: svc/x/web, expect: allow}\n".into(),
                "steps[0].probe[0].to: service x/web does not exist",
            ),
            (
                "name: a\nsteps:\n  - probe:\n      - {from: x/a, expect: allow}\n".into(),
                "steps[0].probe[0]: give both from and to",
            ),
            (
                "name: a\nsteps:\n  - probe:\n      - {port: 80, protocol: tcp, expect: 'x/a\nx/a .'}\n".into(),
                "steps[0].probe[0].protocol: \"tcp\" is not TCP or UDP",
            ),
            (
                "name: a\nsteps:\n  - probe:\n      - port: 80\n        expect: |\n          x/a x/b\n          x/a . .\n          x/b . x\n".into(),
                "steps[0].probe[0].expect: line 3 (row \"x/b\"), column \"x/b\": \"x\" is not a cell",
            ),
            (
                "name: a\nsteps:\n  - probe:\n      - port: 80\n        expect: |\n          x/a w/b\n          x/a . .\n".into(),
                "steps[0].probe[0].expect: w/b is not a pod at this step",
            ),
            (
                "name: a\nsteps:\n  - probe:\n      - {port: 80, expect: '', from: x/a}\n".into(),
                "give both from and to",
            ),
            (
                "name: a\nsteps:\n  - probe:\n      - {port: 80, expec: x}\n".into(),
                "steps[0].probe[0]: unknown field `expec`",
            ),
            (
                applying("", "kind: NetworkPolicy\nmetadata: {name: p, namespace: w}\nspec: {podSelector: {}}", ""),
                "steps[0].apply[0]: namespace \"w\" does not exist",
            ),
            (
                applying(
                    "",
                    "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, policyTypes: [Sideways]}",
                    "",
                ),
                "steps[0].apply[0]: NetworkPolicy x/p: spec.policyTypes",
            ),
            (applying("", "kind: Deployment\nmetadata: {name: p}", ""), "steps[0].apply[0]: not an object weft reads"),
            (applying("", "kind: [", ""), "steps[0].apply[0]: not YAML"),
            (
                applying("", "kind: Pod\nmetadata: {name: q, namespace: x}\nspec: {nodeName: node-7}", ""),
                "steps[0].apply[0]: spec.nodeName: node 7 does not exist",
            ),
            (
                "name: a\nsteps:\n  - delete: [{kind: NetworkPolicy, namespace: x, name: nope}]\n".into(),
                "steps[0].delete[0]: NetworkPolicy x/nope does not exist at this step",
            ),
            (
                "name: a\nsteps:\n  - delete: [{kind: Pod, name: a}]\n".into(),
                "steps[0].delete[0].namespace: a Pod is namespaced",
            ),
            (
                "name: a\nsteps:\n  - delete: [{kind: Deployment, namespace: x, name: a}]\n".into(),
                "steps[0].delete[0].kind: \"Deployment\"",
            ),
            (
                "name: a\nsteps:\n  - delete: [{kind: Pod, namespace: x, name: a}]\n    probe:\n      - {from: x/a, to: x/b, port: 80, expect: allow}\n".into(),
                "steps[0].probe[0].from: x/a is not a pod at this step",
            ),
            (
                applying("", "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}", ""),
                "no step has a probe",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.starts_with("case cases/t.yaml: "), "{e}");
            assert!(e.contains(want), "{text}\n---\n{e}\n--- want: {want}");
        }
    }

    #[test]
    fn service_ips_and_node_ports_are_unique() {
        let head = "services:\n  - {name: s, namespace: x, selector: {pod: a}, port: 80, nodePort: 30080}\n";
        let probe = "    probe:\n      - {from: x/b, to: svc/x/s, expect: allow}\n";
        let svc = |name: &str, spec: &str| {
            format!("kind: Service\nmetadata: {{name: {name}, namespace: y}}\nspec: {spec}")
        };
        let dup_np =
            applying(head, &svc("t", "{selector: {pod: a}, ports: [{port: 80, nodePort: 30080}]}"), probe);
        let e = parse(&dup_np).unwrap_err();
        assert!(e.contains("steps[0].apply[0]: nodePort 30080 is already service x/s's"), "{e}");
        let dup_ip = applying(head, &svc("t", "{clusterIP: 10.96.100.1, ports: [{port: 80}]}"), probe);
        let e = parse(&dup_ip).unwrap_err();
        assert!(e.contains("cluster IP 10.96.100.1 is already service x/s's"), "{e}");
        let outside = applying(head, &svc("t", "{clusterIP: 10.0.0.1, ports: [{port: 80}]}"), probe);
        assert!(parse(&outside).unwrap_err().contains("outside the service CIDR"));
        // Applying a service again replaces it: its own IP and node port are no clash.
        let again = "kind: Service\nmetadata: {name: s, namespace: x}\n\
                     spec: {clusterIP: 10.96.100.1, selector: {pod: b}, ports: [{port: 80, nodePort: 30080}]}";
        parse(&applying(head, again, probe)).unwrap();
    }
}
