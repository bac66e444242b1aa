//! Ctrl-C for `up`: SIGINT and SIGTERM are blocked in every thread and taken by
//! one sigwait thread, which sets a cancel flag that `up` checks between steps
//! (so it cleans up what it made) and wakes whoever waits in `Signals::wait`.
//! `watch` must run before any other thread starts: threads inherit the mask.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};

use nix::sys::signal::{SigSet, Signal};

use crate::error::{E2eError, Result};

static CANCEL: AtomicBool = AtomicBool::new(false);

/// The signal watcher of this process.
pub struct Signals {
    rx: Receiver<Signal>,
}

impl Signals {
    /// Blocks SIGINT/SIGTERM in the calling thread (and all it spawns later) and
    /// starts the thread that waits for them. Call once, first thing in main.
    pub fn watch() -> Result<Signals> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.thread_block().map_err(|e| E2eError::io("block SIGINT/SIGTERM")(e.into()))?;
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("weft-e2e-signals".into())
            .spawn(move || {
                while let Ok(sig) = set.wait() {
                    CANCEL.store(true, Ordering::SeqCst);
                    if tx.send(sig).is_err() {
                        return;
                    }
                }
            })
            .map_err(E2eError::io("spawn signal thread"))?;
        Ok(Signals { rx })
    }

    /// The flag that turns true on the first SIGINT/SIGTERM.
    pub fn cancel(&self) -> &'static AtomicBool {
        &CANCEL
    }

    /// Blocks until SIGINT or SIGTERM arrives (or has arrived).
    pub fn wait(&self) -> Option<Signal> {
        self.rx.recv().ok()
    }
}
