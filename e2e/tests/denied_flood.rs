//! A pod that policy denies floods an isolated pod on its node with SYNs
//! (20k a second, each a new connection to one of many ports), on each
//! backend. Meanwhile and after: the agent answers the plugin's pod reports
//! (its whole share of a CNI ADD: queueing in its loop, the source, the
//! policy commit) with p99 <= 100 ms over hundreds of reports (or, on a
//! machine too loaded for that without a flood, within 1.5 times the p99 of
//! the same reports and ADDs before it); real CNI
//! ADDs on that node all succeed, none slower than 1 s (they used to time
//! out for minutes); the agent's memory does not grow (<= 16 MiB); the
//! kernel hands the agent no more than its log limit; and the denials are
//! still logged and explained on `/denied`.
//!
//! Why the agent's share and not the whole ADD for the 100 ms: on the shared
//! 2-core machine this was written on (load 13-15), whole ADDs had a p99 of
//! 80-106 ms with no flood at all, so that bound would test the machine.
//! The whole ADDs' figures are printed.
//!
//! The flood lasts `FLOOD` (8 s per backend, not the 20 s of the issue,
//! to keep the test near 40 s): by then the agent has seen the kernel's
//! log limit eight times over, which is what once queued without bound.

mod common;

#[allow(dead_code)]
#[path = "../../policy-agent/tests/support/exposition.rs"]
mod exposition;

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{pod_testbed, root_or_skip};
use exposition::{parse, value};
use weft_agent::model::manifest::labels;
use weft_agent::nflog::{LOG_BURST, LOG_RATE};
use weft_conf::pod_socket::PodEvent;
use weft_e2e::agents::pod_socket;
use weft_e2e::manifests::serve_ports;
use weft_e2e::pods::POD_IFNAME;
use weft_e2e::run::PodRecord as RunPod;
use weft_e2e::syn_flood::{flood, Flood};
use weft_e2e::Testbed;
use weft_plugin::agent_client::notify;

const CONVERGE: Duration = Duration::from_secs(10);
const RATE: u32 = 20_000;
const FLOOD: Duration = Duration::from_secs(8);
/// The target for the agent's share of an ADD. When the machine is so
/// loaded (parallel tests, builds) that the same reports without a flood
/// already take longer, the bound is their p99 times `SLOWER`: the flood
/// must not slow the agent, which it once stopped for minutes.
const REPORT_P99: Duration = Duration::from_millis(100);
const SLOWER: f64 = 1.5;
/// One pod report this often, before the flood, during it and after.
const REPORT_EVERY: Duration = Duration::from_millis(40);
/// How long reports and ADDs run before the flood (the machine's baseline) and after it.
const QUIET: Duration = Duration::from_secs(4);
const AFTER: Duration = Duration::from_secs(2);
/// Bound on a whole CNI ADD: far under the plugin's wait on the agent.
const ADD_MAX: Duration = Duration::from_secs(1);
const RSS_GROWTH: u64 = 16 * 1024 * 1024;

/// The 99th percentile (nearest rank).
fn p99(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[(sorted.len() * 99).div_ceil(100).saturating_sub(1)]
}

/// A field of /proc/PID/status, in bytes.
fn vm(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field}"));
    line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap() * 1024
}

fn metric(tb: &Testbed, name: &str) -> f64 {
    let body = tb.agent_get(1, "/metrics").unwrap().1;
    value(&parse(&body).unwrap(), name, &[]).unwrap_or_else(|| panic!("{name} not in {body}"))
}

/// One pod added on node 1: its CNI ADD's time.
fn add(tb: &mut Testbed) -> Duration {
    let name = format!("z/p{}", tb.pods().len());
    tb.add_pod_with(1, &name, labels([("app", "z")]), serve_ports(&[80])).unwrap().add
}

/// Reports `pod` to node 1's agent again, as the plugin's ADD does (the
/// same container and address: a no-op for the policy); the round trip.
fn report(socket: &Path, pod: &RunPod) -> Duration {
    let (namespace, name) = pod.name.split_once('/').unwrap();
    let ev = PodEvent::Add {
        container_id: pod.container_id.clone(),
        ifname: POD_IFNAME.into(),
        namespace: namespace.into(),
        name: name.into(),
        ips: pod.ip.map(IpAddr::V4).into_iter().collect(),
    };
    let t0 = Instant::now();
    notify(socket, &ev, ADD_MAX).unwrap();
    t0.elapsed()
}

/// Pod reports every `REPORT_EVERY` until `done`.
fn reports_until(socket: &Path, pod: &RunPod, done: &AtomicBool) -> Vec<Duration> {
    let mut times = Vec::new();
    while !done.load(Ordering::Relaxed) {
        times.push(report(socket, pod));
        std::thread::sleep(REPORT_EVERY);
    }
    times
}

