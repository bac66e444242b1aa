//! How this node reaches the other nodes' pods (`--mode`), the pure part:
//! host-gw (a route via the node's InternalIP; the underlay must carry pod
//! addresses), vxlan (one VXLAN device, `weft.vxlan`, with a static FDB and
//! neighbour entry per other node and a route to its pod CIDR through it), or
//! auto (host-gw to nodes on this node's underlay subnet, vxlan to the rest).
//! `overlay_kernel.rs` does the netlink I/O.
//!
//! Addresses on the overlay: each VTEP borrows its node's InternalIP (as a /32
//! on `weft.vxlan`), so what a pod sees from a node (kube-proxy's masquerade,
//! a node reaching a pod) is the node's InternalIP in every mode, and
//! NetworkPolicy ipBlocks that name nodes mean the same in host-gw and vxlan.
//! A VTEP's MAC is derived from that address (`vtep_mac`): no API write.
//!
//! Replies of pods to a node's InternalIP (seed 003: a node reaches a
//! ClusterIP whose endpoint is on another node, from its underlay address)
//! would leave on the underlay with the pod's address as source, which an
//! anti-spoofing underlay drops. A source rule (`from <own pod CIDR> lookup
//! REPLY_TABLE`) sends pod traffic to overlay peers' InternalIPs through the
//! overlay instead. Masquerading node traffic into the overlay would also fix
//! it, but would make pods see another address from nodes in vxlan mode than
//! in host-gw mode.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use weft_netkit::neighbour::StaticEntry;

use crate::routes::{Dev, Route, Table};

/// The VXLAN device's name.
pub const VXLAN_DEVICE: &str = "weft.vxlan";
/// Default VNI: 87 ("W"); flannel uses 1 and Calico 4096 on the same kernel port space.
pub const DEFAULT_VNI: u32 = 87;
/// Default UDP port: IANA's 4789 (flannel and Cilium default to the kernel's 8472).
pub const DEFAULT_PORT: u16 = 4789;
/// What VXLAN over IPv4 adds to a frame: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The table of the routes pods' replies to overlay peers take (`REPLY_RULE_PRIORITY`).
pub const REPLY_TABLE: u32 = 0x57;
/// The source rule's priority: after `local` (0), before `main` (32766).
pub const REPLY_RULE_PRIORITY: u32 = 32087;

/// How pods on other nodes are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Routes via the other nodes' InternalIPs.
    #[default]
    HostGw,
    /// VXLAN to every other node.
    Vxlan,
    /// host-gw on this node's underlay subnet, vxlan beyond it.
    Auto,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "host-gw" => Ok(Mode::HostGw),
            "vxlan" => Ok(Mode::Vxlan),
            "auto" => Ok(Mode::Auto),
            _ => Err(format!("unknown mode {s:?} (host-gw, vxlan or auto)")),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::HostGw => "host-gw",
            Mode::Vxlan => "vxlan",
            Mode::Auto => "auto",
        })
    }
}

/// `--mode` with the VXLAN parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routing {
    pub mode: Mode,
    pub vni: u32,
    pub port: u16,
}

impl Default for Routing {
    fn default() -> Routing {
        Routing { mode: Mode::HostGw, vni: DEFAULT_VNI, port: DEFAULT_PORT }
    }
}

/// This node's underlay as the kernel shows it: the InternalIP with its
/// prefix, the link holding it and that link's MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Underlay {
    pub addr: Ipv4Network,
    pub index: u32,
    pub mtu: u32,
}

/// The MTU pods get: the underlay's less the VXLAN header where an overlay
/// may carry them (vxlan, and auto, whose peers may move beyond the subnet);
/// None in host-gw (the plugin takes the node's default-route MTU).
pub fn pod_mtu(mode: Mode, underlay_mtu: u32) -> Option<u32> {
    match mode {
        Mode::HostGw => None,
        Mode::Vxlan | Mode::Auto => Some(underlay_mtu.saturating_sub(VXLAN_OVERHEAD).max(68)),
    }
}

/// The VTEP MAC of the node with InternalIP `ip`: locally administered
/// unicast 02:57 ("W") followed by the address, so unique per node.
pub fn vtep_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x57, o[0], o[1], o[2], o[3]]
}

/// What the node wants in the kernel for its peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every weft route: host-gw and overlay routes in main, reply routes in `REPLY_TABLE`.
    pub routes: Vec<Route>,
    /// One FDB and one neighbour entry per overlay peer (the same pairs).
    pub vteps: Vec<StaticEntry>,
}

impl Plan {
    /// True if some peer is reached through the overlay.
    pub fn uses_overlay(&self) -> bool {
        !self.vteps.is_empty()
    }
}

/// Splits `peers` (pod CIDR -> node InternalIP, from `routes::desired_routes`)
/// by `mode`. Without an underlay (the node's InternalIP is not on any link
/// yet) auto cannot tell the subnet and treats every peer as beyond it.
pub fn plan(peers: &BTreeMap<Ipv4Network, Ipv4Addr>, mode: Mode, underlay: Option<Ipv4Network>) -> Plan {
    let mut p = Plan::default();
    for (&dst, &gw) in peers {
        let direct = match mode {
            Mode::HostGw => true,
            Mode::Vxlan => false,
            Mode::Auto => underlay.is_some_and(|u| u.contains(gw)),
        };
        if direct {
            p.routes.push(Route::direct(dst, gw));
            continue;
        }
        let (dst, gw_ip) = (dst.into(), gw.into());
        p.routes.push(Route { table: Table::Main, dst, gw: gw_ip, dev: Dev::Overlay });
        let host = Ipv4Network::new(gw, 32).expect("a /32 is valid").into();
        p.routes.push(Route { table: Table::Replies, dst: host, gw: gw_ip, dev: Dev::Overlay });
        p.vteps.push(StaticEntry { mac: vtep_mac(gw), ip: gw });
    }
    p.routes.sort();
    p.vteps.sort();
    p.vteps.dedup();
    p
}

