//! ClusterNetworkPolicies for the synthetic models (`--cnp N`): N policies,
//! Admin and Baseline alternating, priorities spread over 0-1000, subjects
//! by namespace labels (team, name) and by pod labels (app) over the
//! model's namespaces, each with 1-25 rules per direction picked
//! deterministically from the shapes real clusters hold: deny egress to
//! 0.0.0.0/0 after accepting the cluster, let the monitoring namespace in
//! on 9090, deny or pass a team's namespaces, a port range from every
//! namespace, an app's pods on one port, DNS and 443 from one namespace,
//! and in some Baseline policies a final default deny from all namespaces.

use weft_agent::model::{
    Action, ClusterNetworkPolicy, CnpPeer, CnpPort, CnpRule, LabelSelector, Model, NamespacedPods, Protocol,
    Subject, Tier,
};

/// The label of the namespace the monitoring rules let in (ns-0 gets it).
const MONITORING: (&str, &str) = ("monitoring", "true");

/// A deterministic hash of (a, b): the "random-ish" choices of the generator.
fn pick(a: usize, b: usize) -> usize {
    let mut x =
        (a as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (b as u64).wrapping_add(0x632B_E59B_D9B4_E019);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (x ^ (x >> 29)) as usize
}

fn sel(k: &str, v: &str) -> LabelSelector {
    LabelSelector::of_labels([(k, v)])
}

fn tcp(start: u16, end: u16) -> CnpPort {
    CnpPort::Ports { protocol: Protocol::Tcp, start, end }
}

fn rule(action: Action, peers: Vec<CnpPeer>, ports: Vec<CnpPort>) -> CnpRule {
    CnpRule { name: None, action, peers, ports }
}

/// Adds `n` ClusterNetworkPolicies (`cnp-0`..) to `m`, over its namespaces
/// (`ns-<i>`, labelled team) and pods (labelled app); labels ns-0 as the
/// monitoring namespace.
pub fn add_cnps(m: &mut Model, n: usize) {
    if let Some(ns) = m.namespaces.get_mut("ns-0") {
        ns.labels.insert(MONITORING.0.into(), MONITORING.1.into());
    }
    let namespaces = m.namespaces.len().max(1);
    for i in 0..n {
        let tier = if i % 2 == 0 { Tier::Admin } else { Tier::Baseline };
        let (team, app) = (format!("t{}", pick(i, 1) % 10), format!("a{}", pick(i, 2) % 10));
        let subject = match i % 4 {
            0 => Subject::Namespaces(sel("team", &team)),
            1 => Subject::Pods(NamespacedPods { namespaces: sel("team", &team), pods: sel("app", &app) }),
            2 => Subject::Namespaces(sel("kubernetes.io/metadata.name", &format!("ns-{}", i % namespaces))),
            _ => {
                Subject::Pods(NamespacedPods { namespaces: LabelSelector::default(), pods: sel("app", &app) })
            }
        };
        let rules = |dir: usize| -> Vec<CnpRule> {
            // Ingress holds 1-25 rules; egress, in half of the policies, 1-12.
            let count = match dir {
                0 => 1 + pick(i, 3) % 25,
                _ if pick(i, 4).is_multiple_of(2) => 1 + pick(i, 5) % 12,
                _ => 0,
            };
            let mut out: Vec<CnpRule> = (0..count).map(|j| shape(i, j, dir, tier)).collect();
            // Every fifth Baseline policy ends in a default deny from all namespaces.
            if dir == 0 && tier == Tier::Baseline && i % 10 == 1 {
                if let Some(last) = out.last_mut() {
                    *last = rule(Action::Deny, vec![CnpPeer::Namespaces(LabelSelector::default())], vec![]);
                }
            }
            out
        };
        let p = ClusterNetworkPolicy {
            name: format!("cnp-{i}"),
            generation: Some(1),
            tier,
            priority: (i * 1000 / n.max(1)) as u16,
            subject,
            ingress: rules(0),
            egress: rules(1),
        };
        m.cluster_policies.insert(p.name.clone(), p);
    }
}

/// Rule `j` of policy `i` in direction `dir` (0 ingress, 1 egress).
fn shape(i: usize, j: usize, dir: usize, tier: Tier) -> CnpRule {
    let h = pick(i * 31 + dir, j);
    // Baseline has no Pass: the API's CEL rule.
    let action = match (tier, h % 3) {
        (_, 0) => Action::Accept,
        (Tier::Admin, 1) => Action::Pass,
        _ => Action::Deny,
    };
    let k = (h / 3) % 10;
    let v = ((h / 30) % 100) as u16;
    let team = |k: usize| CnpPeer::Namespaces(sel("team", &format!("t{k}")));
    let app = |k: usize| {
        CnpPeer::Pods(NamespacedPods {
            namespaces: sel("team", &format!("t{k}")),
            pods: sel("app", &format!("a{k}")),
        })
    };
    if dir == 1 {
        return match (h / 7) % 5 {
            // The usual pair: the cluster, then nothing else.
            0 => {
                rule(Action::Accept, vec![CnpPeer::Networks(vec!["10.100.0.0/14".parse().unwrap()])], vec![])
            }
            1 => rule(Action::Deny, vec![CnpPeer::Networks(vec!["0.0.0.0/0".parse().unwrap()])], vec![]),
            2 => {
                let net = format!("192.168.{v}.0/24").parse().unwrap();
                rule(Action::Deny, vec![CnpPeer::Networks(vec![net])], vec![tcp(25, 25)])
            }
            3 => rule(action, vec![app(k)], vec![tcp(8000 + v, 8000 + v)]),
            _ => rule(action, vec![team(k)], vec![tcp(6000 + v, 6100 + v)]),
        };
    }
    match (h / 7) % 5 {
        0 => rule(
            Action::Accept,
            vec![CnpPeer::Namespaces(sel(MONITORING.0, MONITORING.1))],
            vec![tcp(9090, 9090)],
        ),
        1 => rule(action, vec![team(k)], vec![]),
        2 => rule(action, vec![CnpPeer::Namespaces(LabelSelector::default())], vec![tcp(6000 + v, 6100 + v)]),
        3 => rule(action, vec![app(k), team((k + 1) % 10)], vec![tcp(8000 + v, 8000 + v)]),
        _ => rule(
            action,
            vec![CnpPeer::Namespaces(sel("kubernetes.io/metadata.name", &format!("ns-{}", h % 100)))],
            vec![tcp(443, 443), CnpPort::Ports { protocol: Protocol::Udp, start: 53, end: 53 }],
        ),
    }
}

/// Edits rule `nth`'s port in one policy (the nth of those with a port,
/// cycling): shifts its first port (range) up by one. False if none has a port.
pub fn change_cnp(m: &mut Model, nth: usize) -> bool {
    let has_port = |p: &ClusterNetworkPolicy| {
        p.ingress.iter().chain(&p.egress).any(|r| r.ports.iter().any(|p| matches!(p, CnpPort::Ports { .. })))
    };
    let count = m.cluster_policies.values().filter(|p| has_port(p)).count();
    if count == 0 {
        return false;
    }
    let Some(p) = m.cluster_policies.values_mut().filter(|p| has_port(p)).nth(nth * 13 % count) else {
        return false;
    };
    p.generation = p.generation.map(|g| g + 1);
    let port = p.ingress.iter_mut().chain(&mut p.egress).flat_map(|r| &mut r.ports).find_map(|p| match p {
        CnpPort::Ports { start, end, .. } => Some((start, end)),
        _ => None,
    });
    let Some((start, end)) = port else { return false };
    // Up by one, back to the bottom at the top of the port space.
    let width = *end - *start;
    *start = if *end == u16::MAX { 1 } else { *start + 1 };
    *end = *start + width;
    true
}
