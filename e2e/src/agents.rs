//! The control plane as files, and one `weft-agent` per node.
//!
//! `<run dir>/cluster/` holds ordinary Kubernetes YAML: `up` writes one Node
//! manifest per node (`node-N`, podCIDR 10.244.N.0/24, InternalIP
//! 172.31.0.(10+N)). `start_agents` runs `weft-agent --source dir:<cluster>`
//! inside each node's netns, recorded as a run process so `down` kills it;
//! with the cluster CIDR, so each agent owns its node's masquerade rule.
//! `wait_converged` computes the cluster dir's generation with the agent's own
//! library function and polls the agents' status files until every one shows it.
//!
//! With `start_standin` first, agents read the cluster dir through the
//! stand-in API server instead (`weft-agent --source kube`): every write to
//! the dir is published to it at once, and `wait_converged` waits for the
//! generation of the API state it serves.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_agent::status::{read_status, Status};

use crate::apiserver_standin::{self, ApiStandin};
use crate::error::{E2eError, Result};
use crate::family::{embed, embed_net, Family};
use crate::pods::{cluster_cidrs, find_binary};
use crate::run::{self, RunState};
use crate::{command_in, plan, Testbed};

/// Env var naming the `weft-agent` binary (else: next to the current executable).
pub const AGENT_BIN_ENV: &str = "WEFT_AGENT_BIN";
/// Where each agent serves /metrics and the probes, on its node netns's own loopback.
pub const AGENT_HTTP: &str = "127.0.0.1:9787";
/// Bound on an agent's first sync (its readiness line).
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `wait_converged` reads the status files.
const CONVERGE_POLL: Duration = Duration::from_millis(20);
/// How often agents poll the cluster dir, in ms.
const AGENT_POLL_MS: &str = "100";
/// Agents' full resync interval, in ms: short, so a test that breaks the kernel
/// state by hand (a deleted jump, a route) sees it repaired quickly.
const AGENT_RESYNC_MS: &str = "500";
/// Bound on reading an agent's HTTP reply.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on an agent exiting after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster-state directory of run `run`.
pub fn cluster_dir(run: &str) -> PathBuf {
    run::run_dir(run).join("cluster")
}

/// Node `n`'s name in the cluster state.
pub fn node_name(n: u32) -> String {
    format!("node-{n}")
}

/// Node `n`'s agent pod socket (the plugin's `agentSocket`).
pub fn pod_socket(run: &str, n: u32) -> PathBuf {
    run::run_dir(run).join(format!("agent-n{n}.sock"))
}

/// Node `n`'s agent's root-only socket for `/denied`.
pub fn denied_socket(run: &str, n: u32) -> PathBuf {
    run::run_dir(run).join(format!("agent-n{n}.denied.sock"))
}

/// Node `n`'s kubeconfig for the stand-in API server.
pub fn kubeconfig_file(run: &str, n: u32) -> PathBuf {
    run::run_dir(run).join(format!("kubeconfig-n{n}.yaml"))
}

/// Node `n`'s status file.
pub fn status_file(run: &str, n: u32) -> PathBuf {
    run::run_dir(run).join(format!("agent-n{n}.status.json"))
}

/// The Node manifest of node `n`, as the API server would show it.
pub fn node_manifest(n: u32) -> String {
    node_manifest_in(n, Family::Ipv4)
}

/// The Node manifest of node `n` in `family`: a pod CIDR and an InternalIP
/// per family (IPv4 first in dual), the IPv6 ones the plan's embedded.
pub fn node_manifest_in(n: u32, family: Family) -> String {
    let mut cidrs = Vec::new();
    let mut addresses = Vec::new();
    if family.v4() {
        cidrs.push(plan::pod_cidr(n).to_string());
        addresses.push(plan::node_addr(n).ip().to_string());
    }
    if family.v6() {
        cidrs.push(embed_net(plan::pod_cidr(n)).to_string());
        addresses.push(embed(plan::node_addr(n).ip()).to_string());
    }
    let cidr_list: String = cidrs.iter().map(|c| format!("  - {c}\n")).collect();
    let address_list: String =
        addresses.iter().map(|a| format!("  - type: InternalIP\n    address: {a}\n")).collect();
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n\
         spec:\n  podCIDR: {first}\n  podCIDRs:\n{cidr_list}status:\n  addresses:\n{address_list}  \
         - type: Hostname\n    address: {name}\n",
        name = node_name(n),
        first = cidrs[0],
    )
}

