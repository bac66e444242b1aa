//! PolicyIr -> the `inet weft` table, built with the `nftables` crate's types.
//!
//! ```text
//! table inet weft
//!   set local, in_iso, out_iso      ipv4_addr
//!   set local6, in_iso6, out_iso6   ipv6_addr   (from the IR's IPv6 half)
//!   set in_allow                    ipv4_addr . inet_proto . inet_service . ipv4_addr  (interval)
//!   set out_allow                   the same
//!   chain forward  (hook forward, priority -200: before iptables' FORWARD and
//!                   kube-proxy's nftables chains, so their accepts come too late
//!                   to bypass a drop here)
//!     ct state established,related              accept
//!     icmpv6 type { 135, 136 }                    accept (neighbour discovery)
//!     ip6 saddr/daddr <IPv6 pod CIDR> != @local6  drop   (fail closed)
//!     ip6 saddr @out_iso6 / ip6 daddr @in_iso6    drop   (IPv6 not compiled yet)
//!     ip saddr <pod CIDR> ip saddr != @local    drop   (fail closed)
//!     ip daddr <pod CIDR> ip daddr != @local    drop
//!     ip saddr @out_iso                         jump egress
//!     ip daddr @in_iso                          jump ingress
//!     ip saddr @local / ip daddr @local         accept
//!     ip daddr <cluster CIDR>                   accept (transit)
//!   chain ingress
//!     ip daddr . meta l4proto . th dport . ip saddr @in_allow   return
//!     ip daddr . meta l4proto . th dport @ins_<key> ip saddr @inp_<key>   return   (port groups)
//!     ip daddr @int_<hash> ip saddr @inp_<key> [meta l4proto P [th dport A-B]]   return   (groups)
//!     drop
//!   chain egress
//!     the same with saddr and daddr swapped, sets out*
//! ```
//!
//! Rules with few peers are elements of the interval set of their direction:
//! (pod, protocol, port, peer network), one lookup whatever their number. The
//! kernel refuses interval elements whose start or end falls inside another
//! element of the set, so each pod's triples are first cut into disjoint
//! boxes (`disjoint`). Rules with many peers (port groups) and rules without
//! a single port (groups) get a rule each over sets named after their peer
//! key, as in the iptables backend, so elements grow with pods plus peers.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, Range, SetItem, CT,
};
use nftables::schema::{
    Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::{JumpTarget, Limit, Log, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::backend::ObjectCounts;
use crate::model::Protocol;
use crate::nflog;
use weft_conf::hash::fnv1a64;

use crate::policy::{Direction, GroupPorts, PeerKey, PolicyIr};

/// weft's table (family inet).
pub const TABLE: &str = "weft";
/// The base chain; the others are the policy chains it jumps to.
pub const FORWARD_CHAIN: &str = "forward";
/// The forward hook's priority: before filter (0) and kube-proxy's chains.
pub const FORWARD_PRIORITY: i32 = -200;

/// True for the sets of groups and port groups (`<dir><kind>_<16 hex>`),
/// which come and go with policies; the other sets are always there.
pub fn is_group_set(name: &str) -> bool {
    name.rsplit_once('_').is_some_and(|(head, hex)| {
        !head.is_empty() && hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// Protocols and the port ranges open for them.
type ProtoPorts = ((u8, u8), Vec<(u16, u16)>);
/// A (protocol range, port range) rectangle.
pub type Rect = ((u8, u8), (u16, u16));
/// What a pod may exchange: (protocol range, port range, peer network).
pub type PortBox = ((u8, u8), (u16, u16), Ipv4Network);

/// One set element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Elem {
    Addr(Ipv4Addr),
    Addr6(Ipv6Addr),
    /// A network of an interval set of addresses (a group's peers).
    Net(Ipv4Network),
    /// (pod, protocol, port): a port group's target.
    PodPort(Ipv4Addr, u8, u16),
    /// (pod, protocol range, port range, peer network).
    Cell(Ipv4Addr, (u8, u8), (u16, u16), Ipv4Network),
    /// (pod, protocol, port, peer address): an exact triple, in a hash set.
    Exact(Ipv4Addr, u8, u16, Ipv4Addr),
}

impl Elem {
    /// The element as the nftables JSON expression.
    pub fn expr(&self) -> Expression<'static> {
        match *self {
            Elem::Addr(ip) => Expression::String(ip.to_string().into()),
            Elem::Addr6(ip) => Expression::String(ip.to_string().into()),
            Elem::Net(net) => prefix(net),
            Elem::PodPort(pod, proto, port) => Expression::Named(NamedExpression::Concat(vec![
                Expression::String(pod.to_string().into()),
                Expression::Number(u32::from(proto)),
                Expression::Number(u32::from(port)),
            ])),
            Elem::Exact(pod, proto, port, peer) => Expression::Named(NamedExpression::Concat(vec![
                Expression::String(pod.to_string().into()),
                Expression::Number(u32::from(proto)),
                Expression::Number(u32::from(port)),
                Expression::String(peer.to_string().into()),
            ])),
            Elem::Cell(pod, protos, ports, net) => Expression::Named(NamedExpression::Concat(vec![
                Expression::String(pod.to_string().into()),
                range_or_value(u32::from(protos.0), u32::from(protos.1)),
                range_or_value(u32::from(ports.0), u32::from(ports.1)),
                prefix(net),
            ])),
        }
    }

    /// Its JSON text, as `kernel::read_back` gives the kernel's elements.
    pub fn json(&self) -> String {
        // An Expression always serialises.
        serde_json::to_string(&self.expr()).unwrap_or_default()
    }
}

/// The rendered table: its sets' elements (kept as values, so changes can
/// be applied as element deltas) and its skeleton.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRendered {
    /// Set name -> its elements.
    pub sets: BTreeMap<String, BTreeSet<Elem>>,
    /// The table without elements: chains, rules and empty sets. Two renders
    /// with the same skeleton differ only in set elements.
    pub skeleton: Vec<NfListObject<'static>>,
}

impl NftRendered {
    /// Its rules, sets and set elements.
    pub fn counts(&self) -> ObjectCounts {
        ObjectCounts {
            rules: self.skeleton.iter().filter(|o| matches!(o, NfListObject::Rule(_))).count(),
            sets: self.sets.len(),
            elements: self.sets.values().map(BTreeSet::len).sum(),
        }
    }

    /// The transaction that replaces weft's table with this one atomically:
    /// add (so the delete cannot fail), delete, add, then everything afresh.
    pub fn full_transaction(&self) -> Nftables<'static> {
        let table =
            || NfListObject::Table(Table { family: NfFamily::INet, name: TABLE.into(), handle: None });
        let mut objects = vec![
            NfObject::CmdObject(NfCmd::Add(table())),
            NfObject::CmdObject(NfCmd::Delete(table())),
            NfObject::CmdObject(NfCmd::Add(table())),
        ];
        for obj in &self.skeleton {
            let obj = match obj {
                NfListObject::Set(s) => {
                    let mut s = s.clone();
                    let elems: Vec<Expression<'static>> = self
                        .sets
                        .get(s.name.as_ref())
                        .map(|m| m.iter().map(Elem::expr).collect())
                        .unwrap_or_default();
                    if !elems.is_empty() {
                        s.elem = Some(Cow::Owned(elems));
                    }
                    NfListObject::Set(s)
                }
                other => other.clone(),
            };
            objects.push(NfObject::CmdObject(NfCmd::Add(obj)));
        }
        Nftables { objects: Cow::Owned(objects) }
    }
}

fn ip_field(field: &'static str) -> Expression<'static> {
    payload("ip", field)
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: protocol.into(),
        field: field.into(),
    })))
}

