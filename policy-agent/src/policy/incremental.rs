//! The policy engine: this node's IR, kept up to date change by change.
//!
//! `new` compiles every policy (a full compile); `update` takes the model
//! before and after a change and recompiles only the policies the change
//! touches: those that changed, those whose targets include a changed pod
//! of this node (before or after), and those whose peers now resolve
//! differently in a way that changes what they add (`Use::stale`); the
//! others keep their contribution, and a group's peers that changed are
//! patched in place. The IR and a `Dirty` record of what changed are kept
//! in step, so a backend re-renders only those elements. A property test
//! checks that any sequence of updates gives the IR a full compile gives.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::Ipv4Network;

use super::aggregate::{Counted, DirAgg};
use super::compile::{
    counts_for_policy, def_may_match, resolve, selects_namespaces, Compiler, Contribution, Options, Part,
    PeerRegistry, PodIndex,
};
use super::guard6::{self, Guard6};
use super::ir::{Direction, Dirty, DirtyDirection, PeerKey, PolicyIr};
use crate::model::{LabelSelector, Model, Pod};

/// `DirAgg::add` or `DirAgg::remove`: true if a group came or went.
type FoldOp = fn(&mut DirAgg, &Part, &mut Direction, &mut DirtyDirection) -> bool;

/// Both directions of one view (enforced, or with audit policies too).
#[derive(Debug, Clone, Default)]
struct View {
    ingress: DirAgg,
    egress: DirAgg,
}

/// This node's compiled policy and what it was compiled from.
#[derive(Debug)]
pub struct PolicyEngine {
    node: String,
    options: Options,
    peers: PeerRegistry,
    /// Each policy's contribution, by policy key.
    parts: BTreeMap<String, Contribution>,
    /// Policy keys by namespace: a pod change can only retarget these.
    by_ns: BTreeMap<String, BTreeSet<String>>,
    /// Policies that resolved a named port on every pod.
    all_pods: BTreeSet<String>,
    local: Counted<Ipv4Addr>,
    /// This node's pods with an IPv6 address, by pod key.
    local6: BTreeMap<String, Ipv6Addr>,
    enforced: View,
    /// Every policy, audit ones as if enforced; only while audit policies exist.
    all: Option<View>,
    ir: PolicyIr,
    dirty: Dirty,
}

impl PolicyEngine {
    /// Compiles every policy of `model` for `node`.
    pub fn new(
        model: &Model,
        node: &str,
        cluster_cidr: Option<Ipv4Network>,
        options: Options,
    ) -> PolicyEngine {
        let mut e = PolicyEngine {
            node: node.into(),
            options,
            peers: PeerRegistry::default(),
            parts: BTreeMap::new(),
            by_ns: BTreeMap::new(),
            all_pods: BTreeSet::new(),
            local: Counted::default(),
            local6: BTreeMap::new(),
            enforced: View::default(),
            all: None,
            ir: PolicyIr { cluster_cidr, pod_cidr: pod_cidr(model, node), ..PolicyIr::default() },
            dirty: Dirty::default(),
        };
        for p in model.pods.values() {
            e.count_local(p, true);
        }
        let keys: Vec<String> = model.policies.keys().cloned().collect();
        e.recompile(model, &keys);
        e.guard6(model);
        e.dirty = Dirty { structural: true, ..Dirty::default() };
        e
    }

    /// The IR in force.
    pub fn ir(&self) -> &PolicyIr {
        &self.ir
    }

    pub fn into_ir(self) -> PolicyIr {
        self.ir
    }

    /// Notes on what could not be enforced as written, by policy.
    pub fn notes(&self) -> Vec<String> {
        self.parts.values().flat_map(|c| c.notes.iter().cloned()).collect()
    }

