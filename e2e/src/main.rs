//! `weft-e2e`: bring a testbed run up and down, serve a workload, probe.

mod demo;

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weft_e2e::family::Family;
use weft_e2e::probe::{probe, Proto};
use weft_e2e::serve::Server;
use weft_e2e::signals::Signals;
use weft_e2e::syn_flood::scenario::Plan;
use weft_e2e::{topology, E2eError, Testbed};
use weft_netkit::netns::NetNs;

/// Exit code for usage errors (clap's own 2 would read as a probe timeout).
const EXIT_USAGE: u8 = 64;
/// Exit code when a signal cancelled `up`.
const EXIT_CANCELLED: u8 = 130;

#[derive(Parser)]
#[command(name = "weft-e2e", about = "weft's end-to-end testbed: a cluster made of network namespaces")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a run and print its name. Without --keep, stay in the foreground
    /// and tear it down on Ctrl-C/SIGTERM; with --keep, exit and leave it up.
    Up {
        #[arg(long)]
        nodes: u32,
        /// Run name: 1-8 chars of [a-z0-9], starting with a letter (default: wt + 4 hex).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        keep: bool,
        /// The address families of nodes and pods: ipv4, ipv6 (the plan
        /// embedded in fd00::/96) or dual.
        #[arg(long, default_value = "ipv4")]
        family: Family,
    },
    /// Delete everything a run created (idempotent).
    Down { run: String },
    /// Show a run's state and whether each namespace still exists.
    Status { run: String },
    /// Add or delete a pod of a run (through the real `weft` binary).
    Pod {
        #[command(subcommand)]
        cmd: PodCmd,
    },
    /// Answer every TCP connection and UDP datagram on each port with NAME
    /// (with --echo-peer: NAME PEER_IP, the source address the server saw).
    Serve {
        #[arg(long)]
        name: String,
        #[arg(long, value_delimiter = ',', default_value = "80,81")]
        ports: Vec<u16>,
        #[arg(long)]
        echo_peer: bool,
    },
    /// Connect once from inside a netns: prints connected <reply> | refused | timeout
    /// (exit 0/1/2; unreachable 3, local error 4).
    Probe {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        proto: Proto,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Run scenario NAME (or `all`) on a fresh testbed of its own and print
    /// each check; exit 0 if every check passed. `list` names them.
    Run {
        name: String,
        /// The testbed's families: ipv4, ipv6 or dual (every probe in both).
        /// A scenario that cannot run in it is an error (`list` says which).
        #[arg(long, default_value = "ipv4")]
        family: Family,
    },
    /// Benchmarks (root): `datapath` measures what policy costs the packets
    /// (iperf3 and connections per second, three backends, with no policy and
    /// with N policies in force, over IPv4 and IPv6) and prints a table.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
    /// Show weft at work (root): a 2-node testbed, three pods, a ClusterIP and a
    /// NodePort service, one probe per path as a table, then teardown. Exit 0 if
    /// every path is ok, 1 otherwise.
    Demo,
    /// NetworkPolicy conformance cases (format: conformance/case.rs).
    Conformance {
        #[command(subcommand)]
        cmd: ConformanceCmd,
    },
}

#[derive(Subcommand)]
enum ConformanceCmd {
    /// Run the cases in PATH... (case files, or directories of them) on one
    /// testbed (root); print PASS/FAIL per case, expected and observed
    /// matrices side by side where they differ, and a summary line. Exit 0 if
    /// every case passed, 1 otherwise.
    Run {
        /// iptables | nftables | weave-1.9.6 | none (no enforcement).
        #[arg(long, default_value = "iptables")]
        backend: weft_e2e::conformance::Backend,
        /// Where the agents read the cluster state: dir (the cluster dir) or
        /// kube (the same state through the stand-in API server). A kept run's
        /// stand-in ends with this command: its agents keep the last state.
        #[arg(long, default_value = "dir")]
        source: weft_e2e::conformance::StateSource,
        /// Leave the testbed up afterwards, named RUN if given (`--keep=RUN`);
        /// `weft-e2e down RUN` removes it.
        #[arg(long, value_name = "RUN", num_args = 0..=1, require_equals = true)]
        keep: Option<Option<String>>,
        /// Only load and validate the cases and list them (no root needed).
        #[arg(long)]
        list: bool,
        /// Cross-check every probed pod-to-pod cell against `weft-agent explain`.
        #[arg(long)]
        explain: bool,
        /// The agents' routing: host-gw, vxlan or auto (`weft-agent --mode`).
        #[arg(long, default_value = "host-gw", value_parser = parse_mode)]
        mode: weft_e2e::conformance::Mode,
        /// A lan that drops frames whose source or destination is neither a
        /// node nor the external client (where only an overlay works).
        #[arg(long)]
        anti_spoofing: bool,
        /// ipv4, ipv6 (the plan and the cases' CIDRs embedded in fd00::/96)
        /// or dual (every probe in both families).
        #[arg(long, default_value = "ipv4")]
        family: Family,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    Datapath {
        /// Policies in force in the loaded runs, all selecting the server.
        #[arg(long, default_value_t = 1000)]
        policies: usize,
        /// ClusterNetworkPolicies in force in a further run (weft's backends,
        /// no NetworkPolicy), selecting the server and the clients; 0: none.
        #[arg(long, default_value_t = 0)]
        cnps: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3)]
        secs: u64,
        /// Repetitions of each measurement (the median is shown).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// The testbed's families: ipv4, ipv6, or dual (each path over both).
        #[arg(long, default_value = "dual")]
        family: Family,
    },
    /// The data path between nodes in host-gw and in vxlan mode, with the pods' MTU.
    Modes {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3)]
        secs: u64,
        /// Repetitions of each measurement (the median is shown).
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// What isolation from the first packet adds to CNI ADD.
    Add {
        /// Pods added (one at a time) per agent setup.
        #[arg(long, default_value_t = 20)]
        pods: usize,
        /// Policies in force, all selecting the new pods.
        #[arg(long, default_value_t = 1000)]
        policies: usize,
    },
    /// CNI ADD and the agent's RSS while a denied pod floods its node with SYNs.
    Flood {
        /// SYNs a second.
        #[arg(long, default_value_t = 20_000)]
        rate: u32,
        /// Seconds the flood lasts.
        #[arg(long, default_value_t = 20)]
        secs: u64,
        /// Seconds of ADDs after the flood.
        #[arg(long, default_value_t = 10)]
        after: u64,
    },
}

