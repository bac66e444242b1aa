//! The periodic resync against the kernel, on both backends, dual stack, in a network
//! namespace of the test's own (root; skips otherwise): after changes the
//! backend patched, a resync with no drift renders nothing and leaves every
//! kernel object as it was (the same nft handles, no set or chain written);
//! an element deleted by hand from every set (intervals and concatenations
//! too), one added by hand, and a rule deleted by hand are put right by the
//! next resync, elements without touching the chains or other objects. The
//! check a resync starts with, run on another thread as the agent runs it
//! off its loop, finds each of these drifts, and an intact kernel intact.

use std::process::Command;

use weft_agent::backend::PolicyBackend;
use weft_agent::iptables::Iptables;
use weft_agent::model::{parse_manifests, Model};
use weft_agent::nft::kernel::read_back;
use weft_agent::nft::Nft;
use weft_agent::policy::{Options, PolicyEngine};
use weft_netkit::netns::run_in_new;

/// True when root; otherwise the test skips (fails under CI).
fn root() -> bool {
    weft_test_support::root_or_skip(&weft_test_support::this_test(), "a network namespace of its own")
}

/// Dual-stack node-1 with `pods` pods of app a (10.244.1.10 and
/// fd00:244:1::10, .11, ...), isolated for ingress: port 80 from app b,
/// port 443 from 172.16.0.0/16 but 172.16.1.0/24 and from fd00:16::/32 but
/// fd00:16:1::/48.
fn model(pods: u8) -> Model {
    let mut text = String::from(
        "kind: Node\nmetadata: {name: node-1}\nspec: {podCIDRs: [10.244.1.0/24, 'fd00:244:1::/64']}\n\
         ---\nkind: Node\nmetadata: {name: node-2}\nspec: {podCIDRs: [10.244.2.0/24, 'fd00:244:2::/64']}\n\
         ---\nkind: Namespace\nmetadata: {name: x}\n\
         ---\nkind: Pod\nmetadata: {name: b, namespace: x, labels: {app: b}}\n\
         spec: {nodeName: node-2}\nstatus: {podIPs: [{ip: 10.244.2.5}, {ip: 'fd00:244:2::5'}]}\n\
         ---\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\nspec:\n  \
         podSelector: {matchLabels: {app: a}}\n  ingress:\n  \
         - from: [{podSelector: {matchLabels: {app: b}}}]\n    ports: [{port: 80}]\n  \
         - from: [{ipBlock: {cidr: 172.16.0.0/16, except: [172.16.1.0/24]}}, \
         {ipBlock: {cidr: 'fd00:16::/32', except: ['fd00:16:1::/48']}}]\n    ports: [{port: 443}]\n",
    );
    for i in 0..pods {
        text += &format!(
            "---\nkind: Pod\nmetadata: {{name: a{i}, namespace: x, labels: {{app: a}}}}\n\
             spec: {{nodeName: node-1}}\nstatus: {{podIPs: [{{ip: 10.244.1.{n}}}, {{ip: 'fd00:244:1::{n}'}}]}}\n",
            n = 10 + i
        );
    }
    parse_manifests(&text).expect("the manifests parse").into_iter().collect()
}

fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().expect("the tool runs");
    assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The objects of nftables tables with their handles (`nft -a`): a
/// rewrite gives new ones. The netns is the test's: all are weft's.
fn handles(tables: &[&str]) -> Vec<String> {
    tables
        .iter()
        .flat_map(|t| {
            let mut argv = vec!["nft", "-a", "list", "table"];
            argv.extend(t.split(' '));
            let listing = sh(&argv);
            let lines: Vec<String> =
                listing.lines().filter(|l| l.contains("# handle")).map(|l| l.trim().to_string()).collect();
            lines
        })
        .collect()
}

/// weft's objects as the kernel holds them: the nft listing (handles
/// included) or, on iptables, `ipset save`, weft's chains in `iptables-save`
/// and, with iptables of the nf_tables flavour, their rules' handles.
fn kernel(backend: &str) -> String {
    if backend == "nftables" {
        return handles(&["inet weft"]).join("\n");
    }
    let sets = sh(&["ipset", "save"]);
    let saves = ["iptables-save", "ip6tables-save"].into_iter().flat_map(|save| {
        ["mangle", "filter"].map(|t| sh(&[save, "-t", t]).lines().map(String::from).collect::<Vec<_>>())
    });
    let chains: Vec<String> = saves.flatten().filter(|l| l.contains("WEFT-")).collect();
    let nft_flavour = sh(&["iptables", "--version"]).contains("nf_tables");
    let tables = ["ip filter", "ip mangle", "ip6 filter", "ip6 mangle"];
    let handles = if nft_flavour { handles(&tables) } else { Vec::new() };
    format!("{sets}\n{}\n{}", chains.join("\n"), handles.join("\n"))
}

