//! The data-path benchmark (`weft-e2e bench datapath`, `make bench`): what
//! policy costs the packets. On one 2-node testbed, a server pod on node 1
//! and a client on node 1 and on node 2; for each backend (weft iptables,
//! weft nftables, the weave-npc 1.9.6 reproduction), with no policy and with
//! N policies in force that all select the server, of which one admits the
//! clients: single-stream iperf3 throughput, and short TCP connections per
//! second (connect, read the server's reply, close), from each client.
//!
//! The ADD benchmark (`weft-e2e bench add`): what isolation from the first
//! packet adds to CNI ADD. Pods are added to node 1 with N policies in
//! force that select them; ADD returns only once the agent has their policy
//! in the kernel. Without an agent on the node, the plugin finds no socket
//! and returns at once: that is the baseline.
//!
//! The overlay benchmark (`weft-e2e bench modes`, `modes.rs`): host-gw next to vxlan.
//!
//! The flood benchmark (`weft-e2e bench flood`, `flood.rs`): CNI ADD and the
//! agent's RSS while a denied pod floods its node with SYNs.
//!
//! Figures only: nothing here passes or fails on a number.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use weft_agent::model::manifest::labels;
use weft_netkit::netns::{run_in, NetNs};

use crate::error::{E2eError, Result};
use crate::manifests::serve_ports;
use crate::{exec_in, Pod, Testbed};

mod flood;
mod modes;

pub use flood::{flood, flood_table};
pub use modes::{modes, modes_table, ModeRow};

const CONVERGE: Duration = Duration::from_secs(60);
const IPERF_PORT: &str = "5201";

/// One measurement.
#[derive(Debug, Clone)]
pub struct Row {
    pub backend: &'static str,
    pub policies: usize,
    pub path: &'static str,
    /// iperf3 single stream, received, Gbit/s; None if it could not connect
    /// (weave-npc 1.9.6 drops the client on the other node: see weave.rs).
    pub gbits: Option<f64>,
    /// Short TCP connections per second.
    pub conns: f64,
}

