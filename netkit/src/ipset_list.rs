//! Reading ipsets and their members over netlink (IPSET_CMD_LIST), as
//! `ipset save` prints them, without the `ipset` process: for 70k members
//! `ipset save` and its parse cost about 300 ms, the dump itself a few ms.
//! Members come out in `ipset save`'s text for the types weft uses (hash:ip,
//! hash:net, hash:ip,port, hash:ip,port,net, both families); a member of
//! another shape still comes out, in a form that only has to differ from any
//! member weft renders.
//!
//! Numbers: include/uapi/linux/netfilter/ipset/ip_set.h and nfnetlink.h;
//! the dump: ip_set_dump_start/ip_set_dump_do in net/netfilter/ipset/ip_set_core.c.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::kernel_error::KernelError;
use crate::netlink_attrs::{Attrs, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP, NLM_F_REQUEST};

const NFNL_SUBSYS_IPSET: u16 = 6;
const IPSET_CMD_LIST: u16 = 7;
const IPSET_PROTOCOL: u8 = 7;
const IPSET_ATTR_PROTOCOL: u16 = 1;
const IPSET_ATTR_SETNAME: u16 = 2;
const IPSET_ATTR_TYPENAME: u16 = 3;
const IPSET_ATTR_DATA: u16 = 7;
const IPSET_ATTR_ADT: u16 = 8;
const IPSET_ATTR_IP: u16 = 1;
const IPSET_ATTR_CIDR: u16 = 3;
const IPSET_ATTR_PORT: u16 = 4;
const IPSET_ATTR_PROTO: u16 = 7;
const IPSET_ATTR_IP2: u16 = 20;
const IPSET_ATTR_CIDR2: u16 = 21;
const IPSET_ATTR_IPADDR_IPV4: u16 = 1;
const IPSET_ATTR_IPADDR_IPV6: u16 = 2;
const AF_INET: u8 = 2;
/// A dump that goes on longer than this is abandoned (the caller falls back
/// or reports); a dump of 70k members takes milliseconds.
const DEADLINE: Duration = Duration::from_secs(5);
/// At most this much dump data is read: far above any set weft makes.
const MAX_BYTES: usize = 512 << 20;

/// One set: its type (`hash:ip,port`) and members as `ipset save` prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListedSet {
    pub kind: String,
    pub members: Vec<String>,
}

/// The sets whose names start with `prefix`, with their members (sorted).
pub fn list_sets(prefix: &str) -> Result<BTreeMap<String, ListedSet>, KernelError> {
    let err =
        |what: &str, e: std::io::Error| KernelError::Io { what: format!("ipset netlink: {what}"), source: e };
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(|e| err("socket", e))?;
    sock.bind_auto().map_err(|e| err("bind", e))?;
    sock.connect(&netlink_sys::SocketAddr::new(0, 0)).map_err(|e| err("connect", e))?;
    sock.send(&request(), 0).map_err(|e| err("send", e))?;
    let deadline = Instant::now() + DEADLINE;
    let mut sets: BTreeMap<String, ListedSet> = BTreeMap::new();
    let (mut buf, mut read) = (vec![0u8; 1 << 20], 0usize);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::ZERO);
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, timeout).map_err(|e| err("poll", e.into()))?;
        if ready == 0 {
            return Err(err("dump", std::io::Error::from(std::io::ErrorKind::TimedOut)));
        }
        let n = sock.recv(&mut &mut buf[..], 0).map_err(|e| err("recv", e))?;
        read += n;
        if read > MAX_BYTES {
            return Err(err("dump", std::io::Error::other("larger than 512 MiB")));
        }
        match parse_messages(&buf[..n], prefix, &mut sets) {
            Ok(true) => break,
            Ok(false) => {}
            Err(errno) => {
                return Err(err("dump", std::io::Error::from_raw_os_error(errno)));
            }
        }
    }
    for s in sets.values_mut() {
        s.members.sort();
    }
    Ok(sets)
}

