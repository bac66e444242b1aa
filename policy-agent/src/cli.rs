//! The command line: `weft-agent [run] FLAGS` (the agent; `run` is the
//! default, so a bare `weft-agent --node ...` keeps working), `weft-agent
//! install-cni` and `weft-agent explain` (tools: they print their results and
//! errors, and do not log). Pure parsing, unit-tested below.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ipnetwork::IpNetwork;
use weft_agent::backend::BackendChoice;
use weft_agent::overlay::{Mode, DEFAULT_PORT, DEFAULT_VNI};
use weft_agent::source::SourceSpec;

/// The weft node agent: host-gw routes to the other nodes' pod CIDRs, the
/// node's masquerade rule, and NetworkPolicy on iptables or nftables.
/// Without a command it runs the agent (`run`) with the flags below.
#[derive(Debug, Parser)]
// A later flag overrides an earlier one (a wrapper's defaults, then the caller's).
#[command(
    name = "weft-agent",
    version,
    args_override_self = true,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: Option<RunArgs>,
}

/// What `weft-agent` does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent (the default when no command is given).
    Run(RunArgs),
    /// Copy the CNI binaries (weft, weft-ipam) into the host's CNI bin dir.
    InstallCni(InstallArgs),
    /// Say why a connection between two pods passes or is dropped.
    Explain(ExplainArgs),
}

impl Cli {
    /// The command to run: `run` with the top-level flags when none was named.
    pub fn command(self) -> Command {
        match (self.command, self.run) {
            (Some(c), _) => c,
            (None, Some(run)) => Command::Run(run),
            // clap requires --node without a command, so `run` is always set here.
            (None, None) => unreachable!("clap requires the run flags without a command"),
        }
    }
}

