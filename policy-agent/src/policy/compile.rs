//! Model -> what each NetworkPolicy adds to this node's PolicyIr. Pure: no
//! I/O, unit-tested without root.
//!
//! Semantics (networking.k8s.io/v1): a pod is isolated in a direction only if
//! some policy with that direction in its policyTypes selects it; an isolated
//! pod may exchange traffic only with what some rule of such a policy allows;
//! rules and peers are OR'ed, namespaceSelector and podSelector in one peer
//! AND'ed; a named port resolves on the pod that serves it (the local pod for
//! ingress, each destination pod for egress). Only local pods are compiled:
//! ingress is enforced at the destination's node, egress at the source's.
//!
//! Each policy compiles on its own into a `Contribution`; the IR is their
//! union with reference counts (`aggregate`), so a change recompiles only the
//! policies it touches (`incremental`). A full compile is the same engine
//! started from nothing, so both paths share every line of the semantics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use ipnetwork::IpNetwork;
use weft_conf::hash::{fnv1a64, Fnv1a};

use super::cidr::{aggregate, subtract};
use super::family::{self, Family};
use super::incremental::PolicyEngine;
use super::ir::{GroupPorts, PeerKey, PolicyIr, Triple};
use crate::model::{LabelSelector, Model, NetworkPolicy, Peer, Pod, PolicyPort, PortRef, Protocol, Rule};

/// An endPort range up to this many ports becomes triples (one hash entry
/// per port); a wider one becomes a group rule with a port range.
const MAX_EXPANDED_RANGE: u32 = 16;

/// A rule's ports times its peer networks beyond which its single ports
/// become a port group even with few peers: one policy with 10,000 ports
/// must cost elements per (target, port), never per (target, port, peer).
pub const MAX_RULE_TRIPLES: usize = 256;

/// How the compiler chooses between representations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Single-port rules whose peers are at most this many networks become
    /// triples (a fixed cost per packet, elements = targets x ports x
    /// peers); rules with more peers (a namespace selector over a big
    /// cluster) become their peers' port group (one rule per distinct peers,
    /// elements = targets x ports + peers). Deciding on the peers and ports
    /// alone means targets coming and going never switch a rule between the two.
    pub triple_peers: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options { triple_peers: DEFAULT_TRIPLE_PEERS }
    }
}

/// The default of `Options::triple_peers` (weft-agent `--triple-peers`).
pub const DEFAULT_TRIPLE_PEERS: usize = 16;

/// Compiles `model` for node `node`, in both families. `cluster_cidrs` are
/// the cluster's pod networks (at most one per family, for the IR's transit
/// rule). Returns the IR and notes on what could not be enforced as written.
pub fn compile(model: &Model, node: &str, cluster_cidrs: &[IpNetwork]) -> (PolicyIr, Vec<String>) {
    compile_with(model, node, cluster_cidrs, Options::default())
}

/// `compile` with `options`.
pub fn compile_with(
    model: &Model,
    node: &str,
    cluster_cidrs: &[IpNetwork],
    options: Options,
) -> (PolicyIr, Vec<String>) {
    let engine = PolicyEngine::new(model, node, cluster_cidrs, options);
    let notes = engine.notes();
    (engine.into_ir(), notes)
}

/// Resolved peer networks, shared by the rules that name the same peers.
pub(crate) type Nets<A> = Arc<[<A as Family>::Net]>;

/// A port group's target: (local pod, protocol, port).
pub(crate) type PodPort<A> = (A, Protocol, u16);

/// A rule's peers as written, in a canonical order: each with the namespace
/// it means when it has no namespace selector (the policy's own).
pub(crate) type PeerDef = Vec<(Option<String>, Peer)>;

/// An egress named port's destinations: the networks serving it, by the
/// number it resolves to on them.
pub(crate) type NamedDests<A> = Vec<(u16, Nets<A>)>;

/// A peer definition resolved against the model, in one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved<A: Family> {
    /// Pods named by selector peers, by key, sorted (egress named ports resolve on them).
    pub pods: Vec<String>,
    /// Every allowed network (pods as host networks, ipBlocks of the family
    /// minus excepts), aggregated.
    pub nets: Nets<A>,
    /// True for a rule without peers: every address.
    pub anywhere: bool,
}

/// A peer definition, what it resolves to now and the policies that use it.
#[derive(Debug)]
pub(crate) struct PeerEntry<A: Family> {
    pub def: PeerDef,
    pub resolved: Arc<Resolved<A>>,
    pub users: BTreeSet<String>,
}

/// Every peer definition some compiled policy uses, by key.
#[derive(Debug)]
pub(crate) struct PeerRegistry<A: Family> {
    /// Hashed by the key itself: at 10,000 definitions a tree's search is
    /// several cache misses, a table's one.
    pub defs: HashMap<PeerKey, PeerEntry<A>, BuildHasherDefault<KeyHasher>>,
    /// Named ports resolved on peers during one compile (cleared before
    /// each: pods may have changed), by (peers, name, protocol).
    pub named: BTreeMap<(PeerKey, String, Protocol), Arc<NamedDests<A>>>,
    /// The definitions a pod can be a peer of only with a given label in a
    /// given namespace, by that (namespace, label pair)'s hash: a pod change
    /// looks at these and at `anywhere`, not at every definition.
    by_label: BTreeMap<u64, BTreeSet<PeerKey>>,
    /// The definitions with a peer of any label or any namespace (a
    /// namespace selector, a podSelector without matchLabels).
    anywhere: BTreeSet<PeerKey>,
    /// Definitions that were without users at some point since the last
    /// `retain_used` (some may have found users again).
    unused: Vec<PeerKey>,
}

impl<A: Family> Default for PeerRegistry<A> {
    fn default() -> Self {
        PeerRegistry {
            defs: HashMap::default(),
            named: BTreeMap::new(),
            by_label: BTreeMap::new(),
            anywhere: BTreeSet::new(),
            unused: Vec::new(),
        }
    }
}

/// A peer key is a hash already (FNV-1a of the definition): the table
/// uses it as it is.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; any other input is folded in whole.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// Where definition `def`'s pod peers are indexed: a (namespace, label)
/// hash each, or None for "look at it for every pod".
fn index_slots(def: &PeerDef) -> impl Iterator<Item = Option<u64>> + '_ {
    def.iter().filter_map(|(own_ns, peer)| match (own_ns, peer) {
        (Some(ns), Peer::Pods { pods: sel, .. }) => {
            Some(sel.match_labels.iter().next().map(|(k, v)| label_slot(ns, k, v)))
        }
        (None, Peer::Pods { .. }) => Some(None),
        (_, Peer::IpBlock { .. }) => None,
    })
}

fn label_slot(ns: &str, key: &str, value: &str) -> u64 {
    Fnv1a::new()
        .write(ns.as_bytes())
        .write(b"/")
        .write(key.as_bytes())
        .write(b"=")
        .write(value.as_bytes())
        .finish()
}

impl<A: Family> PeerRegistry<A> {
    pub fn insert(&mut self, key: PeerKey, entry: PeerEntry<A>) {
        for slot in index_slots(&entry.def) {
            match slot {
                Some(h) => self.by_label.entry(h).or_default().insert(key),
                None => self.anywhere.insert(key),
            };
        }
        if entry.users.is_empty() {
            self.unused.push(key);
        }
        self.defs.insert(key, entry);
    }

