//! The pod socket's protocol: a request line as the agent reads it, then the
//! claim it carries checked against a small cluster state, as the agent does.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use weft_agent::model::{parse_manifests, Model};
use weft_agent::pod_events::{Claim, PodEvents};
use weft_conf::pod_socket::PodEvent;

const CLUSTER: &str = "\
apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nspec: {podCIDR: 10.244.1.0/24}\n\
status: {addresses: [{type: InternalIP, address: 172.31.0.11}]}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {nodeName: node-1, containers: []}\n\
status: {phase: Running, podIP: 10.244.1.2}\n";

/// The agent's cluster state, parsed once.
fn cluster() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let mut model = Model::default();
        for obj in parse_manifests(CLUSTER).expect("the fixed cluster parses") {
            model.insert(obj);
        }
        model
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let model = cluster();
    let mut pods = PodEvents::default();
    let now = Instant::now();
    // Several requests, one per line, against one agent state.
    for line in text.lines() {
        match serde_json::from_str::<PodEvent>(line.trim()) {
            Ok(PodEvent::Add { container_id, ifname, namespace, name, ips }) => {
                let claim = Claim {
                    container_id: &container_id,
                    ifname: &ifname,
                    namespace: &namespace,
                    name: &name,
                    ips: &ips,
                };
                if pods.add(model, "node-1", &claim, now).is_ok() {
                    let _ = pods.overlay(model, "node-1");
                }
            }
            Ok(PodEvent::Del { container_id, ifname }) => drop(pods.del(&container_id, &ifname)),
            Err(_) => {}
        }
    }
    pods.catch_up(model, "node-1", now);
});
