//! The policy engine: this node's IR, kept up to date change by change.
//!
//! `new` compiles every policy (a full compile); `update` takes the model
//! before and after a change and recompiles only the policies the change
//! touches: those that changed, those with a target of this node that
//! changed but stays one, and those whose peers now resolve differently in
//! a way that changes what they add (`Use::stale`). A target that only came
//! or went is added to (taken from) its policy's contribution: a held
//! target's elements with its address, or compiled for that pod alone
//! (`Contribution::like_a_target`); the others keep their contribution, and a group's peers
//! that changed are patched in place. A policy without a target on this
//! node is kept by its rules' peer keys, so its first target comes as any
//! other does. Each address family has its own engine (`FamilyEngine`)
//! over the same changes. The IR and a `Dirty` record of what changed are
//! kept in step, so a backend re-renders only those elements. A property
//! test checks that any sequence of updates gives the IR a full compile gives.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnetwork::IpNetwork;

use super::aggregate::{Counted, DirAgg};
use super::cluster;
use super::compile::{
    counts_for_policy, def_may_match, resolve, selects_namespaces, Compiler, Contribution, Nets, Options,
    Part, PeerRegistry, PodIndex,
};
use super::family::Family;
use super::ir::{Direction, Dirty, DirtyDirection, FamilyDirty, FamilyIr, PeerKey, PolicyIr};
use crate::model::{namespace_keys, LabelSelector, Model, NetworkPolicy, Pod};

/// `DirAgg::add` or `DirAgg::remove`: true if a group came or went.
type FoldOp<A> = fn(&mut DirAgg<A>, &Part<A>, &mut Direction<A>, &mut DirtyDirection<A>) -> bool;

/// A local pod that a policy, unchanged, now selects or no longer selects.
#[derive(Clone, Copy)]
enum Retarget<'m> {
    Gained(&'m Pod),
    Lost(&'m Pod),
}

/// An unchanged policy of the namespace of changed pod `.0` (its index in
/// `Changes::pods`) that now selects it or no longer does, by key.
type Retargeted<'m> = (usize, &'m str, &'m Arc<NetworkPolicy>, Retarget<'m>);

/// Both directions of one view (enforced, or with audit policies too).
#[derive(Debug, Clone)]
struct View<A: Family> {
    ingress: DirAgg<A>,
    egress: DirAgg<A>,
}

impl<A: Family> Default for View<A> {
    fn default() -> Self {
        View { ingress: DirAgg::default(), egress: DirAgg::default() }
    }
}

/// The views the IR is kept from.
#[derive(Debug)]
struct Views<A: Family> {
    enforced: View<A>,
    /// Every policy, audit ones as if enforced; only while audit policies exist.
    all: Option<View<A>>,
}

impl<A: Family> Views<A> {
    /// Adds `c` to (or removes it from) the views it belongs to: the
    /// enforced one unless it is an audit policy, and the audit view.
    fn fold(&mut self, c: &Contribution<A>, op: FoldOp<A>, out: &mut Out<A>) {
        let (ir, dirty) = (&mut *out.ir, &mut *out.dirty);
        let mut structural = false;
        let mut run = |agg: &mut DirAgg<A>, part, dir, d| structural |= op(agg, part, dir, d);
        if !c.audit {
            run(&mut self.enforced.ingress, &c.ingress, &mut ir.ingress, &mut dirty.ingress);
            run(&mut self.enforced.egress, &c.egress, &mut ir.egress, &mut dirty.egress);
        }
        if let Some(all) = self.all.as_mut() {
            run(&mut all.ingress, &c.ingress, &mut ir.audit_ingress, &mut dirty.audit_ingress);
            run(&mut all.egress, &c.egress, &mut ir.audit_egress, &mut dirty.audit_egress);
        }
        out.structural |= structural;
    }

