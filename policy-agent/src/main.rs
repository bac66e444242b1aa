//! `weft-agent --node NAME [--source kube [--kubeconfig PATH] | --source dir:PATH]
//! --status-file PATH [--cluster-cidr CIDR] [--network-name NAME] [--cleanup-on-exit]
//! [--mode host-gw|vxlan|auto [--vxlan-vni N] [--vxlan-port P]] [--log-level LEVEL]`, and the `explain` and `install-cni` subcommands
//! (tools: they print their results and errors, and do not log).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use ipnetwork::IpNetwork;
use nix::sys::signal::{SigSet, Signal};
use weft_agent::agent::{run, Config};
use weft_agent::backend::BackendChoice;
use weft_agent::overlay::{Mode, Routing, DEFAULT_PORT, DEFAULT_VNI};
use weft_agent::pod_socket::Event;
use weft_agent::source::SourceSpec;

/// The weft node agent: routes to the other nodes' pod CIDRs (host-gw or a
/// VXLAN overlay), and the node's masquerade rule when given the cluster CIDR.
#[derive(Debug, Parser)]
// A later flag overrides an earlier one (a wrapper's defaults, then the caller's).
#[command(name = "weft-agent", version, args_override_self = true)]
struct Args {
    /// This node's name (metadata.name of its Node).
    #[arg(long, value_parser = parse_node_name)]
    node: String,
    /// Where cluster state comes from: `kube`, the Kubernetes API (list and
    /// watch), or `dir:PATH`, a directory of YAML manifests. Default: `kube`
    /// in a pod (KUBERNETES_SERVICE_HOST set) or with --kubeconfig; else required.
    #[arg(long, value_parser = parse_source)]
    source: Option<SourceSpec>,
    /// The kubeconfig for `--source kube` (default: KUBECONFIG, ~/.kube/config,
    /// then the pod's service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where to write the status JSON (atomically) after each sync.
    #[arg(long)]
    status_file: PathBuf,
    /// The pod network of the whole cluster (IPv4 or IPv6). When given, the agent
    /// owns the node's masquerade rule: pod traffic leaving this network is
    /// masqueraded. Without it, the agent never touches masquerade.
    #[arg(long, value_parser = parse_cidr)]
    cluster_cidr: Option<IpNetwork>,
    /// The CNI network's name: the comment on the masquerade rules (the plugin
    /// writes the same comment).
    #[arg(long, default_value = "weft", value_parser = parse_network_name)]
    network_name: String,
    /// NetworkPolicy enforcement: `iptables` (ipsets and weft's FORWARD chains),
    /// `nftables` (one `inet weft` table), `auto` (nftables where iptables is
    /// the nft flavour, else iptables; the log says which) or `off`. Also read
    /// from `WEFT_BACKEND` (a DaemonSet's env or ConfigMap key).
    #[arg(long, env = "WEFT_BACKEND", default_value = "auto")]
    backend: BackendChoice,
    /// How pods on other nodes are reached: `host-gw` (routes via their
    /// InternalIPs: the underlay must carry pod addresses), `vxlan` (an
    /// overlay to every node) or `auto` (host-gw to nodes on this node's
    /// subnet, vxlan beyond it). Also read from `WEFT_MODE` (a ConfigMap key).
    #[arg(long, env = "WEFT_MODE", default_value = "host-gw", value_parser = clap::builder::ValueParser::new(parse_mode))]
    mode: Mode,
    /// The overlay's VXLAN network identifier; every node must use the same.
    #[arg(long, env = "WEFT_VXLAN_VNI", default_value_t = DEFAULT_VNI,
          value_parser = clap::value_parser!(u32).range(1..=0xff_ffff))]
    vxlan_vni: u32,
    /// The overlay's UDP port; every node must use the same.
    #[arg(long, env = "WEFT_VXLAN_PORT", default_value_t = DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    vxlan_port: u16,
    /// Listen on this unix socket for the plugin's pod reports (ADD waits until
    /// the new pod's policy is in force). The plugin's `agentSocket` must match.
    #[arg(long)]
    pod_socket: Option<PathBuf>,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address (a
    /// loopback one: any process on the node can reach it).
    #[arg(long)]
    http: Option<std::net::SocketAddr>,
    /// Serve `/denied?since=MS` (the denied-connection log, JSON lines:
    /// pod names, addresses, ports, policies) on this unix socket, root-only
    /// (0600), with the other paths.
    #[arg(long)]
    denied_socket: Option<PathBuf>,
    /// Serve `/denied` on `--http` too, to every local process.
    #[arg(long, requires = "http")]
    http_denied: bool,
    /// Write the conflist (`10-weft.conflist`) into this CNI config dir once the
    /// node is ready to carry pods (its pod CIDR known, policy applied).
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// The CNI bin dir: portmap is chained in the conflist when it is there.
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// Delete weft's routes (and, with --cluster-cidr, the masquerade rule) on SIGTERM/SIGINT.
    #[arg(long)]
    cleanup_on_exit: bool,
    /// Source poll interval, in milliseconds.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// Full resync interval, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    resync_ms: u64,
    /// Single-port rules with at most this many peer networks are compiled
    /// to exact (pod, port, peer) set entries, a fixed cost per packet;
    /// rules with more peers get one rule over a (pod, port) set and a peer
    /// set, so set elements grow with pods plus peers, not their product.
    #[arg(long, env = "WEFT_TRIPLE_PEERS", default_value_t = weft_agent::policy::DEFAULT_TRIPLE_PEERS)]
    triple_peers: usize,
    /// What to log (on stderr): a level (error, warn, info, debug, trace) or
    /// `tracing` directives such as `info,weft_agent::agent=debug`. Also read
    /// from `WEFT_LOG`, then `RUST_LOG`; default info.
    #[arg(long, env = "WEFT_LOG", value_parser = weft_agent::logging::parse_level)]
    log_level: Option<String>,
}