    /// Policy `user` no longer uses definition `key`.
    pub fn drop_user(&mut self, key: PeerKey, user: &str) {
        if let Some(e) = self.defs.get_mut(&key) {
            if e.users.remove(user) && e.users.is_empty() {
                self.unused.push(key);
            }
        }
    }

    /// Drops the definitions no policy uses any more: those that were left
    /// without users since the last call (not every definition: at 10k
    /// policies a walk of them all per change costs more than the change).
    pub fn retain_used(&mut self) {
        for key in std::mem::take(&mut self.unused) {
            if !self.defs.get(&key).is_some_and(|e| e.users.is_empty()) {
                continue;
            }
            let Some(e) = self.defs.remove(&key) else { continue };
            for slot in index_slots(&e.def) {
                match slot {
                    Some(h) => {
                        if let Some(keys) = self.by_label.get_mut(&h) {
                            keys.remove(&key);
                            if keys.is_empty() {
                                self.by_label.remove(&h);
                            }
                        }
                    }
                    None => {
                        self.anywhere.remove(&key);
                    }
                }
            }
        }
    }

    /// Every definition the index names (each definition has a slot: a
    /// definition without pod peers matches no pod change).
    #[cfg(test)]
    pub fn indexed(&self) -> BTreeSet<PeerKey> {
        self.by_label.values().flatten().chain(&self.anywhere).copied().collect()
    }

    /// The definitions that `pods` may be peers of (more, never fewer).
    pub fn candidates<'p>(&self, pods: impl Iterator<Item = &'p Pod>) -> BTreeSet<PeerKey> {
        let mut out = self.anywhere.clone();
        for p in pods {
            for (k, v) in &p.labels {
                out.extend(self.by_label.get(&label_slot(&p.namespace, k, v)).into_iter().flatten());
            }
        }
        out
    }
}

/// Pods with an address of family `A` (hostNetwork pods excluded), by
/// namespace: the only pods policy of that family sees, as targets and as peers.
pub(crate) struct PodIndex<'m> {
    pub by_ns: BTreeMap<&'m str, Vec<&'m Pod>>,
}

impl<'m> PodIndex<'m> {
    pub fn new<A: Family>(model: &'m Model) -> PodIndex<'m> {
        let mut by_ns: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
        for p in model.pods.values().filter(|p| counts_for_policy::<A>(p)) {
            by_ns.entry(p.namespace.as_str()).or_default().push(p);
        }
        PodIndex { by_ns }
    }
}

/// True if policy of family `A` sees `pod` at all.
pub(crate) fn counts_for_policy<A: Family>(pod: &Pod) -> bool {
    A::of_pod(pod).is_some() && !pod.host_network
}

/// What one policy adds to one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part<A: Family> {
    pub isolated: Vec<A>,
    pub triples: Vec<Triple<A>>,
    pub port_groups: Vec<(PeerKey, PodPort<A>)>,
    pub groups: Vec<(PeerKey, GroupPorts, A)>,
    /// The peers of each group and port group key it names.
    pub nets: BTreeMap<PeerKey, Nets<A>>,
}

impl<A: Family> Default for Part<A> {
    fn default() -> Self {
        Part {
            isolated: Vec::new(),
            triples: Vec::new(),
            port_groups: Vec::new(),
            groups: Vec::new(),
            nets: BTreeMap::new(),
        }
    }
}

/// How a policy uses a peer definition: when a change of its resolution
/// must recompile the policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Use {
    /// Its triples (or named egress ports) hold the peers themselves, or it
    /// allowed nothing because they were empty: any change recompiles it.
    pub exact: bool,
    /// For a port group: at or below this many networks the rule would be
    /// triples instead.
    pub group_limit: Option<usize>,
    /// A named port resolved on the peer pods: a change of any of them
    /// recompiles it.
    pub named: bool,
}

impl Use {
    fn merge(&mut self, other: Use) {
        self.exact |= other.exact;
        self.group_limit = self.group_limit.max(other.group_limit);
        self.named |= other.named;
    }

    /// True if the policy must be recompiled when its peers now resolve to `nets`.
    pub fn stale<N>(&self, nets: &[N]) -> bool {
        self.exact || nets.is_empty() || self.group_limit.is_some_and(|l| nets.len() <= l)
    }
}

/// What one policy adds to one family of the IR, and what it was compiled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Contribution<A: Family> {
    pub audit: bool,
    pub ingress: Part<A>,
    pub egress: Part<A>,
    pub notes: Vec<String>,
    /// The peer definitions it used.
    pub uses: BTreeMap<PeerKey, Use>,
    /// It resolved a named port on every pod of the cluster (an egress rule
    /// without peers): any pod change recompiles it.
    pub all_pods: bool,
    /// Each rule's peer key, ingress rules then egress: while the policy is
    /// unchanged, a compile for a new target finds its peers by these.
    pub rule_keys: Vec<PeerKey>,
    /// An ingress port is named: it resolves on each target, so one
    /// target's elements are not another's with the address changed.
    pub named_on_targets: bool,
    /// The policy it was compiled from, as the engine keeps it: a walk
    /// meeting the same policy knows its contribution without comparing
    /// keys (the same allocation is the same policy, and is kept alive).
    pub compiled_from: Option<Arc<NetworkPolicy>>,
}

/// The most elements a contribution is searched through for a target's
/// likeness (`Contribution::like_a_target`); past it a compile for the one
/// target, whose cost does not grow with the policy's, is the cheaper.
const LIKENESS_SCAN: usize = 256;

