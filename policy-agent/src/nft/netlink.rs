//! Set element deltas of weft's table straight over nf_tables netlink, without
//! `nft`: nft 1.0.6 reloads its cache on every command (a process, the set
//! list, interval sets' elements), libnftables in process reloads all but
//! hash sets' elements, and one batch of NEWSETELEM/DELSETELEM messages costs
//! only what the kernel does: 0.025 ms for 5 elements of hash and address
//! sets at 68k elements (examples/nft_delta.rs). Deleting from an interval
//! concatenation set costs kernel time that grows with the set, by any path.
//! The table, its sets and chains are still written by `nft -j -f -` (kernel.rs).
//!
//! - One batch (NFNL_MSG_BATCH_BEGIN .. END) per apply: nfnetlink commits all
//!   of it or, on any refused message, none (nfnetlink_rcv_batch).
//! - Every element message asks for an ACK, so each is answered; a failed
//!   commit comes as an error on BATCH_BEGIN's sequence number. The batch is
//!   processed inside sendmsg, so the answers are queued when it returns; the
//!   wait for them is still bounded by a deadline.
//! - Keys are laid out as the set's data: each field of a concatenation takes a
//!   multiple of 4 bytes (one 32-bit register), numbers in network order. An
//!   interval set of addresses holds a start element and an INTERVAL_END
//!   element at the first address after the network (none when the network
//!   reaches the family's last address), as nft writes them; a concatenation with ranges
//!   holds one element with KEY (the lows) and KEY_END (the highs).
//! - The socket is opened in the netns of the thread that first applies a
//!   delta (the agent's loop, as for the `nft` children of the JSON path)
//!   and kept: closing it after a commit would wait for an RCU grace period.
//!
//! Numbers: include/uapi/linux/netfilter/nf_tables.h and nfnetlink.h; element
//! checks: nft_add_set_elem in net/netfilter/nf_tables_api.c.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use weft_netkit::netlink_attrs::{NLA_F_NESTED, NLMSG_ERROR, NLM_F_ACK, NLM_F_REQUEST};

use super::render::{last, Elem, FamilyElem};
use crate::policy::family::{anywhere, Family};

pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(super) const NFTA_SET_ELEM_FLAGS: u16 = 3;
pub(super) const NFTA_SET_ELEM_KEY_END: u16 = 10;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
pub(super) const NFPROTO_INET: u8 = 1;
const NLMSG_HDRLEN: usize = 16;

/// Elements per message: at most 100 bytes each (an IPv6 cell: two 40-byte
/// keys), so a message's nested element list stays far below the 64 KiB an
/// attribute length can say.
const ELEMS_PER_MESSAGE: usize = 256;
/// A batch goes in one sendmsg, which the socket's send buffer (208 KiB by
/// default) bounds; larger deltas take the `nft` path, whose cost they amortise.
pub const MAX_BATCH_BYTES: usize = 128 * 1024;
/// The longest wait for the kernel's answer to one batch.
pub const DEADLINE: Duration = Duration::from_secs(2);

/// Why an element delta did not go through netlink.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("nf_tables netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("the delta needs a {bytes}-byte batch, more than the {max} bytes of one send")]
    TooLarge { bytes: usize, max: usize },
    #[error("sending the batch: {0}")]
    Send(#[source] std::io::Error),
    #[error("receiving the kernel's answer: {0}")]
    Recv(#[source] std::io::Error),
    #[error("no answer from the kernel within {0:?}")]
    Timeout(Duration),
    #[error("the kernel refused to {op} {elements} element(s) of set {set}: {errno}{detail}")]
    Refused { op: Op, set: String, elements: usize, errno: nix::errno::Errno, detail: String },
    #[error("the kernel did not commit the batch: {errno}{detail}")]
    Commit { errno: nix::errno::Errno, detail: String },
    #[error("malformed answer from the kernel: {0}")]
    Malformed(&'static str),
}

/// Adding or deleting elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Delete,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Add => "add",
            Op::Delete => "delete",
        })
    }
}

