//! The `weft` CNI plugin: wires pods onto a per-node bridge.
//!
//! `run` is the whole plugin as a function of (env, stdin), so tests drive
//! it in-process; `main.rs` only does the process I/O.

// The CNI commands and what they share; the kernel I/O is weft-netkit.
pub mod add;
pub mod agent_client;
pub mod check;
pub mod del;
pub mod error;
pub mod gc;
pub mod ipam_client;
pub mod names;
pub mod node_setup;
pub mod status;

use weft_conf::{CniEnv, CniError, Command, ErrorCode, NetConf, Reply};

/// Runs one CNI command: `lookup` reads the CNI_* environment.
pub fn run(lookup: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Reply {
    weft_conf::serve(lookup, stdin, |env| dispatch(env, stdin))
}

fn dispatch(env: &CniEnv, stdin: &[u8]) -> Result<Option<serde_json::Value>, CniError> {
    let conf = NetConf::parse(stdin)?;
    env.command.require_version(conf.cni_version)?;
    match env.command {
        Command::Add => add::add(env, &conf, stdin).map(|r| Some(r.to_json(conf.cni_version))),
        Command::Del => del::del(env, &conf, stdin).map(|()| None),
        Command::Check => check::check(env, &conf, stdin).map(|()| None),
        Command::Status => status::status(env, &conf, stdin).map(|()| None),
        Command::Gc => gc::gc(env, &conf, stdin).map(|()| None),
        // serve() answers VERSION before dispatching.
        Command::Version => Ok(None),
    }
}

/// The plugin's runtime: one thread, the kernel work is a few netlink round trips.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
        CniError::new(ErrorCode::IoFailure, "cannot start the async runtime").with_details(e.to_string())
    })
}