/// Writes `cluster/node-N.yaml` for every node of `state`; idempotent.
pub fn write_cluster_dir(state: &RunState) -> Result<()> {
    let dir = cluster_dir(&state.run);
    std::fs::create_dir_all(&dir).map_err(E2eError::io(format!("create {}", dir.display())))?;
    for n in 1..=state.nodes.len() as u32 {
        write_manifest(&dir, &format!("{}.yaml", node_name(n)), &node_manifest_in(n, state.family))?;
    }
    Ok(())
}

/// Writes `dir/file` atomically (a hidden temp file, which agents ignore, then rename).
fn write_manifest(dir: &Path, file: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).map_err(E2eError::io(format!("write {}", tmp.display())))?;
    let path = dir.join(file);
    std::fs::rename(&tmp, &path).map_err(E2eError::io(format!("rename to {}", path.display())))
}

impl Testbed {
    /// This run's cluster-state directory.
    pub fn cluster_dir(&self) -> PathBuf {
        cluster_dir(&self.run())
    }

    /// Writes (atomically) manifest `file` into the cluster dir; idempotent.
    pub fn write_manifest(&self, file: &str, text: &str) -> Result<()> {
        write_manifest(&self.cluster_dir(), file, text)?;
        self.publish()
    }

    /// Removes manifest `file` from the cluster dir; `Ok(false)` if it was gone.
    pub fn remove_manifest(&self, file: &str) -> Result<bool> {
        let path = self.cluster_dir().join(file);
        let gone = match std::fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(E2eError::io(format!("remove {}", path.display()))(e)),
        };
        self.publish()?;
        Ok(gone)
    }

    /// Tells the stand-in API server, if there is one, that the dir changed.
    fn publish(&self) -> Result<()> {
        match self.standin() {
            Some(s) => s.refresh().map(drop),
            None => Ok(()),
        }
    }

    /// Starts the stand-in API server over the cluster dir, listening in every
    /// node's netns, and writes each node's kubeconfig; agents started after
    /// this read through it (`--source kube`). Idempotent.
    pub fn start_standin(&self) -> Result<Arc<ApiStandin>> {
        if let Some(s) = self.standin() {
            return Ok(s);
        }
        let run = self.run();
        let netns: Vec<PathBuf> = (1..=self.nodes()).map(|n| self.node_netns(n)).collect();
        let standin = Arc::new(ApiStandin::start(&cluster_dir(&run), &netns)?);
        for n in 1..=self.nodes() {
            let port = standin.port(n as usize - 1).expect("one listener per node");
            let path = kubeconfig_file(&run, n);
            std::fs::write(&path, apiserver_standin::kubeconfig(port))
                .map_err(E2eError::io(format!("write {}", path.display())))?;
        }
        *self.standin.lock().unwrap_or_else(|p| p.into_inner()) = Some(standin.clone());
        Ok(standin)
    }

    /// The stand-in API server, once started.
    pub fn standin(&self) -> Option<Arc<ApiStandin>> {
        self.standin.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Starts `weft-agent --cluster-cidr 10.244.0.0/16 --cleanup-on-exit` in every node's netns and waits for
    /// each one's first sync; its log goes to `<run dir>/agent-nN.log`. Not idempotent.
    pub fn start_agents(&self) -> Result<Vec<u32>> {
        self.start_agents_with(&[])
    }

    /// `start_agents` with `extra` arguments for every agent (e.g. `--backend iptables`).
    pub fn start_agents_with(&self, extra: &[&str]) -> Result<Vec<u32>> {
        (1..=self.nodes()).map(|n| self.start_agent(n, extra)).collect()
    }

    /// Starts node `n`'s agent (with `extra` arguments) and waits for its first
    /// sync; it listens for the plugin on `pod_socket(run, n)`. Its log is
    /// appended to `<run dir>/agent-nN.log`.
    pub fn start_agent(&self, n: u32, extra: &[&str]) -> Result<u32> {
        let bin = find_binary("weft-agent", AGENT_BIN_ENV)?.display().to_string();
        let run = self.run();
        let kube = self.standin().is_some();
        let source = match kube {
            true => {
                vec!["kube".into(), "--kubeconfig".into(), kubeconfig_file(&run, n).display().to_string()]
            }
            false => vec![format!("dir:{}", cluster_dir(&run).display())],
        };
        let status = status_file(&run, n).display().to_string();
        let socket = pod_socket(&run, n).display().to_string();
        let denied = denied_socket(&run, n).display().to_string();
        let node = node_name(n);
        let cluster = cluster_cidrs(self.family()).join(",");
        let mut argv = vec![bin.as_str(), "--node", &node, "--source"];
        argv.extend(source.iter().map(String::as_str));
        argv.extend([
            "--status-file",
            &status,
            "--pod-socket",
            &socket,
            "--poll-ms",
            AGENT_POLL_MS,
            "--resync-ms",
            AGENT_RESYNC_MS,
            "--cluster-cidr",
            &cluster,
            "--http",
            AGENT_HTTP,
            "--denied-socket",
            &denied,
            "--cleanup-on-exit",
        ]);
        argv.extend(extra);
        let netns = self.node_netns(n);
        let mut c = command_in(&netns, &argv)?;
        // The stand-in is on the node's own loopback: no proxy stands between.
        c.env_remove("HTTPS_PROXY").env_remove("https_proxy").env_remove("KUBECONFIG");
        let log = run::run_dir(&run).join(format!("agent-n{n}.log"));
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(E2eError::io(format!("open {}", log.display())))?;
        c.stdin(Stdio::null()).stderr(log);
        self.spawn_command(&agent_name(n), &netns, c, "weft-agent", READY_TIMEOUT)
    }

    /// Takes the child process recorded as `name` out of this Testbed's children.
    fn take_child(&self, name: &str) -> Option<std::process::Child> {
        let pids: Vec<i32> =
            self.state().processes.iter().filter(|p| p.name == name).map(|p| p.pid).collect();
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        children.iter().position(|c| pids.contains(&(c.id() as i32))).map(|i| children.swap_remove(i))
    }

    /// Kills node `n`'s agent with SIGKILL, as a crash would: its routes,
    /// rules and sets stay in the kernel, its socket file stays unanswered.
    pub fn kill_agent(&self, n: u32) -> Result<()> {
        let name = agent_name(n);
        let child = self.take_child(&name);
        let Some(mut child) = child else {
            return Err(E2eError::io(format!("kill {name}"))(std::io::ErrorKind::NotFound.into()));
        };
        let _ = child.kill();
        child.wait().map_err(E2eError::io(format!("wait for {name}")))?;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.processes.retain(|p| p.name != name);
        run::save(&st)
    }

    /// GETs `path` from node `n`'s agent: `/denied` from its root-only
    /// socket, the rest from `AGENT_HTTP` on the node netns's loopback. The
    /// head (status line and headers) and the body.
    pub fn agent_get(&self, n: u32, path: &str) -> Result<(String, String)> {
        let what = format!("GET {path} from node {n}'s agent");
        let reply = if path.starts_with("/denied") {
            let s = std::os::unix::net::UnixStream::connect(denied_socket(&self.run(), n))
                .map_err(E2eError::io(&what))?;
            s.set_read_timeout(Some(HTTP_TIMEOUT)).map_err(E2eError::io(&what))?;
            http_get(s, path).map_err(E2eError::io(&what))?
        } else {
            let netns =
                weft_netkit::netns::NetNs::open(self.node_netns(n)).map_err(E2eError::kernel(&what))?;
            weft_netkit::netns::run_in(&netns, || -> std::io::Result<String> {
                let s = std::net::TcpStream::connect(AGENT_HTTP)?;
                s.set_read_timeout(Some(HTTP_TIMEOUT))?;
                http_get(s, path)
            })
            .map_err(E2eError::kernel(&what))?
            .map_err(E2eError::io(&what))?
        };
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
        Ok((head.to_string(), body.to_string()))
    }

    /// The pid of node `n`'s agent, while it runs.
    pub fn agent_pid(&self, n: u32) -> Option<i32> {
        let name = agent_name(n);
        self.state().processes.iter().find(|p| p.name == name).map(|p| p.pid)
    }

    /// Node `n`'s agent status, if it has written one.
    pub fn agent_status(&self, n: u32) -> Option<Status> {
        read_status(&status_file(&self.run(), n))
    }

    /// Waits (polling, bounded by `timeout`) until every node's agent reports the
    /// current generation of the cluster dir (or, with the stand-in, of the API
    /// state it serves from the dir, which the agents' ClusterNetworkPolicy
    /// status writes move on too); returns their statuses, node 1 first.
    pub fn wait_converged(&self, timeout: Duration) -> Result<Vec<Status>> {
        let run = self.run();
        let mut generation = match self.standin() {
            Some(s) => s.refresh()?.generation,
            None => weft_agent::source::read_dir(&cluster_dir(&run)).generation,
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(now) = self.standin().and_then(|s| s.served()) {
                generation = now.generation;
            }
            let statuses: Vec<Option<Status>> = (1..=self.nodes()).map(|n| self.agent_status(n)).collect();
            if statuses.iter().all(|s| s.as_ref().is_some_and(|s| s.generation == generation)) {
                return Ok(statuses.into_iter().flatten().collect());
            }
            if Instant::now() >= deadline {
                let detail = statuses
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("node {}: {:?}", i + 1, s.as_ref().map(|s| &s.generation)))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(E2eError::NotConverged { run, generation, ms: timeout.as_millis(), detail });
            }
            std::thread::sleep(CONVERGE_POLL);
        }
    }

    /// How many syncs (the first, each periodic resync and each change of
    /// cluster state; not pod reports) node `n`'s agent has completed, from
    /// the counts of `weft_sync_duration_seconds` on its /metrics.
    pub fn agent_syncs(&self, n: u32) -> Result<u64> {
        Ok(sync_count(&self.agent_get(n, "/metrics")?.1))
    }

    /// Waits (polling, bounded by `timeout`) until node `n`'s agent has
    /// completed `more` syncs after this call. With `more` >= 2 at least one
    /// whole sync began after the call: the positive signal a test waits for
    /// before asserting that the agent did not change something.
    pub fn wait_syncs(&self, n: u32, more: u64, timeout: Duration) -> Result<()> {
        let base = self.agent_syncs(n)?;
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.agent_syncs(n)?.saturating_sub(base);
            if done >= more {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(E2eError::NoSync { node: n, want: more, done, ms: timeout.as_millis() });
            }
            std::thread::sleep(CONVERGE_POLL);
        }
    }

    /// Sends SIGTERM to node `n`'s agent and waits (bounded) for it to exit;
    /// true if it exited successfully (it deletes its routes first).
    pub fn stop_agent(&self, n: u32) -> Result<bool> {
        let name = agent_name(n);
        let child = self.take_child(&name);
        let Some(mut child) = child else {
            return Err(E2eError::io(format!("stop {name}"))(std::io::ErrorKind::NotFound.into()));
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            match child.try_wait().map_err(E2eError::io(format!("wait for {name}")))? {
                Some(s) => break Some(s),
                None if Instant::now() >= deadline => break None,
                None => std::thread::sleep(CONVERGE_POLL),
            }
        };
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.processes.retain(|p| p.name != name);
        run::save(&st)?;
        Ok(status.success())
    }
}

/// One GET of `path` on `s` (the agent answers and closes): the whole reply.
fn http_get(mut s: impl std::io::Read + std::io::Write, path: &str) -> std::io::Result<String> {
    s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The process name node `n`'s agent is recorded under.
pub fn agent_name(n: u32) -> String {
    format!("agent node {n}")
}

/// The syncs an agent's /metrics text counts: `weft_sync_duration_seconds_count`
/// of kinds full and change (pod reports are not syncs of the whole node).
fn sync_count(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("weft_sync_duration_seconds_count{kind=\""))
        .filter_map(|l| l.split_once("\"} "))
        .filter(|(kind, _)| matches!(*kind, "full" | "change"))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_are_the_full_and_change_counts() {
        let text = "# TYPE weft_sync_duration_seconds histogram\n\
            weft_sync_duration_seconds_bucket{kind=\"full\",le=\"+Inf\"} 4\n\
            weft_sync_duration_seconds_count{kind=\"full\"} 4\n\
            weft_sync_duration_seconds_count{kind=\"change\"} 3\n\
            weft_sync_duration_seconds_count{kind=\"pod\"} 9\n";
        assert_eq!(sync_count(text), 7);
        assert_eq!(sync_count(""), 0);
    }
}
