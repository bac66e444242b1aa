//! The flood benchmark (`weft-e2e bench flood`): issue 16's row "20k SYN/s
//! for 20 s from a denied pod: CNI ADD on that node p99 <= 100 ms during
//! and after; RSS grows <= 16 MiB", on each backend, with the scenario the
//! test `denied_flood` asserts on (`syn_flood::scenario`): whole CNI ADDs
//! and the agent's share of one (the pod report) before, during and after
//! the flood, and the agent's RSS growth.

use std::time::Duration;

use crate::error::Result;
use crate::syn_flood::scenario::{quantile, run, Outcome, Plan};
use crate::Testbed;

/// Runs `plan` on a fresh 1-node testbed per backend.
pub fn flood(plan: &Plan) -> Result<Vec<Outcome>> {
    let mut rows = Vec::new();
    for backend in ["iptables", "nftables"] {
        let mut tb = Testbed::up(1)?;
        let outcome = run(&mut tb, backend, plan);
        tb.down()?;
        rows.push(outcome?);
    }
    Ok(rows)
}

/// p50 / p99 in ms, and the count.
fn cell(times: &[Duration]) -> String {
    let ms = |q| quantile(times, q).as_secs_f64() * 1000.0;
    format!("{:.1} / {:.1} ({})", ms(0.5), ms(0.99), times.len())
}

/// The outcomes as a table: ADDs and pod reports per phase, RSS, what the kernel logged.
pub fn flood_table(rows: &[Outcome]) -> String {
    let mut s = String::from(
        "| backend | SYNs sent (s) | CNI ADD ms p50 / p99 (n): before | during | after | \
         pod report ms p50 / p99 (n): during | after | RSS growth MiB | denied packets logged |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for o in rows {
        s += &format!(
            "| {} | {} ({:.1}) | {} | {} | {} | {} | {} | {:.1} | {:.0} |\n",
            o.backend,
            o.sent,
            o.flood_took.as_secs_f64(),
            cell(&o.adds.before),
            cell(&o.adds.during),
            cell(&o.adds.after),
            cell(&o.reports.during),
            cell(&o.reports.after),
            o.rss_growth as f64 / (1024.0 * 1024.0),
            o.denied_received,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syn_flood::scenario::Phases;

    #[test]
    fn the_table_has_a_row_per_backend_with_each_phase() {
        let ms = |v: &[u64]| v.iter().copied().map(Duration::from_millis).collect::<Vec<_>>();
        let o = Outcome {
            backend: "nftables".into(),
            attacker: "10.244.1.3".parse().unwrap(),
            sent: 400_000,
            flood_took: Duration::from_millis(20_040),
            adds: Phases { before: ms(&[40, 60]), during: ms(&[50, 70, 90]), after: ms(&[45]) },
            reports: Phases { before: ms(&[1]), during: ms(&[2, 3]), after: ms(&[1]) },
            rss_growth: 3 * 1024 * 1024 / 2,
            denied_received: 2204.0,
            target_segments: 0,
            denied_log: String::new(),
        };
        let table = flood_table(&[o]);
        let row = table.lines().nth(2).unwrap();
        assert_eq!(
            row,
            "| nftables | 400000 (20.0) | 40.0 / 60.0 (2) | 70.0 / 90.0 (3) | 45.0 / 45.0 (1) \
             | 2.0 / 3.0 (2) | 1.0 / 1.0 (1) | 1.5 | 2204 |"
        );
    }
}
