//! Pods in the testbed, attached by the real `weft` binary as a kubelet (via
//! containerd) would: a pod netns `<run>-p<k>`, then `weft` exec'd inside the
//! node's netns with the CNI env and the network config on stdin (see
//! plugin/tests/harness/mod.rs), then the workload (`weft-e2e serve`) inside the
//! pod. The pod is recorded in the run state before its netns exists, so `down`
//! always finds it; `down` releases it with CNI DEL (best effort) and deletes
//! its netns. Each node has its own IPAM data dir inside the run dir.
//!
//! No routes between nodes are added here: cross-node pod traffic is the
//! agent's (host-gw) job.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use serde_json::{json, Value};
use weft_netkit::netns::connect_in;

use crate::error::{E2eError, Result};
use crate::family::{embed_net, unembed, Family};
use crate::netns::{create_netns, delete_netns, netns_exists, netns_path};
use weft_agent::model::manifest::NAMESPACE_NAME_LABEL;
use weft_agent::model::{ContainerPort, Labels};

use crate::run::{self, PodRecord};
use crate::{command_in, exec_command, manifests, plan, topology, Testbed};

/// The pod's interface (CNI_IFNAME).
pub const POD_IFNAME: &str = "eth0";
/// The weft bridge in each node.
pub const BRIDGE: &str = "weft0";
/// The cluster's pod network (all nodes' pod CIDRs).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The ports a pod's workload serves by default (TCP and UDP).
pub const DEFAULT_PORTS: [u16; 2] = [80, 81];
/// Env var naming the `weft` binary (else: next to the current executable).
pub const WEFT_BIN_ENV: &str = "WEFT_BIN";
/// Env var naming the `weft-e2e` binary (else: the current executable or next to it).
pub const E2E_BIN_ENV: &str = "WEFT_E2E_BIN";
/// Bound on one plugin invocation (the first ADD on a node sets the node up).
const CNI_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the workload printing its readiness line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a killed workload disappearing.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_POLL: Duration = Duration::from_millis(5);
/// Longest namespace or pod name part (a DNS label).
const MAX_PART: usize = 63;

/// A pod that `add_pod` attached and started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// "namespace/name".
    pub name: String,
    pub node: u32,
    /// The pod's netns path.
    pub netns: PathBuf,
    /// Its address in the plan: its IPv4 address, or in an ipv6 run the one
    /// its IPv6 address embeds (`family::embed(ip) == ip6`).
    pub ip: Ipv4Addr,
    /// Its IPv6 address (ipv6 and dual runs).
    pub ip6: Option<Ipv6Addr>,
    /// The host end of its veth, in the node's netns.
    pub host_veth: Option<String>,
    /// The workload's pid.
    pub pid: u32,
    /// How long its CNI ADD took, the plugin's start to exit (with an agent
    /// on the node, this includes waiting for the pod's policy to be in force).
    pub add: Duration,
}

/// Splits "ns/pod" and checks both parts are DNS labels (1-63 of [a-z0-9-],
/// not starting or ending with '-').
pub fn split_pod_name(name: &str) -> Result<(&str, &str)> {
    let bad = |why| E2eError::InvalidPodName { name: name.into(), why };
    let (ns, pod) = name.split_once('/').ok_or_else(|| bad("must be NAMESPACE/NAME"))?;
    for part in [ns, pod] {
        if part.is_empty() || part.len() > MAX_PART {
            return Err(bad("each part must be 1 to 63 characters"));
        }
        if !part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(bad("only a-z, 0-9 and '-' are allowed"));
        }
        if part.starts_with('-') || part.ends_with('-') {
            return Err(bad("a part may not start or end with '-'"));
        }
    }
    Ok((ns, pod))
}

/// CNI_CONTAINERID of pod `ns/pod` in run `run`: `<run>-<ns>-<pod>`.
pub fn container_id(run: &str, ns: &str, pod: &str) -> String {
    format!("{run}-{ns}-{pod}")
}

/// The pod netns name `<run>-p<k>`.
pub fn pod_netns_name(run: &str, k: u32) -> String {
    format!("{run}-p{k}")
}

