//! podman with its CNI backend, inside a testbed node's netns, on a root,
//! runroot, tmp dir and containers.conf of its own under
//! `<run dir>/podman/` (`CONTAINERS_CONF` names the file, so the machine's
//! /etc/containers and /etc/cni are never read).
//!
//! What this VM needs, found by trying: the default ulimits lowered
//! (podman raises nofile and nproc to values that need CAP_SYS_RESOURCE,
//! which the VM lacks: runc fails with "error setting rlimit type 6"),
//! cgroupfs (no systemd), events to a file (no journald), runc, and the
//! vfs storage driver (a 2 MB image copies in no time, and unlike overlay
//! it leaves no mount of its storage home behind).
//!
//! Entering the node netns with setns only matters: `ip netns exec` would
//! also remount /sys and hide the cgroup mounts from podman and runc.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::image::{self, BUSYBOX, IMAGE};
use super::{
    cgroup_parent, clear_leftovers, pids_with_arg, require_programs, run_checked, CniDirs, Result,
    RuntimeError,
};
use crate::command_in;

const RUNTIME: &str = "podman";
/// Lower than the VM's hard limits (nofile 20000, nproc ~96k); any value
/// at or below them works without CAP_SYS_RESOURCE.
const ULIMITS: &str = r#"["nofile=1024:1024", "nproc=1024:1024"]"#;

/// A container as podman reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The full ID (podman's CNI_CONTAINERID).
    pub id: String,
    pub pid: i32,
    /// Its address on the weft network.
    pub ip: String,
}

/// The private podman; see the module doc.
pub struct Podman {
    dir: PathBuf,
    node_ns: PathBuf,
    root: PathBuf,
    runroot: PathBuf,
    conf: PathBuf,
    network: String,
}

impl Podman {
    /// Sets podman up under `dir` (created) for the netns at `node_ns`,
    /// pointed at `cni`, and loads the image. `Unavailable` when a program
    /// it needs is missing or `podman info` fails here.
    pub fn start(dir: &Path, node_ns: &Path, cni: &CniDirs) -> Result<Podman> {
        require_programs(RUNTIME, &["podman", "conmon", "runc", BUSYBOX])?;
        let p = Podman {
            dir: dir.to_path_buf(),
            node_ns: node_ns.to_path_buf(),
            root: dir.join("root"),
            runroot: dir.join("runroot"),
            conf: dir.join("containers.conf"),
            network: cni.weft_conf["name"].as_str().unwrap_or("weft").to_string(),
        };
        let tmp = dir.join("tmp");
        for d in [&p.root, &p.runroot, &tmp] {
            std::fs::create_dir_all(d).map_err(RuntimeError::io(format!("create {}", d.display())))?;
        }
        std::fs::write(&p.conf, containers_conf(dir, &tmp, cni))
            .map_err(RuntimeError::io(format!("write {}", p.conf.display())))?;
        if let Err(e) = p.podman(&["info"]) {
            return Err(RuntimeError::Unavailable { runtime: RUNTIME, reason: format!("podman info: {e}") });
        }
        let archive = image::write_archive(Path::new(BUSYBOX), dir)?;
        let archive = archive.display().to_string();
        p.podman(&["load", "-q", "-i", &archive])?;
        Ok(p)
    }

    /// `podman` with our root, runroot, storage driver and config, in the node netns.
    fn command(&self, args: &[&str]) -> Result<Command> {
        let root = self.root.display().to_string();
        let runroot = self.runroot.display().to_string();
        let mut argv = vec!["podman", "--root", &root, "--runroot", &runroot, "--storage-driver", "vfs"];
        argv.extend(args);
        let mut c = command_in(&self.node_ns, &argv)?;
        c.env("CONTAINERS_CONF", &self.conf);
        Ok(c)
    }

    /// Runs `podman ARGS`; its stdout, trimmed, or the error with its stderr.
    pub fn podman(&self, args: &[&str]) -> Result<String> {
        let what = format!("podman {}", args.join(" "));
        let out = run_checked(self.command(args)?, &what)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `podman run -d --name NAME --network weft [-p PORTS] IMAGE`: the
    /// image's idle command; returns the container ID.
    pub fn run(&self, name: &str, publish: Option<&str>) -> Result<String> {
        let parent = cgroup_parent(&self.dir);
        let mut args =
            vec!["run", "-d", "--name", name, "--network", &self.network, "--cgroup-parent", &parent];
        if let Some(p) = publish {
            args.extend(["-p", p]);
        }
        args.push(IMAGE);
        self.podman(&args)
    }

    /// ID, pid and weft address of container `name`.
    pub fn inspect(&self, name: &str) -> Result<ContainerInfo> {
        let format = format!(
            "{{{{.Id}}}} {{{{.State.Pid}}}} {{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.network
        );
        let out = self.podman(&["inspect", "--format", &format, name])?;
        parse_inspect(&out)
            .ok_or(RuntimeError::Answer { what: format!("podman inspect {name}"), answer: out })
    }

    /// `podman exec NAME ARGV...` (not checked).
    pub fn exec(&self, name: &str, argv: &[&str]) -> Result<Output> {
        let mut args = vec!["exec", name];
        args.extend(argv);
        let what = format!("podman exec {name} {argv:?}");
        Ok(crate::exec_command(self.command(&args)?, &what, None, super::CLI_TIMEOUT)?)
    }

    /// `podman rm -f -t 0 NAME`.
    pub fn rm(&self, name: &str) -> Result<()> {
        self.podman(&["rm", "-f", "-t", "0", name]).map(drop)
    }

    /// Removes every container, kills any conmon still naming our root
    /// (each passes it in its exit command), unmounts what is left under the
    /// dir. Idempotent; returns what went wrong, carrying on past each.
    pub fn shutdown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = self.podman(&["rm", "-a", "-f", "-t", "0"]) {
            errors.push(e.to_string());
        }
        let monitors = pids_with_arg(self.root.as_os_str());
        if !monitors.is_empty() {
            errors.push(format!("killed left-over conmon processes {monitors:?}"));
            super::kill_pids(&monitors);
        }
        errors.extend(clear_leftovers(&self.dir, RUNTIME));
        errors
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for e in self.shutdown() {
            eprintln!("weft-e2e: podman teardown: {e}");
        }
    }
}

/// "ID PID IP" as the inspect format prints it.
pub fn parse_inspect(out: &str) -> Option<ContainerInfo> {
    let mut f = out.split_whitespace();
    let (id, pid, ip) = (f.next()?, f.next()?.parse().ok()?, f.next()?);
    Some(ContainerInfo { id: id.into(), pid, ip: ip.into() })
}

/// containers.conf: the CNI backend on our dirs, and what this VM needs (module doc).
fn containers_conf(dir: &Path, tmp: &Path, cni: &CniDirs) -> String {
    format!(
        r#"[containers]
default_ulimits = {ULIMITS}

[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}"]
network_config_dir = "{conf}"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
runtime = "runc"
tmp_dir = "{tmp}"
static_dir = "{d}/root/libpod"
volume_path = "{d}/root/volumes"
"#,
        d = dir.display(),
        tmp = tmp.display(),
        bin = cni.bin.display(),
        conf = cni.conf.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_output() {
        let i = parse_inspect("abc123 4242 10.244.1.5\n").unwrap();
        assert_eq!(i, ContainerInfo { id: "abc123".into(), pid: 4242, ip: "10.244.1.5".into() });
        assert!(parse_inspect("abc123 4242").is_none());
        assert!(parse_inspect("abc123 x 10.244.1.5").is_none());
    }
}
