//! The job and task state machines and the lease queue, as plain functions on
//! in-memory state. The JobManager actor calls these and persists what they
//! report as changed, so every rule here is testable without actors, sled or
//! a network.
//!
//! Segment tasks are committed chunk by chunk (checkpoints of `chunk_frames`):
//! a lost lease redoes only its unfinished chunk, and an idle worker can steal
//! the tail of the largest in-flight range, split at a chunk boundary.

use crate::model::{
    Chunk, Job, JobState, Lease, Media, Origin, Params, Task, TaskKind, TaskState, SCHEMA_VERSION,
};
use framewise_common::plan::{
    in_order, keyframe_at_or_before, lead_in_cost, plan_segments, steal_split_sorted,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Lease and retry rules, from the coordinator config.
#[derive(Debug, Clone)]
pub struct Rules {
    pub lease_ttl_ms: u64,
    /// How often workers heartbeat. An Assemble lease silent for three of these expires
    /// early (0 = only at the TTL): a media lane holds its job's assembly from the start, and a
    /// stalled one must not keep a finished job waiting for the whole TTL.
    pub heartbeat_interval_ms: u64,
    pub max_attempts: u32,
    pub segment_seconds: f64,
    /// Length of a chunk checkpoint in seconds of video.
    pub chunk_seconds: f64,
    /// A lease running this many times longer than the job's typical segment (per frame) is a
    /// straggler: an idle worker races it (0 = never speculate).
    pub speculation_factor: f64,
    /// Where Segment outputs go (a file:// or az:// URL), one prefix per attempt.
    pub work_url: String,
    /// Where each attempt's worker log is written (kept after the job, unlike `work_url`).
    pub logs_url: String,
    /// Input media bounds, checked once the probe has read the input.
    pub limits: framewise_common::config::Limits,
}

/// The first bound the probed media breaks, naming the config key and both values.
pub fn over_limits(m: &Media, l: &framewise_common::config::Limits) -> Option<String> {
    let key = "coordinator.limits";
    let frames = m.frame_pts.len() as u64;
    let secs = m.duration_ns as f64 / 1e9;
    if m.width > l.max_width {
        return Some(format!(
            "the video is {} pixels wide; {key}.max_width is {}",
            m.width, l.max_width
        ));
    }
    if m.height > l.max_height {
        return Some(format!(
            "the video is {} pixels high; {key}.max_height is {}",
            m.height, l.max_height
        ));
    }
    if frames > l.max_frames {
        return Some(format!(
            "the video has {frames} frames; {key}.max_frames is {}",
            l.max_frames
        ));
    }
    if secs > l.max_duration_s {
        return Some(format!(
            "the video lasts {secs:.1} s; {key}.max_duration_s is {}",
            l.max_duration_s
        ));
    }
    // An empty allow-list allows everything.
    let outside = |list: &[String], v: &str| {
        !list.is_empty() && !list.iter().any(|c| c.eq_ignore_ascii_case(v))
    };
    let family = framewise_common::config::container_family(&m.container);
    if outside(&l.allowed_containers, &family) {
        return Some(format!(
            "its container is {family}; {key}.allowed_containers is {:?}",
            l.allowed_containers
        ));
    }
    let codec = framewise_common::config::codec_name(&m.video_codec);
    if outside(&l.allowed_video_codecs, &codec) {
        return Some(format!(
            "its video codec is {codec}; {key}.allowed_video_codecs is {:?}",
            l.allowed_video_codecs
        ));
    }
    None
}

/// Keys whose records changed and must be written before replying.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    pub jobs: Vec<String>,
    /// Jobs whose probe result (`Job::media`, stored apart) was just set.
    pub media: Vec<String>,
    /// A set: a probe's completion adds its job's thousand tasks, and checking each against
    /// a list was quadratic on the actor's thread.
    pub tasks: BTreeSet<(String, u32)>,
    /// Objects nobody will read again (fenced attempts, refused chunks).
    pub garbage: Vec<String>,
    /// Frames a lost or released attempt computed but never committed.
    pub wasted_frames: u64,
}

impl Changes {
    fn job(&mut self, id: &str) {
        if !self.jobs.iter().any(|j| j == id) {
            self.jobs.push(id.to_string());
        }
    }
    fn media(&mut self, id: &str) {
        if !self.media.iter().any(|j| j == id) {
            self.media.push(id.to_string());
        }
    }
    fn task(&mut self, job: &str, index: u32) {
        self.tasks.insert((job.to_string(), index));
    }
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.tasks.is_empty() && self.media.is_empty()
    }
}

/// What a user asked for, before it becomes a job.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    /// Who submitted it ("" when auth is off).
    pub owner: String,
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
    /// Where the worker writes this attempt's log.
    pub log_url: String,
}

/// What the worker must do under a grant.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    Probe {
        input_url: String,
    },
    /// Stylize frames [start, end) in chunks of `chunk_frames`, each written under `output_url`.
    Segment {
        input_url: String,
        start: u64,
        end: u64,
        chunk_frames: u64,
        frame_pts: Vec<u64>,
        seek_ns: u64,
        output_url: String,
        params: Params,
        media: Media,
    },
    /// Stitch the chunks (url, start, end), in frame order.
    Assemble {
        input_url: String,
        segments: Vec<(String, u64, u64)>,
        output_url: String,
        media: Media,
        /// Leased before every segment was committed: `segments` is the committed prefix, the
        /// rest comes through [`State::assembly_chunks`].
        streamed: bool,
    },
}

/// The chunks a streamed assembly asked for, and whether they reach the video's end.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkNews {
    pub chunks: Vec<(String, u64, u64)>,
    pub complete: bool,
}

/// A worker's result for its lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    Probe(Media),
    /// Segments complete through their chunks; a final report is accepted only when all are in.
    Segment {
        output_url: String,
        frames: u64,
    },
    Assemble {
        output_url: String,
        frames: u64,
    },
}

/// Jobs, tasks and the lease index.
#[derive(Debug, Default)]
pub struct State {
    pub jobs: BTreeMap<String, Job>,
    pub tasks: BTreeMap<(String, u32), Task>,
    leases: HashMap<String, (String, u32)>,
    /// Per job, milliseconds per frame of each finished segment attempt (in memory: after a
    /// restart speculation waits for fresh samples).
    ms_per_frame: HashMap<String, Vec<f64>>,
    /// Every committed chunk's URL (an index: a commit checks it instead of walking every task).
    committed_urls: HashSet<String>,
    /// Jobs not yet finished, in queue order (created, id): leasing walks these, not every job
    /// the coordinator ever ran.
    active: BTreeSet<(u64, String)>,
    /// Tasks that may be pending, in lease order (job created, job id, task index). A hint kept
    /// cheaply: an entry whose task is no longer pending, or whose job ended, is dropped when met.
    pending: BTreeSet<(u64, String, u32)>,
    /// The Probe and Assemble tasks among `pending`: what a media lane may take, found without
    /// walking a long queue of segments.
    pending_media: BTreeSet<(u64, String, u32)>,
}

/// Which of a task's two possible leases a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Primary,
    Spec,
}

fn slot_of(t: &Task, lease_id: &str) -> Option<Slot> {
    if t.lease.as_ref().is_some_and(|l| l.id == lease_id) {
        Some(Slot::Primary)
    } else if t.spec.as_ref().is_some_and(|l| l.id == lease_id) {
        Some(Slot::Spec)
    } else {
        None
    }
}

fn lease_in(t: &Task, slot: Slot) -> Option<&Lease> {
    match slot {
        Slot::Primary => t.lease.as_ref(),
        Slot::Spec => t.spec.as_ref(),
    }
}

/// Whether a job's assembly may be leased before its segments are all committed (streamed):
/// only when its input and output are files. A blob's URLs are signed for a limited time
/// (`storage.sas_valid_s`), and a streamed assembly reads the input's audio and holds the
/// output's write URL for as long as the segments run, so on blob storage it starts once they
/// are all committed.
fn streams_assembly(job: &Job) -> bool {
    [&job.input_url, &job.output_url]
        .iter()
        .all(|u| framewise_common::storage::parse(u).is_ok_and(|l| !l.is_remote()))
}

fn job_range(id: &str) -> std::ops::RangeInclusive<(String, u32)> {
    (id.to_string(), 0)..=(id.to_string(), u32::MAX)
}

impl State {
    /// Rebuilds the state from stored records; live leases get one fresh TTL for their workers to come back.
    pub fn restore(jobs: Vec<Job>, tasks: Vec<Task>, now: u64, rules: &Rules) -> (Self, Changes) {
        let mut s = State::default();
        let mut ch = Changes::default();
        for j in jobs {
            if !j.state.is_terminal() {
                s.active.insert((j.created_ms, j.id.clone()));
            }
            s.jobs.insert(j.id.clone(), j);
        }
        for mut t in tasks {
            let epoch = t.epoch;
            for l in t.lease.iter_mut().chain(t.spec.iter_mut()) {
                if l.epoch == 0 {
                    l.epoch = epoch;
                }
                if l.started_ms == 0 {
                    l.started_ms = now;
                }
                l.deadline_ms = now + rules.lease_ttl_ms;
                s.leases.insert(l.id.clone(), (t.job_id.clone(), t.index));
                ch.task(&t.job_id, t.index);
            }
            s.committed_urls
                .extend(t.chunks.iter().map(|c| c.url.clone()));
            s.add_task(t);
        }
        (s, ch)
    }

