//! Webhooks: a signed POST to `--webhook-url` when a room is loaded, changes or is unloaded.
//!
//! Change events are debounced per room: sent once the room has been quiet for
//! [`CHANGE_QUIET`], and at the latest [`CHANGE_MAX_DELAY`] after the first unsent change.
//! Nothing here ever blocks a room: rooms hand events over with `try_send` on a bounded queue,
//! deliveries run on their own tasks with a bounded number in flight, and whatever does not
//! fit is dropped and counted (`ycord_webhook_events_dropped_total`). Failed deliveries are
//! retried with exponential backoff.
//!
//! The body is JSON `{"room", "event", "timestamp_ms", ...}`; the header
//! `X-Ycord-Signature-256: sha256=<hex>` is the HMAC-SHA256 of the body under
//! `--webhook-secret`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::room::{ChangeHandle, ChangeObserver};

/// A room's change is sent once it has been quiet this long…
pub const CHANGE_QUIET: Duration = Duration::from_secs(2);
/// …or this long after its first unsent change, whichever comes first.
pub const CHANGE_MAX_DELAY: Duration = Duration::from_secs(10);
/// Capacity of the event queue between rooms and the dispatcher. Overflow: dropped, counted.
pub const EVENT_QUEUE_CAPACITY: usize = 4096;
/// Deliveries in flight at once; events beyond wait in the dispatcher's backlog.
pub const MAX_IN_FLIGHT: usize = 16;
/// Most deliveries waiting for a free slot. Overflow: dropped, counted.
pub const BACKLOG_CAPACITY: usize = 4096;
/// Attempts per delivery (the first plus retries), with backoff doubling from one second.
pub const ATTEMPTS: u32 = 5;
/// Time limit of one HTTP attempt.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Name of the signature header.
pub const SIGNATURE_HEADER: &str = "X-Ycord-Signature-256";

const TICK: Duration = Duration::from_millis(250);

/// What happened to a room.
#[derive(Debug)]
pub enum Event {
    Loaded(Arc<str>),
    Changed(Arc<str>, Arc<ChangeHandle>),
    Unloaded(Arc<str>),
}

/// The rooms' side of the webhooks: a bounded queue to the dispatcher.
#[derive(Debug, Clone)]
pub struct Webhooks {
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
}

impl Webhooks {
    /// Starts the dispatcher. It stops when `shutdown` fires, after sending pending changes.
    pub fn start(
        url: String,
        secret: Option<String>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Webhooks {
        let (events, receiver) = mpsc::channel(EVENT_QUEUE_CAPACITY);
        let dispatcher = Dispatcher {
            url,
            secret,
            client: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
            metrics: metrics.clone(),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            backlog: std::collections::VecDeque::new(),
            pending: HashMap::new(),
        };
        tokio::spawn(dispatcher.run(receiver, shutdown));
        Webhooks { events, metrics }
    }

    /// Hands an event to the dispatcher; returns false if it was dropped (queue full).
    fn send(&self, event: Event) -> bool {
        if self.events.try_send(event).is_err() {
            self.metrics.webhook_events_dropped.inc();
            return false;
        }
        true
    }

    pub fn loaded(&self, room: &Arc<str>) {
        self.send(Event::Loaded(room.clone()));
    }

    pub fn unloaded(&self, room: &Arc<str>) {
        self.send(Event::Unloaded(room.clone()));
    }
}

impl ChangeObserver for Webhooks {
    /// Notes a change; cheap when a change of this room is already pending. If the event is
    /// dropped, nothing is pending: the mark is cleared so that the next change tries again
    /// (left set, it would silence the room's `changed` events for good).
    fn changed(&self, room: &Arc<str>, changes: &Arc<ChangeHandle>, _delta: &bytes::Bytes) {
        if !changes.mark_notice_pending()
            && !self.send(Event::Changed(room.clone(), changes.clone()))
        {
            changes.clear_notice_pending();
        }
    }
}

struct PendingChange {
    room: Arc<str>,
    changes: Arc<ChangeHandle>,
    first: Instant,
}

struct Dispatcher {
    url: String,
    secret: Option<String>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    slots: Arc<Semaphore>,
    backlog: std::collections::VecDeque<Vec<u8>>,
    pending: HashMap<Arc<str>, PendingChange>,
}

impl Dispatcher {
    async fn run(mut self, mut events: mpsc::Receiver<Event>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.accept(event),
                    None => break,
                },
                _ = tick.tick() => self.due_changes(false),
                _ = shutdown.cancelled() => break,
            }
            self.start_deliveries();
        }
        while let Ok(event) = events.try_recv() {
            self.accept(event);
        }
        self.due_changes(true);
        self.start_deliveries();
    }

    fn accept(&mut self, event: Event) {
        match event {
            Event::Loaded(room) => self.queue(body(&room, "loaded", None)),
            Event::Unloaded(room) => {
                // A change still waiting for its quiet period goes out before the unload.
                if let Some(change) = self.pending.remove(&room) {
                    self.queue_change(change);
                }
                self.queue(body(&room, "unloaded", None));
            }
            Event::Changed(room, changes) => {
                self.pending
                    .entry(room.clone())
                    .or_insert_with(|| PendingChange {
                        room,
                        changes,
                        first: Instant::now(),
                    });
            }
        }
    }

    /// Queues the changes that are due (or all of them, at shutdown).
    fn due_changes(&mut self, all: bool) {
        let now = Instant::now();
        let due: Vec<Arc<str>> = self
            .pending
            .iter()
            .filter(|(_, change)| {
                all || now.duration_since(change.first) >= CHANGE_MAX_DELAY
                    || change.changes.quiet_for() >= CHANGE_QUIET
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            if let Some(change) = self.pending.remove(&name) {
                self.queue_change(change);
            }
        }
    }

    fn queue_change(&mut self, change: PendingChange) {
        // Cleared first: a change after this point marks it again and queues a new event.
        change.changes.clear_notice_pending();
        let last_change_ms = change.changes.last_change_ms();
        self.queue(body(&change.room, "changed", Some(last_change_ms)));
    }

    fn queue(&mut self, body: Vec<u8>) {
        if self.backlog.len() >= BACKLOG_CAPACITY {
            self.metrics.webhook_events_dropped.inc();
            return;
        }
        self.backlog.push_back(body);
    }

    fn start_deliveries(&mut self) {
        while !self.backlog.is_empty() {
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                return;
            };
            let Some(body) = self.backlog.pop_front() else {
                return;
            };
            let request = self.request(body);
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                deliver(request, &metrics).await;
                drop(slot);
            });
        }
    }

    fn request(&self, body: Vec<u8>) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json");
        if let Some(secret) = &self.secret {
            request = request.header(SIGNATURE_HEADER, signature(secret.as_bytes(), &body));
        }
        request.body(body)
    }
}

