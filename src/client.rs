//! User commands against a coordinator's JobService: submit, status, and
//! following a job with a progress bar (also used by the embedded `run`).

use crate::cli::{StyleArgs, SubmitArgs};
use anyhow::{anyhow, bail, Context, Result};
use framewise_common::bearer::{AuthChannel, Bearer, ClientTls};
use framewise_common::proto::{self as pb, job_service_client::JobServiceClient};
use framewise_common::style;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Style weights from --style / --style-mix (style 0 when neither is given).
pub fn style_weights(a: &StyleArgs, count: usize) -> Result<Vec<f32>> {
    if count == 0 {
        if a.style.is_some() || a.style_mix.is_some() {
            bail!("the configured model has no style input (worker.model.style_input is empty)");
        }
        return Ok(Vec::new());
    }
    Ok(match (&a.style, &a.style_mix) {
        (Some(i), _) => style::single(*i, count).context("--style")?,
        (None, Some(m)) => style::mix(m, count).context("--style-mix")?,
        (None, None) => style::single(0, count)?,
    })
}

/// How the CLI proves who it is and whom it trusts.
pub struct Auth {
    pub token: Option<String>,
    pub tls: ClientTls,
}

impl Auth {
    pub fn new(token: Option<String>, ca_file: Option<std::path::PathBuf>) -> Auth {
        Auth {
            token,
            tls: ClientTls {
                ca_file,
                identity: None,
            },
        }
    }
}

pub fn connect_blocking(
    rt: &tokio::runtime::Runtime,
    url: &str,
    auth: &Auth,
) -> Result<JobServiceClient<AuthChannel>> {
    let bearer = Bearer::new(auth.token.as_deref()).map_err(|e| anyhow!("--token: {e}"))?;
    let ch = rt
        .block_on(framewise_common::bearer::connect_tls(
            url, bearer, &auth.tls,
        ))
        .map_err(|e| anyhow!("coordinator {e}"))?;
    Ok(JobServiceClient::new(ch)
        .max_decoding_message_size(framewise_common::CLIENT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(framewise_common::CLIENT_MAX_MESSAGE_BYTES))
}

fn state_name(s: i32) -> &'static str {
    match pb::JobState::try_from(s).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Unspecified => "unknown",
        pb::JobState::Queued => "queued",
        pb::JobState::Probing => "probing",
        pb::JobState::Running => "running",
        pb::JobState::Assembling => "assembling",
        pb::JobState::Succeeded => "succeeded",
        pb::JobState::Failed => "failed",
        pb::JobState::Cancelled => "cancelled",
    }
}

pub fn is_terminal(s: i32) -> bool {
    matches!(
        pb::JobState::try_from(s).unwrap_or(pb::JobState::Unspecified),
        pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled
    )
}

/// Polls a job until it ends, drawing frames done, frames/s and ETA.
pub async fn follow(
    client: &mut JobServiceClient<AuthChannel>,
    job_id: &str,
    show_bar: bool,
) -> Result<pb::Job> {
    let bar = ProgressBar::with_draw_target(
        Some(0),
        if show_bar {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:<10} [{bar:30}] {pos}/{len} frames  {per_sec}  ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    // WatchJob streams every change; if the coordinator goes away (a restart), watch again.
    let mut failures = 0u32;
    loop {
        let err = match client
            .watch_job(pb::GetJobRequest {
                job_id: job_id.to_string(),
            })
            .await
        {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(job)) => {
                            failures = 0;
                            if job.frames_total > 0 {
                                bar.set_length(job.frames_total);
                            }
                            bar.set_position(job.frames_done);
                            bar.set_message(state_name(job.state));
                            if is_terminal(job.state) {
                                bar.finish_and_clear();
                                return Ok(job);
                            }
                        }
                        Ok(None) => break "the stream ended early".to_string(),
                        Err(e) => break e.message().to_string(),
                    }
                }
            }
            Err(e) if e.code() == tonic::Code::NotFound => bail!("job {job_id} not found"),
            Err(e) => e.message().to_string(),
        };
        failures += 1;
        if failures > 40 {
            bar.abandon();
            bail!("lost the coordinator while following job {job_id}: {err}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn submit(a: SubmitArgs) -> Result<ExitCode> {
    let weights = style_weights(&a.style, a.style_count)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let auth = Auth::new(a.token.clone(), a.ca_file.clone());
    let mut client = connect_blocking(&rt, &a.coordinator, &auth)?;
    let spec = pb::JobSpec {
        input_url: a.input.clone(),
        output_url: a.out.clone(),
        params: Some(pb::JobParams {
            style_weights: weights,
            segment_seconds: a.segment_seconds,
            max_size: a.max_size,
            crf: 0,
        }),
    };
    let started = Instant::now();
    let resp = rt
        .block_on(client.submit_job(pb::SubmitJobRequest {
            spec: Some(spec),
            idempotency_key: a.idempotency_key.clone(),
        }))
        .map_err(|e| anyhow!("submit refused: {}", e.message()))?
        .into_inner();
    println!("{}", resp.job_id);
    if !a.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let job = rt.block_on(follow(&mut client, &resp.job_id, true))?;
    Ok(report(&job, started.elapsed()))
}

/// Prints the one-line outcome of a finished job; the exit code says whether it succeeded.
pub fn report(job: &pb::Job, wall: Duration) -> ExitCode {
    let out = job
        .spec
        .as_ref()
        .map(|s| s.output_url.trim_start_matches("file://").to_string())
        .unwrap_or_default();
    match pb::JobState::try_from(job.state) {
        Ok(pb::JobState::Succeeded) => {
            let secs = wall.as_secs_f64();
            let media = job.media.clone().unwrap_or_default();
            println!(
                "framewise: wrote {out} ({} frames, {}x{}, {:.2} s of video) in {:.1} s: {:.2} frames/s",
                job.frames_total,
                media.width,
                media.height,
                media.duration_ns as f64 / 1e9,
                secs,
                job.frames_total as f64 / secs.max(1e-9)
            );
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "error: job {} {}: {}",
                job.job_id,
                state_name(job.state),
                job.error
            );
            ExitCode::FAILURE
        }
    }
}

