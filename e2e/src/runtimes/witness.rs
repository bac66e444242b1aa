//! A stand-in for the node agent on the plugin's socket (the agent's own
//! `PodSocket`): it records every ADD and DEL report the `weft` processes a
//! runtime exec'd send, answers "committed", and can run a hook on an ADD
//! before answering, while the runtime is still waiting for the plugin
//! (the containerd test kills containerd there, mid-ADD).
//!
//! What it records is what the runtime passed to weft: the container ID,
//! the pod's K8S_POD_NAMESPACE/NAME from CNI_ARGS, the addresses, and how
//! many DELs each attachment got.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use weft_agent::pod_socket::{Event, PodSocket};
use weft_conf::pod_socket::{AgentReply, PodEvent};

use super::{Result, RuntimeError};

/// What runs on an ADD report before it is answered.
pub type Hook = Box<dyn FnMut(&PodEvent) + Send>;

/// The listening witness; stops listening on drop.
pub struct Witness {
    _socket: PodSocket,
    events: Arc<Mutex<Vec<PodEvent>>>,
    hook: Arc<Mutex<Option<Hook>>>,
}

impl Witness {
    /// Listens on `path`.
    pub fn listen(path: &Path) -> Result<Witness> {
        let (tx, rx) = mpsc::channel();
        let socket =
            PodSocket::listen(path, tx).map_err(RuntimeError::io(format!("listen on {}", path.display())))?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let hook: Arc<Mutex<Option<Hook>>> = Arc::new(Mutex::new(None));
        let (seen, h) = (events.clone(), hook.clone());
        std::thread::Builder::new()
            .name("weft-e2e-witness".into())
            .spawn(move || {
                // Ends when the socket's accept thread drops its sender, i.e. never
                // before the process ends; it holds nothing but these Arcs.
                for ev in rx {
                    let Event::Pod(ev, reply) = ev else { continue };
                    if matches!(ev, PodEvent::Add { .. }) {
                        if let Some(f) = h.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                            f(&ev);
                        }
                    }
                    seen.lock().unwrap_or_else(|p| p.into_inner()).push(ev);
                    let _ = reply.send(AgentReply { ok: true, error: None });
                }
            })
            .map_err(RuntimeError::io("spawn the witness thread"))?;
        Ok(Witness { _socket: socket, events, hook })
    }

    /// Runs `f` on every ADD report from now on, before it is answered
    /// (replacing an earlier hook; `None` removes it).
    pub fn on_add(&self, f: Option<Hook>) {
        *self.hook.lock().unwrap_or_else(|p| p.into_inner()) = f;
    }

    /// Every report so far, in arrival order.
    pub fn events(&self) -> Vec<PodEvent> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The ADD reports for `container_id`.
    pub fn adds(&self, container_id: &str) -> Vec<PodEvent> {
        self.events()
            .into_iter()
            .filter(|e| matches!(e, PodEvent::Add { container_id: c, .. } if c == container_id))
            .collect()
    }

    /// How many DEL reports `container_id` got.
    pub fn dels(&self, container_id: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| matches!(e, PodEvent::Del { container_id: c, .. } if c == container_id))
            .count()
    }
}
