//! The data-path benchmark (`weft-e2e bench datapath`, `make bench`): what
//! policy costs the packets. On one 2-node testbed, a server pod on node 1
//! and a client on node 1 and on node 2; for each backend (weft iptables,
//! weft nftables, the weave-npc 1.9.6 reproduction), with no policy and with
//! N policies in force that all select the server, of which one admits the
//! clients: single-stream iperf3 throughput, and short TCP connections per
//! second (connect, read the server's reply, close), from each client. In
//! a dual-stack testbed (the default) each path is measured over IPv4 and
//! over IPv6, except through weave-npc 1.9.6, which filtered IPv4 only.
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

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use weft_agent::model::manifest::labels;
use weft_netkit::netns::{run_in, NetNs};

use crate::error::{E2eError, Result};
use crate::family::Family;
use crate::manifests::serve_ports;
use crate::probe::{probe_in, Outcome, Proto};
use crate::{exec_in, Pod, Testbed};

mod flood;
mod modes;

pub use flood::{flood, flood_table};
pub use modes::{modes, modes_table, ModeRow};

const CONVERGE: Duration = Duration::from_secs(60);
const IPERF_PORT: &str = "5201";
/// How long a denied probe waits (weft drops: a timeout).
const KEPT_OUT_WAIT: Duration = Duration::from_millis(300);

/// The figures of one path in one family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// iperf3 single stream, received, Gbit/s; None if it could not connect
    /// (weave-npc 1.9.6 drops the client on the other node: see weave.rs).
    pub gbits: Option<f64>,
    /// Short TCP connections per second that read the server's reply.
    pub conns: f64,
}

