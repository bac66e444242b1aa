//! The set elements a change touched, re-rendered from the IR and diffed
//! against what was applied, so a pod or policy change costs a few elements
//! instead of rendering every set again. Pure; built from the renderer's own
//! element functions, so a patched table equals a rendered one (a property
//! test checks it against `render`). Both families patch the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use super::render::{
    addrs, cell_elems, cluster_set, group_set, grouped, grouped_names, last, nets_elems, peer_set, pod_cells,
    pod_port, pod_shard, pod_triples, port_group_set, region_elems, sharded, unknown_elems, unknown_set,
    views, Elem, FamilyElem, NftFamily, View, CLUSTER_SETS, VIEWS,
};
use crate::model::{Action, Protocol, Tier};
use crate::policy::class_change::Block;
use crate::policy::family::{anywhere, host};
use crate::policy::{ClassDelta, ClusterIr, Direction, Dirty, DirtyDirection, PolicyIr};

/// One set's elements to delete and to add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetChange {
    pub gone: Vec<Elem>,
    pub came: Vec<Elem>,
}

/// The applied sets: name -> elements.
type Sets = BTreeMap<String, BTreeSet<Elem>>;

/// The element changes that bring the applied `sets` to `ir`, given what
/// `dirty` says changed; None if a set it needs was never applied (the
/// caller renders in full). `dirty` must not be structural.
pub fn changes(ir: &PolicyIr, dirty: &Dirty, sets: &Sets) -> Option<BTreeMap<String, SetChange>> {
    let mut out: BTreeMap<String, SetChange> = BTreeMap::new();
    family::<Ipv4Addr>(ir, dirty, sets, &mut out)?;
    family::<Ipv6Addr>(ir, dirty, sets, &mut out)?;
    out.retain(|_, c| !c.gone.is_empty() || !c.came.is_empty());
    Some(out)
}

/// `new` minus `old` came, `old` minus `new` went, in set `name`.
fn diff(out: &mut BTreeMap<String, SetChange>, name: &str, new: BTreeSet<Elem>, old: &BTreeSet<Elem>) {
    let c = out.entry(name.to_string()).or_default();
    c.came.extend(new.difference(old).cloned());
    c.gone.extend(old.difference(&new).cloned());
}

/// The elements of `set` in `range`.
fn within(set: &BTreeSet<Elem>, range: RangeInclusive<Elem>) -> BTreeSet<Elem> {
    set.range(range).cloned().collect()
}

/// One family's changes; nothing to do (nor to allocate) when none changed.
fn family<A: NftFamily>(
    ir: &PolicyIr,
    dirty: &Dirty,
    sets: &Sets,
    out: &mut BTreeMap<String, SetChange>,
) -> Option<()> {
    let (fir, d) = (A::half(ir), A::dirty(dirty));
    if d.is_empty() {
        return Some(());
    }
    let local = format!("local{}", A::SUFFIX);
    for ip in &d.local {
        let one = A::elem(FamilyElem::Addr(*ip));
        let old = within(sets.get(&local)?, one.clone()..=one);
        diff(out, &local, addrs(&fir.local.range(*ip..=*ip).copied().collect()), &old);
    }
    for v in views(fir.audit) {
        let dir = v.pick([&fir.ingress, &fir.egress, &fir.audit_ingress, &fir.audit_egress]);
        let dd = v.pick([&d.ingress, &d.egress, &d.audit_ingress, &d.audit_egress]);
        view(v, dir, dd, sets, out)?;
    }
    if d.cluster {
        cluster(&fir.cluster, d.classes.as_deref(), sets, out)?;
    }
    if !d.known.is_empty() && !fir.cluster.is_empty() {
        let pods = format!("cnp_pods{}", A::SUFFIX);
        for ip in &d.known {
            let one = A::elem(FamilyElem::Addr(*ip));
            let old = within(sets.get(&pods)?, one.clone()..=one);
            diff(out, &pods, addrs(&fir.cluster.known.range(*ip..=*ip).copied().collect()), &old);
        }
    }
    Some(())
}

