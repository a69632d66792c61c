//! The JobManager actor: owns the scheduler state and the sled store, the
//! only writer of either. gRPC handlers send it messages and await replies.

use crate::metrics::Metrics;
use crate::model::{Job, Params, Task};
use crate::progress::Progress;
use crate::scheduler::{Changes, Completion, Grant, NewJob, Rules, State};
use crate::store::{Store, StoreError};
use crate::views::{self, JobDetail, JobSummary, Overview, Totals, WorkerView};
pub use crate::workers::WorkerInfo;
use crate::workers::Workers;
use crate::writer::Writer;
use actix::prelude::*;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tracing::{info, warn};

/// Errors the coordinator returns to callers.
#[derive(Debug, Error)]
pub enum CoordError {
    #[error("job {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// A bound from config was reached (the queue is full); retry later.
    #[error("{0}")]
    Exhausted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A job with its tasks and progress, as callers see it.
#[derive(Debug, Clone)]
pub struct JobView {
    pub job: Job,
    pub tasks: Vec<Task>,
    pub frames_done: u64,
    pub frames_per_s: f64,
    /// Seconds left at the current rate, if known.
    pub eta_s: Option<f64>,
}

/// Owns jobs, tasks, leases and workers.
pub struct JobManager {
    state: State,
    store: Store,
    rules: Rules,
    workers: Workers,
    progress: Progress,
    metrics: Metrics,
    /// The latest overview (JSON) for the dashboard's live stream; built only while someone listens.
    overview: Arc<tokio::sync::watch::Sender<Arc<str>>>,
    /// Written since the last flush was requested.
    dirty: bool,
    /// Writes and flushes the state off this thread (group commit).
    writer: Writer,
    /// Workers the autoscaler is stopping: they get no new lease (until they register again).
    drained: std::collections::HashSet<String>,
    /// Deletes unused work output off the actor's thread.
    janitor: crate::janitor::Janitor,
}

impl JobManager {
    /// Loads the stored state; leases that were live get one TTL for their workers to come back.
    pub fn new(
        store: Store,
        rules: Rules,
        metrics: Metrics,
        overview: Arc<tokio::sync::watch::Sender<Arc<str>>>,
        janitor: crate::janitor::Janitor,
    ) -> Result<Self, StoreError> {
        let (jobs, tasks) = store.load()?;
        let workers = Workers::new(store.load_workers()?);
        let (state, ch) = State::restore(jobs, tasks, now_ms(), &rules);
        store.persist(&state, &ch)?;
        store.flush()?;
        let active = state
            .jobs
            .values()
            .filter(|j| !j.state.is_terminal())
            .count();
        info!(jobs = state.jobs.len(), active, "coordinator state loaded");
        let writer = Writer::spawn(store.clone(), metrics.state_write.clone())
            .map_err(|e| StoreError::Io(format!("writer thread: {e}")))?;
        Ok(Self {
            state,
            store,
            rules,
            workers,
            progress: Progress::default(),
            metrics,
            overview,
            dirty: false,
            writer,
            drained: Default::default(),
            janitor,
        })
    }

    /// Notes that a worker was heard from (for the workers table).
    fn touch(&mut self, worker_id: &str, now: u64) {
        self.workers.touch(worker_id, now);
    }

    fn worker_views(&self, now: u64) -> Vec<WorkerView> {
        views::worker_views(&self.state, &self.workers, now, self.rules.lease_ttl_ms)
    }

    fn overview(&self, now: u64) -> Overview {
        let jobs = views::job_summaries(&self.state, &self.progress);
        let m = &self.metrics;
        let totals = Totals {
            frames_per_s: m.frames_per_second.get(),
            queue_frames: m.queue_frames.get().max(0) as u64,
            leases_granted: m.leases_granted.get(),
            leases_expired: m.leases_expired.get(),
            evictions: m.evictions.get(),
            wasted_frames: m.wasted_frames.get(),
            jobs_active: jobs
                .iter()
                .filter(|j| !matches!(j.state, "succeeded" | "failed" | "cancelled"))
                .count() as u32,
        };
        Overview {
            now_ms: now,
            jobs,
            workers: self.worker_views(now),
            throughput: self.progress.history().copied().collect(),
            totals,
        }
    }