/// Elements of one set to add or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDelta<'a> {
    pub set: &'a str,
    pub op: Op,
    pub elems: Vec<&'a Elem>,
}

/// One element as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelElem {
    pub key: Vec<u8>,
    /// The highs of a concatenation with ranges.
    pub key_end: Option<Vec<u8>>,
    /// Closes the interval the previous start element opened.
    pub interval_end: bool,
}

impl KernelElem {
    fn key(key: Vec<u8>) -> KernelElem {
        KernelElem { key, key_end: None, interval_end: false }
    }
}

/// The kernel elements that hold `e` in the set type render.rs gives it.
pub fn kernel_elems(e: &Elem) -> Vec<KernelElem> {
    match e {
        Elem::V4(e) => family_elems(e),
        Elem::V6(e) => family_elems(e),
    }
}

/// An address in network order: 4 or 16 bytes.
fn octets<A: Family>(a: A) -> Vec<u8> {
    let bytes = a.as_u128().to_be_bytes();
    bytes[16 - usize::from(A::BITS / 8)..].to_vec()
}

fn family_elems<A: Family>(e: &FamilyElem<A>) -> Vec<KernelElem> {
    let reg = |bytes: &[u8], key: &mut Vec<u8>| {
        key.extend_from_slice(bytes);
        key.resize(key.len().next_multiple_of(4), 0);
    };
    // (pod, protocol, port[, address]), each field in whole registers.
    let concat = |pod: A, proto: u8, port: u16, addr: Option<A>| {
        let mut key = Vec::with_capacity(2 * usize::from(A::BITS / 8) + 8);
        reg(&octets(pod), &mut key);
        reg(&[proto], &mut key);
        reg(&port.to_be_bytes(), &mut key);
        if let Some(addr) = addr {
            reg(&octets(addr), &mut key);
        }
        key
    };
    match *e {
        FamilyElem::Addr(ip) => vec![KernelElem::key(octets(ip))],
        FamilyElem::Net(net) => {
            let start = KernelElem::key(octets(A::network(net)));
            let end = last::<A>(net);
            if end == last::<A>(anywhere::<A>()) {
                // Open to the end of the address space, as nft leaves it.
                return vec![start];
            }
            let after = A::from_u128(end.as_u128() + 1);
            vec![start, KernelElem { key: octets(after), key_end: None, interval_end: true }]
        }
        FamilyElem::PodPort(pod, proto, port) => vec![KernelElem::key(concat(pod, proto, port, None))],
        FamilyElem::Exact(pod, proto, port, peer) => {
            vec![KernelElem::key(concat(pod, proto, port, Some(peer)))]
        }
        FamilyElem::Cell(pod, protos, ports, net) => vec![KernelElem {
            key: concat(pod, protos.0, ports.0, Some(A::network(net))),
            key_end: Some(concat(pod, protos.1, ports.1, Some(last::<A>(net)))),
            interval_end: false,
        }],
    }
}

/// What one element message carries, to name it in an error.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    set: String,
    op: Op,
    elements: usize,
}

/// A batch ready to send: its bytes and what each sequence number carries.
#[derive(Debug)]
pub struct Batch {
    pub bytes: Vec<u8>,
    begin_seq: u32,
    sent: BTreeMap<u32, Sent>,
}

