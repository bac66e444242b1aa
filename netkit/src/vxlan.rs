//! A VXLAN device for a node overlay (`ip link add NAME type vxlan id VNI
//! dstport PORT local ADDR dev UNDERLAY nolearning`): `ensure_vxlan` creates
//! it, adopts one that matches, and recreates one whose VNI, port, local
//! address or underlay link differ (the kernel cannot change those on a live
//! device). Learning is off: every remote VTEP is a static FDB entry (`fdb`).

use std::net::Ipv4Addr;

use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use nix::libc;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan};

use crate::kernel_error::{netlink, nl_errno, KernelError};
use crate::link::{change, check_ifname, delete_link, get_link, LinkState};

/// What a VXLAN device is made of; two devices with the same spec are interchangeable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanSpec {
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// The node's underlay address: the source of encapsulated packets.
    pub local: Ipv4Addr,
    /// The underlay link's index.
    pub underlay: u32,
    pub mtu: u32,
    /// The device's own MAC (the node's VTEP MAC).
    pub mac: [u8; 6],
}

/// Idempotently ensures VXLAN device `name` exists with `spec`, up. A link of
/// another kind under the name is an error (`LinkExists`), never deleted.
pub async fn ensure_vxlan(h: &Handle, name: &str, spec: &VxlanSpec) -> Result<LinkState, KernelError> {
    check_ifname(name)?;
    match read_vxlan(h, name).await? {
        Some((_, None)) => return Err(KernelError::LinkExists { name: name.into() }),
        Some((st, Some(have))) if have == (spec.vni, spec.port, spec.local, spec.underlay) => {
            if st.mtu != spec.mtu || !st.up || st.mac != Some(spec.mac) {
                let msg = LinkUnspec::new_with_index(st.index)
                    .mtu(spec.mtu)
                    .address(spec.mac.to_vec())
                    .up()
                    .build();
                change(h, msg, format!("vxlan {name} mtu {} up", spec.mtu)).await?;
            }
            return get_link(h, name).await?.ok_or_else(|| KernelError::LinkNotFound { name: name.into() });
        }
        Some(_) => {
            delete_link(h, name).await?;
        }
        None => {}
    }
    let msg = LinkVxlan::new(name, spec.vni)
        .port(spec.port)
        .local(spec.local)
        .dev(spec.underlay)
        .learning(false)
        .mtu(spec.mtu)
        .address(spec.mac.to_vec())
        .up()
        .build();
    match h.link().add(msg).execute().await {
        Ok(()) => {}
        Err(e) if nl_errno(&e) == Some(libc::EEXIST) => {
            return Err(KernelError::LinkExists {
                name: format!("{name} (or VNI {} port {})", spec.vni, spec.port),
            })
        }
        Err(e) => return Err(netlink(format!("RTM_NEWLINK vxlan {name}"))(e)),
    }
    get_link(h, name).await?.ok_or_else(|| KernelError::LinkNotFound { name: name.into() })
}

/// The link named `name` and, if it is a VXLAN device, its (VNI, port, local, underlay).
async fn read_vxlan(
    h: &Handle,
    name: &str,
) -> Result<Option<(LinkState, Option<(u32, u16, Ipv4Addr, u32)>)>, KernelError> {
    let mut stream = h.link().get().match_name(name).execute();
    use futures::TryStreamExt;
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(Some((LinkState::from_message(&msg), vxlan_params(&msg)))),
        Ok(None) => Ok(None),
        Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(netlink(format!("RTM_GETLINK {name}"))(e)),
    }
}

/// The identity of a VXLAN link message: VNI, port, local address, underlay link.
fn vxlan_params(msg: &LinkMessage) -> Option<(u32, u16, Ipv4Addr, u32)> {
    let infos = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    })?;
    let data = infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
        _ => None,
    })?;
    let (mut vni, mut port, mut local, mut link) = (None, None, Ipv4Addr::UNSPECIFIED, 0);
    for d in data {
        match d {
            InfoVxlan::Id(v) => vni = Some(*v),
            InfoVxlan::Port(p) => port = Some(*p),
            InfoVxlan::Local(a) => local = *a,
            InfoVxlan::Link(l) => link = *l,
            _ => {}
        }
    }
    Some((vni?, port.unwrap_or(0), local, link))
}
