//! One sync of the routes to other nodes' pods, by `--mode`: the peers from
//! the model, the overlay (`overlay_kernel`) when some peer is reached
//! through it, then weft's routes. Fails closed: a peer that needs the
//! overlay gets no route while the overlay cannot be set up. IPv6 pod CIDRs
//! are routed in host-gw mode only (the overlay is IPv4; docs/modes.md).

use rtnetlink::Handle;
use tracing::info;
use weft_netkit::link;

use crate::model::Model;
use crate::overlay::{self, Mode, Routing};
use crate::overlay_kernel::{ensure_overlay, read_underlay, teardown_overlay};
use crate::route_table::{apply, list_weft_routes};
use crate::routes::{desired_routes, desired_routes6, plan, Dev, Route, Table};
use crate::status::OverlayStatus;

/// What a routing sync did.
#[derive(Debug, Default)]
pub struct Synced {
    /// weft's routes to other nodes' pod CIDRs in the kernel afterwards.
    pub routes: usize,
    /// None in host-gw mode, or while the underlay is not known.
    pub overlay: Option<OverlayStatus>,
    pub errors: Vec<String>,
    /// Why other nodes get no route (for the status, not logged each sync).
    pub warnings: Vec<String>,
}

/// Reconciles node `node`'s routes (and overlay) with `model`.
pub async fn sync_routing(
    h: &Handle,
    node: &str,
    model: &Model,
    routing: &Routing,
    generation: &str,
) -> Synced {
    let mut out = Synced::default();
    let (peers, notes) = desired_routes(model, node);
    out.warnings = notes;
    let (peers6, notes6) = desired_routes6(model, node);
    let peers6 = match routing.mode {
        Mode::HostGw => {
            out.warnings.extend(notes6);
            peers6
        }
        _ if peers6.is_empty() => peers6,
        _ => {
            let n = peers6.len();
            out.warnings
                .push(format!("{}: {n} IPv6 pod CIDRs get no route (IPv6 in host-gw only)", routing.mode));
            Default::default()
        }
    };
    let me = model.nodes.get(node);
    let underlay = match (routing.mode, me.and_then(|n| n.internal_ip)) {
        (Mode::HostGw, _) => None,
        (_, None) => {
            out.errors.push(format!("{}: this node has no IPv4 InternalIP: no overlay", routing.mode));
            None
        }
        (_, Some(ip)) => match read_underlay(h, ip).await {
            Ok(None) => {
                out.errors
                    .push(format!("{}: no link holds this node's InternalIP {ip}: no overlay", routing.mode));
                None
            }
            Ok(u) => u,
            Err(e) => {
                out.errors.push(format!("{}: reading the underlay: {e}", routing.mode));
                None
            }
        },
    };
    let mut want = overlay::plan(&peers, routing.mode, underlay.map(|u| u.addr));
    want.routes.extend(peers6.into_iter().map(|(dst, gw)| Route::direct(dst, gw)));
    let mut index = None;
    if want.uses_overlay() {
        let ready = match &underlay {
            Some(u) => ensure_overlay(h, routing, u, me.and_then(|n| n.pod_cidr), &want)
                .await
                .map_err(|e| format!("{}: {e}", overlay::VXLAN_DEVICE)),
            None => Err(String::new()),
        };
        match ready {
            Ok(i) => index = Some(i),
            Err(e) => {
                out.errors.extend(Some(e).filter(|e| !e.is_empty()));
                // Fail closed: no route to a peer the overlay cannot reach.
                want.routes.retain(|r| r.dev == Dev::Underlay);
            }
        }
    }
    // Routes still through a device about to go (a switch away from the
    // overlay) must read as overlay routes, so they are replaced now.
    let leaving = match index {
        Some(_) => None,
        None => link::get_link(h, overlay::VXLAN_DEVICE).await.ok().flatten().map(|l| l.index),
    };
    match list_weft_routes(h, index.or(leaving)).await {
        Ok(current) => {
            for change in plan(&want.routes, &current) {
                match apply(h, change, index).await {
                    Ok(()) => info!(generation = %generation, "route {change}"),
                    Err(e) => out.errors.push(e.to_string()),
                }
            }
        }
        Err(e) => out.errors.push(e.to_string()),
    }
    if index.is_none() {
        out.errors.extend(teardown_overlay(h).await.into_iter().map(|e| format!("overlay teardown: {e}")));
    }
    match list_weft_routes(h, index).await {
        Ok(r) => out.routes = r.iter().filter(|r| r.table == Table::Main).count(),
        Err(e) => out.errors.push(e.to_string()),
    }
    out.overlay = underlay.and_then(|u| {
        Some(OverlayStatus {
            mode: routing.mode.to_string(),
            vteps: if index.is_some() { want.vteps.len() } else { 0 },
            pod_mtu: overlay::pod_mtu(routing.mode, u.mtu)?,
        })
    });
    out
}
