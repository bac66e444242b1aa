//! The workload: on each port a TCP listener and a UDP socket on [::] (both
//! families; 0.0.0.0 where the netns has no IPv6) that
//! answer every connection / datagram with the server's name and a newline, or
//! with `NAME PEER_IP` when `echo_peer` is set (the source address the server
//! saw, so a test can tell whether a path masquerades).
//! `bind` reports bad ports before anything runs, so a caller can print a
//! readiness line between `bind` and `run`.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{E2eError, Result};

/// How long a reply write may block on a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Bound sockets, ready to `run`.
pub struct Server {
    reply: Arc<Reply>,
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

impl Server {
    /// Binds TCP and UDP on [::]:`port` (or 0.0.0.0) for each port; replies are `NAME`.
    pub fn bind(name: &str, ports: &[u16]) -> Result<Server> {
        Server::bind_with(name, ports, false)
    }

    /// `bind`; with `echo_peer` each reply is `NAME PEER_IP` (the source address seen).
    pub fn bind_with(name: &str, ports: &[u16], echo_peer: bool) -> Result<Server> {
        let reply = Arc::new(Reply { name: name.into(), echo_peer });
        let mut s = Server { reply, tcp: vec![], udp: vec![] };
        // A dual-stack socket (bindv6only is 0 in a new netns) serves IPv4 as mapped addresses.
        let any = match UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)) {
            Ok(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            Err(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        for &port in ports {
            let addr = (any, port);
            s.tcp.push(TcpListener::bind(addr).map_err(E2eError::io(format!("bind tcp port {port}")))?);
            s.udp.push(UdpSocket::bind(addr).map_err(E2eError::io(format!("bind udp port {port}")))?);
        }
        Ok(s)
    }

    /// Serves forever, one thread per socket; returns only if a thread cannot start.
    pub fn run(self) -> Result<()> {
        let mut threads = Vec::new();
        for l in self.tcp {
            let reply = self.reply.clone();
            threads.push(spawn(move || serve_tcp(l, &reply))?);
        }
        for u in self.udp {
            let reply = self.reply.clone();
            threads.push(spawn(move || serve_udp(u, &reply))?);
        }
        for t in threads {
            let _ = t.join();
        }
        Ok(())
    }
}

/// What the server answers.
struct Reply {
    name: String,
    echo_peer: bool,
}

impl Reply {
    /// The reply line for a client whose source address is `peer`.
    fn to(&self, peer: IpAddr) -> Vec<u8> {
        if self.echo_peer {
            // An IPv4 client of a dual-stack socket shows as ::ffff:a.b.c.d.
            format!("{} {}\n", self.name, peer.to_canonical()).into_bytes()
        } else {
            format!("{}\n", self.name).into_bytes()
        }
    }
}

fn spawn(f: impl FnOnce() + Send + 'static) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("weft-e2e-serve".into())
        .spawn(f)
        .map_err(E2eError::io("spawn server thread"))
}

fn serve_tcp(l: TcpListener, reply: &Reply) {
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        let Ok(peer) = c.peer_addr() else { continue };
        let _ = c.set_write_timeout(Some(WRITE_TIMEOUT));
        let _ = c.write_all(&reply.to(peer.ip()));
    }
}

fn serve_udp(u: UdpSocket, reply: &Reply) {
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((_, from)) = u.recv_from(&mut buf) {
            let _ = u.send_to(&reply.to(from.ip()), from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        let peer = IpAddr::from([172, 31, 0, 11]);
        assert_eq!(Reply { name: "web/a".into(), echo_peer: false }.to(peer), b"web/a\n");
        assert_eq!(Reply { name: "ext".into(), echo_peer: true }.to(peer), b"ext 172.31.0.11\n");
        let mapped = IpAddr::V6(Ipv4Addr::new(172, 31, 0, 11).to_ipv6_mapped());
        assert_eq!(Reply { name: "ext".into(), echo_peer: true }.to(mapped), b"ext 172.31.0.11\n");
    }
}