    /// Accepts a job, or returns the existing one for a repeated idempotency key.
    pub fn submit(&mut self, new: NewJob, now: u64, rules: &Rules) -> (String, bool, Changes) {
        let NewJob {
            id,
            owner,
            idempotency_key: key,
            input_url,
            output_url,
            mut params,
        } = new;
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
            idempotency_key: key,
            input_url,
            output_url,
            params,
            state: JobState::Queued,
            error: String::new(),
            created_ms: now,
            finished_ms: 0,
            media: None,
            segments: 0,
            chunk_frames: 0,
            next_task: 1,
            owner,
        };
        self.active.insert((now, id.clone()));
        self.jobs.insert(id.clone(), job);
        self.add_task(Task::new(&id, 0, TaskKind::Probe));
        let mut ch = Changes::default();
        ch.job(&id);
        ch.task(&id, 0);
        (id, false, ch)
    }

    fn active_jobs(&self) -> Vec<String> {
        self.active.iter().map(|(_, id)| id.clone()).collect()
    }

    /// Where the indexes disagree with the records (property tests check it after every step).
    #[cfg(test)]
    pub(crate) fn index_errors(&self) -> Vec<String> {
        let mut errs = Vec::new();
        let active: BTreeSet<(u64, String)> = self
            .jobs
            .values()
            .filter(|j| !j.state.is_terminal())
            .map(|j| (j.created_ms, j.id.clone()))
            .collect();
        if active != self.active {
            errs.push(format!("active index {:?} != {:?}", self.active, active));
        }
        for t in self.tasks.values() {
            let Some(j) = self.jobs.get(&t.job_id) else {
                continue;
            };
            if t.state == TaskState::Pending
                && !j.state.is_terminal()
                && !self
                    .pending
                    .contains(&(j.created_ms, t.job_id.clone(), t.index))
            {
                errs.push(format!("pending task {}/{} not indexed", t.job_id, t.index));
            }
            if t.state == TaskState::Pending
                && !j.state.is_terminal()
                && !matches!(t.kind, TaskKind::Segment { .. })
                && !self
                    .pending_media
                    .contains(&(j.created_ms, t.job_id.clone(), t.index))
            {
                errs.push(format!(
                    "pending {} task {}/{} not in the media lanes' index",
                    t.kind_name(),
                    t.job_id,
                    t.index
                ));
            }
        }
        let urls: HashSet<String> = self
            .tasks
            .values()
            .flat_map(|t| t.chunks.iter().map(|c| c.url.clone()))
            .collect();
        if urls != self.committed_urls {
            errs.push("committed-URL index differs from the chunks".into());
        }
        errs
    }

    /// Adds a task (new tasks are pending) and indexes it.
    fn add_task(&mut self, t: Task) {
        let (key, pending) = ((t.job_id.clone(), t.index), t.state == TaskState::Pending);
        self.tasks.insert(key.clone(), t);
        if pending {
            self.mark_pending(&key.0, key.1);
        }
    }

    /// Puts a task (already set pending) in the lease order.
    fn mark_pending(&mut self, job_id: &str, index: u32) {
        let created = self.jobs.get(job_id).map_or(0, |j| j.created_ms);
        let entry = (created, job_id.to_string(), index);
        let media = self
            .tasks
            .get(&(job_id.to_string(), index))
            .is_some_and(|t| !matches!(t.kind, TaskKind::Segment { .. }));
        if media {
            self.pending_media.insert(entry.clone());
        }
        self.pending.insert(entry);
    }

    /// Takes a job out of the queue order once it ends.
    fn mark_ended(&mut self, job_id: &str) {
        if let Some(j) = self.jobs.get(job_id) {
            self.active.remove(&(j.created_ms, job_id.to_string()));
        }
    }

    /// The oldest active job's first pending task a worker may take, dropping stale hints on the
    /// way. A media lane takes only Probe and Assemble tasks; a model pipeline takes an Assemble
    /// task only once every segment is committed (it would hold the pipeline idle while waiting).
    fn next_pending(&mut self, media_only: bool) -> Option<(String, u32)> {
        let index = if media_only {
            &self.pending_media
        } else {
            &self.pending
        };
        let mut stale = Vec::new();
        let mut found = None;
        for entry in index {
            let key = (entry.1.clone(), entry.2);
            let job = self.jobs.get(&entry.1).filter(|j| !j.state.is_terminal());
            let task = self
                .tasks
                .get(&key)
                .filter(|t| t.state == TaskState::Pending);
            let (Some(job), Some(task)) = (job, task) else {
                stale.push(entry.clone());
                continue;
            };
            if task.kind != TaskKind::Assemble
                || job.state == JobState::Assembling
                || (media_only && streams_assembly(job))
            {
                found = Some(entry.clone());
                break;
            }
        }
        for e in stale.iter().chain(found.iter()) {
            self.pending.remove(e);
            self.pending_media.remove(e);
        }
        found.map(|(_, job, index)| (job, index))
    }

    /// Hands the oldest pending task of the oldest active job to `worker`; with none pending,
    /// steals the tail of the largest in-flight segment.
    pub fn lease(
        &mut self,
        worker: &str,
        lease_id: String,
        now: u64,
        rules: &Rules,
    ) -> Option<(Grant, Changes)> {
        self.lease_for(worker, lease_id, now, rules, false)
    }

    /// [`State::lease`] for a model pipeline (`media_only` false) or a worker's media lane, which
    /// takes only Probe and Assemble tasks and never steals or speculates.
    pub fn lease_for(
        &mut self,
        worker: &str,
        lease_id: String,
        now: u64,
        rules: &Rules,
        media_only: bool,
    ) -> Option<(Grant, Changes)> {
        let mut ch = Changes::default();
        let key = match self.next_pending(media_only) {
            Some(k) => k,
            None if media_only => return None,
            None => match self.steal(&mut ch) {
                Some(k) => k,
                None => return self.speculate(worker, lease_id, now, rules),
            },
        };
        let task = self.tasks.get_mut(&key)?;
        task.state = TaskState::Leased;
        task.epoch += 1;
        task.attempts += 1;
        task.frames_done = 0;
        let from = task.committed_until();
        task.lease = Some(Lease {
            id: lease_id.clone(),
            worker_id: worker.to_string(),
            deadline_ms: now + rules.lease_ttl_ms,
            from,
            epoch: task.epoch,
            started_ms: now,
            frames_done: 0,
        });
        let epoch = task.epoch;
        self.leases.insert(lease_id.clone(), key.clone());
        let job = self.jobs.get_mut(&key.0)?;
        if job.state == JobState::Queued {
            job.state = JobState::Probing;
            ch.job(&job.id);
        }
        ch.task(&key.0, key.1);
        let grant = self.grant(&key, lease_id, epoch, from, rules)?;
        Some((grant, ch))
    }

    /// The work a lease on task `key` covers, from frame `from`.
    fn grant(
        &self,
        key: &(String, u32),
        lease_id: String,
        epoch: u64,
        from: u64,
        rules: &Rules,
    ) -> Option<Grant> {
        let (index, kind) = {
            let t = self.tasks.get(key)?;
            (t.index, t.kind.clone())
        };
        // Borrow rather than clone: a long video's timestamps are large.
        let job = &self.jobs[&key.0];
        let empty = Media::default();
        let media = job.media.as_ref().unwrap_or(&empty);
        let work = match kind {
            TaskKind::Probe => Work::Probe {
                input_url: job.input_url.clone(),
            },
            TaskKind::Segment { end, .. } => {
                let kf = keyframe_at_or_before(&media.keyframes, from);
                let seek_ns = if kf == 0 {
                    0
                } else {
                    media.frame_pts.get(kf as usize).copied().unwrap_or(0)
                };
                let output = framewise_common::storage::join(
                    &rules.work_url,
                    &format!("{}/seg-{index:05}-e{epoch}", job.id),
                );
                Work::Segment {
                    input_url: job.input_url.clone(),
                    start: from,
                    end,
                    chunk_frames: job.chunk_frames.max(1),
                    frame_pts: media
                        .frame_pts
                        .get(from as usize..end as usize)
                        .map(|s| s.to_vec())
                        .unwrap_or_default(),
                    seek_ns,
                    output_url: output,
                    params: job.params.clone(),
                    media: media.summary(),
                }
            }
            TaskKind::Assemble => {
                let news = self.chunk_news(&job.id, 0);
                Work::Assemble {
                    input_url: job.input_url.clone(),
                    segments: news.chunks,
                    output_url: job.output_url.clone(),
                    media: media.clone(),
                    streamed: !news.complete,
                }
            }
        };
        let log = task_log_url(&rules.logs_url, &key.0, index, epoch);
        Some(Grant {
            job_id: key.0.clone(),
            index,
            lease_id,
            epoch,
            work,
            log_url: log,
        })
    }

    /// Tail speculation: with nothing pending and nothing left to steal, races the straggler with
    /// the most frames left (a lease running `speculation_factor` times longer than the job's
    /// typical per-frame time says it should) on an idle worker. Each chunk is committed by
    /// whichever attempt gets there first; the other attempt is then told to stop.
    fn speculate(
        &mut self,
        worker: &str,
        lease_id: String,
        now: u64,
        rules: &Rules,
    ) -> Option<(Grant, Changes)> {
        if rules.speculation_factor <= 0.0 {
            return None;
        }
        let mut best: Option<((String, u32), u64)> = None;
        for id in self.active_jobs() {
            let Some(typical) = self.ms_per_frame.get(&id).and_then(|v| median(v)) else {
                continue;
            };
            for (key, t) in self.tasks.range(job_range(&id)) {
                let (TaskKind::Segment { end, .. }, TaskState::Leased, Some(l), None) =
                    (&t.kind, t.state, &t.lease, &t.spec)
                else {
                    continue;
                };
                let expected = typical * end.saturating_sub(l.from) as f64;
                let running = now.saturating_sub(l.started_ms) as f64;
                let left = end.saturating_sub(t.committed_until());
                if l.worker_id == worker
                    || left == 0
                    || running < rules.speculation_factor * expected
                {
                    continue;
                }
                if best.as_ref().is_none_or(|b| left > b.1) {
                    best = Some((key.clone(), left));
                }
            }
        }
        let (key, _) = best?;
        let t = self.tasks.get_mut(&key)?;
        t.epoch += 1;
        t.attempts += 1;
        t.speculations += 1;
        let from = t.committed_until();
        let epoch = t.epoch;
        t.spec = Some(Lease {
            id: lease_id.clone(),
            worker_id: worker.to_string(),
            deadline_ms: now + rules.lease_ttl_ms,
            from,
            epoch,
            started_ms: now,
            frames_done: 0,
        });
        self.leases.insert(lease_id.clone(), key.clone());
        let mut ch = Changes::default();
        ch.task(&key.0, key.1);
        let grant = self.grant(&key, lease_id, epoch, from, rules)?;
        Some((grant, ch))
    }

    /// If the task is being raced, ends only this attempt (its twin carries on), lets `note`
    /// record why on the task (given the attempt's worker), and returns what changed; None when
    /// the task has a single attempt.
    fn end_twin(
        &mut self,
        key: &(String, u32),
        slot: Slot,
        note: impl FnOnce(&mut Task, &str),
    ) -> Option<Changes> {
        let t = self.tasks.get(key).filter(|t| t.spec.is_some())?;
        let worker = lease_in(t, slot)
            .map(|l| l.worker_id.clone())
            .unwrap_or_default();
        let wasted = self.drop_twin(key, slot);
        if let Some(t) = self.tasks.get_mut(key) {
            note(t, &worker);
        }
        let mut ch = Changes {
            wasted_frames: wasted,
            ..Changes::default()
        };
        ch.task(&key.0, key.1);
        Some(ch)
    }

    /// Ends one of a task's two racing leases; a surviving speculative twin becomes the primary.
    /// Returns the frames the dropped attempt computed beyond the committed ones.
    fn drop_twin(&mut self, key: &(String, u32), slot: Slot) -> u64 {
        let Some(t) = self.tasks.get_mut(key) else {
            return 0;
        };
        let committed = t.committed_until();
        let (dropped, done) = match slot {
            Slot::Primary => {
                let l = t.lease.take();
                let done = t.frames_done;
                if let Some(s) = t.spec.take() {
                    t.frames_done = s.frames_done;
                    t.lease = Some(s);
                }
                (l, done)
            }
            Slot::Spec => {
                let l = t.spec.take();
                let done = l.as_ref().map(|l| l.frames_done).unwrap_or(0);
                (l, done)
            }
        };
        match dropped {
            Some(l) => {
                self.leases.remove(&l.id);
                done.saturating_sub(committed.saturating_sub(l.from))
            }
            None => 0,
        }
    }

    /// A job's committed chunks from frame `from` on, as far as they run without a gap, and
    /// whether that is every chunk of a job whose segments are all committed.
    fn chunk_news(&self, job_id: &str, from: u64) -> ChunkNews {
        // Asked every 25 ms while a job runs: only the chunks from `from` on are sorted and
        // their URLs copied, not the whole job's.
        let mut later: Vec<&crate::model::Chunk> = self
            .tasks
            .range(job_range(job_id))
            .flat_map(|(_, t)| t.chunks.iter().filter(|c| c.start >= from))
            .collect();
        later.sort_by_key(|c| c.start);
        let mut chunks = Vec::new();
        let mut next = from;
        for c in later {
            if c.start != next {
                break;
            }
            next = c.end;
            chunks.push((c.url.clone(), c.start, c.end));
        }
        let complete = self
            .jobs
            .get(job_id)
            .is_some_and(|j| j.state == JobState::Assembling);
        ChunkNews { chunks, complete }
    }

    /// For a streamed assembly's heartbeat: the committed chunks from `from` on (see
    /// [`State::chunk_news`]); `None` when the lease is not a current Assemble lease.
    pub fn assembly_chunks(&self, lease_id: &str, epoch: u64, from: u64) -> Option<ChunkNews> {
        let key = self.current(lease_id, epoch)?;
        if self.tasks.get(&key)?.kind != TaskKind::Assemble {
            return None;
        }
        Some(self.chunk_news(&key.0, from))
    }

    /// How long ago (ms) the most recent running probe started, if a job is being probed: its
    /// segments are about to be queued, so idle workers should ask again soon.
    pub fn probing_since(&self, now: u64) -> Option<u64> {
        self.active
            .iter()
            .filter(|(_, id)| {
                self.jobs
                    .get(id)
                    .is_some_and(|j| j.state == JobState::Probing)
            })
            .filter_map(|(_, id)| {
                self.tasks
                    .range(job_range(id))
                    .find(|(_, t)| t.kind == TaskKind::Probe)
                    .and_then(|(_, t)| t.lease.as_ref())
                    .map(|l| now.saturating_sub(l.started_ms))
            })
            .min()
    }

    /// Every committed chunk of a job, in frame order.
    fn chunks_in_order(&self, job_id: &str) -> Vec<(String, u64, u64)> {
        let mut all: Vec<(String, u64, u64)> = self
            .tasks
            .range(job_range(job_id))
            .flat_map(|(_, t)| t.chunks.iter().map(|c| (c.url.clone(), c.start, c.end)))
            .collect();
        all.sort_by_key(|c| c.1);
        all
    }

    /// Splits the in-flight segment with the largest stealable tail where `steal_split` says
    /// (where owner and thief finish soonest); the tail becomes a new pending task.
    fn steal(&mut self, ch: &mut Changes) -> Option<(String, u32)> {
        let mut best: Option<((String, u32), u64, u64)> = None; // key, split, tail
        for id in self.active_jobs() {
            let job = self.jobs.get(&id)?;
            let k = job.chunk_frames.max(1);
            let keyframes = in_order(job.media.as_ref().map_or(&[][..], |m| &m.keyframes[..]));
            // A dropped frame against a stylized one, from this job's own timing once it has one.
            let lead_in = lead_in_cost(self.ms_per_frame.get(&id).and_then(|v| median(v)));
            for (key, t) in self.tasks.range(job_range(&id)) {
                let (TaskKind::Segment { end, .. }, TaskState::Leased, Some(l), None) =
                    (&t.kind, t.state, &t.lease, &t.spec)
                else {
                    continue;
                };
                // Never split inside what is already committed, whatever the last heartbeat said.
                let done = (l.from + t.frames_done).max(t.committed_until());
                let Some(split) = steal_split_sorted(l.from, done, *end, k, &keyframes, lead_in)
                else {
                    continue; // less than one whole chunk would be left to steal
                };
                let tail = end - split;
                if best.as_ref().is_none_or(|b| tail > b.2) {
                    best = Some((key.clone(), split, tail));
                }
            }
        }
        let (key, split, _) = best?;
        let job = self.jobs.get_mut(&key.0)?;
        let index = job.next_task;
        job.next_task += 1;
        job.segments += 1;
        ch.job(&key.0);
        let t = self.tasks.get_mut(&key)?;
        let TaskKind::Segment { start, end } = t.kind else {
            return None;
        };
        t.kind = TaskKind::Segment { start, end: split };
        ch.task(&key.0, key.1);
        let mut tail = Task::new(&key.0, index, TaskKind::Segment { start: split, end });
        tail.origin = Origin::Stolen { from: key.1 };
        self.tasks.insert((key.0.clone(), index), tail);
        ch.task(&key.0, index);
        Some((key.0, index))
    }

    fn current(&self, lease_id: &str, epoch: u64) -> Option<(String, u32)> {
        self.current_slot(lease_id, epoch).map(|(k, _)| k)
    }

    /// The task a live lease is on, and whether it is the primary or the speculative twin.
    fn current_slot(&self, lease_id: &str, epoch: u64) -> Option<((String, u32), Slot)> {
        let key = self.leases.get(lease_id)?;
        let t = self.tasks.get(key)?;
        let job = self.jobs.get(&key.0)?;
        let slot = slot_of(t, lease_id)?;
        let l = lease_in(t, slot)?;
        let l_epoch = if l.epoch == 0 { t.epoch } else { l.epoch };
        let live = t.state == TaskState::Leased && l_epoch == epoch;
        (live && !job.state.is_terminal()).then(|| (key.clone(), slot))
    }

    /// The frame a leased Segment task now ends at (stealing may have moved it); 0 for other tasks.
    fn lease_end(&self, key: &(String, u32)) -> u64 {
        match self.tasks.get(key).map(|t| &t.kind) {
            Some(TaskKind::Segment { end, .. }) => *end,
            _ => 0,
        }
    }

    /// Renews a lease and records progress (frames done since the lease's first frame).
    /// Returns whether to keep going and where the range now ends.
    pub fn heartbeat(
        &mut self,
        lease_id: &str,
        epoch: u64,
        frames_done: u64,
        now: u64,
        rules: &Rules,
    ) -> (bool, u64) {
        let Some((key, slot)) = self.current_slot(lease_id, epoch) else {
            return (false, 0);
        };
        let end = self.lease_end(&key);
        if let Some(t) = self.tasks.get_mut(&key) {
            let committed = t.committed_until();
            let l = match slot {
                Slot::Primary => t.lease.as_mut(),
                Slot::Spec => t.spec.as_mut(),
            };
            if let Some(l) = l {
                l.deadline_ms = now + rules.lease_ttl_ms;
                // A heartbeat never moves progress back behind the committed chunks.
                let done = frames_done
                    .max(committed.saturating_sub(l.from))
                    .min(end.saturating_sub(l.from));
                match slot {
                    Slot::Primary => t.frames_done = done,
                    Slot::Spec => l.frames_done = done,
                }
            }
        }
        // Heartbeats only move deadlines and progress, which a restart resets anyway: nothing to persist.
        (true, end)
    }

    /// Commits one chunk checkpoint of a Segment lease. It must continue the committed frames
    /// exactly and lie inside the (possibly shortened) range; anything else is refused and collected.
    /// Returns whether it was accepted and where the range now ends.
    pub fn commit_chunk(
        &mut self,
        lease_id: &str,
        epoch: u64,
        (start, end): (u64, u64),
        url: String,
        now: u64,
    ) -> (bool, u64, Changes) {
        let mut ch = Changes::default();
        // A file a committed chunk refers to is never collected: a worker that retries a
        // CompleteChunk whose answer it lost (say, across a coordinator restart) sends the
        // same path again, and refusing it must not delete the committed frames (found by
        // the chaos test: assembly then failed on a missing chunk).
        let committed_elsewhere = self.committed_urls.contains(&url);
        let Some((key, slot)) = self.current_slot(lease_id, epoch) else {
            if !committed_elsewhere {
                ch.garbage.push(url);
            }
            return (false, 0, ch);
        };
        let range_end = self.lease_end(&key);
        let Some(t) = self.tasks.get_mut(&key) else {
            return (false, 0, ch);
        };
        if t.chunks
            .iter()
            .any(|c| c.start == start && c.end == end && c.url == url)
        {
            // The same chunk again: already committed, so accepted (idempotent).
            return (true, range_end, ch);
        }
        if committed_elsewhere {
            return (false, range_end, ch);
        }
        let racing = t.spec.is_some();
        let committed = t.committed_until();
        if racing && start < committed && end > start {
            // Its speculative twin committed these frames first: this attempt lost the race.
            ch.garbage.push(url);
            ch.wasted_frames += self.drop_twin(&key, slot);
            ch.task(&key.0, key.1);
            return (false, 0, ch);
        }
        if !matches!(t.kind, TaskKind::Segment { .. })
            || start != committed
            || end <= start
            || end > range_end
        {
            ch.garbage.push(url);
            return (false, range_end, ch);
        }
        let Some(l) = lease_in(t, slot).cloned() else {
            return (false, 0, ch);
        };
        self.committed_urls.insert(url.clone());
        t.chunks.push(Chunk {
            start,
            end,
            url,
            worker_id: l.worker_id.clone(),
        });
        match slot {
            Slot::Primary => t.frames_done = t.frames_done.max(end - l.from),
            Slot::Spec => {
                if let Some(s) = t.spec.as_mut() {
                    s.frames_done = s.frames_done.max(end - l.from);
                }
            }
        }
        ch.task(&key.0, key.1);
        if end == range_end {
            if now > l.started_ms && end > l.from {
                let per_frame = (now - l.started_ms) as f64 / (end - l.from) as f64;
                self.ms_per_frame
                    .entry(key.0.clone())
                    .or_default()
                    .push(per_frame);
            }
            if racing {
                // The winner finishes the task as its primary; the loser's lease ends.
                let other = if slot == Slot::Primary {
                    Slot::Spec
                } else {
                    Slot::Primary
                };
                ch.wasted_frames += self.drop_twin(&key, other);
            }
            self.finish_task(&key, &l.worker_id, &mut ch);
            self.maybe_assemble(&key.0, &mut ch);
        }
        (true, range_end, ch)
    }

    /// Once every segment is committed, the job is assembling: its Assemble task (queued with
    /// the segments, see [`State::add_assembly`]) may go to any worker, and a streamed assembly
    /// hears that its chunks are complete.
    fn maybe_assemble(&mut self, job_id: &str, ch: &mut Changes) {
        let all_done = self
            .tasks
            .range(job_range(job_id))
            .filter(|(_, t)| matches!(t.kind, TaskKind::Segment { .. }))
            .all(|(_, t)| t.state == TaskState::Done);
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if !all_done || job.state != JobState::Running {
            return;
        }
        job.state = JobState::Assembling;
        ch.job(job_id);
        // Jobs planned before assemblies were queued with their segments have none yet.
        let has = self
            .tasks
            .range(job_range(job_id))
            .any(|(_, t)| t.kind == TaskKind::Assemble);
        if !has {
            self.add_assembly(job_id, ch);
        }
    }

    /// Queues a job's Assemble task. A media lane may take it at once and stitch the chunks as
    /// they are committed, so the output is nearly done when the last segment ends.
    fn add_assembly(&mut self, job_id: &str, ch: &mut Changes) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        let idx = job.next_task;
        job.next_task += 1;
        ch.job(job_id);
        self.add_task(Task::new(job_id, idx, TaskKind::Assemble));
        ch.task(job_id, idx);
    }

    /// Commits a Probe or Assemble result if its lease is current.
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
                if let Some(why) = over_limits(&media, &rules.limits) {
                    self.finish_task(&key, &worker, &mut ch);
                    let input = self
                        .jobs
                        .get(&key.0)
                        .map(|j| j.input_url.clone())
                        .unwrap_or_default();
                    let reason = format!("{input}: refused: {why}");
                    return (true, merge(ch, self.fail_job(&key.0, reason, now)));
                }
                self.finish_task(&key, &worker, &mut ch);
                let Some(job) = self.jobs.get_mut(&key.0) else {
                    return (false, ch);
                };
                let fps = media.fps();
                let ranges = plan_segments(
                    media.frame_pts.len() as u64,
                    fps,
                    &media.keyframes,
                    job.params.segment_seconds,
                );
                job.chunk_frames = if fps > 0.0 {
                    ((rules.chunk_seconds * fps).round() as u64).max(1)
                } else {
                    50
                };
                job.media = Some(media);
                ch.media(&key.0);
                job.segments = ranges.len() as u32;
                job.state = JobState::Running;
                let id = job.id.clone();
                let first = job.next_task;
                job.next_task += ranges.len() as u32;
                for (i, r) in ranges.into_iter().enumerate() {
                    let idx = first + i as u32;
                    self.add_task(Task::new(
                        &id,
                        idx,
                        TaskKind::Segment {
                            start: r.start,
                            end: r.end,
                        },
                    ));
                    ch.task(&id, idx);
                }
                ch.job(&id);
                self.add_assembly(&id, &mut ch);
            }
            (TaskKind::Assemble, Completion::Assemble { .. })
                if self
                    .jobs
                    .get(&key.0)
                    .is_some_and(|j| j.state != JobState::Assembling) =>
            {
                let err = "worker sent an assembly result before every segment was committed";
                let (_, c) = self.fail(lease_id, epoch, err, false, now, rules);
                return (false, merge(ch, c));
            }
            (TaskKind::Assemble, Completion::Assemble { .. }) => {
                self.finish_task(&key, &worker, &mut ch);
                let Some(job) = self.jobs.get_mut(&key.0) else {
                    return (false, ch);
                };
                job.state = JobState::Succeeded;
                job.finished_ms = now;
                let id = job.id.clone();
                self.mark_ended(&id);
                ch.job(&id);
                ch.garbage
                    .extend(self.chunks_in_order(&id).into_iter().map(|c| c.0));
            }
            (TaskKind::Segment { .. }, Completion::Segment { .. }) => {
                // Every chunk commits on its own; the segment finished with its last one.
                return (false, ch);
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

    fn finish_task(&mut self, key: &(String, u32), worker: &str, ch: &mut Changes) {
        if let Some(t) = self.tasks.get_mut(key) {
            for l in [t.lease.take(), t.spec.take()].into_iter().flatten() {
                self.leases.remove(&l.id);
            }
            t.state = TaskState::Done;
            t.frames_done = t.frames();
            t.worker_id = worker.to_string();
            ch.task(&key.0, key.1);
        }
    }

    /// Records a failed attempt; the task is retried unless the input is at fault or it is poisoned.
    pub fn fail(
        &mut self,
        lease_id: &str,
        epoch: u64,
        error: &str,
        permanent: bool,
        now: u64,
        rules: &Rules,
    ) -> (bool, Changes) {
        let Some((key, slot)) = self.current_slot(lease_id, epoch) else {
            return (false, Changes::default());
        };
        if !permanent {
            // One of two racing attempts failed: the other carries on.
            let raced = self.end_twin(&key, slot, |t, worker| {
                t.errors.push(format!("{worker}: {error}"));
                t.failures += 1;
            });
            if let Some(ch) = raced {
                return (true, ch);
            }
        }
        let Some(t) = self.tasks.get_mut(&key) else {
            return (false, Changes::default());
        };
        let wasted = uncommitted(t);
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
        let mut ch = Changes {
            wasted_frames: wasted,
            ..Changes::default()
        };
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
        self.mark_pending(&key.0, key.1);
        (true, ch)
    }

    /// Takes a lease back unfinished (eviction notice, drain): requeued at once, not a failure.
    pub fn release(&mut self, lease_id: &str, epoch: u64, reason: &str) -> (bool, Changes) {
        let Some((key, slot)) = self.current_slot(lease_id, epoch) else {
            return (false, Changes::default());
        };
        // A racing attempt gives up; its twin carries on.
        if let Some(ch) = self.end_twin(&key, slot, |t, _| t.releases += 1) {
            return (true, ch);
        }
        let Some(t) = self.tasks.get_mut(&key) else {
            return (false, Changes::default());
        };
        let wasted = uncommitted(t);
        if let Some(l) = t.lease.take() {
            self.leases.remove(&l.id);
            t.errors
                .push(format!("{}: released ({reason})", l.worker_id));
        }
        t.frames_done = 0;
        t.releases += 1;
        t.state = TaskState::Pending;
        self.mark_pending(&key.0, key.1);
        let mut ch = Changes {
            wasted_frames: wasted,
            ..Changes::default()
        };
        ch.task(&key.0, key.1);
        (true, ch)
    }

    /// Requeues tasks whose lease was not renewed in time.
    pub fn expire(&mut self, now: u64, rules: &Rules) -> Changes {
        // Walks the lease index, not every task ever run.
        let leased: BTreeSet<&(String, u32)> = self.leases.values().collect();
        let silence = match rules.heartbeat_interval_ms {
            0 => rules.lease_ttl_ms,
            hb => (3 * hb).min(rules.lease_ttl_ms),
        };
        let expired: Vec<(String, u64, bool)> = leased
            .into_iter()
            .filter_map(|k| self.tasks.get(k))
            .filter(|t| t.state == TaskState::Leased)
            .flat_map(|t| {
                let assembly = t.kind == TaskKind::Assemble;
                [t.lease.as_ref(), t.spec.as_ref()]
                    .into_iter()
                    .flatten()
                    .filter(move |l| {
                        // The deadline is the last renewal plus the TTL.
                        let renewed = l.deadline_ms.saturating_sub(rules.lease_ttl_ms);
                        l.deadline_ms <= now || (assembly && renewed + silence <= now)
                    })
                    .map(move |l| {
                        let epoch = if l.epoch == 0 { t.epoch } else { l.epoch };
                        (l.id.clone(), epoch, assembly)
                    })
            })
            .collect();
        let mut ch = Changes::default();
        for (lease_id, epoch, assembly) in expired {
            let why = if assembly {
                format!("assembly lease silent for {silence} ms (worker lost or stalled)")
            } else {
                "lease expired (worker lost or stalled)".to_string()
            };
            let (_, c) = self.fail(&lease_id, epoch, &why, false, now, rules);
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
            self.mark_ended(job_id);
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
                self.mark_ended(job_id);
            }
        }
        ch
    }

    /// Frames finished: committed chunks plus running attempts' uncommitted progress.
    pub fn frames_done(&self, job_id: &str) -> u64 {
        self.tasks
            .range(job_range(job_id))
            .filter(|(_, t)| matches!(t.kind, TaskKind::Segment { .. }))
            .map(|(_, t)| match (t.state, &t.lease) {
                (TaskState::Done, _) => t.frames(),
                (TaskState::Leased, Some(l)) => {
                    let committed = t.committed_until() - t.start_frame();
                    let spec = t
                        .spec
                        .as_ref()
                        .map(|s| s.from - t.start_frame() + s.frames_done)
                        .unwrap_or(0);
                    committed
                        .max(l.from - t.start_frame() + t.frames_done)
                        .max(spec)
                }
                _ => t.committed_until() - t.start_frame(),
            })
            .sum()
    }

    /// The job a repeated idempotency key already created.
    pub fn job_with_key(&self, key: &str) -> Option<&str> {
        if key.is_empty() {
            return None;
        }
        self.jobs
            .values()
            .find(|j| j.idempotency_key == key)
            .map(|j| j.id.as_str())
    }

    /// Jobs of one owner queued or running.
    pub fn active_count_of(&self, owner: &str) -> usize {
        self.jobs
            .values()
            .filter(|j| j.owner == owner && !j.state.is_terminal())
            .count()
    }

    /// Jobs queued or running.
    pub fn active_count(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| !j.state.is_terminal())
            .count()
    }

    /// Every task under a live lease of a job still running (cheap: walks the lease index,
    /// not all tasks). A cancelled or failed job's leases end at their worker's next heartbeat,
    /// so its worker is not shown busy with it (found by the autoscaler work).
    pub fn leased_tasks(&self) -> impl Iterator<Item = &Task> {
        self.leases
            .values()
            .filter_map(|k| self.tasks.get(k))
            .filter(|t| {
                self.jobs
                    .get(&t.job_id)
                    .is_some_and(|j| !j.state.is_terminal())
            })
    }

    /// The tasks of a job in order.
    pub fn tasks_of(&self, job_id: &str) -> Vec<&Task> {
        self.tasks
            .range(job_range(job_id))
            .map(|(_, t)| t)
            .collect()
    }
}

