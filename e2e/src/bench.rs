//! The data-path benchmark (`weft-e2e bench datapath`, `make bench`): what
//! policy costs the packets. On one 2-node testbed, a server pod on node 1
//! and a client on node 1 and on node 2; for each backend (weft iptables,
//! weft nftables, the weave-npc 1.9.6 reproduction), with no policy and with
//! N policies in force that all select the server, of which one admits the
//! clients: single-stream iperf3 throughput, and short TCP connections per
//! second (connect, read the server's reply, close), from each client; and,
//! on weft's backends with `--cnps M`, with M ClusterNetworkPolicies in
//! force (no NetworkPolicy) that select the pods and let the clients in
//! (`cluster_policies`). In
//! a dual-stack testbed (the default) each path is measured over IPv4 and
//! over IPv6, except through weave-npc 1.9.6, which filtered IPv4 only.
//!
//! The ADD benchmark (`weft-e2e bench add`): what isolation from the first
//! packet adds to CNI ADD. Pods are added to node 1 with N policies in
//! force that select them; ADD returns only once the agent has their policy
//! in the kernel. Each pod is the policies' first on the node (it is deleted
//! before the next comes), then, with a pod of the same app staying on the
//! node, the next one. Without an agent on the node, the plugin finds no
//! socket and returns at once: that is the baseline.
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
    /// ClusterNetworkPolicies in force.
    pub cnps: usize,
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

