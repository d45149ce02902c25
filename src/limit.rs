//! Rate limits: a token bucket, the budgets one connection's messages are metered against,
//! and a per-IP table of buckets for connection attempts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Seconds' worth of rate a bucket holds: bursts up to this long are allowed.
pub const BURST_SECONDS: f64 = 5.0;

/// Most clients (addresses or users) tracked; beyond it, buckets that have refilled completely are dropped
/// (they carry no information), and if none has, the table is cleared: a flood from more
/// addresses than this is not something a per-IP limit can stop anyway.
pub const MAX_TRACKED_CLIENTS: usize = 65_536;

/// A token bucket: `rate` tokens per second, holding at most `rate × BURST_SECONDS`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_sec: u64) -> Self {
        let rate = rate_per_sec as f64;
        let capacity = (rate * BURST_SECONDS).max(1.0);
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.refill(Instant::now());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket holds anything (is not in debt). For work whose cost is known only
    /// once done (the size of a reply): check before, [`TokenBucket::spend`] after. One piece
    /// of work of any size passes when the bucket is not in debt, so a reply larger than the
    /// whole burst (a big document's first sync) is never refused; the debt then delays the
    /// next.
    pub fn has_credit(&mut self) -> bool {
        self.refill(Instant::now());
        self.tokens > 0.0
    }

    /// Takes `cost` tokens, going into debt if there are not enough.
    pub fn spend(&mut self, cost: u64) {
        self.tokens -= cost as f64;
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }
}

/// What one connection may ask of the server per second, per message kind, each with a burst of
/// [`BURST_SECONDS`]' worth. Going over any of them closes the connection (1008); each refusal
/// is counted in `ycord_limit_hits_total`. The defaults are far above what Yjs clients send
/// (y-websocket sends one SyncStep1 per connect and resync, and an awareness update every 15 s
/// plus one per cursor move), and far below what a hostile client could make the server do
/// without them: every SyncStep1 with a non-empty state vector costs an encode of the
/// document, every QueryAwareness an encode of every presence state in the room, every
/// awareness update a broadcast to every member.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MessageBudgets {
    /// Document updates (Update and SyncStep2 messages); `--max-updates-per-sec`.
    pub updates_per_sec: u64,
    /// SyncStep1 messages.
    pub sync_requests_per_sec: u64,
    /// QueryAwareness messages.
    pub awareness_queries_per_sec: u64,
    /// Awareness updates.
    pub awareness_per_sec: u64,
    /// Bytes of awareness updates.
    pub awareness_bytes_per_sec: u64,
    /// Bytes of the replies to SyncStep1 and QueryAwareness messages (what their encoding
    /// cost). Checked before each reply is made and charged after (see
    /// [`TokenBucket::has_credit`]).
    pub reply_bytes_per_sec: u64,
    /// Stateless messages (Hocuspocus), each relayed to the document's other connections.
    pub stateless_per_sec: u64,
    /// Bytes of stateless messages.
    pub stateless_bytes_per_sec: u64,
}

/// Default [`MessageBudgets::sync_requests_per_sec`].
pub const SYNC_REQUESTS_PER_SEC: u64 = 10;
/// Default [`MessageBudgets::awareness_queries_per_sec`].
pub const AWARENESS_QUERIES_PER_SEC: u64 = 10;
/// Default [`MessageBudgets::awareness_per_sec`].
pub const AWARENESS_PER_SEC: u64 = 100;
/// Default [`MessageBudgets::awareness_bytes_per_sec`].
pub const AWARENESS_BYTES_PER_SEC: u64 = 1 << 20;
/// Default [`MessageBudgets::stateless_per_sec`]: as for awareness, the other volatile lane.
pub const STATELESS_PER_SEC: u64 = 100;
/// Default [`MessageBudgets::stateless_bytes_per_sec`].
pub const STATELESS_BYTES_PER_SEC: u64 = 1 << 20;
/// Default [`MessageBudgets::reply_bytes_per_sec`].
pub const REPLY_BYTES_PER_SEC: u64 = 16 << 20;

impl MessageBudgets {
    /// The default budgets, with `updates_per_sec` for document updates.
    pub fn with_update_rate(updates_per_sec: u64) -> MessageBudgets {
        MessageBudgets {
            updates_per_sec,
            sync_requests_per_sec: SYNC_REQUESTS_PER_SEC,
            awareness_queries_per_sec: AWARENESS_QUERIES_PER_SEC,
            awareness_per_sec: AWARENESS_PER_SEC,
            awareness_bytes_per_sec: AWARENESS_BYTES_PER_SEC,
            reply_bytes_per_sec: REPLY_BYTES_PER_SEC,
            stateless_per_sec: STATELESS_PER_SEC,
            stateless_bytes_per_sec: STATELESS_BYTES_PER_SEC,
        }
    }

    /// No limit on anything, for the fuzzer (whose cases must not depend on timing).
    pub fn unlimited() -> MessageBudgets {
        MessageBudgets {
            updates_per_sec: u64::MAX,
            sync_requests_per_sec: u64::MAX,
            awareness_queries_per_sec: u64::MAX,
            awareness_per_sec: u64::MAX,
            awareness_bytes_per_sec: u64::MAX,
            reply_bytes_per_sec: u64::MAX,
            stateless_per_sec: u64::MAX,
            stateless_bytes_per_sec: u64::MAX,
        }
    }
}

/// Connection attempts per client: its address, or behind HaRP (where every client arrives
/// from the same proxy) its Nextcloud user.
#[derive(Debug)]
pub struct ConnectRateLimiter {
    rate_per_sec: u64,
    buckets: Mutex<HashMap<ClientKey, TokenBucket>>,
}

/// Who a connect rate is counted for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Address(IpAddr),
    NextcloudUser(String),
}

impl ConnectRateLimiter {
    pub fn new(rate_per_sec: u64) -> Self {
        ConnectRateLimiter {
            rate_per_sec,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `client` may open another connection now.
    pub fn allow(&self, client: ClientKey) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED_CLIENTS && !buckets.contains_key(&client) {
            let now = Instant::now();
            buckets.retain(|_, bucket| !bucket.is_full(now));
            if buckets.len() >= MAX_TRACKED_CLIENTS {
                buckets.clear();
            }
        }
        buckets
            .entry(client)
            .or_insert_with(|| TokenBucket::new(self.rate_per_sec))
            .try_take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses() {
        let mut bucket = TokenBucket::new(2);
        let allowed = (0..100).filter(|_| bucket.try_take()).count();
        // 2/s × 5 s burst; the loop is far quicker than a refill.
        assert_eq!(allowed, 10);
    }

    #[test]
    fn a_bucket_in_debt_refuses_until_it_refills() {
        let mut bucket = TokenBucket::new(100);
        assert!(bucket.has_credit());
        // One piece of work far larger than the burst (500) passes...
        bucket.spend(10_000);
        // ...and the next waits until the debt is paid (about 95 s at this rate).
        assert!(!bucket.has_credit());
        assert!(!bucket.try_take());
    }

    #[test]
    fn addresses_have_separate_buckets() {
        let limiter = ConnectRateLimiter::new(1);
        let a = ClientKey::Address("127.0.0.1".parse().unwrap());
        let b = ClientKey::Address("127.0.0.2".parse().unwrap());
        let alice = ClientKey::NextcloudUser("alice".into());
        assert_eq!((0..10).filter(|_| limiter.allow(a.clone())).count(), 5);
        assert!(limiter.allow(b));
        assert_eq!((0..10).filter(|_| limiter.allow(alice.clone())).count(), 5);
    }
}
