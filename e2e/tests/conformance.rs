//! The conformance runner end to end (root; skips otherwise): on backend
//! `none` (agents without enforcement) the baseline cases, in which nothing
//! is denied, pass; a case expecting a block where traffic flows fails, and
//! the report shows the expected and observed matrices side by side with
//! the differing cell marked. The whole suite passes on both backends with
//! the agents reading the cluster dir, in dual stack (every probe in IPv4
//! and in IPv6) and in IPv6 alone, on iptables with the agents reading the
//! same state through the stand-in API server (`--source kube`), and the
//! cases that cross nodes on nftables in vxlan mode (IPv4) on a lan that
//! drops pod addresses.
//! `weft-e2e conformance run --backend iptables [--family dual] [--source kube] e2e/cases`
//! runs it from the command line.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{bin, root_or_skip, WRONG};
use weft_e2e::conformance::{self, cases_dir, cnp_cases_dir, Backend, Mode, Options, StateSource};
use weft_e2e::family::Family;

/// A scratch directory of this test process, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("weft-conformance-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn baseline() -> PathBuf {
    cases_dir().join("baseline")
}

#[test]
fn baseline_passes_and_a_wrong_expectation_fails_side_by_side() {
    if !root_or_skip("conformance runner") {
        return;
    }
    let scratch = Scratch::new("lib");
    let wrong = scratch.write("99-deliberately-wrong.yaml", WRONG);
    let opts = Options { backend: Backend::None, ..Options::default() };
    let mut out = Vec::new();
    let summary = conformance::run(&[baseline(), wrong], &opts, &mut out).unwrap_or_else(|e| panic!("{e}"));
    let out = String::from_utf8_lossy(&out).to_string();
    eprintln!("{out}");

    let baseline_cases = conformance::load_paths(&[baseline()]).unwrap();
    assert!(baseline_cases.len() >= 3, "the baseline has no-policy, allow-all and services cases");
    for c in &baseline_cases {
        let r = summary.get(&c.name).unwrap_or_else(|| panic!("case {} did not run", c.name));
        assert!(r.passed, "baseline case {} must hold without enforcement:\n{}", c.name, r.report);
        assert!(out.contains(&format!("PASS {} (", c.name)), "{out}");
    }

    let r = summary.get("deliberately-wrong").expect("the wrong case ran");
    assert!(!r.passed, "{}", r.report);
    let report = &r.report;
    assert!(report.starts_with("FAIL deliberately-wrong ("), "{report}");
    assert!(report.contains("steps[0].probe[0] (matrix TCP port 80)"), "{report}");
    // Side by side, the one differing cell in brackets on the observed side.
    let row = report.lines().find(|l| l.trim_start().starts_with("x/a  .   X")).unwrap_or_default();
    assert!(row.contains("x/a  .  [.]  ."), "the x/a row with the marked cell:\n{report}");
    assert!(report.contains("x/a -> x/b: connected, expected to be blocked"), "{report}");
    assert!(
        report.contains("steps[0].probe[1] (y/a -> x/c:81 UDP, expect deny)")
            && report.contains("expected deny, observed allow"),
        "{report}"
    );

    let n = baseline_cases.len();
    assert_eq!((summary.passed(), summary.failed()), (n, 1));
    assert_eq!(out.lines().last(), Some(format!("conformance: {n} passed, 1 failed").as_str()));
}

/// The CLI: non-zero exit on a failed case, the summary line last; `--list`
/// validates without root and names the file and field of a bad case.
#[test]
fn cli_exit_codes() {
    let scratch = Scratch::new("cli");
    let bad = scratch.write(
        "01-bad.yaml",
        "name: bad\nsteps:\n  - probe:\n      - {from: x/a, to: x/q, port: 80, expect: allow}\n",
    );
    let out = Command::new(bin()).args(["conformance", "run", "--list"]).arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("01-bad.yaml") && err.contains("steps[0].probe[0].to: x/q is not a pod"), "{err}");

    let out = Command::new(bin()).args(["conformance", "run", "--list"]).arg(cases_dir()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.lines().any(|l| l.starts_with("default-deny-ingress ")), "{listed}");

    if !root_or_skip("conformance CLI run") {
        return;
    }
    let wrong = scratch.write("wrong.yaml", WRONG);
    let out =
        Command::new(bin()).args(["conformance", "run", "--backend", "none"]).arg(&wrong).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("FAIL deliberately-wrong ("), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("conformance: 0 passed, 1 failed"));
}

/// The whole suite (`e2e/cases/`, shared by both backends) on `backend` in
/// `family`, the agents reading `source` with `agent_args`: every case
/// passes, and `weft-agent explain` agrees with every probed pod-to-pod cell.
fn the_suite_passes_on(backend: Backend, family: Family, source: StateSource, agent_args: &[&str]) {
    let agent_args = agent_args.iter().map(|a| a.to_string()).collect();
    the_suite_passes(Options { backend, family, source, agent_args, ..Options::default() });
}

/// `the_suite_passes_on` with `opts` (explain always on).
fn the_suite_passes(opts: Options) {
    cases_pass(opts, &[cases_dir().to_path_buf()], 60);
}

/// Every case of `paths` (at least `min` of them) passes with `opts`,
/// explain agreeing.
fn cases_pass(opts: Options, paths: &[PathBuf], min: usize) {
    let (backend, source, mode, family) = (opts.backend, opts.source, opts.mode, opts.family);
    let what = format!("the conformance suite on {backend} through {source} in {mode} mode, {family}");
    if !root_or_skip(&what) {
        return;
    }
    // Every probed pod-to-pod cell is also checked against weft-agent explain.
    let opts = Options { explain: true, ..opts };
    let mut out = Vec::new();
    let summary = conformance::run(paths, &opts, &mut out).unwrap_or_else(|e| panic!("{e}"));
    let out = String::from_utf8_lossy(&out).to_string();
    eprintln!("{out}");
    let n = conformance::load_paths(paths).unwrap().len();
    assert!(n >= min, "{n} cases");
    assert!(summary.ok(), "{what}: {}", summary.line());
    assert_eq!(summary.passed(), n);
}

