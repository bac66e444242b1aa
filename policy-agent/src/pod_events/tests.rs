use std::net::Ipv4Addr;

use super::*;

/// Node 1 owns 10.244.1.0/24 and fd00::af4:100/120; pods: x/a on node 1 at .5, x/b on node 1
/// without an address yet, x/far on node 2, x/host on the host network,
/// plus `extra`.
fn model(extra: &str) -> Model {
    let mut text = String::new();
    for n in [1, 2] {
        text +=
            &format!("---\nkind: Node\nmetadata: {{name: node-{n}}}\nspec: {{podCIDRs: [10.244.{n}.0/24, 'fd00::af4:{n}00/120']}}\n");
    }
    text += &pod("a", 1, Some("10.244.1.5"));
    text += &pod("b", 1, None);
    text += &pod("far", 2, None);
    text += &pod("host", 1, None).replace("nodeName: node-1", "nodeName: node-1, hostNetwork: true");
    Model::of_manifests(&(text + extra))
}

fn pod(name: &str, node: u32, ip: Option<&str>) -> String {
    let status = ip.map(|ip| format!("status: {{podIP: {ip}}}\n")).unwrap_or_default();
    format!(
        "---\nkind: Pod\nmetadata: {{name: {name}, namespace: x}}\nspec: {{nodeName: node-{node}}}\n{status}"
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn v4(s: &str) -> Option<std::net::Ipv4Addr> {
    Some(s.parse().unwrap())
}

fn v6(s: &str) -> Option<std::net::Ipv6Addr> {
    Some(s.parse().unwrap())
}

fn claim<'a>(container_id: &'a str, name: &'a str, ips: &'a [IpAddr]) -> Claim<'a> {
    Claim { container_id, ifname: "eth0", namespace: "x", name, ips }
}

const NODE: &str = "node-1";

#[test]
fn add_gives_a_known_pod_its_address_before_the_source_does() {
    let (m, now) = (model(""), Instant::now());
    let mut ev = PodEvents::default();
    ev.add(&m, NODE, &claim("c1", "b", &[ip("10.244.1.6")]), now).unwrap();
    let laid = ev.overlay(&m, NODE);
    assert_eq!(laid.pods["x/b"].ip, v4("10.244.1.6"));
    assert_eq!(ev.ahead(), 1);
    // The policies are shared, not copied (a pod change leaves them as they are).
    assert!(Arc::ptr_eq(&laid.policies, &m.policies));
    // The source catches up: nothing left to lay over, and the same ADD again changes nothing.
    let mut shown = m.clone();
    std::sync::Arc::make_mut(shown.pods.get_mut("x/b").unwrap()).ip = v4("10.244.1.6");
    ev.catch_up(&shown, NODE, now);
    assert_eq!(ev.ahead(), 0);
    assert_eq!(ev.overlay(&shown, NODE), shown);
    ev.add(&shown, NODE, &claim("c1", "b", &[ip("10.244.1.6")]), now).unwrap();
    assert_eq!((ev.ahead(), ev.overlay(&shown, NODE) == shown), (0, true));
    // Its own DEL still releases it while the source shows it.
    assert!(ev.del("c1", "eth0"));
    assert_eq!(ev.overlay(&shown, NODE).pods["x/b"].ip, None);
}

