//! The watchers: one kube-runtime watcher per watched kind feeding a
//! reflector store, on a tokio runtime in a thread of their own. Each
//! watcher lists, then watches from the list's resourceVersion; kube-runtime
//! follows bookmarks and re-watches when a watch times out. On any error the
//! watcher is dropped and, after a back-off, a new one re-lists, as
//! client-go's reflector does: a watch that expired (410 Gone) re-lists at
//! once, an API server that is unreachable or failing is retried at a
//! growing interval. The store keeps its contents until a re-list completes
//! (kube-runtime swaps it in at `InitDone`), so the rules built from it stay
//! in force while the API cannot be reached.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, watcher, Event};
use kube::{Api, Client, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{error, info, warn};

use super::api_errors::{describe, Trouble};
use super::translate::object_key;
use crate::log_fold::Fold;

/// What the watchers tell the source: a change counter, what changed in
/// each kind's store, and each kind's state.
#[derive(Default)]
pub(super) struct Shared {
    /// Bumped on every store change (after `touched` says what changed)
    /// and every change of `kinds`.
    version: AtomicU64,
    /// What changed in each kind's store since the source took it last.
    touched: Mutex<BTreeMap<&'static str, Touched>>,
    kinds: Mutex<BTreeMap<&'static str, KindState>>,
    /// Wakes the agent loop on a Pod change (`Source::set_wake`).
    wake: OnceLock<crate::source::WakeFn>,
    /// Repeats of each kind of trouble, all watchers together: one outage
    /// is one line, then one count per window, not a line per retry per kind.
    fold: Mutex<Fold>,
}

/// What changed in one kind's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Touched {
    /// These objects (`translate::object_key`).
    Keys(BTreeSet<String>),
    /// Anything: the store was swapped by a re-list, or more than
    /// `MAX_TOUCHED` objects changed before the source looked.
    All,
}

/// Keys remembered per kind before a change counts as `Touched::All`: a
/// burst of events costs one pass over the store, not unbounded memory.
pub(super) const MAX_TOUCHED: usize = 4096;

/// One kind's watcher, as far as the source cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct KindState {
    /// A first full list has landed in the store.
    pub ready: bool,
    /// The last error, until a list succeeds again.
    pub error: Option<String>,
}

impl Shared {
    pub(super) fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    fn bump(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    /// Records that `kind`'s object at `key` changed, or with None that
    /// anything in its store did; before the change bumps the version.
    pub(super) fn touch(&self, kind: &'static str, key: Option<String>) {
        let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        let t = touched.entry(kind).or_insert_with(|| Touched::Keys(BTreeSet::new()));
        match (key, &mut *t) {
            (Some(key), Touched::Keys(keys)) if keys.len() < MAX_TOUCHED || keys.contains(&key) => {
                keys.insert(key);
            }
            (Some(_), Touched::All) => {}
            _ => *t = Touched::All,
        }
    }

    /// What changed since the last call, per kind. Taken after reading
    /// the version: a change it misses bumps the version after that read.
    pub(super) fn take_touched(&self) -> BTreeMap<&'static str, Touched> {
        std::mem::take(&mut *self.touched.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(super) fn set_wake(&self, wake: crate::source::WakeFn) {
        let _ = self.wake.set(wake);
    }

    /// Bumps the version for a change to `kind`'s store; a Pod change also
    /// wakes the agent, so an ADD waiting for its pod is answered at once.
    pub(super) fn changed(&self, kind: &str) {
        self.bump();
        if kind == POD {
            if let Some(wake) = self.wake.get() {
                wake();
            }
        }
    }

    pub(super) fn kinds(&self) -> BTreeMap<&'static str, KindState> {
        self.kinds.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets `kind`'s state (its watcher was stopped): not ready until listed again.
    pub(super) fn forget(&self, kind: &str) {
        if self.kinds.lock().unwrap_or_else(|p| p.into_inner()).remove(kind).is_some() {
            self.bump();
        }
    }

    /// Updates `kind`'s state; bumps the version if it changed.
    pub(super) fn update(&self, kind: &'static str, f: impl FnOnce(&mut KindState)) {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let state = kinds.entry(kind).or_default();
        let before = state.clone();
        f(state);
        if *state != before {
            self.bump();
        }
    }
}

/// The kind whose changes wake the agent.
const POD: &str = <k8s_openapi::api::core::v1::Pod as k8s_openapi::Resource>::KIND;

/// Bounds of the back-off between attempts after an error.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// Exponential back-off with jitter (each delay drawn from the upper half of
/// the current step, so a DaemonSet's agents do not retry in lockstep).
#[derive(Debug)]
pub(super) struct Backoff {
    step: Duration,
    jitter: std::collections::hash_map::RandomState,
    attempt: u64,
}

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff { step: BACKOFF_MIN, jitter: Default::default(), attempt: 0 }
    }

