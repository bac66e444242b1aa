//! Changing the cluster state as `kubectl apply` / `kubectl delete` would:
//! each object of a YAML text is validated with the agent's own parser (a
//! Service with the testbed's, `services`) and written, one object per
//! file, into the cluster dir; kube-proxy's rules
//! follow Services and pods. Pods are created with `add_pod_with`, which
//! attaches them for real; `apply` only relabels an existing one.

use crate::error::{E2eError, Result};
use crate::manifests::{file_name, to_yaml};
use crate::services::{self, Service};
use crate::Testbed;
use weft_agent::model::{parse_manifests, Object};

/// One document of an apply: an object the agent reads, or a Service (which
/// only the kube-proxy imitation reads).
enum Doc {
    Agent(Object),
    Service(Service),
}

impl Testbed {
    /// Creates or replaces every object of `yaml` (one or more `---`
    /// documents: Namespace, Service, NetworkPolicy, ClusterNetworkPolicy; a Pod that exists gets
    /// the new manifest's labels). Nothing is written unless every document
    /// is valid. Returns the objects' keys ("Kind ns/name").
    pub fn apply(&self, yaml: &str) -> Result<Vec<String>> {
        let bad = |reason: String| E2eError::Manifest { reason };
        let mut docs = Vec::new();
        for doc in serde_norway::Deserializer::from_str(yaml) {
            let value: serde_json::Value =
                serde::Deserialize::deserialize(doc).map_err(|e| bad(format!("not YAML: {e}")))?;
            if value.is_null() {
                continue;
            }
            let text = to_yaml(&value);
            if services::is_service(&value) {
                let svc = services::parse(value).map_err(|e| bad(format!("Service: {e}")))?;
                docs.push((Doc::Service(svc), text));
                continue;
            }
            let mut objs = parse_manifests(&text).map_err(bad)?;
            match (objs.pop(), objs.is_empty()) {
                (Some(obj), true) => docs.push((Doc::Agent(obj), text)),
                (None, _) => return Err(bad(format!("not an object weft reads: {text}"))),
                (Some(_), false) => return Err(bad("one object per document (no List)".into())),
            }
        }
        let mut keys = Vec::new();
        let mut services_changed = false;
        for (doc, text) in docs {
            let obj = match doc {
                Doc::Service(s) => {
                    keys.push(format!("Service {}", s.key()));
                    self.write_manifest(&file_name("Service", Some(&s.namespace), &s.name), &text)?;
                    services_changed = true;
                    continue;
                }
                Doc::Agent(obj) => obj,
            };
            keys.push(obj.key());
            match obj {
                Object::Namespace(ns) => {
                    self.write_manifest(&file_name("Namespace", None, &ns.name), &text)?
                }
                Object::NetworkPolicy(p) => {
                    self.write_manifest(&file_name("NetworkPolicy", Some(&p.namespace), &p.name), &text)?
                }
                Object::ClusterNetworkPolicy(p) => {
                    self.write_manifest(&file_name("ClusterNetworkPolicy", None, &p.name), &text)?
                }
                Object::Pod(p) => {
                    let name = p.key();
                    if self.pod(&name).is_none() {
                        return Err(bad(format!("pod {name} does not exist (create pods with add_pod)")));
                    }
                    // set_pod_labels re-applies the services.
                    self.set_pod_labels(&name, p.labels.clone())?;
                }
                Object::Node(n) => return Err(bad(format!("Node {}: nodes are the testbed's", n.name))),
            }
        }
        if services_changed {
            self.apply_services()?;
        }
        Ok(keys)
    }

    /// Deletes object `kind` `namespace`/`name` (Namespace, Service,
    /// NetworkPolicy, ClusterNetworkPolicy; a Pod goes through `delete_pod`). Ok(false) if it was gone.
    pub fn delete_object(&self, kind: &str, namespace: Option<&str>, name: &str) -> Result<bool> {
        let namespace = match kind {
            "Namespace" | "ClusterNetworkPolicy" => None,
            "Service" | "NetworkPolicy" => Some(namespace.unwrap_or("default")),
            other => return Err(E2eError::Manifest { reason: format!("cannot delete a {other} this way") }),
        };
        let gone = self.remove_manifest(&file_name(kind, namespace, name))?;
        if kind == "Service" {
            self.apply_services()?;
        }
        Ok(gone)
    }
}
