//! Netfilter netlink dumps (ipset, nf_tables): one request with
//! NLM_F_DUMP, then the answer's messages until NLMSG_DONE, read under one
//! deadline and a bound on their total size; and requests that wait for
//! their acknowledgement. The caller builds the attributes and reads the bodies.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::netlink_attrs::{NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};

/// At most this much dump data is read: far above any set or table weft makes.
const MAX_BYTES: usize = 512 << 20;

/// A NETLINK_NETFILTER socket for dumps, in the netns of the thread that
/// opened it; every dump on it shares one deadline.
pub struct DumpSocket {
    sock: Socket,
    seq: u32,
    deadline: Instant,
    read: usize,
}

impl DumpSocket {
    /// Opens one; its dumps must all be done within `within`.
    pub fn open(within: Duration) -> io::Result<DumpSocket> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        Ok(DumpSocket { sock, seq: 0, deadline: Instant::now() + within, read: 0 })
    }

    /// Dumps message type `kind` (subsystem << 8 | command) for nfgenmsg
    /// family `family` with request attributes `attrs` (see `put_attr`):
    /// the body of every answer, after its nfgenmsg (which holds the
    /// ruleset generation). A kernel error is its errno; a timeout
    /// `TimedOut`; a malformed or oversized answer `InvalidData`.
    pub fn dump(&mut self, kind: u16, family: u8, attrs: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        self.send(kind, NLM_F_REQUEST | NLM_F_DUMP, family, attrs)?;
        self.answers()
    }

    /// Sends one request of type `kind` and waits for the kernel's
    /// acknowledgement: Ok, or the kernel's errno.
    pub fn request(&mut self, kind: u16, family: u8, attrs: &[u8]) -> io::Result<()> {
        self.send(kind, NLM_F_REQUEST | NLM_F_ACK, family, attrs)?;
        self.answers().map(drop)
    }

    fn send(&mut self, kind: u16, flags: u16, family: u8, attrs: &[u8]) -> io::Result<()> {
        self.seq += 1;
        let mut msg = Vec::with_capacity(20 + attrs.len());
        msg.extend((20 + attrs.len() as u32).to_ne_bytes());
        msg.extend(kind.to_ne_bytes());
        msg.extend(flags.to_ne_bytes());
        msg.extend(self.seq.to_ne_bytes());
        msg.extend(0u32.to_ne_bytes()); // port id: the kernel's
        msg.extend([family, 0, 0, 0]); // nfgenmsg: family, version 0, res_id
        msg.extend_from_slice(attrs);
        self.sock.send(&msg, 0).map(drop)
    }

    /// The answers to the last request: a dump's bodies up to NLMSG_DONE,
    /// or nothing once an acknowledgement (an error message of errno 0) comes.
    fn answers(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::ZERO);
            let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => return Err(io::ErrorKind::TimedOut.into()),
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let n = self.sock.recv(&mut &mut buf[..], 0)?;
            self.read += n;
            if self.read > MAX_BYTES {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "a dump larger than 512 MiB"));
            }
            if messages(&buf[..n], self.seq, &mut out)? {
                return Ok(out);
            }
        }
    }
}

/// Appends attribute `kind` with `data`, padded to 4 bytes.
pub fn put_attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    buf.extend(((4 + data.len()) as u16).to_ne_bytes());
    buf.extend(kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// Collects the bodies of `buf`'s messages of dump `seq`; true at its end.
fn messages(buf: &[u8], seq: u32, out: &mut Vec<Vec<u8>>) -> io::Result<bool> {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let len = word(off) as usize;
        if len < 16 || off + len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a message longer than what was received",
            ));
        }
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let their_seq = word(off + 8);
        let body = &buf[off + 16..off + len];
        off += len.next_multiple_of(4);
        if their_seq != seq {
            continue;
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = body.get(..4).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                // An acknowledgement: a dump never sends one (no NLM_F_ACK).
                return Ok(true);
            }
            _ => out.extend(body.get(4..).map(<[u8]>::to_vec)),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend(kind.to_ne_bytes());
        m.extend(0u16.to_ne_bytes());
        m.extend(seq.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn bodies_until_done_others_sequences_skipped_errors_are_errnos() {
        let mut out = Vec::new();
        let buf = [message(0x0607, 3, &[2, 0, 0, 0, 9, 9, 9, 9]), message(0x0607, 2, &[0; 8])].concat();
        assert!(!messages(&buf, 3, &mut out).unwrap(), "no DONE yet");
        assert_eq!(out, [vec![9, 9, 9, 9]], "after nfgenmsg; another dump's message skipped");
        assert!(messages(&message(NLMSG_DONE, 3, &[0; 4]), 3, &mut out).unwrap());
        assert!(
            messages(&message(NLMSG_ERROR, 3, &0i32.to_ne_bytes()), 3, &mut out).unwrap(),
            "an ack ends it"
        );
        let e = messages(&message(NLMSG_ERROR, 3, &(-2i32).to_ne_bytes()), 3, &mut out).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(2));
        let cut = &message(0x0607, 3, &[0; 8])[..20];
        assert_eq!(messages(cut, 3, &mut out).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
