//! The job and task state machines and the lease queue, as plain functions on
//! in-memory state. The JobManager actor calls these and persists what they
//! report as changed, so every rule here is testable without actors, sled or
//! a network.

use crate::model::{
    Job, JobState, Lease, Media, Params, Task, TaskKind, TaskState, SCHEMA_VERSION,
};
use framewise_common::plan::{keyframe_at_or_before, plan_segments};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Lease and retry rules, from the coordinator config.
#[derive(Debug, Clone)]
pub struct Rules {
    pub lease_ttl_ms: u64,
    pub max_attempts: u32,
    pub segment_seconds: f64,
    pub work_dir: std::path::PathBuf,
}

/// Keys whose records changed and must be written before replying.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    pub jobs: Vec<String>,
    pub tasks: Vec<(String, u32)>,
    /// Objects nobody will read again (fenced attempts, finished jobs' segments).
    pub garbage: Vec<String>,
}

impl Changes {
    fn job(&mut self, id: &str) {
        if !self.jobs.iter().any(|j| j == id) {
            self.jobs.push(id.to_string());
        }
    }
    fn task(&mut self, job: &str, index: u32) {
        if !self.tasks.iter().any(|(j, i)| j == job && *i == index) {
            self.tasks.push((job.to_string(), index));
        }
    }
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.tasks.is_empty()
    }
}

/// What a user asked for, before it becomes a job.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub idempotency_key: String,
    pub input_url: String,
    pub output_url: String,
    pub params: Params,
}

/// A task handed to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub job_id: String,
    pub index: u32,
    pub lease_id: String,
    pub epoch: u64,
    pub work: Work,
}

/// What the worker must do under a grant.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    Probe {
        input_url: String,
    },
    Segment {
        input_url: String,
        start: u64,
        end: u64,
        frame_pts: Vec<u64>,
        seek_ns: u64,
        output_url: String,
        params: Params,
        media: Media,
    },
    Assemble {
        input_url: String,
        segments: Vec<(String, u64, u64)>,
        output_url: String,
        media: Media,
    },
}

/// A worker's result for its lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    Probe(Media),
    Segment { output_url: String, frames: u64 },
    Assemble { output_url: String, frames: u64 },
}

/// Jobs, tasks and the lease index.
#[derive(Debug, Default)]
pub struct State {
    pub jobs: BTreeMap<String, Job>,
    pub tasks: BTreeMap<(String, u32), Task>,
    leases: HashMap<String, (String, u32)>,
}

impl State {
    /// Rebuilds the state from stored records; live leases get one fresh TTL for their workers to come back.
    pub fn restore(jobs: Vec<Job>, tasks: Vec<Task>, now: u64, rules: &Rules) -> (Self, Changes) {
        let mut s = State::default();
        let mut ch = Changes::default();
        for j in jobs {
            s.jobs.insert(j.id.clone(), j);
        }
        for mut t in tasks {
            if let Some(l) = t.lease.as_mut() {
                l.deadline_ms = now + rules.lease_ttl_ms;
                s.leases.insert(l.id.clone(), (t.job_id.clone(), t.index));
                ch.task(&t.job_id, t.index);
            }
            s.tasks.insert((t.job_id.clone(), t.index), t);
        }
        (s, ch)
    }

    /// Accepts a job, or returns the existing one for a repeated idempotency key.
    pub fn submit(&mut self, new: NewJob, now: u64, rules: &Rules) -> (String, bool, Changes) {
        let NewJob {
            id,
            idempotency_key: key,
            input_url,
            output_url,
            mut params,
        } = new;
        let key = key.as_str();
        if !key.is_empty() {
            if let Some(j) = self.jobs.values().find(|j| j.idempotency_key == key) {
                return (j.id.clone(), true, Changes::default());
            }
        }
        if !(params.segment_seconds.is_finite() && params.segment_seconds > 0.0) {
            params.segment_seconds = rules.segment_seconds;
        }
        let job = Job {
            v: SCHEMA_VERSION,
            id: id.clone(),
            idempotency_key: key.to_string(),
            input_url,
            output_url,
            params,
            state: JobState::Queued,
            error: String::new(),
            created_ms: now,
            finished_ms: 0,
            media: None,
            segments: 0,
        };
        self.jobs.insert(id.clone(), job);
        self.tasks
            .insert((id.clone(), 0), Task::new(&id, 0, TaskKind::Probe));
        let mut ch = Changes::default();
        ch.job(&id);
        ch.task(&id, 0);
        (id, false, ch)
    }

