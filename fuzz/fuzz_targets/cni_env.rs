//! The CNI_* environment (and CNI_ARGS in it): the input is `KEY=value`
//! lines; bad input is a CNI error with one of the spec's codes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_conf::{CniArgs, CniEnv};

const SPEC_CODES: [u32; 8] = [1, 2, 3, 4, 5, 6, 7, 11];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let vars: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| vars.iter().rev().find(|(key, _)| *key == k).map(|(_, v)| v.to_string());
    if let Err(e) = CniEnv::from_lookup(get) {
        assert!(SPEC_CODES.contains(&e.code), "CniEnv: code {}", e.code);
    }
    if let Err(e) = CniArgs::parse(text) {
        assert!(SPEC_CODES.contains(&e.code), "CniArgs: code {}", e.code);
    }
});
