//! The agent loop's side of the pod socket: a report is laid over the
//! cluster state (each claim checked, `pod_events`) and answered once the
//! policy is committed; an ADD of a pod the source does not show yet is
//! parked (`parked_adds`) and answered when the pod appears or its time is
//! up, while the loop serves everything else.

use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use tracing::{debug, error, warn};
use weft_conf::pod_socket::{AgentReply, PodEvent};

use super::Agent;
use crate::metrics::SyncKind;
use crate::parked_adds::PARK_TIMEOUT;
use crate::pod_events::{Claim, PodEvents};

/// How often the source is polled while ADDs wait for it to show their pod.
const PARKED_POLL: Duration = Duration::from_millis(20);

/// A parked ADD: the report and where its answer goes.
pub(super) type ParkedAdd = (PodEvent, Sender<AgentReply>);

impl Agent<'_> {
    /// A report from the plugin: answered once its policy is committed, so
    /// ADD returns with the pod's rules in force. An ADD of a pod the source
    /// does not show yet is parked (`answer_parked`), never waited for here.
    pub(super) fn on_pod(&mut self, ev: PodEvent, reply: Sender<AgentReply>) {
        if let PodEvent::Add { namespace, name, .. } = &ev {
            if self.policy.is_some() && !self.shows(namespace, name) {
                // The source may lag the kubelet by a moment.
                self.poll_source();
            }
            if self.policy.is_some() && !self.shows(namespace, name) {
                let pod = format!("{namespace}/{name}");
                debug!(pod = %pod, "ADD waits for the cluster state to show the pod");
                if let Err((ev, reply)) = self.parked.park(pod, Instant::now() + PARK_TIMEOUT, (ev, reply)) {
                    let error = format!("too many ADDs wait for the cluster state: {}", not_shown(&ev));
                    let _ = reply.send(refusal(error));
                }
                return;
            }
        }
        if let PodEvent::Del { container_id, ifname } = &ev {
            // An ADD the DEL overtook must not be recorded after it.
            let overtaken = self.parked.take_if(|(add, _)| {
                matches!(add, PodEvent::Add { container_id: c, ifname: i, .. } if c == container_id && i == ifname)
            });
            for (_, reply) in overtaken {
                let _ =
                    reply.send(refusal(format!("container {container_id} was deleted while its ADD waited")));
            }
        }
        let answers = self.commit(std::slice::from_ref(&ev));
        let _ = reply.send(answers.into_iter().next().unwrap_or_else(|| refusal("no answer".into())));
    }

    /// True if the source shows pod "namespace/name".
    fn shows(&self, namespace: &str, name: &str) -> bool {
        self.snap.as_ref().is_some_and(|s| PodEvents::known(&s.model, namespace, name))
    }

    /// Answers the parked ADDs whose pod the source shows now (one commit for
    /// them all) and refuses those past their deadline (fail closed).
    pub(super) fn answer_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let snap = self.snap.as_ref();
        let taken =
            self.parked.take(|pod| snap.is_some_and(|s| s.model.pods.contains_key(pod)), Instant::now());
        for (ev, reply) in taken.late {
            let error = not_shown(&ev);
            warn!("{error}");
            let _ = reply.send(refusal(error));
        }
        let (evs, replies): (Vec<PodEvent>, Vec<Sender<AgentReply>>) = taken.ready.into_iter().unzip();
        for (answer, reply) in self.commit(&evs).into_iter().zip(replies) {
            let _ = reply.send(answer);
        }
    }

    /// Drops the claims the source never confirmed in time; a sync follows.
    pub(super) fn expire_claims(&mut self) {
        if self.pods.expire(Instant::now()) && self.next_sync > Instant::now() {
            self.next_sync = Instant::now();
            self.full = false;
        }
    }

    /// How long the loop may wait for an event: the poll interval, shorter
    /// while ADDs are parked (their pod may appear at any poll).
    pub(super) fn wait(&self) -> Duration {
        match self.parked.next_deadline() {
            None => self.cfg.poll,
            Some(d) => self.cfg.poll.min(PARKED_POLL).min(d.saturating_duration_since(Instant::now())),
        }
    }

    /// Lays `evs` over the cluster state, each claim checked (a refused one
    /// changes nothing), then commits the policy once for all; one answer each.
    fn commit(&mut self, evs: &[PodEvent]) -> Vec<AgentReply> {
        let now = Instant::now();
        let node = self.cfg.node.as_str();
        let mut answers: Vec<Result<bool, String>> = Vec::with_capacity(evs.len());
        for ev in evs {
            answers.push(match (ev, &self.snap) {
                (PodEvent::Del { container_id, ifname }, _) => Ok(self.pods.del(container_id, ifname)),
                (_, _) if self.policy.is_none() => Ok(false),
                (PodEvent::Add { container_id, ifname, namespace, name, ips }, Some(s)) => {
                    let claim = Claim { container_id, ifname, namespace, name, ips };
                    self.pods.add(&s.model, node, &claim, now).map(|()| true).map_err(|e| {
                        // The plugin says who was refused; the reply carries the reason only.
                        warn!("ADD of {namespace}/{name} ({container_id}) refused: {e}");
                        e.to_string()
                    })
                }
                (PodEvent::Add { .. }, None) => Err("no cluster state yet".into()),
            });
        }
        let applied = if answers.iter().any(|a| a == &Ok(true)) {
            let t0 = Instant::now();
            let applied = self.enforce(false).map_or(Ok(()), |r| r.map(drop));
            self.shared.metrics().observe_sync(SyncKind::Pod, t0.elapsed());
            if let Err(e) = &applied {
                error!("{e}");
            }
            applied
        } else {
            Ok(())
        };
        answers
            .into_iter()
            .map(|a| match (a, &applied) {
                (Err(e), _) => refusal(e),
                (Ok(true), Err(e)) => refusal(e.clone()),
                (Ok(_), _) => AgentReply { ok: true, error: None },
            })
            .collect()
    }
}

/// A refusal with `error`.
fn refusal(error: String) -> AgentReply {
    AgentReply { ok: false, error: Some(error) }
}

/// Why an ADD of a pod the source does not show is refused (fail closed).
fn not_shown(ev: &PodEvent) -> String {
    let pod = match ev {
        PodEvent::Add { namespace, name, .. } => format!("{namespace}/{name}"),
        PodEvent::Del { container_id, .. } => container_id.clone(),
    };
    format!("pod {pod} is not in the cluster state yet: its traffic is dropped until it is")
}
