//! ClusterNetworkPolicy with real packets, on each backend: pods on a bridge
//! in a node namespace of the test's own, policies from manifests compiled
//! by the agent's engine and applied as the agent does (a change of
//! ClusterNetworkPolicy is structural). The Admin tier decides before
//! NetworkPolicy (Deny beats its allow, Accept its isolation, Pass leaves
//! the decision to it), Baseline after it and only for pods it does not
//! isolate; an Accept on one port before a Deny of everything splits the
//! port space; an egress Accept still meets the destination's ingress
//! policy; and when the last ClusterNetworkPolicy goes, so do its objects.

#[path = "support/pods.rs"]
mod pods;

use weft_agent::backend::{self, BackendChoice};
use weft_agent::model::{parse_manifests, Model};
use weft_agent::policy::{Options, PolicyEngine};
use weft_netkit::netns::run_in_new;

use pods::{addr4, addr6, bridge, PodNs};

/// node-1, and node-2 whose pod CIDR holds the bridge's upper half (pod g
/// there is one node-1 has not heard of yet).
const NODE: &str = "
kind: Node
metadata: {name: node-1}
spec: {podCIDRs: [10.244.1.0/25, 'fd00:244:1::/64']}
---
kind: Node
metadata: {name: node-2}
spec: {podCIDRs: [10.244.1.128/25]}
";

/// The pods (name, app, n): servers a (2) and e (6), clients b, c, d, f.
const PODS: [(&str, &str, u8); 6] =
    [("a", "a", 2), ("b", "b", 3), ("c", "c", 4), ("d", "d", 5), ("e", "e", 6), ("f", "f", 7)];

/// A pod of namespace x on node-1 with `app: <app>`, at 10.244.1.`n` and fd00:244:1::`n`.
fn pod(name: &str, app: &str, n: u8) -> String {
    format!(
        "---\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {app}}}}}\n\
         spec: {{nodeName: node-1}}\nstatus: {{podIPs: [{{ip: 10.244.1.{n}}}, {{ip: 'fd00:244:1::{n}'}}]}}\n"
    )
}

/// The pods of any namespace with `app: <app>`, as a ClusterNetworkPolicy peer or subject.
fn app(app: &str) -> String {
    format!("{{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: {app}}}}}}}}}")
}

/// A ClusterNetworkPolicy on the pods `subject` selects, with `rules` in `dir`.
fn cnp(name: &str, tier: &str, prio: u16, subject: &str, dir: &str, rules: &[String]) -> String {
    let rules: String = rules.iter().map(|r| format!("    - {r}\n")).collect();
    format!(
        "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\n\
         spec:\n  tier: {tier}\n  priority: {prio}\n  subject: {subject}\n  {dir}:\n{rules}"
    )
}

/// NetworkPolicy `name` selecting `app`: `spec` is the rest of its spec.
fn np(name: &str, app: &str, spec: &str) -> String {
    format!(
        "---\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\n\
         spec: {{podSelector: {{matchLabels: {{app: {app}}}}}, {spec}}}\n"
    )
}

/// The node, the pods and `policies`.
fn model(policies: &[String]) -> Model {
    let pods: String = PODS.iter().map(|(name, app, n)| pod(name, app, *n)).collect();
    let text = format!("{NODE}{pods}{}", policies.concat());
    parse_manifests(&text).unwrap_or_else(|e| panic!("{e}\n{text}")).into_iter().collect()
}

/// a isolated for ingress, admitting b and c; f isolated for egress,
/// admitting nothing. Admin, on a's ingress: Deny from c, Accept from d,
/// Pass from b and f, Deny the rest; on f's egress: Accept everything.
/// Baseline, on everyone's ingress: Deny from b.
fn tiers() -> Model {
    let from = |action: &str, peers: &[&str]| {
        let peers: Vec<String> = peers.iter().map(|p| app(p)).collect();
        format!("{{action: {action}, from: [{}]}}", peers.join(", "))
    };
    model(&[
        np("a-from-b-c", "a", "ingress: [{from: [{podSelector: {matchLabels: {app: b}}}, {podSelector: {matchLabels: {app: c}}}]}]"),
        np("f-no-egress", "f", "policyTypes: [Egress]"),
        cnp(
            "admin-a",
            "Admin",
            1,
            &app("a"),
            "ingress",
            &[
                from("Deny", &["c"]),
                from("Accept", &["d"]),
                from("Pass", &["b", "f"]),
                "{action: Deny, from: [{namespaces: {}}]}".into(),
            ],
        ),
        cnp("admin-f", "Admin", 2, &app("f"), "egress", &["{action: Accept, to: [{namespaces: {}}]}".into()]),
        cnp("base", "Baseline", 1, "{namespaces: {}}", "ingress", &[from("Deny", &["b"])]),
    ])
}