    /// Hands the oldest pending task of the oldest active job to `worker`.
    pub fn lease(
        &mut self,
        worker: &str,
        lease_id: String,
        now: u64,
        rules: &Rules,
    ) -> Option<(Grant, Changes)> {
        let mut active: Vec<&Job> = self
            .jobs
            .values()
            .filter(|j| !j.state.is_terminal())
            .collect();
        active.sort_by_key(|j| (j.created_ms, j.id.clone()));
        let key = active.iter().find_map(|j| {
            self.tasks
                .range((j.id.clone(), 0)..=(j.id.clone(), u32::MAX))
                .find(|(_, t)| t.state == TaskState::Pending)
                .map(|(k, _)| k.clone())
        })?;
        let task = self.tasks.get_mut(&key)?;
        task.state = TaskState::Leased;
        task.epoch += 1;
        task.attempts += 1;
        task.frames_done = 0;
        task.lease = Some(Lease {
            id: lease_id.clone(),
            worker_id: worker.to_string(),
            deadline_ms: now + rules.lease_ttl_ms,
        });
        let (epoch, index, kind) = (task.epoch, task.index, task.kind.clone());
        self.leases.insert(lease_id.clone(), key.clone());
        let job = self.jobs.get_mut(&key.0)?;
        let mut ch = Changes::default();
        if job.state == JobState::Queued {
            job.state = JobState::Probing;
            ch.job(&job.id);
        }
        let job = job.clone();
        let media = job.media.clone().unwrap_or_default();
        let work = match kind {
            TaskKind::Probe => Work::Probe {
                input_url: job.input_url.clone(),
            },
            TaskKind::Segment { start, end } => {
                let kf = keyframe_at_or_before(&media.keyframes, start);
                let seek_ns = if kf == 0 {
                    0
                } else {
                    media.frame_pts.get(kf as usize).copied().unwrap_or(0)
                };
                let output = rules
                    .work_dir
                    .join(&job.id)
                    .join(format!("seg-{index:05}-e{epoch}.mp4"));
                Work::Segment {
                    input_url: job.input_url.clone(),
                    start,
                    end,
                    frame_pts: media
                        .frame_pts
                        .get(start as usize..end as usize)
                        .map(|s| s.to_vec())
                        .unwrap_or_default(),
                    seek_ns,
                    output_url: framewise_common::storage::file_url(&output),
                    params: job.params.clone(),
                    media: Media {
                        frame_pts: Vec::new(),
                        keyframes: Vec::new(),
                        ..media.clone()
                    },
                }
            }
            TaskKind::Assemble => {
                let segments = self
                    .tasks
                    .range((job.id.clone(), 1)..(job.id.clone(), index))
                    .filter_map(|(_, t)| match t.kind {
                        TaskKind::Segment { start, end } => {
                            Some((t.output_url.clone(), start, end))
                        }
                        _ => None,
                    })
                    .collect();
                Work::Assemble {
                    input_url: job.input_url.clone(),
                    segments,
                    output_url: job.output_url.clone(),
                    media,
                }
            }
        };
        ch.task(&key.0, key.1);
        Some((
            Grant {
                job_id: key.0.clone(),
                index,
                lease_id,
                epoch,
                work,
            },
            ch,
        ))
    }

    fn current(&self, lease_id: &str, epoch: u64) -> Option<(String, u32)> {
        let key = self.leases.get(lease_id)?;
        let t = self.tasks.get(key)?;
        let job = self.jobs.get(&key.0)?;
        let live = t.state == TaskState::Leased
            && t.epoch == epoch
            && t.lease.as_ref().is_some_and(|l| l.id == lease_id);
        (live && !job.state.is_terminal()).then(|| key.clone())
    }

