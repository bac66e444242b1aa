//! Kubernetes API objects -> the model. Pure: the watchers' stores go in, a
//! snapshot comes out. Each object goes through the manifest parser
//! (`model::manifest::parse_serialized`), the one validator both sources
//! share; an object is parsed again only when its resourceVersion changed,
//! and one that stops validating keeps its last good version, as a manifest
//! file's object does.

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde::Serialize;
use weft_conf::hash::Fnv1a;

use crate::model::manifest::{parse_serialized, Object};
use crate::model::{Model, SourceError};
use crate::source::keep_last_good;

/// Where translation errors are reported (`SourceError::file`).
pub const API_ORIGIN: &str = "kube API";

/// What one object gave at one resourceVersion.
#[derive(Debug, Clone)]
struct Entry {
    resource_version: String,
    /// The object, or the last good version of one that no longer validates.
    object: Option<Object>,
    error: Option<String>,
}

/// The objects of every watched kind, translated, remembered by resourceVersion.
#[derive(Debug, Default)]
pub struct Translator {
    /// By (kind, key): see `object_key`.
    cache: BTreeMap<(&'static str, String), Entry>,
}

/// The key of an object of a kind: "namespace/name", or "name" for a
/// cluster-scoped kind (the stand-in API server keys its objects the same way).
pub fn object_key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// The generation of an API state: FNV-1a 64 over every object's kind, key
/// and resourceVersion, in sorted order. Two readers that hold the same
/// objects at the same versions compute the same value, whatever order their
/// events came in: the testbed's stand-in API server computes it from what it
/// serves, the agent from its stores, and convergence is equality.
pub fn state_generation<'a>(objects: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) -> String {
    let mut sorted: Vec<(&str, &str, &str)> = objects.into_iter().collect();
    sorted.sort_unstable();
    let mut h = Fnv1a::new();
    for (kind, key, rv) in sorted {
        for part in [kind, key, rv] {
            h = h.write(&(part.len() as u64).to_le_bytes()).write(part.as_bytes());
        }
    }
    format!("kube-{:016x}", h.finish())
}

/// One translation: the model, what could not be read, and the generation.
#[derive(Debug)]
pub struct Translated {
    pub model: Model,
    pub errors: Vec<SourceError>,
    pub generation: String,
}

impl Translator {
    /// Starts a translation of the current stores; add each kind with `add`.
    pub fn begin(&mut self) -> Batch<'_> {
        Batch { t: self, seen: Vec::new(), model: Model::default(), errors: Vec::new() }
    }
}

/// A translation in progress.
pub struct Batch<'t> {
    t: &'t mut Translator,
    /// (kind, key, resourceVersion) of every object added.
    seen: Vec<(&'static str, String, String)>,
    model: Model,
    errors: Vec<SourceError>,
}

impl Batch<'_> {
    /// Adds every object of one kind (all of a store's contents).
    pub fn add<K, O>(&mut self, kind: &'static str, objects: impl IntoIterator<Item = O>)
    where
        K: kube::Resource + Serialize,
        O: AsRef<K>,
    {
        for obj in objects {
            let obj = obj.as_ref();
            let key = object_key(obj.meta().namespace.as_deref(), &obj.name_any());
            let rv = obj.resource_version().unwrap_or_default();
            let entry = match self.t.cache.remove(&(kind, key.clone())) {
                Some(e) if e.resource_version == rv => e,
                previous => translate(obj, &rv, previous.and_then(|e| e.object)),
            };
            if let Some(e) = &entry.error {
                self.errors.push(SourceError { file: API_ORIGIN.into(), reason: e.clone() });
            }
            if let Some(o) = &entry.object {
                // Keys are unique within a store, so nothing is displaced.
                self.model.insert(o.clone());
            }
            self.t.cache.insert((kind, key.clone()), entry);
            self.seen.push((kind, key, rv));
        }
    }

    /// Ends the translation: objects not added since `begin` are gone (their
    /// last good versions with them).
    pub fn finish(self) -> Translated {
        let keep: std::collections::BTreeSet<(&str, &str)> =
            self.seen.iter().map(|(k, key, _)| (*k, key.as_str())).collect();
        self.t.cache.retain(|(k, key), _| keep.contains(&(*k, key.as_str())));
        let generation =
            state_generation(self.seen.iter().map(|(k, key, rv)| (*k, key.as_str(), rv.as_str())));
        Translated { model: self.model, errors: self.errors, generation }
    }
}

