//! Running cases on a testbed: one testbed for every case with the same node
//! count (bringing one up costs seconds, resetting one to a case's initial
//! state a fraction of that), the reset, the steps, and the probes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipnetwork::IpNetwork;
use weft_agent::model::Protocol;

use super::case::{proto_name, Case, Change, Probe, ProbeKind, Source, Target};
use super::matrix::{Cell, Observed, Seen};
use super::{Backend, Mode, Options, StateSource};
use crate::error::{E2eError, Result};
use crate::family::{embed_net, translate_manifest, Family};
use crate::manifests::{namespace, to_yaml};
use crate::probe::{probe_in, Outcome, Proto};
use crate::services::{self, Service, ServicePort};
use crate::{exec_in, topology, Testbed};

/// Bound on one probe. Short, because a blocked cell costs all of it (the
/// cells of a matrix are probed at once, so a matrix costs about one timeout);
/// a connection inside the testbed takes well under a millisecond.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a cell that does not match is probed again before it counts: one
/// lost SYN on a loaded 2-core machine must not fail a case, while a policy
/// that is wrong stays wrong.
const PROBE_RETRIES: usize = 1;
/// Bound on the agents applying a change of cluster state (they poll every 100 ms).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one command inside a node.
const CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// The service CIDR the nodes route towards the lan (see `bring_up`).
const SERVICE_CIDR: &str = "10.96.0.0/12";

/// The testbed the cases run on, replaced when the node count changes.
pub(super) struct Runner<'a> {
    opts: &'a Options,
    tb: Option<Testbed>,
}

