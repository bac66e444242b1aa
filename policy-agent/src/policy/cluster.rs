//! ClusterNetworkPolicy compiled for this node, in one address family: per
//! tier and direction, this node's subjects in classes (pods the same
//! policies select) and, per class, disjoint regions (peers x protocol and
//! port cells), each with the action of the first rule that covers it.
//!
//! First match wins is settled here, ahead of time, so the kernel asks one
//! question per verdict whatever the number of policies and rules: the
//! regions of a class never overlap, and a packet's (subject, protocol,
//! port, peer) falls in at most one. `policy::tiers` is the same semantics
//! on the model, and the tests check the two agree.
//!
//! How a class is cut: the port space is split at every port boundary some
//! rule uses (per protocol; every other protocol is one cell), and each
//! elementary cell is painted rule by rule, in evaluation order, each rule
//! painting only what earlier ones left. What is painted is not addresses
//! but address classes (`Partition`): the address space cut, once per
//! compile, into the addresses that the same peer lists hold. A team of
//! 1,000 pods is then a few classes, not 1,000 spans, and the work per
//! class of subjects grows with its rules x the address classes they reach.
//! Cells painted alike are then one region per action.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::rc::Rc;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use weft_conf::hash::fnv1a64;

use super::family::Family;
use super::incremental::Changes;
use super::ir::{Cell, Class, ClassDelta, ClusterIr, FamilyDirty, Region};
use super::tiers::{in_order, selects as subject_selects};
use crate::model::{
    Action, ClusterNetworkPolicy, CnpPeer, CnpPort, CnpRule, LabelSelector, Labels, Model, Pod, Protocol,
    Tier,
};

/// The protocols with ports, in lane order; lane 3 is every other protocol.
const PORT_PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];
const OTHER: u8 = 3;

/// (lane, first port, last port); lane `OTHER` ignores ports.
type LaneCell = (u8, u16, u16);
/// Inclusive address range, as integers.
type Span = (u128, u128);

/// A rule's reach: peers (a list of `Lists`) on cells.
#[derive(Debug, Clone)]
struct Atom {
    list: usize,
    cells: Vec<LaneCell>,
}

/// Compiles every ClusterNetworkPolicy of `model` for the local pods of `node`.
pub fn compile<A: Family>(model: &Model, node: &str) -> ClusterIr<A> {
    compile_in(&Ctx::new(model, node))
}

/// Both families at once: subjects and peers are selected once.
pub fn compile_both(model: &Model, node: &str) -> (ClusterIr<Ipv4Addr>, ClusterIr<Ipv6Addr>) {
    let ctx = Ctx::new(model, node);
    (compile_in(&ctx), compile_in(&ctx))
}

/// What one compile looks up many times, looked up once: namespaces'
/// labels, pods by namespace, the policies in order, and which select each
/// kind of local pod (pods of one namespace with the same labels).
struct Ctx<'m> {
    model: &'m Model,
    ns_labels: BTreeMap<&'m str, Cow<'m, Labels>>,
    /// Pods that policy sees as pods (host-network ones never), by namespace.
    pods_by_ns: BTreeMap<&'m str, Vec<&'m Pod>>,
    /// Per tier, its policies in evaluation order.
    tiers: [Vec<&'m ClusterNetworkPolicy>; 2],
    /// This node's pods (not host-network), by kind, with the indices (per
    /// tier) of the policies whose subject selects them.
    kinds: Vec<(Vec<&'m Pod>, [Vec<usize>; 2])>,
    /// Each distinct peer list resolved, family-neutral.
    peers: RefCell<BTreeMap<&'m [CnpPeer], Rc<Resolved<'m>>>>,
}

/// A peer list resolved: the pods it selects, and the networks and node
/// addresses it names.
#[derive(Default)]
struct Resolved<'m> {
    pods: Vec<&'m Pod>,
    nets: Vec<IpNetwork>,
    addrs: Vec<IpAddr>,
}