    /// What changed since the last `take_dirty` (everything, after `new`).
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Brings the IR from `old` (what it was compiled from) to `new`.
    pub fn update(&mut self, old: &Model, new: &Model) {
        let cidr = pod_cidr(new, &self.node);
        if cidr != self.ir.pod_cidr {
            self.ir.pod_cidr = cidr;
            self.dirty.structural = true;
        }
        let pods = changed(&old.pods, &new.pods);
        let namespaces = !changed(&old.namespaces, &new.namespaces).is_empty();
        let mut todo: BTreeSet<String> =
            changed(&old.policies, &new.policies).into_iter().map(|(k, _, _)| k.clone()).collect();
        for (_, before, after) in &pods {
            if let Some(p) = before {
                self.count_local(p, false);
            }
            if let Some(p) = after {
                self.count_local(p, true);
            }
        }
        // Targets: policies of a changed pod's namespace that select it.
        for (_, before, after) in &pods {
            for p in before.iter().chain(after).filter(|p| p.node.as_deref() == Some(&self.node)) {
                for key in self.by_ns.get(&p.namespace).into_iter().flatten() {
                    let policy = new.policies.get(key).or_else(|| old.policies.get(key));
                    if policy.is_some_and(|pol| pol.pod_selector.matches(&p.labels)) {
                        todo.insert(key.clone());
                    }
                }
            }
        }
        if !pods.is_empty() {
            todo.extend(self.all_pods.iter().cloned());
        }
        // Peers: re-resolve the definitions a change may touch.
        let index = PodIndex::new(new);
        let ns_matches = |sel: &LabelSelector, ns: &str| {
            sel.matches(&old.namespace_labels(ns)) || sel.matches(&new.namespace_labels(ns))
        };
        let mut renet: Vec<(PeerKey, super::compile::Nets)> = Vec::new();
        for (key, entry) in self.peers.defs.iter_mut() {
            let touched = (namespaces && selects_namespaces(&entry.def))
                || pods.iter().any(|(_, before, after)| {
                    before.iter().chain(after).any(|p| def_may_match(&entry.def, p, ns_matches))
                });
            if !touched {
                continue;
            }
            let now = resolve(new, &index, &entry.def);
            // A member pod may have changed what its named ports resolve to.
            let member_changed = pods.iter().any(|(k, _, _)| {
                now.pods.binary_search(k).is_ok() || entry.resolved.pods.binary_search(k).is_ok()
            });
            let resolution_changed = now != *entry.resolved;
            if !resolution_changed && !member_changed {
                continue;
            }
            for user in &entry.users {
                let stale = self.parts.get(user).and_then(|c| c.uses.get(key)).is_none_or(|u| {
                    (resolution_changed && u.stale(&now.nets)) || (member_changed && u.named)
                });
                if stale {
                    todo.insert(user.clone());
                }
            }
            if !resolution_changed {
                continue;
            }
            // Users kept as they are hold the new networks too, so a view
            // rebuilt from them later (audit) sees what the IR has.
            for user in &entry.users {
                let Some(c) = self.parts.get_mut(user) else { continue };
                for part in [&mut c.ingress, &mut c.egress] {
                    if let Some(n) = part.nets.get_mut(key) {
                        *n = now.nets.clone();
                    }
                }
            }
            renet.push((*key, now.nets.clone()));
            entry.resolved = std::sync::Arc::new(now);
        }
        for (key, nets) in &renet {
            self.for_views(|agg, ir, dirty| agg.renet(*key, nets, ir, dirty));
        }
        let todo: Vec<String> = todo.into_iter().collect();
        self.recompile_with(new, &index, &todo);
        self.guard6(new);
    }

    /// Brings the IPv6 guard to `model`: O(local IPv6 pods x the policies
    /// of their namespaces), nothing on an IPv4-only node.
    fn guard6(&mut self, model: &Model) {
        let g = Guard6::new(model, &self.node, &self.local6);
        if g == self.ir.v6 {
            return;
        }
        self.dirty.structural |= g.pod_cidr != self.ir.v6.pod_cidr;
        self.dirty.v6 = true;
        self.ir.v6 = g;
    }

    fn recompile(&mut self, model: &Model, keys: &[String]) {
        let index = PodIndex::new(model);
        self.recompile_with(model, &index, keys);
    }

    /// Replaces the contributions of policies `keys` by what `model` gives.
    fn recompile_with(&mut self, model: &Model, index: &PodIndex, keys: &[String]) {
        let audits_before = self.all.is_some();
        self.peers.named.clear();
        for key in keys {
            if let Some(old) = self.parts.remove(key) {
                self.withdraw(key, &old);
            }
            let Some(policy) = model.policies.get(key) else { continue };
            let mut compiler =
                Compiler { model, index, node: &self.node, options: self.options, peers: &mut self.peers };
            let c = compiler.contribution(policy);
            self.by_ns.entry(policy.namespace.clone()).or_default().insert(key.clone());
            if c.all_pods {
                self.all_pods.insert(key.clone());
            }
            self.contribute(&c);
            self.parts.insert(key.clone(), c);
        }
        self.peers.defs.retain(|_, e| !e.users.is_empty());
        let audits_now = model.policies.values().any(|p| p.audit);
        if audits_now != audits_before {
            self.rebuild_audit(audits_now);
        }
    }

