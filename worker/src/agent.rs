//! The worker's lease loop: register, pull a task, run it on a blocking
//! thread while a heartbeat keeps the lease alive, report the result, repeat.

use crate::error::{MediaError, ModelError};
use crate::inference::{runtime, Stylizer};
use crate::media::assemble::{assemble_fed, SegmentFeed, SegmentFile};
use crate::media::decode::OpenDecoder;
use crate::media::encode::EncoderSettings;
use crate::media::mp4_index::read_index;
use crate::media::probe::{frame_duration_ns, probe, Probe};
use crate::preemption::watch_notices;
use crate::segment::{run_segment, ChunkDone, SegmentControl, SegmentError, SegmentSpec};
use framewise_common::bearer::{AuthChannel, Bearer};
use framewise_common::config::WorkerConfig;
use framewise_common::device::Device;
use framewise_common::proto::{
    self, lease_task_response::Task, worker_service_client::WorkerServiceClient,
};
use framewise_common::storage::sas::{self, TransferOptions};
use framewise_common::storage::{chunk_name, file_url, is_http, join, local_path, UrlError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;
use tracing::{info, warn};

const PROBE_TIMEOUT: Duration = Duration::from_secs(300);
const ASSEMBLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often a streamed assembly asks for newly committed chunks: the last segment's end waits
/// at most this long before the assembly hears of it.
const ASSEMBLY_POLL: Duration = Duration::from_millis(25);
/// How long a pipeline with no task keeps its decoder open for another range of the same input.
const KEEP_DECODER_IDLE: Duration = Duration::from_secs(10);

/// A worker that cannot start (its model or runtime is unusable).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error("coordinator {url}: {detail}")]
    Coordinator { url: String, detail: String },
}

/// A worker ready to take leases: the model is loaded and checked before any lease is taken.
pub struct Worker {
    cfg: WorkerConfig,
    id: String,
    threads: usize,
    model: Arc<Mutex<Stylizer>>,
    /// This pipeline's decoder, left open from one range to the next of the same input.
    decoder: Arc<Mutex<Option<OpenDecoder>>>,
    /// Model frames/s at `MEASURE_SIZE`, measured at start-up.
    model_fps: f64,
    device: Device,
    /// A media lane: takes only Probe and Assemble tasks (see [`Worker::media_lane`]).
    media_only: bool,
}

/// The frame size start-up throughput is measured at (and reported at, to compare workers).
pub const MEASURE_SIZE: (u32, u32) = (640, 360);

/// How a task ended, as reported to the coordinator.
enum Outcome {
    Done(proto::complete_task_request::Result),
    Failed {
        error: String,
        permanent: bool,
    },
    /// Given back (eviction notice): already reported by Release.
    Released,
    /// A segment whose chunks were all committed as they finished.
    Committed,
}

/// The GPU whose NVDEC decodes a `device` worker's input (`worker.decoder = "nvdec"`), or
/// None for the CPU's decoders.
fn nvdec(cfg: &WorkerConfig, device: Device) -> Option<u32> {
    (cfg.decoder == "nvdec").then(|| device.gpu()).flatten()
}

/// Pays the media start-up (media/warmup.rs) once per process and decoder before the first
/// lease; the pipelines of a multi-GPU worker start together and wait for the first one.
fn warm_up_media_once(id: &str, device: Device, nvdec: Option<u32>) {
    static DONE: Mutex<Vec<Option<u32>>> = Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if done.contains(&nvdec) {
        return;
    }
    done.push(nvdec);
    match crate::media::warmup::warm_up(&std::env::temp_dir(), nvdec) {
        Ok(took) => {
            info!(worker_id = %id, %device, ms = took.as_millis() as u64, "media pipelines warmed up")
        }
        Err(e) => {
            warn!(worker_id = %id, error = %e, "media warm-up failed; the first lease pays the start-up")
        }
    }
}

