//! weft's end-to-end testbed: a cluster made of network namespaces
//! (docs/testing.md), a workload server and a probe.
//!
//! `Testbed::up` builds a run (`<run>-lan` with the lan bridge, `<run>-n1..nN`,
//! `<run>-ext`) and tears it down on drop, so a failing or panicking test leaves
//! nothing behind. The CLI (`weft-e2e`) exposes the same operations.

pub mod agents;
pub mod apiserver_standin;
pub mod bench;
pub mod cluster;
pub mod compare;
pub mod conformance;
pub mod error;
pub mod family;
pub mod flannel;
pub mod kube_proxy;
pub mod manifests;
pub mod netns;
pub mod plan;
pub mod pods;
pub mod probe;
pub mod run;
pub mod runtimes;
pub mod scenarios;
pub mod serve;
pub mod services;
pub mod signals;
pub mod syn_flood;
pub mod topology;
pub mod underlay;
pub mod weave;

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use error::{E2eError, Result};
pub use pods::Pod;
pub use run::RunState;

/// A running testbed; torn down (processes killed, pods released through CNI
/// DEL, namespaces and run dir deleted) by `down` or on drop.
pub struct Testbed {
    state: Mutex<RunState>,
    children: Mutex<Vec<Child>>,
    torn_down: bool,
    /// False for a run opened with `open` (the CLI): drop leaves it up.
    owns_run: bool,
    /// The `weft` plugin binary pods are attached with (None: `pods::find_binary`).
    weft_bin: Option<PathBuf>,
    /// The `weft-e2e` binary pods run as their workload (None: `pods::find_binary`).
    e2e_bin: Option<PathBuf>,
    /// The stand-in API server agents read through (`start_standin`), if any.
    standin: Mutex<Option<Arc<apiserver_standin::ApiStandin>>>,
}

impl Testbed {
    /// Brings up a run with `nodes` nodes under a fresh random name; not idempotent.
    pub fn up(nodes: u32) -> Result<Testbed> {
        Testbed::start(nodes, None)
    }

    /// Brings up a run named `name`; `RunExists` if the name is taken.
    pub fn up_named(nodes: u32, name: &str) -> Result<Testbed> {
        Testbed::start(nodes, Some(name))
    }

    /// Brings up a run with `nodes` nodes whose nodes and pods use `family`.
    pub fn up_in(nodes: u32, family: family::Family) -> Result<Testbed> {
        let never = AtomicBool::new(false);
        let state = topology::up_in(nodes, None, family, &never)?;
        Ok(Testbed::with_state(state, true))
    }

    fn start(nodes: u32, name: Option<&str>) -> Result<Testbed> {
        let never = AtomicBool::new(false);
        let state = topology::up(nodes, name, &never)?;
        Ok(Testbed::with_state(state, true))
    }

    /// Opens the existing run `run` from its state file, without owning it:
    /// dropping the Testbed leaves the run (and the processes it started) up.
    /// For the CLI; do not mix with another live Testbed of the same run (each
    /// writes the whole state file).
    pub fn open(run: &str) -> Result<Testbed> {
        plan::check_run_name(run)?;
        let state = run::load(run)?
            .ok_or_else(|| E2eError::RunNotFound { run: run.into(), dir: run::run_dir(run) })?;
        Ok(Testbed::with_state(state, false))
    }

    fn with_state(state: RunState, owns_run: bool) -> Testbed {
        Testbed {
            state: Mutex::new(state),
            children: Mutex::new(Vec::new()),
            torn_down: false,
            owns_run,
            weft_bin: None,
            e2e_bin: None,
            standin: Mutex::new(None),
        }
    }

    /// Uses `path` as the `weft` plugin binary for pods.
    pub fn set_weft_bin(&mut self, path: impl Into<PathBuf>) {
        self.weft_bin = Some(path.into());
    }

    /// Uses `path` as the `weft-e2e` binary that pods run as their workload.
    pub fn set_e2e_bin(&mut self, path: impl Into<PathBuf>) {
        self.e2e_bin = Some(path.into());
    }

    /// A copy of the run state (as written to the state file).
    pub fn state(&self) -> RunState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The run name (the prefix of every namespace).
    pub fn run(&self) -> String {
        self.state().run
    }

    /// The address families of the run's nodes and pods.
    pub fn family(&self) -> family::Family {
        self.state().family
    }

    /// The number of nodes.
    pub fn nodes(&self) -> u32 {
        self.state().nodes.len() as u32
    }

    /// Node `n`'s netns path (n from 1); panics if there is no such node.
    pub fn node_netns(&self, n: u32) -> PathBuf {
        self.node(n).path
    }

    /// Node `n`'s lan address (172.31.0.(10+n)); panics if there is no such node.
    pub fn node_addr(&self, n: u32) -> Ipv4Addr {
        self.node(n).lan_addr.ip()
    }

    /// The external client's netns path.
    pub fn ext_netns(&self) -> PathBuf {
        self.state().ext.path
    }

    /// The external client's lan address (172.31.0.100).
    pub fn ext_addr(&self) -> Ipv4Addr {
        self.state().ext.lan_addr.ip()
    }

    /// The lan netns path (holds the bridge).
    pub fn lan_netns(&self) -> PathBuf {
        netns::netns_path(&self.state().lan)
    }

