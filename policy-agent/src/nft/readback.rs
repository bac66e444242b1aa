//! weft's table read back over nf_tables netlink, for a resync that checks
//! the kernel instead of rewriting it: `nft -j list` of a 70k-element table
//! takes a second, these dumps milliseconds. Elements come back as the keys
//! the kernel holds (`netlink::kernel_elems` encodes the rendered ones the
//! same way, so no decoding is needed); chains, rules and set declarations
//! as a fingerprint of their dump, to compare with the one taken right after
//! weft last wrote them.
//!
//! Numbers: include/uapi/linux/netfilter/nf_tables.h; the dumps:
//! nf_tables_dump_{chains,rules,sets,set} in net/netfilter/nf_tables_api.c.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use weft_netkit::netlink_attrs::Attrs;
use weft_netkit::nfnl_dump::{put_attr, DumpSocket};

use super::netlink::{
    kernel_elems, KernelElem, NetlinkError, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFTA_DATA_VALUE,
    NFTA_LIST_ELEM, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_KEY_END,
    NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET, NFT_SET_ELEM_INTERVAL_END,
};
use super::render::Elem;

const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_GETSETELEM: u16 = 13;
/// NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE.
const ATTR_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_COUNT: u16 = 20;
/// The whole read-back must finish within this.
const DEADLINE: Duration = Duration::from_secs(5);

/// An element as the kernel holds it: (key, key end, interval end).
pub type Key = (Vec<u8>, Option<Vec<u8>>, bool);

/// The table as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelTable {
    /// Of its chains, rules and set declarations, in dump order (handles
    /// included: a rule deleted and added again is drift too).
    pub skeleton: u64,
    /// Set name -> its elements.
    pub sets: BTreeMap<String, BTreeSet<Key>>,
}

/// The keys that hold `elems` (as `netlink::kernel_elems` writes them).
pub fn keys(elems: &BTreeSet<Elem>) -> BTreeSet<Key> {
    elems.iter().flat_map(elem_keys).collect()
}

/// The keys that hold one element (an interval takes a start and an end).
pub fn elem_keys(elem: &Elem) -> impl Iterator<Item = Key> {
    kernel_elems(elem).into_iter().map(|k: KernelElem| (k.key, k.key_end, k.interval_end))
}

/// Reads table `table` (family inet) from the calling thread's netns; its
/// sets' elements only `with_elements`.
pub fn read(table: &str, with_elements: bool) -> Result<KernelTable, NetlinkError> {
    let mut r = DumpSocket::open(DEADLINE).map_err(NetlinkError::Socket)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut set_names = Vec::new();
    for kind in [NFT_MSG_GETCHAIN, NFT_MSG_GETSET, NFT_MSG_GETRULE] {
        for body in dump(&mut r, kind, table, None)? {
            // Dumps of chains and sets may cover every table of the family.
            if text_attr(&body, ATTR_TABLE).as_deref() != Some(table) {
                continue;
            }
            if kind == NFT_MSG_GETSET {
                set_names.extend(text_attr(&body, NFTA_SET_NAME));
            }
            kind.hash(&mut hasher);
            // A set's element count changes with its elements, which are compared apart.
            for (t, v) in Attrs(&body).filter(|(t, _)| kind != NFT_MSG_GETSET || *t != NFTA_SET_COUNT) {
                (t, v).hash(&mut hasher);
            }
        }
    }
    let mut sets = BTreeMap::new();
    // Anonymous sets and maps (`icmpv6 type { .. }`, the shards' verdict
    // map) are part of their rule: always read, and fingerprinted whole
    // (a map's verdicts with its keys).
    let anonymous = |name: &str| name.starts_with("__");
    for name in set_names.into_iter().filter(|n| with_elements || anonymous(n)) {
        let (mut elems, mut whole) = (BTreeSet::new(), BTreeSet::new());
        for body in dump(&mut r, NFT_MSG_GETSETELEM, table, Some(&name))? {
            for (t, list) in Attrs(&body) {
                if t == NFTA_SET_ELEM_LIST_ELEMENTS {
                    for (_, e) in Attrs(list).filter(|(t, _)| *t == NFTA_LIST_ELEM) {
                        if anonymous(&name) {
                            whole.insert(e.to_vec());
                        } else {
                            elems.insert(key(e));
                        }
                    }
                }
            }
        }
        if anonymous(&name) {
            (&name, &whole).hash(&mut hasher);
        } else {
            // nft closes the gap before an interval set's first element with an
            // interval end at address zero, which netlink deltas do not write:
            // the same set either way.
            elems.retain(|(k, end, interval_end)| {
                !(*interval_end && end.is_none() && k.iter().all(|b| *b == 0))
            });
            sets.insert(name, elems);
        }
    }
    Ok(KernelTable { skeleton: hasher.finish(), sets })
}

/// One element's key, key end and interval-end flag.
fn key(elem: &[u8]) -> Key {
    let value = |nest: &[u8]| Attrs(nest).find(|(t, _)| *t == NFTA_DATA_VALUE).map(|(_, v)| v.to_vec());
    let (mut k, mut end, mut interval_end) = (Vec::new(), None, false);
    for (t, v) in Attrs(elem) {
        match t {
            NFTA_SET_ELEM_KEY => k = value(v).unwrap_or_default(),
            NFTA_SET_ELEM_KEY_END => end = value(v),
            NFTA_SET_ELEM_FLAGS => {
                let flags = v.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                interval_end = flags & NFT_SET_ELEM_INTERVAL_END != 0;
            }
            _ => {}
        }
    }
    (k, end, interval_end)
}

/// The bodies of the answers to one dump of `kind` for `table` (and `set`).
fn dump(
    sock: &mut DumpSocket,
    kind: u16,
    table: &str,
    set: Option<&str>,
) -> Result<Vec<Vec<u8>>, NetlinkError> {
    let mut attrs = Vec::new();
    put_attr(&mut attrs, ATTR_TABLE, &strz(table));
    if let Some(set) = set {
        put_attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &strz(set));
    }
    sock.dump((NFNL_SUBSYS_NFTABLES << 8) | kind, NFPROTO_INET, &attrs).map_err(NetlinkError::Recv)
}

fn strz(s: &str) -> Vec<u8> {
    [s.as_bytes(), &[0]].concat()
}

fn text_attr(attrs: &[u8], kind: u16) -> Option<String> {
    Attrs(attrs)
        .find(|(t, _)| *t == kind)
        .map(|(_, v)| String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default()).into_owned())
}