    /// Sets the state gauges (jobs, tasks, workers, queue) from the current state; returns each
    /// active job's (id, frames done) so the tick need not walk the tasks a second time.
    fn refresh_gauges(&self, now: u64) -> Vec<(String, u64)> {
        let mut active = Vec::new();
        let mut queue = 0u64;
        let mut tasks = [0i64; 4];
        let mut jobs: std::collections::BTreeMap<&'static str, i64> = Default::default();
        for job in self.state.jobs.values() {
            *jobs.entry(views::job_state_name(job.state)).or_default() += 1;
            if job.state.is_terminal() {
                continue;
            }
            let total = views::frames_total(job);
            let done = self.state.frames_done(&job.id).min(total);
            queue += total - done;
            active.push((job.id.clone(), done));
            for t in self.state.tasks_of(&job.id) {
                tasks[t.state as usize] += 1;
            }
        }
        let m = &self.metrics;
        m.queue_frames.set(queue as i64);
        for state in [
            "queued",
            "probing",
            "running",
            "assembling",
            "succeeded",
            "failed",
            "cancelled",
        ] {
            m.jobs
                .with_label_values(&[state])
                .set(jobs.get(state).copied().unwrap_or(0));
        }
        for (i, state) in ["pending", "leased", "done", "failed"].iter().enumerate() {
            m.tasks.with_label_values(&[*state]).set(tasks[i]);
        }
        let workers = self.worker_views(now);
        for state in ["busy", "idle", "draining", "lost"] {
            let n = workers.iter().filter(|w| w.state == state).count();
            m.workers.with_label_values(&[state]).set(n as i64);
        }
        active
    }

    /// Once a second: progress samples, gauges, and the dashboard's overview if anyone watches.
    fn tick(&mut self) {
        let t = std::time::Instant::now();
        let now = now_ms();
        let active = self.refresh_gauges(now);
        self.progress
            .retain(|id| active.iter().any(|(a, _)| a == id));
        let mut fps = 0.0;
        for (id, done) in &active {
            self.progress.sample(id, now, *done);
            fps += self.progress.rate(id);
        }
        self.progress.record_total(now, fps);
        self.metrics.frames_per_second.set(fps);
        if self.overview.receiver_count() > 0 {
            match serde_json::to_string(&self.overview(now)) {
                Ok(json) => {
                    let _ = self.overview.send(Arc::from(json));
                }
                Err(e) => warn!(error = %e, "could not serialize the overview"),
            }
        }
        // Every call waits behind the tick: a slow one shows in the callers' latency.
        if t.elapsed() > Duration::from_millis(20) {
            warn!(ms = t.elapsed().as_millis() as u64, "slow tick");
        }
    }

    /// Writes the changes (not yet flushed) and does what they imply (collect garbage, log).
    fn commit(&mut self, ch: &Changes) -> Result<(), CoordError> {
        self.writer
            .write(crate::store::changed(&self.state, ch)?)
            .map_err(StoreError::Io)?;
        self.dirty |= !ch.is_empty();
        self.metrics.wasted_frames.inc_by(ch.wasted_frames);
        for url in &ch.garbage {
            self.janitor.delete(url);
        }
        for id in &ch.jobs {
            if let Some(j) = self.state.jobs.get(id) {
                info!(job_id = %id, state = ?j.state, error = %j.error, "job state");
                if j.state.is_terminal() {
                    // Also removes chunks that lost attempts left behind.
                    self.janitor
                        .delete_prefix(&framewise_common::storage::join(&self.rules.work_url, id));
                }
            }
        }
        Ok(())
    }

    /// Times the handling of one message of `kind` (`framewise_actor_handle_seconds`) until dropped.
    fn timed(&self, kind: &str) -> prometheus::HistogramTimer {
        self.metrics
            .actor_handle
            .with_label_values(&[kind])
            .start_timer()
    }

