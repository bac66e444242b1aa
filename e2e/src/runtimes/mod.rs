//! Real container runtimes driving `weft`, as on a real node: a private
//! containerd (CRI, `containerd.rs`) and podman with its CNI backend
//! (`podman.rs`), each run inside a testbed node's netns with its own root,
//! state and config, the conflist weft's agent writes (`cni_setup`), and a
//! locally built image (`image.rs`).
//!
//! What they share lives here: the CNI dirs, the read-back of weft's IPAM
//! store and the node's bridge ports, a stand-in for the node agent that
//! records what the plugin told it (`witness.rs`), and the clean-up of the
//! mounts and processes a runtime leaves behind.

pub mod containerd;
pub mod image;
pub mod podman;
pub mod witness;

use std::ffi::OsStr;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::error::E2eError;
use crate::pods::{ipam_dir, BRIDGE, CLUSTER_CIDR, POD_IFNAME};
use crate::{exec_command, exec_in, plan};

/// Where Debian's containernetworking-plugins puts the reference plugins.
pub const REFERENCE_CNI_DIR: &str = "/usr/lib/cni";
/// The network name in weft's conflist (and so its IPAM store's directory).
pub const NETWORK: &str = "weft";
/// Bound on one runtime CLI call (`ctr`, `podman`).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the runtime tests. `Unavailable` means the runtime cannot run
/// on this machine: the tests skip on it, naming the reason.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{runtime} cannot run here: {reason}")]
    Unavailable { runtime: &'static str, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Testbed(#[from] E2eError),
    #[error("{what}: {status}")]
    Cri {
        what: String,
        /// Boxed: a Status carries metadata and would bloat every Result.
        status: Box<tonic::Status>,
    },
    #[error("{what} failed ({status}): {stderr}")]
    Command { what: String, status: std::process::ExitStatus, stderr: String },
    #[error("{what} not within {ms} ms")]
    Timeout { what: String, ms: u128 },
    #[error("{what}: unexpected answer {answer}")]
    Answer { what: String, answer: String },
}

impl RuntimeError {
    /// Wraps an io::Error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let what = what.into();
        move |source| RuntimeError::Io { what, source }
    }

    /// The reason to skip, if this error says the runtime cannot run here.
    pub fn skip_reason(&self) -> Option<String> {
        match self {
            RuntimeError::Unavailable { .. } => Some(self.to_string()),
            _ => None,
        }
    }
}

/// Results of this module.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// The first of `names` that is not an executable file on PATH (or as an
/// absolute path), as an `Unavailable` error for `runtime`.
pub fn require_programs(runtime: &'static str, names: &[&str]) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        let found = if name.starts_with('/') {
            Path::new(name).is_file()
        } else {
            std::env::split_paths(&path).any(|d| d.join(name).is_file())
        };
        if !found {
            return Err(RuntimeError::Unavailable {
                runtime,
                reason: format!("{name} is not installed (`make deps` installs it)"),
            });
        }
    }
    Ok(())
}

