//! Who the workers are and what they have been doing: registration facts
//! (kept in sled) and live statistics (in memory: frames/s, leases,
//! evictions) that the dashboard and the metrics show.

use std::collections::BTreeMap;

/// A registered worker (kept in sled's `workers` tree).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WorkerInfo {
    pub hostname: String,
    pub gpu: bool,
    pub threads: u32,
    pub last_seen_ms: u64,
    /// Model frames/s at 640x360 measured by the worker at start-up (0 = unknown).
    #[serde(default)]
    pub model_fps: f64,
}

/// What a worker did since this coordinator started.
#[derive(Debug, Clone, Default)]
pub struct WorkerStats {
    /// Frames per second, smoothed over recent heartbeats.
    pub fps: f64,
    pub frames_committed: u64,
    pub leases: u64,
    /// Leases it gave back because of an eviction notice or a drain.
    pub evictions: u64,
    /// It gave a lease back and has not leased since.
    pub draining: bool,
    /// (time, lease, frames done) of the last heartbeat, to measure the rate.
    last_beat: Option<(u64, String, u64)>,
}

/// How a worker appears on the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    Busy,
    Idle,
    Draining,
    Lost,
}

impl Activity {
    pub fn name(self) -> &'static str {
        match self {
            Activity::Busy => "busy",
            Activity::Idle => "idle",
            Activity::Draining => "draining",
            Activity::Lost => "lost",
        }
    }
}

/// Smoothing of the per-worker rate: the weight of the newest heartbeat.
const ALPHA: f64 = 0.4;

/// Every worker the coordinator knows, with its statistics.
#[derive(Debug, Default)]
pub struct Workers {
    pub info: BTreeMap<String, WorkerInfo>,
    pub stats: BTreeMap<String, WorkerStats>,
}

impl Workers {
    pub fn new(info: impl IntoIterator<Item = (String, WorkerInfo)>) -> Self {
        Workers {
            info: info.into_iter().collect(),
            stats: BTreeMap::new(),
        }
    }

    fn stats(&mut self, id: &str) -> &mut WorkerStats {
        self.stats.entry(id.to_string()).or_default()
    }

    /// Notes that a worker was heard from (for the workers table).
    pub fn touch(&mut self, id: &str, now: u64) {
        if let Some(w) = self.info.get_mut(id) {
            w.last_seen_ms = now;
        }
    }

    pub fn leased(&mut self, id: &str) {
        let s = self.stats(id);
        s.leases += 1;
        s.draining = false;
    }

    /// A heartbeat with the frames done under `lease` so far: updates the smoothed rate.
    pub fn heartbeat(&mut self, id: &str, lease: &str, frames_done: u64, now: u64) {
        let s = self.stats(id);
        if let Some((t, l, f)) = &s.last_beat {
            if l == lease && now > *t && frames_done >= *f {
                let rate = (frames_done - f) as f64 * 1000.0 / (now - t) as f64;
                s.fps = if s.fps == 0.0 {
                    rate
                } else {
                    ALPHA * rate + (1.0 - ALPHA) * s.fps
                };
            }
        }
        s.last_beat = Some((now, lease.to_string(), frames_done));
    }

    pub fn committed(&mut self, id: &str, frames: u64) {
        self.stats(id).frames_committed += frames;
    }

    pub fn released(&mut self, id: &str) {
        let s = self.stats(id);
        s.evictions += 1;
        s.draining = true;
        s.fps = 0.0;
        s.last_beat = None;
    }

    /// A worker without a lease is not producing frames.
    pub fn idle(&mut self, id: &str) {
        if let Some(s) = self.stats.get_mut(id) {
            s.fps = 0.0;
            s.last_beat = None;
        }
    }

    /// Busy, idle, draining or lost (not heard from within one lease TTL).
    pub fn activity(&self, id: &str, has_lease: bool, now: u64, ttl_ms: u64) -> Activity {
        let seen = self.info.get(id).map(|w| w.last_seen_ms).unwrap_or(0);
        if now.saturating_sub(seen) > ttl_ms {
            Activity::Lost
        } else if has_lease {
            Activity::Busy
        } else if self.stats.get(id).is_some_and(|s| s.draining) {
            Activity::Draining
        } else {
            Activity::Idle
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one() -> Workers {
        Workers::new([(
            "w1".to_string(),
            WorkerInfo {
                hostname: "h".into(),
                gpu: false,
                threads: 2,
                last_seen_ms: 1_000,
                model_fps: 0.0,
            },
        )])
    }

    #[test]
    fn rate_comes_from_heartbeats_of_one_lease() {
        let mut w = one();
        w.heartbeat("w1", "l1", 0, 1_000);
        w.heartbeat("w1", "l1", 10, 3_000);
        assert!((w.stats["w1"].fps - 5.0).abs() < 1e-9);
        w.heartbeat("w1", "l1", 30, 5_000);
        // 10 fps smoothed with 5 fps
        assert!((w.stats["w1"].fps - (0.4 * 10.0 + 0.6 * 5.0)).abs() < 1e-9);
        // A new lease restarts the measurement instead of mixing counters.
        w.heartbeat("w1", "l2", 2, 6_000);
        assert!((w.stats["w1"].fps - 7.0).abs() < 1e-9);
    }

    #[test]
    fn activity_from_lease_release_and_silence() {
        let mut w = one();
        assert_eq!(w.activity("w1", false, 1_500, 1_000), Activity::Idle);
        assert_eq!(w.activity("w1", true, 1_500, 1_000), Activity::Busy);
        w.released("w1");
        assert_eq!(w.activity("w1", false, 1_500, 1_000), Activity::Draining);
        w.leased("w1");
        assert_eq!(w.activity("w1", false, 1_500, 1_000), Activity::Idle);
        assert_eq!(w.activity("w1", true, 2_001, 1_000), Activity::Lost);
        assert_eq!(w.stats["w1"].evictions, 1);
        assert_eq!(w.stats["w1"].leases, 1);
    }
}