/// Node `node`'s IPAM data dir, inside the run dir (so `down` removes it).
pub fn ipam_dir(run: &str, node: u32) -> PathBuf {
    run::run_dir(run).join(format!("ipam-n{node}"))
}

/// The cluster's pod networks in `family` (the IPv6 one embeds `CLUSTER_CIDR`).
pub fn cluster_cidrs(family: Family) -> Vec<String> {
    // CLUSTER_CIDR is a constant that parses.
    let v4: Ipv4Network = CLUSTER_CIDR.parse().expect("a CIDR");
    let v4_form = family.v4().then(|| v4.to_string());
    v4_form.into_iter().chain(family.v6().then(|| embed_net(v4).to_string())).collect()
}

/// The plugin config a kubelet passes for node `node` (from a conflist),
/// with `mtu` as an overlay's conflist has it, in the families of `family`
/// (one range, default route and cluster CIDR per family).
pub fn net_conf(run: &str, node: u32, mtu: Option<u32>, family: Family) -> Value {
    let cidr = plan::pod_cidr(node);
    let mut ranges = Vec::new();
    let mut routes = Vec::new();
    if family.v4() {
        ranges.push(json!([{"subnet": cidr.to_string()}]));
        routes.push(json!({"dst": "0.0.0.0/0"}));
    }
    if family.v6() {
        ranges.push(json!([{"subnet": embed_net(cidr).to_string()}]));
        routes.push(json!({"dst": "::/0"}));
    }
    let mut conf = json!({
        "cniVersion": "1.0.0", "name": "weft", "type": "weft", "bridge": BRIDGE,
        "clusterCIDRs": cluster_cidrs(family),
        "agentSocket": crate::agents::pod_socket(run, node).display().to_string(),
        "ipam": {"type": "weft-ipam", "ranges": ranges, "routes": routes,
                 "dataDir": ipam_dir(run, node).display().to_string()},
    });
    if let Some(m) = mtu {
        conf["mtu"] = m.into();
    }
    conf
}

/// The process name a pod's workload is recorded under.
pub fn workload_name(pod: &str) -> String {
    format!("pod {pod}")
}

/// Finds binary `name`: `$env` if set, else the current executable if it is
/// `name`, else `name` in its directory or the one above (a test binary lives
/// in target/<profile>/deps, the workspace's binaries in target/<profile>).
pub fn find_binary(name: &str, env: &'static str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(E2eError::BinaryMissing { name: name.into(), env, tried: vec![p] })
        };
    }
    let exe = std::env::current_exe().map_err(E2eError::io("find the current executable"))?;
    if exe.file_name() == Some(OsStr::new(name)) {
        return Ok(exe);
    }
    let tried: Vec<PathBuf> = exe.ancestors().skip(1).take(2).map(|d| d.join(name)).collect();
    tried.iter().find(|p| p.is_file()).cloned().ok_or(E2eError::BinaryMissing {
        name: name.into(),
        env,
        tried,
    })
}

/// Runs `weft` with CNI_COMMAND=`cmd` for `pod` inside its node's netns and
/// returns its output (not checked). CNI_NETNS is set while the pod netns exists.
fn cni_exec(run: &str, pod: &PodRecord, cmd: &str) -> Result<Output> {
    let (ns, name) = split_pod_name(&pod.name)?;
    let node = netns_path(&plan::node_name(run, pod.node));
    let weft = pod.weft.display().to_string();
    let mut c = command_in(&node, &[&weft])?;
    // As containerd does: our environment plus the CNI variables (none inherited).
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CNI_") {
            c.env_remove(k);
        }
    }
    let cni_path = pod.weft.parent().unwrap_or(Path::new("/")).display().to_string();
    c.env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_IFNAME", POD_IFNAME)
        .env("CNI_PATH", cni_path)
        .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"));
    if netns_exists(&pod.netns) {
        c.env("CNI_NETNS", &pod.path);
    }
    let conf = net_conf(run, pod.node, pod.mtu, pod.family).to_string();
    let what = format!("weft {cmd} of pod {} on node {}", pod.name, pod.node);
    exec_command(c, &what, Some(conf.as_bytes()), CNI_TIMEOUT)
}