/// Admin on e's ingress: Accept from d on TCP 80, then Deny everything.
fn port_split() -> Model {
    model(&[cnp(
        "split",
        "Admin",
        1,
        &app("e"),
        "ingress",
        &[
            format!(
                "{{action: Accept, from: [{}], protocols: [{{tcp: {{destinationPort: {{number: 80}}}}}}]}}",
                app("d")
            ),
            "{action: Deny, from: [{namespaces: {}}]}".into(),
        ],
    )])
}

/// `m` with pod g (app g) on node-2 at 10.244.1.250.
fn with_g(mut m: Model) -> Model {
    let g = "kind: Pod\nmetadata: {name: g, namespace: x, labels: {app: g}}\nspec: {nodeName: node-2}\n\
             status: {podIP: 10.244.1.250}\n";
    for o in parse_manifests(g).unwrap() {
        assert!(m.insert(o));
    }
    m
}

/// 70 more pods of node-1 (no namespace of their own: only the model has
/// them) with `app: crowd`, and an Admin Deny of TCP 80 from the pods of
/// `apps` (the crowd and c) to every pod: 76 subjects x 71 peers, past what the verdict sets
/// spell out (`MAX_REGION_ELEMENTS`), so one rule over a subjects set and a
/// peers set carries it.
fn crowd(apps: &str) -> Model {
    // Every other address, so that the peers do not aggregate into a few networks.
    let crowd: Vec<String> =
        (0..70).map(|i| 100 + 2 * i).map(|n| pod(&format!("crowd-{n}"), "crowd", n)).collect();
    let deny = cnp(
        "crowd",
        "Admin",
        1,
        "{namespaces: {}}",
        "ingress",
        &[format!(
            "{{action: Deny, from: [{{pods: {{namespaceSelector: {{}}, podSelector: {{matchExpressions: \
             [{{key: app, operator: In, values: [{apps}]}}]}}}}}}], protocols: [{{tcp: {{destinationPort: {{number: 80}}}}}}]}}"
        )],
    );
    model(&[crowd.concat(), deny])
}

/// a isolated for ingress, admitting b and c; no ClusterNetworkPolicy.
fn network_policy_only() -> Model {
    model(&[np(
        "a-from-b-c",
        "a",
        "ingress: [{from: [{podSelector: {matchLabels: {app: b}}}, {podSelector: {matchLabels: {app: c}}}]}]",
    )])
}

/// `choice` enforces ClusterNetworkPolicy's tiers; `cnp_objects` lists the
/// backend's ClusterNetworkPolicy objects in the kernel (none once the last
/// policy goes).
fn tiers_are_enforced(choice: BackendChoice, cnp_objects: fn() -> Vec<String>) {
    run_in_new(|| {
        bridge();
        let [a, b, c, d, e, f] = PODS.map(|(name, _, n)| PodNs::new(name, n));
        let (to_a, to_e) = (addr4(2), addr4(6));
        let _servers = [a.serve(to_a, 80), a.serve(addr6(2), 80), e.serve(to_e, 80), e.serve(to_e, 81)];
        assert!(c.connects(to_a, 80) && b.connects(to_e, 81), "before weft applies anything, all is open");

        let mut now = tiers();
        let mut engine = PolicyEngine::new(&now, "node-1", &[], Options::default());
        engine.take_dirty();
        let mut backend = backend::start(choice).unwrap();
        backend.apply(engine.ir(), true).unwrap();
        assert!(!cnp_objects().is_empty(), "ClusterNetworkPolicy is in the kernel");
        assert!(!c.connects(to_a, 80), "the Admin Deny beats the NetworkPolicy that admits c");
        assert!(!c.connects(addr6(2), 80), "in IPv6 too");
        assert!(d.connects(to_a, 80) && d.connects(addr6(2), 80), "the Admin Accept beats a's isolation");
        assert!(b.connects(to_a, 80), "Pass: the NetworkPolicy admits b ...");
        assert!(!f.connects(to_a, 80), "... and not f");
        assert!(!b.connects(to_e, 80), "the Baseline Deny holds for e, which no NetworkPolicy isolates");
        assert!(c.connects(to_e, 80) && d.connects(to_e, 81), "Baseline denies b only");
        assert!(
            f.connects(to_e, 80),
            "f's egress Accept beats its egress isolation, and e's ingress admits it"
        );
        assert!(!f.pings(to_a), "f's egress Accept still meets a's ingress (Pass, then its NetworkPolicy)");
        assert!(a.connects(to_e, 80), "a's egress meets no policy, and the replies pass");
        // g, at an address of node-2's pod CIDR that no pod has yet: it may
        // be b, so the Baseline's Deny from b holds it; once known, it is not b.
        let g = PodNs::new("g", 250);
        assert!(!g.connects(to_e, 80), "a pod not known yet meets the Deny that may be meant for it");
        assert!(c.connects(to_e, 80), "known pods as before");

        // A change of ClusterNetworkPolicy, applied as the agent applies one;
        // true if a region of the Admin ingress is a rule of its own.
        // Also what the backend said it did.
        let mut change = |next: Model| -> (bool, String) {
            engine.update(&now, &next);
            let dirty = engine.take_dirty();
            // The chains come with the first policy and go with the last;
            // in between the regions change (nftables patches elements).
            assert!(dirty.structural || dirty.cluster(), "{dirty:?}");
            let done = backend.apply_changes(engine.ir(), &dirty).unwrap();
            now = next;
            let grouped =
                engine.ir().v4.cluster.admin_ingress.iter().any(|c| c.regions.iter().any(|r| c.grouped(r)));
            (grouped, done.change.unwrap_or_default())
        };
        change(with_g(tiers()));
        assert!(g.connects(to_e, 80), "g is known now, and not b");
        change(port_split());
        assert!(d.connects(to_e, 80), "the Accept on TCP 80 comes first");
        assert!(!d.connects(to_e, 81), "the Deny takes every other port");
        assert!(!c.connects(to_e, 80) && !d.pings(to_e), "and every other peer and protocol");
        assert!(c.connects(to_a, 80) && b.connects(to_a, 80), "a has only its NetworkPolicy now");

        assert!(change(crowd("crowd, c")).0, "the crowd's region is a rule of its own");
        assert!(!c.connects(to_a, 80) && !c.connects(to_e, 80), "the Admin Deny holds through that rule");
        assert!(c.connects(to_e, 81) && b.connects(to_a, 80), "and only for TCP 80 from the crowd and c");
        assert!(!c.connects(addr6(2), 80), "in IPv6 too");
        assert!(d.connects(to_a, 80), "d is not in the crowd yet");
        // d joins the region's peers: its sets' members change, its rule stays.
        let rules_before = cnp_objects();
        let (grouped, how) = change(crowd("crowd, c, d"));
        assert_eq!(cnp_objects(), rules_before, "the same rules and sets in the kernel: {how}");
        assert!(grouped);
        assert!(!d.connects(to_a, 80) && !d.connects(addr6(2), 80), "d is denied now: {how}");
        assert!(
            !how.contains("groups changed") && !how.contains("replaced") && !how.contains("chains written"),
            "a peer joining a grouped region patches elements: {how}"
        );
        if choice == BackendChoice::Iptables {
            assert!(
                how.contains("sets patched over netlink"),
                "iptables patches members over netlink: {how}"
            );
        }

        change(network_policy_only());
        assert_eq!(cnp_objects(), Vec::<String>::new(), "the last ClusterNetworkPolicy took its objects");
        assert!(c.connects(to_a, 80) && !d.connects(to_a, 80), "NetworkPolicy alone decides");
        assert!(b.connects(to_e, 80) && d.connects(to_e, 81), "e is open again");

        backend.cleanup().unwrap();
        assert!(d.connects(to_a, 80), "cleanup removes everything");
    })
    .expect("a netns of its own");
}