fn merge(mut a: Changes, b: Changes) -> Changes {
    for j in b.jobs {
        a.job(&j);
    }
    for j in b.media {
        a.media(&j);
    }
    a.tasks.extend(b.tasks);
    a.garbage.extend(b.garbage);
    a.wasted_frames += b.wasted_frames;
    a
}

/// The middle value (None for no samples).
fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    Some(s[s.len() / 2])
}

/// Frames the current attempt of a task computed beyond its committed chunks.
fn uncommitted(t: &Task) -> u64 {
    match &t.lease {
        Some(l) if matches!(t.kind, TaskKind::Segment { .. }) => {
            let committed_by_attempt = t.committed_until().saturating_sub(l.from);
            t.frames_done.saturating_sub(committed_by_attempt)
        }
        _ => 0,
    }
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

/// Where attempt `epoch` of task `index` of a job logs: `<logs_url>/<job>/task-<index>-e<epoch>.log`.
pub fn task_log_url(logs_url: &str, job: &str, index: u32, epoch: u64) -> String {
    framewise_common::storage::join(logs_url, &format!("{job}/task-{index}-e{epoch}.log"))
}

/// The epoch of a task log's file name, when it is one of task `index`'s.
pub fn task_log_epoch(name: &str, index: u32) -> Option<u64> {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.strip_prefix(&format!("task-{index}-e"))?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn rules() -> Rules {
        Rules {
            lease_ttl_ms: 1000,
            heartbeat_interval_ms: 0,
            max_attempts: 2,
            segment_seconds: 1.0,
            chunk_seconds: 0.5,
            speculation_factor: 2.0,
            work_url: "file:///w".into(),
            logs_url: "file:///logs".into(),
            limits: Default::default(),
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
            keyframes: (0..n).step_by(5).collect(), // one per 5-frame chunk
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
            owner: String::new(),
        }
    }

    fn submit(s: &mut State) -> String {
        s.submit(new_job("j1", "k"), 0, &rules()).0
    }

    /// Submits and completes the probe of an n-frame, 10 fps video (chunks of 5 frames).
    fn probed(s: &mut State, n: u64, segment_seconds: f64) -> String {
        let mut nj = new_job("j1", "k");
        nj.params.segment_seconds = segment_seconds;
        let id = s.submit(nj, 0, &rules()).0;
        let (g, _) = s.lease("w0", "probe".into(), 0, &rules()).unwrap();
        assert!(
            s.complete("probe", g.epoch, Completion::Probe(media(n)), 1, &rules())
                .0
        );
        id
    }

    /// A state with job "j1" probed as an n-frame, 10 fps video.
    pub(crate) fn planned_job(r: &Rules, n: u64) -> State {
        let mut s = State::default();
        s.submit(new_job("j1", "k"), 0, r);
        let (g, _) = s.lease("w0", "probe".into(), 0, r).unwrap();
        assert!(
            s.complete("probe", g.epoch, Completion::Probe(media(n)), 1, r)
                .0
        );
        s
    }

    /// A segment grant's range and how many timestamps came with it.
    fn range_of(g: &Grant) -> (u64, u64, usize) {
        let Work::Segment {
            start,
            end,
            ref frame_pts,
            ..
        } = g.work
        else {
            panic!("not a segment: {g:?}")
        };
        (start, end, frame_pts.len())
    }

    /// Commits every chunk of a segment grant, as a worker would.
    fn run_chunks(s: &mut State, g: &Grant, k: u64) -> Vec<bool> {
        let Work::Segment { start, mut end, .. } = g.work else {
            panic!("not a segment")
        };
        let mut out = Vec::new();
        let mut a = start;
        while a < end {
            let b = (a + k).min(end);
            let (ok, new_end, _) = s.commit_chunk(
                &g.lease_id,
                g.epoch,
                (a, b),
                format!("file:///w/{a}.mp4"),
                0,
            );
            out.push(ok);
            end = new_end; // stealing may have moved it
            a = b;
        }
        out
    }

    #[test]
    fn a_media_lane_assembles_while_segments_commit_and_pipelines_never_wait_on_it() {
        let (mut s, r) = (State::default(), rules());
        let id = submit(&mut s);
        assert!(
            s.lease_for("m", "none".into(), 0, &r, true).is_some(),
            "a media lane takes a probe"
        );
        let (mut s, r) = (State::default(), rules());
        s.submit(new_job("j1", "k"), 0, &r);
        let (g, _) = s.lease("w0", "probe".into(), 0, &r).unwrap();
        assert!(
            s.complete("probe", g.epoch, Completion::Probe(media(25)), 1, &r)
                .0
        );
        // Three segments are queued with the assembly; pipelines take only the segments.
        let grants: Vec<Grant> = (0..3)
            .map(|i| s.lease("w1", format!("s{i}"), 2, &r).unwrap().0)
            .collect();
        assert!(grants
            .iter()
            .all(|g| matches!(g.work, Work::Segment { .. })));
        assert!(
            s.lease("w2", "x".into(), 2, &r)
                .is_none_or(|(g, _)| !matches!(g.work, Work::Assemble { .. })),
            "a model pipeline never waits on an assembly"
        );
        let (a, _) = s.lease_for("m", "asm".into(), 2, &r, true).unwrap();
        let Work::Assemble {
            ref segments,
            streamed,
            ..
        } = a.work
        else {
            panic!("the lane gets the assembly: {a:?}")
        };
        assert!(streamed && segments.is_empty());
        assert!(
            s.lease_for("m2", "y".into(), 2, &r, true).is_none(),
            "a lane never takes a segment"
        );
        let news = |s: &State, from| s.assembly_chunks("asm", a.epoch, from).unwrap();
        // The second segment's chunks are committed first: nothing contiguous from frame 0.
        assert!(run_chunks(&mut s, &grants[1], 5).iter().all(|ok| *ok));
        assert_eq!(news(&s, 0).chunks, vec![]);
        let (ok, _, _) = s.commit_chunk("s0", grants[0].epoch, (0, 5), "file:///w/0.mp4".into(), 3);
        assert!(ok);
        let n = news(&s, 0);
        assert_eq!(n.chunks, vec![("file:///w/0.mp4".to_string(), 0, 5)]);
        assert!(!n.complete);
        let (ok, _, _) =
            s.commit_chunk("s0", grants[0].epoch, (5, 10), "file:///w/5.mp4".into(), 3);
        assert!(ok);
        let starts: Vec<u64> = news(&s, 5).chunks.iter().map(|c| c.1).collect();
        assert_eq!(
            starts,
            vec![5, 10, 15],
            "the first segment's end joins the second's"
        );
        // Finishing early is refused; the lease is requeued.
        assert!(
            !s.complete(
                "asm",
                a.epoch,
                Completion::Assemble {
                    output_url: "file:///out.mp4".into(),
                    frames: 25
                },
                4,
                &r
            )
            .0
        );
        assert!(
            s.assembly_chunks("asm", a.epoch, 0).is_none(),
            "that lease is gone"
        );
        let (a, _) = s.lease_for("m", "asm2".into(), 5, &r, true).unwrap();
        assert!(run_chunks(&mut s, &grants[2], 5).iter().all(|ok| *ok));
        let n = s.assembly_chunks("asm2", a.epoch, 20).unwrap();
        assert!(n.complete, "every segment is committed");
        assert_eq!(n.chunks, vec![("file:///w/20.mp4".to_string(), 20, 25)]);
        assert_eq!(s.jobs[&id].state, JobState::Assembling);
        assert!(
            s.complete(
                "asm2",
                a.epoch,
                Completion::Assemble {
                    output_url: "file:///out.mp4".into(),
                    frames: 25
                },
                6,
                &r
            )
            .0
        );
        assert_eq!(s.jobs[&id].state, JobState::Succeeded);
        assert!(s.index_errors().is_empty(), "{:?}", s.index_errors());
    }

    #[test]
    fn a_silent_assembly_lease_expires_after_three_heartbeats_not_the_ttl() {
        let r = Rules {
            lease_ttl_ms: 120_000,
            heartbeat_interval_ms: 500,
            ..rules()
        };
        let mut s = State::default();
        s.submit(new_job("j1", "k"), 0, &r);
        let (g, _) = s.lease("w0", "probe".into(), 0, &r).unwrap();
        assert!(
            s.complete("probe", g.epoch, Completion::Probe(media(10)), 1, &r)
                .0
        );
        let (seg, _) = s.lease("w1", "s".into(), 0, &r).unwrap();
        let (a, _) = s.lease_for("m", "asm".into(), 0, &r, true).unwrap();
        assert_eq!(s.heartbeat("asm", a.epoch, 0, 1000, &r), (true, 0));
        assert!(s.heartbeat("s", seg.epoch, 3, 1000, &r).0);
        assert!(s.expire(2400, &r).tasks.is_empty(), "heard from 1.4 s ago");
        let ch = s.expire(2600, &r);
        assert_eq!(ch.tasks.len(), 1, "only the assembly: {ch:?}");
        let t = &s.tasks[&(a.job_id.clone(), a.index)];
        assert_eq!(t.state, TaskState::Pending);
        assert!(
            t.errors[0].contains("assembly lease silent for 1500 ms"),
            "{:?}",
            t.errors
        );
        assert!(
            s.current("s", seg.epoch).is_some(),
            "the segment keeps its TTL"
        );
        // Another lane takes the assembly over.
        let (b, _) = s.lease_for("m2", "asm2".into(), 2700, &r, true).unwrap();
        assert!(matches!(b.work, Work::Assemble { streamed: true, .. }));
    }

    #[test]
    fn an_assembly_on_blob_storage_waits_for_every_segment_even_on_a_lane() {
        let r = rules();
        let mut s = State::default();
        let mut nj = new_job("j1", "k");
        nj.output_url = "az://acct/out/o.mp4".into();
        s.submit(nj, 0, &r);
        let (g, _) = s.lease("w0", "probe".into(), 0, &r).unwrap();
        assert!(
            s.complete("probe", g.epoch, Completion::Probe(media(10)), 1, &r)
                .0
        );
        let (g, _) = s.lease("w1", "s".into(), 2, &r).unwrap();
        assert!(
            s.lease_for("m", "a".into(), 2, &r, true).is_none(),
            "its signed URLs would expire while the segments run"
        );
        assert!(run_chunks(&mut s, &g, 5).iter().all(|ok| *ok));
        let (a, _) = s.lease_for("m", "a".into(), 3, &r, true).unwrap();
        assert!(matches!(
            a.work,
            Work::Assemble {
                streamed: false,
                ..
            }
        ));
        assert!(s.index_errors().is_empty(), "{:?}", s.index_errors());
    }

    #[test]
    fn an_assembly_waits_for_a_pipeline_until_every_segment_is_committed() {
        let (mut s, r) = (State::default(), rules());
        s.submit(new_job("j1", "k"), 0, &r);
        let (g, _) = s.lease("w0", "probe".into(), 0, &r).unwrap();
        assert!(
            s.complete("probe", g.epoch, Completion::Probe(media(10)), 1, &r)
                .0
        );
        let (g, _) = s.lease("w1", "s".into(), 2, &r).unwrap();
        assert!(run_chunks(&mut s, &g, 5).iter().all(|ok| *ok));
        // No lane in this pool: a pipeline takes the assembly, whole.
        let (a, _) = s.lease("w1", "a".into(), 3, &r).unwrap();
        let Work::Assemble {
            ref segments,
            streamed,
            ..
        } = a.work
        else {
            panic!("{a:?}")
        };
        assert!(!streamed);
        assert_eq!(segments.len(), 2);
    }

    #[test]
    fn a_job_runs_probe_segments_in_chunks_then_assemble() {
        let (mut s, r) = (State::default(), rules());
        let id = submit(&mut s);
        let (g, _) = s.lease("w1", "l1".into(), 0, &r).unwrap();
        assert!(matches!(g.work, Work::Probe { .. }));
        assert!(
            s.lease("w2", "l2".into(), 0, &r).is_none(),
            "nothing else before the probe is done"
        );
        assert_eq!(s.probing_since(0), Some(0), "idle workers ask again soon");
        assert!(
            s.complete("l1", g.epoch, Completion::Probe(media(25)), 1, &r)
                .0
        );
        assert_eq!(s.probing_since(1), None);
        assert_eq!(
            s.jobs[&id].segments, 3,
            "25 frames at 10 fps in 1 s segments: 10, 10, 5"
        );
        assert_eq!(s.jobs[&id].chunk_frames, 5);
        let grants: Vec<Grant> = (0..3)
            .map(|i| s.lease("w1", format!("s{i}"), 2, &r).unwrap().0)
            .collect();
        for g in &grants {
            let Work::Segment {
                start,
                end,
                ref frame_pts,
                ref output_url,
                chunk_frames,
                ..
            } = g.work
            else {
                panic!()
            };
            assert_eq!(frame_pts.len() as u64, end - start);
            assert_eq!(chunk_frames, 5);
            assert!(
                output_url.ends_with(&format!("-e{}", g.epoch)),
                "one path per attempt: {output_url}"
            );
        }
        for g in &grants {
            assert!(run_chunks(&mut s, g, 5).iter().all(|ok| *ok));
        }
        assert_eq!(s.jobs[&id].state, JobState::Assembling);
        assert_eq!(s.frames_done(&id), 25);
        let (g, _) = s.lease("w1", "a".into(), 4, &r).unwrap();
        let Work::Assemble { ref segments, .. } = g.work else {
            panic!()
        };
        assert_eq!(segments.len(), 5, "10+10+5 frames in chunks of 5");
        for w in segments.windows(2) {
            assert_eq!(w[0].2, w[1].1, "contiguous, in frame order");
        }
        assert_eq!((segments[0].1, segments[4].2), (0, 25));
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
            5,
            "chunk files are collected after success"
        );
    }

    #[test]
    fn a_lost_lease_redoes_only_its_unfinished_chunk() {
        let (mut s, r) = (State::default(), rules());
        let id = probed(&mut s, 20, 10.0);
        let (g, _) = s.lease("w1", "l1".into(), 2, &r).unwrap();
        assert!(
            s.commit_chunk("l1", g.epoch, (0, 5), "file:///w/a".into(), 0)
                .0
        );
        assert!(
            s.commit_chunk("l1", g.epoch, (5, 10), "file:///w/b".into(), 0)
                .0
        );
        s.expire(5000, &r);
        let (g2, _) = s.lease("w2", "l2".into(), 5001, &r).unwrap();
        let (start, end, pts) = range_of(&g2);
        assert_eq!(
            (start, end, pts),
            (10, 20, 10),
            "resumes after the committed chunks"
        );
        assert!(
            !s.commit_chunk("l1", g.epoch, (10, 15), "file:///w/late".into(), 0)
                .0,
            "fenced"
        );
        assert!(run_chunks(&mut s, &g2, 5).iter().all(|ok| *ok));
        assert_eq!(s.jobs[&id].state, JobState::Assembling);
        assert_eq!(s.frames_done(&id), 20);
    }

    #[test]
    fn a_retried_commit_never_deletes_a_committed_chunk() {
        let (mut s, r) = (State::default(), rules());
        probed(&mut s, 20, 10.0);
        let (g, _) = s.lease("w1", "l1".into(), 2, &r).unwrap();
        assert!(
            s.commit_chunk("l1", g.epoch, (0, 5), "file:///w/a".into(), 0)
                .0
        );
        // The same chunk again (its answer was lost): accepted, nothing collected.
        let (ok, _, ch) = s.commit_chunk("l1", g.epoch, (0, 5), "file:///w/a".into(), 0);
        assert!(ok, "idempotent");
        assert!(ch.garbage.is_empty(), "{:?}", ch.garbage);
        // After the lease is lost, the old attempt retries it once more: refused (fenced),
        // and still not deleted, since the task's committed frames live in that file.
        s.expire(5000, &r);
        let (_g2, _) = s.lease("w2", "l2".into(), 5001, &r).unwrap();
        let (ok, _, ch) = s.commit_chunk("l1", g.epoch, (0, 5), "file:///w/a".into(), 0);
        assert!(!ok, "fenced");
        assert!(ch.garbage.is_empty(), "{:?}", ch.garbage);
        assert_eq!(s.chunks_in_order(&g.job_id).len(), 1);
    }

    #[test]
    fn chunks_must_continue_the_committed_frames() {
        let (mut s, r) = (State::default(), rules());
        probed(&mut s, 20, 10.0);
        let (g, _) = s.lease("w1", "l1".into(), 2, &r).unwrap();
        let (ok, _, ch) = s.commit_chunk("l1", g.epoch, (5, 10), "file:///w/gap".into(), 0);
        assert!(!ok, "a gap is refused");
        assert_eq!(ch.garbage, vec!["file:///w/gap".to_string()]);
        assert!(
            !s.commit_chunk("l1", g.epoch, (0, 25), "file:///w/long".into(), 0)
                .0,
            "past the end"
        );
        assert!(
            !s.commit_chunk("l1", g.epoch, (0, 0), "file:///w/empty".into(), 0)
                .0,
            "empty"
        );
        assert!(
            s.commit_chunk("l1", g.epoch, (0, 5), "file:///w/ok".into(), 0)
                .0
        );
        assert!(
            !s.commit_chunk("l1", g.epoch, (0, 5), "file:///w/again".into(), 0)
                .0,
            "no frame twice"
        );
    }

    #[test]
    fn an_idle_worker_steals_where_owner_and_thief_finish_soonest() {
        let (mut s, r) = (State::default(), rules());
        let id = probed(&mut s, 60, 100.0); // one segment of 60 frames, chunks of 5
        let (g1, _) = s.lease("w1", "l1".into(), 2, &r).unwrap();
        assert_eq!(s.heartbeat("l1", g1.epoch, 7, 3, &r), (true, 60)); // in chunk 1
        let (g2, ch) = s.lease("w2", "l2".into(), 4, &r).unwrap();
        let (start, end, pts) = range_of(&g2);
        assert_eq!(
            (start, end, pts),
            (35, 60, 25),
            "53 frames left after frame 7: the split that finishes soonest (owner 28, thief 25 + start)"
        );
        assert!(ch.jobs.contains(&id), "the job's segment count changed");
        assert_eq!(
            s.heartbeat("l1", g1.epoch, 9, 5, &r),
            (true, 35),
            "the owner learns its new end"
        );
        for a in [0, 5, 10, 15] {
            let (ok, end, _) =
                s.commit_chunk("l1", g1.epoch, (a, a + 5), format!("file:///w/{a}"), 6);
            assert!(ok && end == 35);
        }
        // A third idle worker steals from the range with the larger stealable tail (w2's:
        // the owner, at frame 20 of 35, has only its next two chunks left).
        assert_eq!(s.heartbeat("l1", g1.epoch, 20, 6, &r), (true, 35));
        assert_eq!(s.heartbeat("l2", g2.epoch, 0, 6, &r), (true, 60));
        let (g3, _) = s.lease("w3", "l3".into(), 7, &r).unwrap();
        let Work::Segment { start, end, .. } = g3.work else {
            panic!()
        };
        // 35..60 untouched: 50 finishes soonest (owner 15 frames, thief 10 and its start).
        assert_eq!((start, end), (50, 60));
        for a in [20, 25, 30] {
            assert!(
                s.commit_chunk("l1", g1.epoch, (a, a + 5), format!("file:///w/{a}"), 8)
                    .0
            );
        }
        assert!(
            !s.commit_chunk("l1", g1.epoch, (35, 40), "file:///w/35".into(), 8)
                .0,
            "lease is done"
        );
        assert!(run_chunks(&mut s, &g2, 5).iter().all(|ok| *ok));
        assert!(run_chunks(&mut s, &g3, 5).iter().all(|ok| *ok));
        assert_eq!(s.jobs[&id].state, JobState::Assembling);
        assert_eq!(s.jobs[&id].segments, 3);
        assert_eq!(s.frames_done(&id), 60);
        let (g, _) = s.lease("w1", "a".into(), 9, &r).unwrap();
        let Work::Assemble { ref segments, .. } = g.work else {
            panic!()
        };
        let mut next = 0;
        for (_, a, b) in segments {
            assert_eq!(*a, next, "every frame exactly once, in order");
            next = *b;
        }
        assert_eq!(next, 60);
    }

    /// Two 10-frame segments (chunks of 5): w1 finishes the first at 20 ms/frame while w2,
    /// a straggler, sits on the second. Returns (w2's grant, the speculative grant at t=500).
    fn straggler(s: &mut State, r: &Rules) -> (Grant, Grant) {
        probed(s, 20, 1.0);
        let (g1, _) = s.lease("w1", "l1".into(), 0, r).unwrap();
        let (g2, _) = s.lease("w2", "l2".into(), 0, r).unwrap();
        assert!(
            s.commit_chunk("l1", g1.epoch, (0, 5), "file:///w/0".into(), 100)
                .0
        );
        assert!(
            s.commit_chunk("l1", g1.epoch, (5, 10), "file:///w/5".into(), 200)
                .0
        );
        assert!(
            s.lease("w1", "early".into(), 250, r).is_none(),
            "not yet a straggler: 250 ms < 2 x 10 frames x 20 ms"
        );
        let (g3, ch) = s.lease("w1", "l3".into(), 500, r).expect("speculation");
        assert_eq!(range_of(&g3), (10, 20, 10));
        assert_eq!(g3.index, g2.index);
        assert!(g3.epoch > g2.epoch);
        assert_eq!(ch.tasks, BTreeSet::from([("j1".to_string(), g2.index)]));
        assert!(
            s.lease("w3", "l4".into(), 500, r).is_none(),
            "one speculative twin per task"
        );
        (g2, g3)
    }

    #[test]
    fn a_straggler_is_raced_at_the_tail_and_the_first_commit_wins() {
        let (mut s, r) = (State::default(), rules());
        let (g2, g3) = straggler(&mut s, &r);
        assert!(
            s.commit_chunk("l3", g3.epoch, (10, 15), "file:///w/s10".into(), 600)
                .0
        );
        assert_eq!(s.frames_done("j1"), 15);
        let (ok, end, ch) = s.commit_chunk("l2", g2.epoch, (10, 15), "file:///w/p10".into(), 650);
        assert!(!ok);
        assert_eq!(end, 0, "the loser is told to stop");
        assert_eq!(ch.garbage, vec!["file:///w/p10".to_string()]);
        assert_eq!(s.heartbeat("l2", g2.epoch, 6, 660, &r), (false, 0));
        assert!(
            s.commit_chunk("l3", g3.epoch, (15, 20), "file:///w/s15".into(), 700)
                .0
        );
        let t = &s.tasks[&("j1".to_string(), g2.index)];
        assert_eq!(t.state, TaskState::Done);
        assert_eq!(t.worker_id, "w1");
        assert_eq!(t.speculations, 1);
        assert!(t.chunks.iter().all(|c| c.worker_id == "w1"));
        assert_eq!(s.jobs["j1"].state, JobState::Assembling);
        assert!(s.leased_tasks().next().is_none(), "no lease left behind");
    }

    #[test]
    fn the_primary_winning_stops_its_speculative_twin() {
        let (mut s, r) = (State::default(), rules());
        let (g2, g3) = straggler(&mut s, &r);
        assert!(
            s.commit_chunk("l2", g2.epoch, (10, 15), "file:///w/p10".into(), 510)
                .0
        );
        let (ok, end, _) = s.commit_chunk("l3", g3.epoch, (10, 15), "file:///w/s10".into(), 520);
        assert!(!ok && end == 0);
        assert!(s.tasks[&("j1".to_string(), g2.index)].spec.is_none());
        assert!(
            s.commit_chunk("l2", g2.epoch, (15, 20), "file:///w/p15".into(), 530)
                .0
        );
        let t = &s.tasks[&("j1".to_string(), g2.index)];
        assert_eq!((t.state, t.worker_id.as_str()), (TaskState::Done, "w2"));
    }

    #[test]
    fn a_failed_or_expired_twin_leaves_the_other_running() {
        let (mut s, r) = (State::default(), rules());
        let (g2, g3) = straggler(&mut s, &r);
        // The primary stops heartbeating: only it expires; the speculative attempt becomes the primary.
        assert_eq!(s.heartbeat("l3", g3.epoch, 2, 1_400, &r), (true, 20));
        let ch = s.expire(1_450, &r);
        assert_eq!(ch.tasks.len(), 1);
        let t = &s.tasks[&("j1".to_string(), g2.index)];
        assert_eq!(t.state, TaskState::Leased);
        assert_eq!(t.lease.as_ref().map(|l| l.id.as_str()), Some("l3"));
        assert!(t.spec.is_none());
        assert_eq!(t.failures, 1);
        assert_eq!(s.heartbeat("l2", g2.epoch, 1, 1_460, &r), (false, 0));
        assert_eq!(s.heartbeat("l3", g3.epoch, 3, 1_460, &r), (true, 20));
        assert!(
            s.commit_chunk("l3", g3.epoch, (10, 15), "file:///w/a".into(), 1_500)
                .0
        );
        assert!(
            s.commit_chunk("l3", g3.epoch, (15, 20), "file:///w/b".into(), 1_600)
                .0
        );
        assert_eq!(s.jobs["j1"].state, JobState::Assembling);
    }

    #[test]
    fn no_speculation_when_switched_off_or_not_slow() {
        let mut r = rules();
        r.speculation_factor = 0.0;
        let mut s = State::default();
        probed(&mut s, 20, 1.0);
        let (g1, _) = s.lease("w1", "l1".into(), 0, &r).unwrap();
        s.lease("w2", "l2".into(), 0, &r).unwrap();
        assert!(
            s.commit_chunk("l1", g1.epoch, (0, 5), "file:///w/0".into(), 100)
                .0
        );
        assert!(
            s.commit_chunk("l1", g1.epoch, (5, 10), "file:///w/5".into(), 200)
                .0
        );
        assert!(s.lease("w1", "l3".into(), 100_000, &r).is_none());
    }

    #[test]
    fn a_steal_splits_at_a_keyframe_when_that_finishes_soonest() {
        let r = rules();
        let mut s = State::default();
        let mut nj = new_job("j1", "k");
        nj.params.segment_seconds = 100.0;
        s.submit(nj, 0, &r);
        let (g, _) = s.lease("w0", "probe".into(), 0, &r).unwrap();
        let mut m = media(200);
        m.keyframes = vec![0, 60, 113, 170];
        assert!(s.complete("probe", g.epoch, Completion::Probe(m), 1, &r).0);
        let (g1, _) = s.lease("w1", "l1".into(), 2, &r).unwrap();
        assert_eq!(s.heartbeat("l1", g1.epoch, 12, 3, &r), (true, 200));
        let (g2, _) = s.lease("w2", "l2".into(), 4, &r).unwrap();
        let Work::Segment {
            start,
            end,
            seek_ns,
            ..
        } = g2.work
        else {
            panic!()
        };
        // Owner at 12 of 200: keyframe 113 finishes soonest (owner 101 frames, thief 87 and its
        // start); at the boundary 110 the thief would decode 50 frames from keyframe 60 twice.
        assert_eq!((start, end), (113, 200));
        assert_eq!(
            seek_ns,
            113 * 100_000_000,
            "the thief starts decoding at its first frame"
        );
        assert_eq!(s.heartbeat("l1", g1.epoch, 14, 5, &r), (true, 113));
        // The owner's last chunk ends at the split, inside its chunk grid (110..115).
        assert!(run_chunks(&mut s, &g1, 5).iter().all(|ok| *ok));
        assert_eq!(s.tasks[&("j1".to_string(), 1)].committed_until(), 113);
    }

    #[test]
    fn a_lagging_heartbeat_never_lets_a_steal_split_inside_committed_chunks() {
        // Found by the property test: one 40-frame segment, chunks of 5.
        let mut r = rules();
        r.segment_seconds = 6.0;
        let mut s = planned_job(&r, 40);
        let (g, _) = s.lease("w2", "l1".into(), 10, &r).unwrap();
        for a in [0, 5, 10] {
            assert!(
                s.commit_chunk("l1", g.epoch, (a, a + 5), format!("file:///w/{a}"), 20)
                    .0
            );
        }
        assert_eq!(s.heartbeat("l1", g.epoch, 1, 30, &r), (true, 40));
        let (g2, _) = s.lease("w0", "l2".into(), 40, &r).expect("a stolen tail");
        let (start, end, _) = range_of(&g2);
        assert_eq!(
            (start, end),
            (30, 40),
            "split past the committed frames (and the owner's next two chunks)"
        );
    }

    #[test]
    fn a_probe_over_the_limits_fails_the_job_naming_the_limit() {
        let mut r = rules();
        r.limits.max_height = 40;
        let mut s = State::default();
        s.submit(new_job("j1", "k"), 0, &r);
        let (g, _) = s.lease("w0", "probe".into(), 0, &r).unwrap();
        assert!(
            s.complete("probe", g.epoch, Completion::Probe(media(20)), 1, &r)
                .0
        );
        let j = &s.jobs["j1"];
        assert_eq!(j.state, JobState::Failed);
        assert!(
            j.error.contains("48 pixels high")
                && j.error.contains("coordinator.limits.max_height is 40"),
            "{}",
            j.error
        );
        assert!(
            s.lease("w1", "l2".into(), 2, &r).is_none(),
            "nothing left to do"
        );
    }

    #[test]
    fn nothing_to_steal_near_the_end_of_a_range() {
        let (mut s, r) = (State::default(), rules());
        probed(&mut s, 12, 100.0);
        let (g1, _) = s.lease("w1", "l1".into(), 2, &r).unwrap();
        s.heartbeat("l1", g1.epoch, 3, 3, &r);
        assert!(
            s.lease("w2", "l2".into(), 4, &r).is_none(),
            "12 frames: split at 10 leaves less than a chunk"
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
        assert!(
            !s.complete("l1", g1.epoch, Completion::Probe(media(5)), 1700, &r)
                .0,
            "a stale epoch cannot commit"
        );
        assert!(
            s.complete("l2", g2.epoch, Completion::Probe(media(5)), 1700, &r)
                .0
        );
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
        for i in 3..8 {
            let (g, _) = s.lease("w1", format!("l{i}"), i, &r).unwrap();
            assert!(s.release(&format!("l{i}"), g.epoch, "eviction notice").0);
        }
        assert_eq!(s.jobs[&id].state, JobState::Probing, "releases never count");
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
        assert_eq!(s.leased_tasks().count(), 1);
        s.cancel(&id, 1).unwrap();
        assert_eq!(s.leased_tasks().count(), 0, "its worker is not shown busy");
        assert!(!s.heartbeat("l1", g.epoch, 0, 2, &r).0);
        assert!(s.lease("w1", "l2".into(), 2, &r).is_none());
        assert_eq!(s.jobs[&id].state, JobState::Cancelled);
    }

    #[test]
    fn restore_keeps_leases_and_chunks() {
        let (mut s, r) = (State::default(), rules());
        probed(&mut s, 20, 10.0);
        let (g, _) = s.lease("w1", "l1".into(), 0, &r).unwrap();
        assert!(
            s.commit_chunk("l1", g.epoch, (0, 5), "file:///w/a".into(), 0)
                .0
        );
        let jobs = s.jobs.values().cloned().collect();
        let tasks = s.tasks.values().cloned().collect();
        let (mut s2, _) = State::restore(jobs, tasks, 10_000, &r);
        assert_eq!(s2.index_errors(), Vec::<String>::new(), "indexes rebuilt");
        assert!(
            s2.heartbeat("l1", g.epoch, 7, 10_500, &r).0,
            "the worker reattaches"
        );
        assert!(
            s2.commit_chunk("l1", g.epoch, (5, 10), "file:///w/b".into(), 0)
                .0,
            "and goes on committing"
        );
        assert!(s2.expire(11_400, &r).is_empty());
        assert_eq!(s2.expire(11_600, &r).tasks.len(), 1);
        let (g2, _) = s2.lease("w2", "l2".into(), 11_700, &r).unwrap();
        let Work::Segment { start, .. } = g2.work else {
            panic!()
        };
        assert_eq!(start, 10);
    }
}
