//! How long a 5-element delta takes to reach a large `inet weft` table, by
//! each way of applying it. Root; runs in a network namespace of its own.
//!
//! ```sh
//! cargo bench -p weft-agent --bench nft_delta -- [ELEMENTS] [ROUNDS]
//! cargo bench -p weft-agent --bench nft_delta -- --model PODS POLICIES [ROUNDS]
//! cargo bench -p weft-agent --bench nft_delta -- --hash ELEMENTS [ROUNDS]
//! ```
//!
//! The table is rendered from an IR with about ELEMENTS elements (68000 by
//! default: 1000 pods, the rest cells of the in_allow shards), or with a port group's
//! hash set in place of in_allow's cells (`--hash`), or from node-1's IR of
//! the benchmark's synthetic model (`--model`), and written by `Nft::apply`.
//! Then each method applies ROUNDS deltas (100 by default), alternately
//! adding a new pod's 5 elements (local, in_iso, three concatenations: cells of
//! in_allow's shard, or the port group's targets) and deleting them:
//! - `nft -j -f -`: one `nft` process per delta (the JSON path);
//! - libnftables: in process, one `nft_ctx` kept across deltas (what a
//!   long-lived `nft -i` does too), loaded with dlopen so no -dev package is needed;
//! - netlink: one nf_tables batch (`nft::netlink`), on a socket opened for
//!   the delta (closing it waits for an RCU grace period) or kept;
//! - Nft::apply: the backend's element path end to end (the diff of two
//!   renders, the netlink batch, keeping the new render).
//!
//! Each line gives, for the adds and for the deletes, wall and CPU time (this
//! thread's and its children's, getrusage): on a busy machine the wall time
//! is mostly waiting for a core.

#[allow(dead_code)]
mod synthetic;

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use nix::sys::resource::{getrusage, UsageWho};
use weft_agent::model::Protocol;
use weft_agent::nft::kernel::{element_transaction, read_back, run};
use weft_agent::nft::netlink::{self, NftSocket, Op, SetDelta};
use weft_agent::nft::render::pod_shard;
use weft_agent::nft::{render, Elem, FamilyElem, Nft, TABLE};
use weft_agent::policy::{compile, PolicyIr, PortGroup};
use weft_netkit::netns::run_in_new as in_netns;

const PODS: u32 = 1000;

fn pod(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0af4_0000 + i)
}

/// A table of about `elements` elements: PODS local pods, all isolated both
/// ways, the rest as ingress cells (pod, tcp, 80, peer).
fn ir(elements: usize) -> PolicyIr {
    let mut ir = PolicyIr::default();
    for i in 0..PODS {
        ir.v4.local.insert(pod(i));
        ir.v4.ingress.isolated.insert(pod(i));
        ir.v4.egress.isolated.insert(pod(i));
    }
    let cells = elements.saturating_sub(3 * PODS as usize) as u32;
    for c in 0..cells {
        // A /31: a single address would go to the hash set (in_exact).
        let peer = Ipv4Network::new(Ipv4Addr::from(0x0a00_0000 + 2 * (c / PODS)), 31).expect("a /31");
        ir.v4.ingress.triples.insert((pod(c % PODS), Protocol::Tcp, 80, peer));
    }
    ir
}

/// The same size, the concatenations in a hash set: a port group's targets
/// (pod, tcp, port) instead of interval cells.
fn ir_hash(elements: usize) -> PolicyIr {
    let mut ir = ir(3 * PODS as usize);
    let targets = elements.saturating_sub(3 * PODS as usize) as u32;
    ir.v4.ingress.port_groups.push(PortGroup {
        key: 1,
        targets: (0..targets).map(|c| (Ipv4Addr::from(0x0a80_0000 + c), Protocol::Tcp, 80)).collect(),
        peers: vec!["10.0.0.0/8".parse().expect("a network")],
    });
    ir
}

/// The hash set of `ir_hash`.
const HASH_SET: &str = "ins_0000000000000001";

/// A new pod's 5 elements: local, in_iso and three concatenations (cells of
/// its in_allow shard, or the port group's targets when `hash`).
fn new_pod(round: u32, hash: bool) -> [(String, Elem); 5] {
    let p = Ipv4Addr::from(0x0af5_0000 + round);
    let cell = |port: u16| {
        if hash {
            return (HASH_SET.to_string(), Elem::from(FamilyElem::PodPort(p, 6, port)));
        }
        let peer = Ipv4Network::new(Ipv4Addr::new(10, 9, 0, 0), 31).expect("a /31");
        (format!("in_allow_{}", pod_shard(p)), Elem::from(FamilyElem::Cell(p, (6, 6), (port, port), peer)))
    };
    [
        ("local".to_string(), Elem::from(FamilyElem::Addr(p))),
        ("in_iso".to_string(), Elem::from(FamilyElem::Addr(p))),
        cell(80),
        cell(443),
        cell(8080),
    ]
}

