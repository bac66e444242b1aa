//! The agent's small HTTP endpoint (`--http ADDR`): `/denied?since=MS`
//! (the denied-connection log as JSON lines), `/metrics` (Prometheus text)
//! and `/healthz`. GET only, one request per connection, on a thread of its
//! own; a slow client cannot hold it for more than `IO_TIMEOUT`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::denied::DenyLog;

const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Listens on `addr` and serves from `log`; returns the bound address.
pub fn serve(addr: SocketAddr, log: Arc<Mutex<DenyLog>>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("weft-agent-http".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = handle(conn, &log);
        }
    })?;
    Ok(bound)
}

fn handle(conn: TcpStream, log: &Mutex<DenyLog>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let (status, kind, body) = respond(&line, log);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    (&conn).write_all(head.as_bytes())?;
    (&conn).write_all(body.as_bytes())
}

/// The response to one request line: status, content type, body.
fn respond(request: &str, log: &Mutex<DenyLog>) -> (&'static str, &'static str, String) {
    let mut parts = request.split_whitespace();
    let (Some("GET"), Some(target)) = (parts.next(), parts.next()) else {
        return ("405 Method Not Allowed", "text/plain", "GET only\n".into());
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let log = log.lock().unwrap_or_else(|p| p.into_inner());
    match path {
        "/denied" => {
            let since = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("since="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            ("200 OK", "application/x-ndjson", log.since(since))
        }
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", log.metrics()),
        "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
        _ => ("404 Not Found", "text/plain", "not found: try /denied, /metrics or /healthz\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let log = Arc::new(Mutex::new(DenyLog::default()));
        let addr = serve("127.0.0.1:0".parse().unwrap(), log).unwrap();
        assert!(
            get(addr, "/healthz").starts_with("HTTP/1.1 200 OK") && get(addr, "/healthz").ends_with("ok\n")
        );
        assert!(get(addr, "/metrics").contains("weft_denied_log_suppressed_total 0"));
        assert!(get(addr, "/denied?since=5").contains("application/x-ndjson"));
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    }
}
