//! The testbed's scenarios (issue 4), each a function that brings up its own
//! run, probes, tears down, and returns what it checked. `cargo test` runs
//! them (tests/scenarios.rs) and so does `weft-e2e run NAME`; both fail on the
//! same checks. Where a seed failure exists, the scenario shows it first (the
//! broken set-up, inside a node's netns only) and then weft's answer.
//!
//! Each runs in a family (`weft-e2e run NAME --family ipv4|ipv6|dual`): its
//! testbed comes up in that family and every probe goes to each address of
//! its target in the family (dual: both, each check named by its family),
//! the plan's addresses embedded in fd00::/96 for IPv6 (`family::embed`).
//! Seed 000 (weave-npc 1.9.6 drops an external NodePort flow to a pod on
//! another node) is `weave-vs-weft`; seed 001 (a same-node ClusterIP needs
//! bridge-nf-call-iptables) is `same-node-clusterip`, whose IPv6 twin is
//! bridge-nf-call-ip6tables.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use weft_agent::model::{PortRef, Protocol};

use crate::error::{E2eError, Result};
use crate::family::{embed_net, Family};
use crate::manifests::ServiceManifest;
use crate::pods::{find_binary, E2E_BIN_ENV};
use crate::probe::{probe_in, Outcome, Proto};
use crate::{exec_in, run, topology, wait_until, Testbed};

mod overlay;

/// Probe bound: generous, since the first packet to a new veth waits for ARP.
const PROBE: Duration = Duration::from_secs(3);
/// Bound on the agents applying the cluster dir (they poll every 100 ms).
const CONVERGE: Duration = Duration::from_secs(10);
/// Bound on one command.
const CMD: Duration = Duration::from_secs(10);
/// The port of the `--echo-peer` servers (free in pods: their workload serves 80 and 81).
const ECHO_PORT: u16 = 8080;

/// One thing a scenario checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub what: String,
    pub want: String,
    pub got: String,
    pub ok: bool,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ok {
            write!(f, "ok    {}: {}", self.what, self.got)
        } else {
            write!(f, "FAIL  {}: got {}, want {}", self.what, self.got, self.want)
        }
    }
}

/// A scenario: its CLI name, what it shows, the families it runs in (any
/// other is refused with `why_not`), and its body.
pub struct Scenario {
    pub name: &'static str,
    pub title: &'static str,
    pub families: &'static [Family],
    pub why_not: &'static str,
    run: fn(Family) -> Result<Vec<Check>>,
}

impl Scenario {
    /// Ok if the scenario runs in `family`, else `ScenarioFamily` saying why not.
    pub fn runs_in(&self, family: Family) -> Result<()> {
        if self.families.contains(&family) {
            return Ok(());
        }
        Err(E2eError::ScenarioFamily { scenario: self.name, family, why: self.why_not })
    }

    /// Runs the scenario in `family`; `ScenarioFamily` if it cannot run there.
    pub fn run_in(&self, family: Family) -> Result<Vec<Check>> {
        self.runs_in(family)?;
        (self.run)(family)
    }
}

const EVERY_FAMILY: &[Family] = &[Family::Ipv4, Family::Ipv6, Family::Dual];