fn deltas<'a>(elems: &'a [(String, Elem)], op: Op) -> Vec<SetDelta<'a>> {
    elems.iter().map(|(set, e)| SetDelta { set, op, elems: vec![e] }).collect()
}

/// CPU time of this thread and of the children it waited for: on a loaded
/// machine (2 cores shared by several builds) wall time says more about the
/// others than about the method.
fn cpu() -> Duration {
    let total = |who| {
        getrusage(who).map_or(Duration::ZERO, |u| {
            let us = |t: nix::sys::time::TimeVal| {
                Duration::from_micros((t.tv_sec() * 1_000_000 + t.tv_usec()) as u64)
            };
            us(u.user_time()) + us(u.system_time())
        })
    };
    total(UsageWho::RUSAGE_THREAD) + total(UsageWho::RUSAGE_CHILDREN)
}

/// Wall and CPU time of each apply.
type Took = Vec<(Duration, Duration)>;

fn timed(took: &mut Took, f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    let (t, c) = (Instant::now(), cpu());
    f()?;
    took.push((t.elapsed(), cpu().saturating_sub(c)));
    Ok(())
}

/// Times `apply` on ROUNDS deltas: adding round r's pod on even rounds,
/// deleting it on odd ones.
fn time(
    rounds: u32,
    hash: bool,
    mut apply: impl FnMut(&[SetDelta]) -> Result<(), String>,
) -> Result<Took, String> {
    let mut took = Vec::new();
    for r in 0..rounds {
        let elems = new_pod(r / 2, hash);
        let op = if r % 2 == 0 { Op::Add } else { Op::Delete };
        timed(&mut took, || apply(&deltas(&elems, op)))?;
    }
    Ok(took)
}

/// libnftables.so.1 through dlopen: one context, JSON input.
struct LibNftables {
    ctx: *mut c_void,
    run: unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int,
    error: unsafe extern "C" fn(*mut c_void) -> *const c_char,
}