/// `weft-agent run`: the node agent itself.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// This node's name (metadata.name of its Node).
    #[arg(long, value_parser = parse_node_name)]
    pub node: String,
    /// Where cluster state comes from: `kube`, the Kubernetes API (list and
    /// watch), or `dir:PATH`, a directory of YAML manifests. Default: `kube`
    /// in a pod (KUBERNETES_SERVICE_HOST set) or with --kubeconfig; else required.
    #[arg(long, value_parser = parse_source)]
    pub source: Option<SourceSpec>,
    /// The kubeconfig for `--source kube` (default: KUBECONFIG, ~/.kube/config,
    /// then the pod's service account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Where to write the status JSON (atomically) after each sync.
    #[arg(long, default_value = weft_agent::status::DEFAULT_STATUS_FILE)]
    pub status_file: PathBuf,
    /// The pod network of the whole cluster: one CIDR, or one per family for
    /// dual-stack (`10.244.0.0/16,fd00:10:244::/56`). When given, the agent
    /// owns the node's masquerade rule: pod traffic leaving this network is
    /// masqueraded. Without it, the agent never touches masquerade.
    #[arg(long, value_parser = parse_cidr, value_delimiter = ',', num_args = 1)]
    pub cluster_cidr: Vec<IpNetwork>,
    /// The CNI network's name: the comment on the masquerade rules (the plugin
    /// writes the same comment).
    #[arg(long, default_value = "weft", value_parser = parse_network_name)]
    pub network_name: String,
    /// NetworkPolicy enforcement: `iptables` (ipsets and weft's FORWARD chains,
    /// in the host's iptables mode), `nftables` (one `inet weft` table), `auto`
    /// (iptables where the host's rules are in iptables-legacy, else nftables;
    /// the log says which) or `off`. Masquerade goes with it. Also read from
    /// `WEFT_BACKEND` (a DaemonSet's env or ConfigMap key).
    #[arg(long, env = "WEFT_BACKEND", default_value = "auto")]
    pub backend: BackendChoice,
    /// How pods on other nodes are reached: `host-gw` (routes via their
    /// InternalIPs: the underlay must carry pod addresses), `vxlan` (an
    /// overlay to every node) or `auto` (host-gw to nodes on this node's
    /// subnet, vxlan beyond it). Also read from `WEFT_MODE` (a ConfigMap key).
    #[arg(long, env = "WEFT_MODE", default_value = "host-gw", value_parser = clap::builder::ValueParser::new(parse_mode))]
    pub mode: Mode,
    /// The overlay's VXLAN network identifier; every node must use the same.
    #[arg(long, env = "WEFT_VXLAN_VNI", default_value_t = DEFAULT_VNI,
          value_parser = clap::value_parser!(u32).range(1..=0xff_ffff))]
    pub vxlan_vni: u32,
    /// The overlay's UDP port; every node must use the same.
    #[arg(long, env = "WEFT_VXLAN_PORT", default_value_t = DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub vxlan_port: u16,
    /// Listen on this unix socket for the plugin's pod reports (ADD waits until
    /// the new pod's policy is in force). The plugin's `agentSocket` must match.
    #[arg(long)]
    pub pod_socket: Option<PathBuf>,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address (a
    /// loopback one: any process on the node can reach it).
    #[arg(long)]
    pub http: Option<std::net::SocketAddr>,
    /// Serve `/denied?since=MS` (the denied-connection log, JSON lines:
    /// pod names, addresses, ports, policies) on this unix socket, root-only
    /// (0600), with the other paths.
    #[arg(long)]
    pub denied_socket: Option<PathBuf>,
    /// Serve `/denied` on `--http` too, to every local process.
    #[arg(long, requires = "http")]
    pub http_denied: bool,
    /// Write the conflist (`10-weft.conflist`) into this CNI config dir once the
    /// node is ready to carry pods (its pod CIDR known, policy applied).
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// The CNI bin dir: portmap is chained in the conflist when it is there.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// Delete weft's routes (and, with --cluster-cidr, the masquerade rule) on SIGTERM/SIGINT.
    #[arg(long)]
    pub cleanup_on_exit: bool,
    /// Source poll interval, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub poll_ms: u64,
    /// Full resync interval, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub resync_ms: u64,
    /// Single-port rules with at most this many peer networks are compiled
    /// to exact (pod, port, peer) set entries, a fixed cost per packet;
    /// rules with more peers get one rule over a (pod, port) set and a peer
    /// set, so set elements grow with pods plus peers, not their product.
    #[arg(long, env = "WEFT_TRIPLE_PEERS", default_value_t = weft_agent::policy::DEFAULT_TRIPLE_PEERS)]
    pub triple_peers: usize,
    /// What to log (on stderr): a level (error, warn, info, debug, trace) or
    /// `tracing` directives such as `info,weft_agent::agent=debug`. Also read
    /// from `WEFT_LOG`, then `RUST_LOG`; default info.
    #[arg(long, env = "WEFT_LOG", value_parser = weft_agent::logging::parse_level)]
    pub log_level: Option<String>,
    /// With `--source kube` and the ClusterNetworkPolicy CRD served: report
    /// the CNPs this node applied and, on the agent holding the Lease
    /// `weft-cnp-status`, write every CNP's status conditions. Also read
    /// from `WEFT_CNP_STATUS`.
    #[arg(long, env = "WEFT_CNP_STATUS", default_value_t = true, action = clap::ArgAction::Set)]
    pub cnp_status: bool,
    /// The namespace of the status Leases (the agent's own; the DaemonSet
    /// sets POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system", value_parser = parse_namespace)]
    pub lease_namespace: String,
}

