//! Denied packets from the kernel. The drop rules of both backends first
//! hand a new connection's packet to NFLOG group `GROUP` (iptables `NFLOG`,
//! nftables `log group`), with a prefix naming the direction; this module
//! subscribes to that group on a netfilter netlink socket and parses each
//! message into a `Denied`. Message building and parsing are pure.

use std::net::Ipv4Addr;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use crate::metrics::InputCounters;

/// The NFLOG group weft's drop rules log to.
pub const GROUP: u16 = 87;
/// Bytes of each packet copied to us: the IPv4 header and the ports.
pub const SNAPLEN: u32 = 64;
/// Packets a second each log rule hands to the agent (the kernel's `limit`),
/// and the burst above it: enough for every connection a busy node denies,
/// far below what a flood sends.
pub const LOG_RATE: u32 = 100;
pub const LOG_BURST: u32 = 200;
/// Prefixes of the log rules.
pub const PREFIX_INGRESS: &str = "weft-deny-in";
pub const PREFIX_EGRESS: &str = "weft-deny-out";
/// Prefixes of audit policies' log rules (logged, not dropped).
pub const PREFIX_AUDIT_INGRESS: &str = "weft-audit-in";
pub const PREFIX_AUDIT_EGRESS: &str = "weft-audit-out";

/// Pause after a failed read that is not an overrun.
const RECV_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const AF_INET: u8 = 2;

/// One denied packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// True for the ingress drop, false for egress.
    pub ingress: bool,
    /// True if only an audit policy would deny it (it passed).
    pub audit: bool,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub proto: u8,
    /// TCP/UDP/SCTP destination port.
    pub dport: Option<u16>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn attr(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(align4(out.len()), 0);
}

/// One NFULNL config message for `group`: its nlmsghdr, nfgenmsg and attributes.
fn config(group: u16, attrs: impl FnOnce(&mut Vec<u8>), seq: u32) -> Vec<u8> {
    let mut body = vec![AF_INET, 0];
    body.extend_from_slice(&group.to_be_bytes());
    attrs(&mut body);
    let mut msg = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    msg.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// The messages that bind `group` and ask for the first `SNAPLEN` bytes of each packet.
pub fn config_messages(group: u16) -> Vec<Vec<u8>> {
    let bind = config(group, |b| attr(b, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]), 1);
    let mode = config(
        group,
        |b| {
            let mut m = SNAPLEN.to_be_bytes().to_vec();
            m.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
            attr(b, NFULA_CFG_MODE, &m);
        },
        2,
    );
    vec![bind, mode]
}

/// The denied packets in one datagram from the socket (it may hold several messages).
pub fn parse(buf: &[u8]) -> Vec<Denied> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET {
            if let Some(d) = packet(&buf[off + NLMSG_HDRLEN..off + len]) {
                out.push(d);
            }
        }
        off += align4(len);
    }
    out
}

