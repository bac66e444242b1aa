//! The two policy backends on one synthetic model, side by side (see
//! `weft_agent::synthetic`). Root. `make bench` runs it at two scales:
//!
//! ```sh
//! cargo run --release -p weft-agent --example backends -- [PODS] [POLICIES]...
//! ```

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let scales: Vec<(usize, usize)> = if args.len() >= 2 {
        args.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0], c[1])).collect()
    } else {
        vec![(1000, 100)]
    };
    for (pods, policies) in scales {
        let figures = weft_agent::synthetic::backends(pods, policies);
        println!("{}", weft_agent::synthetic::table(pods, policies, &figures));
    }
}
