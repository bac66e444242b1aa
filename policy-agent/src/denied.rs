//! The denied-connection log: one structured line per denied connection,
//! naming the policies that decided it, folded (a retransmitted SYN of the
//! same connection within `FOLD` is not a new event) and rate-limited per
//! node (what is over the limit is counted, not lost silently). Also the
//! per-policy counters `/metrics` serves. Pure but for the clock passed in.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use serde::Serialize;

use crate::explain::explain;
use crate::model::{Model, Protocol};
use crate::nflog::Denied;
use crate::policy::evaluate::with_audit_enforced;

/// Packets of one connection within this time are one event.
pub const FOLD: Duration = Duration::from_secs(10);
/// At most this many lines per second per node.
pub const RATE: u32 = 50;
/// Lines kept for `/denied`.
pub const KEEP: usize = 1000;

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

type Key = (Ipv4Addr, Ipv4Addr, u8, Option<u16>, bool, bool);

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
    /// Packets folded into an earlier event of their connection.
    pub folded: u64,
    /// Events over the rate limit (counted, not logged).
    pub suppressed: u64,
    window: Option<(Instant, u32)>,
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

impl DenyLog {
    /// Records one denied packet seen at `now` (`time_ms` on the wall clock);
    /// the line to log, or None if it was folded or suppressed.
    pub fn record(
        &mut self,
        d: &Denied,
        model: &Model,
        cluster: Option<Ipv4Network>,
        now: Instant,
        time_ms: u64,
    ) -> Option<DeniedConnection> {
        if self.fold(d, now) {
            return None;
        }
        self.record_new(d, model, cluster, now, time_ms)
    }

    /// True (and counted) if `d` is a packet of a connection logged within
    /// `FOLD`: nothing more to do for it, not even building the model.
    pub fn fold(&mut self, d: &Denied, now: Instant) -> bool {
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

    /// Records the first packet of a connection (`fold` said false).
    pub fn record_new(
        &mut self,
        d: &Denied,
        model: &Model,
        cluster: Option<Ipv4Network>,
        now: Instant,
        time_ms: u64,
    ) -> Option<DeniedConnection> {
        let key = key(d);
        let direction = if d.ingress { "ingress" } else { "egress" };
        if self.seen.len() > 4 * KEEP {
            self.seen.retain(|_, (t, _)| now.duration_since(*t) < FOLD);
        }
        let (protocol, proto) = protocol_name(d.proto);
        // An audit event is explained as if the audit policies were enforced.
        let audit_view;
        let view = if d.audit {
            audit_view = with_audit_enforced(model);
            &audit_view
        } else {
            model
        };
        let (src, dst, reason, policies) = match explain(
            view,
            cluster,
            &d.src.to_string(),
            &d.dst.to_string(),
            d.dport.unwrap_or(0),
            proto.unwrap_or(Protocol::Tcp),
        ) {
            Ok(e) => {
                let decision = if d.ingress { &e.ingress } else { &e.egress };
                let policies = decision.as_ref().map(|x| x.isolated_by.clone()).unwrap_or_default();
                let (end, other) = if d.ingress { (&e.dst, &e.src) } else { (&e.src, &e.dst) };
                let reason = if policies.is_empty() {
                    format!(
                        "{end} is not isolated for {direction} in the current state (the rules were older)"
                    )
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
        for p in &policies {
            *self.per_policy.entry((p.clone(), direction)).or_default() += 1;
            *self.packets.entry((p.clone(), direction)).or_default() += 1;
        }
        self.seen.insert(key, (now, policies.clone()));
        // The rate limit: a window of one second.
        let (start, count) = self.window.get_or_insert((now, 0));
        if now.duration_since(*start) >= Duration::from_secs(1) {
            (*start, *count) = (now, 0);
        }
        if *count >= RATE {
            self.suppressed += 1;
            return None;
        }
        *count += 1;
        let port = d.dport;
        let line = DeniedConnection {
            time_ms,
            protocol,
            src,
            dst,
            port,
            direction,
            reason,
            policies,
            audit: d.audit,
        };
        if self.lines.len() == KEEP {
            self.lines.pop_front();
        }
        self.lines.push_back(line.clone());
        Some(line)
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
            "# HELP weft_denied_connections_total Connections denied, by isolating policy and direction.\n\
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
            "# TYPE weft_denied_packets_folded_total counter\nweft_denied_packets_folded_total {}\n\
             # TYPE weft_denied_log_suppressed_total counter\nweft_denied_log_suppressed_total {}\n",
            self.folded, self.suppressed
        );
        s
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
        let (m, t0) = (model(), Instant::now());
        let mut log = DenyLog::default();
        let line = log.record(&syn(81), &m, None, t0, 1000).expect("the first packet is logged");
        assert_eq!(line.direction, "ingress");
        assert_eq!(line.policies, ["x/deny-all"]);
        assert_eq!(line.reason, "x/a (10.244.1.2) is isolated for ingress by x/deny-all; no rule admits y/b (10.244.1.3) on TCP 81");
        // The retransmitted SYN one second later: folded.
        assert_eq!(log.record(&syn(81), &m, None, t0 + Duration::from_secs(1), 2000), None);
        assert_eq!(log.folded, 1);
        assert!(log
            .metrics()
            .contains("weft_denied_packets_total{policy=\"x/deny-all\",direction=\"ingress\"} 2"));
        // Another port is another connection; after FOLD the same one is new again.
        assert!(log.record(&syn(80), &m, None, t0 + Duration::from_secs(2), 3000).is_some());
        assert!(log.record(&syn(81), &m, None, t0 + FOLD + Duration::from_secs(1), 4000).is_some());
        assert_eq!(log.since(2500).lines().count(), 2);
        assert!(log
            .metrics()
            .contains("weft_denied_connections_total{policy=\"x/deny-all\",direction=\"ingress\"} 3"));
    }

    #[test]
    fn audit_events_say_what_would_be_denied() {
        let mut m = model();
        for p in m.policies.values_mut() {
            p.audit = true;
        }
        let mut log = DenyLog::default();
        let line = log.record(&Denied { audit: true, ..syn(81) }, &m, None, Instant::now(), 1).unwrap();
        assert!(line.audit && line.policies == ["x/deny-all"], "{line:?}");
        assert!(line.reason.contains("would be isolated for ingress by x/deny-all"), "{}", line.reason);
        assert!(line.reason.ends_with("(audit: it passed)"), "{}", line.reason);
        assert!(serde_json::to_string(&line).unwrap().contains("\"audit\":true"));
        let plain = log.record(&syn(82), &model(), None, Instant::now(), 2).unwrap();
        assert!(!serde_json::to_string(&plain).unwrap().contains("audit"), "only audit lines carry the flag");
    }

    #[test]
    fn over_the_rate_lines_are_counted_not_logged() {
        let (m, t0) = (model(), Instant::now());
        let mut log = DenyLog::default();
        let logged =
            (0..RATE as u16 + 10).filter(|p| log.record(&syn(1000 + p), &m, None, t0, 1).is_some()).count();
        assert_eq!((logged, log.suppressed), (RATE as usize, 10));
        assert!(log.record(&syn(5000), &m, None, t0 + Duration::from_secs(1), 2).is_some(), "a new second");
    }
}
