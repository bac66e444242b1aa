//! The agent loop: poll the source, and on each new snapshot (or every
//! `resync` for drift) reconcile weft's routes and, with a cluster CIDR, the
//! node's masquerade chain, read the node's forwarding sysctls, and write the
//! status file atomically. At start, once the whole configuration is
//! validated (source opened, backend tools found, status dir, pod socket and
//! HTTP address bound) and not before, it turns ip_forward on (a node
//! without pods must still forward NodePort transit traffic) and starts the
//! policy backend; later flips are reported, not fought. Runs in the calling
//! thread's netns (the node's); sleeps between polls on the stop channel, so
//! SIGTERM ends it at once and nothing spins. Each sync is timed and reported to `metrics` (served by
//! `http`), with the node's readiness; the log is `tracing` events in an
//! `agent{node=...}` span.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::{IpNetwork, Ipv4Network};
use rtnetlink::Handle;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};
use weft_plugin::agent_client::{AgentReply, PodEvent};
use weft_plugin::kernel_error::KernelError;
use weft_plugin::masquerade::{ensure_masquerade, masquerade_present, teardown_masquerade, MASQ_CHAIN};
use weft_plugin::sysctl::{ensure_sysctl, read_sysctl};

use crate::backend::{self, BackendChoice, ObjectCounts, PolicyBackend};
use crate::cni_config;
use crate::http::{self, Shared};
use crate::metrics::{readiness, SyncKind};
use crate::model::{Model, Snapshot};
use crate::nflog::{self, Denied};
use crate::pod_events::PodEvents;
use crate::pod_socket::{Event, PodSocket};
use crate::policy::{compile_with, Options};
use crate::route_table::{apply, delete_all, list_weft_routes};
use crate::routes::{desired_routes, plan};
use crate::source::{Source, SourceOpenError, SourceSpec};

const IP_FORWARD: &str = "net/ipv4/ip_forward";
const BRIDGE_NF_CALL_IPTABLES: &str = "net/bridge/bridge-nf-call-iptables";

/// What the agent was told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    /// Where cluster state comes from (`--source`).
    pub source: SourceSpec,
    pub status_file: PathBuf,
    pub cleanup_on_exit: bool,
    /// How often the source is polled.
    pub poll: Duration,
    /// How often the kernel is reconciled even when nothing changed.
    pub resync: Duration,
    /// The pod network of the whole cluster (`--cluster-cidr`). When set, the
    /// agent owns the node's masquerade chain; when not, it never touches it.
    pub cluster_cidr: Option<IpNetwork>,
    /// Where to write the conflist once the node is ready (`--cni-conf-dir`).
    pub cni_conf_dir: Option<PathBuf>,
    /// The CNI bin dir, to chain portmap when it is there (`--cni-bin-dir`).
    pub cni_bin_dir: PathBuf,
    /// Where to serve `/denied`, `/metrics` and `/healthz` (`--http`), if anywhere.
    pub http: Option<std::net::SocketAddr>,
    /// Where the plugin reports pods (`--pod-socket`), if anywhere.
    pub pod_socket: Option<PathBuf>,
    /// Which NetworkPolicy backend to run (`--backend`).
    pub backend: BackendChoice,
    /// The network's name (`--network-name`): the comment on the masquerade
    /// rules, the same the plugin writes, so both write identical rules.
    pub network_name: String,
    /// How NetworkPolicy is compiled (`--triple-peers`).
    pub compile: Options,
}