impl<A: Family> Contribution<A> {
    /// True if it adds nothing and depends on nothing: nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.ingress.is_empty()
            && self.egress.is_empty()
            && self.notes.is_empty()
            && self.uses.is_empty()
            && !self.all_pods
    }

    /// True if it has a target on this node (a policy kept by its rules
    /// alone has none: `Compiler::rules_only`).
    pub fn has_targets(&self) -> bool {
        !self.ingress.isolated.is_empty() || !self.egress.isolated.is_empty()
    }

    /// Moves `delta`, this policy's contribution for a new target (its nets
    /// holding only the groups this one does not name yet), in; `delta` is
    /// left empty with its vectors' room, for the next.
    pub fn absorb(&mut self, delta: &mut Contribution<A>) {
        // A policy kept by its rules alone learns here what its targets need.
        self.all_pods |= delta.all_pods;
        self.named_on_targets |= delta.named_on_targets;
        for n in delta.notes.drain(..) {
            if !self.notes.contains(&n) {
                self.notes.push(n);
            }
        }
        for (held, part) in [(&mut self.ingress, &mut delta.ingress), (&mut self.egress, &mut delta.egress)] {
            held.isolated.append(&mut part.isolated);
            held.triples.append(&mut part.triples);
            held.port_groups.append(&mut part.port_groups);
            held.groups.append(&mut part.groups);
            held.nets.append(&mut part.nets);
        }
        for (k, u) in std::mem::take(&mut delta.uses) {
            self.uses.entry(k).or_default().merge(u);
        }
    }

    /// Writes into `delta` (emptied first) what target `ip` adds, from what
    /// a target already held adds: a policy gives each target the same
    /// elements with its own address, and names no new peer or note for
    /// it. Spares a compile for the one target (its rules' peers looked up
    /// again). False, `delta` unusable, if an ingress port is named
    /// (resolved on each target), no other target is held, `ip` is held
    /// already or the other's address twice (a shared address is a
    /// recompile's to sort out), or the contribution is too big for the
    /// search to be the cheaper.
    pub fn like_a_target(&self, ip: A, delta: &mut Contribution<A>) -> bool {
        let (ingress, egress) = (&self.ingress, &self.egress);
        if self.named_on_targets || ingress.len() + egress.len() > LIKENESS_SCAN {
            return false;
        }
        let Some(&like) = ingress.isolated.first().or(egress.isolated.first()) else { return false };
        let times = |p: &Part<A>, of: A| p.isolated.iter().filter(|&&i| i == of).count();
        if times(ingress, ip) + times(egress, ip) > 0 || times(ingress, like) > 1 || times(egress, like) > 1 {
            return false;
        }
        delta.reset(self.audit);
        ingress.like_target(like, ip, &mut delta.ingress);
        egress.like_target(like, ip, &mut delta.egress);
        true
    }

    /// Moves what target `ip` adds into `gone` (emptied first); false, and
    /// `gone` unusable, if `ip` is not a target exactly once in each
    /// direction, or is the last one and `keep_rules` is false (the policy
    /// is then recompiled). The last one leaves the policy kept by its
    /// rules (`Compiler::rules_only`). The uses stay: at worst one more
    /// recompile later, never a missed one.
    pub fn split_off_target(&mut self, ip: A, keep_rules: bool, gone: &mut Contribution<A>) -> bool {
        let times = |p: &Part<A>| p.isolated.iter().filter(|&&i| i == ip).count();
        let (i, e) = (times(&self.ingress), times(&self.egress));
        let others = self.ingress.isolated.iter().chain(&self.egress.isolated).any(|&i| i != ip);
        if i > 1 || e > 1 || i + e == 0 || !(others || keep_rules) {
            return false;
        }
        gone.reset(self.audit);
        if !others {
            self.all_pods = false;
            gone.ingress = std::mem::take(&mut self.ingress);
            gone.egress = std::mem::take(&mut self.egress);
            gone.notes = std::mem::take(&mut self.notes);
            return true;
        }
        self.ingress.split_off_target(ip, &mut gone.ingress);
        self.egress.split_off_target(ip, &mut gone.egress);
        true
    }

    /// Empties it for reuse as a delta of a policy with `audit`, keeping
    /// its vectors' room. Every field is named, so none can carry over.
    fn reset(&mut self, audit: bool) {
        let Contribution {
            audit: was_audit,
            ingress,
            egress,
            notes,
            uses,
            all_pods,
            rule_keys,
            named_on_targets,
            compiled_from,
        } = self;
        (*was_audit, *all_pods, *named_on_targets, *compiled_from) = (audit, false, false, None);
        ingress.clear();
        egress.clear();
        notes.clear();
        uses.clear();
        rule_keys.clear();
    }
}

impl<A: Family> Part<A> {
    /// Writes into empty `out` the elements of target `like`, with `ip`
    /// for its address.
    fn like_target(&self, like: A, ip: A, out: &mut Part<A>) {
        let is = |t: A| t == like;
        out.isolated.extend(self.isolated.iter().filter(|t| is(**t)).map(|_| ip));
        out.triples.extend(self.triples.iter().filter(|t| is(t.0)).map(|t| (ip, t.1, t.2, t.3)));
        out.port_groups
            .extend(self.port_groups.iter().filter(|(_, t)| is(t.0)).map(|(k, t)| (*k, (ip, t.1, t.2))));
        out.groups.extend(self.groups.iter().filter(|g| is(g.2)).map(|(k, ports, _)| (*k, *ports, ip)));
    }

    fn clear(&mut self) {
        self.isolated.clear();
        self.triples.clear();
        self.port_groups.clear();
        self.groups.clear();
        self.nets.clear();
    }

    /// How many elements it holds.
    fn len(&self) -> usize {
        self.isolated.len() + self.triples.len() + self.port_groups.len() + self.groups.len()
    }

