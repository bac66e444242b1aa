//! Issue 16's flood row as one scenario, shared by the test
//! (`e2e/tests/denied_flood.rs`, which asserts what is not timing) and the
//! benchmark (`weft-e2e bench flood`, which prints the times). On a 1-node
//! testbed, `y/attacker`, a pod that policy denies, floods the isolated
//! `x/target` with SYNs; CNI ADDs (one after another) and the plugin's pod
//! reports of `x/target` (every 40 ms) run before the flood, during it and
//! after it, against an agent on the given backend.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use weft_agent::model::manifest::labels;
use weft_conf::pod_socket::PodEvent;
use weft_netkit::netns::{run_in, NetNs};
use weft_plugin::agent_client::{notify, TIMEOUT};

use super::{flood, Flood};
use crate::agents::pod_socket;
use crate::error::{E2eError, Result};
use crate::manifests::serve_ports;
use crate::pods::POD_IFNAME;
use crate::run::PodRecord;
use crate::Testbed;

const CONVERGE: Duration = Duration::from_secs(30);
/// One pod report this often, in every phase.
const REPORT_EVERY: Duration = Duration::from_millis(40);
/// The ports the SYNs cycle through: a new connection each, to many ports.
const PORTS: (u16, u16) = (1000, 60999);

/// How hard and how long.
#[derive(Debug, Clone)]
pub struct Plan {
    /// SYNs a second.
    pub rate: u32,
    pub flood: Duration,
    /// ADDs and reports before the flood (the machine's baseline), and after it.
    pub before: Duration,
    pub after: Duration,
}

impl Plan {
    /// The issue's row: 20k SYN/s for 20 s.
    pub fn issue() -> Plan {
        let secs = Duration::from_secs;
        Plan { rate: 20_000, flood: secs(20), before: secs(4), after: secs(4) }
    }
}

/// Round-trip times of one kind of request, per phase.
#[derive(Debug, Clone, Default)]
pub struct Phases {
    pub before: Vec<Duration>,
    pub during: Vec<Duration>,
    pub after: Vec<Duration>,
}

/// What one run saw.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub backend: String,
    pub attacker: Ipv4Addr,
    /// SYNs sent, and how long the flood took.
    pub sent: u64,
    pub flood_took: Duration,
    /// Whole CNI ADDs (the `weft` binary) on the node.
    pub adds: Phases,
    /// The agent's share of an ADD: the plugin's pod report, answered.
    pub reports: Phases,
    /// The agent's peak RSS from the flood's start to the end, less its RSS then (bytes).
    pub rss_growth: u64,
    /// Denied packets the kernel handed the agent from the flood's start to the end.
    pub denied_received: f64,
    /// TCP segments that reached `x/target` in the same span (0: it stayed isolated).
    pub target_segments: u64,
    /// The agent's `/denied` at the end.
    pub denied_log: String,
}

/// The `q` quantile of `times` (nearest rank); zero if there are none.
pub fn quantile(times: &[Duration], q: f64) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    let rank = (sorted.len() as f64 * q).ceil() as usize;
    sorted.get(rank.saturating_sub(1)).copied().unwrap_or_default()
}

/// Runs the scenario on `tb` (a fresh 1-node testbed, agents not started).
pub fn run(tb: &mut Testbed, backend: &str, plan: &Plan) -> Result<Outcome> {
    let target = tb.add_pod(1, "x/target")?;
    let attacker = tb.add_pod(1, "y/attacker")?;
    tb.apply("kind: NetworkPolicy\nmetadata: {name: isolate, namespace: x}\nspec: {podSelector: {}}\n")?;
    // The DaemonSet's resync (10 s), not the testbed's 500 ms: a full resync
    // an ADD waits behind is no part of what a flood does.
    tb.start_agents_with(&["--backend", backend, "--resync-ms", "10000"])?;
    tb.wait_converged(CONVERGE)?;
    // The target's record: its container ID, for the reports.
    let record = tb
        .pod(&target.name)
        .ok_or_else(|| E2eError::PodNotFound { run: tb.run(), name: target.name.clone() })?;
    let socket = pod_socket(&tb.run(), 1);
    let (mut adds, mut reports) = (Phases::default(), Phases::default());
    ((), reports.before, adds.before) = under_load(tb, &socket, &record, || std::thread::sleep(plan.before))?;

    let pid = tb.agent_pid(1).ok_or_else(|| E2eError::NotReady { what: "node 1's agent".into(), ms: 0 })?;
    let rss = vm(pid, "VmRSS")?;
    // Resets VmHWM: it shows the peak from here on.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .map_err(E2eError::io("reset the agent's VmHWM"))?;
    let received = denied_received(tb)?;
    let segments = tcp_in_segments(&target.netns)?;
    let f = Flood { src: attacker.ip, dst: target.ip, ports: PORTS, rate: plan.rate, duration: plan.flood };
    let t0 = Instant::now();
    let (sent, during, during_adds) = under_load(tb, &socket, &record, || flood(&attacker.netns, &f))?;
    let flood_took = t0.elapsed();
    (reports.during, adds.during) = (during, during_adds);
    ((), reports.after, adds.after) = under_load(tb, &socket, &record, || std::thread::sleep(plan.after))?;

    Ok(Outcome {
        backend: backend.into(),
        attacker: attacker.ip,
        sent: sent?,
        flood_took,
        adds,
        reports,
        rss_growth: vm(pid, "VmHWM")?.saturating_sub(rss),
        denied_received: denied_received(tb)? - received,
        target_segments: tcp_in_segments(&target.netns)?.saturating_sub(segments),
        denied_log: tb.agent_get(1, "/denied?since=0")?.1,
    })
}