fn parse_source(s: &str) -> Result<SourceSpec, String> {
    if s == "kube" {
        return Ok(SourceSpec::Kube { kubeconfig: None });
    }
    parse_dir(s).map(SourceSpec::Dir).map_err(|_| format!("unsupported source {s:?}: kube or dir:PATH"))
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

fn parse_dir(s: &str) -> Result<PathBuf, String> {
    match s.split_once(':') {
        Some(("dir", path)) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => Err(format!("unsupported source {s:?}: only dir:PATH")),
    }
}

/// The source to read: `--source`, with `--kubeconfig` for the API; without
/// `--source`, the API when running in a pod (`in_cluster`) or given a kubeconfig.
fn resolve_source(
    source: Option<SourceSpec>,
    kubeconfig: Option<PathBuf>,
    in_cluster: bool,
) -> Result<SourceSpec, String> {
    match (source, kubeconfig) {
        (Some(SourceSpec::Dir(_)), Some(_)) => Err("--kubeconfig goes with --source kube".into()),
        (Some(SourceSpec::Kube { .. }), kubeconfig) => Ok(SourceSpec::Kube { kubeconfig }),
        (Some(dir), None) => Ok(dir),
        (None, Some(path)) => Ok(SourceSpec::Kube { kubeconfig: Some(path) }),
        (None, None) if in_cluster => Ok(SourceSpec::Kube { kubeconfig: None }),
        (None, None) => Err("--source is required outside a pod: kube or dir:PATH".into()),
    }
}

/// A network in CIDR notation, normalised to its network address (10.244.1.5/16
/// -> 10.244.0.0/16, as iptables prints it).
fn parse_cidr(s: &str) -> Result<IpNetwork, String> {
    let net: IpNetwork = s.parse().map_err(|e| format!("{s:?} is not a CIDR: {e}"))?;
    IpNetwork::new(net.network(), net.prefix()).map_err(|e| format!("{s:?}: {e}"))
}

/// A Node's name: a DNS subdomain (lowercase letters, digits, '-' and '.',
/// at most 253), so a typo fails here, before the agent touches the node.
fn parse_node_name(s: &str) -> Result<String, String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if s.len() > 253 || !s.split('.').all(label_ok) {
        return Err(format!(
            "{s:?} is not a node name (a DNS subdomain: lowercase letters, digits, '-', '.')"
        ));
    }
    Ok(s.to_string())
}

/// Non-empty, as the CNI network name it stands for; iptables refuses an empty comment.
fn parse_network_name(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("the network name is empty".into());
    }
    Ok(s.to_string())
}

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