impl<'m> Ctx<'m> {
    fn new(model: &'m Model, node: &str) -> Ctx<'m> {
        let mut ns_labels: BTreeMap<&str, Cow<Labels>> =
            model.namespaces.iter().map(|(n, ns)| (n.as_str(), Cow::Borrowed(&ns.labels))).collect();
        let mut pods_by_ns: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
        for p in model.pods.values().filter(|p| !p.host_network) {
            pods_by_ns.entry(p.namespace.as_str()).or_default().push(p);
            // A namespace without its object still has its name label.
            ns_labels.entry(p.namespace.as_str()).or_insert_with(|| model.namespace_labels(&p.namespace));
        }
        let tiers = [in_order(model, Tier::Admin), in_order(model, Tier::Baseline)];
        let mut by_kind: BTreeMap<(&str, &Labels), Vec<&Pod>> = BTreeMap::new();
        if !model.cluster_policies.is_empty() {
            for p in model.pods.values().filter(|p| p.node.as_deref() == Some(node) && !p.host_network) {
                by_kind.entry((p.namespace.as_str(), &p.labels)).or_default().push(p);
            }
        }
        let kinds = by_kind
            .into_iter()
            .map(|((ns, labels), pods)| {
                let nl = &ns_labels[ns];
                let chosen = tiers
                    .each_ref()
                    .map(|t| (0..t.len()).filter(|&i| subject_selects(&t[i].subject, nl, labels)).collect());
                (pods, chosen)
            })
            .collect();
        Ctx { model, ns_labels, pods_by_ns, tiers, kinds, peers: RefCell::default() }
    }

    /// The pods of the namespaces `sel` matches.
    fn pods_in<'a>(&'a self, sel: &'a LabelSelector) -> impl Iterator<Item = &'m Pod> + 'a {
        self.pods_by_ns
            .iter()
            .filter(move |(ns, _)| self.ns_labels.get(*ns).is_some_and(|l| sel.matches(l)))
            .flat_map(|(_, pods)| pods.iter().copied())
    }

    fn resolve(&self, peers: &'m [CnpPeer]) -> Rc<Resolved<'m>> {
        if let Some(r) = self.peers.borrow().get(peers) {
            return r.clone();
        }
        let mut r = Resolved::default();
        for peer in peers {
            match peer {
                CnpPeer::Namespaces(sel) => r.pods.extend(self.pods_in(sel)),
                CnpPeer::Pods(np) => {
                    r.pods.extend(self.pods_in(&np.namespaces).filter(|p| np.pods.matches(&p.labels)))
                }
                CnpPeer::Networks(nets) => r.nets.extend(nets),
                CnpPeer::Nodes(sel) => r.addrs.extend(
                    self.model
                        .nodes
                        .values()
                        .filter(|n| sel.matches(&n.labels))
                        .flat_map(|n| n.addresses.iter().copied()),
                ),
                CnpPeer::Unknown(_) => {}
            }
        }
        r.pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        r.pods.dedup_by(|a, b| (&a.namespace, &a.name) == (&b.namespace, &b.name));
        let r = Rc::new(r);
        self.peers.borrow_mut().insert(peers, r.clone());
        r
    }
}

/// The distinct pod selectors of every ClusterNetworkPolicy rule's peers
/// (namespaces, and pods within them): what decides whether a pod change
/// can move a peer. Kept by the engine while the policies stay the same.
#[derive(Debug, Default)]
pub(super) struct PodPeers(Vec<(LabelSelector, Option<LabelSelector>)>);

impl PodPeers {
    pub(super) fn of(model: &Model) -> PodPeers {
        let mut selectors: BTreeSet<(&LabelSelector, Option<&LabelSelector>)> = BTreeSet::new();
        for rule in model.cluster_policies.values().flat_map(|p| p.ingress.iter().chain(&p.egress)) {
            for peer in &rule.peers {
                match peer {
                    CnpPeer::Namespaces(ns) => selectors.insert((ns, None)),
                    CnpPeer::Pods(np) => selectors.insert((&np.namespaces, Some(&np.pods))),
                    _ => false,
                };
            }
        }
        PodPeers(selectors.into_iter().map(|(ns, pods)| (ns.clone(), pods.cloned())).collect())
    }

