//! A private containerd inside a testbed node's netns, driven over CRI as a
//! kubelet drives it.
//!
//! Everything it owns is under `<run dir>/containerd/`: root, state (where
//! its sandbox netns mounts go, `netns_mounts_under_state_dir`), the gRPC
//! socket, the config, the log. Its CNI dirs are the ones `cni_setup` made
//! (our binaries, the reference loopback and portmap, weft's conflist); its
//! sandbox image is the locally built one (`image.rs`), imported with `ctr`,
//! so nothing is pulled. `restrict_oom_score_adj` is on: the VMs lack
//! CAP_SYS_RESOURCE, and without it runc fails to lower a sandbox's score.
//!
//! Drop stops and removes every sandbox through CRI, stops containerd, and
//! then, for whatever a crash left, kills the shims and sandbox processes
//! found by our private paths and unmounts everything under the dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata, PodSandboxState,
    PodSandboxStatusRequest, PortMapping, Protocol, RemovePodSandboxRequest, RunPodSandboxRequest,
    StatusRequest, StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

use super::image::{self, BUSYBOX};
use super::{
    cgroup_parent, clear_leftovers, pids_with_arg, require_programs, run_checked, CniDirs, Result,
    RuntimeError,
};
use crate::command_in;

const RUNTIME: &str = "containerd";
/// The CRI's containerd namespace.
const K8S_NAMESPACE: &str = "k8s.io";
/// Overlay works on this VM's ext4 /run (and is containerd's default).
const SNAPSHOTTER: &str = "overlayfs";
/// Bound on containerd answering CRI with runtime and network ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one CRI call (RunPodSandbox includes the CNI ADD).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on containerd exiting after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// A pod sandbox as a kubelet asks for it.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub namespace: String,
    pub name: String,
    /// A hostPort forwarded to the pod's TCP port 80 (the `portMappings` capability).
    pub host_port: Option<u16>,
}

/// What PodSandboxStatus reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxStatus {
    pub ready: bool,
    /// `status.network.ip`: the address the runtime got from CNI.
    pub ip: String,
    /// The sandbox (pause) process, from the verbose info; 0 when not running.
    pub pid: i32,
}

/// The private containerd; see the module doc.
pub struct Containerd {
    dir: PathBuf,
    node_ns: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    client: Option<RuntimeServiceClient<Channel>>,
}

impl Containerd {
    /// Starts containerd in the netns at `node_ns` with everything under
    /// `dir` (created), pointed at `cni`, and imports the image. `Unavailable`
    /// when a program it needs is missing or it cannot become ready here.
    pub fn start(dir: &Path, node_ns: &Path, cni: &CniDirs) -> Result<Containerd> {
        require_programs(RUNTIME, &["containerd", "ctr", "runc", "containerd-shim-runc-v2", BUSYBOX])?;
        if !Path::new("/sys/fs/cgroup/memory").is_dir()
            && !Path::new("/sys/fs/cgroup/cgroup.controllers").is_file()
        {
            return Err(RuntimeError::Unavailable {
                runtime: RUNTIME,
                reason: "no cgroup filesystem".into(),
            });
        }
        std::fs::create_dir_all(dir).map_err(RuntimeError::io(format!("create {}", dir.display())))?;
        let config = dir.join("config.toml");
        let socket = dir.join("containerd.sock");
        std::fs::write(&config, config_toml(dir, &socket, cni))
            .map_err(RuntimeError::io(format!("write {}", config.display())))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(RuntimeError::io("start the CRI client runtime"))?;
        let mut c = Containerd {
            dir: dir.to_path_buf(),
            node_ns: node_ns.to_path_buf(),
            config,
            socket,
            log: dir.join("containerd.log"),
            child: None,
            rt,
            client: None,
        };
        c.launch().map_err(|e| match e {
            RuntimeError::Timeout { .. } => RuntimeError::Unavailable {
                runtime: RUNTIME,
                reason: format!("not ready within {} s (see {})", READY_TIMEOUT.as_secs(), c.log.display()),
            },
            e => e,
        })?;
        let archive = image::write_archive(Path::new(BUSYBOX), dir)?;
        c.import(&archive)?;
        Ok(c)
    }