    /// Renews a lease; false tells the worker to stop (lease lost, job finished or cancelled).
    pub fn heartbeat(
        &mut self,
        lease_id: &str,
        epoch: u64,
        frames_done: u64,
        now: u64,
        rules: &Rules,
    ) -> (bool, Changes) {
        let Some(key) = self.current(lease_id, epoch) else {
            return (false, Changes::default());
        };
        if let Some(t) = self.tasks.get_mut(&key) {
            t.frames_done = frames_done.min(t.frames());
            if let Some(l) = t.lease.as_mut() {
                l.deadline_ms = now + rules.lease_ttl_ms;
            }
        }
        // Heartbeats only move deadlines and progress, which a restart resets anyway: nothing to persist.
        (true, Changes::default())
    }

    /// Commits a result if its lease is current; a stale one is refused and its object collected.
    pub fn complete(
        &mut self,
        lease_id: &str,
        epoch: u64,
        result: Completion,
        now: u64,
        rules: &Rules,
    ) -> (bool, Changes) {
        let mut ch = Changes::default();
        let Some(key) = self.current(lease_id, epoch) else {
            if let Completion::Segment { output_url, .. } = result {
                ch.garbage.push(output_url);
            }
            return (false, ch);
        };
        let Some(task) = self.tasks.get(&key).cloned() else {
            return (false, ch);
        };
        let worker = task
            .lease
            .as_ref()
            .map(|l| l.worker_id.clone())
            .unwrap_or_default();
        match (&task.kind, result) {
            (TaskKind::Probe, Completion::Probe(media)) => {
                if media.frame_pts.is_empty() {
                    return (
                        true,
                        self.fail_job(&key.0, "the input has no video frames".into(), now),
                    );
                }
                self.finish_task(&key, &worker, String::new(), 0, &mut ch);
                let job = self.jobs.get_mut(&key.0).expect("job of a live task");
                let ranges = plan_segments(
                    media.frame_pts.len() as u64,
                    media.fps(),
                    &media.keyframes,
                    job.params.segment_seconds,
                );
                job.media = Some(media);
                job.segments = ranges.len() as u32;
                job.state = JobState::Running;
                let id = job.id.clone();
                for (i, r) in ranges.into_iter().enumerate() {
                    let idx = i as u32 + 1;
                    self.tasks.insert(
                        (id.clone(), idx),
                        Task::new(
                            &id,
                            idx,
                            TaskKind::Segment {
                                start: r.start,
                                end: r.end,
                            },
                        ),
                    );
                    ch.task(&id, idx);
                }
                ch.job(&id);
            }
            (TaskKind::Segment { .. }, Completion::Segment { output_url, frames }) => {
                if frames != task.frames() {
                    let err = format!("segment wrote {frames} frames, expected {}", task.frames());
                    let (_, c) = self.fail(lease_id, epoch, &err, false, now, rules);
                    ch.garbage.push(output_url);
                    return (false, merge(ch, c));
                }
                self.finish_task(&key, &worker, output_url, frames, &mut ch);
                let job = self.jobs.get(&key.0).expect("job of a live task").clone();
                let all_done = (1..=job.segments).all(|i| {
                    self.tasks
                        .get(&(job.id.clone(), i))
                        .is_some_and(|t| t.state == TaskState::Done)
                });
                if all_done {
                    let idx = job.segments + 1;
                    self.tasks.insert(
                        (job.id.clone(), idx),
                        Task::new(&job.id, idx, TaskKind::Assemble),
                    );
                    ch.task(&job.id, idx);
                    if let Some(j) = self.jobs.get_mut(&job.id) {
                        j.state = JobState::Assembling;
                    }
                    ch.job(&job.id);
                }
            }
            (TaskKind::Assemble, Completion::Assemble { .. }) => {
                self.finish_task(&key, &worker, String::new(), 0, &mut ch);
                let job = self.jobs.get_mut(&key.0).expect("job of a live task");
                job.state = JobState::Succeeded;
                job.finished_ms = now;
                let id = job.id.clone();
                ch.job(&id);
                ch.garbage.extend(
                    self.tasks
                        .range((id.clone(), 1)..=(id.clone(), u32::MAX))
                        .filter(|(_, t)| !t.output_url.is_empty())
                        .map(|(_, t)| t.output_url.clone()),
                );
            }
            (kind, other) => {
                let err = format!(
                    "worker sent a {} result for a {kind:?} task",
                    completion_name(&other)
                );
                let (_, c) = self.fail(lease_id, epoch, &err, false, now, rules);
                return (false, merge(ch, c));
            }
        }
        (true, ch)
    }

