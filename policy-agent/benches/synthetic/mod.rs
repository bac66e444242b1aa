//! A synthetic cluster for the policy benchmarks (`make bench`) and their
//! tiny-scale test: PODS pods over 3 nodes in PODS/10 namespaces (at most
//! 100; labelled team), each namespace's pods spread over 10 apps and two
//! roles; POLICIES policies of the usual shapes, each selecting one app of
//! its namespace: ingress from a role of the namespace on one port and from
//! another team's namespaces on another, default denies, ipBlocks with an
//! except, egress to DNS and the namespace. Policies differ in their ports,
//! so none is a copy of another. `measure` applies node-1's share with a
//! backend in a network namespace of its own and measures.

mod cnp;

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
use weft_agent::policy::{Dirty, Options, PolicyEngine, PolicyIr};

/// The synthetic model.
pub fn model(pods: usize, policies: usize) -> Model {
    let mut m = Model::default();
    for n in 0..3u32 {
        let cidr = format!("10.{}.0.0/16", 100 + n).parse().ok();
        let name = format!("node-{}", n + 1);
        m.nodes.insert(
            name.clone(),
            Node {
                name,
                labels: Default::default(),
                pod_cidr: cidr,
                pod_cidr6: None,
                internal_ip: Some(Ipv4Addr::new(172, 31, 0, 11 + n as u8)),
                addresses: vec![],
                internal_ip6: None,
            },
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
        m.pods.insert(pod.key(), pod.into());
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
        std::sync::Arc::make_mut(&mut m.policies).insert(p.key(), p.into());
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

/// How many changes of each kind `measure` makes and times.
pub const CHANGES: usize = 20;

/// The median and 99th percentile of a kind of change (by total time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Changes made and timed.
    pub samples: usize,
    pub p50: Step,
    pub p99: Step,
}

impl Percentiles {
    fn of(mut steps: Vec<Step>) -> Percentiles {
        steps.sort_by_key(Step::total);
        Percentiles {
            samples: steps.len(),
            p50: nearest(&steps, 0.5).unwrap_or_default(),
            p99: nearest(&steps, 0.99).unwrap_or_default(),
        }
    }
}

/// The `q` quantile of `sorted` (nearest rank); None if it is empty.
fn nearest<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    sorted.get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1))).copied()
}

/// Which model `measure` runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelKind {
    /// `model`: the benchmark's synthetic model.
    Synthetic,
    /// `mix_model`: a mix of the shapes real clusters hold.
    Mix,
}

impl std::str::FromStr for ModelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<ModelKind, String> {
        match s {
            "synthetic" => Ok(ModelKind::Synthetic),
            "mix" => Ok(ModelKind::Mix),
            _ => Err(format!("unknown model {s:?}: synthetic or mix")),
        }
    }
}

impl ModelKind {
    fn build(self, pods: usize, policies: usize) -> Model {
        match self {
            ModelKind::Synthetic => model(pods, policies),
            ModelKind::Mix => mix_model(pods, policies),
        }
    }

