//! A stand-in for the Kubernetes API server, inside the test process: it
//! serves the testbed's cluster dir to `weft-agent --source kube` as an API
//! server would, so the kube source runs end to end where no real API server
//! can (no Docker, no kind on our machines). It is test scaffolding, not an
//! API server: it serves only list and watch of the resources the agent
//! watches (`weft_agent::source::kube::watched`), `/version`, and the writes
//! of the ClusterNetworkPolicy status writer (`writes`: status patches and
//! Leases), without authentication, paging or (but for Leases) selectors.
//!
//! - State: `refresh` reads the cluster dir (the Testbed calls it after every
//!   write), keeps the objects of the watched kinds that the API's schema
//!   accepts (k8s-openapi deserialises them), defaults their namespace, and
//!   gives every change its own resourceVersion (one counter, as etcd's
//!   revision): ADDED, MODIFIED or DELETED, kept in a history.
//! - List: `GET <collection>` returns a `<Kind>List` at the current version.
//! - Watch: `GET <collection>?watch=1&resourceVersion=N` streams (chunked
//!   JSON lines) every event of that kind after N, then follows new ones,
//!   with a BOOKMARK after each batch when `allowWatchBookmarks=true`. A
//!   version older than the history (`expire` forgets it) is answered as
//!   the API server does: a watch ERROR event with a Status 410 Expired.
//! - Convergence: `refresh` returns the generation of the state it serves
//!   (`weft_agent::source::kube::state_generation`), which an agent reports
//!   once its stores hold exactly those objects at those versions.
//! - Reach: an agent runs inside its node's netns, so there is one listener
//!   per node, on 127.0.0.1 inside that netns (the socket is created on a
//!   thread that entered it, and stays there); `kubeconfig` points an agent at it.
//! - Generation: metadata.generation is 1 when an object is added and grows
//!   by one with each change of its spec, as the API server sets it.
//! - ClusterNetworkPolicy: served only while `serve_cnp(true)` says the
//!   cluster has its CRD (off at start, as in most clusters): then discovery
//!   (`GET /apis/policy.networking.k8s.io/v1alpha2`) lists the resource and
//!   its collection is listed and watched like the others; off, both answer
//!   404 and the served generation leaves CNPs out. The CRD's schema is not
//!   applied (any object with a spec is kept): weft's own validation is what
//!   the agents are tested on. Its status is the status writer's alone: a
//!   change of the file keeps it (as a status subresource does).
//! - Faults: `freeze` holds events back from open watches, `expire` forgets
//!   the history and ends every watch with 410 (so the agents re-list),
//!   `down` closes the listeners and every connection (connections are
//!   refused), `up` listens again on the same ports.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_agent::source::kube::cnp::{self, watched_cnp};
use weft_agent::source::kube::{object_key, state_generation, watched, Watched};

use crate::error::{E2eError, Result};

mod writes;

/// Bound on reading a request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A watch without `timeoutSeconds` ends after this long.
const WATCH_TIMEOUT: Duration = Duration::from_secs(290);
/// How long `drop` waits for connection threads to end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted.
const MAX_BODY: usize = 1024 * 1024;

/// What the stand-in serves after a refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The cluster dir's generation (`weft_agent::source::read_dir`'s) that was read.
    pub dir_generation: String,
    /// The generation of the API state served, as an agent reports it.
    pub generation: String,
    /// The current resourceVersion.
    pub resource_version: u64,
}

/// Requests served, for tests to see what the agents did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lists served, by kind.
    pub lists: BTreeMap<String, u64>,
    /// Watches started (answered 200).
    pub watches: u64,
    /// Watches ended or refused with 410 Expired.
    pub expired: u64,
    /// Discovery requests for ClusterNetworkPolicy's group version, answered or 404.
    pub cnp_discoveries: u64,
    /// ClusterNetworkPolicy status patches applied, by the listener they came in on.
    pub status_patches: BTreeMap<usize, u64>,
    /// Leases created or updated.
    pub lease_writes: u64,
}