/// Pod reports (every `REPORT_EVERY`) and CNI ADDs (one after another) on
/// node 1 while `busy` runs: what it returned, the reports' and the ADDs' times.
fn under_load<T: Send>(
    tb: &mut Testbed,
    socket: &Path,
    pod: &RunPod,
    busy: impl FnOnce() -> T + Send,
) -> (T, Vec<Duration>, Vec<Duration>) {
    let (done, mut adds) = (AtomicBool::new(false), Vec::new());
    std::thread::scope(|s| {
        let busy = s.spawn(busy);
        let reporter = s.spawn(|| reports_until(socket, pod, &done));
        while !busy.is_finished() {
            adds.push(add(tb));
        }
        done.store(true, Ordering::Relaxed);
        (busy.join().unwrap(), reporter.join().unwrap(), adds)
    })
}

fn flood_on(backend: &str) {
    let mut tb = pod_testbed(1);
    tb.add_pod(1, "x/target").unwrap();
    let attacker = tb.add_pod(1, "y/attacker").unwrap();
    tb.apply("kind: NetworkPolicy\nmetadata: {name: isolate, namespace: x}\nspec: {podSelector: {}}\n")
        .unwrap();
    // The DaemonSet's resync (10 s), not the testbed's 500 ms: a full resync
    // an ADD waits behind is no part of what a flood does.
    tb.start_agents_with(&["--backend", backend, "--resync-ms", "10000"]).unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    let (target, socket) = (tb.pod("x/target").unwrap(), pod_socket(&tb.run(), 1));
    let ((), quiet, base) = under_load(&mut tb, &socket, &target, || std::thread::sleep(QUIET));
    let pid = tb.agent_pid(1).expect("node 1's agent runs");
    let before = vm(pid, "VmRSS");
    // Resets VmHWM: it shows the peak from here on.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let received0 = metric(&tb, "weft_denied_packets_received_total");

    let f = Flood {
        src: attacker.ip,
        dst: target.ip.unwrap(),
        ports: (1000, 60999),
        rate: RATE,
        duration: FLOOD,
    };
    let t0 = Instant::now();
    let (sent, mut reports, mut adds) =
        under_load(&mut tb, &socket, &target, || flood(&attacker.netns, &f).unwrap());
    let (during, flood_took) = (reports.len(), t0.elapsed());
    let ((), after, adds_after) = under_load(&mut tb, &socket, &target, || std::thread::sleep(AFTER));
    reports.extend(after);
    adds.extend(adds_after);

    let growth = vm(pid, "VmHWM").saturating_sub(before);
    let received = metric(&tb, "weft_denied_packets_received_total") - received0;
    let ms = |t: &[Duration]| t.iter().map(Duration::as_millis).collect::<Vec<_>>();
    eprintln!(
        "{backend}: {sent} SYNs in {flood_took:?}; pod reports p99 {:?} before, {:?} during ({during}) and \
         after; CNI ADD p99 {:?} before, {:?} during and after (ms {:?}); the agent received {received} \
         denied packets; RSS peak grew {growth} bytes",
        p99(&quiet),
        p99(&reports),
        p99(&base),
        p99(&adds),
        ms(&adds)
    );
    assert!(sent as f64 >= 0.9 * f64::from(RATE) * FLOOD.as_secs_f64(), "{backend}: only {sent} SYNs sent");
    assert!(during >= 100, "{backend}: only {during} pod reports during the flood");
    let bound = REPORT_P99.max(p99(&quiet).mul_f64(SLOWER));
    assert!(
        p99(&reports) <= bound,
        "{backend}: pod reports under a SYN flood (bound {bound:?}): ms {:?}",
        ms(&reports)
    );
    assert!(adds.iter().all(|t| *t <= ADD_MAX), "{backend}: CNI ADDs under a SYN flood: ms {:?}", ms(&adds));
    assert!(growth <= RSS_GROWTH, "{backend}: the agent's RSS grew {growth} bytes");
    // The kernel's limit, with a second of slack for the clock.
    let most = f64::from(LOG_RATE) * (flood_took.as_secs_f64() + 1.0) + f64::from(LOG_BURST);
    assert!(received > 0.0 && received <= most, "{backend}: the agent received {received} (at most {most})");
    let (_, denied) = tb.agent_get(1, "/denied?since=0").unwrap();
    let want = format!("\"src\":\"y/attacker ({})\"", attacker.ip);
    assert!(denied.contains(&want) && denied.contains("x/isolate"), "{backend}: /denied:\n{denied}");
    let st = tb.state();
    tb.down().unwrap();
    common::assert_gone(&st);
}

#[test]
fn a_denied_pods_syn_flood_slows_no_add_and_grows_no_agent() {
    if !root_or_skip("a_denied_pods_syn_flood_slows_no_add_and_grows_no_agent") {
        return;
    }
    for backend in ["iptables", "nftables"] {
        flood_on(backend);
    }
}
