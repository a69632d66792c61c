//! Per-submitter submit rate (`coordinator.limits.submits_per_minute`): a token bucket per
//! owner (the token's name; one shared bucket when auth is off), so one team's script in a
//! loop cannot crowd out the others (a retried submit counts too).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// One bucket per owner: `per_minute` submits of burst, refilled at `per_minute` a minute.
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_minute` = 0: no limit.
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one submit from `owner`'s bucket, or says how many seconds until one is free.
    pub fn take(&self, owner: &str, now: Instant) -> Result<(), f64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let cap = self.per_minute as f64;
        let rate = cap / 60.0;
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (level, last) = b.entry(owner.to_string()).or_insert((cap, now));
        *level = (*level + now.saturating_duration_since(*last).as_secs_f64() * rate).min(cap);
        *last = now;
        if *level >= 1.0 {
            *level -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *level) / rate)
        }
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_refill_rate_per_owner() {
        let r = RateLimiter::new(3);
        let t = Instant::now();
        for _ in 0..3 {
            assert!(r.take("a", t).is_ok());
        }
        let wait = r.take("a", t).unwrap_err();
        assert!((19.0..=20.5).contains(&wait), "{wait}");
        assert!(r.take("b", t).is_ok(), "another owner has its own bucket");
        assert!(r.take("a", t + Duration::from_secs(21)).is_ok(), "refilled");
        assert!(RateLimiter::new(0).take("a", t).is_ok());
    }
}
