//! Static neighbours on one device: FDB entries (`bridge fdb replace MAC dev
//! DEV dst IP self permanent`, AF_BRIDGE) and IPv4 neighbour entries (`ip neigh
//! replace IP lladdr MAC dev DEV nud permanent`). Adds are replaces, so
//! idempotent; deletes count "gone" as done. Dumps go through `netlink_dump`.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::libc;
use rtnetlink::Handle;

use crate::kernel_error::{netlink, nl_errno, KernelError};
use crate::netlink_dump::dump_op;

/// A static entry: `ip` is the FDB entry's remote (`dst`) or the neighbour's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StaticEntry {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
}

/// Which table an entry lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// The device's forwarding database (AF_BRIDGE, `NTF_SELF`).
    Fdb,
    /// The IPv4 neighbour table (ARP).
    Neighbour,
}

impl Table {
    fn family(self) -> AddressFamily {
        match self {
            Table::Fdb => AddressFamily::Bridge,
            Table::Neighbour => AddressFamily::Inet,
        }
    }
}

fn message(table: Table, index: u32, e: StaticEntry) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = table.family();
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.kind = RouteType::Unspec;
    if table == Table::Fdb {
        m.header.flags = NeighbourFlags::Own;
    }
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
    m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(e.ip)));
    m
}

/// Adds or replaces permanent entry `e` on device `index`; idempotent.
pub async fn replace_entry(h: &Handle, table: Table, index: u32, e: StaticEntry) -> Result<(), KernelError> {
    let mut req = h.neighbours().add(index, IpAddr::V4(e.ip)).replace();
    *req.message_mut() = message(table, index, e);
    req.execute().await.map_err(netlink(format!("RTM_NEWNEIGH {table:?} {} index {index}", e.ip)))
}

/// Deletes entry `e` from device `index`; `Ok(false)` if it was not there.
pub async fn delete_entry(h: &Handle, table: Table, index: u32, e: StaticEntry) -> Result<bool, KernelError> {
    match h.neighbours().del(message(table, index, e)).execute().await {
        Ok(()) => Ok(true),
        Err(err) if matches!(nl_errno(&err), Some(libc::ENOENT | libc::ESRCH | libc::ENODEV)) => Ok(false),
        Err(err) => Err(netlink(format!("RTM_DELNEIGH {table:?} {} index {index}", e.ip))(err)),
    }
}

/// The permanent entries with an IPv4 address and a MAC on device `index`, sorted.
pub async fn list_permanent(h: &Handle, table: Table, index: u32) -> Result<Vec<StaticEntry>, KernelError> {
    let op = format!("RTM_GETNEIGH {table:?}");
    let mut req = NeighbourMessage::default();
    req.header.family = table.family();
    let msgs = dump_op(h, RouteNetlinkMessage::GetNeighbour(req), &op).await?;
    let mut out: Vec<StaticEntry> = msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == index => static_entry(n),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

fn static_entry(n: &NeighbourMessage) -> Option<StaticEntry> {
    if n.header.state != NeighbourState::Permanent {
        return None;
    }
    let (mut mac, mut ip) = (None, None);
    for a in &n.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some(*v),
            // An AF_BRIDGE answer carries the FDB entry's remote as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                ip = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
            }
            _ => {}
        }
    }
    Some(StaticEntry { mac: mac?, ip: ip? })
}
