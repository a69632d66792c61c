//! Conversions between wire (proto) and domain types, kept apart so the
//! scheduler never touches generated code.

use crate::manager::JobView;
use crate::model::{JobState, Media, Params, TaskKind, TaskState};
use crate::scheduler::{Completion, Grant, Work};
use framewise_common::proto as pb;
use framewise_common::storage::{Access, StorageError};

pub fn params_from(p: Option<pb::JobParams>) -> Params {
    let p = p.unwrap_or_default();
    Params {
        style_weights: p.style_weights,
        segment_seconds: p.segment_seconds,
        max_size: p.max_size,
        crf: p.crf,
    }
}

pub fn params_to(p: &Params) -> pb::JobParams {
    pb::JobParams {
        style_weights: p.style_weights.clone(),
        segment_seconds: p.segment_seconds,
        max_size: p.max_size,
        crf: p.crf,
    }
}

pub fn media_from(m: pb::MediaInfo) -> Media {
    Media {
        width: m.width,
        height: m.height,
        fps_num: m.fps_num,
        fps_den: m.fps_den,
        duration_ns: m.duration_ns,
        video_codec: m.video_codec,
        audio_streams: m.audio_streams,
        container: m.container,
        frame_pts: m.frame_pts,
        keyframes: m.keyframes,
        running_offset_ns: m.running_offset_ns,
    }
}

/// The wire form of media facts; `with_pts` = include per-frame timestamps.
pub fn media_to(m: &Media, with_pts: bool) -> pb::MediaInfo {
    pb::MediaInfo {
        width: m.width,
        height: m.height,
        fps_num: m.fps_num,
        fps_den: m.fps_den,
        frame_count: m.frame_pts.len() as u64,
        duration_ns: m.duration_ns,
        video_codec: m.video_codec.clone(),
        audio_streams: m.audio_streams,
        frame_pts: if with_pts {
            m.frame_pts.clone()
        } else {
            Vec::new()
        },
        keyframes: if with_pts {
            m.keyframes.clone()
        } else {
            Vec::new()
        },
        container: m.container.clone(),
        running_offset_ns: m.running_offset_ns,
    }
}

fn state_to(s: JobState) -> pb::JobState {
    match s {
        JobState::Queued => pb::JobState::Queued,
        JobState::Probing => pb::JobState::Probing,
        JobState::Running => pb::JobState::Running,
        JobState::Assembling => pb::JobState::Assembling,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

pub fn job_to(v: &JobView) -> pb::Job {
    let j = &v.job;
    let segs: Vec<_> = v
        .tasks
        .iter()
        .filter(|t| matches!(t.kind, TaskKind::Segment { .. }))
        .collect();
    pb::Job {
        job_id: j.id.clone(),
        spec: Some(pb::JobSpec {
            input_url: j.input_url.clone(),
            output_url: j.output_url.clone(),
            params: Some(params_to(&j.params)),
        }),
        state: state_to(j.state) as i32,
        frames_total: j
            .media
            .as_ref()
            .map(|m| m.frame_pts.len() as u64)
            .unwrap_or(0),
        frames_done: v.frames_done,
        segments_total: j.segments,
        segments_done: segs.iter().filter(|t| t.state == TaskState::Done).count() as u32,
        error: j.error.clone(),
        created_unix_ms: j.created_ms,
        finished_unix_ms: j.finished_ms,
        media: j.media.as_ref().map(|m| media_to(m, false)),
        frames_per_s: v.frames_per_s,
        eta_s: v.eta_s.unwrap_or(-1.0),
        tasks: v
            .tasks
            .iter()
            .map(|t| {
                let (start, end) = match t.kind {
                    TaskKind::Segment { start, end } => (start, end),
                    _ => (0, 0),
                };
                pb::TaskInfo {
                    index: t.index,
                    kind: t.kind_name().into(),
                    state: format!("{:?}", t.state).to_lowercase(),
                    start_frame: start,
                    end_frame: end,
                    attempts: t.attempts,
                    worker_id: t
                        .lease
                        .as_ref()
                        .map(|l| l.worker_id.clone())
                        .unwrap_or_else(|| t.worker_id.clone()),
                    frames_done: t.frames_done,
                    committed_until: t.committed_until(),
                    chunks: t.chunks.len() as u32,
                    lease_from: t.lease.as_ref().map(|l| l.from).unwrap_or(start),
                }
            })
            .collect(),
    }
}

/// Signs the URLs a lease hands out: workers get one URL per blob they may read or write,
/// never the account's credentials. Local files pass through unchanged.
pub struct Signer<'a> {
    pub blobs: &'a framewise_common::storage::Store,
    pub valid_for: std::time::Duration,
}

impl Signer<'_> {
    fn read(&self, url: &str) -> Result<String, StorageError> {
        self.blobs.sign(url, Access::Read, self.valid_for)
    }

    /// A write-signed URL for a blob location; `None` for a local file (written in place).
    fn write(&self, url: &str) -> Result<Option<String>, StorageError> {
        if !self.blobs.locate(url)?.is_remote() {
            return Ok(None);
        }
        self.blobs
            .sign(url, Access::Write, self.valid_for)
            .map(Some)
    }
}

