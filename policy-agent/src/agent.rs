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
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use rtnetlink::Handle;
use tracing::{error, info, warn};
use weft_netkit::kernel_error::KernelError;
use weft_netkit::masquerade::teardown_masquerade;
use weft_netkit::sysctl::{ensure_sysctl, read_sysctl};

use crate::backend::{self, BackendChoice, ObjectCounts, Outcome, PolicyBackend};
use crate::cni_config;
use crate::denied::{self, Admit};
use crate::http::{self, Shared};
use crate::masquerade::{MasqIn, Masquerade};
use crate::metrics::{readiness, SyncKind};
use crate::model::Snapshot;
use crate::nflog::{self, Denied};
use crate::overlay::Routing;
use crate::overlay_kernel::teardown_overlay;
use crate::parked_adds::ParkedAdds;
use crate::pod_events::PodEvents;
use crate::pod_socket::{Event, PodSocket, Wake};
use crate::policy::{Direction, Options, PolicyIr};
use crate::route_table::delete_all;
use crate::snapshot::Compiled;
use crate::source::kube::cnp_status::StatusConfig;
use crate::source::{KubeExtras, Realized, Source, SourceOpenError, SourceSpec};
use crate::status::{write_status, PolicyStatus, Status};

mod drift;
mod operator_log;
mod pod_reports;
pub mod routing;
mod scratch;

const IP_FORWARD: &str = "net/ipv4/ip_forward";
const BRIDGE_NF_CALL_IPTABLES: &str = "net/bridge/bridge-nf-call-iptables";
const BRIDGE_NF_CALL_IP6TABLES: &str = "net/bridge/bridge-nf-call-ip6tables";

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
    /// The pod networks of the whole cluster (`--cluster-cidr`), at most one
    /// per family. When set, the agent owns the node's masquerade chain; when
    /// not, it never touches it.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// Where to write the conflist once the node is ready (`--cni-conf-dir`).
    pub cni_conf_dir: Option<PathBuf>,
    /// The CNI bin dir, to chain portmap when it is there (`--cni-bin-dir`).
    pub cni_bin_dir: PathBuf,
    /// Where to serve `/metrics`, `/healthz`, `/readyz` (`--http`) and the
    /// denied-connection log (`--denied-socket`, `--http-denied`).
    pub http: http::Listen,
    /// Where the plugin reports pods (`--pod-socket`), if anywhere.
    pub pod_socket: Option<PathBuf>,
    /// Which NetworkPolicy backend to run (`--backend`).
    pub backend: BackendChoice,
    /// The network's name (`--network-name`): the comment on the masquerade
    /// rules, the same the plugin writes, so both write identical rules.
    pub network_name: String,
    /// How NetworkPolicy is compiled (`--triple-peers`).
    pub compile: Options,
    /// How other nodes' pods are reached (`--mode`, `--vxlan-vni`, `--vxlan-port`).
    pub routing: Routing,
    /// With the API source: the namespace of the ClusterNetworkPolicy status
    /// Leases (`--lease-namespace`); None: no status (`--cnp-status=false`).
    pub cnp_status_namespace: Option<String>,
}

