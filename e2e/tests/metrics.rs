//! The agent's HTTP endpoints on a live testbed node: `/healthz` answers
//! while the loop runs, `/readyz` only once the node can carry pods (here:
//! the conflist written, which waits for the node's pod CIDR), and
//! `/metrics` follows the syncs: the histogram counts a policy change's, the
//! generation label is the one applied, the set elements grow with it, and
//! quiet resyncs keep them.

mod common;
#[path = "../../policy-agent/tests/support/exposition.rs"]
mod exposition;

use std::time::Duration;

use exposition::{parse, value, Sample};
use weft_e2e::Testbed;

const CONVERGE: Duration = Duration::from_secs(10);

fn metrics(tb: &Testbed) -> Vec<Sample> {
    let (head, body) = tb.agent_get(1, "/metrics").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK") && head.contains("text/plain; version=0.0.4"), "{head}");
    parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

fn get(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(s, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in {s:#?}"))
}

#[test]
fn health_and_metrics_follow_the_agent() {
    if !common::root_or_skip("health_and_metrics_follow_the_agent") {
        return;
    }
    let mut tb = common::pod_testbed(1);
    let a = tb.add_pod(1, "x/a").unwrap();
    // Node 1 is not in the cluster state yet: its agent runs but has no pod CIDR for the conflist.
    assert!(tb.remove_manifest("node-1.yaml").unwrap());
    let conf = weft_e2e::run::run_dir(&tb.run()).join("net.d");
    tb.start_agent(1, &["--cni-conf-dir", &conf.display().to_string()]).unwrap();
    tb.wait_converged(CONVERGE).unwrap();

    // 1. Live, not ready, and the metrics say so.
    let (head, body) = tb.agent_get(1, "/healthz").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK") && body == "ok\n", "{head}\n{body}");
    let (head, why) = tb.agent_get(1, "/readyz").unwrap();
    assert!(head.starts_with("HTTP/1.1 503 Service Unavailable"), "{head}\n{why}");
    assert!(why.contains("node-1 has no pod CIDR"), "{why}");
    assert!(!conf.join("10-weft.conflist").exists());
    assert_eq!(get(&metrics(&tb), "weft_ready", &[]), 0.0);

    // 2. The Node appears: the conflist is written and the node is ready.
    tb.write_manifest("node-1.yaml", &weft_e2e::agents::node_manifest(1)).unwrap();
    let ready =
        weft_e2e::wait_until(CONVERGE, || tb.agent_get(1, "/readyz").unwrap().0.starts_with("HTTP/1.1 200"));
    assert!(ready, "{:?}", tb.agent_get(1, "/readyz"));
    assert!(conf.join("10-weft.conflist").is_file());
    let before = metrics(&tb);
    assert_eq!(get(&before, "weft_ready", &[]), 1.0);
    let changes = |s: &[Sample]| get(s, "weft_sync_duration_seconds_count", &[("kind", "change")]);
    let fulls = |s: &[Sample]| get(s, "weft_sync_duration_seconds_count", &[("kind", "full")]);
    let elements = |s: &[Sample]| {
        let backend = tb.agent_status(1).and_then(|st| st.policy).map(|p| p.backend).unwrap_or_default();
        get(s, "weft_policy_set_elements", &[("backend", &backend)])
    };
    assert!(fulls(&before) >= 1.0);
    assert_eq!(get(&before, "weft_isolated_pods", &[("direction", "ingress")]), 0.0);

    // 3. A policy isolates x/a: one more sync, the new generation, more set elements.
    tb.apply(
        "kind: NetworkPolicy\nmetadata: {name: web, namespace: x}\nspec:\n  podSelector: {}\n  \
         ingress: [{ports: [{port: 80}]}]\n",
    )
    .unwrap();
    let generation = tb.wait_converged(CONVERGE).unwrap()[0].generation.clone();
    let after = metrics(&tb);
    // Applied by a change sync, or by the periodic resync if one was due (every 500 ms here).
    let syncs = |s: &[Sample]| changes(s) + fulls(s);
    assert!(syncs(&after) > syncs(&before), "{} -> {}", syncs(&before), syncs(&after));
    assert_eq!(get(&after, "weft_applied_generation_info", &[("generation", &generation)]), 1.0);
    assert_eq!(get(&after, "weft_isolated_pods", &[("direction", "ingress")]), 1.0);
    assert!(elements(&after) > elements(&before), "{} -> {}", elements(&before), elements(&after));
    // The histogram's sum grew with its count, and no sync took beyond the last bucket.
    let sum = |s: &[Sample]| get(s, "weft_sync_duration_seconds_sum", &[("kind", "change")]);
    assert!(changes(&after) == changes(&before) || sum(&after) > sum(&before));
    let le10 = get(&after, "weft_sync_duration_seconds_bucket", &[("kind", "change"), ("le", "10")]);
    assert_eq!(le10, changes(&after));
    assert_eq!(get(&after, "weft_policy_errors_total", &[]), 0.0);
    // 4. Periodic resyncs (500 ms here) check the kernel off the loop and
    // find it intact: the objects in force are still counted.
    let resynced = weft_e2e::wait_until(CONVERGE, || fulls(&metrics(&tb)) >= fulls(&after) + 2.0);
    let later = metrics(&tb);
    assert!(resynced, "{} -> {}", fulls(&after), fulls(&later));
    assert_eq!(elements(&later), elements(&after), "a quiet resync keeps the counts");
    println!(
        "x/a {}: change syncs {} -> {}, set elements {} -> {}",
        a.ip,
        changes(&before),
        changes(&after),
        elements(&before),
        elements(&after)
    );
    let st = tb.state();
    tb.down().unwrap();
    common::assert_gone(&st);
}
