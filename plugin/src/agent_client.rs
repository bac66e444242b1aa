//! Telling the node agent about a pod, so its policy is in force from the
//! pod's first packet: ADD sends the pod's address and waits (bounded) for
//! the agent to say it has committed the rules; DEL says the address is
//! going, so the agent drops it before it can be handed to another pod.
//!
//! One JSON line each way over a unix stream socket (`weft_conf::pod_socket`). The agent may be absent
//! (no socket: policy is off on this node) or stopped (connection refused):
//! then ADD goes on, and the agent's fail-closed rule keeps the pod's address
//! dropped until it learns the pod from the cluster state. The pod's policy
//! is therefore never bypassed, only its allowed traffic delayed.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use weft_conf::pod_socket::{AgentReply, PodEvent};

/// Bound on the whole exchange: the agent compiles and applies within it on
/// any sane node; past it, ADD returns and the fail-closed rule holds.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Why the agent was not told; never fatal to ADD or DEL.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("no agent socket at {0}")]
    NoSocket(String),
    #[error("agent socket {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("agent socket {path}: bad reply {reply:?}")]
    BadReply { path: String, reply: String },
    #[error("the agent refused: {0}")]
    Refused(String),
}

/// Sends `event` to the agent at `socket` and waits for its reply, within `timeout`.
pub fn notify(socket: &Path, event: &PodEvent, timeout: Duration) -> Result<(), NotifyError> {
    let path = socket.display().to_string();
    if !socket.exists() {
        return Err(NotifyError::NoSocket(path));
    }
    let io = |source| NotifyError::Io { path: path.clone(), source };
    let mut s = UnixStream::connect(socket).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    // PodEvent always serialises (strings and addresses only).
    let mut line = serde_json::to_string(event).unwrap_or_default();
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).map_err(io)?;
    let r: AgentReply = serde_json::from_str(reply.trim())
        .map_err(|_| NotifyError::BadReply { path: path.clone(), reply: reply.trim().to_string() })?;
    if r.ok {
        Ok(())
    } else {
        Err(NotifyError::Refused(r.error.unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn absent_silent_and_answering_agents() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let ev = PodEvent::Del { container_id: "c".into(), ifname: "eth0".into() };
        assert!(matches!(notify(&sock, &ev, TIMEOUT), Err(NotifyError::NoSocket(_))));

        let listener = UnixListener::bind(&sock).unwrap();
        // Silent: accepts and never answers; the bound holds.
        let t = std::time::Instant::now();
        let silent = std::thread::spawn({
            let l = listener.try_clone().unwrap();
            move || {
                let (c, _) = l.accept().unwrap();
                std::thread::sleep(Duration::from_millis(500));
                drop(c);
            }
        });
        assert!(matches!(notify(&sock, &ev, Duration::from_millis(100)), Err(NotifyError::Io { .. })));
        assert!(t.elapsed() < Duration::from_millis(450), "{:?}", t.elapsed());
        silent.join().unwrap();

        // Answering: ok, then a refusal.
        let server = std::thread::spawn(move || {
            for reply in [r#"{"ok":true}"#, r#"{"ok":false,"error":"no such pod"}"#] {
                let (c, _) = listener.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&c).read_line(&mut line).unwrap();
                assert!(line.contains("\"op\":\"del\""));
                (&c).write_all(format!("{reply}\n").as_bytes()).unwrap();
            }
        });
        notify(&sock, &ev, TIMEOUT).unwrap();
        assert!(matches!(notify(&sock, &ev, TIMEOUT), Err(NotifyError::Refused(e)) if e == "no such pod"));
        server.join().unwrap();
    }
}
