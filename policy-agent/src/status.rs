//! The agent's status file: what the agent last applied (routes, sysctls,
//! masquerade, policy), written atomically after every sync and read by the
//! testbed and operators.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::agent::AgentError;

/// What the policy backend enforces after a sync.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub backend: String,
    /// Local pods known (by address).
    pub local_pods: usize,
    pub ingress_isolated: usize,
    pub egress_isolated: usize,
    /// Exact (pod, port, peer network) allows, both directions.
    pub triples: usize,
    /// Rules without a single port, both directions.
    pub groups: usize,
    /// Rules with many peers (one per distinct peers), both directions.
    #[serde(default)]
    pub port_groups: usize,
}

/// The overlay (`--mode` vxlan or auto) after a sync.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayStatus {
    pub mode: String,
    /// Other nodes reached through the VXLAN device.
    pub vteps: usize,
    /// The MTU pods get (the conflist's): the underlay's less the VXLAN header.
    pub pod_mtu: u32,
}

/// The status file: what the agent last applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    /// The generation of the snapshot the routes were reconciled against.
    pub generation: String,
    /// weft's routes in the kernel after the reconcile.
    pub routes: usize,
    pub ip_forward: bool,
    /// None when br_netfilter is not loaded (the sysctl does not exist).
    pub bridge_nf_call_iptables: Option<bool>,
    /// The same for IPv6 (bridged IPv6 through ip6tables and nftables).
    #[serde(default)]
    pub bridge_nf_call_ip6tables: Option<bool>,
    /// The pod CIDR whose masquerade rules were ensured (or found intact) in this
    /// sync; None when the agent does not own masquerade or could not ensure it.
    #[serde(default)]
    pub masquerade: Option<String>,
    /// None in host-gw mode (and while the underlay is not known).
    #[serde(default)]
    pub overlay: Option<OverlayStatus>,
    /// None when policy enforcement is off (or failed to apply: see errors).
    #[serde(default)]
    pub policy: Option<PolicyStatus>,
    /// What weft cannot enforce as written (e.g. an IPv6 ipBlock on an IPv4
    /// pod network), by policy, and what it waits for (a node without a
    /// podCIDR yet, another node it cannot route to).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Skipped manifests ("file: reason") and failed route changes.
    pub errors: Vec<String>,
}

/// Where the agent writes its status unless told otherwise.
pub const DEFAULT_STATUS_FILE: &str = "/run/weft/status.json";

/// Writes `status` to `path` atomically (a temp file in the same dir, then
/// rename), creating the directory if needed; idempotent.
pub fn write_status(path: &Path, status: &Status) -> Result<(), AgentError> {
    let err = |source| AgentError::Status { path: path.into(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let text = serde_json::to_vec_pretty(status).expect("the status serialises");
    if let Err(e) = std::fs::write(&tmp, text) {
        // A full disk must not leave a half-written temp file behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    std::fs::rename(&tmp, path).map_err(err)
}

/// Reads a status file; None if it does not exist or is not (yet) a status.
pub fn read_status(path: &Path) -> Option<Status> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}
