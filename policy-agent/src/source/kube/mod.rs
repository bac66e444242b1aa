//! The Kubernetes API as the agent's source (`--source kube`): watchers for
//! Nodes, Namespaces, Pods and NetworkPolicies (`watch`), and for
//! ClusterNetworkPolicies while their CRD is served (`cnp`), fill reflector
//! stores on a runtime thread; `poll` translates the stores into the model
//! (`translate`) when they changed, without blocking. No snapshot is given
//! before every kind has been listed once (an empty store would withdraw
//! every route and rule); after that, an unreachable API server leaves the
//! stores, and so the rules, as they were, and the snapshot's errors say so.
//! While the CRD is served, `cnp_status` reports what this node realized and,
//! on the node holding its Lease, writes every CNP's status.

mod api_errors;
pub mod cnp;
pub mod cnp_status;
pub mod translate;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::Client;

use crate::model::{Snapshot, SourceError};
use crate::source::Source;
use cnp::{CnpObject, CnpSlot};
use cnp_status::{Realized, StatusConfig};
use translate::Translator;
pub use translate::{object_key, state_generation, API_ORIGIN};

/// The origin of the watchers' own errors in a snapshot (the API is
/// unreachable, refusing, ...); they log them themselves, folded.
pub const WATCH_ORIGIN: &str = "kube API watch";
use watch::{Shared, Touched};

/// One resource the agent lists and watches: what its RBAC must grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watched {
    /// The API group ("" for the core group).
    pub group: &'static str,
    pub version: &'static str,
    /// The plural resource name, as in an RBAC rule and the URL.
    pub resource: &'static str,
    pub kind: &'static str,
    pub verbs: &'static [&'static str],
}

impl Watched {
    fn of<K: k8s_openapi::Resource>() -> Watched {
        Watched {
            group: K::GROUP,
            version: K::VERSION,
            resource: K::URL_PATH_SEGMENT,
            kind: K::KIND,
            verbs: &["list", "watch"],
        }
    }

    /// The collection's path on the API server.
    pub fn path(&self) -> String {
        match self.group {
            "" => format!("/api/{}/{}", self.version, self.resource),
            g => format!("/apis/{g}/{}/{}", self.version, self.resource),
        }
    }
}

/// Every resource the watchers use, from the same types they watch (the
/// RBAC rules in deploy/ must grant exactly these).
pub fn watched() -> [Watched; 4] {
    [Watched::of::<Node>(), Watched::of::<Namespace>(), Watched::of::<Pod>(), Watched::of::<NetworkPolicy>()]
}

/// Why the API source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig { path: PathBuf, source: kube::config::KubeconfigError },
    #[error("no Kubernetes client configuration (no kubeconfig, not in a cluster): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("start the watcher thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the watcher thread ended before it started")]
    ThreadGone,
}

/// The reflector stores, read by `poll`.
#[derive(Clone)]
struct Stores {
    nodes: Store<Node>,
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
    policies: Store<NetworkPolicy>,
}

/// The Kubernetes API source.
pub struct KubeSource {
    stores: Stores,
    /// ClusterNetworkPolicy, when the CRD is served (`cnp`).
    cnp: Arc<CnpSlot>,
    shared: Arc<Shared>,
    translator: Translator,
    /// The change counter of the last snapshot returned.
    seen: Option<u64>,
    /// What this node realized, for the status reporter (with `cnp_status` on).
    realized: Option<tokio::sync::watch::Sender<Option<Realized>>>,
    /// Stops the runtime thread when dropped.
    _stop: futures::channel::oneshot::Sender<()>,
}

impl KubeSource {
    /// Loads the client configuration (`kubeconfig`, else KUBECONFIG or
    /// ~/.kube/config, else the in-cluster service account) and starts the
    /// watchers on a thread of their own. Returns once the configuration is
    /// loaded; the lists follow in the background.
    pub fn start(kubeconfig: Option<&Path>) -> Result<KubeSource, KubeSourceError> {
        KubeSource::start_with(kubeconfig, cnp::RECHECK)
    }