/// The suite's rules have few peers, which the default compiles to exact
/// triples (the kube-source run below); `--triple-peers 1` makes every rule
/// with more than one peer network a port group, so both representations
/// meet real packets on both backends.
const MIXED: &[&str] = &["--triple-peers", "1"];

/// Dual stack: every probe in IPv4 and in IPv6 (at once), so IPv4 is
/// covered here too.
#[test]
fn the_suite_passes_on_iptables_in_dual_stack() {
    the_suite_passes_on(Backend::Iptables, Family::Dual, StateSource::Dir, MIXED);
}

#[test]
fn the_suite_passes_on_nftables_in_dual_stack() {
    the_suite_passes_on(Backend::Nftables, Family::Dual, StateSource::Dir, MIXED);
}

/// IPv6 alone: pods, nodes and CIDRs without IPv4, on nftables (iptables
/// meets every IPv6 probe in the dual-stack run: one backend here keeps
/// `make test` under 20 minutes).
#[test]
fn the_suite_passes_on_nftables_in_ipv6() {
    the_suite_passes_on(Backend::Nftables, Family::Ipv6, StateSource::Dir, &[]);
}

/// The cases that cross nodes in every way the overlay carries: pod to pod
/// under policy, ipBlocks (the source address seen after encapsulation),
/// ClusterIPs and NodePorts (masqueraded or not, through a third node),
/// nodes to pods, pods added and recreated, one node alone.
const OVERLAY_CASES: &[&str] = &[
    "baseline",
    "01-default-deny-ingress.yaml",
    "08-allow-from-namespace-selector.yaml",
    "22-ingress-port-from-namespace.yaml",
    "34-default-deny-egress.yaml",
    "36-egress-to-namespace.yaml",
    "45-ingress-ipblock-pod-cidr.yaml",
    "46-ingress-ipblock-except.yaml",
    "47-egress-ipblock.yaml",
    "48-egress-ipblock-except.yaml",
    "56-pod-added-mid-case.yaml",
    "57-pod-recreated-new-address.yaml",
    "60-clusterip-ingress-policy.yaml",
    "61-clusterip-same-node-under-policy.yaml",
    "62-clusterip-egress-policy.yaml",
    "63-nodeport-cluster-remote-endpoint.yaml",
    "64-nodeport-cluster-masquerade-hides-client.yaml",
    "65-nodeport-local-keeps-client-ip.yaml",
    "66-nodeport-default-deny.yaml",
    "67-nodeport-udp.yaml",
    "68-node-to-pod-under-deny.yaml",
    "69-node-to-service-under-deny.yaml",
    "70-nodeport-transit-three-nodes.yaml",
    "73-single-node.yaml",
];

/// Over the overlay, on a lan that drops every frame with a pod address
/// (where host-gw fails: scenario overlay-seed-003): NodePorts from outside,
/// NetworkPolicy and explain hold as on host-gw. One backend and the cases
/// that cross nodes (`OVERLAY_CASES`), to keep `make test`'s time: the
/// overlay is below both backends' rules, and the other cases' semantics
/// do not depend on how packets cross nodes.
#[test]
fn the_suite_passes_in_vxlan_mode() {
    let opts =
        Options { backend: Backend::Nftables, mode: Mode::Vxlan, anti_spoofing: true, ..Options::default() };
    let paths: Vec<PathBuf> = OVERLAY_CASES.iter().map(|c| cases_dir().join(c)).collect();
    for p in &paths {
        assert!(p.exists(), "{} is gone: update OVERLAY_CASES", p.display());
    }
    cases_pass(opts, &paths, OVERLAY_CASES.len());
}

/// The agents list and watch the stand-in API server, which serves the
/// cluster dir, instead of reading the dir.
#[test]
fn the_suite_passes_on_iptables_through_the_kube_source() {
    the_suite_passes_on(Backend::Iptables, Family::Dual, StateSource::Kube, &[]);
}

/// The ClusterNetworkPolicy cases (e2e/cases-cnp: Admin and Baseline tiers,
/// their integration with NetworkPolicy, priorities and rule order, Pass,
/// networks, nodes and named-port peers, updates and deletions) on
/// `backend` in `family` through `source`, explain agreeing.
fn the_cnp_suite_passes_on(backend: Backend, family: Family, source: StateSource) {
    cases_pass(
        Options { backend, family, source, ..Options::default() },
        &[cnp_cases_dir().to_path_buf()],
        50,
    );
}

/// IPv4 on iptables (its IPv6 CNP chains meet real packets in
/// policy-agent/tests/cluster_policy.rs), dual stack on nftables.
#[test]
fn the_cnp_suite_passes_on_iptables() {
    the_cnp_suite_passes_on(Backend::Iptables, Family::Ipv4, StateSource::Dir);
}

#[test]
fn the_cnp_suite_passes_on_nftables_in_dual_stack() {
    the_cnp_suite_passes_on(Backend::Nftables, Family::Dual, StateSource::Dir);
}

/// Through the stand-in API with the CRD served: the agents watch
/// clusternetworkpolicies (and write their status) as on a real cluster.
#[test]
fn the_cnp_suite_passes_on_nftables_through_the_kube_source() {
    the_cnp_suite_passes_on(Backend::Nftables, Family::Ipv4, StateSource::Kube);
}