    /// Moves the elements of target `ip` into empty `out`, with the
    /// groups' peers that no element left names.
    fn split_off_target(&mut self, ip: A, out: &mut Part<A>) {
        fn take<T: Copy>(from: &mut Vec<T>, to: &mut Vec<T>, of_target: impl Fn(&T) -> bool) {
            from.retain(|t| {
                !of_target(t) || {
                    to.push(*t);
                    false
                }
            });
        }
        take(&mut self.isolated, &mut out.isolated, |t| *t == ip);
        take(&mut self.triples, &mut out.triples, |t| t.0 == ip);
        take(&mut self.port_groups, &mut out.port_groups, |(_, t)| t.0 == ip);
        take(&mut self.groups, &mut out.groups, |(_, _, t)| *t == ip);
        if self.nets.is_empty() {
            return;
        }
        let named: BTreeSet<PeerKey> =
            self.port_groups.iter().map(|(k, _)| *k).chain(self.groups.iter().map(|(k, _, _)| *k)).collect();
        let unnamed: Vec<PeerKey> = self.nets.keys().filter(|k| !named.contains(k)).copied().collect();
        for k in unnamed {
            if let Some(nets) = self.nets.remove(&k) {
                out.nets.insert(k, nets);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.isolated.is_empty()
            && self.triples.is_empty()
            && self.port_groups.is_empty()
            && self.groups.is_empty()
            && self.nets.is_empty()
    }
}

impl<A: Family> Default for Contribution<A> {
    fn default() -> Self {
        Contribution {
            audit: false,
            ingress: Part::default(),
            egress: Part::default(),
            notes: Vec::new(),
            uses: BTreeMap::new(),
            all_pods: false,
            rule_keys: Vec::new(),
            named_on_targets: false,
            compiled_from: None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

/// Compiles one policy against `model`, in family `A`.
pub(crate) struct Compiler<'a, 'm, A: Family> {
    pub model: &'m Model,
    pub index: &'a PodIndex<'m>,
    pub node: &'a str,
    pub options: Options,
    pub peers: &'a mut PeerRegistry<A>,
}

impl<'a, 'm, A: Family> Compiler<'a, 'm, A> {
    /// What `policy` adds (its users of peers are the caller's to register).
    /// With no target on this node it adds nothing; with `keep_rules` its
    /// rules' peers are still resolved and named (`rules_only`).
    pub fn contribution(
        &mut self,
        policy: &NetworkPolicy,
        rule_keys: &[PeerKey],
        keep_rules: bool,
    ) -> Contribution<A> {
        let targets: Vec<&Pod> = self
            .index
            .by_ns
            .get(policy.namespace.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(|p| p.node.as_deref() == Some(self.node) && policy.pod_selector.matches(&p.labels))
            .collect();
        match (targets.is_empty(), keep_rules) {
            (true, false) => Contribution { audit: policy.audit, ..Contribution::default() },
            (true, true) => self.rules_only(policy, rule_keys),
            (false, _) => self.for_targets(policy, &targets, rule_keys),
        }
    }

    /// A policy without a target here, kept by its rules' peer keys (each a
    /// use, so the definitions stay resolved): its first target then costs
    /// what a next one does (`Contribution::absorb`), not a whole compile.
    /// It adds nothing to the IR, and no change of its peers makes it stale.
    fn rules_only(&mut self, policy: &NetworkPolicy, rule_keys: &[PeerKey]) -> Contribution<A> {
        let mut c = Contribution { audit: policy.audit, ..Contribution::default() };
        let rules = policy.ingress.iter().chain(&policy.egress).flatten();
        for rule in rules {
            let known = rule_keys.get(c.rule_keys.len()).copied();
            let (key, _) = self.peers(policy, rule, known);
            c.rule_keys.push(key);
            use_peers(&mut c, key, Use::default());
        }
        c
    }

    /// What `policy` adds for `targets` alone (local pods it selects).
    /// `rule_keys`, if the policy is unchanged since they were taken, spare
    /// spelling out and hashing each rule's peers again.
    pub fn for_targets(
        &mut self,
        policy: &NetworkPolicy,
        targets: &[&Pod],
        rule_keys: &[PeerKey],
    ) -> Contribution<A> {
        let mut c = Contribution::default();
        self.for_targets_into(policy, targets, rule_keys, &mut c);
        c
    }

    /// `for_targets` into `c`, emptied first (its vectors' room is reused).
    pub fn for_targets_into(
        &mut self,
        policy: &NetworkPolicy,
        targets: &[&Pod],
        rule_keys: &[PeerKey],
        c: &mut Contribution<A>,
    ) {
        c.reset(policy.audit);
        let ips: Vec<A> = targets.iter().filter_map(|p| A::of_pod(p)).collect();
        let named = |p: &PolicyPort| matches!(p.port, Some(PortRef::Name(_)));
        c.named_on_targets = policy.ingress.iter().flatten().any(|r| r.ports.iter().any(named));
        self.direction(c, Dir::Ingress, policy, targets, &ips, rule_keys);
        self.direction(c, Dir::Egress, policy, targets, &ips, rule_keys);
        c.notes.dedup();
    }

    fn direction(
        &mut self,
        c: &mut Contribution<A>,
        dir: Dir,
        policy: &NetworkPolicy,
        targets: &[&Pod],
        ips: &[A],
        rule_keys: &[PeerKey],
    ) {
        let rules = match dir {
            Dir::Ingress => &policy.ingress,
            Dir::Egress => &policy.egress,
        };
        // Not a policy type of it: no isolation, no rule.
        let Some(rules) = rules else { return };
        part(c, dir).isolated.extend(ips.iter().copied());
        for rule in rules {
            let known = rule_keys.get(c.rule_keys.len()).copied();
            let (key, peers) = self.peers(policy, rule, known);
            c.rule_keys.push(key);
            // Every rule's peers are used, whatever they add (a named port
            // no target serves adds nothing): kept by its rules, the policy
            // uses what it did.
            use_peers(c, key, Use::default());
            if peers.nets.is_empty() {
                // Peers that match nothing (yet): the rule allows nothing.
                use_peers(c, key, Use { exact: true, ..Use::default() });
                continue;
            }
            if rule.ports.is_empty() {
                group(c, dir, ips, key, &peers, GroupPorts::All);
                continue;
            }
            let limit = self.group_limit(rule);
            for port in &rule.ports {
                match (&port.port, port.end_port) {
                    (None, _) => group(c, dir, ips, key, &peers, GroupPorts::Protocol(port.protocol)),
                    (Some(PortRef::Number(n)), None) => {
                        allow(c, dir, ips, port.protocol, *n, key, &peers, limit)
                    }
                    (Some(PortRef::Number(a)), Some(b)) if u32::from(b - a) < MAX_EXPANDED_RANGE => {
                        for n in *a..=b {
                            allow(c, dir, ips, port.protocol, n, key, &peers, limit);
                        }
                    }
                    (Some(PortRef::Number(a)), Some(b)) => {
                        group(c, dir, ips, key, &peers, GroupPorts::Range(port.protocol, *a, b))
                    }
                    (Some(PortRef::Name(name)), _) => match dir {
                        Dir::Ingress => {
                            // Resolved on each target: the local pod that serves it.
                            for t in targets {
                                let port_ref = PortRef::Name(name.clone());
                                if let (Some(ip), Some(n)) =
                                    (A::of_pod(t), t.resolve_port(&port_ref, port.protocol))
                                {
                                    allow(c, dir, &[ip], port.protocol, n, key, &peers, limit);
                                }
                            }
                        }
                        Dir::Egress => self.named_egress(c, policy, ips, port.protocol, name, key, &peers),
                    },
                }
            }
        }
    }

    /// The most peer networks a rule's single ports stay triples with.
    fn group_limit(&self, rule: &Rule) -> usize {
        let ports: usize = rule
            .ports
            .iter()
            .map(|p| match (&p.port, p.end_port) {
                (Some(PortRef::Number(a)), Some(b)) if u32::from(b - a) < MAX_EXPANDED_RANGE => {
                    usize::from(b - a) + 1
                }
                (Some(_), _) => 1,
                (None, _) => 0,
            })
            .sum();
        self.options.triple_peers.min(MAX_RULE_TRIPLES / ports.max(1))
    }

    /// An egress named port resolves on each destination pod, so only selector
    /// peers (or, for a rule without peers, every pod) can match it. The
    /// destinations are grouped by the number the name resolves to: few
    /// become triples, many a port group per number (its own key), so
    /// elements grow with sources plus destinations, never their product.
    #[allow(clippy::too_many_arguments)]
    fn named_egress(
        &mut self,
        c: &mut Contribution<A>,
        policy: &NetworkPolicy,
        ips: &[A],
        proto: Protocol,
        name: &str,
        key: PeerKey,
        peers: &Resolved<A>,
    ) {
        use_peers(c, key, Use { exact: true, group_limit: None, named: true });
        c.all_pods |= peers.anywhere;
        if !peers.anywhere && peers.nets.len() > peers.pods.len() {
            c.notes.push(format!(
                "NetworkPolicy {}: named port {name} cannot apply to ipBlock peers (no pod names it)",
                policy.key()
            ));
        }
        // Many policies name the same peers and port (a DNS egress rule in
        // every namespace): the destinations are resolved once per compile.
        let cache_key = (key, name.to_string(), proto);
        let by_port = match self.peers.named.get(&cache_key) {
            Some(b) => b.clone(),
            None => {
                let b = Arc::new(self.resolve_named(peers, name, proto));
                self.peers.named.insert(cache_key, b.clone());
                b
            }
        };
        for (port, nets) in by_port.iter() {
            let port = *port;
            let egress = &mut c.egress;
            if nets.len() <= self.options.triple_peers {
                for ip in ips {
                    egress.triples.extend(nets.iter().map(|net| (*ip, proto, port, *net)));
                }
            } else {
                let k = fnv1a64(format!("{key:016x}/{name}/{}/{port}", proto.as_str()).as_bytes());
                egress.port_groups.extend(ips.iter().map(|ip| (k, (*ip, proto, port))));
                egress.nets.insert(k, nets.clone());
            }
        }
    }

    /// The destinations of `peers` that serve `name`/`proto`, by the number
    /// it resolves to on each, aggregated.
    fn resolve_named(&self, peers: &Resolved<A>, name: &str, proto: Protocol) -> NamedDests<A> {
        let port_ref = PortRef::Name(name.to_string());
        let mut by_port: BTreeMap<u16, Vec<A::Net>> = BTreeMap::new();
        let mut add = |d: &Pod| {
            if let (Some(ip), Some(port)) = (A::of_pod(d), d.resolve_port(&port_ref, proto)) {
                by_port.entry(port).or_default().push(family::host(ip));
            }
        };
        if peers.anywhere {
            self.index.by_ns.values().flatten().for_each(|d| add(d));
        } else {
            peers.pods.iter().filter_map(|k| self.model.pods.get(k)).for_each(|d| add(d));
        }
        by_port.into_iter().map(|(port, dests)| (port, Arc::from(aggregate::<A>(dests)))).collect()
    }

    /// The rule's peers, resolved once per distinct definition; `known`,
    /// the key they had in this version of the policy, if there is one.
    fn peers(
        &mut self,
        policy: &NetworkPolicy,
        rule: &Rule,
        known: Option<PeerKey>,
    ) -> (PeerKey, Arc<Resolved<A>>) {
        if let Some(e) = known.and_then(|k| Some((k, self.peers.defs.get(&k)?))) {
            return (e.0, e.1.resolved.clone());
        }
        let mut def: PeerDef = rule
            .peers
            .iter()
            .map(|p| match p {
                Peer::Pods { namespaces: None, .. } => (Some(policy.namespace.clone()), p.clone()),
                _ => (None, p.clone()),
            })
            .collect();
        def.sort();
        def.dedup();
        let key = peer_key(&def);
        if let Some(e) = self.peers.defs.get(&key) {
            return (key, e.resolved.clone());
        }
        let resolved = Arc::new(resolve(self.model, self.index, &def));
        let entry = PeerEntry { def, resolved: resolved.clone(), users: BTreeSet::new() };
        self.peers.insert(key, entry);
        (key, resolved)
    }
}

/// The key of a peer definition: a hash of the peers as written. The
/// renderers name sets after it.
pub(crate) fn peer_key(def: &PeerDef) -> PeerKey {
    // The borrowed form's Debug text, as earlier versions hashed it, so set
    // names survive an upgrade.
    let borrowed: Vec<(Option<&str>, &Peer)> = def.iter().map(|(ns, p)| (ns.as_deref(), p)).collect();
    // Hashed as it is formatted: no string is built.
    let mut h = Fnv1a::new();
    // Formatting into a hasher cannot fail.
    let _ = std::fmt::Write::write_fmt(&mut h, format_args!("{borrowed:?}"));
    h.finish()
}

fn part<A: Family>(c: &mut Contribution<A>, dir: Dir) -> &mut Part<A> {
    match dir {
        Dir::Ingress => &mut c.ingress,
        Dir::Egress => &mut c.egress,
    }
}

fn use_peers<A: Family>(c: &mut Contribution<A>, key: PeerKey, u: Use) {
    c.uses.entry(key).or_default().merge(u);
}

/// `ips` may exchange `proto`/`port` with `peers`: triples for few peers,
/// else (pod, port) targets of the peers' port group.
#[allow(clippy::too_many_arguments)]
fn allow<A: Family>(
    c: &mut Contribution<A>,
    dir: Dir,
    ips: &[A],
    proto: Protocol,
    port: u16,
    key: PeerKey,
    peers: &Resolved<A>,
    limit: usize,
) {
    if peers.nets.len() <= limit {
        use_peers(c, key, Use { exact: true, ..Use::default() });
        let p = part(c, dir);
        for ip in ips {
            p.triples.extend(peers.nets.iter().map(|net| (*ip, proto, port, *net)));
        }
    } else {
        use_peers(c, key, Use { group_limit: Some(limit), ..Use::default() });
        let p = part(c, dir);
        p.port_groups.extend(ips.iter().map(|ip| (key, (*ip, proto, port))));
        p.nets.insert(key, peers.nets.clone());
    }
}

fn group<A: Family>(
    c: &mut Contribution<A>,
    dir: Dir,
    ips: &[A],
    key: PeerKey,
    peers: &Resolved<A>,
    ports: GroupPorts,
) {
    use_peers(c, key, Use::default());
    let p = part(c, dir);
    p.groups.extend(ips.iter().map(|ip| (key, ports, *ip)));
    p.nets.insert(key, peers.nets.clone());
}

/// Resolves `def` against `model`, in family `A` (`index` holds the pods
/// with an address of that family).
pub(crate) fn resolve<A: Family>(model: &Model, index: &PodIndex, def: &PeerDef) -> Resolved<A> {
    if def.is_empty() {
        return Resolved { pods: Vec::new(), nets: Arc::from([family::anywhere::<A>()]), anywhere: true };
    }
    let mut pods: BTreeMap<String, &Pod> = BTreeMap::new();
    let mut nets: Vec<A::Net> = Vec::new();
    for (own_ns, peer) in def {
        match peer {
            Peer::Pods { namespaces, pods: sel } => {
                let namespaces: Vec<&str> = match (own_ns, namespaces) {
                    (Some(ns), _) => vec![ns.as_str()],
                    (None, Some(ns_sel)) => index
                        .by_ns
                        .keys()
                        .copied()
                        .filter(|ns| ns_sel.matches(&model.namespace_labels(ns)))
                        .collect(),
                    // A peer without a namespace selector always has its own
                    // namespace (set by `Compiler::peers`).
                    (None, None) => Vec::new(),
                };
                for ns in namespaces {
                    for p in index.by_ns.get(ns).into_iter().flatten() {
                        if sel.matches(&p.labels) {
                            pods.insert(p.key(), p);
                        }
                    }
                }
            }
            // A block of the other family matches nothing in this one.
            Peer::IpBlock { cidr, except } => {
                if let Some(block) = A::of_net(*cidr) {
                    let except: Vec<A::Net> = except.iter().filter_map(|e| A::of_net(*e)).collect();
                    nets.extend(subtract::<A>(block, &except));
                }
            }
        }
    }
    nets.extend(pods.values().filter_map(|p| A::of_pod(p)).map(family::host));
    Resolved { pods: pods.into_keys().collect(), nets: Arc::from(aggregate::<A>(nets)), anywhere: false }
}

/// True if a change of `pod` (its old or new version) may change what `def`
/// resolves to; `ns_matches` tells if a namespace selector matches the pod's
/// namespace (before or after the change).
pub(crate) fn def_may_match(
    def: &PeerDef,
    pod: &Pod,
    ns_matches: impl Fn(&LabelSelector, &str) -> bool,
) -> bool {
    def.iter().any(|(own_ns, peer)| match peer {
        Peer::Pods { namespaces, pods: sel } => {
            let in_scope = match (own_ns, namespaces) {
                (Some(ns), _) => *ns == pod.namespace,
                (None, Some(ns_sel)) => ns_matches(ns_sel, &pod.namespace),
                (None, None) => false,
            };
            in_scope && sel.matches(&pod.labels)
        }
        Peer::IpBlock { .. } => false,
    })
}

/// True if `def` has a namespace selector (a namespace's labels matter).
pub(crate) fn selects_namespaces(def: &PeerDef) -> bool {
    def.iter().any(|(own, p)| own.is_none() && matches!(p, Peer::Pods { namespaces: Some(_), .. }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ir::{Direction, FamilyIr};
    use ipnetwork::Ipv4Network;
    use std::net::Ipv4Addr;

    /// Namespaces x, y (labelled ns=<name>), pods a, b in each: x/a and y/a
    /// on node-1, x/b and y/b on node-2, serving serve-80-tcp (x/b's on 8080).
    fn cluster(extra: &str) -> Model {
        let mut text = String::from(
            "kind: Node\nmetadata: {name: node-1}\nspec: {podCIDR: 10.244.1.0/24}\n---\n\
             kind: Node\nmetadata: {name: node-2}\nspec: {podCIDR: 10.244.2.0/24}\n",
        );
        for ns in ["x", "y"] {
            text += &format!("---\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n");
        }
        let pods = [("x", "a", 1, 2, 80), ("x", "b", 2, 2, 8080), ("y", "a", 1, 3, 80), ("y", "b", 2, 3, 80)];
        for (ns, name, node, host, port) in pods {
            text += &format!(
                "---\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{pod: {name}}}}}\n\
                 spec: {{nodeName: node-{node}, containers: [{{ports: [{{name: serve-80-tcp, containerPort: {port}}}]}}]}}\n\
                 status: {{podIP: 10.244.{node}.{host}}}\n"
            );
        }
        text += extra;
        Model::of_manifests(&text)
    }

    fn policy(ns: &str, name: &str, spec: &str) -> String {
        format!("---\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn node1(m: &Model) -> FamilyIr {
        compile(m, "node-1", &[net("10.244.0.0/16").into()]).0.v4
    }

    #[test]
    fn without_policies_nothing_is_isolated() {
        let ir = node1(&cluster(""));
        assert_eq!(ir.local, [ip("10.244.1.2"), ip("10.244.1.3")].into());
        assert_eq!(ir.pod_cidr, Some(net("10.244.1.0/24")));
        assert_eq!(ir.ingress, Direction::default());
        assert_eq!(ir.egress, Direction::default());
    }

    #[test]
    fn default_deny_isolates_only_local_selected_pods() {
        let ir = node1(&cluster(&policy("x", "deny", "  podSelector: {}\n")));
        assert_eq!(ir.ingress.isolated, [ip("10.244.1.2")].into(), "x/a only: x/b is on node-2, y/a is in y");
        assert!(ir.ingress.triples.is_empty() && ir.ingress.groups.is_empty());
        assert!(ir.egress.isolated.is_empty(), "ingress-only policy");
        let ir2 = compile(&cluster(&policy("x", "deny", "  podSelector: {}\n")), "node-2", &[]).0.v4;
        assert_eq!(ir2.ingress.isolated, [ip("10.244.2.2")].into());
    }

    #[test]
    fn allow_from_a_namespace_on_a_port() {
        let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 80}]\n";
        let ir = node1(&cluster(&policy("x", "from-y", spec)));
        let want: BTreeSet<_> = [
            (ip("10.244.1.2"), Protocol::Tcp, 80, net("10.244.1.3/32")),
            (ip("10.244.1.2"), Protocol::Tcp, 80, net("10.244.2.3/32")),
        ]
        .into();
        assert_eq!(ir.ingress.triples, want, "y/a and y/b, wherever they run");
    }

    #[test]
    fn and_within_a_peer_or_across_peers() {
        let and = "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: 80}]\n";
        let or = "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: 80}]\n";
        let peers = |spec: &str| -> BTreeSet<Ipv4Network> {
            node1(&cluster(&policy("x", "p", spec))).ingress.triples.iter().map(|t| t.3).collect()
        };
        assert_eq!(peers(and), [net("10.244.2.3/32")].into(), "y/b only");
        assert_eq!(
            peers(or),
            [net("10.244.1.3/32"), net("10.244.2.2/31")].into(),
            "all of y, and x/b (10.244.2.2 and 10.244.2.3 aggregate)"
        );
    }

    #[test]
    fn named_ports_resolve_on_the_pod_that_serves_them() {
        // Ingress into x/b (node-2), whose serve-80-tcp is 8080.
        let spec = "  podSelector: {}\n  ingress:\n  - ports: [{port: serve-80-tcp}]\n";
        let ir2 = compile(&cluster(&policy("x", "named", spec)), "node-2", &[]).0.v4;
        assert_eq!(ir2.ingress.triples, [(ip("10.244.2.2"), Protocol::Tcp, 8080, net("0.0.0.0/0"))].into());
        // Egress from x/a to x's pods on serve-80-tcp: 80 on x/a, 8080 on x/b.
        let spec = "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {}}]\n    ports: [{port: serve-80-tcp}]\n";
        let ir = node1(&cluster(&policy("x", "named", spec)));
        let want: BTreeSet<_> = [
            (ip("10.244.1.2"), Protocol::Tcp, 80, net("10.244.1.2/32")),
            (ip("10.244.1.2"), Protocol::Tcp, 8080, net("10.244.2.2/32")),
        ]
        .into();
        assert_eq!(ir.egress.triples, want);
        assert_eq!(ir.egress.isolated, [ip("10.244.1.2")].into());
        assert!(ir.ingress.isolated.is_empty());
    }

    #[test]
    fn ip_blocks_minus_excepts() {
        let spec = "  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 172.31.0.0/24, except: [172.31.0.100/32]}}]\n    ports: [{port: 80, protocol: UDP}]\n";
        let ir = node1(&cluster(&policy("x", "p", spec)));
        let nets: Vec<Ipv4Network> = ir.ingress.triples.iter().map(|t| t.3).collect();
        assert_eq!(nets.len(), 8);
        assert!(!nets.iter().any(|n| n.contains(ip("172.31.0.100"))));
        assert!(ir.ingress.triples.iter().all(|t| t.1 == Protocol::Udp && t.2 == 80));
        // An IPv6 block allows nothing in IPv4: x/a stays isolated, admitting nothing.
        let v6_block = spec.replace("172.31.0.0/24, except: [172.31.0.100/32]", "fd00::/64");
        let ir = node1(&cluster(&policy("x", "p", &v6_block)));
        assert!(ir.ingress.triples.is_empty() && ir.ingress.groups.is_empty());
        assert_eq!(ir.ingress.isolated, [ip("10.244.1.2")].into());
    }

    #[test]
    fn rules_without_single_ports_become_groups() {
        let spec = "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n  - ports: [{protocol: UDP}, {port: 8000, endPort: 8005}, {port: 9000, endPort: 9999}]\n  egress: [{}]\n";
        let ir = node1(&cluster(&policy("x", "p", spec)));
        let a = ip("10.244.1.2");
        let anywhere = vec![net("0.0.0.0/0")];
        let shape = |d: &Direction| -> BTreeSet<_> {
            d.groups.iter().map(|g| (g.targets.clone(), g.peers.clone(), g.ports)).collect()
        };
        assert_eq!(
            shape(&ir.ingress),
            [
                ([a].into(), anywhere.clone(), GroupPorts::Protocol(Protocol::Udp)),
                ([a].into(), anywhere.clone(), GroupPorts::Range(Protocol::Tcp, 9000, 9999)),
                ([a].into(), vec![net("10.244.2.2/32")], GroupPorts::All),
            ]
            .into()
        );
        assert_eq!(ir.ingress.triples.len(), 6, "8000-8005 expanded");
        assert_eq!(shape(&ir.egress), [([a].into(), anywhere, GroupPorts::All)].into());
        let keys: BTreeSet<PeerKey> = ir.ingress.groups.iter().map(|g| g.key).collect();
        assert_eq!(keys.len(), 2, "the two rules' peers: pod b, and anywhere");
    }

    /// `n` pods labelled role=client in namespace y on node-2, at addresses
    /// that do not aggregate.
    fn many_clients(n: u32) -> String {
        (0..n)
            .map(|i| {
                format!(
                    "---\nkind: Pod\nmetadata: {{name: c{i}, namespace: y, labels: {{role: client}}}}\n\
                     spec: {{nodeName: node-2}}\nstatus: {{podIP: 10.245.{}.{}}}\n",
                    i / 100,
                    2 * (i % 100) + 1
                )
            })
            .collect()
    }

    #[test]
    fn many_peers_become_a_port_group_keyed_by_the_peers_as_written() {
        let spec = "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]\n    ports: [{port: 80}, {port: 53, protocol: UDP}]\n";
        let few = node1(&cluster(&format!("{}{}", many_clients(16), policy("x", "p", spec))));
        assert_eq!(few.ingress.triples.len(), 32, "16 clients x 2 ports, as triples");
        assert!(few.ingress.port_groups.is_empty());
        // 300 clients (none adjacent, so no aggregation) > 16.
        let text = format!("{}{}{}", many_clients(300), policy("x", "p", spec), policy("y", "q", spec));
        let ir = node1(&cluster(&text));
        assert!(ir.ingress.triples.is_empty(), "{:?}", ir.ingress.triples.len());
        assert_eq!(ir.ingress.port_groups.len(), 1, "both policies name the same peers: one group");
        let g = &ir.ingress.port_groups[0];
        let (xa, ya) = (ip("10.244.1.2"), ip("10.244.1.3"));
        let want = [
            (xa, Protocol::Udp, 53),
            (xa, Protocol::Tcp, 80),
            (ya, Protocol::Udp, 53),
            (ya, Protocol::Tcp, 80),
        ];
        assert_eq!(g.targets, want.into(), "x/a by p, y/a by q");
        assert_eq!(g.peers.len(), 300);
        // One client more: same key, one peer more.
        let more = node1(&cluster(&format!("{}{}", many_clients(301), policy("x", "p", spec))));
        assert_eq!(more.ingress.port_groups[0].key, g.key);
        assert_eq!(more.ingress.port_groups[0].peers.len(), 301);
        // With triple_peers 0, even one peer makes a port group.
        let opts = Options { triple_peers: 0 };
        let one = compile_with(
            &cluster(&format!("{}{}", many_clients(1), policy("x", "p", spec))),
            "node-1",
            &[],
            opts,
        )
        .0
        .v4;
        assert!(one.ingress.triples.is_empty());
        assert_eq!(one.ingress.port_groups.len(), 1);
    }

    #[test]
    fn egress_named_ports_towards_many_pods_group_by_the_number_they_resolve_to() {
        // 300 clients serve `serve-80-tcp` (as the cluster's pods do): named
        // egress to all of them is one port group per number, not 300 triples per source.
        let clients: String = many_clients(300).replace(
            "spec: {nodeName: node-2}",
            "spec: {nodeName: node-2, containers: [{ports: [{name: serve-80-tcp, containerPort: 8080}]}]}",
        );
        let spec = "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]\n    ports: [{port: serve-80-tcp}]\n";
        let ir = node1(&cluster(&format!("{clients}{}", policy("x", "p", spec))));
        assert!(ir.egress.triples.is_empty(), "{}", ir.egress.triples.len());
        assert_eq!(ir.egress.port_groups.len(), 1);
        let g = &ir.egress.port_groups[0];
        assert_eq!(
            g.targets,
            [(ip("10.244.1.2"), Protocol::Tcp, 8080)].into(),
            "x/a, on the number the clients serve"
        );
        assert_eq!(g.peers.len(), 300);
    }

    #[test]
    fn a_rule_with_thousands_of_ports_costs_a_port_group_not_triples() {
        let ports: Vec<String> = (1..=10_000).map(|p| format!("{{port: {}}}", 2 * p)).collect();
        let spec = format!(
            "  podSelector: {{}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 172.31.0.0/24}}}}, {{ipBlock: {{cidr: 172.31.1.0/24}}}}]\n    ports: [{}]\n",
            ports.join(", ")
        );
        let ir = node1(&cluster(&policy("x", "huge", &spec)));
        assert!(ir.ingress.triples.is_empty());
        assert_eq!(ir.ingress.port_groups.len(), 1);
        assert_eq!(ir.ingress.port_groups[0].targets.len(), 10_000, "x/a x 10,000 ports");
        assert_eq!(ir.ingress.port_groups[0].peers, [net("172.31.0.0/23")]);
    }

    #[test]
    fn peers_that_match_nothing_allow_nothing_and_empty_lists_deny() {
        let spec = "  podSelector: {}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: nobody}}}]\n";
        let ir = node1(&cluster(&policy("x", "p", spec)));
        assert_eq!(ir.ingress.isolated.len(), 1);
        assert!(ir.ingress.groups.is_empty() && ir.ingress.triples.is_empty());
        let ir = node1(&cluster(&policy("x", "p", "  podSelector: {}\n  ingress: []\n")));
        assert_eq!((ir.ingress.isolated.len(), ir.ingress.groups.len()), (1, 0), "ingress: [] denies all");
    }

    #[test]
    fn policies_union_and_merge_groups_by_peers_and_ports() {
        let p1 = policy("x", "p1", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}]}]\n");
        let p2 = policy("y", "p2", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}]}]\n");
        let ir = node1(&cluster(&format!("{p1}{p2}")));
        assert_eq!(ir.ingress.isolated, [ip("10.244.1.2"), ip("10.244.1.3")].into());
        assert_eq!(ir.ingress.groups.len(), 1, "{:?}", ir.ingress.groups);
        assert_eq!(ir.ingress.groups[0].targets, ir.ingress.isolated);
        assert_eq!(ir.ingress.groups[0].peers, [net("10.244.1.2/31"), net("10.244.2.2/31")]);
    }

    #[test]
    fn audit_policies_are_compiled_apart() {
        let audit = "---\nkind: NetworkPolicy\nmetadata: {name: try, namespace: x, annotations: {weft.io/audit: 'true'}}\nspec: {podSelector: {}}\n";
        let ir = node1(&cluster(audit));
        assert!(ir.ingress.isolated.is_empty(), "an audit policy isolates nothing");
        assert!(ir.audit);
        assert_eq!(ir.audit_ingress.isolated, [ip("10.244.1.2")].into(), "but would");
        let plain = node1(&cluster(""));
        assert!(!plain.audit && plain.audit_ingress == Direction::default());
    }

    #[test]
    fn host_network_pods_and_pods_without_an_address_are_left_out() {
        let extra = "---\nkind: Pod\nmetadata: {name: h, namespace: x}\nspec: {nodeName: node-1, hostNetwork: true}\nstatus: {podIP: 172.31.0.11}\n\
                     ---\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec: {nodeName: node-1}\n";
        let ir = node1(&cluster(&format!("{extra}{}", policy("x", "deny", "  podSelector: {}\n"))));
        assert_eq!(ir.local, [ip("10.244.1.2"), ip("10.244.1.3")].into());
        assert_eq!(ir.ingress.isolated, [ip("10.244.1.2")].into());
    }

    #[test]
    fn each_family_compiles_from_its_own_addresses_and_blocks() {
        let text = "
kind: Node
metadata: {name: node-1}
spec: {podCIDRs: [10.244.1.0/24, 'fd00:244:1::/64']}
---
kind: Namespace
metadata: {name: x}
---
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1}
status: {podIPs: [{ip: 10.244.1.2}, {ip: 'fd00:244:1::2'}]}
---
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: node-1}
status: {podIPs: [{ip: 10.244.1.3}, {ip: 'fd00:244:1::3'}]}
---
kind: Pod
metadata: {name: v4only, namespace: x, labels: {pod: b}}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.4}
";
        let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}, {ipBlock: {cidr: 172.31.0.0/16}}, {ipBlock: {cidr: 'fd00:31::/48', except: ['fd00:31::/49']}}]\n    ports: [{port: 80}]\n";
        let (ir, _) =
            compile(&Model::of_manifests(&format!("{text}{}", policy("x", "p", spec))), "node-1", &[]);
        let peers4: BTreeSet<String> = ir.v4.ingress.triples.iter().map(|t| t.3.to_string()).collect();
        let want4: BTreeSet<String> =
            ["10.244.1.3/32", "10.244.1.4/32", "172.31.0.0/16"].iter().map(|s| s.to_string()).collect();
        assert_eq!(peers4, want4, "pods' IPv4 addresses and the IPv4 block only");
        assert_eq!(ir.v6.local.len(), 2, "v4only has no IPv6 address");
        assert_eq!(ir.v6.pod_cidr, Some("fd00:244:1::/64".parse().unwrap()));
        assert_eq!(ir.v6.ingress.isolated, ["fd00:244:1::2".parse().unwrap()].into());
        let peers6: BTreeSet<String> = ir.v6.ingress.triples.iter().map(|t| t.3.to_string()).collect();
        assert!(peers6.contains("fd00:244:1::3/128"), "{peers6:?}");
        assert!(peers6.contains("fd00:31:0:8000::/49"), "the block minus its except: {peers6:?}");
        assert_eq!(peers6.len(), 2, "{peers6:?}");
        assert!(ir.v6.ingress.triples.iter().all(|t| t.1 == Protocol::Tcp && t.2 == 80));
        assert!(ir.v4.egress.isolated.is_empty() && ir.v6.egress.isolated.is_empty());
    }

    const DUAL_MODEL: &str = "
