//! `weft-agent`: the node agent (`run`, the default), and the `install-cni`
//! and `explain` tools; the flags are in `cli.rs` (`weft-agent --help`).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use ipnetwork::IpNetwork;
use nix::sys::signal::{SigSet, Signal};
use weft_agent::agent::{run, Config};
use weft_agent::pod_socket::Event;

use cli::{Cli, Command, ExplainArgs, InstallArgs, RunArgs};

/// Blocks SIGINT/SIGTERM in this thread (and all it spawns) and turns them
/// into `Event::Stop` on `tx`, from one sigwait thread.
fn watch_signals(tx: mpsc::Sender<Event>) -> std::io::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().map_err(std::io::Error::from)?;
    std::thread::Builder::new().name("weft-agent-signals".into()).spawn(move || {
        while set.wait().is_ok() {
            if tx.send(Event::Stop).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

/// Exit codes of `explain`: allowed 0, denied 1, bad input 64.
fn explain_main(args: ExplainArgs) -> ExitCode {
    let model = weft_agent::source::read_dir(&args.source).model;
    if let Err(e) = cli::one_per_family(&args.cluster_cidr) {
        eprintln!("weft-agent explain: --cluster-cidr: {e}");
        return ExitCode::from(64);
    }
    let cluster = args.cluster_cidr.iter().find_map(|c| match c {
        IpNetwork::V4(n) => Some(*n),
        IpNetwork::V6(_) => None,
    });
    let result = weft_agent::explain::parse_target(&args.dst).and_then(|(dst, port, proto)| {
        weft_agent::explain::explain(&model, &args.cluster_cidr, &args.src, &dst, port, proto)
    });
    match result {
        Ok(e) => {
            let node = args.node.as_deref().filter(|_| args.check);
            let findings = node.map(|n| {
                weft_agent::checks::check_node(&model, n, cluster, &args.bridge, &args.network_name, &e)
            });
            if args.json {
                let mut v = serde_json::to_value(&e).unwrap_or_default();
                if let Some(f) = &findings {
                    v["checks"] = serde_json::to_value(f).unwrap_or_default();
                }
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{e}");
                if let (Some(n), Some(f)) = (node, &findings) {
                    print!("{}", weft_agent::checks::render(n, f));
                }
            }
            ExitCode::from(if e.allowed { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("weft-agent explain: {e}");
            ExitCode::from(64)
        }
    }
}

fn install_main(args: InstallArgs) -> ExitCode {
    let from = args.from.or_else(|| std::env::current_exe().ok()?.parent().map(PathBuf::from));
    let Some(from) = from else {
        eprintln!("weft-agent install-cni: cannot tell where this binary is; pass --from");
        return ExitCode::FAILURE;
    };
    match weft_agent::cni_config::install_binaries(&from, &args.bin_dir) {
        Ok(written) => {
            for p in &written {
                println!("installed {}", p.display());
            }
            if written.is_empty() {
                println!("{} is up to date", args.bin_dir.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft-agent install-cni: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command() {
        Command::Run(args) => run_main(args),
        Command::InstallCni(args) => install_main(args),
        Command::Explain(args) => explain_main(args),
    }
}

/// `weft-agent run`: logs, signals, then the agent until SIGTERM/SIGINT.
fn run_main(args: RunArgs) -> ExitCode {
    weft_agent::logging::init(&weft_agent::logging::directives(args.log_level.as_deref()), &args.node);
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let source = match cli::resolve_source(args.source, args.kubeconfig, in_cluster) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = cli::one_per_family(&args.cluster_cidr) {
        tracing::error!("--cluster-cidr: {e}");
        return ExitCode::from(2);
    }
    let (tx, events) = mpsc::channel();
    if let Err(e) = watch_signals(tx.clone()) {
        tracing::error!("signals: {e}");
        return ExitCode::FAILURE;
    }
    let cfg = Config {
        node: args.node,
        source,
        status_file: args.status_file,
        cleanup_on_exit: args.cleanup_on_exit,
        poll: Duration::from_millis(args.poll_ms.max(10)),
        resync: Duration::from_millis(args.resync_ms.max(100)),
        cluster_cidrs: args.cluster_cidr,
        network_name: args.network_name,
        compile: weft_agent::policy::Options { triple_peers: args.triple_peers },
        backend: args.backend,
        pod_socket: args.pod_socket,
        http: weft_agent::http::Listen {
            tcp: args.http,
            denied_on_tcp: args.http_denied,
            denied_socket: args.denied_socket,
        },
        cni_conf_dir: args.cni_conf_dir,
        cni_bin_dir: args.cni_bin_dir,
        routing: weft_agent::overlay::Routing { mode: args.mode, vni: args.vxlan_vni, port: args.vxlan_port },
        cnp_status_namespace: args.cnp_status.then_some(args.lease_namespace),
    };
    match run(&cfg, &events, tx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
