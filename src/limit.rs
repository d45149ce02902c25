//! Rate limits: a token bucket, and a per-IP table of them for connection attempts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Seconds' worth of rate a bucket holds: bursts up to this long are allowed.
pub const BURST_SECONDS: f64 = 5.0;

/// Most IP addresses tracked; beyond it, buckets that have refilled completely are dropped
/// (they carry no information), and if none has, the table is cleared: a flood from more
/// addresses than this is not something a per-IP limit can stop anyway.
pub const MAX_TRACKED_IPS: usize = 65_536;

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

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }
}

/// Connection attempts per IP address.
#[derive(Debug)]
pub struct IpRateLimiter {
    rate_per_sec: u64,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl IpRateLimiter {
    pub fn new(rate_per_sec: u64) -> Self {
        IpRateLimiter {
            rate_per_sec,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` may open another connection now.
    pub fn allow(&self, ip: IpAddr) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED_IPS && !buckets.contains_key(&ip) {
            let now = Instant::now();
            buckets.retain(|_, bucket| !bucket.is_full(now));
            if buckets.len() >= MAX_TRACKED_IPS {
                buckets.clear();
            }
        }
        buckets
            .entry(ip)
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
    fn addresses_have_separate_buckets() {
        let limiter = IpRateLimiter::new(1);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!((0..10).filter(|_| limiter.allow(a)).count(), 5);
        assert!(limiter.allow(b));
    }
}