impl<'a> Runner<'a> {
    pub(super) fn new(opts: &'a Options) -> Runner<'a> {
        Runner { opts, tb: None }
    }

    /// A testbed with `nodes` nodes and agents running: the current one if it has
    /// that many, else a new one (the old one torn down first).
    pub(super) fn ensure(&mut self, nodes: u32) -> Result<&mut Testbed> {
        let tb = match self.tb.take() {
            Some(tb) if tb.nodes() == nodes => tb,
            Some(old) => {
                old.down()?;
                bring_up(nodes, self.opts)?
            }
            None => bring_up(nodes, self.opts)?,
        };
        Ok(self.tb.insert(tb))
    }

    /// Tears the current testbed down (after an error left it in an unknown state).
    pub(super) fn discard(&mut self) -> Result<()> {
        match self.tb.take() {
            Some(tb) => tb.down(),
            None => Ok(()),
        }
    }

    /// Ends the run: tears the testbed down, or with `keep` leaves it up and
    /// returns its name.
    pub(super) fn finish(mut self) -> Result<Option<String>> {
        if self.opts.keep.is_some() {
            // Opened without owning it (see `bring_up`): dropping it leaves it up.
            return Ok(self.tb.take().map(|tb| tb.run()));
        }
        self.discard().map(|()| None)
    }
}

fn cancelled(opts: &Options) -> Result<()> {
    match opts.cancel {
        Some(flag) if flag.load(Ordering::SeqCst) => Err(E2eError::Cancelled),
        _ => Ok(()),
    }
}

/// Brings up a testbed, routes the service CIDR in each node and starts the
/// agents with the backend's arguments. With `keep`, the run is created
/// under the given name (or a random one) and opened without owning it, so
/// that neither a drop nor the end of the process tears it down.
fn bring_up(nodes: u32, opts: &Options) -> Result<Testbed> {
    let tb = match &opts.keep {
        None => Testbed::up_in(nodes, opts.family)?,
        Some(name) => {
            let never = AtomicBool::new(false);
            let state = topology::up_in(nodes, name.as_deref(), opts.family, opts.cancel.unwrap_or(&never))?;
            Testbed::open(&state.run)?
        }
    };
    match prepare(&tb, opts) {
        Ok(()) => Ok(tb),
        Err(e) => {
            // Explicitly: a kept run is not torn down on drop.
            if let Err(d) = tb.down() {
                eprintln!("weft-e2e: teardown after a failed bring-up: {d}");
            }
            Err(e)
        }
    }
}

fn prepare(tb: &Testbed, opts: &Options) -> Result<()> {
    // The testbed's nodes have no default route (no traffic may leave the
    // run); a real node's default route covers the service CIDR, which
    // `node/N -> svc/...` probes need, so stand in for it with a route via
    // the lan, inside the node's netns only (as scenario node-to-clusterip does).
    // SERVICE_CIDR is a constant that parses.
    let v6 = embed_net(SERVICE_CIDR.parse().expect("a CIDR")).to_string();
    let v4 = opts.family.v4().then_some(SERVICE_CIDR);
    for cidr in v4.into_iter().chain(opts.family.v6().then_some(v6.as_str())) {
        for n in 1..=tb.nodes() {
            let node = tb.node_netns(n);
            let argv = ["ip", "route", "replace", cidr, "dev", "eth0"];
            let out = exec_in(&node, &argv, CMD_TIMEOUT)?;
            if !out.status.success() {
                let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
                return Err(E2eError::io(format!("{argv:?} in node {n}: {why}"))(
                    std::io::ErrorKind::Other.into(),
                ));
            }
        }
    }
    if opts.source == StateSource::Kube {
        // With the ClusterNetworkPolicy CRD installed, as a cluster running
        // the cases-cnp suite through the API has it.
        tb.start_standin()?.serve_cnp(true)?;
    }
    if opts.anti_spoofing {
        tb.set_anti_spoofing(true)?;
    }
    let mode = opts.mode.to_string();
    if opts.mode != Mode::HostGw {
        // As the agents' conflist says: pods must fit the overlay.
        tb.set_pod_mtu(Some(crate::plan::MTU - weft_agent::overlay::VXLAN_OVERHEAD))?;
    }
    let mut args: Vec<&str> = opts.backend.agent_args().to_vec();
    args.extend(["--mode", mode.as_str()]);
    args.extend(opts.agent_args.iter().map(String::as_str));
    tb.start_agents_with(&args)?;
    settle(tb, opts.backend)
}

/// After a change of cluster state: the weave reproduction re-renders its
/// rules (it has no agent of its own), then every agent must report the
/// cluster dir's generation.
fn settle(tb: &Testbed, backend: Backend) -> Result<()> {
    if backend == Backend::Weave196 {
        tb.apply_weave()?;
    }
    tb.wait_converged(CONVERGE_TIMEOUT).map(drop)
}

/// Runs `case` on `tb`; returns one report per probe that did not show what
/// the case expects (empty: the case passed). Err: the case could not run.
pub(super) fn run_case(tb: &mut Testbed, case: &Case, opts: &Options) -> Result<Vec<String>> {
    reset(tb, case, opts.backend)?;
    let mut failures = Vec::new();
    for (i, step) in case.steps.iter().enumerate() {
        cancelled(opts)?;
        for change in &step.changes {
            apply_change(tb, change, opts.family)?;
        }
        settle(tb, opts.backend)?;
        for (j, probe) in step.probes.iter().enumerate() {
            cancelled(opts)?;
            // In dual every probe runs once per family, with the same
            // expectation, both at once: a probe costs one timeout either way.
            let families = opts.family.singles();
            let tb: &Testbed = tb;
            let outcomes: Vec<Result<Option<String>>> = std::thread::scope(|s| {
                let runs: Vec<_> = families
                    .iter()
                    .map(|&f| s.spawn(move || run_probe(tb, probe, opts.explain, f)))
                    .collect();
                // A panic in a probe is the runner's bug: it goes on up.
                runs.into_iter().map(|r| r.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
            });
            for (family, outcome) in families.iter().zip(outcomes) {
                if let Some(diff) = outcome? {
                    let tag =
                        if opts.family == Family::Dual { format!(" [{family}]") } else { String::new() };
                    failures.push(format!("steps[{i}].probe[{j}] ({probe}){tag}:\n{diff}"));
                }
            }
        }
    }
    Ok(failures)
}

/// Brings the cluster state to `case`'s initial state with as little work as
/// possible: no policies or services; the case's namespaces with its labels;
/// a pod with the same name, node and ports is kept (relabelled if need be),
/// any other pod deleted and the case's missing ones created.
fn reset(tb: &mut Testbed, case: &Case, backend: Backend) -> Result<()> {
    let model = weft_agent::source::read_dir(&tb.cluster_dir()).model;
    for p in model.policies.values() {
        tb.delete_object("NetworkPolicy", Some(&p.namespace), &p.name)?;
    }
    for name in model.cluster_policies.keys() {
        tb.delete_object("ClusterNetworkPolicy", None, name)?;
    }
    for s in services::read(&tb.cluster_dir())?.values() {
        tb.delete_object("Service", Some(&s.namespace), &s.name)?;
    }
    let want: BTreeMap<&str, _> = case.pods.iter().map(|p| (p.name.as_str(), p)).collect();
    for rec in tb.pods() {
        match want.get(rec.name.as_str()) {
            Some(p) if p.node == rec.node && p.ports == rec.ports && rec.ip.is_some() => {
                if p.labels != rec.labels {
                    tb.set_pod_labels(&rec.name, p.labels.clone())?;
                }
            }
            _ => {
                tb.delete_pod(&rec.name)?;
            }
        }
    }
    let want_ns: BTreeSet<&str> = case.namespaces.iter().map(|n| n.name.as_str()).collect();
    for ns in model.namespaces.keys() {
        if !want_ns.contains(ns.as_str()) {
            tb.delete_object("Namespace", None, ns)?;
        }
    }
    for ns in &case.namespaces {
        if model.namespaces.get(&ns.name).map(|n| &n.labels) != Some(&ns.labels) {
            tb.apply(&to_yaml(&namespace(&ns.name, &ns.labels)))?;
        }
    }
    for p in &case.pods {
        if tb.pod(&p.name).is_none() {
            tb.add_pod_with(p.node, &p.name, p.labels.clone(), p.ports.clone())?;
        }
    }
    if !case.services.is_empty() {
        // One apply, so kube-proxy's rules are rewritten once.
        let docs: Vec<String> = case.services.iter().map(|s| s.to_yaml()).collect();
        tb.apply(&docs.join("---\n"))?;
    }
    settle(tb, backend)
}

fn apply_change(tb: &mut Testbed, change: &Change, family: Family) -> Result<()> {
    match change {
        Change::Apply { yaml, .. } => {
            let yaml = translate_manifest(yaml, family).map_err(|reason| E2eError::Manifest { reason })?;
            tb.apply(&yaml).map(drop)
        }
        Change::AddPod(p) => tb.add_pod_with(p.node, &p.name, p.labels.clone(), p.ports.clone()).map(drop),
        Change::Relabel { pod, labels } => tb.set_pod_labels(pod, labels.clone()),
        Change::DeletePod(name) => tb.delete_pod(name).map(drop),
        Change::Delete { kind, namespace, name } => {
            tb.delete_object(kind, namespace.as_deref(), name).map(drop)
        }
    }
}

/// One connection to make: from the netns at `netns` to `to`, answered by one of `servers`.
struct Job {
    netns: PathBuf,
    to: SocketAddr,
    servers: Vec<String>,
}

/// Runs every job at once, each on its own thread.
fn probe_all(jobs: &[Job], proto: Proto) -> Vec<Seen> {
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|j| {
                std::thread::Builder::new()
                    .name("weft-e2e-probe".into())
                    .spawn_scoped(s, move || probe_in(&j.netns, j.to, proto, PROBE_TIMEOUT))
            })
            .collect();
        handles
            .into_iter()
            .zip(jobs)
            .map(|(h, j)| {
                let outcome = match h {
                    Ok(h) => h.join().unwrap_or_else(|_| Ok(Outcome::Error("probe thread panicked".into()))),
                    Err(e) => Ok(Outcome::Error(format!("cannot start a probe thread: {e}"))),
                };
                classify(outcome, &j.servers)
            })
            .collect()
    })
}

