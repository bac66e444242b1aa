//! The overlay benchmark (`weft-e2e bench modes`): the data path between
//! nodes in host-gw and in vxlan mode, on one 2-node testbed (an open lan,
//! so host-gw works), each with the MTU its conflist gives pods (host-gw:
//! the node's, 1500 here; vxlan: 1450). No policy in force: what the
//! encapsulation costs, single-stream iperf3 and short connections per second.

use std::time::Duration;

use weft_agent::model::manifest::labels;
use weft_agent::overlay::{pod_mtu, Mode};

use super::{measure, CONVERGE, IPERF_PORT};
use crate::error::Result;
use crate::manifests::serve_ports;
use crate::{plan, Testbed};

/// One mode's measurement, across nodes.
#[derive(Debug, Clone)]
pub struct ModeRow {
    pub mode: Mode,
    /// The pods' MTU.
    pub mtu: u32,
    /// iperf3 single stream, received, Gbit/s; None if it did not connect.
    pub gbits: Option<f64>,
    pub conns: f64,
}

/// Measures host-gw then vxlan, `secs` seconds per measurement, the median of `reps`.
pub fn modes(secs: u64, reps: usize) -> Result<Vec<ModeRow>> {
    let mut tb = Testbed::up(2)?;
    let mut rows = Vec::new();
    for mode in [Mode::HostGw, Mode::Vxlan] {
        let mtu = pod_mtu(mode, plan::MTU);
        tb.set_pod_mtu(mtu)?;
        let tag = if mode == Mode::HostGw { "hostgw" } else { "vxlan" };
        let srv =
            tb.add_pod_with(1, &format!("bench/srv-{tag}"), labels([("app", "srv")]), serve_ports(&[80]))?;
        let far =
            tb.add_pod_with(2, &format!("bench/far-{tag}"), labels([("app", "far")]), serve_ports(&[80]))?;
        let iperf = ["iperf3", "-s", "-p", IPERF_PORT, "--forceflush"];
        tb.spawn_in(&format!("iperf3 server {tag}"), &srv.netns, &iperf, Duration::from_secs(10))?;
        let mode_arg = mode.to_string();
        let args = ["--backend", "nftables", "--mode", &mode_arg, "--resync-ms", "10000", "--poll-ms", "200"];
        tb.start_agents_with(&args)?;
        tb.wait_converged(CONVERGE)?;
        let fig = measure(&far, &[srv.ip.into()], Duration::from_secs(secs), reps)?.pop();
        let (gbits, conns) = fig.map_or((None, 0.0), |f| (f.gbits, f.conns));
        rows.push(ModeRow { mode, mtu: mtu.unwrap_or(plan::MTU), gbits, conns });
        for node in 1..=tb.nodes() {
            tb.stop_agent(node)?;
        }
    }
    tb.down()?;
    Ok(rows)
}

/// The rows as a table, each figure also as a ratio to host-gw's.
pub fn modes_table(rows: &[ModeRow]) -> String {
    let mut s = String::from(
        "| mode | pod MTU | iperf3 Gbit/s | vs host-gw | connections/s | vs host-gw |\n|---|---|---|---|---|---|\n",
    );
    let base = rows.iter().find(|r| r.mode == Mode::HostGw);
    for r in rows {
        let ratio = |x: f64, b: f64| if b > 0.0 { format!("{:.2}x", x / b) } else { "-".into() };
        let g = |r: &ModeRow| r.gbits.unwrap_or(0.0);
        let (rg, rc) = base.map(|b| (ratio(g(r), g(b)), ratio(r.conns, b.conns))).unwrap_or_default();
        let gbits = r.gbits.map(|x| format!("{x:.2}")).unwrap_or_else(|| "blocked".into());
        s += &format!("| {} | {} | {gbits} | {rg} | {:.0} | {rc} |\n", r.mode, r.mtu, r.conns);
    }
    s
}
