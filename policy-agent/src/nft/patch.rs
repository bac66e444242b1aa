//! The set elements a change touched, re-rendered from the IR and diffed
//! against what was applied, so a pod or policy change costs a few elements
//! instead of rendering every set again. Pure; built from the renderer's own
//! element functions, so a patched table equals a rendered one (a property
//! test checks it against `render`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::render::{
    addrs, addrs6, group_set, peer_set, pod_cells, pod_port, pod_triples, port_group_set, Elem,
};
use crate::model::Protocol;
use crate::policy::{Direction, Dirty, DirtyDirection, PolicyIr};

/// One set's elements to delete and to add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetChange {
    pub gone: Vec<Elem>,
    pub came: Vec<Elem>,
}

/// The element changes that bring the applied `sets` to `ir`, given what
/// `dirty` says changed; None if a set it needs was never applied (the
/// caller renders in full). `dirty` must not be structural.
pub fn changes(
    ir: &PolicyIr,
    dirty: &Dirty,
    sets: &BTreeMap<String, BTreeSet<Elem>>,
) -> Option<BTreeMap<String, SetChange>> {
    let mut out: BTreeMap<String, SetChange> = BTreeMap::new();
    let mut diff = |name: &str, new: BTreeSet<Elem>, old: BTreeSet<Elem>| {
        let c = out.entry(name.to_string()).or_default();
        c.came.extend(new.difference(&old).copied());
        c.gone.extend(old.difference(&new).copied());
    };
    let get = |name: &str| sets.get(name);
    let one = |set: &BTreeSet<Elem>, ip: &Ipv4Addr| set.get(&Elem::Addr(*ip)).copied().into_iter().collect();
    let (v4, d4) = (&ir.v4, &dirty.v4);
    for ip in &d4.local {
        let old = one(get("local")?, ip);
        diff("local", addrs(&v4.local.range(*ip..=*ip).copied().collect()), old);
    }
    if !dirty.v6.is_empty() {
        let v6 = &ir.v6;
        for (name, now) in
            [("local6", &v6.local), ("in_iso6", &v6.ingress.isolated), ("out_iso6", &v6.egress.isolated)]
        {
            diff(name, addrs6(now), get(name)?.clone());
        }
    }
    let mut views = vec![("in", &v4.ingress, &d4.ingress), ("out", &v4.egress, &d4.egress)];
    if v4.audit {
        views.push(("ain", &v4.audit_ingress, &d4.audit_ingress));
        views.push(("aout", &v4.audit_egress, &d4.audit_egress));
    }
    for (short, dir, d) in views {
        view(short, dir, d, &get, &mut diff)?;
    }
    out.retain(|_, c| !c.gone.is_empty() || !c.came.is_empty());
    Some(out)
}

fn view<'s>(
    short: &str,
    dir: &Direction,
    d: &DirtyDirection,
    get: &impl Fn(&str) -> Option<&'s BTreeSet<Elem>>,
    diff: &mut impl FnMut(&str, BTreeSet<Elem>, BTreeSet<Elem>),
) -> Option<()> {
    let iso = format!("{short}_iso");
    for ip in &d.isolated {
        let old = get(&iso)?.get(&Elem::Addr(*ip)).copied().into_iter().collect();
        diff(&iso, addrs(&dir.isolated.range(*ip..=*ip).copied().collect()), old);
    }
    let (allow, exact) = (format!("{short}_allow"), format!("{short}_exact"));
    for pod in &d.triples {
        let (new_exact, new_cells) = pod_cells(*pod, pod_triples(dir, *pod));
        let old = get(&exact)?.range(exact_range(*pod)).copied().collect();
        diff(&exact, new_exact.into_iter().collect(), old);
        let old = get(&allow)?.range(cell_range(*pod)).copied().collect();
        diff(&allow, new_cells.into_iter().collect(), old);
    }
    for (key, pod) in &d.port_groups {
        let Ok(i) = dir.port_group_index(*key) else { continue };
        let name = port_group_set(short, *key);
        let targets = &dir.port_groups[i].targets;
        let new =
            targets.range((*pod, Protocol::Tcp, 0)..).take_while(|t| t.0 == *pod).map(pod_port).collect();
        let old = get(&name)?
            .range(Elem::PodPort(*pod, 0, 0)..=Elem::PodPort(*pod, u8::MAX, u16::MAX))
            .copied()
            .collect();
        diff(&name, new, old);
    }
    for (key, ports) in &d.groups {
        let Ok(i) = dir.group_index(*key, *ports) else { continue };
        let g = &dir.groups[i];
        let name = group_set(short, *key, *ports);
        diff(&name, addrs(&g.targets), get(&name)?.clone());
    }
    for key in &d.peers {
        let Some(nets) = dir.peers_of(*key) else { continue };
        let name = peer_set(short, *key);
        diff(&name, nets.iter().map(|n| Elem::Net(*n)).collect(), get(&name)?.clone());
    }
    Some(())
}

/// Every allow-set element of `pod`.
fn cell_range(pod: Ipv4Addr) -> std::ops::RangeInclusive<Elem> {
    let net = |a: Ipv4Addr, p: u8| Ipv4Network::new(a, p).unwrap_or_else(|_| Ipv4Network::from(a));
    Elem::Cell(pod, (0, 0), (0, 0), net(Ipv4Addr::UNSPECIFIED, 0))
        ..=Elem::Cell(pod, (u8::MAX, u8::MAX), (u16::MAX, u16::MAX), net(Ipv4Addr::BROADCAST, 32))
}

/// Every exact-set element of `pod`.
fn exact_range(pod: Ipv4Addr) -> std::ops::RangeInclusive<Elem> {
    Elem::Exact(pod, 0, 0, Ipv4Addr::UNSPECIFIED)..=Elem::Exact(pod, u8::MAX, u16::MAX, Ipv4Addr::BROADCAST)
}

/// Applies `changes` to the remembered `sets`.
pub fn remember(sets: &mut BTreeMap<String, BTreeSet<Elem>>, changes: &BTreeMap<String, SetChange>) {
    for (name, c) in changes {
        let Some(s) = sets.get_mut(name) else { continue };
        for e in &c.gone {
            s.remove(e);
        }
        s.extend(c.came.iter().copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::render;
    use crate::policy::incremental::tests::each_change;

    /// Elements patched change by change equal the elements rendered in full.
    #[test]
    fn patched_sets_equal_rendered_sets() {
        let (mut sets, mut patched) = (BTreeMap::new(), 0);
        each_change(200, 20, |ir, dirty, at| {
            if dirty.structural {
                sets = render(ir).sets;
                return;
            }
            let c = changes(ir, dirty, &sets).unwrap_or_else(|| panic!("{at}: a set was missing"));
            remember(&mut sets, &c);
            assert_eq!(sets, render(ir).sets, "{at}");
            patched += 1;
        });
        assert!(patched > 1000, "only {patched} changes were patches");
    }
}
