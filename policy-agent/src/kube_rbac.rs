//! The Kubernetes API calls the agent makes, in one place: the watcher
//! (`--source kube`) reads exactly these, and `deploy/weft.yaml`'s ClusterRole
//! grants exactly these (tests compare the three). The agent only reads: its
//! watchers list and watch each kind; `get` (one object) is granted with
//! them, still read-only.

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
    // Read only while the CRD is served (`source::kube::cnp`).
    ApiCall {
        group: "policy.networking.k8s.io",
        version: "v1alpha2",
        resource: "clusternetworkpolicies",
        verbs: READ,
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kube::cnp::watched_cnp;
    use crate::source::kube::watched;

    /// The watchers' calls (from the k8s-openapi types they watch) are
    /// granted, and nothing is granted for a kind they do not read: with the
    /// manifest test (ClusterRole == API_CALLS), the RBAC covers every call.
    #[test]
    fn every_call_the_watchers_make_is_granted_and_no_other_kind() {
        let read = || watched().into_iter().chain([watched_cnp()]);
        for w in read() {
            let call = API_CALLS
                .iter()
                .find(|c| (c.group, c.version, c.resource) == (w.group, w.version, w.resource))
                .unwrap_or_else(|| {
                    panic!("{}/{} {} is watched but not granted", w.group, w.version, w.resource)
                });
            for verb in w.verbs {
                assert!(call.verbs.contains(verb), "{verb} on {} is not granted", w.resource);
            }
        }
        for c in API_CALLS {
            assert!(
                read().any(|w| (w.group, w.resource) == (c.group, c.resource)),
                "{} is granted but never read",
                c.resource
            );
        }
    }
}