fn th_dport() -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: "th".into(),
        field: "dport".into(),
    })))
}

fn l4proto() -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::L4proto }))
}

fn set_ref(name: &str) -> Expression<'static> {
    // A named set's reference: "@name".
    Expression::String(format!("@{name}").into())
}

fn prefix(n: Ipv4Network) -> Expression<'static> {
    if n.prefix() == 32 {
        return Expression::String(n.ip().to_string().into());
    }
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(n.network().to_string().into())),
        len: u32::from(n.prefix()),
    }))
}

fn prefix6(n: Ipv6Network) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(n.network().to_string().into())),
        len: u32::from(n.prefix()),
    }))
}

fn m(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn rule(
    chain: &'static str,
    expr: Vec<Statement<'static>>,
    comment: Option<&'static str>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: chain.into(),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: comment.map(Cow::Borrowed),
    })
}

fn chain(name: &'static str, hook: bool) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        newname: None,
        handle: None,
        _type: hook.then_some(NfChainType::Filter),
        hook: hook.then_some(NfHook::Forward),
        prio: hook.then_some(FORWARD_PRIORITY),
        dev: None,
        policy: hook.then_some(NfChainPolicy::Accept),
    })
}

fn set(
    name: impl Into<Cow<'static, str>>,
    kind: SetTypeValue<'static>,
    interval: bool,
) -> NfListObject<'static> {
    NfListObject::Set(Box::new(Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        handle: None,
        set_type: kind,
        policy: None,
        flags: interval.then(|| [SetFlag::Interval].into_iter().collect()),
        elem: None,
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }))
}

