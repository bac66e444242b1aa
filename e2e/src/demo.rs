//! `weft-e2e demo` (issue 4, "make demo"): a 2-node testbed, the agents, three
//! pods attached by the real `weft` binary, a ClusterIP and a NodePort service,
//! then one probe per path and a table a person reads in ten seconds. Teardown
//! is the Testbed's (on return, on error, and after Ctrl-C/SIGTERM, which are
//! checked between steps). Exit 0 if every row is ok, 1 otherwise.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use weft_agent::model::{PortRef, Protocol};
use weft_e2e::manifests::ServiceManifest;
use weft_e2e::probe::{probe_in, Outcome, Proto};
use weft_e2e::{E2eError, Testbed};

/// Bound on the agents' first convergence (they poll every 100 ms).
const CONVERGE: Duration = Duration::from_secs(10);
/// Bound on one probe (the first packet to a new veth waits for ARP).
const PROBE: Duration = Duration::from_secs(2);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODEPORT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const NODE_PORT: u16 = 30080;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// A flag-setting handler for SIGINT/SIGTERM (not a blocked mask: the agents
/// and workloads this process starts must keep their default signal handling,
/// and handlers, unlike masks, are reset by exec).
fn catch_signals() {
    let act = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(sig, &act) };
    }
}

fn step(what: &str) -> Result<(), E2eError> {
    if STOP.load(Ordering::SeqCst) {
        return Err(E2eError::Cancelled);
    }
    if !what.is_empty() {
        eprintln!("demo: {what}");
    }
    Ok(())
}

struct Row {
    path: &'static str,
    from: String,
    to: String,
    proto: Proto,
    result: String,
    ok: bool,
}

/// Runs the demo; Ok(true) if every row is ok.
pub fn run() -> Result<bool, E2eError> {
    catch_signals();
    let t0 = Instant::now();
    step("bringing up a 2-node testbed (namespaces: lan bridge, n1, n2, ext)")?;
    let mut tb = Testbed::up(2)?;
    let run = tb.run();

    step("attaching pods with CNI ADD (the real `weft` binary, in each node's netns)")?;
    let a = tb.add_pod(1, "demo/a")?;
    step("")?;
    let b = tb.add_pod(1, "demo/b")?;
    step("")?;
    let c = tb.add_pod(2, "demo/c")?;

    step("starting weft-agent on each node and waiting for its host-gw routes")?;
    tb.start_agents()?;
    let statuses = tb.wait_converged(CONVERGE)?;

    step("adding services: ClusterIP 10.96.0.10:80 -> demo/b, NodePort 30080 -> demo/c")?;
    let b_svc = ServiceManifest::new("demo", "b", CLUSTER_IP, &[("pod", "b")])
        .port(80, Protocol::Tcp, PortRef::Number(80))
        .port(80, Protocol::Udp, PortRef::Number(80));
    let c_svc = ServiceManifest::new("demo", "c", NODEPORT_VIP, &[("pod", "c")])
        .port(80, Protocol::Tcp, PortRef::Name("serve-80-tcp".into()))
        .node_port(NODE_PORT);
    tb.apply(&format!("{}---\n{}", b_svc.to_yaml(), c_svc.to_yaml()))?;
    let setup = t0.elapsed();

    println!();
    println!("run {run}: pods attached by weft (CNI ADD result: address, host veth)");
    for p in [&a, &b, &c] {
        let veth = p.host_veth.as_deref().unwrap_or("-");
        println!("  {:<8} node {}  {:<12} {veth}", p.name, p.node, p.ip.to_string());
    }
    for (i, s) in statuses.iter().enumerate() {
        println!(
            "  node {}: weft-agent routes {}, ip_forward {}",
            i + 1,
            s.routes,
            if s.ip_forward { "on" } else { "off" }
        );
    }
    println!();

    let (n1, ext) = (tb.node_addr(1), tb.ext_netns());
    let at = |ip: Ipv4Addr, port: u16| SocketAddr::from((ip, port));
    let pod_to = |name: &str, ip: Ipv4Addr, port: u16| format!("{name} {}", at(ip, port));
    #[rustfmt::skip]
    let plan: Vec<(&'static str, &str, &std::path::Path, String, SocketAddr, Proto, &str)> = vec![
        ("pod -> pod, same node",               "demo/a", &a.netns, pod_to("demo/b", b.ip, 80), at(b.ip, 80), Proto::Tcp, "demo/b"),
        ("pod -> pod, across nodes",            "demo/a", &a.netns, pod_to("demo/c", c.ip, 80), at(c.ip, 80), Proto::Tcp, "demo/c"),
        ("pod -> pod, across nodes",            "demo/a", &a.netns, pod_to("demo/c", c.ip, 81), at(c.ip, 81), Proto::Udp, "demo/c"),
        ("pod -> ClusterIP, endpoint same node", "demo/a", &a.netns, at(CLUSTER_IP, 80).to_string(), at(CLUSTER_IP, 80), Proto::Tcp, "demo/b"),
        ("pod -> ClusterIP, endpoint same node", "demo/a", &a.netns, at(CLUSTER_IP, 80).to_string(), at(CLUSTER_IP, 80), Proto::Udp, "demo/b"),
        ("pod -> its own ClusterIP (hairpin)",   "demo/b", &b.netns, at(CLUSTER_IP, 80).to_string(), at(CLUSTER_IP, 80), Proto::Tcp, "demo/b"),
        ("external -> NodePort on node 1,\n  endpoint on node 2", "ext", &ext, at(n1, NODE_PORT).to_string(), at(n1, NODE_PORT), Proto::Tcp, "demo/c"),
    ];
    let mut rows = Vec::new();
    for (path, from, netns, to, addr, proto, want) in plan {
        step("")?;
        let got = probe_in(netns, addr, proto, PROBE)?;
        let (ok, result) = match &got {
            Outcome::Connected(reply) if reply == want => (true, format!("ok ({reply})")),
            Outcome::Connected(reply) => (false, format!("FAIL: answered by {reply:?}, want {want}")),
            other => (false, format!("FAIL: {other}")),
        };
        rows.push(Row { path, from: from.into(), to, proto, result, ok });
    }
    print_table(&rows);
    let all_ok = rows.iter().all(|r| r.ok);
    let failed = rows.iter().filter(|r| !r.ok).count();
    let n_paths = rows.len();
    let probes = t0.elapsed() - setup;

    step("the weave-npc 1.9.6 seed: the same NodePort flow under weave's rules and under weft's")?;
    let rows = weft_e2e::compare::nodeport_side_by_side()?;
    println!();
    print!("{}", weft_e2e::compare::table(&rows));
    let side_ok = rows.iter().all(|r| r.weft_right());

    step("a NetworkPolicy: demo/c admits TCP 80 only; demo/a tries port 81")?;
    let why_ok = denied_and_explained(&tb, &a, &c)?;
    let all_ok = all_ok && side_ok && why_ok;

    step("tearing down (workloads, agents, CNI DEL of every pod, namespaces)")?;
    tb.down()?;
    println!();
    if all_ok {
        println!(
            "all {} paths ok, weft right in every weave-vs-weft case, the denial logged and explained \
             (setup {:.1}s, probes {:.1}s, total {:.1}s); runs torn down",
            n_paths,
            setup.as_secs_f64(),
            probes.as_secs_f64(),
            t0.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "{failed} paths FAILED{}{}; run {run} torn down",
            if side_ok { "" } else { ", weft wrong side by side" },
            if why_ok { "" } else { ", the denial not logged or explained" }
        );
    }
    Ok(all_ok)
}

