//! Denied packets from the kernel. The drop rules of both backends first
//! hand a new connection's packet to NFLOG group `GROUP` (iptables `NFLOG`,
//! nftables `log group`), with a prefix naming the direction; this module
//! subscribes to that group (weft-netkit's `nflog` holds the netlink side)
//! and turns each logged packet into a `Denied`. Parsing is pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
#[cfg(feature = "daemon")]
use std::sync::{
    mpsc::{SyncSender, TrySendError},
    Arc,
};

use weft_netkit::nflog::packets;

#[cfg(feature = "daemon")]
use crate::metrics::InputCounters;

/// The NFLOG group weft's drop rules log to.
pub const GROUP: u16 = 87;
/// Bytes of each packet copied to us: the IP header (IPv4's or IPv6's
/// fixed one) and the ports.
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

#[cfg(feature = "daemon")]
/// Pause after a failed read that is not an overrun.
const RECV_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// One denied packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// True for the ingress drop, false for egress.
    pub ingress: bool,
    /// True if only an audit policy would deny it (it passed).
    pub audit: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// TCP/UDP/SCTP destination port.
    pub dport: Option<u16>,
}

/// The denied packets in one datagram from the socket (it may hold several messages).
pub fn parse(buf: &[u8]) -> Vec<Denied> {
    packets(buf).into_iter().filter_map(|p| packet(&p.prefix, p.payload)).collect()
}

/// One logged packet, if one of weft's log rules logged it.
fn packet(prefix: &str, payload: &[u8]) -> Option<Denied> {
    let (ingress, audit) = match prefix {
        PREFIX_INGRESS => (true, false),
        PREFIX_EGRESS => (false, false),
        PREFIX_AUDIT_INGRESS => (true, true),
        PREFIX_AUDIT_EGRESS => (false, true),
        _ => return None,
    };
    let ip = payload;
    let (header, proto, src, dst) = match ip.first().map(|b| b >> 4) {
        Some(4) if ip.len() >= 20 => {
            let addr = |at: usize| IpAddr::V4(Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]));
            (usize::from(ip[0] & 0x0f) * 4, ip[9], addr(12), addr(16))
        }
        // The fixed header; a packet with extension headers is logged
        // without its port (their chain is not walked).
        Some(6) if ip.len() >= 40 => {
            let addr = |at: usize| {
                let bytes: [u8; 16] = ip[at..at + 16].try_into().unwrap_or_default();
                IpAddr::V6(Ipv6Addr::from(bytes))
            };
            (40, ip[6], addr(8), addr(24))
        }
        _ => return None,
    };
    let dport = match proto {
        6 | 17 | 132 if ip.len() >= header + 4 => Some(u16::from_be_bytes([ip[header + 2], ip[header + 3]])),
        _ => None,
    };
    Some(Denied { ingress, audit, src, dst, proto, dport })
}

/// Subscribes to `GROUP` in this netns and queues each denied packet on
/// `tx` from a thread of its own. The queue is bounded and this thread never
/// waits on it: what does not fit is dropped and counted in `counters`, as
/// are the kernel's drops when this thread reads too slowly.
#[cfg(feature = "daemon")]
pub fn listen(tx: SyncSender<Denied>, counters: Arc<InputCounters>) -> std::io::Result<()> {
    let sock = weft_netkit::nflog::subscribe(GROUP, SNAPLEN)?;
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

    fn message(prefix: &str, ip: &[u8]) -> Vec<u8> {
        weft_netkit::nflog::packet_message(GROUP, prefix, ip)
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
    fn ipv6_packets_are_parsed_from_the_fixed_header() {
        let (src, dst): (Ipv6Addr, Ipv6Addr) =
            ("fd00:244:1::3".parse().unwrap(), "fd00:244:2::2".parse().unwrap());
        let mut ip = vec![0x60, 0, 0, 0, 0, 20, 17, 64];
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        ip.extend_from_slice(&40000u16.to_be_bytes());
        ip.extend_from_slice(&53u16.to_be_bytes());
        let got = parse(&message(PREFIX_EGRESS, &ip));
        let want = Denied {
            ingress: false,
            audit: false,
            src: src.into(),
            dst: dst.into(),
            proto: 17,
            dport: Some(53),
        };
        assert_eq!(got, std::slice::from_ref(&want));
        // A hop-by-hop header first: no port, the hosts still named.
        ip[6] = 0;
        assert_eq!(parse(&message(PREFIX_EGRESS, &ip)), [Denied { proto: 0, dport: None, ..want }]);
        assert!(parse(&message(PREFIX_EGRESS, &ip[..39])).is_empty(), "a cut fixed header gives nothing");
    }
}