    fn select(&self, model: &Model, p: &Pod) -> bool {
        !p.host_network && {
            let nl = model.namespace_labels(&p.namespace);
            self.0
                .iter()
                .any(|(ns, pods)| ns.matches(&nl) && pods.as_ref().is_none_or(|s| s.matches(&p.labels)))
        }
    }
}

/// True if `c` may change what ClusterNetworkPolicy compiles to on `node`:
/// a policy, a namespace or a node changed while there are policies, or a
/// pod that is local, or that some policy's peers select (before or after).
/// `peers` are the new model's (`PodPeers::of`), refreshed when policies change.
pub(super) fn touched(c: &Changes, node: &str, peers: &mut PodPeers) -> bool {
    let (old, new) = (c.old, c.new);
    if old.cluster_policies.is_empty() && new.cluster_policies.is_empty() {
        return false;
    }
    if old.cluster_policies != new.cluster_policies {
        *peers = PodPeers::of(new);
        return true;
    }
    if c.namespaces || old.nodes != new.nodes {
        return true;
    }
    c.pods
        .iter()
        .flat_map(|(_, before, after)| before.iter().chain(after))
        .any(|p| p.node.as_deref() == Some(node) || peers.select(new, p))
}

fn compile_in<A: Family>(ctx: &Ctx) -> ClusterIr<A> {
    let mut ir = ClusterIr::default();
    let mut lists = Lists::default();
    let mut pending = Vec::new();
    for (t, tier) in [Tier::Admin, Tier::Baseline].into_iter().enumerate() {
        for ingress in [true, false] {
            pending.push((tier, ingress, classes_of::<A>(ctx, &mut lists, t, ingress)));
        }
    }
    // Every peer list of every class, cut once into the address classes
    // the lists tell apart: painting then works on those, not on addresses.
    let part = Partition::of::<A>(&lists.spans);
    let mut known = PeerNets::<A>::new();
    let mut unknown = false;
    for (tier, ingress, classes) in pending {
        let mut out: Vec<Class<A>> = classes
            .into_iter()
            .filter_map(|p| {
                let regions = cut::<A>(&p.rules, &part, &mut known);
                (!regions.is_empty() || !p.unknown.is_empty()).then_some(Class {
                    subjects: p.subjects,
                    regions,
                    unknown: p.unknown,
                    key: p.key,
                })
            })
            .collect();
        out.sort();
        unknown |= out.iter().any(|c| !c.unknown.is_empty());
        *ir.get_mut(tier, ingress) = out;
    }
    if unknown {
        ir.pod_cidrs = ctx.model.nodes.values().filter_map(A::pod_cidr).collect();
        ir.pod_cidrs.sort();
        ir.known = known_pods(ctx.model);
    }
    ir
}

/// `now` in place of `*cir`, noting in `d` what changed: the regions (or
/// pod networks), and which known pods came or went.
pub(super) fn replace<A: Family>(cir: &mut ClusterIr<A>, now: ClusterIr<A>, d: &mut FamilyDirty<A>) {
    if now.regions_differ(cir) {
        // A second change before the backend took the first: compare all.
        d.classes = if d.cluster { None } else { class_deltas(cir, &now) };
        d.cluster = true;
    }
    d.known.extend(now.known.symmetric_difference(&cir.known).copied());
    *cir = now;
}

/// The classes of `now` that `was` does not have, and the other way round;
/// None if an address is a subject of two classes of one tier and direction
/// (two pods with one address, for a moment): the elements of the one
/// cannot then be told from the other's.
fn class_deltas<A: Family>(was: &ClusterIr<A>, now: &ClusterIr<A>) -> Option<Vec<ClassDelta<A>>> {
    let mut out = Vec::new();
    for tier in [Tier::Admin, Tier::Baseline] {
        for ingress in [true, false] {
            let (before, after) = (was.get(tier, ingress), now.get(tier, ingress));
            if before == after {
                continue;
            }
            let unique = |classes: &[Class<A>]| {
                let mut seen = BTreeSet::new();
                classes.iter().flat_map(|c| &c.subjects).all(|s| seen.insert(*s))
            };
            if !unique(before) || !unique(after) {
                return None;
            }
            // Both sorted: the classes in one and not the other.
            let only = |a: &[Class<A>], b: &[Class<A>]| -> Vec<Class<A>> {
                a.iter().filter(|c| b.binary_search(c).is_err()).cloned().collect()
            };
            out.push(ClassDelta { tier, ingress, gone: only(before, after), came: only(after, before) });
        }
    }
    Some(out)
}

/// The known pods of `cir` after `c`, which touched no policy: a pod's old
/// address leaves unless another pod holds it, its new one joins.
pub(super) fn update_known<A: Family>(c: &Changes, cir: &mut ClusterIr<A>, d: &mut BTreeSet<A>) {
    if cir.pod_cidrs.is_empty() {
        return;
    }
    let addr = |p: Option<&Arc<Pod>>| p.filter(|p| !p.host_network).and_then(|p| A::of_pod(p));
    for (_, before, after) in &c.pods {
        let (old, new) = (addr(*before), addr(*after));
        if old == new {
            continue;
        }
        if let Some(o) = old {
            let held = c.new.pods.values().any(|p| !p.host_network && A::of_pod(p) == Some(o));
            if !held && cir.known.remove(&o) {
                d.insert(o);
            }
        }
        if let Some(n) = new {
            if cir.known.insert(n) {
                d.insert(n);
            }
        }
    }
}

/// Every address of family `A` a pod of `model` holds (host-network pods
/// have their node's).
pub(super) fn known_pods<A: Family>(model: &Model) -> BTreeSet<A> {
    model.pods.values().filter(|p| !p.host_network).filter_map(|p| A::of_pod(p)).collect()
}

fn rules_of(p: &ClusterNetworkPolicy, ingress: bool) -> &[CnpRule] {
    if ingress {
        &p.ingress
    } else {
        &p.egress
    }
}

/// A class before it is cut: its subjects, its rules in evaluation order,
/// and the cells where a pod not known yet is denied.
struct Pending<A: Family> {
    key: u64,
    subjects: BTreeSet<A>,
    rules: Vec<(Action, Vec<Atom>)>,
    unknown: Vec<Cell>,
}

/// The classes of one tier and direction, their rules' peers registered in `lists`.
fn classes_of<'m, A: Family>(
    ctx: &Ctx<'m>,
    lists: &mut Lists<'m>,
    tier: usize,
    ingress: bool,
) -> Vec<Pending<A>> {
    let policies = &ctx.tiers[tier];
    // A class is the policies selecting a pod, plus, where an ingress rule
    // names a port, the pod's own port names (resolved on the subject).
    type Key = (Vec<usize>, Vec<(String, Protocol, u16)>);
    let mut classes: BTreeMap<Key, (&Pod, BTreeSet<A>)> = BTreeMap::new();
    for (pods, chosen) in &ctx.kinds {
        let chosen: Vec<usize> =
            chosen[tier].iter().copied().filter(|&i| !rules_of(policies[i], ingress).is_empty()).collect();
        if chosen.is_empty() {
            continue;
        }
        let named = ingress
            && chosen.iter().any(|&i| {
                rules_of(policies[i], ingress)
                    .iter()
                    .any(|r| r.ports.iter().any(|p| matches!(p, CnpPort::Named(_))))
            });
        for &pod in pods {
            let Some(addr) = A::of_pod(pod) else { continue };
            let ports = if named {
                pod.ports.iter().filter_map(|c| Some((c.name.clone()?, c.protocol, c.port))).collect()
            } else {
                Vec::new()
            };
            classes.entry((chosen.clone(), ports)).or_insert_with(|| (pod, BTreeSet::new())).1.insert(addr);
        }
    }
    classes
        .into_iter()
        .map(|((chosen, ports), (rep, subjects))| {
            let names: Vec<&str> = chosen.iter().map(|&i| policies[i].name.as_str()).collect();
            let key = fnv1a64(format!("{tier} {ingress} {names:?} {ports:?}").as_bytes());
            let rules = chosen
                .iter()
                .flat_map(|&i| rules_of(policies[i], ingress))
                .filter_map(|rule| atoms::<A>(ctx, lists, rule, ingress, rep))
                .collect();
            let unknown =
                unknown_cells(chosen.iter().flat_map(|&i| rules_of(policies[i], ingress)), ingress, rep);
            Pending { key, subjects, rules, unknown }
        })
        .collect()
}