const ALLOW_TYPE: [SetType; 4] =
    [SetType::Ipv4Addr, SetType::InetProto, SetType::InetService, SetType::Ipv4Addr];
const POD_PORT_TYPE: [SetType; 3] = [SetType::Ipv4Addr, SetType::InetProto, SetType::InetService];

/// Renders `ir`.
pub fn render(ir: &PolicyIr) -> NftRendered {
    let addr = SetTypeValue::Single(SetType::Ipv4Addr);
    let allow = SetTypeValue::Concatenated(Cow::Borrowed(&ALLOW_TYPE));
    let addr6 = SetTypeValue::Single(SetType::Ipv6Addr);
    let mut skeleton = vec![
        set("local6", addr6.clone(), false),
        set("in_iso6", addr6.clone(), false),
        set("out_iso6", addr6, false),
        set("local", addr.clone(), false),
        set("in_iso", addr.clone(), false),
        set("out_iso", addr, false),
        set("in_exact", allow.clone(), false),
        set("out_exact", allow.clone(), false),
        set("in_allow", allow.clone(), true),
        set("out_allow", allow.clone(), true),
        chain(FORWARD_CHAIN, true),
        chain("ingress", false),
        chain("egress", false),
    ];
    if ir.v4.audit {
        let addr = SetTypeValue::Single(SetType::Ipv4Addr);
        skeleton.extend([
            set("ain_iso", addr.clone(), false),
            set("aout_iso", addr, false),
            set("ain_exact", allow.clone(), false),
            set("aout_exact", allow.clone(), false),
            set("ain_allow", allow.clone(), true),
            set("aout_allow", allow, true),
            chain("audit_in", false),
            chain("audit_out", false),
        ]);
    }
    let ct_state =
        Expression::Named(NamedExpression::CT(CT { key: "state".into(), family: None, dir: None }));
    let established = Expression::List(vec![
        Expression::String("established".into()),
        Expression::String("related".into()),
    ]);
    skeleton.push(rule(
        FORWARD_CHAIN,
        vec![m(ct_state, Operator::IN, established), Statement::Accept(None)],
        Some("weft: replies"),
    ));
    guard6(ir, &mut skeleton);
    if let Some(own) = ir.v4.pod_cidr {
        for field in ["saddr", "daddr"] {
            skeleton.push(rule(
                FORWARD_CHAIN,
                vec![
                    m(ip_field(field), Operator::EQ, prefix(own)),
                    m(ip_field(field), Operator::NEQ, set_ref("local")),
                    Statement::Drop(None),
                ],
                Some("weft: no known pod has this address yet"),
            ));
        }
    }
    let jump = |target: &'static str| Statement::Jump(JumpTarget { target: target.into() });
    skeleton.push(rule(
        FORWARD_CHAIN,
        vec![m(ip_field("saddr"), Operator::EQ, set_ref("out_iso")), jump("egress")],
        None,
    ));
    skeleton.push(rule(
        FORWARD_CHAIN,
        vec![m(ip_field("daddr"), Operator::EQ, set_ref("in_iso")), jump("ingress")],
        None,
    ));
    if ir.v4.audit {
        skeleton.push(rule(
            FORWARD_CHAIN,
            vec![m(ip_field("saddr"), Operator::EQ, set_ref("aout_iso")), jump("audit_out")],
            None,
        ));
        skeleton.push(rule(
            FORWARD_CHAIN,
            vec![m(ip_field("daddr"), Operator::EQ, set_ref("ain_iso")), jump("audit_in")],
            None,
        ));
    }
    for field in ["saddr", "daddr"] {
        skeleton.push(rule(
            FORWARD_CHAIN,
            vec![m(ip_field(field), Operator::EQ, set_ref("local")), Statement::Accept(None)],
            None,
        ));
    }
    if let Some(cluster) = ir.v4.cluster_cidr {
        skeleton.push(rule(
            FORWARD_CHAIN,
            vec![m(ip_field("daddr"), Operator::EQ, prefix(cluster)), Statement::Accept(None)],
            Some("weft: transit to a pod on another node"),
        ));
    }
    let mut dirs = vec![
        ("ingress", "daddr", "saddr", "in_allow", nflog::PREFIX_INGRESS, true),
        ("egress", "saddr", "daddr", "out_allow", nflog::PREFIX_EGRESS, true),
    ];
    if ir.v4.audit {
        // Audit chains log what is not admitted and let it pass.
        dirs.push(("audit_in", "daddr", "saddr", "ain_allow", nflog::PREFIX_AUDIT_INGRESS, false));
        dirs.push(("audit_out", "saddr", "daddr", "aout_allow", nflog::PREFIX_AUDIT_EGRESS, false));
    }
    let mut sets = BTreeMap::new();
    for (chain, pod, peer, set, log_prefix, drop) in dirs {
        let key = Expression::Named(NamedExpression::Concat(vec![
            ip_field(pod),
            l4proto(),
            th_dport(),
            ip_field(peer),
        ]));
        let exact = set.replace("_allow", "_exact");
        let exact_rule = vec![m(key.clone(), Operator::EQ, set_ref(&exact)), Statement::Return(None)];
        skeleton.push(rule(chain, exact_rule, None));
        skeleton.push(rule(chain, vec![m(key, Operator::EQ, set_ref(set)), Statement::Return(None)], None));
        let dir = match chain {
            "ingress" => &ir.v4.ingress,
            "egress" => &ir.v4.egress,
            "audit_in" => &ir.v4.audit_ingress,
            _ => &ir.v4.audit_egress,
        };
        let short = set.trim_end_matches("_allow");
        groups(dir, chain, short, (pod, peer), &mut skeleton, &mut sets);
        // The first packet of a denied connection goes to the agent's log (nflog.rs).
        let ct_new = m(
            Expression::Named(NamedExpression::CT(CT { key: "state".into(), family: None, dir: None })),
            Operator::IN,
            Expression::List(vec![Expression::String("new".into())]),
        );
        let log = Statement::Log(Some(Log {
            prefix: Some(log_prefix.into()),
            group: Some(u32::from(nflog::GROUP)),
            snaplen: Some(nflog::SNAPLEN),
            queue_threshold: None,
            level: None,
            flags: None,
        }));
        // At most `LOG_RATE` a second: a flood is cut in the kernel.
        let limit = Statement::Limit(Limit {
            rate: nflog::LOG_RATE,
            rate_unit: None,
            per: Some("second".into()),
            burst: Some(nflog::LOG_BURST),
            burst_unit: Some("packets".into()),
            inv: None,
        });
        skeleton.push(rule(chain, vec![ct_new, limit, log], None));
        if drop {
            skeleton.push(rule(chain, vec![Statement::Drop(None)], Some("weft: denied by NetworkPolicy")));
        }
    }

    sets.insert("local6".to_string(), addrs6(&ir.v6.local));
    sets.insert("in_iso6".to_string(), addrs6(&ir.v6.ingress.isolated));
    sets.insert("out_iso6".to_string(), addrs6(&ir.v6.egress.isolated));
    sets.insert("local".to_string(), addrs(&ir.v4.local));
    sets.insert("in_iso".to_string(), addrs(&ir.v4.ingress.isolated));
    sets.insert("out_iso".to_string(), addrs(&ir.v4.egress.isolated));
    for (short, dir) in [("in", &ir.v4.ingress), ("out", &ir.v4.egress)] {
        let (exact, cells) = cells(dir);
        sets.insert(format!("{short}_exact"), exact);
        sets.insert(format!("{short}_allow"), cells);
    }
    if ir.v4.audit {
        sets.insert("ain_iso".to_string(), addrs(&ir.v4.audit_ingress.isolated));
        sets.insert("aout_iso".to_string(), addrs(&ir.v4.audit_egress.isolated));
        for (short, dir) in [("ain", &ir.v4.audit_ingress), ("aout", &ir.v4.audit_egress)] {
            let (exact, cells) = cells(dir);
            sets.insert(format!("{short}_exact"), exact);
            sets.insert(format!("{short}_allow"), cells);
        }
    }
    NftRendered { sets, skeleton }
}

