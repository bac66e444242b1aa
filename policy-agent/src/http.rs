//! The agent's small HTTP endpoint. On `--http ADDR`: `/metrics`
//! (Prometheus text), `/healthz` (liveness: 200 while the agent loop comes
//! round, 503 once it has not for `metrics::LIVENESS_STALE`) and `/readyz`
//! (readiness: 200 once the last sync applied policy and, with
//! `--cni-conf-dir`, the conflist is written; 503 with the reason before).
//! `/denied?since=MS` (the denied-connection log as JSON lines: pod names,
//! addresses, ports, policies) is for root only: it is served on the unix
//! socket `--denied-socket` (0600, with the rest), and on `--http` only with
//! `--http-denied`, since any local process can reach a loopback port.
//!
//! hyper (HTTP/1, GET, one request per connection) on a thread of its own
//! with a current-thread tokio runtime, so a slow or hostile client never
//! holds another: each listener serves at most `MAX_CONNS` connections at
//! once (one more is accepted and closed at once, so the accept loop never
//! stalls), a request head is at most `MAX_HEAD` bytes and must arrive
//! within `HEAD_TIMEOUT`, and a whole connection (request and response) is
//! cut at `CONN_DEADLINE`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use crate::denied::DenyLog;
use crate::metrics::{AgentMetrics, InputCounters};
use crate::private_socket;

/// Connections served at once per listener: far above a kubelet's probes
/// and a Prometheus scrape, far below the fd limit.
pub const MAX_CONNS: usize = 32;
/// The longest request head (request line and headers) read.
pub const MAX_HEAD: usize = 16 * 1024;
/// Bound on receiving a request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on a whole connection: the request and the response.
pub const CONN_DEADLINE: Duration = Duration::from_secs(3);
/// Pause after a failed accept (EMFILE), so the loop never spins.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the endpoint serves from, shared with the agent loop.
#[derive(Debug)]
pub struct Shared {
    pub denied: Mutex<DenyLog>,
    pub metrics: Mutex<AgentMetrics>,
    /// Bumped by the denied-log reader and the endpoint themselves.
    pub inputs: Arc<InputCounters>,
}

impl Shared {
    pub fn new(now: Instant) -> Shared {
        Shared {
            denied: Mutex::new(DenyLog::default()),
            metrics: Mutex::new(AgentMetrics::new(now)),
            inputs: Arc::default(),
        }
    }

