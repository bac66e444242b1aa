//! Drives CNI plugins as a runtime does: a "node" netns the test creates, the
//! plugin binary exec'd inside it with the CNI env and the config on stdin,
//! pod namespaces, and probes (ping) between them. The test thread itself
//! stays where it is; every child enters its netns with setns before exec.

#![allow(dead_code)]

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::{json, Value};

use crate::common::PodNs;

/// The built `weft` binary.
pub fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// The Debian reference plugins, when installed.
pub fn reference_dir() -> Option<PathBuf> {
    let d = PathBuf::from("/usr/lib/cni");
    (d.join("bridge").is_file() && d.join("host-local").is_file()).then_some(d)
}

/// True when running as root; otherwise the test skips (fails under CI).
pub fn root_or_skip(test: &str) -> bool {
    weft_test_support::root_or_skip(test, "network namespaces")
}

/// A node: its netns and its IPAM data dir, both removed on drop.
pub struct Node {
    pub ns: PodNs,
    pub data: tempfile::TempDir,
    /// CNI_PATH for the plugin: its own dir (and the reference plugins' dir).
    pub cni_path: String,
}

/// What a plugin process printed and how it exited.
#[derive(Debug)]
pub struct Reply {
    pub code: i32,
    pub json: Value,
    pub stderr: String,
}

impl Reply {
    pub fn ok(&self) -> &Value {
        assert_eq!(self.code, 0, "plugin failed: {} {}", self.json, self.stderr);
        &self.json
    }

    pub fn err_code(&self) -> u64 {
        assert_ne!(self.code, 0, "plugin succeeded unexpectedly: {}", self.json);
        self.json["code"].as_u64().unwrap_or_else(|| panic!("no error code in {}", self.json))
    }
}

impl Node {
    pub fn new() -> Node {
        let ns = PodNs::new();
        let mut path = vec![weft().parent().unwrap().display().to_string()];
        path.extend(reference_dir().map(|d| d.display().to_string()));
        let node = Node { ns, data: tempfile::tempdir().unwrap(), cni_path: path.join(":") };
        node.sh(&["ip", "link", "set", "lo", "up"]);
        node
    }

    /// weft's network config for this node: subnet 10.244.1.0/24 unless `extra` overrides.
    pub fn conf(&self, version: &str, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": version, "name": "weft", "type": "weft", "bridge": "weft0",
            "clusterCIDR": "10.244.0.0/16",
            "ipam": {"type": "weft-ipam", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                     "routes": [{"dst": "0.0.0.0/0"}],
                     "dataDir": self.data.path().display().to_string()},
        });
        merge(&mut c, extra);
        c
    }

    /// The IP files of network `weft` in the store.
    pub fn allocations(&self) -> Vec<String> {
        let dir = self.data.path().join("weft");
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Runs a plugin command in this node's netns.
    pub fn cni(&self, bin: &Path, cmd: &str, id: &str, netns: Option<&Path>, conf: &Value) -> Reply {
        let out = self.cni_child(bin, cmd, id, netns, conf).wait_with_output().unwrap();
        reply(out)
    }

    /// Starts a plugin command in this node's netns (for concurrency and kill tests).
    pub fn cni_child(&self, bin: &Path, cmd: &str, id: &str, netns: Option<&Path>, conf: &Value) -> Child {
        self.spawn(bin, cmd, id, netns, conf.to_string().as_bytes())
    }

    /// Runs weft with a raw (possibly malformed) stdin.
    pub fn cni_raw(&self, cmd: &str, id: &str, netns: Option<&Path>, stdin: &str) -> Reply {
        reply(self.spawn(&weft(), cmd, id, netns, stdin.as_bytes()).wait_with_output().unwrap())
    }

    /// Runs `wrapper` (a command whose last argument execs the plugin, e.g.
    /// `unshare -m sh -c ...`) with the plugin's CNI env, in this node's netns.
    pub fn cni_wrapped(
        &self,
        wrapper: &[&str],
        cmd: &str,
        id: &str,
        netns: Option<&Path>,
        conf: &Value,
    ) -> Reply {
        let mut c = Command::new(wrapper[0]);
        c.args(&wrapper[1..]);
        let child = self.spawn_command(c, true, cmd, id, netns, conf.to_string().as_bytes());
        reply(child.wait_with_output().unwrap())
    }

    fn spawn(&self, bin: &Path, cmd: &str, id: &str, netns: Option<&Path>, stdin: &[u8]) -> Child {
        self.spawn_command(Command::new(bin), bin != weft(), cmd, id, netns, stdin)
    }

    fn spawn_command(
        &self,
        mut c: Command,
        needs_path: bool,
        cmd: &str,
        id: &str,
        netns: Option<&Path>,
        stdin: &[u8],
    ) -> Child {
        c.env_clear()
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", id)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.cni_path)
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=test;K8S_POD_NAME={id}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ns) = netns {
            c.env("CNI_NETNS", ns);
        }
        // weft must work with the empty PATH some runtimes give plugins (it
        // finds iptables itself); the reference plugins need one.
        if needs_path {
            c.env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        }
        in_netns(&mut c, &self.ns.path);
        let mut child = c.spawn().unwrap();
        // A plugin may exit without reading its config (a floor measurement with /bin/true).
        let _ = child.stdin.take().unwrap().write_all(stdin);
        child
    }

    /// Runs a command in the node's netns; panics on failure.
    pub fn sh(&self, argv: &[&str]) -> String {
        sh_in(&self.ns.path, argv)
    }
}

/// Runs a command inside the netns at `ns`; panics unless it succeeds.
pub fn sh_in(ns: &Path, argv: &[&str]) -> String {
    let out = run_in(ns, argv);
    assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command inside the netns at `ns` and returns its output.
pub fn run_in(ns: &Path, argv: &[&str]) -> Output {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]);
    in_netns(&mut c, ns);
    c.output().unwrap()
}

/// True if `ip` answers one of up to three pings (the first may wait for ARP
/// on a loaded machine; ping exits 0 once any reply came back).
pub fn ping(ns: &Path, ip: &str) -> bool {
    run_in(ns, &["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", ip]).status.success()
}

/// Makes `c` enter the netns at `ns` between fork and exec.
pub fn in_netns(c: &mut Command, ns: &Path) {
    let file = std::fs::File::open(ns).unwrap();
    // SAFETY: the closure runs in the forked child before exec and only calls
    // setns(2), which is async-signal-safe; `file` is moved into the closure,
    // so its fd stays open in the parent until the Command is dropped and is
    // inherited by the child.
    unsafe {
        c.pre_exec(move || {
            let fd = BorrowedFd::borrow_raw(file.as_raw_fd());
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
}

fn reply(out: Output) -> Reply {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"))
    };
    Reply {
        code: out.status.code().unwrap_or(-1),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Recursively merges `extra` into `base` (objects merge, anything else replaces).
pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// The pod's IPv4 address from an ADD result.
pub fn pod_ip(result: &Value) -> String {
    let a = result["ips"][0]["address"].as_str().expect("result has an address");
    a.split('/').next().unwrap().to_string()
}