/// What the policy backend enforces after a sync.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub backend: String,
    /// Local pods known (by address).
    pub local_pods: usize,
    pub ingress_isolated: usize,
    pub egress_isolated: usize,
    /// Exact (pod, port, peer network) allows, both directions.
    pub triples: usize,
    /// Rules without a single port, both directions.
    pub groups: usize,
    /// Rules with many peers (one per distinct peers), both directions.
    #[serde(default)]
    pub port_groups: usize,
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
    /// The pod CIDR whose masquerade rules were ensured (or found intact) in this
    /// sync; None when the agent does not own masquerade or could not ensure it.
    #[serde(default)]
    pub masquerade: Option<String>,
    /// None when policy enforcement is off (or failed to apply: see errors).
    #[serde(default)]
    pub policy: Option<PolicyStatus>,
    /// What weft cannot enforce as written (e.g. an IPv6 ipBlock on an IPv4
    /// pod network), by policy.
    #[serde(default)]
    pub warnings: Vec<String>,
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
    #[error("pod socket {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("http endpoint {addr}: {source}")]
    Http { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("source: {0}")]
    Source(#[from] SourceOpenError),
    #[error("policy backend: {0}")]
    Backend(#[source] KernelError),
}

/// Runs the agent until `events` yields `Stop` (a signal); then, with
/// `cleanup_on_exit`, deletes weft's routes, rules and sets. `sender` feeds
/// the same channel (the pod socket's requests). Prints one line on stdout
/// once the first status is written.
pub fn run(cfg: &Config, events: &Receiver<Event>, sender: Sender<Event>) -> Result<(), AgentError> {
    let span = tracing::info_span!("agent", node = %cfg.node);
    let _in_span = span.enter();
    // Validation first: a configuration error exits before the node is touched.
    let mut agent = Agent::start(cfg)?;
    let _socket = match &cfg.pod_socket {
        Some(path) => {
            let s = PodSocket::listen(path, sender.clone())
                .map_err(|source| AgentError::Socket { path: path.clone(), source })?;
            info!(socket = %path.display(), "listening for pods");
            Some(s)
        }
        None => None,
    };
    if let Some(addr) = cfg.http {
        let bound =
            http::serve(addr, agent.shared.clone()).map_err(|source| AgentError::Http { addr, source })?;
        info!(address = %bound, "serving /denied, /metrics, /healthz and /readyz");
    }
    agent.engage();
    if agent.policy.is_some() {
        if let Err(e) = nflog::listen(sender.clone(), Event::Denied) {
            warn!(group = nflog::GROUP, error = %e, "no denied-connection log: NFLOG unavailable");
        }
    }
    loop {
        agent.shared.metrics().heartbeat(Instant::now());
        agent.tick()?;
        match events.recv_timeout(cfg.poll) {
            Ok(Event::Stop) => break,
            Ok(Event::Denied(d)) => agent.on_denied(&d),
            Ok(Event::Pod(ev, reply)) => {
                let _ = reply.send(agent.on_pod(&ev));
            }
            Err(RecvTimeoutError::Timeout) => {}
            // No signal thread: keep the pace, never spin.
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(cfg.poll),
        }
    }
    if cfg.cleanup_on_exit {
        agent.cleanup();
    }
    Ok(())
}

/// Bound on waiting for the source to show a pod that ADD reported.
const SOURCE_WAIT: Duration = Duration::from_millis(500);
const SOURCE_WAIT_STEP: Duration = Duration::from_millis(50);

/// The agent's state between events.
struct Agent<'c> {
    cfg: &'c Config,
    rt: tokio::runtime::Runtime,
    h: Handle,
    masq: Option<Masquerade>,
    /// The backend `--backend` resolved to; started by `engage`.
    pick: BackendChoice,
    policy: Option<Box<dyn PolicyBackend>>,
    cluster_v4: Option<Ipv4Network>,
    source: Box<dyn Source>,
    snap: Option<Snapshot>,
    pods: PodEvents,
    last_status: Option<Status>,
    /// The denied-connection log and the metrics, shared with the HTTP endpoint.
    shared: Arc<Shared>,
    next_sync: Instant,
    /// The next sync checks the kernel in full (the first and every periodic
    /// one); a sync for a new snapshot writes only what changed.
    full: bool,
}