/// Runs `c` (bounded by `CLI_TIMEOUT`), failing with its stderr unless it exits 0.
pub fn run_checked(c: Command, what: &str) -> Result<Output> {
    let out = exec_command(c, what, None, CLI_TIMEOUT)?;
    if out.status.success() {
        return Ok(out);
    }
    Err(RuntimeError::Command {
        what: what.to_string(),
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// The CNI dirs a runtime on node `node` of run `run` is pointed at.
#[derive(Debug, Clone)]
pub struct CniDirs {
    /// Our built `weft` and `weft-ipam`, and the reference `loopback` and `portmap`.
    pub bin: PathBuf,
    /// Holds only weft's conflist.
    pub conf: PathBuf,
    /// The conflist's weft entry (for calls a runtime does not make, like GC).
    pub weft_conf: Value,
}

/// Fills `dir/bin` with links to `weft` and `weft-ipam` (next to `weft_bin`)
/// and the reference `loopback` and `portmap`, and writes into `dir/net.d`
/// the conflist weft's agent writes for node `node` (portmap chained),
/// with the run's IPAM dir and `agent_socket`. Not idempotent.
pub fn cni_setup(dir: &Path, run: &str, node: u32, weft_bin: &Path, agent_socket: &Path) -> Result<CniDirs> {
    let bin = dir.join("bin");
    let conf = dir.join("net.d");
    for d in [&bin, &conf] {
        std::fs::create_dir_all(d).map_err(RuntimeError::io(format!("create {}", d.display())))?;
    }
    let ours = weft_bin.parent().unwrap_or(Path::new("/"));
    let links = [
        (ours.join("weft"), "weft"),
        (ours.join("weft-ipam"), "weft-ipam"),
        (Path::new(REFERENCE_CNI_DIR).join("loopback"), "loopback"),
        (Path::new(REFERENCE_CNI_DIR).join("portmap"), "portmap"),
    ];
    for (target, name) in links {
        if !target.is_file() {
            return Err(RuntimeError::Unavailable {
                runtime: "CNI",
                reason: format!(
                    "{} is missing (build the workspace; `make deps` installs the reference plugins)",
                    target.display()
                ),
            });
        }
        let link = bin.join(name);
        std::os::unix::fs::symlink(&target, &link)
            .map_err(RuntimeError::io(format!("link {}", link.display())))?;
    }
    let list = node_conflist(run, node, agent_socket);
    let file = conf.join(weft_agent::cni_config::CONFLIST);
    std::fs::write(&file, list.to_string()).map_err(RuntimeError::io(format!("write {}", file.display())))?;
    let weft_conf = weft_conf_of(&list);
    Ok(CniDirs { bin, conf, weft_conf })
}

/// The conflist weft's agent writes for node `node` (`cni_config::conflist`,
/// portmap chained), with the IPAM data dir moved into the run's dir.
pub fn node_conflist(run: &str, node: u32, agent_socket: &Path) -> Value {
    // CLUSTER_CIDR is a constant that parses.
    let cluster: Vec<_> = CLUSTER_CIDR.parse().ok().into_iter().collect();
    let mut list = weft_agent::cni_config::conflist(
        &[plan::pod_cidr(node).into()],
        &cluster,
        agent_socket,
        true,
        "iptables",
        None,
    );
    list["plugins"][0]["ipam"]["dataDir"] = ipam_dir(run, node).display().to_string().into();
    list
}

/// The weft entry of conflist `list` as a runtime hands it to the plugin
/// (the list's name and cniVersion added).
fn weft_conf_of(list: &Value) -> Value {
    let mut c = list["plugins"][0].clone();
    c["name"] = list["name"].clone();
    c["cniVersion"] = list["cniVersion"].clone();
    c
}

/// CNI GC of weft (spec 1.1.0), run in the netns at `node_ns` as a runtime
/// that speaks 1.1 runs it: every attachment but `valid` (container IDs, on
/// eth0) loses its address and its bridge port. containerd 1.6 and podman
/// 4.3 never send GC; the tests send it on the runtime's behalf, with the
/// sandboxes the runtime still knows.
pub fn gc(node_ns: &Path, cni: &CniDirs, valid: &[String]) -> Result<()> {
    let weft = cni.bin.join("weft").display().to_string();
    let mut conf = cni.weft_conf.clone();
    conf["cniVersion"] = "1.1.0".into();
    conf["cni.dev/valid-attachments"] =
        valid.iter().map(|id| serde_json::json!({"containerID": id, "ifname": POD_IFNAME})).collect();
    let mut c = crate::command_in(node_ns, &[&weft])?;
    c.env("CNI_COMMAND", "GC").env("CNI_PATH", &cni.bin);
    let stdin = conf.to_string();
    let out = exec_command(c, "weft GC", Some(stdin.as_bytes()), CLI_TIMEOUT)?;
    if out.status.success() {
        return Ok(());
    }
    Err(RuntimeError::Command {
        what: "weft GC".into(),
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    })
}

/// The addresses weft's IPAM store on node `node` holds for `container_id` (on eth0).
pub fn held(run: &str, node: u32, container_id: &str) -> Result<Vec<IpAddr>> {
    let store = weft_ipam::Store::open(&ipam_dir(run, node), NETWORK).map_err(ipam_error)?;
    weft_ipam::held(&store, container_id, POD_IFNAME).map_err(ipam_error)
}

fn ipam_error(e: weft_ipam::IpamError) -> RuntimeError {
    RuntimeError::Io { what: "read weft's IPAM store".into(), source: std::io::Error::other(e.to_string()) }
}

/// Every address allocated in node `node`'s store (its IP files), sorted.
pub fn allocated(run: &str, node: u32) -> Result<Vec<IpAddr>> {
    let dir = ipam_dir(run, node).join(NETWORK);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        // No ADD has run yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(RuntimeError::io(format!("read {}", dir.display()))(e)),
    };
    let mut ips: Vec<IpAddr> = rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    ips.sort();
    Ok(ips)
}

/// The names of the ports of weft's bridge in the netns at `node_ns` (empty
/// if there is no bridge yet).
pub fn bridge_ports(node_ns: &Path) -> Result<Vec<String>> {
    let out = exec_in(node_ns, &["ip", "-o", "link", "show", "master", BRIDGE], CLI_TIMEOUT)?;
    if !out.status.success() {
        return Ok(Vec::new());
    }
    Ok(parse_link_names(&String::from_utf8_lossy(&out.stdout)))
}

/// The link names of `ip -o link` output ("3: vethabc@if2: <...> ...").
pub fn parse_link_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// The host end weft gives a sandbox's eth0.
pub fn host_veth(container_id: &str) -> String {
    weft_plugin::names::host_veth(container_id, POD_IFNAME)
}

/// Clears what a runtime under `dir` left after its own clean-up: mounts
/// under `dir` and its cgroup parent. Returns what it found (nothing, when
/// the runtime cleaned up after itself).
pub fn clear_leftovers(dir: &Path, runtime: &str) -> Vec<String> {
    let mut found = Vec::new();
    let unmounted = unmount_under(dir);
    if !unmounted.is_empty() {
        found.push(format!("unmounted what {runtime} left: {unmounted:?}"));
    }
    let stuck = remove_cgroup(&cgroup_parent(dir));
    if !stuck.is_empty() {
        found.push(format!("cgroups {runtime} left that cannot be removed: {stuck:?}"));
    }
    found
}

/// Unmounts (lazily, deepest first) every mount point under `dir`; returns
/// what it unmounted. For what a killed runtime leaves: sandbox netns and
/// shm mounts, container rootfs overlays.
pub fn unmount_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    let mut points = mount_points_under(&info, dir);
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.retain(|p| nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH).is_ok());
    points
}