#[test]
fn forged_and_impossible_claims_are_refused_and_change_nothing() {
    let (m, now) = (model(&pod("c", 1, None)), Instant::now());
    let mut ev = PodEvents::default();
    ev.add(&m, NODE, &claim("real", "b", &[ip("10.244.1.6")]), now).unwrap();
    let before = ev.overlay(&m, NODE);
    let many: Vec<IpAddr> = (1..=9).map(|i| ip(&format!("10.244.1.{}", 100 + i))).collect();
    let cases: &[(&str, &str, &[IpAddr], ClaimError)] = &[
        ("f", "a", &many, ClaimError::TooManyAddresses { count: 9 }),
        ("f", "a", &[ip("8.8.8.8")], outside("8.8.8.8")),
        ("f", "a", &[ip("10.244.2.7")], outside("10.244.2.7")),
        ("f", "a", &[ip("10.244.1.0")], outside("10.244.1.0")),
        ("f", "a", &[ip("10.244.1.255")], outside("10.244.1.255")),
        ("f", "ghost", &[ip("10.244.1.9")], ClaimError::UnknownPod { pod: "x/ghost".into() }),
        (
            "f",
            "far",
            &[ip("10.244.1.9")],
            ClaimError::OtherNode { pod: "x/far".into(), node: "node-2".into() },
        ),
        ("f", "host", &[ip("10.244.1.9")], ClaimError::HostNetwork { pod: "x/host".into() }),
        // Another live pod's address: held by an attachment, or shown by the source.
        ("f", "a", &[ip("10.244.1.6")], held("10.244.1.6", "real", "x/b")),
        (
            "f",
            "c",
            &[ip("10.244.1.5")],
            ClaimError::AddressShown { ip: "10.244.1.5".parse().unwrap(), pod: "x/a".into() },
        ),
        // A second container for a pod that has one.
        ("f", "b", &[ip("10.244.1.9")], ClaimError::PodHeld { pod: "x/b".into(), container: "real".into() }),
    ];
    for (container, pod, ips, want) in cases {
        assert_eq!(ev.add(&m, NODE, &claim(container, pod, ips), now).as_ref(), Err(want), "{pod} {ips:?}");
        assert_eq!(ev.overlay(&m, NODE), before, "{want}: enforcement unchanged");
    }
    // A DEL for a container that did not ADD (or whose claim was refused) changes nothing.
    assert!(!ev.del("f", "eth0") && !ev.del("nobody", "eth0"));
    assert_eq!(ev.overlay(&m, NODE), before);
    // No pod CIDR for this node: refused too.
    let no_cidr = ClaimError::NoPodCidr { family: "IPv4" };
    assert_eq!(ev.add(&m, "node-9", &claim("f", "a", &[ip("10.244.1.9")]), now), Err(no_cidr));
}

fn outside(ip: &str) -> ClaimError {
    ClaimError::OutsidePodCidr { ip: ip.parse().unwrap(), cidr: "10.244.1.0/24".parse().unwrap() }
}

fn held(ip: &str, container: &str, pod: &str) -> ClaimError {
    ClaimError::AddressHeld { ip: ip.parse().unwrap(), container: container.into(), pod: pod.into() }
}

#[test]
fn a_forged_add_of_a_shown_address_then_its_del_leaves_the_pod_alone() {
    let (m, now) = (model(""), Instant::now());
    let mut ev = PodEvents::default();
    // x/a is shown at .5: the claim is already in force, so nothing is recorded...
    ev.add(&m, NODE, &claim("forged", "a", &[ip("10.244.1.5")]), now).unwrap();
    assert_eq!(ev.ahead(), 0);
    // ...and the forged container's DEL has nothing to release.
    assert!(!ev.del("forged", "eth0"));
    assert_eq!(ev.overlay(&m, NODE).pods["x/a"].ip, v4("10.244.1.5"));
}

#[test]
fn a_released_address_leaves_the_old_pod_until_the_source_drops_it() {
    let now = Instant::now();
    let m = model(&pod("n", 1, None));
    let mut ev = PodEvents::default();
    ev.add(&m, NODE, &claim("c1", "b", &[ip("10.244.1.6")]), now).unwrap();
    let mut shown = m.clone();
    std::sync::Arc::make_mut(shown.pods.get_mut("x/b").unwrap()).ip = v4("10.244.1.6");
    ev.catch_up(&shown, NODE, now);
    assert!(ev.del("c1", "eth0"));
    assert_eq!(ev.overlay(&shown, NODE).pods["x/b"].ip, None, "the source still shows it");
    // Reused by a new pod n: n has it, the stale b does not.
    ev.add(&shown, NODE, &claim("c2", "n", &[ip("10.244.1.6")]), now).unwrap();
    let o = ev.overlay(&shown, NODE);
    assert_eq!((o.pods["x/b"].ip, o.pods["x/n"].ip), (None, v4("10.244.1.6")));
    // A new state that still shows b there keeps both; once b is gone the release is forgotten.
    ev.catch_up(&shown, NODE, now);
    assert_eq!(ev.overlay(&shown, NODE).pods["x/n"].ip, v4("10.244.1.6"));
    shown.pods.remove("x/b");
    ev.catch_up(&shown, NODE, now);
    assert!(ev.released.is_empty());
    assert_eq!((ev.ahead(), ev.overlay(&shown, NODE).pods["x/n"].ip), (1, v4("10.244.1.6")));
}