/// One object as served.
#[derive(Debug, Clone)]
struct Stored {
    /// As read from the cluster dir (normalised): compared to see a change.
    given: Value,
    /// With metadata.resourceVersion and uid: what lists and events carry.
    served: Value,
}

/// One change, in the history watches replay.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: &'static str,
    event: &'static str,
    object: Value,
}

/// Why open watches must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The history was forgotten: end with 410.
    Expired,
    /// The stand-in went down: drop the connection.
    Down,
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    /// Watches from an older version get 410.
    floor: u64,
    objects: BTreeMap<(&'static str, String), Stored>,
    history: Vec<Change>,
    served: Option<Served>,
    /// Events are held back from open watches.
    frozen: bool,
    /// Bumped to end every open watch, for `cut`.
    epoch: u64,
    /// The ClusterNetworkPolicy CRD is installed (`serve_cnp`).
    cnp_served: bool,
    cut: Option<Cut>,
    uid_seq: u64,
    stats: Stats,
    /// Leases by (namespace, name), as served.
    leases: BTreeMap<(String, String), Value>,
    /// The cluster dir's generation at the last refresh.
    dir_generation: String,
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
    /// Connection threads alive.
    connections: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One node's listener.
struct Listener {
    netns: PathBuf,
    port: u16,
    /// The socket (to shut it down) and its accept thread, while up.
    live: Option<(Arc<TcpListener>, JoinHandle<()>)>,
}

/// The stand-in API server of one testbed run.
pub struct ApiStandin {
    shared: Arc<Shared>,
    listeners: Mutex<Vec<Listener>>,
}

impl ApiStandin {
    /// Serves `dir` on 127.0.0.1 (a free port) inside each of `netns`, in order.
    pub fn start(dir: &Path, netns: &[PathBuf]) -> Result<ApiStandin> {
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            connections: AtomicUsize::new(0),
        });
        let standin = ApiStandin { shared, listeners: Mutex::new(Vec::new()) };
        standin.refresh()?;
        for (i, ns) in netns.iter().enumerate() {
            let socket = bind_in(ns, 0)?;
            let port = socket.local_addr().map_err(E2eError::io("stand-in listener address"))?.port();
            let live = Some(standin.serve(socket, i)?);
            standin.lock_listeners().push(Listener { netns: ns.clone(), port, live });
        }
        Ok(standin)
    }

    fn lock_listeners(&self) -> MutexGuard<'_, Vec<Listener>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The port of the `i`th listener (node i+1), on 127.0.0.1 in its netns.
    pub fn port(&self, i: usize) -> Option<u16> {
        self.lock_listeners().get(i).map(|l| l.port)
    }

    /// Reads the cluster dir again and publishes what changed; returns what is served.
    pub fn refresh(&self) -> Result<Served> {
        let (files, dir_generation) = weft_agent::source::read_files(&self.shared.dir);
        let objects = read_objects(&files);
        let mut st = self.shared.lock();
        let before = st.rv;
        apply_objects(&mut st, objects);
        st.dir_generation = dir_generation;
        let served = publish(&mut st);
        if st.rv != before {
            self.shared.changed.notify_all();
        }
        Ok(served)
    }

    /// An object as served now, by kind and key ("namespace/name" or "name").
    pub fn object(&self, kind: &str, key: &str) -> Option<Value> {
        let st = self.shared.lock();
        st.objects.iter().find(|((k, n), _)| *k == kind && n == key).map(|(_, o)| o.served.clone())
    }

    /// A Lease as served now.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.shared.lock().leases.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// Installs (true) or removes (false) the ClusterNetworkPolicy CRD: what
    /// discovery answers and whether the collection is served; returns what
    /// is served then. A CNP watch already open is left to end by itself
    /// (the agent's next discovery stops it).
    pub fn serve_cnp(&self, on: bool) -> Result<Served> {
        self.shared.lock().cnp_served = on;
        self.refresh()
    }

    /// What was served after the last refresh.
    pub fn served(&self) -> Option<Served> {
        self.shared.lock().served.clone()
    }

    /// Requests served so far.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// Holds events back from open watches (new watches too) until `expire`.
    pub fn freeze(&self) {
        self.shared.lock().frozen = true;
    }

    /// Forgets the history, as an API server whose watch cache moved on: every
    /// open watch ends with a 410 Expired event, and a watch from an older
    /// version is refused the same way, so clients must list again. Unfreezes.
    pub fn expire(&self) {
        let mut st = self.shared.lock();
        st.floor = st.rv;
        st.history.clear();
        st.frozen = false;
        st.epoch += 1;
        st.cut = Some(Cut::Expired);
        self.shared.changed.notify_all();
    }

    /// Stops listening and drops every connection: clients get connection refused.
    pub fn down(&self) {
        let mut listeners = self.lock_listeners();
        for l in listeners.iter_mut() {
            if let Some((socket, thread)) = l.live.take() {
                // SAFETY: shutdown(2) on a listening socket this struct owns (the
                // Arc keeps the fd open): it wakes the blocked accept with EINVAL,
                // which ends the accept thread.
                unsafe { nix::libc::shutdown(socket.as_raw_fd(), nix::libc::SHUT_RDWR) };
                let _ = thread.join();
            }
        }
        let mut st = self.shared.lock();
        st.epoch += 1;
        st.cut = Some(Cut::Down);
        self.shared.changed.notify_all();
    }

    /// Listens again on the same ports after `down`; idempotent.
    pub fn up(&self) -> Result<()> {
        let mut listeners = self.lock_listeners();
        for (i, l) in listeners.iter_mut().enumerate().filter(|(_, l)| l.live.is_none()) {
            let socket = bind_in(&l.netns, l.port)?;
            l.live = Some(self.serve(socket, i)?);
        }
        Ok(())
    }

    /// Starts the accept thread of `socket`, the `listener`th.
    fn serve(&self, socket: TcpListener, listener: usize) -> Result<(Arc<TcpListener>, JoinHandle<()>)> {
        let socket = Arc::new(socket);
        let (s, shared) = (socket.clone(), self.shared.clone());
        let thread = std::thread::Builder::new()
            .name("api-standin-accept".into())
            .spawn(move || {
                // Ends when `down` shuts the socket down (accept fails).
                while let Ok((conn, _)) = s.accept() {
                    let shared = shared.clone();
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let spawned = std::thread::Builder::new().name("api-standin-conn".into()).spawn({
                        let shared = shared.clone();
                        move || {
                            handle(conn, &shared, listener);
                            shared.connections.fetch_sub(1, Ordering::SeqCst);
                        }
                    });
                    if spawned.is_err() {
                        shared.connections.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            })
            .map_err(E2eError::io("spawn the stand-in's accept thread"))?;
        Ok((socket, thread))
    }
}

impl Drop for ApiStandin {
    fn drop(&mut self) {
        self.down();
        // Each open connection holds its node's netns: let them end first.
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.shared.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A kubeconfig for the stand-in at 127.0.0.1:`port` (plain HTTP, no credentials).
pub fn kubeconfig(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://127.0.0.1:{port}\n\
         contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n\
         current-context: standin\nusers:\n- name: standin\n  user: {{}}\n"
    )
}

/// A TCP listener on 127.0.0.1:`port` inside the netns at `netns`: bound on a
/// throwaway thread that entered it, as a socket stays in the netns it was made in.
fn bind_in(netns: &Path, port: u16) -> Result<TcpListener> {
    let file = std::fs::File::open(netns).map_err(E2eError::io(format!("open netns {}", netns.display())))?;
    let what = format!("stand-in listener on 127.0.0.1:{port} in {}", netns.display());
    std::thread::Builder::new()
        .name("api-standin-bind".into())
        .spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            TcpListener::bind(("127.0.0.1", port))
        })
        .map_err(E2eError::io("spawn the stand-in's bind thread"))?
        .join()
        .unwrap_or_else(|_| Err(std::io::ErrorKind::Other.into()))
        .map_err(E2eError::io(what))
}

