//! The set members a change touched, re-rendered from the IR and diffed
//! against what was applied, so a pod or policy change costs a few `ipset`
//! lines instead of rendering every set again. Pure; the renderer's own
//! member functions make the members, so a patched set equals a rendered one
//! (a property test checks it against `render`).

use std::collections::{BTreeMap, BTreeSet};

use super::render::{
    block_members, group_set, ip_set, names, net_members, net_set, peer_set, peers_set, pod_port_member,
    port_group_set, spelled, subjects_set, triple_members, ClassPart, FamilyNames, Names, SetSpec, TierRules,
};
use crate::model::Protocol;
use crate::policy::family::{self, Family};
use crate::policy::{
    Class, ClassDelta, ClusterIr, Direction, Dirty, DirtyDirection, FamilyDirty, FamilyIr, PolicyIr,
};

/// One set's members to add and to delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetChange {
    pub add: Vec<String>,
    pub del: Vec<String>,
}

/// The member changes that bring the applied `sets` to `ir`, given what
/// `dirty` says changed; None if a set it needs was never applied (the
/// caller renders in full). `dirty` must not be structural.
pub fn changes(
    ir: &PolicyIr,
    dirty: &Dirty,
    sets: &BTreeMap<String, SetSpec>,
) -> Option<BTreeMap<String, SetChange>> {
    let mut out: BTreeMap<String, SetChange> = BTreeMap::new();
    let mut diff = |name: &str, new: Vec<String>, old: &[String]| -> Option<()> {
        let change = out.entry(name.to_string()).or_default();
        for m in &new {
            if old.binary_search(m).is_err() {
                change.add.push(m.clone());
            }
        }
        for m in old {
            if new.binary_search(m).is_err() {
                change.del.push(m.clone());
            }
        }
        Some(())
    };
    let get = |name: &str| sets.get(name).map(|s| s.members.as_slice());
    family_changes(&ir.v4, &dirty.v4, &get, &mut diff)?;
    family_changes(&ir.v6, &dirty.v6, &get, &mut diff)?;
    out.retain(|_, c| !c.add.is_empty() || !c.del.is_empty());
    for c in out.values_mut() {
        c.add.sort();
        c.add.dedup();
        c.del.sort();
        c.del.dedup();
    }
    Some(out)
}

/// One family's share of `changes`.
fn family_changes<'s, A: Family>(
    ir: &FamilyIr<A>,
    dirty: &FamilyDirty<A>,
    get: &impl Fn(&str) -> Option<&'s [String]>,
    diff: &mut impl FnMut(&str, Vec<String>, &[String]) -> Option<()>,
) -> Option<()> {
    let n = names::<A>();
    for ip in &dirty.local {
        let member = ip.to_string();
        let new = if ir.local.contains(ip) { vec![member.clone()] } else { Vec::new() };
        diff(n.local, new, &prefixed(get(n.local)?, &member, true))?;
    }
    // ClusterNetworkPolicy's known pods (rendered only while it has subjects here).
    if !ir.cluster.is_empty() {
        for ip in &dirty.known {
            let member = ip.to_string();
            let new = if ir.cluster.known.contains(ip) { vec![member.clone()] } else { Vec::new() };
            diff(n.cnp_pods, new, &prefixed(get(n.cnp_pods)?, &member, true))?;
        }
    }
    if dirty.cluster {
        cluster_changes(&ir.cluster, dirty.classes.as_deref()?, n, get, diff)?;
    }
    let mut views = vec![(&n.ingress, &ir.ingress, &dirty.ingress), (&n.egress, &ir.egress, &dirty.egress)];
    if ir.audit {
        views.push((&n.audit_ingress, &ir.audit_ingress, &dirty.audit_ingress));
        views.push((&n.audit_egress, &ir.audit_egress, &dirty.audit_egress));
    }
    for (n, dir, d) in views {
        view(n, dir, d, get, diff)?;
    }
    Some(())
}

/// ClusterNetworkPolicy's sets after its regions changed, from the classes
/// that did (`ClassDelta`): a subject is in one class per tier and
/// direction, so only theirs differ. None (render in full) when their rules
/// differ (a region came or went, or changed cells or width) or the pod
/// networks changed.
fn cluster_changes<'s, A: Family>(
    cir: &ClusterIr<A>,
    deltas: &[ClassDelta<A>],
    n: &FamilyNames,
    get: &impl Fn(&str) -> Option<&'s [String]>,
    diff: &mut impl FnMut(&str, Vec<String>, &[String]) -> Option<()>,
) -> Option<()> {
    if get(n.cnp_pod_cidrs)? != net_set::<A>(n.cnp_pod_cidrs, &cir.pod_cidrs).members.as_slice() {
        return None;
    }
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v.dedup();
        v
    };
    for delta in deltas {
        let t = TierRules::of(delta.tier, delta.ingress, n);
        // Rules in the same place say the same (named after the class, not
        // its content): then only members changed.
        let lines = |classes: &[Class<A>]| -> (Vec<String>, BTreeSet<String>) {
            let parts: Vec<ClassPart> = classes.iter().map(|c| t.part(c, n, false)).collect();
            let mut l: Vec<String> = parts
                .iter()
                .flat_map(|p| p.unknown_rules.lines().chain(p.wide.lines()))
                .map(String::from)
                .collect();
            l.sort();
            (l, parts.into_iter().flat_map(|p| p.sets).map(|s| s.name).collect())
        };
        let (rules, used) = lines(&delta.came);
        if lines(&delta.gone).0 != rules {
            return None;
        }
        // Members that went and came, per set.
        let mut moved: BTreeMap<String, [Vec<String>; 2]> = BTreeMap::new();
        for ch in delta.changes() {
            let blocks = ch.blocks(spelled);
            for v in 0..t.verdict_count() {
                let (action, name) = t.verdict(v);
                for (i, blocks) in blocks.iter().enumerate() {
                    let members = blocks.iter().filter(|b| b.action == action).flat_map(block_members::<A>);
                    moved.entry(name.to_string()).or_default()[i].extend(members);
                }
            }
            for (i, blocks) in ch.unknown_blocks().iter().enumerate() {
                moved.entry(t.unknown_set().to_string()).or_default()[i]
                    .extend(blocks.iter().flat_map(block_members::<A>));
            }
            // The sets that rules match (the same before and after).
            let Some(now) = ch.now else { continue };
            let name = subjects_set(n, now);
            if used.contains(&name) {
                let strings = |ips: &[A]| ips.iter().map(A::to_string).collect::<Vec<_>>();
                let m = moved.entry(name).or_default();
                m[0].extend(strings(&ch.subjects_gone));
                m[1].extend(strings(&ch.subjects_came));
            }
            for r in &ch.regions {
                let (Some(_), Some(region)) = (r.before, r.now) else { continue };
                let name = peers_set(n, now, region);
                if used.contains(&name) {
                    let m = moved.entry(name).or_default();
                    m[0].extend(net_members::<A>(&r.peers_gone));
                    m[1].extend(net_members::<A>(&r.peers_came));
                }
            }
        }
        for (name, [gone, came]) in moved {
            get(&name)?;
            diff(&name, sorted(came), &sorted(gone))?;
        }
    }
    Some(())
}