    /// The containerd process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Spawns containerd and waits until CRI reports runtime and network ready.
    fn launch(&mut self) -> Result<()> {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(RuntimeError::io(format!("open {}", self.log.display())))?;
        let config = self.config.display().to_string();
        let mut cmd = command_in(&self.node_ns, &["containerd", "--config", &config])?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().map_err(RuntimeError::io("start containerd"))?);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(RuntimeError::Unavailable {
                    runtime: RUNTIME,
                    reason: format!("containerd exited at start ({status}); see {}", self.log.display()),
                });
            }
            if self.socket.exists() && self.ready().unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::Timeout {
                    what: "containerd CRI ready".into(),
                    ms: READY_TIMEOUT.as_millis(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Connects (again) and asks CRI Status whether runtime and network are ready.
    fn ready(&mut self) -> Result<bool> {
        let socket = self.socket.clone();
        let client = self.rt.block_on(connect(socket))?;
        self.client = Some(client);
        let st =
            self.call("Status", |mut c| async move { c.status(StatusRequest { verbose: false }).await })?;
        let conds = st.status.map(|s| s.conditions).unwrap_or_default();
        let ok = |t: &str| conds.iter().any(|c| c.r#type == t && c.status);
        Ok(ok("RuntimeReady") && ok("NetworkReady"))
    }

    /// Runs one CRI call on a clone of the client, bounded by `CALL_TIMEOUT`.
    fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client.clone().ok_or_else(|| RuntimeError::Cri {
            what: what.into(),
            status: Box::new(tonic::Status::unavailable("containerd is not running")),
        })?;
        // The timer is made inside the runtime, which it needs.
        match self.rt.block_on(async move { tokio::time::timeout(CALL_TIMEOUT, f(client)).await }) {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(RuntimeError::Cri { what: what.into(), status: Box::new(status) }),
            Err(_) => {
                Err(RuntimeError::Timeout { what: format!("CRI {what}"), ms: CALL_TIMEOUT.as_millis() })
            }
        }
    }

    /// `ctr images import` of the archive into the CRI's namespace.
    fn import(&self, archive: &Path) -> Result<()> {
        let socket = self.socket.display().to_string();
        let archive = archive.display().to_string();
        let argv = [
            "ctr",
            "-a",
            &socket,
            "-n",
            K8S_NAMESPACE,
            "images",
            "import",
            "--snapshotter",
            SNAPSHOTTER,
            &archive,
        ];
        run_checked(command_in(&self.node_ns, &argv)?, "ctr images import").map(drop)
    }

    /// RunPodSandbox as a kubelet sends it; returns the sandbox ID.
    pub fn run_sandbox(&self, spec: &SandboxSpec) -> Result<String> {
        let config = sandbox_config(spec, &self.dir);
        let what = format!("RunPodSandbox {}/{}", spec.namespace, spec.name);
        let r = self.call(&what, |mut c| async move {
            c.run_pod_sandbox(RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() })
                .await
        })?;
        Ok(r.pod_sandbox_id)
    }

    /// PodSandboxStatus (verbose, for the sandbox process's pid).
    pub fn sandbox_status(&self, id: &str) -> Result<SandboxStatus> {
        let pod_sandbox_id = id.to_string();
        let what = format!("PodSandboxStatus {id}");
        let r = self.call(&what, |mut c| async move {
            c.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id, verbose: true }).await
        })?;
        let status = r
            .status
            .ok_or_else(|| RuntimeError::Answer { what: what.clone(), answer: "no status".into() })?;
        let pid = r.info.get("info").map(|i| info_pid(i)).unwrap_or(0);
        Ok(SandboxStatus {
            ready: status.state == PodSandboxState::SandboxReady as i32,
            ip: status.network.map(|n| n.ip).unwrap_or_default(),
            pid,
        })
    }

    /// StopPodSandbox (CNI DEL with the netns, then the netns goes).
    pub fn stop_sandbox(&self, id: &str) -> Result<()> {
        let pod_sandbox_id = id.to_string();
        self.call(&format!("StopPodSandbox {id}"), |mut c| async move {
            c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id }).await
        })
        .map(drop)
    }

    /// RemovePodSandbox (containerd's CRI sends a second DEL, with no netns).
    pub fn remove_sandbox(&self, id: &str) -> Result<()> {
        let pod_sandbox_id = id.to_string();
        self.call(&format!("RemovePodSandbox {id}"), |mut c| async move {
            c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id }).await
        })
        .map(drop)
    }

    /// The IDs of the sandboxes containerd knows.
    pub fn sandboxes(&self) -> Result<Vec<String>> {
        let r = self.call("ListPodSandbox", |mut c| async move {
            c.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await
        })?;
        Ok(r.items.into_iter().map(|s| s.id).collect())
    }

    /// SIGKILLs containerd, as a crash would: its shims and sandboxes live on.
    pub fn kill(&mut self) -> Result<()> {
        self.client = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait().map_err(RuntimeError::io("wait for the killed containerd"))?;
        }
        Ok(())
    }

    /// Starts containerd again on the same root, state and config.
    pub fn restart(&mut self) -> Result<()> {
        self.launch()
    }

    /// Stops and removes every sandbox, stops containerd (SIGTERM, then
    /// SIGKILL), kills what a crash may have left (shims naming our socket,
    /// sandbox processes), unmounts everything under the dir. Idempotent;
    /// returns what went wrong on the way, carrying on past each.
    pub fn shutdown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.child.is_some() {
            match self.sandboxes() {
                Ok(ids) => {
                    for id in ids {
                        if let Err(e) = self.stop_sandbox(&id).and_then(|()| self.remove_sandbox(&id)) {
                            errors.push(e.to_string());
                        }
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        self.client = None;
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Sandbox processes first (their shim would restart nothing, but
        // killing it first orphans them), then the shims.
        let left = self.sandbox_pids();
        let shims = pids_with_arg(self.socket.as_os_str());
        if !left.is_empty() || !shims.is_empty() {
            errors.push(format!("killed left-over sandbox processes {left:?} and shims {shims:?}"));
        }
        super::kill_pids(&left);
        super::kill_pids(&shims);
        errors.extend(clear_leftovers(&self.dir, RUNTIME));
        errors
    }

    /// The pids in the runc task dirs' `init.pid` files (sandbox processes).
    fn sandbox_pids(&self) -> Vec<i32> {
        let tasks = self.dir.join("state/io.containerd.runtime.v2.task").join(K8S_NAMESPACE);
        let Ok(rd) = std::fs::read_dir(tasks) else { return Vec::new() };
        rd.flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("init.pid")).ok()?.trim().parse().ok())
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for e in self.shutdown() {
            eprintln!("weft-e2e: containerd teardown: {e}");
        }
    }
}

/// A tonic channel over containerd's unix socket.
async fn connect(socket: PathBuf) -> Result<RuntimeServiceClient<Channel>> {
    let what = format!("connect to {}", socket.display());
    // A constant URI that parses; the connector ignores it.
    let endpoint = Endpoint::try_from("http://[::]:0")
        .map_err(|e| RuntimeError::Answer { what: what.clone(), answer: e.to_string() })?;
    let channel =
        endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?))
                }
            }))
            .await
            .map_err(|e| RuntimeError::Io { what, source: std::io::Error::other(e) })?;
    Ok(RuntimeServiceClient::new(channel))
}