    /// Pairs the reply with the writer's answer for what the handler wrote, which the caller
    /// awaits (`Durable::wait`). Concurrent handlers share one write and fsync (group commit):
    /// the writer thread serves every waiter queued before its turn.
    fn durably<T>(&mut self, r: Result<T, CoordError>) -> Result<Durable<T>, CoordError> {
        let flushed = std::mem::take(&mut self.dirty).then(|| self.writer.flushed());
        r.map(|value| Durable { value, flushed })
    }

    /// A reply that does not wait for the disk, for a lease grant: the writer still writes it
    /// at its next turn, before anything queued later (so every chunk committed under the
    /// lease, a durable reply, waits for it too); a grant lost in a crash costs only the work
    /// begun on it, since after the restart its lease id is unknown and its worker's
    /// heartbeats and commits are refused. Waiting for the flush was LeaseTask's latency tail.
    fn promptly<T>(r: Result<T, CoordError>) -> Result<Durable<T>, CoordError> {
        r.map(|value| Durable {
            value,
            flushed: None,
        })
    }

    /// Leases (primary and speculative) of jobs still active. A lease of a cancelled or failed
    /// job is dead: its worker learns so at its next heartbeat and takes other work.
    fn live_leases(&self) -> impl Iterator<Item = &crate::model::Lease> {
        // leased_tasks already leaves out the tasks of finished jobs.
        self.state
            .leased_tasks()
            .flat_map(|t| t.lease.iter().chain(t.spec.iter()))
    }

    fn view(&self, id: &str) -> Result<JobView, CoordError> {
        let job = self
            .state
            .jobs
            .get(id)
            .ok_or_else(|| CoordError::NotFound(id.to_string()))?;
        let frames_done = self.state.frames_done(id);
        let live = !job.state.is_terminal();
        let total = views::frames_total(job);
        Ok(JobView {
            job: job.clone(),
            tasks: self.state.tasks_of(id).into_iter().cloned().collect(),
            frames_done,
            frames_per_s: if live { self.progress.rate(id) } else { 0.0 },
            eta_s: if live {
                self.progress.eta_s(id, frames_done.min(total), total)
            } else {
                None
            },
        })
    }
}

/// Sends a message whose reply is durable and waits, on the caller's task, until what its
/// handler wrote is on disk.
pub async fn ask<M, T>(
    m: &Addr<JobManager>,
    msg: M,
) -> Result<Result<T, CoordError>, actix::MailboxError>
where
    M: Message<Result = Result<Durable<T>, CoordError>> + Send + 'static,
    T: Send + 'static,
    JobManager: Handler<M>,
{
    Ok(match m.send(msg).await? {
        Ok(durable) => durable.wait().await,
        Err(e) => Err(e),
    })
}

/// A handler's reply and, if it changed state, the writer's word that the change is on disk.
/// The caller waits for that on its own task, not on the JobManager's thread: waiting there
/// queued every durable reply behind the actor's mailbox (LeaseTask's latency tail).
pub struct Durable<T> {
    value: T,
    flushed: Option<tokio::sync::oneshot::Receiver<Result<(), String>>>,
}

impl<T> Durable<T> {
    /// The reply, once what its handler wrote is on disk.
    pub async fn wait(self) -> Result<T, CoordError> {
        if let Some(rx) = self.flushed {
            let flushed = rx
                .await
                .map_err(|_| StoreError::Io("the state writer thread stopped".into()))?;
            flushed.map_err(|e| CoordError::Store(StoreError::Io(e)))?;
        }
        Ok(self.value)
    }
}

impl Actor for JobManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Every gRPC call is a message; with the default 16 slots a thousand callers park and
        // wake in no particular order, which shows as tail latency.
        ctx.set_mailbox_capacity(1 << 14);
        let every = Duration::from_millis((self.rules.lease_ttl_ms / 4).clamp(100, 1000));
        ctx.run_interval(every, |act, _| {
            let _timer = act.timed("expire");
            let ch = act.state.expire(now_ms(), &act.rules);
            if !ch.is_empty() {
                warn!(tasks = ch.tasks.len(), "leases expired; tasks requeued");
                act.metrics.leases_expired.inc_by(ch.tasks.len() as u64);
                // The writer flushes what it is given; nobody waits for it here.
                if let Err(e) = act.commit(&ch) {
                    warn!(error = %e, "could not persist expired leases");
                }
                act.dirty = false;
            }
        });
        ctx.run_interval(Duration::from_secs(1), |act, _| {
            let _timer = act.timed("tick");
            act.tick()
        });
    }
}