/// Pod reports (every `REPORT_EVERY`) and CNI ADDs (one after another) on
/// node 1 while `busy` runs: what it returned, the reports' and the ADDs'
/// times. A failed ADD or report ends the phase early, as an error.
fn under_load<T: Send>(
    tb: &mut Testbed,
    socket: &Path,
    pod: &PodRecord,
    busy: impl FnOnce() -> T + Send,
) -> Result<(T, Vec<Duration>, Vec<Duration>)> {
    let done = AtomicBool::new(false);
    let (value, reports, adds) = std::thread::scope(|s| {
        let busy = s.spawn(busy);
        let reporter = s.spawn(|| reports_until(socket, pod, &done));
        let (mut adds, mut failed) = (Vec::new(), None);
        while failed.is_none() && !busy.is_finished() && !done.load(Ordering::Relaxed) {
            match add(tb) {
                Ok(t) => adds.push(t),
                Err(e) => failed = Some(e),
            }
        }
        done.store(true, Ordering::Relaxed);
        (join(busy.join()), join(reporter.join()), failed.map_or(Ok(adds), Err))
    });
    Ok((value, reports?, adds?))
}

/// A joined thread's value; its panic goes on in this thread.
fn join<T>(r: std::thread::Result<T>) -> T {
    r.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Measured pods kept at once: older ones are deleted (untimed), so a fast
/// machine's hundreds of ADDs never exhaust the node's /24.
const KEEP_PODS: usize = 64;

/// One pod added on node 1: its CNI ADD's time. The pod `KEEP_PODS` adds
/// earlier is deleted after it.
fn add(tb: &mut Testbed) -> Result<Duration> {
    let seq = tb.pods().iter().filter_map(|p| p.name.strip_prefix("z/p")?.parse::<usize>().ok()).max();
    let seq = seq.map_or(0, |n| n + 1);
    let took = tb.add_pod_with(1, &format!("z/p{seq}"), labels([("app", "z")]), serve_ports(&[80]))?.add;
    if let Some(old) = seq.checked_sub(KEEP_PODS) {
        tb.delete_pod(&format!("z/p{old}"))?;
    }
    Ok(took)
}

/// Pod reports every `REPORT_EVERY` until `done` (or one fails, which sets it).
fn reports_until(socket: &Path, pod: &PodRecord, done: &AtomicBool) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    while !done.load(Ordering::Relaxed) {
        match report(socket, pod) {
            Ok(t) => times.push(t),
            Err(e) => {
                done.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        std::thread::sleep(REPORT_EVERY);
    }
    Ok(times)
}

/// Reports `pod` to node 1's agent again, as the plugin's ADD does (the
/// same container and address: a no-op for the policy), within the
/// plugin's own wait; the round trip.
fn report(socket: &Path, pod: &PodRecord) -> Result<Duration> {
    let (namespace, name) = pod.name.split_once('/').unwrap_or(("", &pod.name));
    let ev = PodEvent::Add {
        container_id: pod.container_id.clone(),
        ifname: POD_IFNAME.into(),
        namespace: namespace.into(),
        name: name.into(),
        ips: pod.ip.map(IpAddr::V4).into_iter().collect(),
    };
    let t0 = Instant::now();
    notify(socket, &ev, TIMEOUT)
        .map_err(|e| E2eError::Cni { what: format!("pod report of {}", pod.name), detail: e.to_string() })?;
    Ok(t0.elapsed())
}

/// A field of /proc/PID/status, in bytes.
fn vm(pid: i32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(E2eError::io(&path))?;
    let kib = status.lines().find_map(|l| {
        l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse::<u64>().ok()
    });
    kib.map(|k| k * 1024).ok_or_else(|| not_in(&path, field))
}

/// `weft_denied_packets_received_total` on node 1's /metrics.
fn denied_received(tb: &Testbed) -> Result<f64> {
    let body = tb.agent_get(1, "/metrics")?.1;
    let name = "weft_denied_packets_received_total";
    metric(&body, name).ok_or_else(|| not_in("node 1's /metrics", name))
}

/// An unlabelled metric's value in Prometheus text.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The TCP segments the netns at `netns` has received (`Tcp: InSegs`).
fn tcp_in_segments(netns: &Path) -> Result<u64> {
    let what = format!("TCP counters of {}", netns.display());
    let ns = NetNs::open(netns).map_err(E2eError::kernel(&what))?;
    // thread-self: /proc/net follows the process's first thread, not this one.
    let snmp = run_in(&ns, || std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .map_err(E2eError::kernel(&what))?
        .map_err(E2eError::io(&what))?;
    in_segs(&snmp).ok_or_else(|| not_in(&what, "Tcp InSegs"))
}

/// A figure missing from what was read.
fn not_in(what: &str, figure: &str) -> E2eError {
    let source = std::io::Error::new(std::io::ErrorKind::InvalidData, format!("no {figure}"));
    E2eError::Io { what: what.into(), source }
}

/// `Tcp: InSegs` in /proc/net/snmp text (a header line, then a values line).
fn in_segs(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter_map(|l| l.strip_prefix("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let i = names.split_whitespace().position(|n| n == "InSegs")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let ms: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(quantile(&ms, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&ms, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&ms[..3], 0.99), Duration::from_millis(100));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn counters_are_read_from_their_text() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm ActiveOpens InSegs OutSegs\n\
                    Tcp: 1 0 42 7\nUdp: InDatagrams\nUdp: 3\n";
        assert_eq!(in_segs(snmp), Some(42));
        assert_eq!(in_segs("Tcp: InSegs\n"), None);
        let body = "# TYPE x counter\nweft_denied_packets_received_total 812\nweft_denied_packets_received_totals 1\n";
        assert_eq!(metric(body, "weft_denied_packets_received_total"), Some(812.0));
        assert_eq!(metric(body, "weft_missing"), None);
    }
}