impl<'c> Agent<'c> {
    /// Checks the configuration and opens what it names; changes nothing on
    /// the node (`engage` does).
    fn start(cfg: &'c Config) -> Result<Agent<'c>, AgentError> {
        let source = cfg.source.open()?;
        let (pick, why) = backend::choose(cfg.backend).map_err(AgentError::Backend)?;
        info!(backend = %backend_name(pick), "{why}");
        check_status_dir(&cfg.status_file)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AgentError::Runtime)?;
        let h = rt.block_on(async { weft_plugin::netns::connect_current() })?;
        if let Some(c) = cfg.cluster_cidr.filter(|c| c.is_ipv6()) {
            warn!(
                cluster_cidr = %c,
                "the cluster CIDR is IPv6 and pod CIDRs are IPv4: only traffic to this node's own pod CIDR \
                 is exempt from masquerade"
            );
        }
        Ok(Agent {
            cfg,
            rt,
            h,
            masq: cfg.cluster_cidr.map(|c| Masquerade::new(c, &cfg.network_name)),
            pick,
            policy: None,
            cluster_v4: match cfg.cluster_cidr {
                Some(IpNetwork::V4(n)) => Some(n),
                _ => None,
            },
            source,
            snap: None,
            pods: PodEvents::default(),
            last_status: None,
            shared: Arc::new(Shared::new(Instant::now())),
            next_sync: Instant::now(),
            full: true,
        })
    }

    /// The first changes to the node: ip_forward on, and the policy backend
    /// started, or with `off` every object of weft's backends removed (an
    /// earlier run's fail-closed drops would blackhole new pods).
    fn engage(&mut self) {
        ensure_forwarding();
        if self.pick != BackendChoice::Off {
            self.policy = backend::start(self.pick);
            return;
        }
        let (removed, errors) = backend::remove_all();
        if removed.is_empty() {
            info!("NetworkPolicy enforcement is off; no object of weft's backends was in force");
        } else {
            let removed = removed.join(", ");
            info!("NetworkPolicy enforcement is off; removed what an earlier run left in force: {removed}");
        }
        for e in errors {
            error!("NetworkPolicy enforcement is off, but removing weft's objects failed: {e}");
        }
    }

    /// Polls the source; syncs on a new snapshot or when the resync is due.
    fn tick(&mut self) -> Result<(), AgentError> {
        self.poll_source();
        let Some(s) = &self.snap else { return Ok(()) };
        if Instant::now() < self.next_sync {
            return Ok(());
        }
        let t0 = Instant::now();
        let mut status = self.rt.block_on(sync(&self.h, &self.cfg.node, s, self.masq.as_mut(), self.full));
        if let Some(p) = self.policy.as_mut() {
            let model = self.pods.overlay(&s.model, &self.cfg.node);
            let applied = enforce(p.as_mut(), &model, self.cfg, self.cluster_v4, self.full);
            match record_policy(&self.shared, p.name(), applied) {
                Ok((ps, warnings)) => {
                    status.policy = Some(ps);
                    status.warnings = warnings;
                }
                Err(e) => status.errors.push(e),
            }
        }
        let conflist = self.write_conflist(s, &mut status);
        report_changes(self.last_status.as_ref(), &status);
        write_status(&self.cfg.status_file, &status)?;
        let took = t0.elapsed();
        let kind = if self.full { SyncKind::Full } else { SyncKind::Change };
        {
            let mut m = self.shared.metrics();
            m.observe_sync(kind, took);
            m.synced(&status, readiness(&status, self.policy.is_some(), conflist));
        }
        tracing::debug!(
            generation = %status.generation,
            kind = %kind.label(),
            ms = took.as_secs_f64() * 1000.0,
            errors = status.errors.len(),
            "synced"
        );
        if self.last_status.is_none() {
            println!("ready generation {}", status.generation);
            let _ = std::io::stdout().flush();
        }
        self.last_status = Some(status);
        self.next_sync = Instant::now() + self.cfg.resync;
        self.full = true;
        Ok(())
    }