/// Accept a job.
#[derive(Message)]
#[rtype(result = "Result<Durable<(String, bool)>, CoordError>")]
pub struct Submit {
    pub input_url: String,
    pub output_url: String,
    pub params: Params,
    pub idempotency_key: String,
    /// The submitter's name ("" when auth is off); idempotency keys are per owner.
    pub owner: String,
}

impl Handler<Submit> for JobManager {
    type Result = Result<Durable<(String, bool)>, CoordError>;
    fn handle(&mut self, mut m: Submit, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.timed("submit");
        // One submitter's key never finds another's job.
        if !m.owner.is_empty() && !m.idempotency_key.is_empty() {
            m.idempotency_key = format!("{}\u{1f}{}", m.owner, m.idempotency_key);
        }
        let r = (|| -> Result<(String, bool), CoordError> {
            let cap = self.rules.limits.max_queued_jobs as usize;
            if self.state.job_with_key(&m.idempotency_key).is_none()
                && self.state.active_count() >= cap
            {
                return Err(CoordError::Exhausted(format!(
                    "the queue is full: {} jobs queued or running (coordinator.limits.max_queued_jobs = {cap}); retry later",
                    self.state.active_count()
                )));
            }
            let per_owner = self.rules.limits.max_queued_jobs_per_owner as usize;
            if per_owner > 0
                && !m.owner.is_empty()
                && self.state.job_with_key(&m.idempotency_key).is_none()
            {
                let n = self.state.active_count_of(&m.owner);
                if n >= per_owner {
                    return Err(CoordError::Exhausted(format!(
                        "{} has {n} jobs queued or running (coordinator.limits.max_queued_jobs_per_owner = {per_owner}); retry when one finishes",
                        m.owner
                    )));
                }
            }
            let id = format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            let new = NewJob {
                id,
                idempotency_key: m.idempotency_key,
                input_url: m.input_url,
                output_url: m.output_url,
                params: m.params,
                owner: m.owner,
            };
            let (id, existing, ch) = self.state.submit(new, now_ms(), &self.rules);
            self.commit(&ch)?;
            if !existing {
                info!(job_id = %id, "job accepted");
            }
            Ok((id, existing))
        })();
        self.durably(r)
    }
}

/// Read one job.
#[derive(Message)]
#[rtype(result = "Result<JobView, CoordError>")]
pub struct GetJob(pub String);

impl Handler<GetJob> for JobManager {
    type Result = Result<JobView, CoordError>;
    fn handle(&mut self, m: GetJob, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.timed("get_job");
        self.view(&m.0)
    }
}

/// Read every job.
#[derive(Message)]
#[rtype(result = "Vec<JobView>")]
pub struct ListJobs;

impl Handler<ListJobs> for JobManager {
    type Result = Vec<JobView>;
    fn handle(&mut self, _: ListJobs, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.timed("list_jobs");
        let ids: Vec<String> = self.state.jobs.keys().cloned().collect();
        ids.iter().filter_map(|id| self.view(id).ok()).collect()
    }
}

/// Cancel a job.
#[derive(Message)]
#[rtype(result = "Result<Durable<JobView>, CoordError>")]
pub struct Cancel(pub String);

impl Handler<Cancel> for JobManager {
    type Result = Result<Durable<JobView>, CoordError>;
    fn handle(&mut self, m: Cancel, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.timed("cancel");
        let r = (|| -> Result<JobView, CoordError> {
            let ch = self
                .state
                .cancel(&m.0, now_ms())
                .ok_or_else(|| CoordError::NotFound(m.0.clone()))?;
            self.commit(&ch)?;
            self.view(&m.0)
        })();
        self.durably(r)
    }
}

/// A worker announces itself.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    pub worker_id: String,
    pub info: WorkerInfo,
}