    fn finish_task(
        &mut self,
        key: &(String, u32),
        worker: &str,
        output_url: String,
        frames: u64,
        ch: &mut Changes,
    ) {
        if let Some(t) = self.tasks.get_mut(key) {
            if let Some(l) = t.lease.take() {
                self.leases.remove(&l.id);
            }
            t.state = TaskState::Done;
            t.output_url = output_url;
            t.frames_done = frames;
            t.worker_id = worker.to_string();
            ch.task(&key.0, key.1);
        }
    }

    /// Records a failed attempt; the task is retried unless the input is at fault or attempts are used up.
    pub fn fail(
        &mut self,
        lease_id: &str,
        epoch: u64,
        error: &str,
        permanent: bool,
        now: u64,
        rules: &Rules,
    ) -> (bool, Changes) {
        let Some(key) = self.current(lease_id, epoch) else {
            return (false, Changes::default());
        };
        let Some(t) = self.tasks.get_mut(&key) else {
            return (false, Changes::default());
        };
        let worker = t.lease.take().map(|l| {
            self.leases.remove(&l.id);
            l.worker_id
        });
        let worker = worker.unwrap_or_default();
        t.errors.push(format!("{worker}: {error}"));
        t.frames_done = 0;
        t.failures += 1;
        if !t.failed_workers.contains(&worker) {
            t.failed_workers.push(worker);
        }
        let mut ch = Changes::default();
        ch.task(&key.0, key.1);
        // Poison: failed on max_attempts distinct workers, or twice that many times
        // in all (so a pool of one or two workers cannot retry forever).
        let poisoned = t.failed_workers.len() as u32 >= rules.max_attempts
            || t.failures >= 2 * rules.max_attempts;
        if permanent || poisoned {
            t.state = TaskState::Failed;
            let reason = if permanent {
                error.to_string()
            } else {
                format!(
                    "{} failed {} times on {} workers: {}",
                    describe(t),
                    t.failures,
                    t.failed_workers.len(),
                    t.errors.join("; ")
                )
            };
            return (true, merge(ch, self.fail_job(&key.0, reason, now)));
        }
        t.state = TaskState::Pending;
        (true, ch)
    }

    /// Takes a lease back unfinished (eviction notice, drain): requeued at once, not a failure.
    pub fn release(&mut self, lease_id: &str, epoch: u64, reason: &str) -> (bool, Changes) {
        let Some(key) = self.current(lease_id, epoch) else {
            return (false, Changes::default());
        };
        let Some(t) = self.tasks.get_mut(&key) else {
            return (false, Changes::default());
        };
        if let Some(l) = t.lease.take() {
            self.leases.remove(&l.id);
            t.errors
                .push(format!("{}: released ({reason})", l.worker_id));
        }
        t.frames_done = 0;
        t.state = TaskState::Pending;
        let mut ch = Changes::default();
        ch.task(&key.0, key.1);
        (true, ch)
    }

    /// Requeues tasks whose lease was not renewed in time.
    pub fn expire(&mut self, now: u64, rules: &Rules) -> Changes {
        let expired: Vec<(String, u64)> = self
            .tasks
            .values()
            .filter(|t| {
                t.state == TaskState::Leased
                    && t.lease.as_ref().is_some_and(|l| l.deadline_ms <= now)
            })
            .filter_map(|t| t.lease.as_ref().map(|l| (l.id.clone(), t.epoch)))
            .collect();
        let mut ch = Changes::default();
        for (lease_id, epoch) in expired {
            let (_, c) = self.fail(
                &lease_id,
                epoch,
                "lease expired (worker lost or stalled)",
                false,
                now,
                rules,
            );
            ch = merge(ch, c);
        }
        ch
    }

