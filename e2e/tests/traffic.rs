//! The workload and the probe across the lan: connected with the server's name
//! over TCP and UDP, refused on a closed port, timeout (within its bound) to an
//! address where no host answers, unreachable where there is no route.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{bin, root_or_skip, CMD_TIMEOUT};
use weft_e2e::probe::{probe_in, Outcome, Proto};
use weft_e2e::Testbed;

const TIMEOUT: Duration = Duration::from_millis(1000);
/// Slack on top of a probe's timeout, for a loaded machine.
const SLACK: Duration = Duration::from_millis(1000);

#[test]
fn serve_and_probe_classify_connected_refused_timeout() {
    if !root_or_skip("serve_and_probe_classify_connected_refused_timeout") {
        return;
    }
    let tb = Testbed::up(2).unwrap();
    let (n1, n2) = (tb.node_netns(1), tb.node_netns(2));
    let serve = [bin(), "serve", "--name", "pod-b", "--ports", "80,81"];
    tb.spawn_in("serve-n2", &n2, &serve, CMD_TIMEOUT).unwrap();
    assert_eq!(tb.state().processes.len(), 1, "the server is recorded in the state file");

    let at = |addr: &str| -> SocketAddr { addr.parse().unwrap() };
    let connected = Outcome::Connected("pod-b".into());
    for (to, proto, want) in [
        ("172.31.0.12:80", Proto::Tcp, &connected),
        ("172.31.0.12:81", Proto::Tcp, &connected),
        ("172.31.0.12:80", Proto::Udp, &connected),
        ("172.31.0.12:81", Proto::Udp, &connected),
        ("172.31.0.12:82", Proto::Tcp, &Outcome::Refused),
        ("172.31.0.12:82", Proto::Udp, &Outcome::Refused),
    ] {
        let got = probe_in(&n1, at(to), proto, TIMEOUT).unwrap();
        assert_eq!(&got, want, "{proto:?} {to}");
    }

    // 172.31.0.200 is on the lan but nobody has it: ARP stays unanswered for ~3 s,
    // longer than the probe's bound, so both protocols time out.
    for proto in [Proto::Tcp, Proto::Udp] {
        let start = Instant::now();
        let got = probe_in(&n1, at("172.31.0.200:80"), proto, TIMEOUT).unwrap();
        let took = start.elapsed();
        assert_eq!(got, Outcome::Timeout, "{proto:?} to a silent address");
        assert!(took >= TIMEOUT && took < TIMEOUT + SLACK, "{proto:?} timeout took {took:?}");
    }

    // No route at all (nodes only know the lan): the kernel says so at once.
    let got = probe_in(&n1, at("10.96.0.1:80"), Proto::Tcp, TIMEOUT).unwrap();
    assert!(matches!(got, Outcome::Unreachable(_)), "{got:?}");
    tb.down().unwrap();
}

#[test]
fn probe_cli_prints_the_outcome_and_exits_with_its_code() {
    if !root_or_skip("probe_cli_prints_the_outcome_and_exits_with_its_code") {
        return;
    }
    let tb = Testbed::up(1).unwrap();
    let ext = tb.ext_netns();
    let serve = [bin(), "serve", "--name", "ext-srv", "--ports", "8080"];
    tb.spawn_in("serve-ext", &ext, &serve, CMD_TIMEOUT).unwrap();
    let n1 = tb.node_netns(1).display().to_string();
    for (to, proto, line, code) in [
        ("172.31.0.100:8080", "tcp", "connected ext-srv", 0),
        ("172.31.0.100:8080", "udp", "connected ext-srv", 0),
        ("172.31.0.100:8081", "tcp", "refused", 1),
        ("172.31.0.201:8080", "tcp", "timeout", 2),
    ] {
        let argv = [bin(), "probe", "--netns", &n1, "--to", to, "--proto", proto];
        // The probe enters the netns itself; exec_in's netns is only where it starts.
        let out = weft_e2e::exec_in(&tb.lan_netns(), &argv, CMD_TIMEOUT).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), line, "{proto} {to}");
        assert_eq!(out.status.code(), Some(code), "{proto} {to}");
    }
    tb.down().unwrap();
}
