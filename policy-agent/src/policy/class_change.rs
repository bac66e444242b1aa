//! What changed inside a ClusterNetworkPolicy class from one version to the
//! next, down to subjects and peers: a pod added anywhere changes the peers
//! of many classes by one address, and a backend should write that address,
//! not the classes again. Pure; the backends turn it into elements, members
//! and set changes, and their patch property tests check the result against
//! a full render.

use std::collections::BTreeMap;

use super::family::{anywhere, Family};
use super::ir::{Cell, Class, ClassDelta, Region};
use crate::model::Action;

/// Two versions of one thing, before and now.
type Pair<T> = (Option<T>, Option<T>);

/// Elements that went or came: every subject, on every cell, to every peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block<'a, A: Family> {
    pub action: Action,
    pub cells: &'a [Cell],
    pub subjects: Vec<A>,
    pub peers: Vec<A::Net>,
}

/// A region's two versions (same action and cells), and its peers that
/// went and came when it has both.
#[derive(Debug)]
pub struct RegionChange<'a, A: Family> {
    pub before: Option<&'a Region<A>>,
    pub now: Option<&'a Region<A>>,
    pub peers_gone: Vec<A::Net>,
    pub peers_came: Vec<A::Net>,
}

/// A class's two versions (same key; None: it came or went).
#[derive(Debug)]
pub struct ClassChange<'a, A: Family> {
    pub before: Option<&'a Class<A>>,
    pub now: Option<&'a Class<A>>,
    pub subjects_gone: Vec<A>,
    pub subjects_came: Vec<A>,
    subjects_kept: Vec<A>,
    pub regions: Vec<RegionChange<'a, A>>,
}

impl<A: Family> ClassDelta<A> {
    /// The classes that went and came, paired by key.
    pub fn changes(&self) -> Vec<ClassChange<'_, A>> {
        let mut pairs: BTreeMap<u64, Pair<&Class<A>>> = BTreeMap::new();
        for c in &self.gone {
            pairs.entry(c.key).or_default().0 = Some(c);
        }
        for c in &self.came {
            pairs.entry(c.key).or_default().1 = Some(c);
        }
        pairs.into_values().map(|(before, now)| ClassChange::of(before, now)).collect()
    }
}

