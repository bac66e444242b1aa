//! The two policy backends on one synthetic model, side by side (see
//! `synthetic`). Root. `make bench` runs it at three scales:
//!
//! ```sh
//! cargo bench -p weft-agent --bench backends -- [--churn SECS] [--model synthetic|mix] [--cnp N] [PODS POLICIES]...
//! ```
//!
//! `--cnp N` adds N ClusterNetworkPolicies to the model at every scale
//! (`synthetic::cnp`) and times changes to them too.
//!
//! Each (scale, backend) runs in a child process of its own, so the peak RSS
//! it reports is that backend's alone, as a node agent's would be.

// `synthetic::backends` is for the smoke test (tests/bench_smoke.rs).
#[allow(dead_code)]
mod synthetic;

use std::process::{Command, ExitCode};

use synthetic::{denied_cost, measure, table, Figures, ModelKind, BACKENDS};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--one") {
        return one(&args[1..]);
    }
    let (mut churn, mut cnps, mut kind, mut rest) = (0u64, 0usize, ModelKind::Synthetic, &args[..]);
    loop {
        match rest.first().map(String::as_str) {
            Some("--churn") => churn = rest.get(1).and_then(|a| a.parse().ok()).unwrap_or(0),
            Some("--cnp") => cnps = rest.get(1).and_then(|a| a.parse().ok()).unwrap_or(0),
            Some("--model") => match rest.get(1).map(|m| m.parse()) {
                Some(Ok(k)) => kind = k,
                Some(Err(e)) => {
                    eprintln!("backends: {e}");
                    return ExitCode::from(64);
                }
                None => {}
            },
            _ => break,
        }
        rest = &rest[2.min(rest.len())..];
    }
    let model_name = if kind == ModelKind::Mix { "mix" } else { "synthetic" };
    let numbers: Vec<usize> = rest.iter().filter_map(|a| a.parse().ok()).collect();
    let scales: Vec<(usize, usize)> = if numbers.len() >= 2 {
        numbers.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0], c[1])).collect()
    } else {
        vec![(1000, 100)]
    };
    let Ok(me) = std::env::current_exe() else {
        eprintln!("backends: cannot find my own executable");
        return ExitCode::FAILURE;
    };
    for (pods, policies) in scales {
        let mut figures: Vec<Figures> = Vec::new();
        for backend in BACKENDS {
            let out = Command::new(&me)
                .args([
                    "--one",
                    backend,
                    model_name,
                    &pods.to_string(),
                    &policies.to_string(),
                    &cnps.to_string(),
                    &churn.to_string(),
                ])
                .output();
            match out {
                Ok(o) if o.status.success() => match serde_json::from_slice(&o.stdout) {
                    Ok(f) => figures.push(f),
                    Err(e) => eprintln!("backends: {backend}: unreadable figures: {e}"),
                },
                Ok(o) => eprintln!("backends: {backend} failed: {}", String::from_utf8_lossy(&o.stderr)),
                Err(e) => eprintln!("backends: cannot run {}: {e}", me.display()),
            }
        }
        println!("Model: {model_name}. {}", table(pods, policies, cnps, &figures));
        let [first, p50, p99, max] = denied_cost(kind, pods, policies, cnps);
        let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
        println!(
            "A new denied connection explained for the log (its cost to the agent's loop, no compile), \
             {} connections to node-1's pods: the first after a change (indexing the pods by address) {:.1} us, \
             then p50 {:.1} / p99 {:.1} / max {:.1} us\n",
            synthetic::DENIED_SAMPLES,
            us(first),
            us(p50),
            us(p99),
            us(max)
        );
    }
    ExitCode::SUCCESS
}

/// `--one BACKEND MODEL PODS POLICIES CNPS CHURN_SECS`: measures and prints the figures as JSON.
fn one(args: &[String]) -> ExitCode {
    let n = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    let kind = args.get(1).and_then(|k| k.parse::<ModelKind>().ok());
    let (Some(backend), Some(kind), Some(pods), Some(policies), Some(cnps), Some(churn)) =
        (args.first(), kind, n(2), n(3), n(4), n(5))
    else {
        eprintln!("usage: backends --one BACKEND synthetic|mix PODS POLICIES CNPS CHURN_SECS");
        return ExitCode::from(64);
    };
    let f = measure(backend, kind, pods as usize, policies as usize, cnps as usize, churn);
    match serde_json::to_string(&f) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("backends: {e}");
            ExitCode::FAILURE
        }
    }
}