/// Connected counts only when the expected server answered: the workload
/// replies with its pod's name, so an answer from another pod (a wrong
/// DNAT, a stale address) is not mistaken for a pass.
fn classify(outcome: Result<Outcome>, servers: &[String]) -> Seen {
    match outcome {
        Ok(Outcome::Connected(reply)) if servers.contains(&reply) => Seen::Connected,
        Ok(Outcome::Connected(reply)) => Seen::Odd(format!(
            "connected, but answered by {reply:?} (want {})",
            if servers.is_empty() {
                "an endpoint; the service has none".to_string()
            } else {
                servers.join(" or ")
            }
        )),
        Ok(Outcome::Timeout) | Ok(Outcome::Refused) => Seen::Blocked,
        Ok(other) => Seen::Odd(other.to_string()),
        Err(e) => Seen::Odd(format!("probe failed: {e}")),
    }
}

/// Probes `jobs`, then probes again (up to PROBE_RETRIES times) those whose
/// outcome does not satisfy `want`; returns the last outcome of each.
fn probe_with_retries(jobs: &[Job], want: &[Cell], proto: Proto) -> Vec<Seen> {
    let mut seen = probe_all(jobs, proto);
    for _ in 0..PROBE_RETRIES {
        let again: Vec<usize> = (0..jobs.len()).filter(|&i| !seen[i].satisfies(want[i])).collect();
        if again.is_empty() {
            break;
        }
        let retry: Vec<Job> = again
            .iter()
            .map(|&i| Job { netns: jobs[i].netns.clone(), to: jobs[i].to, servers: jobs[i].servers.clone() })
            .collect();
        for (i, s) in again.into_iter().zip(probe_all(&retry, proto)) {
            seen[i] = s;
        }
    }
    seen
}

