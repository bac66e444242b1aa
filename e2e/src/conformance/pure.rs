//! The conformance cases without a kernel: each case's cluster state, step by
//! step, as the agents' `Model`, and every probe's expected verdict checked
//! against `weft_agent::explain`, which evaluates both the IR each node's
//! backend is rendered from and the policies' semantics, and says where the
//! two differ. Seconds for the whole suite, no root: a semantic regression
//! shows here before any kernel suite runs.
//!
//! What the testbed adds and this models:
//! - pods get addresses as the nodes' IPAM would: node N's from 10.244.N.2 up,
//!   a recreated pod a new one;
//! - a pod serves exactly its container ports: a probe of another port is
//!   refused whatever the policy;
//! - services go through the kube-proxy imitation's NAT (`kube_proxy`): the
//!   endpoints a probe can reach (every one must give the expected verdict), a
//!   Local NodePort without a local endpoint drops, and a masqueraded
//!   connection reaches an endpoint on another node from the forwarding node's
//!   lan address (on the endpoint's own node, policy sees it before the SNAT).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::IpNetwork;

use weft_agent::model::{parse_manifests, Model, Pod, Protocol};
use weft_agent::policy::evaluate::{decide_via, Party};

use super::case::{Case, CasePod, Change, Probe, ProbeKind, Source, Target};
use super::matrix::Cell;
use crate::agents::{node_manifest, node_name};
use crate::kube_proxy::{self, Endpoint};
use crate::plan;
use crate::pods::CLUSTER_CIDR;
use crate::probe::Proto;
use crate::services::{self, Service, TrafficPolicy};

/// A case's cluster state as the agents would read it, with the addresses
/// the testbed would have given its pods.
struct Cluster {
    model: Model,
    /// The Services, by key (the agents do not read them).
    services: BTreeMap<String, Service>,
    /// The next host number of each node's pod CIDR.
    next_host: BTreeMap<u32, u32>,
}

impl Cluster {
    fn new(case: &Case) -> Result<Cluster, String> {
        let mut c =
            Cluster { model: Model::default(), services: BTreeMap::new(), next_host: BTreeMap::new() };
        for n in 1..=case.nodes {
            c.apply(&node_manifest(n))?;
        }
        for ns in &case.namespaces {
            c.model.namespaces.insert(
                ns.name.clone(),
                weft_agent::model::Namespace { name: ns.name.clone(), labels: ns.labels.clone() },
            );
        }
        for p in &case.pods {
            c.add_pod(p);
        }
        for s in &case.services {
            c.apply(&s.to_yaml())?;
        }
        Ok(c)
    }

    /// Creates or replaces the objects of `yaml`.
    fn apply(&mut self, yaml: &str) -> Result<(), String> {
        let value: serde_json::Value = serde_norway::from_str(yaml).map_err(|e| e.to_string())?;
        if services::is_service(&value) {
            let s = services::parse(value)?;
            self.services.insert(s.key(), s);
            return Ok(());
        }
        for obj in parse_manifests(yaml)? {
            self.model.replace(obj);
        }
        Ok(())
    }

    fn add_pod(&mut self, p: &CasePod) {
        let host = self.next_host.entry(p.node).or_insert(2);
        let ip = plan::pod_cidr(p.node).nth(*host);
        *host += 1;
        let (namespace, name) = p.name.split_once('/').unwrap_or(("default", &p.name));
        let pod = Pod {
            namespace: namespace.into(),
            name: name.into(),
            labels: p.labels.clone(),
            node: Some(node_name(p.node)),
            ip,
            ip6: None,
            host_network: false,
            ports: p.ports.clone(),
        };
        self.model.pods.insert(p.name.clone(), pod.into());
    }

    fn change(&mut self, change: &Change) -> Result<(), String> {
        let m = &mut self.model;
        match change {
            Change::Apply { yaml, .. } => return self.apply(yaml),
            Change::AddPod(p) => self.add_pod(p),
            Change::Relabel { pod, labels } => match m.pods.get_mut(pod) {
                Some(p) => std::sync::Arc::make_mut(p).labels = labels.clone(),
                None => return Err(format!("relabel of pod {pod}, which does not exist")),
            },
            Change::DeletePod(pod) => drop(m.pods.remove(pod)),
            Change::Delete { kind, namespace, name } => {
                let key = |ns: &Option<String>| format!("{}/{name}", ns.as_deref().unwrap_or("default"));
                match *kind {
                    "Namespace" => drop(m.namespaces.remove(name)),
                    "Service" => drop(self.services.remove(&key(namespace))),
                    "NetworkPolicy" => {
                        drop(std::sync::Arc::make_mut(&mut m.policies).remove(&key(namespace)))
                    }
                    "ClusterNetworkPolicy" => drop(m.cluster_policies.remove(name)),
                    other => return Err(format!("cannot delete a {other}")),
                }
            }
        }
        Ok(())
    }
}

