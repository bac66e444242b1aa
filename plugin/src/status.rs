//! CNI STATUS (1.1): whether this node can take new pods, in the spec's
//! codes: 50 when ADD cannot work (the address store is unusable, a range
//! set is exhausted, the IPAM plugin is missing), 51 when, beyond that,
//! pods already attached here may have lost connectivity (their bridge is
//! gone or down, or their veths are off it).

use weft_conf::{CniEnv, CniError, ErrorCode, NetConf};

use crate::ipam_client::IpamClient;
use crate::{names, runtime};
use weft_netkit::{link, netns};

/// Runs STATUS: Ok when ADD can work and the attached pods' bridge is up. Read-only.
pub fn status(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let bridge = runtime().and_then(|rt| rt.block_on(bridge_state(&conf.bridge)))?;
    if let BridgeState::PodsCutOff { why } = bridge {
        return Err(CniError::new(
            ErrorCode::PluginNotAvailableLimited,
            format!("existing pods may have lost connectivity: {why}"),
        )
        .with_details(
            "the next ADD brings the bridge up or re-creates it; pods attached before a deletion stay \
             off it until re-created",
        ));
    }
    // Every failure to open or query the IPAM means ADD cannot work: 50.
    let ipam = IpamClient::new(conf, env).map_err(not_available)?;
    ipam.status(env, stdin).map_err(not_available)
}

/// What the node netns says about the pods' bridge.
#[derive(Debug, PartialEq, Eq)]
enum BridgeState {
    /// No pod is attached, or the bridge is up with every pod's veth on it.
    Fine,
    PodsCutOff {
        why: String,
    },
}

async fn bridge_state(bridge: &str) -> Result<BridgeState, CniError> {
    let h = netns::connect_current()?;
    let links = link::list_links(&h).await?;
    let pods: Vec<&link::LinkState> =
        links.iter().filter(|l| l.kind.as_deref() == Some("veth") && names::is_host_veth(&l.name)).collect();
    if pods.is_empty() {
        return Ok(BridgeState::Fine);
    }
    let why = match links.iter().find(|l| l.name == bridge) {
        None => format!("bridge {bridge} is gone while {} pod veths exist", pods.len()),
        Some(br) if !br.up => format!("bridge {bridge} is down"),
        Some(br) => {
            let off = pods.iter().filter(|l| l.controller != Some(br.index)).count();
            if off == 0 {
                return Ok(BridgeState::Fine);
            }
            format!("{off} pod veths are not on bridge {bridge}")
        }
    };
    Ok(BridgeState::PodsCutOff { why })
}

/// Any failure to serve ADD becomes code 50, keeping what it said.
fn not_available(e: CniError) -> CniError {
    if e.code == ErrorCode::PluginNotAvailable.code() {
        return e;
    }
    let details = if e.details.is_empty() { e.msg.clone() } else { format!("{}: {}", e.msg, e.details) };
    CniError::new(ErrorCode::PluginNotAvailable, "cannot serve ADD: the address store is not usable")
        .with_details(details)
}
