//! A reproduction of the FORWARD chains and ipsets weave-npc 1.9.6 programmed,
//! rendered from the same model weft enforces, for comparison only: never a
//! weft backend. It exists to show, in the testbed, the failure weft fixes
//! (the first failure README.md lists): an external client's
//! NodePort connection that kube-proxy DNATs to a pod on another node is
//! dropped on the ingress node, because 1.9.6 accepted a non-local
//! destination only when the source was a local pod.
//!
//! `render` is pure (golden-tested without root); `apply` loads its output
//! into one node's netns, `Testbed::apply_weave` into every node, and
//! `Testbed::remove_weave` takes it all out again. What is rendered, per node:
//!
//! - `weave-local-pods`: the node's pods (with an IP, not hostNetwork).
//! - WEAVE-NPC: ESTABLISHED,RELATED accepted; NEW to WEAVE-NPC-DEFAULT and to
//!   WEAVE-NPC-INGRESS; then 1.9.6's only rule for other traffic, accept when
//!   the source is a local pod and the destination is not. Everything else
//!   falls back to FORWARD, where the hook's DROP follows.
//! - WEAVE-NPC-DEFAULT: one "default allow" set per namespace holding the
//!   namespace's local pods that no ingress-isolating policy selects (weave
//!   1.9 tracked isolation per namespace through the beta annotation; for
//!   networking.k8s.io/v1 semantics isolation is per pod), each accepted as
//!   a destination. There is one such set and rule for every namespace of the
//!   cluster: every node gets the same rules, only set contents differ.
//! - WEAVE-NPC-INGRESS: one rule per (policy ingress rule, peer, port):
//!   `[-p P] [-m set --match-set SRC src] -m set --match-set DST dst [--dport N]`.
//!   DST holds the local pods the policy selects; a pod-selector SRC holds
//!   only LOCAL pods too, as in 1.9.6, which logged "AddPod ignored for pod
//!   ... on node" for every pod of another node: so a remote pod never
//!   matches a pod-selector peer, and such traffic is dropped at the
//!   destination's node even where the policy allows it. A rule without
//!   peers has no SRC match (any source), one without ports no `-p`.
//! - Hooks at the top of FORWARD: `-d <clusterCIDR> -j WEAVE-NPC`, then
//!   `-d <clusterCIDR> -j DROP`. On all traffic to the pod network, not just
//!   the node bridge, because weave's cluster-wide bridge carried traffic to
//!   remote pods too; a hook on weft's per-node bridge would never see the
//!   NodePort flow under host-gw routing.
//!   At the top, so kube-proxy's KUBE-FORWARD (accepting packets marked for
//!   masquerade, which 1.9.6-era kube-proxy did not have) cannot accept the
//!   NodePort flow first.
//!
//! Where 1.9.6 lacked a feature, the choice made here, so that a difference
//! from weft in a comparison comes from 1.9.6's semantics (local-only sets,
//! no transit accept, no egress) rather than from an API field it never read:
//!
//! - ipBlock (no such field in 1.9's API): rendered as weave 2.x did, a
//!   `hash:net` set of the cidr with each `except` added `nomatch`; 0.0.0.0/0,
//!   which hash:net cannot hold, as its two halves. IPv6 blocks are left out
//!   (these sets are IPv4; such a peer matches nothing here).
//! - Named ports (1.9.6 passed the name to `--dport`, which iptables rejects):
//!   resolved per destination pod; the pods a policy selects (cluster-wide,
//!   so every node has the same rules) are grouped by the number the name
//!   has on each, one DST set (of the local ones) and rule per group, and a
//!   pod without that port gets no rule for it. endPort: `--dport N:M`.
//! - namespaceSelector and podSelector in one peer (after 1.9): the AND, as
//!   one set of the local pods that both select.
//! - Egress: none. 1.9.6 enforced no egress policy, so egress cases pass
//!   traffic here; a policy's egress part is ignored (its ingress part is not).
//!
//! Also left out: weave's NFLOG logging of drops, its `--allow-mcast` accept
//! (a later option), and `maxelem` sizing (ipset's default of 65536 entries
//! is far beyond any testbed node). Set names are `weave-` and 16 hex digits of
//! an FNV-1a hash of what the set means (weave hashed too); each rule's
//! comment says what its sets hold.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use ipnetwork::{IpNetwork, Ipv4Network};
use weft_agent::model::{Model, NetworkPolicy, Peer, Pod, PolicyPort, PortRef, Protocol};

use crate::error::{E2eError, Result};
use crate::pods::CLUSTER_CIDR;
use crate::Testbed;

/// weave-npc's main chain, jumped to from FORWARD.
pub const MAIN_CHAIN: &str = "WEAVE-NPC";
/// Accepts destinations no policy isolates.
pub const DEFAULT_CHAIN: &str = "WEAVE-NPC-DEFAULT";
/// One accept per (policy ingress rule, peer, port).
pub const INGRESS_CHAIN: &str = "WEAVE-NPC-INGRESS";
/// The set of this node's pod IPs (weave's own name).
pub const LOCAL_PODS: &str = "weave-local-pods";
/// Every set this module makes starts with it; `remove` destroys all of them.
pub const SET_PREFIX: &str = "weave-";
/// A set is rebuilt under its name plus this, then swapped in.
const TMP_SUFFIX: &str = "-new";
/// iptables' comment match takes at most 255 bytes.
const MAX_COMMENT: usize = 240;
/// Bound on one iptables or ipset command inside a node.
const CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on deleting duplicate hook rules (each pass deletes one copy).
const MAX_HOOK_COPIES: usize = 64;

/// What one node gets: an `ipset restore` payload and an `iptables-restore
/// --noflush` payload (filter table). The ipsets go first: rules name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub ipsets: String,
    pub iptables: String,
}

impl Rendered {
    /// The names of the sets the ipsets payload builds (each line `swap TMP NAME`).
    pub fn set_names(&self) -> Vec<String> {
        self.ipsets
            .lines()
            .filter_map(|l| l.strip_prefix("swap "))
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
            .collect()
    }
}

