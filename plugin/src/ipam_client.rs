//! IPAM for the plugin: `weft-ipam` linked in-process (no second exec on the
//! ADD hot path), or any other IPAM plugin found on CNI_PATH and exec'd as
//! the spec describes (same env, the network config on stdin).

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use weft_conf::error::codes;
use weft_conf::{CniEnv, CniError, CniResult, Command, ErrorCode, NetConf};
use weft_ipam::cni::Ipam;

/// The IPAM type handled in-process.
pub const IN_PROCESS_TYPE: &str = "weft-ipam";

/// Where addresses come from for one network.
pub enum IpamClient {
    InProcess(Ipam),
    Delegate { binary: PathBuf },
}

impl IpamClient {
    /// Picks the IPAM for `conf`: weft-ipam's store, or the delegate binary on CNI_PATH.
    pub fn new(conf: &NetConf, env: &CniEnv) -> Result<IpamClient, CniError> {
        if conf.ipam.ipam_type == IN_PROCESS_TYPE {
            return Ok(IpamClient::InProcess(Ipam::open(&conf.ipam.raw, &conf.name)?));
        }
        Ok(IpamClient::Delegate { binary: find_plugin(&conf.ipam.ipam_type, &env.path)? })
    }

    /// Allocates for the attachment: ips (interface unset) and routes, and
    /// whether this call made the allocation (a repeated ADD of a live
    /// attachment gets its addresses back, and must not free them on failure).
    pub fn add(&self, env: &CniEnv, stdin: &[u8]) -> Result<(CniResult, bool), CniError> {
        match self {
            IpamClient::InProcess(i) => i.add(&env.container_id, &env.ifname),
            IpamClient::Delegate { binary } => {
                let out = exec(binary, Command::Add, env, stdin)?;
                let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
                    delegate_error(binary, "returned a result that is not JSON", e.to_string())
                })?;
                // A delegate refuses a duplicate ADD itself (host-local does).
                Ok((CniResult::from_json(&v)?.1, true))
            }
        }
    }

    /// Releases the attachment's addresses. Idempotent.
    pub fn del(&self, env: &CniEnv, stdin: &[u8]) -> Result<(), CniError> {
        match self {
            IpamClient::InProcess(i) => i.del(&env.container_id, &env.ifname),
            IpamClient::Delegate { binary } => exec(binary, Command::Del, env, stdin).map(drop),
        }
    }

    /// Checks that the attachment still holds `ips`.
    pub fn check(&self, env: &CniEnv, stdin: &[u8], ips: &[IpAddr]) -> Result<(), CniError> {
        match self {
            IpamClient::InProcess(i) => i.check(&env.container_id, &env.ifname, ips),
            IpamClient::Delegate { binary } => exec(binary, Command::Check, env, stdin).map(drop),
        }
    }

    /// Releases every allocation not in the config's valid attachments.
    pub fn gc(&self, conf: &NetConf, env: &CniEnv, stdin: &[u8]) -> Result<(), CniError> {
        match self {
            IpamClient::InProcess(i) => i.gc(conf.gc_keep()?).map(drop),
            IpamClient::Delegate { binary } => exec(binary, Command::Gc, env, stdin).map(drop),
        }
    }

    /// STATUS: whether new attachments can get an address.
    pub fn status(&self, env: &CniEnv, stdin: &[u8]) -> Result<(), CniError> {
        match self {
            IpamClient::InProcess(i) => i.status(),
            IpamClient::Delegate { binary } => exec(binary, Command::Status, env, stdin).map(drop),
        }
    }
}

/// Finds a plugin binary on CNI_PATH.
pub fn find_plugin(name: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if name.contains('/') {
        return Err(CniError::new(ErrorCode::InvalidNetworkConfig, "invalid ipam.type")
            .with_details(format!("{name:?} must be a plugin name, not a path")));
    }
    path.iter().map(|d| d.join(name)).find(|p| p.is_file()).ok_or_else(|| {
        CniError::new(
            ErrorCode::Plugin(codes::IPAM_DELEGATE),
            format!("IPAM plugin {name:?} not found on CNI_PATH"),
        )
        .with_details(format!("searched {path:?}"))
    })
}

fn exec(binary: &Path, cmd: Command, env: &CniEnv, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    // The rest of the environment (CNI_ARGS, ...) is inherited, as the spec asks.
    let mut p = Process::new(binary);
    p.env("CNI_COMMAND", cmd.as_str())
        .env("CNI_CONTAINERID", &env.container_id)
        .env("CNI_IFNAME", &env.ifname)
        .env("CNI_PATH", std::env::join_paths(&env.path).unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    match &env.netns {
        Some(ns) => p.env("CNI_NETNS", ns),
        None => p.env_remove("CNI_NETNS"),
    };
    let mut child = p.spawn().map_err(|e| delegate_error(binary, "could not be started", e.to_string()))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin).map_err(|e| delegate_error(binary, "did not read its config", e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| delegate_error(binary, "could not be waited for", e.to_string()))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    // A well-behaved plugin printed a CNI error: pass it on unchanged.
    match serde_json::from_slice::<CniError>(&out.stdout) {
        Ok(e) => Err(e),
        Err(_) => Err(delegate_error(
            binary,
            &format!("failed ({})", out.status),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )),
    }
}

fn delegate_error(binary: &Path, what: &str, details: String) -> CniError {
    CniError::new(ErrorCode::Plugin(codes::IPAM_DELEGATE), format!("IPAM plugin {} {what}", binary.display()))
        .with_details(details)
}