/// The probed cells of a matrix where `weft-agent explain`, evaluating the
/// cluster state the agents applied, does not say what the probe saw.
fn explain_disagreements(
    tb: &Testbed,
    expect: &super::matrix::Matrix,
    seen: &[Vec<Seen>],
    port: u16,
    proto: Proto,
    family: Family,
) -> Vec<String> {
    let model = weft_agent::source::read_dir(&tb.cluster_dir()).model;
    let cluster: Vec<IpNetwork> =
        crate::pods::cluster_cidrs(Family::Dual).iter().filter_map(|c| c.parse().ok()).collect();
    // explain tells the family by the addresses: in IPv6, the pods' IPv6 ones.
    let pods: BTreeMap<String, Option<Ipv4Addr>> = tb.pods().into_iter().map(|p| (p.name, p.ip)).collect();
    let end = |name: &str| match (family, pods.get(name)) {
        (Family::Ipv6, Some(Some(ip))) => family.address(*ip).to_string(),
        _ => name.to_string(),
    };
    let proto = match proto {
        Proto::Tcp => Protocol::Tcp,
        Proto::Udp => Protocol::Udp,
    };
    let mut out = Vec::new();
    for (r, from) in expect.rows.iter().enumerate() {
        for (c, to) in expect.cols.iter().enumerate() {
            let observed = match seen[r][c] {
                Seen::Connected => true,
                Seen::Blocked => false,
                _ => continue,
            };
            match weft_agent::explain::explain(&model, &cluster, &end(from), &end(to), port, proto) {
                Ok(e) if e.allowed == observed && e.disagreement.is_none() => {}
                Ok(e) => out.push(format!(
                    "{from} -> {to}: observed {}, explain says\n{}",
                    if observed { "connected" } else { "blocked" },
                    e.to_string().lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n")
                )),
                Err(e) => out.push(format!("{from} -> {to}: explain failed: {e}")),
            }
        }
    }
    out
}