/// ClusterNetworkPolicy's sets after its regions changed. With the classes
/// that changed known, only their elements are compared (a subject is in
/// one class per tier and direction, so the others' are as they were);
/// else every class's against what was applied.
fn cluster<A: NftFamily>(
    cir: &ClusterIr<A>,
    classes: Option<&[ClassDelta<A>]>,
    sets: &Sets,
    out: &mut BTreeMap<String, SetChange>,
) -> Option<()> {
    // Regions matched by rules of their own (`Class::grouped`): their sets
    // are named after who they serve, so the same names are the same rules
    // and only their elements may change; other names call for rules that
    // a full render writes.
    let mut names = BTreeSet::new();
    for v in &VIEWS[..2] {
        for (tier, action) in CLUSTER_SETS {
            for g in grouped(cir.get(tier, v.pick([true, false, true, false])), action) {
                names.extend([g.subjects, g.peers]);
            }
        }
    }
    let (subjects, peers) = (format!("cnps{}_", A::SUFFIX), format!("cnpp{}_", A::SUFFIX));
    let had = sets.keys().filter(|n| n.starts_with(&subjects) || n.starts_with(&peers));
    if !had.eq(names.iter()) {
        return None;
    }
    for v in &VIEWS[..2] {
        let ingress = v.pick([true, false, true, false]);
        for tier in [Tier::Admin, Tier::Baseline] {
            let actions = CLUSTER_SETS.into_iter().filter(|(t, _)| *t == tier).map(|(_, a)| a);
            let Some(deltas) = classes else {
                // Every class against what was applied.
                let classes = cir.get(tier, ingress);
                for action in actions {
                    for (name, new) in
                        sharded(&cluster_set::<A>(v, tier, action), region_elems(classes, action))
                    {
                        diff(out, &name, new, sets.get(&name)?);
                    }
                    for g in grouped(classes, action) {
                        if !out.contains_key(&g.subjects) {
                            diff(out, &g.subjects, addrs(&g.class.subjects), sets.get(&g.subjects)?);
                        }
                        diff(out, &g.peers, nets_elems::<A>(&g.region.peers), sets.get(&g.peers)?);
                    }
                }
                for (name, new) in sharded(&unknown_set::<A>(v, tier), unknown_elems(classes)) {
                    diff(out, &name, new, sets.get(&name)?);
                }
                continue;
            };
            let Some(delta) = deltas.iter().find(|c| c.tier == tier && c.ingress == ingress) else {
                continue;
            };
            for (name, [gone, came]) in moved::<A>(v, delta, actions) {
                sets.get(&name)?;
                diff(out, &name, came, &gone);
            }
        }
    }
    let nets = format!("cnp_podnets{}", A::SUFFIX);
    let new = cir.pod_cidrs.iter().map(|n| A::elem(FamilyElem::Net(*n))).collect();
    diff(out, &nets, new, sets.get(&nets)?);
    Some(())
}

/// The elements that went and came, per set, when the classes of `delta`
/// changed: only what their subjects and peers moved.
fn moved<A: NftFamily>(
    v: &View,
    delta: &ClassDelta<A>,
    actions: impl Iterator<Item = Action> + Clone,
) -> BTreeMap<String, [BTreeSet<Elem>; 2]> {
    let mut moved: BTreeMap<String, [BTreeSet<Elem>; 2]> = BTreeMap::new();
    // Into the shards of set `name` (`sharded`).
    fn put<'b, A: NftFamily + 'b>(
        moved: &mut BTreeMap<String, [BTreeSet<Elem>; 2]>,
        name: String,
        i: usize,
        blocks: impl Iterator<Item = &'b Block<'b, A>>,
    ) {
        let mut elems = BTreeSet::new();
        for b in blocks {
            cell_elems(&b.subjects, b.cells, &b.peers, &mut elems);
        }
        for (shard, elems) in sharded(&name, elems) {
            if !elems.is_empty() {
                moved.entry(shard).or_default()[i].extend(elems);
            }
        }
    }
    for ch in delta.changes() {
        let blocks = ch.blocks(|c, r| !c.grouped(r));
        for action in actions.clone() {
            for (i, blocks) in blocks.iter().enumerate() {
                put(
                    &mut moved,
                    cluster_set::<A>(v, delta.tier, action),
                    i,
                    blocks.iter().filter(|b| b.action == action),
                );
            }
        }
        for (i, blocks) in ch.unknown_blocks().iter().enumerate() {
            put(&mut moved, unknown_set::<A>(v, delta.tier), i, blocks.iter());
        }
        // Grouped regions in both versions: the names check says they are
        // the same rules; the members of their sets moved.
        let Some((before, now)) = ch.before.zip(ch.now) else { continue };
        let mut subjects = None;
        for r in &ch.regions {
            let (Some(rb), Some(rn)) = (r.before, r.now) else { continue };
            if !(before.grouped(rb) && now.grouped(rn)) {
                continue;
            }
            let [s, peers] = grouped_names::<A>(now, rn);
            subjects = Some(s);
            let m = moved.entry(peers).or_default();
            m[0].extend(nets_elems::<A>(&r.peers_gone));
            m[1].extend(nets_elems::<A>(&r.peers_came));
        }
        if let Some(s) = subjects {
            let m = moved.entry(s).or_default();
            m[0].extend(addrs(&ch.subjects_gone.iter().copied().collect()));
            m[1].extend(addrs(&ch.subjects_came.iter().copied().collect()));
        }
    }
    moved
}

