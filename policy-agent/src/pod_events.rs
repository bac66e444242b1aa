//! What the plugin told the agent about this node's pods, laid over the
//! cluster state: the source (API server, manifests) learns a new pod's
//! address later than CNI ADD does, and learns of a deletion later than CNI
//! DEL. Pure; the socket is `pod_socket.rs`.
//!
//! - ADD: the pod (by namespace/name) gets the address on this node, even
//!   before the source shows it. Labels still come from the source, so the
//!   loop only records an ADD once the source shows the pod.
//! - DEL: the address leaves the pod until the source no longer shows it
//!   there, so a reused address never inherits the old pod's policy.
//!
//! The socket is root-only, yet a claim is an outside input like any other
//! and must not bend policy, so each is checked before it counts:
//! - each address lies in this node's pod CIDR of its family (from the
//!   cluster state) and is not its network (or IPv4 broadcast) address; only
//!   the first address of each family counts, as in the model (a report of
//!   neither family's address changes nothing);
//! - the pod is scheduled to this node (or not yet to any) and is not a
//!   host-network pod;
//! - one live attachment per address, in each family: an address another container holds,
//!   or that the source shows for another pod of this node (no DEL having
//!   released it), is refused, and so is a second container for a pod;
//! - a claim the source already shows (every address of it) is in force
//!   without an attachment, so a DEL from a container that did not ADD
//!   releases nothing;
//! - an attachment the source never confirms expires after `CLAIM_TTL`, and
//!   at most `MAX_AHEAD` are ahead of the source.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;

use crate::model::{Model, Node, Pod};

/// How long an attachment the source has not confirmed stays in force.
pub const CLAIM_TTL: Duration = Duration::from_secs(120);
/// The most attachments ahead of the source (a /22 of pods, far above a node's).
pub const MAX_AHEAD: usize = 1024;
/// The most addresses one report may carry.
pub const MAX_ADDRESSES: usize = 8;

/// Why a claim was refused; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("{count} addresses in one report (at most {MAX_ADDRESSES})")]
    TooManyAddresses { count: usize },
    #[error("this node's {family} pod CIDR is not in the cluster state yet")]
    NoPodCidr { family: &'static str },
    #[error("{ip} is not a pod address of this node's pod CIDR {cidr}")]
    OutsidePodCidr { ip: IpAddr, cidr: IpNetwork },
    #[error("pod {pod} is not in the cluster state")]
    UnknownPod { pod: String },
    #[error("pod {pod} is scheduled to node {node}, not this one")]
    OtherNode { pod: String, node: String },
    #[error("pod {pod} uses the host network")]
    HostNetwork { pod: String },
    #[error("{ip} is held by container {container} (pod {pod})")]
    AddressHeld { ip: IpAddr, container: String, pod: String },
    #[error("{ip} belongs to pod {pod} in the cluster state")]
    AddressShown { ip: IpAddr, pod: String },
    #[error("pod {pod} is attached as container {container}; its DEL comes first")]
    PodHeld { pod: String, container: String },
    #[error("{MAX_AHEAD} attachments are ahead of the cluster state")]
    Full,
}

/// One ADD report, as the plugin sends it.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub ips: &'a [IpAddr],
}

/// One attachment an ADD recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attached {
    /// "namespace/name".
    pod: String,
    /// At most one address per family, IPv4 first.
    ips: Vec<IpAddr>,
    since: Instant,
    /// The source has shown the pod with these addresses (each family it
    /// shows agrees): kept so that its container's DEL releases them.
    confirmed: bool,
}

/// The plugin's reports, by (container ID, ifname).
#[derive(Debug, Default)]
pub struct PodEvents {
    attached: BTreeMap<(String, String), Attached>,
    /// (address, pod) pairs a DEL released that the source may still show.
    released: BTreeSet<(IpAddr, String)>,
}

/// The address `pod` has in the cluster state in the family of `like`.
fn shown_in_family(pod: &Pod, like: IpAddr) -> Option<IpAddr> {
    match like {
        IpAddr::V4(_) => pod.ip.map(IpAddr::V4),
        IpAddr::V6(_) => pod.ip6.map(IpAddr::V6),
    }
}

/// The addresses `pod` has in the cluster state, IPv4 first.
fn shown_addresses(pod: &Pod) -> impl Iterator<Item = IpAddr> {
    pod.ip.map(IpAddr::V4).into_iter().chain(pod.ip6.map(IpAddr::V6))
}