#[test]
fn attachments_the_source_never_confirms_expire_and_their_number_is_capped() {
    let now = Instant::now();
    let m = model("");
    let mut ev = PodEvents::default();
    ev.add(&m, NODE, &claim("c1", "b", &[ip("10.244.1.6")]), now).unwrap();
    ev.catch_up(&m, NODE, now + CLAIM_TTL / 2);
    assert_eq!(ev.ahead(), 1, "within its time");
    ev.catch_up(&m, NODE, now + CLAIM_TTL);
    assert_eq!((ev.ahead(), ev.overlay(&m, NODE).pods["x/b"].ip), (0, None), "expired");
    // An expired attachment no longer holds its address (a claim expires what is due first).
    let m = model(&pod("n", 1, None));
    ev.add(&m, NODE, &claim("c1", "b", &[ip("10.244.1.6")]), now).unwrap();
    let taken = ev.add(&m, NODE, &claim("c2", "n", &[ip("10.244.1.6")]), now);
    assert_eq!(taken, Err(held("10.244.1.6", "c1", "x/b")));
    ev.add(&m, NODE, &claim("c2", "n", &[ip("10.244.1.6")]), now + CLAIM_TTL).unwrap();
    assert!(!ev.del("c1", "eth0"));
    ev.del("c2", "eth0");
    let later = now + CLAIM_TTL;
    let mut text = String::new();
    for i in 0..MAX_AHEAD + 1 {
        text += &pod(&format!("p{i}"), 1, None);
    }
    let mut big = model(&text);
    big.nodes.get_mut(NODE).unwrap().pod_cidr = Some("10.240.0.0/12".parse().unwrap());
    for i in 0..MAX_AHEAD {
        let a = [IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 240, 0, 1)) + i as u32))];
        ev.add(&big, NODE, &claim(&format!("k{i}"), &format!("p{i}"), &a), later).unwrap();
    }
    let last = [ip("10.250.0.1")];
    assert_eq!(
        ev.add(&big, NODE, &claim("k", &format!("p{MAX_AHEAD}"), &last), later),
        Err(ClaimError::Full)
    );
    assert_eq!(ev.ahead(), MAX_AHEAD);
}

#[test]
fn the_source_settles_what_an_attachment_said() {
    let now = Instant::now();
    let m = model(&pod("c", 1, None));
    let mut ev = PodEvents::default();
    ev.add(&m, NODE, &claim("k1", "b", &[ip("10.244.1.6")]), now).unwrap();
    ev.add(&m, NODE, &claim("k2", "c", &[ip("10.244.1.7")]), now).unwrap();
    // The source shows pod c at b's address (b's DEL was missed): b's claim goes.
    let mut later = m.clone();
    std::sync::Arc::make_mut(later.pods.get_mut("x/c").unwrap()).ip = v4("10.244.1.6");
    ev.catch_up(&later, NODE, now);
    let o = ev.overlay(&later, NODE);
    assert_eq!((o.pods["x/b"].ip, o.pods["x/c"].ip), (None, v4("10.244.1.7")), "c's own claim stays ahead");
    assert!(!ev.del("k1", "eth0"), "b's attachment is gone");
    // A confirmed attachment whose pod the source moves elsewhere, or deletes, goes.
    std::sync::Arc::make_mut(later.pods.get_mut("x/c").unwrap()).ip = v4("10.244.1.7");
    ev.catch_up(&later, NODE, now);
    assert_eq!(ev.ahead(), 0);
    std::sync::Arc::make_mut(later.pods.get_mut("x/c").unwrap()).node = Some("node-2".into());
    ev.catch_up(&later, NODE, now);
    assert!(!ev.del("k2", "eth0"));
}

#[test]
fn a_dual_stack_add_gives_both_addresses_and_its_del_releases_both() {
    let (m, now) = (model(""), Instant::now());
    let mut ev = PodEvents::default();
    // The first address of each family counts, in whichever order the plugin lists them.
    let ips = [ip("fd00::af4:106"), ip("10.244.1.6"), ip("fd00::af4:107")];
    ev.add(&m, NODE, &claim("c1", "b", &ips), now).unwrap();
    let o = ev.overlay(&m, NODE);
    assert_eq!((o.pods["x/b"].ip, o.pods["x/b"].ip6), (v4("10.244.1.6"), v6("fd00::af4:106")));
    // The source shows both: confirmed, nothing left to lay over.
    let mut shown = m.clone();
    let b = std::sync::Arc::make_mut(shown.pods.get_mut("x/b").unwrap());
    (b.ip, b.ip6) = (v4("10.244.1.6"), v6("fd00::af4:106"));
    ev.catch_up(&shown, NODE, now);
    assert_eq!((ev.ahead(), ev.overlay(&shown, NODE) == shown), (0, true));
    // A DEL from another container releases nothing; the pod's own releases both families.
    assert!(!ev.del("other", "eth0"));
    assert_eq!(ev.overlay(&shown, NODE), shown);
    assert!(ev.del("c1", "eth0"));
    let o = ev.overlay(&shown, NODE);
    assert_eq!((o.pods["x/b"].ip, o.pods["x/b"].ip6), (None, None));
}