/// One path's measurement, over IPv4 and over IPv6.
#[derive(Debug, Clone)]
pub struct Row {
    pub backend: &'static str,
    pub policies: usize,
    pub path: &'static str,
    /// None where not measured: a family the run lacks, or IPv6 through
    /// weave-npc 1.9.6 (IPv4 only: it filtered no IPv6 traffic).
    pub v4: Option<Figures>,
    pub v6: Option<Figures>,
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

/// Runs the benchmark with `n` policies, `dur` per measurement (iperf3's in
/// whole seconds, at least 1) and the median of `reps` repetitions of each,
/// in a testbed of `family`: in dual each path is measured over IPv4 and
/// over IPv6 (the pods' IPv6 addresses; the policies select by labels, so
/// they admit and isolate in both). With the policies in force, a pod they
/// do not admit must be kept out in each family measured, or this errs.
pub fn datapath(n: usize, dur: Duration, reps: usize, family: Family) -> Result<Vec<Row>> {
    let n = n.max(1);
    let mut tb = Testbed::up_in(2, family)?;
    let client = format!("c{}", n - 1);
    let srv = tb.add_pod_with(1, "bench/srv", labels([("app", "srv")]), serve_ports(&[80]))?;
    let near = tb.add_pod_with(1, "bench/near", labels([("client", client.as_str())]), serve_ports(&[80]))?;
    let far = tb.add_pod_with(2, "bench/far", labels([("client", client.as_str())]), serve_ports(&[80]))?;
    let outsider = tb.add_pod_with(2, "bench/outsider", labels([("app", "outsider")]), serve_ports(&[80]))?;
    let iperf = ["iperf3", "-s", "-p", IPERF_PORT, "--forceflush"];
    tb.spawn_in("iperf3 server", &srv.netns, &iperf, Duration::from_secs(10))?;
    let mut rows = Vec::new();
    for backend in ["iptables", "nftables", "weave-1.9.6"] {
        let weave = backend == "weave-1.9.6";
        if weave && !family.v4() {
            continue; // 1.9.6 filtered IPv4 only: nothing to measure.
        }
        // The agents' defaults, not the testbed's fast resync: on 2 cores a
        // sync every 500 ms of 1000 policies would be measured too.
        let args =
            ["--backend", if weave { "off" } else { backend }, "--resync-ms", "10000", "--poll-ms", "200"];
        tb.start_agents_with(&args)?;
        // weave-npc 1.9.6 filtered IPv4 only: its IPv6 path would measure no policy.
        let fams: Vec<Family> =
            family.singles().into_iter().filter(|f| !weave || *f == Family::Ipv4).collect();
        let ips: Vec<IpAddr> = fams.iter().map(|f| f.address(srv.ip)).collect();
        for load in [0, n] {
            if load > 0 {
                tb.apply(&policies(load))?;
            }
            tb.wait_converged(CONVERGE)?;
            if weave {
                tb.apply_weave()?;
            }
            if load > 0 {
                kept_out(&outsider, &ips)?;
            }
            for (path, c) in [("same node", &near), ("across nodes", &far)] {
                let figs = measure(c, &ips, dur, reps)?;
                let of = |f: Family| fams.iter().zip(&figs).find(|(x, _)| **x == f).map(|(_, g)| *g);
                rows.push(Row { backend, policies: load, path, v4: of(Family::Ipv4), v6: of(Family::Ipv6) });
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

/// Errs unless pod `c`, which no policy admits, is kept from port 80 of
/// each of `ips`: else the policies would not be in force on the paths
/// measured (an IPv6 path left open would measure no policy at all).
fn kept_out(c: &Pod, ips: &[IpAddr]) -> Result<()> {
    for &ip in ips {
        match probe_in(&c.netns, SocketAddr::from((ip, 80)), Proto::Tcp, KEPT_OUT_WAIT)? {
            Outcome::Timeout | Outcome::Refused | Outcome::Unreachable(_) => {}
            o => {
                let what = format!("pod {} to {ip}:80: {o}", c.name);
                return Err(E2eError::io(what)(io::Error::other(
                    "the benchmark's policies are not in force",
                )));
            }
        }
    }
    Ok(())
}

/// The figures from pod `c` to each of `ips` over `dur` (iperf3's rounded
/// up to whole seconds), each the median of `reps` repetitions. A repetition measures every address in turn, so the
/// families share the machine's load alike.
fn measure(c: &Pod, ips: &[IpAddr], dur: Duration, reps: usize) -> Result<Vec<Figures>> {
    let mut runs = vec![(Vec::new(), Vec::new()); ips.len()];
    for _ in 0..reps.max(1) {
        for (&ip, (g, k)) in ips.iter().zip(&mut runs) {
            g.push(iperf3(c, ip, dur.as_secs_f64().ceil().max(1.0) as u64)?);
            k.push(conn_rate(c, ip, dur)?);
        }
    }
    let figs = runs
        .into_iter()
        .map(|(g, k)| Figures { gbits: median(g).flatten(), conns: median(k).unwrap_or(0.0) });
    Ok(figs.collect())
}

/// iperf3 from pod `c` to `ip` for `secs`: the received rate in Gbit/s, or
/// None if it did not connect.
fn iperf3(c: &Pod, ip: IpAddr, secs: u64) -> Result<Option<f64>> {
    let (ip, t) = (ip.to_string(), secs.to_string());
    let argv = ["iperf3", "-c", &ip, "-p", IPERF_PORT, "-t", &t, "-J", "--connect-timeout", "2000"];
    let out = exec_in(&c.netns, &argv, Duration::from_secs(secs + 20))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    Ok(v["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e9))
}

/// Short connections (connect, read the reply to the end, close) from pod
/// `c` to `ip`:80 for `dur`: connections per second that read the reply
/// (one that connects but gets nothing is not counted).
fn conn_rate(c: &Pod, ip: IpAddr, dur: Duration) -> Result<f64> {
    let ns = NetNs::open(&c.netns).map_err(E2eError::kernel(format!("open {}", c.netns.display())))?;
    let to = SocketAddr::from((ip, 80));
    let done = run_in(&ns, move || {
        let t0 = Instant::now();
        let mut n = 0u64;
        let mut buf = [0u8; 64];
        while t0.elapsed() < dur {
            let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut got = 0;
            while let Ok(k @ 1..) = s.read(&mut buf) {
                got += k;
            }
            n += u64::from(got > 0);
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

/// The rows as a table, one line per path: each figure over IPv4 / IPv6,
/// IPv6's ratio to IPv4, and each family's ratio to the same backend, path
/// and family without policy. `-` where a family was not measured.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| backend | policies | path | iperf3 Gbit/s IPv4 / IPv6 | IPv6 vs IPv4 | vs no policy IPv4 / IPv6 \
         | connections/s IPv4 / IPv6 | IPv6 vs IPv4 | vs no policy IPv4 / IPv6 |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let base = rows.iter().find(|b| b.backend == r.backend && b.path == r.path && b.policies == 0);
        // A blocked iperf3 counts as 0 in a ratio.
        let g = cells(
            r,
            base,
            |f| f.gbits.unwrap_or(0.0),
            |f| f.gbits.map(|x| format!("{x:.2}")).unwrap_or_else(|| "blocked".into()),
        );
        let k = cells(r, base, |f| f.conns, |f| format!("{:.0}", f.conns));
        s += &format!("| {} | {} | {} | {g} | {k} |\n", r.backend, r.policies, r.path);
    }
    s
}

/// One figure's cells of row `r`: IPv4 / IPv6 as `show` writes them, IPv6's
/// ratio to IPv4, and each family's ratio to `base` (of the value `x`).
fn cells(
    r: &Row,
    base: Option<&Row>,
    x: impl Fn(&Figures) -> f64,
    show: impl Fn(&Figures) -> String,
) -> String {
    let values = |row: &Row| [row.v4, row.v6].map(|f| f.as_ref().map(&x));
    let (now, was) = (values(r), base.map(values).unwrap_or_default());
    let [s4, s6] = [r.v4, r.v6].map(|f| f.as_ref().map(&show).unwrap_or_else(|| "-".into()));
    let (b4, b6) = (ratio(now[0], was[0]), ratio(now[1], was[1]));
    format!("{s4} / {s6} | {} | {b4} / {b6}", ratio(now[1], now[0]))
}

/// `x / base` as `0.93x`; `-` if either is missing or the base is 0.
fn ratio(x: Option<f64>, base: Option<f64>) -> String {
    match (x, base) {
        (Some(x), Some(b)) if b > 0.0 => format!("{:.2}x", x / b),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        policies: usize,
        path: &'static str,
        v4: Option<(Option<f64>, f64)>,
        v6: Option<(Option<f64>, f64)>,
    ) -> Row {
        let fig = |f: Option<(Option<f64>, f64)>| f.map(|(gbits, conns)| Figures { gbits, conns });
        Row { backend: "nftables", policies, path, v4: fig(v4), v6: fig(v6) }
    }

    #[test]
    fn the_table_puts_ipv6_next_to_ipv4_and_each_next_to_no_policy() {
        let rows = [
            row(0, "same node", Some((Some(20.0), 1000.0)), Some((Some(16.0), 900.0))),
            row(1000, "same node", Some((Some(10.0), 800.0)), Some((Some(16.0), 450.0))),
            row(1000, "across nodes", Some((None, 0.0)), None),
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert_eq!(lines[0].matches('|').count(), lines[1].matches('|').count(), "{t}");
        assert_eq!(
            lines[2],
            "| nftables | 0 | same node | 20.00 / 16.00 | 0.80x | 1.00x / 1.00x | 1000 / 900 | 0.90x | 1.00x / 1.00x |"
        );
        assert_eq!(
            lines[3],
            "| nftables | 1000 | same node | 10.00 / 16.00 | 1.60x | 0.50x / 1.00x | 800 / 450 | 0.56x | 0.80x / 0.50x |"
        );
        // Blocked, IPv6 not measured, and no baseline: dashes, no division by zero.
        assert_eq!(
            lines[4],
            "| nftables | 1000 | across nodes | blocked / - | - | - / - | 0 / - | - | - / - |"
        );
    }
}
