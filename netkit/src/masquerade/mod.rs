//! Node-level masquerade for pod traffic leaving the cluster. Per pod
//! subnet, traffic to the cluster (and to the subnet itself when the
//! cluster CIDR does not cover it) is left alone and everything else but
//! multicast is masqueraded (`plan`). Two implementations of that plan:
//! iptables, in the host's mode (`iptables_mode`), and nftables, a table of
//! its own. The plugin and the agent write the same one (the conflist's
//! `masqueradeBackend`, which the agent sets after its policy backend) and
//! remove weft's rules from the others, so a node never holds two.

pub mod iptables;
pub mod nftables;

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use weft_conf::MasqueradeBackend;

pub use iptables::{masquerade_payload, MASQ_CHAIN, MAX_CHAIN_LEN};

use crate::iptables_mode::{self, IptablesMode};
use crate::kernel_error::KernelError;

/// Where weft's masquerade rules live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasqBackend {
    /// iptables in this mode (None: the plain `iptables`, whatever it is).
    Iptables(Option<IptablesMode>),
    /// nftables, table `inet weft-masq`.
    Nftables,
}

impl MasqBackend {
    /// Where `choice` puts masquerade on this host: iptables in the mode
    /// that holds the host's rules (as kube-proxy's iptables-wrapper
    /// decides), so the plugin and the agent write the same one.
    pub fn on_this_host(choice: MasqueradeBackend) -> Result<MasqBackend, KernelError> {
        Ok(match choice {
            MasqueradeBackend::Iptables => MasqBackend::Iptables(Some(iptables_mode::detect()?)),
            MasqueradeBackend::Nftables => MasqBackend::Nftables,
        })
    }

    /// The network config's name for it.
    pub fn choice(self) -> MasqueradeBackend {
        match self {
            MasqBackend::Iptables(_) => MasqueradeBackend::Iptables,
            MasqBackend::Nftables => MasqueradeBackend::Nftables,
        }
    }
}

impl fmt::Display for MasqBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MasqBackend::Iptables(Some(m)) => write!(f, "iptables ({})", m.name()),
            MasqBackend::Iptables(None) => f.write_str("iptables"),
            MasqBackend::Nftables => f.write_str("nftables"),
        }
    }
}

/// One step of the plan, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Leave traffic from `src` to `dst` as it is.
    Return { src: IpNetwork, dst: IpNetwork },
    /// Masquerade traffic from `src` to anything but `except` (multicast).
    Masquerade { src: IpNetwork, except: IpNetwork },
}

/// The steps for `pod_subnets` (both families may be mixed); each subnet
/// returns to the first of `cluster_cidrs` of its family.
pub(crate) fn plan(pod_subnets: &[IpNetwork], cluster_cidrs: &[IpNetwork]) -> Vec<Step> {
    let mut steps = Vec::new();
    for sub in pod_subnets.iter().copied().map(normalize) {
        let cluster = cluster_cidrs.iter().find(|c| c.is_ipv4() == sub.is_ipv4()).copied().map(normalize);
        if let Some(c) = cluster {
            steps.push(Step::Return { src: sub, dst: c });
        }
        if !cluster.is_some_and(|c| c.contains(sub.network()) && c.prefix() <= sub.prefix()) {
            steps.push(Step::Return { src: sub, dst: sub });
        }
        // Last for this subnet: everything not returned above is masqueraded.
        let multicast = if sub.is_ipv4() { "224.0.0.0/4" } else { "ff00::/8" };
        // Both literals parse.
        let except = multicast.parse().unwrap_or(sub);
        steps.push(Step::Masquerade { src: sub, except });
    }
    steps
}

/// Idempotently installs the masquerade rules for `pod_subnets` in `backend`.
pub fn ensure_masquerade(
    backend: MasqBackend,
    pod_subnets: &[IpNetwork],
    cluster_cidrs: &[IpNetwork],
    comment: &str,
) -> Result<(), KernelError> {
    match backend {
        MasqBackend::Iptables(mode) => {
            iptables::ensure(iptables::Mode(mode), pod_subnets, cluster_cidrs, comment)
        }
        MasqBackend::Nftables => nftables::ensure(pod_subnets, cluster_cidrs, comment),
    }
}

