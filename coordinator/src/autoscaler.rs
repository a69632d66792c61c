//! The autoscaler (issue 8): every `interval_ms` it asks the JobManager how many frames are
//! left and how fast the workers go, decides how many workers the queue needs ([`decide`], a
//! plain function), and has a [`ScaleBackend`] start or stop workers.
//!
//! Scaling up happens at once; scaling down only after `idle_cooldown_ms` without need, and only
//! of workers that hold no lease: the JobManager first bars them from new leases
//! ([`manager::DrainWorkers`]), then the backend drains them (a local worker gets Ctrl-C, which
//! makes it finish what it holds and exit), so accepted work is never lost. Every decision is
//! kept in a ring of the last [`RING`] (GET /api/v1/autoscaler) and counted in /metrics.

pub mod local;
pub mod vmss;

use crate::manager::{self, JobManager, ScaleFacts};
use crate::metrics::Metrics;
use actix::prelude::*;
use framewise_common::config::AutoscalerConfig;
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::VecDeque;
use std::time::Duration;
use tracing::{info, warn};

/// Decisions kept for the endpoint.
pub const RING: usize = 200;

/// A worker that dies sooner than this after its start died "at once" (a bad worker config, a
/// missing model): after [`QUICK_DEATHS`] such deaths (or failed starts) in a row, starts pause
/// (5 s, doubling up to 60 s) instead of restarting a crashing worker every interval.
const QUICK_DEATH_MS: u64 = 10_000;
const QUICK_DEATHS: u32 = 3;

