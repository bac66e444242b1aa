//! Addresses and routes in the netns of a given handle (`ip addr`, `ip route`).
//! Adds are idempotent (EEXIST counts as done); dumps go through `netlink_dump`,
//! which retries them when the kernel flags them NLM_F_DUMP_INTR.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::libc;
use rtnetlink::{AddressMessageBuilder, Handle, RouteMessageBuilder};

use crate::kernel_error::{netlink, nl_errno, KernelError};
use crate::netlink_dump::dump_op as dump;

/// An address family, for listing routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

/// One route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
}

/// Adds `addr` (address + prefix) to link `index` (`ip addr add`); idempotent.
/// IPv6 addresses skip duplicate address detection (`nodad`): IPAM made them
/// unique, and DAD would keep a new pod's address unusable for a second.
pub async fn add_address(h: &Handle, index: u32, addr: IpNetwork) -> Result<(), KernelError> {
    let mut req = h.address().add(index, addr.ip(), addr.prefix());
    if addr.is_ipv6() {
        req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(e) if nl_errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(netlink(format!("RTM_NEWADDR {addr} index {index}"))(e)),
    }
}

/// Deletes `addr` from link `index` (`ip addr del`); `Ok(false)` if it was not there.
pub async fn del_address(h: &Handle, index: u32, addr: IpNetwork) -> Result<bool, KernelError> {
    let msg = address_message(index, addr);
    match h.address().del(msg).execute().await {
        Ok(()) => Ok(true),
        Err(e) if matches!(nl_errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENODEV)) => Ok(false),
        Err(e) => Err(netlink(format!("RTM_DELADDR {addr} index {index}"))(e)),
    }
}

fn address_message(index: u32, addr: IpNetwork) -> AddressMessage {
    match addr.ip() {
        IpAddr::V4(ip) => {
            AddressMessageBuilder::<Ipv4Addr>::new().index(index).address(ip, addr.prefix()).build()
        }
        IpAddr::V6(ip) => {
            AddressMessageBuilder::<Ipv6Addr>::new().index(index).address(ip, addr.prefix()).build()
        }
    }
}

/// Lists the addresses (both families) of link `index` (`ip addr show DEV`).
pub async fn list_addresses(h: &Handle, index: u32) -> Result<Vec<IpNetwork>, KernelError> {
    let all = list_all_addresses(h).await?;
    Ok(all.into_iter().filter(|(i, _)| *i == index).map(|(_, a)| a).collect())
}

/// The link holding `ip` and the address with its prefix; the first if several do.
pub async fn find_address(h: &Handle, ip: IpAddr) -> Result<Option<(u32, IpNetwork)>, KernelError> {
    Ok(list_all_addresses(h).await?.into_iter().find(|(_, a)| a.ip() == ip))
}

/// Every address of the netns with its link index (`ip addr show`).
pub async fn list_all_addresses(h: &Handle) -> Result<Vec<(u32, IpNetwork)>, KernelError> {
    let req = RouteNetlinkMessage::GetAddress(AddressMessage::default());
    let msgs = dump(h, req, "RTM_GETADDR").await?;
    let mut out = Vec::new();
    for msg in msgs {
        let RouteNetlinkMessage::NewAddress(a) = msg else { continue };
        // IFA_LOCAL is the local address; IFA_ADDRESS is the peer on point-to-point links.
        let local = a.attributes.iter().find_map(|at| match at {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let address = a.attributes.iter().find_map(|at| match at {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = local.or(address) {
            if let Ok(net) = IpNetwork::new(ip, a.header.prefix_len) {
                out.push((a.header.index, net));
            }
        }
    }
    Ok(out)
}

/// Adds a main-table route to `dst` via `gw` and/or out of `oif` (`ip route add`);
/// idempotent: EEXIST (a route to `dst` with the same metric exists) counts as done.
/// `true` when this call added it, `false` when it was already there.
pub async fn add_route(
    h: &Handle,
    dst: IpNetwork,
    gw: Option<IpAddr>,
    oif: Option<u32>,
) -> Result<bool, KernelError> {
    let op = format!("RTM_NEWROUTE {dst} via {gw:?} oif {oif:?}");
    let invalid = |e: _| invalid_route(&op, e);
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix())
        .map_err(invalid)?;
    match gw {
        Some(gw) => b = b.gateway(gw).map_err(invalid)?,
        // Like iproute2: a route without a gateway is on-link.
        None => b = b.scope(RouteScope::Link),
    }
    if let Some(oif) = oif {
        b = b.output_interface(oif);
    }
    match h.route().add(b.build()).execute().await {
        Ok(()) => Ok(true),
        Err(e) if nl_errno(&e) == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(netlink(op)(e)),
    }
}

fn invalid_route(op: &str, e: impl std::fmt::Display) -> KernelError {
    KernelError::Io { what: format!("{op}: {e}"), source: std::io::Error::from_raw_os_error(libc::EINVAL) }
}

/// Lists the unicast routes of the main table for one family (`ip route show`).
pub async fn list_routes(h: &Handle, family: Family) -> Result<Vec<RouteEntry>, KernelError> {
    let mut req = RouteMessage::default();
    req.header.address_family = match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    };
    let msgs = dump(h, RouteNetlinkMessage::GetRoute(req), "RTM_GETROUTE").await?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => route_entry(&r, family),
            _ => None,
        })
        .collect())
}

fn route_entry(r: &RouteMessage, family: Family) -> Option<RouteEntry> {
    let mut table = u32::from(r.header.table);
    let (mut dst, mut gw, mut oif) = (None, None, None);
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = route_ip(a),
            RouteAttribute::Gateway(a) => gw = route_ip(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || r.header.kind != RouteType::Unicast {
        return None;
    }
    let dst = dst.unwrap_or(match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let dst = IpNetwork::new(dst, r.header.destination_prefix_length).ok()?;
    Some(RouteEntry { dst, gw, oif })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}
