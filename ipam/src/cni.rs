//! weft-ipam as a CNI IPAM plugin: what `weft` runs in-process and what the
//! standalone `weft-ipam` binary runs for other plugins.

use std::net::IpAddr;

use weft_conf::error::codes;
use weft_conf::{Attachment, CniEnv, CniError, CniResult, Command, ErrorCode, Reply, Version};

use crate::{IpamConfig, Store};

/// An opened IPAM: its config and its store.
pub struct Ipam {
    cfg: IpamConfig,
    store: Store,
}

impl Ipam {
    /// Parses the `ipam` section and opens the store of `network`.
    pub fn open(ipam: &serde_json::Value, network: &str) -> Result<Ipam, CniError> {
        let cfg = IpamConfig::parse(ipam)?;
        let store = Store::open(&cfg.data_dir, network)?;
        Ok(Ipam { cfg, store })
    }

    pub fn config(&self) -> &IpamConfig {
        &self.cfg
    }

    /// ADD: one address per range set, and the configured routes. Idempotent
    /// per attachment; the flag says whether this call made the allocation.
    pub fn add(&self, container_id: &str, ifname: &str) -> Result<(CniResult, bool), CniError> {
        let a = crate::allocate_attachment(&self.store, &self.cfg, container_id, ifname)?;
        Ok((crate::ipam_result(&self.cfg, a.ips), a.fresh))
    }

    /// The addresses the attachment holds now (none before its first ADD).
    pub fn held(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, CniError> {
        Ok(crate::held(&self.store, container_id, ifname)?)
    }

    /// DEL: releases what the attachment holds. Idempotent.
    pub fn del(&self, container_id: &str, ifname: &str) -> Result<(), CniError> {
        Ok(crate::release(&self.store, container_id, ifname)?)
    }

    /// CHECK: the attachment still holds every address of `ips`.
    pub fn check(&self, container_id: &str, ifname: &str, ips: &[IpAddr]) -> Result<(), CniError> {
        let held = self.held(container_id, ifname)?;
        match ips.iter().find(|ip| !held.contains(ip)) {
            None => Ok(()),
            Some(ip) => Err(CniError::new(
                ErrorCode::Plugin(codes::CHECK_FAILED),
                format!("address {ip} is not allocated to {container_id}/{ifname}"),
            )
            .with_details(format!("the store holds {held:?} for this attachment"))),
        }
    }

    /// GC: releases every allocation whose attachment is not in `valid`.
    pub fn gc(&self, valid: &[Attachment]) -> Result<Vec<IpAddr>, CniError> {
        let valid: Vec<(String, String)> =
            valid.iter().map(|a| (a.container_id.clone(), a.ifname.clone())).collect();
        Ok(crate::gc(&self.store, &valid)?)
    }

    /// STATUS: ready while the store works and every range set has a free address.
    pub fn status(&self) -> Result<(), CniError> {
        let free = crate::free_counts(&self.store, &self.cfg).map_err(|e| {
            CniError::new(ErrorCode::PluginNotAvailable, "IPAM store is not usable")
                .with_details(CniError::from(e).to_string())
        })?;
        match free.iter().position(|n| *n == 0) {
            None => Ok(()),
            Some(i) => Err(CniError::new(
                ErrorCode::PluginNotAvailable,
                format!("no free address left in range set {i}"),
            )),
        }
    }
}

/// The fields of a network config an IPAM plugin reads; the rest belongs
/// to the main plugin and is not ours to judge.
#[derive(serde::Deserialize)]
struct IpamStdin {
    #[serde(rename = "cniVersion")]
    cni_version: Version,
    name: String,
    ipam: Option<serde_json::Value>,
    #[serde(rename = "prevResult")]
    prev_result: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

/// The standalone plugin: one CNI command.
pub fn run(lookup: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Reply {
    weft_conf::serve(lookup, stdin, |env| dispatch(env, stdin))
}

fn dispatch(env: &CniEnv, stdin: &[u8]) -> Result<Option<serde_json::Value>, CniError> {
    let conf: IpamStdin = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(ErrorCode::DecodingFailure, "cannot decode network config").with_details(e.to_string())
    })?;
    let section =
        conf.ipam.ok_or_else(|| CniError::new(ErrorCode::InvalidNetworkConfig, "ipam is required"))?;
    let ipam = Ipam::open(&section, &conf.name)?;
    let v = conf.cni_version;
    env.command.require_version(v)?;
    match env.command {
        Command::Add => ipam.add(&env.container_id, &env.ifname).map(|(r, _)| Some(r.to_json(v))),
        Command::Del => ipam.del(&env.container_id, &env.ifname).map(|()| None),
        Command::Check => {
            let prev = conf
                .prev_result
                .ok_or_else(|| CniError::new(ErrorCode::InvalidNetworkConfig, "CHECK needs prevResult"))?;
            let (_, prev) = CniResult::from_json(&prev)?;
            let ips: Vec<IpAddr> = prev.ips.iter().map(|i| i.address.ip()).collect();
            ipam.check(&env.container_id, &env.ifname, &ips).map(|()| None)
        }
        Command::Gc => {
            // Without the list, a GC would free every address: refuse it.
            let keep = conf.valid_attachments.ok_or_else(|| {
                CniError::new(ErrorCode::InvalidNetworkConfig, "GC needs cni.dev/valid-attachments")
            })?;
            ipam.gc(&keep).map(|_| None)
        }
        Command::Status => ipam.status().map(|()| None),
        // serve() answers VERSION before dispatching.
        Command::Version => Ok(None),
    }
}