    /// The denied log; a panic elsewhere while it was held leaves counters, still worth serving.
    pub fn denied(&self) -> MutexGuard<'_, DenyLog> {
        self.denied.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn metrics(&self) -> MutexGuard<'_, AgentMetrics> {
        self.metrics.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where the endpoint listens.
#[derive(Debug, Clone, Default)]
pub struct Listen {
    /// `--http`: metrics and health.
    pub tcp: Option<SocketAddr>,
    /// `--http-denied`: `/denied` on `tcp` too.
    pub denied_on_tcp: bool,
    /// `--denied-socket`: every path, `/denied` included, root-only.
    pub denied_socket: Option<PathBuf>,
}

/// Errors starting the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("http endpoint {addr}: {source}")]
    Tcp { addr: SocketAddr, source: std::io::Error },
    #[error("denied socket {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("http endpoint thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The running endpoint: the TCP address bound; the unix socket's file is removed on drop.
#[derive(Debug)]
pub struct Endpoint {
    pub tcp: Option<SocketAddr>,
    socket: Option<PathBuf>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(p) = &self.socket {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Binds what `listen` names (errors before anything is served) and serves
/// from `shared` on a thread of its own.
pub fn serve(listen: &Listen, shared: Arc<Shared>) -> Result<Endpoint, HttpError> {
    let nonblocking = |l: std::net::TcpListener| l.set_nonblocking(true).map(|()| l);
    let tcp = match listen.tcp {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .and_then(nonblocking)
                .map_err(|source| HttpError::Tcp { addr, source })?,
        ),
        None => None,
    };
    let bound = tcp.as_ref().and_then(|l| l.local_addr().ok());
    let unix = match &listen.denied_socket {
        Some(path) => {
            let err = |source| HttpError::Socket { path: path.clone(), source };
            let l = private_socket::bind(path).map_err(err)?;
            l.set_nonblocking(true).map_err(err)?;
            Some(l)
        }
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(HttpError::Thread)?;
    let denied_on_tcp = listen.denied_on_tcp;
    std::thread::Builder::new()
        .name("weft-agent-http".into())
        .spawn(move || {
            rt.block_on(async move {
                let lost =
                    |e: &std::io::Error| tracing::error!(error = %e, "http endpoint: a listener is lost");
                if let Some(l) = tcp.and_then(|l| tokio::net::TcpListener::from_std(l).inspect_err(lost).ok())
                {
                    let l = Arc::new(l);
                    let accept = move || {
                        let l = l.clone();
                        async move { l.accept().await.map(|(s, _)| s) }
                    };
                    tokio::spawn(accept_loop(accept, shared.clone(), denied_on_tcp));
                }
                if let Some(l) =
                    unix.and_then(|l| tokio::net::UnixListener::from_std(l).inspect_err(lost).ok())
                {
                    let l = Arc::new(l);
                    let accept = move || {
                        let l = l.clone();
                        async move { l.accept().await.map(|(s, _)| s) }
                    };
                    tokio::spawn(accept_loop(accept, shared, true));
                }
                std::future::pending::<()>().await
            })
        })
        .map_err(HttpError::Thread)?;
    Ok(Endpoint { tcp: bound, socket: listen.denied_socket.clone() })
}

/// Accepts connections for ever, each served under the limits above.
async fn accept_loop<S, F, Fut>(accept: F, shared: Arc<Shared>, denied: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = std::io::Result<S>>,
{
    let gate = Arc::new(Semaphore::new(MAX_CONNS));
    loop {
        let stream = match accept().await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Over the cap the stream is dropped here: closed at once.
        let Ok(permit) = gate.clone().try_acquire_owned() else {
            InputCounters::bump(&shared.inputs.http_rejected);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let reply = respond(&req, &shared, denied);
                async move { Ok::<_, Infallible>(reply) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(false)
                .max_buf_size(MAX_HEAD)
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            // Past the deadline the connection is dropped, which closes it.
            let _ = tokio::time::timeout(CONN_DEADLINE, conn).await;
            drop(permit);
        });
    }
}

fn respond(req: &Request<Incoming>, shared: &Shared, denied: bool) -> Response<Full<Bytes>> {
    let (status, kind, body) =
        route(req.method(), req.uri().path(), req.uri().query().unwrap_or(""), shared, denied);
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

const TEXT: &str = "text/plain";

/// The response to one request: status, content type, body. `/denied`
/// only where `denied` is true.
fn route(
    method: &Method,
    path: &str,
    query: &str,
    shared: &Shared,
    denied: bool,
) -> (StatusCode, &'static str, String) {
    if method != Method::GET {
        return (StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
    }
    let probe = |r: Result<(), String>, ok: &str| match r {
        Ok(()) => (StatusCode::OK, TEXT, format!("{ok}\n")),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, why + "\n"),
    };
    match path {
        "/denied" if denied => {
            let since = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("since="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            (StatusCode::OK, "application/x-ndjson", shared.denied().since(since))
        }
        "/denied" => (
            StatusCode::NOT_FOUND,
            TEXT,
            "/denied is served on the agent's root-only --denied-socket (on --http only with --http-denied)\n"
                .into(),
        ),
        "/metrics" => {
            let body = crate::metrics::scrape(&shared.metrics, Instant::now())
                + &shared.denied().metrics()
                + &shared.inputs.render();
            (StatusCode::OK, "text/plain; version=0.0.4", body)
        }
        "/healthz" => probe(shared.metrics().live(Instant::now()), "ok"),
        "/readyz" => probe(shared.metrics().ready(), "ready"),
        _ => (StatusCode::NOT_FOUND, TEXT, "not found: try /metrics, /healthz, /readyz or /denied\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Status;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;

    /// Polls `f` until it holds or `bound` passes.
    fn until(bound: Duration, mut f: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + bound;
        while Instant::now() < end {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn ask(mut s: impl Read + Write, request: &[u8]) -> String {
        s.write_all(request).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        ask(s, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
    }

    fn start(denied_on_tcp: bool, socket: Option<PathBuf>) -> (Arc<Shared>, Endpoint) {
        let shared = Arc::new(Shared::new(Instant::now()));
        let listen =
            Listen { tcp: Some("127.0.0.1:0".parse().unwrap()), denied_on_tcp, denied_socket: socket };
        let ep = serve(&listen, shared.clone()).unwrap();
        (shared, ep)
    }

    #[test]
    fn routes() {
        let (shared, ep) = start(false, None);
        let addr = ep.tcp.unwrap();
        let health = get(addr, "/healthz");
        assert!(health.starts_with("HTTP/1.1 200 OK") && health.ends_with("ok\n"), "{health}");
        let metrics = get(addr, "/metrics");
        let body = metrics.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        crate::metrics::exposition::parse(body).expect("well-formed Prometheus text");
        for want in [
            "weft_denied_log_suppressed_total 0",
            "weft_sync_duration_seconds_count{kind=\"full\"} 0",
            "weft_denied_queue_dropped_total 0",
            "weft_http_connections_rejected_total 0",
        ] {
            assert!(metrics.contains(want), "{want} not in {metrics}");
        }
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
        assert!(get(addr, "/readyz").starts_with("HTTP/1.1 503"));
        let s = TcpStream::connect(addr).unwrap();
        assert!(ask(s, b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n").starts_with("HTTP/1.1 405"));
        let st = Status {
            node: "n".into(),
            generation: "g".into(),
            routes: 0,
            ip_forward: true,
            bridge_nf_call_iptables: None,
            bridge_nf_call_ip6tables: None,
            masquerade: None,
            overlay: None,
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

    #[test]
    fn denied_is_on_the_root_only_socket_and_on_tcp_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("denied.sock");
        let (_, ep) = start(false, Some(path.clone()));
        let tcp = get(ep.tcp.unwrap(), "/denied?since=0");
        assert!(tcp.starts_with("HTTP/1.1 404") && tcp.contains("--denied-socket"), "{tcp}");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let unix = ask(UnixStream::connect(&path).unwrap(), b"GET /denied?since=5 HTTP/1.1\r\n\r\n");
        assert!(unix.starts_with("HTTP/1.1 200") && unix.contains("application/x-ndjson"), "{unix}");
        drop(ep);
        assert!(!path.exists(), "the socket file goes with the endpoint");
        let (_, ep) = start(true, None);
        assert!(get(ep.tcp.unwrap(), "/denied").contains("application/x-ndjson"));
    }

    #[test]
    fn an_oversized_head_is_refused_and_the_endpoint_keeps_serving() {
        let (_, ep) = start(false, None);
        let addr = ep.tcp.unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // No newline: a head that never ends, cut at MAX_HEAD.
        let line = vec![b'A'; 4 * MAX_HEAD];
        let _ = s.write_all(b"GET /");
        let _ = s.write_all(&line);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 431"), "{out}");
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn over_the_cap_a_connection_is_closed_at_once_and_a_slot_frees_at_the_deadline() {
        let (shared, ep) = start(false, None);
        let addr = ep.tcp.unwrap();
        // MAX_CONNS idle clients take every slot.
        let idle: Vec<TcpStream> = (0..MAX_CONNS).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let ok = until(Duration::from_secs(10), || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let (t0, mut b) = (Instant::now(), [0u8; 1]);
            // Closed without a byte, long before the head timeout: turned away.
            matches!(s.read(&mut b), Ok(0)) && t0.elapsed() < HEAD_TIMEOUT / 4
        });
        assert!(ok, "a connection over the cap is closed at once");
        assert!(shared.inputs.http_rejected.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        // The idle ones are cut at HEAD_TIMEOUT; then the endpoint answers again.
        let t0 = Instant::now();
        let back = until(CONN_DEADLINE * 2, || get(addr, "/healthz").starts_with("HTTP/1.1 200"));
        assert!(back && t0.elapsed() <= CONN_DEADLINE + Duration::from_secs(1), "{:?}", t0.elapsed());
        drop(idle);
    }
}
