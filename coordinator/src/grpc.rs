//! Thin tonic handlers: validate the request, send a message to the
//! JobManager actor, convert the reply.

use crate::auth::{require, Identity, Role, Tokens};
use crate::convert::{completion_from, grant_to, job_to, params_from, segment_outputs, Signer};
use crate::manager::{self, CoordError, JobManager, WorkerInfo};
use actix::{Addr, MailboxError};
use framewise_common::proto as pb;
use framewise_common::storage::{Location, Store};
use tonic::{Request, Response, Status};

/// Serves JobService and WorkerService from one actor address.
#[derive(Clone)]
pub struct Services {
    pub manager: Addr<JobManager>,
    pub metrics: crate::metrics::Metrics,
    /// From `coordinator.limits`: inputs larger than this are refused at submit.
    pub max_input_bytes: u64,
    pub lease_ttl_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Storage credentials: sign workers' URLs, check inputs at submit.
    pub blobs: Store,
    /// How long a lease's signed URLs stay valid.
    pub sas_valid: std::time::Duration,
    /// Who may call what (open when no tokens file is configured).
    pub tokens: Tokens,
    /// The work and logs locations: their containers are made sure of at submit (once each).
    pub work_containers: Vec<String>,
    /// Submits per minute per owner (`coordinator.limits.submits_per_minute`).
    pub submit_rate: std::sync::Arc<crate::ratelimit::RateLimiter>,
}

const READERS: &[Role] = &[Role::Admin, Role::Viewer, Role::Submitter];
const SUBMITTERS: &[Role] = &[Role::Admin, Role::Submitter];

impl Services {
    /// The job, if `allowed` says this caller may have it (else PermissionDenied).
    async fn job_for(
        &self,
        who: &Identity,
        id: &str,
        allowed: fn(&Identity, &str) -> bool,
    ) -> Result<manager::JobView, Status> {
        let v = self
            .manager
            .send(manager::GetJob(id.to_string()))
            .await
            .map_err(mailbox)?
            .map_err(status)?;
        if !allowed(who, &v.job.owner) {
            return Err(not_yours(who, id));
        }
        Ok(v)
    }
}

/// A job the caller may not see or touch: named, without revealing anything about it.
fn not_yours(who: &Identity, job: &str) -> Status {
    Status::permission_denied(format!(
        "job {job} belongs to another submitter than {}",
        who.name
    ))
}

fn status(e: CoordError) -> Status {
    match e {
        CoordError::NotFound(_) => Status::not_found(e.to_string()),
        CoordError::Invalid(_) => Status::invalid_argument(e.to_string()),
        CoordError::Exhausted(_) => Status::resource_exhausted(e.to_string()),
        CoordError::Store(_) => Status::unavailable(e.to_string()),
    }
}

fn mailbox(e: MailboxError) -> Status {
    Status::unavailable(format!("coordinator is shutting down ({e})"))
}

/// Checks a job spec, naming the field at fault; `input_size` is the input's size if known.
/// Blob URLs come back in their canonical `az://` form.
pub fn validate_spec(
    spec: &mut pb::JobSpec,
    blobs: &Store,
    max_input_bytes: u64,
) -> Result<(), String> {
    let input = blobs
        .locate(&spec.input_url)
        .map_err(|e| format!("spec.input_url: {e}"))?;
    let output = blobs
        .locate(&spec.output_url)
        .map_err(|e| format!("spec.output_url: {e}"))?;
    if input == output {
        return Err("spec.output_url: must differ from the input".into());
    }
    // The workers will need URLs signed for both: a location without usable credentials is
    // refused now, naming the account, not after the probe.
    for (field, loc) in [("spec.input_url", &input), ("spec.output_url", &output)] {
        blobs
            .check_signable(loc)
            .map_err(|e| format!("{field}: {e}"))?;
    }
    // A missing file is reported by the probe, with the job; a huge one is refused right here.
    if let Location::File(path) = &input {
        if let Ok(m) = std::fs::metadata(path) {
            check_size(&spec.input_url, m.len(), max_input_bytes)?;
        }
    }
    spec.input_url = input.url();
    spec.output_url = output.url();
    validate_params(spec)
}