/// Whether everything `ensure_masquerade` would install is in `backend`.
pub fn masquerade_present(
    backend: MasqBackend,
    pod_subnets: &[IpNetwork],
    cluster_cidrs: &[IpNetwork],
    comment: &str,
) -> Result<bool, KernelError> {
    match backend {
        MasqBackend::Iptables(mode) => {
            iptables::present(iptables::Mode(mode), pod_subnets, cluster_cidrs, comment)
        }
        MasqBackend::Nftables => nftables::present(pod_subnets, cluster_cidrs, comment),
    }
}

/// Every place weft's masquerade may be: iptables in each installed mode
/// (the plain tools where neither mode's are), and nftables.
fn everywhere() -> Vec<MasqBackend> {
    let mut all: Vec<MasqBackend> =
        iptables_mode::installed().into_iter().map(MasqBackend::Iptables).collect();
    all.push(MasqBackend::Nftables);
    all
}

/// Removes weft's masquerade from every backend but `keep` (from all with
/// None). Idempotent; what is absent, or a backend whose tools are missing,
/// counts as done. Carries on after an error and returns the first.
pub fn teardown_masquerade_except(keep: Option<MasqBackend>) -> Result<(), KernelError> {
    let mut first = None;
    for b in everywhere().into_iter().filter(|b| Some(*b) != keep) {
        let res = match b {
            // The plain tools are one of the modes: kept if either is.
            MasqBackend::Iptables(None) if matches!(keep, Some(MasqBackend::Iptables(_))) => Ok(()),
            MasqBackend::Iptables(mode) => iptables::teardown(iptables::Mode(mode)),
            MasqBackend::Nftables => nftables::teardown(),
        };
        if let Err(e) = res {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// Removes weft's masquerade from every backend.
pub fn teardown_masquerade() -> Result<(), KernelError> {
    teardown_masquerade_except(None)
}

/// Drops quotes, backslashes and control characters (comments are quoted
/// in the payloads) and cuts to `max` bytes.
pub(crate) fn sanitize_comment(comment: &str, max: usize) -> String {
    let mut out: String = comment.chars().filter(|c| !matches!(c, '"' | '\\') && !c.is_control()).collect();
    while out.len() > max {
        out.pop();
    }
    out
}

/// 10.244.1.7/24 -> 10.244.1.0/24, as iptables and nft print it.
fn normalize(net: IpNetwork) -> IpNetwork {
    let ip: IpAddr = net.network();
    IpNetwork::new(ip, net.prefix()).unwrap_or(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn the_plan_returns_the_cluster_then_masquerades_all_but_multicast() {
        let steps = plan(&[net("10.244.1.7/24"), net("fd00:1::/64")], &[net("10.244.0.0/16")]);
        assert_eq!(
            steps,
            [
                Step::Return { src: net("10.244.1.0/24"), dst: net("10.244.0.0/16") },
                Step::Masquerade { src: net("10.244.1.0/24"), except: net("224.0.0.0/4") },
                // The IPv4 cluster CIDR does not count for IPv6: the subnet returns to itself.
                Step::Return { src: net("fd00:1::/64"), dst: net("fd00:1::/64") },
                Step::Masquerade { src: net("fd00:1::/64"), except: net("ff00::/8") },
            ]
        );
        // A cluster CIDR that does not cover the subnet: both return.
        assert_eq!(plan(&[net("10.9.0.0/24")], &[net("10.244.0.0/16")]).len(), 3);
        // Dual-stack: each subnet returns to the cluster CIDR of its family.
        let cluster = [net("fd00::af4:0/112"), net("10.244.0.0/16")];
        assert_eq!(
            plan(&[net("fd00::af4:100/120")], &cluster),
            [
                Step::Return { src: net("fd00::af4:100/120"), dst: net("fd00::af4:0/112") },
                Step::Masquerade { src: net("fd00::af4:100/120"), except: net("ff00::/8") },
            ]
        );
    }

    #[test]
    fn comment_is_sanitized() {
        assert_eq!(sanitize_comment("a \"b\" \\c\nd", 255), "a b cd");
        assert_eq!(sanitize_comment(&"x".repeat(300), 255).len(), 255);
        assert_eq!(sanitize_comment(&"é".repeat(100), 127).len(), 126, "cut on a character boundary");
    }
}