pub(super) fn addrs(ips: &BTreeSet<Ipv4Addr>) -> BTreeSet<Elem> {
    ips.iter().map(|ip| Elem::Addr(*ip)).collect()
}

pub(super) fn addrs6(ips: &BTreeSet<Ipv6Addr>) -> BTreeSet<Elem> {
    ips.iter().map(|ip| Elem::Addr6(*ip)).collect()
}

/// ICMPv6 neighbour solicitation and advertisement (RFC 4861).
const NEIGHBOUR_SOLICIT: u8 = 135;
const NEIGHBOUR_ADVERT: u8 = 136;

/// IPv6 fails closed (from the IR's IPv6 half): unknown addresses of this node's
/// IPv6 pod CIDR, and new connections of isolated pods, are dropped.
fn guard6(ir: &PolicyIr, skeleton: &mut Vec<NfListObject<'static>>) {
    let ip6 = |field| payload("ip6", field);
    // Neighbour solicitations and advertisements are address resolution, as
    // ARP is for IPv4: no policy governs them, and without them an isolated
    // pod could not even answer the connections it may make.
    let nd = [NEIGHBOUR_SOLICIT, NEIGHBOUR_ADVERT].map(|t| SetItem::Element(Expression::Number(t.into())));
    skeleton.push(rule(
        FORWARD_CHAIN,
        vec![
            m(payload("icmpv6", "type"), Operator::EQ, Expression::Named(NamedExpression::Set(nd.into()))),
            Statement::Accept(None),
        ],
        Some("weft: IPv6 neighbour discovery"),
    ));
    if let Some(own) = ir.v6.pod_cidr {
        for field in ["saddr", "daddr"] {
            skeleton.push(rule(
                FORWARD_CHAIN,
                vec![
                    m(ip6(field), Operator::EQ, prefix6(own)),
                    m(ip6(field), Operator::NEQ, set_ref("local6")),
                    Statement::Drop(None),
                ],
                Some("weft: no known pod has this address yet"),
            ));
        }
    }
    for (field, set) in [("saddr", "out_iso6"), ("daddr", "in_iso6")] {
        skeleton.push(rule(
            FORWARD_CHAIN,
            vec![m(ip6(field), Operator::EQ, set_ref(set)), Statement::Drop(None)],
            Some("weft: IPv6 policy is not compiled yet; isolated pods get none"),
        ));
    }
}

fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn range_or_value(lo: u32, hi: u32) -> Expression<'static> {
    if lo == hi {
        Expression::Number(lo)
    } else {
        Expression::Range(Box::new(Range { range: [Expression::Number(lo), Expression::Number(hi)] }))
    }
}

/// One rule per port group and per group of `dir` in `chain`, and their
/// sets, named after the peer key: `<dir>p_<key>` the peers (interval),
/// `<dir>s_<key>` a port group's (pod, protocol, port) targets, `<dir>t_<hash
/// of key and ports>` a group's pods. `fields` are the packet's (pod, peer)
/// address fields.
fn groups(
    dir: &Direction,
    chain: &'static str,
    short: &str,
    (pod, peer): (&'static str, &'static str),
    skeleton: &mut Vec<NfListObject<'static>>,
    sets: &mut BTreeMap<String, BTreeSet<Elem>>,
) {
    let addr = || SetTypeValue::Single(SetType::Ipv4Addr);
    let mut peer_set = |key: PeerKey, nets: &[Ipv4Network], skeleton: &mut Vec<NfListObject<'static>>| {
        let name = peer_set(short, key);
        if !sets.contains_key(&name) {
            skeleton.push(set(name.clone(), addr(), true));
            sets.insert(name.clone(), nets.iter().map(|n| Elem::Net(*n)).collect());
        }
        name
    };
    let mut rules = Vec::new();
    let mut own = BTreeMap::new();
    for g in &dir.port_groups {
        let peers = peer_set(g.key, &g.peers, skeleton);
        let targets = port_group_set(short, g.key);
        skeleton.push(set(targets.clone(), SetTypeValue::Concatenated(Cow::Borrowed(&POD_PORT_TYPE)), false));
        own.insert(targets.clone(), g.targets.iter().map(pod_port).collect());
        let key = Expression::Named(NamedExpression::Concat(vec![ip_field(pod), l4proto(), th_dport()]));
        rules.push(vec![
            m(key, Operator::EQ, set_ref(&targets)),
            m(ip_field(peer), Operator::EQ, set_ref(&peers)),
            Statement::Return(None),
        ]);
    }
    for g in &dir.groups {
        let peers = peer_set(g.key, &g.peers, skeleton);
        let targets = group_set(short, g.key, g.ports);
        skeleton.push(set(targets.clone(), addr(), false));
        own.insert(targets.clone(), addrs(&g.targets));
        let mut expr = vec![
            m(ip_field(pod), Operator::EQ, set_ref(&targets)),
            m(ip_field(peer), Operator::EQ, set_ref(&peers)),
        ];
        let proto =
            |p: Protocol| m(l4proto(), Operator::EQ, Expression::Number(u32::from(protocol_number(p))));
        match g.ports {
            GroupPorts::All => {}
            GroupPorts::Protocol(p) => expr.push(proto(p)),
            GroupPorts::Range(p, a, b) => {
                expr.push(proto(p));
                expr.push(m(th_dport(), Operator::EQ, range_or_value(u32::from(a), u32::from(b))));
            }
        }
        expr.push(Statement::Return(None));
        rules.push(expr);
    }
    sets.extend(own);
    skeleton.extend(rules.into_iter().map(|expr| rule(chain, expr, None)));
}