    /// Runs `f` on each direction of each view, with its half of the IR.
    fn each(
        &mut self,
        out: &mut Out<A>,
        mut f: impl FnMut(&mut DirAgg<A>, &mut Direction<A>, &mut DirtyDirection<A>),
    ) {
        let (ir, dirty) = (&mut *out.ir, &mut *out.dirty);
        f(&mut self.enforced.ingress, &mut ir.ingress, &mut dirty.ingress);
        f(&mut self.enforced.egress, &mut ir.egress, &mut dirty.egress);
        if let Some(all) = self.all.as_mut() {
            f(&mut all.ingress, &mut ir.audit_ingress, &mut dirty.audit_ingress);
            f(&mut all.egress, &mut ir.audit_egress, &mut dirty.audit_egress);
        }
    }
}

/// This node's compiled policy and what it was compiled from.
#[derive(Debug)]
pub struct PolicyEngine {
    v4: FamilyEngine<Ipv4Addr>,
    v6: FamilyEngine<Ipv6Addr>,
    /// What ClusterNetworkPolicy peers select, for `cluster::touched`.
    cnp_peers: cluster::PodPeers,
    ir: PolicyIr,
    dirty: Dirty,
}

/// A key whose value changed, with the value before and after.
pub(super) type Change<'a, V> = (&'a String, Option<&'a V>, Option<&'a V>);

/// What changed between two models, as every family's engine needs it.
pub(super) struct Changes<'a> {
    pub(super) old: &'a Model,
    pub(super) new: &'a Model,
    /// Pods that changed, before and after.
    pub(super) pods: Vec<Change<'a, Arc<Pod>>>,
    /// A namespace's labels changed, or one came or went.
    pub(super) namespaces: bool,
    /// Policies that changed, came or went.
    policies: BTreeSet<String>,
}

impl PolicyEngine {
    /// Compiles every policy of `model` for `node`; `cluster_cidrs` are the
    /// cluster's pod networks (at most one per family).
    pub fn new(model: &Model, node: &str, cluster_cidrs: &[IpNetwork], options: Options) -> PolicyEngine {
        let mut ir = PolicyIr::default();
        ir.v4.cluster_cidr = cluster_cidrs.iter().find_map(|c| Ipv4Addr::of_net(*c));
        ir.v6.cluster_cidr = cluster_cidrs.iter().find_map(|c| Ipv6Addr::of_net(*c));
        // The first apply is in full: what changed on the way is not kept.
        let mut scratch = Dirty::default();
        let (v4, v6) = join(
            || FamilyEngine::new(model, node, options, &mut ir.v4, &mut scratch.v4),
            || FamilyEngine::new(model, node, options, &mut ir.v6, &mut scratch.v6),
        );
        (ir.v4.cluster, ir.v6.cluster) = cluster::compile_both(model, node);
        let cnp_peers = cluster::PodPeers::of(model);
        PolicyEngine { v4, v6, cnp_peers, ir, dirty: Dirty { structural: true, ..Dirty::default() } }
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
        // A note both families make (a named port on ipBlock peers) once.
        let mut seen = BTreeSet::new();
        self.v4.notes().into_iter().chain(self.v6.notes()).filter(|n| seen.insert(n.clone())).collect()
    }