#[test]
fn an_ipv6_add_alone_is_laid_over_and_the_source_showing_ipv4_only_confirms_it() {
    let (m, now) = (model(""), Instant::now());
    let mut ev = PodEvents::default();
    ev.add(&m, NODE, &claim("c1", "b", &[ip("fd00::af4:106")]), now).unwrap();
    assert_eq!((ev.ahead(), ev.overlay(&m, NODE).pods["x/b"].ip6), (1, v6("fd00::af4:106")));
    // A source that shows only the IPv4 address (an IPv4-only API view) agrees
    // with a dual claim: confirmed, and the IPv6 address stays laid over.
    let mut ev = PodEvents::default();
    ev.add(&m, NODE, &claim("c1", "b", &[ip("10.244.1.6"), ip("fd00::af4:106")]), now).unwrap();
    let mut shown = m.clone();
    std::sync::Arc::make_mut(shown.pods.get_mut("x/b").unwrap()).ip = v4("10.244.1.6");
    ev.catch_up(&shown, NODE, now + CLAIM_TTL);
    assert_eq!((ev.ahead(), ev.overlay(&shown, NODE).pods["x/b"].ip6), (0, v6("fd00::af4:106")));
    // The source then shows another IPv6 address for it: the attachment goes.
    std::sync::Arc::make_mut(shown.pods.get_mut("x/b").unwrap()).ip6 = v6("fd00::af4:199");
    ev.catch_up(&shown, NODE, now);
    assert!(!ev.del("c1", "eth0"));
}

#[test]
fn forged_ipv6_claims_are_refused_and_change_nothing() {
    let mut m = model(&pod("c", 1, None));
    std::sync::Arc::make_mut(m.pods.get_mut("x/a").unwrap()).ip6 = v6("fd00::af4:105");
    let now = Instant::now();
    let mut ev = PodEvents::default();
    ev.add(&m, NODE, &claim("real", "b", &[ip("10.244.1.6"), ip("fd00::af4:106")]), now).unwrap();
    let before = ev.overlay(&m, NODE);
    let outside6 =
        |s: &str| ClaimError::OutsidePodCidr { ip: ip(s), cidr: "fd00::af4:100/120".parse().unwrap() };
    let cases: &[(&str, &[IpAddr], ClaimError)] = &[
        ("c", &[ip("10.244.1.9"), ip("2001:db8::1")], outside6("2001:db8::1")),
        ("c", &[ip("fd00::af4:209")], outside6("fd00::af4:209")),
        ("c", &[ip("fd00::af4:100")], outside6("fd00::af4:100")),
        // Held by an attachment (in either family), or shown by the source for another pod.
        ("c", &[ip("10.244.1.9"), ip("fd00::af4:106")], held("fd00::af4:106", "real", "x/b")),
        ("c", &[ip("10.244.1.6"), ip("fd00::af4:109")], held("10.244.1.6", "real", "x/b")),
        (
            "c",
            &[ip("10.244.1.9"), ip("fd00::af4:105")],
            ClaimError::AddressShown { ip: ip("fd00::af4:105"), pod: "x/a".into() },
        ),
    ];
    for (pod, ips, want) in cases {
        assert_eq!(ev.add(&m, NODE, &claim("f", pod, ips), now).as_ref(), Err(want), "{pod} {ips:?}");
        assert_eq!(ev.overlay(&m, NODE), before, "{want}: enforcement unchanged");
    }
    // A node without an IPv6 pod CIDR refuses an IPv6 address.
    m.nodes.get_mut(NODE).unwrap().pod_cidr6 = None;
    let got = ev.add(&m, NODE, &claim("f", "c", &[ip("10.244.1.9"), ip("fd00::af4:109")]), now);
    assert_eq!(got, Err(ClaimError::NoPodCidr { family: "IPv6" }));
}