impl Handler<Register> for JobManager {
    type Result = ();
    fn handle(&mut self, m: Register, _: &mut Context<Self>) {
        let _timer = self.timed("register");
        info!(worker_id = %m.worker_id, hostname = %m.info.hostname, threads = m.info.threads, "worker registered");
        if let Err(e) = self.store.put_worker(&m.worker_id, &m.info) {
            warn!(worker_id = %m.worker_id, error = %e, "could not persist the worker");
        }
        self.drained.remove(&m.worker_id);
        self.workers.info.insert(m.worker_id, m.info);
    }
}

/// A worker asks for work.
#[derive(Message)]
#[rtype(result = "Result<Durable<Leased>, CoordError>")]
pub struct LeaseTask {
    pub worker_id: String,
    /// A worker's media lane (Probe and Assemble tasks only).
    pub media_only: bool,
    /// When the request was put in the mailbox (the wait there is a metric).
    pub queued: std::time::Instant,
}

/// A lease request's answer: a grant, or how long to wait before asking again.
#[derive(Debug)]
pub struct Leased {
    pub grant: Option<Grant>,
    pub retry_after_ms: u64,
}

impl Handler<LeaseTask> for JobManager {
    type Result = Result<Durable<Leased>, CoordError>;
    fn handle(&mut self, m: LeaseTask, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.timed("lease");
        self.metrics
            .lease_queue
            .observe(m.queued.elapsed().as_secs_f64());
        let r = (|| -> Result<Leased, CoordError> {
            let now = now_ms();
            self.touch(&m.worker_id, now);
            let wait = |ms| Leased {
                grant: None,
                retry_after_ms: ms,
            };
            if self.drained.contains(&m.worker_id) {
                // Being stopped by the autoscaler: it must not take work it would then abandon.
                return Ok(wait(IDLE_RETRY_MS));
            }
            let lease_id = format!("lease-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            match self
                .state
                .lease_for(&m.worker_id, lease_id, now, &self.rules, m.media_only)
            {
                Some((grant, ch)) => {
                    self.commit(&ch)?;
                    self.metrics.leases_granted.inc();
                    self.workers.leased(&m.worker_id);
                    info!(job_id = %grant.job_id, task = grant.index, worker_id = %m.worker_id, lease_id = %grant.lease_id, epoch = grant.epoch, "lease granted");
                    Ok(Leased {
                        grant: Some(grant),
                        retry_after_ms: 0,
                    })
                }
                None => {
                    self.workers.idle(&m.worker_id);
                    Ok(wait(idle_retry_ms(self.state.probing_since(now))))
                }
            }
        })();
        Self::promptly(r)
    }
}

/// The usual wait before an idle worker asks again (ms).
pub const IDLE_RETRY_MS: u64 = 250;

/// How long a worker that got no task waits before asking again: briefly while a probe has
/// just started (its segments are about to be queued, and every idle pipeline should start on
/// them at once): an eighth of the time it has run, from 20 ms up to the usual 250 (a long
/// video's probe takes seconds; a pool asking every 20 ms that long would be load for nothing).
pub fn idle_retry_ms(probing_since: Option<u64>) -> u64 {
    probing_since.map_or(IDLE_RETRY_MS, |ms| (ms / 8).clamp(20, IDLE_RETRY_MS))
}

/// A worker renews its lease.
#[derive(Message)]
#[rtype(result = "HeartbeatReply")]
pub struct Heartbeat {
    pub worker_id: String,
    pub lease_id: String,
    pub epoch: u64,
    pub frames_done: u64,
    /// A streamed assembly asks for the committed chunks from this frame on.
    pub chunks_from: Option<u64>,
}

/// Whether to keep going, where a Segment range now ends, and a streamed assembly's chunks.
#[derive(Debug)]
pub struct HeartbeatReply {
    pub keep_going: bool,
    pub end_frame: u64,
    pub chunks: Option<crate::scheduler::ChunkNews>,
}

impl Handler<Heartbeat> for JobManager {
    type Result = MessageResult<Heartbeat>;
    fn handle(&mut self, m: Heartbeat, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.timed("heartbeat");
        let now = now_ms();
        self.touch(&m.worker_id, now);
        self.workers
            .heartbeat(&m.worker_id, &m.lease_id, m.frames_done, now);
        let (keep_going, end_frame) =
            self.state
                .heartbeat(&m.lease_id, m.epoch, m.frames_done, now, &self.rules);
        let chunks = m
            .chunks_from
            .filter(|_| keep_going)
            .and_then(|from| self.state.assembly_chunks(&m.lease_id, m.epoch, from));
        MessageResult(HeartbeatReply {
            keep_going,
            end_frame,
            chunks,
        })
    }
}

/// A worker commits one chunk checkpoint.
#[derive(Message)]
#[rtype(result = "Result<Durable<(bool, u64)>, CoordError>")]
pub struct CommitChunk {
    pub worker_id: String,
    pub lease_id: String,
    pub epoch: u64,
    pub start: u64,
    pub end: u64,
    pub url: String,
}

impl Handler<CommitChunk> for JobManager {
    type Result = Result<Durable<(bool, u64)>, CoordError>;
    fn handle(&mut self, m: CommitChunk, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.timed("commit_chunk");
        let r = (|| -> Result<(bool, u64), CoordError> {
            let now = now_ms();
            self.touch(&m.worker_id, now);
            let (ok, end, ch) =
                self.state
                    .commit_chunk(&m.lease_id, m.epoch, (m.start, m.end), m.url, now);
            self.commit(&ch)?;
            if ok {
                self.workers.committed(&m.worker_id, m.end - m.start);
                self.metrics.frames_committed.inc_by(m.end - m.start);
            } else {
                warn!(worker_id = %m.worker_id, lease_id = %m.lease_id, start = m.start, end = m.end, "chunk refused");
            }
            Ok((ok, end))
        })();
        self.durably(r)
    }
}

/// A worker commits its result.
#[derive(Message)]
#[rtype(result = "Result<Durable<bool>, CoordError>")]
pub struct Complete {
    pub lease_id: String,
    pub epoch: u64,
    pub result: Completion,
}

impl Handler<Complete> for JobManager {
    type Result = Result<Durable<bool>, CoordError>;
    fn handle(&mut self, m: Complete, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.timed("complete");
        let r = (|| -> Result<bool, CoordError> {
            let (ok, ch) =
                self.state
                    .complete(&m.lease_id, m.epoch, m.result, now_ms(), &self.rules);
            self.commit(&ch)?;
            if !ok {
                warn!(lease_id = %m.lease_id, epoch = m.epoch, "result refused: lease not current");
            }
            Ok(ok)
        })();
        self.durably(r)
    }
}

/// A worker reports a failed attempt.
#[derive(Message)]
#[rtype(result = "Result<Durable<()>, CoordError>")]
pub struct Fail {
    pub lease_id: String,
    pub epoch: u64,
    pub error: String,
    pub permanent: bool,
}

impl Handler<Fail> for JobManager {
    type Result = Result<Durable<()>, CoordError>;
    fn handle(&mut self, m: Fail, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.timed("fail");
        let (_, ch) = self.state.fail(
            &m.lease_id,
            m.epoch,
            &m.error,
            m.permanent,
            now_ms(),
            &self.rules,
        );
        let r = self.commit(&ch);
        self.durably(r)
    }
}

/// A worker gives its lease back (eviction notice, drain).
#[derive(Message)]
#[rtype(result = "Result<Durable<bool>, CoordError>")]
pub struct Release {
    pub worker_id: String,
    pub lease_id: String,
    pub epoch: u64,
    pub reason: String,
}

impl Handler<Release> for JobManager {
    type Result = Result<Durable<bool>, CoordError>;
    fn handle(&mut self, m: Release, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.timed("release");
        let r = (|| -> Result<bool, CoordError> {
            let (ok, ch) = self.state.release(&m.lease_id, m.epoch, &m.reason);
            self.commit(&ch)?;
            if ok {
                info!(worker_id = %m.worker_id, lease_id = %m.lease_id, reason = %m.reason, "lease released; task requeued");
                self.workers.released(&m.worker_id);
                self.metrics.evictions.inc();
            }
            Ok(ok)
        })();
        self.durably(r)
    }
}

/// The dashboard's main page data.
#[derive(Message)]
#[rtype(result = "Overview")]
pub struct GetOverview;

impl Handler<GetOverview> for JobManager {
    type Result = MessageResult<GetOverview>;
    fn handle(&mut self, _: GetOverview, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.timed("overview");
        MessageResult(self.overview(now_ms()))
    }
}

/// Jobs, newest first, as the REST API lists them.
#[derive(Message)]
#[rtype(result = "Vec<JobSummary>")]
pub struct ListSummaries;

impl Handler<ListSummaries> for JobManager {
    type Result = MessageResult<ListSummaries>;
    fn handle(&mut self, _: ListSummaries, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.timed("summaries");
        MessageResult(views::job_summaries(&self.state, &self.progress))
    }
}

/// One job with its tasks, as the job page shows it.
#[derive(Message)]
#[rtype(result = "Result<JobDetail, CoordError>")]
pub struct GetDetail(pub String);

impl Handler<GetDetail> for JobManager {
    type Result = Result<JobDetail, CoordError>;
    fn handle(&mut self, m: GetDetail, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.timed("detail");
        views::job_detail(&self.state, &m.0, &self.progress).ok_or(CoordError::NotFound(m.0))
    }
}

/// The workers table.
#[derive(Message)]
#[rtype(result = "Vec<WorkerView>")]
pub struct ListWorkers;

impl Handler<ListWorkers> for JobManager {
    type Result = MessageResult<ListWorkers>;
    fn handle(&mut self, _: ListWorkers, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.timed("workers");
        MessageResult(self.worker_views(now_ms()))
    }
}

/// Answers when the actor is processing messages (readiness).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

impl Handler<Ping> for JobManager {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}

/// Brings the state gauges up to date before a scrape.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RefreshGauges;

impl Handler<RefreshGauges> for JobManager {
    type Result = ();
    fn handle(&mut self, _: RefreshGauges, _: &mut Context<Self>) {
        let _timer = self.timed("gauges");
        let _ = self.refresh_gauges(now_ms());
    }
}

/// What the autoscaler needs to know about the queue and the workers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScaleFacts {
    /// Jobs queued or running.
    pub active_jobs: usize,
    /// Frames of active jobs not yet done (jobs not yet probed count 0).
    pub frames_left: u64,
    /// Workers holding a lease (primary or speculative), with their smoothed frames/s (0 = not
    /// measured yet, e.g. a probe or the first heartbeats of a segment).
    pub lease_holders: std::collections::BTreeMap<String, f64>,
}

