//! Run state: what a run created, in /run/weft-e2e/<run>/state.json, so that
//! `down` deletes exactly that and `status` can show it. The full plan is
//! written before anything is created, so a run killed half-way can still be
//! torn down; `down` tolerates the parts that never came to be.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::error::{E2eError, Result};
use crate::family::Family;
use crate::netns::netns_path;
use crate::plan;

/// The parent of every run directory.
pub const RUNS_DIR: &str = "/run/weft-e2e";
const STATE_FILE: &str = "state.json";

/// A namespace attached to the lan: a node or the external client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// The netns name (also the name of its port on the lan bridge).
    pub netns: String,
    pub path: PathBuf,
    /// The address of `eth0`, on the lan.
    pub lan_addr: Ipv4Network,
    /// The node's pod CIDR; None for the external client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<Ipv4Network>,
}

/// A process a run started inside one of its namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub name: String,
    pub pid: i32,
    /// Field 22 of /proc/PID/stat, so a recycled pid is never killed.
    pub start_time: u64,
    pub netns: String,
}

/// Everything one run created (or was about to create).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    pub run: String,
    /// Set once `up` has finished; false while it runs or if it died half-way.
    pub complete: bool,
    /// The lan netns; its bridge has the same name.
    pub lan: String,
    pub nodes: Vec<Host>,
    pub ext: Host,
    #[serde(default)]
    pub processes: Vec<ProcessRecord>,
    /// Pods added with `add_pod`, recorded before their netns is created.
    #[serde(default)]
    pub pods: Vec<PodRecord>,
    /// The number of the last pod netns handed out (`<run>-p<k>`); never reused in a run.
    #[serde(default)]
    pub pod_seq: u32,
    /// The kube-proxy imitation writes the older layout without KUBE-FORWARD.
    #[serde(default)]
    pub kube_proxy_legacy: bool,
    /// The MTU pods are attached with (`Testbed::set_pod_mtu`: an overlay's);
    /// None: the plugin's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_mtu: Option<u32>,
    /// The address families of nodes, pods and probes (`up --family`); the
    /// lan keeps its IPv4 addresses in every family and gains their
    /// embeddings (`family::embed`) in ipv6 and dual.
    #[serde(default)]
    pub family: Family,
}

/// A pod: its netns (created by the testbed) and its attachment (made by the
/// real `weft` binary through CNI ADD, released by CNI DEL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// "namespace/name".
    pub name: String,
    pub node: u32,
    /// The netns name, `<run>-p<k>`.
    pub netns: String,
    pub path: PathBuf,
    /// CNI_CONTAINERID: `<run>-<namespace>-<name>`.
    pub container_id: String,
    /// The `weft` binary that made the attachment (and is used to release it).
    pub weft: PathBuf,
    /// The pod's address in the plan, once CNI ADD has returned it: its IPv4
    /// address, or in an ipv6 run the one its IPv6 address embeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Its IPv6 address (ipv6 and dual runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<std::net::Ipv6Addr>,
    /// The families it was attached in (the run's).
    #[serde(default)]
    pub family: Family,
    /// The host end of the pod's veth, in the node's netns, from the ADD result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_veth: Option<String>,
    /// The MTU it was attached with, if not the plugin's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// metadata.labels of its manifest.
    #[serde(default)]
    pub labels: weft_agent::model::Labels,
    /// The container ports it declares; its workload serves each port number over TCP and UDP.
    #[serde(default)]
    pub ports: Vec<weft_agent::model::ContainerPort>,
}

impl PodRecord {
    /// The addresses the pod holds, IPv4 first (none before its ADD).
    pub fn addresses(&self) -> Vec<std::net::IpAddr> {
        let v4 = self.ip.filter(|_| self.family.v4()).map(std::net::IpAddr::V4);
        v4.into_iter().chain(self.ip6.map(std::net::IpAddr::V6)).collect()
    }