impl Worker {
    /// Loads the runtime and the model for `device` (the best variant that passes its quality
    /// gate, see variant.rs); `threads` = ONNX Runtime intra-op threads.
    pub fn new(
        cfg: WorkerConfig,
        id: String,
        threads: usize,
        device: Device,
    ) -> Result<Self, AgentError> {
        crate::media::init()?;
        warm_up_media_once(&id, device, nvdec(&cfg, device));
        let mut model = if cfg.synthetic_model_ms_per_frame > 0 {
            warn!(
                ms = cfg.synthetic_model_ms_per_frame,
                "SYNTHETIC MODEL: frames are not stylized (scheduler benchmarks only)"
            );
            Stylizer::synthetic(
                Duration::from_millis(cfg.synthetic_model_ms_per_frame),
                &cfg.model,
            )
        } else {
            let cache = crate::variant::cache_dir(&cfg.model_cache_dir, &cfg.model.path);
            let (s, choice) = crate::variant::load_best(
                runtime(&cfg.onnxruntime_lib)?,
                &cfg.model,
                threads,
                device,
                &cfg.optimize,
                &cache,
                (&cfg).into(),
            )?;
            let mut s = s;
            // Batching measured slower on an H100 with this model (BENCHMARKS.md): off unless asked.
            s.set_max_batch(cfg.batch_frames.max(1));
            info!(worker_id = %id, %device, variant = %choice.variant, psnr_db = ?choice.psnr_db, batch = s.max_batch(), model = %choice.path.display(), "model loaded");
            s
        };
        // Measured once at start-up and reported at registration (a bad model fails here, early).
        let model_fps = model.measure_fps(MEASURE_SIZE.0, MEASURE_SIZE.1, 2)?;
        info!(worker_id = %id, %device, model_fps, width = MEASURE_SIZE.0, height = MEASURE_SIZE.1, "model throughput measured");
        if device.gpu().is_some() && !cfg.cuda_warm_up_sizes.is_empty() {
            let began = Instant::now();
            // Validated with the config, so every entry parses.
            let sizes = cfg.cuda_warm_up_sizes.iter();
            for (w, h) in sizes.filter_map(|s| framewise_common::config::parse_size(s)) {
                model.warm_up_size(w, h)?;
            }
            info!(worker_id = %id, %device, sizes = ?cfg.cuda_warm_up_sizes, ms = began.elapsed().as_millis() as u64, "frame sizes warmed up");
        }
        Ok(Self {
            cfg,
            id,
            threads,
            model: Arc::new(Mutex::new(model)),
            decoder: Arc::new(Mutex::new(None)),
            model_fps,
            device,
            media_only: false,
        })
    }

    /// This worker's media lane, registered as `id`: it probes and assembles (an assembly from
    /// the moment the job's segments are planned, stitching chunks as they are committed), so
    /// neither waits for nor holds a model pipeline. It shares the pipeline's loaded model,
    /// which it never runs.
    pub fn media_lane(&self, id: String) -> Worker {
        Worker {
            cfg: self.cfg.clone(),
            id,
            threads: 1,
            model: self.model.clone(),
            decoder: Arc::new(Mutex::new(None)),
            model_fps: 0.0,
            device: self.device,
            media_only: true,
        }
    }

    /// Points the worker at a coordinator (the embedded one's port is known only after it starts).
    pub fn set_coordinator(&mut self, url: &str) {
        self.cfg.coordinator_url = url.to_string();
    }

