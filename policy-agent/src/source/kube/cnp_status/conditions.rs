//! A ClusterNetworkPolicy's `status.conditions` from what the cluster says,
//! pure: its validity (weft's parser), its metadata.generation, the cluster's
//! nodes and what each node reported realized. `Accepted` says whether weft
//! takes the policy; `Realized` on how many nodes it is in force at its
//! current generation. `update` returns the conditions to write only when
//! what they say changed, so an unchanged cluster costs no write.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition saying whether the policy is valid.
pub const ACCEPTED: &str = "Accepted";
/// The condition saying on how many nodes the current generation is in force.
pub const REALIZED: &str = "Realized";
/// A message is cut to this many characters (the API allows 32768; a
/// parser error is one line).
const MAX_MESSAGE: usize = 1024;

/// What one node reports: CNP name -> the metadata.generation it realized.
pub use crate::source::Realized;

/// What weft's parser said of a policy: Ok(it fails closed somewhere), or why it is invalid.
pub type Validity = Result<bool, String>;

/// The cluster's nodes and their reports.
#[derive(Debug, Default)]
pub struct Reports {
    /// The nodes the cluster has (M).
    pub nodes: BTreeSet<String>,
    /// By node: what it realized. A report of a node that is gone is not counted.
    pub realized: BTreeMap<String, Realized>,
}

impl Reports {
    /// (N, M): the nodes whose report has `name` at `generation`, of all nodes.
    pub fn count(&self, name: &str, generation: Option<i64>) -> (usize, usize) {
        let at = |r: &Realized| generation.is_some() && r.get(name).copied() == generation;
        let n = self.nodes.iter().filter(|node| self.realized.get(*node).is_some_and(at)).count();
        (n, self.nodes.len())
    }
}

/// One condition as weft means it, without its transition time: what is compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
    pub observed_generation: Option<i64>,
}

/// The conditions weft wants on a policy.
pub fn wanted(name: &str, generation: Option<i64>, validity: &Validity, reports: &Reports) -> [Wanted; 2] {
    let (n, m) = reports.count(name, generation);
    let g = generation.map_or_else(|| "?".to_string(), |g| g.to_string());
    let realized = format!("realized on {n} of {m} nodes at generation {g}");
    let (accepted, realized) = match validity {
        Ok(fails_closed) => {
            let message = if *fails_closed {
                "valid; a rule holds a peer or protocol weft does not implement: that rule fails closed"
            } else {
                "valid"
            };
            let all = m > 0 && n == m;
            ((true, "Valid", message.to_string()), (all, if all { "Realized" } else { "Pending" }, realized))
        }
        Err(e) => (
            (false, "Invalid", cut(e)),
            (false, "Invalid", format!("{realized}: invalid; nodes keep its last valid version, if any")),
        ),
    };
    let make = |type_, (status, reason, message): (bool, &'static str, String)| Wanted {
        type_,
        status,
        reason,
        message,
        observed_generation: generation,
    };
    [make(ACCEPTED, accepted), make(REALIZED, realized)]
}

/// The conditions to write, or None if `current` (as served) already says
/// `wanted`. A condition keeps its lastTransitionTime while its status stays.
pub fn update(wanted: &[Wanted], current: &[Condition], now: Time) -> Option<Vec<Condition>> {
    let find = |t: &str| current.iter().find(|c| c.type_ == t);
    let same = |w: &Wanted, c: &Condition| {
        (c.status == status(w.status))
            && c.reason == w.reason
            && c.message == w.message
            && c.observed_generation == w.observed_generation
    };
    if wanted.iter().all(|w| find(w.type_).is_some_and(|c| same(w, c))) {
        return None;
    }
    let out = wanted
        .iter()
        .map(|w| {
            let since = find(w.type_)
                .filter(|c| c.status == status(w.status))
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: w.type_.into(),
                status: status(w.status).into(),
                reason: w.reason.into(),
                message: w.message.clone(),
                observed_generation: w.observed_generation,
                last_transition_time: since,
            }
        })
        .collect();
    Some(out)
}