    pub(super) fn reset(&mut self) {
        self.step = BACKOFF_MIN;
    }

    pub(super) fn next_delay(&mut self) -> Duration {
        self.attempt += 1;
        let fraction = (self.jitter.hash_one(self.attempt) % 1000) as u32;
        let delay = self.step / 2 + self.step / 2 * fraction / 1000;
        self.step = (self.step * 2).min(BACKOFF_MAX);
        delay
    }
}

/// Runs the watcher of `kind` (in every namespace) into `writer` until the
/// runtime stops.
pub(super) async fn reflect<K>(client: Client, mut writer: Writer<K>, kind: &'static str, shared: Arc<Shared>)
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let api = Api::<K>::all(client);
    let mut backoff = Backoff::new();
    loop {
        let mut stream = std::pin::pin!(watcher(api.clone(), watcher::Config::default()));
        let mut expired = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    writer.apply_watcher_event(&event);
                    match event {
                        Event::InitDone => {
                            backoff.reset();
                            let had_error = shared.kinds().get(kind).is_some_and(|s| s.error.is_some());
                            shared.update(kind, |s| {
                                s.ready = true;
                                s.error = None;
                            });
                            if had_error {
                                shared.recovered(kind, Instant::now());
                            }
                            // The store was swapped in even if nothing else changed.
                            shared.touch(kind, None);
                            shared.changed(kind);
                        }
                        Event::Apply(o) | Event::Delete(o) => {
                            let key = object_key(o.meta().namespace.as_deref(), &o.name_any());
                            shared.touch(kind, Some(key));
                            shared.changed(kind);
                        }
                        // Buffered by the writer until InitDone: the store is unchanged.
                        Event::Init | Event::InitApply(_) => {}
                    }
                }
                Err(e) => {
                    let d = describe(&e, K::plural(&Default::default()).as_ref());
                    expired = d.trouble == Trouble::Expired;
                    if expired {
                        info!("kube API: {kind}: {}", d.text);
                    } else {
                        let msg = format!("{kind}: {}", d.text);
                        shared.report(d.trouble, &format!("kube API: {}", d.text), Instant::now());
                        shared.update(kind, |s| s.error = Some(msg));
                    }
                    break;
                }
            }
        }
        if !expired {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

impl Shared {
    /// Logs one watcher's trouble, folded with the other watchers' and its
    /// own repeats: 401 is an ERROR (it will not mend itself), the rest WARN.
    pub(super) fn report(&self, trouble: Trouble, text: &str, now: Instant) {
        let line = self.fold.lock().unwrap_or_else(|p| p.into_inner()).occur(trouble.key(), text, now);
        match line {
            Some(l) if trouble == Trouble::Unauthorized => error!("{l}"),
            Some(l) => warn!("{l}"),
            None => {}
        }
    }

    /// `kind` listed again after an error; once no kind has one, the
    /// folded troubles end with a line saying how long they lasted.
    fn recovered(&self, kind: &str, now: Instant) {
        info!("kube API: {kind}: listed again; the API server is reachable");
        if self.kinds().values().any(|k| k.error.is_some()) {
            return;
        }
        let mut fold = self.fold.lock().unwrap_or_else(|p| p.into_inner());
        for t in [Trouble::Unreachable, Trouble::Forbidden, Trouble::Unauthorized, Trouble::Failing] {
            if let Some((n, took)) = fold.clear(t.key(), now) {
                info!("kube API: back after {} s ({n} failed attempts, {})", took.as_secs(), t.key());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_bound_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= BACKOFF_MIN / 2 && delays[0] <= BACKOFF_MIN, "{delays:?}");
        assert!(delays[3] >= BACKOFF_MIN * 4, "doubles: {delays:?}");
        assert!(delays.iter().all(|d| *d <= BACKOFF_MAX), "{delays:?}");
        assert!(delays[9] >= BACKOFF_MAX / 2, "{delays:?}");
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN);
    }

    /// What `reflect` relies on for "a failed list keeps the last good
    /// state": a re-list that breaks off before InitDone (the API failing
    /// part-way) leaves the store as the last complete list left it.
    #[test]
    fn a_list_that_fails_part_way_leaves_the_store_as_it_was() {
        use k8s_openapi::api::core::v1::Namespace;
        let ns = |name: &str| {
            let mut n = Namespace::default();
            n.metadata.name = Some(name.into());
            n
        };
        let mut writer: Writer<Namespace> = Writer::default();
        let store = writer.as_reader();
        for e in [Event::Init, Event::InitApply(ns("a")), Event::InitApply(ns("b")), Event::InitDone] {
            writer.apply_watcher_event(&e);
        }
        let names = |s: &kube::runtime::reflector::Store<Namespace>| {
            let mut v: Vec<String> = s.state().iter().filter_map(|n| n.metadata.name.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(names(&store), ["a", "b"]);
        // A re-list that got one object, then failed: the watcher starts over with Init.
        for e in [Event::Init, Event::InitApply(ns("c")), Event::Init] {
            writer.apply_watcher_event(&e);
        }
        assert_eq!(names(&store), ["a", "b"], "the last complete list stays");
        // A complete list of nothing is an empty state.
        writer.apply_watcher_event(&Event::InitDone);
        assert!(names(&store).is_empty());
    }

    #[test]
    fn a_pod_change_wakes_the_agent_and_other_kinds_wait_for_its_poll() {
        let s = Shared::default();
        s.changed(POD);
        let woken = Arc::new(AtomicU64::new(0));
        let w = woken.clone();
        s.set_wake(Box::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        }));
        let v = s.version();
        s.changed("NetworkPolicy");
        s.changed(POD);
        s.changed(POD);
        assert_eq!((s.version(), woken.load(Ordering::SeqCst)), (v + 3, 2));
    }

    #[test]
    fn troubles_are_folded_across_watchers_and_logged_at_their_level() {
        let t0 = Instant::now();
        let s = Shared::default();
        let got = crate::logging::captured("info", None, || {
            for kind in ["Node", "Pod", "Namespace", "NetworkPolicy"] {
                s.report(Trouble::Forbidden, "kube API: refused (403)", t0);
                s.update(kind, |k| k.error = Some("403".into()));
            }
            s.report(Trouble::Unauthorized, "kube API: credentials (401)", t0);
            s.report(Trouble::Forbidden, "kube API: refused (403)", t0 + Duration::from_secs(31));
            for kind in ["Node", "Pod", "Namespace", "NetworkPolicy"] {
                s.update(kind, |k| k.error = None);
                s.recovered(kind, t0 + Duration::from_secs(40));
            }
        });
        let want_start = [
            "WARN weft-agent: kube API: refused (403)",
            "ERROR weft-agent: kube API: credentials (401)",
            "WARN weft-agent: kube API: refused (403) (4 times in 31 s)",
        ];
        assert_eq!(&got[..3], want_start, "{got:#?}");
        assert_eq!(got.iter().filter(|l| l.contains("listed again")).count(), 4, "{got:#?}");
        let ends: Vec<&String> = got.iter().filter(|l| l.contains("back after")).collect();
        assert_eq!(ends.len(), 2, "one end per trouble, once every kind listed again: {got:#?}");
        assert!(ends[0].contains("back after 40 s (5 failed attempts, forbidden)"), "{got:#?}");
    }

    #[test]
    fn touched_keys_are_taken_once_and_too_many_or_a_relist_are_all() {
        let s = Shared::default();
        s.touch("Pod", Some("x/a".into()));
        s.touch("Pod", Some("x/b".into()));
        s.touch("Pod", Some("x/a".into()));
        s.touch("Node", None);
        s.touch("Node", Some("n1".into()));
        let keys = |k: &[&str]| Touched::Keys(k.iter().map(|s| s.to_string()).collect());
        let got = s.take_touched();
        assert_eq!(got.get("Pod"), Some(&keys(&["x/a", "x/b"])));
        assert_eq!(got.get("Node"), Some(&Touched::All), "a re-list covers any key after it");
        assert!(s.take_touched().is_empty(), "taken once");
        for i in 0..MAX_TOUCHED {
            s.touch("Pod", Some(format!("x/p{i}")));
        }
        s.touch("Pod", Some("x/p0".into()));
        assert!(matches!(s.take_touched().get("Pod"), Some(Touched::Keys(k)) if k.len() == MAX_TOUCHED));
        for i in 0..=MAX_TOUCHED {
            s.touch("Pod", Some(format!("x/p{i}")));
        }
        assert_eq!(s.take_touched().get("Pod"), Some(&Touched::All), "one key too many: the whole store");
    }

    #[test]
    fn state_changes_bump_the_version_once() {
        let s = Shared::default();
        s.update("Pod", |k| k.error = Some("down".into()));
        let v = s.version();
        s.update("Pod", |k| k.error = Some("down".into()));
        assert_eq!(s.version(), v, "the same error again is no change");
        s.update("Pod", |k| k.error = None);
        assert_eq!(s.version(), v + 1);
    }
}
