//! A synthetic cluster for the policy benchmarks (`make bench`) and their
//! tiny-scale test: PODS pods over 3 nodes in PODS/10 namespaces (at most
//! 100; labelled team), each namespace's pods spread over 10 apps and two
//! roles; POLICIES policies of the usual shapes, each selecting one app of
//! its namespace: ingress from a role of the namespace on one port and from
//! another team's namespaces on another, default denies, ipBlocks with an
//! except, egress to DNS and the namespace. Policies differ in their ports,
//! so none is a copy of another. `measure` applies node-1's share with a
//! backend in a network namespace of its own and measures.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use weft_agent::backend::{ObjectCounts, PolicyBackend};
use weft_agent::iptables::Iptables;
use weft_agent::model::manifest::labels;
use weft_agent::model::{
    LabelSelector, Model, Namespace, NetworkPolicy, Node, Peer, Pod, PolicyPort, PortRef, Protocol, Rule,
};
use weft_agent::nft::Nft;
use weft_agent::policy::{compile, PolicyIr};

/// The synthetic model.
pub fn model(pods: usize, policies: usize) -> Model {
    let mut m = Model::default();
    for n in 0..3u32 {
        let cidr = format!("10.{}.0.0/16", 100 + n).parse().ok();
        let name = format!("node-{}", n + 1);
        m.nodes.insert(
            name.clone(),
            Node { name, pod_cidr: cidr, internal_ip: Some(Ipv4Addr::new(172, 31, 0, 11 + n as u8)) },
        );
    }
    let namespaces = (pods / 10).clamp(1, 100);
    for i in 0..namespaces {
        let name = format!("ns-{i}");
        let l = labels([("team", format!("t{}", i % 10)), ("kubernetes.io/metadata.name", name.clone())]);
        m.namespaces.insert(name.clone(), Namespace { name, labels: l });
    }
    for p in 0..pods {
        let node = (p % 3) as u32;
        let k = (p / 3) as u32;
        let ip = Ipv4Addr::new(10, 100 + node as u8, (k / 250) as u8, (k % 250 + 2) as u8);
        let pod = synthetic_pod(namespaces, p, &format!("node-{}", node + 1), ip);
        m.pods.insert(pod.key(), pod);
    }
    for i in 0..policies {
        let ns = format!("ns-{}", i % namespaces);
        // The n-th policy of its namespace: the app it selects, and its ports.
        let nth = i / namespaces;
        let (app, variant) = (nth % 10, (nth / 10) as u16);
        let port = |n: u16, protocol| PolicyPort { protocol, port: Some(PortRef::Number(n)), end_port: None };
        let sel = |k: &str, v: String| LabelSelector::of_labels([(k, v.as_str())]);
        let (ingress, egress) = match i % 10 {
            // A default deny.
            0 => (Some(vec![]), None),
            // Egress to DNS and to the app's own namespace.
            7 => (
                None,
                Some(vec![
                    Rule { peers: vec![], ports: vec![port(53, Protocol::Udp), port(53, Protocol::Tcp)] },
                    Rule {
                        peers: vec![Peer::Pods { namespaces: None, pods: LabelSelector::default() }],
                        ports: vec![],
                    },
                ]),
            ),
            // ipBlock with an except, one port.
            8 => (
                Some(vec![Rule {
                    peers: vec![Peer::IpBlock {
                        cidr: "10.0.0.0/8".parse().unwrap(),
                        except: vec!["10.100.0.0/16".parse().unwrap()],
                    }],
                    ports: vec![port(9090 + variant, Protocol::Tcp)],
                }]),
                None,
            ),
            // The common shape: a role of the namespace on 8080, other teams on 443.
            _ => (
                Some(vec![
                    Rule {
                        peers: vec![Peer::Pods { namespaces: None, pods: sel("role", "client".into()) }],
                        ports: vec![port(8080 + variant, Protocol::Tcp)],
                    },
                    Rule {
                        peers: vec![Peer::Pods {
                            namespaces: Some(sel("team", format!("t{}", (i + 1) % 10))),
                            pods: LabelSelector::default(),
                        }],
                        ports: vec![port(443 + variant, Protocol::Tcp)],
                    },
                ]),
                None,
            ),
        };
        let p = NetworkPolicy {
            namespace: ns,
            name: format!("policy-{i}"),
            pod_selector: sel("app", format!("a{app}")),
            ingress,
            egress,
            audit: false,
        };
        m.policies.insert(p.key(), p);
    }
    m
}

/// Runs `f` on a thread in a new network namespace (the tools it runs live there too).
pub fn in_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    weft_netkit::netns::run_in_new(f).expect("a network namespace of its own: run as root")
}

/// The time of one step of the pipeline a change goes through in the agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Model -> IR.
    pub compile: Duration,
    /// IR -> the backend's sets and rules.
    pub render: Duration,
    /// Into the kernel.
    pub apply: Duration,
}

