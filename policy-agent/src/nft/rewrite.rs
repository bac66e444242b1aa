//! ClusterNetworkPolicy's sets written again instead of patched. The
//! kernel deletes an element of an interval concatenation set (nft_pipapo)
//! in time that grows with the set, and with ClusterNetworkPolicy's sets,
//! which hold thousands of elements per subject, steeply: 50 deletions
//! from shard sets of about 3,000 elements took 0.8 s (about 4 us per
//! element held, for each element deleted), and an edit that deleted 1,700
//! went past the 10 s deadline. The kernel looks the element up from the
//! set's first element on, in the order they were added: in a set of
//! 3,000 (`nft -f`, this VM), 50 deletions of the first added took 25-39
//! ms, of the last added 0.8 s (3,000 subjects) to 2.1 s (one subject); and
//! pod churn deletes what was added last. A set deleted whole is freed at
//! once. So where a delta's deletions in one such set cost more than
//! filling it anew (`cheaper_again`), that set is deleted and added again
//! with its new elements, the chains that look it up flushed and filled
//! again around it, in the same transaction as the rest of the delta.
//! NetworkPolicy's interval sets stay element patches: their elements are
//! few per pod, and their deletions measured cheap (2,700 from one set of
//! tens of thousands in 60-110 ms). Pure: `kernel` runs what this builds.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use nftables::expr::Expression;
use nftables::schema::{FlushObject, NfCmd, NfListObject, NfObject, Nftables, Rule, Set};
use nftables::stmt::Statement;

use super::netlink::{Op, SetDelta};
use super::render::{is_cluster_shard, Elem};

/// What the kernel takes, measured on this VM (kernel 6.18) with
/// ClusterNetworkPolicy shard sets of 1,000-3,500 elements: to delete one
/// element, per element the set holds (us); to add one to a set written
/// anew (us); and `nft -j -f -` once around them (us). Deleting d of h
/// elements costs about d x h x 4 us, writing the set again h x 45 us: past
/// about 10-20 deletions, writing again is cheaper.
const DELETE_US_PER_HELD: usize = 4;
const ADD_US: usize = 45;
const NFT_US: usize = 40_000;

/// True if deleting `deletions` of the `held` elements of an interval
/// concatenation set costs more than writing it again.
fn cheaper_again(deletions: usize, held: usize) -> bool {
    deletions.saturating_mul(held).saturating_mul(DELETE_US_PER_HELD)
        > held.saturating_mul(ADD_US).saturating_add(NFT_US)
}

/// The sets of `changes` cheaper to write again than to patch:
/// ClusterNetworkPolicy's shard sets (interval concatenations, nft_pipapo,
/// looked up from their shard chains only) whose deletions cost more than
/// that (`cheaper_again`, given the elements `held`).
pub fn heavy<'a>(held: &BTreeMap<String, BTreeSet<Elem>>, changes: &[SetDelta<'a>]) -> BTreeSet<&'a str> {
    let mut deletions: BTreeMap<&'a str, usize> = BTreeMap::new();
    for d in changes.iter().filter(|d| d.op == Op::Delete && is_cluster_shard(d.set)) {
        *deletions.entry(d.set).or_default() += d.elems.len();
    }
    deletions.retain(|name, n| held.get(*name).is_some_and(|h| cheaper_again(*n, h.len())));
    deletions.into_keys().collect()
}

/// One transaction that applies `changes` to a table whose skeleton
/// (unchanged by them) is `skeleton` and whose sets hold `held`: the
/// chains looking up a `heavy` set flushed, each heavy set deleted and
/// added with its new elements, those chains' rules added back in order,
/// and the other sets' element deltas.
pub fn transaction(
    skeleton: &[NfListObject<'static>],
    held: &BTreeMap<String, BTreeSet<Elem>>,
    heavy: &BTreeSet<&str>,
    changes: &[SetDelta],
) -> Nftables<'static> {
    let chains = chains_looking_up(skeleton, |s| heavy.contains(s));
    let mut objects: Vec<NfObject<'static>> = skeleton
        .iter()
        .filter_map(|o| match o {
            NfListObject::Chain(c) if chains.contains(c.name.as_ref()) => {
                Some(NfObject::CmdObject(NfCmd::Flush(FlushObject::Chain(c.clone()))))
            }
            _ => None,
        })
        .collect();
    objects.extend(written_again(skeleton, held, heavy, changes));
    objects.extend(skeleton.iter().filter_map(|o| match o {
        NfListObject::Rule(r) if chains.contains(r.chain.as_ref()) => {
            Some(NfObject::CmdObject(NfCmd::Add(o.clone())))
        }
        _ => None,
    }));
    let rest: Vec<SetDelta> = changes.iter().filter(|d| !heavy.contains(d.set)).cloned().collect();
    objects.extend(super::kernel::element_transaction(&rest).objects.iter().cloned());
    Nftables { objects: Cow::Owned(objects) }
}

