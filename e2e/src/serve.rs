//! The workload: on each port a TCP listener and a UDP socket on 0.0.0.0 that
//! answer every connection / datagram with the server's name and a newline.
//! `bind` reports bad ports before anything runs, so a caller can print a
//! readiness line between `bind` and `run`.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{E2eError, Result};

/// How long a reply write may block on a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Bound sockets, ready to `run`.
pub struct Server {
    reply: Arc<Vec<u8>>,
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

impl Server {
    /// Binds TCP and UDP on 0.0.0.0:`port` for each port.
    pub fn bind(name: &str, ports: &[u16]) -> Result<Server> {
        let mut s = Server { reply: Arc::new(format!("{name}\n").into_bytes()), tcp: vec![], udp: vec![] };
        for &port in ports {
            let addr = (Ipv4Addr::UNSPECIFIED, port);
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

fn spawn(f: impl FnOnce() + Send + 'static) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("weft-e2e-serve".into())
        .spawn(f)
        .map_err(E2eError::io("spawn server thread"))
}

fn serve_tcp(l: TcpListener, reply: &[u8]) {
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        let _ = c.set_write_timeout(Some(WRITE_TIMEOUT));
        let _ = c.write_all(reply);
    }
}

fn serve_udp(u: UdpSocket, reply: &[u8]) {
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((_, from)) = u.recv_from(&mut buf) {
            let _ = u.send_to(reply, from);
        }
    }
}
