//! The agent loop: poll the source, and on each new snapshot (or every
//! `resync` for drift) reconcile weft's routes, read the node's forwarding
//! sysctls, and write the status file atomically. Runs in the calling
//! thread's netns (the node's); sleeps between polls on the stop channel, so
//! SIGTERM ends it at once and nothing spins.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rtnetlink::Handle;
use serde::{Deserialize, Serialize};
use weft_plugin::sysctl::read_sysctl;

use crate::model::Snapshot;
use crate::route_table::{apply, delete_all, list_weft_routes};
use crate::routes::{desired_routes, plan};
use crate::source::{DirSource, Source};

const IP_FORWARD: &str = "net/ipv4/ip_forward";
const BRIDGE_NF_CALL_IPTABLES: &str = "net/bridge/bridge-nf-call-iptables";

/// What the agent was told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    /// The manifests directory (`--source dir:PATH`).
    pub dir: PathBuf,
    pub status_file: PathBuf,
    pub cleanup_on_exit: bool,
    /// How often the source is polled.
    pub poll: Duration,
    /// How often the kernel is reconciled even when nothing changed.
    pub resync: Duration,
}

/// The status file: what the agent last applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    /// The generation of the snapshot the routes were reconciled against.
    pub generation: String,
    /// weft's routes in the kernel after the reconcile.
    pub routes: usize,
    pub ip_forward: bool,
    /// None when br_netfilter is not loaded (the sysctl does not exist).
    pub bridge_nf_call_iptables: Option<bool>,
    /// Skipped manifests ("file: reason") and failed route changes.
    pub errors: Vec<String>,
}

/// Errors that stop the agent (everything else goes into the status).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("netlink: {0}")]
    Netlink(#[from] weft_plugin::kernel_error::KernelError),
    #[error("write status file {path}: {source}")]
    Status { path: PathBuf, source: std::io::Error },
}

/// Runs the agent until `stop` yields (a signal); then, with `cleanup_on_exit`,
/// deletes weft's routes. Prints one line on stdout once the first status is written.
pub fn run(cfg: &Config, stop: &Receiver<()>) -> Result<(), AgentError> {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(AgentError::Runtime)?;
    let h = rt.block_on(async { weft_plugin::netns::connect_current() })?;
    let mut source = DirSource::new(&cfg.dir);
    let mut snap: Option<Snapshot> = None;
    let mut last_status: Option<Status> = None;
    let mut next_sync = Instant::now();
    loop {
        if let Some(s) = source.poll() {
            for e in &s.errors {
                log(&format!("skipping manifest {e}"));
            }
            snap = Some(s);
            next_sync = Instant::now();
        }
        if let (Some(s), true) = (&snap, Instant::now() >= next_sync) {
            let status = rt.block_on(sync(&h, &cfg.node, s));
            report_changes(last_status.as_ref(), &status);
            write_status(&cfg.status_file, &status)?;
            if last_status.is_none() {
                println!("ready generation {}", status.generation);
                let _ = std::io::stdout().flush();
            }
            last_status = Some(status);
            next_sync = Instant::now() + cfg.resync;
        }
        match stop.recv_timeout(cfg.poll) {
            Ok(()) => break,
            Err(RecvTimeoutError::Timeout) => {}
            // No signal thread: keep the pace, never spin.
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(cfg.poll),
        }
    }
    if cfg.cleanup_on_exit {
        for e in rt.block_on(delete_all(&h)) {
            log(&format!("cleanup: {e}"));
        }
        log("cleanup: weft's routes deleted");
    }
    Ok(())
}

/// Reconciles the routes against `snap` and reads the sysctls; errors go into the status.
async fn sync(h: &Handle, node: &str, snap: &Snapshot) -> Status {
    let mut errors: Vec<String> = snap.errors.iter().map(|e| e.to_string()).collect();
    let (desired, notes) = desired_routes(&snap.model, node);
    for n in notes {
        log(&n);
    }
    match list_weft_routes(h).await {
        Ok(current) => {
            for change in plan(&desired, &current) {
                match apply(h, change).await {
                    Ok(()) => log(&format!("{change:?}")),
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    let routes = match list_weft_routes(h).await {
        Ok(r) => r.len(),
        Err(e) => {
            errors.push(e.to_string());
            0
        }
    };
    Status {
        node: node.into(),
        generation: snap.generation.clone(),
        routes,
        ip_forward: read_sysctl(IP_FORWARD).is_ok_and(|v| v == "1"),
        bridge_nf_call_iptables: read_sysctl(BRIDGE_NF_CALL_IPTABLES).ok().map(|v| v == "1"),
        errors,
    }
}

/// Logs the sysctls that are off (when they turn off, or at the first sync) and new errors.
fn report_changes(last: Option<&Status>, now: &Status) {
    let was_fwd = last.map(|s| s.ip_forward);
    if !now.ip_forward && was_fwd != Some(false) {
        log("net.ipv4.ip_forward is off on this node: pods on other nodes are unreachable");
    }
    let was_br = last.and_then(|s| s.bridge_nf_call_iptables);
    if now.bridge_nf_call_iptables == Some(false) && was_br != Some(false) {
        log("net.bridge.bridge-nf-call-iptables is off on this node: same-node service traffic bypasses conntrack");
    }
    for e in &now.errors {
        if !last.is_some_and(|s| s.errors.contains(e)) {
            log(e);
        }
    }
}

/// Writes `status` to `path` atomically (a temp file in the same dir, then rename); idempotent.
pub fn write_status(path: &Path, status: &Status) -> Result<(), AgentError> {
    let err = |source| AgentError::Status { path: path.into(), source };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let text = serde_json::to_vec_pretty(status).expect("the status serialises");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Reads a status file; None if it does not exist or is not (yet) a status.
pub fn read_status(path: &Path) -> Option<Status> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn log(msg: &str) {
    eprintln!("weft-agent: {msg}");
}
