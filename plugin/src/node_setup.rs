//! Node-level set-up shared by every pod of a node: the bridge (with the
//! gateway addresses), the masquerade rule, and the sysctls.
//!
//! The bridge's alias records a stamp of the config it was set up for, so
//! an ADD on a set-up node costs one link lookup, not an iptables exec: the
//! masquerade rule is written once per node (and again when the config
//! changes), never once per pod.

use ipnetwork::IpNetwork;
use rtnetlink::Handle;
use weft_conf::{CniError, ErrorCode, IpConfig, NetConf};

use crate::error::context;
use weft_netkit::kernel_error::KernelError;
use weft_netkit::link::LinkState;
use weft_netkit::masquerade::MasqBackend;
use weft_netkit::{addr, bridge, link, masquerade, sysctl};

/// MTU when neither the config nor a default route says otherwise.
const FALLBACK_MTU: u32 = 1500;

/// Sysctls a pod network needs in the node's netns: routing between pods and
/// nodes, and bridged traffic through iptables (without it, same-node
/// ClusterIP replies skip conntrack's reverse NAT, and bridged traffic skips
/// NetworkPolicy) and ip6tables (the same for IPv6, where the agent drops
/// what it cannot enforce yet).
const SYSCTLS: [(&str, &str); 3] = [
    ("net/ipv4/ip_forward", "1"),
    ("net/bridge/bridge-nf-call-iptables", "1"),
    ("net/bridge/bridge-nf-call-ip6tables", "1"),
];

/// Routing IPv6 between pods and nodes, once a pod has an IPv6 address (a
/// node without IPv6 pods keeps its host-mode IPv6, router advertisements included).
const IPV6_FORWARDING: (&str, &str) = ("net/ipv6/conf/all/forwarding", "1");

/// The bridge and the MTU pods get.
pub struct Node {
    pub bridge: LinkState,
    pub mtu: u32,
}

/// Ensures the node is set up for `conf` and the pod's `ips`. Idempotent; cheap when already done.
pub async fn ensure_node(h: &Handle, conf: &NetConf, ips: &[IpConfig]) -> Result<Node, CniError> {
    ensure_sysctls(ips.iter().any(|i| i.address.is_ipv6()))?;
    let stamp = stamp(conf, ips);
    if let Some(b) = link::get_link(h, &conf.bridge).await? {
        if b.alias.as_deref() == Some(stamp.as_str()) {
            return Ok(Node { mtu: b.mtu, bridge: b });
        }
    }
    set_up_node(h, conf, ips, &stamp).await.map_err(context("setting up the node"))
}