/// weft's set elements, as a multiset of text per set.
fn elements(backend: &str) -> String {
    if backend == "nftables" {
        return format!("{:?}", read_back().expect("weft's table reads back"));
    }
    let mut lines: Vec<String> =
        sh(&["ipset", "save"]).lines().filter(|l| l.starts_with("add weft-")).map(String::from).collect();
    lines.sort();
    lines.join("\n")
}

/// The check a resync starts with, run off the caller's thread as the
/// agent runs it: (the epoch it was taken at, whether the kernel is intact).
fn off_the_loop(backend: &dyn PolicyBackend) -> (u64, bool) {
    let c = backend.check().expect("a check, once applied and listed");
    (c.epoch, std::thread::spawn(c.run).join().expect("the check ends"))
}

fn check(backend: &mut dyn PolicyBackend) {
    let name = backend.name();
    assert!(backend.check().is_none(), "{name}: nothing applied, nothing to check against");
    let cidrs = ["10.244.0.0/16".parse().unwrap(), "fd00:244::/48".parse().unwrap()];
    let (old, new) = (model(2), model(3));
    let mut engine = PolicyEngine::new(&old, "node-1", &cidrs, Options::default());
    engine.take_dirty();
    backend.apply(engine.ir(), true).expect("the first apply");
    // iptables' chains are listed on a thread right after they are written:
    // the check can be made without a resync first, and the first resync
    // compares instead of writing them again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while backend.check().is_none() {
        assert!(std::time::Instant::now() < deadline, "{name}: no check after the first apply");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let written = kernel(name);
    let first = backend.resync(engine.ir()).expect("a resync");
    assert_eq!(first.change, None, "{name}: the first resync finds nothing to do");
    assert_eq!(kernel(name), written, "{name}: and writes nothing");
    let taken = off_the_loop(backend);
    // A pod comes: patched, as the agent's loop patches it.
    engine.update(&old, &new);
    let dirty = engine.take_dirty();
    backend.apply_changes(engine.ir(), &dirty).expect("the pod's change is patched");
    assert_ne!(backend.epoch(), taken.0, "{name}: a check taken before a patch is stale");
    assert_eq!(off_the_loop(backend), (backend.epoch(), true), "{name}: intact after the patch");
    let before = kernel(name);
    assert!(local(name, "10.244.1.12"), "{name}: the patched pod is in");

    let quiet = backend.resync(engine.ir()).expect("a resync");
    assert_eq!(quiet.change, None, "{name}: no drift, no change");
    assert_eq!(kernel(name), before, "{name}: a resync without drift leaves every object as it was");

    // An element of every set deleted by hand (intervals and
    // concatenations too): put back, nothing else touched.
    let all = elements(name);
    let dropped = drop_one_of_each_set(name);
    assert!(dropped >= 6, "{name}: sets of several kinds, both families: {dropped}");
    assert_ne!(elements(name), all, "{name}: the drift is in the kernel");
    assert!(!off_the_loop(backend).1, "{name}: the check finds elements gone");
    let repaired = backend.resync(engine.ir()).expect("a resync");
    assert!(repaired.change.as_deref().is_some_and(|c| c.contains("drift")), "{name}: {repaired:?}");
    assert_eq!(elements(name), all, "{name}: the elements are back");
    assert_eq!(kernel(name), before, "{name}: and nothing else changed (no handle, no chain)");

    // An element added by hand: taken out again.
    let add: &[&str] = if name == "nftables" {
        &["nft", "add", "element", "inet", "weft", "local", "{ 10.244.1.99 }"]
    } else {
        &["ipset", "add", "weft-local", "10.244.1.99"]
    };
    assert!(off_the_loop(backend).1, "{name}: repaired, intact");
    sh(add);
    assert!(local(name, "10.244.1.99"), "{name}: the drift is in the kernel");
    assert!(!off_the_loop(backend).1, "{name}: the check finds an element added");
    let repaired = backend.resync(engine.ir()).expect("a resync");
    assert!(repaired.change.is_some(), "{name}: {repaired:?}");
    assert!(!local(name, "10.244.1.99"), "{name}: the stranger is out");
    assert!(local(name, "10.244.1.11"), "{name}: the rest stays");

    // A rule deleted by hand: the chains are written again, atomically.
    let elements_before = elements(name);
    let rules_before = rules(name);
    delete_a_rule(name);
    assert_ne!(rules(name), rules_before, "{name}: the drift is in the kernel");
    assert!(!off_the_loop(backend).1, "{name}: the check finds a rule gone");
    let repaired = backend.resync(engine.ir()).expect("a resync");
    assert!(repaired.change.is_some(), "{name}: {repaired:?}");
    assert_eq!(rules(name), rules_before, "{name}: the rule is back");
    assert_eq!(elements(name), elements_before, "{name}: and the elements as they were");
    let quiet = backend.resync(engine.ir()).expect("a resync");
    assert_eq!(quiet.change, None, "{name}: repaired, then quiet again");
    assert!(off_the_loop(backend).1, "{name}: and the check finds it intact");
    backend.cleanup().expect("cleanup");
}

