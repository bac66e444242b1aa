//! Adding and deleting ipset members over netlink (IPSET_CMD_ADD, _DEL),
//! as `ipset restore` does with `add|del NAME MEMBER -exist`, without the
//! process: a CNI ADD waits for the agent's patch, and starting `ipset` is
//! most of a few-member patch's cost. Members are given in `ipset save`'s
//! text, for the types weft uses (hash:ip, hash:net, hash:ip,port,
//! hash:ip,port,net, both families); anything else is refused before a
//! byte is sent, and the caller falls back to `ipset restore`.
//!
//! Numbers: include/uapi/linux/netfilter/ipset/ip_set.h; the kernel side:
//! ip_set_ad in net/netfilter/ipset/ip_set_core.c (without NLM_F_EXCL an
//! add of a member already there, or a del of one that is not, succeeds:
//! `-exist`).

use std::net::IpAddr;
use std::time::Duration;

use crate::ipset_proto::*;
use crate::kernel_error::KernelError;
use crate::netlink_attrs::{NLA_F_NESTED, NLA_F_NET_BYTEORDER};
use crate::nfnl_dump::{put_attr, DumpSocket};

const IPSET_CMD_ADD: u16 = 9;
const IPSET_CMD_DEL: u16 = 10;
const IPSET_ATTR_LINENO: u16 = 9;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// Members per message: a message stays far below what a netlink socket
/// takes in one piece.
const PER_MESSAGE: usize = 256;
/// A whole patch that takes longer than this is abandoned (and reported).
const DEADLINE: Duration = Duration::from_secs(5);

/// Add or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Del,
}

/// One set's members to add or to delete, in `ipset save`'s text.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub set: &'a str,
    pub op: Op,
    pub members: &'a [String],
}

/// Applies `changes` in order, each as it comes: like `ipset restore` of
/// the same lines, not atomic. An error says which set; what was applied
/// before it stays (every line is idempotent, so the caller may redo all).
pub fn apply(changes: &[Change]) -> Result<(), KernelError> {
    // Every member is understood before anything is sent.
    let mut messages = Vec::new();
    for c in changes {
        let mut datas = Vec::with_capacity(c.members.len());
        for m in c.members {
            datas.push(data(m).ok_or_else(|| KernelError::Io {
                what: format!("ipset member {m:?} of {}", c.set),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a member weft writes"),
            })?);
        }
        for chunk in datas.chunks(PER_MESSAGE) {
            messages.push((c, chunk.to_vec()));
        }
    }
    if messages.is_empty() {
        return Ok(());
    }
    let err = |what: String, e: std::io::Error| KernelError::Io { what, source: e };
    let mut sock = DumpSocket::open(DEADLINE).map_err(|e| err("ipset netlink socket".into(), e))?;
    for (c, chunk) in messages {
        let family = chunk.first().map_or(NFPROTO_IPV4, |(f, _)| *f);
        let mut adt = Vec::new();
        for (_, d) in &chunk {
            put_attr(&mut adt, IPSET_ATTR_DATA | NLA_F_NESTED, d);
        }
        let mut attrs = Vec::new();
        put_attr(&mut attrs, IPSET_ATTR_PROTOCOL, &[IPSET_PROTOCOL]);
        let mut name = c.set.as_bytes().to_vec();
        name.push(0);
        put_attr(&mut attrs, IPSET_ATTR_SETNAME, &name);
        put_attr(&mut attrs, IPSET_ATTR_LINENO, &0u32.to_ne_bytes());
        put_attr(&mut attrs, IPSET_ATTR_ADT | NLA_F_NESTED, &adt);
        let cmd = match c.op {
            Op::Add => IPSET_CMD_ADD,
            Op::Del => IPSET_CMD_DEL,
        };
        sock.request((NFNL_SUBSYS_IPSET << 8) | cmd, family, &attrs)
            .map_err(|e| err(format!("ipset {:?} in {} over netlink", c.op, c.set), e))?;
    }
    Ok(())
}

/// A member's IPSET_ATTR_DATA content and its family: `ADDR[/CIDR]`,
/// `ADDR,PROTO:PORT` or `ADDR,PROTO:PORT,ADDR[/CIDR]`.
fn data(member: &str) -> Option<(u8, Vec<u8>)> {
    let parts: Vec<&str> = member.split(',').collect();
    let mut out = Vec::new();
    let family = net(&mut out, parts[0], IPSET_ATTR_IP, IPSET_ATTR_CIDR)?;
    if let Some(pp) = parts.get(1) {
        let (proto, port) = pp.split_once(':')?;
        let (_, proto) = PROTOCOLS.iter().find(|(name, _)| *name == proto)?;
        put_attr(&mut out, IPSET_ATTR_PORT | NLA_F_NET_BYTEORDER, &port.parse::<u16>().ok()?.to_be_bytes());
        put_attr(&mut out, IPSET_ATTR_PROTO, &[*proto]);
    }
    if let Some(n) = parts.get(2) {
        if net(&mut out, n, IPSET_ATTR_IP2, IPSET_ATTR_CIDR2)? != family {
            return None;
        }
    }
    (parts.len() <= 3).then_some((family, out))
}

/// Puts `ADDR[/CIDR]` as the address nest `ip` (and `cidr`); its family.
fn net(out: &mut Vec<u8>, text: &str, ip: u16, cidr: u16) -> Option<u8> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
        None => (text, None),
    };
    let mut nest = Vec::new();
    let (family, bits) = match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => {
            put_attr(&mut nest, IPSET_ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER, &a.octets());
            (NFPROTO_IPV4, 32)
        }
        IpAddr::V6(a) => {
            put_attr(&mut nest, IPSET_ATTR_IPADDR_IPV6 | NLA_F_NET_BYTEORDER, &a.octets());
            (NFPROTO_IPV6, 128)
        }
    };
    put_attr(out, ip | NLA_F_NESTED, &nest);
    if let Some(p) = prefix {
        if p > bits {
            return None;
        }
        put_attr(out, cidr, &[p]);
    }
    Some(family)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink_attrs::Attrs;

    #[test]
    fn members_of_every_shape_weft_writes_and_nothing_else() {
        let (f, d) = data("10.0.0.1,tcp:80,10.1.0.0/24").unwrap();
        assert_eq!(f, NFPROTO_IPV4);
        let kinds: Vec<u16> = Attrs(&d).map(|(t, _)| t).collect();
        assert_eq!(
            kinds,
            [IPSET_ATTR_IP, IPSET_ATTR_PORT, IPSET_ATTR_PROTO, IPSET_ATTR_IP2, IPSET_ATTR_CIDR2]
        );
        let port = Attrs(&d).find(|(t, _)| *t == IPSET_ATTR_PORT).unwrap().1;
        assert_eq!(port, [0, 80], "network byte order");
        assert_eq!(data("fd00::1,udp:53").unwrap().0, NFPROTO_IPV6);
        assert!(data("10.0.0.0/24").is_some() && data("10.0.0.1").is_some());
        for bad in [
            "10.0.0.1,icmp:0",
            "10.0.0.0/33",
            "fd00::1,tcp:1,10.0.0.0/8",
            "x",
            "1.2.3.4,tcp:1,1.2.3.4,5",
            "1.2.3.4,tcp:70000",
        ] {
            assert!(data(bad).is_none(), "{bad}");
        }
    }
}