/// The name of the set that holds what `key` describes: `weave-` and 16 hex
/// digits of its FNV-1a hash (22 characters, leaving room for the temporary
/// suffix within ipset's 31).
pub fn set_name(key: &str) -> String {
    format!("{SET_PREFIX}{:016x}", weft_conf::hash::fnv1a64(key.as_bytes()))
}

/// The two FORWARD rules (without `-A FORWARD`), in the order they must
/// appear at the top of FORWARD: the jump, then the DROP.
pub fn hooks(cluster_cidr: Ipv4Network) -> [Vec<String>; 2] {
    let cidr = normalise(cluster_cidr).to_string();
    [
        vec!["-d".into(), cidr.clone(), "-j".into(), MAIN_CHAIN.into()],
        vec!["-d".into(), cidr, "-j".into(), "DROP".into()],
    ]
}

/// `net` with its host bits cleared, as iptables and ipset print it.
fn normalise(net: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new(net.network(), net.prefix()).unwrap_or(net)
}

/// One set to build: its type, its members in order, and what it holds.
#[derive(Debug)]
struct IpSet {
    kind: SetKind,
    comment: String,
}

#[derive(Debug)]
enum SetKind {
    /// hash:ip of pod addresses.
    Ip(BTreeSet<Ipv4Addr>),
    /// hash:net: each network, true when added `nomatch` (an ipBlock except).
    Net(BTreeMap<Ipv4Network, bool>),
}

/// The state of one render: the node's pods, the sets (in the order first
/// used, so the payload reads top-down) and the ingress rules (deduplicated,
/// as weave shared one rule among the policies that needed it).
struct Renderer<'a> {
    model: &'a Model,
    local: Vec<&'a Pod>,
    sets: Vec<(String, IpSet)>,
    set_names: BTreeSet<String>,
    ingress: Vec<String>,
    seen: HashSet<String>,
}

/// The ipsets and FORWARD chains weave-npc 1.9.6 would program on node
/// `node` (a Node's name, e.g. `node-1`) for `model`, hooked on traffic to
/// `cluster_cidr`. Pure; see the module doc for what is rendered and why.
pub fn render(model: &Model, node: &str, cluster_cidr: Ipv4Network) -> Rendered {
    let local: Vec<&Pod> = model
        .pods
        .values()
        .filter(|p| p.node.as_deref() == Some(node) && p.ip.is_some() && !p.host_network)
        .map(|p| &**p)
        .collect();
    let mut r = Renderer {
        model,
        local,
        sets: Vec::new(),
        set_names: BTreeSet::new(),
        ingress: Vec::new(),
        seen: HashSet::new(),
    };
    let local_ips = r.local.iter().filter_map(|p| p.ip).collect();
    r.add_set(LOCAL_PODS.into(), SetKind::Ip(local_ips), format!("pods on {node}"));
    let default = r.default_rules();
    r.ingress_rules();

    let mut iptables = String::from("*filter\n");
    for chain in [MAIN_CHAIN, DEFAULT_CHAIN, INGRESS_CHAIN] {
        let _ = writeln!(iptables, ":{chain} - [0:0]");
    }
    let _ = writeln!(iptables, "-A {MAIN_CHAIN} -m state --state RELATED,ESTABLISHED -j ACCEPT");
    let _ = writeln!(iptables, "-A {MAIN_CHAIN} -m state --state NEW -j {DEFAULT_CHAIN}");
    let _ = writeln!(iptables, "-A {MAIN_CHAIN} -m state --state NEW -j {INGRESS_CHAIN}");
    // 1.9.6's bug: the only accept for a destination that is not a local pod
    // requires a local pod as the source, so transit (an external client's
    // NodePort connection DNATed to a pod on another node) is dropped.
    let _ = writeln!(
        iptables,
        "-A {MAIN_CHAIN} -m set --match-set {LOCAL_PODS} src -m set ! --match-set {LOCAL_PODS} dst -j ACCEPT"
    );
    for line in default.iter().chain(&r.ingress) {
        iptables.push_str(line);
        iptables.push('\n');
    }
    iptables.push_str("COMMIT\n");
    // The hooks are not in the payload (a --noflush payload appends, so each
    // apply would add a copy): `apply` keeps them at the top of FORWARD.
    // Shown here, as comments iptables-restore skips, so the payload reads whole.
    for (i, h) in hooks(cluster_cidr).iter().enumerate() {
        let _ = writeln!(iptables, "# FORWARD rule {}: {}", i + 1, h.join(" "));
    }

    let mut ipsets = String::new();
    for (name, set) in &r.sets {
        let tmp = format!("{name}{TMP_SUFFIX}");
        let kind = match set.kind {
            SetKind::Ip(_) => "hash:ip",
            SetKind::Net(_) => "hash:net",
        };
        let _ = writeln!(ipsets, "# {name}: {}", set.comment);
        // The live set must exist for the swap; -exist keeps one already there
        // (and rules referring to it) untouched. The temporary one may be
        // left over from an interrupted apply, so it is emptied first.
        let _ = writeln!(ipsets, "create {name} {kind} -exist");
        let _ = writeln!(ipsets, "create {tmp} {kind} -exist");
        let _ = writeln!(ipsets, "flush {tmp}");
        match &set.kind {
            SetKind::Ip(ips) => {
                for ip in ips {
                    let _ = writeln!(ipsets, "add {tmp} {ip}");
                }
            }
            SetKind::Net(nets) => {
                for (net, nomatch) in nets {
                    let _ = writeln!(ipsets, "add {tmp} {net}{}", if *nomatch { " nomatch" } else { "" });
                }
            }
        }
        // Atomic for the rules that name the set: they refer to it by index,
        // and swap exchanges the contents behind the two names.
        let _ = writeln!(ipsets, "swap {tmp} {name}");
        let _ = writeln!(ipsets, "destroy {tmp}");
    }
    Rendered { ipsets, iptables }
}

impl<'a> Renderer<'a> {
    /// Registers set `name` (first registration wins: same name, same key).
    fn add_set(&mut self, name: String, kind: SetKind, comment: String) {
        if self.set_names.insert(name.clone()) {
            self.sets.push((name, IpSet { kind, comment }));
        }
    }