/// Runs one probe in `family` (ipv4 or ipv6: every address of the plan in
/// that family); None if it showed what the case expects, else the report.
fn run_probe(tb: &Testbed, probe: &Probe, explain: bool, family: Family) -> Result<Option<String>> {
    let pods: BTreeMap<String, (PathBuf, Option<Ipv4Addr>)> =
        tb.pods().into_iter().map(|p| (p.name, (p.path, p.ip))).collect();
    let pod = |name: &str| -> Result<(PathBuf, IpAddr)> {
        match pods.get(name) {
            Some((path, Some(ip))) => Ok((path.clone(), family.address(*ip))),
            _ => Err(E2eError::PodNotFound { run: tb.run(), name: name.into() }),
        }
    };
    match &probe.kind {
        ProbeKind::Matrix { port, expect } => {
            let mut seen = vec![vec![Seen::Skipped; expect.cols.len()]; expect.rows.len()];
            let (mut jobs, mut want, mut at) = (Vec::new(), Vec::new(), Vec::new());
            for (r, from) in expect.rows.iter().enumerate() {
                for (c, to) in expect.cols.iter().enumerate() {
                    if from == to {
                        seen[r][c] = Seen::Diagonal;
                        continue;
                    }
                    if expect.cells[r][c] == Cell::Any {
                        continue;
                    }
                    let (netns, _) = pod(from)?;
                    let (_, ip) = pod(to)?;
                    jobs.push(Job { netns, to: SocketAddr::from((ip, *port)), servers: vec![to.clone()] });
                    want.push(expect.cells[r][c]);
                    at.push((r, c));
                }
            }
            for ((r, c), s) in at.into_iter().zip(probe_with_retries(&jobs, &want, probe.proto)) {
                seen[r][c] = s;
            }
            let disagree = if explain {
                explain_disagreements(tb, expect, &seen, *port, probe.proto, family)
            } else {
                Vec::new()
            };
            let observed = Observed { expect, seen };
            let bad = observed.mismatches().len();
            if bad == 0 && disagree.is_empty() {
                return Ok(None);
            }
            let mut report = String::new();
            if bad > 0 {
                report += &format!("    {bad} cell(s) differ\n{}", observed.render_diff("    "));
            }
            for d in disagree {
                report += &format!("    explain disagrees: {d}\n");
            }
            Ok(Some(report))
        }
        ProbeKind::Single { from, to, allow } => {
            let netns = match from {
                Source::Pod(p) => pod(p)?.0,
                Source::Ext => tb.ext_netns(),
                Source::Node(n) => tb.node_netns(*n),
            };
            let (addr, servers) = match to {
                Target::Pod { name, port } => (SocketAddr::from((pod(name)?.1, *port)), vec![name.clone()]),
                Target::Service { namespace, name, cluster_ip, port } => {
                    let key = format!("{namespace}/{name}");
                    let servers = endpoints(tb, probe.proto, |svc, sp| svc.key() == key && sp.port == *port)?;
                    (SocketAddr::new(family.address(*cluster_ip), *port), servers)
                }
                Target::NodePort { node, port } => {
                    let servers = endpoints(tb, probe.proto, |_, sp| sp.node_port == Some(*port))?;
                    (SocketAddr::new(family.address(tb.node_addr(*node)), *port), servers)
                }
            };
            let want = if *allow { Cell::Allow } else { Cell::Deny };
            let job = Job { netns, to: addr, servers };
            let seen = probe_with_retries(std::slice::from_ref(&job), &[want], probe.proto);
            let seen = seen.into_iter().next().unwrap_or(Seen::Skipped);
            if seen.satisfies(want) {
                return Ok(None);
            }
            let got = match seen {
                Seen::Connected => "allow (connected)".to_string(),
                Seen::Blocked => "deny (timeout or refused)".to_string(),
                Seen::Odd(why) => why,
                Seen::Skipped | Seen::Diagonal => "nothing (not probed)".to_string(),
            };
            Ok(Some(format!(
                "    expected {}, observed {got} ({addr} {})\n",
                if *allow { "allow" } else { "deny" },
                proto_name(probe.proto)
            )))
        }
    }
}

/// The pods ("ns/name") behind the service ports `pick` chooses for `proto`
/// in the testbed's cluster dir,
/// as the kube-proxy imitation derives endpoints: selected, with an IP, and
/// declaring the target port.
fn endpoints(
    tb: &Testbed,
    proto: Proto,
    pick: impl Fn(&Service, &ServicePort) -> bool,
) -> Result<Vec<String>> {
    let dir = tb.cluster_dir();
    let model = weft_agent::source::read_dir(&dir).model;
    let protocol = match proto {
        Proto::Tcp => Protocol::Tcp,
        Proto::Udp => Protocol::Udp,
    };
    let mut out = Vec::new();
    for svc in services::read(&dir)?.values() {
        for sp in svc.ports.iter().filter(|sp| sp.protocol == protocol && pick(svc, sp)) {
            for pod in model.pods.values() {
                if svc.selects(pod) && pod.resolve_port(&sp.target_port, sp.protocol).is_some() {
                    out.push(pod.key());
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connected_means_the_right_server_answered() {
        let servers = vec!["y/a".to_string()];
        assert_eq!(classify(Ok(Outcome::Connected("y/a".into())), &servers), Seen::Connected);
        assert!(
            matches!(classify(Ok(Outcome::Connected("y/b".into())), &servers), Seen::Odd(w) if w.contains("\"y/b\""))
        );
        assert!(
            matches!(classify(Ok(Outcome::Connected(String::new())), &[]), Seen::Odd(w) if w.contains("has none"))
        );
        assert_eq!(classify(Ok(Outcome::Timeout), &servers), Seen::Blocked);
        assert_eq!(classify(Ok(Outcome::Refused), &servers), Seen::Blocked);
        assert!(matches!(classify(Ok(Outcome::Unreachable("no route".into())), &servers), Seen::Odd(_)));
        assert!(
            matches!(classify(Err(E2eError::Cancelled), &servers), Seen::Odd(w) if w.starts_with("probe failed"))
        );
    }
}
