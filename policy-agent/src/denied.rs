//! The denied-connection log: one structured line per denied connection,
//! naming the policies that decided it, folded (a retransmitted SYN of the
//! same connection within `FOLD` is not a new event) and rate-limited per
//! node (what is over the limit is counted, not lost silently). Folding and
//! the limit come first (`admit`): until a packet passes both it costs a map
//! lookup, and only then is it explained (`explain_line`), from the model
//! the rules in force were compiled from. Also the per-policy counters
//! `/metrics` serves. Pure but for the clock passed in.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::explain;
use crate::model::{Model, Pod, Protocol};
use crate::nflog::Denied;
use crate::policy::evaluate::with_audit_enforced;
use crate::policy::tiers::Way;

/// Packets of one connection within this time are one event.
pub const FOLD: Duration = Duration::from_secs(10);
/// At most this many lines per second per node.
pub const RATE: u32 = 50;
/// Lines kept for `/denied`.
pub const KEEP: usize = 1000;
/// Connections remembered for folding, at most.
const MAX_SEEN: usize = 16 * KEEP;
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeniedConnection {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub protocol: String,
    pub src: String,
    pub dst: String,
    pub port: Option<u16>,
    /// "ingress" or "egress": which end's policy denied it.
    pub direction: &'static str,
    /// In policy terms: which policies isolate that end, and that no rule admits it.
    pub reason: String,
    /// The isolating policies ("ns/name").
    pub policies: Vec<String>,
    /// True if only audit policies would deny it: it passed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
}

type Key = (IpAddr, IpAddr, u8, Option<u16>, bool, bool);

fn key(d: &Denied) -> Key {
    (d.src, d.dst, d.proto, d.dport, d.ingress, d.audit)
}

/// The log and its counters.
#[derive(Debug, Default)]
pub struct DenyLog {
    /// Connections seen within FOLD, with the policies that denied them.
    seen: HashMap<Key, (Instant, Vec<String>)>,
    lines: VecDeque<DeniedConnection>,
    /// Denied connections per (policy, direction).
    per_policy: BTreeMap<(String, &'static str), u64>,
    /// Denied packets (each logged packet: a connection's first and its
    /// retransmits) per (policy, direction).
    packets: BTreeMap<(String, &'static str), u64>,
    /// Packets the kernel's log rules handed over (under their limit).
    pub received: u64,
    /// Packets folded into an earlier event of their connection.
    pub folded: u64,
    /// Events over the rate limit (counted, not logged).
    pub suppressed: u64,
    window: Option<(Instant, u32)>,
    /// When `seen` was last pruned.
    pruned: Option<Instant>,
}

fn protocol_name(p: u8) -> (String, Option<Protocol>) {
    match p {
        6 => ("TCP".into(), Some(Protocol::Tcp)),
        17 => ("UDP".into(), Some(Protocol::Udp)),
        132 => ("SCTP".into(), Some(Protocol::Sctp)),
        1 => ("ICMP".into(), None),
        n => (format!("IP protocol {n}"), None),
    }
}

/// What `DenyLog::admit` made of one denied packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// A packet of a connection seen within `FOLD`: counted.
    Folded,
    /// A new connection over `RATE`: counted, not explained.
    Suppressed,
    /// A new connection to explain and `log`.
    New,
}

/// What a denied packet is explained from: the model the rules in force were
/// compiled from, its audit view (audit policies enforced) and its pods by
/// address, each built once on first use.
#[derive(Debug)]
pub struct ExplainView {
    model: Model,
    audit: OnceLock<Model>,
    /// The pod `explain::pod_at` finds for each address, sorted by address,
    /// so a connection is explained without looking at every pod.
    by_addr: OnceLock<Vec<(IpAddr, Arc<Pod>)>>,
}

impl ExplainView {
    pub fn new(model: Model) -> ExplainView {
        ExplainView { model, audit: OnceLock::new(), by_addr: OnceLock::new() }
    }

    /// The pod with address `ip` (not on the host network), as
    /// `explain::pod_at` finds it in the model.
    fn pod_at(&self, ip: IpAddr) -> Option<&Pod> {
        let index = self.by_addr.get_or_init(|| {
            let mut index = Vec::with_capacity(self.model.pods.len());
            for p in self.model.pods.values().filter(|p| !p.host_network) {
                let addrs = p.ip.map(IpAddr::V4).into_iter().chain(p.ip6.map(IpAddr::V6));
                index.extend(addrs.map(|a| (a, Arc::clone(p))));
            }
            // Stable: of the pods sharing an address, the first by key stays,
            // as a look at every pod finds it.
            index.sort_by_key(|(a, _)| *a);
            index.dedup_by_key(|(a, _)| *a);
            index
        });
        let at = index.binary_search_by_key(&ip, |(a, _)| *a).ok()?;
        Some(&index[at].1)
    }

