//! Real runtimes drive weft, each inside a testbed node's netns with its own
//! root, state and config, the conflist weft's agent writes, and a locally
//! built busybox image: a private containerd over CRI (as a kubelet), and
//! podman with its CNI backend. A witness on the agent socket records what
//! the plugin was told (container IDs, K8S_POD_* names, every DEL).
//! Each test skips, saying why, where its runtime cannot run.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{ping, pod_testbed, root_or_skip, weft_bin};
use weft_conf::pod_socket::PodEvent;
use weft_e2e::probe::{probe_in, Outcome, Proto};
use weft_e2e::runtimes::containerd::{Containerd, SandboxSpec, SandboxStatus};
use weft_e2e::runtimes::podman::Podman;
use weft_e2e::runtimes::witness::Witness;
use weft_e2e::runtimes::{self, cni_setup, CniDirs, RuntimeError};
use weft_e2e::{agents, run, Testbed};

/// Probe bound: the first packet to a new veth waits for ARP.
const PROBE: Duration = Duration::from_secs(2);
/// The hostPort pod web/a asks for.
const HOST_PORT: u16 = 30080;

/// A 1-node testbed, the witness on node 1's agent socket and the CNI dirs
/// for a runtime under `<run dir>/<runtime>`.
fn node_setup(runtime: &str) -> (Testbed, Witness, CniDirs, PathBuf) {
    let tb = pod_testbed(1);
    let run = tb.run();
    let socket = agents::pod_socket(&run, 1);
    let witness = Witness::listen(&socket).unwrap();
    let dir = run::run_dir(&run).join(runtime);
    let cni = cni_setup(&dir.join("cni"), &run, 1, &weft_bin(), &socket).unwrap();
    (tb, witness, cni, dir)
}

/// Everything a test needs, with `start`ed runtime under `<run dir>/<runtime>`;
/// None after printing why the test skips (not root, or the runtime cannot run here).
fn setup<T>(
    test: &str,
    runtime: &str,
    start: impl FnOnce(&Path, &Path, &CniDirs) -> Result<T, RuntimeError>,
) -> Option<(Testbed, Witness, CniDirs, PathBuf, T)> {
    if !root_or_skip(test) {
        return None;
    }
    let (tb, witness, cni, dir) = node_setup(runtime);
    match start(&dir, &tb.node_netns(1), &cni) {
        Ok(t) => Some((tb, witness, cni, dir, t)),
        Err(e) => match e.skip_reason() {
            Some(reason) => {
                weft_test_support::skip(test, reason);
                None
            }
            None => panic!("{test}: {e}"),
        },
    }
}

fn v4(ip: &str) -> Ipv4Addr {
    ip.parse().unwrap_or_else(|e| panic!("{ip:?} is not an IPv4 address: {e}"))
}

