//! The one batcher across all cameras: requests accumulate until `max_batch` are waiting or the
//! oldest has waited `max_wait`, then leave as one batch. Time is passed in, so it tests
//! deterministically.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most faces per embedding batch.
    pub max_batch: usize,
    /// Longest a face waits for others before its batch leaves, milliseconds.
    pub max_wait_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_batch: 16, max_wait_ms: 20 }
    }
}

impl BatchConfig {
    /// Every problem as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if !(1..=256).contains(&self.max_batch) {
            p.push(("max_batch".into(), format!("must be 1..=256, got {}", self.max_batch)));
        }
        if self.max_wait_ms > 10_000 {
            p.push(("max_wait_ms".into(), format!("must be at most 10000, got {}", self.max_wait_ms)));
        }
        p
    }

    /// The first problem, if any.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }
}

pub struct Batcher<T> {
    cfg: BatchConfig,
    pending: Vec<T>,
    oldest: Option<Instant>,
}

impl<T> Batcher<T> {
    pub fn new(cfg: BatchConfig) -> Self {
        let cap = cfg.max_batch;
        Self { cfg, pending: Vec::with_capacity(cap), oldest: None }
    }

    /// Adds a request; returns a full batch when this one filled it.
    pub fn push(&mut self, item: T, now: Instant) -> Option<Vec<T>> {
        if self.pending.is_empty() {
            self.oldest = Some(now);
        }
        self.pending.push(item);
        if self.pending.len() >= self.cfg.max_batch { Some(self.take()) } else { None }
    }

    /// How long the caller may wait for more requests before calling [`Batcher::poll`].
    pub fn wait_time(&self, now: Instant) -> Option<Duration> {
        self.oldest.map(|t| (t + Duration::from_millis(self.cfg.max_wait_ms)).saturating_duration_since(now))
    }

    /// Returns the pending batch when its oldest request has waited long enough.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<T>> {
        match self.wait_time(now) {
            Some(w) if w.is_zero() => Some(self.take()),
            _ => None,
        }
    }

    /// Everything pending, now (shutdown).
    pub fn flush(&mut self) -> Option<Vec<T>> {
        if self.pending.is_empty() { None } else { Some(self.take()) }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn take(&mut self) -> Vec<T> {
        self.oldest = None;
        std::mem::replace(&mut self.pending, Vec::with_capacity(self.cfg.max_batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_when_full() {
        let mut b = Batcher::new(BatchConfig { max_batch: 3, max_wait_ms: 1000 });
        let t = Instant::now();
        assert!(b.push(1, t).is_none());
        assert!(b.push(2, t).is_none());
        assert_eq!(b.push(3, t), Some(vec![1, 2, 3]));
        assert!(b.is_empty());
        assert_eq!(b.wait_time(t), None);
    }

    #[test]
    fn flushes_when_the_oldest_has_waited_max_wait() {
        let mut b = Batcher::new(BatchConfig { max_batch: 8, max_wait_ms: 20 });
        let t0 = Instant::now();
        b.push("a", t0);
        b.push("b", t0 + Duration::from_millis(15));
        assert_eq!(b.wait_time(t0 + Duration::from_millis(15)), Some(Duration::from_millis(5)));
        assert_eq!(b.poll(t0 + Duration::from_millis(19)), None);
        assert_eq!(b.poll(t0 + Duration::from_millis(20)), Some(vec!["a", "b"]));
        // The next batch's clock starts at its own first request.
        b.push("c", t0 + Duration::from_millis(30));
        assert_eq!(b.poll(t0 + Duration::from_millis(45)), None);
        assert_eq!(b.flush(), Some(vec!["c"]));
    }
}
