//! What the agent loop reports for `/metrics` (Prometheus text format 0.0.4)
//! and for the health endpoints: sync durations as a histogram by kind, the
//! last applied generation, what the last sync found (routes, errors,
//! warnings, pods), the backend's sets, rules and elements, policy errors,
//! and liveness (the loop ran lately) and readiness (policy applied and,
//! with `--cni-conf-dir`, the conflist written). Pure but for the clock
//! passed in; the denied counters are `DenyLog`'s.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::backend::ObjectCounts;
use crate::status::Status;

/// Upper bounds of the sync histogram, in seconds: a pod change takes a few
/// ms, a resync of a large cluster some hundreds.
pub const SYNC_BUCKETS: [f64; 13] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The loop counts as dead when it has not come round for this long. Far
/// above a sync (under a second even at 1,000 policies) plus a poll, so a
/// slow node is never restarted for being slow.
pub const LIVENESS_STALE: Duration = Duration::from_secs(60);

/// What a sync was for: the label of `weft_sync_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// The first sync and every periodic resync: the kernel checked in full.
    Full,
    /// A new snapshot of the cluster state: only what changed is written.
    Change,
    /// A pod the plugin reported (ADD or DEL): policy only.
    Pod,
}

impl SyncKind {
    const ALL: [SyncKind; 3] = [SyncKind::Full, SyncKind::Change, SyncKind::Pod];

    pub fn label(self) -> &'static str {
        match self {
            SyncKind::Full => "full",
            SyncKind::Change => "change",
            SyncKind::Pod => "pod",
        }
    }
}

/// A Prometheus histogram over `SYNC_BUCKETS`; counts per bucket, not cumulative.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    buckets: [u64; SYNC_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = SYNC_BUCKETS.iter().position(|&le| s <= le) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += s;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `_bucket` (cumulative, ending with `+Inf` = count), `_sum` and `_count` samples.
    fn write(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let mut acc = 0;
        for (le, n) in SYNC_BUCKETS.iter().zip(self.buckets) {
            acc += n;
            sample(out, &format!("{name}_bucket"), &[labels, &[("le", &le.to_string())]].concat(), acc);
        }
        sample(out, &format!("{name}_bucket"), &[labels, &[("le", "+Inf")]].concat(), self.count);
        sample(out, &format!("{name}_sum"), labels, self.sum);
        sample(out, &format!("{name}_count"), labels, self.count);
    }
}

/// The agent's metrics and health, shared with the HTTP thread behind a mutex.
#[derive(Debug)]
pub struct AgentMetrics {
    started: Instant,
    syncs: [Histogram; 3],
    last: Option<Status>,
    /// The backend and the objects of the policy in force.
    applied: Option<(&'static str, ObjectCounts)>,
    policy_errors: u64,
    last_loop: Instant,
    /// Why the node is not ready to carry pods; None when it is.
    not_ready: Option<String>,
}

impl AgentMetrics {
    pub fn new(now: Instant) -> AgentMetrics {
        AgentMetrics {
            started: now,
            syncs: Default::default(),
            last: None,
            applied: None,
            policy_errors: 0,
            last_loop: now,
            not_ready: Some("no sync yet".into()),
        }
    }

    /// The loop came round (liveness).
    pub fn heartbeat(&mut self, now: Instant) {
        self.last_loop = now;
    }

    /// One sync of `kind` that took `took`.
    pub fn observe_sync(&mut self, kind: SyncKind, took: Duration) {
        self.syncs[kind as usize].observe(took);
    }

    pub fn sync_count(&self, kind: SyncKind) -> u64 {
        self.syncs[kind as usize].count()
    }

    /// A policy apply failed (a sync's or a pod report's).
    pub fn policy_error(&mut self) {
        self.policy_errors += 1;
    }

    /// `backend` put a policy of `counts` objects in force.
    pub fn policy_applied(&mut self, backend: &'static str, counts: ObjectCounts) {
        self.applied = Some((backend, counts));
    }

    /// The status a sync wrote, and whether the node is ready (Err: why not).
    pub fn synced(&mut self, status: &Status, ready: Result<(), String>) {
        self.last = Some(status.clone());
        self.not_ready = ready.err();
    }

    /// Ok while the loop came round within `LIVENESS_STALE`; Err says how long ago it last did.
    pub fn live(&self, now: Instant) -> Result<(), String> {
        let ago = now.saturating_duration_since(self.last_loop);
        if ago <= LIVENESS_STALE {
            return Ok(());
        }
        Err(format!("the agent loop has not run for {} s", ago.as_secs()))
    }

    pub fn ready(&self) -> Result<(), String> {
        self.not_ready.clone().map_or(Ok(()), Err)
    }

