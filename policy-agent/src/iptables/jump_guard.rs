//! Keeps weft's jumps first in mangle and filter FORWARD between syncs. Another program
//! may insert a rule in front of it at any time: kube-proxy, started after
//! the agent, prepends its KUBE-FORWARD jump, which accepts every packet
//! marked for masquerade before weft's policy sees it. Each sync checks the
//! position, but a sync may be seconds away, so a thread reacts in between:
//! - with iptables-nft, every change of FORWARD is an nf_tables netlink
//!   notification (group NFNLGRP_NFTABLES); the thread blocks on them and
//!   re-checks as soon as one concerns FORWARD of `ip mangle` or `ip
//!   filter` (a few ms);
//! - with iptables-legacy there are no notifications: it re-checks every
//!   `LEGACY_PERIOD`.
//!
//! The check itself (`kernel::ensure_jump_first`) is the caller's closure;
//! this module only decides when to run it. Parsing is pure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

/// How often the position is checked when no notification can tell.
pub const LEGACY_PERIOD: Duration = Duration::from_millis(50);
/// After a failed check (iptables-nft refuses a change that races another
/// writer's), the next try comes this much later, at most `RETRIES` times.
const RETRY: Duration = Duration::from_millis(20);
const RETRIES: usize = 50;

const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
/// NFTA_TABLE_NAME, NFTA_CHAIN_TABLE and NFTA_RULE_TABLE.
const NFTA_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_CHAIN_NAME: u16 = 3;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NLMSG_HDRLEN: usize = 16;
/// A recv error other than a lost batch (ENOBUFS) ends the listening: the
/// thread falls back to the period.
const ENOBUFS: i32 = 105;

/// Stops the guard thread when dropped (at the latest when it next wakes).
#[derive(Debug)]
pub struct JumpGuard {
    stop: Arc<AtomicBool>,
}

impl Drop for JumpGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Starts the guard thread in the calling thread's netns. `check` runs
/// whenever FORWARD may have changed, returns false if it failed (it is
/// then retried), and must return at once if `stop` (the flag the returned
/// guard sets when dropped) is set; `nft_flavour` says whether
/// notifications can be had. Returns how it watches, for the log.
pub fn spawn(
    nft_flavour: bool,
    check: impl Fn(&AtomicBool) -> bool + Send + 'static,
) -> std::io::Result<(JumpGuard, &'static str)> {
    let stop = Arc::new(AtomicBool::new(false));
    let sock = if nft_flavour { subscribe().ok() } else { None };
    let how = if sock.is_some() { "nf_tables notifications" } else { "a 50 ms period" };
    let flag = stop.clone();
    std::thread::Builder::new().name("weft-agent-jump".into()).spawn(move || {
        if let Some(sock) = sock {
            listen(&sock, &flag, &check);
        }
        while !flag.load(Ordering::SeqCst) {
            check_until_done(&flag, &check);
            std::thread::sleep(LEGACY_PERIOD);
        }
    })?;
    Ok((JumpGuard { stop }, how))
}

fn subscribe() -> std::io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.add_membership(NFNLGRP_NFTABLES)?;
    Ok(sock)
}

/// Runs `check` after each batch of notifications that touches FORWARD (or
/// after lost ones), until `stop` or a socket error.
fn listen(sock: &Socket, stop: &AtomicBool, check: &impl Fn(&AtomicBool) -> bool) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        let relevant = match sock.recv(&mut &mut buf[..], 0) {
            Ok(n) => concerns_forward(&buf[..n]),
            // Notifications were lost (a big restore elsewhere): FORWARD may have changed.
            Err(e) if e.raw_os_error() == Some(ENOBUFS) => true,
            Err(_) => return,
        };
        if relevant {
            check_until_done(stop, check);
        }
    }
}

/// Runs `check` until it succeeds, `RETRIES` times at most.
fn check_until_done(stop: &AtomicBool, check: &impl Fn(&AtomicBool) -> bool) {
    for _ in 0..RETRIES {
        if check(stop) || stop.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(RETRY);
    }
}

