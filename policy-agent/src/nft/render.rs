//! PolicyIr -> the `inet weft` table, built with the `nftables` crate's types.
//! Both halves of the IR render the same way (`family`, generic over the
//! address family; `NftFamily` holds what differs: `ip` or `ip6`, the set
//! types, a name suffix "" or "6").
//!
//! ```text
//! table inet weft
//!   set local, in_iso, out_iso      ipv4_addr
//!   set in_exact, out_exact         ipv4_addr . inet_proto . inet_service . ipv4_addr
//!   set in_allow_0 .. in_allow_15, out_allow_0 .. out_allow_15
//!                                   the same, interval, one per shard
//!   set local6, in_iso6, out_iso6, in_exact6, out_exact6,
//!       in_allow6_0 .. in_allow6_15, out_allow6_0 .. out_allow6_15
//!                                   the same with ipv6_addr
//!   (with audit policies, per family: ain_iso, aout_iso, ain_exact, aout_exact,
//!    ain_allow_N, aout_allow_N, and the same with 6)
//!   chain forward  (hook forward, priority -200: before iptables' FORWARD and
//!                   kube-proxy's nftables chains, so their accepts come too late
//!                   to bypass a drop here)
//!     ct state established,related              accept (replies, both families)
//!     icmpv6 type { 135, 136 }                    accept (neighbour discovery)
//!     ip saddr <pod CIDR> ip saddr != @local    drop   (fail closed)
//!     ip daddr <pod CIDR> ip daddr != @local    drop
//!     ip saddr @out_iso                         jump egress
//!     ip daddr @in_iso                          jump ingress
//!     [ip saddr @aout_iso jump audit_out; ip daddr @ain_iso jump audit_in]
//!     ip saddr @local / ip daddr @local         accept
//!     ip daddr <cluster CIDR>                   accept (transit)
//!     the same for IPv6: ip6, the IPv6 pod and cluster CIDRs, local6,
//!       out_iso6 -> egress6, in_iso6 -> ingress6 [, audit_out6, audit_in6]
//!   chain ingress
//!     ip daddr . meta l4proto . th dport . ip saddr @in_exact   return
//!     ip daddr & 0.0.0.15 vmap { 0.0.0.0 : goto ingress_allow_0, .. }
//!     goto ingress_groups
//!   chain ingress_allow_0 .. ingress_allow_15   (a shard: pods by their low 4 bits)
//!     ip daddr . meta l4proto . th dport . ip saddr @in_allow_N   return
//!     goto ingress_groups
//!   chain ingress_groups
//!     ip daddr . meta l4proto . th dport @ins_<key> ip saddr @inp_<key>   return   (port groups)
//!     ip daddr @int_<hash> ip saddr @inp_<key> [meta l4proto P [th dport A-B]]   return   (groups)
//!     ct state new limit rate 100/second log group 87 (the agent's denial log)
//!     drop
//!   chain egress, egress_allow_N, egress_groups
//!     the same with saddr and daddr swapped, sets out*
//!   chain ingress6, egress6 (and their _allow_N, _groups)
//!     the same with ip6 (mask ::f), sets *6, group sets inp6_<key>, ins6_<key>, int6_<hash>
//!   chain audit_in, audit_out, audit_in6, audit_out6 (and theirs; audit policies only)
//!     the same over the a* sets, logging without a drop
//! ```
//!
//! An `ip`/`ip6` match implies its family, so the halves never see each
//! other's packets, and a pod isolated in one family is isolated there only.
//! Every change is one transaction (kernel.rs), so no packet meets a table
//! half applied: an isolated pod's new connections go through its policy
//! chain in both families at every moment.
//!
//! Rules with few peers are elements of the interval set of their direction:
//! (pod, protocol, port, peer network), one lookup whatever their number. The
//! kernel refuses interval elements whose start or end falls inside another
//! element of the set, so each pod's triples are first cut into disjoint
//! boxes (`disjoint`). Rules with many peers (port groups) and rules without
//! a single port (groups) get a rule each over sets named after their peer
//! key, as in the iptables backend, so elements grow with pods plus peers.
//!
//! The interval sets are split in `POD_SHARDS` by the low bits of the
//! local pod's address, each looked up from a chain of its own that a
//! verdict map picks (gotos keep the caller's return): the kernel deletes an
//! element of an interval concatenation set in time that grows with the
//! whole set (nft_pipapo_remove, about 3 us per element held), so a pod
//! leaving 2,700 ipBlock cells behind took 60-110 ms to delete in one set,
//! and a sixteenth of that in a shard. One more lookup per new connection.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use nftables::expr::{
    BinaryOperation, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, Range,
    SetItem, Verdict, CT,
};
use nftables::schema::{
    Chain, NfCmd, NfListObject, NfObject, Rule, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::{JumpTarget, Limit, Log, Match, Operator, Statement, VerdictMap};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::backend::ObjectCounts;
use crate::model::{Action, Protocol, Tier};
use crate::nflog;
use weft_conf::hash::fnv1a64;

use crate::policy::family::{anywhere, contains, Family};
use crate::policy::{
    Cell, Class, Direction, Dirty, FamilyDirty, FamilyIr, GroupPorts, PeerKey, PolicyIr, Region,
};

/// weft's table (family inet).
pub const TABLE: &str = "weft";
/// The base chain; the others are the policy chains it jumps to.
pub const FORWARD_CHAIN: &str = "forward";
/// The forward hook's priority: before filter (0) and kube-proxy's chains.
pub const FORWARD_PRIORITY: i32 = -200;

/// NetworkPolicy's interval sets of each view and ClusterNetworkPolicy's
/// sets of each tier and direction are split in this many by the local
/// pod's address.
pub const POD_SHARDS: u8 = 16;

/// The shard of `pod`'s elements: the low bits of its address, which pod
/// address allocation spreads evenly.
pub fn pod_shard<A: Family>(pod: A) -> u8 {
    // Below POD_SHARDS, so it fits.
    (pod.as_u128() % u128::from(POD_SHARDS)) as u8
}

/// True for the sets of groups and port groups (`<dir><kind>[6]_<16 hex>`),
/// which come and go with policies; the other sets are always there.
pub fn is_group_set(name: &str) -> bool {
    name.rsplit_once('_').is_some_and(|(head, hex)| {
        !head.is_empty() && hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// What the table's IPv4 and IPv6 halves differ in.
pub trait NftFamily: Family {
    /// The payload protocol of the address fields: "ip" or "ip6".
    const PAYLOAD: &'static str;
    /// An address.
    const ADDR: SetType;
    /// (pod, protocol, port, peer): the exact and allow sets.
    const ALLOW_TYPE: &'static [SetType];
    /// (pod, protocol, port): a port group's targets.
    const POD_PORT_TYPE: &'static [SetType];
    /// Ends the names of this half's sets and chains (before a group set's key).
    const SUFFIX: &'static str;
    /// An element of this family as the table's element type.
    fn elem(e: FamilyElem<Self>) -> Elem;
    /// This family's half of the IR.
    fn half(ir: &PolicyIr) -> &FamilyIr<Self>;
    /// And of what changed.
    fn dirty(d: &Dirty) -> &FamilyDirty<Self>;
}

impl NftFamily for Ipv4Addr {
    const PAYLOAD: &'static str = "ip";
    const ADDR: SetType = SetType::Ipv4Addr;
    const ALLOW_TYPE: &'static [SetType] =
        &[SetType::Ipv4Addr, SetType::InetProto, SetType::InetService, SetType::Ipv4Addr];
    const POD_PORT_TYPE: &'static [SetType] = &[SetType::Ipv4Addr, SetType::InetProto, SetType::InetService];
    const SUFFIX: &'static str = "";
    fn elem(e: FamilyElem<Self>) -> Elem {
        Elem::V4(e)
    }
    fn half(ir: &PolicyIr) -> &FamilyIr<Self> {
        &ir.v4
    }
    fn dirty(d: &Dirty) -> &FamilyDirty<Self> {
        &d.v4
    }
}

impl NftFamily for Ipv6Addr {
    const PAYLOAD: &'static str = "ip6";
    const ADDR: SetType = SetType::Ipv6Addr;
    const ALLOW_TYPE: &'static [SetType] =
        &[SetType::Ipv6Addr, SetType::InetProto, SetType::InetService, SetType::Ipv6Addr];
    const POD_PORT_TYPE: &'static [SetType] = &[SetType::Ipv6Addr, SetType::InetProto, SetType::InetService];
    const SUFFIX: &'static str = "6";
    fn elem(e: FamilyElem<Self>) -> Elem {
        Elem::V6(Box::new(e))
    }
    fn half(ir: &PolicyIr) -> &FamilyIr<Self> {
        &ir.v6
    }
    fn dirty(d: &Dirty) -> &FamilyDirty<Self> {
        &d.v6
    }
}

/// Protocols and the port ranges open for them.
type ProtoPorts = ((u8, u8), Vec<(u16, u16)>);
/// A (protocol range, port range) rectangle.
pub type Rect = ((u8, u8), (u16, u16));
/// What a pod may exchange: (protocol range, port range, peer network).
pub type PortBox<A = Ipv4Addr> = ((u8, u8), (u16, u16), <A as Family>::Net);

/// One set element of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FamilyElem<A: Family = Ipv4Addr> {
    Addr(A),
    /// A network of an interval set of addresses (a group's peers).
    Net(A::Net),
    /// (pod, protocol, port): a port group's target.
    PodPort(A, u8, u16),
    /// (pod, protocol range, port range, peer network).
    Cell(A, (u8, u8), (u16, u16), A::Net),
    /// (pod, protocol, port, peer address): an exact triple, in a hash set.
    Exact(A, u8, u16, A),
}

/// One set element. IPv6 ones are boxed: an IPv4 element stays 16 bytes
/// (an IPv6 cell is 40), and IPv4 elements are most of a large table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Elem {
    V4(FamilyElem<Ipv4Addr>),
    V6(Box<FamilyElem<Ipv6Addr>>),
}

impl From<FamilyElem<Ipv4Addr>> for Elem {
    fn from(e: FamilyElem<Ipv4Addr>) -> Elem {
        Ipv4Addr::elem(e)
    }
}

impl From<FamilyElem<Ipv6Addr>> for Elem {
    fn from(e: FamilyElem<Ipv6Addr>) -> Elem {
        Ipv6Addr::elem(e)
    }
}

impl<A: Family> FamilyElem<A> {
    /// The element as the nftables JSON expression.
    pub fn expr(&self) -> Expression<'static> {
        let addr = |a: A| Expression::String(a.to_string().into());
        let concat = |items| Expression::Named(NamedExpression::Concat(items));
        match *self {
            FamilyElem::Addr(ip) => addr(ip),
            FamilyElem::Net(net) => prefix::<A>(net),
            FamilyElem::PodPort(pod, proto, port) => concat(vec![
                addr(pod),
                Expression::Number(u32::from(proto)),
                Expression::Number(u32::from(port)),
            ]),
            FamilyElem::Exact(pod, proto, port, peer) => concat(vec![
                addr(pod),
                Expression::Number(u32::from(proto)),
                Expression::Number(u32::from(port)),
                addr(peer),
            ]),
            FamilyElem::Cell(pod, protos, ports, net) => concat(vec![
                addr(pod),
                range_or_value(u32::from(protos.0), u32::from(protos.1)),
                range_or_value(u32::from(ports.0), u32::from(ports.1)),
                prefix::<A>(net),
            ]),
        }
    }
}

impl Elem {
    /// The element as the nftables JSON expression.
    pub fn expr(&self) -> Expression<'static> {
        match self {
            Elem::V4(e) => e.expr(),
            Elem::V6(e) => e.expr(),
        }
    }

    /// Its shard by its first address (`pod_shard`): for a cell, its pod's.
    pub fn shard(&self) -> u8 {
        fn first<A: Family>(e: &FamilyElem<A>) -> A {
            match *e {
                FamilyElem::Addr(a)
                | FamilyElem::PodPort(a, ..)
                | FamilyElem::Cell(a, ..)
                | FamilyElem::Exact(a, ..) => a,
                FamilyElem::Net(n) => A::network(n),
            }
        }
        match self {
            Elem::V4(e) => pod_shard(first(e)),
            Elem::V6(e) => pod_shard(first(e.as_ref())),
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

    /// The transaction that replaces weft's table with this one atomically
    /// (add, so the delete cannot fail, delete, add, then everything
    /// afresh), as the JSON `nft -j -f -` reads. Written one object at a
    /// time: a set's elements are `nftables` expressions only while that
    /// set is written (all at once, 68k elements took about 20 MiB).
    pub fn full_transaction_json(&self) -> serde_json::Result<String> {
        struct Objects<'r>(&'r NftRendered);
        impl Serialize for Objects<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.full_objects())
            }
        }
        struct Transaction<'r>(&'r NftRendered);
        impl Serialize for Transaction<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                // `nftables::schema::Nftables`'s form.
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("nftables", &Objects(self.0))?;
                m.end()
            }
        }
        serde_json::to_string(&Transaction(self))
    }

    fn full_objects(&self) -> impl Iterator<Item = NfObject<'static>> + '_ {
        let table =
            || NfListObject::Table(Table { family: NfFamily::INet, name: TABLE.into(), handle: None });
        let head = [NfCmd::Add(table()), NfCmd::Delete(table()), NfCmd::Add(table())];
        let body = self.skeleton.iter().map(|obj| match obj {
            NfListObject::Set(s) => NfCmd::Add(NfListObject::Set(self.with_elements(s))),
            other => NfCmd::Add(other.clone()),
        });
        head.into_iter().chain(body).map(NfObject::CmdObject)
    }

    /// The skeleton's declaration of set `s` with its elements, as adding
    /// the set writes them.
    pub(super) fn with_elements(&self, s: &Set<'static>) -> Box<Set<'static>> {
        let mut s = Box::new(s.clone());
        let elems: Vec<Expression<'static>> =
            self.sets.get(s.name.as_ref()).map(|m| m.iter().map(Elem::expr).collect()).unwrap_or_default();
        if !elems.is_empty() {
            s.elem = Some(Cow::Owned(elems));
        }
        s
    }
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: protocol.into(),
        field: field.into(),
    })))
}

