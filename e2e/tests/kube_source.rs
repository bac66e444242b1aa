//! `weft-agent --source kube` end to end, through the testbed's stand-in API
//! server (root; skips otherwise): agents list and watch the four kinds and
//! enforce what they read; a watch that expires (410 Gone) makes them list
//! again and the state they missed applies; while the API server is down the
//! rules in force stay, the status says it is unreachable, and the agents
//! catch up once it is back. The whole conformance suite through the kube
//! source is in tests/conformance.rs.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{pod_testbed, root_or_skip};
use weft_e2e::probe::{probe_in, Outcome, Proto};
use weft_e2e::{Pod, Testbed};

const PROBE: Duration = Duration::from_millis(1500);
const CONVERGE: Duration = Duration::from_secs(20);
/// Bound on agents noticing the API server is gone (a broken watch, then a
/// failed list) and on their back-off letting them back in (at most 8 s).
const NOTICE: Duration = Duration::from_secs(20);

const DENY_B: &str = "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\n\
    metadata: {name: deny-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  \
    ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: c}}\n";

fn probe(from: &Pod, to: &Pod) -> Outcome {
    probe_in(&from.netns, SocketAddr::from((to.ip, 80)), Proto::Tcp, PROBE).unwrap()
}

fn connects(from: &Pod, to: &Pod) -> bool {
    probe(from, to) == Outcome::Connected(to.name.clone())
}

fn blocked(from: &Pod, to: &Pod) -> bool {
    matches!(probe(from, to), Outcome::Timeout | Outcome::Refused)
}

/// A 2-node testbed whose agents (iptables backend) read through the
/// stand-in, and pods x/a and x/c on node 1, x/b on node 2, added after the
/// agents started (so each CNI ADD waits for its pod to show in the API).
fn kube_testbed() -> (Testbed, Pod, Pod, Pod) {
    let mut tb = pod_testbed(2);
    tb.start_standin().unwrap();
    tb.start_agents_with(&["--backend", "iptables"]).unwrap();
    let a = tb.add_pod(1, "x/a").unwrap();
    let b = tb.add_pod(2, "x/b").unwrap();
    let c = tb.add_pod(1, "x/c").unwrap();
    let st = tb.wait_converged(CONVERGE).unwrap();
    assert!(st.iter().all(|s| s.errors.is_empty() && s.policy.is_some()), "{st:?}");
    (tb, a, b, c)
}

fn agent_log(tb: &Testbed, n: u32) -> String {
    std::fs::read_to_string(weft_e2e::run::run_dir(&tb.run()).join(format!("agent-n{n}.log")))
        .unwrap_or_default()
}

#[test]
fn agents_read_the_api_and_enforce_a_policy() {
    if !root_or_skip("agents_read_the_api_and_enforce_a_policy") {
        return;
    }
    let (tb, a, b, c) = kube_testbed();
    let standin = tb.standin().unwrap();
    // Each agent listed every kind once (no re-list: nothing failed).
    let stats = standin.stats();
    for kind in ["Node", "Namespace", "Pod", "NetworkPolicy"] {
        assert_eq!(stats.lists.get(kind), Some(&2), "{kind}: {stats:?}");
    }
    assert_eq!(stats.watches, 8, "four watches per agent: {stats:?}");
    // The agents applied the API state, not the directory: their generation is the stand-in's.
    let served = standin.served().unwrap();
    assert!(served.generation.starts_with("kube-"), "{served:?}");
    assert!(tb.agent_status(1).is_some_and(|s| s.generation == served.generation));
    assert_eq!(served.dir_generation, weft_agent::source::read_dir(&tb.cluster_dir()).generation);
    assert!(connects(&a, &b) && connects(&c, &b), "no policy yet");

    tb.apply(DENY_B).unwrap();
    let st = tb.wait_converged(CONVERGE).unwrap();
    assert_eq!(st[1].policy.as_ref().map(|p| p.ingress_isolated), Some(1), "{st:?}");
    assert!(blocked(&a, &b), "x/a -> x/b is denied by deny-b");
    assert!(connects(&c, &b), "x/c -> x/b is allowed by deny-b");
    // Pods on the other node: node 2's agent learned them from the API.
    assert!(agent_log(&tb, 2).contains("kube API: watching http://127.0.0.1:"), "{}", agent_log(&tb, 2));
}

