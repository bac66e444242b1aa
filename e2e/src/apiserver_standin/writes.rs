//! The stand-in's writes, for the ClusterNetworkPolicy status writer:
//!
//! - Leases (`coordination.k8s.io/v1`, namespaced): create (409 if it
//!   exists), get, update (409 unless the resourceVersion given is the
//!   current one: optimistic concurrency, which the writer's election relies
//!   on) and list, with an equality `labelSelector`. Not watched.
//! - `PATCH .../clusternetworkpolicies/NAME/status`: the conditions given
//!   are merged into the served ones by `type` (status.conditions is a
//!   listType=map, as server-side apply merges it); a change gets a
//!   resourceVersion and a MODIFIED event, as any change does. Each patch is
//!   counted by the listener it came in on, so a test sees which node wrote.

use serde_json::{json, Value};
use weft_agent::source::kube::cnp;

use super::{publish, status, Change, Request, Shared, State};

/// Where namespaced Leases are.
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/";

/// An answer: the HTTP status line's code and reason, and the body.
type Answer = (&'static str, Value);

/// Answers `req` if it is one of the writes; None for every other request.
pub(super) fn route(req: &Request, shared: &Shared, listener: usize) -> Option<Answer> {
    if let Some(rest) = req.path.strip_prefix(LEASES) {
        let parts: Vec<&str> = rest.split('/').collect();
        let (ns, name) = match parts[..] {
            [ns, "leases"] => (ns, None),
            [ns, "leases", name] => (ns, Some(name)),
            _ => return None,
        };
        let mut st = shared.lock();
        return Some(match (req.method.as_str(), name) {
            ("GET", None) => list_leases(&st, ns, req.query.get("labelSelector").map(|s| unescape(s))),
            ("POST", None) => write_lease(&mut st, ns, None, &req.body),
            ("GET", Some(n)) => match st.leases.get(&(ns.to_string(), n.to_string())) {
                Some(l) => ("200 OK", l.clone()),
                None => not_found(&format!("leases {n:?}")),
            },
            ("PUT", Some(n)) => write_lease(&mut st, ns, Some(n), &req.body),
            _ => return None,
        });
    }
    let collection = format!("/apis/{}/{}/{}/", cnp::GROUP, cnp::VERSION, cnp::RESOURCE);
    let name = req.path.strip_prefix(&collection)?.strip_suffix("/status")?;
    let mut st = shared.lock();
    if req.method != "PATCH" || !st.cnp_served {
        return None;
    }
    *st.stats.status_patches.entry(listener).or_default() += 1;
    let (answer, changed) = patch_status(&mut st, name, &req.body);
    if changed {
        shared.changed.notify_all();
    }
    Some(answer)
}

fn not_found(what: &str) -> Answer {
    ("404 Not Found", status(404, "NotFound", &format!("{what} not found")))
}

fn invalid(why: &str) -> Answer {
    ("422 Unprocessable Entity", status(422, "Invalid", why))
}

/// `%2F` and the like, as a query parameter carries them.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The Leases of `ns` whose labels match `selector` (`k=v` terms, comma-separated).
fn list_leases(st: &State, ns: &str, selector: Option<String>) -> Answer {
    let terms: Vec<(String, String)> = selector
        .unwrap_or_default()
        .split(',')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim_start_matches('=').trim().to_string()))
        .collect();
    let matches = |l: &Value| terms.iter().all(|(k, v)| l["metadata"]["labels"][k].as_str() == Some(v));
    let items: Vec<&Value> =
        st.leases.iter().filter(|((n, _), l)| n == ns && matches(l)).map(|(_, l)| l).collect();
    let list = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList",
                      "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
    ("200 OK", list)
}

/// Creates (`name` None) or updates Lease `name` of `ns` from `body`.
fn write_lease(st: &mut State, ns: &str, name: Option<&str>, body: &[u8]) -> Answer {
    let Ok(mut lease) = serde_json::from_slice::<Value>(body) else { return invalid("not JSON") };
    let Some(given) = lease["metadata"]["name"].as_str().filter(|n| !n.is_empty()).map(str::to_string) else {
        return invalid("metadata.name is required");
    };
    let key = (ns.to_string(), given.clone());
    let old = st.leases.get(&key);
    let uid = match (name, old) {
        (None, Some(_)) => {
            return (
                "409 Conflict",
                status(409, "AlreadyExists", &format!("leases {given:?} already exists")),
            )
        }
        (None, None) => {
            st.uid_seq += 1;
            json!(format!("standin-{}", st.uid_seq))
        }
        (Some(n), _) if n != given => return invalid("metadata.name does not match the URL"),
        (Some(_), None) => return not_found(&format!("leases {given:?}")),
        (Some(_), Some(old)) => {
            if lease["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"] {
                let msg = format!(
                    "Operation cannot be fulfilled on leases {given:?}: the object has been modified; \
                     please apply your changes to the latest version and try again"
                );
                return ("409 Conflict", status(409, "Conflict", &msg));
            }
            old["metadata"]["uid"].clone()
        }
    };
    st.rv += 1;
    lease["apiVersion"] = json!("coordination.k8s.io/v1");
    lease["kind"] = json!("Lease");
    lease["metadata"]["namespace"] = json!(ns);
    lease["metadata"]["uid"] = uid;
    lease["metadata"]["resourceVersion"] = json!(st.rv.to_string());
    st.stats.lease_writes += 1;
    st.leases.insert(key, lease.clone());
    (if name.is_none() { "201 Created" } else { "200 OK" }, lease)
}

