//! ADDs of pods the cluster state does not show yet: the agent loop parks
//! each with its reply and a deadline, serves every other event meanwhile,
//! and takes them back once the source shows the pod (its labels decide its
//! policy) or the deadline passes (the pod stays dropped, fail closed). The
//! loop used to wait for the source inside, 500 ms per unknown pod, so 20 of
//! them made a real ADD time out. Pure: the items are opaque.

use std::time::{Duration, Instant};

/// How long an ADD waits for the source to show its pod: within the
/// plugin's 3 s bound (`agent_client::TIMEOUT`) with room for the commit.
pub const PARK_TIMEOUT: Duration = Duration::from_secs(2);
/// The most ADDs parked at once (as many as the pod socket serves).
pub const MAX_PARKED: usize = 64;

/// One parked ADD.
#[derive(Debug)]
struct Entry<T> {
    /// "namespace/name".
    pod: String,
    deadline: Instant,
    item: T,
}

/// The parked ADDs, oldest first.
#[derive(Debug)]
pub struct ParkedAdds<T> {
    entries: Vec<Entry<T>>,
}

impl<T> Default for ParkedAdds<T> {
    fn default() -> Self {
        ParkedAdds { entries: Vec::new() }
    }
}

/// What `take` hands back.
#[derive(Debug, PartialEq, Eq)]
pub struct Taken<T> {
    /// Their pod is shown now: commit and answer them.
    pub ready: Vec<T>,
    /// Past their deadline, pod still unknown: refuse them.
    pub late: Vec<T>,
}

impl<T> ParkedAdds<T> {
    /// Parks `item` for pod "namespace/name" until `deadline`; gives it back
    /// when `MAX_PARKED` are parked already.
    pub fn park(&mut self, pod: String, deadline: Instant, item: T) -> Result<(), T> {
        if self.entries.len() >= MAX_PARKED {
            return Err(item);
        }
        self.entries.push(Entry { pod, deadline, item });
        Ok(())
    }

    /// True if no ADD is parked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The earliest deadline, if any ADD is parked.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.iter().map(|e| e.deadline).min()
    }

    /// Takes back the ADDs `pred` picks (those a DEL overtook).
    pub fn take_if(&mut self, pred: impl Fn(&T) -> bool) -> Vec<T> {
        let (taken, kept) = self.entries.drain(..).partition(|e| pred(&e.item));
        self.entries = kept;
        taken.into_iter().map(|e| e.item).collect()
    }

    /// Takes back the ADDs whose pod `shown` says the source shows, and those
    /// past their deadline at `now`; the rest stay parked, in order.
    pub fn take(&mut self, shown: impl Fn(&str) -> bool, now: Instant) -> Taken<T> {
        let mut taken = Taken { ready: Vec::new(), late: Vec::new() };
        let mut kept = Vec::with_capacity(self.entries.len());
        for e in self.entries.drain(..) {
            if shown(&e.pod) {
                taken.ready.push(e.item);
            } else if now >= e.deadline {
                taken.late.push(e.item);
            } else {
                kept.push(e);
            }
        }
        self.entries = kept;
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_come_back_when_their_pod_shows_or_their_time_is_up() {
        let t0 = Instant::now();
        let mut p = ParkedAdds::default();
        assert_eq!(p.next_deadline(), None);
        p.park("x/a".into(), t0 + PARK_TIMEOUT, 1).unwrap();
        p.park("x/b".into(), t0 + PARK_TIMEOUT / 2, 2).unwrap();
        p.park("x/c".into(), t0 + PARK_TIMEOUT, 3).unwrap();
        assert_eq!(p.next_deadline(), Some(t0 + PARK_TIMEOUT / 2));
        assert_eq!(p.take(|_| false, t0), Taken { ready: vec![], late: vec![] });
        // c shows up; b's time is up; a waits on.
        assert_eq!(
            p.take(|pod| pod == "x/c", t0 + PARK_TIMEOUT / 2),
            Taken { ready: vec![3], late: vec![2] }
        );
        assert_eq!(p.next_deadline(), Some(t0 + PARK_TIMEOUT));
        p.park("x/d".into(), t0 + PARK_TIMEOUT, 4).unwrap();
        assert_eq!(p.take_if(|i| *i == 4), [4]);
        assert_eq!(p.take(|_| false, t0 + PARK_TIMEOUT), Taken { ready: vec![], late: vec![1] });
        assert!(p.is_empty());
    }

    #[test]
    fn at_most_max_parked_wait() {
        let t0 = Instant::now();
        let mut p = ParkedAdds::default();
        for i in 0..MAX_PARKED {
            p.park(format!("x/p{i}"), t0, i).unwrap();
        }
        assert_eq!(p.park("x/one-more".into(), t0, 99), Err(99));
        assert_eq!(p.take(|_| false, t0).late.len(), MAX_PARKED);
        p.park("x/one-more".into(), t0, 99).unwrap();
    }
}