async fn deliver(request: reqwest::RequestBuilder, metrics: &Metrics) {
    let mut backoff = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        let Some(attempt_request) = request.try_clone() else {
            return;
        };
        match attempt_request.send().await {
            Ok(response) if response.status().is_success() => {
                metrics.webhooks_sent.inc();
                return;
            }
            Ok(response) => {
                tracing::warn!(status = %response.status(), attempt, "webhook refused");
            }
            Err(error) => tracing::warn!(%error, attempt, "webhook delivery failed"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    metrics.webhooks_failed.inc();
}

fn body(room: &str, event: &str, last_change_ms: Option<u64>) -> Vec<u8> {
    let timestamp_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64);
    let mut json = serde_json::json!({
        "room": room,
        "event": event,
        "timestamp_ms": timestamp_ms,
    });
    if let Some(last_change_ms) = last_change_ms {
        json["last_change_ms"] = last_change_ms.into();
    }
    json.to_string().into_bytes()
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change event dropped on a full queue leaves no change pending, so a later change of
    /// the room is queued again.
    #[tokio::test]
    async fn a_dropped_change_event_does_not_silence_the_room() {
        let metrics = Arc::new(Metrics::new());
        let (events, mut receiver) = mpsc::channel(1);
        let webhooks = Webhooks {
            events,
            metrics: metrics.clone(),
        };
        let room: Arc<str> = "room".into();
        let changes = Arc::new(ChangeHandle::default());
        let delta = bytes::Bytes::new();
        webhooks.loaded(&room);
        webhooks.changed(&room, &changes, &delta);
        assert_eq!(
            metrics.webhook_events_dropped.get(),
            1,
            "the queue was full"
        );
        assert!(matches!(receiver.try_recv(), Ok(Event::Loaded(_))));
        webhooks.changed(&room, &changes, &delta);
        assert!(
            matches!(receiver.try_recv(), Ok(Event::Changed(name, handle)) if name == room && Arc::ptr_eq(&handle, &changes)),
            "the change after the dropped one is queued"
        );
        // While that one is pending, further changes are not queued.
        webhooks.changed(&room, &changes, &delta);
        assert!(receiver.try_recv().is_err());
    }

    #[test]
    fn signature_matches_a_known_hmac() {
        // RFC 4231 test case 2.
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            format!("sha256={expected}")
        );
    }
}