/// The sandbox config a kubelet sends for `spec`.
fn sandbox_config(spec: &SandboxSpec, dir: &Path) -> PodSandboxConfig {
    let uid = format!("uid-{}-{}", spec.namespace, spec.name);
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: spec.name.clone(),
            uid,
            namespace: spec.namespace.clone(),
            attempt: 0,
        }),
        hostname: spec.name.clone(),
        log_directory: dir.join("pods").join(&spec.name).display().to_string(),
        port_mappings: spec
            .host_port
            .map(|host_port| PortMapping {
                protocol: Protocol::Tcp as i32,
                container_port: 80,
                host_port: i32::from(host_port),
                host_ip: String::new(),
            })
            .into_iter()
            .collect(),
        // A kubelet with the cgroupfs driver names the pod's cgroup; ours is the run's.
        linux: Some(LinuxPodSandboxConfig { cgroup_parent: cgroup_parent(dir), ..Default::default() }),
        ..Default::default()
    }
}

/// The `pid` of PodSandboxStatus's verbose `info` JSON (0 if absent).
pub fn info_pid(info: &str) -> i32 {
    serde_json::from_str::<serde_json::Value>(info)
        .ok()
        .and_then(|v| v["pid"].as_i64())
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or(0)
}

/// containerd's config: everything private, CRI pointed at our CNI dirs and image.
fn config_toml(dir: &Path, socket: &Path, cni: &CniDirs) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
# Plugins that would touch paths outside our dir, or cannot work here.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{SNAPSHOTTER}"
"#,
        socket = socket.display(),
        image = image::IMAGE,
        bin = cni.bin.display(),
        conf = cni.conf.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_of_a_verbose_status() {
        assert_eq!(info_pid(r#"{"pid":4242,"processStatus":"running"}"#), 4242);
        assert_eq!(info_pid("{}"), 0);
        assert_eq!(info_pid("not json"), 0);
    }

    #[test]
    fn a_kubelet_sandbox_config() {
        let spec = SandboxSpec { namespace: "web".into(), name: "a".into(), host_port: Some(8080) };
        let c = sandbox_config(&spec, Path::new("/d"));
        let m = c.metadata.unwrap();
        assert_eq!((m.namespace.as_str(), m.name.as_str()), ("web", "a"));
        assert_eq!(c.port_mappings[0].host_port, 8080);
        assert_eq!(c.port_mappings[0].container_port, 80);
    }
}
