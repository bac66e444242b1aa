//! The periodic resync's kernel check, off the loop: reading a large table
//! back and comparing it with what the backend applied takes 50-150 ms at
//! 10k pods and policies, which a CNI ADD waiting on the loop must not. The
//! check runs on a thread of its own; the loop goes on patching. Its answer
//! counts only if the backend wrote nothing meanwhile (the same epoch): then
//! an intact kernel needs nothing more. A drifted kernel, or a check that
//! could not say, is resynced on the loop, which reads again and repairs
//! only what drifted. A check overtaken by writes is started again, a few
//! times, and then left to the loop too, so churn cannot put drift off.

use std::sync::mpsc::{self, Receiver, TryRecvError};

use crate::backend::KernelCheck;

/// Checks overtaken by writes, in a row, before the loop checks itself.
pub const RETRIES: u32 = 3;

/// What the loop does with a finished check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The kernel holds what the backend applied: nothing.
    Intact,
    /// The backend wrote meanwhile: another check, off the loop.
    Again,
    /// Drifted, unreadable, or overtaken `RETRIES` times: a resync on the loop.
    Resync,
}

/// The check in flight, if any.
#[derive(Debug, Default)]
pub struct DriftCheck {
    running: Option<Running>,
    /// Checks overtaken by writes since the last one that counted.
    overtaken: u32,
}

#[derive(Debug)]
struct Running {
    epoch: u64,
    rx: Receiver<bool>,
}

impl DriftCheck {
    /// True while a check runs (a resync then starts none: it covers it).
    pub fn running(&self) -> bool {
        self.running.is_some()
    }

    /// Runs `check` on a thread; `done` is called there with the answer
    /// ready (a wake-up of the loop). False if no thread could be started:
    /// the caller resyncs on the loop.
    pub fn start(&mut self, check: KernelCheck, done: impl FnOnce() + Send + 'static) -> bool {
        let (tx, rx) = mpsc::sync_channel(1);
        let run = check.run;
        let spawned = std::thread::Builder::new().name("drift-check".into()).spawn(move || {
            if tx.send(run()).is_ok() {
                done();
            }
        });
        match spawned {
            Ok(_) => {
                self.running = Some(Running { epoch: check.epoch, rx });
                true
            }
            Err(e) => {
                tracing::debug!("no kernel check off the loop this time: {e}");
                false
            }
        }
    }

    /// What to do with the finished check, the backend now at `epoch`;
    /// None while it runs or if none runs.
    pub fn take(&mut self, epoch: u64) -> Option<Next> {
        let running = self.running.as_ref()?;
        let intact = match running.rx.try_recv() {
            Ok(intact) => intact,
            Err(TryRecvError::Empty) => return None,
            // The thread died (it cannot panic on input, but be sure).
            Err(TryRecvError::Disconnected) => false,
        };
        let started = running.epoch;
        self.running = None;
        if started != epoch && self.overtaken < RETRIES {
            self.overtaken += 1;
            return Some(Next::Again);
        }
        self.overtaken = 0;
        Some(if intact && started == epoch { Next::Intact } else { Next::Resync })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn check(epoch: u64, intact: bool) -> KernelCheck {
        KernelCheck { epoch, run: Box::new(move || intact) }
    }

    /// Waits for the thread's answer, as the loop would on its wake-up.
    fn answer(d: &mut DriftCheck, epoch: u64) -> Next {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(next) = d.take(epoch) {
                return next;
            }
            assert!(d.running(), "a check runs until taken");
            assert!(Instant::now() < deadline, "the check answers");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn an_intact_kernel_at_the_same_epoch_needs_nothing_and_drift_a_resync() {
        let mut d = DriftCheck::default();
        assert_eq!(d.take(1), None, "none runs");
        let (tx, rx) = mpsc::channel();
        assert!(d.start(check(1, true), move || tx.send(()).unwrap()));
        rx.recv_timeout(Duration::from_secs(5)).expect("done is called with the answer ready");
        assert_eq!(d.take(1), Some(Next::Intact));
        assert!(!d.running() && d.take(1).is_none(), "taken once");
        assert!(d.start(check(1, false), || ()));
        assert_eq!(answer(&mut d, 1), Next::Resync, "drift: the loop resyncs");
    }

    #[test]
    fn a_check_overtaken_by_writes_runs_again_then_goes_to_the_loop() {
        let mut d = DriftCheck::default();
        for _ in 0..RETRIES {
            assert!(d.start(check(1, true), || ()));
            assert_eq!(answer(&mut d, 2), Next::Again, "the backend wrote meanwhile");
        }
        assert!(d.start(check(1, true), || ()));
        assert_eq!(answer(&mut d, 2), Next::Resync, "overtaken {RETRIES} times: the loop checks");
        // Counted afresh after that.
        assert!(d.start(check(2, true), || ()));
        assert_eq!(answer(&mut d, 3), Next::Again);
        assert!(d.start(check(3, true), || ()));
        assert_eq!(answer(&mut d, 3), Next::Intact);
        assert!(d.start(check(3, true), || ()));
        assert_eq!(answer(&mut d, 4), Next::Again, "an answer that counted resets the count");
    }

    #[test]
    fn a_check_whose_thread_died_goes_to_the_loop() {
        let mut d = DriftCheck::default();
        let run: Box<dyn FnOnce() -> bool + Send> = Box::new(|| panic!("a check that dies"));
        assert!(d.start(KernelCheck { epoch: 1, run }, || ()));
        assert_eq!(answer(&mut d, 1), Next::Resync);
    }
}
