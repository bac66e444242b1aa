//! What a cluster installs, checked without a cluster: every document of
//! `deploy/weft.yaml` parses into its k8s-openapi type, the ClusterRole and
//! the Role grant exactly the agent's API calls (`kube_rbac::API_CALLS`), the
//! DaemonSet passes only flags `weft-agent` accepts and mounts what those
//! flags name, `deploy/kind/kind-config.yaml` has the keys the script relies
//! on, the Containerfile ships the binaries `install-cni` copies, and
//! `deploy/kind/run.sh` is shellcheck-clean.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;
use weft_agent::kube_rbac::API_CALLS;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate is in the workspace").to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The YAML documents of `text` (empty ones skipped), as JSON values.
fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("not YAML: {e}")))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    let kind = v["kind"].to_string();
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

/// deploy/weft.yaml, typed.
struct Manifest {
    account: ServiceAccount,
    role: ClusterRole,
    binding: ClusterRoleBinding,
    /// The Leases, in the agent's namespace.
    ns_role: Role,
    ns_binding: RoleBinding,
    config: ConfigMap,
    daemonset: DaemonSet,
}

fn manifest() -> Manifest {
    let mut by_kind: BTreeMap<String, Value> = BTreeMap::new();
    for doc in documents(&read("deploy/weft.yaml")) {
        let kind = doc["kind"].as_str().expect("every document has a kind").to_string();
        assert!(by_kind.insert(kind.clone(), doc).is_none(), "two {kind} documents");
    }
    let mut take = |kind: &str, api: &str| {
        let v = by_kind.remove(kind).unwrap_or_else(|| panic!("no {kind} in deploy/weft.yaml"));
        assert_eq!(v["apiVersion"], api, "{kind}");
        v
    };
    let m = Manifest {
        account: typed(take("ServiceAccount", "v1")),
        role: typed(take("ClusterRole", "rbac.authorization.k8s.io/v1")),
        binding: typed(take("ClusterRoleBinding", "rbac.authorization.k8s.io/v1")),
        ns_role: typed(take("Role", "rbac.authorization.k8s.io/v1")),
        ns_binding: typed(take("RoleBinding", "rbac.authorization.k8s.io/v1")),
        config: typed(take("ConfigMap", "v1")),
        daemonset: typed(take("DaemonSet", "apps/v1")),
    };
    assert!(by_kind.is_empty(), "unexpected documents: {:?}", by_kind.keys());
    m
}

fn pod(m: &Manifest) -> &PodSpec {
    m.daemonset.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("the DaemonSet has a pod spec")
}

fn agent(m: &Manifest) -> &Container {
    pod(m).containers.iter().find(|c| c.name == "weft-agent").expect("a weft-agent container")
}

/// `--flag=value` or `--flag value` pairs of `args` (a flag without a value maps to "").
fn flags(args: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        let Some(flag) = a.strip_prefix("--") else { continue };
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => match it.peek() {
                Some(v) if !v.starts_with("--") => (flag.to_string(), it.next().cloned().unwrap_or_default()),
                _ => (flag.to_string(), String::new()),
            },
        };
        assert!(out.insert(name.clone(), value).is_none(), "--{name} given twice");
    }
    out
}

/// The long flags `weft-agent [sub] --help` lists.
fn accepted_flags(sub: &[&str]) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-agent")).args(sub).arg("--help").output().unwrap();
    assert!(out.status.success(), "{sub:?} --help: {}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let flags: BTreeSet<String> = help
        .lines()
        .filter_map(|l| l.trim_start().split([' ', ',']).find(|w| w.starts_with("--")))
        .map(|w| w.trim_start_matches('-').to_string())
        .collect();
    assert!(flags.contains("help"), "{help}");
    flags
}

