//! `weft-agent --node NAME --source dir:PATH --status-file PATH [--cleanup-on-exit]`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use weft_agent::agent::{run, Config};

/// The weft node agent: host-gw routes to the other nodes' pod CIDRs.
#[derive(Debug, Parser)]
#[command(name = "weft-agent", version)]
struct Args {
    /// This node's name (metadata.name of its Node).
    #[arg(long)]
    node: String,
    /// Where cluster state comes from: `dir:PATH`, a directory of YAML manifests.
    #[arg(long, value_parser = parse_source)]
    source: PathBuf,
    /// Where to write the status JSON (atomically) after each sync.
    #[arg(long)]
    status_file: PathBuf,
    /// Delete weft's routes on SIGTERM/SIGINT.
    #[arg(long)]
    cleanup_on_exit: bool,
    /// Source poll interval, in milliseconds.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// Full resync interval, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    resync_ms: u64,
}

fn parse_source(s: &str) -> Result<PathBuf, String> {
    match s.split_once(':') {
        Some(("dir", path)) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => Err(format!("unsupported source {s:?}: only dir:PATH for now")),
    }
}

/// Blocks SIGINT/SIGTERM in this thread (and all it spawns) and turns them
/// into a message on the returned channel, from one sigwait thread.
fn watch_signals() -> std::io::Result<mpsc::Receiver<()>> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().map_err(std::io::Error::from)?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new().name("weft-agent-signals".into()).spawn(move || {
        while set.wait().is_ok() {
            if tx.send(()).is_err() {
                return;
            }
        }
    })?;
    Ok(rx)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let stop = match watch_signals() {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("weft-agent: signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = Config {
        node: args.node,
        dir: args.source,
        status_file: args.status_file,
        cleanup_on_exit: args.cleanup_on_exit,
        poll: Duration::from_millis(args.poll_ms.max(10)),
        resync: Duration::from_millis(args.resync_ms.max(100)),
    };
    match run(&cfg, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