/// Errors that stop the agent (everything else goes into the status).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("netlink: {0}")]
    Netlink(#[from] weft_netkit::kernel_error::KernelError),
    #[error("write status file {path}: {source}")]
    Status { path: PathBuf, source: std::io::Error },
    #[error("pod socket {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Http(#[from] http::HttpError),
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
    let _endpoint = match (cfg.http.tcp, &cfg.http.denied_socket) {
        (None, None) => None,
        _ => {
            let ep = http::serve(&cfg.http, agent.shared.clone())?;
            let denied = if cfg.http.denied_on_tcp { " and /denied" } else { "" };
            if let Some(addr) = ep.tcp {
                info!(address = %addr, "serving /metrics, /healthz, /readyz{denied}");
            }
            if let Some(path) = &cfg.http.denied_socket {
                info!(socket = %path.display(), "serving /denied (root only)");
            }
            Some(ep)
        }
    };
    agent.engage();
    // Denied packets wait on a queue of their own, drained only while no
    // pod or source event waits.
    let (denied_tx, denied) = std::sync::mpsc::sync_channel(DENIED_QUEUE);
    if agent.policy.is_some() {
        if let Err(e) = nflog::listen(denied_tx, agent.shared.inputs.clone()) {
            warn!(group = nflog::GROUP, error = %e, "no denied-connection log: NFLOG unavailable");
        }
    }
    let wake = Wake::new(sender.clone());
    agent.source.set_wake({
        let wake = wake.clone();
        Box::new(move || wake.wake())
    });
    agent.wake = Some(wake.clone());
    let mut next = None;
    loop {
        agent.shared.metrics().heartbeat(Instant::now());
        agent.check_scratch();
        agent.check_drift();
        agent.tick()?;
        agent.answer_parked();
        agent.expire_claims();
        match next.take().map_or_else(|| events.recv_timeout(agent.wait()), Ok) {
            Ok(Event::Stop) => {
                let what = if cfg.cleanup_on_exit {
                    "deleting weft's routes and rules (--cleanup-on-exit)"
                } else {
                    "leaving routes and rules in force for the next agent"
                };
                info!("SIGTERM or SIGINT: stopping, {what}");
                break;
            }
            Ok(Event::Pod(ev, reply)) => agent.on_pod(ev, reply),
            // The next tick polls the source.
            Ok(Event::Wake) => wake.taken(),
            Err(RecvTimeoutError::Timeout) => {}
            // No signal thread: keep the pace, never spin.
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(cfg.poll),
        }
        next = agent.drain_denied(events, &denied);
    }
    if cfg.cleanup_on_exit {
        agent.cleanup();
    }
    Ok(())
}

/// Denied packets queued for the loop, at most (beyond: dropped, counted).
/// A poll's worth of the kernel's log limit, many times over.
const DENIED_QUEUE: usize = 1024;

/// How soon a status file that could not be written is tried again.
const STATUS_RETRY: Duration = Duration::from_secs(1);

/// The agent's state between events.
struct Agent<'c> {
    cfg: &'c Config,
    rt: tokio::runtime::Runtime,
    h: Handle,
    masq: Option<Masquerade>,
    /// Where masquerade goes: with the policy backend (`masq_backend`).
    masq_in: MasqIn,
    /// The backend `--backend` resolved to; started by `engage`.
    pick: BackendChoice,
    policy: Option<Box<dyn PolicyBackend>>,
    source: Box<dyn Source>,
    snap: Option<Snapshot>,
    /// What the last policy sync compiled (with a policy backend).
    compiled: Option<Compiled>,
    pods: PodEvents,
    /// ADDs of pods the source does not show yet.
    parked: ParkedAdds<pod_reports::ParkedAdd>,
    last_status: Option<Status>,
    /// Why the status file could not be written, until it is again.
    status_error: Option<String>,
    /// The first-sync line is out (the launcher's signal: the first status written).
    synced_once: bool,
    /// The readiness line is out (/readyz answered 200).
    announced: bool,
    /// The source's errors already logged (each is logged once, when new).
    source_errors: Vec<String>,
    /// ClusterNetworkPolicy warnings already logged (equal priorities sharing pods).
    tier_notices: crate::policy::tier_notices::TierNotices,
    /// The denied-connection log and the metrics, shared with the HTTP endpoint.
    shared: Arc<Shared>,
    next_sync: Instant,
    /// The next sync checks the kernel in full (the first and every periodic
    /// one); a sync for a new snapshot writes only what changed.
    full: bool,
    /// Counts the updates of `compiled`: a scratch compile is compared with
    /// it only if none came since the model was taken.
    version: u64,
    /// The from-scratch compile checking the incremental engine.
    scratch: scratch::ScratchCheck,
    /// The resync's kernel check, off the loop.
    drift: drift::DriftCheck,
    /// Wakes the loop (a scratch compile is done); set once the loop runs.
    wake: Option<Wake>,
}

