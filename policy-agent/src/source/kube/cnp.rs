//! ClusterNetworkPolicy from the API, when the cluster has its CRD
//! (network-policy-api v0.2.0, `policy.networking.k8s.io/v1alpha2`). Most
//! clusters do not, so the agent must run without it: `follow` asks API
//! discovery whether `clusternetworkpolicies` is served, at start and every
//! `recheck` after; while it is, a watcher (`watch::reflect`) fills a store,
//! and while it is not, CNP is off (said once per change, not per check).
//!
//! Until the first discovery answer the source gives no snapshot (as for
//! the kinds not listed yet): starting without the cluster's CNPs would open,
//! for a moment, what an Admin Deny closes. No k8s-openapi type exists for
//! the CRD; `CnpObject` carries the metadata and the spec untyped, and the
//! manifest parser types and validates it like any other object.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::ClusterResourceScope;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::Client;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::api_errors::describe;
use super::watch::{self, Backoff, Shared};
use super::Watched;

/// The API group of ClusterNetworkPolicy.
pub const GROUP: &str = "policy.networking.k8s.io";
/// The version weft reads.
pub const VERSION: &str = "v1alpha2";
/// The resource, as RBAC and the URL name it.
pub const RESOURCE: &str = "clusternetworkpolicies";
/// The kind.
pub const KIND: &str = "ClusterNetworkPolicy";
/// How often discovery is asked again, in either state, by default.
pub const RECHECK: Duration = Duration::from_secs(60);

/// The CNP collection as the watcher reads it (for RBAC and the stand-in).
pub fn watched_cnp() -> Watched {
    Watched { group: GROUP, version: VERSION, resource: RESOURCE, kind: KIND, verbs: &["list", "watch"] }
}

/// A ClusterNetworkPolicy as served: its metadata, its spec and its status, untyped.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CnpObject {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
    /// What the status writer (`cnp_status`) compares its conditions with.
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

/// Serialised with its kind (list items come without one), so the manifest
/// parser picks it; without the status, which the parser does not read.
impl Serialize for CnpObject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            api_version: String,
            kind: &'static str,
            metadata: &'a ObjectMeta,
            spec: &'a serde_json::Value,
        }
        Wire {
            api_version: format!("{GROUP}/{VERSION}"),
            kind: KIND,
            metadata: &self.metadata,
            spec: &self.spec,
        }
        .serialize(s)
    }
}

impl kube::Resource for CnpObject {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        RESOURCE.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What discovery last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Discovered {
    /// No answer yet.
    Unknown,
    Served,
    NotServed,
}

/// The CNP side of the source: what discovery said and, while served, the store.
pub(super) struct CnpSlot {
    state: Mutex<(Discovered, Option<Store<CnpObject>>)>,
}

impl CnpSlot {
    pub(super) fn new() -> CnpSlot {
        CnpSlot { state: Mutex::new((Discovered::Unknown, None)) }
    }

    fn lock(&self) -> MutexGuard<'_, (Discovered, Option<Store<CnpObject>>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// None until discovery answered and, if the CRD is served, its first
    /// list landed (`listed`); then the CNPs (none when not served).
    pub(super) fn objects(&self, listed: bool) -> Option<Vec<Arc<CnpObject>>> {
        match &*self.lock() {
            (Discovered::Unknown, _) => None,
            (Discovered::NotServed, _) => Some(Vec::new()),
            (Discovered::Served, Some(store)) if listed => Some(store.state()),
            (Discovered::Served, _) => None,
        }
    }

    /// True while discovery says the CRD is served.
    pub(super) fn served(&self) -> bool {
        self.lock().0 == Discovered::Served
    }

    /// Records an answer; true if it differs from the last one.
    fn set(&self, d: Discovered, store: Option<Store<CnpObject>>) -> bool {
        let mut st = self.lock();
        let changed = st.0 != d;
        *st = (d, store);
        changed
    }
}

/// Asks discovery whether the CRD is served: Ok(false) on 404 (the group or
/// version is not there) or when the version lists no such resource.
async fn discover(client: &Client) -> Result<bool, kube::Error> {
    match client.list_api_group_resources(&format!("{GROUP}/{VERSION}")).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == RESOURCE)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Follows the CRD until the runtime stops: discovery every `recheck`, the
/// watcher while it is served. Logs each change of state once.
pub(super) async fn follow(client: Client, shared: Arc<Shared>, slot: Arc<CnpSlot>, recheck: Duration) {
    let mut backoff = Backoff::new();
    loop {
        match discover(&client).await {
            Err(e) => {
                // Said as a failed list is, folded with the watchers' troubles.
                let d = describe(&watcher::Error::InitialListFailed(e), RESOURCE);
                let text = format!("discovery of {RESOURCE}.{GROUP}/{VERSION}: {}", d.text);
                shared.report(d.trouble, &format!("kube API: {text}"), Instant::now());
                shared.update(KIND, |s| s.error = Some(text));
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Ok(false) => {
                backoff.reset();
                shared.update(KIND, |s| s.error = None);
                // Said, and the source woken, only when the answer changes.
                if slot.set(Discovered::NotServed, None) {
                    info!(
                        "kube API: {RESOURCE}.{GROUP}/{VERSION} is not served (no CRD from network-policy-api \
                         v0.2.0): ClusterNetworkPolicy is off; asking again every {} s",
                        recheck.as_secs()
                    );
                    shared.changed(KIND);
                }
                tokio::time::sleep(recheck).await;
            }
            Ok(true) => {
                backoff.reset();
                shared.update(KIND, |s| s.error = None);
                let (store, writer) = reflector::store();
                slot.set(Discovered::Served, Some(store));
                info!("kube API: {RESOURCE}.{GROUP}/{VERSION} is served: watching ClusterNetworkPolicies");
                shared.changed(KIND);
                watch_while_served(&client, writer, &shared, recheck).await;
            }
        }
    }
}

/// Runs the watcher until discovery no longer finds the CRD.
async fn watch_while_served(
    client: &Client,
    writer: reflector::store::Writer<CnpObject>,
    shared: &Arc<Shared>,
    recheck: Duration,
) {
    let watcher = watch::reflect(client.clone(), writer, KIND, shared.clone());
    let mut watcher = std::pin::pin!(watcher);
    loop {
        tokio::select! {
            // `reflect` never ends by itself.
            () = &mut watcher => return,
            () = tokio::time::sleep(recheck) => {}
        }
        // A failed discovery is no proof the CRD went: keep watching.
        if let Ok(false) = discover(client).await {
            // `follow` records it and says so.
            shared.forget(KIND);
            return;
        }
    }
}
