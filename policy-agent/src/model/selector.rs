//! Label selectors (metav1.LabelSelector) and how they match, as the API
//! server defines it: every matchLabels pair and every expression must hold;
//! an empty selector matches everything.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// A selector operator (matchExpressions[].operator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One matchExpressions entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Non-empty for In/NotIn, empty for Exists/DoesNotExist (checked at parse).
    pub values: BTreeSet<String>,
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            // As in apimachinery: an absent key satisfies NotIn.
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A label selector; the empty one selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// True if every pair and every expression holds for `labels`.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// True if it selects everything.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// A selector of exactly these pairs.
    pub fn of_labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> LabelSelector {
        LabelSelector {
            match_labels: pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            match_expressions: Vec::new(),
        }
    }
}

impl std::fmt::Display for LabelSelector {
    /// kubectl's rendering: `a=b,c in (d,e),!f`; the empty selector is `<all>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("<all>");
        }
        let mut parts: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for r in &self.match_expressions {
            let values = r.values.iter().cloned().collect::<Vec<_>>().join(",");
            parts.push(match r.operator {
                Operator::In => format!("{} in ({values})", r.key),
                Operator::NotIn => format!("{} notin ({values})", r.key),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement { key: key.into(), operator, values: values.iter().map(|v| v.to_string()).collect() }
    }

    #[test]
    fn the_empty_selector_matches_everything() {
        let s = LabelSelector::default();
        assert!(s.matches(&Labels::new()));
        assert!(s.matches(&labels(&[("pod", "a")])));
        assert_eq!(s.to_string(), "<all>");
    }

    #[test]
    fn match_labels_need_every_pair() {
        let s = LabelSelector::of_labels([("pod", "a"), ("tier", "web")]);
        assert!(s.matches(&labels(&[("pod", "a"), ("tier", "web"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("pod", "a")])));
        assert!(!s.matches(&labels(&[("pod", "b"), ("tier", "web")])));
    }

    #[test]
    fn operators() {
        let a = labels(&[("pod", "a")]);
        let none = Labels::new();
        let cases = [
            (req("pod", Operator::In, &["a", "b"]), true, false),
            (req("pod", Operator::In, &["b"]), false, false),
            (req("pod", Operator::NotIn, &["b"]), true, true),
            (req("pod", Operator::NotIn, &["a"]), false, true),
            (req("pod", Operator::Exists, &[]), true, false),
            (req("pod", Operator::DoesNotExist, &[]), false, true),
        ];
        for (r, on_a, on_none) in cases {
            assert_eq!(r.matches(&a), on_a, "{r:?} on pod=a");
            assert_eq!(r.matches(&none), on_none, "{r:?} on no labels");
        }
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let s = LabelSelector {
            match_labels: labels(&[("ns", "x")]),
            match_expressions: vec![
                req("pod", Operator::NotIn, &["c"]),
                req("env", Operator::DoesNotExist, &[]),
            ],
        };
        assert!(s.matches(&labels(&[("ns", "x"), ("pod", "a")])));
        assert!(!s.matches(&labels(&[("ns", "x"), ("pod", "c")])));
        assert!(!s.matches(&labels(&[("ns", "x"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("ns", "y")])));
        assert_eq!(s.to_string(), "ns=x,pod notin (c),!env");
    }
}
