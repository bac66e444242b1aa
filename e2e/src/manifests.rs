//! The manifests the testbed writes into the cluster dir, as an API server
//! would hold them: built as JSON values and written as YAML, so no hand
//! formatting can produce a manifest the agent reads differently.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::{json, Value};
use weft_agent::model::{ContainerPort, Labels, PortRef, Protocol};

use crate::services::{ServicePort, TrafficPolicy};

/// The file an object lives in: `<kind>-<namespace>-<name>.yaml` (namespaced)
/// or `<kind>-<name>.yaml`, kind in lower case. Names are DNS labels, so two
/// objects never share a file.
pub fn file_name(kind: &str, namespace: Option<&str>, name: &str) -> String {
    let kind = kind.to_ascii_lowercase();
    match namespace {
        Some(ns) => format!("{kind}-{ns}-{name}.yaml"),
        None => format!("{kind}-{name}.yaml"),
    }
}

/// A value as YAML text.
pub fn to_yaml(v: &Value) -> String {
    // A serde_json::Value always serialises.
    serde_norway::to_string(v).unwrap_or_default()
}

/// A Namespace with `labels`.
pub fn namespace(name: &str, labels: &Labels) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// A running Pod on node `node-<node>` with one container declaring `ports`,
/// and its address once the CNI ADD has given it.
pub fn pod(
    namespace: &str,
    name: &str,
    labels: &Labels,
    node: u32,
    ports: &[ContainerPort],
    ip: Option<Ipv4Addr>,
) -> Value {
    let ips: Vec<IpAddr> = ip.map(IpAddr::V4).into_iter().collect();
    pod_with_addresses(namespace, name, labels, node, ports, &ips)
}

/// `pod` with the addresses of every family it has (podIP the first, podIPs
/// all; Pending while there are none).
pub fn pod_with_addresses(
    namespace: &str,
    name: &str,
    labels: &Labels,
    node: u32,
    ports: &[ContainerPort],
    ips: &[IpAddr],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            let mut v = json!({"containerPort": p.port, "protocol": p.protocol.to_string()});
            if let Some(n) = &p.name {
                v["name"] = json!(n);
            }
            v
        })
        .collect();
    let mut v = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": format!("node-{node}"),
                 "containers": [{"name": "serve", "image": "weft-e2e", "ports": ports}]},
        "status": {"phase": "Pending"},
    });
    if let Some(ip) = ips.first() {
        let all: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
        v["status"] = json!({"phase": "Running", "podIP": ip.to_string(), "podIPs": all});
    }
    v
}

/// The ports a workload declares by default: `serve-<port>-<tcp|udp>` for each
/// of `ports`, TCP and UDP, as the upstream NetworkPolicy e2e suite names them.
pub fn serve_ports(ports: &[u16]) -> Vec<ContainerPort> {
    let mut out = Vec::new();
    for &port in ports {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let name = format!("serve-{port}-{}", protocol.as_str());
            out.push(ContainerPort { name: Some(name), port, protocol });
        }
    }
    out
}

/// A Service, built port by port.
#[derive(Debug, Clone)]
pub struct ServiceManifest {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub selector: Labels,
    pub ports: Vec<ServicePort>,
    pub external_traffic_policy: TrafficPolicy,
}

impl ServiceManifest {
    /// A ClusterIP service selecting pods with `selector`, with no ports yet.
    pub fn new(
        namespace: &str,
        name: &str,
        cluster_ip: Ipv4Addr,
        selector: &[(&str, &str)],
    ) -> ServiceManifest {
        ServiceManifest {
            namespace: namespace.into(),
            name: name.into(),
            cluster_ip,
            selector: selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ports: Vec::new(),
            external_traffic_policy: TrafficPolicy::Cluster,
        }
    }

    /// Adds port `port`/`protocol` forwarding to `target` on the endpoints.
    pub fn port(mut self, port: u16, protocol: Protocol, target: PortRef) -> ServiceManifest {
        let name = format!("p{port}-{}", protocol.as_str());
        self.ports.push(ServicePort {
            name: Some(name),
            port,
            protocol,
            target_port: target,
            node_port: None,
        });
        self
    }