/// The peers set of `key` in the direction named `short` (in, out, ain, aout).
pub(super) fn peer_set(short: &str, key: PeerKey) -> String {
    format!("{short}p_{key:016x}")
}

/// The (pod, protocol, port) targets set of port group `key`.
pub(super) fn port_group_set(short: &str, key: PeerKey) -> String {
    format!("{short}s_{key:016x}")
}

/// The pod targets set of group (`key`, `ports`).
pub(super) fn group_set(short: &str, key: PeerKey, ports: GroupPorts) -> String {
    format!("{short}t_{:016x}", fnv1a64(format!("{key:016x}{ports:?}").as_bytes()))
}

/// A port group's target as an element.
pub(super) fn pod_port(&(ip, proto, port): &(Ipv4Addr, Protocol, u16)) -> Elem {
    Elem::PodPort(ip, protocol_number(proto), port)
}

/// One pod's allow elements: its triples with a single peer address as
/// exact elements (a hash set, where an element is added or deleted in
/// microseconds), the others cut into disjoint boxes of the interval set
/// (whose deletes cost the kernel tens of ms on a large set). A packet
/// matching either is admitted, so the split changes nothing it allows.
pub(super) fn pod_cells(
    pod: Ipv4Addr,
    triples: impl Iterator<Item = (Protocol, u16, Ipv4Network)>,
) -> (Vec<Elem>, Vec<Elem>) {
    let mut exact = Vec::new();
    let mut boxes: Vec<PortBox> = Vec::new();
    for (proto, port, peer) in triples {
        let p = protocol_number(proto);
        if peer.prefix() == 32 {
            exact.push(Elem::Exact(pod, p, port, peer.ip()));
        } else {
            boxes.push(((p, p), (port, port), peer));
        }
    }
    let cells = disjoint(&boxes).into_iter().map(|(protos, ports, net)| Elem::Cell(pod, protos, ports, net));
    (exact, cells.collect())
}

/// The elements of one direction's allow set: its triples.
fn cells(dir: &Direction) -> (BTreeSet<Elem>, BTreeSet<Elem>) {
    let pods: BTreeSet<Ipv4Addr> = dir.triples.iter().map(|t| t.0).collect();
    let (mut exact, mut cells) = (BTreeSet::new(), BTreeSet::new());
    for pod in pods {
        let (e, c) = pod_cells(pod, pod_triples(dir, pod));
        exact.extend(e);
        cells.extend(c);
    }
    (exact, cells)
}

/// `pod`'s triples in `dir`, as (protocol, port, peer).
pub(super) fn pod_triples(
    dir: &Direction,
    pod: Ipv4Addr,
) -> impl Iterator<Item = (Protocol, u16, Ipv4Network)> + '_ {
    const MIN_NET: Ipv4Network = Ipv4Network::new_checked(Ipv4Addr::UNSPECIFIED, 0).unwrap();
    dir.triples
        .range((pod, Protocol::Tcp, 0, MIN_NET)..)
        .take_while(move |t| t.0 == pod)
        .map(|t| (t.1, t.2, t.3))
}

/// Cuts boxes (protocol range, port range, network) into disjoint ones that
/// cover exactly the same packets. Networks are nested or disjoint; each
/// network gets only what its boxes add to those of the network around it
/// (in protocol x port), so a network and the ones inside it never share a
/// (protocol, port) and no two elements overlap: the kernel refuses an
/// interval element that starts or ends inside another.
pub fn disjoint(boxes: &[PortBox]) -> Vec<PortBox> {
    let contains = |a: &Ipv4Network, b: &Ipv4Network| a.prefix() <= b.prefix() && a.contains(b.network());
    let mut own: BTreeMap<(u32, u8), Vec<Rect>> = BTreeMap::new();
    for (protos, ports, net) in boxes {
        own.entry((u32::from(net.network()), net.prefix())).or_default().push((*protos, *ports));
    }
    // In address order, outer networks before the ones they contain: a stack
    // of the networks around the current one gives its parent in O(1).
    let mut stack: Vec<(Ipv4Network, Vec<Rect>)> = Vec::new();
    let mut out = Vec::new();
    for ((addr, prefix), rects) in own {
        // A valid network: it came from one.
        let Ok(n) = Ipv4Network::new(Ipv4Addr::from(addr), prefix) else { continue };
        while stack.last().is_some_and(|(p, _)| !contains(p, &n)) {
            stack.pop();
        }
        let around: &[Rect] = stack.last().map(|(_, c)| c.as_slice()).unwrap_or(&[]);
        for (protos, ports) in rect_difference(&rects, around) {
            out.push((protos, ports, n));
        }
        let mut coverage = around.to_vec();
        coverage.extend(rects);
        stack.push((n, coverage));
    }
    out
}

