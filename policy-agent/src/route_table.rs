//! Routing to other nodes, the kernel part: weft's routes in the main table
//! and in `overlay::REPLY_TABLE` of the calling netns, over rtnetlink. Only
//! routes with `WEFT_PROTO` are listed, replaced or deleted; a route weft did
//! not add is never touched (adding over one fails with EEXIST and is reported).
//! A route's link is told by the VXLAN device's index (`overlay`), when there is one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::libc;
use rtnetlink::{Handle, RouteMessageBuilder};
use weft_netkit::netlink_dump::{dump, DumpError, DUMP_ATTEMPTS};

use crate::overlay::REPLY_TABLE;
use crate::routes::{Dev, Route, RouteChange, Table, WEFT_PROTO};

/// A failed route operation, naming the route.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("{op} {route}: a route to {} that weft does not own exists; left alone", route.dst)]
    NotOurs { op: &'static str, route: Route },
    #[error("{op} {what}: {source}")]
    Netlink {
        op: &'static str,
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{route}: the VXLAN device {} is missing", crate::overlay::VXLAN_DEVICE)]
    NoOverlay { route: Route },
    #[error("{op}: dump interrupted {DUMP_ATTEMPTS} times")]
    DumpInterrupted { op: &'static str },
    #[error("{route}: destination and gateway of different families")]
    MixedFamilies { route: Route },
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn table_id(t: Table) -> u32 {
    match t {
        Table::Main => u32::from(RouteHeader::RT_TABLE_MAIN),
        Table::Replies => REPLY_TABLE,
    }
}

/// The message for `r`; an overlay route needs the VXLAN device's index.
fn message(r: Route, overlay: Option<u32>) -> Result<RouteMessage, RouteError> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix())
        .and_then(|b| b.gateway(r.gw))
        .ok()
        .filter(|_| r.dst.is_ipv4() == r.gw.is_ipv4())
        .ok_or(RouteError::MixedFamilies { route: r })?
        .table_id(table_id(r.table))
        .protocol(RouteProtocol::Other(WEFT_PROTO));
    if r.dev == Dev::Overlay {
        let index = overlay.ok_or(RouteError::NoOverlay { route: r })?;
        b = b.output_interface(index).onlink();
    }
    Ok(b.build())
}

/// Lists weft's IPv4 and IPv6 routes in the main table and `REPLY_TABLE`
/// (`ip route show table all proto 87`, and `ip -6`); those out of link
/// `overlay` are `Dev::Overlay`.
pub async fn list_weft_routes(h: &Handle, overlay: Option<u32>) -> Result<Vec<Route>, RouteError> {
    let op = "RTM_GETROUTE";
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        let msgs = dump(h, RouteNetlinkMessage::GetRoute(req)).await.map_err(|e| match e {
            DumpError::Netlink(source) => {
                RouteError::Netlink { op, what: format!("{family:?} routes"), source }
            }
            DumpError::Interrupted => RouteError::DumpInterrupted { op },
        })?;
        out.extend(msgs.iter().filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => weft_route(r, overlay),
            _ => None,
        }));
    }
    out.sort();
    Ok(out)
}

/// The route in `r` if it is one of weft's: main or reply table, unicast,
/// `WEFT_PROTO`, via a gateway of its own family.
fn weft_route(r: &RouteMessage, overlay: Option<u32>) -> Option<Route> {
    if r.header.protocol != RouteProtocol::Other(WEFT_PROTO) || r.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(r.header.table);
    let (mut dst, mut gw, mut oif) = (None, None, None);
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(IpAddr::V4(*ip)),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dst = Some(IpAddr::V6(*ip)),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some(IpAddr::V4(*ip)),
            RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => gw = Some(IpAddr::V6(*ip)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let table = [Table::Main, Table::Replies].into_iter().find(|t| table_id(*t) == table)?;
    let any = match r.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let dst = IpNetwork::new(dst.unwrap_or(any), r.header.destination_prefix_length).ok()?;
    let gw = gw.filter(|g| g.is_ipv4() == dst.is_ipv4())?;
    let dev = if oif.is_some() && oif == overlay { Dev::Overlay } else { Dev::Underlay };
    Some(Route { table, dst, gw, dev })
}

/// Applies one change (`overlay`: the VXLAN device's index, for overlay
/// routes). Add fails with `NotOurs` if a foreign route holds the
/// destination; Replace overwrites only weft's route (listed as ours just
/// before); Delete matches on the weft protocol and counts "gone" as done.
pub async fn apply(h: &Handle, change: RouteChange, overlay: Option<u32>) -> Result<(), RouteError> {
    match change {
        RouteChange::Add(r) => match h.route().add(message(r, overlay)?).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Err(RouteError::NotOurs { op: "add", route: r }),
            Err(source) => Err(RouteError::Netlink { op: "add", what: r.to_string(), source }),
        },
        RouteChange::Replace { new, .. } => h
            .route()
            .add(message(new, overlay)?)
            .replace()
            .execute()
            .await
            .map_err(|source| RouteError::Netlink { op: "replace", what: new.to_string(), source }),
        // Matched without the link: a route of a gone device is gone with it.
        RouteChange::Delete(r) => {
            match h.route().del(message(Route { dev: Dev::Underlay, ..r }, None)?).execute().await {
                Ok(()) => Ok(()),
                Err(e) if matches!(errno(&e), Some(libc::ESRCH | libc::ENOENT)) => Ok(()),
                Err(source) => Err(RouteError::Netlink { op: "delete", what: r.to_string(), source }),
            }
        }
    }
}

/// Deletes every weft route (shutdown with cleanup); collects errors and carries on.
pub async fn delete_all(h: &Handle) -> Vec<RouteError> {
    let routes = match list_weft_routes(h, None).await {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    let mut errors = Vec::new();
    for r in routes {
        if let Err(e) = apply(h, RouteChange::Delete(r), None).await {
            errors.push(e);
        }
    }
    errors
}
