//! The coordinator's domain records, as stored in sled (serde JSON with a
//! version field, so a later release can read what an earlier one wrote).

use serde::{Deserialize, Serialize};

/// Version of the stored record layout.
pub const SCHEMA_VERSION: u32 = 1;

/// Where a job is in its life; only the scheduler moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Queued,
    Probing,
    Running,
    Assembling,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    /// Finished one way or another: no more leases are handed out for it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// What a job asks for beyond its input and output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub style_weights: Vec<f32>,
    pub segment_seconds: f64,
    pub max_size: u32,
    pub crf: u32,
}

/// The facts a Probe task found; segments are planned from them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Media {
    pub width: u32,
    pub height: u32,
    pub fps_num: i32,
    pub fps_den: i32,
    pub duration_ns: u64,
    pub video_codec: String,
    pub audio_streams: u32,
    pub container: String,
    pub frame_pts: Vec<u64>,
    pub keyframes: Vec<u64>,
    #[serde(default)]
    pub running_offset_ns: i64,
}

impl Media {
    /// The facts without the per-frame lists (what a Segment task needs besides its own range).
    pub fn summary(&self) -> Media {
        Media {
            width: self.width,
            height: self.height,
            fps_num: self.fps_num,
            fps_den: self.fps_den,
            duration_ns: self.duration_ns,
            video_codec: self.video_codec.clone(),
            audio_streams: self.audio_streams,
            container: self.container.clone(),
            frame_pts: Vec::new(),
            keyframes: Vec::new(),
            running_offset_ns: self.running_offset_ns,
        }
    }

    pub fn fps(&self) -> f64 {
        if self.fps_num > 0 && self.fps_den > 0 {
            self.fps_num as f64 / self.fps_den as f64
        } else if self.duration_ns > 0 {
            self.frame_pts.len() as f64 * 1e9 / self.duration_ns as f64
        } else {
            0.0
        }
    }
}

/// One accepted job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub v: u32,
    pub id: String,
    pub idempotency_key: String,
    pub input_url: String,
    pub output_url: String,
    pub params: Params,
    pub state: JobState,
    /// Why it failed, naming the file and the problem.
    pub error: String,
    pub created_ms: u64,
    pub finished_ms: u64,
    /// Stored in its own tree, written once when the probe lands (store.rs): it holds every
    /// frame's timestamp, and the job record is rewritten on every state change.
    #[serde(skip_serializing, default)]
    pub media: Option<Media>,
    /// Number of Segment tasks once planned (stealing adds more).
    pub segments: u32,
    /// Frames per chunk checkpoint (from the probe's frame rate and `chunk_seconds`).
    #[serde(default)]
    pub chunk_frames: u64,
    /// Index the next new task gets.
    #[serde(default)]
    pub next_task: u32,
    /// The submitter's name (auth on) or "" (auth off, the blob trigger).
    #[serde(default)]
    pub owner: String,
}

/// What a task does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskKind {
    Probe,
    Segment { start: u64, end: u64 },
    Assemble,
}

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    Pending,
    Leased,
    Done,
    Failed,
}

/// How a task came to exist (shown on the dashboard's segment map).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// Planned from the probe.
    #[default]
    Planned,
    /// Split off the tail of task `from` for an idle worker.
    Stolen { from: u32 },
}

/// A task's current lease: the only attempt whose results are accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub worker_id: String,
    pub deadline_ms: u64,
    /// First frame of this attempt (Segment tasks resume after their committed chunks).
    #[serde(default)]
    pub from: u64,
    /// The epoch results under this lease must carry (0 in records from before speculation: the task's).
    #[serde(default)]
    pub epoch: u64,
    /// When it was granted (to spot stragglers worth speculating on).
    #[serde(default)]
    pub started_ms: u64,
    /// Frames done since `from`, for a speculative twin (the primary's is the task's `frames_done`).
    #[serde(default)]
    pub frames_done: u64,
}

/// A committed chunk checkpoint: frames [start, end) of a segment, encoded at `url`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub start: u64,
    pub end: u64,
    pub url: String,
    pub worker_id: String,
}

/// One unit of work of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub v: u32,
    pub job_id: String,
    pub index: u32,
    pub kind: TaskKind,
    pub state: TaskState,
    /// Incremented at every lease; a result must carry the current epoch.
    pub epoch: u64,
    /// Leases granted so far (failed, released, expired or current).
    pub attempts: u32,
    /// Attempts that failed or whose lease expired (releases are not counted).
    #[serde(default)]
    pub failures: u32,
    /// Distinct workers on which the task failed.
    #[serde(default)]
    pub failed_workers: Vec<String>,
    pub lease: Option<Lease>,
    /// "worker: error" for every failed attempt.
    pub errors: Vec<String>,
    /// Frames finished by the current attempt (from heartbeats) or in total once done.
    pub frames_done: u64,
    /// Worker that committed the result.
    pub worker_id: String,
    /// Committed chunks of a Segment task, contiguous from its start.
    #[serde(default)]
    pub chunks: Vec<Chunk>,
    #[serde(default)]
    pub origin: Origin,
    /// Leases given back by their workers (eviction notices, drains).
    #[serde(default)]
    pub releases: u32,
    /// A speculative second attempt on the same range, racing `lease` chunk by chunk.
    #[serde(default)]
    pub spec: Option<Lease>,
    /// Speculative attempts started on this task.
    #[serde(default)]
    pub speculations: u32,
}

impl Task {
    pub fn new(job_id: &str, index: u32, kind: TaskKind) -> Self {
        Task {
            v: SCHEMA_VERSION,
            job_id: job_id.to_string(),
            index,
            kind,
            state: TaskState::Pending,
            epoch: 0,
            attempts: 0,
            failures: 0,
            failed_workers: Vec::new(),
            lease: None,
            errors: Vec::new(),
            frames_done: 0,
            worker_id: String::new(),
            chunks: Vec::new(),
            origin: Origin::Planned,
            releases: 0,
            spec: None,
            speculations: 0,
        }
    }

    /// First frame of a Segment task (0 for others).
    pub fn start_frame(&self) -> u64 {
        match self.kind {
            TaskKind::Segment { start, .. } => start,
            _ => 0,
        }
    }

    /// First frame not yet committed (Segment tasks).
    pub fn committed_until(&self) -> u64 {
        self.chunks
            .last()
            .map(|c| c.end)
            .unwrap_or(self.start_frame())
    }

    /// Frames this task covers (0 for Probe and Assemble).
    pub fn frames(&self) -> u64 {
        match self.kind {
            TaskKind::Segment { start, end } => end.saturating_sub(start),
            _ => 0,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            TaskKind::Probe => "probe",
            TaskKind::Segment { .. } => "segment",
            TaskKind::Assemble => "assemble",
        }
    }
}