/// `n` ClusterNetworkPolicies over namespace `bench` (every pod of it a
/// subject), Admin and Baseline alternating, priorities spread over 0-1000,
/// each with 1-25 rules per direction, that let pods labelled
/// `client: <client>` reach the `app: srv` pods on TCP 80 and 5201 and deny
/// the `app: outsider` pods. Admin: Deny the outsider (every fourth
/// policy), Deny other namespaces on other ports, Pass port ranges, Deny
/// egress to documentation networks and SMTP, and last the measured flow,
/// Accept or Pass (to what follows). Baseline: Deny the outsider on 80,
/// other namespaces and other ports; egress Accept to the cluster's pods,
/// then Deny every other address. The measured flow thus meets every tier.
fn cluster_policies(n: usize, client: &str) -> String {
    let bench = "{matchLabels: {kubernetes.io/metadata.name: bench}}";
    let others = "{matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [bench]}]}";
    let outsider =
        format!("{{pods: {{namespaceSelector: {bench}, podSelector: {{matchLabels: {{app: outsider}}}}}}}}");
    let clients = format!(
        "{{pods: {{namespaceSelector: {bench}, podSelector: {{matchLabels: {{client: {client}}}}}}}}}"
    );
    let srv = format!("{{pods: {{namespaceSelector: {bench}, podSelector: {{matchLabels: {{app: srv}}}}}}}}");
    let tcp = |a: usize, b: usize| {
        if a == b {
            format!("{{tcp: {{destinationPort: {{number: {a}}}}}}}")
        } else {
            format!("{{tcp: {{destinationPort: {{range: {{start: {a}, end: {b}}}}}}}}}")
        }
    };
    let measured = format!("[{}, {}]", tcp(80, 80), tcp(5201, 5201));
    let rule = |action: &str, dir: &str, peers: &str, ports: Option<String>| {
        let ports = ports.map(|p| format!(", protocols: {p}")).unwrap_or_default();
        format!("    - {{action: {action}, {dir}: [{peers}]{ports}}}\n")
    };
    (0..n)
        .map(|i| {
            let admin = i % 2 == 0;
            let port = |j: usize| 1000 + 100 * (i % 40) + j;
            let mut ingress = Vec::new();
            // Half of the policies, one tier each, deny the outsider first.
            if i % 4 < 2 {
                ingress.push(rule("Deny", "from", &outsider, None));
            }
            for j in 0..i * 7 % 24 {
                let p = port(j);
                ingress.push(match (admin, j % 3) {
                    (_, 0) => rule("Deny", "from", &format!("{{namespaces: {others}}}"), Some(format!("[{}]", tcp(p, p)))),
                    (true, 1) => rule("Pass", "from", "{namespaces: {}}", Some(format!("[{}]", tcp(p, p + 50)))),
                    (false, 1) => rule("Deny", "from", &outsider, Some(format!("[{}]", tcp(80, 80)))),
                    _ => rule("Deny", "from", "{namespaces: {}}", Some(format!("[{}]", tcp(p + 5000, p + 5000)))),
                });
            }
            // Last, the measured flow through Admin; Baseline keeps other namespaces out.
            ingress.push(match (admin, i % 4) {
                (true, 0) => rule("Accept", "from", &clients, Some(measured.clone())),
                (true, _) => rule("Pass", "from", &clients, Some(measured.clone())),
                (false, _) => rule("Deny", "from", &format!("{{namespaces: {others}}}"), None),
            });
            let mut egress = Vec::new();
            for j in 0..i * 11 % 23 {
                egress.push(match (admin, j % 3) {
                    (true, 0) => rule("Deny", "to", "{networks: [192.0.2.0/24, '2001:db8::/32']}", None),
                    (true, 1) => rule("Deny", "to", "{namespaces: {}}", Some(format!("[{}]", tcp(25, 25)))),
                    (true, _) => rule("Pass", "to", &format!("{{namespaces: {others}}}"), None),
                    (false, _) => rule("Deny", "to", &format!("{{namespaces: {others}}}"), Some(format!("[{}]", tcp(3000 + j, 3000 + j)))),
                });
            }
            match (admin, i % 4) {
                (true, 0) => egress.push(rule("Accept", "to", &srv, Some(measured.clone()))),
                (true, _) => egress.push(rule("Pass", "to", &srv, Some(measured.clone()))),
                // The cluster's pods, then nothing else: the usual egress baseline.
                (false, _) => {
                    egress.push(rule("Accept", "to", "{namespaces: {}}", None));
                    egress.push(rule("Deny", "to", "{networks: [0.0.0.0/0, '::/0']}", None));
                }
            }
            let subject = if i % 3 == 0 {
                format!("{{namespaces: {bench}}}")
            } else {
                format!("{{pods: {{namespaceSelector: {bench}, podSelector: {{}}}}}}")
            };
            format!(
                "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: cnp{i}}}\n\
                 spec:\n  tier: {}\n  priority: {}\n  subject: {subject}\n  ingress:\n{}  egress:\n{}",
                if admin { "Admin" } else { "Baseline" },
                i * 1000 / n.max(1),
                ingress.concat(),
                egress.concat(),
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

/// Runs the benchmark with `n` policies, then (weft's backends, if `cnps`
/// is not 0) `cnps` ClusterNetworkPolicies alone, `dur` per measurement
/// (iperf3's in whole seconds, at least 1) and the median of `reps`
/// repetitions of each, in a testbed of `family`: in dual each path is
/// measured over IPv4 and over IPv6 (the pods' IPv6 addresses; the policies
/// select by labels, so they admit and isolate in both). With either kind
/// in force, a pod they do not admit must be kept out in each family
/// measured, or this errs.
pub fn datapath(n: usize, cnps: usize, dur: Duration, reps: usize, family: Family) -> Result<Vec<Row>> {
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
        // (NetworkPolicies, ClusterNetworkPolicies) in force; weave-npc knows no CNP.
        let mut loads = vec![(0, 0), (n, 0)];
        if cnps > 0 && !weave {
            loads.push((0, cnps));
        }
        for (load, cnp_load) in loads {
            if load > 0 {
                tb.apply(&policies(load))?;
            }
            if cnp_load > 0 {
                tb.apply(&cluster_policies(cnp_load, &client))?;
            }
            tb.wait_converged(CONVERGE)?;
            if weave {
                tb.apply_weave()?;
            }
            if load + cnp_load > 0 {
                kept_out(&outsider, &ips)?;
            }
            for (path, c) in [("same node", &near), ("across nodes", &far)] {
                let figs = measure(c, &ips, dur, reps)?;
                let of = |f: Family| fams.iter().zip(&figs).find(|(x, _)| **x == f).map(|(_, g)| *g);
                let (v4, v6) = (of(Family::Ipv4), of(Family::Ipv6));
                rows.push(Row { backend, policies: load, cnps: cnp_load, path, v4, v6 });
            }
            for i in 0..load {
                tb.delete_object("NetworkPolicy", Some("bench"), &format!("p{i}"))?;
            }
            for i in 0..cnp_load {
                tb.delete_object("ClusterNetworkPolicy", None, &format!("cnp{i}"))?;
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
    /// The pod is the first on the node that the policies select.
    pub first: AddTimes,
    /// A pod the policies select stays on the node (they gain a target).
    pub next: AddTimes,
}

#[derive(Debug, Clone, Copy)]
pub struct AddTimes {
    pub median: Duration,
    pub p90: Duration,
}

/// Adds `pods` pods to node 1 (and deletes them) with `policies` policies
/// selecting them in force, with no agent and with an agent per backend:
/// first alone, then next to a pod of the same app.
pub fn add_cost(pods: usize, policies: usize) -> Result<Vec<AddRow>> {
    let mut tb = Testbed::up(2)?;
    tb.apply(&self::policies(policies.max(1)))?;
    let mut rows = Vec::new();
    for agent in ["no agent", "iptables", "nftables"] {
        if agent != "no agent" {
            tb.start_agents_with(&["--backend", agent, "--resync-ms", "10000", "--poll-ms", "200"])?;
            tb.wait_converged(CONVERGE)?;
        }
        let add = |tb: &mut Testbed| -> Result<AddTimes> {
            let mut times = Vec::new();
            for i in 0..pods.max(1) {
                let name = format!("bench/add-{i}");
                times.push(tb.add_pod_with(1, &name, labels([("app", "add")]), serve_ports(&[80]))?.add);
                tb.delete_pod(&name)?;
            }
            times.sort();
            let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
            Ok(AddTimes { median: at(0.5), p90: at(0.9) })
        };
        let first = add(&mut tb)?;
        tb.add_pod_with(1, "bench/stays", labels([("app", "add")]), serve_ports(&[80]))?;
        let next = add(&mut tb)?;
        tb.delete_pod("bench/stays")?;
        rows.push(AddRow { agent, first, next });
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
    let base = rows.iter().find(|r| r.agent == "no agent");
    let mut s = String::from(
        "| agent | first pod the policies select on the node: ADD median / p90 ms | added by the agent ms \
         | next pod: ADD median / p90 ms | added by the agent ms |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        let cells = |t: AddTimes, b: Option<AddTimes>| {
            let extra = b.map(|b| format!("{:+.1}", ms(t.median) - ms(b.median))).unwrap_or_default();
            format!("{:.1} / {:.1} | {extra}", ms(t.median), ms(t.p90))
        };
        s += &format!(
            "| {} | {} | {} |\n",
            r.agent,
            cells(r.first, base.map(|b| b.first)),
            cells(r.next, base.map(|b| b.next))
        );
    }
    s
}

/// The rows as a table, one line per path: each figure over IPv4 / IPv6,
/// IPv6's ratio to IPv4, and each family's ratio to the same backend, path
/// and family without policy. `-` where a family was not measured.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| backend | policies | CNPs | path | iperf3 Gbit/s IPv4 / IPv6 | IPv6 vs IPv4 | vs no policy IPv4 / IPv6 \
         | connections/s IPv4 / IPv6 | IPv6 vs IPv4 | vs no policy IPv4 / IPv6 |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|b| b.backend == r.backend && b.path == r.path && b.policies == 0 && b.cnps == 0);
        // A blocked iperf3 counts as 0 in a ratio.
        let g = cells(
            r,
            base,
            |f| f.gbits.unwrap_or(0.0),
            |f| f.gbits.map(|x| format!("{x:.2}")).unwrap_or_else(|| "blocked".into()),
        );
        let k = cells(r, base, |f| f.conns, |f| format!("{:.0}", f.conns));
        s += &format!("| {} | {} | {} | {} | {g} | {k} |\n", r.backend, r.policies, r.cnps, r.path);
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
        Row { backend: "nftables", policies, cnps: 0, path, v4: fig(v4), v6: fig(v6) }
    }

    #[test]
    fn the_cluster_policies_parse_within_the_apis_limits_and_spread_over_both_tiers() {
        use weft_agent::model::{Object, Tier};
        let objects = weft_agent::model::parse_objects(&cluster_policies(40, "c9")).expect("valid manifests");
        let cnps: Vec<_> = objects
            .into_iter()
            .filter_map(|o| match o.unwrap_or_else(|e| panic!("{e:?}")) {
                Object::ClusterNetworkPolicy(p) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(cnps.len(), 40);
        assert_eq!(cnps.iter().filter(|p| p.tier == Tier::Admin).count(), 20);
        assert!(cnps.iter().all(|p| p.priority <= 1000 && p.ingress.len() <= 25 && p.egress.len() <= 25));
        assert!(cnps.iter().any(|p| p.ingress.len() >= 20), "some policies near the 25-rule limit");
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
            "| nftables | 0 | 0 | same node | 20.00 / 16.00 | 0.80x | 1.00x / 1.00x | 1000 / 900 | 0.90x | 1.00x / 1.00x |"
        );
        assert_eq!(
            lines[3],
            "| nftables | 1000 | 0 | same node | 10.00 / 16.00 | 1.60x | 0.50x / 1.00x | 800 / 450 | 0.56x | 0.80x / 0.50x |"
        );
        // Blocked, IPv6 not measured, and no baseline: dashes, no division by zero.
        assert_eq!(
            lines[4],
            "| nftables | 1000 | 0 | across nodes | blocked / - | - | - / - | 0 / - | - | - / - |"
        );
    }
}