    fn poll_source(&mut self) {
        let Some(s) = self.source.poll() else { return };
        for e in &s.errors {
            warn!(generation = %s.generation, "skipping manifest {e}");
        }
        self.pods.prune(&s.model, &self.cfg.node);
        self.snap = Some(s);
        if self.next_sync > Instant::now() {
            self.next_sync = Instant::now();
            self.full = false;
        }
    }

    /// A report from the plugin: lays it over the cluster state and commits
    /// the policy before answering, so ADD returns with the pod's rules in force.
    fn on_pod(&mut self, ev: &PodEvent) -> AgentReply {
        match ev {
            PodEvent::Add { container_id, ifname, namespace, name, ips } => {
                self.pods.add(container_id, ifname, namespace, name, ips);
                if self.policy.is_none() {
                    return AgentReply { ok: true, error: None };
                }
                // The source may lag the kubelet by a moment.
                let deadline = Instant::now() + SOURCE_WAIT;
                loop {
                    self.poll_source();
                    let known =
                        self.snap.as_ref().is_some_and(|s| PodEvents::known(&s.model, namespace, name));
                    if known || Instant::now() >= deadline {
                        break;
                    }
                    std::thread::sleep(SOURCE_WAIT_STEP);
                }
                if !self.snap.as_ref().is_some_and(|s| PodEvents::known(&s.model, namespace, name)) {
                    let error = format!(
                        "pod {namespace}/{name} is not in the cluster state yet: its traffic is dropped until it is"
                    );
                    warn!("{error}");
                    return AgentReply { ok: false, error: Some(error) };
                }
            }
            PodEvent::Del { container_id, ifname } => self.pods.del(container_id, ifname),
        }
        let (Some(p), Some(s)) = (self.policy.as_mut(), &self.snap) else {
            return AgentReply { ok: true, error: None };
        };
        let model = self.pods.overlay(&s.model, &self.cfg.node);
        let t0 = Instant::now();
        let applied = enforce(p.as_mut(), &model, self.cfg, self.cluster_v4, false);
        let reply = match record_policy(&self.shared, p.name(), applied) {
            Ok(_) => AgentReply { ok: true, error: None },
            Err(e) => {
                error!("{e}");
                AgentReply { ok: false, error: Some(e) }
            }
        };
        self.shared.metrics().observe_sync(SyncKind::Pod, t0.elapsed());
        reply
    }

    /// Writes the conflist (if asked and changed) once this node can carry
    /// pods: its pod CIDR known and, with a policy backend, policy applied.
    /// None when not asked to; else whether the conflist is in place.
    fn write_conflist(&self, s: &Snapshot, status: &mut Status) -> Option<bool> {
        let dir = self.cfg.cni_conf_dir.as_ref()?;
        let Some(cidr) = s.model.nodes.get(&self.cfg.node).and_then(|n| n.pod_cidr) else {
            return Some(false);
        };
        if self.policy.is_some() && status.policy.is_none() {
            return Some(false);
        }
        let socket =
            self.cfg.pod_socket.clone().unwrap_or_else(|| weft_conf::netconf::DEFAULT_AGENT_SOCKET.into());
        let portmap = self.cfg.cni_bin_dir.join("portmap").is_file();
        let list = cni_config::conflist(cidr, self.cfg.cluster_cidr, &socket, portmap);
        let text = serde_json::to_string_pretty(&list).unwrap_or_default() + "\n";
        match cni_config::write_if_changed(dir, cni_config::CONFLIST, text.as_bytes(), 0o644) {
            Ok(written) => {
                if written {
                    let path = dir.join(cni_config::CONFLIST);
                    info!(path = %path.display(), pod_cidr = %cidr, "wrote the conflist: the node is ready for pods");
                }
                Some(true)
            }
            Err(e) => {
                status.errors.push(format!("write the conflist into {}: {e}", dir.display()));
                Some(false)
            }
        }
    }

