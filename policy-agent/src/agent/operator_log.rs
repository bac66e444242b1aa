//! What the agent tells the operator about the cluster state and the node:
//! each error and warning once, when it appears (a resync repeats nothing),
//! at the level that says whether to act. Pure choices, unit-tested; the
//! lines go through `tracing`.

use tracing::{error, warn};

use crate::model::{Model, Snapshot};
use crate::source::kube::WATCH_ORIGIN;
use crate::status::Status;

/// This node as the cluster state shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum OwnNode {
    /// It has a podCIDR (of either family).
    Ready,
    /// It is there without one: normal until the controller-manager assigns
    /// it (a warning, not an error).
    NoPodCidr(String),
    /// No Node of that name: `--node` is misspelt (an error).
    Unknown(String),
}

/// Where `node` stands in `model`.
pub(super) fn own_node(model: &Model, node: &str) -> OwnNode {
    match model.nodes.get(node) {
        Some(n) if !n.pod_cidrs().is_empty() => OwnNode::Ready,
        Some(_) => OwnNode::NoPodCidr(format!(
            "node {node} has no podCIDR yet: waiting for the controller-manager to assign one \
             (kube-controller-manager --allocate-node-cidrs); routes to it, its masquerade rule and \
             the conflist follow once it has one"
        )),
        None => {
            let mut known: Vec<&str> = model.nodes.keys().map(String::as_str).take(5).collect();
            if model.nodes.len() > known.len() {
                known.push("...");
            }
            OwnNode::Unknown(format!(
                "node {node} is not in the cluster state: is --node spelt as `kubectl get nodes` shows it? \
                 (nodes: {})",
                if known.is_empty() { "none yet".to_string() } else { known.join(", ") }
            ))
        }
    }
}

/// Logs the source's errors that are new since the last snapshot (a bad
/// object is ignored, the rest applies). The kube watchers log their own
/// trouble, folded, so their errors are not said again here.
pub(super) fn report_source_errors(logged: &mut Vec<String>, snap: &Snapshot) {
    let now: Vec<String> =
        snap.errors.iter().filter(|e| e.file != WATCH_ORIGIN).map(|e| e.to_string()).collect();
    for e in now.iter().filter(|e| !logged.contains(e)) {
        warn!(generation = %snap.generation, "{e}; the rest of the cluster state applies");
    }
    *logged = now;
}

/// Logs the sysctls that are off (when they turn off, or at the first sync),
/// and new warnings and errors, except `source_errors` (their source logs them).
pub(super) fn report_changes(last: Option<&Status>, now: &Status, source_errors: &[String]) {
    let was_fwd = last.map(|s| s.ip_forward);
    if !now.ip_forward && was_fwd != Some(false) {
        warn!("net.ipv4.ip_forward is off on this node: pods on other nodes are unreachable");
    }
    let was_br = last.and_then(|s| s.bridge_nf_call_iptables);
    if now.bridge_nf_call_iptables == Some(false) && was_br != Some(false) {
        warn!("net.bridge.bridge-nf-call-iptables is off on this node: same-node service traffic bypasses conntrack");
    }
    let was_br6 = last.and_then(|s| s.bridge_nf_call_ip6tables);
    if now.bridge_nf_call_ip6tables == Some(false) && was_br6 != Some(false) {
        warn!("net.bridge.bridge-nf-call-ip6tables is off on this node: IPv6 between pods of one bridge bypasses conntrack and policy");
    }
    for w in new_items(last.map(|s| &s.warnings[..]), &now.warnings, &[]) {
        warn!(generation = %now.generation, "{w}");
    }
    for e in new_items(last.map(|s| &s.errors[..]), &now.errors, source_errors) {
        error!(generation = %now.generation, "{e}");
    }
}

/// The items of `now` not in `last` nor in `skip`.
fn new_items<'a>(last: Option<&[String]>, now: &'a [String], skip: &[String]) -> Vec<&'a String> {
    now.iter().filter(|e| !skip.contains(e) && !last.is_some_and(|l| l.contains(e))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Node;

    #[test]
    fn a_missing_pod_cidr_waits_and_an_unknown_node_is_named() {
        let mut model = Model::default();
        let n = |name: &str, cidr: Option<&str>| Node {
            name: name.into(),
            labels: Default::default(),
            pod_cidr: cidr.map(|c| c.parse().unwrap()),
            pod_cidr6: None,
            internal_ip: None,
            addresses: vec![],
            internal_ip6: None,
        };
        model.nodes.insert("node-1".into(), n("node-1", None));
        model.nodes.insert("node-2".into(), n("node-2", Some("10.244.2.0/24")));
        assert_eq!(own_node(&model, "node-2"), OwnNode::Ready);
        // An IPv6-only node is ready with its IPv6 pod CIDR.
        let v6_only = Node { pod_cidr6: Some("fd00::af4:300/120".parse().unwrap()), ..n("node-3", None) };
        model.nodes.insert("node-3".into(), v6_only);
        assert_eq!(own_node(&model, "node-3"), OwnNode::Ready);
        let OwnNode::NoPodCidr(w) = own_node(&model, "node-1") else { panic!() };
        assert!(w.contains("waiting for the controller-manager"), "{w}");
        let OwnNode::Unknown(e) = own_node(&model, "node-4") else { panic!() };
        assert!(e.contains("node node-4 is not in the cluster state") && e.contains("node-1, node-2"), "{e}");
        let OwnNode::Unknown(e) = own_node(&Model::default(), "n") else { panic!() };
        assert!(e.contains("nodes: none yet"), "{e}");
    }

    #[test]
    fn only_new_items_and_not_the_skipped() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (last, now) = (s(&["a", "b"]), s(&["b", "c", "d"]));
        assert_eq!(new_items(Some(&last), &now, &s(&["d"])), [&"c".to_string()]);
        assert_eq!(new_items(None, &now, &[]).len(), 3, "the first sync says everything");
    }
}
