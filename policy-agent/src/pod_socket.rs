//! The agent's pod socket: the plugin's ADD and DEL reports arrive here (one
//! JSON line each, `weft_conf::pod_socket`) and go to the agent loop as
//! events; the loop answers once the pod's policy is committed. One thread
//! accepts, one short-lived thread per connection reads and answers, so a
//! stuck client never blocks another.
//!
//! Every input is bounded: at most `MAX_CONNECTIONS` are served at once (one
//! more gets an error line at once and is closed, so idle clients cannot use
//! up the agent's fds); a request is one line of at most `MAX_LINE` bytes
//! that must arrive whole within `READ_TIMEOUT`; the loop's answer is
//! awaited for `REPLY_TIMEOUT`. When accept fails (EMFILE: the process is
//! out of fds) the accept thread backs off and tries again, never spins and
//! never ends. The socket file is bound inside a fresh 0700 directory, made
//! 0600 there, then renamed into place, so it is never reachable by anyone
//! but root, whatever the umask (a chmod after bind leaves a window).

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use weft_conf::pod_socket::{AgentReply, PodEvent};

/// The most requests served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Bound on receiving a whole request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on the loop's answer: the plugin's own bound (`agent_client::TIMEOUT`).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on writing an answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest request line read.
pub const MAX_LINE: usize = 64 * 1024;
/// The pause after a failed accept (EMFILE and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What wakes the agent loop.
#[derive(Debug)]
pub enum Event {
    /// SIGTERM/SIGINT.
    Stop,
    /// A pod report and where to send the answer.
    Pod(PodEvent, Sender<AgentReply>),
    /// The source has news (`Wake`): poll it now, not at the next poll.
    Wake,
}

/// Wakes the agent loop from another thread (a source's watcher); at most
/// one `Event::Wake` waits in the channel however often it is called.
#[derive(Debug, Clone)]
pub struct Wake {
    tx: Sender<Event>,
    queued: Arc<AtomicBool>,
}

impl Wake {
    /// A waker sending on `tx`, the agent loop's channel.
    pub fn new(tx: Sender<Event>) -> Wake {
        Wake { tx, queued: Arc::new(AtomicBool::new(false)) }
    }

    /// Queues one `Event::Wake` unless one is queued already.
    pub fn wake(&self) {
        if !self.queued.swap(true, Ordering::SeqCst) {
            let _ = self.tx.send(Event::Wake);
        }
    }

    /// The loop took the wake-up (call before polling): the next `wake` queues again.
    pub fn taken(&self) {
        self.queued.store(false, Ordering::SeqCst);
    }
}

/// The listening socket; its file is removed on drop.
#[derive(Debug)]
pub struct PodSocket {
    path: PathBuf,
}

impl PodSocket {
    /// Listens on `path` (a stale file from an earlier run is replaced; the
    /// socket is root-only, 0600, from the start) and forwards every request
    /// to `events`.
    pub fn listen(path: &Path, events: Sender<Event>) -> std::io::Result<PodSocket> {
        let listener = bind_private(path)?;
        std::thread::Builder::new()
            .name("weft-agent-pod-socket".into())
            .spawn(move || accept_loop(&listener, &events))?;
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

/// Binds `path` with mode 0600 and no window: inside a new 0700 directory
/// next to it (umask can only narrow that), then renamed over `path`.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file = path.file_name().ok_or_else(|| std::io::Error::other("the socket path names no file"))?;
    let private = dir.join(format!(".{}.{}.bind", file.to_string_lossy(), std::process::id()));
    // A crashed run of this same pid: what it left is ours.
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let inner = private.join("s");
    let bound = UnixListener::bind(&inner).and_then(|l| {
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inner, path)?;
        Ok(l)
    });
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Accepts for ever: serves up to `MAX_CONNECTIONS` at once and refuses the
/// rest with an error line; after a failed accept, waits `ACCEPT_BACKOFF`.
fn accept_loop(listener: &UnixListener, events: &Sender<Event>) {
    let live = Arc::new(AtomicUsize::new(0));
    let mut failing = false;
    loop {
        let conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if !failing {
                    warn!(error = %e, "pod socket: accept failed (out of file descriptors?); retrying");
                }
                failing = true;
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        if std::mem::take(&mut failing) {
            info!("pod socket: accepting again");
        }
        if live.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            live.fetch_sub(1, Ordering::SeqCst);
            let error = format!("the agent is serving {MAX_CONNECTIONS} requests already; try again");
            answer(&conn, &AgentReply { ok: false, error: Some(error) });
            continue;
        }
        let (events, slot) = (events.clone(), Slot(live.clone()));
        // On failure the closure, with its slot and connection, is dropped.
        let _ = std::thread::Builder::new().name("weft-agent-pod-request".into()).spawn(move || {
            let _slot = slot;
            serve(conn, &events);
        });
    }
}

/// One of the `MAX_CONNECTIONS`, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve(conn: UnixStream, events: &Sender<Event>) {
    let reply = match read_request(&conn, Instant::now() + READ_TIMEOUT).and_then(|line| {
        serde_json::from_str::<PodEvent>(line.trim()).map_err(|e| format!("bad request: {e}"))
    }) {
        Err(error) => AgentReply { ok: false, error: Some(error) },
        Ok(ev) => {
            let (tx, rx) = mpsc::channel();
            if events.send(Event::Pod(ev, tx)).is_err() {
                AgentReply { ok: false, error: Some("the agent is stopping".into()) }
            } else {
                rx.recv_timeout(REPLY_TIMEOUT).unwrap_or_else(|_| AgentReply {
                    ok: false,
                    error: Some("the agent did not answer in time".into()),
                })
            }
        }
    };
    answer(&conn, &reply);
}