/// What the pure run found for one case: how many verdicts it checked, and
/// one line per probe whose expectation the model does not meet.
#[derive(Debug, Default)]
pub struct PureResult {
    pub checked: usize,
    pub failures: Vec<String>,
}

/// Evaluates every probe of every step of `case` on the model.
pub fn evaluate(case: &Case) -> PureResult {
    let mut out = PureResult::default();
    let mut cluster = match Cluster::new(case) {
        Ok(c) => c,
        Err(e) => {
            out.failures.push(format!("initial state: {e}"));
            return out;
        }
    };
    for (i, step) in case.steps.iter().enumerate() {
        for change in &step.changes {
            if let Err(e) = cluster.change(change) {
                out.failures.push(format!("steps[{i}]: {e}"));
                return out;
            }
        }
        for (j, probe) in step.probes.iter().enumerate() {
            for failure in check_probe(&cluster, probe, &mut out.checked) {
                out.failures.push(format!("steps[{i}].probe[{j}] ({probe}): {failure}"));
            }
        }
    }
    out
}

fn protocol(p: Proto) -> Protocol {
    match p {
        Proto::Tcp => Protocol::Tcp,
        Proto::Udp => Protocol::Udp,
    }
}

/// The failures of one probe; counts each verdict checked into `checked`.
fn check_probe(cluster: &Cluster, probe: &Probe, checked: &mut usize) -> Vec<String> {
    let model = &cluster.model;
    let proto = protocol(probe.proto);
    let mut failures = Vec::new();
    let mut expect = |want: bool, got: Result<bool, String>, what: String| {
        *checked += 1;
        match got {
            Ok(got) if got == want => {}
            Ok(got) => {
                failures.push(format!("{what}: expected {}, the model says {}", verdict(want), verdict(got)))
            }
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    };
    match &probe.kind {
        ProbeKind::Matrix { port, expect: m } => {
            for (r, from) in m.rows.iter().enumerate() {
                for (c, to) in m.cols.iter().enumerate() {
                    let want = match m.cells[r][c] {
                        _ if from == to => continue,
                        Cell::Any => continue,
                        Cell::Allow => true,
                        Cell::Deny => false,
                    };
                    expect(want, connects(model, from, to, *port, proto), format!("{from} -> {to}"));
                }
            }
        }
        ProbeKind::Single { from, to, allow } => {
            expect(*allow, single(cluster, from, to, proto), String::new());
        }
    }
    failures
}

fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "allow"
    } else {
        "deny"
    }
}

/// Whether `src` (a pod key, an address or node/NAME) reaches pod `dst`
/// (key or address) on `port`: served there, and admitted by the rules and
/// the policies alike (their disagreement is an error).
fn connects(model: &Model, src: &str, dst: &str, port: u16, proto: Protocol) -> Result<bool, String> {
    let cluster: Vec<IpNetwork> = CLUSTER_CIDR.parse().into_iter().collect();
    let e = weft_agent::explain::explain(model, &cluster, src, dst, port, proto)?;
    let pod = match dst.parse::<Ipv4Addr>() {
        Ok(ip) => model.pod_by_ip(ip.into()),
        Err(_) => model.pods.get(dst).map(|p| &**p),
    };
    let served = pod.is_some_and(|p| p.ports.iter().any(|cp| cp.port == port && cp.protocol == proto));
    if let Some(d) = e.disagreement {
        return Err(format!("{src} -> {dst}: {d}"));
    }
    Ok(e.allowed && served)
}

