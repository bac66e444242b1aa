//! `weft`: the CNI plugin binary. Reads the CNI env and stdin, prints a
//! result or a CNI error JSON, and exits non-zero on error.

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    // An unreadable stdin is treated as empty: the parser then reports a
    // decoding error in the spec's JSON rather than us panicking.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let out = weft_plugin::run(|k| std::env::var(k).ok(), &stdin);
    let mut so = std::io::stdout().lock();
    let _ = so.write_all(out.stdout.as_bytes());
    let _ = so.flush();
    std::process::exit(out.exit_code);
}
