//! `make bench`: weft against the reference bridge + host-local plugins,
//! both exec'd as processes with the same env in the same kind of node
//! netns, side by side in one run. Prints figures; passes or fails nothing.

#[path = "../../netkit/tests/common/mod.rs"]
mod common;
#[path = "../tests/harness/mod.rs"]
mod harness;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::PodNs;
use harness::{pod_ip, Node};
use serde_json::{json, Value};

const PODS: usize = 50;
const PARALLEL: usize = 8;
/// Rounds, alternating weft and the reference, so drift hits both alike.
const ROUNDS: usize = 3;

struct Plugin {
    label: &'static str,
    bin: PathBuf,
    conf: fn(&Node, bool) -> Value,
}

fn weft_conf(node: &Node, masq: bool) -> Value {
    node.conf("1.0.0", json!({"masquerade": masq}))
}

fn reference_conf(node: &Node, masq: bool) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "ref", "type": "bridge", "bridge": "cni0",
        "isGateway": true, "ipMasq": masq, "hairpinMode": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": node.data.path().display().to_string()}
    })
}

/// Median and p95 of a sample, in milliseconds.
fn stats(mut d: Vec<Duration>) -> (f64, f64) {
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1e3;
    (ms(d[d.len() / 2]), ms(d[(d.len() * 95 / 100).min(d.len() - 1)]))
}

/// Samples of one plugin and masquerade setting, over all rounds.
#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    check: Vec<Duration>,
    del: Vec<Duration>,
}

#[allow(clippy::needless_range_loop)] // pod i of both plugins, side by side
/// Sequential ADD, then CHECK, then DEL of every pod, the two plugins
/// taking turns pod by pod so that the machine's drift hits both alike.
/// Namespaces are made once and reused: the kernel destroys a netns
/// asynchronously, under the rtnl lock, and that work would otherwise land
/// in the next phase's figures.
fn sequential(
    plugins: [&Plugin; 2],
    nodes: &[Arc<Node>; 2],
    masq: bool,
    pods: &[Arc<Vec<PodNs>>; 2],
    out: &mut [Samples; 2],
) {
    let confs: Vec<Value> = (0..2).map(|k| (plugins[k].conf)(&nodes[k], masq)).collect();
    let mut results: [Vec<Value>; 2] = Default::default();
    let timed = |k: usize, cmd: &str, i: usize, conf: &Value| {
        let t = Instant::now();
        let r = nodes[k].cni(&plugins[k].bin, cmd, &format!("b{i}"), Some(&pods[k][i].path), conf);
        (t.elapsed(), r.ok().clone())
    };
    for i in 0..PODS {
        for k in 0..2 {
            let (d, r) = timed(k, "ADD", i, &confs[k]);
            out[k].add.push(d);
            results[k].push(r);
        }
    }
    for i in 0..PODS {
        for k in 0..2 {
            let mut c = confs[k].clone();
            c["prevResult"] = results[k][i].clone();
            out[k].check.push(timed(k, "CHECK", i, &c).0);
        }
    }
    for i in 0..PODS {
        for k in 0..2 {
            out[k].del.push(timed(k, "DEL", i, &confs[k]).0);
        }
    }
}

