//! CNI ADD: address, bridge, veth, hairpin, routes, sysctls, masquerade.
//!
//! Every step that changes something registers its undo; a failure undoes
//! exactly what this ADD did (the allocation and the veth; never the shared
//! bridge) and reports the first error.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use rtnetlink::Handle;
use weft_conf::{CniEnv, CniError, CniResult, ErrorCode, Interface, IpConfig, NetConf, Route};

use crate::agent_client::{self, NotifyError};
use crate::error::context;
use crate::ipam_client::IpamClient;
use crate::node_setup::{self, Node};
use crate::{names, runtime};
use weft_conf::pod_socket::PodEvent;
use weft_netkit::link::mac_string;
use weft_netkit::netns::{self, NetNs};
use weft_netkit::{addr, link, veth};

/// Runs ADD; on error nothing this call created is left behind.
pub fn add(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<CniResult, CniError> {
    let Some(netns_path) = env.netns.as_ref() else {
        return Err(CniError::new(ErrorCode::InvalidEnvironment, "CNI_NETNS is required for ADD"));
    };
    let pod_ns = NetNs::open(netns_path).map_err(context("opening the pod netns"))?;
    refuse_own_netns(&pod_ns)?;
    let rt = runtime()?;
    // The socket into the pod netns is opened while IPAM and the node work run.
    let pod_conn = {
        let _in_rt = rt.enter();
        netns::connect_in_background(&pod_ns)?
    };
    let ipam = IpamClient::new(conf, env)?;
    let (mut alloc, fresh) = ipam.add(env, stdin).map_err(context("allocating an address"))?;
    // Undo 1 (on any failure below): the allocation, if this ADD made it.
    let undo_alloc = || {
        if fresh {
            let _ = ipam.del(env, stdin);
        }
    };
    if alloc.routes.is_empty() {
        alloc.routes = default_routes(&alloc.ips);
    }
    if alloc.ips.is_empty() {
        undo_alloc();
        return Err(CniError::new(ErrorCode::InvalidNetworkConfig, "IPAM returned no address"));
    }
    match rt.block_on(wire(env, conf, &pod_ns, pod_conn, &alloc)) {
        Ok(r) => {
            tell_agent(env, conf, &alloc);
            Ok(r)
        }
        Err(e) => {
            // The veth was undone inside wire().
            undo_alloc();
            Err(e)
        }
    }
}

async fn wire(
    env: &CniEnv,
    conf: &NetConf,
    pod_ns: &NetNs,
    pod_conn: netns::PendingConnection,
    alloc: &CniResult,
) -> Result<CniResult, CniError> {
    let node_h = netns::connect_current()?;
    let node = node_setup::ensure_node(&node_h, conf, &alloc.ips).await?;
    let host_name = names::host_veth(&env.container_id, &env.ifname);
    let pair = veth::create_veth(
        &node_h,
        &host_name,
        &env.ifname,
        pod_ns,
        node.mtu,
        node.bridge.index,
        conf.hairpin_mode,
    )
    .await
    .map_err(context("creating the veth pair"))?;
    let done = async {
        let pod_h = pod_conn.wait()?;
        configure_pod(&pod_h, pair.peer_index, alloc).await
    }
    .await;
    match done {
        Ok(routes) => Ok(result(env, conf, &node, &pair, pod_ns, alloc, routes)),
        Err(e) => {
            // Undo 2: the veth (deleting the host end deletes the peer too).
            let _ = link::delete_link(&node_h, &host_name).await;
            Err(context("configuring the pod interface")(e))
        }
    }
}

/// Tells the node agent the pod's addresses and waits (bounded) until its
/// policy is in force. Not fatal: without an agent the pod's address stays
/// in the agent's fail-closed rule until it learns the pod (agent_client.rs).
fn tell_agent(env: &CniEnv, conf: &NetConf, alloc: &CniResult) {
    let Some(socket) = conf.agent_socket.as_deref() else { return };
    let event = PodEvent::Add {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        namespace: env.args.pod_namespace.clone().unwrap_or_default(),
        name: env.args.pod_name.clone().unwrap_or_default(),
        ips: alloc.ips.iter().map(|i| i.address.ip()).collect(),
    };
    match agent_client::notify(socket, &event, agent_client::TIMEOUT) {
        Ok(()) | Err(NotifyError::NoSocket(_)) => {}
        // The agent's reason already says what happens to the pod's traffic.
        Err(NotifyError::Refused(reason)) => eprintln!("weft: the node agent refused this pod: {reason}"),
        Err(e) => eprintln!("weft: the node agent was not told about this pod ({e}); its traffic is dropped until the agent learns it"),
    }
}

/// Refuses a CNI_NETNS that is the plugin's own netns (the node's): an ADD
/// there would put the pod's address, and a default route, on the node.
fn refuse_own_netns(pod_ns: &NetNs) -> Result<(), CniError> {
    let own = NetNs::current().map_err(context("opening the plugin's own netns"))?;
    if pod_ns.same_as(&own).map_err(context("comparing network namespaces"))? {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS {} is the node's own network namespace, not a pod's", pod_ns.path().display()),
        )
        .with_details(
            "refusing to put a pod address and routes on the node; the runtime passed the wrong netns",
        ));
    }
    Ok(())
}

