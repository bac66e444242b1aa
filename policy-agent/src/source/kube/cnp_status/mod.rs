//! ClusterNetworkPolicy status: every CNP's `status.conditions` say whether
//! weft accepts it (`Accepted`, with the parser's words when not) and on how
//! many of the cluster's nodes it is realized at its current generation
//! (`Realized`). Nodes never write the same object:
//!
//! - `report`: each agent writes what its last successful sync applied
//!   (CNP name -> metadata.generation, `Source::report_realized`) into a
//!   Lease of its own, `weft-node-<node>`, only when that changed.
//! - `write`: the agents of the first few ready nodes (`lease::candidates`)
//!   compete for the Lease `weft-cnp-status`; its holder alone reads the
//!   node reports and applies each CNP's conditions (server-side apply on
//!   `/status`, field manager `weft-agent`) when what they say changed.
//!
//! Both run as tasks on the watchers' runtime, only while the CRD is served,
//! never in the agent's sync loop; every request is bounded by
//! `Timing::request`, a failure is logged once and retried.

pub mod conditions;
pub mod lease;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use super::cnp::{self, CnpObject, CnpSlot};
use super::watch::{Backoff, Shared};
use crate::kube_rbac::ApiCall;
use crate::logging::error_chain;
use crate::model::manifest::{parse_serialized, Object};
pub use conditions::Realized;
use conditions::{Reports, Validity, Wanted};
use lease::{Step, REALIZED_ANNOTATION, REPORT_LABEL, REPORT_LABEL_VALUE, WRITER_LEASE};

/// Who writes the status and where its Leases are.
#[derive(Debug, Clone)]
pub struct StatusConfig {
    /// This node: its report's holder and its candidate identity.
    pub node: String,
    /// The namespace of the Leases (the agent's own).
    pub namespace: String,
    pub timing: Timing,
}

/// The pace of the writer and the reporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The writer Lease's leaseDurationSeconds.
    pub lease: Duration,
    /// How often the writer renews and writes, and the reporter retries.
    pub period: Duration,
    /// Bound on every API request.
    pub request: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            lease: Duration::from_secs(15),
            period: Duration::from_secs(5),
            request: Duration::from_secs(10),
        }
    }
}

/// The field manager of the status writes.
pub const FIELD_MANAGER: &str = "weft-agent";
/// How often an unchanged report is read back (and written if it went).
const REPORT_RECHECK: Duration = Duration::from_secs(60);
/// Status writes per round at most; the rest follow in the next rounds.
const PATCHES_PER_ROUND: usize = 100;

/// The API calls of the writer and the reporter (what RBAC must grant).
pub fn calls() -> [ApiCall; 2] {
    use k8s_openapi::Resource;
    [
        ApiCall {
            group: cnp::GROUP,
            version: cnp::VERSION,
            resource: STATUS_RESOURCE,
            verbs: &["patch"],
            namespaced: false,
        },
        ApiCall {
            group: Lease::GROUP,
            version: Lease::VERSION,
            resource: Lease::URL_PATH_SEGMENT,
            verbs: &["get", "list", "create", "update"],
            namespaced: true,
        },
    ]
}

/// The status subresource, as RBAC names it.
const STATUS_RESOURCE: &str = "clusternetworkpolicies/status";

/// What the tasks read of the source.
pub(super) struct Inputs {
    pub shared: Arc<Shared>,
    pub slot: Arc<CnpSlot>,
    pub nodes: Store<Node>,
}

/// Starts the reporter and the writer on the current runtime.
pub(super) fn spawn(
    client: Client,
    cfg: StatusConfig,
    inputs: Inputs,
    realized: watch::Receiver<Option<Realized>>,
) {
    tokio::spawn(report(client.clone(), cfg.clone(), inputs.slot.clone(), realized));
    tokio::spawn(write(client, cfg, inputs));
}