    /// Takes policy `key`'s contribution out of the views and the indexes.
    fn withdraw(&mut self, key: &str, c: &Contribution) {
        self.fold(c, DirAgg::remove);
        for k in c.uses.keys() {
            if let Some(e) = self.peers.defs.get_mut(k) {
                e.users.remove(key);
            }
        }
        self.all_pods.remove(key);
        for keys in self.by_ns.values_mut() {
            if keys.remove(key) {
                break;
            }
        }
    }

    fn contribute(&mut self, c: &Contribution) {
        self.fold(c, DirAgg::add);
    }

    /// Adds `c` to (or removes it from) the views it belongs to: the
    /// enforced one unless it is an audit policy, and the audit view.
    fn fold(&mut self, c: &Contribution, op: FoldOp) {
        let mut structural = false;
        let mut run = |agg: &mut DirAgg, part, out, dirty| structural |= op(agg, part, out, dirty);
        if !c.audit {
            run(&mut self.enforced.ingress, &c.ingress, &mut self.ir.ingress, &mut self.dirty.ingress);
            run(&mut self.enforced.egress, &c.egress, &mut self.ir.egress, &mut self.dirty.egress);
        }
        if let Some(all) = self.all.as_mut() {
            run(&mut all.ingress, &c.ingress, &mut self.ir.audit_ingress, &mut self.dirty.audit_ingress);
            run(&mut all.egress, &c.egress, &mut self.ir.audit_egress, &mut self.dirty.audit_egress);
        }
        self.dirty.structural |= structural;
    }

    /// Audit policies came or went: the audit view is built from every
    /// contribution, or dropped.
    fn rebuild_audit(&mut self, on: bool) {
        self.ir.audit = on;
        self.ir.audit_ingress = Direction::default();
        self.ir.audit_egress = Direction::default();
        self.all = None;
        self.dirty.structural = true;
        if !on {
            return;
        }
        let mut all = View::default();
        let mut scratch = DirtyDirection::default();
        for c in self.parts.values() {
            all.ingress.add(&c.ingress, &mut self.ir.audit_ingress, &mut scratch);
            all.egress.add(&c.egress, &mut self.ir.audit_egress, &mut scratch);
        }
        self.all = Some(all);
    }

    fn for_views(&mut self, mut f: impl FnMut(&mut DirAgg, &mut Direction, &mut DirtyDirection)) {
        f(&mut self.enforced.ingress, &mut self.ir.ingress, &mut self.dirty.ingress);
        f(&mut self.enforced.egress, &mut self.ir.egress, &mut self.dirty.egress);
        if let Some(all) = self.all.as_mut() {
            f(&mut all.ingress, &mut self.ir.audit_ingress, &mut self.dirty.audit_ingress);
            f(&mut all.egress, &mut self.ir.audit_egress, &mut self.dirty.audit_egress);
        }
    }

    /// Counts `pod` in (`add`) or out of this node's local addresses.
    fn count_local(&mut self, pod: &Pod, add: bool) {
        if let Some(ip6) = guard6::local_address(pod, &self.node) {
            if add {
                self.local6.insert(pod.key(), ip6);
            } else {
                self.local6.remove(&pod.key());
            }
        }
        let Some(ip) = pod.ip.filter(|_| counts_for_policy(pod) && pod.node.as_deref() == Some(&self.node))
        else {
            return;
        };
        let flipped = if add { self.local.inc(&ip) } else { self.local.dec(&ip) };
        if flipped {
            if add {
                self.ir.local.insert(ip);
            } else {
                self.ir.local.remove(&ip);
            }
            self.dirty.local.insert(ip);
        }
    }
}

fn pod_cidr(model: &Model, node: &str) -> Option<Ipv4Network> {
    model.nodes.get(node).and_then(|n| n.pod_cidr)
}

/// The keys whose values differ between `old` and `new`, with both versions.
/// One walk of both maps in key order; shared values (`Arc`) compare by
/// pointer first, so an unchanged object costs a key comparison.
fn changed<'a, V: PartialEq>(
    old: &'a BTreeMap<String, V>,
    new: &'a BTreeMap<String, V>,
) -> Vec<(&'a String, Option<&'a V>, Option<&'a V>)> {
    use std::cmp::Ordering;
    let mut out = Vec::new();
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match order {
            Ordering::Less => out.extend(a.next().map(|(k, v)| (k, Some(v), None))),
            Ordering::Greater => out.extend(b.next().map(|(k, w)| (k, None, Some(w)))),
            Ordering::Equal => {
                if let (Some((k, v)), Some((_, w))) = (a.next(), b.next()) {
                    if v != w {
                        out.push((k, Some(v), Some(w)));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "incremental_tests.rs"]
pub(crate) mod tests;