/// Whether the pod at endpoint `ep` reaches itself through a Service on its
/// own node (hairpin, not masqueraded): by the policies, ClusterNetworkPolicy
/// judging it as any connection (`decide_via`), and served there.
fn hairpin_connects(model: &Model, ep: &Endpoint, proto: Protocol) -> bool {
    let Some(pod) = model.pod_by_ip(ep.ip.into()) else { return false };
    let me = Party::Pod(pod);
    let (egress, ingress) = decide_via(model, me, me, proto, ep.port, true);
    let served = pod.ports.iter().any(|cp| cp.port == ep.port && cp.protocol == proto);
    served && egress.is_none_or(|d| d.allows()) && ingress.is_none_or(|d| d.allows())
}

/// A single probe: through the service NAT if it targets one; every endpoint
/// it can reach must give the same verdict.
fn single(cluster: &Cluster, from: &Source, to: &Target, proto: Protocol) -> Result<bool, String> {
    let model = &cluster.model;
    let original = match from {
        Source::Pod(p) => p.clone(),
        Source::Ext => plan::ext_addr().ip().to_string(),
        Source::Node(n) => format!("node/{}", node_name(*n)),
    };
    let (svc_port, forwarder) = match to {
        Target::Pod { name, port } => return connects(model, &original, name, *port, proto),
        Target::Service { namespace, name, port, .. } => {
            let pick =
                |s: &kube_proxy::Service| &s.namespace == namespace && &s.name == name && s.port == *port;
            (pick_service(cluster, proto, pick)?, node_of(model, from)?)
        }
        Target::NodePort { node, port } => {
            (pick_service(cluster, proto, |s| s.node_port == Some(*port))?, *node)
        }
    };
    let (svc, eps) = svc_port;
    let from_pod = matches!(from, Source::Pod(_));
    let (eps, masq): (Vec<Endpoint>, bool) = match to {
        // KUBE-SVC: traffic from outside the cluster CIDR is masqueraded.
        Target::Service { .. } => (eps, !from_pod),
        // KUBE-EXT, Cluster: every connection is masqueraded.
        _ if svc.external_traffic_policy == TrafficPolicy::Cluster => (eps, true),
        // KUBE-EXT, Local: pods go the ClusterIP way; others only to local endpoints, SNAT only from the node itself.
        _ if from_pod => (eps, false),
        _ => (eps.into_iter().filter(|e| e.node == forwarder).collect(), *from == Source::Node(forwarder)),
    };
    let mut verdicts = Vec::new();
    for ep in &eps {
        let hairpin = matches!(from, Source::Pod(p) if model.pods.get(p).and_then(|p| p.ip) == Some(ep.ip));
        // The model exempts a pod's own address; through a Service it is
        // judged as any connection, which `decide_via` does and the kernel
        // does too (saddr = daddr in FORWARD).
        if hairpin && ep.node == forwarder {
            verdicts.push(hairpin_connects(model, ep, proto));
            continue;
        }
        let src = if (masq || hairpin) && ep.node != forwarder {
            plan::node_addr(forwarder).ip().to_string()
        } else {
            original.clone()
        };
        verdicts.push(connects(model, &src, &ep.ip.to_string(), ep.port, proto)?);
    }
    match verdicts.first() {
        // No endpoint: no rule, nothing answers.
        None => Ok(false),
        Some(&v) if verdicts.iter().all(|&w| w == v) => Ok(v),
        Some(_) => Err(format!("its endpoints disagree: {verdicts:?}")),
    }
}

/// The one service port of `proto` that `pick` chooses, with its endpoints.
fn pick_service(
    cluster: &Cluster,
    proto: Protocol,
    pick: impl Fn(&kube_proxy::Service) -> bool,
) -> Result<(kube_proxy::Service, Vec<Endpoint>), String> {
    let all = kube_proxy::endpoints(cluster.services.values(), &cluster.model);
    let mut found = all.into_iter().filter(|(s, _)| s.protocol == proto && pick(s));
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => Err("no such service port in the model".into()),
        (Some(_), Some(_)) => Err("more than one service port matches".into()),
    }
}

/// The node whose kube-proxy rules a ClusterIP connection from `from` meets.
fn node_of(model: &Model, from: &Source) -> Result<u32, String> {
    match from {
        Source::Node(n) => Ok(*n),
        Source::Pod(p) => model
            .pods
            .get(p)
            .and_then(|p| p.node.as_deref()?.strip_prefix("node-")?.parse().ok())
            .ok_or_else(|| format!("pod {p} is on no node")),
        Source::Ext => Err("the external client has no route to a cluster IP".into()),
    }
}