/// Each `heavy` set deleted and added with its elements after `changes`
/// (no rule may look it up at that point of the transaction).
pub fn written_again(
    skeleton: &[NfListObject<'static>],
    held: &BTreeMap<String, BTreeSet<Elem>>,
    heavy: &BTreeSet<&str>,
    changes: &[SetDelta],
) -> Vec<NfObject<'static>> {
    let mut out = Vec::new();
    for name in heavy {
        let Some(decl) = declaration(skeleton, name) else { continue };
        let mut elems: BTreeSet<&Elem> = held.get(*name).map(|h| h.iter().collect()).unwrap_or_default();
        for d in changes.iter().filter(|d| d.set == *name) {
            match d.op {
                Op::Delete => d.elems.iter().for_each(|e| {
                    elems.remove(e);
                }),
                Op::Add => elems.extend(d.elems.iter().copied()),
            }
        }
        let mut bare = Box::new(decl.clone());
        bare.elem = None;
        let mut filled = bare.clone();
        if !elems.is_empty() {
            filled.elem = Some(Cow::Owned(elems.into_iter().map(Elem::expr).collect()));
        }
        out.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Set(bare))));
        out.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Set(filled))));
    }
    out
}

/// Set `name`'s declaration in `skeleton`.
fn declaration<'s>(skeleton: &'s [NfListObject<'static>], name: &str) -> Option<&'s Set<'static>> {
    skeleton.iter().find_map(|o| match o {
        NfListObject::Set(s) if s.name == name => Some(s.as_ref()),
        _ => None,
    })
}

/// The chains with a rule that looks up a set `wanted` picks.
fn chains_looking_up(skeleton: &[NfListObject<'static>], wanted: impl Fn(&str) -> bool) -> BTreeSet<String> {
    skeleton
        .iter()
        .filter_map(|o| match o {
            NfListObject::Rule(r) if looks_up(r, &wanted) => Some(r.chain.to_string()),
            _ => None,
        })
        .collect()
}

/// True if `rule` matches against a set `wanted` picks (`@name`, as `render` writes lookups).
fn looks_up(rule: &Rule, wanted: &impl Fn(&str) -> bool) -> bool {
    rule.expr.iter().any(|s| match s {
        Statement::Match(m) => {
            matches!(&m.right, Expression::String(r) if r.strip_prefix('@').is_some_and(wanted))
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use ipnetwork::Ipv4Network;

    use super::*;
    use crate::model::{Action, Protocol};
    use crate::nft::render;
    use crate::policy::{Cell, Class, PolicyIr, Region};

    /// Pod 10.244.1.2 denied UDP 1000 from `n` /30s by an Admin CNP (elements
    /// of the interval set `cnp_ain_deny_2`), and admitting UDP from each of
    /// them by NetworkPolicy (cells of the interval set `in_allow_2`).
    fn ir(n: u32) -> PolicyIr {
        let a = Ipv4Addr::new(10, 244, 1, 2);
        let peers: Vec<Ipv4Network> =
            (0..n).map(|i| Ipv4Network::new(Ipv4Addr::from(0x0a0a_0000 + i * 4), 30).unwrap()).collect();
        let mut ir = PolicyIr::default();
        ir.v4.local.insert(a);
        ir.v4.ingress.isolated.insert(a);
        for (port, peer) in (1000..).zip(&peers) {
            ir.v4.ingress.triples.insert((a, Protocol::Udp, port, *peer));
        }
        let cells = vec![Cell::Ports(Protocol::Udp, 1000, 1000)];
        let deny = Region { action: Action::Deny, cells, peers };
        ir.v4.cluster.admin_ingress =
            vec![Class { subjects: [a].into(), regions: vec![deny], unknown: vec![], key: 1 }];
        ir
    }

    fn deletions<'a>(old: &'a render::NftRendered, new: &render::NftRendered) -> Vec<SetDelta<'a>> {
        old.sets
            .iter()
            .map(|(name, elems)| SetDelta {
                set: name,
                op: Op::Delete,
                elems: elems.iter().filter(|e| !new.sets[name].contains(e)).collect(),
            })
            .filter(|d| !d.elems.is_empty())
            .collect()
    }

    #[test]
    fn only_cluster_sets_with_costly_deletions_are_written_again() {
        let old = render(&ir(600));
        let few = deletions(&old, &render(&ir(590)));
        assert!(heavy(&old.sets, &few).is_empty(), "10 deletions are cheaper");
        let many = deletions(&old, &render(&ir(100)));
        assert!(many.iter().any(|d| d.set == "in_allow_2" && d.elems.len() == 500), "{many:?}");
        assert_eq!(heavy(&old.sets, &many), ["cnp_ain_deny_2"].into(), "not NetworkPolicy's");

        let heavy = heavy(&old.sets, &many);
        let tx = transaction(&old.skeleton, &old.sets, &heavy, &many);
        let json = serde_json::to_value(&tx).unwrap();
        let commands: Vec<String> = json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let (verb, what) = c.as_object().unwrap().iter().next().unwrap();
                let (kind, body) = what.as_object().unwrap().iter().next().unwrap();
                let name = body.get("name").or(body.get("chain")).and_then(|n| n.as_str()).unwrap_or("");
                format!("{verb} {kind} {name}")
            })
            .collect();
        assert_eq!(
            commands,
            [
                "flush chain cnp_ain_2",
                "delete set cnp_ain_deny_2",
                "add set cnp_ain_deny_2",
                "add rule cnp_ain_2",
                "add rule cnp_ain_2",
                "add rule cnp_ain_2",
                "add rule cnp_ain_2",
                "add rule cnp_ain_2",
                "delete element in_allow_2",
            ]
        );
        let filled = &json["nftables"][2]["add"]["set"]["elem"];
        assert_eq!(filled.as_array().unwrap().len(), 100, "the set's elements after the delta");
    }
}
