//! IPv6 policy with real packets: dual-stack pods on a bridge in a node
//! namespace of the test's own (each pod a namespace of its own, held by a
//! child process), on both backends, which enforce IPv6 policy as IPv4's: an
//! isolated pod gets exactly what its policies allow (a triple, a group, a
//! port group; TCP connections and their replies), and a pod that joins the
//! allowed peers is admitted by the incremental path. Both fail closed: an
//! address of the node's IPv6 pod CIDR that no pod holds gets nothing; pods
//! no policy selects, and replies, pass.

#[path = "support/pods.rs"]
mod pods;

use weft_agent::backend::{self, BackendChoice};
use weft_agent::model::{parse_manifests, Model, Protocol};
use weft_agent::nft::{render, Nft};
use weft_agent::policy::{
    Dirty, DirtyDirection, FamilyDirty, Group, GroupPorts, Options, PolicyEngine, PolicyIr, PortGroup,
};
use weft_netkit::netns::run_in_new;

use pods::{addr6, bridge, PodNs};

const NODE: &str = "
kind: Node
metadata: {name: node-1}
spec: {podCIDRs: [10.244.1.0/24, 'fd00:244:1::/64']}
---
kind: NetworkPolicy
metadata: {name: a-no-ingress, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}}
---
kind: NetworkPolicy
metadata: {name: a-from-c, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {matchLabels: {app: c}}}]}]}
---
kind: NetworkPolicy
metadata: {name: b-no-egress, namespace: x}
spec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Egress]}
";

/// A pod of namespace x on node-1 with `app: <app>`, at 10.244.1.`n` and fd00:244:1::`n`.
fn pod(name: &str, app: &str, n: u8) -> String {
    format!(
        "---\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {app}}}}}\n\
         spec: {{nodeName: node-1}}\nstatus: {{podIPs: [{{ip: 10.244.1.{n}}}, {{ip: 'fd00:244:1::{n}'}}]}}\n"
    )
}

/// The pods (name, app, n).
fn model(pods: &[(&str, &str, u8)]) -> Model {
    let text = NODE.to_string() + &pods.iter().map(|(name, app, n)| pod(name, app, *n)).collect::<String>();
    parse_manifests(&text).unwrap().into_iter().collect()
}

/// True when root; otherwise the test skips (fails under CI).
fn root() -> bool {
    weft_test_support::root_or_skip(&weft_test_support::this_test(), "network namespaces of its own")
}

/// `choice` enforces IPv6 policy: an isolated pod gets what it allows.
fn isolated_pods_get_what_ipv6_policy_allows(choice: BackendChoice) {
    run_in_new(|| {
        bridge();
        let (a, b, c, d) = (PodNs::new("a", 2), PodNs::new("b", 3), PodNs::new("c", 4), PodNs::new("d", 5));
        let (u, e) = (PodNs::new("u", 9), PodNs::new("e", 6));
        assert!(d.pings(addr6(2)) && u.pings(addr6(4)), "before weft applies anything, IPv6 is open");

        let known = model(&[("a", "a", 2), ("b", "b", 3), ("c", "c", 4), ("d", "d", 5)]);
        let mut engine = PolicyEngine::new(&known, "node-1", &[], Options::default());
        engine.take_dirty();
        let mut backend = backend::start(choice).unwrap();
        backend.apply(engine.ir(), true).unwrap();
        assert!(c.pings(addr6(2)), "a admits c, on every port and protocol");
        assert!(!d.pings(addr6(2)), "a is isolated for ingress, and admits nothing from d");
        assert!(a.pings(addr6(4)), "a may open connections, and their replies pass");
        assert!(!b.pings(addr6(4)), "b is isolated for egress");
        assert!(c.pings(addr6(3)), "b may be reached");
        assert!(
            !u.pings(addr6(4)) && !c.pings(addr6(9)) && !e.pings(addr6(4)),
            "no known pod holds u's or e's address"
        );

        // u's pod appears, and e's, which a-from-c selects: the change is
        // patched in, u is a pod like d and e one like c.
        let now = model(&[
            ("a", "a", 2),
            ("b", "b", 3),
            ("c", "c", 4),
            ("d", "d", 5),
            ("u", "u", 9),
            ("e", "c", 6),
        ]);
        engine.update(&known, &now);
        let dirty = engine.take_dirty();
        assert!(!dirty.v6.is_empty() && !dirty.structural, "{dirty:?}");
        backend.apply_changes(engine.ir(), &dirty).unwrap();
        assert!(u.pings(addr6(4)) && c.pings(addr6(9)), "u is known now");
        assert!(!u.pings(addr6(2)), "and a stays isolated");
        assert!(e.pings(addr6(2)), "e joined a's allowed peers");

        backend.cleanup().unwrap();
        assert!(d.pings(addr6(2)), "cleanup removes the guard with the rest");
    })
    .expect("a netns of its own");
}