    /// What changed since the last `take_dirty` (everything, after `new`).
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Brings the IR from `old` (what it was compiled from) to `new`.
    pub fn update(&mut self, old: &Model, new: &Model) {
        let changes = Changes {
            old,
            new,
            pods: changed(&old.pods, &new.pods),
            namespaces: !changed(&old.namespaces, &new.namespaces).is_empty(),
            // Shared policies (a pod change) are unchanged: none is looked at.
            policies: if Arc::ptr_eq(&old.policies, &new.policies) {
                BTreeSet::new()
            } else {
                changed(&old.policies, &new.policies).into_iter().map(|(k, _, _)| k.clone()).collect()
            },
        };
        let d = &mut self.dirty;
        let (v4, v6) = (&mut self.v4, &mut self.v6);
        let structural = match v4.idle(&changes) || v6.idle(&changes) {
            // One family has nothing to recompile: not worth a thread.
            true => (
                v4.update(&changes, &mut self.ir.v4, &mut d.v4),
                v6.update(&changes, &mut self.ir.v6, &mut d.v6),
            ),
            false => join(
                || v4.update(&changes, &mut self.ir.v4, &mut d.v4),
                || v6.update(&changes, &mut self.ir.v6, &mut d.v6),
            ),
        };
        d.structural |= structural.0 | structural.1;
        // ClusterNetworkPolicy is compiled whole when a change can touch it;
        // its chains come or go (structural) only with the first or last
        // subject, otherwise its sets' elements change.
        if cluster::touched(&changes, &self.v4.node, &mut self.cnp_peers) {
            let (v4, v6) = cluster::compile_both(new, &self.v4.node);
            d.structural |= v4.is_empty() != self.ir.v4.cluster.is_empty()
                || v6.is_empty() != self.ir.v6.cluster.is_empty();
            cluster::replace(&mut self.ir.v4.cluster, v4, &mut d.v4);
            cluster::replace(&mut self.ir.v6.cluster, v6, &mut d.v6);
        } else {
            // Pods no policy selects came, went or moved: the known pods only.
            cluster::update_known(&changes, &mut self.ir.v4.cluster, &mut d.v4.known);
            cluster::update_known(&changes, &mut self.ir.v6.cluster, &mut d.v6.known);
        }
    }
}

/// One family's share of the engine.
#[derive(Debug)]
struct FamilyEngine<A: Family> {
    node: String,
    options: Options,
    peers: PeerRegistry<A>,
    /// Each policy's contribution, by policy key.
    parts: BTreeMap<String, Contribution<A>>,
    /// Policies that resolved a named port on every pod.
    all_pods: BTreeSet<String>,
    /// Policies whose contribution has notes: what `notes` reads, not every
    /// contribution (the status asks after each change).
    noted: BTreeSet<String>,
    local: Counted<A>,
    views: Views<A>,
}

/// Where a family engine writes: its half of the IR and of the Dirty record,
/// and whether a change was structural.
struct Out<'o, A: Family> {
    ir: &'o mut FamilyIr<A>,
    dirty: &'o mut FamilyDirty<A>,
    structural: bool,
}

impl<A: Family> FamilyEngine<A> {
    fn new(
        model: &Model,
        node: &str,
        options: Options,
        ir: &mut FamilyIr<A>,
        dirty: &mut FamilyDirty<A>,
    ) -> FamilyEngine<A> {
        let mut e = FamilyEngine {
            node: node.into(),
            options,
            peers: PeerRegistry::default(),
            parts: BTreeMap::new(),
            all_pods: BTreeSet::new(),
            noted: BTreeSet::new(),
            local: Counted::default(),
            views: Views { enforced: View::default(), all: None },
        };
        ir.pod_cidr = pod_cidr::<A>(model, node);
        let mut out = Out { ir, dirty, structural: false };
        for p in model.pods.values() {
            e.count_local(p, true, &mut out);
        }
        let keys: Vec<&str> = model.policies.keys().map(String::as_str).collect();
        let index = PodIndex::new::<A>(model);
        e.recompile_with(model, &index, &keys, &BTreeSet::new(), &mut out);
        if model.policies.values().any(|p| p.audit) {
            e.rebuild_audit(true, &mut out);
        }
        e
    }

    fn notes(&self) -> Vec<String> {
        let noted = self.noted.iter().filter_map(|k| self.parts.get(k));
        noted.flat_map(|c| c.notes.iter().cloned()).collect()
    }

    /// True if no policy selects a pod of this node in this family and no
    /// pod of `c` has an address of it: `c` then costs this family next to
    /// nothing (an IPv4-only cluster's IPv6).
    fn idle(&self, c: &Changes) -> bool {
        let counts = |p: &Option<&Arc<Pod>>| p.is_some_and(|p| counts_for_policy::<A>(p));
        self.parts.is_empty() && !c.pods.iter().any(|(_, before, after)| counts(before) || counts(after))
    }

