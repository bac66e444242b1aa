//! What the plugin told the agent about this node's pods, laid over the
//! cluster state: the source (API server, manifests) learns a new pod's
//! address later than CNI ADD does, and learns of a deletion later than CNI
//! DEL. Pure; the socket is `pod_socket.rs`.
//!
//! - ADD: the pod (by namespace/name) gets the address on this node, even
//!   before the source shows it. Labels still come from the source: a pod the
//!   source does not know yet stays unknown (and dropped, fail closed).
//! - DEL: the address leaves every pod of this node until the source no
//!   longer shows it, so a reused address never inherits the old pod's policy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use crate::model::Model;

/// One attachment reported by ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attached {
    /// "namespace/name".
    pod: String,
    ips: Vec<Ipv4Addr>,
}

/// The plugin's reports, by (container ID, ifname).
#[derive(Debug, Default)]
pub struct PodEvents {
    attached: BTreeMap<(String, String), Attached>,
    /// Addresses DEL released that the source may still show.
    released: BTreeSet<Ipv4Addr>,
}

impl PodEvents {
    pub fn add(&mut self, container_id: &str, ifname: &str, namespace: &str, name: &str, ips: &[IpAddr]) {
        let ips: Vec<Ipv4Addr> = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        for ip in &ips {
            self.released.remove(ip);
        }
        let key = (container_id.to_string(), ifname.to_string());
        self.attached.insert(key, Attached { pod: format!("{namespace}/{name}"), ips });
    }

    /// Forgets an attachment; its addresses are released. Unknown: nothing to do.
    pub fn del(&mut self, container_id: &str, ifname: &str) {
        if let Some(a) = self.attached.remove(&(container_id.to_string(), ifname.to_string())) {
            self.released.extend(a.ips);
        }
    }

    /// True if the source knows pod "namespace/name".
    pub fn known(model: &Model, namespace: &str, name: &str) -> bool {
        model.pods.contains_key(&format!("{namespace}/{name}"))
    }

    /// `model` with the reports laid over it, for node `node`.
    pub fn overlay(&self, model: &Model, node: &str) -> Model {
        let mut m = model.clone();
        let claimed: BTreeMap<Ipv4Addr, &str> =
            self.attached.values().flat_map(|a| a.ips.iter().map(move |ip| (*ip, a.pod.as_str()))).collect();
        for (key, pod) in m.pods.iter_mut() {
            let Some(ip) = pod.ip else { continue };
            let on_this_node = pod.node.as_deref() == Some(node);
            let claimed_by_other = claimed.get(&ip).is_some_and(|owner| owner != key);
            if on_this_node && (self.released.contains(&ip) || claimed_by_other) {
                pod.ip = None;
            }
        }
        for a in self.attached.values() {
            if let (Some(pod), Some(ip)) = (m.pods.get_mut(&a.pod), a.ips.first()) {
                pod.ip = Some(*ip);
                pod.node = Some(node.to_string());
            }
        }
        m
    }

    /// Drops what the source has caught up with: released addresses no pod of
    /// this node shows any more, and attachments the source shows as they are.
    pub fn prune(&mut self, model: &Model, node: &str) {
        let shown: BTreeSet<Ipv4Addr> =
            model.pods.values().filter(|p| p.node.as_deref() == Some(node)).filter_map(|p| p.ip).collect();
        self.released.retain(|ip| shown.contains(ip));
        self.attached.retain(|_, a| {
            let pod = model.pods.get(&a.pod);
            !pod.is_some_and(|p| {
                p.node.as_deref() == Some(node) && p.ip.is_some() && p.ip == a.ips.first().copied()
            })
        });
    }

    /// How many attachments are ahead of the source.
    pub fn pending(&self) -> usize {
        self.attached.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(text: &str) -> Model {
        Model::of_manifests(text)
    }

    fn pod(name: &str, node: u32, ip: Option<&str>) -> String {
        let status = ip.map(|ip| format!("status: {{podIP: {ip}}}\n")).unwrap_or_default();
        format!("---\nkind: Pod\nmetadata: {{name: {name}, namespace: x}}\nspec: {{nodeName: node-{node}}}\n{status}")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn add_gives_a_known_pod_its_address_before_the_source_does() {
        let m = model(&pod("a", 1, None));
        let mut ev = PodEvents::default();
        ev.add("c1", "eth0", "x", "a", &[ip("10.244.1.5"), ip("fd00::5")]);
        let o = ev.overlay(&m, "node-1");
        assert_eq!(o.pods["x/a"].ip, Some(Ipv4Addr::new(10, 244, 1, 5)));
        // The source catches up: nothing left to lay over.
        let caught_up = model(&pod("a", 1, Some("10.244.1.5")));
        ev.prune(&caught_up, "node-1");
        assert_eq!(ev.pending(), 0);
        assert_eq!(ev.overlay(&caught_up, "node-1"), caught_up);
        // A pod the source does not know gets nothing (its labels are unknown).
        ev.add("c2", "eth0", "x", "ghost", &[ip("10.244.1.6")]);
        assert!(!PodEvents::known(&caught_up, "x", "ghost"));
        assert_eq!(ev.overlay(&caught_up, "node-1").pods.len(), 1);
    }

    #[test]
    fn a_released_address_leaves_the_old_pod_until_the_source_drops_it() {
        let m = model(&pod("a", 1, Some("10.244.1.5")));
        let mut ev = PodEvents::default();
        ev.add("c1", "eth0", "x", "a", &[ip("10.244.1.5")]);
        ev.del("c1", "eth0");
        assert_eq!(ev.overlay(&m, "node-1").pods["x/a"].ip, None, "the source still shows it");
        // Reused by a new pod b: b has it, the stale a does not.
        let m2 = model(&format!("{}{}", pod("a", 1, Some("10.244.1.5")), pod("b", 1, None)));
        ev.add("c2", "eth0", "x", "b", &[ip("10.244.1.5")]);
        let o = ev.overlay(&m2, "node-1");
        assert_eq!((o.pods["x/a"].ip, o.pods["x/b"].ip), (None, Some(Ipv4Addr::new(10, 244, 1, 5))));
        // The source drops a: the release is forgotten; b stays until the source shows it.
        let m3 = model(&pod("b", 1, None));
        ev.prune(&m3, "node-1");
        assert_eq!(ev.pending(), 1);
        ev.del("unknown", "eth0");
        assert_eq!(ev.overlay(&m3, "node-1").pods["x/b"].ip, Some(Ipv4Addr::new(10, 244, 1, 5)));
    }
}