/// Addresses and routes inside the pod, on the interface `index`; returns
/// the routes this call added (one that already existed is not ours to report).
async fn configure_pod(h: &Handle, index: u32, alloc: &CniResult) -> Result<Vec<Route>, CniError> {
    link::set_up(h, index).await?;
    for ip in &alloc.ips {
        addr::add_address(h, index, ip.address).await?;
    }
    let mut added = Vec::new();
    for r in &alloc.routes {
        let gw = r.gw.or_else(|| gateway_for(&alloc.ips, r.dst));
        if addr::add_route(h, r.dst, gw, Some(index)).await? {
            added.push(r.clone());
        }
    }
    Ok(added)
}

/// Without configured routes a pod gets a default route via each address's
/// gateway: a pod network without one is never what a cluster wants.
fn default_routes(ips: &[IpConfig]) -> Vec<Route> {
    let mut routes: Vec<Route> = Vec::new();
    for ip in ips {
        let dst = if ip.address.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
        // Both literals are valid networks.
        let dst: IpNetwork = dst.parse().expect("default route literal");
        if ip.gateway.is_some() && !routes.iter().any(|r| r.dst == dst) {
            routes.push(Route::new(dst, ip.gateway));
        }
    }
    routes
}

/// A route without `gw` goes via the gateway of the address of its family.
fn gateway_for(ips: &[IpConfig], dst: IpNetwork) -> Option<IpAddr> {
    ips.iter().find(|i| i.address.is_ipv4() == dst.is_ipv4()).and_then(|i| i.gateway)
}

fn result(
    env: &CniEnv,
    conf: &NetConf,
    node: &Node,
    pair: &veth::VethPair,
    pod_ns: &NetNs,
    alloc: &CniResult,
    routes: Vec<Route>,
) -> CniResult {
    let interfaces = vec![
        Interface {
            name: conf.bridge.clone(),
            mac: node.bridge.mac.map(mac_string),
            mtu: Some(node.mtu),
            ..Default::default()
        },
        Interface {
            name: pair.host.name.clone(),
            mac: pair.host.mac.map(mac_string),
            mtu: Some(node.mtu),
            ..Default::default()
        },
        Interface {
            name: env.ifname.clone(),
            mac: Some(mac_string(pair.peer_mac)),
            mtu: Some(node.mtu),
            sandbox: Some(pod_ns.path().display().to_string()),
            ..Default::default()
        },
    ];
    let ips = alloc.ips.iter().map(|i| IpConfig { interface: Some(2), ..i.clone() }).collect();
    // Routes are reported as configured (a route without `gw` goes via the
    // address's gateway), as the reference bridge plugin does, but only those
    // this ADD added.
    let dns = if conf.dns.is_empty() { alloc.dns.clone() } else { conf.dns.clone() };
    CniResult { interfaces, ips, routes, dns }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: &str, gw: Option<&str>) -> IpConfig {
        IpConfig { address: a.parse().unwrap(), gateway: gw.map(|g| g.parse().unwrap()), interface: None }
    }

    #[test]
    fn default_routes_per_family_via_the_gateway() {
        let r = default_routes(&[ip("10.244.1.5/24", Some("10.244.1.1")), ip("fd00::5/64", Some("fd00::1"))]);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].dst.to_string(), r[0].gw.unwrap().to_string()),
            ("0.0.0.0/0".into(), "10.244.1.1".into())
        );
        assert_eq!((r[1].dst.to_string(), r[1].gw.unwrap().to_string()), ("::/0".into(), "fd00::1".into()));
        assert!(default_routes(&[ip("10.244.1.5/24", None)]).is_empty());
    }

    #[test]
    fn a_route_without_gw_takes_its_familys_gateway() {
        let ips = [ip("fd00::5/64", Some("fd00::1")), ip("10.244.1.5/24", Some("10.244.1.1"))];
        assert_eq!(gateway_for(&ips, "10.0.0.0/8".parse().unwrap()), Some("10.244.1.1".parse().unwrap()));
        assert_eq!(gateway_for(&ips, "::/0".parse().unwrap()), Some("fd00::1".parse().unwrap()));
    }
}
