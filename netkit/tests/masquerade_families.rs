//! Dual-stack masquerade with real packets, in a node netns of the test's own
//! (root; skips otherwise): a pod with an IPv4 and an IPv6 address behind the
//! node, an outside host that has no route back to the pod network (so a
//! reply arrives only if the node masqueraded), and another node's pod in
//! each family's cluster CIDR, which must see the pod's own address. Run for
//! iptables (ip6tables in the same mode) and for the nftables table.

mod common;

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::{isolate, tool_output, PodNs};
use ipnetwork::IpNetwork;
use weft_netkit::masquerade::{self, MasqBackend};
use weft_netkit::netns::run_in;
use weft_netkit::sysctl::ensure_sysctl;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn name(ns: &PodNs) -> String {
    ns.path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Runs `ip` with each of `cmds` (in the calling thread's netns, or `-n NS`).
fn ip(ns: Option<&PodNs>, cmds: &[&str]) {
    for cmd in cmds {
        let mut args: Vec<String> = ns.map(|n| vec!["-n".to_string(), name(n)]).unwrap_or_default();
        args.extend(cmd.split_whitespace().map(str::to_string));
        tool_output("ip", &args.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

/// Node (this netns): `vp` to the pod (10.244.1.1, fd00::af4:101), `vo` to
/// the outside (192.0.2.1, 2001:db8::1). Pod: 10.244.1.5, fd00::af4:105.
/// Outside: 192.0.2.2 and 2001:db8::2 with no route to the pods, plus
/// 10.244.2.5 and fd00::af4:205 (another node's pod) that route back via the node.
fn wire(pod: &PodNs, out: &PodNs) {
    let (p, o) = (name(pod), name(out));
    ip(
        None,
        &[
            &format!("link add vp type veth peer name eth0 netns {p}"),
            &format!("link add vo type veth peer name eth0 netns {o}"),
            "addr add 10.244.1.1/24 dev vp",
            "addr add fd00::af4:101/120 dev vp nodad",
            "addr add 192.0.2.1/24 dev vo",
            "addr add 2001:db8::1/64 dev vo nodad",
            "link set vp up",
            "link set vo up",
            "route add 10.244.2.0/24 via 192.0.2.2",
            "route add fd00::af4:200/120 via 2001:db8::2",
        ],
    );
    ip(
        Some(pod),
        &[
            "link set lo up",
            "link set eth0 up",
            "addr add 10.244.1.5/24 dev eth0",
            "addr add fd00::af4:105/120 dev eth0 nodad",
            "route add default via 10.244.1.1",
            "route add default via fd00::af4:101",
        ],
    );
    ip(
        Some(out),
        &[
            "link set lo up",
            "link set eth0 up",
            "addr add 192.0.2.2/24 dev eth0",
            "addr add 2001:db8::2/64 dev eth0 nodad",
            "addr add 10.244.2.5/32 dev lo",
            "addr add fd00::af4:205/128 dev lo nodad",
            "route add 10.244.1.0/24 via 192.0.2.1",
            "route add fd00::af4:100/120 via 2001:db8::1",
        ],
    );
    ensure_sysctl("net/ipv4/ip_forward", "1").unwrap();
    ensure_sysctl("net/ipv6/conf/all/forwarding", "1").unwrap();
}

/// The source address the outside host sees for a TCP connection from the pod to `dst`.
fn seen_from_pod(pod: &PodNs, out: &PodNs, dst: IpAddr) -> IpAddr {
    let to = SocketAddr::new(dst, 8080);
    let listener = run_in(&out.open(), || TcpListener::bind(to)).unwrap().unwrap();
    let stream = run_in(&pod.open(), || TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)).unwrap();
    stream.unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    // The handshake completed, so the connection waits in the accept queue.
    listener.set_nonblocking(true).unwrap();
    listener.accept().unwrap().1.ip()
}

fn check_backend(backend: MasqBackend) {
    let (pod, out) = (PodNs::new(), PodNs::new());
    wire(&pod, &out);
    let subnets = [net("10.244.1.0/24"), net("fd00::af4:100/120")];
    let cluster = [net("10.244.0.0/16"), net("fd00::af4:0/112")];
    masquerade::ensure_masquerade(backend, &subnets, &cluster, "weft test masquerade").unwrap();
    assert!(masquerade::masquerade_present(backend, &subnets, &cluster, "weft test masquerade").unwrap());
    let cases = [
        // Leaving the cluster: the node's address on the way out.
        ("2001:db8::2", "2001:db8::1"),
        ("192.0.2.2", "192.0.2.1"),
        // Another node's pod, in the cluster CIDR of its family: the pod's own.
        ("fd00::af4:205", "fd00::af4:105"),
        ("10.244.2.5", "10.244.1.5"),
    ];
    for (dst, want) in cases {
        let seen = seen_from_pod(&pod, &out, dst.parse().unwrap());
        assert_eq!(seen, want.parse::<IpAddr>().unwrap(), "{backend}: pod to {dst}");
    }
    masquerade::teardown_masquerade().unwrap();
}

#[test]
fn dual_stack_pods_are_masqueraded_in_both_families_with_iptables() {
    let test = "dual_stack_pods_are_masqueraded_in_both_families_with_iptables";
    let Some(_t) = isolate(test) else { return };
    if weft_netkit::tool::find_tool("ip6tables-restore").is_err() || !Path::new("/proc/net/if_inet6").exists()
    {
        weft_test_support::skip(test, "ip6tables-restore or IPv6 is missing");
        return;
    }
    check_backend(MasqBackend::Iptables(None));
    // ip6tables holds the IPv6 subnet's rules, iptables the IPv4 one's (then both are gone).
    assert!(tool_output("ip6tables-save", &["-t", "nat"]).lines().all(|l| !l.contains("WEFT")));
}

#[test]
fn dual_stack_pods_are_masqueraded_in_both_families_with_nftables() {
    let test = "dual_stack_pods_are_masqueraded_in_both_families_with_nftables";
    let Some(_t) = isolate(test) else { return };
    if weft_netkit::tool::find_tool("nft").is_err() || !Path::new("/proc/net/if_inet6").exists() {
        weft_test_support::skip(test, "nft or IPv6 is missing");
        return;
    }
    check_backend(MasqBackend::Nftables);
}
