//! The manifest and API object parser (a YAML stream, as files and the
//! API server's JSON give it), then the policy compiler on what it accepts:
//! a bad object is reported and skipped, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_agent::model::{parse_objects, Model};
use weft_agent::policy::compile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(objects) = parse_objects(text) else { return };
    let mut model = Model::default();
    for obj in objects.into_iter().flatten() {
        model.insert(obj);
    }
    let nodes: Vec<String> = model.nodes.keys().cloned().chain(["node-1".to_string()]).collect();
    let cluster = ["10.244.0.0/16", "fd00:244::/56"].map(|c| c.parse().expect("a CIDR"));
    for node in nodes {
        let _ = compile(&model, &node, &cluster);
    }
});