/// The entries to replace (missing or with another MAC) and to delete
/// (not wanted) to turn `current` into `desired`.
pub fn entry_changes(
    desired: &[StaticEntry],
    current: &[StaticEntry],
) -> (Vec<StaticEntry>, Vec<StaticEntry>) {
    let add = desired.iter().filter(|e| !current.contains(e)).copied().collect();
    let del = current.iter().filter(|e| !desired.iter().any(|d| d.ip == e.ip)).copied().collect();
    (add, del)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> BTreeMap<Ipv4Network, Ipv4Addr> {
        [("10.244.2.0/24", "172.31.0.12"), ("10.244.3.0/24", "192.168.7.13")]
            .into_iter()
            .map(|(d, g)| (d.parse().unwrap(), g.parse().unwrap()))
            .collect()
    }

    fn r(table: Table, dst: &str, gw: &str, dev: Dev) -> Route {
        Route { table, dst: dst.parse().unwrap(), gw: gw.parse().unwrap(), dev }
    }

    fn vtep(ip: &str) -> StaticEntry {
        let ip: Ipv4Addr = ip.parse().unwrap();
        StaticEntry { mac: vtep_mac(ip), ip }
    }

    #[test]
    fn modes_parse_and_print() {
        for m in [Mode::HostGw, Mode::Vxlan, Mode::Auto] {
            assert_eq!(m.to_string().parse::<Mode>(), Ok(m));
        }
        assert!("geneve".parse::<Mode>().unwrap_err().contains("host-gw, vxlan or auto"));
        assert_eq!(Routing::default().mode, Mode::HostGw, "the default keeps what weft did before");
    }

    #[test]
    fn plans_by_mode() {
        let lan: Ipv4Network = "172.31.0.11/24".parse().unwrap();
        let direct = |d, g| r(Table::Main, d, g, Dev::Underlay);
        let overlay = |d, g| r(Table::Main, d, g, Dev::Overlay);
        let reply = |d, g| r(Table::Replies, d, g, Dev::Overlay);
        let all_overlay = vec![
            overlay("10.244.2.0/24", "172.31.0.12"),
            overlay("10.244.3.0/24", "192.168.7.13"),
            reply("172.31.0.12/32", "172.31.0.12"),
            reply("192.168.7.13/32", "192.168.7.13"),
        ];
        let all_vteps = vec![vtep("172.31.0.12"), vtep("192.168.7.13")];
        // table: (mode, underlay, routes, vteps)
        let cases = [
            (
                Mode::HostGw,
                Some(lan),
                vec![direct("10.244.2.0/24", "172.31.0.12"), direct("10.244.3.0/24", "192.168.7.13")],
                vec![],
            ),
            (Mode::Vxlan, Some(lan), all_overlay.clone(), all_vteps.clone()),
            (
                Mode::Auto,
                Some(lan),
                vec![
                    direct("10.244.2.0/24", "172.31.0.12"),
                    overlay("10.244.3.0/24", "192.168.7.13"),
                    reply("192.168.7.13/32", "192.168.7.13"),
                ],
                vec![vtep("192.168.7.13")],
            ),
            // Without an underlay, auto cannot tell the subnet: all through the overlay.
            (Mode::Auto, None, all_overlay, all_vteps),
        ];
        for (mode, underlay, routes, vteps) in cases {
            let mut routes = routes;
            routes.sort();
            let p = plan(&peers(), mode, underlay);
            assert_eq!(p.routes, routes, "{mode} {underlay:?}");
            assert_eq!(p.vteps, vteps, "{mode} {underlay:?}");
            assert_eq!(p.uses_overlay(), !vteps.is_empty());
        }
        assert_eq!(plan(&BTreeMap::new(), Mode::Vxlan, Some(lan)), Plan::default());
    }

    #[test]
    fn vtep_macs_are_unique_unicast_and_local() {
        let a = vtep_mac("172.31.0.11".parse().unwrap());
        assert_eq!(a, [0x02, 0x57, 172, 31, 0, 11]);
        assert_eq!(a[0] & 0x01, 0, "unicast");
        assert_eq!(a[0] & 0x02, 0x02, "locally administered");
        assert_ne!(a, vtep_mac("172.31.0.12".parse().unwrap()));
    }

    #[test]
    fn pod_mtu_leaves_room_for_the_header() {
        assert_eq!(pod_mtu(Mode::HostGw, 1500), None);
        assert_eq!(pod_mtu(Mode::Vxlan, 1500), Some(1450));
        assert_eq!(pod_mtu(Mode::Auto, 9001), Some(8951));
        assert_eq!(pod_mtu(Mode::Vxlan, 100), Some(68), "never below IPv4's minimum");
    }

    #[test]
    fn entry_changes_replace_and_delete() {
        let (a, b, c) = (vtep("172.31.0.12"), vtep("172.31.0.13"), vtep("172.31.0.14"));
        let stale_mac = StaticEntry { mac: [2, 0, 0, 0, 0, 1], ..b };
        let (add, del) = entry_changes(&[a, b], &[stale_mac, c]);
        assert_eq!(add, [a, b]);
        assert_eq!(del, [c], "b's stale entry is replaced, not deleted");
        assert_eq!(entry_changes(&[a], &[a]), (vec![], vec![]));
    }
}
