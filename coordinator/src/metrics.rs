//! Prometheus metrics: counters the handlers bump as things happen, gauges the
//! JobManager refreshes every tick, rendered in the text format at /metrics.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the coordinator exports, registered in its own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub jobs: IntGaugeVec,
    pub tasks: IntGaugeVec,
    pub workers: IntGaugeVec,
    pub leases_granted: IntCounter,
    pub leases_expired: IntCounter,
    pub evictions: IntCounter,
    pub wasted_frames: IntCounter,
    pub frames_committed: IntCounter,
    pub frames_per_second: Gauge,
    pub queue_frames: IntGauge,
    pub lease_latency: Histogram,
    /// The writer thread's turns (write + fsync): every durable reply waits for one or two.
    pub state_write: Histogram,
    /// The JobManager's own time per message kind: a slow handler delays every call behind it.
    pub actor_handle: HistogramVec,
    /// How long a LeaseTask waited in the JobManager's mailbox before it was handled.
    pub lease_queue: Histogram,
    /// Workers the autoscaler wants now, and the live ones its backend runs.
    pub autoscaler_desired: IntGauge,
    pub autoscaler_current: IntGauge,
    /// Autoscaler decisions by direction (up, down, hold), one per look at the queue.
    pub autoscaler_decisions: IntCounterVec,
}

fn must<T>(r: Result<T, prometheus::Error>) -> T {
    // Names and labels below are constants; a failure here is a programming error caught by the unit test.
    match r {
        Ok(v) => v,
        Err(e) => panic!("metric definition: {e}"),
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let jobs = must(IntGaugeVec::new(
            Opts::new("framewise_jobs", "Jobs by state"),
            &["state"],
        ));
        let tasks = must(IntGaugeVec::new(
            Opts::new("framewise_tasks", "Tasks of active jobs by state"),
            &["state"],
        ));
        let workers = must(IntGaugeVec::new(
            Opts::new("framewise_workers", "Known workers by activity"),
            &["state"],
        ));
        let counter = |name: &str, help: &str| must(IntCounter::new(name, help));
        let leases_granted = counter("framewise_leases_granted_total", "Leases handed out");
        let leases_expired = counter(
            "framewise_leases_expired_total",
            "Leases lost because their worker stopped renewing them",
        );
        let evictions = counter(
            "framewise_evictions_total",
            "Leases given back by workers on an eviction notice or drain",
        );
        let wasted_frames = counter(
            "framewise_wasted_frames_total",
            "Frames computed by lost or released attempts but never committed",
        );
        let frames_committed = counter(
            "framewise_frames_committed_total",
            "Frames committed in chunk checkpoints",
        );
        let frames_per_second = must(Gauge::new(
            "framewise_frames_per_second",
            "Cluster throughput over the last 20 s",
        ));
        let queue_frames = must(IntGauge::new(
            "framewise_queue_frames",
            "Frames of active jobs not yet done",
        ));
        // Half a millisecond to two seconds: where the coordinator's calls land.
        let latency = |name: &str, help: &str| {
            must(Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
                ]),
            ))
        };
        let lease_latency = latency(
            "framewise_lease_latency_seconds",
            "Time to answer a LeaseTask request, including the durable write",
        );
        let state_write = latency(
            "framewise_state_write_seconds",
            "Time to write and flush one turn of coordinator state changes",
        );
        let actor_handle = must(HistogramVec::new(
            HistogramOpts::new(
                "framewise_actor_handle_seconds",
                "Time the JobManager spends handling one message, by kind",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
            ]),
            &["message"],
        ));
        let lease_queue = latency(
            "framewise_lease_queue_seconds",
            "Time a LeaseTask waits in the JobManager's mailbox",
        );
        let autoscaler_desired = must(IntGauge::new(
            "framewise_autoscaler_desired_workers",
            "Workers the autoscaler wants for the current queue",
        ));
        let autoscaler_current = must(IntGauge::new(
            "framewise_autoscaler_current_workers",
            "Live workers the autoscaler's backend runs (draining ones excluded)",
        ));
        let autoscaler_decisions = must(IntCounterVec::new(
            Opts::new(
                "framewise_autoscaler_decisions_total",
                "Autoscaler decisions by direction",
            ),
            &["direction"],
        ));
        for d in ["up", "down", "hold"] {
            autoscaler_decisions.with_label_values(&[d]);
        }
        for c in [
            Box::new(jobs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(tasks.clone()),
            Box::new(workers.clone()),
            Box::new(leases_granted.clone()),
            Box::new(leases_expired.clone()),
            Box::new(evictions.clone()),
            Box::new(wasted_frames.clone()),
            Box::new(frames_committed.clone()),
            Box::new(frames_per_second.clone()),
            Box::new(queue_frames.clone()),
            Box::new(lease_latency.clone()),
            Box::new(state_write.clone()),
            Box::new(actor_handle.clone()),
            Box::new(lease_queue.clone()),
            Box::new(autoscaler_desired.clone()),
            Box::new(autoscaler_current.clone()),
            Box::new(autoscaler_decisions.clone()),
        ] {
            must(registry.register(c));
        }
        Metrics {
            registry,
            jobs,
            tasks,
            workers,
            leases_granted,
            leases_expired,
            evictions,
            wasted_frames,
            frames_committed,
            frames_per_second,
            queue_frames,
            lease_latency,
            state_write,
            actor_handle,
            lease_queue,
            autoscaler_desired,
            autoscaler_current,
            autoscaler_decisions,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding metrics failed: {e}\n");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        m.jobs.with_label_values(&["running"]).set(2);
        m.leases_granted.inc();
        m.lease_latency.observe(0.003);
        let text = m.render();
        for name in [
            "framewise_jobs{state=\"running\"} 2",
            "framewise_leases_granted_total 1",
            "framewise_lease_latency_seconds_bucket{le=\"0.005\"} 1",
            "framewise_queue_frames 0",
            "framewise_wasted_frames_total 0",
            "framewise_autoscaler_desired_workers 0",
            "framewise_autoscaler_current_workers 0",
            "framewise_autoscaler_decisions_total{direction=\"up\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