    /// Cancels a job; running attempts learn it from their next heartbeat.
    pub fn cancel(&mut self, job_id: &str, now: u64) -> Option<Changes> {
        let job = self.jobs.get_mut(job_id)?;
        let mut ch = Changes::default();
        if !job.state.is_terminal() {
            job.state = JobState::Cancelled;
            job.error = "cancelled by the user".into();
            job.finished_ms = now;
            ch.job(job_id);
        }
        Some(ch)
    }

    fn fail_job(&mut self, job_id: &str, reason: String, now: u64) -> Changes {
        let mut ch = Changes::default();
        if let Some(j) = self.jobs.get_mut(job_id) {
            if !j.state.is_terminal() {
                j.state = JobState::Failed;
                j.error = reason;
                j.finished_ms = now;
                ch.job(job_id);
            }
        }
        ch
    }

    /// Frames finished (committed segments plus running attempts' progress).
    pub fn frames_done(&self, job_id: &str) -> u64 {
        self.tasks
            .range((job_id.to_string(), 1)..=(job_id.to_string(), u32::MAX))
            .filter(|(_, t)| matches!(t.kind, TaskKind::Segment { .. }))
            .map(|(_, t)| t.frames_done)
            .sum()
    }

    /// The tasks of a job in order.
    pub fn tasks_of(&self, job_id: &str) -> Vec<&Task> {
        self.tasks
            .range((job_id.to_string(), 0)..=(job_id.to_string(), u32::MAX))
            .map(|(_, t)| t)
            .collect()
    }
}

fn merge(mut a: Changes, b: Changes) -> Changes {
    for j in b.jobs {
        a.job(&j);
    }
    for (j, i) in b.tasks {
        a.task(&j, i);
    }
    a.garbage.extend(b.garbage);
    a
}

fn describe(t: &Task) -> String {
    match t.kind {
        TaskKind::Probe => "probe".into(),
        TaskKind::Segment { start, end } => format!("segment {} (frames {start}..{end})", t.index),
        TaskKind::Assemble => "assembly".into(),
    }
}

fn completion_name(c: &Completion) -> &'static str {
    match c {
        Completion::Probe(_) => "probe",
        Completion::Segment { .. } => "segment",
        Completion::Assemble { .. } => "assemble",
    }
}