    /// A hash:ip set named after `key` holding `pods`' addresses; returns its name.
    fn pod_set<'p>(&mut self, key: &str, pods: impl Iterator<Item = &'p Pod>, comment: &str) -> String {
        let name = set_name(key);
        let ips = pods.filter_map(|p| p.ip).collect();
        self.add_set(name.clone(), SetKind::Ip(ips), comment.into());
        name
    }

    /// True if some policy isolates `pod` for ingress.
    fn isolated(&self, pod: &Pod) -> bool {
        self.model.policies.values().any(|p| p.ingress.is_some() && selects(p, pod))
    }

    /// One default-allow set and rule per namespace of the cluster.
    fn default_rules(&mut self) -> Vec<String> {
        let mut namespaces: BTreeSet<&str> = self.model.namespaces.keys().map(String::as_str).collect();
        namespaces.extend(self.model.pods.values().map(|p| p.namespace.as_str()));
        let mut out = Vec::new();
        for ns in namespaces {
            let open: Vec<&Pod> =
                self.local.iter().copied().filter(|p| p.namespace == ns && !self.isolated(p)).collect();
            let what = format!("DefaultAllow isolation for namespace: {ns}");
            let set = self.pod_set(&format!("default-allow:{ns}"), open.into_iter(), &what);
            out.push(format!(
                "-A {DEFAULT_CHAIN} -m set --match-set {set} dst -m comment --comment \"{}\" -j ACCEPT",
                comment(&what)
            ));
        }
        out
    }

    /// The ingress rules of every ingress-isolating policy, in policy order.
    fn ingress_rules(&mut self) {
        let model = self.model;
        for policy in model.policies.values() {
            let Some(rules) = &policy.ingress else { continue };
            for rule in rules {
                // No peers: any source; no ports: any port.
                let peers: Vec<Option<&Peer>> =
                    if rule.peers.is_empty() { vec![None] } else { rule.peers.iter().map(Some).collect() };
                let ports: Vec<Option<&PolicyPort>> =
                    if rule.ports.is_empty() { vec![None] } else { rule.ports.iter().map(Some).collect() };
                for peer in &peers {
                    let Some(src) = self.source(policy, *peer) else { continue };
                    for port in &ports {
                        self.port_rules(policy, src.as_ref(), *port);
                    }
                }
            }
        }
    }

    /// The source match of `peer`: Some(None) for any source, Some(Some((set,
    /// what))) for a set, None for a peer that matches nothing here (IPv6).
    fn source(&mut self, policy: &NetworkPolicy, peer: Option<&Peer>) -> Option<Option<(String, String)>> {
        let Some(peer) = peer else { return Some(None) };
        match peer {
            Peer::Pods { namespaces, pods } => {
                let (key, what) = match namespaces {
                    None => (
                        format!("src-pods:ns={}:{pods}", policy.namespace),
                        format!("pods: namespace: {}, selector: {pods}", policy.namespace),
                    ),
                    Some(nss) => (
                        format!("src-pods:nsSelector={nss}:{pods}"),
                        format!("namespaces: selector: {nss}, pods: selector: {pods}"),
                    ),
                };
                let model = self.model;
                // Only local pods: 1.9.6 ignored every pod of another node.
                let members: Vec<&Pod> = self
                    .local
                    .iter()
                    .copied()
                    .filter(|p| {
                        let ns_ok = match namespaces {
                            None => p.namespace == policy.namespace,
                            Some(sel) => sel.matches(&model.namespace_labels(&p.namespace)),
                        };
                        ns_ok && pods.matches(&p.labels)
                    })
                    .collect();
                let set = self.pod_set(&key, members.into_iter(), &what);
                Some(Some((set, what)))
            }
            Peer::IpBlock { cidr: IpNetwork::V4(cidr), except } => {
                let mut nets = BTreeMap::new();
                let cidr = normalise(*cidr);
                if cidr.prefix() == 0 {
                    // hash:net cannot hold a /0: its two halves cover the same.
                    for half in [Ipv4Addr::new(0, 0, 0, 0), Ipv4Addr::new(128, 0, 0, 0)] {
                        if let Ok(n) = Ipv4Network::new(half, 1) {
                            nets.insert(n, false);
                        }
                    }
                } else {
                    nets.insert(cidr, false);
                }
                let mut ex = Vec::new();
                for e in except {
                    if let IpNetwork::V4(e) = e {
                        // An except equal to the cidr (or a half) wins: nomatch.
                        nets.insert(normalise(*e), true);
                        ex.push(normalise(*e).to_string());
                    }
                }
                let what = if ex.is_empty() {
                    format!("ipBlock: {cidr}")
                } else {
                    format!("ipBlock: {cidr} except {}", ex.join(","))
                };
                let name = set_name(&format!("ipblock:{what}"));
                self.add_set(name.clone(), SetKind::Net(nets), what.clone());
                Some(Some((name, what)))
            }
            Peer::IpBlock { cidr: IpNetwork::V6(_), .. } => None,
        }
    }

    /// The rule(s) for one (peer, port) of `policy`: one, or for a named port
    /// one per number the name has on the selected local pods.
    fn port_rules(
        &mut self,
        policy: &NetworkPolicy,
        src: Option<&(String, String)>,
        port: Option<&PolicyPort>,
    ) {
        let ns = &policy.namespace;
        let sel = &policy.pod_selector;
        let dst_what = format!("pods: namespace: {ns}, selector: {sel}");
        let selected: Vec<&'a Pod> = self.local.iter().copied().filter(|p| selects(policy, p)).collect();
        let dst_key = format!("dst-pods:ns={ns}:{sel}");
        match port {
            None => {
                let dst = self.pod_set(&dst_key, selected.into_iter(), &dst_what);
                self.push_rule(src, &dst, &dst_what, None, None);
            }
            Some(PolicyPort { protocol, port: None, .. }) => {
                let dst = self.pod_set(&dst_key, selected.into_iter(), &dst_what);
                self.push_rule(src, &dst, &dst_what, Some(*protocol), None);
            }
            Some(PolicyPort { protocol, port: Some(PortRef::Number(n)), end_port }) => {
                let dport = match end_port {
                    Some(end) if end > n => format!("{n}:{end}"),
                    _ => n.to_string(),
                };
                let dst = self.pod_set(&dst_key, selected.into_iter(), &dst_what);
                self.push_rule(src, &dst, &dst_what, Some(*protocol), Some(dport));
            }
            Some(PolicyPort { protocol, port: Some(PortRef::Name(name)), .. }) => {
                // Grouped over every pod the policy selects in the cluster, so
                // each node has the same rules; the sets hold the local ones.
                let named = PortRef::Name(name.clone());
                let mut by_number: BTreeMap<u16, Vec<&Pod>> = BTreeMap::new();
                let model = self.model;
                for p in model
                    .pods
                    .values()
                    .map(|p| &**p)
                    .filter(|p| p.ip.is_some() && !p.host_network && selects(policy, p))
                {
                    if let Some(n) = p.resolve_port(&named, *protocol) {
                        let group = by_number.entry(n).or_default();
                        if selected.iter().any(|s| std::ptr::eq(*s, p)) {
                            group.push(p);
                        }
                    }
                }
                for (n, pods) in by_number {
                    let proto = protocol.as_str();
                    let what = format!("{dst_what}, port {name}/{proto}={n}");
                    let dst = self.pod_set(&format!("{dst_key}:{name}/{proto}={n}"), pods.into_iter(), &what);
                    self.push_rule(src, &dst, &what, Some(*protocol), Some(n.to_string()));
                }
            }
        }
    }

    /// Appends one WEAVE-NPC-INGRESS accept in weave's argument order, unless
    /// an identical one is already there.
    fn push_rule(
        &mut self,
        src: Option<&(String, String)>,
        dst: &str,
        dst_what: &str,
        proto: Option<Protocol>,
        dport: Option<String>,
    ) {
        let mut rule = format!("-A {INGRESS_CHAIN}");
        if let Some(p) = proto {
            let _ = write!(rule, " -p {}", p.as_str());
        }
        if let Some((set, _)) = src {
            let _ = write!(rule, " -m set --match-set {set} src");
        }
        let _ = write!(rule, " -m set --match-set {dst} dst");
        if let Some(d) = dport {
            let _ = write!(rule, " --dport {d}");
        }
        let src_what = src.map_or("anywhere", |(_, w)| w.as_str());
        let _ = write!(
            rule,
            " -m comment --comment \"{}\" -j ACCEPT",
            comment(&format!("{src_what} -> {dst_what}"))
        );
        if self.seen.insert(rule.clone()) {
            self.ingress.push(rule);
        }
    }
}