#[derive(Subcommand)]
enum PodCmd {
    /// Create pod NS/NAME on node NODE: its netns, CNI ADD by `weft` (found
    /// next to this binary or via $WEFT_BIN), its workload; prints its IP.
    Add { run: String, node: u32, name: String },
    /// Stop pod NS/NAME's workload, CNI DEL it, delete its netns; prints the released IP.
    Del { run: String, name: String },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let r = match cli.cmd {
        Cmd::Up { nodes, name, keep, family } => return up(nodes, name.as_deref(), keep, family),
        Cmd::Probe { netns, to, proto, timeout_ms } => return probe_cmd(&netns, to, proto, timeout_ms),
        Cmd::Down { run } => topology::down(&run),
        Cmd::Status { run } => topology::status(&run).map(|s| print!("{s}")),
        Cmd::Serve { name, ports, echo_peer } => serve(&name, &ports, echo_peer),
        Cmd::Pod { cmd } => pod(cmd),
        Cmd::Demo => return demo_cmd(),
        Cmd::Run { name, family } => return run_cmd(&name, family),
        Cmd::Bench { cmd: BenchCmd::Datapath { policies, cnps, secs, reps, family } } => {
            weft_e2e::bench::datapath(policies, cnps, Duration::from_secs(secs), reps, family)
                .map(|rows| print!("{}", weft_e2e::bench::table(&rows)))
        }
        Cmd::Bench { cmd: BenchCmd::Modes { secs, reps } } => {
            weft_e2e::bench::modes(secs, reps).map(|rows| print!("{}", weft_e2e::bench::modes_table(&rows)))
        }
        Cmd::Bench { cmd: BenchCmd::Add { pods, policies } } => weft_e2e::bench::add_cost(pods, policies)
            .map(|rows| print!("{}", weft_e2e::bench::add_table(&rows))),
        Cmd::Bench { cmd: BenchCmd::Flood { rate, secs, after } } => {
            let plan = Plan {
                rate,
                flood: Duration::from_secs(secs),
                after: Duration::from_secs(after),
                ..Plan::issue()
            };
            weft_e2e::bench::flood(&plan).map(|rows| print!("{}", weft_e2e::bench::flood_table(&rows)))
        }
        Cmd::Conformance {
            cmd:
                ConformanceCmd::Run { backend, source, keep, list, explain, mode, anti_spoofing, family, paths },
        } => {
            let opts = weft_e2e::conformance::Options {
                backend,
                source,
                keep,
                explain,
                mode,
                anti_spoofing,
                family,
                ..Default::default()
            };
            return conformance_cmd(opts, list, &paths);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn parse_mode(s: &str) -> Result<weft_e2e::conformance::Mode, String> {
    s.parse()
}

fn up(nodes: u32, name: Option<&str>, keep: bool, family: Family) -> ExitCode {
    // First, before any other thread exists: signals go to the watcher thread only.
    let signals = match Signals::watch() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let state = match topology::up_in(nodes, name, family, signals.cancel()) {
        Ok(s) => s,
        Err(E2eError::Cancelled) => {
            eprintln!("weft-e2e: up cancelled; what it created is deleted");
            return ExitCode::from(EXIT_CANCELLED);
        }
        Err(e) => return fail(&e),
    };
    println!("{}", state.run);
    let cancelled = signals.cancel().load(std::sync::atomic::Ordering::SeqCst);
    if keep && !cancelled {
        return ExitCode::SUCCESS;
    }
    if !cancelled {
        eprintln!("weft-e2e: run {} is up; Ctrl-C or SIGTERM tears it down", state.run);
        signals.wait();
    }
    match topology::down(&state.run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn probe_cmd(netns: &std::path::Path, to: SocketAddr, proto: Proto, timeout_ms: u64) -> ExitCode {
    // setns on the main thread while it is still the only thread.
    let entered = NetNs::open(netns).map_err(|e| e.to_string()).and_then(|ns| {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())
    });
    if let Err(e) = entered {
        println!("error cannot enter {}: {e}", netns.display());
        return ExitCode::from(4);
    }
    let outcome = probe(to, proto, Duration::from_millis(timeout_ms));
    println!("{outcome}");
    ExitCode::from(outcome.exit_code() as u8)
}

fn pod(cmd: PodCmd) -> Result<(), E2eError> {
    match cmd {
        PodCmd::Add { run, node, name } => {
            let mut tb = Testbed::open(&run)?;
            tb.add_pod(node, &name)?;
            let rec = tb.pod(&name).ok_or_else(|| E2eError::PodNotFound { run, name: name.clone() })?;
            println!("{}", joined(&rec.addresses()));
        }
        PodCmd::Del { run, name } => {
            let rec = Testbed::open(&run)?.delete_pod(&name)?;
            println!("{}", joined(&rec.addresses()));
        }
    }
    Ok(())
}

/// A pod's addresses as the CLI prints them: "10.244.1.2 fd00::af4:102".
fn joined(ips: &[std::net::IpAddr]) -> String {
    ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
}

fn serve(name: &str, ports: &[u16], echo_peer: bool) -> Result<(), E2eError> {
    let server = Server::bind_with(name, ports, echo_peer)?;
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    // The readiness line: every socket is bound.
    println!("ready {name} {}", list.join(","));
    std::io::Write::flush(&mut std::io::stdout()).map_err(E2eError::io("flush stdout"))?;
    server.run()
}

fn demo_cmd() -> ExitCode {
    // SAFETY: geteuid cannot fail and has no preconditions.
    if unsafe { nix::libc::geteuid() } != 0 {
        eprintln!("weft-e2e demo: needs root (network namespaces, mounts in /run/netns)");
        return ExitCode::FAILURE;
    }
    match demo::run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(E2eError::Cancelled) => {
            eprintln!("weft-e2e demo: cancelled; the run is torn down");
            ExitCode::from(EXIT_CANCELLED)
        }
        Err(e) => fail(&e),
    }
}

fn run_cmd(name: &str, family: Family) -> ExitCode {
    use weft_e2e::scenarios::{find, run_and_print, SCENARIOS};
    if name == "list" {
        for s in &SCENARIOS {
            let families: Vec<String> = s.families.iter().map(Family::to_string).collect();
            println!("{:<20} [{}] {}", s.name, families.join(","), s.title);
        }
        return ExitCode::SUCCESS;
    }
    let chosen: Vec<_> = match name {
        "all" => SCENARIOS.iter().collect(),
        _ => match find(name) {
            Some(s) => vec![s],
            None => {
                let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
                eprintln!("weft-e2e run: no scenario {name:?} (one of: {}, all, list)", names.join(", "));
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    // SAFETY: geteuid cannot fail and has no preconditions.
    if unsafe { nix::libc::geteuid() } != 0 {
        eprintln!("weft-e2e run: needs root (network namespaces, mounts in /run/netns)");
        return ExitCode::FAILURE;
    }
    let mut all_ok = true;
    for s in chosen {
        // `all` names every scenario: those that cannot run in the family say
        // why and are left out; one asked for by name fails below.
        if let (true, Err(e)) = (name == "all", s.runs_in(family)) {
            println!("scenario {}: not run: {e}", s.name);
            continue;
        }
        match run_and_print(s, family) {
            Ok(ok) => all_ok &= ok,
            Err(e) => {
                println!("  ERROR {e}");
                all_ok = false;
            }
        }
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `weft-e2e conformance run` with `opts` (the signal flag is added here).
fn conformance_cmd(mut opts: weft_e2e::conformance::Options, list: bool, paths: &[PathBuf]) -> ExitCode {
    use weft_e2e::conformance;
    if list {
        return match conformance::load_paths(paths) {
            Ok(cases) => {
                print!("{}", conformance::list(&cases));
                println!("{} cases", cases.len());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        };
    }
    // SAFETY: geteuid cannot fail and has no preconditions.
    if unsafe { nix::libc::geteuid() } != 0 {
        eprintln!("weft-e2e conformance run: needs root (network namespaces, mounts in /run/netns)");
        return ExitCode::FAILURE;
    }
    opts.cancel = Some(conformance::cancel_on_signals());
    match conformance::run(paths, &opts, &mut std::io::stdout()) {
        Ok(summary) if summary.ok() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(E2eError::Cancelled) => {
            eprintln!("weft-e2e conformance: cancelled; the testbed is torn down unless kept");
            ExitCode::from(EXIT_CANCELLED)
        }
        Err(e) => fail(&e),
    }
}

fn fail(e: &E2eError) -> ExitCode {
    eprintln!("weft-e2e: {e}");
    ExitCode::FAILURE
}