/// `n` policies selecting every pod of namespace `bench`; policy i admits
/// TCP 80 and 5201 from pods labelled `client: c<i>`. The clients are `c<n-1>`.
fn policies(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "kind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: bench}}\nspec:\n  podSelector: {{}}\n  \
                 ingress: [{{from: [{{podSelector: {{matchLabels: {{client: c{i}}}}}}}], ports: [{{port: 80}}, {{port: 5201}}]}}]\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The median of `xs` (NaN-free: None counts as failed and sorts first).
fn median<T: PartialOrd + Copy>(mut xs: Vec<T>) -> Option<T> {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    xs.get(xs.len() / 2).copied()
}

/// Runs the benchmark with `n` policies, `secs` seconds per measurement and
/// the median of `reps` repetitions of each.
pub fn datapath(n: usize, secs: u64, reps: usize) -> Result<Vec<Row>> {
    let n = n.max(1);
    let mut tb = Testbed::up(2)?;
    let client = format!("c{}", n - 1);
    let srv = tb.add_pod_with(1, "bench/srv", labels([("app", "srv")]), serve_ports(&[80]))?;
    let near = tb.add_pod_with(1, "bench/near", labels([("client", client.as_str())]), serve_ports(&[80]))?;
    let far = tb.add_pod_with(2, "bench/far", labels([("client", client.as_str())]), serve_ports(&[80]))?;
    let iperf = ["iperf3", "-s", "-p", IPERF_PORT, "--forceflush"];
    tb.spawn_in("iperf3 server", &srv.netns, &iperf, Duration::from_secs(10))?;
    let mut rows = Vec::new();
    for backend in ["iptables", "nftables", "weave-1.9.6"] {
        let weave = backend == "weave-1.9.6";
        // The agents' defaults, not the testbed's fast resync: on 2 cores a
        // sync every 500 ms of 1000 policies would be measured too.
        let args =
            ["--backend", if weave { "off" } else { backend }, "--resync-ms", "10000", "--poll-ms", "200"];
        tb.start_agents_with(&args)?;
        for load in [0, n] {
            if load > 0 {
                tb.apply(&policies(load))?;
            }
            tb.wait_converged(CONVERGE)?;
            if weave {
                tb.apply_weave()?;
            }
            for (path, c) in [("same node", &near), ("across nodes", &far)] {
                let (mut g, mut k) = (Vec::new(), Vec::new());
                for _ in 0..reps.max(1) {
                    g.push(iperf3(c, srv.ip, secs)?);
                    k.push(conn_rate(c, srv.ip, Duration::from_secs(secs))?);
                }
                let (gbits, conns) = (median(g).flatten(), median(k).unwrap_or(0.0));
                rows.push(Row { backend, policies: load, path, gbits, conns });
            }
            if load > 0 {
                for i in 0..load {
                    tb.delete_object("NetworkPolicy", Some("bench"), &format!("p{i}"))?;
                }
            }
        }
        if weave {
            tb.remove_weave()?;
        }
        for node in 1..=tb.nodes() {
            tb.stop_agent(node)?;
        }
    }
    tb.down()?;
    Ok(rows)
}

/// iperf3 from pod `c` to `ip` for `secs`: the received rate in Gbit/s, or
/// None if it did not connect.
fn iperf3(c: &Pod, ip: Ipv4Addr, secs: u64) -> Result<Option<f64>> {
    let (ip, t) = (ip.to_string(), secs.to_string());
    let argv = ["iperf3", "-c", &ip, "-p", IPERF_PORT, "-t", &t, "-J", "--connect-timeout", "2000"];
    let out = exec_in(&c.netns, &argv, Duration::from_secs(secs + 20))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    Ok(v["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e9))
}

/// Short connections (connect, read the reply to the end, close) from pod
/// `c` to `ip`:80 for `dur`: completed connections per second.
fn conn_rate(c: &Pod, ip: Ipv4Addr, dur: Duration) -> Result<f64> {
    let ns = NetNs::open(&c.netns).map_err(E2eError::kernel(format!("open {}", c.netns.display())))?;
    let to = SocketAddr::from((ip, 80));
    let done = run_in(&ns, move || {
        let t0 = Instant::now();
        let mut n = 0u64;
        let mut buf = [0u8; 64];
        while t0.elapsed() < dur {
            let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            while matches!(s.read(&mut buf), Ok(k) if k > 0) {}
            n += 1;
        }
        n as f64 / t0.elapsed().as_secs_f64()
    })
    .map_err(E2eError::kernel("enter the client's netns"))?;
    Ok(done)
}

/// ADD times with one agent setup.
#[derive(Debug, Clone)]
pub struct AddRow {
    /// "no agent", or the agent's backend.
    pub agent: &'static str,
    pub median: Duration,
    pub p90: Duration,
}

/// Adds `pods` pods to node 1 (and deletes them) with `policies` policies
/// selecting them in force, with no agent and with an agent per backend.
pub fn add_cost(pods: usize, policies: usize) -> Result<Vec<AddRow>> {
    let mut tb = Testbed::up(2)?;
    tb.apply(&self::policies(policies.max(1)))?;
    let mut rows = Vec::new();
    for agent in ["no agent", "iptables", "nftables"] {
        if agent != "no agent" {
            tb.start_agents_with(&["--backend", agent, "--resync-ms", "10000", "--poll-ms", "200"])?;
            tb.wait_converged(CONVERGE)?;
        }
        let mut times = Vec::new();
        for i in 0..pods.max(1) {
            let name = format!("bench/add-{i}");
            times.push(tb.add_pod_with(1, &name, labels([("app", "add")]), serve_ports(&[80]))?.add);
            tb.delete_pod(&name)?;
        }
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        rows.push(AddRow { agent, median: at(0.5), p90: at(0.9) });
        if agent != "no agent" {
            for node in 1..=tb.nodes() {
                tb.stop_agent(node)?;
            }
        }
    }
    tb.down()?;
    Ok(rows)
}

/// The ADD rows as a table, with the difference to no agent.
pub fn add_table(rows: &[AddRow]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let base = rows.iter().find(|r| r.agent == "no agent").map(|r| ms(r.median));
    let mut s =
        String::from("| agent | ADD median ms | ADD p90 ms | added by the agent ms |\n|---|---|---|---|\n");
    for r in rows {
        let extra = base.map(|b| format!("{:+.1}", ms(r.median) - b)).unwrap_or_default();
        s += &format!("| {} | {:.1} | {:.1} | {extra} |\n", r.agent, ms(r.median), ms(r.p90));
    }
    s
}

/// The rows as a table, with each figure's ratio to the same backend and path without policy.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| backend | policies | path | iperf3 Gbit/s | vs no policy | connections/s | vs no policy |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let base = rows.iter().find(|b| b.backend == r.backend && b.path == r.path && b.policies == 0);
        let ratio = |x: f64, b: f64| if b > 0.0 { format!("{:.2}x", x / b) } else { "-".into() };
        let g = |r: &Row| r.gbits.unwrap_or(0.0);
        let (rg, rc) = base.map(|b| (ratio(g(r), g(b)), ratio(r.conns, b.conns))).unwrap_or_default();
        let gbits = r.gbits.map(|x| format!("{x:.2}")).unwrap_or_else(|| "blocked".into());
        s += &format!(
            "| {} | {} | {} | {gbits} | {rg} | {:.0} | {rc} |\n",
            r.backend, r.policies, r.path, r.conns
        );
    }
    s
}