/// A named port's destinations: per cell, a list of `Lists`.
type NamedLists = Vec<(LaneCell, usize)>;

/// The address lists rules reach, each registered once (in one family):
/// a peer list's addresses, and on egress, a named port's destinations.
#[derive(Default)]
struct Lists<'m> {
    spans: Vec<Vec<Span>>,
    by_peers: BTreeMap<&'m [CnpPeer], usize>,
    /// (peers, port name): the list of each cell the name resolves to.
    named: BTreeMap<(&'m [CnpPeer], &'m str), NamedLists>,
    everything: Option<usize>,
}

impl<'m> Lists<'m> {
    fn add(&mut self, spans: Vec<Span>) -> usize {
        self.spans.push(spans);
        self.spans.len() - 1
    }

    fn everything<A: Family>(&mut self) -> usize {
        match self.everything {
            Some(id) => id,
            None => {
                let id = self.add(vec![(0, max::<A>())]);
                self.everything = Some(id);
                id
            }
        }
    }

    fn peers<A: Family>(&mut self, ctx: &Ctx<'m>, peers: &'m [CnpPeer]) -> usize {
        if let Some(&id) = self.by_peers.get(peers) {
            return id;
        }
        let id = self.add(spans_of::<A>(&ctx.resolve(peers)));
        self.by_peers.insert(peers, id);
        id
    }