/// True if `policy` selects `pod` (same namespace, its pod selector matches).
fn selects(policy: &NetworkPolicy, pod: &Pod) -> bool {
    pod.namespace == policy.namespace && policy.pod_selector.matches(&pod.labels)
}

/// `text` made safe inside a double-quoted iptables-restore argument and
/// short enough for the comment match (names and labels are DNS-like, but
/// the model does not promise it).
fn comment(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = match c {
            '"' => '\'',
            '\\' => '/',
            c if c.is_control() => ' ',
            c => c,
        };
        if out.len() + c.len_utf8() > MAX_COMMENT {
            break;
        }
        out.push(c);
    }
    out
}

fn run(netns: &Path, argv: &[&str], stdin: Option<&[u8]>) -> Result<Output> {
    let c = crate::command_in(netns, argv)?;
    crate::exec_command(c, &format!("{argv:?} in {}", netns.display()), stdin, CMD_TIMEOUT)
}

fn check(out: Output, what: &str) -> Result<Output> {
    if out.status.success() {
        return Ok(out);
    }
    Err(E2eError::io(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim()))(
        std::io::ErrorKind::Other.into(),
    ))
}

/// The names of the sets in the netns at `netns` that start with `weave-`.
fn weave_sets(netns: &Path) -> Result<Vec<String>> {
    let out = check(run(netns, &["ipset", "list", "-n"], None)?, "ipset list -n")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().map(str::trim).filter(|l| l.starts_with(SET_PREFIX)).map(str::to_string).collect())
}

/// The rules of FORWARD as `iptables -S` prints them (`-A FORWARD ...`).
fn forward_rules(netns: &Path) -> Result<Vec<String>> {
    let out = check(run(netns, &["iptables", "-w", "5", "-S", "FORWARD"], None)?, "iptables -S FORWARD")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().filter(|l| l.starts_with("-A FORWARD ")).map(str::to_string).collect())
}

/// Deletes every copy of FORWARD rule `spec` (bounded: `-D` removes one per call).
fn delete_all(netns: &Path, spec: &[String]) -> Result<()> {
    for _ in 0..MAX_HOOK_COPIES {
        let mut argv = vec!["iptables", "-w", "5", "-D", "FORWARD"];
        argv.extend(spec.iter().map(String::as_str));
        if !run(netns, &argv, None)?.status.success() {
            return Ok(());
        }
    }
    Err(E2eError::io(format!("more than {MAX_HOOK_COPIES} copies of FORWARD {spec:?}"))(
        std::io::ErrorKind::Other.into(),
    ))
}

/// Makes the two hooks the first two rules of FORWARD, exactly once each.
fn ensure_hooks(netns: &Path, cluster_cidr: Ipv4Network) -> Result<()> {
    let hooks = hooks(cluster_cidr);
    let want: Vec<String> = hooks.iter().map(|h| format!("-A FORWARD {}", h.join(" "))).collect();
    let rules = forward_rules(netns)?;
    let copies = rules.iter().filter(|r| want.contains(r)).count();
    if rules.get(..2) == Some(&want[..]) && copies == 2 {
        return Ok(());
    }
    // Out of place or duplicated: remove every copy, then insert both at the
    // top, the jump first, so the DROP always comes after it.
    for h in hooks.iter().rev() {
        delete_all(netns, h)?;
    }
    for (i, h) in hooks.iter().enumerate() {
        let pos = (i + 1).to_string();
        let mut argv = vec!["iptables", "-w", "5", "-I", "FORWARD", pos.as_str()];
        argv.extend(h.iter().map(String::as_str));
        check(run(netns, &argv, None)?, &format!("insert FORWARD hook {h:?}"))?;
    }
    // -C: both are there now (a concurrent writer could still move them).
    for h in &hooks {
        let mut argv = vec!["iptables", "-w", "5", "-C", "FORWARD"];
        argv.extend(h.iter().map(String::as_str));
        check(run(netns, &argv, None)?, &format!("check FORWARD hook {h:?}"))?;
    }
    Ok(())
}