    /// A packet a drop rule logged: one line per denied connection, naming
    /// the policies, from the state the rules were compiled from.
    fn on_denied(&mut self, d: &Denied) {
        let Some(s) = &self.snap else { return };
        let now = Instant::now();
        let mut denied = self.shared.denied();
        // A retransmit of a logged connection: counted, and no model is built for it.
        if denied.fold(d, now) {
            return;
        }
        let model = self.pods.overlay(&s.model, &self.cfg.node);
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        if let Some(line) = denied.record_new(d, &model, self.cluster_v4, now, wall.as_millis() as u64) {
            info!("denied {}", serde_json::to_string(&line).unwrap_or_default());
        }
    }

    fn cleanup(&mut self) {
        for e in self.rt.block_on(delete_all(&self.h)) {
            warn!("cleanup: {e}");
        }
        info!("cleanup: weft's routes deleted");
        if let Some(p) = self.policy.as_mut() {
            match p.cleanup() {
                Ok(()) => info!(backend = %p.name(), "cleanup: weft's policy chains and sets deleted"),
                Err(e) => warn!(backend = %p.name(), "cleanup: policy: {e}"),
            }
        }
        if self.masq.is_some() {
            match teardown_masquerade() {
                Ok(()) => info!("cleanup: {MASQ_CHAIN} and its jump deleted"),
                Err(e) => warn!("cleanup: masquerade: {e}"),
            }
        }
    }
}

/// What `enforce` returns: the backend's objects in force, what it enforces
/// and the warnings.
type Enforced = (ObjectCounts, PolicyStatus, Vec<String>);

/// Compiles the NetworkPolicies of `model` for `node` and applies them.
/// Returns the objects in force, what is enforced and the warnings, or the
/// error for the status.
fn enforce(
    p: &mut dyn PolicyBackend,
    model: &Model,
    cfg: &Config,
    cluster: Option<Ipv4Network>,
    full: bool,
) -> Result<Enforced, String> {
    let (ir, warnings) = compile_with(model, &cfg.node, cluster, cfg.compile);
    let done = p.apply(&ir, full).map_err(|e| format!("policy ({}): {e}", p.name()))?;
    if let Some(changed) = done.change {
        info!(backend = %p.name(), "policy ({}): {changed}", p.name());
    }
    let status = PolicyStatus {
        backend: p.name().into(),
        local_pods: ir.local.len(),
        ingress_isolated: ir.ingress.isolated.len(),
        egress_isolated: ir.egress.isolated.len(),
        triples: ir.ingress.triples.len() + ir.egress.triples.len(),
        groups: ir.ingress.groups.len() + ir.egress.groups.len(),
        port_groups: ir.ingress.port_groups.len() + ir.egress.port_groups.len(),
    };
    Ok((done.counts, status, warnings))
}

/// Hands `enforce`'s outcome to the metrics (the objects in force, or one
/// more policy error) and returns the rest for the status.
fn record_policy(
    shared: &Shared,
    backend: &'static str,
    applied: Result<Enforced, String>,
) -> Result<(PolicyStatus, Vec<String>), String> {
    let mut m = shared.metrics();
    match applied {
        Ok((counts, status, warnings)) => {
            m.policy_applied(backend, counts);
            Ok((status, warnings))
        }
        Err(e) => {
            m.policy_error();
            Err(e)
        }
    }
}

/// The backend's name for the log.
fn backend_name(pick: BackendChoice) -> &'static str {
    match pick {
        BackendChoice::Off => "off",
        BackendChoice::Nftables => "nftables",
        _ => "iptables",
    }
}

/// The status file's directory must exist: the first sync writes it.
fn check_status_dir(path: &Path) -> Result<(), AgentError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        )),
        Err(e) => Err(e),
    }
    .map_err(|source| AgentError::Status { path: path.into(), source })
}

/// Turns net.ipv4.ip_forward on in this netns once, at start: until the first
/// pod's ADD does it, a node would drop NodePort traffic DNATed to a pod on
/// another node. Failure is logged, not fatal; the status shows the sysctl.
fn ensure_forwarding() {
    match ensure_sysctl(IP_FORWARD, "1") {
        Ok(true) => info!("net.ipv4.ip_forward was off: turned it on"),
        Ok(false) => info!("net.ipv4.ip_forward is on"),
        Err(e) => warn!("turning net.ipv4.ip_forward on: {e}"),
    }
}