/// Every scenario, in the order.
pub const SCENARIOS: [Scenario; 8] = [
    Scenario {
        name: "pod-to-pod",
        title: "1. pods on the same node and on different nodes reach each other (TCP and UDP)",
        families: EVERY_FAMILY,
        why_not: "",
        run: pod_to_pod,
    },
    Scenario {
        name: "same-node-clusterip",
        title: "2. seed 001: a ClusterIP whose endpoint shares the client's bridge: fails with bridge-nf-call-iptables=0 (IPv6: bridge-nf-call-ip6tables=0), works with weft's 1; hairpin",
        families: EVERY_FAMILY,
        why_not: "",
        run: same_node_cluster_ip,
    },
    Scenario {
        name: "node-to-clusterip",
        title: "3. a node reaches a ClusterIP whose endpoint is a pod on another node",
        families: EVERY_FAMILY,
        why_not: "",
        run: node_to_cluster_ip,
    },
    Scenario {
        name: "nodeport",
        title: "4. external client to NodePorts on node 1, endpoint on node 2 or node 1, externalTrafficPolicy Cluster and Local",
        families: EVERY_FAMILY,
        why_not: "",
        run: node_port,
    },
    Scenario {
        name: "masquerade",
        title: "5. pod egress to the external client leaves as the node's lan address; pod to pod keeps the pod's",
        families: EVERY_FAMILY,
        why_not: "",
        run: masquerade,
    },
    Scenario {
        name: "cleanup",
        title: "6. after down, and after a killed run and its down, nothing of the run remains",
        families: EVERY_FAMILY,
        why_not: "",
        run: cleanup,
    },
    Scenario {
        name: "weave-vs-weft",
        title: "seed 000, the weave-npc 1.9.6 seed: external client -> NodePort on node 1 -> endpoint on node 2, under weave's rules and under weft",
        families: &[Family::Ipv4, Family::Dual],
        why_not: "weave-npc 1.9.6 writes iptables only (IPv4); run it in dual for weft's half over IPv4 and IPv6 beside weave's over IPv4",
        run: weave_vs_weft,
    },
    Scenario {
        name: "overlay-seed-003",
        title: "seed 003 as it happened: on a lan that drops pod addresses, host-gw fails, flannel fails a node -> ClusterIP (endpoint on another node), weft's vxlan mode carries it all",
        families: &[Family::Ipv4],
        why_not: "weft's vxlan overlay (and flannel's, as reproduced) carries IPv4 only: IPv6 pod CIDRs are routed in host-gw mode only (docs/modes.md)",
        run: overlay::overlay_seed_003,
    },
];

