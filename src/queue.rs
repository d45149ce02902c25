//! The bounded queue from a room to one member's session.
//!
//! Every member has two (document updates and awareness), so an idle connection pays for both.
//! tokio's mpsc channel allocated its first block of 32 slots and half a kilobyte of padded
//! shared state when created: about 1.5 KiB per queue, 3 KiB of every idle connection (heaptrack
//! of the `idle` scenario). This queue is one small allocation, a mutex around a `VecDeque`
//! that grows while frames wait and gives its memory back once a burst has drained.
//!
//! One sender (the room, under its lock) and one receiver (the member's session task): the
//! mutex is practically uncontended, and each send or receive takes it once, as tokio's atomics
//! did. Like tokio's, receiving is cancel safe (a `select!` may drop [`Receiver::recv`]), and
//! the receiver gets every queued item before learning that the sender is gone.
//!
//! A queue is bounded twice: in items and in bytes ([`Weigh`]). A frame may be as large as the
//! message limit (64 MiB by default), so a bound in items alone let one member hold thousands of
//! them. An item heavier than the byte bound is still accepted by an empty queue: otherwise a
//! large paste could never be relayed at all.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// Slots a drained queue may keep allocated: a member receiving a steady trickle of edits does
/// not allocate per frame, and one that took a burst does not keep the burst's memory.
const RETAINED_SLOTS: usize = 16;

/// What an item weighs against a queue's byte bound.
pub trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for bytes::Bytes {
    fn weight(&self) -> usize {
        self.len()
    }
}