/// Netlink messages and attributes written into one buffer; lengths are
/// patched when a message or nest ends.
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn message(&mut self, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version 0, resource id (big-endian).
        self.buf.extend_from_slice(&[family, 0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    fn end_message(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, kind: u16, data: &[u8]) {
        // Attributes written here are names and keys, far below 64 KiB.
        self.buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
    }

    fn nest(&mut self, kind: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        start
    }

    fn end_nest(&mut self, start: usize) {
        // At most ELEMS_PER_MESSAGE elements of at most 100 bytes: fits in u16.
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn element(&mut self, e: &KernelElem) {
        let elem = self.nest(NFTA_LIST_ELEM);
        for (kind, key) in [(NFTA_SET_ELEM_KEY, Some(&e.key)), (NFTA_SET_ELEM_KEY_END, e.key_end.as_ref())] {
            if let Some(key) = key {
                let nest = self.nest(kind);
                self.attr(NFTA_DATA_VALUE, key);
                self.end_nest(nest);
            }
        }
        if e.interval_end {
            self.attr(NFTA_SET_ELEM_FLAGS, &NFT_SET_ELEM_INTERVAL_END.to_be_bytes());
        }
        self.end_nest(elem);
    }
}

fn strz(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

/// The batch that applies `deltas` to sets of `table` (family inet), in
/// order, with sequence numbers from `seq` on. Pure.
pub fn encode(table: &str, deltas: &[SetDelta], seq: u32) -> Result<Batch, NetlinkError> {
    let mut w = Writer { buf: Vec::new() };
    let mut sent = BTreeMap::new();
    let mut next = seq;
    let begin = w.message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, next, 0, NFNL_SUBSYS_NFTABLES);
    w.end_message(begin);
    for d in deltas {
        let elems: Vec<KernelElem> = d.elems.iter().flat_map(|e| kernel_elems(e)).collect();
        let (kind, flags) = match d.op {
            Op::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
            Op::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
        };
        for chunk in elems.chunks(ELEMS_PER_MESSAGE) {
            next = next.wrapping_add(1);
            let msg = w.message((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, next, NFPROTO_INET, 0);
            w.attr(NFTA_SET_ELEM_LIST_TABLE, &strz(table));
            w.attr(NFTA_SET_ELEM_LIST_SET, &strz(d.set));
            let list = w.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
            for e in chunk {
                w.element(e);
            }
            w.end_nest(list);
            w.end_message(msg);
            sent.insert(next, Sent { set: d.set.to_string(), op: d.op, elements: chunk.len() });
            if w.buf.len() > MAX_BATCH_BYTES {
                return Err(NetlinkError::TooLarge { bytes: w.buf.len(), max: MAX_BATCH_BYTES });
            }
        }
    }
    let end = w.message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, next.wrapping_add(1), 0, NFNL_SUBSYS_NFTABLES);
    w.end_message(end);
    Ok(Batch { bytes: w.buf, begin_seq: seq, sent })
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The extended ack's message, if the kernel gave one.
fn ext_ack_message(msg: &[u8], flags: u16) -> String {
    if flags & NLM_F_ACK_TLVS == 0 {
        return String::new();
    }
    // The error code and the request's header, plus its payload unless capped.
    let mut at = NLMSG_HDRLEN + 4 + NLMSG_HDRLEN;
    if flags & NLM_F_CAPPED == 0 {
        at = NLMSG_HDRLEN + 4 + u32_at(msg, NLMSG_HDRLEN + 4).unwrap_or(0) as usize;
    }
    while let (Some(len), Some(kind)) = (u16_at(msg, at), u16_at(msg, at + 2)) {
        let len = usize::from(len);
        if len < 4 || at + len > msg.len() {
            break;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &msg[at + 4..at + len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return format!(" ({})", String::from_utf8_lossy(text));
        }
        at += len.next_multiple_of(4);
    }
    String::new()
}

impl Batch {
    /// Number of element messages, each of which the kernel acknowledges.
    pub fn messages(&self) -> usize {
        self.sent.len()
    }

    /// Reads one buffer of the kernel's answers, removing acknowledged
    /// sequence numbers from `pending`; the first error ends it, answers to
    /// other batches are skipped. Pure.
    fn read_answers(&self, buf: &[u8], pending: &mut Vec<u32>) -> Result<(), NetlinkError> {
        let mut at = 0;
        while at + NLMSG_HDRLEN <= buf.len() {
            let bad = NetlinkError::Malformed("a message shorter than its header or its buffer");
            let len = u32_at(buf, at).ok_or(NetlinkError::Malformed("truncated header"))? as usize;
            if len < NLMSG_HDRLEN || at + len > buf.len() {
                return Err(bad);
            }
            let msg = &buf[at..at + len];
            at += len.next_multiple_of(4);
            if u16_at(msg, 4) != Some(NLMSG_ERROR) {
                continue;
            }
            let flags = u16_at(msg, 6).unwrap_or(0);
            let code = u32_at(msg, NLMSG_HDRLEN).ok_or(NetlinkError::Malformed("ack without error code"))?;
            let seq =
                u32_at(msg, NLMSG_HDRLEN + 4 + 8).ok_or(NetlinkError::Malformed("ack without request"))?;
            let errno = nix::errno::Errno::from_raw(-(code as i32));
            let detail = || ext_ack_message(msg, flags);
            match self.sent.get(&seq) {
                Some(_) if code == 0 => pending.retain(|s| *s != seq),
                Some(s) => {
                    let (op, set, elements) = (s.op, s.set.clone(), s.elements);
                    return Err(NetlinkError::Refused { op, set, elements, errno, detail: detail() });
                }
                None if seq == self.begin_seq && code != 0 => {
                    return Err(NetlinkError::Commit { errno, detail: detail() })
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// An nf_tables netlink socket, kept across applies: closing one right after
/// a commit waits for the kernel to release the transaction, an RCU grace
/// period (nft_rcv_nl_event): milliseconds on a busy machine.
#[derive(Debug)]
pub struct NftSocket {
    sock: Socket,
    /// The next batch's first sequence number; never reused on this socket,
    /// so a late answer to an earlier batch is never taken for this one's.
    seq: u32,
}

impl NftSocket {
    /// Opens one in the calling thread's netns.
    pub fn open() -> Result<NftSocket, NetlinkError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(NetlinkError::Socket)?;
        sock.bind_auto().map_err(NetlinkError::Socket)?;
        // Acks without the request's payload, and the kernel's reason on errors.
        sock.set_cap_ack(true).map_err(NetlinkError::Socket)?;
        sock.set_ext_ack(true).map_err(NetlinkError::Socket)?;
        sock.set_non_blocking(true).map_err(NetlinkError::Socket)?;
        Ok(NftSocket { sock, seq: 1 })
    }

    /// Applies `deltas` to sets of `table` (family inet) as one transaction:
    /// all of it or, on any error, nothing. Waits at most `deadline`.
    pub fn apply(
        &mut self,
        table: &str,
        deltas: &[SetDelta],
        deadline: Duration,
    ) -> Result<(), NetlinkError> {
        let batch = encode(table, deltas, self.seq)?;
        if batch.messages() == 0 {
            return Ok(());
        }
        self.seq = self.seq.wrapping_add(batch.messages() as u32 + 2);
        let started = Instant::now();
        let n = self.sock.send(&batch.bytes, 0).map_err(NetlinkError::Send)?;
        if n != batch.bytes.len() {
            let e = std::io::Error::other(format!("sent {n} of {} bytes", batch.bytes.len()));
            return Err(NetlinkError::Send(e));
        }
        let mut pending: Vec<u32> = batch.sent.keys().copied().collect();
        let mut buf = vec![0u8; 64 * 1024];
        while !pending.is_empty() {
            match self.sock.recv(&mut &mut buf[..], 0) {
                Ok(n) => batch.read_answers(&buf[..n], &mut pending)?,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let left =
                        deadline.checked_sub(started.elapsed()).ok_or(NetlinkError::Timeout(deadline))?;
                    let ms =
                        PollTimeout::try_from(left.as_millis().max(1) as u64).unwrap_or(PollTimeout::MAX);
                    let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, ms) {
                        Ok(0) => return Err(NetlinkError::Timeout(deadline)),
                        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => return Err(NetlinkError::Recv(e.into())),
                    }
                }
                Err(e) => return Err(NetlinkError::Recv(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn elem_bytes(e: &Elem) -> Vec<(String, Option<String>, bool)> {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        kernel_elems(e).iter().map(|k| (hex(&k.key), k.key_end.as_deref().map(hex), k.interval_end)).collect()
    }

    #[test]
    fn keys_follow_the_set_layouts() {
        let pod: Ipv4Addr = "10.244.1.2".parse().unwrap();
        let s = |k: &str| k.to_string();
        assert_eq!(elem_bytes(&Elem::from(FamilyElem::Addr(pod))), [(s("0af40102"), None, false)]);
        assert_eq!(
            elem_bytes(&Elem::from(FamilyElem::<Ipv4Addr>::Net("10.1.0.0/16".parse().unwrap()))),
            [(s("0a010000"), None, false), (s("0a020000"), None, true)],
            "start, then the first address after it closes the interval"
        );
        assert_eq!(
            elem_bytes(&Elem::from(FamilyElem::<Ipv4Addr>::Net("0.0.0.0/0".parse().unwrap()))),
            [(s("00000000"), None, false)],
            "open to the end of the address space"
        );
        assert_eq!(
            elem_bytes(&Elem::from(FamilyElem::PodPort(pod, 6, 443))),
            [(
                s("0af40102" /* pod */) + "06000000" /* proto, padded */ + "01bb0000", /* port, BE, padded */
                None,
                false
            )]
        );
        assert_eq!(
            elem_bytes(&Elem::from(FamilyElem::Cell(
                pod,
                (6, 17),
                (80, 8080),
                "10.244.2.0/24".parse().unwrap()
            ))),
            [(
                s("0af40102") + "06000000" + "00500000" + "0af40200",
                Some(s("0af40102") + "11000000" + "1f900000" + "0af402ff"),
                false
            )]
        );
    }

    #[test]
    fn ipv6_keys_take_four_registers_per_address() {
        let pod: std::net::Ipv6Addr = "fd00::2".parse().unwrap();
        let s = |k: &str| k.to_string();
        let v6 = |e: FamilyElem<std::net::Ipv6Addr>| elem_bytes(&Elem::from(e));
        let (fd00_2, zeros) = (s("fd000000000000000000000000000002"), "0".repeat(32));
        assert_eq!(v6(FamilyElem::Addr(pod)), [(fd00_2.clone(), None, false)]);
        assert_eq!(
            v6(FamilyElem::Net("fd00:1::/32".parse().unwrap())),
            [(s("fd000001") + &zeros[8..], None, false), (s("fd000002") + &zeros[8..], None, true)],
        );
        assert_eq!(v6(FamilyElem::Net("::/0".parse().unwrap())), [(zeros.clone(), None, false)]);
        assert_eq!(
            v6(FamilyElem::Cell(pod, (6, 6), (80, 81), "fd00:9::/64".parse().unwrap())),
            [(
                fd00_2.clone() + "06000000" + "00500000" + "fd000009" + &zeros[8..],
                Some(fd00_2 + "06000000" + "00510000" + "fd000009" + "00000000" + &"f".repeat(16)),
                false
            )]
        );
    }

    fn messages(b: &[u8]) -> Vec<(u16, u16, u32, &[u8])> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < b.len() {
            let len = u32_at(b, at).unwrap() as usize;
            out.push((
                u16_at(b, at + 4).unwrap(),
                u16_at(b, at + 6).unwrap(),
                u32_at(b, at + 8).unwrap(),
                &b[at..at + len],
            ));
            at += len;
        }
        out
    }

    #[test]
    fn batch_is_begin_messages_end_and_splits_large_deltas() {
        let addrs: Vec<Elem> =
            (0..300u32).map(|i| Elem::from(FamilyElem::Addr(Ipv4Addr::from(0x0af40000 + i)))).collect();
        let net = Elem::from(FamilyElem::<Ipv4Addr>::Net("10.1.0.0/16".parse().unwrap()));
        let deltas = [
            SetDelta { set: "local", op: Op::Delete, elems: vec![&net] },
            SetDelta { set: "local", op: Op::Add, elems: addrs.iter().collect() },
        ];
        let batch = encode("weft", &deltas, 7).unwrap();
        let msgs = messages(&batch.bytes);
        let kinds: Vec<(u16, u16, u32)> = msgs.iter().map(|m| (m.0, m.1, m.2)).collect();
        assert_eq!(
            kinds,
            [(0x10, 0x1, 7), (0x0a0e, 0x5, 8), (0x0a0c, 0x405, 9), (0x0a0c, 0x405, 10), (0x11, 0x1, 11)],
            "begin, delete, add split at 256 elements, end"
        );
        assert_eq!(&msgs[0].3[16..], [0, 0, 0, 10], "batch begin names the nftables subsystem");
        let delete = msgs[1].3;
        assert_eq!(&delete[16..20], [1, 0, 0, 0], "family inet");
        assert_eq!(&delete[20..32], b"\x09\x00\x01\x00weft\x00\x00\x00\x00", "table, NUL-terminated");
        assert_eq!(&delete[32..44], b"\x0a\x00\x02\x00local\x00\x00\x00", "set");
        // Elements: a start and an interval-end element, 16 + 24 bytes.
        assert_eq!(u16_at(delete, 44), Some(4 + 16 + 24));
        assert_eq!(u16_at(delete, 46), Some(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED));
        assert_eq!(&delete[delete.len() - 8..], [8, 0, 3, 0, 0, 0, 0, 1], "INTERVAL_END flag, big-endian");
        assert_eq!(batch.sent.values().map(|s| s.elements).collect::<Vec<_>>(), [2, 256, 44]);
    }

    #[test]
    fn too_large_a_delta_is_refused_before_sending() {
        let cells: Vec<Elem> = (0..4000u32)
            .map(|i| {
                Elem::from(FamilyElem::Cell(
                    Ipv4Addr::from(i),
                    (6, 6),
                    (80, 80),
                    "10.0.0.0/8".parse().unwrap(),
                ))
            })
            .collect();
        let d = [SetDelta { set: "in_allow_0", op: Op::Add, elems: cells.iter().collect() }];
        assert!(matches!(encode("weft", &d, 1), Err(NetlinkError::TooLarge { .. })));
    }

    fn ack(seq: u32, errno: i32, text: Option<&str>) -> Vec<u8> {
        let mut body = (-errno).to_ne_bytes().to_vec();
        // The request's header, capped.
        body.extend_from_slice(&[0u8; 8]);
        body.extend_from_slice(&seq.to_ne_bytes());
        body.extend_from_slice(&[0u8; 4]);
        let mut flags = NLM_F_CAPPED;
        if let Some(t) = text {
            flags |= NLM_F_ACK_TLVS;
            let mut w = Writer { buf: body };
            w.attr(NLMSGERR_ATTR_MSG, &strz(t));
            body = w.buf;
        }
        let mut msg = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&[0u8; 8]);
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn answers_name_the_refused_message_or_the_commit() {
        let a = Elem::from(FamilyElem::<Ipv4Addr>::Addr("10.0.0.1".parse().unwrap()));
        let d = [
            SetDelta { set: "in_iso", op: Op::Delete, elems: vec![&a] },
            SetDelta { set: "local", op: Op::Add, elems: vec![&a] },
        ];
        let batch = encode("weft", &d, 1).unwrap();
        let mut pending = vec![2, 3];
        let mut buf = ack(2, 0, None);
        buf.extend(ack(3, 0, None));
        batch.read_answers(&buf, &mut pending).unwrap();
        assert!(pending.is_empty(), "both acknowledged");

        let err =
            batch.read_answers(&ack(2, libc_enoent(), Some("no such element")), &mut vec![2, 3]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the kernel refused to delete 1 element(s) of set in_iso: ENOENT: No such file or directory (no such element)"
        );
        let err = batch.read_answers(&ack(1, 12, None), &mut vec![2, 3]).unwrap_err();
        assert!(matches!(err, NetlinkError::Commit { .. }), "{err}");
        let mut pending = vec![2, 3];
        batch.read_answers(&ack(9, 2, None), &mut pending).unwrap();
        assert_eq!(pending, [2, 3], "an answer to another batch is skipped");
        assert!(
            matches!(batch.read_answers(&[16, 0, 0, 0, 2, 0], &mut vec![2]), Ok(())),
            "a partial header is ignored"
        );
        assert!(matches!(
            batch.read_answers(&[64, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &mut vec![2]),
            Err(NetlinkError::Malformed(_))
        ));
    }

    fn libc_enoent() -> i32 {
        nix::errno::Errno::ENOENT as i32
    }
}
