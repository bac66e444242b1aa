//! CNI DEL: idempotent per the spec. It succeeds when the netns, the
//! interface or the allocation is already gone, without prevResult, and
//! when called twice (containerd's CRI does exactly that).

use weft_conf::{CniEnv, CniError, NetConf};

use crate::agent_client::{self, NotifyError};
use crate::error::context;
use crate::ipam_client::IpamClient;
use crate::{names, runtime};
use weft_conf::pod_socket::PodEvent;
use weft_netkit::{link, netns};

/// Runs DEL. Teardown carries on past errors and reports the first.
pub fn del(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let mut errors = Vec::new();
    // 0. The agent first, so it drops the address before IPAM can hand it to
    //    another pod. Best effort and bounded, as for ADD.
    if let Some(socket) = conf.agent_socket.as_deref() {
        let event = PodEvent::Del { container_id: env.container_id.clone(), ifname: env.ifname.clone() };
        match agent_client::notify(socket, &event, agent_client::TIMEOUT) {
            Ok(()) | Err(NotifyError::NoSocket(_)) => {}
            Err(e) => eprintln!("weft: the node agent was not told of this DEL ({e})"),
        }
    }
    // 1. The pod's veth, found by its host-side name: no need to enter the
    //    pod netns, which may be gone (deleting either end deletes both).
    let host_name = names::host_veth(&env.container_id, &env.ifname);
    if let Err(e) = runtime().and_then(|rt| rt.block_on(delete_host_veth(&host_name))) {
        errors.push(context("deleting the pod's veth")(e));
    }
    // 2. The address, by (container ID, ifname).
    let released = IpamClient::new(conf, env).and_then(|ipam| ipam.del(env, stdin));
    if let Err(e) = released {
        errors.push(context("releasing the address")(e));
    }
    match errors.into_iter().next() {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

async fn delete_host_veth(name: &str) -> Result<(), CniError> {
    let h = netns::connect_current()?;
    // Only a veth of that name is ours; anything else is left alone.
    match link::get_link(&h, name).await? {
        Some(l) if l.kind.as_deref() == Some("veth") => {
            link::delete_link(&h, name).await?;
        }
        _ => {}
    }
    Ok(())
}