/// Reads one line (without its newline; end of stream also ends it) of at
/// most `MAX_LINE` bytes, all of it before `deadline`.
fn read_request(mut conn: &UnixStream, deadline: Instant) -> Result<String, String> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timed_out = || format!("no whole request within {} ms", READ_TIMEOUT.as_millis());
        if left.is_zero() {
            return Err(timed_out());
        }
        conn.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let n = match conn.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(timed_out())
            }
            Err(e) => return Err(e.to_string()),
        };
        let end = chunk[..n].iter().position(|b| *b == b'\n');
        line.extend_from_slice(&chunk[..end.unwrap_or(n)]);
        if line.len() > MAX_LINE {
            return Err(format!("request longer than {MAX_LINE} bytes"));
        }
        if n == 0 || end.is_some() {
            return String::from_utf8(line).map_err(|_| "bad request: not UTF-8".into());
        }
    }
}

/// Writes `reply` as one line, within `WRITE_TIMEOUT`; a client gone is no error.
fn answer(mut conn: &UnixStream, reply: &AgentReply) {
    let _ = conn.set_write_timeout(Some(WRITE_TIMEOUT));
    // AgentReply always serialises (a bool and a string).
    let mut text = serde_json::to_string(reply).unwrap_or_default();
    text.push('\n');
    let _ = conn.write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    /// The plugin's side of one exchange: a request line, the reply line.
    fn ask(path: &Path, ev: &PodEvent) -> AgentReply {
        let c = UnixStream::connect(path).unwrap();
        c.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        // A refusal may come (and the socket close) before the request is written.
        let _ = (&c).write_all(format!("{}\n", serde_json::to_string(ev).unwrap()).as_bytes());
        let mut reply = String::new();
        BufReader::new(&c).read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap()
    }

    /// One reply line from `c`, or "" at end of stream.
    fn reply_of(c: &UnixStream) -> String {
        let mut reply = String::new();
        BufReader::new(c).read_line(&mut reply).unwrap();
        reply
    }

    #[test]
    fn requests_reach_the_loop_and_its_answer_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/agent.sock");
        let (tx, rx) = mpsc::channel();
        // Even with a umask that opens everything, the socket is root-only.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let sock = PodSocket::listen(&path, tx.clone());
        nix::sys::stat::umask(old);
        let sock = sock.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let left: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, ["agent.sock"], "the private bind dir is gone");
        let lp = std::thread::spawn(move || {
            for answer in [true, false] {
                match rx.recv_timeout(REPLY_TIMEOUT).unwrap() {
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
        let reply = reply_of(&c);
        assert!(reply.contains("\"ok\":false") && reply.contains("bad request"), "{reply}");
        // A second agent replaces a stale socket file; drop removes it.
        drop(sock);
        assert!(!path.exists());
        std::fs::write(&path, "stale").unwrap();
        let again = PodSocket::listen(&path, tx).unwrap();
        assert!(again.path().exists());
    }

    #[test]
    fn a_request_must_arrive_whole_within_its_deadline_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let (tx, _rx) = mpsc::channel();
        let _sock = PodSocket::listen(&path, tx).unwrap();
        // A byte every 300 ms keeps every read short, never the request.
        let c = UnixStream::connect(&path).unwrap();
        let t0 = Instant::now();
        let trickle = std::thread::spawn({
            let mut c = c.try_clone().unwrap();
            move || {
                while t0.elapsed() < READ_TIMEOUT * 2 && c.write_all(b" ").is_ok() {
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        });
        c.set_read_timeout(Some(READ_TIMEOUT * 2)).unwrap();
        let reply = reply_of(&c);
        let took = t0.elapsed();
        assert!(reply.contains("no whole request within 2000 ms"), "{reply}");
        assert!(took >= READ_TIMEOUT && took < READ_TIMEOUT + Duration::from_millis(500), "{took:?}");
        trickle.join().unwrap();
        // A line over the cap is refused without waiting for its end.
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(&vec![b'x'; MAX_LINE + 1]).unwrap();
        assert!(reply_of(&c).contains(&format!("longer than {MAX_LINE} bytes")));
    }

    #[test]
    fn beyond_the_connection_cap_clients_are_refused_at_once_and_served_again_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let (tx, rx) = mpsc::channel();
        let _sock = PodSocket::listen(&path, tx).unwrap();
        std::thread::spawn(move || {
            for ev in rx {
                if let Event::Pod(_, reply) = ev {
                    let _ = reply.send(AgentReply { ok: true, error: None });
                }
            }
        });
        let idle: Vec<UnixStream> =
            (0..MAX_CONNECTIONS).map(|_| UnixStream::connect(&path).unwrap()).collect();
        let ev = PodEvent::Del { container_id: "c1".into(), ifname: "eth0".into() };
        // The idle ones may still be in the backlog: wait (bounded) for the refusal.
        let t0 = Instant::now();
        let refused = loop {
            match ask(&path, &ev) {
                AgentReply { ok: false, error: Some(e) } => break e,
                AgentReply { ok: true, .. } if t0.elapsed() < READ_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                other => panic!("{other:?}"),
            }
        };
        assert!(refused.contains("serving 64 requests"), "{refused}");
        let t1 = Instant::now();
        assert!(!ask(&path, &ev).ok);
        assert!(t1.elapsed() < Duration::from_millis(200), "refused at once: {:?}", t1.elapsed());
        // The idle clients go: their slots come back.
        drop(idle);
        let t2 = Instant::now();
        while !ask(&path, &ev).ok {
            assert!(t2.elapsed() < READ_TIMEOUT, "slots did not come back");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
