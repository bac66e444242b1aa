//! The Kubernetes API calls the agent makes, in one place: the watcher
//! (`--source kube`) reads exactly these, and `deploy/weft.yaml`'s ClusterRole
//! grants exactly these (a test compares the two). The agent only reads:
//! it lists and watches each kind, and gets its own Node.

/// One kind the agent reads: its API group ("" for core), version, resource
/// (plural, as RBAC names it) and the verbs it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiCall {
    pub group: &'static str,
    pub version: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

/// get, list and watch: a reflector lists then watches; get reads one object.
pub const READ: &[&str] = &["get", "list", "watch"];

/// Every API call of the agent.
pub const API_CALLS: &[ApiCall] = &[
    ApiCall { group: "", version: "v1", resource: "nodes", verbs: READ },
    ApiCall { group: "", version: "v1", resource: "namespaces", verbs: READ },
    ApiCall { group: "", version: "v1", resource: "pods", verbs: READ },
    ApiCall { group: "networking.k8s.io", version: "v1", resource: "networkpolicies", verbs: READ },
];