/// Parses one object; `previous` is its last good version.
fn translate<K: Serialize>(obj: &K, rv: &str, previous: Option<Object>) -> Entry {
    let resource_version = rv.to_string();
    let mut results = parse_serialized(obj).into_iter();
    match results.next() {
        Some(Ok(o)) => Entry { resource_version, object: Some(o), error: None },
        Some(Err(e)) => {
            let (object, report) = keep_last_good(&e, previous.as_ref());
            Entry { resource_version, object, error: Some(report) }
        }
        // A k8s-openapi object always serialises with its kind, which the parser reads.
        None => Entry { resource_version, object: previous, error: None },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use serde_json::json;

    use super::*;

    fn from<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<K> {
        Arc::new(serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}")))
    }

    fn pod(name: &str, rv: &str, status: serde_json::Value) -> Arc<Pod> {
        from(json!({
            "metadata": {"name": name, "namespace": "x", "resourceVersion": rv, "labels": {"app": name}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c",
                     "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": status,
        }))
    }

    fn policy(name: &str, rv: &str, operator: &str) -> Arc<NetworkPolicy> {
        from(json!({
            "metadata": {"name": name, "namespace": "x", "resourceVersion": rv},
            "spec": {"podSelector": {"matchExpressions": [{"key": "app", "operator": operator,
                                                           "values": ["a"]}]},
                     "ingress": [{"ports": [{"port": "http"}]}]},
        }))
    }

    fn translate_all(t: &mut Translator, pods: &[Arc<Pod>], policies: &[Arc<NetworkPolicy>]) -> Translated {
        let mut b = t.begin();
        b.add::<Pod, _>("Pod", pods.iter().cloned());
        b.add::<NetworkPolicy, _>("NetworkPolicy", policies.iter().cloned());
        b.finish()
    }

    #[test]
    fn pods_count_with_an_address_and_not_terminal() {
        let running = pod(
            "a",
            "1",
            json!({"phase": "Running", "podIP": "10.244.1.5",
                                            "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::af4:105"}]}),
        );
        let pending = pod("b", "2", json!({"phase": "Pending"}));
        let done = pod("c", "3", json!({"phase": "Succeeded", "podIP": "10.244.1.6"}));
        let failed = pod("d", "4", json!({"phase": "Failed", "podIP": "10.244.1.7"}));
        let t = translate_all(&mut Translator::default(), &[running, pending, done, failed], &[]);
        assert!(t.errors.is_empty(), "{:?}", t.errors);
        let ips: Vec<_> = t.model.pods.values().map(|p| (p.name.as_str(), p.ip)).collect();
        assert_eq!(ips, [("a", Some("10.244.1.5".parse().unwrap())), ("b", None), ("c", None), ("d", None)]);
        let a = &t.model.pods["x/a"];
        assert_eq!(a.ip6, "fd00::af4:105".parse().ok(), "podIPs' IPv6 one");
        assert_eq!((a.node.as_deref(), a.labels["app"].as_str()), (Some("node-1"), "a"));
        assert_eq!(a.ports[0].name.as_deref(), Some("http"));
    }

    #[test]
    fn nodes_and_namespaces() {
        let single: Arc<Node> = from(json!({"metadata": {"name": "n1", "resourceVersion": "1"},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.31.0.11"}]}}));
        let dual: Arc<Node> = from(json!({"metadata": {"name": "n2", "resourceVersion": "2"},
            "spec": {"podCIDR": "fd00:10:244:2::/64", "podCIDRs": ["fd00:10:244:2::/64", "10.244.2.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "fd00::ac1f:c"},
                                     {"type": "InternalIP", "address": "172.31.0.12"}]}}));
        let ns: Arc<Namespace> =
            from(json!({"metadata": {"name": "web", "resourceVersion": "3", "labels": {"team": "a"}}}));
        let mut t = Translator::default();
        let mut b = t.begin();
        b.add::<Node, _>("Node", [single, dual]);
        b.add::<Namespace, _>("Namespace", [ns]);
        let m = b.finish().model;
        assert_eq!(m.nodes["n1"].pod_cidr, Some("10.244.1.0/24".parse().unwrap()));
        assert_eq!(m.nodes["n1"].internal_ip, Some("172.31.0.11".parse().unwrap()));
        assert_eq!(m.nodes["n2"].pod_cidr, Some("10.244.2.0/24".parse().unwrap()), "podCIDRs' IPv4 one");
        assert_eq!(m.nodes["n2"].pod_cidr6, Some("fd00:10:244:2::/64".parse().unwrap()));
        let n2 = (m.nodes["n2"].internal_ip, m.nodes["n2"].internal_ip6);
        assert_eq!(n2, ("172.31.0.12".parse().ok(), "fd00::ac1f:c".parse().ok()), "both families");
        assert_eq!(m.nodes["n1"].internal_ip6, None);
        let labels = &m.namespaces["web"].labels;
        assert_eq!((labels["team"].as_str(), labels["kubernetes.io/metadata.name"].as_str()), ("a", "web"));
    }

    #[test]
    fn a_malformed_policy_is_reported_then_its_last_good_version_kept() {
        let mut t = Translator::default();
        // Never valid: reported and skipped.
        let bad = translate_all(&mut t, &[], &[policy("p", "1", "Near")]);
        assert!(bad.model.policies.is_empty());
        assert_eq!(bad.errors.len(), 1, "{:?}", bad.errors);
        assert_eq!(bad.errors[0].file, API_ORIGIN);
        assert!(bad.errors[0].reason.starts_with("NetworkPolicy x/p: "), "{:?}", bad.errors);
        assert!(bad.errors[0].reason.ends_with("; skipped"), "{:?}", bad.errors);

        let good = translate_all(&mut t, &[], &[policy("p", "2", "In")]);
        assert!(good.errors.is_empty(), "{:?}", good.errors);
        assert_eq!(good.model.policies.len(), 1);

        // Broken again: the version of rv 2 stays in force.
        let broken = translate_all(&mut t, &[], &[policy("p", "3", "Near")]);
        assert_eq!(broken.model.policies, good.model.policies);
        assert!(broken.errors[0].reason.contains("keeping its last good version"), "{:?}", broken.errors);
        assert!(broken.errors[0].reason.contains("Near"), "{:?}", broken.errors);

        // Deleted: its last good version goes too, and a re-created bad one has none.
        assert!(translate_all(&mut t, &[], &[]).model.policies.is_empty());
        let again = translate_all(&mut t, &[], &[policy("p", "5", "Near")]);
        assert!(again.model.policies.is_empty());
    }

    #[test]
    fn the_generation_follows_keys_and_versions_not_order() {
        let a = pod("a", "1", json!({}));
        let b = pod("b", "2", json!({}));
        let mut t = Translator::default();
        let g1 = translate_all(&mut t, &[a.clone(), b.clone()], &[]).generation;
        assert_eq!(g1, translate_all(&mut t, &[b.clone(), a.clone()], &[]).generation);
        assert_eq!(
            g1,
            state_generation([("Pod", "x/b", "2"), ("Pod", "x/a", "1")]),
            "what the stand-in computes"
        );
        let b3 = pod("b", "3", json!({}));
        assert_ne!(g1, translate_all(&mut t, &[a.clone(), b3], &[]).generation);
        assert_ne!(g1, translate_all(&mut t, std::slice::from_ref(&a), &[]).generation);
        // The same key and version under another kind is another state.
        assert_ne!(state_generation([("Pod", "x/a", "1")]), state_generation([("Node", "x/a", "1")]));
    }

    #[test]
    fn an_unchanged_version_is_not_parsed_again() {
        let mut t = Translator::default();
        let first = translate_all(&mut t, &[pod("a", "1", json!({"podIP": "10.244.1.5"}))], &[]);
        // Same resourceVersion, other content (an API server never does this):
        // the cached translation stands, which shows nothing was re-parsed.
        let same_rv = translate_all(&mut t, &[pod("a", "1", json!({"podIP": "10.244.1.6"}))], &[]);
        assert_eq!(same_rv.model, first.model);
        let new_rv = translate_all(&mut t, &[pod("a", "2", json!({"podIP": "10.244.1.6"}))], &[]);
        assert_eq!(new_rv.model.pods["x/a"].ip, Some("10.244.1.6".parse().unwrap()));
    }
}
