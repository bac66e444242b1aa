//! Bring a run's topology up and down (docs/testing.md):
//!
//! ```text
//! <run>-lan  netns with bridge <run>-lan (the underlay L2 segment)
//!   ├─ port <run>-n<N>  ══ veth ══  eth0 172.31.0.(10+N)/24 in netns <run>-n<N>
//!   └─ port <run>-ext   ══ veth ══  eth0 172.31.0.100/24    in netns <run>-ext
//! ```
//!
//! Every veth is created by one RTM_NEWLINK on the lan netns's socket with the
//! peer placed straight into the host netns (IFLA_NET_NS_FD, `create_veth`), so
//! no link ever exists in the root netns. Netlink runs on a dedicated thread with
//! its own runtime, so `up` works whether or not the caller is inside one.

use std::sync::atomic::{AtomicBool, Ordering};

use weft_netkit::netns::{connect_in, NetNs};
use weft_netkit::{addr, bridge, link, veth};

use crate::error::{E2eError, Result};
use crate::family::{embed_host, embed_net, Family};
use crate::netns::{create_netns, delete_netns, list_with_prefix, netns_exists, netns_path};
use crate::plan::{check_run_name, random_run_name, HOST_IFNAME, MTU};
use crate::run::{self, Host, RunState};

/// How many random names `up` tries before giving up on finding a free one.
const NAME_ATTEMPTS: usize = 8;

/// Creates a run with `nodes` nodes, named `name` or `wt` + 4 random hex chars.
/// Not idempotent: `RunExists` if `name` is taken. On failure or when `cancel`
/// becomes true, deletes what it created and returns the error.
pub fn up(nodes: u32, name: Option<&str>, cancel: &AtomicBool) -> Result<RunState> {
    up_in(nodes, name, Family::Ipv4, cancel)
}

/// `up` with nodes and pods in `family`: in ipv6 and dual every host's lan
/// link also holds its address embedded in fd00::/96 (`family::embed`).
pub fn up_in(nodes: u32, name: Option<&str>, family: Family, cancel: &AtomicBool) -> Result<RunState> {
    crate::plan::check_nodes(nodes)?;
    let mut state = claim_run(nodes, name)?;
    state.family = family;
    let built = run::save(&state)
        .and_then(|()| crate::agents::write_cluster_dir(&state))
        .and_then(|()| build(&state, cancel));
    match built.and_then(|()| {
        state.complete = true;
        run::save(&state)
    }) {
        Ok(()) => Ok(state),
        Err(e) => {
            if let Err(td) = down(&state.run) {
                eprintln!("weft-e2e: cleanup after failed up: {td}");
            }
            Err(e)
        }
    }
}