    /// The `n`-th pod this benchmark adds on node-1.
    fn new_pod(self, namespaces: usize, n: usize) -> Pod {
        let ip = Ipv4Addr::new(10, 100, 250, 2 + n as u8);
        match self {
            ModelKind::Synthetic => synthetic_pod(namespaces, NEW_POD - n, "node-1", ip),
            ModelKind::Mix => {
                Pod { name: format!("new-pod-{n}"), node: Some("node-1".into()), ..mix_pod(3 * n, ip) }
            }
        }
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
    /// Pods added on this node (what a CNI ADD waits for), pods
    /// relabelled, policies changed, ClusterNetworkPolicies changed (only
    /// with some in the model): each kind `CHANGES` times.
    pub changes: [Percentiles; 4],
    /// A resync of the unchanged model as it was done before the loop's
    /// resync: a full compile, render and apply (the kernel checked).
    pub resync: Step,
    /// The agent loop's periodic resync: the engine brought up to date
    /// (compile: nothing changed), what changed patched and the loop's share
    /// of the kernel check (apply: taking the check, and the resync on the
    /// loop when the check cannot say or finds drift). The first after the
    /// changes above (iptables lists its chains for the first time since a
    /// write, and rewrites them, on the loop), then the steady state.
    #[serde(default)]
    pub loop_resync: [Step; 2],
    /// The same resyncs' kernel check off the loop (a thread's time; zero
    /// where the backend could not check off the loop).
    #[serde(default)]
    pub off_loop_check: [Duration; 2],
    /// The loop's share of the engine's safety net: comparing the IR with a
    /// compile from scratch (made on a thread, timed as `resync.compile`).
    #[serde(default)]
    pub ir_compare: Duration,
    /// The process's peak resident memory after the full sync, KiB.
    pub peak_rss_kib: u64,
    pub churn: Option<Churn>,
    /// Why the run stopped short: the full sync or a change failed to apply
    /// (the figures before it stand).
    #[serde(default)]
    pub error: Option<String>,
    /// `cluster_triples` of the full sync's IR: the size of the CNP regions.
    #[serde(default)]
    pub cluster_triples: usize,
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

    /// Renders and applies `ir`: (render time, apply time, what was
    /// rendered, the apply's error if it failed: a figure too, e.g. a tool
    /// that did not finish in its deadline).
    fn apply(&mut self, ir: &PolicyIr, full: bool) -> (Duration, Duration, ObjectCounts, Option<String>) {
        let t0 = Instant::now();
        let (counts, done) = match self {
            Backend::Iptables(b) => {
                let r = weft_agent::iptables::render(ir);
                (r.counts(), (Instant::now(), b.apply(&r, full).map(|_| ()).map_err(|e| format!("{e}"))))
            }
            Backend::Nft(b) => {
                let r = weft_agent::nft::render(ir);
                (r.counts(), (Instant::now(), b.apply(&r, full).map(|_| ()).map_err(|e| format!("{e}"))))
            }
        };
        let (t1, done) = done;
        (t1 - t0, t1.elapsed(), counts, done.err())
    }

    /// Applies what `dirty` names: the apply time.
    fn apply_changes(&mut self, ir: &PolicyIr, dirty: &Dirty) -> Result<Duration, String> {
        let t0 = Instant::now();
        let done = match self {
            Backend::Iptables(b) => PolicyBackend::apply_changes(b, ir, dirty),
            Backend::Nft(b) => PolicyBackend::apply_changes(b, ir, dirty),
        };
        done.map(|_| t0.elapsed()).map_err(|e| format!("{e}"))
    }

    /// The periodic resync's check off the loop (`PolicyBackend::check`).
    fn check(&self) -> Option<weft_agent::backend::KernelCheck> {
        match self {
            Backend::Iptables(b) => PolicyBackend::check(b),
            Backend::Nft(b) => PolicyBackend::check(b),
        }
    }

    fn epoch(&self) -> u64 {
        match self {
            Backend::Iptables(b) => PolicyBackend::epoch(b),
            Backend::Nft(b) => PolicyBackend::epoch(b),
        }
    }

    /// The periodic resync (`PolicyBackend::resync`).
    fn resync(&mut self, ir: &PolicyIr) -> Result<(), String> {
        let done = match self {
            Backend::Iptables(b) => PolicyBackend::resync(b, ir),
            Backend::Nft(b) => PolicyBackend::resync(b, ir),
        };
        done.map(drop).map_err(|e| format!("{e}"))
    }

    fn cleanup(&mut self) {
        let _ = match self {
            Backend::Iptables(b) => PolicyBackend::cleanup(b),
            Backend::Nft(b) => PolicyBackend::cleanup(b),
        };
    }
}

/// The most (subject, cell, peer) triples of ClusterNetworkPolicy regions
/// the benchmark renders: past it the renderers' output runs into GBs (100
/// CNPs at 1k pods: 5.3 M triples, 4-8 GiB) and would take the machine.
const CLUSTER_TRIPLES_BUDGET: usize = 1_000_000;

/// (subject, cell, peer) triples in `ir`'s ClusterNetworkPolicy regions that
/// are spelled out as set elements, IPv4 (the synthetic models are IPv4):
/// about what the nftables renderer makes elements of (iptables enumerates
/// the ports of a cell too). Regions past `MAX_REGION_ELEMENTS` are rules
/// over subject and peer sets (`Class::grouped`) and count their sum.
pub fn cluster_triples(ir: &PolicyIr) -> usize {
    let c = &ir.v4.cluster;
    [&c.admin_ingress, &c.admin_egress, &c.baseline_ingress, &c.baseline_egress]
        .into_iter()
        .flatten()
        .flat_map(|class| {
            class.regions.iter().map(move |r| {
                if class.grouped(r) {
                    class.subjects.len() + r.peers.len()
                } else {
                    class.subjects.len() * r.cells.len() * r.peers.len()
                }
            })
        })
        .sum()
}

/// A full compile of `m` for node-1, rendered and applied; the engine,
/// the step's times, what was rendered and the apply's error if it failed
/// (or why it was not rendered).
fn sync_full(m: &Model, backend: &mut Backend) -> (PolicyEngine, Step, ObjectCounts, Option<String>) {
    let t0 = Instant::now();
    let mut engine = PolicyEngine::new(m, "node-1", &cluster_cidr(), Options::default());
    let compile = t0.elapsed();
    engine.take_dirty();
    let triples = cluster_triples(engine.ir());
    if triples > CLUSTER_TRIPLES_BUDGET {
        let why = format!(
            "not rendered: {triples} ClusterNetworkPolicy (subject, cell, peer) triples, \
             over the benchmark's budget of {CLUSTER_TRIPLES_BUDGET}"
        );
        return (engine, Step { compile, ..Step::default() }, ObjectCounts::default(), Some(why));
    }
    let (render, apply, counts, error) = backend.apply(engine.ir(), true);
    (engine, Step { compile, render, apply }, counts, error)
}

/// A change from `old` to `new` as the agent takes it: the engine
/// recompiles what changed and the backend patches it (render is part of apply).
fn sync_change(
    engine: &mut PolicyEngine,
    old: &Model,
    new: &Model,
    backend: &mut Backend,
) -> Result<Step, String> {
    let t0 = Instant::now();
    engine.update(old, new);
    let dirty = engine.take_dirty();
    let compile = t0.elapsed();
    let apply = backend.apply_changes(engine.ir(), &dirty)?;
    Ok(Step { compile, render: Duration::ZERO, apply })
}

/// The agent loop's periodic resync of `m` (unchanged since the last sync),
/// as the agent makes it: the engine brought up to date and what changed
/// patched (compile), the kernel check taken (apply) and run on a thread
/// (the second figure), and the backend's resync on the loop (apply) only
/// where the check could not say the kernel is intact.
fn sync_resync(
    engine: &mut PolicyEngine,
    m: &Model,
    backend: &mut Backend,
) -> Result<(Step, Duration), String> {
    let t0 = Instant::now();
    // The agent lays the pod reports over a copy of the model (Arcs: cheap).
    let now = m.clone();
    engine.update(m, &now);
    let dirty = engine.take_dirty();
    let patched = backend.apply_changes(engine.ir(), &dirty)?;
    let compile = t0.elapsed() - patched;
    let t1 = Instant::now();
    let check = backend.check();
    let mut on_loop = t1.elapsed();
    let mut off_loop = Duration::ZERO;
    let intact = check.is_some_and(|c| {
        let t = Instant::now();
        let intact = std::thread::spawn(c.run).join().unwrap_or(false);
        off_loop = t.elapsed();
        intact && c.epoch == backend.epoch()
    });
    if !intact {
        let t = Instant::now();
        backend.resync(engine.ir())?;
        on_loop += t.elapsed();
    }
    Ok((Step { compile, render: Duration::ZERO, apply: patched + on_loop }, off_loop))
}

fn cluster_cidr() -> Vec<ipnetwork::IpNetwork> {
    vec!["10.100.0.0/14".parse().expect("a CIDR")]
}

/// Measures one backend on node-1's share of `kind`'s model at (pods,
/// policies) plus `cnps` ClusterNetworkPolicies (`cnp::add_cnps`), in a
/// network namespace of its own (root); with `churn_secs`, also the churn run.
pub fn measure(
    backend_name: &str,
    kind: ModelKind,
    pods: usize,
    policies: usize,
    cnps: usize,
    churn_secs: u64,
) -> Figures {
    let mut m = kind.build(pods, policies);
    cnp::add_cnps(&mut m, cnps);
    in_netns(|| {
        let mut backend = Backend::new(backend_name);
        let (mut engine, full, ObjectCounts { rules, sets, elements }, error) = sync_full(&m, &mut backend);
        let mut figures = Figures {
            backend: backend_name.to_string(),
            rules,
            sets,
            elements,
            full,
            changes: Default::default(),
            resync: Step::default(),
            loop_resync: Default::default(),
            off_loop_check: Default::default(),
            ir_compare: Duration::ZERO,
            peak_rss_kib: peak_rss_kib(),
            churn: None,
            error,
            cluster_triples: cluster_triples(engine.ir()),
        };
        if figures.error.is_some() {
            backend.cleanup();
            return figures;
        }
        let mut m = m;
        // The first change that failed to apply (the kinds after it are not measured).
        let mut failed: Option<String> = None;
        let mut timed = |engine: &mut PolicyEngine, m: &mut Model, change: &dyn Fn(&mut Model) -> bool| {
            let mut steps = Vec::new();
            for _ in 0..CHANGES {
                let mut next = m.clone();
                if failed.is_some() || !change(&mut next) {
                    break;
                }
                match sync_change(engine, m, &next, &mut backend) {
                    Ok(step) => steps.push(step),
                    Err(e) => failed = Some(format!("a change: {e}")),
                }
                *m = next;
            }
            Percentiles::of(steps)
        };
        let namespaces = m.namespaces.len();
        let added = std::cell::Cell::new(0);
        let add = |m: &mut Model| {
            let pod = kind.new_pod(namespaces, added.get());
            added.set(added.get() + 1);
            m.pods.insert(pod.key(), pod.into()).is_none()
        };
        let relabelled = std::cell::Cell::new(0);
        let relabel = |m: &mut Model| {
            let nth = relabelled.get();
            relabelled.set(nth + 1);
            let local = m.pods.values().filter(|p| p.node.as_deref() == Some("node-1")).count().max(1);
            let Some(p) =
                m.pods.values_mut().filter(|p| p.node.as_deref() == Some("node-1")).nth(nth * 7 % local)
            else {
                return false;
            };
            let p = std::sync::Arc::make_mut(p);
            for (k, a, b) in [("role", "client", "server"), ("tier", "web", "db")] {
                if let Some(v) = p.labels.get_mut(k) {
                    *v = if v == a { b.into() } else { a.into() };
                }
            }
            true
        };
        let changed = std::cell::Cell::new(0);
        let change_policy = |m: &mut Model| {
            let nth = changed.get();
            changed.set(nth + 1);
            let numbered =
                |p: &PolicyPort| matches!(p.port, Some(PortRef::Number(_))) && p.end_port.is_none();
            let count = m
                .policies
                .values()
                .filter_map(|p| p.ingress.as_ref()?.first()?.ports.first())
                .filter(|p| numbered(p))
                .count()
                .max(1);
            let key = m
                .policies
                .iter()
                .filter(|(_, p)| {
                    p.ingress.as_ref().and_then(|r| r.first()?.ports.first()).is_some_and(numbered)
                })
                .nth(nth * 13 % count)
                .map(|(k, _)| k.clone());
            let Some(policy) = key.and_then(|k| std::sync::Arc::make_mut(&mut m.policies).get_mut(&k)) else {
                return false;
            };
            let port = std::sync::Arc::make_mut(policy)
                .ingress
                .as_mut()
                .and_then(|r| r.first_mut()?.ports.first_mut());
            let Some(port) = port else { return false };
            if let Some(PortRef::Number(n)) = port.port {
                port.port = Some(PortRef::Number(n.wrapping_add(1).max(1)));
            }
            true
        };
        let cnp_changed = std::cell::Cell::new(0);
        let change_cnp = |m: &mut Model| {
            cnp_changed.set(cnp_changed.get() + 1);
            cnp::change_cnp(m, cnp_changed.get() - 1)
        };
        let changes = [
            timed(&mut engine, &mut m, &add),
            timed(&mut engine, &mut m, &relabel),
            timed(&mut engine, &mut m, &change_policy),
            timed(&mut engine, &mut m, &change_cnp),
        ];
        figures.changes = changes;
        figures.error = failed;
        for slot in 0..2 {
            if figures.error.is_none() {
                match sync_resync(&mut engine, &m, &mut backend) {
                    Ok((step, off)) => {
                        (figures.loop_resync[slot], figures.off_loop_check[slot]) = (step, off)
                    }
                    Err(e) => figures.error = Some(format!("the loop's resync: {e}")),
                }
            }
        }
        if figures.error.is_none() {
            let (scratch, resync, _, error) = sync_full(&m, &mut backend);
            let t0 = Instant::now();
            let agree = scratch.ir() == engine.ir();
            figures.ir_compare = t0.elapsed();
            figures.resync = resync;
            figures.error = error.map(|e| format!("the resync: {e}"));
            if !agree {
                figures.error.get_or_insert("the incremental IR differs from a compile from scratch".into());
            }
        }
        if figures.error.is_none() && churn_secs > 0 {
            figures.churn = Some(churn(kind, &m, &mut backend, Duration::from_secs(churn_secs)));
        }
        backend.cleanup();
        figures
    })
}

/// Measures both backends in this process (the tiny-scale test; `make bench`
/// runs `measure` in a process per backend so each peak RSS is its own).
pub fn backends(kind: ModelKind, pods: usize, policies: usize, cnps: usize, churn_secs: u64) -> Vec<Figures> {
    BACKENDS.iter().map(|b| measure(b, kind, pods, policies, cnps, churn_secs)).collect()
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
        ip6: None,
        host_network: false,
        ports: vec![],
    }
}