/// The kernel side of the masquerade duty; a trait so the skip logic is tested
/// without iptables.
trait MasqKernel {
    fn present(&self, pod_cidr: Ipv4Network, cluster: IpNetwork, comment: &str) -> Result<bool, KernelError>;
    fn ensure(&self, pod_cidr: Ipv4Network, cluster: IpNetwork, comment: &str) -> Result<(), KernelError>;
}

/// The real kernel: weft-plugin's masquerade module, as the plugin's ADD uses it.
struct MasqIptables;

impl MasqKernel for MasqIptables {
    fn present(&self, pod_cidr: Ipv4Network, cluster: IpNetwork, comment: &str) -> Result<bool, KernelError> {
        masquerade_present(&[pod_cidr.into()], Some(cluster), comment)
    }
    fn ensure(&self, pod_cidr: Ipv4Network, cluster: IpNetwork, comment: &str) -> Result<(), KernelError> {
        ensure_masquerade(&[pod_cidr.into()], Some(cluster), comment)
    }
}

/// The masquerade duty (with `--cluster-cidr`): keep `MASQ_CHAIN` for this
/// node's pod CIDR. Remembers what it last ensured, so a resync that finds the
/// rules intact costs a few `iptables -C`, never a restore.
#[derive(Debug)]
struct Masquerade {
    cluster_cidr: IpNetwork,
    comment: String,
    /// The pod CIDR of the last successful ensure; None before it or after a failure.
    ensured: Option<Ipv4Network>,
}

impl Masquerade {
    fn new(cluster_cidr: IpNetwork, comment: &str) -> Masquerade {
        Masquerade { cluster_cidr, comment: comment.into(), ensured: None }
    }

    /// Ensures the chain for `pod_cidr` (this node's, from the model) unless it
    /// was ensured for the same CIDR and is still in place. Returns the CIDR in
    /// force, or the error for the status. Without a pod CIDR the kernel is left
    /// as it is: the node may only be missing from the state for a moment.
    /// `full` (a resync) checks the kernel; between resyncs the rules this
    /// agent ensured are trusted, so a change (a CNI ADD may wait on one)
    /// costs no iptables process.
    fn reconcile(
        &mut self,
        k: &impl MasqKernel,
        pod_cidr: Option<Ipv4Network>,
        full: bool,
    ) -> Result<Ipv4Network, String> {
        let Some(cidr) = pod_cidr else {
            return Err(
                "masquerade: this node has no IPv4 podCIDR in the cluster state; rules left as they are"
                    .into(),
            );
        };
        let why = match self.ensured {
            None => "ensured",
            Some(old) if old != cidr => "rewritten (pod CIDR changed)",
            Some(_) if !full => return Ok(cidr),
            Some(_) => match k.present(cidr, self.cluster_cidr, &self.comment) {
                Ok(true) => return Ok(cidr),
                Ok(false) => "re-asserted (rules were missing)",
                // The ensure below reports the real error if iptables is broken.
                Err(_) => "re-asserted (the presence check failed)",
            },
        };
        match k.ensure(cidr, self.cluster_cidr, &self.comment) {
            Ok(()) => {
                info!(pod_cidr = %cidr, "masquerade: {MASQ_CHAIN} for {cidr} {why} (cluster {})", self.cluster_cidr);
                self.ensured = Some(cidr);
                Ok(cidr)
            }
            Err(e) => {
                self.ensured = None;
                Err(format!("masquerade {cidr}: {e}"))
            }
        }
    }
}