fn rv_str(o: &Stored) -> &str {
    o.served["metadata"]["resourceVersion"].as_str().unwrap_or_default()
}

/// Records what `st` serves now (its generation as an agent computes it) and returns it.
fn publish(st: &mut State) -> Served {
    let served_kind = |kind: &str| kind != cnp::KIND || st.cnp_served;
    let generation = state_generation(
        st.objects
            .iter()
            .filter(|((kind, _), _)| served_kind(kind))
            .map(|((kind, key), o)| (*kind, key.as_str(), rv_str(o))),
    );
    let served = Served { dir_generation: st.dir_generation.clone(), generation, resource_version: st.rv };
    st.served = Some(served.clone());
    served
}

/// Every kind the stand-in can serve: the agent's watched kinds and CNP.
fn servable() -> impl Iterator<Item = Watched> {
    watched().into_iter().chain([watched_cnp()])
}

/// The servable kind a `kind` field names.
fn watched_kind(kind: &str) -> Option<Watched> {
    servable().find(|w| w.kind == kind)
}

/// True if the API's schema (k8s-openapi's types) accepts `v` as a `kind`.
fn schema_accepts(kind: &str, v: &Value) -> bool {
    use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    fn ok<K: serde::de::DeserializeOwned>(v: &Value) -> bool {
        serde_json::from_value::<K>(v.clone()).is_ok()
    }
    match kind {
        "Node" => ok::<Node>(v),
        "Namespace" => ok::<Namespace>(v),
        "Pod" => ok::<Pod>(v),
        "NetworkPolicy" => ok::<NetworkPolicy>(v),
        // No k8s-openapi type: the CRD's schema requires a spec object.
        cnp::KIND => v.get("spec").is_some_and(Value::is_object),
        _ => false,
    }
}

