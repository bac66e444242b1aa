//! The network config a runtime writes on the plugin's stdin (NetConf, with
//! its prevResult and runtimeConfig) and the conflist: bad input is a CNI
//! error with one of the spec's codes, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_conf::{CniResult, NetConf, NetConfList};

/// The codes a parser may answer with: the spec's.
const SPEC_CODES: [u32; 8] = [1, 2, 3, 4, 5, 6, 7, 11];

fuzz_target!(|data: &[u8]| {
    let _ = NetConf::peek_version(data);
    if let Err(e) = NetConf::parse(data) {
        assert!(SPEC_CODES.contains(&e.code), "NetConf: code {}", e.code);
    }
    if let Err(e) = NetConfList::parse(data) {
        assert!(SPEC_CODES.contains(&e.code), "NetConfList: code {}", e.code);
    }
    // A prevResult on its own, as `CHECK` and `DEL` take it.
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok((_, r)) = CniResult::from_json(&v) {
            let _ = r.validate();
        }
    }
});
