//! IPv4 policy routing rules of the form `ip rule add from SRC lookup TABLE
//! priority PRIO protocol PROTO`. The protocol marks the owner: listing
//! returns only rules with it, so a caller never deletes a rule it did not add.

use ipnetwork::Ipv4Network;
use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::libc;
use rtnetlink::Handle;

use crate::kernel_error::{netlink, nl_errno, KernelError};
use crate::netlink_dump::dump_op;

/// `from src lookup table priority priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceRule {
    pub src: Ipv4Network,
    pub table: u32,
    pub priority: u32,
}

impl std::fmt::Display for SourceRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "from {} lookup {} priority {}", self.src, self.table, self.priority)
    }
}

fn message(r: SourceRule, proto: u8) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.action = RuleAction::ToTable;
    m.header.src_len = r.src.prefix();
    // The header's table is a u8: 0 says "see FRA_TABLE".
    m.header.table = 0;
    m.attributes.push(RuleAttribute::Table(r.table));
    m.attributes.push(RuleAttribute::Priority(r.priority));
    m.attributes.push(RuleAttribute::Source(r.src.network().into()));
    m.attributes.push(RuleAttribute::Protocol(RouteProtocol::Other(proto)));
    m
}

/// Adds rule `r` marked with `proto`; idempotent (EEXIST counts as done).
pub async fn add_rule(h: &Handle, r: SourceRule, proto: u8) -> Result<(), KernelError> {
    let mut req = h.rule().add().v4();
    *req.message_mut() = message(r, proto);
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(e) if nl_errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(netlink(format!("RTM_NEWRULE {r}"))(e)),
    }
}

/// Deletes rule `r`; `Ok(false)` if it was not there.
pub async fn delete_rule(h: &Handle, r: SourceRule, proto: u8) -> Result<bool, KernelError> {
    match h.rule().del(message(r, proto)).execute().await {
        Ok(()) => Ok(true),
        Err(e) if matches!(nl_errno(&e), Some(libc::ENOENT | libc::ESRCH)) => Ok(false),
        Err(e) => Err(netlink(format!("RTM_DELRULE {r}"))(e)),
    }
}

/// The IPv4 source rules marked with `proto` (`ip rule show protocol PROTO`), sorted.
pub async fn list_rules(h: &Handle, proto: u8) -> Result<Vec<SourceRule>, KernelError> {
    let mut req = RuleMessage::default();
    req.header.family = AddressFamily::Inet;
    let msgs = dump_op(h, RouteNetlinkMessage::GetRule(req), "RTM_GETRULE").await?;
    let mut out: Vec<SourceRule> = msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRule(r) => source_rule(r, proto),
            _ => None,
        })
        .collect();
    out.sort();
    Ok(out)
}

fn source_rule(r: &RuleMessage, proto: u8) -> Option<SourceRule> {
    let (mut table, mut priority, mut src, mut ours) = (u32::from(r.header.table), 0, None, false);
    for a in &r.attributes {
        match a {
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Source(std::net::IpAddr::V4(ip)) => src = Some(*ip),
            RuleAttribute::Protocol(p) => ours = *p == RouteProtocol::Other(proto),
            _ => {}
        }
    }
    if !ours {
        return None;
    }
    let src = Ipv4Network::new(src.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED), r.header.src_len).ok()?;
    Some(SourceRule { src, table, priority })
}
