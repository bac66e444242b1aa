//! Everything `weft-agent --source kube` logs through an operator's day, in
//! one format: start, an API outage (folded into one line, not one per
//! retry), a watch that expires (410), a NetworkPolicy the API would reject,
//! and SIGTERM. Every line of the agent's log is read and checked: time,
//! level, `weft-agent: `, a message, its node; no Debug dump, no ERROR for
//! what an operator need not fix. Root; skips otherwise.

mod common;

use std::time::Duration;

use common::{pod_testbed, root_or_skip};

const CONVERGE: Duration = Duration::from_secs(20);
/// Bound on agents noticing the API server is gone and on their back-off
/// letting them back in (at most 8 s).
const NOTICE: Duration = Duration::from_secs(20);

/// A label value the API server would reject ("-" may not start a value).
const BAD_POLICY: &str = "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\n\
    metadata: {name: bad, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: \"-b\"}}\n";

const POLICY: &str = "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\n\
    metadata: {name: deny-all, namespace: x}\nspec:\n  podSelector: {}\n";

/// Whether `line` has the log's format: `TIME LEVEL weft-agent: MESSAGE ... node=NODE`,
/// TIME as RFC 3339 in UTC; the reason when not.
fn format_error(line: &str, node: &str) -> Option<&'static str> {
    let mut parts = line.splitn(4, ' ');
    let (time, level, who, message) = (parts.next()?, parts.next()?, parts.next()?, parts.next());
    let time_ok = time.len() >= 20
        && time.ends_with('Z')
        && time.as_bytes()[10] == b'T'
        && time[..10]
            .bytes()
            .enumerate()
            .all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    if !time_ok {
        return Some("no RFC 3339 time first");
    }
    if !["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level) {
        return Some("no level second");
    }
    if who != "weft-agent:" {
        return Some("no `weft-agent:` third");
    }
    if message.is_none_or(|m| m.trim().is_empty()) {
        return Some("no message");
    }
    if !line.ends_with(&format!(" node={node}")) {
        return Some("does not end with the node");
    }
    // A Debug dump of a struct ("Route { dst: ... }", "Status { ... }").
    if line.contains(" { ") || line.contains("Some(") {
        return Some("a Debug dump");
    }
    None
}

#[test]
fn every_line_the_agent_logs_through_an_operators_day_has_the_format() {
    if !root_or_skip("every_line_the_agent_logs_through_an_operators_day_has_the_format") {
        return;
    }
    let mut tb = pod_testbed(1);
    tb.start_standin().unwrap();
    tb.start_agents_with(&["--backend", "iptables"]).unwrap();
    tb.add_pod(1, "x/a").unwrap();
    tb.apply(POLICY).unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    let standin = tb.standin().unwrap();
    let status_says =
        |what: &str| tb.agent_status(1).is_some_and(|s| s.errors.iter().any(|e| e.contains(what)));

    // An outage of several retries per watcher (4 watchers, back-off from 250 ms).
    standin.down();
    assert!(
        weft_e2e::wait_until(NOTICE, || status_says("the API server is unreachable")),
        "{:?}",
        tb.agent_status(1)
    );
    // Several retries per watcher while down (the count the folded line reports).
    std::thread::sleep(Duration::from_secs(4));
    standin.up().unwrap();
    let clear = || tb.agent_status(1).is_some_and(|s| s.errors.is_empty());
    assert!(weft_e2e::wait_until(CONVERGE + NOTICE, clear), "{:?}", tb.agent_status(1));

    // A watch that expires: a re-list, at INFO.
    standin.freeze();
    assert!(tb.delete_object("NetworkPolicy", Some("x"), "deny-all").unwrap());
    standin.expire();
    tb.wait_converged(CONVERGE).unwrap();

    // A policy the API would reject: ignored, said once.
    tb.write_manifest("bad.yaml", BAD_POLICY).unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    assert!(status_says("NetworkPolicy x/bad"), "{:?}", tb.agent_status(1));
    assert!(tb.stop_agent(1).unwrap(), "the agent exits 0 on SIGTERM");

    let log = std::fs::read_to_string(weft_e2e::run::run_dir(&tb.run()).join("agent-n1.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    for l in &lines {
        if let Some(why) = format_error(l, "node-1") {
            panic!("{why}: {l:?}\nthe whole log:\n{log}");
        }
    }
    let with = |s: &str| lines.iter().filter(|l| l.contains(s)).count();
    assert_eq!(with("the API server is unreachable"), 1, "one line for the outage:\n{log}");
    assert!(with("kube API: back after") == 1, "the outage's end, with its count:\n{log}");
    assert!(with("watch expired (410 Gone): listing again") >= 1, "{log}");
    assert_eq!(with("kube API: NetworkPolicy x/bad"), 1, "the bad policy, once:\n{log}");
    assert!(with("label value \"-b\"") >= 1, "{log}");
    assert_eq!(with("SIGTERM or SIGINT: stopping"), 1, "{log}");
    assert_eq!(with("skipping manifest"), 0, "{log}");
    let errors: Vec<&&str> = lines.iter().filter(|l| l.split(' ').nth(1) == Some("ERROR")).collect();
    assert!(errors.is_empty(), "nothing here is for an operator to fix: {errors:#?}");
    eprintln!("agent_log: {} lines, all in the format", lines.len());
}

/// A Node as the API shows it before the controller-manager assigned its podCIDR.
fn node_3(pod_cidr: Option<&str>) -> String {
    let spec = pod_cidr.map_or_else(String::new, |c| format!("spec:\n  podCIDR: {c}\n"));
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-3\n{spec}status:\n  addresses:\n  \
         - type: InternalIP\n    address: 172.31.0.13\n"
    )
}

