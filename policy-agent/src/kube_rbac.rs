//! The Kubernetes API calls the agent makes, in one place: the watchers
//! (`--source kube`) read these kinds, the ClusterNetworkPolicy status writer
//! (`source::kube::cnp_status`) writes the status subresource and Leases, and
//! `deploy/weft.yaml` grants exactly these: the cluster-wide ones in its
//! ClusterRole, the namespaced ones (Leases) in a Role in the agent's
//! namespace only (tests compare them). The watchers list and watch each
//! kind; `get` (one object) is granted with them, still read-only.

/// One resource the agent uses: its API group ("" for core), version,
/// resource (plural, as RBAC names it, a subresource after a slash), the
/// verbs it uses, and whether only in the agent's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiCall {
    pub group: &'static str,
    pub version: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    /// Granted by a Role in the agent's namespace, not the ClusterRole.
    pub namespaced: bool,
}

/// get, list and watch: a reflector lists then watches; get reads one object.
pub const READ: &[&str] = &["get", "list", "watch"];

/// Every API call of the agent.
pub const API_CALLS: &[ApiCall] = &[
    ApiCall { group: "", version: "v1", resource: "nodes", verbs: READ, namespaced: false },
    ApiCall { group: "", version: "v1", resource: "namespaces", verbs: READ, namespaced: false },
    ApiCall { group: "", version: "v1", resource: "pods", verbs: READ, namespaced: false },
    ApiCall {
        group: "networking.k8s.io",
        version: "v1",
        resource: "networkpolicies",
        verbs: READ,
        namespaced: false,
    },
    // Read only while the CRD is served (`source::kube::cnp`).
    ApiCall {
        group: "policy.networking.k8s.io",
        version: "v1alpha2",
        resource: "clusternetworkpolicies",
        verbs: READ,
        namespaced: false,
    },
    // Written by the status writer while the CRD is served (`source::kube::cnp_status`):
    // server-side apply of the conditions.
    ApiCall {
        group: "policy.networking.k8s.io",
        version: "v1alpha2",
        resource: "clusternetworkpolicies/status",
        verbs: &["patch"],
        namespaced: false,
    },
    // The writer's election and the node reports, in the agent's namespace.
    ApiCall {
        group: "coordination.k8s.io",
        version: "v1",
        resource: "leases",
        verbs: &["get", "list", "create", "update"],
        namespaced: true,
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kube::cnp::watched_cnp;
    use crate::source::kube::cnp_status;
    use crate::source::kube::watched;

    /// The status writer's calls (from the types it writes) are exactly the
    /// written entries of API_CALLS.
    #[test]
    fn the_status_writers_calls_are_listed_exactly() {
        let writes: Vec<ApiCall> = API_CALLS.iter().filter(|c| c.verbs != READ).copied().collect();
        assert_eq!(writes, cnp_status::calls());
    }

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
        for c in API_CALLS.iter().filter(|c| c.verbs == READ) {
            assert!(
                read().any(|w| (w.group, w.resource) == (c.group, c.resource)),
                "{} is granted but never read",
                c.resource
            );
        }
    }
}