    /// `start`, asking discovery whether ClusterNetworkPolicy is served every
    /// `cnp_recheck` (tests shorten it).
    pub fn start_with(
        kubeconfig: Option<&Path>,
        cnp_recheck: Duration,
    ) -> Result<KubeSource, KubeSourceError> {
        KubeSource::start_opts(kubeconfig, Options { cnp_recheck, cnp_status: None })
    }

    /// `start` with every option.
    pub fn start_opts(kubeconfig: Option<&Path>, opts: Options) -> Result<KubeSource, KubeSourceError> {
        let Options { cnp_recheck, cnp_status } = opts;
        let (nodes, w_nodes) = reflector::store();
        let (namespaces, w_namespaces) = reflector::store();
        let (pods, w_pods) = reflector::store();
        let (policies, w_policies) = reflector::store();
        let shared = Arc::new(Shared::default());
        let cnp = Arc::new(CnpSlot::new());
        let slot = cnp.clone();
        let (stop, stopped) = futures::channel::oneshot::channel::<()>();
        let (started_tx, started) = mpsc::channel();
        let kubeconfig = kubeconfig.map(Path::to_path_buf);
        let sh = shared.clone();
        let (realized, realized_rx) = tokio::sync::watch::channel(None);
        let status_inputs = cnp_status.map(|cfg| {
            let inputs =
                cnp_status::Inputs { shared: shared.clone(), slot: cnp.clone(), nodes: nodes.clone() };
            (cfg, inputs)
        });
        let realized = status_inputs.is_some().then_some(realized);
        std::thread::Builder::new()
            .name("weft-agent-kube".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return drop(started_tx.send(Err(KubeSourceError::Thread(e)))),
                };
                rt.block_on(async move {
                    let client = match connect(kubeconfig).await {
                        Ok(c) => c,
                        Err(e) => return drop(started_tx.send(Err(e))),
                    };
                    let _ = started_tx.send(Ok(()));
                    let [n, ns, p, np] = watched().map(|w| w.kind);
                    tokio::spawn(watch::reflect(client.clone(), w_nodes, n, sh.clone()));
                    tokio::spawn(watch::reflect(client.clone(), w_namespaces, ns, sh.clone()));
                    tokio::spawn(watch::reflect(client.clone(), w_pods, p, sh.clone()));
                    tokio::spawn(cnp::follow(client.clone(), sh.clone(), slot, cnp_recheck));
                    if let Some((cfg, inputs)) = status_inputs {
                        cnp_status::spawn(client.clone(), cfg, inputs, realized_rx);
                    }
                    tokio::spawn(watch::reflect(client, w_policies, np, sh));
                    // Until the source is dropped (Err: the sender went, the same thing).
                    let _ = stopped.await;
                });
            })
            .map_err(KubeSourceError::Thread)?;
        started.recv().map_err(|_| KubeSourceError::ThreadGone)??;
        Ok(KubeSource {
            stores: Stores { nodes, namespaces, pods, policies },
            cnp,
            shared,
            translator: Translator::default(),
            seen: None,
            realized,
            _stop: stop,
        })
    }
}

/// How the API source runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often discovery is asked whether ClusterNetworkPolicy is served.
    pub cnp_recheck: Duration,
    /// Report this node's realized CNPs and compete to write their status; None: off.
    pub cnp_status: Option<StatusConfig>,
}

impl Default for Options {
    fn default() -> Options {
        Options { cnp_recheck: cnp::RECHECK, cnp_status: None }
    }
}