/// Picks the run name and claims its directory.
fn claim_run(nodes: u32, name: Option<&str>) -> Result<RunState> {
    if let Some(name) = name {
        let state = RunState::plan(name, nodes)?;
        run::create_run_dir(name)?;
        return Ok(state);
    }
    let mut last = None;
    for _ in 0..NAME_ATTEMPTS {
        let name = random_run_name()?;
        match run::create_run_dir(&name) {
            Ok(_) => return RunState::plan(&name, nodes),
            Err(e @ E2eError::RunExists { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Creates the namespaces, then wires them (bridge, veths, addresses).
fn build(state: &RunState, cancel: &AtomicBool) -> Result<()> {
    for ns in state.namespaces() {
        check_cancel(cancel)?;
        create_netns(&ns)?;
    }
    std::thread::scope(|s| {
        let wiring = s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(E2eError::io("start the netlink runtime"))?;
            rt.block_on(wire(state, cancel))
        });
        wiring.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

async fn wire(state: &RunState, cancel: &AtomicBool) -> Result<()> {
    let lan = open(&state.lan)?;
    let h = connect_in(&lan).map_err(E2eError::kernel(format!("netlink in {}", state.lan)))?;
    lo_up(&h, &state.lan).await?;
    let br = bridge::ensure_bridge(&h, &state.lan, MTU, None)
        .await
        .map_err(E2eError::kernel(format!("bridge {} in {}", state.lan, state.lan)))?;
    for host in state.hosts() {
        check_cancel(cancel)?;
        attach(&h, br.index, host, state.family).await?;
    }
    Ok(())
}

/// Plugs `host` into the lan: port `<netns>` on the bridge, `eth0` with its
/// address (and its embedding when `family` has IPv6).
async fn attach(lan: &rtnetlink::Handle, bridge_index: u32, host: &Host, family: Family) -> Result<()> {
    let ns = open(&host.netns)?;
    let what = |step: &str| format!("{step} for {}", host.netns);
    let pair = veth::create_veth(lan, &host.netns, HOST_IFNAME, &ns, MTU, bridge_index, false)
        .await
        .map_err(E2eError::kernel(what("veth")))?;
    let h = connect_in(&ns).map_err(E2eError::kernel(what("netlink")))?;
    lo_up(&h, &host.netns).await?;
    link::set_up(&h, pair.peer_index).await.map_err(E2eError::kernel(what("eth0 up")))?;
    let v6 = family.v6().then(|| embed_host(host.lan_addr).into());
    for a in std::iter::once(host.lan_addr.into()).chain(v6) {
        addr::add_address(&h, pair.peer_index, a).await.map_err(E2eError::kernel(what("eth0 address")))?;
    }
    Ok(())
}

pub(crate) async fn lo_up(h: &rtnetlink::Handle, ns: &str) -> Result<()> {
    let what = format!("lo up in {ns}");
    let lo = link::get_link(h, "lo")
        .await
        .map_err(E2eError::kernel(what.clone()))?
        .ok_or_else(|| E2eError::io(what.clone())(std::io::ErrorKind::NotFound.into()))?;
    link::set_up(h, lo.index).await.map_err(E2eError::kernel(what))
}

pub(crate) fn open(name: &str) -> Result<NetNs> {
    NetNs::open(netns_path(name)).map_err(E2eError::kernel(format!("open netns {name}")))
}

fn check_cancel(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::SeqCst) {
        return Err(E2eError::Cancelled);
    }
    Ok(())
}

/// Deletes everything run `run` created; idempotent (a missing run, state file
/// or namespace counts as done). Collects errors and carries on.
pub fn down(run: &str) -> Result<()> {
    check_run_name(run)?;
    let state = match run::load(run) {
        Ok(s) => s,
        Err(E2eError::RunNotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut errors = Vec::new();
    // 1. Processes first, so no one keeps a namespace alive after its file is gone.
    let namespaces = match &state {
        Some(state) => {
            kill_processes(state);
            state.namespaces()
        }
        // Died between claiming the name and writing the plan: go by the prefix.
        None => list_with_prefix(&format!("{run}-")),
    };
    // 2. Pods: released through the plugin (CNI DEL, best effort, as a kubelet
    //    would), then their netns; before the nodes, whose netns DEL runs in.
    for pod in state.iter().flat_map(|s| s.pods.iter()) {
        if let Err(e) = crate::pods::cni_del(run, pod) {
            eprintln!("weft-e2e: down of {run}: {e} (deleting its namespaces anyway)");
        }
        if let Err(e) = delete_netns(&pod.netns) {
            errors.push(e);
        }
    }
    // 3. Hosts, then the lan last (reverse creation order); veths go with their netns.
    for ns in namespaces.iter().rev() {
        if let Err(e) = delete_netns(ns) {
            errors.push(e);
        }
    }
    // 4. The run directory (with the nodes' IPAM data), only when everything else is gone, so a failed down can be retried.
    if errors.is_empty() {
        if let Err(e) = run::remove_run_dir(run) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(E2eError::Teardown { run: run.into(), errors })
    }
}

/// What of run `state` still exists: namespaces (by the plan and by the run's
/// prefix), links named with the prefix in this netns, live recorded
/// processes, the run dir. Empty after a complete `down`.
pub fn leftovers(state: &RunState) -> Vec<String> {
    let prefix = format!("{}-", state.run);
    let mut left: Vec<String> = state
        .namespaces()
        .into_iter()
        .filter(|ns| netns_exists(ns))
        .map(|ns| format!("netns {ns}"))
        .collect();
    for pod in &state.pods {
        if netns_exists(&pod.netns) {
            left.push(format!("netns {} (pod {})", pod.netns, pod.name));
        }
    }
    for ns in list_with_prefix(&prefix) {
        let entry = format!("netns {ns}");
        if !left.iter().any(|l| l.starts_with(&entry)) {
            left.push(entry);
        }
    }
    if let Ok(links) = std::fs::read_dir("/sys/class/net") {
        for l in links.flatten() {
            let name = l.file_name().to_string_lossy().to_string();
            if name.starts_with(&prefix) {
                left.push(format!("link {name} in this netns"));
            }
        }
    }
    for p in &state.processes {
        if run::process_alive(p.pid, p.start_time) {
            left.push(format!("process {} (pid {})", p.name, p.pid));
        }
    }
    if run::run_dir(&state.run).exists() {
        left.push(format!("dir {}", run::run_dir(&state.run).display()));
    }
    left
}

/// SIGKILLs the run's recorded processes that are still the same processes.
fn kill_processes(state: &RunState) {
    for p in &state.processes {
        if run::start_time(p.pid) == Some(p.start_time) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), nix::sys::signal::SIGKILL);
        }
    }
}

/// A human-readable description of run `run` and whether each part still exists.
pub fn status(run: &str) -> Result<String> {
    check_run_name(run)?;
    let Some(state) = run::load(run)? else {
        return Ok(format!("run {run}: no state file in {}\n", run::run_dir(run).display()));
    };
    let here = |ns: &str| if netns_exists(ns) { "present" } else { "MISSING" };
    let phase = if state.complete { "up" } else { "incomplete (up running or died)" };
    let mut out = format!("run {run}: {phase}, state in {}\n", run::run_dir(run).display());
    out += &format!("  {:<12} {:<8} bridge {}\n", state.lan, here(&state.lan), state.lan);
    let v6 = state.family.v6();
    for h in state.hosts() {
        let mut pods = h.pod_cidr.map(|c| format!(" pod-cidr {c}")).unwrap_or_default();
        let mut lan = h.lan_addr.to_string();
        if v6 {
            lan += &format!(" {}", embed_host(h.lan_addr));
            pods += &h.pod_cidr.map(|c| format!(" {}", embed_net(c))).unwrap_or_default();
        }
        out += &format!("  {:<12} {:<8} eth0 {lan}{pods}\n", h.netns, here(&h.netns));
    }
    if state.family != Family::Ipv4 {
        out += &format!("  family {}\n", state.family);
    }
    for p in &state.pods {
        let ips: Vec<String> = p.addresses().iter().map(ToString::to_string).collect();
        let ip = if ips.is_empty() { "(no address)".to_string() } else { ips.join(" ") };
        out += &format!("  pod {} on node {} netns {} {} ip {ip}\n", p.name, p.node, p.netns, here(&p.netns));
    }
    for p in &state.processes {
        let alive = if run::start_time(p.pid) == Some(p.start_time) { "running" } else { "gone" };
        out += &format!("  process {} pid {} in {} {alive}\n", p.name, p.pid, p.netns);
    }
    Ok(out)
}
