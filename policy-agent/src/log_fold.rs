//! Folding a repeated message into one line with a count: the first
//! occurrence is said at once, later ones are counted, and at most one line
//! per window says how many there were ("API unreachable (12 times in 30 s)").
//! When the condition clears, one line closes it with the total. Pure; the
//! caller logs what it returns.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long repeats of one message are counted before a line says so.
pub const WINDOW: Duration = Duration::from_secs(30);

/// Repeats of each key (a class of message) since its first occurrence.
#[derive(Debug, Default)]
pub struct Fold {
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug)]
struct Entry {
    first: Instant,
    window_start: Instant,
    in_window: u64,
    total: u64,
}

impl Fold {
    /// One occurrence of `key`, said as `text`: the line to log now, if any
    /// (the first occurrence, or the count once `WINDOW` has passed).
    pub fn occur(&mut self, key: &str, text: &str, now: Instant) -> Option<String> {
        let Some(e) = self.entries.get_mut(key) else {
            self.entries.insert(key.into(), Entry { first: now, window_start: now, in_window: 0, total: 1 });
            return Some(text.to_string());
        };
        e.total += 1;
        e.in_window += 1;
        let span = now.saturating_duration_since(e.window_start);
        if span < WINDOW {
            return None;
        }
        let line = format!("{text} ({} times in {} s)", e.in_window, span.as_secs());
        e.window_start = now;
        e.in_window = 0;
        Some(line)
    }

    /// `key`'s condition cleared: how many times it occurred and for how
    /// long, if it had; it starts afresh next time.
    pub fn clear(&mut self, key: &str, now: Instant) -> Option<(u64, Duration)> {
        self.entries.remove(key).map(|e| (e.total, now.saturating_duration_since(e.first)))
    }

    /// Whether `key` occurred since it last cleared.
    pub fn active(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_said_then_one_count_per_window_then_the_total() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut f = Fold::default();
        assert_eq!(f.occur("down", "API unreachable", t0).as_deref(), Some("API unreachable"));
        for i in 1..12 {
            assert_eq!(f.occur("down", "API unreachable", t0 + s(i * 2)), None, "{i}");
        }
        assert_eq!(f.occur("other", "forbidden", t0 + s(5)).as_deref(), Some("forbidden"), "keys apart");
        assert_eq!(
            f.occur("down", "API unreachable", t0 + s(30)).as_deref(),
            Some("API unreachable (12 times in 30 s)")
        );
        assert_eq!(f.occur("down", "API unreachable", t0 + s(40)), None, "a new window");
        assert_eq!(
            f.occur("down", "API unreachable", t0 + s(61)).as_deref(),
            Some("API unreachable (2 times in 31 s)")
        );
        assert!(f.active("down"));
        assert_eq!(f.clear("down", t0 + s(70)), Some((15, s(70))));
        assert_eq!(f.clear("down", t0 + s(71)), None);
        assert_eq!(f.occur("down", "API unreachable", t0 + s(80)).as_deref(), Some("API unreachable"));
    }
}