/// The objects of the watched kinds in `files`, by (kind, key), the first of
/// a key winning (as the dir source); what no API server would hold (not
/// YAML, rejected by the schema, no name) is left out.
fn read_objects(files: &[(PathBuf, Vec<u8>)]) -> BTreeMap<(&'static str, String), Value> {
    let mut out = BTreeMap::new();
    for (_, bytes) in files {
        let Ok(text) = std::str::from_utf8(bytes) else { continue };
        for doc in serde_norway::Deserializer::from_str(text) {
            let Ok(v) = <Value as serde::Deserialize>::deserialize(doc) else { continue };
            let items = match v.get("kind").and_then(Value::as_str) {
                Some("List") => v.get("items").and_then(Value::as_array).cloned().unwrap_or_default(),
                _ => vec![v],
            };
            for item in items {
                if let Some((key, value)) = normalise(item) {
                    out.entry(key).or_insert(value);
                }
            }
        }
    }
    out
}

/// `v` as the API server would store it (namespace defaulted, no server-set
/// fields), keyed; None if it is not an object the stand-in serves.
fn normalise(mut v: Value) -> Option<((&'static str, String), Value)> {
    let w = watched_kind(v.get("kind")?.as_str()?)?;
    let namespaced = w.kind == "Pod" || w.kind == "NetworkPolicy";
    let meta = v.get_mut("metadata")?.as_object_mut()?;
    meta.remove("resourceVersion");
    meta.remove("uid");
    if namespaced && meta.get("namespace").and_then(Value::as_str).is_none_or(str::is_empty) {
        meta.insert("namespace".into(), json!("default"));
    }
    if !namespaced {
        meta.remove("namespace");
    }
    let name = meta.get("name")?.as_str()?.to_string();
    let namespace = meta.get("namespace").and_then(Value::as_str).map(str::to_string);
    if name.is_empty() || !schema_accepts(w.kind, &v) {
        return None;
    }
    v["apiVersion"] = json!(api_version(&w));
    Some(((w.kind, object_key(namespace.as_deref(), &name)), v))
}

fn api_version(w: &Watched) -> String {
    match w.group {
        "" => w.version.to_string(),
        g => format!("{g}/{}", w.version),
    }
}

/// Publishes the difference between `st`'s objects and `objects`, one
/// resourceVersion per change.
fn apply_objects(st: &mut State, objects: BTreeMap<(&'static str, String), Value>) {
    let gone: Vec<(&'static str, String)> =
        st.objects.keys().filter(|k| !objects.contains_key(*k)).cloned().collect();
    for key in gone {
        let Some(old) = st.objects.remove(&key) else { continue };
        st.rv += 1;
        let mut object = old.served;
        object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let rv = st.rv;
        st.history.push(Change { rv, kind: key.0, event: "DELETED", object });
    }
    for (key, given) in objects {
        let mut served = given.clone();
        let (event, uid, generation) = match st.objects.get(&key) {
            Some(old) if old.given == given => continue,
            Some(old) => {
                let g = old.served["metadata"]["generation"].as_i64().unwrap_or(1);
                let spec_changed = old.given.get("spec") != given.get("spec");
                // The status subresource's: a change of the object keeps it.
                if key.0 == cnp::KIND {
                    if let Some(status) = old.served.get("status") {
                        served["status"] = status.clone();
                    }
                }
                ("MODIFIED", old.served["metadata"]["uid"].clone(), g + i64::from(spec_changed))
            }
            None => {
                st.uid_seq += 1;
                if key.0 == cnp::KIND {
                    served.as_object_mut().map(|o| o.remove("status"));
                }
                ("ADDED", json!(format!("standin-{}", st.uid_seq)), 1)
            }
        };
        st.rv += 1;
        served["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        served["metadata"]["uid"] = uid;
        served["metadata"]["generation"] = json!(generation);
        let rv = st.rv;
        st.history.push(Change { rv, kind: key.0, event, object: served.clone() });
        st.objects.insert(key, Stored { given, served });
    }
}

/// A parsed request: method, path, query parameters and body.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn parse_request(head: &str) -> Option<Request> {
    let mut parts = head.lines().next()?.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(Request { method, path: path.to_string(), query, body: Vec::new() })
}

/// The Content-Length a request head gives (0 without one).
fn content_length(head: &str) -> Option<usize> {
    for line in head.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                return value.trim().parse().ok();
            }
        }
    }
    Some(0)
}

