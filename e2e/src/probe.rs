//! The probe: one TCP connection or one UDP exchange to ADDR:PORT with a bounded
//! timeout, classified as the NetworkPolicy e2e model does (connected / refused /
//! timeout). std::net only; the caller picks the netns (see `probe_in`).
//!
//! UDP: a connected socket sends one datagram and waits for the reply; an ICMP
//! port unreachable comes back as ECONNREFUSED on the next receive.

use std::fmt;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use weft_netkit::netns::{run_in, NetNs};

use crate::error::{E2eError, Result};

/// What the probe sends over UDP (servers answer any datagram).
const UDP_PAYLOAD: &[u8] = b"probe\n";
/// The longest reply the probe reads.
const MAX_REPLY: usize = 256;

/// The transport a probe uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Proto, String> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!("unknown protocol {s:?} (tcp or udp)")),
        }
    }
}

/// How a probe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Connected (TCP) or answered (UDP); the first line of the reply, if any arrived in time.
    Connected(String),
    /// RST (TCP) or ICMP port unreachable (UDP).
    Refused,
    /// No answer within the timeout.
    Timeout,
    /// The kernel said there is no way there (ENETUNREACH, EHOSTUNREACH).
    Unreachable(String),
    /// Anything else (a local error).
    Error(String),
}

impl Outcome {
    /// The process exit code: connected 0, refused 1, timeout 2, unreachable 3, error 4.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Connected(_) => 0,
            Outcome::Refused => 1,
            Outcome::Timeout => 2,
            Outcome::Unreachable(_) => 3,
            Outcome::Error(_) => 4,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Connected(reply) => write!(f, "connected {reply}"),
            Outcome::Refused => write!(f, "refused"),
            Outcome::Timeout => write!(f, "timeout"),
            Outcome::Unreachable(e) => write!(f, "unreachable {e}"),
            Outcome::Error(e) => write!(f, "error {e}"),
        }
    }
}

/// Probes `to` from the calling thread's netns; returns within about `timeout`
/// (connect and reply share one deadline).
pub fn probe(to: SocketAddr, proto: Proto, timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    let r = match proto {
        Proto::Tcp => probe_tcp(to, timeout, deadline),
        Proto::Udp => probe_udp(to, deadline),
    };
    r.unwrap_or_else(classify)
}

/// Probes `to` from inside the netns at `netns`, on a throwaway thread.
pub fn probe_in(netns: &Path, to: SocketAddr, proto: Proto, timeout: Duration) -> Result<Outcome> {
    let ns = NetNs::open(netns).map_err(E2eError::kernel(format!("open netns {}", netns.display())))?;
    run_in(&ns, || probe(to, proto, timeout)).map_err(E2eError::kernel(format!("enter {}", netns.display())))
}

fn probe_tcp(to: SocketAddr, timeout: Duration, deadline: Instant) -> io::Result<Outcome> {
    let mut s = TcpStream::connect_timeout(&to, timeout)?;
    // Connected is the verdict; the reply is a bonus that must arrive before the deadline.
    let reply = match remaining(deadline) {
        Some(left) => {
            s.set_read_timeout(Some(left))?;
            read_reply(|buf| s.read(buf))
        }
        None => String::new(),
    };
    Ok(Outcome::Connected(reply))
}

fn probe_udp(to: SocketAddr, deadline: Instant) -> io::Result<Outcome> {
    let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let s = UdpSocket::bind(bind)?;
    s.connect(to)?;
    s.send(UDP_PAYLOAD)?;
    let Some(left) = remaining(deadline) else { return Ok(Outcome::Timeout) };
    s.set_read_timeout(Some(left))?;
    let mut buf = [0u8; MAX_REPLY];
    let n = s.recv(&mut buf)?;
    Ok(Outcome::Connected(first_line(&buf[..n])))
}

/// Reads until a newline, EOF, an error or MAX_REPLY bytes; returns the first line.
fn read_reply(mut read: impl FnMut(&mut [u8]) -> io::Result<usize>) -> String {
    let mut buf = [0u8; MAX_REPLY];
    let mut len = 0;
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        match read(&mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    first_line(&buf[..len])
}

fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines().next().unwrap_or("").trim().to_string()
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
}

fn classify(e: io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Outcome::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Outcome::Timeout,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            Outcome::Unreachable(e.to_string())
        }
        _ => Outcome::Error(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_lines_and_codes() {
        let cases = [
            (Outcome::Connected("pod-a".into()), "connected pod-a", 0),
            (Outcome::Refused, "refused", 1),
            (Outcome::Timeout, "timeout", 2),
        ];
        for (o, line, code) in cases {
            assert_eq!(o.to_string(), line);
            assert_eq!(o.exit_code(), code);
        }
        assert_eq!("udp".parse::<Proto>(), Ok(Proto::Udp));
        assert!("icmp".parse::<Proto>().is_err());
    }

    #[test]
    fn reply_is_the_first_line() {
        assert_eq!(first_line(b"pod-a\nrest"), "pod-a");
        assert_eq!(first_line(b""), "");
        let mut chunks = vec![&b"po"[..], &b"d-b\nx"[..]].into_iter();
        assert_eq!(
            read_reply(|buf| {
                let c = chunks.next().unwrap_or(b"");
                buf[..c.len()].copy_from_slice(c);
                Ok(c.len())
            }),
            "pod-b"
        );
    }
}