impl Step {
    /// From the change to the kernel reflecting it.
    pub fn total(&self) -> Duration {
        self.compile + self.render + self.apply
    }
}

/// Lag percentiles of the churn run, from a change to the kernel reflecting it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Churn {
    /// Changes (pods created plus pods deleted) made.
    pub changes: usize,
    /// Agent cycles (compile, render, apply) that took them in.
    pub cycles: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// One backend's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub backend: String,
    pub rules: usize,
    pub sets: usize,
    pub elements: usize,
    /// Full sync from a cold start: the whole model to rules in the kernel.
    pub full: Step,
    /// One pod added on this node (what a CNI ADD waits for), one pod
    /// relabelled, one policy changed.
    pub changes: [Step; 3],
    /// A periodic resync of the unchanged model (checks the kernel).
    pub resync: Step,
    /// The process's peak resident memory after the full sync, KiB.
    pub peak_rss_kib: u64,
    pub churn: Option<Churn>,
}

/// The backends `backends` measures.
pub const BACKENDS: [&str; 2] = ["iptables", "nftables"];

/// A backend, with its render and kernel steps apart so each is timed.
enum Backend {
    Iptables(Iptables),
    Nft(Nft),
}

impl Backend {
    fn new(name: &str) -> Backend {
        if name == "iptables" {
            Backend::Iptables(Iptables::new())
        } else {
            Backend::Nft(Nft::new())
        }
    }

    /// Renders and applies `ir`: (render time, apply time, what is in force).
    fn apply(&mut self, ir: &PolicyIr, full: bool) -> (Duration, Duration, ObjectCounts) {
        let t0 = Instant::now();
        match self {
            Backend::Iptables(b) => {
                let r = weft_agent::iptables::render(ir);
                let t1 = Instant::now();
                b.apply(&r, full).expect("iptables apply");
                (t1 - t0, t1.elapsed(), r.counts())
            }
            Backend::Nft(b) => {
                let r = weft_agent::nft::render(ir);
                let t1 = Instant::now();
                b.apply(&r, full).expect("nft apply");
                (t1 - t0, t1.elapsed(), r.counts())
            }
        }
    }

    fn cleanup(&mut self) {
        let _ = match self {
            Backend::Iptables(b) => PolicyBackend::cleanup(b),
            Backend::Nft(b) => PolicyBackend::cleanup(b),
        };
    }
}

/// Compiles, renders and applies `m` for node-1 with `backend`; the step's
/// times and what is in force.
fn sync(m: &Model, backend: &mut Backend, full: bool) -> (Step, ObjectCounts) {
    let t0 = Instant::now();
    let (ir, _) = compile(m, "node-1", cluster_cidr());
    let compile = t0.elapsed();
    let (render, apply, counts) = backend.apply(&ir, full);
    (Step { compile, render, apply }, counts)
}

fn cluster_cidr() -> Option<ipnetwork::Ipv4Network> {
    "10.100.0.0/14".parse().ok()
}

/// Measures one backend on node-1's share of `model(pods, policies)`, in a
/// network namespace of its own (root); with `churn_secs`, also the churn run.
pub fn measure(backend_name: &str, pods: usize, policies: usize, churn_secs: u64) -> Figures {
    let m = model(pods, policies);
    in_netns(|| {
        let mut backend = Backend::new(backend_name);
        let (full, ObjectCounts { rules, sets, elements }) = sync(&m, &mut backend, true);
        let peak_rss_kib = peak_rss_kib();
        let mut m2 = m.clone();
        let mut changes = [Step::default(); 3];
        // A pod on node-1 that policies select and that is a peer of others.
        let new_pod = synthetic_pod(m.namespaces.len(), NEW_POD, "node-1", Ipv4Addr::new(10, 100, 250, 2));
        m2.pods.insert(new_pod.key(), new_pod);
        changes[0] = sync(&m2, &mut backend, false).0;
        if let Some(p) = m2.pods.values_mut().find(|p| p.node.as_deref() == Some("node-1")) {
            let role =
                if p.labels.get("role").map(String::as_str) == Some("client") { "server" } else { "client" };
            p.labels.insert("role".into(), role.into());
        }
        changes[1] = sync(&m2, &mut backend, false).0;
        if let Some(port) = m2
            .policies
            .values_mut()
            .find(|p| p.name == "policy-1")
            .and_then(|p| p.ingress.as_mut())
            .and_then(|rules| rules.first_mut())
            .and_then(|r| r.ports.first_mut())
        {
            port.port = Some(PortRef::Number(8081));
        }
        changes[2] = sync(&m2, &mut backend, false).0;
        let resync = sync(&m2, &mut backend, true).0;
        let churn = (churn_secs > 0).then(|| churn(&m2, &mut backend, Duration::from_secs(churn_secs)));
        backend.cleanup();
        Figures {
            backend: backend_name.to_string(),
            rules,
            sets,
            elements,
            full,
            changes,
            resync,
            peak_rss_kib,
            churn,
        }
    })
}