    /// This worker's id as the coordinator knows it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Takes and runs tasks until `shutdown` turns true; reconnects with backoff when the coordinator is away.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
        let url = self.cfg.coordinator_url.clone();
        // Eviction notices: the sender lives as long as this loop, so `changed()` only fires on a notice.
        let (evict_tx, mut evicted) = watch::channel::<Option<String>>(None);
        if !self.cfg.preemption_url.is_empty() {
            watch_notices(
                self.cfg.preemption_url.clone(),
                Duration::from_millis(self.cfg.preemption_poll_ms),
                self.cfg.vm_name.clone(),
                evict_tx.clone(),
            );
        }
        let bearer = Bearer::from_config(&self.cfg.token, &self.cfg.token_file).map_err(|e| {
            AgentError::Coordinator {
                url: url.clone(),
                detail: format!("worker.token_file: {e}"),
            }
        })?;
        let tls = framewise_common::bearer::ClientTls::from_worker(&self.cfg);
        let mut backoff = Duration::from_millis(100);
        let mut client = loop {
            match framewise_common::bearer::connect_tls(&url, bearer.clone(), &tls).await {
                Ok(c) => {
                    // A probe result or an assembly lease carries every frame's timestamp.
                    break WorkerServiceClient::new(c)
                        .max_decoding_message_size(framewise_common::CLIENT_MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(framewise_common::CLIENT_MAX_MESSAGE_BYTES);
                }
                Err(e) => {
                    warn!(worker_id = %self.id, %url, error = %e, "coordinator not reachable; retrying");
                    if wait_or_shutdown(&mut shutdown, backoff).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let reg = client
            .register(proto::RegisterRequest {
                worker_id: self.id.clone(),
                hostname: hostname(),
                gpu: matches!(self.device, Device::Cuda(_)),
                cpu_threads: self.threads as u32,
                model_fps: self.model_fps,
            })
            .await
            .map_err(|e| AgentError::Coordinator {
                url: url.clone(),
                detail: e.message().to_string(),
            })?
            .into_inner();
        let hb_every = Duration::from_millis(reg.heartbeat_interval_ms.max(100));
        info!(worker_id = %self.id, threads = self.threads, "worker registered");
        backoff = Duration::from_millis(100);
        // Since when this pipeline has been given no task.
        let mut idle_since: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            if let Some(notice) = evicted.borrow().clone() {
                info!(worker_id = %self.id, %notice, "evicted: taking no more leases");
                drop(evict_tx);
                return Ok(());
            }
            let resp = match client
                .lease_task(proto::LeaseTaskRequest {
                    worker_id: self.id.clone(),
                    media_only: self.media_only,
                })
                .await
            {
                Ok(r) => r.into_inner(),
                Err(e) => {
                    warn!(worker_id = %self.id, error = %e.message(), "lease request failed; retrying");
                    if wait_or_shutdown(&mut shutdown, backoff).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            let (Some(task), Some(lease)) = (resp.task.clone(), resp.lease.clone()) else {
                // An idle pipeline lets its kept decoder go (its input file, which may have been
                // deleted since, and its NVDEC surfaces), but not at a job's tail, where a steal
                // may still come for the same input.
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= KEEP_DECODER_IDLE {
                    let kept = self
                        .decoder
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take();
                    if let Some(d) = kept {
                        // Stopping a pipeline blocks (NVDEC's teardown included).
                        let _ = tokio::task::spawn_blocking(move || drop(d)).await;
                        info!(worker_id = %self.id, "idle: kept decoder closed");
                    }
                }
                let wait = Duration::from_millis(resp.retry_after_ms.clamp(20, 2000));
                if wait_or_shutdown(&mut shutdown, wait).await {
                    return Ok(());
                }
                continue;
            };
            idle_since = None;
            // Everything logged for this attempt (stage timings, commits, failures) also goes to
            // its task log, which the dashboard links.
            // A log bound for blob storage is written locally and uploaded when the task ends.
            let log_file = if lease.log_write_url.is_empty() {
                local_path(&lease.log_url).ok()
            } else {
                Some(scratch_dir(&lease.lease_id).with_extension("log"))
            };
            let log_path = log_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let span = if log_path.is_empty() {
                tracing::info_span!("lease", job_id = %resp.job_id, task = resp.task_index, lease_id = %lease.lease_id)
            } else {
                tracing::info_span!("lease", job_id = %resp.job_id, task = resp.task_index, lease_id = %lease.lease_id, log_path = %log_path)
            };
            crate::tasklog::join_job_trace(&span, &resp.job_id);
            let outcome = self
                .execute(
                    &mut client,
                    (&resp.job_id, resp.task_index),
                    task,
                    &lease,
                    hb_every,
                    &mut evicted,
                )
                .instrument(span.clone())
                .await;
            self.report(&mut client, &lease, outcome)
                .instrument(span)
                .await;
            if let (false, Some(file)) = (lease.log_write_url.is_empty(), log_file) {
                self.upload_log(&lease, file).await;
            }
        }
    }

    /// Uploads a task log to its signed URL (a failure loses only the log, never the task).
    async fn upload_log(&self, lease: &proto::Lease, file: PathBuf) {
        let url = lease.log_write_url.clone();
        let opts = TransferOptions::from(&self.cfg);
        let r = tokio::task::spawn_blocking(move || {
            let r = if file.exists() {
                sas::upload_file(&url, &file, &opts).map(|_| ())
            } else {
                Ok(())
            };
            let _ = std::fs::remove_file(&file);
            r
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(worker_id = %self.id, lease_id = %lease.lease_id, error = %e, "task log upload failed")
            }
            Err(e) => {
                warn!(worker_id = %self.id, lease_id = %lease.lease_id, error = %e, "task log upload panicked")
            }
        }
    }

    async fn execute(
        &self,
        client: &mut WorkerServiceClient<AuthChannel>,
        (job_id, task_index): (&str, u32),
        task: Task,
        lease: &proto::Lease,
        hb_every: Duration,
        evicted: &mut watch::Receiver<Option<String>>,
    ) -> Outcome {
        let (chunk_tx, mut chunk_rx) = tokio::sync::mpsc::unbounded_channel();
        let limit = match &task {
            Task::Segment(s) => s.end_frame,
            _ => u64::MAX,
        };
        // A streamed assembly asks for the chunks after those its lease listed.
        let mut chunks_from = match &task {
            Task::Assemble(a) if a.streamed => Some(a.segments.last().map_or(0, |c| c.end_frame)),
            _ => None,
        };
        let (news_tx, news_rx) = std::sync::mpsc::channel();
        let ctl = Arc::new(TaskCtl {
            progress: AtomicU64::new(0),
            cancel: AtomicBool::new(false),
            limit: AtomicU64::new(limit),
            chunks: chunk_tx,
            news: Mutex::new(Some(news_rx)),
        });
        let task_ctl = ctl.clone();
        let model = self.model.clone();
        let decoder = self.decoder.clone();
        let settings = EncoderSettings {
            crf: self.cfg.encoder.crf,
            preset: self.cfg.encoder.preset.clone(),
            threads: self.cfg.encoder.threads,
        };
        let lease_id = lease.lease_id.clone();
        let opts = TransferOptions::from(&self.cfg);
        let nvdec = nvdec(&self.cfg, self.device);
        let task_kind = kind(&task);
        let leased_at = Instant::now();
        info!(worker_id = %self.id, job_id, task_index, lease_id = %lease_id, kind = task_kind, "task leased");
        // The blocking work logs under the lease's span too (it is not inherited across threads).
        let span = tracing::Span::current();
        let work = tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                let out = run_task(
                    task, &model, &decoder, &settings, &lease_id, &task_ctl, &opts, nvdec,
                );
                // Chunks and outputs bound for blob storage were staged here.
                let _ = std::fs::remove_dir_all(scratch_dir(&lease_id));
                out
            })
        });
        tokio::pin!(work);
        let mut tick = tokio::time::interval(hb_every);
        tick.tick().await;
        let mut poll = tokio::time::interval(ASSEMBLY_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut released = false;
        let heartbeat = |chunks_from| proto::HeartbeatRequest {
            worker_id: self.id.clone(),
            lease_id: lease.lease_id.clone(),
            epoch: lease.epoch,
            frames_done: ctl.progress.load(Ordering::Relaxed),
            chunks_from,
        };
        loop {
            tokio::select! {
                r = &mut work => {
                    info!(worker_id = %self.id, job_id, task_index, kind = task_kind, ms = leased_at.elapsed().as_millis() as u64, "task ended");
                    // Chunks finished just before the task ended are still to commit.
                    while let Ok(c) = chunk_rx.try_recv() {
                        if !released {
                            self.commit_chunk(client, lease, c, &ctl).await;
                        }
                    }
                    if released {
                        return Outcome::Released;
                    }
                    return r.unwrap_or_else(|e| Outcome::Failed { error: format!("worker task panicked: {e}"), permanent: false });
                }
                Some(c) = chunk_rx.recv(), if !released => {
                    self.commit_chunk(client, lease, c, &ctl).await;
                }
                r = evicted.changed(), if !released => {
                    released = true;
                    let Some(notice) = r.ok().and_then(|_| evicted.borrow().clone()) else { continue };
                    // Stop the work and give the lease back at once; the task winds down meanwhile.
                    ctl.cancel.store(true, Ordering::Relaxed);
                    let req = proto::ReleaseRequest {
                        worker_id: self.id.clone(),
                        lease_id: lease.lease_id.clone(),
                        epoch: lease.epoch,
                        reason: notice.clone(),
                    };
                    match client.release(req).await {
                        Ok(_) => info!(worker_id = %self.id, job_id, task_index, %notice, "lease released"),
                        Err(e) => warn!(worker_id = %self.id, job_id, error = %e.message(), "release failed; the lease will expire"),
                    }
                }
                _ = poll.tick(), if chunks_from.is_some() && !released => {
                    match client.heartbeat(heartbeat(chunks_from)).await {
                        Ok(r) if !r.get_ref().keep_going => {
                            warn!(worker_id = %self.id, job_id, task_index, "lease lost; stopping the assembly");
                            ctl.cancel.store(true, Ordering::Relaxed);
                            chunks_from = None;
                        }
                        Ok(r) => {
                            let r = r.into_inner();
                            if let Some(last) = r.chunks.last() {
                                chunks_from = Some(last.end_frame);
                            }
                            if r.chunks_complete {
                                chunks_from = None;
                            }
                            if !r.chunks.is_empty() || r.chunks_complete {
                                // Gone only when the assembly ended (it reports why).
                                let _ = news_tx.send((r.chunks, r.chunks_complete));
                            }
                        }
                        // The regular heartbeat warns; this one retries at the next poll.
                        Err(e) => tracing::debug!(worker_id = %self.id, job_id, error = %e.message(), "asking for chunks failed"),
                    }
                }
                _ = tick.tick() => {
                    match client.heartbeat(heartbeat(None)).await {
                        Ok(r) if !r.get_ref().keep_going => {
                            warn!(worker_id = %self.id, job_id, task_index, "lease lost; stopping the task");
                            ctl.cancel.store(true, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            // Work stealing may have given the tail of this range to another worker.
                            if r.get_ref().end_frame > 0 {
                                ctl.limit.fetch_min(r.get_ref().end_frame, Ordering::Relaxed);
                            }
                        }
                        Err(e) => warn!(worker_id = %self.id, job_id, error = %e.message(), "heartbeat failed"),
                    }
                }
            }
        }
    }

    /// Commits one finished chunk; the reply may shorten the range or say the lease is gone.
    async fn commit_chunk(
        &self,
        client: &mut WorkerServiceClient<AuthChannel>,
        lease: &proto::Lease,
        c: ReadyChunk,
        ctl: &TaskCtl,
    ) {
        let req = proto::CompleteChunkRequest {
            worker_id: self.id.clone(),
            lease_id: lease.lease_id.clone(),
            epoch: lease.epoch,
            start_frame: c.start,
            end_frame: c.end,
            url: c.url.clone(),
        };
        for attempt in 0..5u32 {
            match client.complete_chunk(req.clone()).await {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.end_frame > 0 {
                        ctl.limit.fetch_min(r.end_frame, Ordering::Relaxed);
                    }
                    if !r.accepted && r.end_frame == 0 {
                        warn!(worker_id = %self.id, lease_id = %lease.lease_id, "result refused (stale lease); stopping the task");
                        ctl.cancel.store(true, Ordering::Relaxed);
                    } else if !r.accepted {
                        info!(worker_id = %self.id, lease_id = %lease.lease_id, start = c.start, "chunk past the shortened range; another worker has it");
                    }
                    return;
                }
                Err(e) => {
                    warn!(worker_id = %self.id, error = %e.message(), attempt, "committing a chunk failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }

    async fn report(
        &self,
        client: &mut WorkerServiceClient<AuthChannel>,
        lease: &proto::Lease,
        outcome: Outcome,
    ) {
        let began = Instant::now();
        for attempt in 0..5u32 {
            let r = match &outcome {
                Outcome::Released | Outcome::Committed => return,
                Outcome::Done(result) => client
                    .complete_task(proto::CompleteTaskRequest {
                        worker_id: self.id.clone(),
                        lease_id: lease.lease_id.clone(),
                        epoch: lease.epoch,
                        result: Some(result.clone()),
                    })
                    .await
                    .map(|r| {
                        if !r.get_ref().accepted {
                            warn!(worker_id = %self.id, lease_id = %lease.lease_id, "result refused (stale lease)");
                        }
                    }),
                Outcome::Failed { error, permanent } => {
                    // Errors may quote a signed URL: never pass its signature on.
                    let error = &sas::scrub(error);
                    warn!(worker_id = %self.id, lease_id = %lease.lease_id, %error, permanent, "task failed");
                    client
                        .fail_task(proto::FailTaskRequest {
                            worker_id: self.id.clone(),
                            lease_id: lease.lease_id.clone(),
                            epoch: lease.epoch,
                            error: error.clone(),
                            permanent: *permanent,
                        })
                        .await
                        .map(|_| ())
                }
            };
            match r {
                Ok(()) => {
                    tracing::debug!(worker_id = %self.id, lease_id = %lease.lease_id, ms = began.elapsed().as_millis() as u64, "result reported");
                    return;
                }
                Err(e) => {
                    warn!(worker_id = %self.id, error = %e.message(), attempt, "reporting failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }
}

fn kind(t: &Task) -> &'static str {
    match t {
        Task::Probe(_) => "probe",
        Task::Segment(_) => "segment",
        Task::Assemble(_) => "assemble",
    }
}

/// What the lease loop shares with a task running on a blocking thread.
struct TaskCtl {
    progress: AtomicU64,
    cancel: AtomicBool,
    /// Where a Segment lease's range now ends (heartbeat and chunk replies lower it).
    limit: AtomicU64,
    chunks: tokio::sync::mpsc::UnboundedSender<ReadyChunk>,
    /// A streamed assembly's newly committed chunks, and whether they are the last (taken by
    /// the assembly).
    news: Mutex<Option<std::sync::mpsc::Receiver<ChunkNews>>>,
}

/// Chunks committed since the last news, and whether every chunk is now known.
type ChunkNews = (Vec<proto::SegmentOutput>, bool);

/// A chunk stored where the coordinator can find it, ready to commit.
struct ReadyChunk {
    start: u64,
    end: u64,
    url: String,
}

/// Where a lease stages what it uploads to blob storage (removed when the task ends).
fn scratch_dir(lease_id: &str) -> PathBuf {
    std::env::temp_dir().join(format!("framewise-{lease_id}"))
}

/// The local path of a file URL, or a signed blob URL as is (read over HTTP by GStreamer).
fn input_path(url: &str) -> Result<PathBuf, UrlError> {
    if is_http(url) {
        Ok(PathBuf::from(url))
    } else {
        local_path(url)
    }
}

/// Uploads finished chunks to their signed URLs in order and hands them on for commit; the
/// first failure stops the task (its error is returned by `run_task`).
fn upload_chunks(
    rx: std::sync::mpsc::Receiver<ChunkDone>,
    targets: &std::collections::HashMap<u64, String>,
    output_url: &str,
    opts: &TransferOptions,
    ctl: &TaskCtl,
) -> Option<String> {
    let mut error = None;
    for c in rx {
        if error.is_none() {
            let r = match targets.get(&c.start) {
                Some(url) => sas::upload_file(url, &c.path, opts).map_err(|e| e.to_string()),
                None => Err(format!(
                    "the lease has no signed URL for the chunk at frame {}",
                    c.start
                )),
            };
            match r {
                Ok(bytes) => {
                    info!(start = c.start, end = c.end, bytes, "chunk uploaded");
                    let _ = ctl.chunks.send(ReadyChunk {
                        start: c.start,
                        end: c.end,
                        url: join(output_url, &chunk_name(c.start)),
                    });
                }
                Err(e) => {
                    ctl.cancel.store(true, Ordering::Relaxed);
                    error = Some(e);
                }
            }
        }
        let _ = std::fs::remove_file(&c.path);
    }
    error
}

#[allow(clippy::too_many_arguments)]
fn run_task(
    task: Task,
    model: &Mutex<Stylizer>,
    decoder: &Mutex<Option<OpenDecoder>>,
    settings: &EncoderSettings,
    lease_id: &str,
    ctl: &TaskCtl,
    opts: &TransferOptions,
    nvdec: Option<u32>,
) -> Outcome {
    let (progress, cancel) = (&ctl.progress, &ctl.cancel);
    use proto::complete_task_request::Result as R;
    let url_err = |e: framewise_common::storage::UrlError| Outcome::Failed {
        error: e.to_string(),
        permanent: true,
    };
    match task {
        Task::Probe(p) => {
            let path = match input_path(&p.input_url) {
                Ok(p) => p,
                Err(e) => return url_err(e),
            };
            match probe(&path, PROBE_TIMEOUT) {
                Ok(pr) => Outcome::Done(R::Probe(to_media_info(&pr))),
                Err(e) => media_failure(e),
            }
        }
        Task::Segment(s) => {
            // With blob storage, chunks are staged locally and uploaded to the lease's signed URLs.
            let remote = !s.chunk_targets.is_empty();
            let output = if remote {
                Ok(scratch_dir(lease_id))
            } else {
                local_path(&s.output_url)
            };
            let (input, output) = match (input_path(&s.input_url), output) {
                (Ok(i), Ok(o)) => (i, o),
                (Err(e), _) | (_, Err(e)) => return url_err(e),
            };
            let targets: std::collections::HashMap<u64, String> = s
                .chunk_targets
                .iter()
                .map(|t| (t.start_frame, t.write_url.clone()))
                .collect();
            let media = s.media.unwrap_or_default();
            let params = s.params.unwrap_or_default();
            let settings = if params.crf > 0 {
                EncoderSettings {
                    crf: params.crf,
                    ..settings.clone()
                }
            } else {
                settings.clone()
            };
            let spec = SegmentSpec {
                input: &input,
                output_dir: &output,
                start_frame: s.start_frame,
                frame_pts: &s.frame_pts,
                seek_ns: s.seek_ns,
                chunk_frames: s.chunk_frames,
                size: (media.width, media.height),
                fps: (media.fps_num, media.fps_den),
                frame_duration_ns: frame_duration_ns(
                    media.fps_num,
                    media.fps_den,
                    &media.frame_pts,
                ),
                max_size: params.max_size,
                style: &params.style_weights,
                encoder: &settings,
                nvdec,
            };
            let (up_tx, up_rx) = std::sync::mpsc::channel::<ChunkDone>();
            let (result, upload_error) = std::thread::scope(|sc| {
                let uploader = remote
                    .then(|| sc.spawn(|| upload_chunks(up_rx, &targets, &s.output_url, opts, ctl)));
                let result = {
                    let on_chunk = move |c: ChunkDone| {
                        if remote {
                            let _ = up_tx.send(c);
                        } else {
                            let _ = ctl.chunks.send(ReadyChunk {
                                start: c.start,
                                end: c.end,
                                url: file_url(&c.path),
                            });
                        }
                    };
                    let seg_ctl = SegmentControl {
                        progress,
                        cancel,
                        limit: &ctl.limit,
                        on_chunk: &on_chunk,
                        decoder: Some(decoder),
                    };
                    let mut m = model.lock().unwrap_or_else(|p| p.into_inner());
                    run_segment(&spec, &mut m, &seg_ctl)
                    // on_chunk (and with it the uploader's sender) is dropped here.
                };
                let upload_error = uploader.and_then(|h| h.join().ok().flatten());
                (result, upload_error)
            });
            if let Some(e) = upload_error {
                return Outcome::Failed {
                    error: format!("uploading a chunk: {e}"),
                    permanent: false,
                };
            }
            match result {
                // Every chunk was committed as it finished.
                Ok(_) => Outcome::Committed,
                Err(e) => {
                    let permanent = match &e {
                        SegmentError::Media(m) => m.is_permanent(),
                        _ => false,
                    };
                    Outcome::Failed {
                        error: e.to_string(),
                        permanent,
                    }
                }
            }
        }
        Task::Assemble(a) => {
            let news = ctl.news.lock().unwrap_or_else(|p| p.into_inner()).take();
            run_assemble(a, lease_id, cancel, news, opts)
        }
    }
}

fn run_assemble(
    mut a: proto::AssembleTask,
    lease_id: &str,
    cancel: &AtomicBool,
    news: Option<std::sync::mpsc::Receiver<ChunkNews>>,
    opts: &TransferOptions,
) -> Outcome {
    use proto::complete_task_request::Result as R;
    let media = a.media.take().unwrap_or_default();
    // With blob storage the output is assembled and verified here, then uploaded in one step.
    let remote_out = !a.output_write_url.is_empty();
    let output = if remote_out {
        let name = a.output_url.rsplit('/').next().unwrap_or("output.mp4");
        Ok(scratch_dir(lease_id).join(name))
    } else {
        local_path(&a.output_url)
    };
    let (input, output) = match (input_path(&a.input_url), output) {
        (Ok(i), Ok(o)) => (i, o),
        (Err(e), _) | (_, Err(e)) => {
            return Outcome::Failed {
                error: e.to_string(),
                permanent: true,
            }
        }
    };
    let mut feed = ChunkFeed {
        first: Some(std::mem::take(&mut a.segments)),
        news: news.filter(|_| a.streamed),
        media: &media,
        cancel,
        output: &output,
        given: Vec::new(),
        complete: !a.streamed,
        last_news: None,
    };
    if remote_out {
        if let Err(e) = std::fs::create_dir_all(scratch_dir(lease_id)) {
            return Outcome::Failed {
                error: format!("{}: {e}", scratch_dir(lease_id).display()),
                permanent: false,
            };
        }
    }
    let tmp = partial_path(&output, lease_id);
    let began = std::time::Instant::now();
    let assembled = assemble_fed(
        &input,
        &mut feed,
        media.audio_streams,
        &tmp,
        ASSEMBLE_TIMEOUT,
    );
    let segs = feed.given;
    // A streamed assembly waited for the segments; the job waits for what follows the last one.
    let ended = feed.last_news.unwrap_or(began);
    let result = assembled.and_then(|frames| {
        let stitched = ended.elapsed();
        // Verify before the output becomes visible: every frame and every audio stream is there
        // (the index of the file just written, whose boxes must tile it exactly to its end).
        let check = read_index(&tmp)?;
        // Where an assembly's time goes (the job waits for all of it).
        info!(
            frames,
            files = segs.len(),
            streamed = a.streamed,
            stitch_ms = stitched.as_millis() as u64,
            check_ms = (ended.elapsed() - stitched).as_millis() as u64,
            "output assembled"
        );
        if check.video_tracks != 1
            || check.video_samples != media.frame_count
            || frames != media.frame_count
        {
            return Err(MediaError::Corrupt {
                path: tmp.clone(),
                detail: format!(
                    "assembled {} frames in {} video tracks, the source has {} in one",
                    check.video_samples, check.video_tracks, media.frame_count
                ),
            });
        }
        if check.audio_tracks != media.audio_streams {
            return Err(MediaError::Corrupt {
                path: tmp.clone(),
                detail: format!(
                    "assembled {} audio streams, the source has {}",
                    check.audio_tracks, media.audio_streams
                ),
            });
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(MediaError::Write {
                path: output.clone(),
                detail: "cancelled before the output was published".into(),
            });
        }
        if remote_out {
            // Blocks, then one block list: the blob appears whole or not at all.
            let bytes = sas::upload_file(&a.output_write_url, &tmp, opts).map_err(|e| {
                MediaError::Upload {
                    url: a.output_url.clone(),
                    detail: e.to_string(),
                    refused: e.is_refusal(),
                }
            })?;
            info!(output = %a.output_url, bytes, "output uploaded");
            let _ = std::fs::remove_file(&tmp);
            return Ok(check);
        }
        let began = Instant::now();
        // An output replaced at its name is freed when its last handle closes: held open here
        // and closed on another thread, freeing a large file's blocks (tens of ms) does not
        // delay the job's end.
        let replaced = std::fs::File::open(&output).ok();
        std::fs::rename(&tmp, &output).map_err(|e| MediaError::Write {
            path: output.clone(),
            detail: e.to_string(),
        })?;
        if let Some(f) = replaced {
            std::thread::spawn(move || drop(f));
        }
        info!(output = %output.display(), publish_ms = began.elapsed().as_millis() as u64, "output published");
        Ok(check)
    });
    match result {
        Ok(check) => Outcome::Done(R::Assemble(proto::AssembleResult {
            output_url: a.output_url,
            frames: check.video_samples,
            duration_ns: check.video_duration_ns,
        })),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            // A bad segment is the coordinator's to redo; a bad source or output location is permanent.
            let permanent = matches!(e, MediaError::Write { .. })
                || (e.is_permanent() && !is_segment_error(&e, &segs));
            Outcome::Failed {
                error: e.to_string(),
                permanent,
            }
        }
    }
}

/// The committed chunks an assembly stitches: those its lease listed, then (streamed) those the
/// lease loop hears of while the job's other segments are still being stylized.
struct ChunkFeed<'a> {
    first: Option<Vec<proto::SegmentOutput>>,
    news: Option<std::sync::mpsc::Receiver<ChunkNews>>,
    media: &'a proto::MediaInfo,
    cancel: &'a AtomicBool,
    output: &'a Path,
    /// Every file given so far (a failure naming one of them is the chunk's, not the input's).
    given: Vec<SegmentFile>,
    /// Every chunk is known.
    complete: bool,
    /// When the news that every chunk is known arrived.
    last_news: Option<Instant>,
}

impl ChunkFeed<'_> {
    /// Where chunk `s` is read and where its frames sit on the source's playback timeline.
    fn file(&self, s: &proto::SegmentOutput) -> Result<SegmentFile, MediaError> {
        let bad = |detail: String| MediaError::Corrupt {
            path: self.output.into(),
            detail,
        };
        let path = input_path(&s.url).map_err(|e| bad(e.to_string()))?;
        let offset = self
            .media
            .frame_pts
            .get(s.start_frame as usize)
            .ok_or_else(|| bad(format!("segment start {} outside the video", s.start_frame)))?;
        // Frames go onto the source's playback timeline, where its audio also sits.
        let offset_ns = (*offset as i64 + self.media.running_offset_ns).max(0) as u64;
        Ok(SegmentFile {
            path,
            offset_ns,
            frames: s.end_frame.saturating_sub(s.start_frame),
        })
    }

    fn files(&mut self, chunks: &[proto::SegmentOutput]) -> Result<Vec<SegmentFile>, MediaError> {
        let files = chunks
            .iter()
            .map(|c| self.file(c))
            .collect::<Result<Vec<_>, _>>()?;
        self.given.extend(files.iter().cloned());
        Ok(files)
    }
}

impl SegmentFeed for ChunkFeed<'_> {
    fn next_files(&mut self, wait: bool) -> Result<Option<Vec<SegmentFile>>, MediaError> {
        if let Some(first) = self.first.take() {
            return self.files(&first).map(Some);
        }
        loop {
            if self.complete {
                return Ok(None);
            }
            if self.cancel.load(Ordering::Relaxed) {
                return Err(MediaError::Pipeline {
                    path: self.output.into(),
                    what: "waiting for committed chunks",
                    detail: "the lease ended (cancelled, lost or released)".into(),
                });
            }
            let Some(rx) = self.news.as_ref() else {
                return Ok(None);
            };
            let got = if wait {
                rx.recv_timeout(Duration::from_millis(100))
            } else {
                rx.try_recv().map_err(|e| match e {
                    std::sync::mpsc::TryRecvError::Empty => {
                        std::sync::mpsc::RecvTimeoutError::Timeout
                    }
                    std::sync::mpsc::TryRecvError::Disconnected => {
                        std::sync::mpsc::RecvTimeoutError::Disconnected
                    }
                })
            };
            match got {
                Ok((chunks, complete)) => {
                    if complete {
                        self.complete = true;
                        self.last_news = Some(Instant::now());
                    }
                    return self.files(&chunks).map(Some);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !wait => {
                    return Ok(Some(vec![]))
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(MediaError::Pipeline {
                        path: self.output.into(),
                        what: "waiting for committed chunks",
                        detail: "the lease loop stopped".into(),
                    })
                }
            }
        }
    }
}

fn is_segment_error(e: &MediaError, segs: &[SegmentFile]) -> bool {
    let p = match e {
        MediaError::NotFound(p) | MediaError::Empty(p) => p,
        MediaError::Corrupt { path, .. } | MediaError::NotMedia { path, .. } => path,
        _ => return false,
    };
    segs.iter().any(|s| &s.path == p)
}

/// The hidden temporary name the output is written under until it is complete and verified.
pub fn partial_path(output: &Path, lease_id: &str) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "output".into());
    output.with_file_name(format!(".{name}.{lease_id}.partial"))
}

fn media_failure(e: MediaError) -> Outcome {
    Outcome::Failed {
        permanent: e.is_permanent(),
        error: e.to_string(),
    }
}

/// The wire form of a probe result.
pub fn to_media_info(p: &Probe) -> proto::MediaInfo {
    proto::MediaInfo {
        width: p.width,
        height: p.height,
        fps_num: p.fps_num,
        fps_den: p.fps_den,
        frame_count: p.frame_pts.len() as u64,
        duration_ns: p.duration_ns,
        video_codec: p.video_codec.clone(),
        audio_streams: p.audio_streams,
        frame_pts: p.frame_pts.clone(),
        keyframes: p.keyframes.clone(),
        container: p.container.clone(),
        running_offset_ns: p.running_offset_ns,
    }
}

async fn wait_or_shutdown(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        r = shutdown.changed() => r.is_err() || *shutdown.borrow(),
    }
}

/// This machine's name, for worker ids and the dashboard.
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}