#[test]
fn every_document_parses_into_its_type() {
    let m = manifest();
    for (kind, meta) in [
        ("ServiceAccount", &m.account.metadata),
        ("ConfigMap", &m.config.metadata),
        ("DaemonSet", &m.daemonset.metadata),
        ("Role", &m.ns_role.metadata),
        ("RoleBinding", &m.ns_binding.metadata),
    ] {
        assert_eq!(meta.namespace.as_deref(), Some("kube-system"), "{kind}");
    }
    assert!(m.role.metadata.namespace.is_none() && m.binding.metadata.namespace.is_none());
}

/// The (group, resource, verb) triples `rules` grant, each once.
fn granted(rules: Option<&[PolicyRule]>) -> BTreeSet<(String, String, String)> {
    let mut granted = BTreeSet::new();
    for r in rules.unwrap_or_default() {
        assert!(r.resource_names.is_none() && r.non_resource_urls.is_none(), "{r:?}");
        for g in r.api_groups.as_deref().unwrap_or_default() {
            for res in r.resources.as_deref().unwrap_or_default() {
                for v in &r.verbs {
                    assert!(
                        granted.insert((g.clone(), res.clone(), v.clone())),
                        "granted twice: {g}/{res} {v}"
                    );
                }
            }
        }
    }
    granted
}

/// The triples of the agent's calls, cluster-wide or in its namespace.
fn needed(namespaced: bool) -> BTreeSet<(String, String, String)> {
    API_CALLS
        .iter()
        .filter(|c| c.namespaced == namespaced)
        .flat_map(|c| c.verbs.iter().map(|v| (c.group.to_string(), c.resource.to_string(), v.to_string())))
        .collect()
}

/// The ClusterRole grants exactly the (group, resource, verb) triples the
/// agent uses cluster-wide, the Role in its namespace exactly the others:
/// nothing missing (a watch would be forbidden) and nothing more.
#[test]
fn the_roles_grant_exactly_the_agents_api_calls() {
    let m = manifest();
    let cluster = granted(m.role.rules.as_deref());
    assert_eq!(cluster, needed(false));
    assert_eq!(
        cluster.len(),
        16,
        "get, list and watch of five kinds (ClusterNetworkPolicy the fifth), and patch of CNP status"
    );
    assert!(m.role.aggregation_rule.is_none());
    let namespaced = granted(m.ns_role.rules.as_deref());
    assert_eq!(namespaced, needed(true));
    assert_eq!(namespaced.len(), 4, "get, list, create and update of Leases; no delete, no watch");
}

/// The binding (`role_ref`, `subjects`) gives the `kind` named `name` to
/// the service account `sa` alone.
fn gives(
    role_ref: &RoleRef,
    subjects: Option<&[Subject]>,
    kind: &str,
    name: Option<&String>,
    sa: &ObjectMeta,
) {
    assert_eq!((role_ref.kind.as_str(), role_ref.api_group.as_str()), (kind, "rbac.authorization.k8s.io"));
    assert_eq!(Some(&role_ref.name), name);
    let subjects = subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(
        (Some(&subjects[0].name), subjects[0].namespace.as_ref()),
        (sa.name.as_ref(), sa.namespace.as_ref())
    );
}

#[test]
fn the_bindings_give_the_roles_to_the_daemonsets_account() {
    let m = manifest();
    let sa = &m.account.metadata;
    gives(
        &m.binding.role_ref,
        m.binding.subjects.as_deref(),
        "ClusterRole",
        m.role.metadata.name.as_ref(),
        sa,
    );
    let b = &m.ns_binding;
    gives(&b.role_ref, b.subjects.as_deref(), "Role", m.ns_role.metadata.name.as_ref(), sa);
    assert_eq!(pod(&m).service_account_name.as_ref(), sa.name.as_ref());
}