    /// The destinations of `peers` with a port named `name`, by cell.
    fn named<A: Family>(
        &mut self,
        ctx: &Ctx<'m>,
        peers: &'m [CnpPeer],
        name: &'m str,
    ) -> Vec<(LaneCell, usize)> {
        if let Some(v) = self.named.get(&(peers, name)) {
            return v.clone();
        }
        let mut by_cell: BTreeMap<LaneCell, Vec<Span>> = BTreeMap::new();
        for p in &ctx.resolve(peers).pods {
            let Some(addr) = A::of_pod(p) else { continue };
            let a = addr.as_u128();
            for c in p.ports.iter().filter(|c| c.name.as_deref() == Some(name)) {
                by_cell.entry((lane(c.protocol), c.port, c.port)).or_default().push((a, a));
            }
        }
        let v: Vec<(LaneCell, usize)> =
            by_cell.into_iter().map(|(cell, spans)| (cell, self.add(spans))).collect();
        self.named.insert((peers, name), v.clone());
        v
    }
}

/// What `rule` reaches for subject `me`, with its action: None for a rule
/// that matches nothing (a fail-closed Accept). A fail-closed Deny or Pass
/// reaches everything.
fn atoms<'m, A: Family>(
    ctx: &Ctx<'m>,
    lists: &mut Lists<'m>,
    rule: &'m CnpRule,
    ingress: bool,
    me: &Pod,
) -> Option<(Action, Vec<Atom>)> {
    let all_cells = || (0..=OTHER).map(|l| (l, 0, u16::MAX)).collect::<Vec<_>>();
    if rule.fails_closed() {
        // The API's fail closed: an Accept matches nothing, a Deny or Pass denies everything.
        let everything = Atom { list: lists.everything::<A>(), cells: all_cells() };
        return (rule.action != Action::Accept).then(|| (Action::Deny, vec![everything]));
    }
    let list = lists.peers::<A>(ctx, &rule.peers);
    if rule.ports.is_empty() {
        return Some((rule.action, vec![Atom { list, cells: all_cells() }]));
    }
    let mut cells = Vec::new();
    let mut named = Vec::new();
    for port in &rule.ports {
        match port {
            CnpPort::Ports { protocol, start, end } => cells.push((lane(*protocol), *start, *end)),
            // The destination's port of that name: the subject's own on
            // ingress, each peer pod's on egress.
            CnpPort::Named(name) if ingress => cells.extend(named_cells(me, name)),
            CnpPort::Named(name) => named.extend(
                lists
                    .named::<A>(ctx, &rule.peers, name)
                    .into_iter()
                    .map(|(cell, list)| Atom { list, cells: vec![cell] }),
            ),
            // Handled by `fails_closed`.
            CnpPort::Unknown(_) => {}
        }
    }
    let mut out = Vec::new();
    if !cells.is_empty() {
        out.push(Atom { list, cells });
    }
    out.extend(named);
    Some((rule.action, out))
}