/// True when root; otherwise the test skips (fails under CI).
fn root() -> bool {
    weft_test_support::root_or_skip(&weft_test_support::this_test(), "network namespaces of its own")
}

/// weft's ClusterNetworkPolicy chains (in both tables and families) and sets.
fn iptables_cnp_objects() -> Vec<String> {
    let output = |argv: &[&str]| {
        let out = std::process::Command::new(argv[0]).args(&argv[1..]).output().unwrap();
        assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let mut found = Vec::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        for table in ["mangle", "filter"] {
            let save = output(&[tool, "-t", table]);
            found.extend(
                save.lines().filter(|l| l.contains("WEFT-CNP-")).map(|l| format!("{tool} {table}: {l}")),
            );
        }
    }
    let sets = output(&["ipset", "list", "-n"]);
    let cnp_set = |s: &&str| {
        ["weft-admin-", "weft-base-", "weft-cs-", "weft-cp-", "weft-6s-", "weft-6p-"]
            .iter()
            .any(|p| s.starts_with(p))
    };
    found.extend(sets.lines().filter(cnp_set).map(String::from));
    found
}

#[test]
fn tiers_are_enforced_on_iptables() {
    if root() {
        tiers_are_enforced(BackendChoice::Iptables, iptables_cnp_objects);
    }
}

/// weft's ClusterNetworkPolicy chains with their rules (and the rules'
/// handles: a rewrite changes them) and sets in its nftables table.
fn nftables_cnp_objects() -> Vec<String> {
    let out =
        std::process::Command::new("nft").args(["-a", "list", "table", "inet", "weft"]).output().unwrap();
    assert!(out.status.success(), "nft list: {}", String::from_utf8_lossy(&out.stderr));
    let mut found = Vec::new();
    let mut in_cnp_chain = false;
    for l in String::from_utf8(out.stdout).unwrap().lines().map(str::trim) {
        if l.starts_with("chain ") {
            in_cnp_chain = l.starts_with("chain cnp_");
        } else if l.starts_with("set ") || l == "}" {
            in_cnp_chain = false;
        }
        if in_cnp_chain || l.starts_with("set cnp") {
            found.push(l.to_string());
        }
    }
    found
}

#[test]
fn tiers_are_enforced_on_nftables() {
    if root() {
        tiers_are_enforced(BackendChoice::Nftables, nftables_cnp_objects);
    }
}