fn th_dport() -> Expression<'static> {
    payload("th", "dport")
}

fn l4proto() -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::L4proto }))
}

fn set_ref(name: &str) -> Expression<'static> {
    // A named set's reference: "@name".
    Expression::String(format!("@{name}").into())
}

/// A network; one address as itself, as nft lists it.
fn prefix<A: Family>(n: A::Net) -> Expression<'static> {
    if A::prefix(n) == A::BITS {
        return Expression::String(A::network(n).to_string().into());
    }
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(A::network(n).to_string().into())),
        len: u32::from(A::prefix(n)),
    }))
}

/// A network's last address.
pub(super) fn last<A: Family>(n: A::Net) -> A {
    let width = u32::from(A::BITS - A::prefix(n));
    let host = if width == 128 { u128::MAX } else { (1u128 << width) - 1 };
    A::from_u128(A::network(n).as_u128() | host)
}

fn m(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn rule(
    chain: impl Into<Cow<'static, str>>,
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

fn chain(name: impl Into<Cow<'static, str>>, hook: bool) -> NfListObject<'static> {
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

/// One direction's view of the policy: ingress, egress, or their audit ones.
#[derive(Debug, Clone, Copy)]
pub(super) struct View {
    /// Which direction of the IR (and of what changed) it renders.
    index: usize,
    /// Names the view's sets: `<short>_iso`, `<short>_exact`, `<short>_allow`,
    /// `<short><kind>_<key>`, each with the family's suffix.
    pub short: &'static str,
    chain: &'static str,
    /// The packet's address fields of the local pod and of the peer.
    pod: &'static str,
    peer: &'static str,
    log_prefix: &'static str,
    /// What the view does not admit is dropped (enforced views) or only
    /// logged (audit views).
    drop: bool,
}

pub(super) const VIEWS: [View; 4] = [
    View {
        index: 0,
        short: "in",
        chain: "ingress",
        pod: "daddr",
        peer: "saddr",
        log_prefix: nflog::PREFIX_INGRESS,
        drop: true,
    },
    View {
        index: 1,
        short: "out",
        chain: "egress",
        pod: "saddr",
        peer: "daddr",
        log_prefix: nflog::PREFIX_EGRESS,
        drop: true,
    },
    View {
        index: 2,
        short: "ain",
        chain: "audit_in",
        pod: "daddr",
        peer: "saddr",
        log_prefix: nflog::PREFIX_AUDIT_INGRESS,
        drop: false,
    },
    View {
        index: 3,
        short: "aout",
        chain: "audit_out",
        pod: "saddr",
        peer: "daddr",
        log_prefix: nflog::PREFIX_AUDIT_EGRESS,
        drop: false,
    },
];

/// The views a family renders: the audit ones only with audit policies.
pub(super) fn views(audit: bool) -> &'static [View] {
    if audit {
        &VIEWS
    } else {
        &VIEWS[..2]
    }
}

impl View {
    /// This view's one of (ingress, egress, audit ingress, audit egress).
    pub(super) fn pick<T>(&self, [i, e, ai, ae]: [T; 4]) -> T {
        match self.index {
            0 => i,
            1 => e,
            2 => ai,
            _ => ae,
        }
    }

    /// True for the audit views, which log and never drop.
    pub(super) fn audit(&self) -> bool {
        !self.drop
    }

    /// The name of its set `kind` (iso, exact) in family `A`.
    pub(super) fn set<A: NftFamily>(&self, kind: &str) -> String {
        format!("{}_{kind}{}", self.short, A::SUFFIX)
    }

    /// Its interval set of shard `shard` in family `A`.
    pub(super) fn allow_set<A: NftFamily>(&self, shard: u8) -> String {
        format!("{}_allow{}_{shard}", self.short, A::SUFFIX)
    }

    /// The chain that looks shard `shard` up.
    fn allow_chain<A: NftFamily>(&self, shard: u8) -> String {
        format!("{}{}_allow_{shard}", self.chain, A::SUFFIX)
    }

    /// The chain of its groups and of what no rule admits.
    fn groups_chain<A: NftFamily>(&self) -> String {
        format!("{}{}_groups", self.chain, A::SUFFIX)
    }
}

/// Renders `ir`.
pub fn render(ir: &PolicyIr) -> NftRendered {
    let mut p = Parts::default();
    let ct_state =
        Expression::Named(NamedExpression::CT(CT { key: "state".into(), family: None, dir: None }));
    let established = Expression::List(vec![
        Expression::String("established".into()),
        Expression::String("related".into()),
    ]);
    p.forward.push(rule(
        FORWARD_CHAIN,
        vec![m(ct_state, Operator::IN, established), Statement::Accept(None)],
        Some("weft: replies"),
    ));
    // Neighbour solicitations and advertisements are address resolution, as
    // ARP is for IPv4: no policy governs them, and without them an isolated
    // pod could not even answer the connections it may make.
    let nd = [NEIGHBOUR_SOLICIT, NEIGHBOUR_ADVERT].map(|t| SetItem::Element(Expression::Number(t.into())));
    p.forward.push(rule(
        FORWARD_CHAIN,
        vec![
            m(payload("icmpv6", "type"), Operator::EQ, Expression::Named(NamedExpression::Set(nd.into()))),
            Statement::Accept(None),
        ],
        Some("weft: IPv6 neighbour discovery"),
    ));
    family(&ir.v4, &mut p);
    family(&ir.v6, &mut p);
    let Parts { sets, chains, forward, policy, elems } = p;
    let mut skeleton = sets;
    skeleton.push(chain(FORWARD_CHAIN, true));
    skeleton.extend(chains);
    skeleton.extend(forward);
    skeleton.extend(policy);
    NftRendered { sets: elems, skeleton }
}

/// The table in the order it is written (sets before the rules naming them).
#[derive(Default)]
struct Parts {
    /// The fixed sets (group sets are in `policy`, before their rules).
    sets: Vec<NfListObject<'static>>,
    /// The policy chains.
    chains: Vec<NfListObject<'static>>,
    /// The forward chain's rules.
    forward: Vec<NfListObject<'static>>,
    /// Group sets and the policy chains' rules.
    policy: Vec<NfListObject<'static>>,
    elems: BTreeMap<String, BTreeSet<Elem>>,
}

/// ICMPv6 neighbour solicitation and advertisement (RFC 4861).
const NEIGHBOUR_SOLICIT: u8 = 135;
const NEIGHBOUR_ADVERT: u8 = 136;

/// One family's half of the table: its sets, its forward rules (fail closed
/// for unknown addresses of its pod CIDR, jumps by isolation, local and
/// transit accepts) and its policy chains.
fn family<A: NftFamily>(fir: &FamilyIr<A>, p: &mut Parts) {
    let s = A::SUFFIX;
    let f = |field: &'static str| payload(A::PAYLOAD, field);
    let addr = || SetTypeValue::Single(A::ADDR);
    let allow = || SetTypeValue::Concatenated(Cow::Borrowed(A::ALLOW_TYPE));
    let local = format!("local{s}");
    p.sets.push(set(local.clone(), addr(), false));
    p.elems.insert(local.clone(), addrs(&fir.local));
    let views = views(fir.audit);
    for kind in ["iso", "exact"] {
        for v in views {
            let name = v.set::<A>(kind);
            p.sets.push(if kind == "iso" { set(name, addr(), false) } else { set(name, allow(), false) });
        }
    }
    for v in views {
        p.sets.extend((0..POD_SHARDS).map(|k| set(v.allow_set::<A>(k), allow(), true)));
    }
    for v in views {
        let dir = v.pick([&fir.ingress, &fir.egress, &fir.audit_ingress, &fir.audit_egress]);
        p.elems.insert(v.set::<A>("iso"), addrs(&dir.isolated));
        let (exact, shards) = cells(dir);
        p.elems.insert(v.set::<A>("exact"), exact);
        for (k, cells) in (0..POD_SHARDS).zip(shards) {
            p.elems.insert(v.allow_set::<A>(k), cells);
        }
        policy_chain(v, dir, p);
    }

    if let Some(own) = fir.pod_cidr {
        for field in ["saddr", "daddr"] {
            p.forward.push(rule(
                FORWARD_CHAIN,
                vec![
                    m(f(field), Operator::EQ, prefix::<A>(own)),
                    m(f(field), Operator::NEQ, set_ref(&local)),
                    Statement::Drop(None),
                ],
                Some("weft: no known pod has this address yet"),
            ));
        }
    }
    // Egress before ingress, enforced before audit: a packet between two
    // isolated pods passes both.
    let cluster = !fir.cluster.is_empty();
    for i in [1, 0, 3, 2] {
        let Some(v) = views.get(i) else { continue };
        // With ClusterNetworkPolicy, every local pod's connections walk
        // the tiers, NetworkPolicy's chain among them (`cluster_chains`).
        let (from, to) = if cluster && !v.audit() {
            (local.clone(), format!("cnp_a{}{s}", v.short))
        } else {
            (v.set::<A>("iso"), format!("{}{s}", v.chain))
        };
        let jump = Statement::Jump(JumpTarget { target: to.into() });
        p.forward.push(rule(FORWARD_CHAIN, vec![m(f(v.pod), Operator::EQ, set_ref(&from)), jump], None));
    }
    if cluster {
        cluster_chains(fir, p);
    }
    for field in ["saddr", "daddr"] {
        p.forward.push(rule(
            FORWARD_CHAIN,
            vec![m(f(field), Operator::EQ, set_ref(&local)), Statement::Accept(None)],
            None,
        ));
    }
    if let Some(cluster) = fir.cluster_cidr {
        p.forward.push(rule(
            FORWARD_CHAIN,
            vec![m(f("daddr"), Operator::EQ, prefix::<A>(cluster)), Statement::Accept(None)],
            Some("weft: transit to a pod on another node"),
        ));
    }
}

/// View `v`'s policy chains: its exact set, the shard of its interval sets
/// the pod's address picks, its port groups and groups, and what it does
/// with the rest (log, and drop unless audit). Every path that no set
/// admits ends in the groups chain: a shard missing from the map too.
fn policy_chain<A: NftFamily>(v: &View, dir: &Direction<A>, p: &mut Parts) {
    let f = |field: &'static str| payload(A::PAYLOAD, field);
    let name = format!("{}{}", v.chain, A::SUFFIX);
    let rest = v.groups_chain::<A>();
    let goto = |c: String| Statement::Goto(JumpTarget { target: c.into() });
    let key = Expression::Named(NamedExpression::Concat(vec![f(v.pod), l4proto(), th_dport(), f(v.peer)]));
    let lookup = |set: String| vec![m(key.clone(), Operator::EQ, set_ref(&set)), Statement::Return(None)];
    p.chains.push(chain(name.clone(), false));
    p.policy.push(rule(name.clone(), lookup(v.set::<A>("exact")), None));
    p.policy.push(rule(name.clone(), vec![shard_vmap::<A>(f(v.pod), |k| v.allow_chain::<A>(k))], None));
    p.policy.push(rule(name, vec![goto(rest.clone())], None));
    for k in 0..POD_SHARDS {
        let shard = v.allow_chain::<A>(k);
        p.chains.push(chain(shard.clone(), false));
        p.policy.push(rule(shard.clone(), lookup(v.allow_set::<A>(k)), None));
        p.policy.push(rule(shard, vec![goto(rest.clone())], None));
    }
    p.chains.push(chain(rest.clone(), false));
    groups(dir, &rest, v, p);
    p.policy.push(rule(rest.clone(), log_new(v.log_prefix), None));
    if v.drop {
        p.policy.push(rule(rest, vec![Statement::Drop(None)], Some("weft: denied by NetworkPolicy")));
    }
}

/// `<pod> & 15 vmap { 0 : goto <chain(0)>, .. }`: to the chain of the
/// pod's shard (`pod_shard`), the caller's return kept.
fn shard_vmap<A: NftFamily>(pod: Expression<'static>, chain: impl Fn(u8) -> String) -> Statement<'static> {
    let mask = Expression::String(A::from_u128(u128::from(POD_SHARDS - 1)).to_string().into());
    let shards = (0..POD_SHARDS)
        .map(|k| {
            let at = Expression::String(A::from_u128(u128::from(k)).to_string().into());
            SetItem::Mapping(at, Expression::Verdict(Verdict::Goto(JumpTarget { target: chain(k).into() })))
        })
        .collect();
    Statement::VerdictMap(VerdictMap {
        key: Expression::BinaryOperation(Box::new(BinaryOperation::AND(pod, mask))),
        data: Expression::Named(NamedExpression::Set(shards)),
    })
}

/// The first packet of a denied connection goes to the agent's log
/// (nflog.rs), at most `LOG_RATE` a second: a flood is cut in the kernel.
fn log_new(prefix: &'static str) -> Vec<Statement<'static>> {
    let ct_new = m(
        Expression::Named(NamedExpression::CT(CT { key: "state".into(), family: None, dir: None })),
        Operator::IN,
        Expression::List(vec![Expression::String("new".into())]),
    );
    let log = Statement::Log(Some(Log {
        prefix: Some(prefix.into()),
        group: Some(u32::from(nflog::GROUP)),
        snaplen: Some(nflog::SNAPLEN),
        queue_threshold: None,
        level: None,
        flags: None,
    }));
    let limit = Statement::Limit(Limit {
        rate: nflog::LOG_RATE,
        rate_unit: None,
        per: Some("second".into()),
        burst: Some(nflog::LOG_BURST),
        burst_unit: Some("packets".into()),
        inv: None,
    });
    vec![ct_new, limit, log]
}

/// ClusterNetworkPolicy's chains in one family, per direction (`in`, `out`):
///
/// ```text
/// cnp_a<dir>     <pod> & 15 vmap { N : goto cnp_a<dir>_N }
/// cnp_a<dir>_N   (unknown pod) key @cnp_a<dir>_unknown_N goto cnp_d<dir>;
///                key @cnp_a<dir>_deny_N goto cnp_d<dir>; key @cnp_a<dir>_accept_N return;
///                key @cnp_a<dir>_pass_N goto cnp_np<dir>; goto cnp_a<dir>_g
/// cnp_a<dir>_g   the Admin regions matched by rules of their own; goto cnp_np<dir>
/// cnp_np<dir>    <pod> @<dir>_iso goto <NetworkPolicy chain>; goto cnp_b<dir>
/// cnp_b<dir>, cnp_b<dir>_N, cnp_b<dir>_g
///                the same for Baseline, Deny only, ending in return
/// cnp_d<dir>     log (as NetworkPolicy's denials); drop
/// ```
///
/// where key is (pod, protocol, port, peer) and the sets hold the regions
/// of `policy::cluster`, which are disjoint, so the lookups' order does not
/// matter: four per direction on the Admin tier and two on Baseline,
/// whatever the number of policies. Accept is a return, so an egress
/// Accept still meets ingress at a local destination; Pass a goto past the
/// rest of its tier. Baseline Accept and Pass need no set: nothing after
/// them denies. Each set is split by the local pod's low bits into
/// `POD_SHARDS` sets, each looked up from a chain of its own, as
/// NetworkPolicy's interval sets are and for the same reason: the kernel
/// deletes an element of such a set in time that grows with the set, and
/// a pod coming or going moves tens of elements of every class it is a
/// peer of (1k pods, 10 CNPs: 50 deletes took 1.2-3.7 s in one set).
fn cluster_chains<A: NftFamily>(fir: &FamilyIr<A>, p: &mut Parts) {
    let s = A::SUFFIX;
    // What tells a pod not known yet: every known pod, every node's pod CIDR.
    let (pods, nets) = (format!("cnp_pods{s}"), format!("cnp_podnets{s}"));
    p.sets.push(set(pods.clone(), SetTypeValue::Single(A::ADDR), false));
    p.elems.insert(pods.clone(), addrs(&fir.cluster.known));
    p.sets.push(set(nets.clone(), SetTypeValue::Single(A::ADDR), true));
    p.elems
        .insert(nets.clone(), fir.cluster.pod_cidrs.iter().map(|n| A::elem(FamilyElem::Net(*n))).collect());
    let f = |field: &'static str| payload(A::PAYLOAD, field);
    let kind = || SetTypeValue::Concatenated(Cow::Borrowed(A::ALLOW_TYPE));
    let goto = |c: &str| Statement::Goto(JumpTarget { target: c.to_string().into() });
    for v in &VIEWS[..2] {
        let dir = v.short;
        let ingress = v.index == 0;
        let key =
            Expression::Named(NamedExpression::Concat(vec![f(v.pod), l4proto(), th_dport(), f(v.peer)]));
        let [admin, np, base, deny] = ["a", "np", "b", "d"].map(|c| format!("cnp_{c}{dir}{s}"));
        for c in [&admin, &np, &base, &deny] {
            p.chains.push(chain(c.clone(), false));
        }
        for (tier, tier_chain) in [(Tier::Admin, &admin), (Tier::Baseline, &base)] {
            let classes = fir.cluster.get(tier, ingress);
            let rest = format!("{tier_chain}_g");
            p.policy.push(rule(
                tier_chain.clone(),
                vec![shard_vmap::<A>(f(v.pod), |k| format!("{tier_chain}_{k}"))],
                None,
            ));
            p.policy.push(rule(tier_chain.clone(), vec![goto(&rest)], None));
            // A pod not known yet is denied first where a Deny may be meant for it.
            let unknown = unknown_set::<A>(v, tier);
            let not_known =
                [m(f(v.peer), Operator::EQ, set_ref(&nets)), m(f(v.peer), Operator::NEQ, set_ref(&pods))];
            let verdicts: Vec<(Action, Statement<'static>)> = CLUSTER_SETS
                .into_iter()
                .filter(|(t, _)| *t == tier)
                .map(|(_, action)| match action {
                    Action::Accept => (action, Statement::Return(None)),
                    Action::Pass => (action, goto(&np)),
                    Action::Deny => (action, goto(&deny)),
                })
                .collect();
            // (set, what else the rule asks, verdict, elements)
            let mut lookups = vec![(unknown, &not_known[..], goto(&deny), unknown_elems(classes))];
            for (action, verdict) in &verdicts {
                let elems = region_elems(classes, *action);
                lookups.push((cluster_set::<A>(v, tier, *action), &[], verdict.clone(), elems));
            }
            let shard_chains: Vec<String> = (0..POD_SHARDS).map(|k| format!("{tier_chain}_{k}")).collect();
            for c in &shard_chains {
                p.chains.push(chain(c.clone(), false));
            }
            for (base_name, guard, verdict, elems) in lookups {
                for (k, (name, elems)) in sharded(&base_name, elems).into_iter().enumerate() {
                    p.sets.push(set(name.clone(), kind(), true));
                    p.elems.insert(name.clone(), elems);
                    let mut expr = guard.to_vec();
                    expr.extend([m(key.clone(), Operator::EQ, set_ref(&name)), verdict.clone()]);
                    p.policy.push(rule(shard_chains[k].clone(), expr, None));
                }
            }
            for c in &shard_chains {
                p.policy.push(rule(c.clone(), vec![goto(&rest)], None));
            }
            p.chains.push(chain(rest.clone(), false));
            for (action, verdict) in verdicts {
                cluster_groups(classes, action, v, &rest, verdict, p);
            }
            let end = if tier == Tier::Admin { goto(&np) } else { Statement::Return(None) };
            p.policy.push(rule(rest, vec![end], None));
        }
        let policy_chain = format!("{}{s}", v.chain);
        p.policy.push(rule(
            np.clone(),
            vec![m(f(v.pod), Operator::EQ, set_ref(&v.set::<A>("iso"))), goto(&policy_chain)],
            None,
        ));
        p.policy.push(rule(np, vec![goto(&base)], None));
        p.policy.push(rule(deny.clone(), log_new(v.log_prefix), None));
        p.policy.push(rule(deny, vec![Statement::Drop(None)], Some("weft: denied by ClusterNetworkPolicy")));
    }
}

/// The regions of `classes` with `action` too big for the verdict sets
/// (`Class::grouped`): a rule each in `chain`, over a set of the class's
/// subjects (`cnps[6]_<class>`) and one of the region's peers
/// (`cnpp[6]_<class, action, cells>`). Named after who they are, not what
/// they hold, and in the order of their names, so that subjects and peers
/// that come and go are element patches (`grouped_sets`) and leave the
/// rules as they are.
fn cluster_groups<A: NftFamily>(
    classes: &[Class<A>],
    action: Action,
    v: &View,
    chain: &str,
    verdict: Statement<'static>,
    p: &mut Parts,
) {
    let f = |field: &'static str| payload(A::PAYLOAD, field);
    let mut rules = Vec::new();
    for g in grouped::<A>(classes, action) {
        if !p.elems.contains_key(&g.subjects) {
            p.policy.push(set(g.subjects.clone(), SetTypeValue::Single(A::ADDR), false));
            p.elems.insert(g.subjects.clone(), addrs(&g.class.subjects));
        }
        p.policy.push(set(g.peers.clone(), SetTypeValue::Single(A::ADDR), true));
        p.elems.insert(g.peers.clone(), nets_elems::<A>(&g.region.peers));
        let mut expr = vec![
            m(f(v.pod), Operator::EQ, set_ref(&g.subjects)),
            m(f(v.peer), Operator::EQ, set_ref(&g.peers)),
        ];
        let boxes = cell_boxes(&g.region.cells);
        if boxes != [((0, u8::MAX), (0, u16::MAX))] {
            let items: Vec<SetItem<'static>> = boxes
                .iter()
                .map(|&((plo, phi), (lo, hi))| {
                    SetItem::Element(Expression::Named(NamedExpression::Concat(vec![
                        range_or_value(u32::from(plo), u32::from(phi)),
                        range_or_value(u32::from(lo), u32::from(hi)),
                    ])))
                })
                .collect();
            let key = Expression::Named(NamedExpression::Concat(vec![l4proto(), th_dport()]));
            expr.push(m(key, Operator::EQ, Expression::Named(NamedExpression::Set(items))));
        }
        expr.push(verdict.clone());
        rules.push((g.peers, rule(chain.to_string(), expr, None)));
    }
    rules.sort_by(|a, b| a.0.cmp(&b.0));
    p.policy.extend(rules.into_iter().map(|(_, r)| r));
}

/// A region of `Class::grouped` with the names of its two sets.
pub(super) struct Grouped<'a, A: Family> {
    pub class: &'a Class<A>,
    pub region: &'a Region<A>,
    pub subjects: String,
    pub peers: String,
}

/// The grouped regions of `classes` with `action`.
pub(super) fn grouped<A: NftFamily>(classes: &[Class<A>], action: Action) -> Vec<Grouped<'_, A>> {
    let mut out = Vec::new();
    for class in classes {
        for region in class.regions.iter().filter(|r| r.action == action && class.grouped(r)) {
            let [subjects, peers] = grouped_names::<A>(class, region);
            out.push(Grouped { class, region, subjects, peers });
        }
    }
    out
}

/// The names of a grouped region's subjects set and peers set.
pub(super) fn grouped_names<A: NftFamily>(class: &Class<A>, region: &Region<A>) -> [String; 2] {
    let who = format!("{:016x} {:?} {:?}", class.key, region.action, region.cells);
    [
        format!("cnps{}_{:016x}", A::SUFFIX, class.key),
        format!("cnpp{}_{:016x}", A::SUFFIX, fnv1a64(who.as_bytes())),
    ]
}

/// The interval elements of `nets`.
pub(super) fn nets_elems<A: NftFamily>(nets: &[A::Net]) -> BTreeSet<Elem> {
    nets.iter().map(|n| A::elem(FamilyElem::Net(*n))).collect()
}

/// The set of (subject, protocols, ports, anywhere) where `tier` denies a
/// pod not known yet, in view `v`: `cnp_<a|b><in|out>[6]_unknown`.
pub(super) fn unknown_set<A: NftFamily>(v: &View, tier: Tier) -> String {
    let t = if tier == Tier::Admin { "a" } else { "b" };
    format!("cnp_{t}{}{}_unknown", v.short, A::SUFFIX)
}

/// The elements of `unknown_set`: each class's subjects on its unknown cells.
pub(super) fn unknown_elems<A: NftFamily>(classes: &[Class<A>]) -> BTreeSet<Elem> {
    let mut out = BTreeSet::new();
    for class in classes {
        cell_elems(&class.subjects, &class.unknown, &[anywhere::<A>()], &mut out);
    }
    out
}

/// The elements of every subject on every cell to every peer.
pub(super) fn cell_elems<'s, A: NftFamily>(
    subjects: impl IntoIterator<Item = &'s A>,
    cells: &[Cell],
    peers: &[A::Net],
    out: &mut BTreeSet<Elem>,
) {
    let boxes = cell_boxes(cells);
    for &subject in subjects {
        for &(protos, ports) in &boxes {
            out.extend(peers.iter().map(|&n| A::elem(FamilyElem::Cell(subject, protos, ports, n))));
        }
    }
}

/// The shard sets of the ClusterNetworkPolicy set `name` (`cluster_set`,
/// `unknown_set`) with `elems` split among them by their pod
/// (`Elem::shard`): every shard, empty or not, in shard order.
pub(super) fn sharded(name: &str, elems: BTreeSet<Elem>) -> Vec<(String, BTreeSet<Elem>)> {
    let mut shards: Vec<(String, BTreeSet<Elem>)> =
        (0..POD_SHARDS).map(|k| (format!("{name}_{k}"), BTreeSet::new())).collect();
    for e in elems {
        shards[usize::from(e.shard())].1.insert(e);
    }
    shards
}

/// True for the shard sets of `sharded` (`cnp_<tier><dir>[6]_<kind>_<N>`).
pub(super) fn is_cluster_shard(name: &str) -> bool {
    name.starts_with("cnp_") && name.rsplit_once('_').is_some_and(|(_, k)| k.parse::<u8>().is_ok())
}

/// The verdict sets of ClusterNetworkPolicy, per direction: Admin Deny,
/// Accept and Pass, Baseline Deny (Baseline Accept and Pass need none).
pub(super) const CLUSTER_SETS: [(Tier, Action); 4] = [
    (Tier::Admin, Action::Deny),
    (Tier::Admin, Action::Accept),
    (Tier::Admin, Action::Pass),
    (Tier::Baseline, Action::Deny),
];

/// The name of the verdict set of (`tier`, `action`) in view `v` (ingress
/// or egress), family `A`: `cnp_<a|b><in|out>[6]_<action>`.
pub(super) fn cluster_set<A: NftFamily>(v: &View, tier: Tier, action: Action) -> String {
    let t = if tier == Tier::Admin { "a" } else { "b" };
    format!("cnp_{t}{}{}_{}", v.short, A::SUFFIX, action.to_string().to_lowercase())
}

/// The elements of the regions of `classes` with `action`: (subject,
/// protocols, ports, peer) for each subject, cell and peer network.
pub(super) fn region_elems<A: NftFamily>(classes: &[Class<A>], action: Action) -> BTreeSet<Elem> {
    let mut out = BTreeSet::new();
    for class in classes {
        for r in class.regions.iter().filter(|r| r.action == action && !class.grouped(r)) {
            cell_elems(&class.subjects, &r.cells, &r.peers, &mut out);
        }
    }
    out
}

/// `cells` as (protocol range, port range) boxes: `Other` is every protocol
/// number but TCP's, UDP's and SCTP's; protocols whose every port is in
/// join their neighbours, so a rule on everything is one box.
fn cell_boxes(cells: &[Cell]) -> Vec<Rect> {
    const ALL_PORTS: (u16, u16) = (0, u16::MAX);
    let mut boxes: Vec<Rect> = Vec::new();
    for c in cells {
        match *c {
            Cell::Ports(p, lo, hi) => {
                let n = protocol_number(p);
                boxes.push(((n, n), (lo, hi)));
            }
            Cell::Other => {
                let ported = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp].map(protocol_number);
                let mut from = 0u8;
                for n in ported {
                    if n > from {
                        boxes.push(((from, n - 1), ALL_PORTS));
                    }
                    from = n + 1;
                }
                boxes.push(((from, u8::MAX), ALL_PORTS));
            }
        }
    }
    boxes.sort();
    let mut joined: Vec<Rect> = Vec::new();
    for b in boxes {
        match joined.last_mut() {
            Some(((_, hi), ports))
                if *ports == ALL_PORTS && b.1 == ALL_PORTS && u16::from(*hi) + 1 == u16::from(b.0 .0) =>
            {
                *hi = b.0 .1
            }
            _ => joined.push(b),
        }
    }
    joined
}

pub(super) fn addrs<A: NftFamily>(ips: &BTreeSet<A>) -> BTreeSet<Elem> {
    ips.iter().map(|ip| A::elem(FamilyElem::Addr(*ip))).collect()
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
/// sets, named after the peer key: `<dir>p[6]_<key>` the peers (interval),
/// `<dir>s[6]_<key>` a port group's (pod, protocol, port) targets,
/// `<dir>t[6]_<hash of key and ports>` a group's pods.
fn groups<A: NftFamily>(dir: &Direction<A>, chain: &str, v: &View, p: &mut Parts) {
    let f = |field: &'static str| payload(A::PAYLOAD, field);
    let short = v.short;
    let addr = || SetTypeValue::Single(A::ADDR);
    let mut rules = Vec::new();
    let mut own = BTreeMap::new();
    let mut peer_set = |key: PeerKey, nets: &[A::Net], p: &mut Parts| {
        let name = peer_set::<A>(short, key);
        if !p.elems.contains_key(&name) && !own.contains_key(&name) {
            p.policy.push(set(name.clone(), addr(), true));
            own.insert(name.clone(), nets.iter().map(|n| A::elem(FamilyElem::Net(*n))).collect());
        }
        name
    };
    let mut targets = Vec::new();
    for g in &dir.port_groups {
        let peers = peer_set(g.key, &g.peers, p);
        let name = port_group_set::<A>(short, g.key);
        p.policy.push(set(name.clone(), SetTypeValue::Concatenated(Cow::Borrowed(A::POD_PORT_TYPE)), false));
        targets.push((name.clone(), g.targets.iter().map(pod_port).collect::<BTreeSet<_>>()));
        let key = Expression::Named(NamedExpression::Concat(vec![f(v.pod), l4proto(), th_dport()]));
        rules.push(vec![
            m(key, Operator::EQ, set_ref(&name)),
            m(f(v.peer), Operator::EQ, set_ref(&peers)),
            Statement::Return(None),
        ]);
    }
    for g in &dir.groups {
        let peers = peer_set(g.key, &g.peers, p);
        let name = group_set::<A>(short, g.key, g.ports);
        p.policy.push(set(name.clone(), addr(), false));
        targets.push((name.clone(), addrs(&g.targets)));
        let mut expr =
            vec![m(f(v.pod), Operator::EQ, set_ref(&name)), m(f(v.peer), Operator::EQ, set_ref(&peers))];
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
    p.elems.extend(own);
    p.elems.extend(targets);
    p.policy.extend(rules.into_iter().map(|expr| rule(chain.to_string(), expr, None)));
}

/// The peers set of `key` in the view named `short` (in, out, ain, aout).
pub(super) fn peer_set<A: NftFamily>(short: &str, key: PeerKey) -> String {
    format!("{short}p{}_{key:016x}", A::SUFFIX)
}

/// The (pod, protocol, port) targets set of port group `key`.
pub(super) fn port_group_set<A: NftFamily>(short: &str, key: PeerKey) -> String {
    format!("{short}s{}_{key:016x}", A::SUFFIX)
}

/// The pod targets set of group (`key`, `ports`).
pub(super) fn group_set<A: NftFamily>(short: &str, key: PeerKey, ports: GroupPorts) -> String {
    format!("{short}t{}_{:016x}", A::SUFFIX, fnv1a64(format!("{key:016x}{ports:?}").as_bytes()))
}

/// A port group's target as an element.
pub(super) fn pod_port<A: NftFamily>(&(ip, proto, port): &(A, Protocol, u16)) -> Elem {
    A::elem(FamilyElem::PodPort(ip, protocol_number(proto), port))
}

/// One pod's allow elements: its triples with a single peer address as
/// exact elements (a hash set, where an element is added or deleted in
/// microseconds), the others cut into disjoint boxes of the interval set
/// (whose deletes cost the kernel tens of ms on a large set). A packet
/// matching either is admitted, so the split changes nothing it allows.
pub(super) fn pod_cells<A: NftFamily>(
    pod: A,
    triples: impl Iterator<Item = (Protocol, u16, A::Net)>,
) -> (Vec<Elem>, Vec<Elem>) {
    let mut exact = Vec::new();
    let mut boxes: Vec<PortBox<A>> = Vec::new();
    for (proto, port, peer) in triples {
        let p = protocol_number(proto);
        if A::prefix(peer) == A::BITS {
            exact.push(A::elem(FamilyElem::Exact(pod, p, port, A::network(peer))));
        } else {
            boxes.push(((p, p), (port, port), peer));
        }
    }
    let cells = disjoint::<A>(&boxes)
        .into_iter()
        .map(|(protos, ports, net)| A::elem(FamilyElem::Cell(pod, protos, ports, net)));
    (exact, cells.collect())
}

/// The elements of one direction's exact set and of its interval sets,
/// shard by shard: its triples.
fn cells<A: NftFamily>(dir: &Direction<A>) -> (BTreeSet<Elem>, Vec<BTreeSet<Elem>>) {
    let pods: BTreeSet<A> = dir.triples.iter().map(|t| t.0).collect();
    let (mut exact, mut shards) = (BTreeSet::new(), vec![BTreeSet::new(); usize::from(POD_SHARDS)]);
    for pod in pods {
        let (e, c) = pod_cells(pod, pod_triples(dir, pod));
        exact.extend(e);
        shards[usize::from(pod_shard(pod))].extend(c);
    }
    (exact, shards)
}

/// `pod`'s triples in `dir`, as (protocol, port, peer).
pub(super) fn pod_triples<A: Family>(
    dir: &Direction<A>,
    pod: A,
) -> impl Iterator<Item = (Protocol, u16, A::Net)> + '_ {
    // The least triple of `pod`: networks order by address, then prefix.
    dir.triples
        .range((pod, Protocol::Tcp, 0, anywhere::<A>())..)
        .take_while(move |t| t.0 == pod)
        .map(|t| (t.1, t.2, t.3))
}

/// Cuts boxes (protocol range, port range, network) into disjoint ones that
/// cover exactly the same packets. Networks are nested or disjoint; each
/// network gets only what its boxes add to those of the network around it
/// (in protocol x port), so a network and the ones inside it never share a
/// (protocol, port) and no two elements overlap: the kernel refuses an
/// interval element that starts or ends inside another.
pub fn disjoint<A: Family>(boxes: &[PortBox<A>]) -> Vec<PortBox<A>> {
    let inside = |a: &A::Net, b: &A::Net| A::prefix(*a) <= A::prefix(*b) && contains(*a, A::network(*b));
    let mut own: BTreeMap<(u128, u8), Vec<Rect>> = BTreeMap::new();
    for (protos, ports, net) in boxes {
        own.entry((A::network(*net).as_u128(), A::prefix(*net))).or_default().push((*protos, *ports));
    }
    // In address order, outer networks before the ones they contain: a stack
    // of the networks around the current one gives its parent in O(1).
    let mut stack: Vec<(A::Net, Vec<Rect>)> = Vec::new();
    let mut out = Vec::new();
    for ((addr, prefix), rects) in own {
        // A valid network: it came from one.
        let Some(n) = A::net(A::from_u128(addr), prefix) else { continue };
        while stack.last().is_some_and(|(p, _)| !inside(p, &n)) {
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
    use ipnetwork::Ipv4Network;

    use super::*;
    use crate::policy::{FamilyIr, Group, PortGroup};

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    /// Every (protocol, port, address) sample is covered by the output exactly
    /// as by the input, and no two output boxes overlap.
    fn check_disjoint(boxes: &[PortBox]) -> Vec<PortBox> {
        let out = disjoint::<Ipv4Addr>(boxes);
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
        for k in 0..POD_SHARDS {
            assert!(elems(&format!("in_allow_{k}")).is_empty(), "no triple with a wider peer");
        }
        assert_eq!(
            elems("inp_0000000000000001"),
            [r#"{"prefix":{"addr":"0.0.0.0","len":0}}"#],
            "peers by key"
        );
        assert_eq!(elems("ins_0000000000000001"), [r#"{"concat":["10.244.1.2",6,443]}"#]);
        let group_targets = r.sets.keys().find(|k| k.starts_with("int_")).expect("the group's pods");
        assert_eq!(elems(group_targets), [r#""10.244.1.2""#]);
        // Streamed, it is what the crate's typed transaction serialises to.
        let typed = nftables::schema::Nftables { objects: Cow::Owned(r.full_objects().collect()) };
        assert_eq!(r.full_transaction_json().unwrap(), serde_json::to_string(&typed).unwrap());
        let json = r.full_transaction_json().unwrap();
        for want in [
            r#"{"add":{"table":{"family":"inet","name":"weft"}}},{"delete":{"table":{"family":"inet","name":"weft"}}}"#,
            r#""type":"filter","hook":"forward","prio":-200,"policy":"accept""#,
            r#"{"match":{"left":{"ct":{"key":"state"}},"right":["established","related"],"op":"in"}},{"accept":null}"#,
            r#"{"match":{"left":{"concat":[{"payload":{"protocol":"ip","field":"daddr"}},{"meta":{"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}},{"payload":{"protocol":"ip","field":"saddr"}}]},"right":"@in_exact","op":"=="}},{"return":null}"#,
            r#""chain":"ingress","expr":[{"vmap":{"key":{"&":[{"payload":{"protocol":"ip","field":"daddr"}},"0.0.0.15"]},"data":{"set":[["0.0.0.0",{"goto":{"target":"ingress_allow_0"}}],"#,
            r#"["0.0.0.15",{"goto":{"target":"ingress_allow_15"}}]]}}}]}}},{"add":{"rule":{"family":"inet","table":"weft","chain":"ingress","expr":[{"goto":{"target":"ingress_groups"}}]"#,
            r#""chain":"ingress_allow_7","expr":[{"match":{"left":{"concat":[{"payload":{"protocol":"ip","field":"daddr"}},{"meta":{"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}},{"payload":{"protocol":"ip","field":"saddr"}}]},"right":"@in_allow_7","op":"=="}},{"return":null}]}}},{"add":{"rule":{"family":"inet","table":"weft","chain":"ingress_allow_7","expr":[{"goto":{"target":"ingress_groups"}}]"#,
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

    /// The IPv6 half renders as the IPv4 one, in sets and chains of its own.
    #[test]
    fn ipv6_renders_like_ipv4_in_sets_and_chains_of_its_own() {
        let a: Ipv6Addr = "fd00:244:1::2".parse().unwrap();
        let n = |s: &str| -> ipnetwork::Ipv6Network { s.parse().unwrap() };
        let mut ir = PolicyIr::default();
        ir.v6.local.insert(a);
        ir.v6.pod_cidr = Some(n("fd00:244:1::/64"));
        ir.v6.audit = true;
        ir.v6.ingress.isolated.insert(a);
        ir.v6.ingress.triples.insert((a, Protocol::Tcp, 80, n("fd00:244:2::3/128")));
        ir.v6.ingress.triples.insert((a, Protocol::Tcp, 80, n("fd00:244:2::/64")));
        ir.v6.ingress.triples.insert((a, Protocol::Tcp, 81, n("fd00:244:2::/64")));
        ir.v6.ingress.triples.insert((a, Protocol::Tcp, 80, n("fd00:244:2:0:8000::/65")));
        ir.v6.ingress.groups.push(Group {
            key: 1,
            targets: [a].into(),
            peers: vec![n("fd00:9::/64")],
            ports: GroupPorts::All,
        });
        ir.v6.ingress.port_groups.push(PortGroup {
            key: 1,
            targets: [(a, Protocol::Udp, 53)].into(),
            peers: vec![n("fd00:9::/64")],
        });
        let r = render(&ir);
        let elems = |set: &str| -> Vec<String> { r.sets[set].iter().map(Elem::json).collect() };
        assert_eq!(elems("in_exact6"), [r#"{"concat":["fd00:244:1::2",6,80,"fd00:244:2::3"]}"#]);
        assert_eq!(
            elems("in_allow6_2"),
            [
                r#"{"concat":["fd00:244:1::2",6,{"range":[80,81]},{"prefix":{"addr":"fd00:244:2::","len":64}}]}"#
            ],
            "ports merged, the /65 inside the /64 adds nothing; in the shard of the pod's low bits"
        );
        assert_eq!(elems("inp6_0000000000000001"), [r#"{"prefix":{"addr":"fd00:9::","len":64}}"#]);
        assert_eq!(elems("ins6_0000000000000001"), [r#"{"concat":["fd00:244:1::2",17,53]}"#]);
        assert!(r.sets.keys().any(|k| k.starts_with("int6_") && is_group_set(k)), "the group's pods");
        assert!(is_group_set("inp6_0000000000000001") && !is_group_set("in_allow6_15"));
        for (name, elems) in &r.sets {
            let v6 = elems.iter().all(|e| matches!(e, Elem::V6(_)));
            assert!(v6, "{name}: only IPv6 elements in an IPv4-free IR");
        }
        assert!(r.sets["in_allow_2"].is_empty() && r.sets["local"].is_empty());
        let cells: usize = (0..POD_SHARDS).map(|k| r.sets[&format!("in_allow6_{k}")].len()).sum();
        assert_eq!(cells, 1, "one cell, in one shard");
        let json = r.full_transaction_json().unwrap();
        for want in [
            r#"{"match":{"left":{"payload":{"protocol":"ip6","field":"daddr"}},"right":"@in_iso6","op":"=="}},{"jump":{"target":"ingress6"}}"#,
            r#"{"match":{"left":{"payload":{"protocol":"ip6","field":"daddr"}},"right":"@ain_iso6","op":"=="}},{"jump":{"target":"audit_in6"}}"#,
            r#""chain":"ingress6","expr":[{"match":{"left":{"concat":[{"payload":{"protocol":"ip6","field":"daddr"}},{"meta":{"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}},{"payload":{"protocol":"ip6","field":"saddr"}}]},"right":"@in_exact6","op":"=="}}"#,
            r#""chain":"ingress6","expr":[{"vmap":{"key":{"&":[{"payload":{"protocol":"ip6","field":"daddr"}},"::f"]},"data":{"set":[["::",{"goto":{"target":"ingress6_allow_0"}}],"#,
            r#""chain":"ingress6_groups","expr":[{"match":{"left":{"payload":{"protocol":"ip6","field":"daddr"}},"right":"@int6_"#,
            r#""chain":"ingress6_groups","expr":[{"drop":null}]"#,
        ] {
            assert!(json.contains(want), "{want}\nnot in\n{json}");
        }
        assert!(!json.contains("not compiled"), "no IPv6 guard drops any more");
        assert!(!json.contains(r#""chain":"audit_in","#), "IPv4 has no audit policies here");
    }

    /// Each ClusterNetworkPolicy set is split by its subjects' low bits,
    /// and each shard looked up from its own chain.
    #[test]
    fn cluster_sets_are_split_by_the_subjects_low_bits() {
        use crate::policy::{Class, Region};
        // 32 subjects, two per shard, denied TCP 80 from 10.0.9.0/24.
        let subjects: BTreeSet<Ipv4Addr> = (0..32u8).map(|n| Ipv4Addr::new(10, 244, 1, 64 + n)).collect();
        let cells = vec![Cell::Ports(Protocol::Tcp, 80, 80)];
        let deny = Region { action: Action::Deny, cells: cells.clone(), peers: vec![net("10.0.9.0/24")] };
        let mut ir = PolicyIr::default();
        ir.v4.local = subjects.clone();
        ir.v4.cluster.admin_ingress =
            vec![Class { subjects: subjects.clone(), regions: vec![deny], unknown: cells, key: 7 }];
        let r = render(&ir);
        for kind in ["deny", "accept", "pass", "unknown"] {
            let mut seen = BTreeSet::new();
            for k in 0..POD_SHARDS {
                let set = &r.sets[&format!("cnp_ain_{kind}_{k}")];
                for e in set {
                    assert_eq!(e.shard(), k, "{kind}: {e:?} in shard {k}");
                    let Elem::V4(FamilyElem::Cell(pod, ..)) = e else { panic!("{e:?}") };
                    seen.insert(*pod);
                }
                let chain = format!("cnp_ain_{k}");
                let looked_up = r.skeleton.iter().any(|o| {
                    matches!(o, NfListObject::Rule(rule) if rule.chain == chain
                        && serde_json::to_string(&rule.expr).unwrap().contains(&format!("\"@cnp_ain_{kind}_{k}\"")))
                });
                assert!(looked_up, "{chain} looks up its {kind} shard");
            }
            let want = if kind == "deny" || kind == "unknown" { subjects.clone() } else { BTreeSet::new() };
            assert_eq!(seen, want, "{kind}: every subject once, in its shard");
        }
        assert!(!r.sets.contains_key("cnp_ain_deny"), "no set left unsplit");
    }

    /// IPv6 elements are boxed so that the many IPv4 ones stay small.
    #[test]
    fn an_element_is_16_bytes() {
        assert!(std::mem::size_of::<Elem>() <= 16, "{}", std::mem::size_of::<Elem>());
    }

    /// `disjoint` over IPv6 networks: nested ones get only what they add.
    #[test]
    fn ipv6_boxes_are_cut_the_same_way() {
        let n = |s: &str| -> ipnetwork::Ipv6Network { s.parse().unwrap() };
        let out = disjoint::<Ipv6Addr>(&[
            ((6, 6), (80, 80), n("fd00::/16")),
            ((6, 6), (80, 81), n("fd00:1::/64")),
            ((17, 17), (53, 53), n("::/0")),
        ]);
        assert_eq!(
            out,
            [
                ((17, 17), (53, 53), n("::/0")),
                ((6, 6), (80, 80), n("fd00::/16")),
                ((6, 6), (81, 81), n("fd00:1::/64"))
            ]
        );
    }
}