/// An API request bounded in time; Err says what went wrong.
async fn bounded<T>(limit: Duration, f: impl Future<Output = Result<T, kube::Error>>) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(kube::Error::Api(s))) if s.code == 403 => Err(format!(
            "refused (403 {}: {}); check weft's RBAC (deploy/weft.yaml grants it)",
            s.reason, s.message
        )),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
    }
}

/// Logs a task's trouble once per change, and its end.
#[derive(Default)]
struct Failure(Option<String>);

impl Failure {
    fn failed(&mut self, what: &str, e: String) {
        if self.0.as_ref() != Some(&e) {
            warn!("ClusterNetworkPolicy status: {what}: {e}; retrying");
            self.0 = Some(e);
        }
    }

    fn ok(&mut self, what: &str) {
        if self.0.take().is_some() {
            info!("ClusterNetworkPolicy status: {what} works again");
        }
    }
}

fn now_micro() -> Timestamp {
    let d = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp::from_microsecond(i64::try_from(d.as_micros()).unwrap_or(0)).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Keeps this node's report Lease saying what its last sync applied.
async fn report(
    client: Client,
    cfg: StatusConfig,
    slot: Arc<CnpSlot>,
    mut realized: watch::Receiver<Option<Realized>>,
) {
    let Some(name) = lease::report_lease(&cfg.node) else {
        warn!(
            "ClusterNetworkPolicy status: node name {:?} too long for a Lease name: not reported",
            cfg.node
        );
        return;
    };
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    // What was last written, and when it was last seen in place.
    let (mut written, mut cut_said) = (None::<(String, Instant)>, false);
    let (mut trouble, mut backoff, mut retry) = (Failure::default(), Backoff::new(), false);
    loop {
        let wait = if retry { backoff.next_delay() } else { cfg.timing.period };
        tokio::select! {
            changed = realized.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
        if !slot.served() {
            continue;
        }
        let Some(applied) = realized.borrow_and_update().clone() else { continue };
        let (text, cut) = lease::encode(&applied, lease::MAX_REPORT_BYTES);
        // Unchanged: read again now and then (a deleted Lease is written again), never written.
        if written.as_ref().is_some_and(|(w, at)| *w == text && at.elapsed() < REPORT_RECHECK) {
            continue;
        }
        if cut && !cut_said {
            warn!(
                "ClusterNetworkPolicy status: this node's report holds only the first CNPs by name ({} bytes at \
                 most); the others show it as not realized",
                lease::MAX_REPORT_BYTES
            );
        }
        cut_said = cut;
        match bounded(cfg.timing.request, put_report(&api, &name, &cfg.node, &text)).await {
            Ok(()) => {
                trouble.ok("the node report");
                written = Some((text, Instant::now()));
                retry = false;
                backoff.reset();
            }
            Err(e) => {
                trouble.failed(&format!("write Lease {}/{name}", cfg.namespace), e);
                retry = true;
            }
        }
    }
}

/// Writes `text` into the report Lease `name` unless it holds it already.
async fn put_report(api: &Api<Lease>, name: &str, node: &str, text: &str) -> Result<(), kube::Error> {
    let existing = api.get_opt(name).await?;
    let exists = existing.is_some();
    let mut l = existing.unwrap_or_default();
    let holder = l.spec.as_ref().and_then(|s| s.holder_identity.as_deref());
    if exists
        && l.annotations().get(REALIZED_ANNOTATION).map(String::as_str) == Some(text)
        && holder == Some(node)
    {
        return Ok(());
    }
    l.metadata.name = Some(name.into());
    l.labels_mut().insert(REPORT_LABEL.into(), REPORT_LABEL_VALUE.into());
    l.annotations_mut().insert(REALIZED_ANNOTATION.into(), text.into());
    let spec = l.spec.get_or_insert_with(Default::default);
    spec.holder_identity = Some(node.into());
    spec.renew_time = Some(MicroTime(now_micro()));
    if exists {
        api.replace(name, &PostParams::default(), &l).await?;
    } else {
        api.create(&PostParams::default(), &l).await?;
    }
    Ok(())
}

/// The writer's state between rounds.
#[derive(Default)]
struct Writer {
    observed: Option<lease::Observed>,
    leading: bool,
    /// By CNP: its resourceVersion when last written and what was written,
    /// until the store shows the write (no second write meanwhile).
    pending: BTreeMap<String, (String, [Wanted; 2])>,
    /// By CNP: its resourceVersion and what the parser said of it.
    parsed: BTreeMap<String, (String, Validity)>,
}

/// Competes for the writer Lease every period; while held, writes the status.
async fn write(client: Client, cfg: StatusConfig, inputs: Inputs) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let cnps: Api<CnpObject> = Api::all(client);
    let mut w = Writer::default();
    let (mut lease_trouble, mut write_trouble) = (Failure::default(), Failure::default());
    loop {
        tokio::time::sleep(cfg.timing.period).await;
        let candidate = inputs.slot.served() && is_candidate(&cfg.node, &inputs.nodes);
        let start = Instant::now();
        let held = if candidate {
            match bounded(cfg.timing.request, hold(&leases, &cfg, &mut w.observed)).await {
                Ok(held) => {
                    lease_trouble.ok("the writer Lease");
                    held
                }
                Err(e) => {
                    lease_trouble.failed(&format!("Lease {}/{WRITER_LEASE}", cfg.namespace), e);
                    false
                }
            }
        } else {
            false
        };
        if held != w.leading {
            let what = if held { "writes" } else { "no longer writes" };
            info!(
                "ClusterNetworkPolicy status: this node {what} it (Lease {}/{WRITER_LEASE})",
                cfg.namespace
            );
            w.leading = held;
        }
        if !held {
            continue;
        }
        match w.round(&cfg, &inputs, &leases, &cnps, start).await {
            Ok(()) => write_trouble.ok("writing"),
            Err(e) => write_trouble.failed("writing", e),
        }
    }
}

/// True if this node's agent competes for the writer Lease.
fn is_candidate(me: &str, nodes: &Store<Node>) -> bool {
    let state = nodes.state();
    let ready = |n: &Node| {
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        ready.is_none_or(|c| c.status == "True")
    };
    lease::candidates(state.iter().map(|n| (n.metadata.name.as_deref().unwrap_or_default(), ready(n))))
        .contains(&me)
}

/// One round of the election: true if this node holds the writer Lease now.
async fn hold(
    api: &Api<Lease>,
    cfg: &StatusConfig,
    observed: &mut Option<lease::Observed>,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(WRITER_LEASE).await?;
    let step = lease::decide(
        &cfg.node,
        current.as_ref().and_then(|l| l.spec.as_ref()),
        observed,
        Instant::now(),
        cfg.timing.lease,
    );
    let now = MicroTime(now_micro());
    let seconds = i32::try_from(cfg.timing.lease.as_secs()).unwrap_or(i32::MAX);
    let pp = PostParams::default();
    let done = match (step, current) {
        (Step::Follow(_), _) => return Ok(false),
        (_, None) => {
            let l = Lease {
                metadata: ObjectMeta { name: Some(WRITER_LEASE.into()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.node.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            api.create(&pp, &l).await
        }
        (_, Some(mut l)) => {
            let spec = l.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(cfg.node.as_str()) {
                spec.holder_identity = Some(cfg.node.clone());
                spec.acquire_time = Some(now.clone());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            }
            spec.renew_time = Some(now);
            spec.lease_duration_seconds = Some(seconds);
            api.replace(WRITER_LEASE, &pp, &l).await
        }
    };
    match done {
        Ok(_) => Ok(true),
        // Another node wrote it first: it holds it.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

impl Writer {
    /// Reads the node reports and writes the status of every CNP whose
    /// conditions changed, while the Lease just renewed at `start` is surely held.
    async fn round(
        &mut self,
        cfg: &StatusConfig,
        inputs: &Inputs,
        leases: &Api<Lease>,
        cnps: &Api<CnpObject>,
        start: Instant,
    ) -> Result<(), String> {
        let listed = inputs.shared.kinds().get(cnp::KIND).is_some_and(|k| k.ready);
        let Some(objects) = inputs.slot.objects(listed) else { return Ok(()) };
        let selector = format!("{REPORT_LABEL}={REPORT_LABEL_VALUE}");
        let list = bounded(cfg.timing.request, leases.list(&ListParams::default().labels(&selector))).await?;
        let reports = Reports {
            nodes: inputs.nodes.state().iter().filter_map(|n| n.metadata.name.clone()).collect(),
            realized: list.items.iter().filter_map(node_report).collect(),
        };
        let names: std::collections::BTreeSet<String> = objects.iter().map(|o| o.name_any()).collect();
        self.pending.retain(|k, _| names.contains(k));
        self.parsed.retain(|k, _| names.contains(k));
        let (mut writes, mut first_error) = (0, None);
        for obj in &objects {
            // Past half the Lease since it was renewed, another node may hold it soon.
            if writes >= PATCHES_PER_ROUND || start.elapsed() > cfg.timing.lease / 2 {
                break;
            }
            let Some((name, body, pending)) = self.plan(obj, &reports) else { continue };
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            writes += 1;
            match bounded(cfg.timing.request, cnps.patch_status(&name, &pp, &Patch::Apply(body))).await {
                Ok(_) => drop(self.pending.insert(name, pending)),
                // One CNP's failure (deleted meanwhile) does not hold the others back.
                Err(e) => drop(first_error.get_or_insert(format!("ClusterNetworkPolicy {name}: {e}"))),
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The status to apply to `obj`, if its conditions must change.
    fn plan(
        &mut self,
        obj: &CnpObject,
        reports: &Reports,
    ) -> Option<(String, serde_json::Value, (String, [Wanted; 2]))> {
        let name = obj.name_any();
        let rv = obj.resource_version().unwrap_or_default();
        let validity = match self.parsed.get(&name) {
            Some((at, v)) if *at == rv => v.clone(),
            _ => {
                let v = validity(obj);
                self.parsed.insert(name.clone(), (rv.clone(), v.clone()));
                v
            }
        };
        let wanted = conditions::wanted(&name, obj.metadata.generation, &validity, reports);
        if self.pending.get(&name).is_some_and(|(at, w)| *at == rv && *w == wanted) {
            return None;
        }
        let current: Vec<Condition> = obj
            .status
            .as_ref()
            .and_then(|s| s.get("conditions"))
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default();
        let conditions = conditions::update(&wanted, &current, Time(now_micro()))?;
        let body = json!({
            "apiVersion": format!("{}/{}", cnp::GROUP, cnp::VERSION),
            "kind": cnp::KIND,
            "metadata": {"name": name},
            "status": {"conditions": conditions},
        });
        Some((name, body, (rv, wanted)))
    }
}

/// What weft's parser says of a served CNP.
fn validity(obj: &CnpObject) -> Validity {
    match parse_serialized(obj).into_iter().next() {
        Some(Ok(Object::ClusterNetworkPolicy(p))) => Ok(p.fails_closed()),
        Some(Err(e)) => Err(e.reason),
        // A CnpObject always serialises as a ClusterNetworkPolicy.
        Some(Ok(_)) | None => Err("not a ClusterNetworkPolicy".into()),
    }
}

/// A node report Lease: its node and what it realized.
fn node_report(l: &Lease) -> Option<(String, Realized)> {
    let node = l.spec.as_ref()?.holder_identity.clone()?;
    Some((node, lease::decode(l.annotations().get(REALIZED_ANNOTATION)?)?))
}