/// Refuses an input over `coordinator.limits.max_input_bytes`.
pub fn check_size(url: &str, size: u64, max_input_bytes: u64) -> Result<(), String> {
    if size > max_input_bytes {
        return Err(format!(
            "spec.input_url: {url} is {size} bytes; coordinator.limits.max_input_bytes is {max_input_bytes}"
        ));
    }
    Ok(())
}

fn validate_params(spec: &pb::JobSpec) -> Result<(), String> {
    let p = spec.params.clone().unwrap_or_default();
    if !p.style_weights.is_empty() {
        if p.style_weights.iter().any(|w| !w.is_finite() || *w < 0.0)
            || p.style_weights.iter().sum::<f32>() <= 0.0
        {
            return Err("params.style_weights: must be non-negative and not all zero".into());
        }
        if p.style_weights.len() > 4096 {
            return Err(format!(
                "params.style_weights: at most 4096 values, got {}",
                p.style_weights.len()
            ));
        }
    }
    if !p.segment_seconds.is_finite() || p.segment_seconds < 0.0 {
        return Err(format!(
            "params.segment_seconds: must be >= 0, got {}",
            p.segment_seconds
        ));
    }
    if p.max_size != 0 && p.max_size < 16 {
        return Err(format!(
            "params.max_size: must be 0 (off) or at least 16, got {}",
            p.max_size
        ));
    }
    if p.crf > 51 {
        return Err(format!("params.crf: must be 0 to 51, got {}", p.crf));
    }
    Ok(())
}

/// How often WatchJob looks for changes.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

#[tonic::async_trait]
impl pb::job_service_server::JobService for Services {
    type WatchJobStream = tokio_stream::wrappers::ReceiverStream<Result<pb::Job, Status>>;