fn view<'s, A: Family>(
    n: &Names,
    dir: &Direction<A>,
    d: &DirtyDirection<A>,
    get: &impl Fn(&str) -> Option<&'s [String]>,
    diff: &mut impl FnMut(&str, Vec<String>, &[String]) -> Option<()>,
) -> Option<()> {
    for ip in &d.isolated {
        let member = ip.to_string();
        let new = if dir.isolated.contains(ip) { vec![member.clone()] } else { Vec::new() };
        diff(n.iso, new, &prefixed(get(n.iso)?, &member, true))?;
    }
    // The least network, to start a range of a pod's triples.
    let least = family::anywhere::<A>();
    for pod in &d.triples {
        let mut new: Vec<String> = dir
            .triples
            .range((*pod, Protocol::Tcp, 0, least)..)
            .take_while(|t| t.0 == *pod)
            .flat_map(triple_members)
            .collect();
        new.sort();
        diff(n.allow, new, &prefixed(get(n.allow)?, &format!("{pod},"), false))?;
    }
    for (key, pod) in &d.port_groups {
        let name = port_group_set(n, *key);
        let Ok(i) = dir.port_group_index(*key) else { continue };
        let mut new: Vec<String> = dir.port_groups[i]
            .targets
            .range((*pod, Protocol::Tcp, 0)..)
            .take_while(|t| t.0 == *pod)
            .map(pod_port_member)
            .collect();
        new.sort();
        diff(&name, new, &prefixed(get(&name)?, &format!("{pod},"), false))?;
    }
    for (key, ports) in &d.groups {
        let Ok(i) = dir.group_index(*key, *ports) else { continue };
        let g = &dir.groups[i];
        let new = ip_set(&group_set(n, *key, *ports), &g.targets);
        diff(&new.name, new.members.clone(), get(&new.name)?)?;
    }
    for key in &d.peers {
        let Some(nets) = dir.peers_of(*key) else { continue };
        let name = peer_set(n, *key);
        let mut new = net_members::<A>(nets);
        new.sort();
        new.dedup();
        diff(&name, new, get(&name)?)?;
    }
    Some(())
}

/// The members of sorted `members` that are `member` (exact) or start with it.
fn prefixed(members: &[String], member: &str, exact: bool) -> Vec<String> {
    let from = members.partition_point(|m| m.as_str() < member);
    members[from..]
        .iter()
        .take_while(|m| m.starts_with(member))
        .filter(|m| !exact || m.as_str() == member)
        .cloned()
        .collect()
}

/// Applies `changes` to the remembered `sets` (kept sorted).
pub fn remember(sets: &mut BTreeMap<String, SetSpec>, changes: &BTreeMap<String, SetChange>) {
    for (name, c) in changes {
        let Some(s) = sets.get_mut(name) else { continue };
        for m in &c.del {
            if let Ok(i) = s.members.binary_search(m) {
                s.members.remove(i);
            }
        }
        for m in &c.add {
            if let Err(i) = s.members.binary_search(m) {
                s.members.insert(i, m.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iptables::render;
    use crate::policy::incremental::tests::each_change;

    /// Sets patched change by change equal the sets rendered in full.
    #[test]
    fn patched_sets_equal_rendered_sets() {
        let rendered = |ir: &PolicyIr| -> BTreeMap<String, SetSpec> {
            render(ir).sets.into_iter().map(|s| (s.name.clone(), s)).collect()
        };
        let (mut sets, mut patched) = (BTreeMap::new(), 0);
        let mut by_classes = 0;
        each_change(200, 20, |ir, dirty, at| {
            if dirty.structural {
                sets = rendered(ir);
                return;
            }
            let Some(c) = changes(ir, dirty, &sets) else {
                // Only ClusterNetworkPolicy's rules (or classes not known) render in full.
                assert!(dirty.cluster(), "{at}: a set was missing");
                sets = rendered(ir);
                return;
            };
            remember(&mut sets, &c);
            assert_eq!(sets, rendered(ir), "{at}");
            patched += 1;
            by_classes += usize::from(dirty.cluster());
        });
        assert!(patched > 1000, "only {patched} changes were patches");
        assert!(by_classes > 100, "only {by_classes} ClusterNetworkPolicy changes were patches");
    }
}