fn netns_of(pid: i32) -> PathBuf {
    assert!(pid > 0, "the sandbox has no process");
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

fn spec(namespace: &str, name: &str, host_port: Option<u16>) -> SandboxSpec {
    SandboxSpec { namespace: namespace.into(), name: name.into(), host_port }
}

/// Runs the sandbox and checks what a kubelet would then see, against weft's
/// own records: ready, the IP containerd reports is the one weft's store
/// holds for the sandbox ID, one ADD naming the pod, the host veth on the bridge.
fn run_checked(
    tb: &Testbed,
    ctd: &Containerd,
    witness: &Witness,
    s: &SandboxSpec,
) -> (String, SandboxStatus) {
    let id = ctd.run_sandbox(s).unwrap();
    let st = ctd.sandbox_status(&id).unwrap();
    assert!(st.ready, "{}/{} is not ready: {st:?}", s.namespace, s.name);
    let ip = IpAddr::V4(v4(&st.ip));
    assert_eq!(runtimes::held(&tb.run(), 1, &id).unwrap(), [ip], "weft's store for sandbox {id}");
    match witness.adds(&id).as_slice() {
        [PodEvent::Add { namespace, name, ips, ifname, .. }] => {
            assert_eq!((namespace, name), (&s.namespace, &s.name), "K8S_POD_* as containerd passed them");
            assert_eq!((ips.as_slice(), ifname.as_str()), ([ip].as_slice(), "eth0"));
        }
        other => panic!("sandbox {id}: expected one ADD report, got {other:?}"),
    }
    let veth = runtimes::host_veth(&id);
    assert!(runtimes::bridge_ports(&tb.node_netns(1)).unwrap().contains(&veth), "{veth} on the bridge");
    (id, st)
}

/// Stops and removes sandbox `id` and checks that its address is free and
/// its veth gone, and that weft saw two DELs (Stop's, and Remove's without a netns).
fn remove_checked(tb: &Testbed, ctd: &Containerd, witness: &Witness, id: &str, ip: IpAddr) {
    ctd.stop_sandbox(id).unwrap();
    ctd.remove_sandbox(id).unwrap();
    assert!(runtimes::held(&tb.run(), 1, id).unwrap().is_empty(), "sandbox {id} still holds an address");
    assert!(!runtimes::allocated(&tb.run(), 1).unwrap().contains(&ip), "{ip} is still allocated");
    let veth = runtimes::host_veth(id);
    assert!(!runtimes::bridge_ports(&tb.node_netns(1)).unwrap().contains(&veth), "{veth} is left");
    assert_eq!(witness.dels(id), 2, "containerd's CRI sends DEL on Stop and again on Remove");
}

/// The end of every test: the runtime's own clean-up (`shutdown`, whose
/// report is `left`) left nothing, nothing is mounted under its dir, and
/// the testbed goes.
fn finish(tb: Testbed, dir: &Path, left: Vec<String>) {
    assert!(left.is_empty(), "the runtime left: {left:?}");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounts = runtimes::mount_points_under(&info, dir);
    assert!(mounts.is_empty(), "mounts left under {}: {mounts:?}", dir.display());
    tb.down().unwrap();
}

#[test]
fn containerd_cri_sandboxes_get_weft_addresses_reach_each_other_and_release_them() {
    let Some((tb, witness, _, dir, mut ctd)) = setup(
        "containerd_cri_sandboxes_get_weft_addresses_reach_each_other_and_release_them",
        "containerd",
        Containerd::start,
    ) else {
        return;
    };
    let (a, st_a) = run_checked(&tb, &ctd, &witness, &spec("web", "a", Some(HOST_PORT)));
    let (b, st_b) = run_checked(&tb, &ctd, &witness, &spec("web", "b", None));
    let (c, st_c) = run_checked(&tb, &ctd, &witness, &spec("db", "c", None));
    let ips: Vec<Ipv4Addr> = [&st_a, &st_b, &st_c].iter().map(|s| v4(&s.ip)).collect();
    assert!(ips[0] != ips[1] && ips[1] != ips[2] && ips[0] != ips[2], "distinct addresses: {ips:?}");

    // The sandboxes reach each other: ping both ways, and TCP to a server in b.
    let (ns_a, ns_b) = (netns_of(st_a.pid), netns_of(st_b.pid));
    assert!(ping(&ns_a, &st_b.ip) && ping(&ns_b, &st_a.ip), "a <-> b ping");
    tb.serve_in(&ns_b, "web/b", &[80], false).unwrap();
    let got = probe_in(&ns_a, SocketAddr::from((ips[1], 80)), Proto::Tcp, PROBE).unwrap();
    assert_eq!(got, Outcome::Connected("web/b".into()), "a -> b:80");
    // a's hostPort, from the portMappings containerd passed to the chained
    // portmap: the external client reaches a through node 1's address.
    tb.serve_in(&ns_a, "web/a", &[80], false).unwrap();
    let node = SocketAddr::from((tb.node_addr(1), HOST_PORT));
    let got = probe_in(&tb.ext_netns(), node, Proto::Tcp, PROBE).unwrap();
    assert_eq!(got, Outcome::Connected("web/a".into()), "ext -> node 1:{HOST_PORT} -> a:80");

    for (id, ip) in [(&a, ips[0]), (&b, ips[1]), (&c, ips[2])] {
        remove_checked(&tb, &ctd, &witness, id, IpAddr::V4(ip));
    }
    assert!(runtimes::allocated(&tb.run(), 1).unwrap().is_empty());
    assert!(runtimes::bridge_ports(&tb.node_netns(1)).unwrap().is_empty());
    let left = ctd.shutdown();
    drop(ctd);
    finish(tb, &dir, left);
}

#[test]
fn containerd_killed_mid_add_and_restarted_leaves_nothing_after_gc() {
    let Some((tb, witness, cni, dir, mut ctd)) = setup(
        "containerd_killed_mid_add_and_restarted_leaves_nothing_after_gc",
        "containerd",
        Containerd::start,
    ) else {
        return;
    };
    let run = tb.run();
    let (a, st_a) = run_checked(&tb, &ctd, &witness, &spec("web", "a", None));
    let (b, st_b) = run_checked(&tb, &ctd, &witness, &spec("web", "b", None));

    // containerd dies while weft's ADD of sandbox c waits on the agent:
    // the address is allocated and the veth made, and no one will hear of it.
    let pid = nix::unistd::Pid::from_raw(ctd.pid().unwrap() as i32);
    witness.on_add(Some(Box::new(move |_| {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL);
    })));
    let lost = ctd.run_sandbox(&spec("web", "c", None));
    assert!(lost.is_err(), "RunPodSandbox must fail when containerd dies: {lost:?}");
    witness.on_add(None);
    ctd.kill().unwrap();
    let c = match witness
        .events()
        .iter()
        .rev()
        .find(|e| matches!(e, PodEvent::Add { name, .. } if name == "c"))
    {
        Some(PodEvent::Add { container_id, .. }) => container_id.clone(),
        other => panic!("no ADD report for c: {other:?}"),
    };
    let c_ip = runtimes::held(&run, 1, &c).unwrap();
    assert_eq!(c_ip.len(), 1, "c's address was allocated before the crash");

    // Restarted, containerd finds a and b as they were (their shims lived on).
    ctd.restart().unwrap();
    for (id, before) in [(&a, &st_a), (&b, &st_b)] {
        let now = ctd.sandbox_status(id).unwrap();
        assert!(now.ready && now.ip == before.ip, "{id} after the restart: {now:?}, before {before:?}");
    }
    assert!(ping(&netns_of(st_a.pid), &st_b.ip), "a -> b after the restart");
    let known = ctd.sandboxes().unwrap();
    eprintln!("after the restart containerd knows {known:?}; c was {c}: {:?}", ctd.sandbox_status(&c));
    // containerd 1.6 records a sandbox before its network: it comes back
    // knowing c, not ready, its address still held, as a kubelet finds a
    // sandbox whose RunPodSandbox failed.
    assert!(known.contains(&c), "containerd forgot the sandbox it was creating");
    assert!(!ctd.sandbox_status(&c).unwrap().ready, "c cannot be ready");
    // containerd 1.6 never sends GC (a CNI 1.1 verb); sent here on its
    // behalf with what it knows, it must keep every known sandbox's address
    // and free nothing else, because nothing else is left.
    runtimes::gc(&tb.node_netns(1), &cni, &known).unwrap();
    let mut owned = Vec::new();
    for id in &known {
        owned.extend(runtimes::held(&run, 1, id).unwrap());
    }
    owned.sort();
    assert_eq!(runtimes::allocated(&run, 1).unwrap(), owned, "after GC only known sandboxes hold addresses");
    assert_eq!(
        runtimes::held(&run, 1, &c).unwrap(),
        c_ip,
        "GC keeps the address of a sandbox containerd knows"
    );

    // As a kubelet does with a sandbox that is not ready: Stop and Remove it.
    for id in &known {
        ctd.stop_sandbox(id).unwrap();
        ctd.remove_sandbox(id).unwrap();
        assert!(runtimes::held(&run, 1, id).unwrap().is_empty(), "{id} released");
    }
    assert!(runtimes::allocated(&run, 1).unwrap().is_empty(), "no address left");
    assert!(runtimes::bridge_ports(&tb.node_netns(1)).unwrap().is_empty(), "no veth left");
    let left = ctd.shutdown();
    drop(ctd);
    finish(tb, &dir, left);
}

