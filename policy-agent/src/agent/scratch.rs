//! The incremental engine's safety net: now and then the model the loop
//! last compiled is compiled again from scratch, on a thread of its own (a
//! full compile at 10k policies takes over 100 ms, which a CNI ADD waiting
//! on the pod socket must not), and compared with the loop's IR once back.
//! The property tests hold the two equal; a disagreement in the field is
//! logged and repaired by a full apply of the scratch compile.

use std::sync::mpsc::{self, Receiver, TryRecvError};

use ipnetwork::IpNetwork;

use crate::model::Model;
use crate::policy::{Options, PolicyIr};
use crate::snapshot::Compiled;

/// A check every this many resyncs (once a minute at the DaemonSet's 10 s):
/// a full compile is a core's 100+ ms, which a node need not pay often for
/// an engine the property tests check.
pub const EVERY: u32 = 6;

/// What a from-scratch compile needs besides the model.
#[derive(Debug, Clone)]
pub struct Target {
    pub node: String,
    pub cluster_cidrs: Vec<IpNetwork>,
    pub options: Options,
}

/// What a finished check found.
#[derive(Debug)]
pub enum Verdict {
    Agrees,
    /// The scratch compile, to be applied in full instead of the loop's.
    Differs(Box<Compiled>),
}

/// The check in flight, if any, and when the next is due.
#[derive(Debug, Default)]
pub struct ScratchCheck {
    /// Resyncs until the next check (0: the next resync starts one).
    countdown: u32,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    /// The loop's compile version the model was taken at.
    version: u64,
    rx: Receiver<Compiled>,
}

impl ScratchCheck {
    /// At a resync: true when a check is due and none runs.
    pub fn due(&mut self) -> bool {
        if self.running.is_some() {
            return false;
        }
        if self.countdown == 0 {
            self.countdown = EVERY;
            return true;
        }
        self.countdown -= 1;
        false
    }

    /// Compiles `model` (the loop's at compile `version`) from scratch on a
    /// thread; `done` is called there when the result is ready (a wake-up of
    /// the loop). Without a thread (out of resources) no check is made.
    pub fn start(
        &mut self,
        version: u64,
        model: Model,
        generation: String,
        target: Target,
        done: impl FnOnce() + Send + 'static,
    ) {
        let (tx, rx) = mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new().name("scratch-compile".into()).spawn(move || {
            let c = Compiled::new(model, &generation, &target.node, &target.cluster_cidrs, target.options);
            if tx.send(c).is_ok() {
                done();
            }
        });
        match spawned {
            Ok(_) => self.running = Some(Running { version, rx }),
            Err(e) => tracing::debug!("no from-scratch compile check this time: {e}"),
        }
    }

    /// The verdict of a finished check, against the loop's compile if it is
    /// still at the version the check started from (`version`, `ir`). None
    /// while it runs, if none runs, or if the loop moved on since (the
    /// result then says nothing about the loop's IR: dropped, and the next
    /// resync starts another).
    pub fn take(&mut self, version: u64, ir: &PolicyIr) -> Option<Verdict> {
        let running = self.running.as_ref()?;
        let scratch = match running.rx.try_recv() {
            Ok(c) => c,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => {
                // The thread died (it cannot panic on input, but be sure).
                self.running = None;
                return None;
            }
        };
        let started = running.version;
        self.running = None;
        if started != version {
            self.countdown = 0;
            return None;
        }
        Some(if scratch.ir() == ir { Verdict::Agrees } else { Verdict::Differs(Box::new(scratch)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_manifests;

    fn model(port: u16) -> Model {
        let text = format!(
            "kind: Node\nmetadata: {{name: node-1}}\nspec: {{podCIDR: 10.244.1.0/24}}\n---\n\
             kind: Namespace\nmetadata: {{name: x}}\n---\n\
             kind: Pod\nmetadata: {{name: p, namespace: x, labels: {{app: a}}}}\n\
             spec: {{nodeName: node-1}}\nstatus: {{podIP: 10.244.1.10}}\n---\n\
             kind: NetworkPolicy\nmetadata: {{name: np, namespace: x}}\nspec:\n  \
             podSelector: {{matchLabels: {{app: a}}}}\n  ingress:\n  - ports: [{{port: {port}}}]\n"
        );
        parse_manifests(&text).expect("the manifests parse").into_iter().collect()
    }

    fn target() -> Target {
        Target {
            node: "node-1".into(),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            options: Options::default(),
        }
    }

    /// The verdict once the thread is done (it wakes the test through `done`).
    fn verdict(
        check: &mut ScratchCheck,
        version: u64,
        ir: &PolicyIr,
        woken: &Receiver<()>,
    ) -> Option<Verdict> {
        woken.recv_timeout(std::time::Duration::from_secs(30)).expect("the compile finishes");
        check.take(version, ir)
    }

    #[test]
    fn a_scratch_compile_agrees_differs_or_is_dropped_when_the_loop_moved_on() {
        let loop_ir = Compiled::new(model(80), "g", "node-1", &target().cluster_cidrs, Options::default());
        let (wake, woken) = mpsc::channel();
        let mut check = ScratchCheck::default();
        assert!(check.due(), "the first resync starts a check");
        let w = wake.clone();
        check.start(1, model(80), "g".into(), target(), move || w.send(()).unwrap());
        assert!(!check.due(), "none starts while one runs");
        let v = verdict(&mut check, 1, loop_ir.ir(), &woken);
        assert!(matches!(v, Some(Verdict::Agrees)), "{v:?}");
        assert!(check.take(1, loop_ir.ir()).is_none(), "taken once");
        // An engine that went wrong: the loop's IR is not what its model compiles to.
        let w = wake.clone();
        check.start(2, model(81), "g".into(), target(), move || w.send(()).unwrap());
        match verdict(&mut check, 2, loop_ir.ir(), &woken) {
            Some(Verdict::Differs(c)) => assert_ne!(c.ir(), loop_ir.ir()),
            v => panic!("a disagreement is reported: {v:?}"),
        }
        // The loop compiled something else meanwhile: the result says nothing.
        check.start(3, model(81), "g".into(), target(), move || wake.send(()).unwrap());
        assert!(verdict(&mut check, 4, loop_ir.ir(), &woken).is_none());
        assert!(check.due(), "and the next resync checks again");
        for _ in 0..EVERY {
            assert!(!check.due());
        }
        assert!(check.due(), "then every {EVERY} resyncs");
    }
}
