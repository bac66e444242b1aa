//! The union of the policies' contributions to one direction, with a
//! reference count per element, kept in step with the IR's `Direction`: an
//! element enters the IR when its first contribution comes and leaves with
//! its last. Each entry and exit is recorded in a `DirtyDirection`, so the
//! backends patch only what changed. Pure.

use std::collections::BTreeMap;

use super::compile::{Nets, Part, PodPort};
use super::family::Family;
use super::ir::{Direction, DirtyDirection, Group, GroupPorts, PeerKey, PortGroup, Triple};

/// Elements with how many contributions hold each.
#[derive(Debug, Clone)]
pub(crate) struct Counted<T: Ord>(BTreeMap<T, u32>);

impl<T: Ord> Default for Counted<T> {
    fn default() -> Self {
        Counted(BTreeMap::new())
    }
}

impl<T: Ord + Clone> Counted<T> {
    /// Counts one more; true if `t` was not held before.
    pub fn inc(&mut self, t: &T) -> bool {
        let n = self.0.entry(t.clone()).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Counts one less; true if `t` is no longer held.
    pub fn dec(&mut self, t: &T) -> bool {
        match self.0.get_mut(t) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.0.remove(t);
                true
            }
            None => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One direction's contributions, counted.
#[derive(Debug, Clone)]
pub(crate) struct DirAgg<A: Family> {
    isolated: Counted<A>,
    triples: Counted<Triple<A>>,
    port_groups: BTreeMap<PeerKey, Counted<PodPort<A>>>,
    groups: BTreeMap<(PeerKey, GroupPorts), Counted<A>>,
    /// The networks of each group key, and how many parts name it.
    nets: BTreeMap<PeerKey, (Nets<A>, u32)>,
}

impl<A: Family> Default for DirAgg<A> {
    fn default() -> Self {
        DirAgg {
            isolated: Counted::default(),
            triples: Counted::default(),
            port_groups: BTreeMap::new(),
            groups: BTreeMap::new(),
            nets: BTreeMap::new(),
        }
    }
}

impl<A: Family> DirAgg<A> {
    /// Adds `part` to the union and to `out`; true if a group or port group came.
    pub fn add(&mut self, part: &Part<A>, out: &mut Direction<A>, dirty: &mut DirtyDirection<A>) -> bool {
        for (key, nets) in &part.nets {
            let e = self.nets.entry(*key).or_insert_with(|| (nets.clone(), 0));
            e.1 += 1;
            if e.0 != *nets {
                e.0 = nets.clone();
                set_peers(out, *key, nets, dirty);
            }
        }
        let mut structural = false;
        for ip in &part.isolated {
            if self.isolated.inc(ip) {
                out.isolated.insert(*ip);
                dirty.isolated.insert(*ip);
            }
        }
        for t in &part.triples {
            if self.triples.inc(t) {
                out.triples.insert(*t);
                dirty.triples.insert(t.0);
            }
        }
        for (key, target) in &part.port_groups {
            let counted = self.port_groups.entry(*key).or_default();
            if counted.is_empty() {
                let peers = self.nets.get(key).map(|(n, _)| n.to_vec()).unwrap_or_default();
                let at = out.port_group_index(*key).unwrap_or_else(|i| i);
                out.port_groups.insert(at, PortGroup { key: *key, targets: Default::default(), peers });
                structural = true;
            }
            if counted.inc(target) {
                if let Ok(i) = out.port_group_index(*key) {
                    out.port_groups[i].targets.insert(*target);
                }
                dirty.port_groups.insert((*key, target.0));
            }
        }
        for (key, ports, ip) in &part.groups {
            let counted = self.groups.entry((*key, *ports)).or_default();
            if counted.is_empty() {
                let peers = self.nets.get(key).map(|(n, _)| n.to_vec()).unwrap_or_default();
                let at = out.group_index(*key, *ports).unwrap_or_else(|i| i);
                let g = Group { key: *key, targets: Default::default(), peers, ports: *ports };
                out.groups.insert(at, g);
                structural = true;
            }
            if counted.inc(ip) {
                if let Ok(i) = out.group_index(*key, *ports) {
                    out.groups[i].targets.insert(*ip);
                }
                dirty.groups.insert((*key, *ports));
            }
        }
        structural
    }

    /// Takes `part` (added earlier) out of the union and of `out`; true if a
    /// group or port group went.
    pub fn remove(&mut self, part: &Part<A>, out: &mut Direction<A>, dirty: &mut DirtyDirection<A>) -> bool {
        let mut structural = false;
        for ip in &part.isolated {
            if self.isolated.dec(ip) {
                out.isolated.remove(ip);
                dirty.isolated.insert(*ip);
            }
        }
        for t in &part.triples {
            if self.triples.dec(t) {
                out.triples.remove(t);
                dirty.triples.insert(t.0);
            }
        }
        for (key, target) in &part.port_groups {
            let Some(counted) = self.port_groups.get_mut(key) else { continue };
            if !counted.dec(target) {
                continue;
            }
            dirty.port_groups.insert((*key, target.0));
            let Ok(i) = out.port_group_index(*key) else { continue };
            out.port_groups[i].targets.remove(target);
            if counted.is_empty() {
                self.port_groups.remove(key);
                out.port_groups.remove(i);
                structural = true;
            }
        }
        for (key, ports, ip) in &part.groups {
            let Some(counted) = self.groups.get_mut(&(*key, *ports)) else { continue };
            if !counted.dec(ip) {
                continue;
            }
            dirty.groups.insert((*key, *ports));
            let Ok(i) = out.group_index(*key, *ports) else { continue };
            out.groups[i].targets.remove(ip);
            if counted.is_empty() {
                self.groups.remove(&(*key, *ports));
                out.groups.remove(i);
                structural = true;
            }
        }
        for key in part.nets.keys() {
            if let Some(e) = self.nets.get_mut(key) {
                e.1 -= 1;
                if e.1 == 0 {
                    self.nets.remove(key);
                }
            }
        }
        structural
    }

    /// The peers of `key` now resolve to `nets` (its users did not need a
    /// recompile): every group and port group of the key gets them.
    pub fn renet(
        &mut self,
        key: PeerKey,
        nets: &Nets<A>,
        out: &mut Direction<A>,
        dirty: &mut DirtyDirection<A>,
    ) {
        if let Some(e) = self.nets.get_mut(&key) {
            if e.0 != *nets {
                e.0 = nets.clone();
                set_peers(out, key, nets, dirty);
            }
        }
    }
}

fn set_peers<A: Family>(out: &mut Direction<A>, key: PeerKey, nets: &Nets<A>, dirty: &mut DirtyDirection<A>) {
    let mut touched = false;
    if let Ok(i) = out.port_group_index(key) {
        out.port_groups[i].peers = nets.to_vec();
        touched = true;
    }
    let from = out.groups.partition_point(|g| g.key < key);
    for g in out.groups[from..].iter_mut().take_while(|g| g.key == key) {
        g.peers = nets.to_vec();
        touched = true;
    }
    if touched {
        dirty.peers.insert(key);
    }
}
