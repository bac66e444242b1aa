//! Times the store's operations, in µs: 300 allocations into an empty store,
//! their 300 releases, then 300 allocations after them (the steady state of
//! a node where pods churn: those reuse the released records' inodes, as
//! many as the pool kept), then churn: one release and one allocation at a
//! time with 300 attachments live.
//!
//! `cargo run --release -p weft-ipam --example alloc_timing [dir]`

use std::path::Path;
use std::time::Instant;

use weft_ipam::{allocate, release, IpamConfig, Store};

const N: usize = 300;

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "/tmp/ipam-timing".into());
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = IpamConfig::parse(
        &serde_json::json!({"type":"weft-ipam","ranges":[[{"subnet":"10.244.0.0/22"}]],"dataDir": dir}),
    )
    .unwrap();
    let store = Store::open(&cfg.data_dir, "weft").unwrap();
    let pool = store.dir().join("free");
    let alloc = |id: String| drop(allocate(&store, &cfg, &id, "eth0").unwrap());
    let fresh = time(|i| alloc(format!("c{i}")));
    let released = time(|i| release(&store, &format!("c{i}"), "eth0").unwrap());
    report("allocations, empty store", &fresh);
    report("releases", &released);
    // Which of the next allocations took a pooled record (the pool shrank).
    let mut pooled = Vec::new();
    let again = time(|i| {
        let before = pooled_files(&pool);
        alloc(format!("d{i}"));
        pooled.push(pooled_files(&pool) < before);
    });
    report("allocations after the releases", &again);
    let (reused, created): (Vec<_>, Vec<_>) = again.iter().zip(&pooled).partition(|(_, p)| **p);
    let reused: Vec<u128> = reused.into_iter().map(|(t, _)| *t).collect();
    let created: Vec<u128> = created.into_iter().map(|(t, _)| *t).collect();
    report("  of which reused a pooled inode", &reused);
    report("  of which created an inode (the pool was empty)", &created);
    // Churn: d{i} goes, e{i} comes; each allocation finds one pooled record.
    let churn = time(|i| {
        release(&store, &format!("d{i}"), "eth0").unwrap();
        alloc(format!("e{i}"));
    });
    report("churn: one release and one allocation", &churn);
}

/// Times `f(0..N)`, in µs each.
fn time(mut f: impl FnMut(usize)) -> Vec<u128> {
    (0..N)
        .map(|i| {
            let t = Instant::now();
            f(i);
            t.elapsed().as_micros()
        })
        .collect()
}

fn pooled_files(pool: &Path) -> usize {
    std::fs::read_dir(pool).map_or(0, |d| d.count())
}

fn report(what: &str, v: &[u128]) {
    if v.is_empty() {
        println!("{what}: none");
        return;
    }
    let mut sorted = v.to_vec();
    sorted.sort_unstable();
    let n = v.len();
    println!("{what} ({n}): median {} µs, mean {} µs", sorted[n / 2], v.iter().sum::<u128>() / n as u128);
    if n >= 20 {
        println!("  first 10 {:?}", &v[..10]);
        println!("  last 10  {:?}", &v[n - 10..]);
    }
}