    /// Applies `c` to this family's IR; true if the change was structural.
    fn update<'m>(&mut self, c: &Changes<'m>, ir: &mut FamilyIr<A>, dirty: &mut FamilyDirty<A>) -> bool {
        let (old, new) = (c.old, c.new);
        let mut out = Out { ir, dirty, structural: false };
        let cidr = pod_cidr::<A>(new, &self.node);
        // Borrowed from the models (a policy to recompile is in one of them,
        // or a changed key): no key is copied.
        let mut todo: BTreeSet<&str> = c.policies.iter().map(String::as_str).collect();
        if cidr != out.ir.pod_cidr {
            if cidr.is_some() != out.ir.pod_cidr.is_some() {
                // Policies without a target here are kept by their rules, or
                // no longer (`recompile_with`): every policy, once.
                todo.extend(new.policies.keys().map(String::as_str));
            }
            out.ir.pod_cidr = cidr;
            out.structural = true;
        }
        let model_key = |key: &str| -> Option<&str> {
            new.policies
                .get_key_value(key)
                .or_else(|| old.policies.get_key_value(key))
                .map(|(k, _)| k.as_str())
        };
        for (_, before, after) in &c.pods {
            if let Some(p) = before {
                self.count_local(p, false, &mut out);
            }
            if let Some(p) = after {
                self.count_local(p, true, &mut out);
            }
        }
        // A pod version without an address of this family (not yet
        // reported, or hostNetwork) is neither target nor peer here: the
        // version of a pod the API shows before its ADD changes nothing.
        let seen: Vec<&Pod> = c
            .pods
            .iter()
            .flat_map(|(_, before, after)| before.iter().chain(after))
            .map(|p| p.as_ref())
            .filter(|p| counts_for_policy::<A>(p))
            .collect();
        // Targets: policies of a changed pod's namespace that select it.
        // A target that only came or went is added to (taken from) the
        // policy's contribution; a target that stays but changed recompiles it.
        let node = self.node.as_str();
        let local = |p: &Option<&'m Arc<Pod>>| -> Option<&'m Pod> {
            p.map(|p| p.as_ref()).filter(|p| counts_for_policy::<A>(p) && p.node.as_deref() == Some(node))
        };
        let mut retargets: Vec<Retargeted> = Vec::new();
        for (i, (_, before, after)) in c.pods.iter().enumerate() {
            let (was, is) = (local(before), local(after));
            let Some(ns) = was.or(is).map(|p| p.namespace.as_str()) else { continue };
            // A policy that changed, came or went is recompiled whole anyway.
            let unchanged = new.namespace_policies(ns).filter(|(k, _)| !c.policies.contains(*k));
            for (key, policy) in unchanged {
                let selects = |p: &&Pod| policy.pod_selector.matches(&p.labels);
                match (was.filter(selects), is.filter(selects)) {
                    (None, None) => {}
                    (None, Some(p)) => retargets.push((i, key, policy, Retarget::Gained(p))),
                    (Some(p), None) => retargets.push((i, key, policy, Retarget::Lost(p))),
                    (Some(_), Some(_)) => {
                        todo.insert(key);
                    }
                }
            }
        }
        if !seen.is_empty() {
            todo.extend(self.all_pods.iter().filter_map(|k| model_key(k)));
        }
        // Peers: re-resolve the definitions a change may touch.
        let index = PodIndex::new::<A>(new);
        let ns_matches = |sel: &LabelSelector, ns: &str| {
            sel.matches(&old.namespace_labels(ns)) || sel.matches(&new.namespace_labels(ns))
        };
        let mut renet: Vec<(PeerKey, Nets<A>)> = Vec::new();
        // Only the definitions indexed under a changed pod's labels, or
        // under none, can be touched.
        for key in self.peers.candidates(seen.iter().copied()) {
            let Some(entry) = self.peers.defs.get_mut(&key) else { continue };
            let key = &key;
            let touched = (c.namespaces && selects_namespaces(&entry.def))
                || seen.iter().any(|p| def_may_match(&entry.def, p, ns_matches));
            if !touched {
                continue;
            }
            let now = resolve::<A>(new, &index, &entry.def);
            // A member pod may have changed what its named ports resolve to.
            let member_changed = c.pods.iter().any(|(k, _, _)| {
                now.pods.binary_search(k).is_ok() || entry.resolved.pods.binary_search(k).is_ok()
            });
            let resolution_changed = now != *entry.resolved;
            if !resolution_changed && !member_changed {
                continue;
            }
            for user in &entry.users {
                let stale = match self.parts.get(user) {
                    // Kept by its rules alone: its peers are not in it.
                    Some(c) if !c.has_targets() => false,
                    held => held.and_then(|c| c.uses.get(key)).is_none_or(|u| {
                        (resolution_changed && u.stale(&now.nets)) || (member_changed && u.named)
                    }),
                };
                if stale {
                    todo.extend(model_key(user));
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
            entry.resolved = Arc::new(now);
        }
        for (key, nets) in &renet {
            self.views.each(&mut out, |agg, ir, dirty| agg.renet(*key, nets, ir, dirty));
        }
        self.peers.named.clear();
        // A policy whose peers changed is recompiled whole.
        retargets.retain(|(_, key, _, _)| !todo.contains(key));
        for key in self.retarget_all(new, &index, retargets, &mut out) {
            todo.insert(key);
        }
        let todo: Vec<&str> = todo.into_iter().collect();
        self.recompile_with(new, &index, &todo, &c.policies, &mut out);
        out.structural
    }

    /// Adds each target to (or takes it from) its policy's contribution
    /// without recompiling the policy for its other targets: the cost of a
    /// pod coming or going grows with the policies that select it, not with
    /// their targets. Each changed pod's retargets are in key order, so the
    /// contributions are met in one walk per pod, not looked up by key each
    /// (at 10,000 policies the searches cost more than the work). Returns
    /// the policies only a recompile can bring along: without a
    /// contribution yet, losing their last target, or with two targets
    /// sharing the address.
    fn retarget_all<'k>(
        &mut self,
        model: &Model,
        index: &PodIndex,
        retargets: Vec<Retargeted<'k>>,
        out: &mut Out<A>,
    ) -> Vec<&'k str> {
        let keep_rules = out.ir.pod_cidr.is_some();
        let FamilyEngine { node, options, peers, parts, all_pods, noted, views, .. } = self;
        let (mut recompile, mut emptied) = (Vec::new(), Vec::new());
        // One delta's room, reused for every target gained or lost.
        let mut delta = Contribution::default();
        let mut rest = &retargets[..];
        while let Some(&(changed, _, first, _)) = rest.first() {
            let run = rest.iter().take_while(|r| r.0 == changed).count();
            let ns = first.namespace.as_str();
            let mut cursor = parts.range_mut::<String, _>(namespace_keys(ns)).peekable();
            for &(_, key, policy, change) in &rest[..run] {
                // Its own version of the policy first: the keys' bytes are
                // cache misses at 10,000 policies.
                let of_it = |(k, c): &(&String, &mut Contribution<A>)| {
                    c.compiled_from.as_ref().is_some_and(|p| Arc::ptr_eq(p, policy)) || k.as_str() == key
                };
                while cursor.next_if(|e| !of_it(e) && e.0.as_str() < key).is_some() {}
                let Some((_, held)) = cursor.next_if(of_it) else {
                    recompile.push(key);
                    continue;
                };
                let held: &mut Contribution<A> = held;
                match change {
                    Retarget::Gained(pod) => {
                        if !A::of_pod(pod).is_some_and(|ip| held.like_a_target(ip, &mut delta)) {
                            let mut compiler = Compiler { model, index, node, options: *options, peers };
                            compiler.for_targets_into(policy, &[pod], &held.rule_keys, &mut delta);
                            // The groups' peers the contribution names already are counted once.
                            delta.ingress.nets.retain(|k, _| !held.ingress.nets.contains_key(k));
                            delta.egress.nets.retain(|k, _| !held.egress.nets.contains_key(k));
                            let new_uses = delta.uses.keys().filter(|k| !held.uses.contains_key(k));
                            register(peers, key, new_uses);
                        }
                        views.fold(&delta, DirAgg::add, out);
                        held.absorb(&mut delta);
                        if held.all_pods && !all_pods.contains(key) {
                            all_pods.insert(key.to_string());
                        }
                        if !held.notes.is_empty() && !noted.contains(key) {
                            noted.insert(key.to_string());
                        }
                    }
                    Retarget::Lost(pod) => {
                        if !A::of_pod(pod).is_some_and(|ip| held.split_off_target(ip, keep_rules, &mut delta))
                        {
                            recompile.push(key);
                            continue;
                        }
                        if !held.all_pods {
                            all_pods.remove(key);
                        }
                        if held.notes.is_empty() {
                            noted.remove(key);
                        }
                        if held.is_empty() {
                            // A policy without rules is not kept without targets.
                            emptied.push(key);
                        }
                        views.fold(&delta, DirAgg::remove, out);
                    }
                }
            }
            rest = &rest[run..];
        }
        for key in emptied {
            // Unless a later retarget of the same policy filled it again.
            if parts.get(key).is_some_and(Contribution::is_empty) {
                parts.remove(key);
            }
        }
        recompile
    }

    /// Replaces the contributions of policies `keys` by what `model` gives;
    /// `changed` are the policies whose spec changed.
    fn recompile_with(
        &mut self,
        model: &Model,
        index: &PodIndex,
        keys: &[&str],
        changed: &BTreeSet<String>,
        out: &mut Out<A>,
    ) {
        let audits_before = self.views.all.is_some();
        self.peers.named.clear();
        // A node with a pod network of this family keeps the policies
        // without a target here by their rules; an IPv4-only node's IPv6
        // engine keeps nothing.
        let keep_rules = out.ir.pod_cidr.is_some();
        for &key in keys {
            // The key's string is kept for the new contribution.
            let old = self.parts.remove_entry(key);
            if let Some((_, c)) = &old {
                self.withdraw(key, c, out);
            }
            self.noted.remove(key);
            let Some(policy) = model.policies.get(key) else {
                self.all_pods.remove(key);
                continue;
            };
            // An unchanged policy's rules name the peers they named.
            let rule_keys = match &old {
                Some((_, c)) if !changed.contains(key) => c.rule_keys.as_slice(),
                _ => &[],
            };
            let mut c = self.compile(model, index, policy, rule_keys, keep_rules);
            c.compiled_from = Some(Arc::clone(policy));
            register(&mut self.peers, key, c.uses.keys());
            if c.is_empty() {
                // A policy without rules, or (on an IPv4-only cluster, in
                // IPv6) without a target and not kept by its rules: keeping
                // its nothing would cost memory per policy.
                self.all_pods.remove(key);
                continue;
            }
            if !c.all_pods {
                self.all_pods.remove(key);
            } else if !self.all_pods.contains(key) {
                self.all_pods.insert(key.to_string());
            }
            self.views.fold(&c, DirAgg::add, out);
            if !c.notes.is_empty() {
                self.noted.insert(key.to_string());
            }
            self.parts.insert(old.map_or_else(|| key.to_string(), |(k, _)| k), c);
        }
        self.peers.retain_used();
        // Audit policies come or go only with a policy change.
        let audits_now =
            if changed.is_empty() { audits_before } else { model.policies.values().any(|p| p.audit) };
        if audits_now != audits_before {
            self.rebuild_audit(audits_now, out);
        }
    }

    fn compile(
        &mut self,
        model: &Model,
        index: &PodIndex,
        policy: &NetworkPolicy,
        rule_keys: &[PeerKey],
        keep_rules: bool,
    ) -> Contribution<A> {
        let mut compiler =
            Compiler { model, index, node: &self.node, options: self.options, peers: &mut self.peers };
        compiler.contribution(policy, rule_keys, keep_rules)
    }

    /// Takes policy `key`'s contribution out of the views and its peers'
    /// users (not out of `all_pods`: the caller does, if the policy is gone).
    fn withdraw(&mut self, key: &str, c: &Contribution<A>, out: &mut Out<A>) {
        self.views.fold(c, DirAgg::remove, out);
        for k in c.uses.keys() {
            self.peers.drop_user(*k, key);
        }
    }

    /// Audit policies came or went: the audit view is built from every
    /// contribution, or dropped.
    fn rebuild_audit(&mut self, on: bool, out: &mut Out<A>) {
        out.ir.audit = on;
        out.ir.audit_ingress = Direction::default();
        out.ir.audit_egress = Direction::default();
        self.views.all = None;
        out.structural = true;
        if !on {
            return;
        }
        let mut all = View::default();
        let mut scratch = DirtyDirection::default();
        for c in self.parts.values() {
            all.ingress.add(&c.ingress, &mut out.ir.audit_ingress, &mut scratch);
            all.egress.add(&c.egress, &mut out.ir.audit_egress, &mut scratch);
        }
        self.views.all = Some(all);
    }

    /// Counts `pod` in (`add`) or out of this node's local addresses.
    fn count_local(&mut self, pod: &Pod, add: bool, out: &mut Out<A>) {
        let local = counts_for_policy::<A>(pod) && pod.node.as_deref() == Some(&self.node);
        let Some(ip) = A::of_pod(pod).filter(|_| local) else { return };
        let flipped = if add { self.local.inc(&ip) } else { self.local.dec(&ip) };
        if flipped {
            if add {
                out.ir.local.insert(ip);
            } else {
                out.ir.local.remove(&ip);
            }
            out.dirty.local.insert(ip);
        }
    }
}