/// Reads one request: its head (up to the blank line) and its body, both bounded.
fn read_request(conn: &TcpStream) -> Option<Request> {
    conn.set_read_timeout(Some(REQUEST_TIMEOUT)).ok()?;
    let mut reader = BufReader::new(conn.take((MAX_HEAD + MAX_BODY) as u64));
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || head.len() > MAX_HEAD {
            return None;
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut req = parse_request(&head)?;
    let len = content_length(&head).filter(|&n| n <= MAX_BODY)?;
    req.body = vec![0; len];
    reader.read_exact(&mut req.body).ok()?;
    Some(req)
}

/// Serves one connection: one request, then the connection is closed.
/// `listener` is the index of the listener it came in on.
fn handle(mut conn: TcpStream, shared: &Shared, listener: usize) {
    let Some(req) = read_request(&conn) else { return };
    if let Some((code, body)) = writes::route(&req, shared, listener) {
        let _ = respond(&mut conn, code, &body);
        return;
    }
    let cnp_path = format!("/apis/{}/{}", cnp::GROUP, cnp::VERSION);
    let cnp_served = {
        let mut st = shared.lock();
        if req.path == cnp_path {
            st.stats.cnp_discoveries += 1;
        }
        st.cnp_served
    };
    let resource = servable().find(|w| w.path() == req.path && (w.kind != cnp::KIND || cnp_served));
    let _ = match (req.method.as_str(), resource) {
        ("GET", Some(w)) if matches!(req.query.get("watch").map(String::as_str), Some("1" | "true")) => {
            watch(&mut conn, shared, &w, &req.query)
        }
        ("GET", Some(w)) => list(&mut conn, shared, &w),
        ("GET", None) if cnp_served && req.path == cnp_path => respond(&mut conn, "200 OK", &cnp_discovery()),
        ("GET", None) if req.path == "/version" => respond(
            &mut conn,
            "200 OK",
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-weft-standin", "platform": "linux/amd64"}),
        ),
        _ => respond(
            &mut conn,
            "404 Not Found",
            &status(404, "NotFound", &format!("{} {}", req.method, req.path)),
        ),
    };
}

/// The APIResourceList of policy.networking.k8s.io/v1alpha2 with the CRD installed.
fn cnp_discovery() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{}/{}", cnp::GROUP, cnp::VERSION),
           "resources": [{"name": cnp::RESOURCE, "singularName": "clusternetworkpolicy", "namespaced": false,
                          "kind": cnp::KIND, "shortNames": ["cnp"],
                          "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]},
                         {"name": format!("{}/status", cnp::RESOURCE), "singularName": "", "namespaced": false,
                          "kind": cnp::KIND, "verbs": ["get", "patch", "update"]}]})
}