/// Whether the registered worker `registered` is backend worker `base` or one of its pipelines
/// (a multi-pipeline worker registers `base`, `base-1`, `base-2`, ...).
pub fn belongs(registered: &str, base: &str) -> bool {
    registered == base
        || registered
            .strip_prefix(base)
            .and_then(|r| r.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The limits and targets decisions follow (from `[coordinator.autoscaler]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub min_workers: usize,
    pub max_workers: usize,
    pub target_seconds: f64,
    pub idle_cooldown_ms: u64,
    pub per_worker_fps_estimate: f64,
}

impl From<&AutoscalerConfig> for Policy {
    fn from(c: &AutoscalerConfig) -> Self {
        Policy {
            min_workers: c.min_workers as usize,
            max_workers: c.max_workers as usize,
            target_seconds: c.target_seconds,
            idle_cooldown_ms: c.idle_cooldown_ms,
            per_worker_fps_estimate: c.per_worker_fps_estimate,
        }
    }
}

/// Where the per-worker rate of a decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateSource {
    /// Workers holding leases now, smoothed over their heartbeats.
    Measured,
    /// The last rate measured (no worker is measuring one now).
    LastMeasured,
    /// `per_worker_fps_estimate`: no worker has measured a rate yet.
    Estimate,
}

impl RateSource {
    fn name(self) -> &'static str {
        match self {
            RateSource::Measured => "measured",
            RateSource::LastMeasured => "last measured",
            RateSource::Estimate => "estimate",
        }
    }
}

/// What one decision looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    pub now_ms: u64,
    /// Jobs queued or running.
    pub active_jobs: usize,
    /// Frames of those jobs not yet done (jobs not yet probed count 0).
    pub frames_left: u64,
    /// Frames/s of one worker, measured (or last measured); None = use the estimate.
    pub rate: Option<(f64, RateSource)>,
    /// Live workers of the backend, not counting those being drained.
    pub current: usize,
    /// Of those, the ones holding a lease (never stopped).
    pub busy: usize,
    /// Since when fewer workers than `current` have been needed (carried between decisions).
    pub below_since_ms: Option<u64>,
}

/// Scale up, scale down or leave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Up,
    Down,
    Hold,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::Hold => "hold",
        }
    }
}

/// The outcome of one look at the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub at_ms: u64,
    pub current: usize,
    /// Workers the queue needs, within min and max.
    pub desired: usize,
    /// Workers the backend should have once it acted: `desired` going up; going down, never
    /// fewer than the workers holding leases.
    pub target: usize,
    pub direction: Direction,
    /// Why, in words: "queue 1,234 frames at 40 frames/s per worker (measured), target 60 s -> 1; ..."
    pub reason: String,
    /// To pass to the next decision's inputs.
    pub below_since_ms: Option<u64>,
}

/// 1234567 -> "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    // Groups of three from the right: the first group takes what is left over.
    let first = match digits.len() % 3 {
        0 => 3,
        r => r,
    };
    let mut out = digits[..first].to_string();
    for group in digits.as_bytes()[first..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(group).unwrap_or_default());
    }
    out
}

fn rate_text(fps: f64) -> String {
    if fps >= 10.0 {
        format!("{fps:.0}")
    } else {
        format!("{fps:.1}")
    }
}

fn seconds_text(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// How many workers the queue needs, and what to do about it.
pub fn decide(p: &Policy, i: &Inputs) -> Decision {
    let (fps, source) = i
        .rate
        .filter(|(f, _)| f.is_finite() && *f > 0.0)
        .unwrap_or((p.per_worker_fps_estimate, RateSource::Estimate));
    let (raw, mut reason) = if i.active_jobs == 0 {
        (0, "nothing queued -> 0".to_string())
    } else if i.frames_left == 0 {
        (
            1,
            format!(
                "{} job(s) waiting for a probe or assembly (no frames to count) -> 1",
                i.active_jobs
            ),
        )
    } else {
        let need = (i.frames_left as f64 / (fps * p.target_seconds)).ceil();
        // At least one while there is work; the cast saturates far above any max_workers.
        let raw = (need.min(1e9) as usize).max(1);
        (
            raw,
            format!(
                "queue {} frames at {} frames/s per worker ({}), target {} s -> {raw}",
                thousands(i.frames_left),
                rate_text(fps),
                source.name(),
                p.target_seconds
            ),
        )
    };
    let desired = raw.clamp(p.min_workers, p.max_workers);
    if desired > raw {
        reason.push_str(&format!(", min_workers {} -> {desired}", p.min_workers));
    } else if desired < raw {
        reason.push_str(&format!(", max_workers {} -> {desired}", p.max_workers));
    }
    let d = |direction, target, below_since_ms, reason| Decision {
        at_ms: i.now_ms,
        current: i.current,
        desired,
        target,
        direction,
        reason,
        below_since_ms,
    };
    match desired.cmp(&i.current) {
        Ordering::Greater => d(
            Direction::Up,
            desired,
            None,
            format!("{reason}; starting {}", desired - i.current),
        ),
        Ordering::Equal => d(
            Direction::Hold,
            i.current,
            None,
            format!("{reason}; {} running", i.current),
        ),
        Ordering::Less => {
            let since = i.below_since_ms.unwrap_or(i.now_ms).min(i.now_ms);
            let waited = i.now_ms - since;
            let surplus = i.current - desired;
            if waited < p.idle_cooldown_ms {
                return d(
                    Direction::Hold,
                    i.current,
                    Some(since),
                    format!(
                        "{reason}; {} running, {surplus} to stop after {} more without need",
                        i.current,
                        seconds_text(p.idle_cooldown_ms - waited)
                    ),
                );
            }
            let target = desired.max(i.busy.min(i.current));
            if target >= i.current {
                return d(
                    Direction::Hold,
                    i.current,
                    Some(since),
                    format!(
                        "{reason}; {surplus} not needed for {} but every worker holds a lease: none stopped",
                        seconds_text(waited)
                    ),
                );
            }
            let kept = if target > desired {
                format!(" ({} holding leases kept)", target - desired)
            } else {
                String::new()
            };
            d(
                Direction::Down,
                target,
                Some(since),
                format!(
                    "{reason}; not needed for {}: stopping {} idle{kept}",
                    seconds_text(waited),
                    i.current - target
                ),
            )
        }
    }
}

/// One worker of a backend, as the endpoint shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoolWorker {
    /// The id it registers with (its pipelines add `-N`).
    pub id: String,
    /// Its process id (local backend).
    pub pid: Option<u32>,
    /// "running", or "draining" once told to stop.
    pub state: &'static str,
    pub started_ms: u64,
}

/// A worker that went away, found by [`ScaleBackend::refresh`].
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub id: String,
    pub pid: Option<u32>,
    /// "exit code 0", "killed by signal 9", ...
    pub how: String,
    /// It was being drained (anything else is a worker that died, to be replaced).
    pub drained: bool,
    /// How long it ran.
    pub ran_ms: u64,
}

/// Starts and stops workers somewhere: local processes (here), a VM scale set (issue 8, not built).
pub trait ScaleBackend {
    fn name(&self) -> &'static str;
    /// Live workers, not counting those being drained.
    fn current(&self) -> usize;
    /// Starts workers until `n` are live; returns how many it started. Never stops any: going
    /// down is done by [`ScaleBackend::drain`] of workers the autoscaler picked as idle.
    fn scale_to(&mut self, n: usize) -> Result<usize, String>;
    /// Stops one worker gracefully: it finishes what it holds, takes nothing new and exits.
    fn drain(&mut self, worker_id: &str) -> Result<(), String>;
    /// Notes workers that exited (drained or died) and forgets them.
    fn refresh(&mut self) -> Vec<Exit>;
    /// Every worker it runs, draining ones included.
    fn workers(&self) -> Vec<PoolWorker>;
}

/// One decision as the endpoint lists it; consecutive holds with the same counts are merged.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Record {
    pub at_ms: u64,
    /// The last look merged into this record.
    pub last_ms: u64,
    /// Looks merged into this record (1 = this one only).
    pub looks: u32,
    pub current: usize,
    pub desired: usize,
    pub direction: Direction,
    /// Why, at the first look of the record.
    pub reason: String,
    /// Why, at its last look (only when several were merged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reason: Option<String>,
}

/// The bounded history of decisions.
#[derive(Debug, Default)]
pub struct Ring(VecDeque<Record>);

impl Ring {
    pub fn push(&mut self, d: &Decision, merge: bool) {
        if let Some(last) = self.0.back_mut() {
            if merge
                && d.direction == Direction::Hold
                && last.direction == Direction::Hold
                && (last.current, last.desired) == (d.current, d.desired)
            {
                last.last_ms = d.at_ms;
                last.looks += 1;
                last.last_reason = Some(d.reason.clone());
                return;
            }
        }
        if self.0.len() == RING {
            self.0.pop_front();
        }
        self.0.push_back(Record {
            at_ms: d.at_ms,
            last_ms: d.at_ms,
            looks: 1,
            current: d.current,
            desired: d.desired,
            direction: d.direction,
            reason: d.reason.clone(),
            last_reason: None,
        });
    }

    pub fn records(&self) -> Vec<Record> {
        self.0.iter().cloned().collect()
    }
}

/// GET /api/v1/autoscaler.
#[derive(Debug, Clone, Serialize)]
pub struct AutoscalerView {
    pub enabled: bool,
    pub config: AutoscalerConfig,
    /// The per-worker frames/s of the last decision and where it came from.
    pub per_worker_fps: f64,
    pub rate_source: RateSource,
    pub current: usize,
    pub desired: usize,
    pub workers: Vec<PoolWorker>,
    /// Workers started and workers that died (exited without being drained) since the start.
    pub started_total: u64,
    pub died_total: u64,
    /// Oldest first, at most 200.
    pub decisions: Vec<Record>,
}

impl AutoscalerView {
    /// What the endpoint shows when the autoscaler is off.
    pub fn disabled(config: &AutoscalerConfig) -> Self {
        AutoscalerView {
            enabled: false,
            config: config.clone(),
            per_worker_fps: config.per_worker_fps_estimate,
            rate_source: RateSource::Estimate,
            current: 0,
            desired: 0,
            workers: Vec::new(),
            started_total: 0,
            died_total: 0,
            decisions: Vec::new(),
        }
    }
}

/// The actor: looks at the queue every `interval_ms` and drives its backend.
pub struct Autoscaler {
    config: AutoscalerConfig,
    policy: Policy,
    backend: Box<dyn ScaleBackend + Send>,
    manager: Addr<JobManager>,
    metrics: Metrics,
    ring: Ring,
    below_since_ms: Option<u64>,
    last_rate: Option<f64>,
    rate: (f64, RateSource),
    desired: usize,
    started_total: u64,
    died_total: u64,
    /// Exits seen since the last decision, to say in its reason.
    notes: Vec<String>,
    /// Workers in a row that died within QUICK_DEATH_MS of their start, and until when starting
    /// more is paused because of them.
    quick_deaths: u32,
    starts_paused_until_ms: u64,
    /// A look is under way (the JobManager's answer is awaited).
    looking: bool,
}

impl Autoscaler {
    pub fn new(
        config: AutoscalerConfig,
        backend: Box<dyn ScaleBackend + Send>,
        manager: Addr<JobManager>,
        metrics: Metrics,
    ) -> Self {
        let policy = Policy::from(&config);
        let rate = (config.per_worker_fps_estimate, RateSource::Estimate);
        Autoscaler {
            config,
            policy,
            backend,
            manager,
            metrics,
            ring: Ring::default(),
            below_since_ms: None,
            last_rate: None,
            rate,
            desired: 0,
            started_total: 0,
            died_total: 0,
            notes: Vec::new(),
            quick_deaths: 0,
            starts_paused_until_ms: 0,
            looking: false,
        }
    }

    /// A worker died right after its start, or could not be started: after QUICK_DEATHS in a
    /// row, starts pause (5 s, doubling up to 60 s).
    fn failed_start(&mut self, now: u64) {
        self.quick_deaths += 1;
        if self.quick_deaths >= QUICK_DEATHS {
            let pause = (5_000u64 << (self.quick_deaths - QUICK_DEATHS).min(4)).min(60_000);
            self.starts_paused_until_ms = now + pause;
        }
    }

    fn look(&mut self, ctx: &mut Context<Self>) {
        if self.looking {
            return;
        }
        for e in self.backend.refresh() {
            let pid = e.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
            if e.drained {
                info!(worker_id = %e.id, how = %e.how, "autoscaled worker stopped");
            } else {
                warn!(worker_id = %e.id, how = %e.how, "autoscaled worker died; it will be replaced if still needed");
                self.died_total += 1;
                self.notes.push(format!("{}{pid} died ({})", e.id, e.how));
                if e.ran_ms < QUICK_DEATH_MS {
                    self.failed_start(manager::now_ms());
                }
            }
        }
        self.looking = true;
        ctx.spawn(
            self.manager
                .send(manager::GetScaleFacts)
                .into_actor(self)
                .map(|r, act, ctx| match r {
                    Ok(facts) => act.decide_and_act(facts, ctx),
                    Err(e) => {
                        warn!(error = %e, "autoscaler: the job manager did not answer");
                        act.looking = false;
                    }
                }),
        );
    }

    fn decide_and_act(&mut self, f: ScaleFacts, ctx: &mut Context<Self>) {
        let now = manager::now_ms();
        let pool = self.backend.workers();
        if pool
            .iter()
            .any(|w| now.saturating_sub(w.started_ms) >= QUICK_DEATH_MS)
        {
            // A worker lived past its start-up: deaths are no longer "in a row".
            self.quick_deaths = 0;
        }
        let live: Vec<String> = pool
            .into_iter()
            .filter(|w| w.state == "running")
            .map(|w| w.id)
            .collect();
        // A backend worker's rate is the sum of its pipelines'; workers started by other means
        // count with their own.
        let mut rates = Vec::new();
        let mut busy = Vec::new();
        for id in &live {
            let mine: Vec<f64> = f
                .lease_holders
                .iter()
                .filter(|(h, _)| belongs(h, id))
                .map(|(_, r)| *r)
                .collect();
            if !mine.is_empty() {
                busy.push(id.clone());
                let r: f64 = mine.iter().sum();
                if r > 0.0 {
                    rates.push(r);
                }
            }
        }
        for (h, r) in &f.lease_holders {
            if *r > 0.0 && !live.iter().any(|id| belongs(h, id)) {
                rates.push(*r);
            }
        }
        let rate = if rates.is_empty() {
            self.last_rate.map(|r| (r, RateSource::LastMeasured))
        } else {
            let mean = rates.iter().sum::<f64>() / rates.len() as f64;
            self.last_rate = Some(mean);
            Some((mean, RateSource::Measured))
        };
        let inputs = Inputs {
            now_ms: now,
            active_jobs: f.active_jobs,
            frames_left: f.frames_left,
            rate,
            current: live.len(),
            busy: busy.len(),
            below_since_ms: self.below_since_ms,
        };
        let mut d = decide(&self.policy, &inputs);
        self.below_since_ms = d.below_since_ms;
        self.rate = rate.unwrap_or((self.policy.per_worker_fps_estimate, RateSource::Estimate));
        self.desired = d.desired;
        let notes = std::mem::take(&mut self.notes);
        if !notes.is_empty() {
            d.reason = format!("{}; {}", notes.join("; "), d.reason);
        }
        let mut stopping = Vec::new();
        match d.direction {
            Direction::Up if now < self.starts_paused_until_ms => {
                d.reason.push_str(&format!(
                    " -- paused: {} workers in a row died within {} of starting or could not start (see the log); next try in {}",
                    self.quick_deaths,
                    seconds_text(QUICK_DEATH_MS),
                    seconds_text(self.starts_paused_until_ms - now)
                ));
                d.direction = Direction::Hold;
                d.target = d.current;
            }
            Direction::Up => {
                let before = self.backend.current();
                let r = self.backend.scale_to(d.target);
                self.started_total += self.backend.current().saturating_sub(before) as u64;
                if let Err(e) = r {
                    warn!(error = %e, "autoscaler could not start a worker");
                    d.reason.push_str(&format!(" (failed: {e})"));
                    self.failed_start(now);
                }
            }
            Direction::Down => {
                // The newest idle workers go first.
                stopping = live
                    .iter()
                    .rev()
                    .filter(|id| !busy.contains(id))
                    .take(d.current - d.target)
                    .cloned()
                    .collect();
            }
            Direction::Hold => {}
        }
        if d.direction != Direction::Hold {
            info!(direction = d.direction.name(), current = d.current, desired = d.desired, reason = %d.reason, "autoscaler decision");
        }
        self.metrics
            .autoscaler_decisions
            .with_label_values(&[d.direction.name()])
            .inc();
        self.metrics.autoscaler_desired.set(d.desired as i64);
        self.ring.push(&d, notes.is_empty());
        if stopping.is_empty() {
            self.metrics
                .autoscaler_current
                .set(self.backend.current() as i64);
            self.looking = false;
            return;
        }
        // The JobManager bars them from new leases first; any that took one meanwhile is kept.
        ctx.spawn(
            self.manager
                .send(manager::DrainWorkers(stopping))
                .into_actor(self)
                .map(|r, act, _| {
                    for id in r.unwrap_or_default() {
                        if let Err(e) = act.backend.drain(&id) {
                            warn!(worker_id = %id, error = %e, "could not stop the worker");
                        }
                    }
                    act.metrics
                        .autoscaler_current
                        .set(act.backend.current() as i64);
                    act.looking = false;
                }),
        );
    }

    fn view(&self) -> AutoscalerView {
        AutoscalerView {
            enabled: true,
            config: self.config.clone(),
            per_worker_fps: self.rate.0,
            rate_source: self.rate.1,
            current: self.backend.current(),
            desired: self.desired,
            workers: self.backend.workers(),
            started_total: self.started_total,
            died_total: self.died_total,
            decisions: self.ring.records(),
        }
    }
}

impl Actor for Autoscaler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        info!(
            backend = self.backend.name(),
            min = self.policy.min_workers,
            max = self.policy.max_workers,
            "autoscaler started"
        );
        self.look(ctx);
        ctx.run_interval(
            Duration::from_millis(self.config.interval_ms.max(100)),
            |act, ctx| act.look(ctx),
        );
    }
}

/// The autoscaler's state for the endpoint.
#[derive(Message)]
#[rtype(result = "AutoscalerView")]
pub struct GetStatus;

impl Handler<GetStatus> for Autoscaler {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min_workers: 0,
            max_workers: 4,
            target_seconds: 60.0,
            idle_cooldown_ms: 10_000,
            per_worker_fps_estimate: 5.0,
        }
    }

    fn inputs(frames_left: u64, current: usize) -> Inputs {
        Inputs {
            now_ms: 100_000,
            active_jobs: usize::from(frames_left > 0),
            frames_left,
            rate: Some((40.0, RateSource::Measured)),
            current,
            busy: 0,
            below_since_ms: None,
        }
    }

    #[test]
    fn desired_is_queue_over_rate_times_target() {
        let d = decide(&policy(), &inputs(7_234, 1));
        // 7234 / (40 x 60) = 3.01 -> 4
        assert_eq!((d.desired, d.target, d.direction), (4, 4, Direction::Up));
        assert_eq!(
            d.reason,
            "queue 7,234 frames at 40 frames/s per worker (measured), target 60 s -> 4; starting 3"
        );
        let d = decide(&policy(), &inputs(1_234, 0));
        assert_eq!((d.desired, d.direction), (1, Direction::Up));
    }

    #[test]
    fn clamped_to_min_and_max() {
        let d = decide(&policy(), &inputs(1_000_000, 2));
        assert_eq!(d.desired, 4);
        assert!(
            d.reason.contains("-> 417, max_workers 4 -> 4"),
            "{}",
            d.reason
        );
        let p = Policy {
            min_workers: 2,
            ..policy()
        };
        let d = decide(&p, &inputs(0, 0));
        assert_eq!((d.desired, d.direction), (2, Direction::Up));
        assert!(
            d.reason
                .starts_with("nothing queued -> 0, min_workers 2 -> 2"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn estimate_until_a_rate_is_measured() {
        let mut i = inputs(3_000, 0);
        i.rate = None;
        let d = decide(&policy(), &i);
        // 3000 / (5 x 60) = 10 -> max 4
        assert_eq!(d.desired, 4);
        assert!(
            d.reason.contains("at 5.0 frames/s per worker (estimate)"),
            "{}",
            d.reason
        );
        i.rate = Some((f64::NAN, RateSource::Measured));
        assert!(decide(&policy(), &i).reason.contains("(estimate)"));
    }

    #[test]
    fn a_job_not_yet_probed_needs_one_worker_and_nothing_queued_none() {
        let mut i = inputs(0, 0);
        i.active_jobs = 1;
        let d = decide(&policy(), &i);
        assert_eq!((d.desired, d.direction), (1, Direction::Up));
        assert!(d.reason.contains("waiting for a probe or assembly"));
        let d = decide(&policy(), &inputs(0, 0));
        assert_eq!((d.desired, d.direction), (0, Direction::Hold));
    }

    #[test]
    fn scale_down_waits_for_the_cooldown_and_keeps_lease_holders() {
        let p = policy();
        let mut i = inputs(0, 3);
        i.busy = 1;
        // Not needed from now on: hold through the cooldown.
        let d = decide(&p, &i);
        assert_eq!(
            (d.direction, d.below_since_ms),
            (Direction::Hold, Some(100_000))
        );
        assert!(
            d.reason.contains("3 to stop after 10.0 s more"),
            "{}",
            d.reason
        );
        i.below_since_ms = d.below_since_ms;
        i.now_ms = 109_999;
        assert_eq!(decide(&p, &i).direction, Direction::Hold);
        // Work coming back resets the clock.
        let mut again = i.clone();
        again.active_jobs = 1;
        again.frames_left = 100_000;
        let d = decide(&p, &again);
        assert_eq!((d.direction, d.below_since_ms), (Direction::Up, None));
        // After the cooldown: stop the idle ones, never the one holding a lease.
        i.now_ms = 110_000;
        let d = decide(&p, &i);
        assert_eq!((d.direction, d.desired, d.target), (Direction::Down, 0, 1));
        assert!(
            d.reason
                .ends_with("not needed for 10.0 s: stopping 2 idle (1 holding leases kept)"),
            "{}",
            d.reason
        );
        // Every worker busy: nothing to stop yet, the clock keeps running.
        i.busy = 3;
        let d = decide(&p, &i);
        assert_eq!(
            (d.direction, d.below_since_ms),
            (Direction::Hold, Some(100_000))
        );
        assert!(d.reason.contains("none stopped"));
    }

    #[test]
    fn ring_merges_repeated_holds_and_keeps_the_last_200() {
        let mut r = Ring::default();
        let mut d = decide(&policy(), &inputs(0, 0));
        r.push(&d, true);
        d.at_ms += 1000;
        r.push(&d, true);
        assert_eq!(r.records().len(), 1);
        assert_eq!((r.records()[0].looks, r.records()[0].last_ms), (2, 101_000));
        assert_eq!(
            r.records()[0].last_reason.as_deref(),
            Some(d.reason.as_str())
        );
        r.push(&d, false);
        assert_eq!(r.records().len(), 2, "a hold with news is not merged");
        for n in 0..300 {
            let mut up = decide(&policy(), &inputs(1_000, 0));
            up.at_ms = n;
            r.push(&up, true);
        }
        let recs = r.records();
        assert_eq!(recs.len(), RING);
        assert_eq!(recs.last().map(|r| r.at_ms), Some(299));
    }

    #[test]
    fn pipelines_belong_to_their_worker() {
        assert!(belongs("auto-1", "auto-1"));
        assert!(belongs("auto-1-3", "auto-1"));
        assert!(!belongs("auto-12", "auto-1"));
        assert!(!belongs("auto-1-x", "auto-1"));
        assert!(!belongs("auto-1-", "auto-1"));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234), "1,234");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(rate_text(4.26), "4.3");
        assert_eq!(rate_text(12.6), "13");
    }

    /// A backend whose workers are entries in a shared list; `crash` makes every worker die at
    /// once.
    #[derive(Default)]
    struct Fake {
        workers: Vec<PoolWorker>,
        drained: Vec<String>,
        crash: bool,
        next: usize,
    }

    #[derive(Clone, Default)]
    struct FakeBackend(std::sync::Arc<std::sync::Mutex<Fake>>);

    impl ScaleBackend for FakeBackend {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn current(&self) -> usize {
            let f = self.0.lock().unwrap();
            f.workers.iter().filter(|w| w.state == "running").count()
        }
        fn scale_to(&mut self, n: usize) -> Result<usize, String> {
            let mut started = 0;
            while self.current() < n {
                let mut f = self.0.lock().unwrap();
                f.next += 1;
                let id = format!("auto-{}", f.next);
                f.workers.push(PoolWorker {
                    id,
                    pid: None,
                    state: "running",
                    started_ms: manager::now_ms(),
                });
                started += 1;
            }
            Ok(started)
        }
        fn drain(&mut self, id: &str) -> Result<(), String> {
            let mut f = self.0.lock().unwrap();
            f.drained.push(id.to_string());
            for w in f.workers.iter_mut().filter(|w| w.id == id) {
                w.state = "draining";
            }
            Ok(())
        }
        fn refresh(&mut self) -> Vec<Exit> {
            let mut f = self.0.lock().unwrap();
            let crash = f.crash;
            let (gone, kept): (Vec<PoolWorker>, Vec<PoolWorker>) = std::mem::take(&mut f.workers)
                .into_iter()
                .partition(|w| crash || w.state == "draining");
            f.workers = kept;
            gone.into_iter()
                .map(|w| Exit {
                    drained: w.state == "draining",
                    id: w.id,
                    pid: None,
                    how: "exit code 1".into(),
                    ran_ms: 0,
                })
                .collect()
        }
        fn workers(&self) -> Vec<PoolWorker> {
            self.0.lock().unwrap().workers.clone()
        }
    }

    /// Asks the autoscaler until `pred` holds (at most 10 s).
    async fn until(
        a: &Addr<Autoscaler>,
        what: &str,
        pred: impl Fn(&AutoscalerView) -> bool,
    ) -> AutoscalerView {
        let t = std::time::Instant::now();
        loop {
            let v = a.send(GetStatus).await.unwrap();
            if pred(&v) {
                return v;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{what}: {:#?}",
                v.decisions
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn the_actor_scales_with_the_queue_and_pauses_a_crashing_worker() {
        let d = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let m = manager::tests::manager(d.path(), metrics.clone());
        let fake = FakeBackend::default();
        let cfg = AutoscalerConfig {
            enabled: true,
            max_workers: 2,
            idle_cooldown_ms: 300,
            interval_ms: 100,
            ..Default::default()
        };
        let f = fake.clone();
        actix::System::new().block_on(async move {
            let m = m.start();
            let a = Autoscaler::new(cfg, Box::new(f.clone()), m.clone(), metrics.clone()).start();
            let v = until(&a, "a first look", |v| !v.decisions.is_empty()).await;
            assert_eq!((v.current, v.desired), (0, 0));
            // A job (not probed yet): one worker.
            let (job, _) = manager::tests::ask(&m, manager::tests::submit("a")).await;
            let v = until(&a, "a worker started", |v| v.current == 1).await;
            assert_eq!(v.workers[0].id, "auto-1");
            assert_eq!(v.started_total, 1);
            // It holds the probe.
            m.send(manager::tests::register("auto-1")).await.unwrap();
            let lease = manager::LeaseTask {
                worker_id: "auto-1".into(),
                media_only: false,
                queued: std::time::Instant::now(),
            };
            assert!(manager::tests::ask(&m, lease).await.grant.is_some());
            // The job is cancelled: the lease is dead (the worker learns it at its next
            // heartbeat), so the worker is stopped after the cooldown.
            manager::tests::ask(&m, manager::Cancel(job)).await;
            let v = until(&a, "drained after the cooldown", |v| v.current == 0).await;
            assert_eq!(f.0.lock().unwrap().drained, ["auto-1"]);
            let last_down = v
                .decisions
                .iter()
                .rev()
                .find(|r| r.direction == Direction::Down)
                .expect("a down decision");
            assert!(
                last_down.reason.contains("stopping 1 idle"),
                "{last_down:?}"
            );
            assert!(metrics
                .render()
                .contains("framewise_autoscaler_current_workers 0"));
            // A worker that dies as soon as it starts: after three in a row, starts pause.
            f.0.lock().unwrap().crash = true;
            manager::tests::ask(&m, manager::tests::submit("b")).await;
            let v = until(&a, "starts paused", |v| {
                v.decisions.iter().any(|r| {
                    r.last_reason
                        .as_deref()
                        .unwrap_or(&r.reason)
                        .contains("paused: 3 workers in a row died")
                })
            })
            .await;
            assert!(v.died_total >= 3, "{}", v.died_total);
            let started = v.started_total;
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let v = a.send(GetStatus).await.unwrap();
            assert_eq!(v.started_total, started, "no start while paused");
            actix::System::current().stop();
        });
    }
}
