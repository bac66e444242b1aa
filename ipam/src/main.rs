//! `weft-ipam`: weft's address allocation as a standalone CNI IPAM plugin,
//! for other plugins to delegate to (`weft` links it in-process instead).

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    // An unreadable stdin is treated as empty: the parser then reports a
    // decoding error in the spec's JSON rather than us panicking.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let reply = weft_ipam::cni::run(|k| std::env::var(k).ok(), &stdin);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(reply.stdout.as_bytes());
    let _ = out.flush();
    std::process::exit(reply.exit_code);
}