/// Reconciles the routes (and, when owned, the masquerade chain) against `snap`
/// and reads the sysctls; errors go into the status.
async fn sync(h: &Handle, node: &str, snap: &Snapshot, masq: Option<&mut Masquerade>, full: bool) -> Status {
    let mut errors: Vec<String> = snap.errors.iter().map(|e| e.to_string()).collect();
    let (desired, notes) = desired_routes(&snap.model, node);
    for n in notes {
        warn!("{n}");
    }
    match list_weft_routes(h).await {
        Ok(current) => {
            for change in plan(&desired, &current) {
                match apply(h, change).await {
                    Ok(()) => info!(generation = %snap.generation, "route {change:?}"),
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
    let pod_cidr = snap.model.nodes.get(node).and_then(|n| n.pod_cidr);
    let masquerade = match masq.map(|m| m.reconcile(&MasqIptables, pod_cidr, full)) {
        None => None,
        Some(Ok(cidr)) => Some(cidr.to_string()),
        Some(Err(e)) => {
            errors.push(e);
            None
        }
    };
    Status {
        node: node.into(),
        generation: snap.generation.clone(),
        routes,
        ip_forward: read_sysctl(IP_FORWARD).is_ok_and(|v| v == "1"),
        bridge_nf_call_iptables: read_sysctl(BRIDGE_NF_CALL_IPTABLES).ok().map(|v| v == "1"),
        masquerade,
        policy: None,
        warnings: Vec::new(),
        errors,
    }
}

/// Logs the sysctls that are off (when they turn off, or at the first sync) and new errors.
fn report_changes(last: Option<&Status>, now: &Status) {
    let was_fwd = last.map(|s| s.ip_forward);
    if !now.ip_forward && was_fwd != Some(false) {
        warn!("net.ipv4.ip_forward is off on this node: pods on other nodes are unreachable");
    }
    let was_br = last.and_then(|s| s.bridge_nf_call_iptables);
    if now.bridge_nf_call_iptables == Some(false) && was_br != Some(false) {
        warn!("net.bridge.bridge-nf-call-iptables is off on this node: same-node service traffic bypasses conntrack");
    }
    for e in &now.errors {
        if !last.is_some_and(|s| s.errors.contains(e)) {
            error!(generation = %now.generation, "{e}");
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

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::io;

    use super::*;

    /// A kernel that records calls; `present` answers `rules_in_place`.
    #[derive(Default)]
    struct Fake {
        rules_in_place: Cell<bool>,
        fail_check: Cell<bool>,
        fail_ensure: Cell<bool>,
        checks: Cell<u32>,
        ensured: RefCell<Vec<(Ipv4Network, IpNetwork, String)>>,
    }

    fn err() -> KernelError {
        KernelError::ToolFailed { cmd: "iptables-restore".into(), stderr: "boom".into() }
    }

    impl MasqKernel for Fake {
        fn present(&self, _: Ipv4Network, _: IpNetwork, _: &str) -> Result<bool, KernelError> {
            self.checks.set(self.checks.get() + 1);
            if self.fail_check.get() {
                return Err(KernelError::Io { what: "run iptables".into(), source: io::Error::other("x") });
            }
            Ok(self.rules_in_place.get())
        }
        fn ensure(&self, cidr: Ipv4Network, cluster: IpNetwork, comment: &str) -> Result<(), KernelError> {
            if self.fail_ensure.get() {
                return Err(err());
            }
            self.ensured.borrow_mut().push((cidr, cluster, comment.into()));
            self.rules_in_place.set(true);
            Ok(())
        }
    }

    fn v4(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn duty() -> Masquerade {
        Masquerade::new("10.244.0.0/16".parse().unwrap(), "weft")
    }

    #[test]
    fn first_sync_ensures_then_an_intact_rule_costs_only_the_check() {
        let (k, mut m) = (Fake::default(), duty());
        assert_eq!(m.reconcile(&k, Some(v4("10.244.1.0/24")), true), Ok(v4("10.244.1.0/24")));
        // Nothing ensured yet: no check, straight to the restore.
        assert_eq!(k.checks.get(), 0);
        let want = (v4("10.244.1.0/24"), "10.244.0.0/16".parse().unwrap(), "weft".to_string());
        assert_eq!(*k.ensured.borrow(), [want]);
        for _ in 0..3 {
            assert_eq!(m.reconcile(&k, Some(v4("10.244.1.0/24")), true), Ok(v4("10.244.1.0/24")));
        }
        assert_eq!((k.checks.get(), k.ensured.borrow().len()), (3, 1));
    }

    #[test]
    fn between_resyncs_the_ensured_rule_is_trusted() {
        let (k, mut m) = (Fake::default(), duty());
        m.reconcile(&k, Some(v4("10.244.1.0/24")), true).unwrap();
        k.rules_in_place.set(false);
        assert_eq!(m.reconcile(&k, Some(v4("10.244.1.0/24")), false), Ok(v4("10.244.1.0/24")));
        assert_eq!((k.checks.get(), k.ensured.borrow().len()), (0, 1), "no check, no ensure");
        // A new pod CIDR is written whatever the kind of sync; a resync checks and repairs.
        m.reconcile(&k, Some(v4("10.244.7.0/24")), false).unwrap();
        assert_eq!(k.ensured.borrow().len(), 2);
        k.rules_in_place.set(false);
        m.reconcile(&k, Some(v4("10.244.7.0/24")), true).unwrap();
        assert_eq!((k.checks.get(), k.ensured.borrow().len()), (1, 3));
    }

    #[test]
    fn missing_rules_are_re_asserted() {
        let (k, mut m) = (Fake::default(), duty());
        m.reconcile(&k, Some(v4("10.244.1.0/24")), true).unwrap();
        k.rules_in_place.set(false);
        assert_eq!(m.reconcile(&k, Some(v4("10.244.1.0/24")), true), Ok(v4("10.244.1.0/24")));
        assert_eq!(k.ensured.borrow().len(), 2);
    }

    #[test]
    fn a_new_pod_cidr_is_written_without_a_check() {
        let (k, mut m) = (Fake::default(), duty());
        m.reconcile(&k, Some(v4("10.244.1.0/24")), true).unwrap();
        assert_eq!(m.reconcile(&k, Some(v4("10.244.7.0/24")), true), Ok(v4("10.244.7.0/24")));
        assert_eq!(k.checks.get(), 0);
        assert_eq!(k.ensured.borrow()[1].0, v4("10.244.7.0/24"));
    }

    #[test]
    fn a_failing_check_falls_back_to_the_ensure() {
        let (k, mut m) = (Fake::default(), duty());
        m.reconcile(&k, Some(v4("10.244.1.0/24")), true).unwrap();
        k.fail_check.set(true);
        assert_eq!(m.reconcile(&k, Some(v4("10.244.1.0/24")), true), Ok(v4("10.244.1.0/24")));
        assert_eq!(k.ensured.borrow().len(), 2);
    }

    #[test]
    fn a_failed_ensure_is_an_error_and_is_retried_next_sync() {
        let (k, mut m) = (Fake::default(), duty());
        k.fail_ensure.set(true);
        let e = m.reconcile(&k, Some(v4("10.244.1.0/24")), true).unwrap_err();
        assert!(e.contains("10.244.1.0/24") && e.contains("boom"), "{e}");
        k.fail_ensure.set(false);
        assert_eq!(m.reconcile(&k, Some(v4("10.244.1.0/24")), true), Ok(v4("10.244.1.0/24")));
        // After a failure nothing counts as ensured, so no check was trusted.
        assert_eq!((k.checks.get(), k.ensured.borrow().len()), (0, 1));
    }

    #[test]
    fn no_pod_cidr_touches_nothing() {
        let (k, mut m) = (Fake::default(), duty());
        let e = m.reconcile(&k, None, true).unwrap_err();
        assert!(e.contains("no IPv4 podCIDR"), "{e}");
        assert_eq!((k.checks.get(), k.ensured.borrow().len()), (0, 0));
    }
}