/// Denies demo/a -> demo/c:81 with a policy, then prints the agent's log line
/// for it and `weft-agent explain` run on demo/c's node. True if both name it.
fn denied_and_explained(tb: &Testbed, a: &weft_e2e::Pod, c: &weft_e2e::Pod) -> Result<bool, E2eError> {
    tb.apply(
        "kind: NetworkPolicy\nmetadata: {name: web-only, namespace: demo}\nspec:\n  podSelector: {matchLabels: {pod: c}}\n  ingress: [{ports: [{port: 80}]}]\n",
    )?;
    tb.wait_converged(CONVERGE)?;
    let got = probe_in(&a.netns, SocketAddr::from((c.ip, 81)), Proto::Tcp, PROBE)?;
    let log_file = weft_e2e::run::run_dir(&tb.run()).join(format!("agent-n{}.log", c.node));
    let line = || {
        std::fs::read_to_string(&log_file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.split_once("weft-agent: denied ").map(|(_, j)| j.to_string()))
    };
    weft_e2e::wait_until(Duration::from_secs(5), || line().is_some());
    println!();
    println!("demo/a -> demo/c:81/tcp: {got}; weft-agent's denied-connection log on node {}:", c.node);
    println!("  {}", line().unwrap_or_else(|| "(no line)".into()));
    let agent =
        weft_e2e::pods::find_binary("weft-agent", weft_e2e::agents::AGENT_BIN_ENV)?.display().to_string();
    let source = format!("dir:{}", tb.cluster_dir().display());
    let node = format!("node-{}", c.node);
    let argv = [
        agent.as_str(),
        "explain",
        "--check",
        "--node",
        &node,
        "--source",
        &source,
        "--cluster-cidr",
        weft_e2e::pods::CLUSTER_CIDR,
        "demo/a",
        "demo/c:81",
    ];
    let out = weft_e2e::exec_in(&tb.node_netns(c.node), &argv, Duration::from_secs(10))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    println!("$ weft-agent explain --check --node {node} demo/a demo/c:81   (in node {})", c.node);
    for l in text.lines() {
        println!("  {l}");
    }
    Ok(matches!(got, Outcome::Timeout | Outcome::Refused) && line().is_some() && text.contains("DENIED"))
}

fn print_table(rows: &[Row]) {
    let w_path = rows.iter().flat_map(|r| r.path.lines()).map(str::len).max().unwrap_or(4).max(4);
    let w_from = rows.iter().map(|r| r.from.len()).max().unwrap_or(4).max(4);
    let w_to = rows.iter().map(|r| r.to.len()).max().unwrap_or(2).max(2);
    println!("{:<w_path$}  {:<w_from$}  {:<w_to$}  {:<5}  result", "path", "from", "to", "proto");
    for r in rows {
        let mut lines = r.path.lines();
        let first = lines.next().unwrap_or("");
        let proto = match r.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        println!("{first:<w_path$}  {:<w_from$}  {:<w_to$}  {proto:<5}  {}", r.from, r.to, r.result);
        for more in lines {
            println!("{more}");
        }
    }
}