/// Merges the conditions of `body` into CNP `name`'s status; true if that changed it.
fn patch_status(st: &mut State, name: &str, body: &[u8]) -> (Answer, bool) {
    let Ok(patch) = serde_json::from_slice::<Value>(body) else { return (invalid("not JSON"), false) };
    let Some(given) = patch["status"]["conditions"].as_array() else {
        return (invalid("status.conditions is required"), false);
    };
    if given.iter().any(|c| c["type"].as_str().is_none_or(str::is_empty)) {
        return (invalid("status.conditions[].type is required"), false);
    }
    let key = (cnp::KIND, name.to_string());
    let Some(stored) = st.objects.get(&key) else {
        return (not_found(&format!("clusternetworkpolicies {name:?}")), false);
    };
    let mut conditions = stored.served["status"]["conditions"].as_array().cloned().unwrap_or_default();
    for c in given {
        match conditions.iter_mut().find(|old| old["type"] == c["type"]) {
            Some(old) => *old = c.clone(),
            None => conditions.push(c.clone()),
        }
    }
    if stored.served["status"]["conditions"].as_array() == Some(&conditions) {
        // A patch that changes nothing is no change: no new version.
        return (("200 OK", stored.served.clone()), false);
    }
    st.rv += 1;
    let rv = st.rv;
    let Some(stored) = st.objects.get_mut(&key) else { return (not_found(name), false) };
    stored.served["status"] = json!({"conditions": conditions});
    stored.served["metadata"]["resourceVersion"] = json!(rv.to_string());
    let object = stored.served.clone();
    st.history.push(Change { rv, kind: cnp::KIND, event: "MODIFIED", object: object.clone() });
    publish(st);
    (("200 OK", object), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str, rv: Option<&str>, labels: Value) -> Vec<u8> {
        let mut l = json!({"metadata": {"name": name, "labels": labels}, "spec": {"holderIdentity": "a"}});
        if let Some(rv) = rv {
            l["metadata"]["resourceVersion"] = json!(rv);
        }
        l.to_string().into_bytes()
    }

    #[test]
    fn leases_are_created_once_and_updated_only_from_the_current_version() {
        let mut st = State::default();
        let (code, l) = write_lease(&mut st, "ns", None, &lease("w", None, json!({})));
        assert_eq!((code, l["metadata"]["resourceVersion"].as_str()), ("201 Created", Some("1")));
        assert_eq!(write_lease(&mut st, "ns", None, &lease("w", None, json!({}))).0, "409 Conflict");
        assert_eq!(write_lease(&mut st, "ns", Some("w"), &lease("w", Some("1"), json!({}))).0, "200 OK");
        // Someone else's update came between: the version read is stale.
        assert_eq!(
            write_lease(&mut st, "ns", Some("w"), &lease("w", Some("1"), json!({}))).0,
            "409 Conflict"
        );
        assert_eq!(
            write_lease(&mut st, "ns", Some("x"), &lease("x", Some("1"), json!({}))).0,
            "404 Not Found"
        );
        assert_eq!(st.stats.lease_writes, 2);
        write_lease(&mut st, "ns", None, &lease("r", None, json!({"weft.io/cnp-report": "node"})));
        write_lease(&mut st, "other", None, &lease("r", None, json!({"weft.io/cnp-report": "node"})));
        let (_, list) = list_leases(&st, "ns", Some(unescape("weft.io%2Fcnp-report%3Dnode")));
        let names: Vec<&str> =
            list["items"].as_array().unwrap().iter().filter_map(|l| l["metadata"]["name"].as_str()).collect();
        assert_eq!(names, ["r"]);
        assert_eq!(list_leases(&st, "ns", None).1["items"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn status_patches_merge_conditions_by_type_and_version_only_a_change() {
        let mut st = State { cnp_served: true, ..State::default() };
        let cnp = json!({"kind": "ClusterNetworkPolicy", "metadata": {"name": "p"}, "spec": {}});
        super::super::apply_objects(&mut st, [((cnp::KIND, "p".to_string()), cnp)].into());
        let patch = |conds: Value| json!({"status": {"conditions": conds}}).to_string().into_bytes();
        let a = json!({"type": "Accepted", "status": "True"});
        let ((code, _), changed) = patch_status(&mut st, "p", &patch(json!([a.clone()])));
        assert_eq!((code, changed, st.rv), ("200 OK", true, 2));
        let r = json!({"type": "Realized", "status": "False"});
        patch_status(&mut st, "p", &patch(json!([r.clone()])));
        let ((_, obj), changed) = patch_status(&mut st, "p", &patch(json!([a.clone(), r.clone()])));
        assert!(!changed, "the same conditions again");
        assert_eq!(obj["status"]["conditions"], json!([a, r]));
        assert_eq!(obj["metadata"]["resourceVersion"], "3");
        assert_eq!(st.history.last().map(|c| (c.rv, c.event)), Some((3, "MODIFIED")));
        assert_eq!(patch_status(&mut st, "q", &patch(json!([]))).0 .0, "404 Not Found");
        assert_eq!(patch_status(&mut st, "p", b"{}").0 .0, "422 Unprocessable Entity");
    }
}