/// One NFULNL_MSG_PACKET body (after the nlmsghdr).
fn packet(body: &[u8]) -> Option<Denied> {
    let mut off = 4; // nfgenmsg
    let (mut prefix, mut payload) = (None, None);
    while off + 4 <= body.len() {
        let len = u16::from_ne_bytes([body[off], body[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([body[off + 2], body[off + 3]]) & 0x7fff;
        if len < 4 || off + len > body.len() {
            break;
        }
        let data = &body[off + 4..off + len];
        match kind {
            NFULA_PREFIX => prefix = Some(String::from_utf8_lossy(data).trim_end_matches('\0').to_string()),
            NFULA_PAYLOAD => payload = Some(data),
            _ => {}
        }
        off += align4(len);
    }
    let (ingress, audit) = match prefix?.as_str() {
        PREFIX_INGRESS => (true, false),
        PREFIX_EGRESS => (false, false),
        PREFIX_AUDIT_INGRESS => (true, true),
        PREFIX_AUDIT_EGRESS => (false, true),
        _ => return None,
    };
    let ip = payload?;
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let proto = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let dport = match proto {
        6 | 17 | 132 if ip.len() >= ihl + 4 => Some(u16::from_be_bytes([ip[ihl + 2], ip[ihl + 3]])),
        _ => None,
    };
    Some(Denied { ingress, audit, src, dst, proto, dport })
}

/// Subscribes to `GROUP` in this netns and queues each denied packet on
/// `tx` from a thread of its own. The queue is bounded and this thread never
/// waits on it: what does not fit is dropped and counted in `counters`, as
/// are the kernel's drops when this thread reads too slowly.
pub fn listen(tx: SyncSender<Denied>, counters: Arc<InputCounters>) -> std::io::Result<()> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    for msg in config_messages(GROUP) {
        sock.send(&msg, 0)?;
    }
    std::thread::Builder::new().name("weft-agent-nflog".into()).spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sock.recv(&mut &mut buf[..], 0) {
                Ok(n) => n,
                // ENOBUFS: the kernel dropped some; go on.
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                    InputCounters::bump(&counters.denied_socket_overruns);
                    continue;
                }
                // Anything else: try again, without spinning.
                Err(_) => {
                    std::thread::sleep(RECV_BACKOFF);
                    continue;
                }
            };
            for d in parse(&buf[..n]) {
                match tx.try_send(d) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => InputCounters::bump(&counters.denied_queue_full),
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet message as the kernel sends it: nlmsghdr, nfgenmsg, prefix, payload.
    fn message(prefix: &str, ip: &[u8]) -> Vec<u8> {
        let mut body = vec![AF_INET, 0, 0, GROUP as u8];
        let mut p = prefix.as_bytes().to_vec();
        p.push(0);
        attr(&mut body, NFULA_PREFIX, &p);
        attr(&mut body, 1, &[0, 8, 0, 1]); // NFULA_PACKET_HDR, ignored
        attr(&mut body, NFULA_PAYLOAD, ip);
        let mut msg = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET).to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&body);
        msg
    }

    fn tcp_syn(src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        ip.extend_from_slice(&40000u16.to_be_bytes());
        ip.extend_from_slice(&dport.to_be_bytes());
        ip
    }

    #[test]
    fn packets_are_parsed_and_others_ignored() {
        let mut buf = message(PREFIX_INGRESS, &tcp_syn([10, 244, 1, 3], [10, 244, 1, 2], 81));
        buf.extend(message("someone-else", &tcp_syn([1, 1, 1, 1], [2, 2, 2, 2], 1)));
        buf.extend(message(PREFIX_EGRESS, &tcp_syn([10, 244, 1, 2], [10, 244, 2, 2], 443)[..22]));
        let got = parse(&buf);
        assert_eq!(
            got,
            [
                Denied {
                    ingress: true,
                    audit: false,
                    src: [10, 244, 1, 3].into(),
                    dst: [10, 244, 1, 2].into(),
                    proto: 6,
                    dport: Some(81)
                },
                Denied {
                    ingress: false,
                    audit: false,
                    src: [10, 244, 1, 2].into(),
                    dst: [10, 244, 2, 2].into(),
                    proto: 6,
                    dport: None
                },
            ],
            "a payload cut before the ports still names the hosts"
        );
        assert!(parse(&buf[..10]).is_empty() && parse(&[0xff; 40]).is_empty(), "garbage gives nothing");
    }

    #[test]
    fn config_messages_bind_the_group_and_copy_the_header() {
        let msgs = config_messages(GROUP);
        assert_eq!(msgs.len(), 2);
        for m in &msgs {
            assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize, m.len());
            assert_eq!(u16::from_ne_bytes([m[4], m[5]]), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG);
            assert_eq!(&m[18..20], &GROUP.to_be_bytes(), "res_id is the group, big-endian");
        }
        assert_eq!(&msgs[1][24..28], &SNAPLEN.to_be_bytes());
    }
}