extern "C" {
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

const RTLD_NOW: c_int = 2;
/// NFT_CTX_OUTPUT_JSON: in 1.0.6 it also makes the input parsed as JSON.
const NFT_CTX_OUTPUT_JSON: u32 = 1 << 4;

impl LibNftables {
    fn open() -> Result<LibNftables, String> {
        // SAFETY: a NUL-terminated name; the library stays loaded for the process.
        let lib = unsafe { dlopen(c"libnftables.so.1".as_ptr(), RTLD_NOW) };
        if lib.is_null() {
            return Err("dlopen libnftables.so.1 failed (apt-get install libnftables1)".into());
        }
        let sym = |name: &CStr| {
            // SAFETY: `lib` is a live handle and `name` NUL-terminated.
            let p = unsafe { dlsym(lib, name.as_ptr()) };
            if p.is_null() {
                Err(format!("libnftables has no {name:?}"))
            } else {
                Ok(p)
            }
        };
        // SAFETY: the signatures of nftables/libnftables.h (1.0.6).
        unsafe {
            let new: unsafe extern "C" fn(u32) -> *mut c_void = std::mem::transmute(sym(c"nft_ctx_new")?);
            let flags: unsafe extern "C" fn(*mut c_void, u32) =
                std::mem::transmute(sym(c"nft_ctx_output_set_flags")?);
            let buffer: unsafe extern "C" fn(*mut c_void) -> c_int =
                std::mem::transmute(sym(c"nft_ctx_buffer_error")?);
            let ctx = new(0);
            if ctx.is_null() {
                return Err("nft_ctx_new failed".into());
            }
            flags(ctx, NFT_CTX_OUTPUT_JSON);
            buffer(ctx);
            let run: unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int =
                std::mem::transmute(sym(c"nft_run_cmd_from_buffer")?);
            let error: unsafe extern "C" fn(*mut c_void) -> *const c_char =
                std::mem::transmute(sym(c"nft_ctx_get_error_buffer")?);
            Ok(LibNftables { ctx, run, error })
        }
    }

    fn apply(&self, json: &str) -> Result<(), String> {
        let text = CString::new(json).map_err(|e| e.to_string())?;
        // SAFETY: a live context and a NUL-terminated command.
        if unsafe { (self.run)(self.ctx, text.as_ptr()) } == 0 {
            return Ok(());
        }
        // SAFETY: the context's error buffer, a NUL-terminated string it owns.
        Err(unsafe { CStr::from_ptr((self.error)(self.ctx)) }.to_string_lossy().into_owned())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One line per method: the adds (even rounds) and the deletes apart, as
/// the kernel's interval sets make them cost very differently.
fn report(method: &str, took: Took) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let stats = |op: usize| {
        let (mut wall, mut cpu): (Vec<Duration>, Vec<Duration>) =
            took.iter().skip(op).step_by(2).copied().unzip();
        wall.sort();
        cpu.sort();
        let (w, c) = (
            (percentile(&wall, 0.5), percentile(&wall, 0.99)),
            (percentile(&cpu, 0.5), percentile(&cpu, 0.99)),
        );
        format!("{:>8.3} {:>8.3} ({:>7.3} {:>7.3})", ms(w.0), ms(w.1), ms(c.0), ms(c.1))
    };
    println!("{method:<36} add {} | delete {}", stats(0), stats(1));
}

fn bench(ir: PolicyIr, hash: bool, rounds: u32) -> Result<(), String> {
    let mut nft = Nft::new();
    let base = render(&ir);
    let t = Instant::now();
    nft.apply(&base, true).map_err(|e| e.to_string())?;
    let total: usize = base.sets.values().map(|s| s.len()).sum();
    let mut sizes: Vec<(usize, &String)> = base.sets.iter().map(|(name, s)| (s.len(), name)).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let largest: Vec<String> = sizes.iter().take(5).map(|(n, name)| format!("{name} {n}")).collect();
    println!(
        "table inet weft: {total} elements in {} sets (largest: {}), written in {:.2} s",
        sizes.len(),
        largest.join(", "),
        t.elapsed().as_secs_f64()
    );
    println!("{rounds} deltas; ms, wall median and p99 (CPU median and p99)");

    let json = |d: &[SetDelta]| serde_json::to_string(&element_transaction(d)).map_err(|e| e.to_string());
    report(
        "nft -j -f - (a process per delta)",
        time(rounds, hash, |d| run(&element_transaction(d)).map_err(|e| e.to_string()))?,
    );
    let lib = LibNftables::open()?;
    report("libnftables, one nft_ctx", time(rounds, hash, |d| lib.apply(&json(d)?))?);
    let fresh = |d: &[SetDelta]| {
        NftSocket::open().and_then(|mut s| s.apply(TABLE, d, netlink::DEADLINE)).map_err(|e| e.to_string())
    };
    report("netlink, a socket per delta", time(rounds, hash, fresh)?);
    let mut sock = NftSocket::open().map_err(|e| e.to_string())?;
    let mut netlink = |d: &[SetDelta]| sock.apply(TABLE, d, netlink::DEADLINE).map_err(|e| e.to_string());
    report("netlink, one socket kept", time(rounds, hash, &mut netlink)?);
    // Where the kernel spends it: the address sets alone, the concatenations alone.
    report("netlink, local + in_iso only", time(rounds, hash, |d| netlink(&d[..2]))?);
    report("netlink, the 3 concatenations only", time(rounds, hash, |d| netlink(&d[2..]))?);

    // The backend end to end: renders with and without a new pod.
    let mut took = Vec::new();
    for r in 0..rounds {
        let mut next = base.clone();
        if r % 2 == 0 {
            for (set, e) in new_pod(r / 2, hash) {
                next.sets.entry(set).or_default().insert(e);
            }
        }
        timed(&mut took, || match nft.apply(&next, false) {
            Ok(done) if done.netlink && done.added + done.deleted == 5 => Ok(()),
            Ok(done) => Err(format!("round {r}: not a 5-element netlink delta: {done:?}")),
            Err(e) => Err(e.to_string()),
        })?;
    }
    report("Nft::apply (diff, netlink, keep)", took);
    if read_back().map_err(|e| e.to_string())?.values().map(|s| s.len()).sum::<usize>() != total {
        return Err("the table does not hold the base elements at the end".into());
    }
    nft.cleanup().map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (ir, hash, rounds) = match args.first().map(String::as_str) {
        Some("--model") => {
            let m = synthetic::model(number(1, 10_000), number(2, 10_000));
            (compile(&m, "node-1", &["10.100.0.0/14".parse().unwrap()]).0, false, number(3, 100))
        }
        Some("--hash") => (ir_hash(number(1, 68_000)), true, number(2, 100)),
        _ => (ir(number(0, 68_000)), false, number(1, 100)),
    };
    match in_netns(|| bench(ir, hash, rounds as u32)).map_err(|e| e.to_string()).and_then(|r| r) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nft_delta: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