fn status(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// At most MAX_MESSAGE characters.
fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn reports(nodes: &[&str], realized: &[(&str, &[(&str, i64)])]) -> Reports {
        Reports {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            realized: realized
                .iter()
                .map(|(node, r)| (node.to_string(), r.iter().map(|(k, g)| (k.to_string(), *g)).collect()))
                .collect(),
        }
    }

    fn said(w: &[Wanted; 2]) -> Vec<(bool, &str, &str)> {
        w.iter().map(|w| (w.status, w.reason, w.message.as_str())).collect()
    }

    #[test]
    fn realized_counts_the_nodes_at_the_current_generation_only() {
        let r = reports(
            &["a", "b", "c"],
            &[("a", &[("p", 3)]), ("b", &[("p", 2), ("q", 1)]), ("gone", &[("p", 3)])],
        );
        assert_eq!(r.count("p", Some(3)), (1, 3), "b is behind, c has no report, gone is not a node");
        assert_eq!(r.count("p", None), (0, 3), "no generation, nothing to compare");
        let w = wanted("p", Some(3), &Ok(false), &r);
        assert_eq!(
            said(&w),
            [(true, "Valid", "valid"), (false, "Pending", "realized on 1 of 3 nodes at generation 3")]
        );
        assert!(w.iter().all(|w| w.observed_generation == Some(3)));
        let all = reports(&["a", "b"], &[("a", &[("p", 3)]), ("b", &[("p", 3)])]);
        let w = wanted("p", Some(3), &Ok(false), &all);
        assert_eq!(said(&w)[1], (true, "Realized", "realized on 2 of 2 nodes at generation 3"));
        // No node at all is not "realized everywhere".
        assert!(!wanted("p", Some(1), &Ok(false), &Reports::default())[1].status);
    }

    #[test]
    fn an_invalid_policy_is_not_accepted_with_the_parsers_words() {
        let r = reports(&["a"], &[("a", &[("p", 1)])]);
        let w = wanted("p", Some(2), &Err("spec.priority 2000 is not in 0-1000".into()), &r);
        assert_eq!(said(&w)[0], (false, "Invalid", "spec.priority 2000 is not in 0-1000"));
        assert_eq!(w[1].reason, "Invalid");
        assert!(w[1].message.starts_with("realized on 0 of 1 nodes at generation 2: invalid"), "{w:?}");
        let long = "x".repeat(5000);
        let w = wanted("p", Some(2), &Err(long), &r);
        assert_eq!(w[0].message.chars().count(), MAX_MESSAGE + 3);
        assert!(wanted("p", Some(1), &Ok(true), &r)[0].message.contains("fails closed"));
    }

    #[test]
    fn unchanged_conditions_are_not_written_and_transition_times_stay() {
        let r = reports(&["a", "b"], &[("a", &[("p", 1)])]);
        let w = wanted("p", Some(1), &Ok(false), &r);
        let first = update(&w, &[], at(100)).expect("nothing served yet: written");
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|c| c.last_transition_time == at(100)));
        assert_eq!(update(&w, &first, at(200)), None, "the same words: no write");

        // b reports: Realized flips (new time), Accepted stays (its time kept).
        let r = reports(&["a", "b"], &[("a", &[("p", 1)]), ("b", &[("p", 1)])]);
        let w = wanted("p", Some(1), &Ok(false), &r);
        let second = update(&w, &first, at(300)).expect("the count changed");
        assert_eq!((second[0].status.as_str(), &second[0].last_transition_time), ("True", &at(100)));
        assert_eq!(
            (second[1].status.as_str(), second[1].message.as_str(), &second[1].last_transition_time),
            ("True", "realized on 2 of 2 nodes at generation 1", &at(300))
        );
        // A new generation changes observedGeneration, hence a write, before any node reports it.
        let w = wanted("p", Some(2), &Ok(false), &r);
        let third = update(&w, &second, at(400)).expect("a new generation");
        assert_eq!(third[1].message, "realized on 0 of 2 nodes at generation 2");
        assert_eq!(third[0].observed_generation, Some(2));
        // Conditions of other types (another writer's) do not matter.
        let mut served = third.clone();
        served.push(Condition { type_: "Other".into(), ..third[0].clone() });
        assert_eq!(update(&w, &served, at(500)), None);
    }
}