/// `weft-agent explain`: why a connection passes or not.
#[derive(Debug, Parser)]
#[command(name = "weft-agent explain")]
struct ExplainArgs {
    /// The cluster state to evaluate (`dir:PATH`, as the agent's `--source`).
    #[arg(long, value_parser = parse_dir)]
    source: PathBuf,
    /// The cluster's pod network (as the agent's `--cluster-cidr`).
    #[arg(long, value_parser = parse_cidr)]
    cluster_cidr: Option<IpNetwork>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also check the node this runs on (`--node`) for the misconfigurations
    /// behind the classic failures, and say which are in play.
    #[arg(long, requires = "node")]
    check: bool,
    /// The node this runs on (for `--check`).
    #[arg(long)]
    node: Option<String>,
    /// The node's weft bridge (for `--check`).
    #[arg(long, default_value = "weft0")]
    bridge: String,
    /// The CNI network's name, the masquerade rule's comment (for `--check`).
    #[arg(long, default_value = "weft")]
    network_name: String,
    /// The client: NAMESPACE/POD, an IPv4 address, or node/NAME.
    src: String,
    /// The server and port: DST:PORT[/tcp|udp|sctp], DST as for SRC.
    dst: String,
}

/// Exit codes of `explain`: allowed 0, denied 1, bad input 64.
fn explain_main(argv: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let args = ExplainArgs::parse_from(argv);
    let model = weft_agent::source::read_dir(&args.source).model;
    let cluster = match args.cluster_cidr {
        Some(IpNetwork::V4(n)) => Some(n),
        _ => None,
    };
    let result = weft_agent::explain::parse_target(&args.dst).and_then(|(dst, port, proto)| {
        weft_agent::explain::explain(&model, cluster, &args.src, &dst, port, proto)
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

/// `weft-agent install-cni`: the CNI binaries into the host's bin dir.
#[derive(Debug, Parser)]
#[command(name = "weft-agent install-cni")]
struct InstallArgs {
    /// Where `weft` and `weft-ipam` are (default: next to this binary).
    #[arg(long)]
    from: Option<PathBuf>,
    /// The host's CNI bin dir (mounted into the init container).
    #[arg(long, default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
}

fn install_main(argv: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let args = InstallArgs::parse_from(argv);
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
    let mut argv = std::env::args_os();
    let sub = std::env::args_os().nth(1);
    if sub.as_deref().is_some_and(|a| a == "explain" || a == "install-cni") {
        let prog = argv.next();
        argv.next();
        let rest = prog.into_iter().chain(argv);
        return if sub.is_some_and(|a| a == "explain") { explain_main(rest) } else { install_main(rest) };
    }
    let args = Args::parse();
    weft_agent::logging::init(&weft_agent::logging::directives(args.log_level.as_deref()));
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let source = match resolve_source(args.source, args.kubeconfig, in_cluster) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("weft-agent: {e}");
            return ExitCode::from(2);
        }
    };
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
        cluster_cidr: args.cluster_cidr,
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
        routing: Routing { mode: args.mode, vni: args.vxlan_vni, port: args.vxlan_port },
    };
    match run(&cfg, &events, tx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_cidr_is_parsed_and_normalised() {
        assert_eq!(parse_cidr("10.244.0.0/16"), Ok("10.244.0.0/16".parse().unwrap()));
        assert_eq!(parse_cidr("10.244.1.5/16").map(|n| n.to_string()), Ok("10.244.0.0/16".into()));
        assert_eq!(parse_cidr("fd00:10:244::7/48").map(|n| n.to_string()), Ok("fd00:10:244::/48".into()));
        for bad in ["", "10.244.0.0/33", "10.244.0.0/", "weft", "10.244.0.0/16 "] {
            assert!(parse_cidr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags() {
        let base = ["weft-agent", "--node", "n1", "--source", "dir:/x", "--status-file", "/s"];
        let a = Args::try_parse_from(base).unwrap();
        assert_eq!((a.cluster_cidr, a.network_name.as_str()), (None, "weft"));
        let a = Args::try_parse_from(base.into_iter().chain([
            "--cluster-cidr",
            "10.244.0.0/16",
            "--network-name",
            "pods",
        ]))
        .unwrap();
        assert_eq!(a.cluster_cidr, Some("10.244.0.0/16".parse().unwrap()));
        assert_eq!(a.network_name, "pods");
        assert!(Args::try_parse_from(base.into_iter().chain(["--cluster-cidr", "nope"])).is_err());
        assert!(Args::try_parse_from(base.into_iter().chain(["--network-name", " "])).is_err());
        for bad in ["", "Node-1", "node_1", "-n", "n.", "a..b"] {
            let argv = ["weft-agent", "--node", bad, "--source", "dir:/x", "--status-file", "/s"];
            assert!(Args::try_parse_from(argv).is_err(), "{bad:?}");
        }
        for good in ["node-1", "ip-10-0-0-1.ec2.internal", "n"] {
            let argv = ["weft-agent", "--node", good, "--source", "dir:/x", "--status-file", "/s"];
            assert_eq!(Args::try_parse_from(argv).unwrap().node, good);
        }
        assert_eq!(Args::try_parse_from(base).unwrap().backend, BackendChoice::Auto);
        let a = Args::try_parse_from(base.into_iter().chain(["--backend", "nftables"])).unwrap();
        assert_eq!(a.backend, BackendChoice::Nftables);
        assert!(Args::try_parse_from(base.into_iter().chain(["--backend", "ebpf"])).is_err());
        let a = Args::try_parse_from(base).unwrap();
        assert_eq!((a.mode, a.vxlan_vni, a.vxlan_port), (Mode::HostGw, DEFAULT_VNI, DEFAULT_PORT));
        let a =
            Args::try_parse_from(base.into_iter().chain(["--mode", "vxlan", "--vxlan-vni", "42"])).unwrap();
        assert_eq!((a.mode, a.vxlan_vni), (Mode::Vxlan, 42));
        for bad in
            [["--mode", "geneve"], ["--vxlan-vni", "0"], ["--vxlan-vni", "16777216"], ["--vxlan-port", "0"]]
        {
            assert!(Args::try_parse_from(base.into_iter().chain(bad)).is_err(), "{bad:?}");
        }
        let a = Args::try_parse_from(base.into_iter().chain(["--denied-socket", "/run/weft/denied.sock"]))
            .unwrap();
        assert_eq!((a.denied_socket, a.http_denied), (Some("/run/weft/denied.sock".into()), false));
        assert!(Args::try_parse_from(base.into_iter().chain(["--http-denied"])).is_err(), "needs --http");
        let a =
            Args::try_parse_from(base.into_iter().chain(["--http", "127.0.0.1:1", "--http-denied"])).unwrap();
        assert!(a.http_denied);
        let a = Args::try_parse_from(base.into_iter().chain(["--log-level", "debug"])).unwrap();
        assert_eq!(a.log_level.as_deref(), Some("debug"));
        assert!(Args::try_parse_from(base.into_iter().chain(["--log-level", "weft=loud"])).is_err());
    }

    #[test]
    fn sources() {
        let parse = |argv: &[&str]| {
            let a = Args::try_parse_from(
                ["weft-agent", "--node", "n1", "--status-file", "/s"].iter().chain(argv),
            )
            .map_err(|e| e.to_string())?;
            Ok::<_, String>((a.source, a.kubeconfig))
        };
        let resolve = |argv: &[&str], in_cluster| {
            let (s, k) = parse(argv)?;
            resolve_source(s, k, in_cluster)
        };
        let dir = SourceSpec::Dir("/x".into());
        assert_eq!(resolve(&["--source", "dir:/x"], false), Ok(dir.clone()));
        assert_eq!(resolve(&["--source", "dir:/x"], true), Ok(dir), "an explicit source wins in a pod");
        assert_eq!(resolve(&["--source", "kube"], false), Ok(SourceSpec::Kube { kubeconfig: None }));
        let kc = SourceSpec::Kube { kubeconfig: Some("/kc".into()) };
        assert_eq!(resolve(&["--source", "kube", "--kubeconfig", "/kc"], false), Ok(kc.clone()));
        assert_eq!(resolve(&["--kubeconfig", "/kc"], false), Ok(kc));
        assert_eq!(resolve(&[], true), Ok(SourceSpec::Kube { kubeconfig: None }), "the default in a pod");
        assert!(resolve(&[], false).unwrap_err().contains("--source is required"));
        assert!(resolve(&["--source", "dir:/x", "--kubeconfig", "/kc"], false).is_err());
        for bad in ["kube:", "dir:", "etcd", "/x"] {
            assert!(parse(&["--source", bad]).is_err(), "{bad}");
        }
    }
}