/// The cells of `pod`'s ports named `name`.
fn named_cells<'a>(pod: &'a Pod, name: &'a str) -> impl Iterator<Item = LaneCell> + 'a {
    pod.ports
        .iter()
        .filter(move |c| c.name.as_deref() == Some(name))
        .map(|c| (lane(c.protocol), c.port, c.port))
}

/// The cells where `rules` deny a pod not known yet: those of every Deny
/// rule with pod or namespace peers (the pod may be one of them). A named
/// port is resolved on the subject (ingress); on egress it is the unknown
/// pod's, which has none known.
fn unknown_cells<'r>(rules: impl Iterator<Item = &'r CnpRule>, ingress: bool, me: &Pod) -> Vec<Cell> {
    let mut cells: Vec<LaneCell> = Vec::new();
    let pod_peers =
        |r: &CnpRule| r.peers.iter().any(|p| matches!(p, CnpPeer::Namespaces(_) | CnpPeer::Pods(_)));
    for rule in rules.filter(|r| r.action == Action::Deny && !r.fails_closed() && pod_peers(r)) {
        if rule.ports.is_empty() {
            cells.extend((0..=OTHER).map(|l| (l, 0, u16::MAX)));
        }
        for port in &rule.ports {
            match port {
                CnpPort::Ports { protocol, start, end } => cells.push((lane(*protocol), *start, *end)),
                CnpPort::Named(name) if ingress => cells.extend(named_cells(me, name)),
                CnpPort::Named(_) | CnpPort::Unknown(_) => {}
            }
        }
    }
    // Overlapping cells merged, so that they are disjoint as set elements must be.
    cells.sort();
    let mut merged: Vec<LaneCell> = Vec::new();
    for c in cells {
        match merged.last_mut() {
            Some(last) if last.0 == c.0 && (c.0 == OTHER || u32::from(c.1) <= u32::from(last.2) + 1) => {
                last.2 = last.2.max(c.2)
            }
            _ => merged.push(c),
        }
    }
    join_cells(merged)
}

/// Every address of family `A` that `r` matches.
fn spans_of<A: Family>(r: &Resolved) -> Vec<Span> {
    let hosts =
        r.pods.iter().filter_map(|p| A::of_pod(p)).chain(r.addrs.iter().filter_map(|ip| A::of_ip(*ip)));
    let mut spans: Vec<Span> = hosts.map(|a| (a.as_u128(), a.as_u128())).collect();
    spans.extend(r.nets.iter().filter_map(|n| A::of_net(*n)).map(span::<A>));
    spans
}

fn lane(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::Sctp => 2,
    }
}

fn max<A: Family>() -> u128 {
    if A::BITS == 128 {
        u128::MAX
    } else {
        (1u128 << A::BITS) - 1
    }
}

fn span<A: Family>(n: A::Net) -> Span {
    let first = A::network(n).as_u128();
    // The host bits: none for a host network (a shift by 128 would overflow).
    let host = max::<A>().checked_shr(u32::from(A::prefix(n))).unwrap_or(0);
    (first, first | host)
}

/// The address space cut by every list's bounds into classes of addresses
/// that the same lists hold: a rule's peers are then a few classes, however
/// many addresses they spell.
struct Partition {
    /// The elementary intervals some list holds, sorted and disjoint.
    intervals: Vec<Span>,
    /// Per class, its intervals (indices into `intervals`, ascending).
    members: Vec<Vec<u32>>,
    /// Per interval, its class.
    class_at: Vec<u32>,
    /// Per list, the classes it holds, sorted.
    of_list: Vec<Vec<u32>>,
}

