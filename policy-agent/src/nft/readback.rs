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
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use weft_netkit::netlink_attrs::{Attrs, NLMSG_DONE, NLM_F_DUMP};

use super::netlink::{
    kernel_elems, KernelElem, NetlinkError, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFTA_DATA_VALUE,
    NFTA_LIST_ELEM, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_KEY_END,
    NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET, NFT_SET_ELEM_INTERVAL_END, NLMSG_ERROR,
    NLM_F_REQUEST,
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
/// At most this much dump data is read.
const MAX_BYTES: usize = 512 << 20;

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
    elems.iter().flat_map(kernel_elems).map(|k: KernelElem| (k.key, k.key_end, k.interval_end)).collect()
}

/// Reads table `table` (family inet) from the calling thread's netns; its
/// sets' elements only `with_elements`.
pub fn read(table: &str, with_elements: bool) -> Result<KernelTable, NetlinkError> {
    let mut r = Reader::open()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut set_names = Vec::new();
    for kind in [NFT_MSG_GETCHAIN, NFT_MSG_GETSET, NFT_MSG_GETRULE] {
        for body in r.dump(kind, table, None)? {
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
    // Anonymous sets (`icmpv6 type { .. }`) are part of their rule: always read.
    for name in set_names.into_iter().filter(|n| with_elements || n.starts_with("__set")) {
        let mut elems = BTreeSet::new();
        for body in r.dump(NFT_MSG_GETSETELEM, table, Some(&name))? {
            for (t, list) in Attrs(&body) {
                if t == NFTA_SET_ELEM_LIST_ELEMENTS {
                    elems.extend(Attrs(list).filter(|(t, _)| *t == NFTA_LIST_ELEM).map(|(_, e)| key(e)));
                }
            }
        }
        // nft closes the gap before an interval set's first element with an
        // interval end at address zero, which netlink deltas do not write:
        // the same set either way.
        elems.retain(|(k, end, interval_end)| !(*interval_end && end.is_none() && k.iter().all(|b| *b == 0)));
        if name.starts_with("__set") {
            (&name, &elems).hash(&mut hasher);
        } else {
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

/// A blocking dump socket with one deadline for everything it reads.
struct Reader {
    sock: Socket,
    seq: u32,
    deadline: Instant,
    read: usize,
}

impl Reader {
    fn open() -> Result<Reader, NetlinkError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(NetlinkError::Socket)?;
        sock.bind_auto().map_err(NetlinkError::Socket)?;
        Ok(Reader { sock, seq: 1, deadline: Instant::now() + DEADLINE, read: 0 })
    }

    /// The bodies (after nfgenmsg, which holds the ruleset generation) of
    /// every message one dump of `kind` answers.
    fn dump(&mut self, kind: u16, table: &str, set: Option<&str>) -> Result<Vec<Vec<u8>>, NetlinkError> {
        self.seq += 1;
        let mut msg = Vec::with_capacity(64);
        msg.extend(0u32.to_ne_bytes());
        msg.extend(((NFNL_SUBSYS_NFTABLES << 8) | kind).to_ne_bytes());
        msg.extend((NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        msg.extend(self.seq.to_ne_bytes());
        msg.extend(0u32.to_ne_bytes());
        msg.extend([NFPROTO_INET, 0, 0, 0]);
        put_str(&mut msg, ATTR_TABLE, table);
        if let Some(set) = set {
            put_str(&mut msg, NFTA_SET_ELEM_LIST_SET, set);
        }
        let len = msg.len() as u32;
        msg[..4].copy_from_slice(&len.to_ne_bytes());
        self.sock.send(&msg, 0).map_err(NetlinkError::Send)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::ZERO);
            let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => return Err(NetlinkError::Timeout(DEADLINE)),
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(NetlinkError::Recv(e.into())),
            }
            let n = self.sock.recv(&mut &mut buf[..], 0).map_err(NetlinkError::Recv)?;
            self.read += n;
            if self.read > MAX_BYTES {
                return Err(NetlinkError::Malformed("a dump larger than 512 MiB"));
            }
            if messages(&buf[..n], self.seq, &mut out)? {
                return Ok(out);
            }
        }
    }
}

/// Collects the bodies of `buf`'s messages of dump `seq`; true at its end.
fn messages(buf: &[u8], seq: u32, out: &mut Vec<Vec<u8>>) -> Result<bool, NetlinkError> {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < 16 || off + len > buf.len() {
            return Err(NetlinkError::Malformed("a message longer than what was received"));
        }
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let their_seq = u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
        let body = &buf[off + 16..off + len];
        off += len.next_multiple_of(4);
        if their_seq != seq {
            continue;
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = body.get(..4).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                if code != 0 {
                    let errno = nix::errno::Errno::from_raw(-code);
                    return Err(NetlinkError::Commit { errno, detail: " (reading the table back)".into() });
                }
            }
            _ => out.extend(body.get(4..).map(<[u8]>::to_vec)),
        }
    }
    Ok(false)
}

fn put_str(msg: &mut Vec<u8>, kind: u16, s: &str) {
    msg.extend(((4 + s.len() + 1) as u16).to_ne_bytes());
    msg.extend(kind.to_ne_bytes());
    msg.extend(s.as_bytes());
    msg.push(0);
    msg.resize(msg.len().next_multiple_of(4), 0);
}

fn text_attr(attrs: &[u8], kind: u16) -> Option<String> {
    Attrs(attrs)
        .find(|(t, _)| *t == kind)
        .map(|(_, v)| String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default()).into_owned())
}