    /// The Prometheus text of everything above (without the denied
    /// counters).
    pub fn render(&self, now: Instant) -> String {
        let mut out = String::new();
        family(&mut out, "weft_sync_duration_seconds", "histogram", "Time one sync took, by kind: full (first and periodic resync), change (new cluster state), pod (a pod the plugin reported).");
        for kind in SyncKind::ALL {
            self.syncs[kind as usize].write(
                &mut out,
                "weft_sync_duration_seconds",
                &[("kind", kind.label())],
            );
        }
        family(&mut out, "weft_up_seconds", "gauge", "Seconds since the agent started.");
        sample(&mut out, "weft_up_seconds", &[], now.saturating_duration_since(self.started).as_secs_f64());
        family(
            &mut out,
            "weft_ready",
            "gauge",
            "1 when the node is ready for pods (policy applied, conflist written when asked).",
        );
        sample(&mut out, "weft_ready", &[], u8::from(self.not_ready.is_none()));
        family(
            &mut out,
            "weft_policy_errors_total",
            "counter",
            "Policy applies that failed (syncs and pod reports).",
        );
        sample(&mut out, "weft_policy_errors_total", &[], self.policy_errors);
        if let Some(s) = &self.last {
            family(
                &mut out,
                "weft_applied_generation_info",
                "gauge",
                "The generation of the cluster state the last sync applied (label), always 1.",
            );
            sample(&mut out, "weft_applied_generation_info", &[("generation", &s.generation)], 1);
            for (name, help, v) in [
                ("weft_routes", "weft's routes to other nodes' pod CIDRs in the kernel.", s.routes),
                (
                    "weft_sync_errors",
                    "Errors of the last sync (manifests skipped, route or policy failures).",
                    s.errors.len(),
                ),
                (
                    "weft_policy_warnings",
                    "What weft cannot enforce as written, after the last sync.",
                    s.warnings.len(),
                ),
            ] {
                family(&mut out, name, "gauge", help);
                sample(&mut out, name, &[], v);
            }
            if let Some(p) = &s.policy {
                family(
                    &mut out,
                    "weft_local_pods",
                    "gauge",
                    "This node's pods the policy knows (by address).",
                );
                sample(&mut out, "weft_local_pods", &[], p.local_pods);
                family(
                    &mut out,
                    "weft_isolated_pods",
                    "gauge",
                    "Local pods some NetworkPolicy isolates, by direction.",
                );
                sample(&mut out, "weft_isolated_pods", &[("direction", "ingress")], p.ingress_isolated);
                sample(&mut out, "weft_isolated_pods", &[("direction", "egress")], p.egress_isolated);
            }
        }
        if let Some((backend, c)) = &self.applied {
            for (name, help, v) in [
                (
                    "weft_policy_rules",
                    "Rules of weft's policy chains (iptables) or table (nftables).",
                    c.rules,
                ),
                ("weft_policy_sets", "weft's ipsets or nftables sets.", c.sets),
                ("weft_policy_set_elements", "Elements of those sets.", c.elements),
            ] {
                family(&mut out, name, "gauge", help);
                sample(&mut out, name, &[("backend", backend)], v);
            }
        }
        out
    }
}

/// What the denied-log reader and the HTTP endpoint turned away, counted
/// from their own threads without a lock (neither waits on the agent loop).
#[derive(Debug, Default)]
pub struct InputCounters {
    /// Denied packets dropped because the agent loop's queue was full.
    pub denied_queue_full: AtomicU64,
    /// Times the NFLOG socket overflowed (ENOBUFS): the kernel dropped messages.
    pub denied_socket_overruns: AtomicU64,
    /// HTTP connections closed at once because the endpoint's cap was reached.
    pub http_rejected: AtomicU64,
}

impl InputCounters {
    /// Adds one to `c`.
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text of the counters.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, c) in [
            (
                "weft_denied_queue_dropped_total",
                "Denied packets dropped because the agent's queue was full (the log is rate-limited in the kernel first).",
                &self.denied_queue_full,
            ),
            (
                "weft_denied_socket_overruns_total",
                "Times the kernel dropped denied-packet messages because the agent read too slowly.",
                &self.denied_socket_overruns,
            ),
            (
                "weft_http_connections_rejected_total",
                "HTTP connections closed at once because too many were open.",
                &self.http_rejected,
            ),
        ] {
            family(&mut out, name, "counter", help);
            sample(&mut out, name, &[], c.load(Ordering::Relaxed));
        }
        out
    }
}

/// One scrape of `m`.
pub fn scrape(m: &Mutex<AgentMetrics>, now: Instant) -> String {
    m.lock().unwrap_or_else(|p| p.into_inner()).render(now)
}

/// The `# HELP` and `# TYPE` lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP {name} {}\n# TYPE {name} {kind}",
        help.replace('\\', "\\\\").replace('\n', "\\n")
    );
}

