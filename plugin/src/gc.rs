//! CNI GC (1.1): releases every allocation whose attachment is not in
//! `cni.dev/valid-attachments`, and deletes the bridge ports such
//! attachments left behind (an ADD killed before it could undo its veth).

use std::collections::HashSet;

use weft_conf::{CniEnv, CniError, NetConf};

use crate::error::context;
use crate::ipam_client::IpamClient;
use crate::{names, runtime};
use weft_netkit::{link, netns};

/// Runs GC. Carries on past errors and reports the first.
pub fn gc(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let valid: HashSet<String> =
        conf.gc_keep()?.iter().map(|a| names::host_veth(&a.container_id, &a.ifname)).collect();
    let ports = runtime().and_then(|rt| rt.block_on(delete_stale_ports(&conf.bridge, &valid)));
    let released = IpamClient::new(conf, env).and_then(|ipam| ipam.gc(conf, env, stdin));
    ports.map_err(context("deleting stale bridge ports"))?;
    released.map_err(context("releasing stale addresses"))
}

/// Deletes the veths on `bridge` that carry weft's host-side names but
/// belong to no valid attachment. Other ports are not ours and stay.
async fn delete_stale_ports(bridge: &str, valid: &HashSet<String>) -> Result<(), CniError> {
    let h = netns::connect_current()?;
    let Some(br) = link::get_link(&h, bridge).await? else {
        return Ok(());
    };
    for l in link::list_links(&h).await? {
        let ours = l.controller == Some(br.index)
            && l.kind.as_deref() == Some("veth")
            && names::is_host_veth(&l.name);
        if ours && !valid.contains(&l.name) {
            link::delete_link(&h, &l.name).await?;
        }
    }
    Ok(())
}