/// Wall time of PODS ADDs, PARALLEL at a time, and the duplicate addresses among them.
fn parallel(p: &Plugin, node: &Arc<Node>, pods: &Arc<Vec<PodNs>>) -> (f64, usize) {
    let conf = Arc::new((p.conf)(node, false));
    let next = Arc::new(Mutex::new(0usize));
    let ips = Arc::new(Mutex::new(Vec::new()));
    let t = Instant::now();
    let workers: Vec<_> = (0..PARALLEL)
        .map(|_| {
            let (node, conf, pods, next, ips, bin) =
                (node.clone(), conf.clone(), pods.clone(), next.clone(), ips.clone(), p.bin.clone());
            std::thread::spawn(move || loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                if i >= PODS {
                    break;
                }
                let r = node.cni(&bin, "ADD", &format!("p{i}"), Some(&pods[i].path), &conf);
                ips.lock().unwrap().push(pod_ip(r.ok()));
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let wall = t.elapsed().as_secs_f64() * 1e3;
    let ips = ips.lock().unwrap();
    let dups = ips.len() - ips.iter().collect::<HashSet<_>>().len();
    for (i, pod) in pods.iter().enumerate() {
        node.cni(&p.bin, "DEL", &format!("p{i}"), Some(&pod.path), &conf).ok();
    }
    (wall, dups)
}

fn main() {
    if !harness::root_or_skip("bench") {
        return;
    }
    let Some(refdir) = harness::reference_dir() else {
        eprintln!("bench: the reference plugins (containernetworking-plugins) are not installed");
        return;
    };
    let weft = Plugin { label: "weft", bin: harness::weft(), conf: weft_conf };
    let reference = Plugin { label: "bridge+host-local", bin: refdir.join("bridge"), conf: reference_conf };
    if cfg!(debug_assertions) || !is_release(&weft.bin) {
        eprintln!("bench: note: {} may be a debug build; `make bench` builds release", weft.bin.display());
    }
    println!(
        "CNI plugin benchmark: {PODS} pods sequentially per row, the plugins taking turns pod by pod, {ROUNDS} rounds;\n\
         times in ms (median / p95 over all rounds)\n"
    );
    let plugins = [&weft, &reference];
    let pods: [Arc<Vec<PodNs>>; 2] =
        std::array::from_fn(|_| Arc::new((0..PODS).map(|_| PodNs::new()).collect()));
    // nodes[masq][plugin]
    let nodes: [[Arc<Node>; 2]; 2] = std::array::from_fn(|_| std::array::from_fn(|_| Arc::new(Node::new())));
    // samples[masq][plugin]
    let mut samples: [[Samples; 2]; 2] = Default::default();
    let mut parallel_ms = [vec![], vec![]];
    let mut dups = [0usize; 2];
    for _ in 0..ROUNDS {
        for (m, masq) in [false, true].into_iter().enumerate() {
            sequential(plugins, &nodes[m], masq, &pods, &mut samples[m]);
        }
        for (i, p) in plugins.iter().enumerate() {
            let (wall, d) = parallel(p, &nodes[0][i], &pods[i]);
            parallel_ms[i].push(Duration::from_secs_f64(wall / 1e3));
            dups[i] += d;
        }
    }
    println!("| plugin | masquerade | ADD | CHECK | DEL |");
    println!("|---|---|---|---|---|");
    let mut med = [[(0.0, 0.0); 2]; 2]; // [masq][plugin] -> (ADD median, DEL median)
    for (m, masq) in ["off", "on"].into_iter().enumerate() {
        for (i, p) in plugins.iter().enumerate() {
            let s = &samples[m][i];
            let (add, check, del) = (stats(s.add.clone()), stats(s.check.clone()), stats(s.del.clone()));
            println!(
                "| {} | {masq} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |",
                p.label, add.0, add.1, check.0, check.1, del.0, del.1
            );
            med[m][i] = (add.0, del.0);
        }
    }
    let floor = exec_floor(&nodes[0][0], &pods[0]);
    println!(
        "| (exec floor: /bin/true through the same fork + setns + exec) | | {:.2} / {:.2} | | |",
        floor.0, floor.1
    );
    let wall: Vec<f64> = parallel_ms.iter().map(|v| stats(v.clone()).0).collect();
    println!(
        "\n| plugin | {PODS} ADDs, {PARALLEL} in parallel (wall ms, median of {ROUNDS}) | duplicate IPs |"
    );
    println!("|---|---|---|");
    for (i, p) in plugins.iter().enumerate() {
        println!("| {} | {:.1} | {} |", p.label, wall[i], dups[i]);
    }
    println!("\nratios weft / reference (targets in brackets):");
    println!("  ADD median, masquerade off: {:.2}x [<= 0.30]", med[0][0].0 / med[0][1].0);
    println!("  ADD median, masquerade on:  {:.2}x [<= 0.15]", med[1][0].0 / med[1][1].0);
    println!("  DEL median, masquerade off: {:.2}x [<= 0.90]", med[0][0].1 / med[0][1].1);
    println!("  DEL median, masquerade on:  {:.2}x [<= 0.90]", med[1][0].1 / med[1][1].1);
    println!("  parallel wall time:         {:.2}x [<= 0.50]", wall[0] / wall[1]);
    println!(
        "  ADD median above the exec floor, masquerade off: {:.2}x",
        (med[0][0].0 - floor.0) / (med[0][1].0 - floor.0)
    );
}

/// What spawning a process into the node netns costs by itself: the part
/// of every figure above that no plugin can shave.
fn exec_floor(node: &Node, pods: &[PodNs]) -> (f64, f64) {
    let t: Vec<Duration> = pods
        .iter()
        .map(|p| {
            let t = Instant::now();
            node.cni(Path::new("/bin/true"), "ADD", "floor", Some(&p.path), &json!({}));
            t.elapsed()
        })
        .collect();
    stats(t)
}

fn is_release(bin: &Path) -> bool {
    bin.components().any(|c| c.as_os_str() == "release")
}
