//! Veth pairs. `create_veth` sends ONE RTM_NEWLINK that creates the host end on
//! the bridge and the peer directly inside the pod netns under its final name
//! (the peer message carries IFLA_IFNAME + IFLA_NET_NS_FD + IFLA_MTU + IFLA_ADDRESS),
//! so no temporary name ever exists in the node netns and nothing needs renaming.
//!
//! Round trips, all on the node handle: create (1), hairpin via `set_port` (1),
//! read the host end back (1). The peer's ifindex comes from the host end's
//! IFLA_LINK and its MAC is chosen here, so no pod-netns socket is needed.
//! The peer is created DOWN: IFF_UP in the peer's header makes the kernel open
//! it before the pair is linked and fails with ENOTCONN (veth_open), so the pod
//! side brings it up with `link::set_up` on its pod handle.
//! Hairpin cannot ride on the create: the kernel ignores bridge-port data on a
//! link that has no master yet, and `link().set()` silently ignores it
//! (measured: RTM_SETLINK returns Ok and leaves it off), hence `set_port` (RTM_NEWLINK, no CREATE).

use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth};
use nix::libc;
use rtnetlink::{Handle, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::kernel_error::{netlink, nl_errno, KernelError};
use crate::link::{check_ifname, delete_link, get_link, random_mac, LinkState};
use crate::netns::NetNs;

/// The result of `create_veth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPair {
    /// The host end as read back after set-up (up, on the bridge, hairpin on).
    pub host: LinkState,
    /// The peer's ifindex inside the pod netns.
    pub peer_index: u32,
    /// The peer's MAC (chosen by weft, locally administered).
    pub peer_mac: [u8; 6],
}

/// Creates a veth pair: `host_name` up on bridge `bridge_index` (hairpin as asked),
/// `peer_name` (still down) inside `peer_ns`, both with `mtu`. Not idempotent: `LinkExists`
/// if either name is taken. On a later failure it deletes the pair again.
pub async fn create_veth(
    h: &Handle,
    host_name: &str,
    peer_name: &str,
    peer_ns: &NetNs,
    mtu: u32,
    bridge_index: u32,
    hairpin: bool,
) -> Result<VethPair, KernelError> {
    check_ifname(host_name)?;
    check_ifname(peer_name)?;
    let peer_mac = random_mac()?;
    let peer = LinkUnspec::new_with_name(peer_name)
        .mtu(mtu)
        .address(peer_mac.to_vec())
        .setns_by_fd(peer_ns.raw_fd())
        .build();
    let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(host_name)
        .mtu(mtu)
        .controller(bridge_index)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    if let Err(e) = h.link().add(msg).execute().await {
        return Err(create_error(h, e, host_name, peer_name).await);
    }
    match finish_host_end(h, host_name, hairpin).await {
        Ok(host) => match host.link {
            Some(peer_index) => Ok(VethPair { host, peer_index, peer_mac }),
            None => {
                let _ = delete_link(h, host_name).await;
                Err(KernelError::LinkNotFound { name: format!("peer of {host_name}") })
            }
        },
        Err(e) => {
            // Undo our own work; the original error is the one worth reporting.
            let _ = delete_link(h, host_name).await;
            Err(e)
        }
    }
}

/// Turns hairpin on for the new host end (by name) when asked, and reads it back.
async fn finish_host_end(h: &Handle, host_name: &str, hairpin: bool) -> Result<LinkState, KernelError> {
    if hairpin {
        let msg = LinkBridgePort::new(0).name(host_name).hairpin(true).build();
        h.link()
            .set_port(msg)
            .execute()
            .await
            .map_err(netlink(format!("RTM_NEWLINK hairpin {host_name}")))?;
    }
    get_link(h, host_name).await?.ok_or_else(|| KernelError::LinkNotFound { name: host_name.into() })
}

/// Maps a failed create: EEXIST names whichever end is taken (host checked here,
/// otherwise it is the peer name inside the pod netns).
async fn create_error(h: &Handle, e: rtnetlink::Error, host: &str, peer: &str) -> KernelError {
    if nl_errno(&e) != Some(libc::EEXIST) {
        return netlink(format!("RTM_NEWLINK veth {host} peer {peer}"))(e);
    }
    let name = match get_link(h, host).await {
        Ok(Some(_)) => host,
        _ => peer,
    };
    KernelError::LinkExists { name: name.into() }
}

/// Sets bridge-port hairpin mode on link `index` (`ip link set DEV type bridge_slave
/// hairpin on|off`); idempotent.
pub async fn set_hairpin(h: &Handle, index: u32, on: bool) -> Result<(), KernelError> {
    let msg = LinkBridgePort::new(index).hairpin(on).build();
    h.link().set_port(msg).execute().await.map_err(netlink(format!("RTM_NEWLINK hairpin {on} index {index}")))
}
