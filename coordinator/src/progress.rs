//! Rates over time: each job's frames/s and ETA from samples of its progress,
//! and the whole cluster's throughput history for the dashboard's chart.

use std::collections::{BTreeMap, VecDeque};

/// Seconds of samples a job's rate is measured over.
const WINDOW_MS: u64 = 20_000;
/// Points kept for the throughput chart (one per tick: ten minutes at 1 s).
const HISTORY: usize = 600;

/// Progress samples per job and the cluster throughput series.
#[derive(Debug, Default)]
pub struct Progress {
    jobs: BTreeMap<String, VecDeque<(u64, u64)>>,
    history: VecDeque<(u64, f64)>,
}

impl Progress {
    /// Records a job's frames done at `now`; rates come from the oldest sample in the window.
    pub fn sample(&mut self, job: &str, now: u64, frames_done: u64) {
        let q = self.jobs.entry(job.to_string()).or_default();
        // A restarted attempt can report fewer frames than before: restart the window.
        if q.back().is_some_and(|&(_, f)| frames_done < f) {
            q.clear();
        }
        q.push_back((now, frames_done));
        while q.len() > 2 && q.front().is_some_and(|&(t, _)| now - t > WINDOW_MS) {
            q.pop_front();
        }
    }

    /// Forgets every job `running` does not name (finished ones).
    pub fn retain(&mut self, running: impl Fn(&str) -> bool) {
        self.jobs.retain(|id, _| running(id));
    }

    /// Frames per second over the window (0 with fewer than two samples).
    pub fn rate(&self, job: &str) -> f64 {
        let Some(q) = self.jobs.get(job) else {
            return 0.0;
        };
        match (q.front(), q.back()) {
            (Some(&(t0, f0)), Some(&(t1, f1))) if t1 > t0 => {
                (f1 - f0) as f64 * 1000.0 / (t1 - t0) as f64
            }
            _ => 0.0,
        }
    }

    /// Seconds left at the current rate; None when nothing is moving or the size is unknown.
    pub fn eta_s(&self, job: &str, done: u64, total: u64) -> Option<f64> {
        let r = self.rate(job);
        (total > 0 && r > 0.0).then(|| total.saturating_sub(done) as f64 / r)
    }

    /// Appends one point of cluster throughput to the chart's history.
    pub fn record_total(&mut self, now: u64, fps: f64) {
        self.history.push_back((now, fps));
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    pub fn history(&self) -> impl Iterator<Item = &(u64, f64)> {
        self.history.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_over_the_window() {
        let mut p = Progress::default();
        assert_eq!(p.rate("j"), 0.0);
        assert_eq!(p.eta_s("j", 0, 100), None);
        p.sample("j", 0, 0);
        p.sample("j", 1_000, 4);
        p.sample("j", 2_000, 10);
        assert!((p.rate("j") - 5.0).abs() < 1e-9);
        assert_eq!(p.eta_s("j", 10, 110), Some(20.0));
        // Old samples leave the window.
        p.sample("j", 30_000, 150);
        p.sample("j", 31_000, 160);
        assert!((p.rate("j") - 10.0).abs() < 1e-9);
        // Unknown size: no ETA.
        assert_eq!(p.eta_s("j", 10, 0), None);
        // Progress going backwards restarts the window rather than reporting a negative rate.
        p.sample("j", 32_000, 100);
        assert_eq!(p.rate("j"), 0.0);
        p.retain(|_| false);
        assert_eq!(p.rate("j"), 0.0);
    }

    #[test]
    fn history_is_bounded() {
        let mut p = Progress::default();
        for i in 0..(HISTORY as u64 + 50) {
            p.record_total(i, 1.0);
        }
        assert_eq!(p.history().count(), HISTORY);
        assert_eq!(p.history().next().map(|h| h.0), Some(50));
    }
}