/// Loads `rendered` into the node netns at `netns`: sets (built under
/// temporary names and swapped in), then the chains (declaring a chain in an
/// `iptables-restore --noflush` payload flushes it, so re-applying replaces
/// every rule), then the FORWARD hooks at the top, and finally destroys the
/// `weave-` sets the new rules no longer name. Idempotent.
pub fn apply(netns: &Path, rendered: &Rendered, cluster_cidr: Ipv4Network) -> Result<()> {
    let here = netns.display();
    check(
        run(netns, &["ipset", "restore"], Some(rendered.ipsets.as_bytes()))?,
        &format!("ipset restore in {here}"),
    )?;
    check(
        run(netns, &["iptables-restore", "--noflush", "-w", "5"], Some(rendered.iptables.as_bytes()))?,
        &format!("iptables-restore in {here}"),
    )?;
    ensure_hooks(netns, cluster_cidr)?;
    let keep = rendered.set_names();
    for set in weave_sets(netns)? {
        if !keep.contains(&set) {
            check(
                run(netns, &["ipset", "destroy", &set], None)?,
                &format!("destroy stale set {set} in {here}"),
            )?;
        }
    }
    Ok(())
}

/// Removes from the node netns at `netns` everything `apply` made: the
/// hooks, the three chains, and every `weave-` set. Idempotent.
pub fn remove(netns: &Path, cluster_cidr: Ipv4Network) -> Result<()> {
    let here = netns.display();
    for h in hooks(cluster_cidr).iter().rev() {
        delete_all(netns, h)?;
    }
    // Declaring creates (or flushes) each chain, so -X succeeds whether or not
    // it existed; all flushed before any is deleted, as WEAVE-NPC jumps to the others.
    let mut payload = String::from("*filter\n");
    for chain in [MAIN_CHAIN, DEFAULT_CHAIN, INGRESS_CHAIN] {
        let _ = writeln!(payload, ":{chain} - [0:0]");
    }
    for chain in [MAIN_CHAIN, DEFAULT_CHAIN, INGRESS_CHAIN] {
        let _ = writeln!(payload, "-X {chain}");
    }
    payload.push_str("COMMIT\n");
    check(
        run(netns, &["iptables-restore", "--noflush", "-w", "5"], Some(payload.as_bytes()))?,
        &format!("delete weave chains in {here}"),
    )?;
    for set in weave_sets(netns)? {
        check(run(netns, &["ipset", "destroy", &set], None)?, &format!("destroy set {set} in {here}"))?;
    }
    Ok(())
}

/// The testbed's cluster CIDR.
fn cluster_cidr() -> Result<Ipv4Network> {
    CLUSTER_CIDR.parse().map_err(|e| {
        E2eError::io(format!("cluster CIDR {CLUSTER_CIDR}: {e}"))(std::io::ErrorKind::InvalidData.into())
    })
}

impl Testbed {
    /// Renders weave-npc 1.9.6's rules from the cluster dir into every node
    /// (node N is `node-N`), as each node's weave-npc would after a change of
    /// pods, namespaces or policies. Idempotent; call again after a change.
    pub fn apply_weave(&self) -> Result<()> {
        let model = weft_agent::source::read_dir(&self.cluster_dir()).model;
        let cidr = cluster_cidr()?;
        for n in 1..=self.nodes() {
            let rendered = render(&model, &crate::agents::node_name(n), cidr);
            apply(&self.node_netns(n), &rendered, cidr)?;
        }
        Ok(())
    }