fn view<A: NftFamily>(
    v: &View,
    dir: &Direction<A>,
    d: &DirtyDirection<A>,
    sets: &Sets,
    out: &mut BTreeMap<String, SetChange>,
) -> Option<()> {
    let short = v.short;
    let iso = v.set::<A>("iso");
    for ip in &d.isolated {
        let one = A::elem(FamilyElem::Addr(*ip));
        let old = within(sets.get(&iso)?, one.clone()..=one);
        diff(out, &iso, addrs(&dir.isolated.range(*ip..=*ip).copied().collect()), &old);
    }
    let exact = v.set::<A>("exact");
    for pod in &d.triples {
        let (new_exact, new_cells) = pod_cells(*pod, pod_triples(dir, *pod));
        let old = within(sets.get(&exact)?, exact_range(*pod));
        diff(out, &exact, new_exact.into_iter().collect(), &old);
        let allow = v.allow_set::<A>(pod_shard(*pod));
        let old = within(sets.get(&allow)?, cell_range(*pod));
        diff(out, &allow, new_cells.into_iter().collect(), &old);
    }
    for (key, pod) in &d.port_groups {
        let Ok(i) = dir.port_group_index(*key) else { continue };
        let name = port_group_set::<A>(short, *key);
        let targets = &dir.port_groups[i].targets;
        let new =
            targets.range((*pod, Protocol::Tcp, 0)..).take_while(|t| t.0 == *pod).map(pod_port).collect();
        let range =
            A::elem(FamilyElem::PodPort(*pod, 0, 0))..=A::elem(FamilyElem::PodPort(*pod, u8::MAX, u16::MAX));
        let old = within(sets.get(&name)?, range);
        diff(out, &name, new, &old);
    }
    for (key, ports) in &d.groups {
        let Ok(i) = dir.group_index(*key, *ports) else { continue };
        let g = &dir.groups[i];
        let name = group_set::<A>(short, *key, *ports);
        diff(out, &name, addrs(&g.targets), sets.get(&name)?);
    }
    for key in &d.peers {
        let Some(nets) = dir.peers_of(*key) else { continue };
        let name = peer_set::<A>(short, *key);
        let new = nets.iter().map(|n| A::elem(FamilyElem::Net(*n))).collect();
        diff(out, &name, new, sets.get(&name)?);
    }
    Some(())
}

/// The least and greatest address of the family.
fn extremes<A: NftFamily>() -> (A, A) {
    (A::from_u128(0), last::<A>(anywhere::<A>()))
}

/// Every allow-set element of `pod`.
fn cell_range<A: NftFamily>(pod: A) -> RangeInclusive<Elem> {
    let (_, max) = extremes::<A>();
    A::elem(FamilyElem::Cell(pod, (0, 0), (0, 0), anywhere::<A>()))
        ..=A::elem(FamilyElem::Cell(pod, (u8::MAX, u8::MAX), (u16::MAX, u16::MAX), host(max)))
}

/// Every exact-set element of `pod`.
fn exact_range<A: NftFamily>(pod: A) -> RangeInclusive<Elem> {
    let (min, max) = extremes::<A>();
    A::elem(FamilyElem::Exact(pod, 0, 0, min))..=A::elem(FamilyElem::Exact(pod, u8::MAX, u16::MAX, max))
}

/// Applies `changes` to the remembered `sets`.
pub fn remember(sets: &mut Sets, changes: &BTreeMap<String, SetChange>) {
    for (name, c) in changes {
        let Some(s) = sets.get_mut(name) else { continue };
        for e in &c.gone {
            s.remove(e);
        }
        s.extend(c.came.iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::render;
    use crate::policy::incremental::tests::each_change;

    /// Elements patched change by change equal the elements rendered in
    /// full, in both families.
    #[test]
    fn patched_sets_equal_rendered_sets() {
        let (mut sets, mut patched, mut patched6, mut by_classes) = (BTreeMap::new(), 0, 0, 0);
        each_change(200, 20, |ir, dirty, at| {
            if dirty.structural {
                sets = render(ir).sets;
                return;
            }
            let Some(c) = changes(ir, dirty, &sets) else {
                // Only ClusterNetworkPolicy regions matched by rules of their
                // own, come or gone, call for a full render.
                let after = render(ir).sets;
                let grouped = |s: &Sets| -> Vec<String> {
                    s.keys().filter(|n| n.starts_with("cnps") || n.starts_with("cnpp")).cloned().collect()
                };
                assert_ne!(grouped(&sets), grouped(&after), "{at}: a set was missing");
                sets = after;
                return;
            };
            remember(&mut sets, &c);
            assert_eq!(sets, render(ir).sets, "{at}");
            patched += 1;
            by_classes += usize::from(
                (dirty.v4.cluster && dirty.v4.classes.is_some())
                    || (dirty.v6.cluster && dirty.v6.classes.is_some()),
            );
            if c.values().flat_map(|c| c.came.iter().chain(&c.gone)).any(|e| matches!(e, Elem::V6(_))) {
                patched6 += 1;
            }
        });
        assert!(patched > 1000, "only {patched} changes were patches");
        assert!(patched6 > 100, "only {patched6} patches changed IPv6 elements");
        // ClusterNetworkPolicy changes compared only the classes that changed.
        assert!(by_classes > 100, "only {by_classes} patches compared the classes that changed");
    }
}
