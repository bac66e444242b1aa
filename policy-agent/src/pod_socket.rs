//! The agent's pod socket: the plugin's ADD and DEL reports arrive here (one
//! JSON line each, `weft_conf::pod_socket`) and go to the agent loop as
//! events; the loop answers once the pod's policy is committed. One thread
//! accepts, one short-lived thread per connection reads and answers, so a
//! stuck client never blocks another.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use weft_conf::pod_socket::{AgentReply, PodEvent};

/// Bound on reading a request and on the loop's answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request line read.
const MAX_LINE: u64 = 64 * 1024;

/// What wakes the agent loop.
#[derive(Debug)]
pub enum Event {
    /// SIGTERM/SIGINT.
    Stop,
    /// A pod report and where to send the answer.
    Pod(PodEvent, Sender<AgentReply>),
}

/// The listening socket; its file is removed on drop.
#[derive(Debug)]
pub struct PodSocket {
    path: PathBuf,
}

impl PodSocket {
    /// Listens on `path` (a stale file from an earlier run is replaced; the
    /// socket is root-only, 0600) and forwards every request to `events`.
    pub fn listen(path: &Path, events: Sender<Event>) -> std::io::Result<PodSocket> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        std::thread::Builder::new().name("weft-agent-pod-socket".into()).spawn(move || {
            for conn in listener.incoming().flatten() {
                let events = events.clone();
                let _ = std::thread::Builder::new()
                    .name("weft-agent-pod-request".into())
                    .spawn(move || serve(conn, &events));
            }
        })?;
        Ok(PodSocket { path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PodSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(conn: UnixStream, events: &Sender<Event>) {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let mut line = String::new();
    let read = std::io::Read::take(BufReader::new(&conn), MAX_LINE).read_line(&mut line);
    let reply = match read
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str::<PodEvent>(line.trim()).map_err(|e| format!("bad request: {e}")))
    {
        Err(error) => AgentReply { ok: false, error: Some(error) },
        Ok(ev) => {
            let (tx, rx) = mpsc::channel();
            if events.send(Event::Pod(ev, tx)).is_err() {
                AgentReply { ok: false, error: Some("the agent is stopping".into()) }
            } else {
                rx.recv_timeout(IO_TIMEOUT).unwrap_or_else(|_| AgentReply {
                    ok: false,
                    error: Some("the agent did not answer in time".into()),
                })
            }
        }
    };
    let mut text = serde_json::to_string(&reply).unwrap_or_default();
    text.push('\n');
    let _ = (&conn).write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plugin's side of one exchange: a request line, the reply line.
    fn ask(path: &Path, ev: &PodEvent) -> AgentReply {
        let c = UnixStream::connect(path).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        (&c).write_all(format!("{}\n", serde_json::to_string(ev).unwrap()).as_bytes()).unwrap();
        let mut reply = String::new();
        BufReader::new(&c).read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap()
    }

    #[test]
    fn requests_reach_the_loop_and_its_answer_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/agent.sock");
        let (tx, rx) = mpsc::channel();
        let sock = PodSocket::listen(&path, tx.clone()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let lp = std::thread::spawn(move || {
            for answer in [true, false] {
                match rx.recv_timeout(IO_TIMEOUT).unwrap() {
                    Event::Pod(PodEvent::Del { container_id, .. }, reply) => {
                        assert_eq!(container_id, "c1");
                        let error = (!answer).then(|| "nope".to_string());
                        reply.send(AgentReply { ok: answer, error }).unwrap();
                    }
                    other => panic!("{other:?}"),
                }
            }
        });
        let ev = PodEvent::Del { container_id: "c1".into(), ifname: "eth0".into() };
        assert_eq!(ask(&path, &ev), AgentReply { ok: true, error: None });
        assert_eq!(ask(&path, &ev), AgentReply { ok: false, error: Some("nope".into()) });
        lp.join().unwrap();
        // Garbage gets an error reply, not a hang.
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(b"{not json\n").unwrap();
        let mut reply = String::new();
        BufReader::new(&c).read_line(&mut reply).unwrap();
        assert!(reply.contains("\"ok\":false") && reply.contains("bad request"), "{reply}");
        // A second agent replaces a stale socket file; drop removes it.
        drop(sock);
        assert!(!path.exists());
        std::fs::write(&path, "stale").unwrap();
        let again = PodSocket::listen(&path, tx).unwrap();
        assert!(again.path().exists());
    }
}