#[test]
fn isolated_pods_get_what_ipv6_policy_allows_on_iptables() {
    if root() {
        isolated_pods_get_what_ipv6_policy_allows(BackendChoice::Iptables);
    }
}

#[test]
fn isolated_pods_get_what_ipv6_policy_allows_on_nftables() {
    if root() {
        isolated_pods_get_what_ipv6_policy_allows(BackendChoice::Nftables);
    }
}

/// The port group's key in `ipv6_ir`.
const PORT_GROUP: u64 = 2;

/// a (fd00:244:1::2) isolated for ingress, admitting b on TCP 80 (a triple),
/// everything from fd00:244:1::10/124 (a group) and TCP 443 from p (a port
/// group); b, c, g (::11), p (::7) known pods, d (::5) too, u (::9) not.
fn ipv6_ir() -> PolicyIr {
    let mut ir = PolicyIr::default();
    let host = |n: u8| ipnetwork::Ipv6Network::new(addr6(n), 128).unwrap();
    let a = addr6(2);
    ir.v6.pod_cidr = Some("fd00:244:1::/64".parse().unwrap());
    ir.v6.cluster_cidr = Some("fd00:244::/48".parse().unwrap());
    ir.v6.local = [2, 3, 4, 5, 7, 11].map(addr6).into();
    ir.v6.ingress.isolated.insert(a);
    ir.v6.ingress.triples.insert((a, Protocol::Tcp, 80, host(3)));
    ir.v6.ingress.groups.push(Group {
        key: 1,
        targets: [a].into(),
        peers: vec!["fd00:244:1::10/124".parse().unwrap()],
        ports: GroupPorts::All,
    });
    ir.v6.ingress.port_groups.push(PortGroup {
        key: PORT_GROUP,
        targets: [(a, Protocol::Tcp, 443)].into(),
        peers: vec![host(7)],
    });
    ir
}

#[test]
fn ipv6_tcp_passes_exactly_as_policy_allows_on_nftables() {
    if !root() {
        return;
    }
    run_in_new(|| {
        bridge();
        let (a, b, c, d) = (PodNs::new("a", 2), PodNs::new("b", 3), PodNs::new("c", 4), PodNs::new("d", 5));
        let (p, g, u) = (PodNs::new("p", 7), PodNs::new("g", 11), PodNs::new("u", 9));
        let _servers =
            [a.serve(addr6(2), 80), a.serve(addr6(2), 443), a.serve(addr6(2), 8080), c.serve(addr6(4), 80)];
        assert!(
            c.connects(addr6(2), 443) && u.connects(addr6(2), 80),
            "before weft applies anything, IPv6 is open"
        );

        let mut ir = ipv6_ir();
        let mut nft = Nft::new();
        assert!(nft.apply(&render(&ir), false).unwrap().replaced);
        assert!(b.connects(addr6(2), 80), "the triple admits b on TCP 80, and the replies pass");
        assert!(
            !b.connects(addr6(2), 443) && !c.connects(addr6(2), 80),
            "nothing else from b, nothing from c"
        );
        assert!(
            g.connects(addr6(2), 80) && g.connects(addr6(2), 8080) && g.pings(addr6(2)),
            "the group admits g on every port"
        );
        assert!(
            p.connects(addr6(2), 443) && !p.connects(addr6(2), 80),
            "the port group admits p on TCP 443 only"
        );
        assert!(!d.connects(addr6(2), 443), "d is not (yet) a peer of the port group");
        assert!(
            !u.connects(addr6(2), 80) && !u.pings(addr6(4)) && !a.pings(addr6(9)),
            "no known pod has u's address"
        );
        assert!(a.connects(addr6(4), 80), "a is not isolated for egress: it reaches c, and c's replies pass");

        // d joins the port group's peers: a patch of the peers set.
        ir.v6.ingress.port_groups[0].peers.push(ipnetwork::Ipv6Network::new(addr6(5), 128).unwrap());
        let dirty = Dirty {
            v6: FamilyDirty {
                ingress: DirtyDirection { peers: [PORT_GROUP].into(), ..DirtyDirection::default() },
                ..FamilyDirty::default()
            },
            ..Dirty::default()
        };
        let done = nft.apply_changes(&ir, &dirty).unwrap().expect("a patch");
        assert!(done.netlink && done.added == 1 && done.deleted == 0, "{done:?}");
        assert!(
            d.connects(addr6(2), 443) && !d.connects(addr6(2), 80),
            "d is admitted on TCP 443 now, and only there"
        );
        assert!(p.connects(addr6(2), 443) && !c.connects(addr6(2), 443), "p still is, c still is not");
        nft.cleanup().unwrap();
    })
    .expect("a netns of its own");
}