    /// The model as it is.
    pub fn base(&self) -> &Model {
        &self.model
    }

    fn model(&self, audit: bool) -> &Model {
        match audit {
            true => self.audit.get_or_init(|| with_audit_enforced(&self.model)),
            false => &self.model,
        }
    }
}

impl DenyLog {
    /// Records one denied packet seen at `now` (`time_ms` on the wall clock);
    /// the line to log, or None if it was folded or suppressed.
    pub fn record(
        &mut self,
        d: &Denied,
        view: &ExplainView,
        now: Instant,
        time_ms: u64,
    ) -> Option<DeniedConnection> {
        if self.admit(d, now) != Admit::New {
            return None;
        }
        let line = explain_line(d, view, time_ms);
        self.log(d, &line, now);
        Some(line)
    }

    /// Folding, then the rate limit: all a packet costs before `explain_line`,
    /// which only `Admit::New` calls for.
    pub fn admit(&mut self, d: &Denied, now: Instant) -> Admit {
        self.received += 1;
        if self.fold(d, now) {
            return Admit::Folded;
        }
        self.prune(now);
        let (start, count) = self.window.get_or_insert((now, 0));
        if now.duration_since(*start) >= Duration::from_secs(1) {
            (*start, *count) = (now, 0);
        }
        if *count >= RATE {
            self.suppressed += 1;
            // Its retransmits fold, naming no policy.
            self.seen.insert(key(d), (now, Vec::new()));
            return Admit::Suppressed;
        }
        *count += 1;
        Admit::New
    }

    /// Forgets connections older than `FOLD` once there are many (at most
    /// once a second: a scan per packet would be the flood's lever), and all
    /// of them past `MAX_SEEN`, which the kernel's limit keeps far away.
    fn prune(&mut self, now: Instant) {
        if self.seen.len() > MAX_SEEN {
            self.seen.clear();
        }
        if self.seen.len() <= 4 * KEEP || self.pruned.is_some_and(|t| now.duration_since(t) < PRUNE_EVERY) {
            return;
        }
        self.pruned = Some(now);
        self.seen.retain(|_, (t, _)| now.duration_since(*t) < FOLD);
    }

    /// True (and counted) if `d` is a packet of a connection seen within `FOLD`.
    fn fold(&mut self, d: &Denied, now: Instant) -> bool {
        let direction = if d.ingress { "ingress" } else { "egress" };
        let Some((_, policies)) = self.seen.get(&key(d)).filter(|(t, _)| now.duration_since(*t) < FOLD)
        else {
            return false;
        };
        for p in policies {
            *self.packets.entry((p.clone(), direction)).or_default() += 1;
        }
        self.folded += 1;
        true
    }

    /// Logs `line`, the explained first packet `d` of a connection `admit` let through.
    pub fn log(&mut self, d: &Denied, line: &DeniedConnection, now: Instant) {
        for p in &line.policies {
            *self.per_policy.entry((p.clone(), line.direction)).or_default() += 1;
            *self.packets.entry((p.clone(), line.direction)).or_default() += 1;
        }
        self.seen.insert(key(d), (now, line.policies.clone()));
        if self.lines.len() == KEEP {
            self.lines.pop_front();
        }
        self.lines.push_back(line.clone());
    }

    /// The kept lines after `since_ms`, as JSON lines.
    pub fn since(&self, since_ms: u64) -> String {
        self.lines
            .iter()
            .filter(|l| l.time_ms > since_ms)
            .map(|l| serde_json::to_string(l).unwrap_or_default() + "\n")
            .collect()
    }

