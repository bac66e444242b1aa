//! The testbed comes up as TESTBED.md draws it: nodes and ext reach each other
//! over the lan bridge, and nothing of the run appears in the root netns.

mod common;

use common::{assert_present, ping, root_or_skip};
use weft_e2e::Testbed;
use weft_netkit::link::list_links;

#[test]
fn two_nodes_and_ext_reach_each_other_over_the_lan() {
    if !root_or_skip("two_nodes_and_ext_reach_each_other_over_the_lan") {
        return;
    }
    let tb = Testbed::up(2).unwrap();
    let st = tb.state();
    assert_present(&st);
    assert_eq!(tb.node_addr(1).to_string(), "172.31.0.11");
    assert_eq!(tb.node_addr(2).to_string(), "172.31.0.12");
    assert_eq!(tb.ext_addr().to_string(), "172.31.0.100");
    assert_eq!(st.nodes[1].pod_cidr.unwrap().to_string(), "10.244.2.0/24");

    let (n1, n2, ext) = (tb.node_netns(1), tb.node_netns(2), tb.ext_netns());
    assert!(ping(&n1, "172.31.0.12"), "node1 -> node2");
    assert!(ping(&n1, "172.31.0.100"), "node1 -> ext");
    assert!(ping(&ext, "172.31.0.11"), "ext -> node1");
    assert!(ping(&n2, "172.31.0.11"), "node2 -> node1");

    // eth0 carries exactly the planned address; the status names every netns as present.
    let addrs =
        weft_e2e::exec_in(&n2, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"], common::CMD_TIMEOUT)
            .unwrap();
    assert!(String::from_utf8_lossy(&addrs.stdout).contains("inet 172.31.0.12/24"));
    let status = weft_e2e::topology::status(&st.run).unwrap();
    assert_eq!(status.matches("present").count(), 4, "{status}");

    // Nothing of the run exists in the root netns (this thread never left it).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let root_links = rt.block_on(async {
        let h = weft_netkit::netns::connect_current().unwrap();
        list_links(&h).await.unwrap()
    });
    let ours: Vec<_> = root_links.iter().filter(|l| l.name.starts_with(&st.run)).collect();
    assert!(ours.is_empty(), "links of run {} in the root netns: {ours:?}", st.run);
    tb.down().unwrap();
}
