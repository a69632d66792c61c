//! What the REST API and the dashboard show: serde views built from the
//! scheduler state, the worker statistics and the progress samples by plain
//! functions (documented in assets/openapi.json).

use crate::model::{Job, JobState, Origin, Task, TaskKind, TaskState};
use crate::progress::Progress;
use crate::scheduler::State;
use crate::workers::{Activity, Workers};
use serde::Serialize;
use std::collections::HashMap;

/// Counts of a job's tasks by state.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TaskCounts {
    pub pending: u32,
    pub leased: u32,
    pub done: u32,
    pub failed: u32,
}

/// One job in a list.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    pub id: String,
    pub state: &'static str,
    pub input_url: String,
    pub output_url: String,
    pub created_ms: u64,
    pub finished_ms: u64,
    pub frames_total: u64,
    pub frames_done: u64,
    pub frames_per_s: f64,
    pub eta_s: Option<f64>,
    pub error: String,
    /// Task counts (in a job detail they move to `task_counts`, as `tasks` lists the tasks there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<TaskCounts>,
    pub workers_active: u32,
}

/// Media facts in user units.
#[derive(Debug, Clone, Serialize)]
pub struct MediaView {
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub duration_s: f64,
    pub audio_streams: u32,
    pub video_codec: String,
    pub container: String,
}

/// A live lease as the job page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseView {
    pub id: String,
    pub worker_id: String,
    pub from: u64,
    pub deadline_ms: u64,
    pub frames_done: u64,
}

/// A committed frame range and who computed it.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkView {
    pub start: u64,
    pub end: u64,
    pub worker_id: String,
}

/// One task with its history (retries, steals, releases).
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    pub index: u32,
    pub kind: &'static str,
    pub state: &'static str,
    pub start: u64,
    pub end: u64,
    pub committed_until: u64,
    pub attempts: u32,
    pub failures: u32,
    pub errors: Vec<String>,
    pub worker_id: String,
    pub origin: &'static str,
    pub origin_task: Option<u32>,
    pub lease: Option<LeaseView>,
    pub chunks: Vec<ChunkView>,
    pub releases: u32,
    /// Speculative attempts started on this task, and the one racing now.
    pub speculations: u32,
    pub spec: Option<LeaseView>,
    /// Its worker logs, every attempt (GET; 404 until leased).
    pub log_url: String,
}

/// A job with everything the job page needs.
#[derive(Debug, Clone, Serialize)]
pub struct JobDetail {
    #[serde(flatten)]
    pub summary: JobSummary,
    pub params: crate::model::Params,
    pub media: Option<MediaView>,
    pub chunk_frames: u64,
    pub task_counts: TaskCounts,
    pub tasks: Vec<TaskView>,
}

/// A worker's current lease.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerLease {
    pub job_id: String,
    pub task: u32,
    pub lease_id: String,
    pub kind: &'static str,
    pub from: u64,
    pub end: u64,
    pub frames_done: u64,
}

/// One row of the workers table.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerView {
    pub id: String,
    pub hostname: String,
    pub gpu: bool,
    pub threads: u32,
    /// Model frames/s at 640x360 measured at the worker's start-up (its capacity).
    pub model_fps: f64,
    pub state: &'static str,
    pub frames_per_s: f64,
    pub frames_committed: u64,
    pub evictions: u64,
    pub leases: u64,
    pub last_seen_ms: u64,
    pub lease: Option<WorkerLease>,
}

/// Cluster-wide figures for the dashboard header and /metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub frames_per_s: f64,
    pub queue_frames: u64,
    pub leases_granted: u64,
    pub leases_expired: u64,
    pub evictions: u64,
    pub wasted_frames: u64,
    pub jobs_active: u32,
}

/// Everything the dashboard's main page shows, pushed over SSE.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub now_ms: u64,
    pub jobs: Vec<JobSummary>,
    pub workers: Vec<WorkerView>,
    pub throughput: Vec<(u64, f64)>,
    pub totals: Totals,
}

pub fn job_state_name(s: JobState) -> &'static str {
    match s {
        JobState::Queued => "queued",
        JobState::Probing => "probing",
        JobState::Running => "running",
        JobState::Assembling => "assembling",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

pub fn task_state_name(s: TaskState) -> &'static str {
    match s {
        TaskState::Pending => "pending",
        TaskState::Leased => "leased",
        TaskState::Done => "done",
        TaskState::Failed => "failed",
    }
}