/// The queue and the lease holders, for the autoscaler.
#[derive(Message)]
#[rtype(result = "ScaleFacts")]
pub struct GetScaleFacts;

impl Handler<GetScaleFacts> for JobManager {
    type Result = MessageResult<GetScaleFacts>;
    fn handle(&mut self, _: GetScaleFacts, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.timed("scale_facts");
        let mut f = ScaleFacts::default();
        for job in self.state.jobs.values().filter(|j| !j.state.is_terminal()) {
            f.active_jobs += 1;
            let total = views::frames_total(job);
            f.frames_left += total - self.state.frames_done(&job.id).min(total);
        }
        for l in self.live_leases() {
            let fps = self
                .workers
                .stats
                .get(&l.worker_id)
                .map(|s| s.fps)
                .unwrap_or(0.0);
            f.lease_holders.insert(l.worker_id.clone(), fps);
        }
        MessageResult(f)
    }
}

/// The autoscaler wants to stop these workers (backend ids; a multi-pipeline worker's pipelines
/// register as `ID-N`): those holding no lease are barred from new leases and returned, so
/// stopping them loses nothing; the others keep working and are not stopped.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct DrainWorkers(pub Vec<String>);

impl Handler<DrainWorkers> for JobManager {
    type Result = MessageResult<DrainWorkers>;
    fn handle(&mut self, m: DrainWorkers, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.timed("drain");
        use crate::autoscaler::belongs;
        let holders: Vec<String> = self.live_leases().map(|l| l.worker_id.clone()).collect();
        let mut idle = Vec::new();
        for base in m.0 {
            if holders.iter().any(|h| belongs(h, &base)) {
                info!(worker_id = %base, "not stopping the worker: it took a lease meanwhile");
                continue;
            }
            let pipelines: Vec<String> = self
                .workers
                .info
                .keys()
                .filter(|id| belongs(id, &base))
                .cloned()
                .collect();
            self.drained.extend(pipelines);
            self.drained.insert(base.clone());
            idle.push(base);
        }
        MessageResult(idle)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scheduler::tests::rules;

    #[test]
    fn idle_workers_ask_again_soon_only_while_a_probe_has_just_started() {
        assert_eq!(idle_retry_ms(None), IDLE_RETRY_MS);
        assert_eq!(idle_retry_ms(Some(0)), 20);
        assert_eq!(idle_retry_ms(Some(800)), 100);
        assert_eq!(idle_retry_ms(Some(60_000)), IDLE_RETRY_MS);
    }

    /// `ask` in test code: any error panics.
    pub(crate) async fn ask<M, T>(m: &Addr<JobManager>, msg: M) -> T
    where
        M: Message<Result = Result<Durable<T>, CoordError>> + Send + 'static,
        T: Send + 'static,
        JobManager: Handler<M>,
    {
        super::ask(m, msg).await.unwrap().unwrap()
    }

    pub(crate) fn submit(key: &str) -> Submit {
        Submit {
            input_url: format!("/in/{key}.mp4"),
            output_url: format!("/out/{key}.mp4"),
            params: Params {
                style_weights: vec![1.0],
                segment_seconds: 1.0,
                max_size: 0,
                crf: 20,
            },
            idempotency_key: key.into(),
            owner: String::new(),
        }
    }

    pub(crate) fn register(id: &str) -> Register {
        Register {
            worker_id: id.into(),
            info: WorkerInfo {
                hostname: "h".into(),
                gpu: false,
                threads: 1,
                last_seen_ms: now_ms(),
                model_fps: 0.0,
            },
        }
    }

    /// A JobManager over a fresh store in `dir` (start it inside an actix System).
    pub(crate) fn manager(dir: &std::path::Path, metrics: Metrics) -> JobManager {
        let store = Store::open(&dir.join("state")).unwrap();
        let (tx, _) = tokio::sync::watch::channel::<Arc<str>>("".into());
        let janitor =
            crate::janitor::Janitor::spawn(framewise_common::storage::Store::default()).unwrap();
        JobManager::new(store, rules(), metrics, Arc::new(tx), janitor).unwrap()
    }

    #[test]
    fn drained_workers_get_no_lease_and_lease_holders_are_not_drained() {
        let d = tempfile::tempdir().unwrap();
        let m = manager(d.path(), Metrics::new());
        actix::System::new().block_on(async move {
            let m = m.start();
            for w in ["auto-1", "auto-2", "auto-2-1"] {
                m.send(register(w)).await.unwrap();
            }
            // Two jobs, so two probes are pending; auto-1 takes one.
            ask(&m, submit("a")).await;
            ask(&m, submit("b")).await;
            let lease = |w: &str| LeaseTask {
                worker_id: w.into(),
                media_only: false,
                queued: std::time::Instant::now(),
            };
            assert!(ask(&m, lease("auto-1")).await.grant.is_some());
            let f = m.send(GetScaleFacts).await.unwrap();
            assert_eq!((f.active_jobs, f.frames_left), (2, 0));
            assert_eq!(f.lease_holders.keys().collect::<Vec<_>>(), ["auto-1"]);
            // auto-1 holds a lease: kept. auto-2 (and its pipeline auto-2-1) are barred from leases.
            let drained = m
                .send(DrainWorkers(vec!["auto-1".into(), "auto-2".into()]))
                .await
                .unwrap();
            assert_eq!(drained, ["auto-2"]);
            assert!(ask(&m, lease("auto-2")).await.grant.is_none());
            assert!(ask(&m, lease("auto-2-1")).await.grant.is_none());
            // A new process registering under the id may work again.
            m.send(register("auto-2")).await.unwrap();
            assert!(ask(&m, lease("auto-2")).await.grant.is_some());
            actix::System::current().stop();
        });
    }
}
