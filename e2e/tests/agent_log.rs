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