/// Names policy `key` a user of the peer definitions `uses`.
fn register<'k, A: Family>(peers: &mut PeerRegistry<A>, key: &str, uses: impl Iterator<Item = &'k PeerKey>) {
    for k in uses {
        if let Some(e) = peers.defs.get_mut(k) {
            if !e.users.contains(key) {
                e.users.insert(key.to_string());
            }
        }
    }
}

fn pod_cidr<A: Family>(model: &Model, node: &str) -> Option<A::Net> {
    model.nodes.get(node).and_then(A::pod_cidr)
}

/// Runs `a` here and `b` on a thread of its own (each family's compile is
/// independent of the other's, and this machine has a core for each);
/// both here, one after the other, if no thread can be started.
fn join<RA: Send, RB: Send>(a: impl FnOnce() -> RA + Send, b: impl FnOnce() -> RB + Send) -> (RA, RB) {
    let b = std::sync::Mutex::new(Some(b));
    let run_b = || b.lock().ok().and_then(|mut b| b.take()).map(|b| b());
    std::thread::scope(|s| {
        let other = std::thread::Builder::new().name("weft-agent-compile".into()).spawn_scoped(s, run_b);
        let ra = a();
        let rb = match other.map(|h| h.join()) {
            Ok(Ok(Some(rb))) => rb,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // Not started (or, impossibly, started without its work): here.
            Ok(Ok(None)) | Err(_) => run_b().expect("b runs once, here or there"),
        };
        (ra, rb)
    })
}

/// The keys whose values differ between `old` and `new`, with both versions.
/// One walk of both maps in key order; shared values (`Arc`) compare by
/// pointer first, so an unchanged object costs a key comparison.
fn changed<'a, V: PartialEq>(
    old: &'a BTreeMap<String, V>,
    new: &'a BTreeMap<String, V>,
) -> Vec<Change<'a, V>> {
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