/// The scenario named `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// The checks made so far.
#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn record(&mut self, what: impl Into<String>, want: impl Into<String>, got: impl Into<String>, ok: bool) {
        self.0.push(Check { what: what.into(), want: want.into(), got: got.into(), ok });
    }

    /// A probe that must connect and be answered by `reply`.
    fn answers(&mut self, what: &str, from: &Path, to: SocketAddr, proto: Proto, reply: &str) -> Result<()> {
        let got = probe_in(from, to, proto, PROBE)?;
        let want = Outcome::Connected(reply.into());
        let ok = got == want;
        self.record(format!("{what} ({})", proto_name(proto)), want.to_string(), got.to_string(), ok);
        Ok(())
    }

    /// A probe that must not connect (a timeout or a reset).
    fn blocked(&mut self, what: &str, from: &Path, to: SocketAddr, proto: Proto) -> Result<()> {
        let got = probe_in(from, to, proto, PROBE)?;
        let ok = matches!(got, Outcome::Timeout | Outcome::Refused);
        self.record(format!("{what} ({})", proto_name(proto)), "timeout or refused", got.to_string(), ok);
        Ok(())
    }

    /// `answers` in each single family of `family`, to plan address `to`
    /// in that family; `reply(f)` is the answer wanted over `f`.
    #[allow(clippy::too_many_arguments)]
    fn answers_in(
        &mut self,
        family: Family,
        what: &str,
        from: &Path,
        (to, port): (Ipv4Addr, u16),
        proto: Proto,
        reply: impl Fn(Family) -> String,
    ) -> Result<()> {
        for f in family.singles() {
            self.answers(
                &named(what, family, f),
                from,
                SocketAddr::new(f.address(to), port),
                proto,
                &reply(f),
            )?;
        }
        Ok(())
    }

    /// `blocked` in each single family of `family`, to plan address `to` in that family.
    fn blocked_in(
        &mut self,
        family: Family,
        what: &str,
        from: &Path,
        (to, port): (Ipv4Addr, u16),
    ) -> Result<()> {
        for f in family.singles() {
            self.blocked(&named(what, family, f), from, SocketAddr::new(f.address(to), port), Proto::Tcp)?;
        }
        Ok(())
    }

    fn that(&mut self, what: &str, ok: bool, got: impl Into<String>) {
        self.record(what, "true", got, ok);
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// A check's name in run family `run` over single family `f`: as it is in
/// an ipv4 run (the output the IPv4 scenarios always had), else tagged.
fn named(what: &str, run: Family, f: Family) -> String {
    if run == Family::Ipv4 {
        what.to_string()
    } else {
        format!("[{f}] {what}")
    }
}

/// Runs `argv` in `netns`; its failure is an error of the scenario, not a check.
fn sh(netns: &Path, argv: &[&str]) -> Result<()> {
    let out = exec_in(netns, argv, CMD)?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(E2eError::io(format!("{argv:?} in {}: {why}", netns.display()))(std::io::ErrorKind::Other.into()))
}

/// A testbed in `family` with `nodes` nodes, `pods` ((node, "ns/name")) and agents converged.
fn cluster(family: Family, nodes: u32, pods: &[(u32, &str)]) -> Result<(Testbed, Vec<crate::Pod>)> {
    let mut tb = Testbed::up_in(nodes, family)?;
    let mut out = Vec::new();
    for (node, name) in pods {
        out.push(tb.add_pod(*node, name)?);
    }
    tb.start_agents()?;
    tb.wait_converged(CONVERGE)?;
    Ok((tb, out))
}

/// Tears `tb` down and checks that nothing of it is left.
fn down_clean(c: &mut Checks, tb: Testbed) -> Result<()> {
    let st = tb.state();
    tb.down()?;
    let left = topology::leftovers(&st);
    c.that("down leaves nothing of the run", left.is_empty(), format!("{left:?}"));
    Ok(())
}

fn pod_to_pod(family: Family) -> Result<Vec<Check>> {
    let mut c = Checks::default();
    let (tb, pods) = cluster(family, 2, &[(1, "web/a"), (1, "web/b"), (2, "web/c")])?;
    let [a, b, cc] = [&pods[0], &pods[1], &pods[2]];
    for (from, to, path) in
        [(a, b, "same node"), (b, a, "same node"), (a, cc, "across nodes"), (cc, a, "across nodes")]
    {
        for (port, proto) in [(80, Proto::Tcp), (81, Proto::Udp)] {
            let what = format!("{} -> {}:{port}, {path}", from.name, to.name);
            c.answers_in(family, &what, &from.netns, (to.ip, port), proto, |_| to.name.clone())?;
        }
    }
    down_clean(&mut c, tb)?;
    Ok(c.0)
}

/// The sysctl that makes single family `f`'s bridged packets pass through
/// its netfilter hooks (conntrack, and so Service NAT): seed 001's knob.
fn bridge_nf_sysctl(f: Family) -> &'static str {
    match f {
        Family::Ipv6 => "net.bridge.bridge-nf-call-ip6tables",
        _ => "net.bridge.bridge-nf-call-iptables",
    }
}

/// Flushes node `netns`'s conntrack table in every family (`conntrack -F`
/// alone flushes IPv4 only).
fn flush_conntrack(netns: &Path) -> Result<()> {
    sh(netns, &["conntrack", "-F", "-f", "ipv4"])?;
    sh(netns, &["conntrack", "-F", "-f", "ipv6"])
}

/// The TCP resets sent from `netns` so far (both families: one MIB).
fn tcp_out_rsts(netns: &Path) -> Result<u64> {
    let out = exec_in(netns, &["cat", "/proc/net/snmp"], CMD)?;
    let snmp = String::from_utf8_lossy(&out.stdout);
    snmp_field(&snmp, "Tcp:", "OutRsts").ok_or_else(|| {
        E2eError::io("no Tcp OutRsts in /proc/net/snmp")(std::io::ErrorKind::InvalidData.into())
    })
}

