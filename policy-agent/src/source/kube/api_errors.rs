//! What a watcher error means for an operator: its class (which folds
//! repeats and picks the level) and one line in plain words, with what to
//! do. kube's own Display of an API error ends in a Debug dump of the
//! Status; this says code, reason and message instead. Pure.

use kube::core::Status;
use kube::runtime::watcher;

use crate::logging::error_chain;

/// The kinds of trouble a watcher meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trouble {
    /// 410 Gone: the watch's history expired; a new list follows at once. Normal.
    Expired,
    /// No answer: connection refused, timed out, reset.
    Unreachable,
    /// 403: seen for seconds while an API server restarts (its RBAC
    /// authorizer is not ready yet), or a ClusterRole that lacks a rule.
    Forbidden,
    /// 401: the credentials are not accepted.
    Unauthorized,
    /// Any other answer or failure.
    Failing,
}

impl Trouble {
    /// The key repeats of this trouble fold under (every kind's watcher alike).
    pub(super) fn key(self) -> &'static str {
        match self {
            Trouble::Expired => "expired",
            Trouble::Unreachable => "unreachable",
            Trouble::Forbidden => "forbidden",
            Trouble::Unauthorized => "unauthorized",
            Trouble::Failing => "failing",
        }
    }
}

/// One watcher error, classified and said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Described {
    pub trouble: Trouble,
    /// What happened and what to do, without the kind.
    pub text: String,
}

/// Classifies and describes a watcher error of the watcher of `resource` (plural).
pub(super) fn describe(e: &watcher::Error, resource: &str) -> Described {
    let client = match e {
        watcher::Error::WatchError(status) => return from_status(status, resource),
        watcher::Error::InitialListFailed(c)
        | watcher::Error::WatchStartFailed(c)
        | watcher::Error::WatchFailed(c) => c,
        watcher::Error::NoResourceVersion => {
            let text = "the API server sent no resourceVersion; listing again".to_string();
            return Described { trouble: Trouble::Failing, text };
        }
    };
    match client {
        kube::Error::Api(status) => from_status(status, resource),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => Described {
            trouble: Trouble::Unreachable,
            text: format!(
                "the API server is unreachable ({}); the last state received stays in force, retrying",
                without_prefix(&error_chain(client))
            ),
        },
        other => Described {
            trouble: Trouble::Failing,
            text: format!(
                "the API server is failing ({}); the last state received stays in force, retrying",
                without_prefix(&error_chain(other))
            ),
        },
    }
}

fn from_status(s: &Status, resource: &str) -> Described {
    let said = format!("{} {}: {}", s.code, s.reason, s.message);
    let (trouble, text) = match s.code {
        410 => (Trouble::Expired, "watch expired (410 Gone): listing again".to_string()),
        403 => (
            Trouble::Forbidden,
            format!(
                "the API server refused to list {resource} ({said}); normal for a few seconds while an API \
                 server restarts; if it lasts, check weft's RBAC: kubectl auth can-i watch {resource} \
                 --as=system:serviceaccount:kube-system:weft"
            ),
        ),
        401 => (
            Trouble::Unauthorized,
            format!(
                "the API server did not accept weft's credentials ({said}); check the service account \
                 token, or the --kubeconfig given"
            ),
        ),
        _ => (
            Trouble::Failing,
            format!("the API server is failing ({said}); the last state received stays in force, retrying"),
        ),
    };
    Described { trouble, text }
}

/// kube's variant names ("ServiceError: ", "HyperError: ") say nothing to an operator.
fn without_prefix(s: &str) -> &str {
    for p in ["ServiceError: ", "HyperError: "] {
        if let Some(rest) = s.strip_prefix(p) {
            return rest;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str, message: &str) -> Box<Status> {
        Status::failure(message, reason).with_code(code).boxed()
    }

    #[test]
    fn each_error_has_its_class_and_plain_words() {
        let refused: Box<dyn std::error::Error + Send + Sync> = Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        let cases = [
            (
                watcher::Error::WatchError(status(410, "Expired", "too old resource version")),
                Trouble::Expired,
                "watch expired (410 Gone): listing again",
            ),
            (
                watcher::Error::InitialListFailed(kube::Error::Service(refused)),
                Trouble::Unreachable,
                "the API server is unreachable (Connection refused (os error 111)); the last state",
            ),
            (
                watcher::Error::InitialListFailed(kube::Error::Api(status(
                    403,
                    "Forbidden",
                    "pods is forbidden",
                ))),
                Trouble::Forbidden,
                "refused to list pods (403 Forbidden: pods is forbidden); normal for a few seconds",
            ),
            (
                watcher::Error::WatchStartFailed(kube::Error::Api(status(
                    401,
                    "Unauthorized",
                    "Unauthorized",
                ))),
                Trouble::Unauthorized,
                "did not accept weft's credentials (401 Unauthorized: Unauthorized)",
            ),
            (
                watcher::Error::WatchFailed(kube::Error::Api(status(500, "InternalError", "etcd down"))),
                Trouble::Failing,
                "the API server is failing (500 InternalError: etcd down)",
            ),
        ];
        for (e, trouble, says) in cases {
            let d = describe(&e, "pods");
            assert_eq!(d.trouble, trouble, "{e}");
            assert!(d.text.contains(says), "{}", d.text);
            assert!(!d.text.contains("Status {"), "no Debug dump: {}", d.text);
        }
    }
}
