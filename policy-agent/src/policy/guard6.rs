//! IPv6 until it is enforced: fail closed. The compiler and the IR speak
//! IPv4, so a dual-stack pod that a policy isolates would be open over IPv6.
//! Until IPv6 policy is compiled, this node drops every new IPv6 connection
//! to a pod isolated for ingress and from a pod isolated for egress (replies
//! to connections the pod opened still pass, as for IPv4), and any IPv6
//! traffic of an address in its IPv6 pod CIDR that no known pod holds.
//! Pods that no policy selects keep IPv6 as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;

use ipnetwork::Ipv6Network;
use serde::Serialize;

use crate::model::{Model, NetworkPolicy, Pod};

/// What this node drops in IPv6.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Guard6 {
    /// This node's IPv6 pod CIDR: its addresses that are not `local` belong
    /// to no known pod, and are dropped.
    pub pod_cidr: Option<Ipv6Network>,
    /// The IPv6 addresses of this node's pods (hostNetwork pods excluded).
    pub local: BTreeSet<Ipv6Addr>,
    /// Local pods some enforced policy isolates for ingress.
    pub ingress: BTreeSet<Ipv6Addr>,
    /// Local pods some enforced policy isolates for egress.
    pub egress: BTreeSet<Ipv6Addr>,
}

impl Guard6 {
    /// The guard for `node`, whose pods with an IPv6 address are `local6`
    /// (pod key -> address).
    pub fn new(model: &Model, node: &str, local6: &BTreeMap<String, Ipv6Addr>) -> Guard6 {
        let mut g = Guard6 {
            pod_cidr: model.nodes.get(node).and_then(|n| n.pod_cidr6),
            local: local6.values().copied().collect(),
            ..Guard6::default()
        };
        for (key, ip) in local6 {
            let Some(pod) = model.pods.get(key) else { continue };
            for policy in policies_of(model, &pod.namespace) {
                // Audit policies isolate nothing.
                if policy.audit || !policy.pod_selector.matches(&pod.labels) {
                    continue;
                }
                if policy.ingress.is_some() {
                    g.ingress.insert(*ip);
                }
                if policy.egress.is_some() {
                    g.egress.insert(*ip);
                }
            }
        }
        g
    }
}

/// The IPv6 address `pod` holds on `node`, if it counts for policy there.
pub fn local_address(pod: &Pod, node: &str) -> Option<Ipv6Addr> {
    pod.ip6.filter(|_| !pod.host_network && pod.node.as_deref() == Some(node))
}

/// The policies of namespace `ns` (policy keys are "namespace/name").
fn policies_of<'m>(model: &'m Model, ns: &str) -> impl Iterator<Item = &'m NetworkPolicy> {
    let from = format!("{ns}/");
    model.policies.range(from.clone()..).take_while(move |(k, _)| k.starts_with(&from)).map(|(_, p)| &**p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_manifests;

    const MODEL: &str = "
kind: Node
metadata: {name: node-1}
spec: {podCIDRs: [10.244.1.0/24, 'fd00:244:1::/64']}
---
kind: Node
metadata: {name: node-2}
spec: {podCIDRs: ['fd00:244:2::/64']}
---
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: node-1}
status: {podIPs: [{ip: 10.244.1.2}, {ip: 'fd00:244:1::2'}]}
---
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: node-1}
status: {podIPs: [{ip: 'fd00:244:1::3'}]}
---
kind: Pod
metadata: {name: c, namespace: xy, labels: {app: a}}
spec: {nodeName: node-1}
status: {podIPs: [{ip: 'fd00:244:1::4'}]}
---
kind: Pod
metadata: {name: d, namespace: x, labels: {app: a}}
spec: {nodeName: node-2}
status: {podIPs: [{ip: 'fd00:244:2::5'}]}
---
kind: Pod
metadata: {name: h, namespace: x, labels: {app: a}}
spec: {nodeName: node-1, hostNetwork: true}
status: {podIPs: [{ip: 'fd00:244:1::6'}]}
---
kind: NetworkPolicy
metadata: {name: in-a, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}}
---
kind: NetworkPolicy
metadata: {name: out-b, namespace: x}
spec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Egress]}
---
kind: NetworkPolicy
metadata: {name: audit-all, namespace: xy, annotations: {weft.io/audit: 'true'}}
spec: {podSelector: {}}
";

    fn guard(node: &str) -> Guard6 {
        let model: Model = parse_manifests(MODEL).unwrap().into_iter().collect();
        let local6 =
            model.pods.iter().filter_map(|(k, p)| Some((k.clone(), local_address(p, node)?))).collect();
        Guard6::new(&model, node, &local6)
    }

    fn addrs(a: &[&str]) -> BTreeSet<Ipv6Addr> {
        a.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn isolation_follows_the_policies_of_the_pods_own_namespace() {
        let g = guard("node-1");
        assert_eq!(g.pod_cidr, Some("fd00:244:1::/64".parse().unwrap()));
        // hostNetwork pods and other nodes' pods are not local.
        assert_eq!(g.local, addrs(&["fd00:244:1::2", "fd00:244:1::3", "fd00:244:1::4"]));
        // x/a is isolated for ingress; xy/c has the same labels in another
        // namespace, whose only policy is an audit one.
        assert_eq!(g.ingress, addrs(&["fd00:244:1::2"]));
        assert_eq!(g.egress, addrs(&["fd00:244:1::3"]));
    }

    #[test]
    fn an_ipv6_only_node_has_its_cidr_and_pods() {
        let g = guard("node-2");
        assert_eq!(g.pod_cidr, Some("fd00:244:2::/64".parse().unwrap()));
        assert_eq!(g.local, addrs(&["fd00:244:2::5"]));
        assert_eq!(g.ingress, addrs(&["fd00:244:2::5"]));
        assert!(g.egress.is_empty());
    }
}