/// A node agent: host network, on every node whatever its taints, critical.
#[test]
fn the_daemonset_runs_on_every_node_in_the_host_network() {
    let m = manifest();
    let spec = m.daemonset.spec.as_ref().unwrap();
    let selector = spec.selector.match_labels.as_ref().expect("matchLabels");
    let labels = spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref()).expect("template labels");
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)), "the selector matches the pods");
    let p = pod(&m);
    assert_eq!(p.host_network, Some(true));
    assert_eq!(p.priority_class_name.as_deref(), Some("system-node-critical"));
    let tolerations = p.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()),
        "a toleration of every taint: {tolerations:?}"
    );
}

/// The agent's args are flags weft-agent has; `$(VAR)`s are set in its env,
/// from the downward API or keys the ConfigMap has; probes hit `--http`.
#[test]
fn the_agent_gets_flags_it_accepts_and_values_that_exist() {
    let m = manifest();
    let c = agent(&m);
    assert!(c.command.is_none(), "the image's entrypoint is weft-agent");
    let args = c.args.clone().unwrap_or_default();
    let given = flags(&args);
    let accepted = accepted_flags(&[]);
    for f in given.keys() {
        assert!(accepted.contains(f), "--{f} is not a weft-agent flag: {accepted:?}");
    }
    for f in ["node", "source", "status-file", "cluster-cidr", "cni-conf-dir", "http", "pod-socket"] {
        assert!(given.contains_key(f), "--{f} missing: {args:?}");
    }
    assert_eq!(given["source"], "kube");
    assert!(!given.contains_key("cleanup-on-exit"), "an upgrade must not lift the policy in force");

    let env: BTreeMap<&str, _> =
        c.env.as_deref().unwrap_or_default().iter().map(|e| (e.name.as_str(), e)).collect();
    let node = env["NODE_NAME"]
        .value_from
        .as_ref()
        .and_then(|f| f.field_ref.as_ref())
        .expect("NODE_NAME from a field");
    assert_eq!(node.field_path, "spec.nodeName");
    assert_eq!(given["node"], "$(NODE_NAME)");
    // The status Leases go to the agent's own namespace, where the Role grants them.
    let ns = env["POD_NAMESPACE"].value_from.as_ref().and_then(|f| f.field_ref.as_ref()).expect("a field");
    assert_eq!(ns.field_path, "metadata.namespace");
    assert!(help_says_env("POD_NAMESPACE"), "--lease-namespace reads POD_NAMESPACE");
    let config = m.config.data.clone().unwrap_or_default();
    for e in env.values() {
        if let Some(k) = e.value_from.as_ref().and_then(|f| f.config_map_key_ref.as_ref()) {
            assert_eq!(Some(&k.name), m.config.metadata.name.as_ref(), "{}", e.name);
            assert!(config.contains_key(&k.key), "{}: no key {} in the ConfigMap", e.name, k.key);
        }
    }
    for v in given.values() {
        if let Some(var) = v.strip_prefix("$(").and_then(|v| v.strip_suffix(')')) {
            assert!(env.contains_key(var), "$({var}) is not in the env");
        }
    }
    // WEFT_BACKEND, WEFT_MODE and WEFT_LOG are read by weft-agent itself (clap env).
    let help = Command::new(env!("CARGO_BIN_EXE_weft-agent")).arg("--help").output().unwrap().stdout;
    let help = String::from_utf8_lossy(&help);
    for var in ["WEFT_BACKEND", "WEFT_MODE", "WEFT_LOG"] {
        assert!(env.contains_key(var) && help.contains(&format!("env: {var}")), "{var}");
    }
    assert!(config["cluster-cidr"].parse::<ipnetwork::IpNetwork>().is_ok(), "{config:?}");

    let http: std::net::SocketAddr = given["http"].parse().expect("--http is an address");
    assert!(http.ip().is_loopback(), "metrics and health stay on the node");
    for (probe, path) in [(&c.liveness_probe, "/healthz"), (&c.readiness_probe, "/readyz")] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{path} probe"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.host.as_deref(), Some(http.ip().to_string().as_str()));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(http.port().into())
        );
    }
    let res = c.resources.as_ref().expect("resources");
    assert!(res.requests.as_ref().is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")));
    assert!(res.limits.as_ref().is_some_and(|r| r.contains_key("memory")));
}