/// Frames a job has in total (0 until probed).
pub fn frames_total(job: &Job) -> u64 {
    job.media
        .as_ref()
        .map(|m| m.frame_pts.len() as u64)
        .unwrap_or(0)
}

pub fn job_summary(state: &State, job: &Job, progress: &Progress) -> JobSummary {
    let mut counts = TaskCounts::default();
    let mut workers: Vec<&str> = Vec::new();
    for t in state.tasks_of(&job.id) {
        match t.state {
            TaskState::Pending => counts.pending += 1,
            TaskState::Leased => counts.leased += 1,
            TaskState::Done => counts.done += 1,
            TaskState::Failed => counts.failed += 1,
        }
        if let (TaskState::Leased, Some(l)) = (t.state, &t.lease) {
            if !workers.contains(&l.worker_id.as_str()) {
                workers.push(&l.worker_id);
            }
        }
    }
    let total = frames_total(job);
    let done = if job.state == JobState::Succeeded {
        total
    } else {
        state.frames_done(&job.id).min(total)
    };
    let live = !job.state.is_terminal();
    JobSummary {
        id: job.id.clone(),
        state: job_state_name(job.state),
        input_url: job.input_url.clone(),
        output_url: job.output_url.clone(),
        created_ms: job.created_ms,
        finished_ms: job.finished_ms,
        frames_total: total,
        frames_done: done,
        frames_per_s: if live { progress.rate(&job.id) } else { 0.0 },
        eta_s: if live {
            progress.eta_s(&job.id, done, total)
        } else {
            None
        },
        error: job.error.clone(),
        tasks: Some(counts),
        workers_active: workers.len() as u32,
    }
}

fn lease_view(l: &crate::model::Lease, frames_done: u64) -> LeaseView {
    LeaseView {
        id: l.id.clone(),
        worker_id: l.worker_id.clone(),
        from: l.from,
        deadline_ms: l.deadline_ms,
        frames_done,
    }
}

pub fn task_view(t: &Task) -> TaskView {
    // A lease shows only while the task is leased.
    let leased = t.state == TaskState::Leased;
    let (start, end) = match t.kind {
        TaskKind::Segment { start, end } => (start, end),
        _ => (0, 0),
    };
    let (origin, origin_task) = match t.origin {
        Origin::Planned => ("planned", None),
        Origin::Stolen { from } => ("stolen", Some(from)),
    };
    TaskView {
        index: t.index,
        kind: t.kind_name(),
        state: task_state_name(t.state),
        start,
        end,
        committed_until: t.committed_until(),
        attempts: t.attempts,
        failures: t.failures,
        errors: t.errors.clone(),
        worker_id: t.worker_id.clone(),
        origin,
        origin_task,
        lease: t
            .lease
            .as_ref()
            .filter(|_| leased)
            .map(|l| lease_view(l, t.frames_done)),
        chunks: t
            .chunks
            .iter()
            .map(|c| ChunkView {
                start: c.start,
                end: c.end,
                worker_id: c.worker_id.clone(),
            })
            .collect(),
        releases: t.releases,
        speculations: t.speculations,
        log_url: format!("/api/v1/jobs/{}/tasks/{}/log", t.job_id, t.index),
        spec: t
            .spec
            .as_ref()
            .filter(|_| leased)
            .map(|l| lease_view(l, l.frames_done)),
    }
}

pub fn job_detail(state: &State, id: &str, progress: &Progress) -> Option<JobDetail> {
    let job = state.jobs.get(id)?;
    let mut summary = job_summary(state, job, progress);
    let task_counts = summary.tasks.take().unwrap_or_default();
    Some(JobDetail {
        summary,
        task_counts,
        params: job.params.clone(),
        media: job.media.as_ref().map(|m| MediaView {
            width: m.width,
            height: m.height,
            fps: m.fps(),
            duration_s: m.duration_ns as f64 / 1e9,
            audio_streams: m.audio_streams,
            video_codec: m.video_codec.clone(),
            container: m.container.clone(),
        }),
        chunk_frames: job.chunk_frames,
        tasks: state.tasks_of(id).into_iter().map(task_view).collect(),
    })
}

/// Jobs newest first.
pub fn job_summaries(state: &State, progress: &Progress) -> Vec<JobSummary> {
    let mut jobs: Vec<&Job> = state.jobs.values().collect();
    jobs.sort_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
    jobs.into_iter()
        .map(|j| job_summary(state, j, progress))
        .collect()
}