impl<'c> Agent<'c> {
    /// Checks the configuration and opens what it names; changes nothing on
    /// the node (`engage` does).
    fn start(cfg: &'c Config) -> Result<Agent<'c>, AgentError> {
        let cnp_status = cfg.cnp_status_namespace.clone().map(|namespace| StatusConfig {
            node: cfg.node.clone(),
            namespace,
            timing: Default::default(),
        });
        let source = cfg.source.open(KubeExtras { cnp_status })?;
        let (pick, why) = backend::choose(cfg.backend).map_err(AgentError::Backend)?;
        info!(backend = %backend_name(pick), "{why}");
        let masq_in = MasqIn(crate::masquerade::backend_for(pick).map_err(AgentError::Backend)?);
        check_status_dir(&cfg.status_file)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AgentError::Runtime)?;
        let h = rt.block_on(async { weft_netkit::netns::connect_current() })?;
        Ok(Agent {
            cfg,
            rt,
            h,
            masq: (!cfg.cluster_cidrs.is_empty())
                .then(|| Masquerade::new(cfg.cluster_cidrs.clone(), &cfg.network_name)),
            masq_in,
            pick,
            policy: None,
            source,
            snap: None,
            compiled: None,
            pods: PodEvents::default(),
            parked: ParkedAdds::default(),
            last_status: None,
            status_error: None,
            synced_once: false,
            announced: false,
            source_errors: Vec::new(),
            tier_notices: Default::default(),
            shared: Arc::new(Shared::new(Instant::now())),
            next_sync: Instant::now(),
            full: true,
            version: 0,
            scratch: Default::default(),
            drift: Default::default(),
            wake: None,
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
        let masq = self.masq.as_mut().map(|m| (m, &self.masq_in));
        let mut status = self.rt.block_on(sync(&self.h, self.cfg, s, masq, self.full));
        let logged: Vec<String> = s.errors.iter().map(|e| e.to_string()).collect();
        let enforced = self.enforce(self.full);
        let realized = match &enforced {
            Some(Ok(_)) => self.snap.as_ref().map(realized_cnps),
            Some(Err(_)) => None,
            // No backend: this node realizes no policy.
            None => Some(Realized::new()),
        };
        if let Some(r) = realized {
            self.source.report_realized(&r);
        }
        if let Some(applied) = enforced {
            match applied {
                Ok((ps, warnings)) => {
                    status.policy = Some(ps);
                    status.warnings.extend(warnings);
                }
                Err(e) => status.errors.push(e),
            }
        }
        status.warnings.extend(self.tier_notices.warnings());
        let conflist = self.write_conflist(&mut status);
        operator_log::report_changes(self.last_status.as_ref(), &status, &logged);
        let took = t0.elapsed();
        let kind = if self.full { SyncKind::Full } else { SyncKind::Change };
        let ready = readiness(&status, self.policy.is_some(), conflist);
        let ready_now = ready.is_ok();
        let not_ready = ready.as_ref().err().cloned();
        // The metrics before the status file: whoever reads a generation
        // there finds its sync counted in /metrics.
        {
            let mut m = self.shared.metrics();
            m.observe_sync(kind, took);
            m.synced(&status, ready.clone());
        }
        let written = self.save_status(&mut status);
        if !written {
            // The status now says why it could not be written.
            self.shared.metrics().synced(&status, ready);
        }
        tracing::debug!(
            generation = %status.generation,
            kind = %kind.label(),
            ms = took.as_secs_f64() * 1000.0,
            errors = status.errors.len(),
            "synced"
        );
        // The launcher's signal (stdout, the log's format): a line at the
        // first status written, saying "ready" only when /readyz answers 200,
        // and one more when it first does.
        if written && (!self.synced_once || (ready_now && !self.announced)) {
            let msg = match &not_ready {
                None => format!("ready: /readyz answers 200 generation={}", status.generation),
                Some(why) => {
                    format!(
                        "synced generation={}: not ready yet, /readyz answers 503: {why}",
                        status.generation
                    )
                }
            };
            println!("{}", crate::logging::stdout_line(tracing::Level::INFO, &msg, &self.cfg.node));
            let _ = std::io::stdout().flush();
            self.synced_once = true;
            self.announced = ready_now;
        }
        self.last_status = Some(status);
        self.next_sync = Instant::now() + if written { self.cfg.resync } else { STATUS_RETRY };
        self.full = true;
        Ok(())
    }

    /// Writes the status file. A failure (out of fds, a full disk) is no
    /// reason to stop enforcing: it goes into the status and the log (once),
    /// and the caller syncs again after `STATUS_RETRY`. True if written.
    fn save_status(&mut self, status: &mut Status) -> bool {
        match write_status(&self.cfg.status_file, status) {
            Ok(()) => {
                if self.status_error.take().is_some() {
                    info!(path = %self.cfg.status_file.display(), "the status file is written again");
                }
                true
            }
            Err(e) => {
                let e = e.to_string();
                if self.status_error.as_ref() != Some(&e) {
                    error!("{e}; retrying every {} ms", STATUS_RETRY.as_millis());
                }
                status.errors.push(e.clone());
                self.status_error = Some(e);
                false
            }
        }
    }

    fn poll_source(&mut self) {
        let Some(s) = self.source.poll() else { return };
        operator_log::report_source_errors(&mut self.source_errors, &s);
        self.tier_notices.note(&s.model);
        self.pods.catch_up(&s.model, &self.cfg.node, Instant::now());
        self.snap = Some(s);
        if self.next_sync > Instant::now() {
            self.next_sync = Instant::now();
            self.full = false;
        }
    }

    /// Compiles the current state (laid over with the pod reports) and has
    /// the backend enforce it. The first time, a full compile and a full
    /// apply; after it the snapshot recompiles only what changed and the
    /// backend patches only that, and with `full` (the periodic resync) a
    /// thread checks the kernel (`drift`; the loop resyncs only if it drifted,
    /// or where the backend cannot check off the loop), while every
    /// `scratch::EVERY` resyncs a thread compiles the model from scratch to
    /// check the engine: the loop never waits for a full compile or render.
    /// None without a backend or a state; else what is enforced and the
    /// warnings, or the error for the status.
    fn enforce(&mut self, full: bool) -> Option<Result<(PolicyStatus, Vec<String>), String>> {
        let p = self.policy.as_mut()?;
        let s = self.snap.as_ref()?;
        let model = self.pods.overlay(&s.model, &self.cfg.node);
        let first = self.compiled.is_none();
        match self.compiled.as_mut() {
            Some(c) => c.update(model, &s.generation),
            None => {
                let c = Compiled::new(
                    model,
                    &s.generation,
                    &self.cfg.node,
                    &self.cfg.cluster_cidrs,
                    self.cfg.compile,
                );
                self.compiled = Some(c);
            }
        }
        let c = self.compiled.as_mut()?;
        let dirty = c.take_dirty();
        // Every compile counts, even one that changed nothing: a scratch
        // compile vouches for the model it was given and no other.
        self.version += 1;
        let done = if first {
            p.apply(c.ir(), true)
        } else if full {
            // What changed since the last sync is patched first: the resync
            // checks the kernel against the backend's record of `ir`.
            let changed =
                if dirty.is_empty() { Ok(Outcome::default()) } else { p.apply_changes(c.ir(), &dirty) };
            changed.and_then(|a| {
                // A check still running covers this resync; what is in
                // force is what the backend last applied.
                if self.drift.running() || start_drift_check(&mut self.drift, &**p, &self.wake) {
                    return Ok(Outcome { counts: p.counts(), ..a });
                }
                Ok(a.then(p.resync(c.ir())?))
            })
        } else {
            p.apply_changes(c.ir(), &dirty)
        };
        if full && !first && self.scratch.due() {
            let target = scratch::Target {
                node: self.cfg.node.clone(),
                cluster_cidrs: self.cfg.cluster_cidrs.clone(),
                options: self.cfg.compile,
            };
            let wake = self.wake.clone();
            let done = move || wake.iter().for_each(Wake::wake);
            self.scratch.start(self.version, c.model().clone(), c.generation.clone(), target, done);
        }
        Some(record_policy(&self.shared, p.name(), enforced(&**p, c, done)))
    }

    /// A finished kernel check (see `drift`): nothing if the kernel was
    /// intact, another check if the backend wrote meanwhile, else the resync
    /// on the loop, which reads again and repairs what drifted.
    fn check_drift(&mut self) {
        let (Some(c), Some(p)) = (self.compiled.as_ref(), self.policy.as_mut()) else { return };
        match self.drift.take(p.epoch()) {
            None | Some(drift::Next::Intact) => return,
            Some(drift::Next::Again) if start_drift_check(&mut self.drift, &**p, &self.wake) => return,
            Some(_) => {}
        }
        let done = p.resync(c.ir());
        let applied = enforced(&**p, c, done);
        if let Err(e) = &applied {
            error!("{e}");
        }
        let _ = record_policy(&self.shared, p.name(), applied);
    }

    /// A finished scratch compile compared with the loop's (see `scratch`):
    /// on a disagreement the scratch one is logged, kept and applied in full.
    fn check_scratch(&mut self) {
        let (Some(c), Some(p)) = (self.compiled.as_ref(), self.policy.as_mut()) else { return };
        let Some(scratch::Verdict::Differs(mut fresh)) = self.scratch.take(self.version, c.ir()) else {
            return;
        };
        error!(
            backend = %p.name(),
            generation = %c.generation,
            "the incrementally compiled policy differs from a compile from scratch of the same state: \
             applying the latter in full (please report this)"
        );
        fresh.take_dirty();
        let applied = p.apply(fresh.ir(), true).map_err(|e| format!("policy ({}): {e}", p.name()));
        if let Err(e) = &applied {
            error!("{e}");
        }
        let applied = applied.map(|done| (done.counts, policy_status(p.name(), fresh.ir()), fresh.notes()));
        let _ = record_policy(&self.shared, p.name(), applied);
        self.compiled = Some(*fresh);
        self.version += 1;
    }

    /// Writes the conflist (if asked and changed) once this node can carry
    /// pods: its pod CIDR known and, with a policy backend, policy applied.
    /// None when not asked to; else whether the conflist is in place.
    fn write_conflist(&self, status: &mut Status) -> Option<bool> {
        let dir = self.cfg.cni_conf_dir.as_ref()?;
        let s = self.snap.as_ref()?;
        let cidrs = s.model.nodes.get(&self.cfg.node).map(|n| n.pod_cidrs()).unwrap_or_default();
        if cidrs.is_empty() {
            return Some(false);
        }
        if self.policy.is_some() && status.policy.is_none() {
            return Some(false);
        }
        let socket =
            self.cfg.pod_socket.clone().unwrap_or_else(|| weft_conf::netconf::DEFAULT_AGENT_SOCKET.into());
        // An overlay's MTU must be known before a pod gets one too large.
        let mtu = status.overlay.as_ref().map(|o| o.pod_mtu);
        if self.cfg.routing.mode != crate::overlay::Mode::HostGw && mtu.is_none() {
            return Some(false);
        }
        let portmap = self.cfg.cni_bin_dir.join("portmap").is_file();
        let masq = self.masq_in.0.choice().as_str();
        let list = cni_config::conflist(&cidrs, &self.cfg.cluster_cidrs, &socket, portmap, masq, mtu);
        let text = serde_json::to_string_pretty(&list).unwrap_or_default() + "\n";
        match cni_config::write_if_changed(dir, cni_config::CONFLIST, text.as_bytes(), 0o644) {
            Ok(written) => {
                if written {
                    let path = dir.join(cni_config::CONFLIST);
                    info!(path = %path.display(), pod_cidr = %crate::masquerade::joined(&cidrs), "wrote the conflist: the node is ready for pods");
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
    /// the policies, from the state the rules in force were compiled from.
    /// Folding and the rate limit come first: a flood costs a map lookup
    /// per packet, never a model.
    fn on_denied(&mut self, d: &Denied) {
        let Some(view) = self.compiled.as_ref().map(Compiled::explain_view) else { return };
        let now = Instant::now();
        if self.shared.denied().admit(d, now) != Admit::New {
            return;
        }
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        // Explained without the log's lock: the HTTP endpoint never waits on it.
        let line = denied::explain_line(d, view, wall.as_millis() as u64);
        info!("denied {}", serde_json::to_string(&line).unwrap_or_default());
        self.shared.denied().log(d, &line, now);
    }

    /// Denied packets, while no pod or source event waits (a waiting one is
    /// returned for the loop), at most a queue's worth at a time.
    fn drain_denied(&mut self, events: &Receiver<Event>, denied: &Receiver<Denied>) -> Option<Event> {
        denied::drain_while_idle(events, denied, DENIED_QUEUE, |d| self.on_denied(&d))
    }

    fn cleanup(&mut self) {
        for e in self.rt.block_on(delete_all(&self.h)) {
            warn!("cleanup: {e}");
        }
        for e in self.rt.block_on(teardown_overlay(&self.h)) {
            warn!("cleanup: overlay: {e}");
        }
        info!("cleanup: weft's routes and overlay deleted");
        if let Some(p) = self.policy.as_mut() {
            match p.cleanup() {
                Ok(()) => info!(backend = %p.name(), "cleanup: weft's policy chains and sets deleted"),
                Err(e) => warn!(backend = %p.name(), "cleanup: policy: {e}"),
            }
        }
        if self.masq.is_some() {
            match teardown_masquerade() {
                Ok(()) => info!("cleanup: weft's masquerade rules deleted"),
                Err(e) => warn!("cleanup: masquerade: {e}"),
            }
        }
    }
}

/// The ClusterNetworkPolicies of `snap` at their generations: what a
/// successful enforce of it realized on this node.
fn realized_cnps(snap: &Snapshot) -> Realized {
    let cnps = snap.model.cluster_policies.values();
    cnps.filter_map(|p| Some((p.name.clone(), p.generation?))).collect()
}

/// What `enforce` returns: the backend's objects in force, what it enforces
/// and the warnings.
type Enforced = (ObjectCounts, PolicyStatus, Vec<String>);

/// What backend `name` enforces for `ir`.
fn policy_status(name: &str, ir: &PolicyIr) -> PolicyStatus {
    let (v4, v6) = (&ir.v4, &ir.v6);
    let both = |f: fn(&Direction<Ipv4Addr>) -> usize, g: fn(&Direction<Ipv6Addr>) -> usize| {
        f(&v4.ingress) + f(&v4.egress) + g(&v6.ingress) + g(&v6.egress)
    };
    PolicyStatus {
        backend: name.into(),
        local_pods: v4.local.len() + v6.local.len(),
        ingress_isolated: v4.ingress.isolated.len() + v6.ingress.isolated.len(),
        egress_isolated: v4.egress.isolated.len() + v6.egress.isolated.len(),
        triples: both(|d| d.triples.len(), |d| d.triples.len()),
        groups: both(|d| d.groups.len(), |d| d.groups.len()),
        port_groups: both(|d| d.port_groups.len(), |d| d.port_groups.len()),
    }
}

/// Starts `p`'s kernel check off the loop, which `wake` wakes when it is
/// done; false if `p` cannot check so or no thread started.
fn start_drift_check(d: &mut drift::DriftCheck, p: &dyn PolicyBackend, wake: &Option<Wake>) -> bool {
    let Some(check) = p.check() else { return false };
    let wake = wake.clone();
    d.start(check, move || wake.iter().for_each(Wake::wake))
}

/// What backend `p` did with `c`'s IR, for `record_policy`: its change
/// logged, or its error worded.
fn enforced(
    p: &dyn PolicyBackend,
    c: &Compiled,
    done: Result<Outcome, KernelError>,
) -> Result<Enforced, String> {
    let done = done.map_err(|e| format!("policy ({}): {e}", p.name()))?;
    if let Some(changed) = done.change {
        info!(backend = %p.name(), "policy ({}): {changed}", p.name());
    }
    Ok((done.counts, policy_status(p.name(), c.ir()), c.notes()))
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

/// The status file's directory, or the nearest of its ancestors that
/// exists, must be a directory: the first sync creates what is missing (the
/// default, /run/weft, may not exist yet) and writes the file.
fn check_status_dir(path: &Path) -> Result<(), AgentError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let existing = dir.ancestors().find_map(|d| std::fs::metadata(d).ok().map(|m| (d, m)));
    match existing {
        Some((_, m)) if m.is_dir() => Ok(()),
        Some((d, _)) => Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", d.display()),
        )),
        None => Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{}", dir.display()))),
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

/// Reconciles the routes and overlay (and, when owned, the masquerade
/// rules) against `snap` and reads the sysctls; errors go into the status.
async fn sync(
    h: &Handle,
    cfg: &Config,
    snap: &Snapshot,
    masq: Option<(&mut Masquerade, &MasqIn)>,
    full: bool,
) -> Status {
    let node = cfg.node.as_str();
    let mut errors: Vec<String> = snap.errors.iter().map(|e| e.to_string()).collect();
    let routed = routing::sync_routing(h, node, &snap.model, &cfg.routing, &snap.generation).await;
    errors.extend(routed.errors);
    let mut warnings = routed.warnings;
    match operator_log::own_node(&snap.model, node) {
        operator_log::OwnNode::Ready => {}
        operator_log::OwnNode::NoPodCidr(w) => warnings.push(w),
        operator_log::OwnNode::Unknown(e) => errors.push(e),
    }
    let pod_cidrs = snap.model.nodes.get(node).map(|n| n.pod_cidrs()).unwrap_or_default();
    // Without a pod CIDR the rules stay as they are; own_node said why.
    let masq = masq.filter(|_| !pod_cidrs.is_empty());
    let masquerade = match masq.map(|(m, k)| m.reconcile(k, &pod_cidrs, full)) {
        None => None,
        Some(Ok(cidrs)) => Some(crate::masquerade::joined(&cidrs)),
        Some(Err(e)) => {
            errors.push(e);
            None
        }
    };
    Status {
        node: node.into(),
        generation: snap.generation.clone(),
        routes: routed.routes,
        overlay: routed.overlay,
        ip_forward: read_sysctl(IP_FORWARD).is_ok_and(|v| v == "1"),
        bridge_nf_call_iptables: read_sysctl(BRIDGE_NF_CALL_IPTABLES).ok().map(|v| v == "1"),
        bridge_nf_call_ip6tables: read_sysctl(BRIDGE_NF_CALL_IP6TABLES).ok().map(|v| v == "1"),
        masquerade,
        policy: None,
        warnings,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_dir_may_be_created_later_but_not_under_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("run/weft/status.json");
        check_status_dir(&deep).unwrap();
        let status = Status { node: "n".into(), generation: "g".into(), ..Status::default() };
        write_status(&deep, &status).unwrap();
        assert!(crate::status::read_status(&deep).is_some(), "the first write creates the directory");
        let file = tmp.path().join("plain");
        std::fs::write(&file, "").unwrap();
        let e = check_status_dir(&file.join("x/status.json")).unwrap_err();
        assert!(e.to_string().contains("plain is not a directory"), "{e}");
    }
}