/// Disjoint (protocol range, port range) rectangles covering the union of
/// `rects` minus the union of `minus`.
fn rect_difference(rects: &[Rect], minus: &[Rect]) -> Vec<Rect> {
    let mut cuts: BTreeSet<u16> = BTreeSet::new();
    for ((lo, hi), _) in rects.iter().chain(minus) {
        cuts.insert(u16::from(*lo));
        cuts.insert(u16::from(*hi) + 1);
    }
    let cuts: Vec<u16> = cuts.into_iter().collect();
    let ports_over = |rs: &[Rect], lo: u8, hi: u8| -> Vec<(u16, u16)> {
        merge(rs.iter().filter(|((a, b), _)| *a <= lo && hi <= *b).map(|(_, p)| *p).collect())
    };
    let mut out: Vec<Rect> = Vec::new();
    // The protocol interval being built and its ports.
    let mut last: Option<ProtoPorts> = None;
    for w in cuts.windows(2) {
        // Both cuts are at most 256 and w[0] < w[1], so the interval is within 0..=255.
        let (lo, hi) = (w[0] as u8, (w[1] - 1) as u8);
        let ports = subtract_ranges(&ports_over(rects, lo, hi), &ports_over(minus, lo, hi));
        match &mut last {
            // The same ports as the protocols just before: extend that interval.
            Some(((_, h), p)) if *p == ports && u16::from(*h) + 1 == u16::from(lo) => *h = hi,
            _ => {
                if let Some((protos, p)) = last.take() {
                    out.extend(p.into_iter().map(|ports| (protos, ports)));
                }
                last = Some(((lo, hi), ports));
            }
        }
    }
    if let Some((protos, p)) = last {
        out.extend(p.into_iter().map(|ports| (protos, ports)));
    }
    out
}

