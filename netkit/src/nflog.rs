//! NFLOG over netfilter netlink: subscribing a socket to a log group
//! (`NFULNL_CFG_CMD_BIND`, copy mode with a snap length) and splitting the
//! datagrams the kernel sends into logged packets (prefix and payload). What
//! the packets mean is the caller's. Message building and parsing are pure.

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PACKET_HDR: u16 = 1;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const AF_INET: u8 = 2;

/// One logged packet: the log rule's prefix and the first bytes of the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged<'a> {
    pub prefix: String,
    pub payload: &'a [u8],
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

/// One NFULNL message of `kind` for `group`: its nlmsghdr, nfgenmsg and attributes.
fn message(kind: u16, group: u16, attrs: impl FnOnce(&mut Vec<u8>), seq: u32) -> Vec<u8> {
    let mut body = vec![AF_INET, 0];
    body.extend_from_slice(&group.to_be_bytes());
    attrs(&mut body);
    let mut msg = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    msg.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | kind).to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// The messages that bind `group` and ask for the first `snaplen` bytes of each packet.
pub fn config_messages(group: u16, snaplen: u32) -> Vec<Vec<u8>> {
    let bind = message(NFULNL_MSG_CONFIG, group, |b| attr(b, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]), 1);
    let mode = message(
        NFULNL_MSG_CONFIG,
        group,
        |b| {
            let mut m = snaplen.to_be_bytes().to_vec();
            m.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
            attr(b, NFULA_CFG_MODE, &m);
        },
        2,
    );
    vec![bind, mode]
}

/// A packet message as the kernel sends it for `group` (prefix, packet
/// header, payload): what `packets` reads, for tests and replays.
pub fn packet_message(group: u16, prefix: &str, payload: &[u8]) -> Vec<u8> {
    let mut p = prefix.as_bytes().to_vec();
    p.push(0);
    message(
        NFULNL_MSG_PACKET,
        group,
        |b| {
            attr(b, NFULA_PREFIX, &p);
            attr(b, NFULA_PACKET_HDR, &[0, 8, 0, 1]);
            attr(b, NFULA_PAYLOAD, payload);
        },
        0,
    )
}

/// The logged packets in one datagram from the socket (it may hold several
/// messages); a truncated or malformed message ends the walk.
pub fn packets(buf: &[u8]) -> Vec<Logged<'_>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET {
            if let Some(p) = packet(&buf[off + NLMSG_HDRLEN..off + len]) {
                out.push(p);
            }
        }
        off += align4(len);
    }
    out
}

/// One NFULNL_MSG_PACKET body (after the nlmsghdr); None without a prefix or payload.
fn packet(body: &[u8]) -> Option<Logged<'_>> {
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
    Some(Logged { prefix: prefix?, payload: payload? })
}

/// A netfilter netlink socket in the calling thread's netns, subscribed to
/// `group` with the first `snaplen` bytes of each packet copied.
pub fn subscribe(group: u16, snaplen: u32) -> std::io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    for msg in config_messages(group, snaplen) {
        sock.send(&msg, 0)?;
    }
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_split_and_garbage_ignored() {
        let mut buf = packet_message(87, "weft-deny-in", &[0x45, 1, 2]);
        buf.extend(packet_message(87, "other", &[7; 5]));
        buf.extend(message(NFULNL_MSG_CONFIG, 87, |_| {}, 3));
        let got = packets(&buf);
        assert_eq!(
            got,
            [
                Logged { prefix: "weft-deny-in".into(), payload: &[0x45, 1, 2] },
                Logged { prefix: "other".into(), payload: &[7; 5] }
            ]
        );
        assert!(packets(&buf[..10]).is_empty() && packets(&[0xff; 40]).is_empty(), "garbage gives nothing");
        let cut = packet_message(87, "weft-deny-in", &[0x45; 40]);
        assert!(packets(&cut[..cut.len() - 8]).is_empty(), "a message longer than the datagram is dropped");
    }

    #[test]
    fn config_messages_bind_the_group_and_copy_the_header() {
        let msgs = config_messages(87, 64);
        assert_eq!(msgs.len(), 2);
        for m in &msgs {
            assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize, m.len());
            assert_eq!(u16::from_ne_bytes([m[4], m[5]]), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG);
            assert_eq!(&m[18..20], &87u16.to_be_bytes(), "res_id is the group, big-endian");
        }
        assert_eq!(&msgs[1][24..28], &64u32.to_be_bytes());
    }
}
