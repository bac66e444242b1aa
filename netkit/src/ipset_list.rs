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
use std::time::Duration;

use crate::ipset_proto::*;
use crate::kernel_error::KernelError;
use crate::netlink_attrs::Attrs;
use crate::nfnl_dump::{put_attr, DumpSocket};

const IPSET_CMD_LIST: u16 = 7;
const IPSET_ATTR_TYPENAME: u16 = 3;
const AF_INET: u8 = 2;
/// A dump that goes on longer than this is abandoned (the caller falls back
/// or reports); a dump of 70k members takes milliseconds.
const DEADLINE: Duration = Duration::from_secs(5);

/// One set: its type (`hash:ip,port`) and members as `ipset save` prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListedSet {
    pub kind: String,
    pub members: Vec<String>,
}

/// The sets whose names start with `prefix`, with their members (sorted).
pub fn list_sets(prefix: &str) -> Result<BTreeMap<String, ListedSet>, KernelError> {
    let err = |e: std::io::Error| KernelError::Io { what: "ipset netlink dump".into(), source: e };
    let mut attrs = Vec::new();
    put_attr(&mut attrs, IPSET_ATTR_PROTOCOL, &[IPSET_PROTOCOL]);
    let mut sock = DumpSocket::open(DEADLINE).map_err(err)?;
    let bodies = sock.dump((NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_LIST, AF_INET, &attrs).map_err(err)?;
    let mut sets: BTreeMap<String, ListedSet> = BTreeMap::new();
    for body in &bodies {
        list_message(body, prefix, &mut sets);
    }
    for s in sets.values_mut() {
        s.members.sort();
    }
    Ok(sets)
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
        let proto = proto.unwrap_or(0);
        match PROTOCOLS.iter().find(|(_, n)| *n == proto) {
            Some((name, _)) => format!("{name}:{p}"),
            None => format!("proto{proto}:{p}"),
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