/// True if the source shows `pod` with an address of `ips` and with no other
/// address in their families.
fn agrees(pod: &Pod, ips: &[IpAddr]) -> bool {
    let shown: Vec<Option<IpAddr>> = ips.iter().map(|ip| shown_in_family(pod, *ip)).collect();
    shown.iter().any(Option::is_some) && shown.iter().zip(ips).all(|(s, ip)| s.is_none_or(|s| s == *ip))
}

/// The first address of each family in `ips`, each checked against `node`'s
/// pod CIDR of its family.
fn pod_addresses(node: Option<&Node>, ips: &[IpAddr]) -> Result<Vec<IpAddr>, ClaimError> {
    let v4 = ips.iter().find(|ip| ip.is_ipv4());
    let v6 = ips.iter().find(|ip| ip.is_ipv6());
    let mut out = Vec::with_capacity(2);
    for ip in v4.into_iter().chain(v6).copied() {
        let cidr = match ip {
            IpAddr::V4(_) => node.and_then(|n| n.pod_cidr).map(IpNetwork::V4),
            IpAddr::V6(_) => node.and_then(|n| n.pod_cidr6).map(IpNetwork::V6),
        };
        let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        let cidr = cidr.ok_or(ClaimError::NoPodCidr { family })?;
        let broadcast = matches!(cidr, IpNetwork::V4(c) if ip == IpAddr::V4(c.broadcast()));
        if !cidr.contains(ip) || ip == cidr.network() || broadcast {
            return Err(ClaimError::OutsidePodCidr { ip, cidr });
        }
        out.push(ip);
    }
    Ok(out)
}

impl PodEvents {
    /// Records an ADD of a pod `model` shows, for node `node`, if the claim
    /// holds (see the module doc); idempotent for the same container.
    pub fn add(&mut self, model: &Model, node: &str, claim: &Claim, now: Instant) -> Result<(), ClaimError> {
        self.expire(now);
        if claim.ips.len() > MAX_ADDRESSES {
            return Err(ClaimError::TooManyAddresses { count: claim.ips.len() });
        }
        if claim.ips.is_empty() {
            return Ok(());
        }
        let ips = pod_addresses(model.nodes.get(node), claim.ips)?;
        let pod = format!("{}/{}", claim.namespace, claim.name);
        let shown = model.pods.get(&pod).ok_or_else(|| ClaimError::UnknownPod { pod: pod.clone() })?;
        if let Some(other) = shown.node.as_deref().filter(|n| *n != node) {
            return Err(ClaimError::OtherNode { pod, node: other.into() });
        }
        if shown.host_network {
            return Err(ClaimError::HostNetwork { pod });
        }
        let key = (claim.container_id.to_string(), claim.ifname.to_string());
        for (k, a) in self.attached.iter().filter(|(k, _)| **k != key) {
            if let Some(ip) = ips.iter().find(|ip| a.ips.contains(ip)) {
                return Err(ClaimError::AddressHeld { ip: *ip, container: k.0.clone(), pod: a.pod.clone() });
            }
            if a.pod == pod && k.0 != key.0 {
                return Err(ClaimError::PodHeld { pod, container: k.0.clone() });
            }
        }
        let mut all_shown = true;
        for ip in &ips {
            match self.shown_owner(model, node, *ip) {
                Some(owner) if owner != pod => {
                    return Err(ClaimError::AddressShown { ip: *ip, pod: owner.into() });
                }
                Some(_) => {}
                None => all_shown = false,
            }
        }
        if all_shown && !self.attached.contains_key(&key) {
            return Ok(());
        }
        let new = !self.attached.contains_key(&key);
        if new && self.attached.values().filter(|a| !a.confirmed).count() >= MAX_AHEAD {
            return Err(ClaimError::Full);
        }
        let confirmed = agrees(shown, &ips);
        self.attached.insert(key, Attached { pod, ips, since: now, confirmed });
        Ok(())
    }