pub fn status(url: &str, job: Option<&str>, auth: &Auth) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut client = connect_blocking(&rt, url, auth)?;
    match job {
        Some(id) => {
            let j = rt
                .block_on(client.get_job(pb::GetJobRequest {
                    job_id: id.to_string(),
                }))
                .map_err(|e| anyhow!("{}", e.message()))?
                .into_inner();
            print_job(&j);
            println!(
                "{:>5} {:<9} {:<10} {:>15} {:>8} {:>10} {:>9} worker",
                "task", "kind", "state", "frames", "done", "committed", "attempts"
            );
            for t in &j.tasks {
                let range = if t.kind == "segment" {
                    format!("{}..{}", t.start_frame, t.end_frame)
                } else {
                    "-".into()
                };
                let committed = if t.kind == "segment" {
                    format!("{} ({})", t.committed_until - t.start_frame, t.chunks)
                } else {
                    "-".into()
                };
                println!(
                    "{:>5} {:<9} {:<10} {:>15} {:>8} {:>10} {:>9} {}",
                    t.index,
                    t.kind,
                    t.state,
                    range,
                    t.frames_done,
                    committed,
                    t.attempts,
                    t.worker_id
                );
            }
        }
        None => {
            let all = rt
                .block_on(client.list_jobs(pb::ListJobsRequest {}))
                .map_err(|e| anyhow!("{}", e.message()))?
                .into_inner();
            println!(
                "{:<18} {:<11} {:>15} {:>5} {:>9} {:>8} {:>9}  output",
                "job", "state", "frames", "%", "frames/s", "eta", "segments"
            );
            for j in &all.jobs {
                let out = j.spec.as_ref().map(|s| s.output_url.as_str()).unwrap_or("");
                println!(
                    "{:<18} {:<11} {:>15} {:>5} {:>9} {:>8} {:>9}  {out}",
                    j.job_id,
                    state_name(j.state),
                    format!("{}/{}", j.frames_done, j.frames_total),
                    percent(j),
                    rate(j),
                    eta(j),
                    format!("{}/{}", j.segments_done, j.segments_total)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `framewise cancel JOB`.
pub fn cancel(url: &str, job: &str, auth: &Auth) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut client = connect_blocking(&rt, url, auth)?;
    let j = rt
        .block_on(client.cancel_job(pb::CancelJobRequest {
            job_id: job.to_string(),
        }))
        .map_err(|e| anyhow!("{}", e.message()))?
        .into_inner();
    println!("{} {}", j.job_id, state_name(j.state));
    Ok(ExitCode::SUCCESS)
}

fn percent(j: &pb::Job) -> String {
    if j.frames_total == 0 {
        "-".into()
    } else {
        format!(
            "{:.0}",
            100.0 * j.frames_done as f64 / j.frames_total as f64
        )
    }
}

fn rate(j: &pb::Job) -> String {
    if j.frames_per_s > 0.0 {
        format!("{:.1}", j.frames_per_s)
    } else {
        "-".into()
    }
}

/// Time left as 1h02m, 3m05s or 12s; "-" when unknown.
fn eta(j: &pb::Job) -> String {
    if j.eta_s < 0.0 || is_terminal(j.state) {
        return "-".into();
    }
    let s = j.eta_s.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

fn print_job(j: &pb::Job) {
    let spec = j.spec.clone().unwrap_or_default();
    println!("job       {}", j.job_id);
    println!("state     {}", state_name(j.state));
    println!("input     {}", spec.input_url);
    println!("output    {}", spec.output_url);
    println!(
        "frames    {}/{} ({}%)  {} frames/s  eta {}",
        j.frames_done,
        j.frames_total,
        percent(j),
        rate(j),
        eta(j)
    );
    println!("segments  {}/{}", j.segments_done, j.segments_total);
    if !j.error.is_empty() {
        println!("error     {}", j.error);
    }
}
