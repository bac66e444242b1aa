//! The agent's view of the cluster, and the few Kubernetes fields it reads.
//!
//! No k8s-openapi: a Node is three fields (metadata.name, spec.podCIDR,
//! status.addresses[type=InternalIP]), declared here as small serde structs
//! that ignore every field they do not name.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// One node as the agent needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    /// spec.podCIDR, normalised to its network address; None if unset or not IPv4.
    pub pod_cidr: Option<Ipv4Network>,
    /// The first IPv4 InternalIP in status.addresses.
    pub internal_ip: Option<Ipv4Addr>,
}

/// The cluster state the agent acts on: nodes by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Model {
    pub nodes: BTreeMap<String, Node>,
}

/// A problem with one manifest file; the file is skipped.
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
/// files it had to skip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `generation(&model)`: changes exactly when the parsed content changes.
    pub generation: String,
    pub model: Model,
    pub errors: Vec<SourceError>,
}

impl Snapshot {
    /// A snapshot of `model` with its generation computed.
    pub fn new(model: Model, errors: Vec<SourceError>) -> Snapshot {
        Snapshot { generation: generation(&model), model, errors }
    }
}

/// The generation of a model: FNV-1a 64 over its canonical JSON (nodes sorted
/// by name), as 16 hex chars. Stable across processes and builds, so the
/// testbed computes the same value as the agent.
pub fn generation(model: &Model) -> String {
    let bytes = serde_json::to_vec(model).expect("the model serialises");
    format!("{:016x}", weft_conf::hash::fnv1a64(&bytes))
}

/// The head of any manifest: enough to pick its kind.
#[derive(Debug, Deserialize)]
struct TypeMeta {
    #[serde(default)]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ObjectMeta {
    name: String,
}

#[derive(Debug, Default, Deserialize)]
struct NodeSpec {
    #[serde(default, rename = "podCIDR")]
    pod_cidr: Option<String>,
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

#[derive(Debug, Deserialize)]
struct NodeManifest {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: NodeSpec,
    #[serde(default)]
    status: NodeStatus,
}

#[derive(Debug, Deserialize)]
struct ListManifest {
    #[serde(default)]
    items: Vec<serde_norway::Value>,
}

/// Parses one YAML file (one or more `---`-separated documents, `kind: List`
/// unwrapped) into the nodes it declares. Other kinds are ignored for now.
/// Any error makes the whole file count as malformed.
pub fn parse_manifests(text: &str) -> Result<Vec<Node>, String> {
    let mut nodes = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let value = serde_norway::Value::deserialize(doc).map_err(|e| e.to_string())?;
        collect(value, &mut nodes)?;
    }
    Ok(nodes)
}

fn collect(value: serde_norway::Value, nodes: &mut Vec<Node>) -> Result<(), String> {
    if value.is_null() {
        // An empty document (e.g. a trailing `---`).
        return Ok(());
    }
    let meta: TypeMeta = serde_norway::from_value(value.clone()).map_err(|e| e.to_string())?;
    match meta.kind.as_deref() {
        Some("Node") => {
            let m: NodeManifest = serde_norway::from_value(value).map_err(|e| format!("Node: {e}"))?;
            nodes.push(node_from(m)?);
        }
        Some("List") | Some("NodeList") => {
            let list: ListManifest = serde_norway::from_value(value).map_err(|e| format!("List: {e}"))?;
            for item in list.items {
                collect(item, nodes)?;
            }
        }
        Some(_) => {}
        None => return Err("a document without `kind`".into()),
    }
    Ok(())
}

fn node_from(m: NodeManifest) -> Result<Node, String> {
    let name = m.metadata.name;
    let pod_cidr = match m.spec.pod_cidr.as_deref() {
        None | Some("") => None,
        Some(s) => match s.parse::<ipnetwork::IpNetwork>() {
            Ok(ipnetwork::IpNetwork::V4(n)) => {
                Some(Ipv4Network::new(n.network(), n.prefix()).expect("the prefix was valid"))
            }
            // An IPv6 pod CIDR: not routed by this slice.
            Ok(ipnetwork::IpNetwork::V6(_)) => None,
            Err(e) => return Err(format!("Node {name}: spec.podCIDR {s:?}: {e}")),
        },
    };
    let internal_ip = m
        .status
        .addresses
        .iter()
        .filter(|a| a.kind == "InternalIP")
        .find_map(|a| a.address.parse::<Ipv4Addr>().ok());
    Ok(Node { name, pod_cidr, internal_ip })
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
            pod_cidr: Some(cidr.parse().unwrap()),
            internal_ip: Some(ip.parse().unwrap()),
        }
    }

    #[test]
    fn a_node_with_unknown_fields() {
        assert_eq!(parse_manifests(NODE).unwrap(), [node("node-1", "10.244.1.0/24", "172.31.0.11")]);
    }

    #[test]
    fn multi_document_files_and_lists() {
        let text = format!(
            "---\n{NODE}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: web}}\n---\n\
             kind: List\nitems:\n- kind: Node\n  metadata: {{name: node-2}}\n  spec: {{podCIDR: 10.244.2.7/24}}\n---\n"
        );
        let nodes = parse_manifests(&text).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].name, "node-1");
        // Host bits are dropped; no InternalIP means no gateway.
        assert_eq!(nodes[1], Node { internal_ip: None, ..node("node-2", "10.244.2.0/24", "0.0.0.0") });
    }

    #[test]
    fn malformed_documents_are_errors() {
        for bad in [
            "kind: Node\nmetadata: {name: [",
            "kind: Node\nspec: {podCIDR: 10.244.1.0/24}\n",
            "kind: Node\nmetadata: {name: n}\nspec: {podCIDR: not-a-cidr}\n",
            "metadata: {name: n}\n",
            "- just\n- a list\n",
            &format!("{NODE}---\nkind: Node\nmetadata: {{name: x\n"),
        ] {
            assert!(parse_manifests(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_manifests("").unwrap(), []);
        assert_eq!(parse_manifests("# only a comment\n").unwrap(), []);
    }

    #[test]
    fn generation_follows_the_parsed_content() {
        let mut m = Model::default();
        let empty = generation(&m);
        assert_eq!(empty.len(), 16);
        m.nodes.insert("node-1".into(), node("node-1", "10.244.1.0/24", "172.31.0.11"));
        let one = generation(&m);
        assert_ne!(one, empty);
        assert_eq!(one, generation(&m.clone()), "deterministic");
        m.nodes.get_mut("node-1").unwrap().internal_ip = Some("172.31.0.99".parse().unwrap());
        assert_ne!(generation(&m), one);
    }
}