/// Measures both backends in this process (the tiny-scale test; `make bench`
/// runs `measure` in a process per backend so each peak RSS is its own).
pub fn backends(pods: usize, policies: usize, churn_secs: u64) -> Vec<Figures> {
    BACKENDS.iter().map(|b| measure(b, pods, policies, churn_secs)).collect()
}

const NEW_POD: usize = usize::MAX;

/// Pod number `p` as `model` makes them, on `node` at `ip`.
fn synthetic_pod(namespaces: usize, p: usize, node: &str, ip: Ipv4Addr) -> Pod {
    let namespaces = namespaces.max(1);
    // The pod's number in its namespace: its app, and every other ten a client.
    let nth = p / namespaces;
    Pod {
        namespace: format!("ns-{}", p % namespaces),
        name: format!("pod-{p}"),
        labels: labels([
            ("app", format!("a{}", nth % 10)),
            ("role", ["client", "server"][(nth / 10) % 2].to_string()),
        ]),
        node: Some(node.to_string()),
        ip: Some(ip),
        host_network: false,
        ports: vec![],
    }
}

/// 100 pods created and 100 deleted per second, on every node, while the
/// agent loop (compile, render, apply the changes pending) keeps up; the lag
/// of each change from when it was made to when the kernel reflected it.
fn churn(m: &Model, backend: &mut Backend, secs: Duration) -> Churn {
    const PER_SECOND: u32 = 100;
    let namespaces = m.namespaces.len();
    let mut m = m.clone();
    let start = Instant::now();
    let interval = Duration::from_secs(1) / PER_SECOND;
    let (mut made, mut cycles) = (0usize, 0usize);
    let mut lags: Vec<Duration> = Vec::new();
    // The churned pods: created, then deleted a second later.
    let mut live: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    while start.elapsed() < secs {
        // The changes due by now, each at its scheduled time.
        let due = (start.elapsed().as_nanos() / interval.as_nanos()) as usize + 1;
        let mut pending = Vec::new();
        while made < due {
            let at = start + interval * made as u32;
            let p = 1_000_000 + made;
            let k = made as u32;
            let ip = Ipv4Addr::new(
                10,
                100 + (k % 3) as u8,
                200 + ((k / 3 / 250) % 50) as u8,
                (k / 3 % 250 + 2) as u8,
            );
            let pod = synthetic_pod(namespaces, p, &format!("node-{}", k % 3 + 1), ip);
            live.push_back(pod.key());
            m.pods.insert(pod.key(), pod);
            pending.push(at);
            if live.len() > PER_SECOND as usize {
                if let Some(old) = live.pop_front() {
                    m.pods.remove(&old);
                    pending.push(at);
                }
            }
            made += 1;
        }
        if pending.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        sync(&m, backend, false);
        cycles += 1;
        let done = Instant::now();
        lags.extend(pending.into_iter().map(|at| done.saturating_duration_since(at)));
    }
    lags.sort();
    let pct =
        |q: f64| lags.get(((lags.len() as f64 * q) as usize).min(lags.len().saturating_sub(1))).copied();
    Churn {
        changes: lags.len(),
        cycles,
        p50: pct(0.5).unwrap_or_default(),
        p90: pct(0.9).unwrap_or_default(),
        p99: pct(0.99).unwrap_or_default(),
        max: lags.last().copied().unwrap_or_default(),
    }
}

/// VmHWM of this process, KiB (0 if unreadable).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// The control-plane figures as a Markdown table, a row per backend.
pub fn table(pods: usize, policies: usize, figures: &[Figures]) -> String {
    let mut s = format!(
        "{pods} pods, {policies} policies (node-1's share). Each time is compile + render + apply = total, ms.\n\n\
         | backend | rules | sets | elements | full sync | pod added | pod relabelled | policy changed | resync | peak RSS MiB |\n\
         |---|---|---|---|---|---|---|---|---|---|\n"
    );
    let step =
        |t: &Step| format!("{} + {} + {} = **{}**", ms(t.compile), ms(t.render), ms(t.apply), ms(t.total()));
    for f in figures {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |\n",
            f.backend,
            f.rules,
            f.sets,
            f.elements,
            step(&f.full),
            step(&f.changes[0]),
            step(&f.changes[1]),
            step(&f.changes[2]),
            step(&f.resync),
            f.peak_rss_kib as f64 / 1024.0
        );
    }
    if figures.iter().any(|f| f.churn.is_some()) {
        s += "\nChurn: 100 pods created and 100 deleted per second; lag from a change to the kernel reflecting it, ms.\n\n\
              | backend | changes | agent cycles | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|---|\n";
        for f in figures {
            if let Some(c) = &f.churn {
                s += &format!(
                    "| {} | {} | {} | {} | {} | {} | {} |\n",
                    f.backend,
                    c.changes,
                    c.cycles,
                    ms(c.p50),
                    ms(c.p90),
                    ms(c.p99),
                    ms(c.max)
                );
            }
        }
    }
    s
}
