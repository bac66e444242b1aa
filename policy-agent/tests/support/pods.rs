//! Pods for kernel tests: each a network namespace held by a child process,
//! its eth0 the peer of a veth on bridge br0 of the calling thread's netns
//! (the node, a namespace of the test's own), at 10.244.1.`n`/24 and
//! fd00:244:1::`n`/64; real TCP connections and pings between them.
//! Included by path (`#[path]`) in the agent's kernel tests, not all of
//! which use every helper.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_netkit::netns::{run_in, NetNs};

/// Runs `argv`, in the calling thread's netns, to success.
pub fn run(argv: &[&str]) {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// 10.244.1.`n`.
pub fn addr4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, n)
}

/// fd00:244:1::`n` (`n` read as hex digits, as the manifests write it).
pub fn addr6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, u16::from_str_radix(&n.to_string(), 16).unwrap())
}

/// A bridge br0 in the calling thread's netns that passes bridged traffic
/// of both families through the firewall, as the plugin sets a node up.
pub fn bridge() {
    run(&["ip", "link", "add", "br0", "type", "bridge"]);
    run(&["ip", "link", "set", "br0", "up"]);
    for family in ["iptables", "ip6tables"] {
        std::fs::write(format!("/proc/sys/net/bridge/bridge-nf-call-{family}"), "1").unwrap();
    }
}

/// A pod on br0.
pub struct PodNs {
    child: Child,
}

impl PodNs {
    pub fn new(name: &str, n: u8) -> PodNs {
        let child =
            Command::new("unshare").args(["-n", "sleep", "120"]).stdin(Stdio::null()).spawn().unwrap();
        let ns = |pid: String| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        let deadline = Instant::now() + Duration::from_secs(5);
        while ns(child.id().to_string()) == ns("thread-self".into()) {
            assert!(Instant::now() < deadline, "unshare did not take its namespace");
            std::thread::sleep(Duration::from_millis(5));
        }
        let pod = PodNs { child };
        let pid = pod.child.id().to_string();
        let host = format!("veth-{name}");
        run(&["ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &pid]);
        run(&["ip", "link", "set", &host, "master", "br0", "up"]);
        pod.exec(&["ip", "link", "set", "lo", "up"]);
        pod.exec(&["ip", "link", "set", "eth0", "up"]);
        pod.exec(&["ip", "addr", "add", &format!("{}/24", addr4(n)), "dev", "eth0"]);
        pod.exec(&["ip", "-6", "addr", "add", &format!("{}/64", addr6(n)), "dev", "eth0", "nodad"]);
        pod
    }

    pub fn exec(&self, argv: &[&str]) {
        let pid = self.child.id().to_string();
        run(&[&["nsenter", "-t", &pid, "-n"][..], argv].concat());
    }

    /// True if an echo to `to` is answered within a second.
    pub fn pings(&self, to: impl Into<IpAddr>) -> bool {
        let pid = self.child.id().to_string();
        Command::new("nsenter")
            .args(["-t", &pid, "-n", "ping", "-c1", "-W1", &to.into().to_string()])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// Its network namespace.
    pub fn ns(&self) -> NetNs {
        NetNs::open(format!("/proc/{}/ns/net", self.child.id())).unwrap()
    }

    /// True if a TCP connection to `to` on `port` is set up within a second
    /// and the server's answer (a reply) comes back on it.
    pub fn connects(&self, to: impl Into<IpAddr>, port: u16) -> bool {
        let to = SocketAddr::new(to.into(), port);
        run_in(&self.ns(), || {
            let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) else { return false };
            let mut answer = [0u8; 1];
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            s.read_exact(&mut answer).is_ok() && answer == *b"!"
        })
        .unwrap()
    }

    /// A TCP server in this pod at `at` on `port`.
    pub fn serve(&self, at: impl Into<IpAddr>, port: u16) -> Server {
        let at = at.into();
        let listener = run_in(&self.ns(), || TcpListener::bind((at, port))).unwrap().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let thread = std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                match listener.accept() {
                    // Every connection gets one byte: the client reads it as the reply.
                    Ok((mut s, _)) => drop(s.write_all(b"!")),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server { stop, thread: Some(thread) }
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pod's TCP server, stopped on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