/// The client for `kubeconfig`, or the inferred configuration.
async fn connect(kubeconfig: Option<PathBuf>) -> Result<Client, KubeSourceError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(&path)
                .map_err(|source| KubeSourceError::Kubeconfig { path: path.clone(), source })?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|source| KubeSourceError::Kubeconfig { path, source })?
        }
        None => kube::Config::infer().await.map_err(KubeSourceError::Infer)?,
    };
    tracing::info!("kube API: watching {}", config.cluster_url);
    Client::try_from(config).map_err(KubeSourceError::Client)
}

impl Source for KubeSource {
    fn set_wake(&mut self, wake: crate::source::WakeFn) {
        self.shared.set_wake(wake);
    }

    fn report_realized(&mut self, realized: &Realized) {
        if let Some(tx) = &self.realized {
            // Wakes the reporter only on a change.
            tx.send_if_modified(|r| {
                let changed = r.as_ref() != Some(realized);
                if changed {
                    *r = Some(realized.clone());
                }
                changed
            });
        }
    }

    fn poll(&mut self) -> Option<Snapshot> {
        // Read before the stores: a change that lands after this read bumps
        // the counter again, so the next poll sees it.
        let version = self.shared.version();
        if self.seen == Some(version) {
            return None;
        }
        let kinds = self.shared.kinds();
        if watched().iter().any(|w| !kinds.get(w.kind).is_some_and(|k| k.ready)) {
            return None;
        }
        let cnps = self.cnp.objects(kinds.get(cnp::KIND).is_some_and(|k| k.ready))?;
        self.seen = Some(version);
        let touched = self.shared.take_touched();
        let [n, ns, p, np] = watched().map(|w| w.kind);
        let t = &mut self.translator;
        follow::<Node>(t, n, &self.stores.nodes, touched.get(n));
        follow::<Namespace>(t, ns, &self.stores.namespaces, touched.get(ns));
        follow::<Pod>(t, p, &self.stores.pods, touched.get(p));
        follow::<NetworkPolicy>(t, np, &self.stores.policies, touched.get(np));
        // Few, and their store comes and goes with the CRD: read whole.
        t.replace::<CnpObject, _>(cnp::KIND, cnps);
        let mut t = t.translated();
        t.errors.extend(
            kinds
                .values()
                .filter_map(|k| k.error.clone())
                .map(|reason| SourceError { file: WATCH_ORIGIN.into(), reason }),
        );
        Some(Snapshot { generation: t.generation, model: t.model, errors: t.errors })
    }
}

/// Brings `t` up to what changed in `kind`'s `store`: the objects touched,
/// or the whole store.
fn follow<K>(t: &mut Translator, kind: &'static str, store: &Store<K>, touched: Option<&Touched>)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::Serialize,
{
    match touched {
        None => {}
        Some(Touched::All) => t.replace::<K, _>(kind, store.state()),
        Some(Touched::Keys(keys)) => {
            for key in keys {
                let r = match key.split_once('/') {
                    Some((ns, name)) => ObjectRef::<K>::new(name).within(ns),
                    None => ObjectRef::<K>::new(key),
                };
                t.put(kind, key, store.get(&r).as_deref());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watched_resources_and_their_paths() {
        let w = watched();
        let got: Vec<(&str, &str, &str)> = w.iter().map(|w| (w.group, w.resource, w.kind)).collect();
        assert_eq!(
            got,
            [
                ("", "nodes", "Node"),
                ("", "namespaces", "Namespace"),
                ("", "pods", "Pod"),
                ("networking.k8s.io", "networkpolicies", "NetworkPolicy")
            ]
        );
        assert_eq!(w[2].path(), "/api/v1/pods");
        assert_eq!(w[3].path(), "/apis/networking.k8s.io/v1/networkpolicies");
        assert!(w.iter().all(|w| w.verbs == ["list", "watch"]));
    }

    #[test]
    fn a_missing_kubeconfig_fails_at_start() {
        let e =
            KubeSource::start(Some(Path::new("/nonexistent/weft-kubeconfig"))).err().expect("no such file");
        assert!(e.to_string().contains("/nonexistent/weft-kubeconfig"), "{e}");
    }
}