    fn node(&self, n: u32) -> run::Host {
        let st = self.state();
        let i = (n as usize).checked_sub(1).filter(|&i| i < st.nodes.len());
        let i = i.unwrap_or_else(|| panic!("run {} has no node {n}", st.run));
        st.nodes[i].clone()
    }

    /// Runs `argv` inside `netns` and returns its output; kills it after `timeout`.
    pub fn exec_in(&self, netns: &Path, argv: &[&str], timeout: Duration) -> Result<Output> {
        exec_in(netns, argv, timeout)
    }

    /// Starts `argv` inside `netns` as process `name` of this run (killed on
    /// teardown, recorded in the state file) and waits up to `ready` for its first
    /// line on stdout, which it must print once it is ready. Returns the pid.
    pub fn spawn_in(&self, name: &str, netns: &Path, argv: &[&str], ready: Duration) -> Result<u32> {
        let mut c = command_in(netns, argv)?;
        c.stdin(Stdio::null());
        self.spawn_command(name, netns, c, &format!("{argv:?}"), ready)
    }

    /// `spawn_in` for a prepared Command (stdout is piped here); `what` names it in errors.
    fn spawn_command(
        &self,
        name: &str,
        netns: &Path,
        mut c: Command,
        what: &str,
        ready: Duration,
    ) -> Result<u32> {
        let mut child = c.stdout(Stdio::piped()).spawn().map_err(E2eError::io(format!("start {what}")))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep draining so the child never blocks on a full pipe.
            lines.for_each(drop);
        });
        let pid = child.id();
        if !matches!(rx.recv_timeout(ready), Ok(Some(Ok(_)))) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(E2eError::NotReady { what: format!("{name} {what}"), ms: ready.as_millis() });
        }
        let record = run::ProcessRecord {
            name: name.into(),
            pid: pid as i32,
            start_time: run::start_time(pid as i32).unwrap_or(0),
            netns: netns.display().to_string(),
        };
        self.children.lock().unwrap_or_else(|p| p.into_inner()).push(child);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.processes.push(record);
        run::save(&st)?;
        Ok(pid)
    }

    /// Kills this run's processes and deletes its namespaces and run dir; idempotent.
    pub fn down(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        for mut c in self.children.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Its sockets live in the nodes' namespaces: closed before they go.
        if let Some(standin) = self.standin.lock().unwrap_or_else(|p| p.into_inner()).take() {
            standin.down();
        }
        topology::down(&self.run())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if !self.owns_run {
            return;
        }
        if let Err(e) = self.teardown() {
            eprintln!("weft-e2e: teardown on drop: {e}");
        }
    }
}

/// Runs `argv` inside the netns at `netns` (setns between fork and exec) and
/// returns its output; kills it if it runs longer than `timeout`.
pub fn exec_in(netns: &Path, argv: &[&str], timeout: Duration) -> Result<Output> {
    let c = command_in(netns, argv)?;
    exec_command(c, &format!("{argv:?} in {}", netns.display()), None, timeout)
}

/// Runs `c` with `stdin` (or nothing) on its stdin and returns its output;
/// kills it if it runs longer than `timeout`. `what` names it in errors.
pub fn exec_command(mut c: Command, what: &str, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let mut child = c
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(E2eError::io(format!("start {what}")))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let data = data.to_vec();
        // On a thread, so a child that does not read cannot block us; EPIPE is its business.
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut pipe, &data);
        });
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    if !exited_within(&child, timeout).map_err(E2eError::io(format!("wait for {what}")))? {
        let _ = child.kill();
        let _ = child.wait();
        return Err(E2eError::io(what.to_string())(std::io::ErrorKind::TimedOut.into()));
    }
    let status = child.wait().map_err(E2eError::io(format!("wait for {what}")))?;
    Ok(Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() })
}

/// True once `child` has exited, false if it has not within `timeout`. A
/// thread waits for the exit without reaping it (the caller reaps or kills
/// its own child, whose pid cannot have been reused): a benchmark that times
/// a child sees its exit at once, not at the next poll.
fn exited_within(child: &Child, timeout: Duration) -> std::io::Result<bool> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new().name("weft-e2e-wait".into()).spawn(move || loop {
        // An error other than EINTR: the caller's wait reports it.
        if waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) != Err(nix::errno::Errno::EINTR)
        {
            let _ = tx.send(());
            break;
        }
    })?;
    Ok(rx.recv_timeout(timeout).is_ok())
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Polls `f` every 20 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Command for `argv` that enters the netns at `netns` before exec.
pub fn command_in(netns: &Path, argv: &[&str]) -> Result<Command> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| E2eError::io("exec_in with an empty argv")(std::io::ErrorKind::InvalidInput.into()))?;
    let file = std::fs::File::open(netns).map_err(E2eError::io(format!("open netns {}", netns.display())))?;
    let mut c = Command::new(prog);
    c.args(args);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // setns(2), which is async-signal-safe; `file` lives in the closure, so its
    // fd stays open until the Command is dropped (O_CLOEXEC: the program never sees it).
    unsafe {
        c.pre_exec(move || {
            let fd = BorrowedFd::borrow_raw(file.as_raw_fd());
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    Ok(c)
}