/// Sorted, overlapping or adjacent ranges joined.
fn merge(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for (a, b) in ranges {
        match out.last_mut() {
            Some(l) if u32::from(a) <= u32::from(l.1) + 1 => l.1 = l.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// `have` minus `minus`, both merged and sorted.
fn subtract_ranges(have: &[(u16, u16)], minus: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    for &(a, b) in have {
        let mut start = u32::from(a);
        for &(c, d) in minus {
            let (c, d) = (u32::from(c), u32::from(d));
            if d < start || c > u32::from(b) {
                continue;
            }
            if c > start {
                out.push((start as u16, (c - 1) as u16));
            }
            start = d + 1;
        }
        if start <= u32::from(b) {
            out.push((start as u16, b));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{FamilyIr, Group, PortGroup};

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    /// Every (protocol, port, address) sample is covered by the output exactly
    /// as by the input, and no two output boxes overlap.
    fn check_disjoint(boxes: &[PortBox]) -> Vec<PortBox> {
        let out = disjoint(boxes);
        let inside = |b: &PortBox, p: u8, port: u16, ip: Ipv4Addr| {
            b.0 .0 <= p && p <= b.0 .1 && b.1 .0 <= port && port <= b.1 .1 && b.2.contains(ip)
        };
        let ips: Vec<Ipv4Addr> = ["0.0.0.1", "10.0.0.1", "10.1.0.1", "10.1.2.3", "172.31.0.100", "250.0.0.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        for p in [0u8, 1, 6, 7, 17, 18, 132, 255] {
            for port in [0u16, 79, 80, 81, 8000, 8050, 8100, 8150, 65535] {
                for ip in &ips {
                    let want = boxes.iter().any(|b| inside(b, p, port, *ip));
                    let hits = out.iter().filter(|b| inside(b, p, port, *ip)).count();
                    assert_eq!(hits, usize::from(want), "proto {p} port {port} {ip}: {out:?}");
                }
            }
        }
        out
    }

    #[test]
    fn nested_networks_get_only_what_they_add() {
        let out = check_disjoint(&[
            ((17, 17), (0, 65535), net("0.0.0.0/0")),
            ((0, 255), (0, 65535), net("172.31.0.0/24")),
            ((6, 6), (80, 80), net("10.0.0.0/8")),
            ((6, 6), (80, 80), net("10.1.0.0/16")),
        ]);
        assert_eq!(out.len(), 4, "UDP anywhere, all-but-UDP for 172.31/24, tcp 80 once: {out:?}");
    }

    #[test]
    fn partly_overlapping_port_ranges() {
        check_disjoint(&[
            ((6, 6), (8000, 8100), net("10.0.0.0/8")),
            ((6, 6), (8050, 8150), net("10.1.0.0/16")),
            ((6, 6), (80, 81), net("10.1.0.0/16")),
            ((0, 255), (0, 65535), net("10.1.2.3/32")),
        ]);
    }

    #[test]
    fn golden_skeleton_and_elements() {
        let a: Ipv4Addr = "10.244.1.2".parse().unwrap();
        let mut ir = PolicyIr {
            v4: FamilyIr { local: [a].into(), pod_cidr: Some(net("10.244.1.0/24")), ..FamilyIr::default() },
            ..PolicyIr::default()
        };
        ir.v4.ingress.isolated.insert(a);
        ir.v4.ingress.triples.insert((a, Protocol::Tcp, 80, net("10.244.2.3/32")));
        ir.v4.ingress.groups.push(Group {
            key: 1,
            targets: [a].into(),
            peers: vec![net("0.0.0.0/0")],
            ports: GroupPorts::Protocol(Protocol::Udp),
        });
        ir.v4.ingress.port_groups.push(PortGroup {
            key: 1,
            targets: [(a, Protocol::Tcp, 443)].into(),
            peers: vec![net("0.0.0.0/0")],
        });
        let r = render(&ir);
        let elems = |set: &str| -> Vec<String> { r.sets[set].iter().map(Elem::json).collect() };
        assert_eq!(elems("in_exact"), [r#"{"concat":["10.244.1.2",6,80,"10.244.2.3"]}"#], "an exact triple");
        assert!(elems("in_allow").is_empty(), "no triple with a wider peer");
        assert_eq!(
            elems("inp_0000000000000001"),
            [r#"{"prefix":{"addr":"0.0.0.0","len":0}}"#],
            "peers by key"
        );
        assert_eq!(elems("ins_0000000000000001"), [r#"{"concat":["10.244.1.2",6,443]}"#]);
        let group_targets = r.sets.keys().find(|k| k.starts_with("int_")).expect("the group's pods");
        assert_eq!(elems(group_targets), [r#""10.244.1.2""#]);
        let json = serde_json::to_string(&r.full_transaction()).unwrap();
        for want in [
            r#"{"add":{"table":{"family":"inet","name":"weft"}}},{"delete":{"table":{"family":"inet","name":"weft"}}}"#,
            r#""type":"filter","hook":"forward","prio":-200,"policy":"accept""#,
            r#"{"match":{"left":{"ct":{"key":"state"}},"right":["established","related"],"op":"in"}},{"accept":null}"#,
            r#"{"match":{"left":{"concat":[{"payload":{"protocol":"ip","field":"daddr"}},{"meta":{"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}},{"payload":{"protocol":"ip","field":"saddr"}}]},"right":"@in_exact","op":"=="}},{"return":null}"#,
            r#"{"match":{"left":{"concat":[{"payload":{"protocol":"ip","field":"daddr"}},{"meta":{"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}},{"payload":{"protocol":"ip","field":"saddr"}}]},"right":"@in_allow","op":"=="}},{"return":null}"#,
            r#"{"match":{"left":{"concat":[{"payload":{"protocol":"ip","field":"daddr"}},{"meta":{"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}}]},"right":"@ins_0000000000000001","op":"=="}},{"match":{"left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"@inp_0000000000000001","op":"=="}},{"return":null}"#,
            r#""right":"@inp_0000000000000001","op":"=="}},{"match":{"left":{"meta":{"key":"l4proto"}},"right":17,"op":"=="}},{"return":null}"#,
        ] {
            assert!(json.contains(want), "{want}\nnot in\n{json}");
        }
        assert!(!json.contains("transit"), "no cluster CIDR, no transit rule");
        // Only elements differ between two renders of the same shape.
        let mut ir2 = ir.clone();
        ir2.v4.local.insert("10.244.1.9".parse().unwrap());
        assert_eq!(render(&ir2).skeleton, r.skeleton);
    }
}
