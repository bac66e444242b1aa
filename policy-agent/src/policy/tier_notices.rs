//! What the operator must hear about ClusterNetworkPolicy, once each: which
//! policies of one tier share a priority and a pod (either may apply first).

use std::collections::BTreeSet;

use tracing::warn;

use super::tiers::same_priority_overlaps;
use crate::model::Model;

/// Equal-priority pairs named per snapshot at most; the rest are counted.
const MAX_PAIR_LINES: usize = 10;

/// The notices already given, so each is given once per object (or pair)
/// while it exists; one that goes and comes back is noticed again.
#[derive(Debug, Default)]
pub struct TierNotices {
    ambiguous: BTreeSet<(String, String)>,
}

impl TierNotices {
    /// Logs a WARN for each equal-priority pair of `model` not warned about
    /// yet; idempotent for the same model.
    pub fn note(&mut self, model: &Model) {
        let pairs: BTreeSet<(String, String)> = if model.cluster_policies.len() > 1 {
            same_priority_overlaps(model).into_iter().collect()
        } else {
            BTreeSet::new()
        };
        let new: Vec<&(String, String)> = pairs.difference(&self.ambiguous).collect();
        for (a, b) in new.iter().take(MAX_PAIR_LINES) {
            let p = &model.cluster_policies[a];
            warn!(
                "ClusterNetworkPolicies {a} and {b} share the {} tier, priority {} and at least one pod: \
                 which applies first to that pod's connections is undefined; give them distinct priorities",
                p.tier, p.priority
            );
        }
        if new.len() > MAX_PAIR_LINES {
            warn!(
                "... and {} more pairs of ClusterNetworkPolicies with equal priorities sharing pods",
                new.len() - MAX_PAIR_LINES
            );
        }
        self.ambiguous = pairs;
    }

    /// The equal-priority pairs of the last model noted, for the status
    /// file's warnings (at most `MAX_PAIR_LINES` named, the rest counted).
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .ambiguous
            .iter()
            .take(MAX_PAIR_LINES)
            .map(|(a, b)| format!("ClusterNetworkPolicies {a} and {b} share a tier, a priority and a pod: which applies first is undefined"))
            .collect();
        if self.ambiguous.len() > MAX_PAIR_LINES {
            out.push(format!("... and {} more such pairs", self.ambiguous.len() - MAX_PAIR_LINES));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_manifests;

    fn model(cnps: &[(&str, u16)]) -> Model {
        let mut text = String::from(
            "kind: Namespace\nmetadata: {name: x}\n---\nkind: Pod\nmetadata: {name: a, namespace: x}\n",
        );
        for (name, prio) in cnps {
            text += &format!(
                "---\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\n\
                 spec: {{tier: Admin, priority: {prio}, subject: {{namespaces: {{}}}}}}\n"
            );
        }
        parse_manifests(&text).unwrap().into_iter().collect()
    }

    #[test]
    fn each_ambiguous_pair_is_warned_about_once_while_it_exists() {
        let mut n = TierNotices::default();
        let lines = crate::logging::captured("info", None, || {
            n.note(&model(&[("a", 1), ("b", 1), ("c", 2)]));
            n.note(&model(&[("a", 1), ("b", 1), ("c", 2)]));
            // b moves to another priority, then back.
            n.note(&model(&[("a", 1), ("b", 3)]));
            n.note(&model(&[("a", 1), ("b", 1), ("c", 2)]));
        });
        let pairs = lines
            .iter()
            .filter(|l| l.contains("ClusterNetworkPolicies a and b share the Admin tier, priority 1"));
        assert_eq!(pairs.count(), 2, "once, and again after b came back to priority 1: {lines:#?}");
        assert_eq!(lines.len(), 2, "nothing about c, alone at its priority: {lines:#?}");
        // The status says so as long as the pair exists.
        assert_eq!(n.warnings().len(), 1);
        assert!(n.warnings()[0].starts_with("ClusterNetworkPolicies a and b share"), "{:?}", n.warnings());
        n.note(&model(&[("a", 1), ("b", 3)]));
        assert_eq!(n.warnings(), Vec::<String>::new());
        assert!(lines.iter().all(|l| l.starts_with("WARN")), "{lines:#?}");
    }

    #[test]
    fn many_pairs_are_named_up_to_a_bound_and_counted() {
        let six: Vec<(String, u16)> = (0..6).map(|i| (format!("p{i}"), 4)).collect();
        let six: Vec<(&str, u16)> = six.iter().map(|(n, p)| (n.as_str(), *p)).collect();
        let lines = crate::logging::captured("info", None, || TierNotices::default().note(&model(&six)));
        assert_eq!(lines.iter().filter(|l| l.contains(" share the Admin tier")).count(), MAX_PAIR_LINES);
        let mut n = TierNotices::default();
        n.note(&model(&six));
        assert_eq!(n.warnings().len(), MAX_PAIR_LINES + 1, "bounded in the status too");
        assert!(lines.last().is_some_and(|l| l.contains("... and 5 more pairs")), "15 pairs: {lines:#?}");
    }
}