pub fn worker_views(state: &State, workers: &Workers, now: u64, ttl_ms: u64) -> Vec<WorkerView> {
    let mut current: HashMap<&str, WorkerLease> = HashMap::new();
    for t in state.leased_tasks() {
        if t.state != TaskState::Leased {
            continue;
        }
        let end = match t.kind {
            TaskKind::Segment { end, .. } => end,
            _ => 0,
        };
        let twins = t.lease.iter().map(|l| (l, t.frames_done));
        for (l, frames_done) in twins.chain(t.spec.iter().map(|s| (s, s.frames_done))) {
            current.insert(
                &l.worker_id,
                WorkerLease {
                    job_id: t.job_id.clone(),
                    task: t.index,
                    lease_id: l.id.clone(),
                    kind: t.kind_name(),
                    from: l.from,
                    end,
                    frames_done,
                },
            );
        }
    }
    workers
        .info
        .iter()
        .map(|(id, w)| {
            let stats = workers.stats.get(id).cloned().unwrap_or_default();
            let lease = current.remove(id.as_str());
            let activity = workers.activity(id, lease.is_some(), now, ttl_ms);
            WorkerView {
                id: id.clone(),
                hostname: w.hostname.clone(),
                gpu: w.gpu,
                threads: w.threads,
                model_fps: w.model_fps,
                state: activity.name(),
                frames_per_s: if activity == Activity::Busy {
                    stats.fps
                } else {
                    0.0
                },
                frames_committed: stats.frames_committed,
                evictions: stats.evictions,
                leases: stats.leases,
                last_seen_ms: w.last_seen_ms,
                lease,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{planned_job, rules};

    #[test]
    fn summary_counts_tasks_and_progress() {
        let r = rules();
        let mut s = planned_job(&r, 40);
        let (grant, _) = s
            .lease("w1", "l1".into(), 10, &r)
            .expect("a pending segment");
        s.heartbeat(&grant.lease_id, grant.epoch, 5, 20, &r);
        let mut p = Progress::default();
        p.sample("j1", 0, 0);
        p.sample("j1", 1000, 5);
        let job = &s.jobs["j1"];
        let v = job_summary(&s, job, &p);
        assert_eq!(v.state, "running");
        assert_eq!(v.frames_total, 40);
        assert_eq!(v.frames_done, 5);
        let counts = v.tasks.clone().expect("counts in a summary");
        assert_eq!(counts.leased, 1);
        assert!(counts.pending >= 1);
        assert_eq!(v.workers_active, 1);
        assert_eq!(v.eta_s, Some(7.0));
        let d = job_detail(&s, "j1", &p).expect("job exists");
        let leased: Vec<&TaskView> = d.tasks.iter().filter(|t| t.lease.is_some()).collect();
        assert_eq!(leased.len(), 1);
        assert_eq!(leased[0].lease.as_ref().map(|l| l.frames_done), Some(5));
        let json = serde_json::to_value(&d).expect("serializes");
        // The summary is flattened into the detail, as the OpenAPI document says.
        assert_eq!(json["id"], "j1");
        assert!(json["tasks"].is_array());
        assert_eq!(json["task_counts"]["leased"], 1);
        let text = serde_json::to_string(&d).expect("serializes");
        assert_eq!(
            text.matches("\"tasks\"").count(),
            1,
            "one tasks key: {text}"
        );
        assert!(job_detail(&s, "nope", &p).is_none());
    }

    #[test]
    fn workers_show_their_lease_and_activity() {
        let r = rules();
        let mut s = planned_job(&r, 40);
        s.lease("w1", "l1".into(), 10, &r)
            .expect("a pending segment");
        let mut w = Workers::new(["w1", "w2", "w3"].map(|id| {
            (
                id.to_string(),
                crate::workers::WorkerInfo {
                    hostname: "h".into(),
                    gpu: false,
                    threads: 2,
                    last_seen_ms: if id == "w3" { 0 } else { 5_000 },
                    model_fps: 0.0,
                },
            )
        }));
        w.released("w2");
        let v = worker_views(&s, &w, 5_500, 1_000);
        let by: HashMap<&str, &WorkerView> = v.iter().map(|w| (w.id.as_str(), w)).collect();
        assert_eq!(by["w1"].state, "busy");
        assert_eq!(
            by["w1"].lease.as_ref().map(|l| (l.job_id.as_str(), l.task)),
            Some(("j1", 1))
        );
        assert_eq!(by["w2"].state, "draining");
        assert_eq!(by["w3"].state, "lost");
    }
}
