//! Label selectors (metav1.LabelSelector) and how they match, as the API
//! server defines it: every matchLabels pair and every expression must hold;
//! an empty selector matches everything.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Labels of an object (or a selector's matchLabels): pairs sorted by key,
/// each key once. A map with a map's API, Debug text, order and wire form;
/// a vector because an object has a few labels and every pod and selector
/// holds a set: a `BTreeMap` node for a few pairs takes about 540 bytes.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    pub fn new() -> Labels {
        Labels(Vec::new())
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut String> {
        self.find(key).ok().map(|i| &mut self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key` to `value`; the value it had, if any.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// The pairs in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&String, &String)> + Clone {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, String)> for Labels {
    /// As a map collects: a key given twice keeps its last value.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Labels {
        let mut v: Vec<(String, String)> = pairs.into_iter().collect();
        // Stable: of equal keys the last stays after the dedup below.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.reverse();
        v.dedup_by(|later, earlier| later.0 == earlier.0);
        v.reverse();
        v.shrink_to_fit();
        Labels(v)
    }
}

impl<const N: usize> From<[(String, String); N]> for Labels {
    fn from(pairs: [(String, String); N]) -> Labels {
        pairs.into_iter().collect()
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Labels {
        Labels(map.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a String, &'a String);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (String, String)>, fn(&(String, String)) -> (&String, &String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl std::ops::Index<&str> for Labels {
    type Output = String;
    /// Panics if `key` is absent, as a map's index does.
    fn index(&self, key: &str) -> &String {
        self.get(key).unwrap_or_else(|| panic!("no label {key}"))
    }
}

impl std::fmt::Debug for Labels {
    /// A map's: peer keys hash this text, so set names stay as they were.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Labels, D::Error> {
        BTreeMap::<String, String>::deserialize(d).map(Labels::from)
    }
}

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
    fn labels_read_print_and_order_as_the_map_they_replace() {
        let pairs = [("tier", "web"), ("app", "a"), ("tier", "db"), ("b/c", "x y")];
        let map: BTreeMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let l = labels(&pairs);
        // Peer keys hash the Debug text: set names depend on it.
        assert_eq!(format!("{l:?}"), format!("{map:?}"));
        assert_eq!(
            l.iter().collect::<Vec<_>>(),
            map.iter().collect::<Vec<_>>(),
            "a key given twice keeps its last value"
        );
        assert_eq!(serde_json::to_string(&l).unwrap(), serde_json::to_string(&map).unwrap());
        assert_eq!(
            serde_json::from_str::<Labels>(r#"{"b":"1","a":"2","b":"3"}"#).unwrap(),
            labels(&[("a", "2"), ("b", "3")])
        );
        let others = [
            labels(&[]),
            labels(&[("app", "a")]),
            labels(&[("app", "b")]),
            labels(&[("app", "a"), ("z", "")]),
        ];
        for o in &others {
            let o_map: BTreeMap<String, String> = o.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(l.cmp(o), map.cmp(&o_map), "{l:?} against {o:?}");
        }
        let mut m = l.clone();
        assert_eq!(m.insert("app".into(), "b".into()), Some("a".into()));
        assert_eq!(m.insert("0".into(), "first".into()), None);
        assert_eq!(format!("{m:?}"), r#"{"0": "first", "app": "b", "b/c": "x y", "tier": "db"}"#);
        assert_eq!((m.get("b/c").map(String::as_str), m.get("nope"), m.len()), (Some("x y"), None, 4));
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
