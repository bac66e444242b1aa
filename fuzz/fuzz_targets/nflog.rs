//! NFLOG netlink datagrams as the kernel delivers them to the agent: the
//! generic parser (netkit) and the agent's reading of a denied packet.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for p in weft_netkit::nflog::packets(data) {
        assert!(p.payload.len() <= data.len());
    }
    let _ = weft_agent::nflog::parse(data);
});
