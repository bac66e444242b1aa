//! CNI CHECK: the attachment still looks as ADD left it (prevResult).

use ipnetwork::IpNetwork;
use weft_conf::error::codes;
use weft_conf::{CniEnv, CniError, CniResult, ErrorCode, NetConf};

use crate::ipam_client::IpamClient;
use crate::{names, runtime};
use weft_netkit::netns::{self, NetNs};
use weft_netkit::{addr, link};

/// Runs CHECK against `conf.prev_result`; a precise error names the first difference.
pub fn check(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(ErrorCode::InvalidNetworkConfig, "CHECK needs prevResult"))?;
    let ci = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.is_some())
        .ok_or_else(|| failed(format!("prevResult has no container interface {:?}", env.ifname)))?;
    let Some(netns_path) = env.netns.as_ref() else {
        return Err(CniError::new(ErrorCode::InvalidEnvironment, "CNI_NETNS is required for CHECK"));
    };
    let pod_ns = NetNs::open(netns_path)?;
    runtime()?.block_on(async {
        check_pod(&pod_ns, env, prev, ci).await?;
        check_host(env, conf).await
    })?;
    let ips: Vec<_> = prev.ips.iter().filter(|i| i.interface == Some(ci)).map(|i| i.address.ip()).collect();
    IpamClient::new(conf, env)?.check(env, stdin, &ips)
}

async fn check_pod(pod_ns: &NetNs, env: &CniEnv, prev: &CniResult, ci: usize) -> Result<(), CniError> {
    let h = netns::connect_in(pod_ns)?;
    let l = link::get_link(&h, &env.ifname).await?.ok_or_else(|| {
        failed(format!("interface {:?} is missing from {}", env.ifname, pod_ns.path().display()))
    })?;
    if let Some(want) = &prev.interfaces[ci].mac {
        let have = l.mac.map(link::mac_string).unwrap_or_default();
        if !have.eq_ignore_ascii_case(want) {
            return Err(failed(format!("{} has MAC {have}, prevResult says {want}", env.ifname)));
        }
    }
    let have = addr::list_addresses(&h, l.index).await?;
    for ip in prev.ips.iter().filter(|i| i.interface == Some(ci)) {
        if !have.contains(&ip.address) {
            return Err(failed(format!("{} lacks address {} (has {:?})", env.ifname, ip.address, have)));
        }
    }
    let mut routes = addr::list_routes(&h, addr::Family::V4).await?;
    routes.extend(addr::list_routes(&h, addr::Family::V6).await?);
    for r in &prev.routes {
        let found =
            routes.iter().any(|have| same_net(have.dst, r.dst) && (r.gw.is_none() || have.gw == r.gw));
        if !found {
            return Err(failed(format!("route to {} via {:?} is missing in the pod", r.dst, r.gw)));
        }
    }
    Ok(())
}

async fn check_host(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let h = netns::connect_current()?;
    let host_name = names::host_veth(&env.container_id, &env.ifname);
    let host = link::get_link(&h, &host_name)
        .await?
        .ok_or_else(|| failed(format!("host end {host_name} of the pod's veth is missing")))?;
    let bridge = link::get_link(&h, &conf.bridge)
        .await?
        .ok_or_else(|| failed(format!("bridge {} is missing", conf.bridge)))?;
    if host.controller != Some(bridge.index) {
        return Err(failed(format!("{host_name} is not a port of bridge {}", conf.bridge)));
    }
    if conf.hairpin_mode && !link::hairpin(&h, host.index).await? {
        return Err(failed(format!("hairpin mode is off on {host_name}")));
    }
    Ok(())
}

fn same_net(a: IpNetwork, b: IpNetwork) -> bool {
    a.prefix() == b.prefix() && a.network() == b.network()
}

fn failed(msg: String) -> CniError {
    CniError::new(ErrorCode::Plugin(codes::CHECK_FAILED), msg)
}