/// `cni_exec`, failing with the plugin's output unless it exited 0; returns stdout.
fn cni_checked(run: &str, pod: &PodRecord, cmd: &str) -> Result<String> {
    let out = cni_exec(run, pod, cmd)?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(E2eError::Cni {
        what: format!("weft {cmd} of pod {} on node {} failed ({})", pod.name, pod.node, out.status),
        detail: format!("{stdout}{}{stderr}", if stderr.is_empty() { "" } else { " stderr: " }),
    })
}

/// Releases `pod`'s attachment with CNI DEL (idempotent in the plugin). Skipped
/// when the node's netns is gone (its links and the run's IPAM dir go with the run).
pub fn cni_del(run: &str, pod: &PodRecord) -> Result<()> {
    if !netns_exists(&plan::node_name(run, pod.node)) {
        return Ok(());
    }
    cni_checked(run, pod, "DEL").map(drop)
}

/// What an ADD result says of the pod.
struct Added {
    /// The plan address (see `Pod::ip`).
    ip: Ipv4Addr,
    ip6: Option<Ipv6Addr>,
    host_veth: Option<String>,
}

/// The pod's addresses (one of each family of `family`) and the host veth's
/// name from an ADD result.
fn parse_add_result(pod: &str, stdout: &str, family: Family) -> Result<Added> {
    let bad = |why: String| E2eError::Cni {
        what: format!("ADD result for pod {pod}"),
        detail: format!("{why}: {stdout}"),
    };
    let v: Value = serde_json::from_str(stdout).map_err(|e| bad(format!("not JSON ({e})")))?;
    let ips: Vec<IpAddr> = v["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str()?.parse::<ipnetwork::IpNetwork>().ok())
        .map(|n| n.ip())
        .collect();
    let ip4 = ips.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let ip6 = ips.iter().find_map(|ip| match ip {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    });
    if family.v4() && ip4.is_none() || family.v6() && ip6.is_none() {
        return Err(bad(format!("no address of each family of {family}")));
    }
    let ip = ip4
        .or_else(|| ip6.and_then(unembed))
        .ok_or_else(|| bad("an IPv6 address outside fd00::/96".into()))?;
    let host_veth = v["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i.get("sandbox").is_none() && i["name"].as_str() != Some(BRIDGE))
        .and_then(|i| i["name"].as_str().map(String::from));
    Ok(Added { ip, ip6, host_veth })
}

/// Sets `lo` up in the named netns (the runtime's loopback plugin does this for a real pod).
fn lo_up_in(name: &str) -> Result<()> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(E2eError::io("start the netlink runtime"))?;
            rt.block_on(async {
                let ns = topology::open(name)?;
                let h = connect_in(&ns).map_err(E2eError::kernel(format!("netlink in {name}")))?;
                topology::lo_up(&h, name).await
            })
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl Testbed {
    fn weft_bin(&self) -> Result<PathBuf> {
        match &self.weft_bin {
            Some(p) if p.is_file() => Ok(p.clone()),
            Some(p) => Err(E2eError::BinaryMissing {
                name: "weft".into(),
                env: WEFT_BIN_ENV,
                tried: vec![p.clone()],
            }),
            None => find_binary("weft", WEFT_BIN_ENV),
        }
    }

    fn e2e_bin(&self) -> Result<PathBuf> {
        match &self.e2e_bin {
            Some(p) if p.is_file() => Ok(p.clone()),
            Some(p) => Err(E2eError::BinaryMissing {
                name: "weft-e2e".into(),
                env: E2E_BIN_ENV,
                tried: vec![p.clone()],
            }),
            None => find_binary("weft-e2e", E2E_BIN_ENV),
        }
    }

    fn update_state<T>(&self, f: impl FnOnce(&mut run::RunState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The pods of this run, in the order they were added.
    pub fn pods(&self) -> Vec<PodRecord> {
        self.state().pods
    }

    /// The record of pod `name` ("ns/pod"), if it exists.
    pub fn pod(&self, name: &str) -> Option<PodRecord> {
        self.state().pods.into_iter().find(|p| p.name == name)
    }

    /// Adds pod `name` ("ns/pod") on node `node`, labelled `pod: <pod>`,
    /// serving and declaring ports 80 and 81 (TCP and UDP, named
    /// `serve-<port>-<tcp|udp>`): see `add_pod_with`.
    pub fn add_pod(&mut self, node: u32, name: &str) -> Result<Pod> {
        let (_, pod_name) = split_pod_name(name)?;
        let labels = Labels::from([("pod".to_string(), pod_name.to_string())]);
        self.add_pod_with(node, name, labels, manifests::serve_ports(&DEFAULT_PORTS))
    }

    /// Adds pod `name` ("ns/pod") on node `node`: creates its netns, attaches it
    /// with the real `weft` binary (CNI ADD in the node's netns), starts its
    /// workload (`weft-e2e serve --name ns/pod --ports P,...`, every port of
    /// `ports` over TCP and UDP) and writes its manifest, with `labels`, `ports`
    /// and status.podIP, into the cluster dir (and a Namespace manifest if its
    /// namespace has none), then re-applies the services it may back. On
    /// failure after the netns exists, undoes everything (CNI DEL, netns) and
    /// returns the error, which carries the plugin's error JSON. Not
    /// idempotent: `PodExists`.
    pub fn add_pod_with(
        &mut self,
        node: u32,
        name: &str,
        labels: Labels,
        ports: Vec<ContainerPort>,
    ) -> Result<Pod> {
        let (ns, pod_name) = split_pod_name(name)?;
        let run = self.run();
        if node == 0 || node > self.nodes() {
            return Err(E2eError::NoSuchNode { run, node });
        }
        let weft = self.weft_bin()?;
        let e2e = self.e2e_bin()?;
        // Recorded before the netns exists, so `down` always finds it.
        let rec = self.update_state(|st| {
            if st.pods.iter().any(|p| p.name == name) {
                return Err(E2eError::PodExists { run: run.clone(), name: name.into() });
            }
            let k = st.pod_seq + 1;
            let netns = pod_netns_name(&run, k);
            let rec = PodRecord {
                name: name.into(),
                node,
                path: netns_path(&netns),
                netns,
                container_id: container_id(&run, ns, pod_name),
                weft,
                ip: None,
                ip6: None,
                family: st.family,
                host_veth: None,
                mtu: st.pod_mtu,
                labels,
                ports,
            };
            st.pod_seq = k;
            st.pods.push(rec.clone());
            if let Err(e) = run::save(st) {
                st.pods.pop();
                return Err(e);
            }
            Ok(rec)
        })?;
        if let Err(e) = create_netns(&rec.netns) {
            // create_netns removes what it made; an existing netns is not ours to delete.
            self.forget_pod(name);
            return Err(e);
        }
        match self.attach_and_start(&run, &rec, &e2e).and_then(|pod| self.publish_pod(&rec, pod)) {
            Ok(pod) => Ok(pod),
            Err(e) => {
                // As a kubelet after a failed ADD: DEL (the plugin may have
                // half-attached), then the sandbox goes.
                let mut notes = Vec::new();
                if let Err(u) = self.stop_workload(name) {
                    notes.push(u.to_string());
                }
                if let Err(u) = cni_del(&run, &rec) {
                    notes.push(u.to_string());
                }
                match delete_netns(&rec.netns) {
                    // The veth goes with the netns; an address the failed DEL kept
                    // stays in the run's IPAM dir, which `down` removes.
                    Ok(_) => self.forget_pod(name),
                    // Left in the state: `down` retries.
                    Err(u) => notes.push(u.to_string()),
                }
                if notes.is_empty() {
                    Err(e)
                } else {
                    let detail = format!("{e}; undoing it: {}", notes.join("; "));
                    Err(E2eError::Cni { what: format!("add pod {name}"), detail })
                }
            }
        }
    }

    fn attach_and_start(&self, run: &str, rec: &PodRecord, e2e: &Path) -> Result<Pod> {
        lo_up_in(&rec.netns)?;
        // As the API server shows a scheduled pod before its sandbox exists:
        // the agent knows its labels when ADD reports its address.
        self.write_pod_manifest(rec)?;
        let t0 = Instant::now();
        let stdout = cni_checked(run, rec, "ADD")?;
        let add = t0.elapsed();
        let Added { ip, ip6, host_veth } = parse_add_result(&rec.name, &stdout, rec.family)?;
        self.update_state(|st| {
            if let Some(p) = st.pods.iter_mut().find(|p| p.name == rec.name) {
                (p.ip, p.ip6) = (Some(ip), ip6);
                p.host_veth = host_veth.clone();
            }
            run::save(st)
        })?;
        let e2e = e2e.display().to_string();
        let ports: Vec<String> = rec.serve_ports().iter().map(u16::to_string).collect();
        let ports = ports.join(",");
        let mut c = command_in(&rec.path, &[&e2e, "serve", "--name", &rec.name, "--ports", &ports])?;
        let log = run::run_dir(run).join(format!("{}.log", rec.netns));
        let log = File::create(&log).map_err(E2eError::io(format!("create {}", log.display())))?;
        // stdin/stderr never hold a caller's pipes (the CLI exits while the workload runs).
        c.stdin(Stdio::null()).stderr(log);
        if !self.owns_run {
            // Started by the CLI: out of the terminal's process group, so its Ctrl-C spares it.
            std::os::unix::process::CommandExt::process_group(&mut c, 0);
        }
        let what = format!("serve of pod {}", rec.name);
        let pid = self.spawn_command(&workload_name(&rec.name), &rec.path, c, &what, READY_TIMEOUT)?;
        Ok(Pod {
            name: rec.name.clone(),
            node: rec.node,
            netns: rec.path.clone(),
            ip,
            ip6,
            host_veth,
            pid,
            add,
        })
    }

    /// Deletes pod `name`: stops its workload, releases it with CNI DEL (its
    /// address and veth), deletes its netns, drops it from the state. Returns its
    /// record. If DEL fails, the error carries the plugin's output and the pod
    /// stays in the state (without its workload) for a retry or `down`.
    pub fn delete_pod(&mut self, name: &str) -> Result<PodRecord> {
        let run = self.run();
        let rec =
            self.pod(name).ok_or_else(|| E2eError::PodNotFound { run: run.clone(), name: name.into() })?;
        self.stop_workload(name)?;
        // Gone from the API first, as when a kubelet kills a pod: services and
        // policies stop naming its address before the address is released.
        let (ns, pod_name) = split_pod_name(name)?;
        self.remove_manifest(&manifests::file_name("Pod", Some(ns), pod_name))?;
        self.apply_services()?;
        cni_checked(&run, &rec, "DEL")?;
        delete_netns(&rec.netns)?;
        self.forget_pod(name);
        Ok(rec)
    }

    /// Writes pod `rec`'s manifest (with the IP ADD gave it) and, if its
    /// namespace has no manifest yet, the Namespace's; re-applies services.
    fn publish_pod(&self, rec: &PodRecord, pod: Pod) -> Result<Pod> {
        let (ns, _) = split_pod_name(&rec.name)?;
        let ns_file = manifests::file_name("Namespace", None, ns);
        if !self.cluster_dir().join(&ns_file).exists() {
            let labels = Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())]);
            self.write_manifest(&ns_file, &manifests::to_yaml(&manifests::namespace(ns, &labels)))?;
        }
        let added = PodRecord { ip: Some(pod.ip), ip6: pod.ip6, ..rec.clone() };
        self.write_pod_manifest(&added)?;
        self.apply_services()?;
        Ok(pod)
    }

    /// (Re)writes the manifest of pod `rec` with the addresses it holds.
    pub(crate) fn write_pod_manifest(&self, rec: &PodRecord) -> Result<()> {
        let (ns, pod_name) = split_pod_name(&rec.name)?;
        let doc =
            manifests::pod_with_addresses(ns, pod_name, &rec.labels, rec.node, &rec.ports, &rec.addresses());
        self.write_manifest(&manifests::file_name("Pod", Some(ns), pod_name), &manifests::to_yaml(&doc))
    }

    /// Replaces pod `name`'s labels (in its record and its manifest), as
    /// `kubectl label --overwrite` would; re-applies services.
    pub fn set_pod_labels(&self, name: &str, labels: Labels) -> Result<()> {
        let rec = self.update_state(|st| {
            let run = st.run.clone();
            let p = st.pods.iter_mut().find(|p| p.name == name);
            let p = p.ok_or_else(|| E2eError::PodNotFound { run, name: name.into() })?;
            p.labels = labels;
            let rec = p.clone();
            run::save(st).map(|()| rec)
        })?;
        self.write_pod_manifest(&rec)?;
        self.apply_services()
    }

    /// Starts an extra server, `weft-e2e serve --name NAME --ports PORTS
    /// [--echo-peer]`, inside the netns at `netns` (the ext client's, or a pod's
    /// on ports its workload leaves free), recorded as run process `serve NAME`
    /// so `down` kills it; waits for its readiness line and returns its pid.
    /// Its stderr goes to `<run dir>/serve-NAME.log` ('/' in NAME becomes '-').
    pub fn serve_in(&self, netns: &Path, name: &str, ports: &[u16], echo_peer: bool) -> Result<u32> {
        let e2e = self.e2e_bin()?.display().to_string();
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let ports = ports.join(",");
        let mut argv = vec![e2e.as_str(), "serve", "--name", name, "--ports", &ports];
        if echo_peer {
            argv.push("--echo-peer");
        }
        let mut c = command_in(netns, &argv)?;
        let log = run::run_dir(&self.run()).join(format!("serve-{}.log", name.replace('/', "-")));
        let log = File::create(&log).map_err(E2eError::io(format!("create {}", log.display())))?;
        c.stdin(Stdio::null()).stderr(log);
        if !self.owns_run {
            std::os::unix::process::CommandExt::process_group(&mut c, 0);
        }
        let what = format!("serve {name} on {ports}");
        self.spawn_command(&format!("serve {name}"), netns, c, &what, READY_TIMEOUT)
    }

    /// `serve_in` the ext client's netns as server "ext": the external endpoint
    /// pods' egress reaches at `ext_addr()`.
    pub fn serve_ext(&self, ports: &[u16], echo_peer: bool) -> Result<u32> {
        self.serve_in(&self.ext_netns(), "ext", ports, echo_peer)
    }

    /// Drops pod `name` from the state (best effort on the file: `down` tolerates
    /// a pod whose netns is gone).
    fn forget_pod(&self, name: &str) {
        self.update_state(|st| {
            st.pods.retain(|p| p.name != name);
            if let Err(e) = run::save(st) {
                eprintln!("weft-e2e: forgetting pod {name}: {e}");
            }
        });
    }

    /// Kills pod `name`'s workload and waits (bounded) until it is gone.
    fn stop_workload(&self, name: &str) -> Result<()> {
        let wname = workload_name(name);
        let records: Vec<_> = self.state().processes.into_iter().filter(|p| p.name == wname).collect();
        for p in &records {
            let child = {
                let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
                children.iter().position(|c| c.id() as i32 == p.pid).map(|i| children.swap_remove(i))
            };
            let deadline = Instant::now() + STOP_TIMEOUT;
            let gone = match child {
                // Ours: kill and reap.
                Some(mut c) => {
                    let _ = c.kill();
                    loop {
                        match c.try_wait() {
                            Ok(Some(_)) | Err(_) => break true,
                            Ok(None) if Instant::now() >= deadline => break false,
                            Ok(None) => std::thread::sleep(STOP_POLL),
                        }
                    }
                }
                // Started by another process (the CLI): kill if it is still the same process.
                None => {
                    if run::start_time(p.pid) == Some(p.start_time) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(p.pid),
                            nix::sys::signal::SIGKILL,
                        );
                    }
                    loop {
                        if !run::process_alive(p.pid, p.start_time) {
                            break true;
                        }
                        if Instant::now() >= deadline {
                            break false;
                        }
                        std::thread::sleep(STOP_POLL);
                    }
                }
            };
            if !gone {
                return Err(E2eError::io(format!("stop workload {wname} (pid {})", p.pid))(
                    std::io::ErrorKind::TimedOut.into(),
                ));
            }
        }
        self.update_state(|st| {
            st.processes.retain(|p| p.name != wname);
            run::save(st)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names() {
        assert_eq!(split_pod_name("default/web-1").unwrap(), ("default", "web-1"));
        for bad in ["web", "/web", "ns/", "NS/web", "ns/web_1", "ns/-web", "ns/web-", "a/b/c", "ns/w b"] {
            assert!(split_pod_name(bad).is_err(), "{bad}");
        }
        assert!(split_pod_name(&format!("ns/{}", "a".repeat(64))).is_err());
        assert_eq!(container_id("wt00aa", "default", "web"), "wt00aa-default-web");
        assert_eq!(pod_netns_name("wt00aa", 3), "wt00aa-p3");
    }

    #[test]
    fn config_is_the_conflist_entry() {
        let c = net_conf("wt00aa", 2, None, Family::Ipv4);
        assert_eq!(c["type"], "weft");
        assert!(c.get("mtu").is_none());
        assert_eq!(net_conf("wt00aa", 2, Some(1450), Family::Ipv4)["mtu"], 1450);
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["ipam"]["ranges"], serde_json::json!([[{"subnet": "10.244.2.0/24"}]]));
        assert_eq!(c["clusterCIDRs"], serde_json::json!(["10.244.0.0/16"]));
        assert_eq!(c["ipam"]["dataDir"], "/run/weft-e2e/wt00aa/ipam-n2");
        // Each family its range, default route and cluster CIDR; ipv6 the plan's embedding.
        let d = net_conf("wt00aa", 2, None, Family::Dual);
        let ranges = serde_json::json!([[{"subnet": "10.244.2.0/24"}], [{"subnet": "fd00::af4:200/120"}]]);
        assert_eq!(d["ipam"]["ranges"], ranges);
        assert_eq!(d["ipam"]["routes"], serde_json::json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]));
        assert_eq!(d["clusterCIDRs"], serde_json::json!(["10.244.0.0/16", "fd00::af4:0/112"]));
        let v6 = net_conf("wt00aa", 2, None, Family::Ipv6);
        assert_eq!(v6["ipam"]["ranges"], serde_json::json!([[{"subnet": "fd00::af4:200/120"}]]));
    }

    #[test]
    fn add_results() {
        let r = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"weft0","mac":"aa:bb:cc:dd:ee:ff"},
            {"name":"veth1234abcd","mac":"aa:bb:cc:dd:ee:01"},
            {"name":"eth0","mac":"aa:bb:cc:dd:ee:02","sandbox":"/run/netns/x"}],
            "ips":[{"address":"10.244.1.2/24","gateway":"10.244.1.1","interface":2}]}"#;
        let a = parse_add_result("ns/p", r, Family::Ipv4).unwrap();
        assert_eq!((a.ip, a.ip6), (Ipv4Addr::new(10, 244, 1, 2), None));
        assert_eq!(a.host_veth.as_deref(), Some("veth1234abcd"));
        assert!(parse_add_result("ns/p", r#"{"ips":[]}"#, Family::Ipv4).is_err());
        assert!(parse_add_result("ns/p", "nope", Family::Ipv4).is_err());
        // An ipv6 run: the plan address is the one the IPv6 address embeds; a missing family fails.
        let v6 = r#"{"ips":[{"address":"fd00::af4:102/120","interface":2}]}"#;
        let a = parse_add_result("ns/p", v6, Family::Ipv6).unwrap();
        assert_eq!((a.ip, a.ip6), (Ipv4Addr::new(10, 244, 1, 2), "fd00::af4:102".parse().ok()));
        assert!(parse_add_result("ns/p", v6, Family::Dual).is_err());
        assert!(parse_add_result("ns/p", r, Family::Dual).is_err());
    }
}