impl Partition {
    fn of<A: Family>(lists: &[Vec<Span>]) -> Partition {
        let max = max::<A>();
        // Every bound: a span's first address, and the one after its last.
        let mut cuts: Vec<u128> =
            lists.iter().flatten().flat_map(|&(lo, hi)| [Some(lo), hi.checked_add(1)]).flatten().collect();
        cuts.sort_unstable();
        cuts.dedup();
        // Which lists hold each elementary interval (cuts[k] up to the next cut).
        let mut held: Vec<Vec<u32>> = vec![Vec::new(); cuts.len()];
        for (id, spans) in lists.iter().enumerate() {
            for &(lo, hi) in spans {
                let mut k = cuts.partition_point(|&c| c < lo);
                while k < cuts.len() && cuts[k] <= hi {
                    if held[k].last() != Some(&(id as u32)) {
                        held[k].push(id as u32);
                    }
                    k += 1;
                }
            }
        }
        let mut class_of: BTreeMap<Vec<u32>, u32> = BTreeMap::new();
        let mut part = Partition {
            intervals: Vec::new(),
            members: Vec::new(),
            class_at: Vec::new(),
            of_list: vec![Vec::new(); lists.len()],
        };
        for (k, held) in held.into_iter().enumerate() {
            if held.is_empty() {
                continue;
            }
            let next = part.members.len() as u32;
            let class = *class_of.entry(held).or_insert(next);
            if class == next {
                part.members.push(Vec::new());
            }
            part.members[class as usize].push(part.intervals.len() as u32);
            part.class_at.push(class);
            part.intervals.push((cuts[k], cuts.get(k + 1).map_or(max, |next| next - 1)));
        }
        for (held, class) in class_of {
            for id in held {
                part.of_list[id as usize].push(class);
            }
        }
        part.of_list.iter_mut().for_each(|l| l.sort_unstable());
        part
    }

    fn len(&self) -> usize {
        self.members.len()
    }

    /// The addresses of `classes`, as spans, sorted, neighbours joined.
    fn spans(&self, classes: &[u32]) -> Vec<Span> {
        let held: usize = classes.iter().map(|&c| self.members[c as usize].len()).sum();
        let at: Vec<u32> = if held * 8 < self.intervals.len() {
            // A few intervals: theirs, sorted.
            let mut at: Vec<u32> = classes.iter().flat_map(|&c| &self.members[c as usize]).copied().collect();
            at.sort_unstable();
            at
        } else {
            // Many (a region of "everything but"): one pass over all, in
            // order, is cheaper than sorting theirs.
            let mut wanted = vec![false; self.members.len()];
            classes.iter().for_each(|&c| wanted[c as usize] = true);
            (0..self.intervals.len() as u32).filter(|&k| wanted[self.class_at[k as usize] as usize]).collect()
        };
        let mut out: Vec<Span> = Vec::new();
        for (lo, hi) in at.into_iter().map(|k| self.intervals[k as usize]) {
            match out.last_mut() {
                Some((_, end)) if end.checked_add(1) == Some(lo) => *end = hi,
                _ => out.push((lo, hi)),
            }
        }
        out
    }
}

/// The networks of a set of address classes, computed once per compile:
/// classes of subjects often have regions with the same peers.
type PeerNets<A> = BTreeMap<Vec<u32>, Vec<<A as Family>::Net>>;