    async fn watch_job(
        &self,
        req: Request<pb::GetJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let who = require(&self.tokens, &req, READERS)?;
        let id = req.into_inner().job_id;
        // Fail fast for an unknown job, before the stream starts.
        let first = self.job_for(&who, &id, Identity::may_see).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let addr = self.manager.clone();
        tokio::spawn(async move {
            let mut last: Option<(i32, u64, u32)> = None;
            let mut view = Ok(first);
            loop {
                let job = match view {
                    Ok(v) => job_to(&v),
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let key = (job.state, job.frames_done, job.segments_done);
                let done = job.finished_unix_ms > 0;
                if last != Some(key) {
                    last = Some(key);
                    if tx.send(Ok(job)).await.is_err() {
                        return; // the client went away
                    }
                }
                if done {
                    return;
                }
                tokio::time::sleep(WATCH_EVERY).await;
                view = match addr.send(manager::GetJob(id.clone())).await {
                    Ok(r) => r.map_err(status),
                    Err(e) => Err(mailbox(e)),
                };
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let who = require(&self.tokens, &req, SUBMITTERS)?;
        let r = req.into_inner();
        if let Err(wait) = self
            .submit_rate
            .take(who.owner(), std::time::Instant::now())
        {
            return Err(Status::resource_exhausted(format!(
                "{}: more than {} submits a minute (coordinator.limits.submits_per_minute); retry in {wait:.0} s",
                if who.name.is_empty() { "this coordinator" } else { &who.name },
                self.submit_rate.per_minute()
            )));
        }
        let mut spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: missing"))?;
        validate_spec(&mut spec, &self.blobs, self.max_input_bytes)
            .map_err(Status::invalid_argument)?;
        // The output's container (and the work and logs containers, if the start could not
        // reach storage) are created if missing; each is checked once per process.
        if let Err(e) = self.blobs.ensure_container(&spec.output_url).await {
            return Err(if e.is_permanent() {
                Status::invalid_argument(format!("spec.output_url: {e}"))
            } else {
                Status::unavailable(format!("spec.output_url: {e}"))
            });
        }
        for url in &self.work_containers {
            self.blobs
                .ensure_container(url)
                .await
                .map_err(|e| Status::unavailable(format!("work storage: {e}")))?;
        }
        if self
            .blobs
            .locate(&spec.input_url)
            .is_ok_and(|l| l.is_remote())
        {
            // A blob's size is one request away; a missing blob is left to the probe, like a file.
            match self.blobs.size(&spec.input_url).await {
                Ok(Some(n)) => check_size(&spec.input_url, n, self.max_input_bytes)
                    .map_err(Status::invalid_argument)?,
                Ok(None) => {}
                Err(e) if e.is_permanent() => {
                    return Err(Status::invalid_argument(format!("spec.input_url: {e}")))
                }
                Err(e) => return Err(Status::unavailable(format!("spec.input_url: {e}"))),
            }
        }
        if r.idempotency_key.len() > 256 {
            return Err(Status::invalid_argument(
                "idempotency_key: at most 256 bytes",
            ));
        }
        let (job_id, existing) = manager::ask(
            &self.manager,
            manager::Submit {
                input_url: spec.input_url,
                output_url: spec.output_url,
                params: params_from(spec.params),
                idempotency_key: r.idempotency_key,
                owner: who.owner().to_string(),
            },
        )
        .await
        .map_err(mailbox)?
        .map_err(status)?;
        Ok(Response::new(pb::SubmitJobResponse { job_id, existing }))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let who = require(&self.tokens, &req, READERS)?;
        let id = req.into_inner().job_id;
        let v = self.job_for(&who, &id, Identity::may_see).await?;
        Ok(Response::new(job_to(&v)))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let who = require(&self.tokens, &req, READERS)?;
        let all = self
            .manager
            .send(manager::ListJobs)
            .await
            .map_err(mailbox)?;
        Ok(Response::new(pb::ListJobsResponse {
            // A listing carries no task tables: GetJob has them, and thousands of
            // jobs with their tasks would not fit a gRPC message.
            jobs: all
                .iter()
                .filter(|v| who.may_see(&v.job.owner))
                .map(|v| pb::Job {
                    tasks: Vec::new(),
                    ..job_to(v)
                })
                .collect(),
        }))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = require(&self.tokens, &req, SUBMITTERS)?;
        let id = req.into_inner().job_id;
        self.job_for(&who, &id, Identity::may_cancel).await?;
        let v = manager::ask(&self.manager, manager::Cancel(id))
            .await
            .map_err(mailbox)?
            .map_err(status)?;
        Ok(Response::new(job_to(&v)))
    }
}

fn need_worker(id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 256 {
        return Err(Status::invalid_argument(
            "worker_id: must be 1 to 256 bytes",
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for Services {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = req.into_inner();
        need_worker(&r.worker_id)?;
        let info = WorkerInfo {
            hostname: r.hostname,
            gpu: r.gpu,
            threads: r.cpu_threads,
            last_seen_ms: manager::now_ms(),
            model_fps: if r.model_fps.is_finite() && r.model_fps > 0.0 {
                r.model_fps
            } else {
                0.0
            },
        };
        self.manager
            .send(manager::Register {
                worker_id: r.worker_id,
                info,
            })
            .await
            .map_err(mailbox)?;
        Ok(Response::new(pb::RegisterResponse {
            heartbeat_interval_ms: self.heartbeat_interval_ms,
        }))
    }

    async fn lease_task(
        &self,
        req: Request<pb::LeaseTaskRequest>,
    ) -> Result<Response<pb::LeaseTaskResponse>, Status> {
        let r = req.into_inner();
        need_worker(&r.worker_id)?;
        let timer = self.metrics.lease_latency.start_timer();
        let grant = manager::ask(
            &self.manager,
            manager::LeaseTask {
                worker_id: r.worker_id,
                media_only: r.media_only,
                queued: std::time::Instant::now(),
            },
        )
        .await
        .map_err(mailbox)?
        .map_err(status)?;
        timer.observe_duration();
        Ok(Response::new(match grant.grant {
            Some(g) => {
                let signer = Signer {
                    blobs: &self.blobs,
                    valid_for: self.sas_valid,
                };
                grant_to(g, self.lease_ttl_ms, &signer).map_err(|e| {
                    tracing::error!(error = %e, "cannot sign the lease's storage URLs; it will expire");
                    Status::internal(format!("signing the lease's storage URLs: {e}"))
                })?
            }
            None => pb::LeaseTaskResponse {
                retry_after_ms: grant.retry_after_ms,
                ..Default::default()
            },
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let reply = self
            .manager
            .send(manager::Heartbeat {
                worker_id: r.worker_id,
                lease_id: r.lease_id,
                epoch: r.epoch,
                frames_done: r.frames_done,
                chunks_from: r.chunks_from,
            })
            .await
            .map_err(mailbox)?;
        let (chunks, chunks_complete) = match reply.chunks {
            Some(news) => {
                let signer = Signer {
                    blobs: &self.blobs,
                    valid_for: self.sas_valid,
                };
                let chunks = segment_outputs(news.chunks, &signer).map_err(|e| {
                    tracing::error!(error = %e, "cannot sign an assembly's chunk URLs");
                    Status::internal(format!("signing the assembly's chunk URLs: {e}"))
                })?;
                (chunks, news.complete)
            }
            None => (Vec::new(), false),
        };
        Ok(Response::new(pb::HeartbeatResponse {
            keep_going: reply.keep_going,
            end_frame: reply.end_frame,
            chunks,
            chunks_complete,
        }))
    }

    async fn complete_chunk(
        &self,
        req: Request<pb::CompleteChunkRequest>,
    ) -> Result<Response<pb::CompleteChunkResponse>, Status> {
        let r = req.into_inner();
        if r.url.len() > 4096 {
            return Err(Status::invalid_argument("url: at most 4096 bytes"));
        }
        let (accepted, end_frame) = manager::ask(
            &self.manager,
            manager::CommitChunk {
                worker_id: r.worker_id,
                lease_id: r.lease_id,
                epoch: r.epoch,
                start: r.start_frame,
                end: r.end_frame,
                url: r.url,
            },
        )
        .await
        .map_err(mailbox)?
        .map_err(status)?;
        Ok(Response::new(pb::CompleteChunkResponse {
            accepted,
            end_frame,
        }))
    }

    async fn complete_task(
        &self,
        req: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        let r = req.into_inner();
        let result = r
            .result
            .ok_or_else(|| Status::invalid_argument("result: missing"))?;
        let accepted = manager::ask(
            &self.manager,
            manager::Complete {
                lease_id: r.lease_id,
                epoch: r.epoch,
                result: completion_from(result),
            },
        )
        .await
        .map_err(mailbox)?
        .map_err(status)?;
        Ok(Response::new(pb::CompleteTaskResponse { accepted }))
    }

    async fn fail_task(
        &self,
        req: Request<pb::FailTaskRequest>,
    ) -> Result<Response<pb::FailTaskResponse>, Status> {
        let r = req.into_inner();
        let error: String = r.error.chars().take(4000).collect();
        manager::ask(
            &self.manager,
            manager::Fail {
                lease_id: r.lease_id,
                epoch: r.epoch,
                error,
                permanent: r.permanent,
            },
        )
        .await
        .map_err(mailbox)?
        .map_err(status)?;
        Ok(Response::new(pb::FailTaskResponse {}))
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let r = req.into_inner();
        let reason: String = r.reason.chars().take(500).collect();
        let released = manager::ask(
            &self.manager,
            manager::Release {
                worker_id: r.worker_id,
                lease_id: r.lease_id,
                epoch: r.epoch,
                reason,
            },
        )
        .await
        .map_err(mailbox)?
        .map_err(status)?;
        Ok(Response::new(pb::ReleaseResponse { released }))
    }
}