async fn set_up_node(h: &Handle, conf: &NetConf, ips: &[IpConfig], stamp: &str) -> Result<Node, CniError> {
    let mtu = match conf.mtu {
        Some(m) => m,
        None => default_route_mtu(h).await?,
    };
    let gateways = if conf.is_gateway { gateway_addresses(ips) } else { Vec::new() };
    let mut b = bridge::ensure_bridge(h, &conf.bridge, mtu, gateways.first().copied()).await?;
    for gw in gateways.iter().skip(1) {
        b = bridge::ensure_bridge(h, &conf.bridge, mtu, Some(*gw)).await?;
    }
    let subnets: Vec<IpNetwork> = ips.iter().filter_map(|i| net_of(&i.address)).collect();
    // The masquerade rules go to one backend and leave the others (a
    // changed masqueradeBackend, or a host whose iptables mode changed).
    let keep = if conf.masquerade {
        let backend = MasqBackend::on_this_host(conf.masquerade_backend)?;
        masquerade::ensure_masquerade(backend, &subnets, &conf.cluster_cidrs, &conf.name)?;
        Some(backend)
    } else {
        None
    };
    match masquerade::teardown_masquerade_except(keep) {
        Ok(()) | Err(KernelError::ToolMissing { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    bridge::set_alias(h, b.index, stamp).await?;
    Ok(Node { mtu, bridge: b })
}

fn ensure_sysctls(ipv6: bool) -> Result<(), CniError> {
    let v6 = ipv6.then_some(IPV6_FORWARDING);
    for (name, value) in SYSCTLS.into_iter().chain(v6) {
        sysctl::ensure_sysctl(name, value).map_err(|e| {
            let hint = if name.starts_with("net/bridge") {
                " (is the br_netfilter module loaded? `modprobe br_netfilter`)"
            } else {
                ""
            };
            CniError::new(ErrorCode::Plugin(weft_conf::error::codes::KERNEL), format!("{e}{hint}"))
        })?;
    }
    Ok(())
}

/// The gateway of each address, with the address's prefix: what the bridge holds.
fn gateway_addresses(ips: &[IpConfig]) -> Vec<IpNetwork> {
    ips.iter().filter_map(|i| IpNetwork::new(i.gateway?, i.address.prefix()).ok()).collect()
}

fn net_of(n: &IpNetwork) -> Option<IpNetwork> {
    IpNetwork::new(n.network(), n.prefix()).ok()
}

/// The MTU of the link the node's IPv4 default route leaves through.
async fn default_route_mtu(h: &Handle) -> Result<u32, CniError> {
    let routes = addr::list_routes(h, addr::Family::V4).await?;
    let Some(oif) = routes.iter().find(|r| r.dst.prefix() == 0).and_then(|r| r.oif) else {
        return Ok(FALLBACK_MTU);
    };
    Ok(link::get_link_by_index(h, oif).await?.map_or(FALLBACK_MTU, |l| l.mtu))
}

/// A short digest of everything node-level the config decides.
fn stamp(conf: &NetConf, ips: &[IpConfig]) -> String {
    let desc = format!(
        "v1 bridge={} mtu={:?} gw={} masq={} {:?} cluster={:?} ips={:?}",
        conf.bridge,
        conf.mtu,
        conf.is_gateway,
        conf.masquerade,
        conf.masquerade_backend,
        conf.cluster_cidrs,
        ips.iter().map(|i| (net_of(&i.address), i.gateway)).collect::<Vec<_>>()
    );
    format!("weft:{:016x}", weft_conf::hash::fnv1a64(desc.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: serde_json::Value) -> NetConf {
        let mut v = serde_json::json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft",
            "ipam": {"type": "weft-ipam", "ranges": [[{"subnet": "10.244.1.0/24"}]]}});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        NetConf::parse(v.to_string().as_bytes()).unwrap()
    }

    fn ip(a: &str, gw: &str) -> IpConfig {
        IpConfig { address: a.parse().unwrap(), gateway: Some(gw.parse().unwrap()), interface: None }
    }

    #[test]
    fn stamp_depends_on_node_config_not_on_the_pod() {
        let c = conf(serde_json::json!({}));
        let a = stamp(&c, &[ip("10.244.1.5/24", "10.244.1.1")]);
        assert_eq!(a, stamp(&c, &[ip("10.244.1.9/24", "10.244.1.1")]));
        assert_ne!(
            a,
            stamp(&conf(serde_json::json!({"masquerade": false})), &[ip("10.244.1.5/24", "10.244.1.1")])
        );
        assert_ne!(
            a,
            stamp(
                &conf(serde_json::json!({"clusterCIDR": "10.244.0.0/16"})),
                &[ip("10.244.1.5/24", "10.244.1.1")]
            )
        );
        assert_ne!(a, stamp(&c, &[ip("10.244.2.5/24", "10.244.2.1")]));
    }

    #[test]
    fn gateways_take_the_pod_prefix() {
        let g = gateway_addresses(&[ip("10.244.1.5/24", "10.244.1.1")]);
        assert_eq!(g, ["10.244.1.1/24".parse::<IpNetwork>().unwrap()]);
    }
}