    /// Gives the last port added a NodePort (making this a NodePort service).
    pub fn node_port(mut self, node_port: u16) -> ServiceManifest {
        if let Some(p) = self.ports.last_mut() {
            p.node_port = Some(node_port);
        }
        self
    }

    /// externalTrafficPolicy: Local.
    pub fn local(mut self) -> ServiceManifest {
        self.external_traffic_policy = TrafficPolicy::Local;
        self
    }

    pub fn to_value(&self) -> Value {
        let node_port = self.ports.iter().any(|p| p.node_port.is_some());
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                let target = match &p.target_port {
                    PortRef::Number(n) => json!(n),
                    PortRef::Name(n) => json!(n),
                };
                let mut v = json!({"name": p.name, "port": p.port, "protocol": p.protocol.to_string(), "targetPort": target});
                if let Some(n) = p.node_port {
                    v["nodePort"] = json!(n);
                }
                v
            })
            .collect();
        let mut spec = json!({
            "type": if node_port { "NodePort" } else { "ClusterIP" },
            "clusterIP": self.cluster_ip.to_string(),
            "selector": self.selector,
            "ports": ports,
        });
        if node_port {
            let etp = match self.external_traffic_policy {
                TrafficPolicy::Cluster => "Cluster",
                TrafficPolicy::Local => "Local",
            };
            spec["externalTrafficPolicy"] = json!(etp);
        }
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec})
    }

    pub fn to_yaml(&self) -> String {
        to_yaml(&self.to_value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_agent::model::{parse_manifests, Object};

    fn parse_one(text: &str) -> Object {
        let mut objs = parse_manifests(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(objs.len(), 1);
        objs.remove(0)
    }

    #[test]
    fn what_is_written_is_what_the_agent_reads() {
        let labels: Labels = [("pod".to_string(), "a".to_string())].into();
        let ip = Ipv4Addr::new(10, 244, 2, 5);
        let Object::Pod(p) =
            parse_one(&to_yaml(&pod("x", "a", &labels, 2, &serve_ports(&[80, 81]), Some(ip))))
        else {
            panic!()
        };
        assert_eq!((p.key().as_str(), p.node.as_deref(), p.ip), ("x/a", Some("node-2"), Some(ip)));
        assert_eq!(p.labels, labels);
        assert_eq!(p.ports.len(), 4);
        assert_eq!(p.resolve_port(&PortRef::Name("serve-81-udp".into()), Protocol::Udp), Some(81));
        let Object::Pod(pending) = parse_one(&to_yaml(&pod("x", "a", &labels, 2, &[], None))) else {
            panic!()
        };
        assert_eq!(pending.ip, None);
        // Dual-stack: podIPs lists both families.
        let ip6: IpAddr = "fd00::af4:205".parse().unwrap();
        let Object::Pod(dual) =
            parse_one(&to_yaml(&pod_with_addresses("x", "a", &labels, 2, &[], &[ip.into(), ip6])))
        else {
            panic!()
        };
        assert_eq!((dual.ip, dual.ip6.map(IpAddr::V6)), (Some(ip), Some(ip6)));

        let svc = ServiceManifest::new("y", "web", Ipv4Addr::new(10, 96, 0, 10), &[("pod", "a")])
            .port(80, Protocol::Tcp, PortRef::Name("serve-80-tcp".into()))
            .node_port(30080)
            .port(81, Protocol::Udp, PortRef::Number(81))
            .local();
        let s = crate::services::parse(serde_norway::from_str(&svc.to_yaml()).unwrap()).unwrap();
        assert_eq!(s.ports, svc.ports);
        assert_eq!(s.external_traffic_policy, TrafficPolicy::Local);
        assert_eq!(s.selector, Some(svc.selector.clone()));

        let Object::Namespace(ns) = parse_one(&to_yaml(&namespace("x", &labels))) else { panic!() };
        assert_eq!(ns.labels.get("pod").map(String::as_str), Some("a"));
        assert_eq!(file_name("NetworkPolicy", Some("x"), "deny"), "networkpolicy-x-deny.yaml");
        assert_eq!(file_name("Namespace", None, "x"), "namespace-x.yaml");
    }
}