/// True if `weft-agent --help` says a flag reads `var`.
fn help_says_env(var: &str) -> bool {
    let help = Command::new(env!("CARGO_BIN_EXE_weft-agent")).arg("--help").output().unwrap().stdout;
    String::from_utf8_lossy(&help).contains(&format!("env: {var}"))
}

/// Host path behind the container path `p`: the mount that holds it, and
/// the volume's hostPath.
fn host_path(spec: &PodSpec, c: &Container, p: &str) -> Option<(String, bool)> {
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    let m = mounts
        .iter()
        .filter(|m| Path::new(p).starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())?;
    let v = spec.volumes.as_deref().unwrap_or_default().iter().find(|v| v.name == m.name)?;
    let rest = Path::new(p).strip_prefix(&m.mount_path).ok()?;
    let base = &v.host_path.as_ref()?.path;
    let host = if rest.as_os_str().is_empty() {
        base.clone()
    } else {
        Path::new(base).join(rest).display().to_string()
    };
    Some((host, m.read_only == Some(true)))
}

/// Every mount names a volume and every volume is mounted; the paths the
/// flags name are the host's CNI dirs; the pod socket is at the same path
/// inside and out (the conflist names it for the plugin on the host).
#[test]
fn mounts_match_volumes_and_the_flags_paths() {
    let m = manifest();
    let spec = pod(&m);
    let volumes: BTreeSet<&str> =
        spec.volumes.as_deref().unwrap_or_default().iter().map(|v| v.name.as_str()).collect();
    let mut mounted = BTreeSet::new();
    for c in spec.containers.iter().chain(spec.init_containers.as_deref().unwrap_or_default()) {
        for vm in c.volume_mounts.as_deref().unwrap_or_default() {
            assert!(volumes.contains(vm.name.as_str()), "{}: no volume {}", c.name, vm.name);
            mounted.insert(vm.name.as_str());
        }
    }
    assert_eq!(mounted, volumes, "volumes nobody mounts");

    let c = agent(&m);
    let given = flags(c.args.as_deref().unwrap_or_default());
    let host = |flag: &str| {
        host_path(spec, c, &given[flag]).unwrap_or_else(|| panic!("--{flag} is not on a host mount"))
    };
    assert_eq!(host("cni-conf-dir"), ("/etc/cni/net.d".into(), false));
    assert_eq!(host("cni-bin-dir"), ("/opt/cni/bin".into(), true), "the agent only looks for portmap");
    assert_eq!(host("pod-socket").0, given["pod-socket"]);
    assert_eq!(given["pod-socket"], weft_conf::netconf::DEFAULT_AGENT_SOCKET);
    assert_eq!(host("status-file").0, given["status-file"]);
    assert_eq!(host_path(spec, c, "/run/xtables.lock"), Some(("/run/xtables.lock".into(), false)));
}

#[test]
fn the_agent_has_network_capabilities_only() {
    let m = manifest();
    let p = pod(&m);
    let init = p.init_containers.as_deref().unwrap_or_default();
    for c in p.containers.iter().chain(init) {
        let sc = c.security_context.as_ref().unwrap_or_else(|| panic!("{}: securityContext", c.name));
        assert_ne!(sc.privileged, Some(true), "{}", c.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        let caps = sc.capabilities.as_ref().unwrap_or_else(|| panic!("{}: capabilities", c.name));
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]), "{}", c.name);
        let added: BTreeSet<&str> =
            caps.add.as_deref().unwrap_or_default().iter().map(String::as_str).collect();
        let want: BTreeSet<&str> =
            if c.name == "weft-agent" { ["NET_ADMIN", "NET_RAW"].into() } else { [].into() };
        assert_eq!(added, want, "{}", c.name);
    }
}