/// Deletes the first element of each of weft's non-empty sets behind
/// weft's back (`nft -j`, the element as listed; `ipset del`): how many.
fn drop_one_of_each_set(backend: &str) -> usize {
    if backend == "iptables" {
        let save = sh(&["ipset", "save"]);
        let mut seen = std::collections::BTreeSet::new();
        for line in save.lines() {
            let mut words = line.split(' ');
            if let (Some("add"), Some(set), Some(member)) = (words.next(), words.next(), words.next()) {
                if set.starts_with("weft-") && seen.insert(set.to_string()) {
                    sh(&["ipset", "del", set, member]);
                }
            }
        }
        return seen.len();
    }
    let listing: serde_json::Value =
        serde_json::from_str(&sh(&["nft", "-j", "list", "table", "inet", "weft"])).expect("nft's JSON");
    let mut deleted = 0;
    for set in listing["nftables"].as_array().into_iter().flatten().filter_map(|o| o.get("set")) {
        let Some(first) = set["elem"].as_array().and_then(|e| e.first()) else { continue };
        let tx = serde_json::json!({"nftables": [{"delete": {"element": {
            "family": "inet", "table": "weft", "name": set["name"], "elem": [first]
        }}}]});
        let mut child = Command::new("nft")
            .args(["-j", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft runs");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), tx.to_string().as_bytes())
            .expect("nft reads");
        assert!(child.wait().expect("nft ends").success(), "deleting {first} from {}", set["name"]);
        deleted += 1;
    }
    deleted
}

/// True if weft's set of local pods holds `ip`.
fn local(backend: &str, ip: &str) -> bool {
    if backend == "nftables" {
        let sets = read_back().expect("weft's table reads back");
        return sets.get("local").is_some_and(|s| s.contains(&format!("\"{ip}\"")));
    }
    sh(&["ipset", "save", "weft-local"]).lines().any(|l| l == format!("add weft-local {ip}"))
}

/// weft's rules without handles or counters.
fn rules(backend: &str) -> String {
    if backend == "nftables" {
        // The chains, which follow the sets (whose elements a repair may list in another order).
        let listing = sh(&["nft", "list", "table", "inet", "weft"]);
        return listing.find("\tchain ").map_or(listing.clone(), |at| listing[at..].to_string());
    }
    let save = sh(&["iptables-save", "-t", "filter"]) + &sh(&["iptables-save", "-t", "mangle"]);
    save.lines().filter(|l| l.starts_with("-A WEFT-")).collect::<Vec<_>>().join("\n")
}

/// Deletes the first rule of weft's ingress chain behind weft's back.
fn delete_a_rule(backend: &str) {
    if backend == "iptables" {
        let save = sh(&["iptables-save", "-t", "filter"]);
        let chain = save
            .lines()
            .filter_map(|l| l.strip_prefix("-A "))
            .map(|l| l.split(' ').next().unwrap_or_default())
            .find(|c| c.starts_with("WEFT-") && *c != "WEFT-FORWARD")
            .expect("a chain of weft's with rules");
        sh(&["iptables", "-t", "filter", "-D", chain, "1"]);
        return;
    }
    let listing = sh(&["nft", "-a", "list", "table", "inet", "weft"]);
    let mut chain = None;
    for line in listing.lines().map(str::trim) {
        if let Some(c) = line.strip_prefix("chain ") {
            chain = c.split(' ').next().map(String::from);
        } else if let (Some(c), Some(h)) = (&chain, line.split("# handle ").nth(1)) {
            if c != "forward" && !line.starts_with("type ") {
                sh(&["nft", "delete", "rule", "inet", "weft", c, "handle", h.trim()]);
                return;
            }
        }
    }
    panic!("no rule of a policy chain in:\n{listing}");
}

#[test]
fn a_resync_rewrites_only_what_drifted_on_iptables() {
    if root() {
        run_in_new(|| check(&mut Iptables::new())).expect("a netns of its own");
    }
}

#[test]
fn a_resync_rewrites_only_what_drifted_on_nftables() {
    if root() {
        run_in_new(|| check(&mut Nft::new())).expect("a netns of its own");
    }
}
