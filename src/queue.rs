//! The one bounded queue of the pipeline: a crossbeam channel with a typed when-full policy
//! (drop the oldest waiting item, drop the new item, or block) that counts every drop in the
//! counter it was given, plus the fan-out [`Bus`] where each subscriber has a queue of its own.
//! Every channel between stages and every sink queue is one of these (house rules 3 and 11).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError, TrySendError};
use prometheus::IntCounter;

/// What a full queue does with one more item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Live data: the oldest waiting item goes (counted), the new one is queued.
    DropOldest,
    /// Best effort: the new item is dropped (counted); the producer never waits.
    DropNewest,
    /// Lossless: the producer waits for room (until the stop flag, see [`Tx::push_until`]).
    Block,
}

/// Why an item did not get into a queue.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// Dropped by the when-full policy (already counted).
    #[error("queue full")]
    Full,
    /// Every receiver is gone: the stage behind has ended.
    #[error("queue closed")]
    Closed,
    /// A blocking push gave up because the pipeline is stopping.
    #[error("stopping")]
    Stopped,
}

impl PushError {
    /// A low-cardinality label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PushError::Full => "queue_full",
            PushError::Closed => "disconnected",
            PushError::Stopped => "stopped",
        }
    }
}

/// The sending side of a bounded queue.
pub struct Tx<T> {
    tx: Sender<T>,
    /// Kept by DropOldest queues only, to take the oldest item out (so their producers never see
    /// the queue closed; other queues report `Closed` once every receiver is gone).
    rx: Option<Receiver<T>>,
    policy: WhenFull,
    dropped: IntCounter,
    /// Items that DropOldest must never evict (end-of-stream markers).
    pinned: fn(&T) -> bool,
}

impl<T> Clone for Tx<T> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), rx: self.rx.clone(), policy: self.policy, dropped: self.dropped.clone(), pinned: self.pinned }
    }
}

/// A bounded queue of `capacity` items with a when-full policy; drops are counted in `dropped`.
pub fn bounded<T>(capacity: usize, policy: WhenFull, dropped: IntCounter) -> (Tx<T>, Receiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
    let keep = (policy == WhenFull::DropOldest).then(|| rx.clone());
    (Tx { tx, rx: keep, policy, dropped, pinned: |_| false }, rx)
}

impl<T> Tx<T> {
    /// Items for which `pinned` is true are never evicted by DropOldest (they are put back).
    pub fn with_pinned(mut self, pinned: fn(&T) -> bool) -> Self {
        self.pinned = pinned;
        self
    }

    pub fn policy(&self) -> WhenFull {
        self.policy
    }

    /// Queues an item by the queue's own policy (Block waits without a stop flag).
    pub fn push(&self, item: T) -> Result<(), PushError> {
        self.push_as(item, self.policy, None)
    }

    /// Queues an item by the queue's policy; a blocking push gives up once `stop` is set.
    pub fn push_until(&self, item: T, stop: &AtomicBool) -> Result<(), PushError> {
        self.push_as(item, self.policy, Some(stop))
    }

    /// Queues an item by an explicit policy (a camera queue is drop-oldest for live sources and
    /// blocking for files played flat out).
    pub fn push_as(&self, item: T, policy: WhenFull, stop: Option<&AtomicBool>) -> Result<(), PushError> {
        match policy {
            WhenFull::DropNewest => match self.tx.try_send(item) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => {
                    self.dropped.inc();
                    Err(PushError::Full)
                }
                Err(TrySendError::Disconnected(_)) => Err(PushError::Closed),
            },
            WhenFull::DropOldest => {
                let mut item = item;
                loop {
                    match self.tx.try_send(item) {
                        Ok(()) => return Ok(()),
                        Err(TrySendError::Disconnected(_)) => return Err(PushError::Closed),
                        Err(TrySendError::Full(back)) => {
                            item = back;
                            // A queue made for another policy has no receiver to evict from:
                            // the new item is dropped instead.
                            let Some(rx) = &self.rx else {
                                self.dropped.inc();
                                return Err(PushError::Full);
                            };
                            match rx.try_recv() {
                                Ok(old) if (self.pinned)(&old) => {
                                    // Never lost: it goes back (blocking briefly is fine, the
                                    // consumers are draining).
                                    if self.tx.send(old).is_err() {
                                        return Err(PushError::Closed);
                                    }
                                }
                                Ok(_) => self.dropped.inc(),
                                Err(TryRecvError::Empty) => {}
                                Err(TryRecvError::Disconnected) => return Err(PushError::Closed),
                            }
                        }
                    }
                }
            }
            WhenFull::Block => {
                let Some(stop) = stop else { return self.tx.send(item).map_err(|_| PushError::Closed) };
                let mut item = item;
                loop {
                    match self.tx.send_timeout(item, Duration::from_millis(100)) {
                        Ok(()) => return Ok(()),
                        Err(SendTimeoutError::Disconnected(_)) => return Err(PushError::Closed),
                        Err(SendTimeoutError::Timeout(back)) => {
                            if stop.load(Ordering::Relaxed) {
                                return Err(PushError::Stopped);
                            }
                            item = back;
                        }
                    }
                }
            }
        }
    }

    /// Waits up to `wait` for room (used for notices that matter but must not stall forever).
    pub fn push_within(&self, item: T, wait: Duration) -> Result<(), PushError> {
        match self.tx.send_timeout(item, wait) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Timeout(_)) => {
                self.dropped.inc();
                Err(PushError::Full)
            }
            Err(SendTimeoutError::Disconnected(_)) => Err(PushError::Closed),
        }
    }

    /// Items the queue holds at most.
    pub fn capacity(&self) -> usize {
        self.tx.capacity().unwrap_or(usize::MAX)
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}