    /// The distinct port numbers its workload serves.
    pub fn serve_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.ports.iter().map(|p| p.port).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

impl RunState {
    /// The plan of run `run` with `nodes` nodes (nothing created yet).
    pub fn plan(run: &str, nodes: u32) -> Result<RunState> {
        plan::check_run_name(run)?;
        plan::check_nodes(nodes)?;
        let host =
            |netns: String, lan_addr, pod_cidr| Host { path: netns_path(&netns), netns, lan_addr, pod_cidr };
        Ok(RunState {
            run: run.into(),
            complete: false,
            lan: plan::lan_name(run),
            nodes: (1..=nodes)
                .map(|n| host(plan::node_name(run, n), plan::node_addr(n), Some(plan::pod_cidr(n))))
                .collect(),
            ext: host(plan::ext_name(run), plan::ext_addr(), None),
            processes: Vec::new(),
            pods: Vec::new(),
            pod_seq: 0,
            kube_proxy_legacy: false,
            pod_mtu: None,
            family: Family::default(),
        })
    }

    /// Every netns of the run, lan first (the order `up` creates them in).
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.lan.clone()];
        v.extend(self.hosts().map(|h| h.netns.clone()));
        v
    }

    /// The nodes, then the external client.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.nodes.iter().chain(std::iter::once(&self.ext))
    }
}

/// The directory of run `run`.
pub fn run_dir(run: &str) -> PathBuf {
    Path::new(RUNS_DIR).join(run)
}

/// Claims the run name by creating its directory; `RunExists` if it is taken.
pub fn create_run_dir(run: &str) -> Result<PathBuf> {
    fs::create_dir_all(RUNS_DIR).map_err(E2eError::io(format!("create {RUNS_DIR}")))?;
    let dir = run_dir(run);
    match fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(E2eError::RunExists { run: run.into(), dir })
        }
        Err(e) => Err(E2eError::io(format!("create {}", dir.display()))(e)),
    }
}

/// Writes the state file atomically (temp file + rename); idempotent.
pub fn save(state: &RunState) -> Result<()> {
    let dir = run_dir(&state.run);
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let text =
        serde_json::to_vec_pretty(state).map_err(|source| E2eError::State { path: path.clone(), source })?;
    fs::write(&tmp, text).map_err(E2eError::io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(E2eError::io(format!("rename to {}", path.display())))
}

/// Reads the state of run `run`: `Ok(None)` if its directory has no state file,
/// `RunNotFound` if there is no directory at all.
pub fn load(run: &str) -> Result<Option<RunState>> {
    let dir = run_dir(run);
    if !dir.is_dir() {
        return Err(E2eError::RunNotFound { run: run.into(), dir });
    }
    let path = dir.join(STATE_FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(E2eError::io(format!("read {}", path.display()))(e)),
    };
    serde_json::from_slice(&text).map(Some).map_err(|source| E2eError::State { path, source })
}

/// Removes the run directory and everything in it; `Ok(false)` if it was gone.
pub fn remove_run_dir(run: &str) -> Result<bool> {
    let dir = run_dir(run);
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(E2eError::io(format!("remove {}", dir.display()))(e)),
    }
}

/// True while process `pid` (started at `start_time`) exists and is not a zombie
/// (a zombie has already left its namespaces).
pub fn process_alive(pid: i32, started: u64) -> bool {
    if start_time(pid) != Some(started) {
        return false;
    }
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z") | Some("X"))
}

/// The start time of process `pid` (field 22 of /proc/PID/stat), if it exists.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields resume after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_and_json_round_trip() {
        let s = RunState::plan("wt00aa", 2).unwrap();
        assert_eq!(s.namespaces(), ["wt00aa-lan", "wt00aa-n1", "wt00aa-n2", "wt00aa-ext"]);
        assert_eq!(s.nodes[1].lan_addr.to_string(), "172.31.0.12/24");
        assert_eq!(s.nodes[1].pod_cidr.unwrap().to_string(), "10.244.2.0/24");
        assert_eq!(s.ext.path, Path::new("/run/netns/wt00aa-ext"));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<RunState>(&json).unwrap(), s);
        assert!(RunState::plan("bad-name", 2).is_err());
    }

    #[test]
    fn own_start_time() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert_eq!(start_time(me), start_time(me));
        assert_eq!(start_time(i32::MAX), None);
    }
}