/// True if a datagram of nf_tables notifications changes FORWARD in `ip
/// filter` or `ip mangle`:
/// a rule added to or deleted from it, the chain created or deleted, or the
/// table deleted.
pub fn concerns_forward(buf: &[u8]) -> bool {
    let mut off = 0;
    while off + NLMSG_HDRLEN + 4 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < NLMSG_HDRLEN + 4 || off + len > buf.len() {
            return false;
        }
        if kind >> 8 == NFNL_SUBSYS_NFTABLES
            && message_concerns_forward(kind & 0xff, &buf[off + NLMSG_HDRLEN..off + len])
        {
            return true;
        }
        off += align4(len);
    }
    false
}

/// One nf_tables message body (nfgenmsg, then attributes).
fn message_concerns_forward(msg: u16, body: &[u8]) -> bool {
    // ip6tables holds weft's IPv6 chains (render.rs), jumped to first as well.
    if !matches!(body.first(), Some(&NFPROTO_IPV4 | &NFPROTO_IPV6)) {
        return false;
    }
    let name_attr = match msg {
        NFT_MSG_NEWRULE | NFT_MSG_DELRULE => NFTA_RULE_CHAIN,
        NFT_MSG_NEWCHAIN | NFT_MSG_DELCHAIN => NFTA_CHAIN_NAME,
        NFT_MSG_DELTABLE => 0,
        _ => return false,
    };
    let (mut table, mut chain) = (None, None);
    let mut off = 4;
    while off + 4 <= body.len() {
        let len = u16::from_ne_bytes([body[off], body[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([body[off + 2], body[off + 3]]) & 0x3fff;
        if len < 4 || off + len > body.len() {
            break;
        }
        let text = body[off + 4..off + len].split(|b| *b == 0).next().unwrap_or_default();
        if kind == NFTA_TABLE {
            table = Some(text);
        } else if kind == name_attr {
            chain = Some(text);
        }
        off += align4(len);
    }
    let ours = table == Some(b"filter") || table == Some(b"mangle");
    ours && (msg == NFT_MSG_DELTABLE || chain == Some(b"FORWARD"))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One nf_tables notification: nlmsghdr, nfgenmsg, string attributes.
    fn message(msg: u16, family: u8, attrs: &[(u16, &str)]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        for (kind, text) in attrs {
            let data = [text.as_bytes(), &[0]].concat();
            body.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&kind.to_ne_bytes());
            body.extend_from_slice(&data);
            body.resize(align4(body.len()), 0);
        }
        let mut out = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
        out.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn only_changes_of_ip_filter_forward_count() {
        let rule = |family, table, chain| message(NFT_MSG_NEWRULE, family, &[(1, table), (2, chain)]);
        assert!(concerns_forward(&rule(NFPROTO_IPV4, "filter", "FORWARD")));
        assert!(concerns_forward(&rule(NFPROTO_IPV4, "mangle", "FORWARD")));
        assert!(concerns_forward(&rule(NFPROTO_IPV6, "filter", "FORWARD")));
        assert!(concerns_forward(&message(NFT_MSG_DELRULE, 2, &[(1, "filter"), (2, "FORWARD")])));
        assert!(concerns_forward(&message(NFT_MSG_DELTABLE, 2, &[(1, "filter")])));
        assert!(concerns_forward(&message(NFT_MSG_DELCHAIN, 2, &[(1, "filter"), (3, "FORWARD")])));
        // weft's own chains, kube-proxy's nat table, another family, another table.
        assert!(!concerns_forward(&rule(2, "filter", "WEFT-FORWARD")));
        assert!(!concerns_forward(&rule(2, "nat", "FORWARD")));
        assert!(!concerns_forward(&rule(7, "filter", "FORWARD")), "the bridge family");
        assert!(!concerns_forward(&message(NFT_MSG_DELTABLE, 2, &[(1, "nat")])));
        // A batch: found among others; garbage is nothing.
        let batch = [rule(2, "nat", "KUBE-SERVICES"), rule(2, "filter", "FORWARD")].concat();
        assert!(concerns_forward(&batch));
        assert!(!concerns_forward(&batch[..batch.len() - 8]), "a cut message is ignored");
        assert!(!concerns_forward(&[0xff; 64]) && !concerns_forward(&[]));
    }
}