#[test]
fn an_expired_watch_lists_again_and_the_missed_state_applies() {
    if !root_or_skip("an_expired_watch_lists_again_and_the_missed_state_applies") {
        return;
    }
    let (tb, a, b, c) = kube_testbed();
    let standin = tb.standin().unwrap();
    let before = standin.stats();
    // The policy reaches the API while no event reaches the watches; then the
    // history is forgotten: only a new list can carry it.
    standin.freeze();
    tb.apply(DENY_B).unwrap();
    standin.expire();
    let st = tb.wait_converged(CONVERGE).unwrap();
    assert_eq!(st[1].policy.as_ref().map(|p| p.ingress_isolated), Some(1), "{st:?}");
    assert!(st.iter().all(|s| s.errors.is_empty()), "a 410 is not an error to report: {st:?}");
    let after = standin.stats();
    assert!(after.expired >= 8, "every watch ended with 410: {after:?}");
    for kind in ["Node", "Namespace", "Pod", "NetworkPolicy"] {
        let (was, now) = (before.lists[kind], after.lists[kind]);
        assert!(now >= was + 2, "{kind}: each agent listed again ({was} -> {now})");
    }
    for n in 1..=2 {
        assert!(
            agent_log(&tb, n).contains("watch expired (410 Gone): listing again"),
            "{}",
            agent_log(&tb, n)
        );
    }
    assert!(blocked(&a, &b), "the policy the re-list brought is enforced");
    assert!(connects(&c, &b));
}

#[test]
fn rules_stay_while_the_api_is_down_and_follow_it_once_back() {
    if !root_or_skip("rules_stay_while_the_api_is_down_and_follow_it_once_back") {
        return;
    }
    let (tb, a, b, c) = kube_testbed();
    tb.apply(DENY_B).unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    assert!(blocked(&a, &b) && connects(&c, &b));
    let standin = tb.standin().unwrap();
    standin.down();
    let unreachable = |n| {
        tb.agent_status(n)
            .is_some_and(|s| s.errors.iter().any(|e| e.contains("the API server is unreachable")))
    };
    assert!(
        weft_e2e::wait_until(NOTICE, || unreachable(1) && unreachable(2)),
        "statuses: {:?} {:?}",
        tb.agent_status(1),
        tb.agent_status(2)
    );
    // Several resyncs later, the rules are still the ones in force.
    for n in [1, 2] {
        tb.wait_syncs(n, 3, NOTICE).unwrap();
    }
    assert!(unreachable(2));
    assert!(tb.agent_status(2).unwrap().policy.is_some_and(|p| p.ingress_isolated == 1));
    assert!(blocked(&a, &b), "still denied while the API is down");
    assert!(connects(&c, &b), "still allowed while the API is down");

    // A change while down reaches the agents once the API server is back.
    assert!(tb.delete_object("NetworkPolicy", Some("x"), "deny-b").unwrap());
    standin.up().unwrap();
    tb.wait_converged(CONVERGE + NOTICE).unwrap();
    assert!(connects(&a, &b), "the deletion applied after the API came back");
    // Kinds that did not change may still be backing off: the errors clear as
    // each one lists again.
    let clear = |n| tb.agent_status(n).is_some_and(|s| s.errors.is_empty());
    assert!(
        weft_e2e::wait_until(NOTICE, || clear(1) && clear(2)),
        "recovered: {:?} {:?}",
        tb.agent_status(1),
        tb.agent_status(2)
    );
    assert!(agent_log(&tb, 1).contains("listed again; the API server is reachable"), "{}", agent_log(&tb, 1));
}