#[test]
fn podman_containers_on_weft_reach_each_other_and_rm_frees_the_address() {
    let Some((tb, witness, _, dir, mut pm)) =
        setup("podman_containers_on_weft_reach_each_other_and_rm_frees_the_address", "podman", Podman::start)
    else {
        return;
    };
    let run = tb.run();
    let publish = format!("{HOST_PORT}:80");
    pm.run("a", Some(&publish)).unwrap();
    pm.run("b", None).unwrap();
    let (a, b) = (pm.inspect("a").unwrap(), pm.inspect("b").unwrap());
    for (name, c) in [("a", &a), ("b", &b)] {
        let ip = IpAddr::V4(v4(&c.ip));
        assert_eq!(runtimes::held(&run, 1, &c.id).unwrap(), [ip], "weft's store for container {name}");
        // podman passes K8S_POD_NAME (the container's name) and no namespace.
        match witness.adds(&c.id).as_slice() {
            [PodEvent::Add { namespace, name: n, ips, .. }] => {
                assert_eq!((namespace.as_str(), n.as_str(), ips.as_slice()), ("", name, [ip].as_slice()))
            }
            other => panic!("container {name}: expected one ADD report, got {other:?}"),
        }
    }
    assert_ne!(a.ip, b.ip);

    // From inside a container (busybox ping, podman's default NET_RAW), and TCP to b.
    let out = pm.exec("a", &["ping", "-c", "1", "-W", "2", &b.ip]).unwrap();
    assert!(out.status.success(), "a pings b: {}", String::from_utf8_lossy(&out.stdout));
    assert!(ping(&netns_of(b.pid), &a.ip), "b -> a");
    tb.serve_in(&netns_of(b.pid), "podman-b", &[80], false).unwrap();
    let got = probe_in(&netns_of(a.pid), SocketAddr::from((v4(&b.ip), 80)), Proto::Tcp, PROBE).unwrap();
    assert_eq!(got, Outcome::Connected("podman-b".into()), "a -> b:80");
    // a's published port, through the chained portmap (podman's lowercase keys).
    tb.serve_in(&netns_of(a.pid), "podman-a", &[80], false).unwrap();
    let node = SocketAddr::from((tb.node_addr(1), HOST_PORT));
    let got = probe_in(&tb.ext_netns(), node, Proto::Tcp, PROBE).unwrap();
    assert_eq!(got, Outcome::Connected("podman-a".into()), "ext -> node 1:{HOST_PORT} -> a:80");

    for (name, c) in [("a", &a), ("b", &b)] {
        pm.rm(name).unwrap();
        assert!(runtimes::held(&run, 1, &c.id).unwrap().is_empty(), "{name} still holds an address");
        assert!(!runtimes::allocated(&run, 1).unwrap().contains(&IpAddr::V4(v4(&c.ip))));
        let veth = runtimes::host_veth(&c.id);
        assert!(!runtimes::bridge_ports(&tb.node_netns(1)).unwrap().contains(&veth), "{veth} is left");
        assert_eq!(witness.dels(&c.id), 1, "podman sends one DEL");
    }
    assert!(runtimes::allocated(&run, 1).unwrap().is_empty());
    let left = pm.shutdown();
    drop(pm);
    finish(tb, &dir, left);
}