impl<'a, A: Family> ClassChange<'a, A> {
    fn of(before: Option<&'a Class<A>>, now: Option<&'a Class<A>>) -> ClassChange<'a, A> {
        let subjects = |c: Option<&'a Class<A>>| c.map(|c| c.subjects.iter().copied().collect::<Vec<A>>());
        let (b, n) = (subjects(before).unwrap_or_default(), subjects(now).unwrap_or_default());
        let (subjects_gone, subjects_came) = sorted_diff(&b, &n);
        let subjects_kept = b.into_iter().filter(|s| now.is_some_and(|c| c.subjects.contains(s))).collect();
        let mut regions: BTreeMap<(Action, &[Cell]), Pair<&Region<A>>> = BTreeMap::new();
        for r in before.iter().flat_map(|c| &c.regions) {
            regions.entry((r.action, &r.cells)).or_default().0 = Some(r);
        }
        for r in now.iter().flat_map(|c| &c.regions) {
            regions.entry((r.action, &r.cells)).or_default().1 = Some(r);
        }
        let regions = regions
            .into_values()
            .map(|(before, now)| {
                let (peers_gone, peers_came) = match (before, now) {
                    (Some(b), Some(n)) => sorted_diff(&b.peers, &n.peers),
                    _ => (Vec::new(), Vec::new()),
                };
                RegionChange { before, now, peers_gone, peers_came }
            })
            .collect();
        ClassChange { before, now, subjects_gone, subjects_came, subjects_kept, regions }
    }

    /// The elements of the regions that `spelled` says are spelled out as
    /// elements (given the class and the region) that went, and that came.
    pub fn blocks(&self, spelled: impl Fn(&Class<A>, &Region<A>) -> bool) -> [Vec<Block<'a, A>>; 2] {
        let mut out = [Vec::new(), Vec::new()];
        for r in &self.regions {
            let b = r.before.filter(|r| self.before.is_some_and(|c| spelled(c, r)));
            let n = r.now.filter(|r| self.now.is_some_and(|c| spelled(c, r)));
            self.push(
                &mut out,
                b.map(|r| (r.action, &r.cells[..], &r.peers[..])),
                n.map(|r| (r.action, &r.cells[..], &r.peers[..])),
                (&r.peers_gone, &r.peers_came),
            );
        }
        out
    }

    /// The elements for pods not known yet (`Class::unknown`, to anywhere)
    /// that went, and that came.
    pub fn unknown_blocks(&self) -> [Vec<Block<'a, A>>; 2] {
        let mut out = [Vec::new(), Vec::new()];
        let all = [anywhere::<A>()];
        let cells = |c: Option<&'a Class<A>>| c.filter(|c| !c.unknown.is_empty()).map(|c| &c.unknown[..]);
        let (b, n) = (cells(self.before), cells(self.now));
        self.push(
            &mut out,
            b.map(|c| (Action::Deny, c, &all[..])),
            n.map(|c| (Action::Deny, c, &all[..])),
            (&[], &[]),
        );
        out
    }

    /// Adds to `out` (went, came) what turns a region spelled `before` into
    /// one spelled `now`: the same region keeps what both subjects and peers
    /// kept; `moved` are its peers that went and came.
    #[allow(clippy::type_complexity)]
    fn push(
        &self,
        out: &mut [Vec<Block<'a, A>>; 2],
        before: Option<(Action, &'a [Cell], &[A::Net])>,
        now: Option<(Action, &'a [Cell], &[A::Net])>,
        moved: (&[A::Net], &[A::Net]),
    ) {
        let mut block = |i: usize,
                         (action, cells, _): (Action, &'a [Cell], &[A::Net]),
                         subjects: &[A],
                         peers: &[A::Net]| {
            if !subjects.is_empty() && !peers.is_empty() {
                out[i].push(Block { action, cells, subjects: subjects.to_vec(), peers: peers.to_vec() });
            }
        };
        match (before, now) {
            // The same cells and action (regions pair by them; unknown cells compared here).
            (Some(b), Some(n)) if b.1 == n.1 => {
                block(0, b, &self.subjects_gone, b.2);
                block(1, n, &self.subjects_came, n.2);
                block(0, b, &self.subjects_kept, moved.0);
                block(1, n, &self.subjects_kept, moved.1);
            }
            (b, n) => {
                let all = |c: Option<&'a Class<A>>| {
                    c.map(|c| c.subjects.iter().copied().collect::<Vec<A>>()).unwrap_or_default()
                };
                if let Some(b) = b {
                    block(0, b, &all(self.before), b.2);
                }
                if let Some(n) = n {
                    block(1, n, &all(self.now), n.2);
                }
            }
        }
    }
}

/// What `a` has that `b` has not, and the other way round (both sorted).
fn sorted_diff<T: Ord + Copy>(a: &[T], b: &[T]) -> (Vec<T>, Vec<T>) {
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                only_a.push(*x);
                i += 1;
            }
            (Some(x), None) => {
                only_a.push(*x);
                i += 1;
            }
            (_, Some(y)) => {
                only_b.push(*y);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (only_a, only_b)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::Protocol;

    type Net = <Ipv4Addr as Family>::Net;

    fn net(s: &str) -> Net {
        s.parse().unwrap()
    }

    fn class(subjects: &[u8], regions: Vec<Region<Ipv4Addr>>) -> Class<Ipv4Addr> {
        Class {
            subjects: subjects.iter().map(|&n| Ipv4Addr::new(10, 0, 0, n)).collect(),
            regions,
            unknown: vec![Cell::Ports(Protocol::Tcp, 80, 80)],
            key: 7,
        }
    }

    fn region(action: Action, port: u16, peers: &[&str]) -> Region<Ipv4Addr> {
        Region {
            action,
            cells: vec![Cell::Ports(Protocol::Tcp, port, port)],
            peers: peers.iter().map(|p| net(p)).collect(),
        }
    }

    /// Every (subject, cell, peer, action) a class spells out.
    fn elements(c: Option<&Class<Ipv4Addr>>) -> BTreeSet<(Ipv4Addr, Cell, Net, Action)> {
        c.iter()
            .flat_map(|c| {
                c.regions.iter().flat_map(move |r| {
                    c.subjects.iter().flat_map(move |s| {
                        r.cells
                            .iter()
                            .flat_map(move |cell| r.peers.iter().map(move |p| (*s, *cell, *p, r.action)))
                    })
                })
            })
            .collect()
    }

    fn of_blocks(blocks: &[Block<Ipv4Addr>]) -> BTreeSet<(Ipv4Addr, Cell, Net, Action)> {
        blocks
            .iter()
            .flat_map(|b| {
                b.subjects.iter().flat_map(move |s| {
                    b.cells.iter().flat_map(move |c| b.peers.iter().map(move |p| (*s, *c, *p, b.action)))
                })
            })
            .collect()
    }

    /// Applying the blocks to the elements before gives the elements now,
    /// and the blocks are only what changed.
    fn check(before: Option<Class<Ipv4Addr>>, now: Option<Class<Ipv4Addr>>) -> usize {
        let delta = ClassDelta {
            tier: crate::model::Tier::Admin,
            ingress: true,
            gone: before.iter().cloned().collect(),
            came: now.iter().cloned().collect(),
        };
        let changes = delta.changes();
        assert_eq!(changes.len(), 1);
        let [gone, came] = changes[0].blocks(|_, _| true);
        let (gone, came) = (of_blocks(&gone), of_blocks(&came));
        let (b, n) = (elements(before.as_ref()), elements(now.as_ref()));
        let after: BTreeSet<_> = b.difference(&gone).chain(&came).copied().collect();
        assert_eq!(after, n);
        assert!(gone.is_subset(&b) && came.is_subset(&n));
        gone.len() + came.len()
    }

    #[test]
    fn a_peer_that_joins_is_one_element_per_subject_and_cell() {
        let before = class(&[1, 2], vec![region(Action::Deny, 80, &["10.1.0.1/32", "10.1.0.3/32"])]);
        let now =
            class(&[1, 2], vec![region(Action::Deny, 80, &["10.1.0.1/32", "10.1.0.3/32", "10.1.0.5/32"])]);
        assert_eq!(check(Some(before), Some(now)), 2);
    }

    #[test]
    fn subjects_and_peers_that_come_and_go_and_regions_that_move() {
        let before = class(
            &[1, 2, 3],
            vec![region(Action::Deny, 80, &["10.1.0.0/31"]), region(Action::Accept, 81, &["10.1.0.4/32"])],
        );
        let now = class(
            &[2, 3, 4],
            vec![
                region(Action::Deny, 80, &["10.1.0.0/32", "10.1.0.2/32"]),
                region(Action::Pass, 81, &["10.1.0.4/32"]),
            ],
        );
        check(Some(before.clone()), Some(now.clone()));
        check(Some(before.clone()), None);
        check(None, Some(now));
        assert_eq!(check(Some(before.clone()), Some(before)), 0);
    }

    #[test]
    fn unknown_cells_follow_the_subjects() {
        let before = class(&[1, 2], vec![]);
        let mut now = class(&[2, 3], vec![]);
        let delta = ClassDelta {
            tier: crate::model::Tier::Admin,
            ingress: true,
            gone: vec![before.clone()],
            came: vec![now.clone()],
        };
        let [gone, came] = delta.changes()[0].unknown_blocks();
        assert_eq!(
            (gone[0].subjects.clone(), came[0].subjects.clone()),
            (vec![Ipv4Addr::new(10, 0, 0, 1)], vec![Ipv4Addr::new(10, 0, 0, 3)])
        );
        now.unknown = vec![Cell::Other];
        let delta = ClassDelta {
            tier: crate::model::Tier::Admin,
            ingress: true,
            gone: vec![before],
            came: vec![now],
        };
        let [gone, came] = delta.changes()[0].unknown_blocks();
        assert_eq!((gone[0].subjects.len(), came[0].subjects.len()), (2, 2), "other cells: all of them");
    }

    #[test]
    fn sorted_lists_differ_both_ways() {
        assert_eq!(sorted_diff(&[1, 3, 5, 7], &[2, 3, 7, 8]), (vec![1, 5], vec![2, 8]));
        assert_eq!(sorted_diff::<u8>(&[], &[1]), (vec![], vec![1]));
    }
}
