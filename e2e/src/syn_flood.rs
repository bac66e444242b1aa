//! A bounded SYN flood, to test what a pod can do to its node: raw IPv4
//! TCP SYNs (header included, both checksums right, so conntrack sees each
//! as a NEW connection), a new source port each and destination ports
//! cycling through a range, sent from a pod's netns (the raw socket is
//! opened there), paced to a rate in 10 ms slices and bounded in count and
//! time. Packets go only where that netns routes them: the test's own.
//! `scenario` is issue 16's flood row around it, for the test and the benchmark.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::error::{E2eError, Result};

pub mod scenario;

/// IPPROTO_RAW: the socket sends whole IPv4 packets (IP_HDRINCL).
const IPPROTO_RAW: i32 = 255;
/// Pacing slice: the rate is kept per slice.
const SLICE: Duration = Duration::from_millis(10);
/// The first source port; they wrap within the ephemeral range.
const SPORT_BASE: u16 = 32768;

/// One flood.
#[derive(Debug, Clone)]
pub struct Flood {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Destination ports cycled through, inclusive.
    pub ports: (u16, u16),
    /// Packets a second.
    pub rate: u32,
    /// How long; at most `rate * duration` packets are sent.
    pub duration: Duration,
}

/// The ones' complement sum of `parts`, as IP and TCP checksums are.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            sum += hi | pair.get(1).copied().map_or(0, u32::from);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP SYN from `src:sport` to `dst:dport`: IPv4 header (20 bytes) and TCP
/// header (20 bytes), checksums filled in.
pub fn syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[..12].copy_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip = checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&ip.to_be_bytes());
    let tcp = &mut p[20..];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4; // data offset: 5 words
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let sum = checksum(&[&pseudo, &p[20..]]);
    p[36..38].copy_from_slice(&sum.to_be_bytes());
    p
}

/// Sends `f` from the netns at `netns`; returns the packets sent.
pub fn flood(netns: &Path, f: &Flood) -> Result<u64> {
    let what = format!("SYN flood from {}", netns.display());
    let ns = weft_netkit::netns::NetNs::open(netns).map_err(E2eError::kernel(&what))?;
    let sock = weft_netkit::netns::run_in(&ns, || {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))
    })
    .map_err(E2eError::kernel(&what))?
    .map_err(E2eError::io(&what))?;
    let to = SockAddr::from(SocketAddrV4::new(f.dst, 0));
    let total = u64::from(f.rate) * f.duration.as_millis() as u64 / 1000;
    let per_slice = (u64::from(f.rate) * SLICE.as_millis() as u64 / 1000).max(1);
    let span = u32::from(f.ports.1.saturating_sub(f.ports.0)) + 1;
    let (t0, mut sent, mut i) = (Instant::now(), 0u64, 0u32);
    while sent < total && t0.elapsed() < f.duration {
        for _ in 0..per_slice.min(total - sent) {
            let dport = f.ports.0 + (i % span) as u16;
            let sport = SPORT_BASE + (i % 28_000) as u16;
            // A full queue on the way (ENOBUFS) loses a packet; the count says what left.
            if sock.send_to(&syn(f.src, f.dst, sport, dport, i), &to).is_ok() {
                sent += 1;
            }
            i = i.wrapping_add(1);
        }
        let next = SLICE * (i / per_slice as u32);
        if let Some(wait) = next.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_checksums_verify_to_zero() {
        let (src, dst) = (Ipv4Addr::new(10, 244, 1, 3), Ipv4Addr::new(10, 244, 1, 2));
        let p = syn(src, dst, 40000, 81, 7);
        assert_eq!(checksum(&[&p[..20]]), 0, "the IPv4 header checksums to zero");
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&src.octets());
        pseudo[4..8].copy_from_slice(&dst.octets());
        pseudo[9] = 6;
        pseudo[11] = 20;
        assert_eq!(checksum(&[&pseudo, &p[20..]]), 0, "the TCP segment checksums to zero");
        assert_eq!((p[9], p[33], u16::from_be_bytes([p[22], p[23]])), (6, 0x02, 81));
    }
}
