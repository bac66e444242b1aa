//! Services as the testbed's kube-proxy imitation and the conformance runner
//! read them. The agent never looks at Services (policy applies to pods
//! after DNAT), so their manifests are parsed here, not by the agent's parser.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use serde::{Deserialize, Serialize};
use weft_agent::model::{Labels, Pod, PortRef, Protocol};

use crate::error::{E2eError, Result};

/// spec.externalTrafficPolicy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    /// Defaults to `port`.
    pub target_port: PortRef,
    pub node_port: Option<u16>,
}

/// A Service: enough for the kube-proxy imitation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// spec.clusterIP: None for a headless service or one without an IPv4 address.
    pub cluster_ip: Option<Ipv4Addr>,
    /// None (or empty) means no endpoints are derived from pods.
    pub selector: Option<Labels>,
    pub ports: Vec<ServicePort>,
    pub external_traffic_policy: TrafficPolicy,
}

impl Service {
    /// "namespace/name".
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// True if `pod` backs this service: same namespace, has an IP (of either
    /// family), and carries every label of a non-empty selector.
    pub fn selects(&self, pod: &Pod) -> bool {
        let Some(sel) = self.selector.as_ref().filter(|s| !s.is_empty()) else { return false };
        pod.namespace == self.namespace
            && (pod.ip.is_some() || pod.ip6.is_some())
            && sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
    }
}

#[derive(Debug, Deserialize)]
struct Manifest {
    metadata: Meta,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Deserialize)]
struct Meta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default, rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(default)]
    selector: Option<Labels>,
    #[serde(default)]
    ports: Vec<PortManifest>,
    #[serde(default)]
    external_traffic_policy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortManifest {
    #[serde(default)]
    name: Option<String>,
    port: i64,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    target_port: Option<IntOrString>,
    #[serde(default)]
    node_port: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    Str(String),
}

/// The Service in `value`, one manifest (kind Service).
pub fn parse(value: serde_json::Value) -> std::result::Result<Service, String> {
    let m: Manifest = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let cluster_ip = match m.spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => None,
        Some(s) => match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => Some(ip),
            Ok(IpAddr::V6(_)) => None,
            Err(e) => return Err(format!("spec.clusterIP {s:?}: {e}")),
        },
    };
    let external_traffic_policy = match m.spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") => TrafficPolicy::Cluster,
        Some("Local") => TrafficPolicy::Local,
        Some(other) => return Err(format!("spec.externalTrafficPolicy {other:?} is not Cluster or Local")),
    };
    let number = |n: i64, field: &str| {
        u16::try_from(n).ok().filter(|&p| p != 0).ok_or_else(|| format!("{field} {n} is not in 1-65535"))
    };
    let mut ports = Vec::new();
    for p in m.spec.ports {
        let port = number(p.port, "ports[].port")?;
        let target_port = match p.target_port {
            None => PortRef::Number(port),
            Some(IntOrString::Int(n)) => PortRef::Number(number(n, "ports[].targetPort")?),
            Some(IntOrString::Str(s)) => PortRef::Name(s),
        };
        let protocol = match p.protocol.as_deref() {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            Some(other) => return Err(format!("protocol {other:?} is not TCP, UDP or SCTP")),
        };
        let node_port = p.node_port.map(|n| number(n, "ports[].nodePort")).transpose()?;
        ports.push(ServicePort { name: p.name, port, protocol, target_port, node_port });
    }
    Ok(Service {
        namespace: m.metadata.namespace.unwrap_or_else(|| "default".into()),
        name: m.metadata.name,
        cluster_ip,
        selector: m.spec.selector,
        ports,
        external_traffic_policy,
    })
}

/// True if manifest `value` is a Service.
pub fn is_service(value: &serde_json::Value) -> bool {
    value.get("kind").and_then(|k| k.as_str()) == Some("Service")
}

/// The Services in cluster dir `dir` (one manifest per `service-*.yaml`
/// file, as `Testbed::apply` writes them), by key.
pub fn read(dir: &Path) -> Result<BTreeMap<String, Service>> {
    let bad = |reason: String| E2eError::Manifest { reason };
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| bad(format!("{}: {e}", dir.display())))?;
    for entry in entries {
        let path = entry.map_err(|e| bad(format!("{}: {e}", dir.display())))?.path();
        let is_manifest =
            path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("service-"));
        if !is_manifest {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let value: serde_json::Value =
            serde_norway::from_str(&text).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let svc = parse(value).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        out.insert(svc.key(), svc);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> std::result::Result<Service, String> {
        parse(serde_norway::from_str(text).unwrap())
    }

    #[test]
    fn services() {
        let text = "
kind: Service
metadata: {name: web, namespace: y}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  selector: {pod: a}
  externalTrafficPolicy: Local
  ports:
  - {name: http, port: 80, targetPort: serve-80-tcp, nodePort: 30080}
  - {port: 81, protocol: UDP}
";
        let s = one(text).unwrap();
        assert_eq!(s.cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 10)));
        assert_eq!(s.external_traffic_policy, TrafficPolicy::Local);
        assert_eq!(s.ports[0].target_port, PortRef::Name("serve-80-tcp".into()));
        assert_eq!(s.ports[0].node_port, Some(30080));
        assert_eq!(s.ports[1].target_port, PortRef::Number(81), "targetPort defaults to port");
        assert_eq!(s.ports[1].protocol, Protocol::Udp);
        let pod = |ns: &str, l: &str, ip: Option<Ipv4Addr>| Pod {
            namespace: ns.into(),
            name: "p".into(),
            labels: [("pod".to_string(), l.to_string())].into(),
            node: None,
            ip,
            ip6: None,
            host_network: false,
            ports: vec![],
        };
        let ip = Some(Ipv4Addr::new(10, 244, 1, 2));
        assert!(s.selects(&pod("y", "a", ip)));
        assert!(!s.selects(&pod("x", "a", ip)), "other namespace");
        assert!(!s.selects(&pod("y", "b", ip)));
        assert!(!s.selects(&pod("y", "a", None)), "no address yet");
        let v6_only = Pod { ip6: "fd00::af4:105".parse().ok(), ..pod("y", "a", None) };
        assert!(s.selects(&v6_only), "an IPv6 pod backs it too");
        assert!(one(&text.replace("Local", "Nearby")).is_err());
        assert!(one(&text.replace("30080", "70000")).is_err());
    }

    #[test]
    fn read_takes_only_service_files() {
        let dir = std::env::temp_dir().join(format!("weft-services-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let svc = "kind: Service\nmetadata: {name: web, namespace: y}\nspec: {clusterIP: 10.96.0.10}\n";
        std::fs::write(dir.join("service-y-web.yaml"), svc).unwrap();
        std::fs::write(dir.join("namespace-y.yaml"), "kind: Namespace\nmetadata: {name: y}\n").unwrap();
        let read = read(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read.unwrap().keys().collect::<Vec<_>>(), ["y/web"]);
    }
}
