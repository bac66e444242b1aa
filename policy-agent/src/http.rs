//! The agent's small HTTP endpoint (`--http ADDR`): `/denied?since=MS`
//! (the denied-connection log as JSON lines), `/metrics` (Prometheus text),
//! `/healthz` (liveness: 200 while the agent loop comes round, 503 once it
//! has not for `metrics::LIVENESS_STALE`) and `/readyz` (readiness: 200 once
//! the last sync applied policy and, with `--cni-conf-dir`, the conflist is
//! written; 503 with the reason before). GET only, one request per
//! connection, on a thread of its own; a slow client cannot hold it for more
//! than `IO_TIMEOUT`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::denied::DenyLog;
use crate::metrics::AgentMetrics;

const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// What the endpoint serves from, shared with the agent loop.
#[derive(Debug)]
pub struct Shared {
    pub denied: Mutex<DenyLog>,
    pub metrics: Mutex<AgentMetrics>,
}

impl Shared {
    pub fn new(now: Instant) -> Shared {
        Shared { denied: Mutex::new(DenyLog::default()), metrics: Mutex::new(AgentMetrics::new(now)) }
    }

    /// The denied log; a panic elsewhere while it was held leaves counters, still worth serving.
    pub fn denied(&self) -> MutexGuard<'_, DenyLog> {
        self.denied.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn metrics(&self) -> MutexGuard<'_, AgentMetrics> {
        self.metrics.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Listens on `addr` and serves from `shared`; returns the bound address.
pub fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("weft-agent-http".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = handle(conn, &shared);
        }
    })?;
    Ok(bound)
}

fn handle(conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let (status, kind, body) = respond(&line, shared);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    (&conn).write_all(head.as_bytes())?;
    (&conn).write_all(body.as_bytes())
}

const OK: &str = "200 OK";
const UNAVAILABLE: &str = "503 Service Unavailable";
const TEXT: &str = "text/plain";

/// The response to one request line: status, content type, body.
fn respond(request: &str, shared: &Shared) -> (&'static str, &'static str, String) {
    let mut parts = request.split_whitespace();
    let (Some("GET"), Some(target)) = (parts.next(), parts.next()) else {
        return ("405 Method Not Allowed", TEXT, "GET only\n".into());
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let probe = |r: Result<(), String>, ok: &str| match r {
        Ok(()) => (OK, TEXT, format!("{ok}\n")),
        Err(why) => (UNAVAILABLE, TEXT, why + "\n"),
    };
    match path {
        "/denied" => {
            let since = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("since="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            ("200 OK", "application/x-ndjson", shared.denied().since(since))
        }
        "/metrics" => {
            let body = crate::metrics::scrape(&shared.metrics, Instant::now()) + &shared.denied().metrics();
            (OK, "text/plain; version=0.0.4", body)
        }
        "/healthz" => probe(shared.metrics().live(Instant::now()), "ok"),
        "/readyz" => probe(shared.metrics().ready(), "ready"),
        _ => ("404 Not Found", TEXT, "not found: try /denied, /metrics, /healthz or /readyz\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Status;
    use std::io::Read;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn routes() {
        let shared = Arc::new(Shared::new(Instant::now()));
        let addr = serve("127.0.0.1:0".parse().unwrap(), shared.clone()).unwrap();
        let health = get(addr, "/healthz");
        assert!(health.starts_with("HTTP/1.1 200 OK") && health.ends_with("ok\n"), "{health}");
        let metrics = get(addr, "/metrics");
        assert!(metrics.contains("weft_denied_log_suppressed_total 0"), "{metrics}");
        assert!(metrics.contains("weft_sync_duration_seconds_count{kind=\"full\"} 0"), "{metrics}");
        assert!(get(addr, "/denied?since=5").contains("application/x-ndjson"));
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
        assert!(get(addr, "/readyz").starts_with("HTTP/1.1 503"));
        let st = Status {
            node: "n".into(),
            generation: "g".into(),
            routes: 0,
            ip_forward: true,
            bridge_nf_call_iptables: None,
            masquerade: None,
            policy: None,
            warnings: vec![],
            errors: vec![],
        };
        shared.metrics().synced(&st, Ok(()));
        let ready = get(addr, "/readyz");
        assert!(ready.starts_with("HTTP/1.1 200 OK") && ready.ends_with("ready\n"), "{ready}");
        // A loop that stopped coming round fails liveness.
        shared.metrics().heartbeat(Instant::now() - crate::metrics::LIVENESS_STALE - Duration::from_secs(5));
        let dead = get(addr, "/healthz");
        assert!(dead.starts_with("HTTP/1.1 503") && dead.contains("has not run for"), "{dead}");
    }
}