    /// Removes the weave-npc 1.9.6 reproduction from every node. Idempotent.
    pub fn remove_weave(&self) -> Result<()> {
        let cidr = cluster_cidr()?;
        for n in 1..=self.nodes() {
            remove(&self.node_netns(n), cidr)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_agent::model::{ContainerPort, LabelSelector, Labels, Namespace, Rule};

    const CIDR: &str = "10.244.0.0/16";

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn pod(key: &str, node: &str, ip: Option<[u8; 4]>, tcp80: u16) -> Pod {
        let (ns, name) = key.split_once('/').unwrap();
        Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: labels(&[("pod", name)]),
            node: Some(node.into()),
            ip: ip.map(Ipv4Addr::from),
            ip6: None,
            host_network: false,
            ports: vec![
                ContainerPort { name: Some("serve-80-tcp".into()), port: tcp80, protocol: Protocol::Tcp },
                ContainerPort { name: Some("serve-80-udp".into()), port: 80, protocol: Protocol::Udp },
            ],
        }
    }

    fn pods_peer(namespaces: Option<LabelSelector>, pod: &str) -> Peer {
        Peer::Pods { namespaces, pods: LabelSelector::of_labels([("pod", pod)]) }
    }

    fn port(protocol: Protocol, port: Option<PortRef>, end_port: Option<u16>) -> PolicyPort {
        PolicyPort { protocol, port, end_port }
    }

    fn policy(key: &str, selector: LabelSelector, ingress: Option<Vec<Rule>>) -> NetworkPolicy {
        let (ns, name) = key.split_once('/').unwrap();
        NetworkPolicy {
            namespace: ns.into(),
            name: name.into(),
            pod_selector: selector,
            ingress,
            egress: None,
            audit: false,
        }
    }

    /// Two namespaces; on node-1 x/a, x/c (serve-80-tcp is 8080 there), y/d,
    /// plus a pending and a hostNetwork pod; y/b on node-2. x/web isolates
    /// all of x (pod and ipBlock peers, a named port, a UDP range, an
    /// SCTP-only rule without peers); y/allow-a lets x/a into y/b on TCP 80;
    /// y/egress-only isolates y/d for egress only.
    fn model() -> Model {
        let mut m = Model::default();
        for (ns, extra) in [("x", Some(("team", "blue"))), ("y", None)] {
            let mut l = labels(&[("kubernetes.io/metadata.name", ns)]);
            if let Some((k, v)) = extra {
                l.insert(k.into(), v.into());
            }
            m.namespaces.insert(ns.into(), Namespace { name: ns.into(), labels: l });
        }
        let mut host = pod("y/host", "node-1", Some([172, 31, 0, 11]), 80);
        host.host_network = true;
        for p in [
            pod("x/a", "node-1", Some([10, 244, 1, 2]), 80),
            pod("x/c", "node-1", Some([10, 244, 1, 3]), 8080),
            pod("y/b", "node-2", Some([10, 244, 2, 2]), 80),
            pod("y/d", "node-1", Some([10, 244, 1, 4]), 80),
            pod("y/pending", "node-1", None, 80),
            host,
        ] {
            m.pods.insert(p.key(), p.into());
        }
        let block = Peer::IpBlock {
            cidr: "172.31.0.0/24".parse().unwrap(),
            except: vec!["172.31.0.100/32".parse().unwrap()],
        };
        let web = vec![
            Rule {
                peers: vec![pods_peer(None, "a"), block],
                ports: vec![
                    port(Protocol::Tcp, Some(PortRef::Name("serve-80-tcp".into())), None),
                    port(Protocol::Udp, Some(PortRef::Number(81)), Some(82)),
                ],
            },
            Rule { peers: vec![], ports: vec![port(Protocol::Sctp, None, None)] },
        ];
        let in_x = LabelSelector::of_labels([("kubernetes.io/metadata.name", "x")]);
        let allow_a = vec![Rule {
            peers: vec![pods_peer(Some(in_x), "a")],
            ports: vec![port(Protocol::Tcp, Some(PortRef::Number(80)), None)],
        }];
        let mut egress_only = policy("y/egress-only", LabelSelector::of_labels([("pod", "d")]), None);
        egress_only.egress = Some(vec![]);
        for p in [
            policy("x/web", LabelSelector::default(), Some(web)),
            policy("y/allow-a", LabelSelector::of_labels([("pod", "b")]), Some(allow_a)),
            egress_only,
        ] {
            std::sync::Arc::make_mut(&mut m.policies).insert(p.key(), p.into());
        }
        m
    }

    fn cidr() -> Ipv4Network {
        CIDR.parse().unwrap()
    }

    /// The members the payload adds to set `name`, in order.
    fn members(r: &Rendered, name: &str) -> Vec<String> {
        let add = format!("add {name}{TMP_SUFFIX} ");
        r.ipsets.lines().filter_map(|l| l.strip_prefix(add.as_str())).map(str::to_string).collect()
    }

    /// The sets of `model()` by what they mean, under readable names.
    fn names() -> Vec<(String, &'static str)> {
        [
            ("default-allow:x", "weave-DEFAULT-X"),
            ("default-allow:y", "weave-DEFAULT-Y"),
            ("src-pods:ns=x:pod=a", "weave-SRC-X-A"),
            ("dst-pods:ns=x:<all>:serve-80-tcp/tcp=80", "weave-DST-X-80"),
            ("dst-pods:ns=x:<all>:serve-80-tcp/tcp=8080", "weave-DST-X-8080"),
            ("dst-pods:ns=x:<all>", "weave-DST-X"),
            ("ipblock:ipBlock: 172.31.0.0/24 except 172.31.0.100/32", "weave-BLOCK"),
            ("src-pods:nsSelector=kubernetes.io/metadata.name=x:pod=a", "weave-SRC-NSX-A"),
            ("dst-pods:ns=y:pod=b", "weave-DST-Y-B"),
        ]
        .into_iter()
        .map(|(k, n)| (set_name(k), n))
        .collect()
    }

    fn readable(text: &str) -> String {
        let mut text = text.to_string();
        for (hash, name) in names() {
            text = text.replace(&hash, name);
        }
        text
    }

    /// The golden rules of node-1 (the same on node-2: only set contents differ).
    #[test]
    fn golden_rules() {
        let r = render(&model(), "node-1", cidr());
        let want = r#"*filter
:WEAVE-NPC - [0:0]
:WEAVE-NPC-DEFAULT - [0:0]
:WEAVE-NPC-INGRESS - [0:0]
-A WEAVE-NPC -m state --state RELATED,ESTABLISHED -j ACCEPT
-A WEAVE-NPC -m state --state NEW -j WEAVE-NPC-DEFAULT
-A WEAVE-NPC -m state --state NEW -j WEAVE-NPC-INGRESS
-A WEAVE-NPC -m set --match-set weave-local-pods src -m set ! --match-set weave-local-pods dst -j ACCEPT
-A WEAVE-NPC-DEFAULT -m set --match-set weave-DEFAULT-X dst -m comment --comment "DefaultAllow isolation for namespace: x" -j ACCEPT
-A WEAVE-NPC-DEFAULT -m set --match-set weave-DEFAULT-Y dst -m comment --comment "DefaultAllow isolation for namespace: y" -j ACCEPT
-A WEAVE-NPC-INGRESS -p tcp -m set --match-set weave-SRC-X-A src -m set --match-set weave-DST-X-80 dst --dport 80 -m comment --comment "pods: namespace: x, selector: pod=a -> pods: namespace: x, selector: <all>, port serve-80-tcp/tcp=80" -j ACCEPT
-A WEAVE-NPC-INGRESS -p tcp -m set --match-set weave-SRC-X-A src -m set --match-set weave-DST-X-8080 dst --dport 8080 -m comment --comment "pods: namespace: x, selector: pod=a -> pods: namespace: x, selector: <all>, port serve-80-tcp/tcp=8080" -j ACCEPT
-A WEAVE-NPC-INGRESS -p udp -m set --match-set weave-SRC-X-A src -m set --match-set weave-DST-X dst --dport 81:82 -m comment --comment "pods: namespace: x, selector: pod=a -> pods: namespace: x, selector: <all>" -j ACCEPT
-A WEAVE-NPC-INGRESS -p tcp -m set --match-set weave-BLOCK src -m set --match-set weave-DST-X-80 dst --dport 80 -m comment --comment "ipBlock: 172.31.0.0/24 except 172.31.0.100/32 -> pods: namespace: x, selector: <all>, port serve-80-tcp/tcp=80" -j ACCEPT
-A WEAVE-NPC-INGRESS -p tcp -m set --match-set weave-BLOCK src -m set --match-set weave-DST-X-8080 dst --dport 8080 -m comment --comment "ipBlock: 172.31.0.0/24 except 172.31.0.100/32 -> pods: namespace: x, selector: <all>, port serve-80-tcp/tcp=8080" -j ACCEPT
-A WEAVE-NPC-INGRESS -p udp -m set --match-set weave-BLOCK src -m set --match-set weave-DST-X dst --dport 81:82 -m comment --comment "ipBlock: 172.31.0.0/24 except 172.31.0.100/32 -> pods: namespace: x, selector: <all>" -j ACCEPT
-A WEAVE-NPC-INGRESS -p sctp -m set --match-set weave-DST-X dst -m comment --comment "anywhere -> pods: namespace: x, selector: <all>" -j ACCEPT
-A WEAVE-NPC-INGRESS -p tcp -m set --match-set weave-SRC-NSX-A src -m set --match-set weave-DST-Y-B dst --dport 80 -m comment --comment "namespaces: selector: kubernetes.io/metadata.name=x, pods: selector: pod=a -> pods: namespace: y, selector: pod=b" -j ACCEPT
COMMIT
# FORWARD rule 1: -d 10.244.0.0/16 -j WEAVE-NPC
# FORWARD rule 2: -d 10.244.0.0/16 -j DROP
"#;
        let got = readable(&r.iptables);
        assert_eq!(got, want, "\n{got}");
        assert_eq!(render(&model(), "node-2", cidr()).iptables, r.iptables, "rules differ between nodes");
    }

    /// The golden ipset payload of node-1, one set shown whole; the
    /// contents of every set of both nodes after it.
    #[test]
    fn golden_sets() {
        let r = render(&model(), "node-1", cidr());
        let got = readable(&r.ipsets);
        let head = "# weave-local-pods: pods on node-1
create weave-local-pods hash:ip -exist
create weave-local-pods-new hash:ip -exist
flush weave-local-pods-new
add weave-local-pods-new 10.244.1.2
add weave-local-pods-new 10.244.1.3
add weave-local-pods-new 10.244.1.4
swap weave-local-pods-new weave-local-pods
destroy weave-local-pods-new
# weave-DEFAULT-X: DefaultAllow isolation for namespace: x
create weave-DEFAULT-X hash:ip -exist
create weave-DEFAULT-X-new hash:ip -exist
flush weave-DEFAULT-X-new
swap weave-DEFAULT-X-new weave-DEFAULT-X
destroy weave-DEFAULT-X-new
";
        assert!(got.starts_with(head), "\n{got}");
        assert!(
            got.contains(
                "create weave-BLOCK hash:net -exist
create weave-BLOCK-new hash:net -exist
flush weave-BLOCK-new
add weave-BLOCK-new 172.31.0.0/24
add weave-BLOCK-new 172.31.0.100/32 nomatch
swap weave-BLOCK-new weave-BLOCK
destroy weave-BLOCK-new
"
            ),
            "\n{got}"
        );
        let mut want_names = vec![LOCAL_PODS.to_string()];
        want_names.extend(names().into_iter().map(|(h, _)| h));
        let mut got_names = r.set_names();
        got_names.sort();
        want_names.sort();
        assert_eq!(got_names, want_names);

        let r2 = render(&model(), "node-2", cidr());
        let n = |k: &str| set_name(k);
        #[rustfmt::skip]
        let cases: [(&str, String, &[&str], &[&str]); 9] = [
            // Pending and hostNetwork pods are never members; y/b is node-2's only pod.
            ("local pods", LOCAL_PODS.into(), &["10.244.1.2", "10.244.1.3", "10.244.1.4"], &["10.244.2.2"]),
            // x/web selects all of x: nothing of x is default-allowed.
            ("default x", n("default-allow:x"), &[], &[]),
            // y/d is isolated for egress only; y/b is isolated by y/allow-a.
            ("default y", n("default-allow:y"), &["10.244.1.4"], &[]),
            ("src x/a", n("src-pods:ns=x:pod=a"), &["10.244.1.2"], &[]),
            // The named port resolves to 80 on x/a, 8080 on x/c.
            ("dst x:80", n("dst-pods:ns=x:<all>:serve-80-tcp/tcp=80"), &["10.244.1.2"], &[]),
            ("dst x:8080", n("dst-pods:ns=x:<all>:serve-80-tcp/tcp=8080"), &["10.244.1.3"], &[]),
            ("dst x", n("dst-pods:ns=x:<all>"), &["10.244.1.2", "10.244.1.3"], &[]),
            // The heart of 1.9.6's cross-node failure: on node-2, where y/b
            // is, the set that should hold x/a is empty (x/a is remote).
            ("src ns x, pod a", n("src-pods:nsSelector=kubernetes.io/metadata.name=x:pod=a"), &["10.244.1.2"], &[]),
            ("dst y/b", n("dst-pods:ns=y:pod=b"), &[], &["10.244.2.2"]),
        ];
        for (what, set, on1, on2) in cases {
            assert_eq!(members(&r, &set), on1, "{what} on node-1");
            assert_eq!(members(&r2, &set), on2, "{what} on node-2");
        }
    }

    #[test]
    fn without_policies_every_local_pod_is_default_allowed() {
        let mut m = model();
        std::sync::Arc::make_mut(&mut m.policies).clear();
        let r = render(&m, "node-1", cidr());
        assert!(!r.iptables.lines().any(|l| l.starts_with("-A WEAVE-NPC-INGRESS")), "{}", r.iptables);
        assert_eq!(members(&r, &set_name("default-allow:x")), ["10.244.1.2", "10.244.1.3"]);
        assert_eq!(members(&r, &set_name("default-allow:y")), ["10.244.1.4"]);
        // A node without pods, or one the model does not know: the base chains, empty sets.
        for node in ["node-3", ""] {
            let r = render(&m, node, cidr());
            assert!(r.iptables.contains("-A WEAVE-NPC -m state --state NEW -j WEAVE-NPC-DEFAULT\n"));
            assert!(!r.ipsets.lines().any(|l| l.starts_with("add ")), "{}", r.ipsets);
        }
        assert_eq!(render(&Model::default(), "node-1", cidr()).set_names(), [LOCAL_PODS]);
    }

    #[test]
    fn an_empty_ingress_list_isolates_and_allows_nothing() {
        let mut m = model();
        std::sync::Arc::make_mut(&mut m.policies).clear();
        let deny = policy("y/deny", LabelSelector::default(), Some(vec![]));
        std::sync::Arc::make_mut(&mut m.policies).insert(deny.key(), deny.into());
        let r = render(&m, "node-1", cidr());
        assert!(members(&r, &set_name("default-allow:y")).is_empty());
        assert_eq!(members(&r, &set_name("default-allow:x")), ["10.244.1.2", "10.244.1.3"]);
        assert!(!r.iptables.lines().any(|l| l.starts_with("-A WEAVE-NPC-INGRESS")), "{}", r.iptables);
    }

    #[test]
    fn rules_without_peers_or_ports_match_anything_and_duplicates_collapse() {
        let mut m = model();
        std::sync::Arc::make_mut(&mut m.policies).clear();
        let all = vec![Rule::default()];
        for key in ["y/one", "y/two"] {
            let p = policy(key, LabelSelector::of_labels([("pod", "d")]), Some(all.clone()));
            std::sync::Arc::make_mut(&mut m.policies).insert(p.key(), p.into());
        }
        let r = render(&m, "node-1", cidr());
        let ingress: Vec<&str> =
            r.iptables.lines().filter(|l| l.starts_with("-A WEAVE-NPC-INGRESS")).collect();
        let dst = set_name("dst-pods:ns=y:pod=d");
        assert_eq!(
            ingress,
            [format!(
                "-A WEAVE-NPC-INGRESS -m set --match-set {dst} dst -m comment --comment \"anywhere -> pods: \
                 namespace: y, selector: pod=d\" -j ACCEPT"
            )]
        );
        assert_eq!(members(&r, &dst), ["10.244.1.4"]);
    }

    #[test]
    fn ip_blocks_everything_and_ipv6() {
        let mut m = model();
        std::sync::Arc::make_mut(&mut m.policies).clear();
        let rule = Rule {
            peers: vec![
                Peer::IpBlock {
                    cidr: "0.0.0.0/0".parse().unwrap(),
                    except: vec!["10.0.0.0/8".parse().unwrap()],
                },
                Peer::IpBlock { cidr: "fd00::/8".parse().unwrap(), except: vec![] },
            ],
            ports: vec![],
        };
        let p = policy("y/any", LabelSelector::default(), Some(vec![rule]));
        std::sync::Arc::make_mut(&mut m.policies).insert(p.key(), p.into());
        let r = render(&m, "node-1", cidr());
        let block = set_name("ipblock:ipBlock: 0.0.0.0/0 except 10.0.0.0/8");
        assert_eq!(members(&r, &block), ["0.0.0.0/1", "10.0.0.0/8 nomatch", "128.0.0.0/1"]);
        let ingress: Vec<&str> =
            r.iptables.lines().filter(|l| l.starts_with("-A WEAVE-NPC-INGRESS")).collect();
        assert_eq!(ingress.len(), 1, "the IPv6 block gets no rule: {ingress:?}");
        assert!(ingress[0].contains(&format!("--match-set {block} src")), "{}", ingress[0]);
    }

    #[test]
    fn a_namespace_selector_reads_namespace_labels() {
        let mut m = model();
        std::sync::Arc::make_mut(&mut m.policies).clear();
        // team=blue is x's label; z has no manifest (only its name label).
        let z = pod("z/e", "node-1", Some([10, 244, 1, 9]), 80);
        m.pods.insert(z.key(), z.into());
        let rule = |ns: LabelSelector| Rule { peers: vec![pods_peer(Some(ns), "a")], ports: vec![] };
        let blue = LabelSelector::of_labels([("team", "blue")]);
        let p = policy("y/blue", LabelSelector::default(), Some(vec![rule(blue)]));
        std::sync::Arc::make_mut(&mut m.policies).insert(p.key(), p.into());
        let r = render(&m, "node-1", cidr());
        assert_eq!(members(&r, &set_name("src-pods:nsSelector=team=blue:pod=a")), ["10.244.1.2"]);
        // Every namespace, z included, has its default-allow set.
        assert_eq!(members(&r, &set_name("default-allow:z")), ["10.244.1.9"]);
    }

    #[test]
    fn names_fit_ipset_and_hooks_are_normalised() {
        let r = render(&model(), "node-1", cidr());
        for name in r.set_names() {
            assert!(name.starts_with(SET_PREFIX), "{name}");
            assert!(name.len() + TMP_SUFFIX.len() <= 31, "{name}: over ipset's 31 characters");
        }
        assert_eq!(set_name(""), "weave-cbf29ce484222325");
        let odd: Ipv4Network = "10.244.3.7/16".parse().unwrap();
        assert_eq!(
            hooks(odd),
            [["-d", "10.244.0.0/16", "-j", "WEAVE-NPC"], ["-d", "10.244.0.0/16", "-j", "DROP"]]
        );
    }

    #[test]
    fn comments_are_quoted_safely_and_bounded() {
        assert_eq!(comment("a \"b\" c\\d\ne"), "a 'b' c/d e");
        let long = "é".repeat(400);
        let c = comment(&long);
        assert!(c.len() <= MAX_COMMENT && c.chars().all(|ch| ch == 'é'), "{}", c.len());
    }
}