    /// The pod of this node the source shows with `ip`, unless a DEL released it.
    fn shown_owner<'m>(&self, model: &'m Model, node: &str, ip: IpAddr) -> Option<&'m str> {
        model
            .pods
            .iter()
            .filter(|(_, p)| shown_in_family(p, ip) == Some(ip) && p.node.as_deref() == Some(node))
            .map(|(k, _)| k.as_str())
            .find(|k| !self.released.contains(&(ip, k.to_string())))
    }

    /// Forgets the attachment this container added and releases its
    /// addresses; true if there was one (a DEL of anything else changes nothing).
    pub fn del(&mut self, container_id: &str, ifname: &str) -> bool {
        match self.attached.remove(&(container_id.to_string(), ifname.to_string())) {
            Some(a) => {
                for ip in a.ips {
                    self.released.insert((ip, a.pod.clone()));
                }
                true
            }
            None => false,
        }
    }

    /// True if the source knows pod "namespace/name".
    pub fn known(model: &Model, namespace: &str, name: &str) -> bool {
        model.pods.contains_key(&format!("{namespace}/{name}"))
    }

    /// `model` with the reports laid over it, for node `node`.
    pub fn overlay(&self, model: &Model, node: &str) -> Model {
        let mut m = model.clone();
        let here = |pod: &Pod| pod.node.as_deref() == Some(node);
        let claimed: BTreeMap<IpAddr, &str> =
            self.attached.values().flat_map(|a| a.ips.iter().map(|ip| (*ip, a.pod.as_str()))).collect();
        // Only the pods changed here are copied (`Arc::make_mut`).
        if !claimed.is_empty() {
            for (key, pod) in m.pods.iter_mut().filter(|(_, p)| here(p)) {
                for ip in [pod.ip.map(IpAddr::V4), pod.ip6.map(IpAddr::V6)].into_iter().flatten() {
                    if claimed.get(&ip).is_some_and(|owner| owner != key) {
                        without(pod, ip);
                    }
                }
            }
        }
        for (ip, key) in &self.released {
            if let Some(pod) = m.pods.get_mut(key).filter(|p| here(p) && holds(p, *ip)) {
                without(pod, *ip);
            }
        }
        for a in self.attached.values() {
            let stale = |p: &Pod| !here(p) || a.ips.iter().any(|ip| !holds(p, *ip));
            if let Some(pod) = m.pods.get_mut(&a.pod).filter(|p| stale(p)) {
                let pod = Arc::make_mut(pod);
                for ip in &a.ips {
                    match ip {
                        IpAddr::V4(v4) => pod.ip = Some(*v4),
                        IpAddr::V6(v6) => pod.ip6 = Some(*v6),
                    }
                }
                pod.node = Some(node.to_string());
            }
        }
        m
    }

    /// Catches up with a new state of the source: releases it no longer shows
    /// are forgotten; attachments it shows as they are become confirmed; and
    /// attachments go when their pod is gone or elsewhere, when the source
    /// moved a confirmed one to another address, when it shows one of their
    /// addresses for another pod, or when unconfirmed past `CLAIM_TTL`.
    pub fn catch_up(&mut self, model: &Model, node: &str, now: Instant) {
        let shown: BTreeSet<(IpAddr, &str)> = model
            .pods
            .iter()
            .filter(|(_, p)| p.node.as_deref() == Some(node))
            .flat_map(|(k, p)| shown_addresses(p).map(move |ip| (ip, k.as_str())))
            .collect();
        self.released.retain(|(ip, pod)| shown.contains(&(*ip, pod.as_str())));
        let released = &self.released;
        let taken_by_other = |ip: IpAddr, pod: &str| {
            shown
                .range((ip, "")..)
                .take_while(|(i, _)| *i == ip)
                .any(|(_, q)| *q != pod && !released.contains(&(ip, q.to_string())))
        };
        self.attached.retain(|_, a| {
            let Some(p) = model.pods.get(&a.pod) else { return false };
            if p.host_network || p.node.as_deref().is_some_and(|n| n != node) {
                return false;
            }
            let agreed = agrees(p, &a.ips);
            a.confirmed |= agreed;
            match () {
                _ if agreed => true,
                _ if a.confirmed => false,
                _ => {
                    !a.ips.iter().any(|ip| taken_by_other(*ip, &a.pod))
                        && now.duration_since(a.since) < CLAIM_TTL
                }
            }
        });
    }

    /// Drops the unconfirmed attachments older than `CLAIM_TTL`; true if any went.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.attached.len();
        self.attached.retain(|_, a| a.confirmed || now.duration_since(a.since) < CLAIM_TTL);
        self.attached.len() != before
    }

    /// How many attachments are ahead of the source.
    pub fn ahead(&self) -> usize {
        self.attached.values().filter(|a| !a.confirmed).count()
    }
}

/// True if `pod` holds `ip` (its address of that family).
fn holds(pod: &Pod, ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => pod.ip == Some(v4),
        IpAddr::V6(v6) => pod.ip6 == Some(v6),
    }
}

/// `pod` without its address `ip`.
fn without(pod: &mut Arc<Pod>, ip: IpAddr) {
    let p = Arc::make_mut(pod);
    match ip {
        IpAddr::V4(_) => p.ip = None,
        IpAddr::V6(_) => p.ip6 = None,
    }
}

#[cfg(test)]
mod tests;