    /// Prometheus text: denied connections per policy and direction, and
    /// what was folded or suppressed.
    pub fn metrics(&self) -> String {
        let mut s = String::from(
            "# HELP weft_denied_connections_total Denied connections logged, by isolating policy and direction (those over the rate are only in weft_denied_log_suppressed_total).\n\
             # TYPE weft_denied_connections_total counter\n",
        );
        for ((policy, dir), n) in &self.per_policy {
            s += &format!("weft_denied_connections_total{{policy=\"{policy}\",direction=\"{dir}\"}} {n}\n");
        }
        s += "# HELP weft_denied_packets_total Packets denied (first and retransmitted), by policy and direction.\n\
              # TYPE weft_denied_packets_total counter\n";
        for ((policy, dir), n) in &self.packets {
            s += &format!("weft_denied_packets_total{{policy=\"{policy}\",direction=\"{dir}\"}} {n}\n");
        }
        s += &format!(
            "# HELP weft_denied_packets_received_total Denied packets the kernel logged to the agent (it logs at most {} a second per direction).\n\
             # TYPE weft_denied_packets_received_total counter\nweft_denied_packets_received_total {}\n\
             # TYPE weft_denied_packets_folded_total counter\nweft_denied_packets_folded_total {}\n\
             # TYPE weft_denied_log_suppressed_total counter\nweft_denied_log_suppressed_total {}\n",
            crate::nflog::LOG_RATE,
            self.received,
            self.folded,
            self.suppressed
        );
        s
    }
}

/// Hands at most `max` denied packets from `denied` to `on`, while `events`
/// (pod reports, signals) has nothing waiting; a waiting event ends the
/// drain and is returned, to be served first.
pub fn drain_while_idle<E, D>(
    events: &Receiver<E>,
    denied: &Receiver<D>,
    max: usize,
    mut on: impl FnMut(D),
) -> Option<E> {
    for _ in 0..max {
        if let Ok(ev) = events.try_recv() {
            return Some(ev);
        }
        let Ok(d) = denied.try_recv() else { return None };
        on(d);
    }
    None
}

/// The log line of `d`, the first packet of a denied connection, naming the
/// policies that isolate the denying end in `view`.
pub fn explain_line(d: &Denied, view: &ExplainView, time_ms: u64) -> DeniedConnection {
    let direction = if d.ingress { "ingress" } else { "egress" };
    let (protocol, proto) = protocol_name(d.proto);
    // An audit event is explained as if the audit policies were enforced.
    // The policies' view only: the kernel already decided, no rule is compiled.
    // The audit view differs in its policies only: the pods are the same.
    let (src, dst, reason, policies) = match explain::policies(
        view.model(d.audit),
        &|ip| view.pod_at(ip),
        &d.src.to_string(),
        &d.dst.to_string(),
        d.dport.unwrap_or(0),
        proto.unwrap_or(Protocol::Tcp),
        Some(if d.ingress { Way::Ingress } else { Way::Egress }),
    ) {
        Ok(e) => {
            let decision = if d.ingress { &e.ingress } else { &e.egress };
            let cluster = decision.as_ref().and_then(|x| x.cluster_verdict.as_ref()).filter(|v| !v.allows);
            let policies = match cluster {
                // A ClusterNetworkPolicy rule decided: it is the one to name and count.
                Some(v) => vec![v.rule.clone()],
                None => decision.as_ref().map(|x| x.isolated_by.clone()).unwrap_or_default(),
            };
            let (end, other) = if d.ingress { (&e.dst, &e.src) } else { (&e.src, &e.dst) };
            let reason = if let (Some(v), Some(x)) = (cluster, decision) {
                let is = if d.audit { "would be" } else { "is" };
                format!("{direction} of {end} {is} denied by {} ({} tier): {}", v.rule, v.tier, x.walk_line())
            } else if policies.is_empty() {
                format!("{end} is not isolated for {direction} in the current state (the rules were older)")
            } else {
                let port = d.dport.map(|p| format!(" {p}")).unwrap_or_default();
                let (is, passed) = if d.audit { ("would be", " (audit: it passed)") } else { ("is", "") };
                format!(
                    "{end} {is} isolated for {direction} by {}; no rule admits {other} on {protocol}{port}{passed}",
                    policies.join(", ")
                )
            };
            (e.src, e.dst, reason, policies)
        }
        Err(why) => (d.src.to_string(), d.dst.to_string(), why, Vec::new()),
    };
    DeniedConnection {
        time_ms,
        protocol,
        src,
        dst,
        port: d.dport,
        direction,
        reason,
        policies,
        audit: d.audit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let text = "
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.2}
---
kind: Pod
metadata: {name: b, namespace: y}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.3}
---
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}}
";
        Model::of_manifests(text)
    }

    fn syn(dport: u16) -> Denied {
        Denied {
            ingress: true,
            audit: false,
            src: [10, 244, 1, 3].into(),
            dst: [10, 244, 1, 2].into(),
            proto: 6,
            dport: Some(dport),
        }
    }

    #[test]
    fn one_line_per_connection_naming_the_policy() {
        let (m, t0) = (ExplainView::new(model()), Instant::now());
        let mut log = DenyLog::default();
        let line = log.record(&syn(81), &m, t0, 1000).expect("the first packet is logged");
        assert_eq!(line.direction, "ingress");
        assert_eq!(line.policies, ["x/deny-all"]);
        assert_eq!(line.reason, "x/a (10.244.1.2) is isolated for ingress by x/deny-all; no rule admits y/b (10.244.1.3) on TCP 81");
        // The retransmitted SYN one second later: folded.
        assert_eq!(log.record(&syn(81), &m, t0 + Duration::from_secs(1), 2000), None);
        assert_eq!(log.folded, 1);
        assert!(log
            .metrics()
            .contains("weft_denied_packets_total{policy=\"x/deny-all\",direction=\"ingress\"} 2"));
        // Another port is another connection; after FOLD the same one is new again.
        assert!(log.record(&syn(80), &m, t0 + Duration::from_secs(2), 3000).is_some());
        assert!(log.record(&syn(81), &m, t0 + FOLD + Duration::from_secs(1), 4000).is_some());
        assert_eq!(log.since(2500).lines().count(), 2);
        assert!(log
            .metrics()
            .contains("weft_denied_connections_total{policy=\"x/deny-all\",direction=\"ingress\"} 3"));
    }

    #[test]
    fn pods_are_found_by_address_and_policies_by_namespace_as_a_look_at_everything_finds_them() {
        // A host-network pod and a stale pod share the address of x/a (the
        // first by key wins, host network never), and the namespaces x-1 and
        // xy sort next to x: their policies do not isolate x/a.
        let mut text = String::from(
            "kind: Pod\nmetadata: {name: h, namespace: a}\nspec: {nodeName: node-1, hostNetwork: true}\nstatus: {podIP: 10.244.1.2}\n---\n\
             kind: Pod\nmetadata: {name: z, namespace: x}\nspec: {nodeName: node-1}\nstatus: {podIP: 10.244.1.2}\n",
        );
        for ns in ["x-1", "xy", "x0", "w"] {
            text += &format!("---\nkind: NetworkPolicy\nmetadata: {{name: other, namespace: {ns}}}\nspec: {{podSelector: {{}}}}\n");
        }
        text += "---\nkind: NetworkPolicy\nmetadata: {name: no-egress, namespace: y}\nspec: {podSelector: {}, policyTypes: [Egress]}\n";
        let mut m = model();
        for o in crate::model::parse_manifests(&text).unwrap() {
            assert!(m.insert(o));
        }
        let view = ExplainView::new(m.clone());
        let pairs = [([10, 244, 1, 3], [10, 244, 1, 2]), ([10, 244, 1, 2], [10, 244, 1, 3])];
        for ((src, dst), ingress) in pairs.into_iter().flat_map(|p| [(p, true), (p, false)]) {
            let d = Denied { src: src.into(), dst: dst.into(), ingress, ..syn(81) };
            let line = explain_line(&d, &view, 0);
            let scan = explain::policies(
                &m,
                &|ip| explain::pod_at(&m, ip),
                &d.src.to_string(),
                &d.dst.to_string(),
                81,
                Protocol::Tcp,
                None,
            );
            let scan = scan.unwrap();
            assert_eq!((&line.src, &line.dst), (&scan.src, &scan.dst));
            let by =
                |x: &Option<crate::policy::evaluate::Decision>| x.as_ref().map(|x| x.isolated_by.clone());
            let scanned = if ingress { &scan.ingress } else { &scan.egress };
            assert_eq!(by(scanned).unwrap_or_default(), line.policies, "{line:?}");
        }
        let line = explain_line(&syn(81), &view, 0);
        assert_eq!(line.dst, "x/a (10.244.1.2)");
        assert_eq!(line.policies, ["x/deny-all"]);
    }

    #[test]
    fn a_cluster_network_policy_denial_names_its_rule_and_is_counted_under_it() {
        let mut text = String::from(
            "kind: Pod\nmetadata: {name: a, namespace: x}\nspec: {nodeName: node-1}\nstatus: {podIP: 10.244.1.2}\n---\n\
             kind: Pod\nmetadata: {name: b, namespace: y}\nspec: {nodeName: node-1}\nstatus: {podIP: 10.244.1.3}\n",
        );
        text += "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
                 metadata: {name: guard}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  \
                 ingress:\n    - {name: no-y, action: Deny, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: y}}}]}\n";
        let view = ExplainView::new(Model::of_manifests(&text));
        let mut log = DenyLog::default();
        let line = log.record(&syn(81), &view, Instant::now(), 1).unwrap();
        assert_eq!(line.policies, ["cnp/guard/no-y"]);
        assert_eq!(
            line.reason,
            "ingress of x/a (10.244.1.2) is denied by cnp/guard/no-y (Admin tier): Admin Deny by cnp/guard/no-y"
        );
        assert!(log
            .metrics()
            .contains("weft_denied_connections_total{policy=\"cnp/guard/no-y\",direction=\"ingress\"} 1"));
    }

    #[test]
    fn audit_events_say_what_would_be_denied() {
        let mut m = model();
        for p in Arc::make_mut(&mut m.policies).values_mut() {
            std::sync::Arc::make_mut(p).audit = true;
        }
        let mut log = DenyLog::default();
        let view = ExplainView::new(m);
        let line = log.record(&Denied { audit: true, ..syn(81) }, &view, Instant::now(), 1).unwrap();
        assert!(line.audit && line.policies == ["x/deny-all"], "{line:?}");
        assert!(line.reason.contains("would be isolated for ingress by x/deny-all"), "{}", line.reason);
        assert!(line.reason.ends_with("(audit: it passed)"), "{}", line.reason);
        assert!(serde_json::to_string(&line).unwrap().contains("\"audit\":true"));
        let plain = log.record(&syn(82), &ExplainView::new(model()), Instant::now(), 2).unwrap();
        assert!(!serde_json::to_string(&plain).unwrap().contains("audit"), "only audit lines carry the flag");
    }

    #[test]
    fn over_the_rate_lines_are_counted_not_logged() {
        let (m, t0) = (ExplainView::new(model()), Instant::now());
        let mut log = DenyLog::default();
        let logged =
            (0..RATE as u16 + 10).filter(|p| log.record(&syn(1000 + p), &m, t0, 1).is_some()).count();
        assert_eq!((logged, log.suppressed), (RATE as usize, 10));
        assert!(log.record(&syn(5000), &m, t0 + Duration::from_secs(1), 2).is_some(), "a new second");
    }

    #[test]
    fn a_waiting_event_stops_the_drain_and_is_served_first() {
        let (etx, events) = std::sync::mpsc::channel();
        let (dtx, denied) = std::sync::mpsc::sync_channel(8);
        for p in 0..8u16 {
            dtx.try_send(p).unwrap();
        }
        assert!(dtx.try_send(9).is_err(), "the queue is bounded");
        let mut seen = Vec::new();
        // Nothing else waits: a batch of at most `max`.
        assert_eq!(drain_while_idle(&events, &denied, 3, |d| seen.push(d)), None::<&str>);
        assert_eq!(seen, [0, 1, 2]);
        // A pod report arrives: the drain stops before the next packet.
        etx.send("pod").unwrap();
        assert_eq!(drain_while_idle(&events, &denied, 8, |d| seen.push(d)), Some("pod"));
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(drain_while_idle(&events, &denied, 8, |d| seen.push(d)), None);
        assert_eq!(seen, [0, 1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_flood_is_admitted_at_the_rate_and_its_retransmits_fold() {
        let t0 = Instant::now();
        let mut log = DenyLog::default();
        let new = (0..10_000u16).filter(|p| log.admit(&syn(*p), t0) == Admit::New).count();
        assert_eq!((new, log.suppressed, log.received), (RATE as usize, 10_000 - u64::from(RATE), 10_000));
        // A suppressed connection's retransmit folds: no second chance to be explained.
        assert_eq!(log.admit(&syn(9_999), t0 + Duration::from_secs(1)), Admit::Folded);
        // Remembered connections stay bounded whatever the flood.
        for p in 0..40_000u32 {
            let d = Denied { src: IpAddr::V4(std::net::Ipv4Addr::from(0x0af4_0000 + p)), ..syn(80) };
            log.admit(&d, t0 + Duration::from_micros(u64::from(p) * 100));
        }
        assert!(log.seen.len() <= MAX_SEEN + 1, "{}", log.seen.len());
    }
}