kind: Node
metadata: {name: node-1}
spec: {podCIDRs: [10.244.1.0/24, 'fd00:244:1::/64']}
---
kind: Node
metadata: {name: node-2}
spec: {podCIDRs: ['fd00:244:2::/64']}
---
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: node-1}
status: {podIPs: [{ip: 10.244.1.2}, {ip: 'fd00:244:1::2'}]}
---
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: node-1}
status: {podIPs: [{ip: 'fd00:244:1::3'}]}
---
kind: Pod
metadata: {name: c, namespace: xy, labels: {app: a}}
spec: {nodeName: node-1}
status: {podIPs: [{ip: 'fd00:244:1::4'}]}
---
kind: Pod
metadata: {name: d, namespace: x, labels: {app: a}}
spec: {nodeName: node-2}
status: {podIPs: [{ip: 'fd00:244:2::5'}]}
---
kind: Pod
metadata: {name: h, namespace: x, labels: {app: a}}
spec: {nodeName: node-1, hostNetwork: true}
status: {podIPs: [{ip: 'fd00:244:1::6'}]}
---
kind: NetworkPolicy
metadata: {name: in-a, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}}
---
kind: NetworkPolicy
metadata: {name: out-b, namespace: x}
spec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Egress]}
---
kind: NetworkPolicy
metadata: {name: audit-all, namespace: xy, annotations: {weft.io/audit: 'true'}}
spec: {podSelector: {}}
";

    fn v6(node: &str) -> FamilyIr<std::net::Ipv6Addr> {
        compile(&Model::of_manifests(DUAL_MODEL), node, &[]).0.v6
    }

    fn addrs6(a: &[&str]) -> BTreeSet<std::net::Ipv6Addr> {
        a.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ipv6_isolation_follows_the_policies_of_the_pods_own_namespace() {
        let g = v6("node-1");
        assert_eq!(g.pod_cidr, Some("fd00:244:1::/64".parse().unwrap()));
        // hostNetwork pods and other nodes' pods are not local.
        assert_eq!(g.local, addrs6(&["fd00:244:1::2", "fd00:244:1::3", "fd00:244:1::4"]));
        // x/a is isolated for ingress; xy/c has the same labels in another
        // namespace, whose only policy is an audit one.
        assert_eq!(g.ingress.isolated, addrs6(&["fd00:244:1::2"]));
        assert_eq!(g.egress.isolated, addrs6(&["fd00:244:1::3"]));
        assert!(g.audit && g.audit_ingress.isolated.contains(&"fd00:244:1::4".parse().unwrap()));
    }

    #[test]
    fn an_ipv6_only_node_has_its_cidr_and_pods() {
        let g = v6("node-2");
        assert_eq!(g.pod_cidr, Some("fd00:244:2::/64".parse().unwrap()));
        assert_eq!(g.local, addrs6(&["fd00:244:2::5"]));
        assert_eq!(g.ingress.isolated, addrs6(&["fd00:244:2::5"]));
        assert!(g.egress.isolated.is_empty());
        assert_eq!(compile(&Model::of_manifests(DUAL_MODEL), "node-2", &[]).0.v4.pod_cidr, None);
    }

    /// A target's elements taken from another target's, with its address,
    /// are what a compile for it gives (isolation, triples, port groups and
    /// groups alike, nothing more to name); a policy naming an ingress
    /// port, one without a target, or one holding the address already is
    /// left to the compile.
    #[test]
    fn a_new_targets_elements_are_another_targets_with_its_address() {
        let numbered = "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    \
                        ports: [{port: 80}, {port: 443}]\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n    \
                        ports: [{port: 8080}]\n  egress:\n  - to: [{ipBlock: {cidr: 192.0.2.0/24}}]\n";
        let named = "  podSelector: {}\n  ingress:\n  - ports: [{port: serve-80-tcp}]\n";
        let m = cluster(&(policy("x", "numbered", numbered) + &policy("x", "named", named)));
        let index = PodIndex::new::<Ipv4Addr>(&m);
        let mut peers = PeerRegistry::default();
        // y's two pods are past one network: its rule is a port group; x/b's a triple.
        let options = Options { triple_peers: 1 };
        let mut compiler = Compiler { model: &m, index: &index, node: "node-1", options, peers: &mut peers };
        let at = |host: u8| Pod { ip: Some(Ipv4Addr::new(10, 244, 1, host)), ..(*m.pods["x/a"]).clone() };
        let (a, b, c) = (at(2), at(7), at(9));
        let held = compiler.for_targets(&m.policies["x/numbered"], &[&a, &b], &[]);
        let want = compiler.for_targets(&m.policies["x/numbered"], &[&c], &held.rule_keys);
        let mut got = Contribution::default();
        assert!(held.like_a_target(ip("10.244.1.9"), &mut got));
        for (g, w) in [(&got.ingress, &want.ingress), (&got.egress, &want.egress)] {
            assert_eq!(g.isolated, w.isolated);
            assert_eq!(g.triples, w.triples);
            assert_eq!(g.port_groups, w.port_groups);
            assert_eq!(g.groups, w.groups);
            // The groups' peers are named by the held target already.
            assert!(g.nets.is_empty());
            assert!(w
                .nets
                .keys()
                .all(|k| held.ingress.nets.contains_key(k) || held.egress.nets.contains_key(k)));
        }
        let shapes = [got.ingress.triples.len(), got.ingress.port_groups.len(), got.egress.groups.len()];
        assert_eq!(shapes, [1, 2, 1], "{got:?}");
        assert!(got.uses.is_empty() && got.notes.is_empty() && !got.all_pods);

        assert!(!held.like_a_target(ip("10.244.1.7"), &mut got), "held already");
        let named = compiler.for_targets(&m.policies["x/named"], &[&a], &[]);
        assert!(!named.like_a_target(ip("10.244.1.9"), &mut got), "resolved on each target");
        assert!(!Contribution::default().like_a_target(ip("10.244.1.9"), &mut got), "no target to go by");
    }
}