/// The init container runs `weft-agent install-cni` into the host's CNI bin dir.
#[test]
fn the_init_container_installs_the_cni_binaries() {
    let m = manifest();
    let spec = pod(&m);
    let init = spec.init_containers.as_deref().unwrap_or_default();
    assert_eq!(init.len(), 1, "{init:?}");
    let c = &init[0];
    assert_eq!(c.image, agent(&m).image, "the binaries come with the agent's image");
    let cmd = c.command.clone().unwrap_or_default();
    assert!(
        cmd.first().is_some_and(|b| b.ends_with("/weft-agent"))
            && cmd.get(1).map(String::as_str) == Some("install-cni"),
        "{cmd:?}"
    );
    let given = flags(&cmd[2..]);
    let accepted = accepted_flags(&["install-cni"]);
    assert!(given.keys().all(|f| accepted.contains(f)), "{given:?} vs {accepted:?}");
    assert_eq!(host_path(spec, c, &given["bin-dir"]), Some(("/opt/cni/bin".into(), false)));
}

/// The Containerfile builds and ships weft-agent next to the binaries
/// install-cni copies (it copies from the agent's own directory).
#[test]
fn the_image_holds_what_install_cni_copies() {
    let text = read("Containerfile");
    let copy =
        text.lines().find(|l| l.starts_with("COPY --from=build")).expect("a COPY from the build stage");
    let words: Vec<&str> = copy.split_whitespace().collect();
    let dest = words.last().copied().unwrap_or_default();
    let shipped: BTreeSet<&str> =
        words[2..words.len() - 1].iter().filter_map(|w| w.rsplit('/').next()).collect();
    let mut want: BTreeSet<&str> = weft_agent::cni_config::BINARIES.into();
    want.insert("weft-agent");
    assert_eq!(shipped, want);
    let image = manifest();
    let cmd = image
        .daemonset
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .unwrap()
        .init_containers
        .as_deref()
        .unwrap()[0]
        .command
        .clone()
        .unwrap_or_default();
    assert_eq!(Path::new(&cmd[0]).parent(), Some(Path::new(dest.trim_end_matches('/'))));
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/weft-agent\"]"), "{text}");
    for pkg in ["iptables", "ipset", "nftables"] {
        assert!(text.contains(pkg), "the runtime image installs {pkg}");
    }
}

#[test]
fn the_kind_cluster_has_no_default_cni_and_the_configmaps_pod_subnet() {
    let docs = documents(&read("deploy/kind/kind-config.yaml"));
    assert_eq!(docs.len(), 1);
    let k = &docs[0];
    assert_eq!(
        (k["kind"].as_str(), k["apiVersion"].as_str()),
        (Some("Cluster"), Some("kind.x-k8s.io/v1alpha4"))
    );
    assert_eq!(k["networking"]["disableDefaultCNI"], Value::Bool(true));
    let subnet = k["networking"]["podSubnet"].as_str().expect("a podSubnet");
    let config = manifest().config.data.unwrap_or_default();
    assert_eq!(Some(subnet), config.get("cluster-cidr").map(String::as_str), "the ConfigMap's cluster-cidr");
    let roles: Vec<&str> =
        k["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["role"].as_str()).collect();
    assert_eq!(roles, ["control-plane", "worker", "worker"]);
}

#[test]
fn the_kind_script_is_shellcheck_clean() {
    let script = repo().join("deploy/kind/run.sh");
    let syntax = Command::new("bash").arg("-n").arg(&script).status().unwrap();
    assert!(syntax.success(), "bash -n {}", script.display());
    let Ok(out) = Command::new("shellcheck").arg(&script).output() else {
        return weft_test_support::skip(
            "the_kind_script_is_shellcheck_clean",
            "shellcheck is not installed (`make deps` installs it)",
        );
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