/// The mount points in `mountinfo` (the text of /proc/self/mountinfo) at or under `dir`.
pub fn mount_points_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// The cgroup parent a runtime under `dir` (`<run dir>/<runtime>`) puts its
/// containers in, `/weft-e2e-<run>-<runtime>`: its own, so removing it at
/// the end cannot race with another test's runtime.
pub fn cgroup_parent(dir: &Path) -> String {
    let name = |p: Option<&Path>| p.and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned());
    let run = name(dir.parent()).unwrap_or_default();
    format!("/weft-e2e-{run}-{}", name(Some(dir)).unwrap_or_default())
}

/// Removes the (empty by now) cgroup `parent` and everything under it from
/// every mounted hierarchy, deepest first; returns the dirs it could not remove.
pub fn remove_cgroup(parent: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    // cgroup v1 (a dir per hierarchy), or v2 (the root is the hierarchy).
    let mut hierarchies: Vec<PathBuf> =
        std::fs::read_dir(root).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    hierarchies.push(root.to_path_buf());
    let mut failed = Vec::new();
    for h in hierarchies {
        let top = h.join(parent.trim_start_matches('/'));
        if top.is_dir() {
            remove_cgroup_dir(&top, &mut failed);
        }
    }
    failed
}

fn remove_cgroup_dir(dir: &Path, failed: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_dir(&e.path(), failed);
            }
        }
    }
    // A cgroup dir is removed with rmdir even though it lists files.
    if std::fs::remove_dir(dir).is_err() {
        failed.push(dir.to_path_buf());
    }
}

/// Pids of the processes whose command line holds `arg` as one argument
/// (a runtime's shims and monitors name our private socket or root dir).
pub fn pids_with_arg(arg: &OsStr) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg.as_encoded_bytes()))
        })
        .collect()
}

/// SIGKILLs each of `pids` (ours: found by our private paths).
pub fn kill_pids(pids: &[i32]) {
    for pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_from_ip_o() {
        let text = "7: veth0123456789a@if2: <BROADCAST,MULTICAST,UP> mtu 1500 master weft0\n\
                    9: vethfedcba98765@if2: <BROADCAST> mtu 1500 master weft0\n";
        assert_eq!(parse_link_names(text), ["veth0123456789a", "vethfedcba98765"]);
        assert!(parse_link_names("").is_empty());
    }

    #[test]
    fn mounts_under_a_dir() {
        let info = "36 25 0:32 / /run/weft-e2e/wt01/ctd/state/netns/cni-1 rw shared:5 - nsfs nsfs rw\n\
                    37 25 0:33 / /run/weft-e2e/wt012/x rw - tmpfs tmpfs rw\n\
                    38 25 0:34 / /proc rw - proc proc rw\n";
        let got = mount_points_under(info, Path::new("/run/weft-e2e/wt01"));
        assert_eq!(got, [PathBuf::from("/run/weft-e2e/wt01/ctd/state/netns/cni-1")]);
    }

    #[test]
    fn a_missing_program_is_a_reason_to_skip() {
        let e = require_programs("podman", &["/nonexistent/podman"]).unwrap_err();
        assert_eq!(
            e.skip_reason().as_deref(),
            Some("podman cannot run here: /nonexistent/podman is not installed (`make deps` installs it)")
        );
        assert!(require_programs("sh", &["sh"]).is_ok());
    }

    #[test]
    fn a_cgroup_parent_per_run_and_runtime() {
        assert_eq!(cgroup_parent(Path::new("/run/weft-e2e/wt01ab/podman")), "/weft-e2e-wt01ab-podman");
    }

    #[test]
    fn the_runtime_sees_the_agents_conflist_with_the_runs_store() {
        let list = node_conflist("wt00aa", 2, Path::new("/run/x/agent.sock"));
        // libcni 1.1 (containerd 1.6, podman 4.3) rejects a 1.1.0 result.
        assert_eq!(list["cniVersion"], "1.0.0");
        assert_eq!(list["plugins"][1]["type"], "portmap");
        let weft = weft_conf_of(&list);
        assert_eq!((weft["name"].as_str(), weft["type"].as_str()), (Some(NETWORK), Some("weft")));
        assert_eq!(weft["ipam"]["dataDir"], "/run/weft-e2e/wt00aa/ipam-n2");
        assert_eq!(weft["ipam"]["ranges"][0][0]["subnet"], "10.244.2.0/24");
    }
}