/// 100 pods created and 100 deleted per second, on every node, while the
/// agent loop (compile, render, apply the changes pending) keeps up; the lag
/// of each change from when it was made to when the kernel reflected it.
fn churn(kind: ModelKind, m: &Model, backend: &mut Backend, secs: Duration) -> Churn {
    const PER_SECOND: u32 = 100;
    let namespaces = m.namespaces.len();
    let mut m = m.clone();
    // What the engine was last brought to: the agent's compiled snapshot.
    let mut synced = m.clone();
    let mut engine = PolicyEngine::new(&m, "node-1", &cluster_cidr(), Options::default());
    engine.take_dirty();
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
        let mut ops: Vec<(String, Option<std::sync::Arc<Pod>>)> = Vec::new();
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
            let node = format!("node-{}", k % 3 + 1);
            let pod = match kind {
                ModelKind::Synthetic => synthetic_pod(namespaces, p, &node, ip),
                ModelKind::Mix => Pod { name: format!("churn-{p}"), node: Some(node), ..mix_pod(p, ip) },
            };
            live.push_back(pod.key());
            ops.push((pod.key(), Some(pod.into())));
            pending.push(at);
            if live.len() > PER_SECOND as usize {
                if let Some(old) = live.pop_front() {
                    ops.push((old, None));
                    pending.push(at);
                }
            }
            made += 1;
        }
        if pending.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        // The changes go into the state, the engine brings the kernel from
        // the last synced state to it, and the synced state follows.
        let apply = |model: &mut Model| {
            for (key, pod) in &ops {
                match pod {
                    Some(p) => model.pods.insert(key.clone(), p.clone()),
                    None => model.pods.remove(key),
                };
            }
        };
        apply(&mut m);
        if sync_change(&mut engine, &synced, &m, backend).is_err() {
            break; // Lags from here on would measure nothing.
        }
        apply(&mut synced);
        cycles += 1;
        let done = Instant::now();
        lags.extend(pending.into_iter().map(|at| done.saturating_duration_since(at)));
    }
    lags.sort();
    Churn {
        changes: lags.len(),
        cycles,
        p50: nearest(&lags, 0.5).unwrap_or_default(),
        p90: nearest(&lags, 0.9).unwrap_or_default(),
        p99: nearest(&lags, 0.99).unwrap_or_default(),
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
pub fn table(pods: usize, policies: usize, cnps: usize, figures: &[Figures]) -> String {
    let mut s = format!(
        "{pods} pods, {policies} policies, {cnps} ClusterNetworkPolicies (node-1's share). \
         Full sync and full resync: compile + render + apply = total, ms. \
         Changes ({CHANGES} of each kind): p50 / p99 of compile + patch, ms. \
         Resync on the loop: update + the loop's share of the check = total, ms (the check off the loop, ms), \
         the first after the changes, then again; \
         the IR compared with the full resync's compile from scratch, ms.\n\n\
         | backend | rules | sets | elements | full sync | pod added | pod relabelled | policy changed | CNP changed | full resync | resync on the loop (first; again) | IR compare | peak RSS MiB |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    // `-`: a kind of change the model had nothing for (no CNP).
    let pct = |p: &Percentiles| match p.samples {
        0 => "-".to_string(),
        _ => format!("{} / {}", ms(p.p50.total()), ms(p.p99.total())),
    };
    // `-`: not measured (the run stopped short).
    let step = |t: &Step| match t.total() {
        Duration::ZERO => "-".to_string(),
        _ => format!("{} + {} + {} = **{}**", ms(t.compile), ms(t.render), ms(t.apply), ms(t.total())),
    };
    // `-`: not measured.
    let check = |t: &Step, off: Duration| match t.total() {
        Duration::ZERO => "-".to_string(),
        _ => format!("{} + {} = **{}** ({})", ms(t.compile), ms(t.apply), ms(t.total()), ms(off)),
    };
    for f in figures {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}; {} | {} | {:.1} |\n",
            f.backend,
            f.rules,
            f.sets,
            f.elements,
            step(&f.full),
            pct(&f.changes[0]),
            pct(&f.changes[1]),
            pct(&f.changes[2]),
            pct(&f.changes[3]),
            step(&f.resync),
            check(&f.loop_resync[0], f.off_loop_check[0]),
            check(&f.loop_resync[1], f.off_loop_check[1]),
            ms(f.ir_compare),
            f.peak_rss_kib as f64 / 1024.0
        );
    }
    // The same model on both backends: the same regions.
    if let (true, Some(f)) = (cnps > 0, figures.first()) {
        s += &format!(
            "\nClusterNetworkPolicy regions: {} (subject, cell, peer) triples.\n",
            f.cluster_triples
        );
    }
    for f in figures {
        if let Some(e) = &f.error {
            s += &format!("\n{} stopped short (figures after it not measured): {e}\n", f.backend);
        }
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

/// New denied connections `denied_cost` explains.
pub const DENIED_SAMPLES: usize = 1000;

/// What one new denied connection costs the agent's loop: the denied log's
/// explanation of it from the snapshot's model (`denied::explain_line`, no
/// compile), for `DENIED_SAMPLES` TCP connections from pods of the model to
/// pods of node-1, picked at random: the first (which indexes the model's
/// pods by address, once per snapshot), then p50, p99 and max of the others.
pub fn denied_cost(kind: ModelKind, pods: usize, policies: usize, cnps: usize) -> [Duration; 4] {
    use weft_agent::denied::{explain_line, ExplainView};
    use weft_agent::nflog::Denied;
    let mut m = kind.build(pods, policies);
    cnp::add_cnps(&mut m, cnps);
    let ip = |p: &Pod| p.ip.map(std::net::IpAddr::V4);
    let all: Vec<_> = m.pods.values().filter_map(|p| ip(p)).collect();
    let local: Vec<_> =
        m.pods.values().filter(|p| p.node.as_deref() == Some("node-1")).filter_map(|p| ip(p)).collect();
    let view = ExplainView::new(m);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut pick = |n: usize| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n.max(1)
    };
    let mut times = Vec::with_capacity(DENIED_SAMPLES);
    for _ in 0..DENIED_SAMPLES {
        let (Some(&src), Some(&dst)) = (all.get(pick(all.len())), local.get(pick(local.len()))) else {
            break;
        };
        let d = Denied { ingress: true, audit: false, src, dst, proto: 6, dport: Some(8080) };
        let t = Instant::now();
        std::hint::black_box(explain_line(&d, &view, 0));
        times.push(t.elapsed());
    }
    let first = if times.is_empty() { Duration::ZERO } else { times.remove(0) };
    times.sort();
    [Some(first), nearest(&times, 0.5), nearest(&times, 0.99), times.last().copied()]
        .map(Option::unwrap_or_default)
}

/// The second model, a mix of the shapes real clusters hold: PODS pods over
/// 3 nodes in 100 namespaces (team t0-t9, every fourth env=prod), pods of 20
/// apps (every tenth pod `app: cache`, serving `dns`/UDP 53) and two tiers,
/// all serving `http` on 8080; POLICIES policies: 15% namespace default
/// denies, 30% ingress to an app from another app on one port, 20% ingress
/// from namespaces matched by an expression on team, 15% ingress to a tier
/// from prod namespaces' pods of one app on the named port `http`, 20%
/// egress to an ipBlock with one except on an endPort range plus to every
/// namespace's cache pods on the named port `dns`.
pub fn mix_model(pods: usize, policies: usize) -> Model {
    let mut m = model(0, 0);
    const NAMESPACES: usize = 100;
    m.namespaces.clear();
    for i in 0..NAMESPACES {
        let name = format!("ns-{i}");
        let env = if i % 4 == 0 { "prod" } else { "dev" };
        let l = labels([
            ("team", format!("t{}", i % 10)),
            ("env", env.to_string()),
            ("kubernetes.io/metadata.name", name.clone()),
        ]);
        m.namespaces.insert(name.clone(), Namespace { name, labels: l });
    }
    for p in 0..pods {
        let pod =
            mix_pod(p, Ipv4Addr::new(10, 100 + (p % 3) as u8, (p / 3 / 250) as u8, (p / 3 % 250 + 2) as u8));
        m.pods.insert(pod.key(), pod.into());
    }
    let sel = |k: &str, v: String| LabelSelector::of_labels([(k, v.as_str())]);
    let port =
        |n: u16| PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Number(n)), end_port: None };
    let named =
        |n: &str, protocol| PolicyPort { protocol, port: Some(PortRef::Name(n.into())), end_port: None };
    for i in 0..policies {
        let ns = format!("ns-{}", i % NAMESPACES);
        let (v, app) = ((i / NAMESPACES) as u16, format!("a{}", i % 20));
        let other = format!("a{}", (i + 7) % 20);
        let (selector, ingress, egress) = match i % 20 {
            // 15%: default deny.
            0..=2 => (LabelSelector::default(), Some(vec![]), None),
            // 30%: from another app on one port.
            3..=8 => (
                sel("app", app),
                Some(vec![Rule {
                    peers: vec![Peer::Pods { namespaces: None, pods: sel("app", other) }],
                    ports: vec![port(8000 + v % 1000)],
                }]),
                None,
            ),
            // 20%: from the namespaces of some teams.
            9..=12 => {
                let teams = [format!("t{}", i % 10), format!("t{}", (i + 3) % 10)];
                let ns_sel = LabelSelector {
                    match_labels: Default::default(),
                    match_expressions: vec![weft_agent::model::Requirement {
                        key: "team".into(),
                        operator: weft_agent::model::Operator::In,
                        values: teams.into_iter().collect(),
                    }],
                };
                let peers = vec![Peer::Pods { namespaces: Some(ns_sel), pods: LabelSelector::default() }];
                (sel("app", app), Some(vec![Rule { peers, ports: vec![port(9000 + v % 1000)] }]), None)
            }
            // 15%: a tier, from prod namespaces' pods of one app, on http.
            13..=15 => {
                let peers =
                    vec![Peer::Pods { namespaces: Some(sel("env", "prod".into())), pods: sel("app", other) }];
                let rules = vec![Rule { peers, ports: vec![named("http", Protocol::Tcp)] }];
                (sel("tier", ["web", "db"][i % 2].into()), Some(rules), None)
            }
            // 20%: egress to an ipBlock on a range, and to cache pods on dns.
            _ => {
                let block = Peer::IpBlock {
                    cidr: "10.0.0.0/8".parse().unwrap(),
                    except: vec!["10.100.0.0/16".parse().unwrap()],
                };
                let range = PolicyPort {
                    protocol: Protocol::Tcp,
                    port: Some(PortRef::Number(5000)),
                    end_port: Some(5100),
                };
                let cache = Peer::Pods {
                    namespaces: Some(LabelSelector::default()),
                    pods: sel("app", "cache".into()),
                };
                let rules = vec![
                    Rule { peers: vec![block], ports: vec![range] },
                    Rule { peers: vec![cache], ports: vec![named("dns", Protocol::Udp)] },
                ];
                (sel("app", app), None, Some(rules))
            }
        };
        let p = NetworkPolicy {
            namespace: ns,
            name: format!("mix-{i}"),
            pod_selector: selector,
            ingress,
            egress,
            audit: false,
        };
        std::sync::Arc::make_mut(&mut m.policies).insert(p.key(), p.into());
    }
    m
}

/// Pod number `p` of the mix, at `ip`.
fn mix_pod(p: usize, ip: Ipv4Addr) -> Pod {
    let app = if p % 10 == 9 { "cache".to_string() } else { format!("a{}", (p / 100) % 20) };
    let mut ports = vec![weft_agent::model::ContainerPort {
        name: Some("http".into()),
        port: 8080,
        protocol: Protocol::Tcp,
    }];
    if app == "cache" {
        ports.push(weft_agent::model::ContainerPort {
            name: Some("dns".into()),
            port: 53,
            protocol: Protocol::Udp,
        });
    }
    Pod {
        namespace: format!("ns-{}", p % 100),
        name: format!("mix-pod-{p}"),
        labels: labels([("app", app), ("tier", ["web", "db"][(p / 7) % 2].to_string())]),
        node: Some(format!("node-{}", p % 3 + 1)),
        ip: Some(ip),
        ip6: None,
        host_network: false,
        ports,
    }
}