/// The dump request: LIST of every set.
fn request() -> Vec<u8> {
    let mut msg = Vec::with_capacity(28);
    msg.extend(0u32.to_ne_bytes()); // the length, set below
    msg.extend(((NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_LIST).to_ne_bytes());
    msg.extend((NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend(1u32.to_ne_bytes()); // sequence
    msg.extend(0u32.to_ne_bytes()); // port id: the kernel's
    msg.extend([AF_INET, 0, 0, 0]); // nfgenmsg: family, version 0, res_id
    msg.extend(5u16.to_ne_bytes());
    msg.extend(IPSET_ATTR_PROTOCOL.to_ne_bytes());
    msg.extend([IPSET_PROTOCOL, 0, 0, 0]); // u8, padded to 4
    let len = msg.len() as u32;
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    msg
}

/// Walks the netlink messages in `buf`, adding what they list to `sets`.
/// Ok(true) once the dump is done; Err(errno) for an error message.
fn parse_messages(buf: &[u8], prefix: &str, sets: &mut BTreeMap<String, ListedSet>) -> Result<bool, i32> {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < 16 || off + len > buf.len() {
            return Err(libc_eproto());
        }
        let body = &buf[off + 16..off + len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = body.get(..4).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                if code != 0 {
                    return Err(-code);
                }
            }
            k if k == (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_LIST => {
                if let Some(body) = body.get(4..) {
                    list_message(body, prefix, sets);
                }
            }
            _ => {}
        }
        off += len.next_multiple_of(4);
    }
    Ok(false)
}

fn libc_eproto() -> i32 {
    nix::errno::Errno::EPROTO as i32
}

/// One LIST message: a set's name and type, and (in the later ones of a
/// set) a batch of its members.
fn list_message(attrs: &[u8], prefix: &str, sets: &mut BTreeMap<String, ListedSet>) {
    let (mut name, mut kind, mut adt) = (None, None, None);
    for (t, v) in Attrs(attrs) {
        match t {
            IPSET_ATTR_SETNAME => name = Some(text(v)),
            IPSET_ATTR_TYPENAME => kind = Some(text(v)),
            IPSET_ATTR_ADT => adt = Some(v),
            _ => {}
        }
    }
    let Some(name) = name.filter(|n| n.starts_with(prefix)) else { return };
    let set = sets.entry(name).or_default();
    if let Some(k) = kind {
        set.kind = k;
    }
    for (t, data) in Attrs(adt.unwrap_or_default()) {
        if t == IPSET_ATTR_DATA {
            set.members.push(member(&set.kind, data));
        }
    }
}

/// One member, as `ipset save` prints it for set type `kind`.
fn member(kind: &str, data: &[u8]) -> String {
    let (mut ip, mut cidr, mut port, mut proto, mut ip2, mut cidr2) = (None, None, None, None, None, None);
    for (t, v) in Attrs(data) {
        match t {
            IPSET_ATTR_IP => ip = addr(v),
            IPSET_ATTR_CIDR => cidr = v.first().copied(),
            IPSET_ATTR_PORT => port = v.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])),
            IPSET_ATTR_PROTO => proto = v.first().copied(),
            IPSET_ATTR_IP2 => ip2 = addr(v),
            IPSET_ATTR_CIDR2 => cidr2 = v.first().copied(),
            _ => {}
        }
    }
    let net = |ip: Option<IpAddr>, cidr: Option<u8>| {
        let Some(ip) = ip else { return String::from("?") };
        let full = if ip.is_ipv4() { 32 } else { 128 };
        match cidr.filter(|c| *c != full) {
            Some(c) => format!("{ip}/{c}"),
            None => ip.to_string(),
        }
    };
    let port = || {
        let p = port.unwrap_or(0);
        match proto {
            Some(6) => format!("tcp:{p}"),
            Some(17) => format!("udp:{p}"),
            Some(132) => format!("sctp:{p}"),
            other => format!("proto{}:{p}", other.unwrap_or(0)),
        }
    };
    match kind {
        "hash:ip,port" => format!("{},{}", net(ip, None), port()),
        "hash:ip,port,net" => format!("{},{},{}", net(ip, None), port(), net(ip2, cidr2)),
        "hash:ip" => net(ip, None),
        _ => net(ip, cidr),
    }
}

/// An IPSET_ATTR_IP nest: its IPv4 or IPv6 address.
fn addr(nest: &[u8]) -> Option<IpAddr> {
    Attrs(nest).find_map(|(t, v)| match (t, v.len()) {
        (IPSET_ATTR_IPADDR_IPV4, 4) => Some(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
        (IPSET_ATTR_IPADDR_IPV6, 16) => <[u8; 16]>::try_from(v).ok().map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    })
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}
