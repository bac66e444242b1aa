//! `weft-agent explain --check`: the node misconfigurations behind the
//! classic failures, read from the live node (the netns explain runs in):
//! bridge-nf-call-iptables (or -ip6tables) or ip_forward off (or IPv6
//! forwarding, on a node with an IPv6 pod CIDR), hairpin off on a bridge port,
//! weft's FORWARD jump not first, the masquerade rule missing, weft sets or
//! chains left from another run or backend, a route to another node's pod
//! CIDR (of either family) missing. IPv6 findings are never in play: explain
//! takes IPv4 endpoints. Each finding says whether it is in play for the connection
//! being explained.

use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network};
use serde::Serialize;
use weft_netkit::masquerade::{masquerade_present, MasqBackend};
use weft_netkit::sysctl::read_sysctl;
use weft_netkit::tool;

use crate::explain::Explanation;
use crate::model::Model;
use crate::policy::compile;
use crate::routes::{desired_routes, desired_routes6};

/// One misconfiguration found on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub what: String,
    /// True if it affects the connection explained.
    pub in_play: bool,
}

/// Checks the node this process runs in (as node `node` of `model`).
pub fn check_node(
    model: &Model,
    node: &str,
    cluster: Option<Ipv4Network>,
    bridge: &str,
    network_name: &str,
    e: &Explanation,
) -> Vec<Finding> {
    let here = e.hops.iter().find(|h| h.node == node);
    let same_node = here.is_some_and(|h| h.class == "local->local");
    let mut out = Vec::new();
    let mut find = |what: String, in_play: bool| out.push(Finding { what, in_play });
    if read_sysctl("net/bridge/bridge-nf-call-iptables").is_ok_and(|v| v.trim() == "0") {
        find(
            "net.bridge.bridge-nf-call-iptables is 0: replies between pods of one bridge skip conntrack, so a \
             Service whose endpoint shares the client's bridge times out, and bridged traffic skips policy"
                .into(),
            same_node,
        );
    }
    if read_sysctl("net/bridge/bridge-nf-call-ip6tables").is_ok_and(|v| v.trim() == "0") {
        find(
            "net.bridge.bridge-nf-call-ip6tables is 0: IPv6 between pods of one bridge skips the firewall, so a \
             pod a policy isolates is open over IPv6 to pods on its node"
                .into(),
            same_node,
        );
    }
    if read_sysctl("net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "0") {
        find(
            "net.ipv4.ip_forward is 0: this node forwards nothing to or from its pods".into(),
            here.is_some(),
        );
    }
    let ipv6_pods = model.nodes.get(node).is_some_and(|n| n.pod_cidr6.is_some());
    if ipv6_pods && read_sysctl("net/ipv6/conf/all/forwarding").is_ok_and(|v| v.trim() == "0") {
        find(
            "net.ipv6.conf.all.forwarding is 0: this node forwards no IPv6 to or from its pods".into(),
            false,
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
    if let Ok(rt) = rt {
        rt.block_on(async {
            let Ok(h) = weft_netkit::netns::connect_current() else { return };
            if let Ok(links) = weft_netkit::link::list_links(&h).await {
                let br = links.iter().find(|l| l.name == bridge).map(|l| l.index);
                for l in
                    links.iter().filter(|l| br.is_some() && l.controller == br && l.hairpin == Some(false))
                {
                    find(
                        format!(
                            "hairpin is off on bridge port {}: its pod cannot reach itself through a Service",
                            l.name
                        ),
                        false,
                    );
                }
            }
            // host-gw or through the overlay, the gateway is the node's InternalIP.
            if let Ok(have) = crate::route_table::list_weft_routes(&h, None).await {
                let (want, _) = desired_routes(model, node);
                for (dst, gw) in want {
                    let main = crate::routes::Table::Main;
                    let (dst_ip, gw_ip) = (IpNetwork::V4(dst), IpAddr::V4(gw));
                    if !have.iter().any(|r| r.table == main && r.dst == dst_ip && r.gw == gw_ip) {
                        let in_play = e.hops.iter().any(|h| h.node != node)
                            && model
                                .nodes
                                .values()
                                .any(|n| n.pod_cidr == Some(dst) && e.hops.iter().any(|h| h.node == n.name));
                        find(
                            format!("the route to {dst} via {gw} (another node's pods) is missing"),
                            in_play,
                        );
                    }
                }
                // IPv6 pod CIDRs are routed in host-gw only: an overlay route says this node is not.
                let host_gw = !have.iter().any(|r| r.dev == crate::routes::Dev::Overlay);
                let (want6, _) = desired_routes6(model, node);
                for (dst, gw) in want6.into_iter().filter(|_| host_gw) {
                    let (dst_ip, gw_ip) = (IpNetwork::V6(dst), IpAddr::V6(gw));
                    if !have
                        .iter()
                        .any(|r| r.table == crate::routes::Table::Main && r.dst == dst_ip && r.gw == gw_ip)
                    {
                        find(
                            format!("the route to {dst} via {gw} (another node's IPv6 pods) is missing"),
                            false,
                        );
                    }
                }
            }
        });
    }
    let (ir, _) = compile(model, node, &cluster.map(IpNetwork::V4).into_iter().collect::<Vec<_>>());
    let enforcing_here = [&ir.v4.ingress, &ir.v4.egress].iter().any(|d| !d.isolated.is_empty())
        || [&ir.v6.ingress, &ir.v6.egress].iter().any(|d| !d.isolated.is_empty());
    let iptables = weft_netkit::iptables_mode::tool_in(weft_netkit::iptables_mode::detect().ok(), "iptables");
    let forward_in =
        |table| tool::output(&iptables, &["-w", "5", "-t", table, "-S", "FORWARD"], None).unwrap_or_default();
    let (forward, mangle) = (forward_in("filter"), forward_in("mangle"));
    let iptables_backend = forward.contains("-j WEFT-FORWARD");
    let nft_backend = tool::output("nft", &["list", "table", "inet", crate::nft::TABLE], None).is_ok();
    if iptables_backend {
        // weft's chains are jumped to first from FORWARD in mangle and in
        // filter: what a rule ahead of one jump accepts, the other still sees.
        let first = |listing: &str| {
            listing.lines().find(|l| l.starts_with("-A FORWARD")).unwrap_or_default().to_string()
        };
        let (in_filter, in_mangle) = (first(&forward), first(&mangle));
        let behind = |first: &str| !first.contains("-j WEFT-FORWARD");
        match (behind(&in_filter), behind(&in_mangle)) {
            (false, false) => {}
            (true, true) => find(
                format!("weft's FORWARD jump is not first in filter ({in_filter:?} precedes it) nor in mangle ({in_mangle:?}): what those rules accept bypasses NetworkPolicy"),
                here.is_some(),
            ),
            (true, false) => find(
                format!("weft's FORWARD jump is not first in filter ({in_filter:?} precedes it): mangle's copy still drops what policy denies; the agent moves it back while it runs"),
                here.is_some(),
            ),
            (false, true) => find(
                format!("weft's FORWARD jump is not first in mangle ({in_mangle:?} precedes it): filter's copy still drops what policy denies; the agent moves it back while it runs"),
                here.is_some(),
            ),
        }
        let wanted: Vec<String> = crate::iptables::render(&ir).sets.into_iter().map(|s| s.name).collect();
        let sets = tool::output("ipset", &["list", "-n"], None).unwrap_or_default();
        for s in
            sets.lines().map(str::trim).filter(|s| s.starts_with("weft-") && !wanted.iter().any(|w| w == s))
        {
            find(format!("stale ipset {s}: left by another run or version of weft"), false);
        }
    }
    if iptables_backend && nft_backend {
        find(
            "both weft's iptables chains and its nftables table are in place: one is stale".into(),
            here.is_some(),
        );
    }
    if !iptables_backend && !nft_backend && enforcing_here {
        find("no weft policy rules on this node: its NetworkPolicies are not enforced (is weft-agent running?)".into(), here.is_some());
    }
    if let (Some(own), Some(c)) = (model.nodes.get(node).and_then(|n| n.pod_cidr), cluster) {
        // In whichever backend holds it: the agent's follows its policy backend.
        let present = |b| masquerade_present(b, &[IpNetwork::V4(own)], &[IpNetwork::V4(c)], network_name);
        let mode = weft_netkit::iptables_mode::detect().ok();
        let backends = [MasqBackend::Iptables(mode), MasqBackend::Nftables];
        if backends.iter().all(|b| matches!(present(*b), Ok(false))) {
            let external = e.hops.iter().all(|h| h.class == "local->other") && !e.dst.contains('/');
            find("weft's masquerade rules (WEFT-POSTROUTING, or table inet weft-masq) are missing: pod traffic leaving the cluster keeps its pod address".into(), external);
        }
    }
    out
}

/// The findings as lines under an explanation.
pub fn render(node: &str, findings: &[Finding]) -> String {
    if findings.is_empty() {
        return format!("  checks on {node}: nothing wrong found\n");
    }
    let mut s = format!("  checks on {node}:\n");
    for f in findings {
        s += &format!("    {} {}\n", if f.in_play { "IN PLAY:" } else { "also:" }, f.what);
    }
    s
}