/// One sample line; label values escaped as the text format asks.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| {
                format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
            })
            .collect();
        let _ = write!(out, "{{{}}}", l.join(","));
    }
    let _ = writeln!(out, " {value}");
}

/// Whether the node can carry pods after a sync: policy applied (when a
/// backend runs) and the conflist in place (when asked to write one).
pub fn readiness(status: &Status, policy_runs: bool, conflist: Option<bool>) -> Result<(), String> {
    if policy_runs && status.policy.is_none() {
        let why = status.errors.iter().find(|e| e.starts_with("policy")).map_or("", String::as_str);
        return Err(format!("policy is not applied: {why}"));
    }
    if conflist == Some(false) {
        return Err(format!(
            "the conflist is not written: node {} has no pod CIDR in the cluster state yet",
            status.node
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "../tests/support/exposition.rs"]
pub(crate) mod exposition;

#[cfg(test)]
mod tests {
    use super::exposition::{parse, value, Sample};
    use super::*;
    use crate::model::Model;
    use crate::policy::compile;
    use crate::policy::PolicyIr;
    use crate::status::PolicyStatus;

    fn status(policy: bool, errors: &[&str]) -> Status {
        Status {
            node: "node-1".into(),
            generation: "g\"1\\x".into(),
            routes: 2,
            ip_forward: true,
            bridge_nf_call_iptables: Some(true),
            bridge_nf_call_ip6tables: Some(true),
            masquerade: None,
            overlay: None,
            policy: policy.then(|| PolicyStatus { local_pods: 3, ingress_isolated: 1, ..Default::default() }),
            warnings: vec![],
            errors: errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    /// A node with two pods, one isolated for ingress with one port open.
    fn ir() -> PolicyIr {
        let text = "
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24}
---
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.2}
---
kind: Pod
metadata: {name: b, namespace: x}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.3}
---
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{ports: [{port: 80}]}]
";
        compile(&Model::of_manifests(text), "node-1", &["10.244.0.0/16".parse().unwrap()]).0
    }

    /// Every line parses; every family has HELP then TYPE before its samples;
    /// each histogram's buckets are cumulative, rise with `le`, and end with
    /// +Inf equal to `_count`.
    fn check_exposition(text: &str) -> Vec<Sample> {
        let samples = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let mut typed: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (n, k) = t.split_once(' ').unwrap();
                assert!(!typed.iter().any(|(m, _)| m == n), "{n} typed twice");
                typed.push((n.into(), k.into()));
            } else if !line.starts_with('#') {
                let name = &line[..line.find(['{', ' ']).unwrap()];
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        name.strip_suffix(s).filter(|f| typed.iter().any(|(m, k)| m == f && k == "histogram"))
                    })
                    .unwrap_or(name);
                assert!(typed.iter().any(|(m, _)| m == family), "{name} has no TYPE before it");
            }
        }
        for (h, _) in typed.iter().filter(|(_, k)| k == "histogram") {
            let series: std::collections::BTreeSet<Vec<(String, String)>> =
                samples.iter().filter(|s| s.name == format!("{h}_count")).map(|s| s.labels.clone()).collect();
            assert!(!series.is_empty(), "{h} has no series");
            for labels in series {
                let buckets: Vec<(f64, f64)> = samples
                    .iter()
                    .filter(|s| s.name == format!("{h}_bucket"))
                    .filter(|s| labels.iter().all(|l| s.labels.contains(l)))
                    .map(|s| {
                        let le = &s.labels.iter().find(|(k, _)| k == "le").unwrap().1;
                        (if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, s.value)
                    })
                    .collect();
                assert_eq!(buckets.len(), SYNC_BUCKETS.len() + 1, "{h} {labels:?}");
                assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{buckets:?}");
                let count =
                    samples.iter().find(|s| s.name == format!("{h}_count") && s.labels == labels).unwrap();
                assert_eq!(buckets.last(), Some(&(f64::INFINITY, count.value)), "{h} {labels:?}");
            }
        }
        samples
    }

    #[test]
    fn the_histogram_is_cumulative_and_ends_with_the_count() {
        let t0 = Instant::now();
        let mut m = AgentMetrics::new(t0);
        for ms in [0.5, 3.0, 3.0, 40.0, 700.0, 20_000.0] {
            m.observe_sync(SyncKind::Change, Duration::from_secs_f64(ms / 1000.0));
        }
        m.observe_sync(SyncKind::Full, Duration::from_millis(300));
        let s = check_exposition(&m.render(t0));
        let bucket = |kind, le| value(&s, "weft_sync_duration_seconds_bucket", &[("kind", kind), ("le", le)]);
        assert_eq!(bucket("change", "0.001"), Some(1.0));
        assert_eq!(bucket("change", "0.005"), Some(3.0));
        assert_eq!(bucket("change", "0.05"), Some(4.0));
        assert_eq!(bucket("change", "1"), Some(5.0));
        // 20 s is beyond the last bound: only +Inf counts it.
        assert_eq!(bucket("change", "10"), Some(5.0));
        assert_eq!(bucket("change", "+Inf"), Some(6.0));
        assert_eq!(bucket("full", "0.25"), Some(0.0));
        assert_eq!(bucket("full", "0.5"), Some(1.0));
        assert_eq!(bucket("pod", "+Inf"), Some(0.0));
        let sum = value(&s, "weft_sync_duration_seconds_sum", &[("kind", "change")]).unwrap();
        assert!((sum - 20.7465).abs() < 1e-9, "{sum}");
        assert_eq!(m.sync_count(SyncKind::Change), 6);
    }

    #[test]
    fn a_sync_shows_generation_counts_and_readiness() {
        let t0 = Instant::now();
        let m = Mutex::new(AgentMetrics::new(t0));
        let text = scrape(&m, t0);
        // Before the first sync: no generation, no counts, not ready.
        assert!(
            !text.contains("weft_applied_generation_info") && !text.contains("weft_policy_sets"),
            "{text}"
        );
        assert_eq!(value(&check_exposition(&text), "weft_ready", &[]), Some(0.0));
        assert!(m.lock().unwrap().ready().is_err());

        let st = status(true, &[]);
        m.lock().unwrap().synced(&st, readiness(&st, true, None));
        let compiled = ir();
        let want = crate::iptables::render(&compiled).counts();
        m.lock().unwrap().policy_applied("iptables", want);
        let s = check_exposition(&scrape(&m, t0));
        // The generation label is escaped on the wire and read back intact.
        assert_eq!(value(&s, "weft_applied_generation_info", &[("generation", "g\"1\\x")]), Some(1.0));
        assert_eq!(value(&s, "weft_ready", &[]), Some(1.0));
        assert_eq!(value(&s, "weft_routes", &[]), Some(2.0));
        assert_eq!(value(&s, "weft_isolated_pods", &[("direction", "ingress")]), Some(1.0));
        assert!(want.sets > 0 && want.elements >= 3 && want.rules > 0, "{want:?}");
        let b = [("backend", "iptables")];
        assert_eq!(value(&s, "weft_policy_sets", &b), Some(want.sets as f64));
        assert_eq!(value(&s, "weft_policy_set_elements", &b), Some(want.elements as f64));
        assert_eq!(value(&s, "weft_policy_rules", &b), Some(want.rules as f64));

        // Another backend's objects replace the first's.
        let nft = crate::nft::render(&compiled).counts();
        assert_ne!(nft, want);
        m.lock().unwrap().policy_applied("nftables", nft);
        let s = check_exposition(&scrape(&m, t0));
        assert_eq!(
            value(&s, "weft_policy_set_elements", &[("backend", "nftables")]),
            Some(nft.elements as f64)
        );
        assert_eq!(value(&s, "weft_policy_set_elements", &[("backend", "iptables")]), None);
        let empty = crate::nft::render(&PolicyIr::default()).counts();
        assert!(empty.elements < nft.elements, "{empty:?}");
        m.lock().unwrap().policy_applied("nftables", empty);
        let s = check_exposition(&scrape(&m, t0));
        assert_eq!(
            value(&s, "weft_policy_set_elements", &[("backend", "nftables")]),
            Some(empty.elements as f64)
        );

        let mut g = m.lock().unwrap();
        g.policy_error();
        let st = status(false, &["policy (nftables): nft: boom"]);
        g.synced(&st, readiness(&st, true, None));
        let s = check_exposition(&g.render(t0));
        assert_eq!(value(&s, "weft_policy_errors_total", &[]), Some(1.0));
        assert_eq!(value(&s, "weft_sync_errors", &[]), Some(1.0));
        assert_eq!(g.ready(), Err("policy is not applied: policy (nftables): nft: boom".into()));
    }

    #[test]
    fn readiness_needs_policy_and_the_conflist() {
        assert_eq!(readiness(&status(true, &[]), true, Some(true)), Ok(()));
        assert_eq!(readiness(&status(false, &[]), false, None), Ok(()), "backend off");
        assert!(readiness(&status(false, &[]), true, None).is_err());
        let e = readiness(&status(true, &[]), true, Some(false)).unwrap_err();
        assert!(e.contains("node-1 has no pod CIDR"), "{e}");
    }

    #[test]
    fn liveness_goes_stale_when_the_loop_stops() {
        let t0 = Instant::now();
        let mut m = AgentMetrics::new(t0);
        assert!(m.live(t0 + LIVENESS_STALE).is_ok());
        let e = m.live(t0 + LIVENESS_STALE + Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("61 s"), "{e}");
        m.heartbeat(t0 + Duration::from_secs(100));
        assert!(m.live(t0 + Duration::from_secs(101)).is_ok());
    }
}