/// Receives with a timeout; `None` on timeout, `Err` once every sender is gone and it is drained.
pub fn recv_timeout<T>(rx: &Receiver<T>, wait: Duration) -> Result<Option<T>, PushError> {
    match rx.recv_timeout(wait) {
        Ok(v) => Ok(Some(v)),
        Err(RecvTimeoutError::Timeout) => Ok(None),
        Err(RecvTimeoutError::Disconnected) => Err(PushError::Closed),
    }
}

/// Somewhere a stage hands its output: a queue (wrapping items into the next stage's message) or
/// any closure. Stages take an outlet instead of the next stage's type, so no stage imports the
/// stage after it.
pub trait Outlet<T>: Send {
    /// False when the receiving side is gone (the stage should end).
    fn put(&mut self, item: T) -> bool;
}

impl<T, F: FnMut(T) -> bool + Send> Outlet<T> for F {
    fn put(&mut self, item: T) -> bool {
        self(item)
    }
}

/// A fan-out: every published item goes to every subscriber's own bounded queue (drop newest),
/// so a slow subscriber loses items (counted per subscriber) and never slows the publisher or
/// the other subscribers.
pub struct Bus<T: Clone> {
    subscribers: Vec<(&'static str, Tx<T>)>,
}

impl<T: Clone> Default for Bus<T> {
    fn default() -> Self {
        Self { subscribers: Vec::new() }
    }
}

impl<T: Clone> Bus<T> {
    /// A new subscriber with a queue of `capacity` items; its drops count in `dropped`.
    pub fn subscribe(&mut self, name: &'static str, capacity: usize, dropped: IntCounter) -> Receiver<T> {
        let (tx, rx) = bounded(capacity, WhenFull::DropNewest, dropped);
        self.subscribers.push((name, tx));
        rx
    }

    /// Offers the item to every subscriber; subscribers that have gone are forgotten.
    pub fn publish(&mut self, item: &T) {
        self.subscribers.retain(|(_, tx)| tx.push(item.clone()) != Err(PushError::Closed));
    }

    pub fn subscribers(&self) -> Vec<&'static str> {
        self.subscribers.iter().map(|(n, _)| *n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> IntCounter {
        IntCounter::new("test_dropped_total", "drops").unwrap()
    }

    #[test]
    fn drop_oldest_keeps_the_newest_items_and_counts() {
        let c = counter();
        let (tx, rx) = bounded::<u32>(2, WhenFull::DropOldest, c.clone());
        for i in 0..5 {
            tx.push(i).unwrap();
        }
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(c.get(), 3);
    }

    #[test]
    fn drop_oldest_never_evicts_a_pinned_item() {
        let c = counter();
        let (tx, rx) = bounded::<u32>(2, WhenFull::DropOldest, c.clone());
        let tx = tx.with_pinned(|v| *v == 100);
        tx.push(100).unwrap();
        tx.push(1).unwrap();
        tx.push(2).unwrap();
        let got: Vec<_> = rx.try_iter().collect();
        assert!(got.contains(&100), "the pinned item survives: {got:?}");
        assert!(got.contains(&2), "the newest is queued: {got:?}");
        assert_eq!(c.get(), 1, "only the plain item was dropped");
    }

    #[test]
    fn drop_newest_refuses_the_new_item_and_counts() {
        let c = counter();
        let (tx, rx) = bounded::<u32>(2, WhenFull::DropNewest, c.clone());
        assert_eq!(tx.push(1), Ok(()));
        assert_eq!(tx.push(2), Ok(()));
        assert_eq!(tx.push(3), Err(PushError::Full));
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(c.get(), 1);
        drop(rx);
        assert_eq!(tx.push(4), Err(PushError::Closed), "a closed queue is not a drop");
        assert_eq!(c.get(), 1);
    }

    #[test]
    fn block_waits_for_room_loses_nothing_and_gives_up_on_stop() {
        let c = counter();
        let (tx, rx) = bounded::<u32>(1, WhenFull::Block, c.clone());
        tx.push(1).unwrap();
        let consumer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            rx.iter().take(3).collect::<Vec<_>>()
        });
        tx.push(2).unwrap();
        tx.push(3).unwrap();
        assert_eq!(consumer.join().unwrap(), vec![1, 2, 3]);
        assert_eq!(c.get(), 0, "blocking never drops");
        let (tx, _rx) = bounded::<u32>(1, WhenFull::Block, c.clone());
        tx.push(1).unwrap();
        let stop = AtomicBool::new(true);
        assert_eq!(tx.push_until(2, &stop), Err(PushError::Stopped));
        assert_eq!(c.get(), 0);
    }

    #[test]
    fn a_slow_bus_subscriber_loses_items_alone() {
        let (slow_c, fast_c) = (counter(), counter());
        let mut bus = Bus::default();
        let slow = bus.subscribe("slow", 2, slow_c.clone());
        let fast = bus.subscribe("fast", 100, fast_c.clone());
        for i in 0..10u32 {
            bus.publish(&i);
        }
        assert_eq!(fast.try_iter().count(), 10);
        assert_eq!(slow.try_iter().count(), 2);
        assert_eq!((slow_c.get(), fast_c.get()), (8, 0));
        drop(slow);
        bus.publish(&11);
        assert_eq!(bus.subscribers(), vec!["fast"], "a gone subscriber is forgotten");
    }
}