/// Committed chunks (url, start, end) as an assembly reads them: each URL signed for reading.
pub fn segment_outputs(
    chunks: Vec<(String, u64, u64)>,
    sign: &Signer,
) -> Result<Vec<pb::SegmentOutput>, StorageError> {
    chunks
        .into_iter()
        .map(|(url, start_frame, end_frame)| {
            Ok(pb::SegmentOutput {
                url: sign.read(&url)?,
                start_frame,
                end_frame,
            })
        })
        .collect()
}

pub fn grant_to(
    g: Grant,
    ttl_ms: u64,
    sign: &Signer,
) -> Result<pb::LeaseTaskResponse, StorageError> {
    use pb::lease_task_response::Task;
    let task = match g.work {
        Work::Probe { input_url } => Task::Probe(pb::ProbeTask {
            input_url: sign.read(&input_url)?,
        }),
        Work::Segment {
            input_url,
            start,
            end,
            chunk_frames,
            frame_pts,
            seek_ns,
            output_url,
            params,
            media,
        } => {
            let mut chunk_targets = Vec::new();
            let mut first = start;
            while first < end {
                let chunk = framewise_common::storage::join(
                    &output_url,
                    &framewise_common::storage::chunk_name(first),
                );
                match sign.write(&chunk)? {
                    Some(write_url) => chunk_targets.push(pb::ChunkTarget {
                        start_frame: first,
                        write_url,
                    }),
                    None => break,
                }
                first += chunk_frames.max(1);
            }
            Task::Segment(pb::SegmentTask {
                input_url: sign.read(&input_url)?,
                start_frame: start,
                end_frame: end,
                frame_pts,
                seek_ns,
                output_url,
                params: Some(params_to(&params)),
                media: Some(media_to(&media, false)),
                chunk_frames,
                chunk_targets,
            })
        }
        Work::Assemble {
            input_url,
            segments,
            output_url,
            media,
            streamed,
        } => Task::Assemble(pb::AssembleTask {
            input_url: sign.read(&input_url)?,
            segments: segment_outputs(segments, sign)?,
            output_write_url: sign.write(&output_url)?.unwrap_or_default(),
            output_url,
            media: Some(media_to(&media, true)),
            streamed,
        }),
    };
    let log_write_url = if g.log_url.is_empty() {
        String::new()
    } else {
        sign.write(&g.log_url)?.unwrap_or_default()
    };
    Ok(pb::LeaseTaskResponse {
        job_id: g.job_id,
        task_index: g.index,
        lease: Some(pb::Lease {
            lease_id: g.lease_id,
            epoch: g.epoch,
            ttl_ms,
            log_url: g.log_url,
            log_write_url,
        }),
        task: Some(task),
        retry_after_ms: 0,
    })
}

pub fn completion_from(r: pb::complete_task_request::Result) -> Completion {
    use pb::complete_task_request::Result as R;
    match r {
        R::Probe(m) => Completion::Probe(media_from(m)),
        R::Segment(s) => Completion::Segment {
            output_url: s.output_url,
            frames: s.frames,
        },
        R::Assemble(a) => Completion::Assemble {
            output_url: a.output_url,
            frames: a.frames,
        },
    }
}
