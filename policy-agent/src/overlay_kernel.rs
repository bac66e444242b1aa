//! The overlay, the kernel part: finds the underlay (the link holding the
//! node's InternalIP), and ensures or removes `weft.vxlan` with its address,
//! its static FDB and neighbour entries and the reply rule (see `overlay`).
//! Everything on `weft.vxlan` is weft's (the device is); rules are weft's by
//! `WEFT_PROTO`. Deleting the device takes its entries and routes with it.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};
use rtnetlink::Handle;
use weft_netkit::kernel_error::KernelError;
use weft_netkit::neighbour::{self, Table};
use weft_netkit::rule::{self, SourceRule};
use weft_netkit::vxlan::{ensure_vxlan, VxlanSpec};
use weft_netkit::{addr, link};

use crate::overlay::{
    entry_changes, vtep_mac, Plan, Routing, Underlay, REPLY_RULE_PRIORITY, REPLY_TABLE, VXLAN_DEVICE,
    VXLAN_OVERHEAD,
};
use crate::routes::WEFT_PROTO;

/// The underlay of the node whose InternalIP is `ip`: that address with its
/// prefix on a link other than `weft.vxlan`, and the link's MTU; None if no
/// link holds it.
pub async fn read_underlay(h: &Handle, ip: Ipv4Addr) -> Result<Option<Underlay>, KernelError> {
    let vxlan = link::get_link(h, VXLAN_DEVICE).await?.map(|l| l.index);
    let all = addr::list_all_addresses(h).await?;
    let found = all.into_iter().find_map(|(index, a)| match a {
        IpNetwork::V4(n) if n.ip() == ip && Some(index) != vxlan => Some((index, n)),
        _ => None,
    });
    let Some((index, addr)) = found else { return Ok(None) };
    let Some(l) = link::get_link_by_index(h, index).await? else { return Ok(None) };
    Ok(Some(Underlay { addr, index, mtu: l.mtu }))
}

/// Ensures the overlay `plan` needs, from this node's `underlay` and pod
/// CIDR (the reply rule's source); returns the VXLAN device's index, for
/// the overlay routes. Idempotent.
pub async fn ensure_overlay(
    h: &Handle,
    routing: &Routing,
    underlay: &Underlay,
    pod_cidr: Option<Ipv4Network>,
    plan: &Plan,
) -> Result<u32, KernelError> {
    let ip = underlay.addr.ip();
    let spec = VxlanSpec {
        vni: routing.vni,
        port: routing.port,
        local: ip,
        underlay: underlay.index,
        mtu: underlay.mtu.saturating_sub(VXLAN_OVERHEAD),
        mac: vtep_mac(ip),
    };
    let dev = ensure_vxlan(h, VXLAN_DEVICE, &spec).await?.index;
    // The VTEP borrows the node's address: what leaves through it (masquerade,
    // node traffic) carries the InternalIP, as in host-gw.
    addr::add_address(h, dev, IpNetwork::new(IpAddr::V4(ip), 32).expect("a /32 is valid")).await?;
    for table in [Table::Fdb, Table::Neighbour] {
        let current = neighbour::list_permanent(h, table, dev).await?;
        let (add, del) = entry_changes(&plan.vteps, &current);
        for e in add {
            neighbour::replace_entry(h, table, dev, e).await?;
        }
        for e in del {
            neighbour::delete_entry(h, table, dev, e).await?;
        }
    }
    let want = pod_cidr.map(|src| SourceRule { src, table: REPLY_TABLE, priority: REPLY_RULE_PRIORITY });
    sync_rules(h, want).await?;
    Ok(dev)
}

/// Removes the overlay: the device (with its entries and routes) and weft's
/// rules. Collects errors and carries on; "already gone" is done.
pub async fn teardown_overlay(h: &Handle) -> Vec<KernelError> {
    let mut errors = Vec::new();
    if let Err(e) = link::delete_link(h, VXLAN_DEVICE).await {
        errors.push(e);
    }
    if let Err(e) = sync_rules(h, None).await {
        errors.push(e);
    }
    errors
}

/// Leaves exactly `want` among weft's rules.
async fn sync_rules(h: &Handle, want: Option<SourceRule>) -> Result<(), KernelError> {
    let current = rule::list_rules(h, WEFT_PROTO).await?;
    if let Some(r) = want.filter(|r| !current.contains(r)) {
        rule::add_rule(h, r, WEFT_PROTO).await?;
    }
    for r in current.into_iter().filter(|r| Some(*r) != want) {
        rule::delete_rule(h, r, WEFT_PROTO).await?;
    }
    Ok(())
}