#[test]
fn a_missing_pod_cidr_is_a_warning_that_waits_and_a_misspelt_node_an_error() {
    if !root_or_skip("a_missing_pod_cidr_is_a_warning_that_waits_and_a_misspelt_node_an_error") {
        return;
    }
    let tb = pod_testbed(1);
    tb.write_manifest("node-3.yaml", &node_3(None)).unwrap();
    // The agent in node 1's netns, as node-3 (a later --node wins).
    tb.start_agent(1, &["--backend", "iptables", "--node", "node-3"]).unwrap();
    let log = || std::fs::read_to_string(weft_e2e::run::run_dir(&tb.run()).join("agent-n1.log")).unwrap();
    assert!(weft_e2e::wait_until(NOTICE, || log().contains("has no podCIDR yet")), "{}", log());
    // Three full syncs (resyncs every 500 ms) while it waits: still one line.
    let full_syncs = || {
        let body = tb.agent_get(1, "/metrics").map(|r| r.1).unwrap_or_default();
        body.lines()
            .find(|l| l.starts_with("weft_sync_duration_seconds_count{kind=\"full\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(weft_e2e::wait_until(NOTICE, || full_syncs() >= 3), "full syncs: {}", full_syncs());
    // The controller-manager assigns it: the masquerade rule follows.
    tb.write_manifest("node-3.yaml", &node_3(Some("10.244.3.0/24"))).unwrap();
    let masq = || tb.agent_status(1).and_then(|s| s.masquerade).is_some_and(|m| m == "10.244.3.0/24");
    assert!(weft_e2e::wait_until(NOTICE, masq), "{:?}", tb.agent_status(1));
    assert!(tb.stop_agent(1).unwrap());
    // A --node that names no Node.
    tb.start_agent(1, &["--backend", "iptables", "--node", "node-9"]).unwrap();
    let unknown = |s: &weft_agent::status::Status| {
        s.errors.iter().any(|e| e.contains("node-9 is not in the cluster state"))
    };
    assert!(
        weft_e2e::wait_until(NOTICE, || tb.agent_status(1).is_some_and(|s| unknown(&s))),
        "{:?}",
        tb.agent_status(1)
    );
    assert!(tb.stop_agent(1).unwrap());

    let log = log();
    let lines: Vec<&str> = log.lines().collect();
    let with = |s: &str| lines.iter().filter(|l| l.contains(s)).copied().collect::<Vec<_>>();
    let waits = with("has no podCIDR yet: waiting for the controller-manager");
    assert_eq!(waits.len(), 1, "once, not at every resync:\n{log}");
    assert!(waits[0].contains(" WARN weft-agent: node node-3 has no podCIDR"), "{}", waits[0]);
    let unknown = with("node node-9 is not in the cluster state: is --node spelt as");
    assert_eq!(unknown.len(), 1, "{log}");
    assert!(
        unknown[0].contains(" ERROR weft-agent: ") && unknown[0].contains("(nodes: node-1, node-3)"),
        "{}",
        unknown[0]
    );
    // The first agent's lines end with node-3, the second's with node-9.
    let second = lines.iter().position(|l| l.ends_with(" node=node-9")).unwrap_or(lines.len());
    for (i, l) in lines.iter().enumerate() {
        let node = if i < second { "node-3" } else { "node-9" };
        if let Some(why) = format_error(l, node) {
            panic!("{why}: {l:?}\n{log}");
        }
    }
}