/// Cuts the ordered rules of one class into disjoint regions.
fn cut<A: Family>(
    rules: &[(Action, Vec<Atom>)],
    part: &Partition,
    known: &mut PeerNets<A>,
) -> Vec<Region<A>> {
    // Port boundaries per protocol: every cell between two is painted alike.
    let mut bounds: [BTreeSet<u32>; 3] = Default::default();
    for b in &mut bounds {
        b.extend([0, 1 << 16]);
    }
    for (_, atoms) in rules {
        for &(l, lo, hi) in atoms.iter().flat_map(|a| &a.cells) {
            if l < OTHER {
                bounds[usize::from(l)].extend([u32::from(lo), u32::from(hi) + 1]);
            }
        }
    }
    let mut cells: Vec<LaneCell> = Vec::new();
    for (l, b) in bounds.iter().enumerate() {
        let b: Vec<u32> = b.iter().copied().collect();
        // Bounds are at most 65536, so the casts hold.
        cells.extend(b.windows(2).map(|w| (l as u8, w[0] as u16, (w[1] - 1) as u16)));
    }
    cells.push((OTHER, 0, u16::MAX));
    // Which atoms cover each cell, in evaluation order.
    let atoms: Vec<(Action, &Atom)> =
        rules.iter().flat_map(|(action, atoms)| atoms.iter().map(move |a| (*action, a))).collect();
    let mut by: Vec<Vec<usize>> = vec![Vec::new(); cells.len()];
    for (i, (_, atom)) in atoms.iter().enumerate() {
        for &(l, lo, hi) in &atom.cells {
            // Cells are sorted and a rule's bounds are cell bounds: its cells are a run.
            let first = cells.partition_point(|&(cl, clo, _)| (cl, clo) < (l, lo));
            for k in first..cells.len() {
                let (cl, _, chi) = cells[k];
                if cl != l || (l != OTHER && chi > hi) {
                    break;
                }
                if by[k].last() != Some(&i) {
                    by[k].push(i);
                }
            }
        }
    }
    // Cells the same atoms cover are painted alike: paint each such group once.
    let mut covered: BTreeMap<Vec<usize>, Vec<LaneCell>> = BTreeMap::new();
    for (cell, by) in cells.into_iter().zip(by) {
        if !by.is_empty() {
            covered.entry(by).or_default().push(cell);
        }
    }
    // Each address class takes the action of the first atom holding it.
    let mut seen = vec![u32::MAX; part.len()];
    let mut alike: BTreeMap<Vec<(u32, Action)>, Vec<LaneCell>> = BTreeMap::new();
    for (stamp, (by, cells)) in covered.into_iter().enumerate() {
        let stamp = stamp as u32;
        let mut painting: Vec<(u32, Action)> = Vec::new();
        for i in by {
            let (action, atom) = atoms[i];
            for &class in &part.of_list[atom.list] {
                if seen[class as usize] != stamp {
                    seen[class as usize] = stamp;
                    painting.push((class, action));
                }
            }
            // Nothing later can paint a cell painted whole.
            if painting.len() == part.len() {
                break;
            }
        }
        if !painting.is_empty() {
            painting.sort_unstable();
            alike.entry(painting).or_default().extend(cells);
        }
    }
    let mut regions = Vec::new();
    for (painting, mut cells) in alike {
        cells.sort();
        let cells = join_cells(cells);
        let mut by_action: BTreeMap<Action, Vec<u32>> = BTreeMap::new();
        for (class, action) in painting {
            by_action.entry(action).or_default().push(class);
        }
        regions.extend(by_action.into_iter().map(|(action, classes)| {
            let peers = known
                .entry(classes)
                .or_insert_with_key(|c| {
                    let mut peers = Vec::new();
                    part.spans(c).into_iter().for_each(|(lo, hi)| nets_into::<A>(lo, hi, &mut peers));
                    peers
                })
                .clone();
            Region { action, cells: cells.clone(), peers }
        }));
    }
    regions.sort();
    regions
}

/// The IR's cells: neighbouring port cells of one protocol joined.
fn join_cells(cells: Vec<LaneCell>) -> Vec<Cell> {
    let mut joined: Vec<LaneCell> = Vec::new();
    for c in cells {
        match joined.last_mut() {
            Some(last) if last.0 == c.0 && c.0 != OTHER && u32::from(last.2) + 1 == u32::from(c.1) => {
                last.2 = c.2
            }
            _ => joined.push(c),
        }
    }
    joined
        .into_iter()
        .map(|(l, lo, hi)| match PORT_PROTOCOLS.get(usize::from(l)) {
            Some(p) => Cell::Ports(*p, lo, hi),
            None => Cell::Other,
        })
        .collect()
}

/// Appends to `out` the fewest networks covering exactly `lo..=hi`.
fn nets_into<A: Family>(mut lo: u128, hi: u128, out: &mut Vec<A::Net>) {
    let bits = u32::from(A::BITS);
    loop {
        // The largest block aligned at `lo` that ends within `hi`.
        let align = if lo == 0 { bits } else { lo.trailing_zeros().min(bits) };
        let room = hi - lo;
        let fit = if room == u128::MAX { 128 } else { 127 - (room + 1).leading_zeros() };
        let size = align.min(fit).min(bits);
        // size <= bits, so the prefix is valid.
        if let Some(n) = A::net(A::from_u128(lo), (bits - size) as u8) {
            out.push(n);
        }
        let step = if size >= 128 { None } else { lo.checked_add(1u128 << size) };
        match step {
            Some(next) if next <= hi && next > lo => lo = next,
            _ => break,
        }
    }
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
