//! The agent's HTTP endpoint against hostile clients: the real `weft-agent`
//! binary (`--http`, a dir source, `--backend off`) in a network namespace
//! of the test's own (root; skips otherwise). Twenty slowloris clients do
//! not hold `/healthz`, and a 1 GB request line is cut off without growing
//! the agent's memory (measured in /proc, peak reset before the attack).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use weft_agent::http::CONN_DEADLINE;
use weft_netkit::netns::run_in_new;

/// Runs `f` in a network namespace of its own.
fn in_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    run_in_new(f).expect("a netns of its own (root)")
}

const ADDR: &str = "127.0.0.1:9787";
/// The target: `/healthz` answers within this while slow clients hold connections.
const HEALTHZ_BOUND: Duration = Duration::from_secs(1);
const SLOW_CLIENTS: usize = 20;
/// A slow client sends one byte this often: never enough for a head.
const DRIP: Duration = Duration::from_millis(500);
/// The target: RSS grows at most this much under an attack.
const RSS_GROWTH: u64 = 16 * 1024 * 1024;
const GIB: u64 = 1 << 30;
/// Bound on streaming the 1 GB line: the agent must cut it off well before.
const STREAM_BOUND: Duration = Duration::from_secs(20);

/// True when root; otherwise the test skips (fails under CI).
fn root() -> bool {
    weft_test_support::root_or_skip(&weft_test_support::this_test(), "a network namespace of its own")
}

/// `weft-agent` serving `ADDR` in this thread's netns; killed on drop.
struct Agent {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Agent {
        let lo = Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip");
        assert!(lo.success());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("cluster")).unwrap();
        let source = format!("dir:{}", dir.path().join("cluster").display());
        let status = dir.path().join("status.json").display().to_string();
        let child = Command::new(env!("CARGO_BIN_EXE_weft-agent"))
            .args(["--node", "n1", "--source", &source, "--status-file", &status])
            .args(["--backend", "off", "--http", ADDR, "--poll-ms", "50"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let agent = Agent { child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !healthz().is_ok_and(|(ok, _)| ok) {
            assert!(Instant::now() < deadline, "the agent never answered /healthz");
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    /// A field of /proc/PID/status, in bytes.
    fn vm(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field}"));
        let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap();
        kib * 1024
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET /healthz: whether it answered 200, and how long it took.
fn healthz() -> std::io::Result<(bool, Duration)> {
    let t0 = Instant::now();
    let addr: SocketAddr = ADDR.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, HEALTHZ_BOUND)?;
    s.set_read_timeout(Some(HEALTHZ_BOUND))?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok((out.starts_with("HTTP/1.1 200"), t0.elapsed()))
}

/// One slow client until `stop`: a request line, then a byte every `DRIP`,
/// reconnecting when cut off; records how long each connection was held.
fn slowloris(stop: &AtomicBool, connected: &AtomicUsize, held: &Mutex<Vec<Duration>>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(ADDR) else { continue };
        connected.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let _ = s.set_read_timeout(Some(DRIP));
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\n");
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            match s.read(&mut buf) {
                // Waited a drip: one more byte.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if s.write_all(b"X").is_err() {
                        break;
                    }
                }
                // Closed, reset, or answered: the agent let go.
                _ => {
                    held.lock().unwrap().push(t0.elapsed());
                    break;
                }
            }
        }
    }
}

#[test]
fn twenty_slowloris_clients_do_not_hold_healthz() {
    if !root() {
        return;
    }
    in_netns(|| {
        let _agent = Agent::start();
        let stop = AtomicBool::new(false);
        let (connected, held) = (AtomicUsize::new(0), Mutex::new(Vec::new()));
        std::thread::scope(|s| {
            for _ in 0..SLOW_CLIENTS {
                s.spawn(|| slowloris(&stop, &connected, &held));
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while connected.load(Ordering::Relaxed) < SLOW_CLIENTS {
                assert!(Instant::now() < deadline, "the slow clients never connected");
                std::thread::sleep(Duration::from_millis(10));
            }
            // Across two deadlines, so clients cut off and reconnecting are in play too.
            let mut worst = Duration::ZERO;
            let until = Instant::now() + 2 * CONN_DEADLINE;
            while Instant::now() < until {
                let (ok, took) = healthz().expect("/healthz answers while slow clients hold connections");
                assert!(ok && took <= HEALTHZ_BOUND, "/healthz: 200 {ok} in {took:?}");
                worst = worst.max(took);
                std::thread::sleep(Duration::from_millis(100));
            }
            stop.store(true, Ordering::Relaxed);
            eprintln!("worst /healthz under {SLOW_CLIENTS} slow clients: {worst:?}");
        });
        let held = held.into_inner().unwrap();
        assert!(held.len() >= SLOW_CLIENTS, "every slow client was cut off at least once: {held:?}");
        let longest = held.iter().max().copied().unwrap_or_default();
        assert!(longest <= CONN_DEADLINE + DRIP, "a slow client held a connection for {longest:?}");
    });
}

#[test]
fn a_gigabyte_request_line_is_cut_off_and_costs_no_memory() {
    if !root() {
        return;
    }
    in_netns(|| {
        let agent = Agent::start();
        let before = agent.vm("VmRSS");
        // Resets VmHWM, so it shows the peak of the attack alone.
        std::fs::write(format!("/proc/{}/clear_refs", agent.child.id()), "5").unwrap();
        let mut s = TcpStream::connect(ADDR).unwrap();
        s.set_write_timeout(Some(CONN_DEADLINE * 2)).unwrap();
        s.write_all(b"GET /").unwrap();
        let chunk = vec![b'a'; 64 * 1024];
        let (t0, mut sent) = (Instant::now(), 0u64);
        let cut = loop {
            if sent >= GIB || t0.elapsed() > STREAM_BOUND {
                break false;
            }
            match s.write(&chunk) {
                Ok(n) => sent += n as u64,
                Err(_) => break true,
            }
        };
        let took = t0.elapsed();
        let growth = agent.vm("VmHWM").saturating_sub(before);
        eprintln!("a 1 GB line: cut after {sent} bytes in {took:?}; RSS peak grew {growth} bytes");
        assert!(cut, "the agent read {sent} bytes of one request line in {took:?}");
        assert!(growth <= RSS_GROWTH, "RSS grew {growth} bytes");
        assert!(healthz().unwrap().0, "the endpoint still serves");
    });
}
