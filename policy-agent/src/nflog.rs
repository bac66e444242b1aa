//! Denied packets from the kernel. The drop rules of both backends first
//! hand a new connection's packet to NFLOG group `GROUP` (iptables `NFLOG`,
//! nftables `log group`), with a prefix naming the direction; this module
//! subscribes to that group (weft-netkit's `nflog` holds the netlink side)
//! and turns each logged packet into a `Denied`. Parsing is pure.

use std::net::Ipv4Addr;
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
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
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
}