/// A namespace name: a DNS label (RFC 1123).
fn parse_namespace(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"))
    }
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
pub fn resolve_source(
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

/// Checks that `cidrs` hold at most one network per family.
pub fn one_per_family(cidrs: &[IpNetwork]) -> Result<(), String> {
    let v4 = cidrs.iter().filter(|c| c.is_ipv4()).count();
    if v4 > 1 || cidrs.len() - v4 > 1 {
        return Err(format!("at most one CIDR per family, got {cidrs:?}"));
    }
    Ok(())
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

/// `weft-agent explain`: why a connection passes or not.
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// The cluster state to evaluate (`dir:PATH`, as the agent's `--source`).
    #[arg(long, value_parser = parse_dir)]
    pub source: PathBuf,
    /// The cluster's pod network: one CIDR, or one per family (as the
    /// agent's `--cluster-cidr`).
    #[arg(long, value_parser = parse_cidr, value_delimiter = ',', num_args = 1)]
    pub cluster_cidr: Vec<IpNetwork>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also check the node this runs on (`--node`) for the misconfigurations
    /// behind the classic failures, and say which are in play.
    #[arg(long, requires = "node")]
    pub check: bool,
    /// The node this runs on (for `--check`).
    #[arg(long)]
    pub node: Option<String>,
    /// The node's weft bridge (for `--check`).
    #[arg(long, default_value = "weft0")]
    pub bridge: String,
    /// The CNI network's name, the masquerade rule's comment (for `--check`).
    #[arg(long, default_value = "weft")]
    pub network_name: String,
    /// The client: NAMESPACE/POD, an IPv4 address, or node/NAME.
    pub src: String,
    /// The server and port: DST:PORT[/tcp|udp|sctp], DST as for SRC.
    pub dst: String,
}

/// `weft-agent install-cni`: the CNI binaries into the host's bin dir.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// Where `weft` and `weft-ipam` are (default: next to this binary).
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// The host's CNI bin dir (mounted into the init container).
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `argv` as the agent's flags (the default command).
    fn run_args<I: IntoIterator<Item = T>, T: Into<std::ffi::OsString> + Clone>(
        argv: I,
    ) -> Result<RunArgs, clap::Error> {
        match Cli::try_parse_from(argv)?.command() {
            Command::Run(a) => Ok(a),
            other => panic!("not run: {other:?}"),
        }
    }

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
        let a = run_args(base).unwrap();
        assert_eq!((a.cluster_cidr.is_empty(), a.network_name.as_str()), (true, "weft"));
        let a =
            run_args(base.into_iter().chain(["--cluster-cidr", "10.244.0.0/16", "--network-name", "pods"]))
                .unwrap();
        assert_eq!(a.cluster_cidr, ["10.244.0.0/16".parse().unwrap()]);
        let dual = base.into_iter().chain(["--cluster-cidr", "10.244.0.0/16,fd00::af4:0/112"]);
        let dual = run_args(dual).unwrap().cluster_cidr;
        assert_eq!((dual.len(), one_per_family(&dual)), (2, Ok(())));
        assert!(one_per_family(&[dual[0], dual[0]]).is_err());
        assert_eq!(a.network_name, "pods");
        assert!(run_args(base.into_iter().chain(["--cluster-cidr", "nope"])).is_err());
        assert!(run_args(base.into_iter().chain(["--network-name", " "])).is_err());
        for bad in ["", "Node-1", "node_1", "-n", "n.", "a..b"] {
            let argv = ["weft-agent", "--node", bad, "--source", "dir:/x", "--status-file", "/s"];
            assert!(run_args(argv).is_err(), "{bad:?}");
        }
        let a = run_args(base).unwrap();
        assert_eq!((a.cnp_status, a.lease_namespace.as_str()), (true, "kube-system"), "the defaults");
        let a =
            run_args(base.into_iter().chain(["--cnp-status=false", "--lease-namespace", "weft"])).unwrap();
        assert_eq!((a.cnp_status, a.lease_namespace.as_str()), (false, "weft"));
        for bad in ["", "Kube", "a.b", "-a", &"a".repeat(64)] {
            assert!(run_args(base.into_iter().chain(["--lease-namespace", bad])).is_err(), "{bad:?}");
        }
        for good in ["node-1", "ip-10-0-0-1.ec2.internal", "n"] {
            let argv = ["weft-agent", "--node", good, "--source", "dir:/x", "--status-file", "/s"];
            assert_eq!(run_args(argv).unwrap().node, good);
        }
        assert_eq!(run_args(base).unwrap().backend, BackendChoice::Auto);
        let a = run_args(base.into_iter().chain(["--backend", "nftables"])).unwrap();
        assert_eq!(a.backend, BackendChoice::Nftables);
        assert!(run_args(base.into_iter().chain(["--backend", "ebpf"])).is_err());
        let a = run_args(base).unwrap();
        assert_eq!((a.mode, a.vxlan_vni, a.vxlan_port), (Mode::HostGw, DEFAULT_VNI, DEFAULT_PORT));
        let a = run_args(base.into_iter().chain(["--mode", "vxlan", "--vxlan-vni", "42"])).unwrap();
        assert_eq!((a.mode, a.vxlan_vni), (Mode::Vxlan, 42));
        for bad in
            [["--mode", "geneve"], ["--vxlan-vni", "0"], ["--vxlan-vni", "16777216"], ["--vxlan-port", "0"]]
        {
            assert!(run_args(base.into_iter().chain(bad)).is_err(), "{bad:?}");
        }
        let a = run_args(base.into_iter().chain(["--denied-socket", "/run/weft/denied.sock"])).unwrap();
        assert_eq!((a.denied_socket, a.http_denied), (Some("/run/weft/denied.sock".into()), false));
        assert!(run_args(base.into_iter().chain(["--http-denied"])).is_err(), "needs --http");
        let a = run_args(base.into_iter().chain(["--http", "127.0.0.1:1", "--http-denied"])).unwrap();
        assert!(a.http_denied);
        let a = run_args(base.into_iter().chain(["--log-level", "debug"])).unwrap();
        assert_eq!(a.log_level.as_deref(), Some("debug"));
        assert!(run_args(base.into_iter().chain(["--log-level", "weft=loud"])).is_err());
    }

    #[test]
    fn sources() {
        let parse = |argv: &[&str]| {
            let a = run_args(["weft-agent", "--node", "n1", "--status-file", "/s"].iter().chain(argv))
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

    #[test]
    fn subcommands_and_the_default() {
        let base = ["weft-agent", "--node", "n1", "--source", "dir:/x"];
        let a = run_args(base).unwrap();
        assert_eq!(a.status_file, PathBuf::from("/run/weft/status.json"), "the default status file");
        let argv = ["weft-agent", "run", "--node", "n1", "--source", "dir:/x", "--backend", "iptables"];
        assert_eq!(run_args(argv).unwrap().backend, BackendChoice::Iptables);
        let c = Cli::try_parse_from(["weft-agent", "install-cni", "--bin-dir", "/b"]).unwrap().command();
        assert!(
            matches!(c, Command::InstallCni(InstallArgs { ref bin_dir, .. }) if bin_dir == &PathBuf::from("/b"))
        );
        let c = Cli::try_parse_from(["weft-agent", "explain", "--source", "dir:/x", "a/b", "c/d:80"]);
        assert!(
            matches!(c.unwrap().command(), Command::Explain(ExplainArgs { ref src, .. }) if src == "a/b")
        );
        assert!(Cli::try_parse_from(["weft-agent"]).is_err(), "--node is required to run");
        assert!(Cli::try_parse_from(["weft-agent", "--node", "n1", "explain", "a", "b"]).is_err());
    }

    #[test]
    fn help_lists_the_commands_and_each_has_its_own_usage() {
        use clap::CommandFactory;
        let mut cmd = Cli::command_for_update();
        let help = cmd.render_help().to_string();
        for c in ["run", "install-cni", "explain", "--node", "--status-file"] {
            assert!(help.contains(c), "{c} missing from --help:\n{help}");
        }
        for (sub, usage) in [
            ("install-cni", "Usage: weft-agent install-cni [OPTIONS]"),
            ("explain", "Usage: weft-agent explain [OPTIONS] --source <SOURCE> <SRC> <DST>"),
            ("run", "Usage: weft-agent run [OPTIONS] --node <NODE>"),
        ] {
            let e = Cli::try_parse_from(["weft-agent", sub, "--help"]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
            assert!(e.to_string().contains(usage), "{sub}:\n{e}");
        }
    }
}