/// A bounded queue holding at most `capacity` items and, unless it holds a single item, at
/// most `max_bytes` of them.
pub fn channel<T: Weigh>(capacity: usize, max_bytes: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            waker: None,
            sender_gone: false,
            receiver_gone: false,
        }),
        len: AtomicUsize::new(0),
        bytes: AtomicUsize::new(0),
    });
    (
        Sender {
            shared: shared.clone(),
            capacity,
            max_bytes,
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Items waiting, readable without the lock (a room checks it after every broadcast).
    len: AtomicUsize,
    /// Their total weight. Changed only under the lock, read without it.
    bytes: AtomicUsize,
}

struct State<T> {
    items: VecDeque<T>,
    /// The receiver's waker while it waits for an item.
    waker: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

impl<T> Shared<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        // Nothing can panic while the lock is held except an allocation failure; the state is
        // consistent at every point anyway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why [`Sender::try_send`] failed; the item is handed back.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The queue holds `capacity` items, or the item would take it past `max_bytes`.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// Why [`Receiver::try_recv`] returned nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum TryRecvError {
    Empty,
    /// Empty, and the sender is gone.
    Disconnected,
}

/// The room's end of a member's queue.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
    capacity: usize,
    max_bytes: usize,
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("len", &self.shared.len.load(Ordering::Relaxed))
            .field("capacity", &self.capacity)
            .field("bytes", &self.shared.bytes.load(Ordering::Relaxed))
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl<T: Weigh> Sender<T> {
    /// Queues `item` unless the queue is full (in items or in bytes) or the receiver is gone;
    /// never waits.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let waker = {
            let mut state = self.shared.state();
            if state.receiver_gone {
                return Err(TrySendError::Closed(item));
            }
            let bytes = self
                .shared
                .bytes
                .load(Ordering::Relaxed)
                .saturating_add(item.weight());
            if state.items.len() >= self.capacity
                || (!state.items.is_empty() && bytes > self.max_bytes)
            {
                return Err(TrySendError::Full(item));
            }
            state.items.push_back(item);
            self.shared.len.store(state.items.len(), Ordering::Relaxed);
            self.shared.bytes.store(bytes, Ordering::Relaxed);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Free slots: `capacity` less the items waiting.
    pub fn capacity(&self) -> usize {
        self.capacity
            .saturating_sub(self.shared.len.load(Ordering::Relaxed))
    }

    /// The weight of the items waiting.
    pub fn queued_bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Relaxed)
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.state();
            state.sender_gone = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The session's end of its queue.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("len", &self.shared.len.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T: Weigh> Receiver<T> {
    /// The next item; `None` once the queue is empty and the sender gone. Cancel safe.
    pub async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next item, registering the task's waker while the queue is empty.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.state();
        if let Some(item) = self.pop(&mut state) {
            return Poll::Ready(Some(item));
        }
        if state.sender_gone {
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The next item if one is waiting.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.shared.state();
        match self.pop(&mut state) {
            Some(item) => Ok(item),
            None if state.sender_gone => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    fn pop(&self, state: &mut State<T>) -> Option<T> {
        let item = state.items.pop_front()?;
        self.shared.len.store(state.items.len(), Ordering::Relaxed);
        let bytes = self.shared.bytes.load(Ordering::Relaxed);
        self.shared
            .bytes
            .store(bytes.saturating_sub(item.weight()), Ordering::Relaxed);
        if state.items.is_empty() && state.items.capacity() > RETAINED_SLOTS {
            state.items = VecDeque::new();
        }
        Some(item)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut state = self.shared.state();
            state.receiver_gone = true;
            state.waker = None;
            self.shared.len.store(0, Ordering::Relaxed);
            self.shared.bytes.store(0, Ordering::Relaxed);
            std::mem::take(&mut state.items)
        };
        // Dropped outside the lock: items may be anything.
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::task::Wake;

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// The item tests count items only.
    impl Weigh for i32 {
        fn weight(&self) -> usize {
            0
        }
    }

    impl Weigh for Arc<()> {
        fn weight(&self) -> usize {
            0
        }
    }

    fn frame(len: usize) -> bytes::Bytes {
        bytes::Bytes::from(vec![0; len])
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let (tx, mut rx) = channel(100, 10);
        tx.try_send(frame(4)).unwrap();
        tx.try_send(frame(6)).unwrap();
        assert_eq!(tx.queued_bytes(), 10);
        assert!(matches!(tx.try_send(frame(1)), Err(TrySendError::Full(_))));
        assert_eq!(tx.capacity(), 98, "two items wait");
        assert_eq!(rx.try_recv().unwrap().len(), 4);
        assert_eq!(tx.queued_bytes(), 6);
        tx.try_send(frame(4)).unwrap();
        assert!(matches!(tx.try_send(frame(1)), Err(TrySendError::Full(_))));
        while rx.try_recv().is_ok() {}
        assert_eq!(tx.queued_bytes(), 0);
    }

    #[test]
    fn an_item_heavier_than_the_byte_bound_fits_an_empty_queue_only() {
        let (tx, mut rx) = channel(100, 10);
        tx.try_send(frame(1)).unwrap();
        assert!(matches!(tx.try_send(frame(50)), Err(TrySendError::Full(_))));
        rx.try_recv().unwrap();
        tx.try_send(frame(50)).unwrap();
        assert_eq!(tx.queued_bytes(), 50);
        // Nothing more until it is received.
        assert!(matches!(tx.try_send(frame(1)), Err(TrySendError::Full(_))));
        assert_eq!(rx.try_recv().unwrap().len(), 50);
        tx.try_send(frame(1)).unwrap();
        drop(rx);
        assert_eq!(tx.queued_bytes(), 0, "a dropped receiver holds nothing");
    }

    fn flag() -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        (flag.clone(), Waker::from(flag))
    }

    #[test]
    fn items_arrive_in_order_up_to_the_capacity() {
        let (tx, mut rx) = channel(3, usize::MAX);
        assert_eq!(tx.capacity(), 3);
        for i in 0..3 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(tx.capacity(), 0);
        assert_eq!(tx.try_send(9), Err(TrySendError::Full(9)));
        assert_eq!(rx.try_recv(), Ok(0));
        assert_eq!(tx.capacity(), 1);
        tx.try_send(3).unwrap();
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Ok(3));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(tx.capacity(), 3);
    }

    #[test]
    fn a_waiting_receiver_is_woken_by_a_send_and_by_the_senders_drop() {
        let (tx, mut rx) = channel(4, usize::MAX);
        let (woken, waker) = flag();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        tx.try_send(7).unwrap();
        assert!(woken.0.swap(false, Ordering::SeqCst));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(7)));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        tx.try_send(8).unwrap();
        drop(tx);
        assert!(woken.0.load(Ordering::SeqCst));
        // Everything queued still arrives before the end.
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(8)));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(None));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn sending_to_a_dropped_receiver_fails_and_drops_what_waited() {
        let (tx, rx) = channel(4, usize::MAX);
        let item = Arc::new(());
        tx.try_send(item.clone()).unwrap();
        drop(rx);
        assert_eq!(Arc::strong_count(&item), 1, "queued items are dropped");
        assert!(matches!(tx.try_send(item), Err(TrySendError::Closed(_))));
        assert_eq!(tx.capacity(), 4);
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let (tx, mut rx) = channel(4096, usize::MAX);
        for i in 0..1000 {
            tx.try_send(i).unwrap();
        }
        while rx.try_recv().is_ok() {}
        assert_eq!(rx.shared.state().items.capacity(), 0);
        // A trickle keeps its few slots.
        tx.try_send(1).unwrap();
        rx.try_recv().unwrap();
        assert!(rx.shared.state().items.capacity() > 0);
    }

    #[tokio::test]
    async fn recv_waits_for_a_send_from_another_task() {
        let (tx, mut rx) = channel(1, usize::MAX);
        let sender = tokio::spawn(async move {
            for i in 0..100 {
                loop {
                    match tx.try_send(i) {
                        Ok(()) => break,
                        Err(TrySendError::Full(_)) => tokio::task::yield_now().await,
                        Err(TrySendError::Closed(_)) => panic!("receiver gone"),
                    }
                }
            }
        });
        for i in 0..100 {
            assert_eq!(rx.recv().await, Some(i));
        }
        sender.await.unwrap();
        assert_eq!(rx.recv().await, None);
    }
}