/// A metav1.Status.
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(conn: &mut TcpStream, code: &str, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    write!(
        conn,
        "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

fn list(conn: &mut TcpStream, shared: &Shared, w: &Watched) -> std::io::Result<()> {
    let body = {
        let mut st = shared.lock();
        *st.stats.lists.entry(w.kind.to_string()).or_default() += 1;
        let items: Vec<&Value> =
            st.objects.iter().filter(|((kind, _), _)| *kind == w.kind).map(|(_, o)| &o.served).collect();
        json!({"apiVersion": api_version(w), "kind": format!("{}List", w.kind),
               "metadata": {"resourceVersion": st.rv.to_string()}, "items": items})
    };
    respond(conn, "200 OK", &body)
}

/// One watch event as a chunk of the stream.
fn chunk(conn: &mut TcpStream, event: &str, object: &Value) -> std::io::Result<()> {
    let line = json!({"type": event, "object": object}).to_string() + "\n";
    write!(conn, "{:x}\r\n{line}\r\n", line.len())?;
    conn.flush()
}

fn watch(
    conn: &mut TcpStream,
    shared: &Shared,
    w: &Watched,
    query: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true" || v == "1");
    let timeout = query.get("timeoutSeconds").and_then(|s| s.parse().ok()).map(Duration::from_secs);
    let deadline = Instant::now() + timeout.unwrap_or(WATCH_TIMEOUT);
    let since: Option<u64> = query.get("resourceVersion").and_then(|s| s.parse().ok()).filter(|&v| v > 0);
    let (epoch, mut sent, initial, expired) = {
        let mut st = shared.lock();
        let expired = since.is_some_and(|v| v < st.floor);
        if expired {
            st.stats.expired += 1;
        } else {
            st.stats.watches += 1;
        }
        // No version: "start at any", the current objects as ADDED first.
        let initial: Vec<Value> = match since {
            None => {
                st.objects.iter().filter(|((k, _), _)| *k == w.kind).map(|(_, o)| o.served.clone()).collect()
            }
            Some(_) => Vec::new(),
        };
        (st.epoch, since.unwrap_or(st.rv), initial, expired)
    };
    write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")?;
    if expired {
        return expire_stream(conn, sent);
    }
    for object in &initial {
        chunk(conn, "ADDED", object)?;
    }
    loop {
        let (events, now, cut) = {
            let mut st = shared.lock();
            loop {
                if st.epoch != epoch {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || (!st.frozen && st.rv > sent) {
                    break;
                }
                st = shared
                    .changed
                    .wait_timeout(st, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            if st.epoch != epoch {
                (Vec::new(), st.rv, st.cut)
            } else if st.frozen || st.rv <= sent {
                // The deadline: end the stream as the API server does.
                return write!(conn, "0\r\n\r\n");
            } else {
                let events: Vec<Change> =
                    st.history.iter().filter(|c| c.kind == w.kind && c.rv > sent).cloned().collect();
                (events, st.rv, None)
            }
        };
        match cut {
            Some(Cut::Expired) => {
                shared.lock().stats.expired += 1;
                return expire_stream(conn, sent);
            }
            // Dropped without the last chunk: the client sees a broken stream.
            Some(Cut::Down) => return Ok(()),
            None => {}
        }
        for c in &events {
            chunk(conn, c.event, &c.object)?;
        }
        if bookmarks {
            let mark = json!({"kind": w.kind, "apiVersion": api_version(w),
                              "metadata": {"resourceVersion": now.to_string()}});
            chunk(conn, "BOOKMARK", &mark)?;
        }
        sent = now;
    }
}

/// Ends a watch stream with the 410 Expired event.
fn expire_stream(conn: &mut TcpStream, since: u64) -> std::io::Result<()> {
    chunk(conn, "ERROR", &status(410, "Expired", &format!("too old resource version: {since}")))?;
    write!(conn, "0\r\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml_objects(text: &str) -> BTreeMap<(&'static str, String), Value> {
        read_objects(&[(PathBuf::from("x.yaml"), text.as_bytes().to_vec())])
    }

    const PODS: &str = "kind: Pod\napiVersion: v1\nmetadata: {name: a}\n---\n\
        kind: Pod\napiVersion: v1\nmetadata: {name: a, namespace: default}\nspec: {nodeName: second-wins-not}\n---\n\
        kind: Service\nmetadata: {name: s}\n---\nkind: Node\nmetadata: {name: n1, namespace: x}\n---\n\
        kind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {matchLabels: [not, a, map]}}\n";

    #[test]
    fn objects_are_read_as_the_api_server_would_store_them() {
        let objs = yaml_objects(PODS);
        let keys: Vec<_> = objs.keys().map(|(k, key)| format!("{k} {key}")).collect();
        // The Service is not watched; the policy fails the schema; the first pod wins.
        assert_eq!(keys, ["Node n1", "Pod default/a"]);
        assert_eq!(objs[&("Pod", "default/a".to_string())]["metadata"]["namespace"], "default");
        assert!(objs[&("Pod", "default/a".to_string())].get("spec").is_none());
        assert!(objs[&("Node", "n1".to_string())]["metadata"].get("namespace").is_none());
        assert_eq!(objs[&("Node", "n1".to_string())]["apiVersion"], "v1");
    }

    #[test]
    fn cluster_network_policies_are_cluster_scoped_and_need_a_spec() {
        let objs = yaml_objects(
            "kind: ClusterNetworkPolicy\napiVersion: policy.networking.k8s.io/v1alpha2\n\
             metadata: {name: guard, namespace: x}\nspec: {tier: Admin}\n---\n\
             kind: ClusterNetworkPolicy\nmetadata: {name: nospec}\n",
        );
        let keys: Vec<_> = objs.keys().map(|(k, key)| format!("{k} {key}")).collect();
        assert_eq!(keys, ["ClusterNetworkPolicy guard"]);
        let guard = &objs[&("ClusterNetworkPolicy", "guard".to_string())];
        assert!(guard["metadata"].get("namespace").is_none());
        assert_eq!(guard["apiVersion"], "policy.networking.k8s.io/v1alpha2");
        let d = cnp_discovery();
        assert_eq!(d["groupVersion"], "policy.networking.k8s.io/v1alpha2");
        assert_eq!(d["resources"][0]["name"], "clusternetworkpolicies");
        assert_eq!(d["resources"][0]["namespaced"], false);
    }

    #[test]
    fn each_change_gets_a_version_and_an_event() {
        let mut st = State::default();
        apply_objects(
            &mut st,
            yaml_objects("kind: Node\nmetadata: {name: n1}\n---\nkind: Node\nmetadata: {name: n2}\n"),
        );
        assert_eq!(st.rv, 2);
        apply_objects(
            &mut st,
            yaml_objects("kind: Node\nmetadata: {name: n1}\n---\nkind: Node\nmetadata: {name: n2}\n"),
        );
        assert_eq!(st.rv, 2, "nothing changed");
        apply_objects(&mut st, yaml_objects("kind: Node\nmetadata: {name: n1, labels: {a: b}}\n"));
        let events: Vec<_> = st.history.iter().map(|c| (c.rv, c.event)).collect();
        assert_eq!(events, [(1, "ADDED"), (2, "ADDED"), (3, "DELETED"), (4, "MODIFIED")]);
        let n1 = &st.objects[&("Node", "n1".to_string())];
        assert_eq!(rv_str(n1), "4");
        assert_eq!(n1.served["metadata"]["uid"], "standin-1", "a modification keeps the uid");
        assert_eq!(st.history[2].object["metadata"]["name"], "n2");
        assert_eq!(st.history[2].object["metadata"]["resourceVersion"], "3");
    }

    #[test]
    fn the_generation_follows_the_spec_and_a_cnps_status_stays() {
        let mut st = State::default();
        let cnp = |priority: u32, label: &str| {
            yaml_objects(&format!(
                "kind: ClusterNetworkPolicy\nmetadata: {{name: p, labels: {{l: {label}}}}}\n\
                 spec: {{tier: Admin, priority: {priority}}}\nstatus: {{conditions: [{{type: Forged}}]}}\n"
            ))
        };
        let key = (cnp::KIND, "p".to_string());
        apply_objects(&mut st, cnp(1, "a"));
        let served = |st: &State| st.objects[&key].served.clone();
        assert_eq!(served(&st)["metadata"]["generation"], 1);
        assert!(served(&st).get("status").is_none(), "a status given with the object is not kept");
        st.objects.get_mut(&key).unwrap().served["status"] = json!({"conditions": [{"type": "Accepted"}]});
        apply_objects(&mut st, cnp(1, "b"));
        assert_eq!(served(&st)["metadata"]["generation"], 1, "labels are no spec");
        apply_objects(&mut st, cnp(2, "b"));
        assert_eq!(served(&st)["metadata"]["generation"], 2);
        assert_eq!(served(&st)["status"]["conditions"][0]["type"], "Accepted", "the writer's status stays");
    }

    #[test]
    fn requests() {
        let head =
            "GET /api/v1/pods?watch=1&resourceVersion=12&allowWatchBookmarks=true HTTP/1.1\r\nHost: x\r\n";
        let r = parse_request(head).unwrap();
        assert_eq!(content_length(head), Some(0));
        assert_eq!(content_length("PUT /x HTTP/1.1\r\ncontent-length: 12\r\n"), Some(12));
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/api/v1/pods"));
        assert_eq!(r.query["resourceVersion"], "12");
        assert_eq!(r.query["watch"], "1");
        assert_eq!(parse_request("GET /version HTTP/1.1\r\n").unwrap().query.len(), 0);
        assert_eq!(parse_request(""), None);
    }

    #[test]
    fn kubeconfig_points_at_the_port() {
        let kc = kubeconfig(40123);
        assert!(kc.contains("server: http://127.0.0.1:40123\n"), "{kc}");
        let v: Value = serde_norway::from_str(&kc).unwrap();
        assert_eq!(v["current-context"], "standin");
    }
}
