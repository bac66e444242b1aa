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
//! - the address lies in this node's pod CIDR (from the cluster state) and is
//!   not its network or broadcast address; only the first IPv4 address
//!   counts, as in the model;
//! - the pod is scheduled to this node (or not yet to any) and is not a
//!   host-network pod;
//! - one live attachment per address: an address another container holds,
//!   or that the source shows for another pod of this node (no DEL having
//!   released it), is refused, and so is a second container for a pod;
//! - a claim the source already shows is in force without an attachment, so
//!   a DEL from a container that did not ADD releases nothing;
//! - an attachment the source never confirms expires after `CLAIM_TTL`, and
//!   at most `MAX_AHEAD` are ahead of the source.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::{Model, Pod};

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
    #[error("this node's pod CIDR is not in the cluster state yet")]
    NoPodCidr,
    #[error("{ip} is not a pod address of this node's pod CIDR {cidr}")]
    OutsidePodCidr { ip: Ipv4Addr, cidr: ipnetwork::Ipv4Network },
    #[error("pod {pod} is not in the cluster state")]
    UnknownPod { pod: String },
    #[error("pod {pod} is scheduled to node {node}, not this one")]
    OtherNode { pod: String, node: String },
    #[error("pod {pod} uses the host network")]
    HostNetwork { pod: String },
    #[error("{ip} is held by container {container} (pod {pod})")]
    AddressHeld { ip: Ipv4Addr, container: String, pod: String },
    #[error("{ip} belongs to pod {pod} in the cluster state")]
    AddressShown { ip: Ipv4Addr, pod: String },
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
    ip: Ipv4Addr,
    since: Instant,
    /// The source has shown the pod with this address: nothing left to lay
    /// over, kept so that its container's DEL releases the address.
    confirmed: bool,
}

/// The plugin's reports, by (container ID, ifname).
#[derive(Debug, Default)]
pub struct PodEvents {
    attached: BTreeMap<(String, String), Attached>,
    /// (address, pod) pairs a DEL released that the source may still show.
    released: BTreeSet<(Ipv4Addr, String)>,
}

impl PodEvents {
    /// Records an ADD of a pod `model` shows, for node `node`, if the claim
    /// holds (see the module doc); idempotent for the same container.
    pub fn add(&mut self, model: &Model, node: &str, claim: &Claim, now: Instant) -> Result<(), ClaimError> {
        self.expire(now);
        if claim.ips.len() > MAX_ADDRESSES {
            return Err(ClaimError::TooManyAddresses { count: claim.ips.len() });
        }
        // IPv6 only: nothing weft enforces.
        let Some(ip) = claim.ips.iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        }) else {
            return Ok(());
        };
        let cidr = model.nodes.get(node).and_then(|n| n.pod_cidr).ok_or(ClaimError::NoPodCidr)?;
        if !cidr.contains(ip) || ip == cidr.network() || ip == cidr.broadcast() {
            return Err(ClaimError::OutsidePodCidr { ip, cidr });
        }
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
            if a.ip == ip {
                return Err(ClaimError::AddressHeld { ip, container: k.0.clone(), pod: a.pod.clone() });
            }
            if a.pod == pod && k.0 != key.0 {
                return Err(ClaimError::PodHeld { pod, container: k.0.clone() });
            }
        }
        if let Some(owner) = self.shown_owner(model, node, ip) {
            if owner != pod {
                return Err(ClaimError::AddressShown { ip, pod: owner.into() });
            }
            if !self.attached.contains_key(&key) {
                return Ok(());
            }
        }
        let new = !self.attached.contains_key(&key);
        if new && self.attached.values().filter(|a| !a.confirmed).count() >= MAX_AHEAD {
            return Err(ClaimError::Full);
        }
        let confirmed = shown.ip == Some(ip);
        self.attached.insert(key, Attached { pod, ip, since: now, confirmed });
        Ok(())
    }

    /// The pod of this node the source shows with `ip`, unless a DEL released it.
    fn shown_owner<'m>(&self, model: &'m Model, node: &str, ip: Ipv4Addr) -> Option<&'m str> {
        model
            .pods
            .iter()
            .filter(|(_, p)| p.ip == Some(ip) && p.node.as_deref() == Some(node))
            .map(|(k, _)| k.as_str())
            .find(|k| !self.released.contains(&(ip, k.to_string())))
    }

    /// Forgets the attachment this container added and releases its address;
    /// true if there was one (a DEL of anything else changes nothing).
    pub fn del(&mut self, container_id: &str, ifname: &str) -> bool {
        match self.attached.remove(&(container_id.to_string(), ifname.to_string())) {
            Some(a) => {
                self.released.insert((a.ip, a.pod));
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
        let claimed: BTreeMap<Ipv4Addr, &str> =
            self.attached.values().map(|a| (a.ip, a.pod.as_str())).collect();
        if !claimed.is_empty() {
            for (key, pod) in m.pods.iter_mut() {
                let Some(ip) = pod.ip else { continue };
                if here(pod) && claimed.get(&ip).is_some_and(|owner| owner != key) {
                    Arc::make_mut(pod).ip = None;
                }
            }
        }
        for (ip, key) in &self.released {
            if let Some(pod) = m.pods.get_mut(key).filter(|p| p.ip == Some(*ip) && here(p)) {
                Arc::make_mut(pod).ip = None;
            }
        }
        for a in self.attached.values() {
            if let Some(pod) = m.pods.get_mut(&a.pod).filter(|p| p.ip != Some(a.ip) || !here(p)) {
                let pod = Arc::make_mut(pod);
                pod.ip = Some(a.ip);
                pod.node = Some(node.to_string());
            }
        }
        m
    }

    /// Catches up with a new state of the source: releases it no longer shows
    /// are forgotten; attachments it shows as they are become confirmed; and
    /// attachments go when their pod is gone or elsewhere, when the source
    /// moved a confirmed one to another address, when it shows their address
    /// for another pod, or when unconfirmed past `CLAIM_TTL`.
    pub fn catch_up(&mut self, model: &Model, node: &str, now: Instant) {
        let shown: BTreeSet<(Ipv4Addr, &str)> = model
            .pods
            .iter()
            .filter(|(_, p)| p.node.as_deref() == Some(node))
            .filter_map(|(k, p)| Some((p.ip?, k.as_str())))
            .collect();
        self.released.retain(|(ip, pod)| shown.contains(&(*ip, pod.as_str())));
        let released = &self.released;
        let taken_by_other = |ip: Ipv4Addr, pod: &str| {
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
            a.confirmed |= p.ip == Some(a.ip);
            match p.ip {
                Some(ip) if ip == a.ip => true,
                _ if a.confirmed => false,
                _ => !taken_by_other(a.ip, &a.pod) && now.duration_since(a.since) < CLAIM_TTL,
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

#[cfg(test)]
mod tests;