/// The local file behind a collectable object URL, if it is one.
pub fn garbage_path(url: &str) -> Option<std::path::PathBuf> {
    framewise_common::storage::local_path(url)
        .ok()
        .filter(|p| Path::new(p).is_absolute())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            lease_ttl_ms: 1000,
            max_attempts: 2,
            segment_seconds: 1.0,
            work_dir: "/w".into(),
        }
    }

    fn media(n: u64) -> Media {
        Media {
            width: 64,
            height: 48,
            fps_num: 10,
            fps_den: 1,
            duration_ns: n * 100_000_000,
            frame_pts: (0..n).map(|i| i * 100_000_000).collect(),
            keyframes: vec![0],
            ..Default::default()
        }
    }

    pub(crate) fn new_job(id: &str, key: &str) -> NewJob {
        NewJob {
            id: id.into(),
            idempotency_key: key.into(),
            input_url: "file:///in.mp4".into(),
            output_url: "file:///out.mp4".into(),
            params: Params::default(),
        }
    }

    fn submit(s: &mut State) -> String {
        s.submit(new_job("j1", "k"), 0, &rules()).0
    }

    #[test]
    fn a_job_runs_probe_segments_assemble() {
        let (mut s, r) = (State::default(), rules());
        let id = submit(&mut s);
        let (g, _) = s.lease("w1", "l1".into(), 0, &r).unwrap();
        assert!(matches!(g.work, Work::Probe { .. }));
        assert!(
            s.lease("w2", "l2".into(), 0, &r).is_none(),
            "nothing else before the probe is done"
        );
        let (ok, ch) = s.complete("l1", g.epoch, Completion::Probe(media(25)), 1, &r);
        assert!(ok);
        assert_eq!(
            s.jobs[&id].segments, 3,
            "25 frames at 10 fps in 1 s segments: 10, 10, 5"
        );
        assert!(ch.tasks.len() >= 4);
        let mut grants = Vec::new();
        for i in 0..3 {
            grants.push(s.lease("w1", format!("s{i}"), 2, &r).unwrap().0);
        }
        let mut covered = 0;
        for g in &grants {
            let Work::Segment {
                start,
                end,
                ref frame_pts,
                ref output_url,
                ..
            } = g.work
            else {
                panic!()
            };
            assert_eq!(frame_pts.len() as u64, end - start);
            assert!(output_url.contains(&format!("e{}", g.epoch)));
            covered += end - start;
        }
        assert_eq!(covered, 25);
        for g in &grants {
            let Work::Segment {
                start,
                end,
                ref output_url,
                ..
            } = g.work
            else {
                panic!()
            };
            let (ok, _) = s.complete(
                &g.lease_id,
                g.epoch,
                Completion::Segment {
                    output_url: output_url.clone(),
                    frames: end - start,
                },
                3,
                &r,
            );
            assert!(ok);
        }
        assert_eq!(s.jobs[&id].state, JobState::Assembling);
        assert_eq!(s.frames_done(&id), 25);
        let (g, _) = s.lease("w1", "a".into(), 4, &r).unwrap();
        let Work::Assemble { ref segments, .. } = g.work else {
            panic!()
        };
        assert_eq!(segments.len(), 3);
        assert_eq!(segments[0].1, 0);
        assert_eq!(segments[2].2, 25);
        let (ok, ch) = s.complete(
            "a",
            g.epoch,
            Completion::Assemble {
                output_url: "file:///out.mp4".into(),
                frames: 25,
            },
            5,
            &r,
        );
        assert!(ok);
        assert_eq!(s.jobs[&id].state, JobState::Succeeded);
        assert_eq!(
            ch.garbage.len(),
            3,
            "segment files are collected after success"
        );
    }

    #[test]
    fn idempotent_submit() {
        let mut s = State::default();
        let a = submit(&mut s);
        let (b, existing, ch) = s.submit(new_job("j2", "k"), 0, &rules());
        assert_eq!(a, b);
        assert!(existing && ch.is_empty());
    }

    #[test]
    fn expired_lease_is_requeued_and_stale_results_are_fenced() {
        let (mut s, r) = (State::default(), rules());
        submit(&mut s);
        let (g1, _) = s.lease("w1", "l1".into(), 0, &r).unwrap();
        assert!(s.heartbeat("l1", g1.epoch, 0, 500, &r).0);
        assert!(s.expire(1400, &r).is_empty(), "renewed by the heartbeat");
        let ch = s.expire(1500, &r);
        assert_eq!(ch.tasks.len(), 1);
        let (g2, _) = s.lease("w2", "l2".into(), 1600, &r).unwrap();
        assert_eq!(g2.epoch, g1.epoch + 1);
        assert!(
            !s.heartbeat("l1", g1.epoch, 0, 1600, &r).0,
            "the old lease is gone"
        );
        let (ok, _) = s.complete("l1", g1.epoch, Completion::Probe(media(5)), 1700, &r);
        assert!(!ok, "a stale epoch cannot commit");
        let (ok, _) = s.complete("l2", g2.epoch, Completion::Probe(media(5)), 1700, &r);
        assert!(ok);
    }

    #[test]
    fn permanent_failure_fails_the_job_at_once() {
        let (mut s, r) = (State::default(), rules());
        let id = submit(&mut s);
        let (g, _) = s.lease("w1", "l1".into(), 0, &r).unwrap();
        s.fail("l1", g.epoch, "/in.mp4: not a video file", true, 1, &r);
        assert_eq!(s.jobs[&id].state, JobState::Failed);
        assert_eq!(s.jobs[&id].error, "/in.mp4: not a video file");
        assert!(s.lease("w1", "l2".into(), 2, &r).is_none());
    }

    #[test]
    fn retries_then_fails_with_collected_errors() {
        let (mut s, r) = (State::default(), rules());
        let id = submit(&mut s);
        let (g, _) = s.lease("w1", "l1".into(), 0, &r).unwrap();
        s.fail("l1", g.epoch, "boom", false, 1, &r);
        assert_eq!(s.jobs[&id].state, JobState::Probing);
        let (g, _) = s.lease("w2", "l2".into(), 2, &r).unwrap();
        s.fail("l2", g.epoch, "bang", false, 3, &r);
        assert_eq!(s.jobs[&id].state, JobState::Failed);
        let e = &s.jobs[&id].error;
        assert!(
            e.contains("w1: boom") && e.contains("w2: bang") && e.contains("2 times on 2 workers"),
            "{e}"
        );
    }

    #[test]
    fn wrong_frame_count_is_not_committed() {
        let (mut s, r) = (State::default(), rules());
        submit(&mut s);
        let (g, _) = s.lease("w1", "l1".into(), 0, &r).unwrap();
        s.complete("l1", g.epoch, Completion::Probe(media(5)), 1, &r);
        let (g, _) = s.lease("w1", "l2".into(), 2, &r).unwrap();
        let (ok, ch) = s.complete(
            "l2",
            g.epoch,
            Completion::Segment {
                output_url: "file:///w/x".into(),
                frames: 4,
            },
            3,
            &r,
        );
        assert!(!ok);
        assert_eq!(ch.garbage, vec!["file:///w/x".to_string()]);
    }

    #[test]
    fn one_worker_cannot_retry_forever_and_release_is_not_a_failure() {
        let (mut s, r) = (State::default(), rules()); // max_attempts 2
        let id = submit(&mut s);
        for i in 0..3 {
            let (g, _) = s.lease("w1", format!("l{i}"), i, &r).unwrap();
            s.fail(&format!("l{i}"), g.epoch, "flaky", false, i, &r);
            assert_eq!(
                s.jobs[&id].state,
                JobState::Probing,
                "same worker, {} failures",
                i + 1
            );
        }
        // Releases (eviction notices) never count.
        for i in 3..8 {
            let (g, _) = s.lease("w1", format!("l{i}"), i, &r).unwrap();
            assert!(s.release(&format!("l{i}"), g.epoch, "eviction notice").0);
        }
        assert_eq!(s.jobs[&id].state, JobState::Probing);
        let t = &s.tasks[&(id.clone(), 0)];
        assert_eq!((t.failures, t.attempts), (3, 8));
        let (g, _) = s.lease("w1", "l9".into(), 9, &r).unwrap();
        s.fail("l9", g.epoch, "flaky", false, 9, &r);
        assert_eq!(
            s.jobs[&id].state,
            JobState::Failed,
            "2 x max_attempts failures in all"
        );
        assert!(
            !s.release("l9", g.epoch, "late").0,
            "nothing to release any more"
        );
    }

    #[test]
    fn cancel_stops_leasing_and_heartbeats() {
        let (mut s, r) = (State::default(), rules());
        let id = submit(&mut s);
        let (g, _) = s.lease("w1", "l1".into(), 0, &r).unwrap();
        s.cancel(&id, 1).unwrap();
        assert!(!s.heartbeat("l1", g.epoch, 0, 2, &r).0);
        assert!(s.lease("w1", "l2".into(), 2, &r).is_none());
        assert_eq!(s.jobs[&id].state, JobState::Cancelled);
    }

    #[test]
    fn restore_keeps_leases_for_one_ttl() {
        let (mut s, r) = (State::default(), rules());
        submit(&mut s);
        let (g, _) = s.lease("w1", "l1".into(), 0, &r).unwrap();
        let jobs = s.jobs.values().cloned().collect();
        let tasks = s.tasks.values().cloned().collect();
        let (mut s2, _) = State::restore(jobs, tasks, 10_000, &r);
        assert!(
            s2.heartbeat("l1", g.epoch, 0, 10_500, &r).0,
            "the worker reattaches"
        );
        assert!(s2.expire(11_400, &r).is_empty());
        assert_eq!(s2.expire(11_600, &r).tasks.len(), 1);
    }
}