/// Field `name` of `/proc/net/snmp`'s `group` (a header line, then a values line).
fn snmp_field(snmp: &str, group: &str, name: &str) -> Option<u64> {
    let mut lines = snmp.lines().filter(|l| l.starts_with(group));
    let (head, values) = (lines.next()?, lines.next()?);
    let i = head.split_whitespace().position(|h| h == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

fn same_node_cluster_ip(family: Family) -> Result<Vec<Check>> {
    let mut c = Checks::default();
    let (tb, pods) = cluster(family, 2, &[(1, "web/a"), (1, "web/b")])?;
    let (a, b) = (&pods[0], &pods[1]);
    let n1 = tb.node_netns(1);
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let svc =
        ServiceManifest::new("web", "b", vip, &[("pod", "b")]).port(80, Protocol::Tcp, PortRef::Number(80));
    tb.apply(&svc.to_yaml())?;
    let set = |f: Family, v: &str| sh(&n1, &["sysctl", "-qw", &format!("{}={v}", bridge_nf_sysctl(f))]);
    let read = |f: Family| -> Result<String> {
        let path = format!("/proc/sys/{}", bridge_nf_sysctl(f).replace('.', "/"));
        let out = exec_in(&n1, &["cat", &path], CMD)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let singles = family.singles();
    for &f in &singles {
        let v = read(f)?;
        let what =
            format!("weft's ADD set {} in node 1", bridge_nf_sysctl(f).trim_start_matches("net.bridge."));
        c.record(what, "1", v.clone(), v == "1");
    }
    let answered = |c: &mut Checks, what: &str, from: &Path| {
        c.answers_in(family, what, from, (vip, 80), Proto::Tcp, |_| "web/b".into())
    };
    answered(&mut c, "a -> ClusterIP of b (same bridge), weft's setting", &a.netns)?;
    answered(&mut c, "b -> its own ClusterIP (hairpin)", &b.netns)?;

    // The seed: off (in node 1's netns only), b's reply is bridged past
    // conntrack's reverse NAT, so a sees it from b's own address and resets.
    // Each family has its own knob; the other family's Service is untouched.
    for &f in &singles {
        let knob = bridge_nf_sysctl(f).trim_start_matches("net.bridge.");
        set(f, "0")?;
        flush_conntrack(&n1)?;
        let vip_f = SocketAddr::new(f.address(vip), 80);
        let what = named(&format!("a -> ClusterIP of b with {knob}=0 (the seed)"), family, f);
        let rsts = tcp_out_rsts(&a.netns)?;
        c.blocked(&what, &a.netns, vip_f, Proto::Tcp)?;
        // Why: the node's conntrack never saw b's reply (its entry stays
        // UNREPLIED), and a, getting a SYN-ACK from b's own address, resets it.
        let fam = if f == Family::Ipv6 { "ipv6" } else { "ipv4" };
        let vip_s = f.address(vip).to_string();
        let out = exec_in(&n1, &["conntrack", "-L", "-f", fam, "-d", &vip_s], CMD)?;
        let entry = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let what = named("the seed: node 1's conntrack entry of the flow never sees b's reply", family, f);
        c.that(&what, entry.contains("[UNREPLIED]"), entry);
        let sent = tcp_out_rsts(&a.netns)?.saturating_sub(rsts);
        let what = named("the seed: a resets b's un-NATed replies", family, f);
        c.that(&what, sent > 0, format!("{sent} RSTs sent"));
        let what = named(&format!("a -> b directly, {knob}=0 (no NAT involved)"), family, f);
        c.answers(&what, &a.netns, SocketAddr::new(f.address(b.ip), 80), Proto::Tcp, "web/b")?;
        for &g in singles.iter().filter(|&&g| g != f) {
            let what = named(&format!("a -> ClusterIP of b with {knob}=0, the other family"), family, g);
            c.answers(&what, &a.netns, SocketAddr::new(g.address(vip), 80), Proto::Tcp, "web/b")?;
        }
        // The agent's status reports the IPv4 knob only.
        if f == Family::Ipv4 {
            let reported = wait_until(CONVERGE, || {
                tb.agent_status(1).is_some_and(|s| s.bridge_nf_call_iptables == Some(false))
            });
            c.that(
                "node 1's agent reports bridge-nf-call-iptables off",
                reported,
                format!("{:?}", tb.agent_status(1).map(|s| s.bridge_nf_call_iptables)),
            );
        }
        set(f, "1")?;
        flush_conntrack(&n1)?;
        c.answers(&named("a -> ClusterIP of b, back to 1", family, f), &a.netns, vip_f, Proto::Tcp, "web/b")?;
    }

    // The older kube-proxy layout (no KUBE-FORWARD) serves it too.
    tb.set_kube_proxy_legacy(true)?;
    answered(&mut c, "a -> ClusterIP of b, legacy kube-proxy layout", &a.netns)?;
    down_clean(&mut c, tb)?;
    Ok(c.0)
}

fn node_to_cluster_ip(family: Family) -> Result<Vec<Check>> {
    let mut c = Checks::default();
    let (tb, _) = cluster(family, 2, &[(2, "web/c")])?;
    let n1 = tb.node_netns(1);
    let vip = Ipv4Addr::new(10, 96, 0, 11);
    let svc =
        ServiceManifest::new("web", "c", vip, &[("pod", "c")]).port(80, Protocol::Tcp, PortRef::Number(80));
    tb.apply(&svc.to_yaml())?;
    // The testbed's nodes have no default route (no traffic may leave the run);
    // a real node's default route covers the service CIDR, so stand in for it
    // with one via the lan, chosen before OUTPUT's DNAT as on a real node.
    let services: ipnetwork::Ipv4Network = SERVICE_CIDR.parse().expect("a CIDR");
    if family.v4() {
        sh(&n1, &["ip", "route", "add", SERVICE_CIDR, "dev", "eth0"])?;
    }
    if family.v6() {
        sh(&n1, &["ip", "-6", "route", "add", &embed_net(services).to_string(), "dev", "eth0"])?;
    }
    c.answers_in(family, "node 1 -> ClusterIP, endpoint on node 2", &n1, (vip, 80), Proto::Tcp, |_| {
        "web/c".into()
    })?;
    down_clean(&mut c, tb)?;
    Ok(c.0)
}

/// The testbed's service CIDR (its IPv6 form embeds it).
const SERVICE_CIDR: &str = "10.96.0.0/12";

fn node_port(family: Family) -> Result<Vec<Check>> {
    let mut c = Checks::default();
    let (tb, pods) = cluster(family, 2, &[(1, "web/a"), (2, "web/c")])?;
    let (a, cc) = (&pods[0], &pods[1]);
    for p in [a, cc] {
        tb.serve_in(&p.netns, &p.name, &[ECHO_PORT], true)?;
    }
    let ext = tb.ext_netns();
    let (n1, n2, ext_ip) = (tb.node_addr(1), tb.node_addr(2), tb.ext_addr());
    // Masquerade takes the outgoing interface's address: for a local endpoint,
    // node 1's bridge (the pod CIDR's gateway, .1; in IPv6 its embedding).
    let bridge1 = crate::plan::pod_cidr(1).nth(1).unwrap_or(n1);
    let np = |name: &str, last: u8, pod: &str, node_port: u16| {
        ServiceManifest::new("web", name, Ipv4Addr::new(10, 96, 0, last), &[("pod", pod)])
            .port(80, Protocol::Tcp, PortRef::Number(ECHO_PORT))
            .node_port(node_port)
    };
    let services = [
        np("remote", 20, "c", 30080),
        np("remote-local", 21, "c", 30081).local(),
        np("here", 22, "a", 30082),
        np("here-local", 23, "a", 30083).local(),
    ];
    let yaml: Vec<String> = services.iter().map(ServiceManifest::to_yaml).collect();
    tb.apply(&yaml.join("---\n"))?;

    // The echo server answers with its name and the source it saw, in the probe's family.
    let tcp = Proto::Tcp;
    let seen = |pod: &'static str, ip: Ipv4Addr| move |f: Family| format!("{pod} {}", f.address(ip));
    c.answers_in(
        family,
        "ext -> node 1:30080, Cluster, endpoint on node 2 (seen from node 1)",
        &ext,
        (n1, 30080),
        tcp,
        seen("web/c", n1),
    )?;
    c.answers_in(
        family,
        "ext -> node 1:30082, Cluster, endpoint on node 1 (seen from node 1's bridge)",
        &ext,
        (n1, 30082),
        tcp,
        seen("web/a", bridge1),
    )?;
    c.blocked_in(family, "ext -> node 1:30081, Local, no endpoint on node 1", &ext, (n1, 30081))?;
    c.answers_in(
        family,
        "ext -> node 2:30081, Local, endpoint on node 2 (client address kept)",
        &ext,
        (n2, 30081),
        tcp,
        seen("web/c", ext_ip),
    )?;
    c.answers_in(
        family,
        "ext -> node 1:30083, Local, endpoint on node 1 (client address kept)",
        &ext,
        (n1, 30083),
        tcp,
        seen("web/a", ext_ip),
    )?;
    down_clean(&mut c, tb)?;
    Ok(c.0)
}

fn masquerade(family: Family) -> Result<Vec<Check>> {
    let mut c = Checks::default();
    let (tb, pods) = cluster(family, 2, &[(1, "web/a"), (2, "web/b"), (1, "web/c")])?;
    let [a, b, cc] = [&pods[0], &pods[1], &pods[2]];
    tb.serve_ext(&[ECHO_PORT], true)?;
    for p in [a, b, cc] {
        tb.serve_in(&p.netns, &p.name, &[ECHO_PORT], true)?;
    }
    let ext = tb.ext_addr();
    let (n1, n2) = (tb.node_addr(1), tb.node_addr(2));
    #[rustfmt::skip]
    let cases = [
        ("pod a (node 1) -> ext: the node's lan address", a, ext, "ext", n1),
        ("pod b (node 2) -> ext: the node's lan address", b, ext, "ext", n2),
        ("pod a (node 1) -> pod b (node 2): a's own address", a, b.ip, "web/b", a.ip),
        ("pod b (node 2) -> pod a (node 1): b's own address", b, a.ip, "web/a", b.ip),
        ("pod a -> pod c, same node: a's own address", a, cc.ip, "web/c", a.ip),
    ];
    for (what, from, to, server, seen) in cases {
        for proto in [Proto::Tcp, Proto::Udp] {
            let reply = |f: Family| format!("{server} {}", f.address(seen));
            c.answers_in(family, what, &from.netns, (to, ECHO_PORT), proto, reply)?;
        }
    }
    down_clean(&mut c, tb)?;
    Ok(c.0)
}

/// Seed 000. weave-npc 1.9.6 writes iptables only, so its half is IPv4 in
/// every run; in dual, weft's half is probed over IPv6 as well.
fn weave_vs_weft(family: Family) -> Result<Vec<Check>> {
    let mut c = Checks::default();
    let dual = family == Family::Dual;
    for row in crate::compare::nodeport_side_by_side_in(dual)? {
        let want = if row.allowed { "answered" } else { "timeout or refused" };
        let weft = format!("weft: {}", row.case);
        c.record(named(&weft, family, Family::Ipv4), want, row.weft.to_string(), row.weft_right());
        if let (Some(got), Some(ok)) = (&row.weft6, row.weft6_right()) {
            c.record(named(&weft, family, Family::Ipv6), want, got.to_string(), ok);
        }
        // weave-npc 1.9.6 drops the transit packet on node 1 whatever the policy says.
        let dropped = matches!(row.weave, Outcome::Timeout);
        let weave = named(&format!("weave-npc 1.9.6: {}", row.case), family, Family::Ipv4);
        c.record(weave, "timeout", row.weave.to_string(), dropped);
    }
    Ok(c.0)
}

fn cleanup(family: Family) -> Result<Vec<Check>> {
    let mut c = Checks::default();
    // (a) A full run: pods, agents, a service, extra servers; then down.
    let (tb, pods) = cluster(family, 2, &[(1, "web/a"), (2, "web/b")])?;
    let svc = ServiceManifest::new("web", "b", Ipv4Addr::new(10, 96, 0, 10), &[("pod", "b")])
        .port(80, Protocol::Tcp, PortRef::Number(80))
        .node_port(30080);
    tb.apply(&svc.to_yaml())?;
    tb.serve_ext(&[ECHO_PORT], false)?;
    tb.serve_in(&pods[0].netns, &pods[0].name, &[ECHO_PORT], false)?;
    let st = tb.state();
    c.that(
        "the run has agents, workloads and servers",
        st.processes.len() >= 6,
        format!("{} processes", st.processes.len()),
    );
    down_clean(&mut c, tb)?;

    // (b) The CLI's foreground `up`, a pod added by `pod add`, then `up` is
    //     killed with SIGKILL (no teardown of its own): `down` cleans up.
    let e2e = find_binary("weft-e2e", E2E_BIN_ENV)?;
    let name = format!("wk{:04x}", std::process::id() & 0xffff);
    let mut up = Command::new(&e2e)
        .args(["up", "--nodes", "2", "--name", &name, "--family", &family.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(E2eError::io("start weft-e2e up"))?;
    let printed = first_line(&mut up, CMD);
    let killed = (|| -> Result<crate::RunState> {
        let printed =
            printed.ok_or_else(|| E2eError::NotReady { what: "weft-e2e up".into(), ms: CMD.as_millis() })?;
        c.record("up prints the run name", name.clone(), printed.clone(), printed == name);
        let out = run_cli(&e2e, &["pod", "add", &name, "1", "web/a"])?;
        c.that(
            "pod add in the kept run",
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        );
        let _ = up.kill();
        let _ = up.wait();
        let st = run::load(&name)?
            .ok_or_else(|| E2eError::RunNotFound { run: name.clone(), dir: run::run_dir(&name) })?;
        let left = topology::leftovers(&st);
        c.that(
            "after SIGKILL of up, its namespaces and pod are still there",
            left.len() > st.namespaces().len(),
            format!("{} leftovers", left.len()),
        );
        Ok(st)
    })();
    let _ = up.kill();
    let _ = up.wait();
    let out = run_cli(&e2e, &["down", &name])?;
    c.that(
        "down of the killed run succeeds",
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    );
    let st = killed?;
    let left = topology::leftovers(&st);
    c.that("after down, nothing of the killed run remains", left.is_empty(), format!("{left:?}"));
    Ok(c.0)
}

/// The first line `child` prints on stdout, within `timeout`.
fn first_line(child: &mut std::process::Child, timeout: Duration) -> Option<String> {
    let stdout = child.stdout.take()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        lines.for_each(drop);
    });
    match rx.recv_timeout(timeout) {
        Ok(Some(Ok(line))) => Some(line.trim().to_string()),
        _ => None,
    }
}

/// Runs the CLI `e2e` with `args` in this process's netns, bounded.
fn run_cli(e2e: &Path, args: &[&str]) -> Result<std::process::Output> {
    let here = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
    let e2e = e2e.display().to_string();
    let mut argv = vec![e2e.as_str()];
    argv.extend(args);
    exec_in(&here, &argv, Duration::from_secs(60))
}

/// Runs scenario `s` in `family`, printing its title and each check; Ok(true) if all passed.
pub fn run_and_print(s: &Scenario, family: Family) -> Result<bool> {
    s.runs_in(family)?;
    match family {
        Family::Ipv4 => println!("scenario {}: {}", s.name, s.title),
        f => println!("scenario {} ({f}): {}", s.name, s.title),
    }
    let checks = s.run_in(family)?;
    for ch in &checks {
        println!("  {ch}");
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    println!("  {} checks, {failed} failed", checks.len());
    Ok(failed == 0 && !checks.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_fields() {
        let snmp =
            "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm OutRsts InCsumErrors\nTcp: 1 7 0\n";
        assert_eq!(snmp_field(snmp, "Tcp:", "OutRsts"), Some(7));
        assert_eq!(snmp_field(snmp, "Tcp:", "Nope"), None);
        assert_eq!(snmp_field(snmp, "Udp:", "OutRsts"), None);
        assert_eq!(snmp_field("Tcp: OutRsts\n", "Tcp:", "OutRsts"), None);
    }

    #[test]
    fn checks_are_named_by_family_outside_ipv4_runs() {
        assert_eq!(named("a -> b", Family::Ipv4, Family::Ipv4), "a -> b");
        assert_eq!(named("a -> b", Family::Dual, Family::Ipv6), "[ipv6] a -> b");
        assert_eq!(named("a -> b", Family::Ipv6, Family::Ipv6), "[ipv6] a -> b");
    }
}
