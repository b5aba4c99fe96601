//! Shedding load before the work, fairly. Past capacity a camera's queue is full when its next
//! frame arrives and the oldest queued frame is dropped: that frame had been decoded and converted
//! for nothing, and past 12 cameras that wasted work was what made the machine's total frame rate
//! fall. Each camera therefore paces itself by its own queue: a frame that finds the queue full
//! (the detectors are behind on this camera) widens the camera's interval between frames by 10%;
//! a frame that finds it empty (they keep up) narrows it by 3%, down to the configured cap. The
//! interval applies where the fps cap does, before the RGB conversion, so a shed frame costs its
//! decoding only. Every camera follows the same rule against the same shared detectors, which
//! serve the cameras that have a frame waiting in turn (the one served longest ago first), so the
//! cameras settle at about equal rates: load is shed fairly, and the machine keeps doing its most
//! work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A camera's current least interval between frames, shared by its camera thread (which adapts it
/// to its queue) and its pipeline's streaming thread (which applies it).
#[derive(Debug)]
pub struct Pace {
    floor: Duration,
    micros: AtomicU64,
}

/// Widening on a full queue, narrowing on an empty one.
const WIDEN: f64 = 1.10;
const NARROW: f64 = 0.97;
/// The widest interval (a camera always gets a frame every 2 s) and the least step from zero for
/// a camera without a cap.
const CEILING: Duration = Duration::from_secs(2);
const FIRST_STEP: Duration = Duration::from_millis(10);

impl Pace {
    /// `floor`: the interval of the camera's fps cap (zero: no cap).
    pub fn new(floor: Duration) -> Self {
        Pace { floor, micros: AtomicU64::new(floor.as_micros() as u64) }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }

    /// Whether the camera is shedding load now (its interval is wider than its cap's).
    pub fn shedding(&self) -> bool {
        self.interval() > self.floor
    }

    /// Adapts to the camera's queue as a frame is handed over: `waiting` frames were queued and
    /// the queue holds `capacity`.
    pub fn observe(&self, waiting: usize, capacity: usize) {
        let now = self.interval();
        let next = if waiting >= capacity {
            now.max(FIRST_STEP).mul_f64(WIDEN).min(CEILING)
        } else if waiting == 0 {
            let narrowed = now.mul_f64(NARROW);
            if narrowed < self.floor.max(FIRST_STEP) { self.floor } else { narrowed }
        } else {
            now
        };
        self.micros.store(next.as_micros() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_camera_widens_on_a_full_queue_and_returns_to_its_cap_when_it_is_served() {
        let cap = Duration::from_millis(100);
        let p = Pace::new(cap);
        p.observe(0, 2);
        assert_eq!(p.interval(), cap, "never faster than the configured cap");
        assert!(!p.shedding());
        p.observe(1, 2);
        assert_eq!(p.interval(), cap, "one frame waiting is the steady state");
        for _ in 0..5 {
            p.observe(2, 2);
        }
        let wide = p.interval();
        assert!(wide > Duration::from_millis(160) && wide < Duration::from_millis(162), "{wide:?}");
        assert!(p.shedding());
        for _ in 0..100 {
            p.observe(2, 2);
        }
        assert_eq!(p.interval(), CEILING, "a camera is never paced below one frame per 2 s");
        for _ in 0..200 {
            p.observe(0, 2);
        }
        assert_eq!(p.interval(), cap);
        assert!(!p.shedding());
        // A camera without a cap sheds from a first step and comes back to no interval at all.
        let free = Pace::new(Duration::ZERO);
        free.observe(2, 2);
        assert_eq!(free.interval(), Duration::from_millis(11));
        for _ in 0..10 {
            free.observe(0, 2);
        }
        assert_eq!(free.interval(), Duration::ZERO);
    }
}
