//! The Leases of the status writer, pure: who may write (`decide`, the
//! election over one Lease), which agents compete (`candidates`), and a
//! node's report (`encode`/`decode`, held in its own Lease's annotation).
//!
//! The election follows client-go's leaderelection: a holder renews its
//! Lease; another node takes it only after it has seen the same record
//! (holder, renewTime) unchanged for leaseDurationSeconds by its own clock,
//! so clocks of different nodes are never compared. Writes carry the
//! resourceVersion read, so of two nodes taking it at once one gets 409.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::LeaseSpec;

use super::conditions::Realized;

/// The Lease whose holder writes every CNP's status.
pub const WRITER_LEASE: &str = "weft-cnp-status";
/// The label of the node report Leases (`weft-node-<node>`), with `REPORT_LABEL_VALUE`.
pub const REPORT_LABEL: &str = "weft.io/cnp-report";
pub const REPORT_LABEL_VALUE: &str = "node";
/// The node report Lease's annotation: JSON, CNP name -> generation realized.
pub const REALIZED_ANNOTATION: &str = "weft.io/cnp-realized";
/// Bound on the annotation's JSON (the API allows 256 KiB for all
/// annotations of an object): CNPs beyond it, in name order, go unreported,
/// so they show fewer nodes, never more.
pub const MAX_REPORT_BYTES: usize = 128 * 1024;
/// How many agents compete for the writer Lease: those of the first ready
/// nodes by name. A few for failover, not every node of a large cluster
/// reading the Lease every period.
pub const CANDIDATES: usize = 3;

/// The name of `node`'s report Lease; None if it would be longer than a name may be.
pub fn report_lease(node: &str) -> Option<String> {
    let name = format!("weft-node-{node}");
    (name.len() <= 253).then_some(name)
}

/// The JSON of a report, at most `max` bytes; true if entries were left out.
pub fn encode(realized: &Realized, max: usize) -> (String, bool) {
    let mut text = String::from("{");
    let mut cut = false;
    for (name, generation) in realized {
        let entry = format!("{}:{generation}", serde_json::Value::from(name.as_str()));
        // The entry, its comma and the closing brace must fit.
        if text.len() + entry.len() + 2 > max {
            cut = true;
            break;
        }
        if text.len() > 1 {
            text.push(',');
        }
        text.push_str(&entry);
    }
    text.push('}');
    (text, cut)
}

/// A report as a node wrote it; None if it is not one.
pub fn decode(text: &str) -> Option<Realized> {
    serde_json::from_str(text).ok()
}

/// The agents that compete for the writer Lease: the first `CANDIDATES`
/// nodes by name among those `ready` (a node without a Ready condition counts as ready).
pub fn candidates<'a>(nodes: impl IntoIterator<Item = (&'a str, bool)>) -> Vec<&'a str> {
    let mut ready: Vec<&str> = nodes.into_iter().filter(|(_, r)| *r).map(|(n, _)| n).collect();
    ready.sort_unstable();
    ready.truncate(CANDIDATES);
    ready
}

/// What a candidate does with the writer Lease this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet: create it, held by this node.
    Create,
    /// Renew it (this node holds it) or take it (no holder, or the holder's
    /// record went unchanged for its duration).
    Hold,
    /// Another node holds it: do not write.
    Follow(String),
}

/// The record last seen of another holder, and since when (this node's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    record: (String, Option<String>),
    since: Instant,
}

/// Decides this round's step from the Lease as read (`None`: there is none).
/// `default_duration` stands for a Lease without leaseDurationSeconds.
pub fn decide(
    me: &str,
    lease: Option<&LeaseSpec>,
    observed: &mut Option<Observed>,
    now: Instant,
    default_duration: Duration,
) -> Step {
    let Some(spec) = lease else { return Step::Create };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder.is_empty() || holder == me {
        *observed = None;
        return Step::Hold;
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(default_duration, Duration::from_secs);
    let renewed = spec.renew_time.as_ref().map(|t| t.0.to_string());
    let record = (holder.clone(), renewed);
    match observed {
        Some(o) if o.record == record => {
            if now.saturating_duration_since(o.since) >= duration {
                *observed = None;
                return Step::Hold;
            }
        }
        _ => *observed = Some(Observed { record, since: now }),
    }
    Step::Follow(holder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::Timestamp;

    fn held(by: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_is_taken_only_after_its_record_stood_still_for_its_duration() {
        let t0 = Instant::now();
        let d = Duration::from_secs(30);
        let mut seen = None;
        assert_eq!(decide("a", None, &mut seen, t0, d), Step::Create);
        assert_eq!(decide("a", Some(&held("a", 1)), &mut seen, t0, d), Step::Hold, "renew our own");
        assert_eq!(decide("a", Some(&LeaseSpec::default()), &mut seen, t0, d), Step::Hold, "released");
        // b holds it: followed while b renews, whatever our clock says of b's times.
        let follow = Step::Follow("b".into());
        assert_eq!(decide("a", Some(&held("b", 1)), &mut seen, t0, d), follow);
        let t = |s| t0 + Duration::from_secs(s);
        assert_eq!(decide("a", Some(&held("b", 1)), &mut seen, t(10), d), follow);
        assert_eq!(
            decide("a", Some(&held("b", 2)), &mut seen, t(14), d),
            follow,
            "renewed: the clock restarts"
        );
        assert_eq!(decide("a", Some(&held("b", 2)), &mut seen, t(28), d), follow, "14 s < 15 s");
        assert_eq!(decide("a", Some(&held("b", 2)), &mut seen, t(29), d), Step::Hold, "15 s unchanged");
        assert_eq!(seen, None);
    }

    #[test]
    fn reports_round_trip_and_are_bounded() {
        let r: Realized = [("a".to_string(), 3), ("b\"q".to_string(), 1)].into();
        let (text, cut) = encode(&r, MAX_REPORT_BYTES);
        assert!(!cut);
        assert_eq!(decode(&text), Some(r.clone()));
        assert_eq!(encode(&Realized::new(), 10), ("{}".to_string(), false));
        // Room for "a" only: b is left out, never half written.
        let (text, cut) = encode(&r, 8);
        assert!(cut && text.len() <= 8, "{text}");
        assert_eq!(decode(&text), Some([("a".to_string(), 3)].into()));
        let many: Realized = (0..20_000).map(|i| (format!("policy-{i:05}"), i64::MAX)).collect();
        let (text, cut) = encode(&many, MAX_REPORT_BYTES);
        assert!(cut && text.len() <= MAX_REPORT_BYTES);
        assert!(decode(&text).is_some());
        assert_eq!(decode("not json"), None);
    }

    #[test]
    fn the_first_ready_nodes_compete_and_names_are_bounded() {
        let nodes = [("d", true), ("b", true), ("a", false), ("c", true), ("e", true)];
        assert_eq!(candidates(nodes), ["b", "c", "d"]);
        assert_eq!(report_lease("n1").as_deref(), Some("weft-node-n1"));
        assert_eq!(report_lease(&"x".repeat(250)), None);
    }
}
