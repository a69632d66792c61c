//! Commands that run worker code in this process: the embedded `run`, a
//! standalone `worker`, `bench-model` and `styles`.

use crate::children::{encoder_threads, split_by_gpu, Fleet};
use crate::cli::{BenchArgs, BenchMediaArgs, OptimizeArgs, RunArgs};
use crate::client::{follow, report, style_weights};
use crate::load_config;
use anyhow::{anyhow, bail, Context, Result};
use framewise_common::config::WorkerConfig;
use framewise_common::device::{parse_device, parse_gpus, resolve, visible_gpus, Device};
use framewise_common::proto::{self as pb, job_service_client::JobServiceClient};
use framewise_common::storage::file_url;
use framewise_worker::agent::{hostname, Worker};
use framewise_worker::inference::runtime;
use framewise_worker::media::decode::{decode_range, DecodeRequest};
use framewise_worker::media::probe::probe;
use framewise_worker::media::Frame;
use framewise_worker::segment::inference_size;
use framewise_worker::variant::{cache_dir, load_best};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

fn worker_id(cfg: &WorkerConfig, n: usize) -> String {
    if !cfg.worker_id.is_empty() {
        return if n == 0 {
            cfg.worker_id.clone()
        } else {
            format!("{}-{n}", cfg.worker_id)
        };
    }
    format!("{}-{}-{n}", hostname(), std::process::id())
}

/// Applies --device/--gpus over the config, checked like the config is.
fn override_device(
    cfg: &mut WorkerConfig,
    device: Option<String>,
    gpus: Option<String>,
) -> Result<()> {
    if let Some(d) = device {
        parse_device(&d).map_err(|e| anyhow!("--device: {e}"))?;
        cfg.device = d;
    }
    if let Some(g) = gpus {
        parse_gpus(&g).map_err(|e| anyhow!("--gpus: {e}"))?;
        cfg.gpus = g;
    }
    Ok(())
}

/// The device of each inference pipeline: `count` (or 1) on the CPU; on GPUs `count` spread
/// round-robin over them, or `pipelines_per_gpu` on each.
fn plan_pipelines(cfg: &WorkerConfig, count: Option<usize>) -> Result<Vec<Device>> {
    plan_pipelines_on(cfg, count, &visible_gpus())
}

fn plan_pipelines_on(
    cfg: &WorkerConfig,
    count: Option<usize>,
    visible: &[u32],
) -> Result<Vec<Device>> {
    let setting = parse_device(&cfg.device).map_err(|e| anyhow!("worker.device: {e}"))?;
    let gpus = parse_gpus(&cfg.gpus).map_err(|e| anyhow!("worker.gpus: {e}"))?;
    let devices = resolve(setting, gpus.as_deref(), visible)
        .map_err(|e| anyhow!("worker.device = {:?}: {e}", cfg.device))?;
    Ok(match devices.as_slice() {
        [Device::Cpu] => vec![Device::Cpu; count.unwrap_or(1)],
        gpus => {
            let n = count.unwrap_or(gpus.len() * cfg.pipelines_per_gpu);
            (0..n).map(|i| gpus[i % gpus.len()]).collect()
        }
    })
}

/// Encoder and conversion threads of one of `pipelines` running at once: as configured, else
/// `encoder_threads`' rule (one pipeline: 0, GStreamer's own choice).
fn shared_threads(configured: u32, pipelines: usize) -> u32 {
    match (configured, pipelines) {
        (t, _) if t > 0 => t,
        (_, 0 | 1) => 0,
        (_, n) => encoder_threads(cores(), n),
    }
}

/// ONNX Runtime intra-op threads per session: as configured, else 1 on a GPU (the kernels
/// run there) and the cores shared between the sessions on a CPU.
fn intra_threads(configured: usize, device: Device, sessions: usize) -> usize {
    match (configured, device) {
        (t, _) if t > 0 => t,
        (_, Device::Cuda(_)) => 1,
        (_, Device::Cpu) => (cores() / sessions.max(1)).max(1),
    }
}

/// Loads one Worker per pipeline. With `device = "auto"`, a CUDA provider that does not start
/// falls back to the CPU with a warning; with "cuda" it is an error.
fn start_workers(
    cfg: &WorkerConfig,
    mut devices: Vec<Device>,
    cpu_count: usize,
    id: impl Fn(usize) -> String,
) -> Result<Vec<Worker>> {
    let make = |d: Device, name: String, n: usize| {
        let mut wcfg = cfg.clone();
        // Several pipelines encode at once: share the cores rather than each asking for all.
        wcfg.encoder.threads = shared_threads(wcfg.encoder.threads, n);
        Worker::new(wcfg, name, intra_threads(cfg.intra_threads, d, n), d)
    };
    let Some(&d) = devices.first() else {
        return Ok(Vec::new());
    };
    // The first pipeline alone: it decides the model variant for the process.
    let first = match make(d, id(0), devices.len()) {
        Ok(w) => w,
        Err(e) if d != Device::Cpu && cfg.device == "auto" => {
            tracing::warn!(device = %d, error = %e, "the GPU could not be used; running on the CPU");
            devices = vec![Device::Cpu; cpu_count];
            make(Device::Cpu, id(0), devices.len())?
        }
        Err(e) => return Err(e.into()),
    };
    let n = devices.len();
    let mut ws = Vec::with_capacity(n + 1);
    ws.push(first);
    if devices.iter().all(|&d| d == Device::Cpu) {
        // CPU pipelines after the first load and time their model at once, each on its own
        // threads: one after another they held up a 2-worker job's first lease by half a
        // second (BENCHMARKS.md, session 18).
        let rest: Vec<_> = std::thread::scope(|s| {
            let make = &make;
            let started: Vec<_> = (1..n)
                .map(&id)
                .map(|name| s.spawn(move || make(Device::Cpu, name, n)))
                .collect();
            started.into_iter().map(|h| h.join()).collect()
        });
        for w in rest {
            ws.push(w.map_err(|_| anyhow!("a worker's start-up panicked"))??);
        }
    } else {
        for (i, &d) in devices.iter().enumerate().skip(1) {
            ws.push(make(d, id(i), n)?);
        }
    }
    // The media lane probes and assembles beside the pipelines (numbered after them, so the
    // autoscaler counts it as this worker's).
    if cfg.media_lane {
        if let Some(first) = ws.first() {
            let lane = first.media_lane(id(ws.len()));
            ws.push(lane);
        }
    }
    Ok(ws)
}

/// `framewise run`: coordinator + N workers in this process, over loopback gRPC.
pub fn run(a: RunArgs) -> Result<ExitCode> {
    let mut cfg = load_config(a.config.as_deref(), "config/embedded.toml")?;
    let input = absolute(&a.input)?;
    match std::fs::metadata(&input) {
        Err(_) => bail!("{}: file not found", a.input.display()),
        Ok(m) if m.is_dir() => bail!("{}: is a directory, not a video file", a.input.display()),
        Ok(_) => {}
    }
    let output = absolute(&a.output)?;
    let out_dir = output
        .parent()
        .ok_or_else(|| anyhow!("{}: not a file path", a.output.display()))?;
    if !out_dir.is_dir() {
        bail!(
            "{}: output directory {} does not exist",
            a.output.display(),
            out_dir.display()
        );
    }
    if output == input || output.canonicalize().ok() == input.canonicalize().ok() {
        bail!(
            "{}: output must not overwrite the input",
            a.output.display()
        );
    }
    if output.is_dir() {
        bail!(
            "{}: is a directory; give an output file name",
            a.output.display()
        );
    }
    let weights = style_weights(
        &a.style,
        if cfg.worker.model.style_input.is_empty() {
            0
        } else {
            cfg.worker.model.style_count
        },
    )?;
    if let Some(n) = a.workers {
        if n == 0 || n > 64 {
            bail!("--workers: must be 1 to 64, got {n}");
        }
    }
    override_device(&mut cfg.worker, a.device.clone(), None)?;
    if let Some(s) = a.segment_seconds {
        if !(s.is_finite() && s > 0.0) {
            bail!("--segment-seconds: must be > 0, got {s}");
        }
        cfg.coordinator.segment_seconds = s;
    }
    if let Some(m) = a.max_size {
        if m != 0 && m < 16 {
            bail!("--max-size: must be at least 16 pixels, got {m}");
        }
    }
    if let Some(c) = a.crf {
        if c > 51 {
            bail!("--crf: must be 0 to 51, got {c}");
        }
        cfg.worker.encoder.crf = c;
    }

    // State lives in a fresh temporary directory unless the user wants to keep it.
    let tmp = tempfile::Builder::new()
        .prefix("framewise-run-")
        .tempdir()
        .context("creating a temporary directory")?;
    let data = match &a.data_dir {
        Some(d) => absolute(d)?,
        None => tmp.path().to_path_buf(),
    };
    cfg.coordinator.data_dir = data.join("state");
    cfg.coordinator.work_dir = data.join("work");
    cfg.coordinator.logs_dir = data.join("logs");
    cfg.coordinator.grpc_addr = "127.0.0.1:0".into();
    // Without a configured dashboard address, take a free port rather than collide on the default.
    if cfg.coordinator.http_addr == framewise_common::config::CoordinatorConfig::default().http_addr
    {
        cfg.coordinator.http_addr = "127.0.0.1:0".into();
    }

    // Load the model once per worker before anything starts, so a bad model is one clear error
    // (on several GPUs each GPU's worker process loads its own after the coordinator starts).
    // The GPUs are looked up once (CUDA_VISIBLE_DEVICES or /dev) for both plans.
    let visible = visible_gpus();
    let on_cpu = plan_pipelines_on(&cfg.worker, None, &visible)?.first() == Some(&Device::Cpu);
    let count = a.workers.or(on_cpu.then_some(cfg.embedded.workers));
    let devices = plan_pipelines_on(&cfg.worker, count, &visible)?;
    let split = split_by_gpu(&devices, cfg.worker.process_per_gpu);
    let ws = match split {
        Some(_) => Vec::new(),
        None => start_workers(
            &cfg.worker,
            devices,
            a.workers.unwrap_or(cfg.embedded.workers),
            |n| worker_id(&cfg.worker, n),
        )?,
    };

    let coord = framewise_coordinator::start(&cfg.coordinator, &cfg.storage)?;
    let url = coord.url();
    if let (Some(dash), false) = (coord.http_url(), a.quiet) {
        eprintln!("framewise: dashboard at {dash}/");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut handles = Vec::new();
    for mut w in ws {
        w.set_coordinator(&url);
        handles.push(rt.spawn(w.run(stop_rx.clone())));
    }
    let since_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut fleet = match &split {
        Some(gpus) => {
            let mut child = cfg.clone();
            child.worker.coordinator_url = url.clone();
            // As quiet as this command's own log unless FRAMEWISE_LOG says otherwise.
            let _guard = rt.enter();
            Some(Fleet::start(&child, gpus, Some("error".into()))?)
        }
        None => None,
    };

    // The worker processes load their models first, as the in-process workers did above: the
    // job is submitted once every pipeline has registered, so GPUs that cannot run fail the
    // command before any job exists.
    if let (Some(f), Some(gpus)) = (fleet.as_mut(), &split) {
        // Every pipeline, and each process's media lane.
        let lanes = if cfg.worker.media_lane { gpus.len() } else { 0 };
        let want: usize = gpus.iter().map(|(_, n)| n).sum::<usize>() + lanes;
        let ready = rt.block_on(async {
            while coord.workers_seen_since(since_ms).await < want {
                tokio::select! {
                    r = f.ended() => return Err(r.err().unwrap_or_else(|| anyhow!("the worker processes ended before registering"))),
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            Ok(())
        });
        if let Err(e) = ready {
            coord.shutdown();
            return Err(e);
        }
    }
    let started = Instant::now();
    let result = rt.block_on(async {
        // The embedded coordinator has no tokens file: no token to send.
        let ch = framewise_common::bearer::connect(&url, Default::default())
            .await
            .map_err(|e| anyhow!("embedded coordinator {e}"))?;
        let mut client = JobServiceClient::new(ch)
            .max_decoding_message_size(framewise_common::CLIENT_MAX_MESSAGE_BYTES);
        let spec = pb::JobSpec {
            input_url: file_url(&input),
            output_url: file_url(&output),
            params: Some(pb::JobParams {
                style_weights: weights,
                segment_seconds: cfg.coordinator.segment_seconds,
                max_size: a.max_size.unwrap_or(0),
                crf: 0,
            }),
        };
        let id = client
            .submit_job(pb::SubmitJobRequest {
                spec: Some(spec),
                idempotency_key: String::new(),
            })
            .await
            .map_err(|e| anyhow!("{}", e.message()))?
            .into_inner()
            .job_id;
        // Ctrl-C cancels the job: workers stop at their next heartbeat and remove partial files.
        let mut canceller = client.clone();
        let cancel_id = id.clone();
        let ctrl_c = tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("framewise: cancelling job {cancel_id}");
                let _ = canceller
                    .cancel_job(pb::CancelJobRequest { job_id: cancel_id })
                    .await;
            }
        });
        let job = tokio::select! {
            job = follow(&mut client, &id, !a.quiet) => job,
            // The worker processes gave up (or all ended) with the job unfinished: cancel it,
            // so it ends with a reason, and say why.
            ended = ended(&mut fleet) => {
                let _ = client.cancel_job(pb::CancelJobRequest { job_id: id.clone() }).await;
                Err(ended.err().unwrap_or_else(|| anyhow!("every worker process ended before job {id} finished")))
            }
        };
        ctrl_c.abort();
        // The job's own time: the output is written now; stopping the workers (a worker
        // process per GPU drains and tears down its CUDA contexts) is not part of it.
        job.map(|j| (j, started.elapsed()))
    });
    let _ = stop_tx.send(true);
    rt.block_on(async {
        if let Some(f) = fleet.take() {
            if let Err(e) = f.stop().await {
                tracing::warn!(error = %e, "stopping the worker processes");
            }
        }
        for h in handles {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    coord.shutdown();
    let (job, took) = result?;
    Ok(report(&job, took))
}

/// `framewise worker`: pulls from a coordinator until Ctrl-C or SIGTERM (on several GPUs, through a child process per GPU).
pub fn worker(
    config: &Path,
    coordinator: Option<String>,
    device: Option<String>,
    gpus: Option<String>,
    id: Option<String>,
) -> Result<ExitCode> {
    let mut cfg = load_config(Some(config), "")?;
    if let Some(u) = coordinator {
        cfg.worker.coordinator_url = u;
    }
    if let Some(id) = id {
        cfg.worker.worker_id = id;
    }
    override_device(&mut cfg.worker, device, gpus)?;
    // One pipeline on a CPU (using every core); pipelines_per_gpu on each GPU, each pipeline a
    // worker of its own to the coordinator (its own leases), so losing the node loses at most
    // one chunk per pipeline.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // On several GPUs: a worker process per GPU, this one supervising them.
    let devices = plan_pipelines(&cfg.worker, None)?;
    if let Some(gpus) = split_by_gpu(&devices, cfg.worker.process_per_gpu) {
        tracing::info!(gpus = ?gpus, "one worker process per GPU (GPU, pipelines)");
        return rt.block_on(async {
            let mut fleet = Fleet::start(&cfg, &gpus, None)?;
            tokio::select! {
                r = fleet.ended() => r?,
                _ = crate::shutdown_signal() => fleet.stop().await?,
            }
            Ok(ExitCode::SUCCESS)
        });
    }
    let ws = start_workers(&cfg.worker, devices, 1, |n| worker_id(&cfg.worker, n))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    rt.spawn(async move {
        crate::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let handles: Vec<_> = ws
        .into_iter()
        .map(|w| rt.spawn(w.run(stop_rx.clone())))
        .collect();
    let mut failed = None;
    for h in handles {
        match rt.block_on(h) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(anyhow::Error::from(e)),
            Err(e) => failed = Some(anyhow!("worker task ended abnormally: {e}")),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// The worker processes' end, or never when there are none.
async fn ended(fleet: &mut Option<Fleet>) -> Result<()> {
    match fleet {
        Some(f) => f.ended().await,
        None => std::future::pending().await,
    }
}

fn synthetic(w: u32, h: u32) -> Frame {
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            data.extend_from_slice(&[
                (x * 255 / w.max(1)) as u8,
                (y * 255 / h.max(1)) as u8,
                ((x + y) % 256) as u8,
            ]);
        }
    }
    Frame {
        pts: 0,
        width: w,
        height: h,
        data,
        yuv: None,
    }
}

/// `framewise bench-model`: inference alone on frames already in memory.
pub fn bench_model(a: BenchArgs) -> Result<ExitCode> {
    let cfg = load_config(a.config.as_deref(), "config/embedded.toml")?;
    let frames: Vec<Frame> = match &a.input {
        Some(path) => {
            let p = probe(path, Duration::from_secs(300))?;
            let size = inference_size((p.width, p.height), a.max_size);
            let want = &p.frame_pts[..p.frame_pts.len().min(a.frames + 1)];
            let mut out = Vec::new();
            let req = DecodeRequest {
                path,
                frame_pts: want,
                seek_ns: 0,
                size: (size != (p.width, p.height)).then_some(size),
                stall_timeout: Duration::from_secs(60),
                threads: 0,
                nvdec: None,
                pool: None,
                nv12: false,
            };
            decode_range(&req, &mut |f| {
                out.push(f);
                true
            })?;
            out
        }
        None => {
            let (w, h) = a
                .size
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
                .ok_or_else(|| anyhow!("--size: use WxH, e.g. 1280x720"))?;
            let (w, h) = inference_size((w, h), a.max_size);
            (0..=a.frames).map(|_| synthetic(w, h)).collect()
        }
    };
    if frames.len() < 2 {
        bail!("need at least 2 frames to time, got {}", frames.len());
    }
    let mut wcfg = cfg.worker.clone();
    override_device(&mut wcfg, a.device.clone(), None)?;
    if let Some(o) = &a.optimize {
        let modes = framewise_common::config::OPTIMIZE_MODES;
        if !modes.contains(&o.as_str()) {
            bail!("--optimize: {o:?} is not one of {}", modes.join(", "));
        }
        wcfg.optimize = o.clone();
    }
    if a.sessions == 0 || a.sessions > 64 {
        bail!("--sessions: must be 1 to 64, got {}", a.sessions);
    }
    if a.batch == 0 || a.batch > 64 {
        bail!("--batch: must be 1 to 64, got {}", a.batch);
    }
    let batch = a.batch;
    let devices = plan_pipelines(&wcfg, Some(a.sessions))?;
    let threads = intra_threads(a.threads, devices[0], a.sessions);
    let env = runtime(&wcfg.onnxruntime_lib)?;
    let cache = cache_dir(&wcfg.model_cache_dir, &wcfg.model.path);
    let mut models = Vec::with_capacity(devices.len());
    let mut variant = String::new();
    for &d in &devices {
        let (mut m, choice) = load_best(
            env,
            &wcfg.model,
            threads,
            d,
            &wcfg.optimize,
            &cache,
            (&wcfg).into(),
        )?;
        m.set_max_batch(batch);
        variant = match choice.psnr_db {
            Some(p) => format!("{} ({p:.1} dB vs the original)", choice.variant),
            None => choice.variant,
        };
        models.push(m);
    }
    let style = style_weights(
        &crate::cli::StyleArgs {
            style: None,
            style_mix: None,
        },
        if wcfg.model.style_input.is_empty() {
            0
        } else {
            wcfg.model.style_count
        },
    )?;
    for m in models.iter_mut() {
        m.stylize(&frames[0], &style)?; // warm-up
    }
    // Every session runs every frame at once; frames/s is the sum.
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = models
            .iter_mut()
            .map(|m| {
                let (frames, style) = (&frames, &style);
                s.spawn(move || -> Result<()> {
                    for group in frames[1..].chunks(batch) {
                        m.stylize_batch(group, style)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow!("a session thread panicked"))??;
        }
        Ok(())
    })?;
    let secs = t.elapsed().as_secs_f64();
    let n = (frames.len() - 1) * models.len();
    println!(
        "bench-model: {}x{}, {n} frames, device {}, {} session(s), batch {}, {threads} threads each, model {variant}: {:.1} ms/frame, {:.2} frames/s (inference only, pre/post-processing included)",
        frames[0].width,
        frames[0].height,
        devices[0],
        models.len(),
        models[0].max_batch(),
        secs * 1000.0 / n as f64,
        n as f64 / secs
    );
    Ok(ExitCode::SUCCESS)
}

/// `framewise bench-media`: the decode-only and encode-only ceilings on one clip.
pub fn bench_media(a: BenchMediaArgs) -> Result<ExitCode> {
    use framewise_worker::media::encode::{
        converts_to_i420_itself, EncoderSettings, Geometry, SegmentEncoder,
    };
    let cfg = load_config(a.config.as_deref(), "config/embedded.toml")?;
    if a.streams == 0 || a.streams > 64 {
        bail!("--streams: must be 1 to 64, got {}", a.streams);
    }
    let p = probe(&a.input, Duration::from_secs(300))?;
    let (w, h) = (p.width, p.height);
    if a.nv12 && (w % 2 == 1 || h % 2 == 1) {
        bail!(
            "--nv12: {} is {w}x{h}; NV12 frames need even sides",
            a.input.display()
        );
    }
    // Each stream decodes the whole clip at the same time as the others (as the pipelines of a
    // worker do); frames/s is their sum.
    let decode_one = |keep: bool| -> Result<(usize, Vec<Frame>)> {
        let mut kept: Vec<Frame> = Vec::new();
        let mut n = 0usize;
        let req = DecodeRequest {
            path: &a.input,
            frame_pts: &p.frame_pts,
            seek_ns: 0,
            size: None,
            stall_timeout: Duration::from_secs(60),
            threads: shared_threads(0, a.streams),
            // As a worker on GPU 0 decodes (`worker.decoder`).
            nvdec: (cfg.worker.decoder == "nvdec").then_some(0),
            pool: None,
            nv12: a.nv12,
        };
        decode_range(&req, &mut |f| {
            n += 1;
            if keep && kept.len() < 50 {
                kept.push(f);
            }
            true
        })?;
        Ok((n, kept))
    };
    let t = Instant::now();
    let decoded: Vec<Result<(usize, Vec<Frame>)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..a.streams)
            .map(|i| s.spawn(move || decode_one(i == 0)))
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("decoder thread panicked")))
            })
            .collect()
    });
    let secs = t.elapsed().as_secs_f64();
    let mut n = 0;
    let mut kept = Vec::new();
    for d in decoded {
        let (k, frames) = d?;
        n += k;
        if kept.is_empty() {
            // The encoder takes RGB: NV12 frames converted after the decode was timed.
            kept = frames.iter().map(Frame::to_rgb).collect();
        }
    }
    println!(
        "bench-media: decode {w}x{h}, {n} frames, {} stream(s): {:.1} frames/s (GStreamer decode to {}, whole clip)",
        a.streams,
        n as f64 / secs,
        if a.nv12 { "NV12" } else { "RGB" },
    );
    if kept.is_empty() {
        bail!("{}: no frames decoded", a.input.display());
    }
    let dir = tempfile::tempdir()?;
    let geo = Geometry {
        in_size: (w, h),
        out_size: (w, h),
        fps: (p.fps_num.max(1), p.fps_den.max(1)),
    };
    let settings = EncoderSettings {
        crf: cfg.worker.encoder.crf,
        preset: cfg.worker.encoder.preset.clone(),
        // As the pipelines of a worker do: `encoder_threads`' rule for this many streams.
        threads: shared_threads(cfg.worker.encoder.threads, a.streams),
    };
    let frame_ns = 1_000_000_000u64 * p.fps_den.max(1) as u64 / p.fps_num.max(1) as u64;
    let chunk = if a.chunk_frames == 0 {
        a.frames.max(1)
    } else {
        a.chunk_frames
    };
    let join_finish = |h: std::thread::ScopedJoinHandle<Result<()>>| {
        h.join()
            .unwrap_or_else(|_| Err(anyhow!("chunk finishing thread panicked")))
    };
    let t = Instant::now();
    let encoded: Vec<Result<()>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..a.streams)
            .map(|i| {
                let (kept, settings, dir) = (&kept, &settings, dir.path());
                s.spawn(move || -> Result<()> {
                    // One chunk's file is finished while the next is encoded (segment.rs).
                    std::thread::scope(|fin| -> Result<()> {
                        let mut finishing: Option<std::thread::ScopedJoinHandle<Result<()>>> = None;
                        for (c, first) in (0..a.frames).step_by(chunk).enumerate() {
                            let path = dir.join(format!("enc{i}-{c}.mp4"));
                            let enc = SegmentEncoder::create(&path, geo, settings)?;
                            for f in first..(first + chunk).min(a.frames) {
                                let pts = (f - first) as u64 * frame_ns;
                                enc.push(kept[f % kept.len()].clone(), pts, frame_ns)?;
                            }
                            if let Some(h) = finishing.take() {
                                join_finish(h)?;
                            }
                            finishing =
                                Some(fin.spawn(move || Ok(enc.finish(Duration::from_secs(120))?)));
                        }
                        finishing.map_or(Ok(()), join_finish)
                    })
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("encoder thread panicked")))
            })
            .collect()
    });
    let secs = t.elapsed().as_secs_f64();
    for e in encoded {
        e?;
    }
    let chunks_per_stream = a.frames.div_ceil(chunk);
    let files = if a.chunk_frames == 0 {
        "one file per stream".to_string()
    } else {
        format!("chunks of {} frames", a.chunk_frames)
    };
    println!(
        "bench-media: encode {w}x{h}, {} frames, {} stream(s): {:.1} frames/s (x264 {} crf {}, from RGB in memory converted by {}, {files})",
        a.frames * a.streams,
        a.streams,
        (a.frames * a.streams) as f64 / secs,
        settings.preset,
        settings.crf,
        if converts_to_i420_itself(geo) {
            "framewise"
        } else {
            "videoconvert"
        },
    );
    if a.stitch {
        use framewise_worker::media::assemble::{assemble, SegmentFile};
        let mut segments = Vec::new();
        let mut offset = 0u64;
        for i in 0..a.streams {
            for c in 0..chunks_per_stream {
                let frames = chunk.min(a.frames - c * chunk) as u64;
                segments.push(SegmentFile {
                    path: dir.path().join(format!("enc{i}-{c}.mp4")),
                    offset_ns: offset * frame_ns,
                    frames,
                });
                offset += frames;
            }
        }
        let out = dir.path().join("stitched.mp4");
        let t = Instant::now();
        let n = assemble(
            &a.input,
            &segments,
            p.audio_streams,
            &out,
            Duration::from_secs(600),
        )?;
        let secs = t.elapsed().as_secs_f64();
        // The assembly task then checks the output's index before publishing it (agent.rs);
        // a full probe, which it used before, is timed beside it.
        let t = Instant::now();
        let index = framewise_worker::media::mp4_index::read_index(&out)?;
        let verify = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let check = probe(&out, Duration::from_secs(300))?;
        let probed = t.elapsed().as_secs_f64();
        println!(
            "bench-media: stitch {n} frames from {} files with {} audio stream(s): {:.3} s, {:.1} frames/s; the output's check (index, {} frames) {:.4} s, a full probe ({} frames) {:.3} s",
            segments.len(),
            p.audio_streams,
            secs,
            n as f64 / secs,
            index.video_samples,
            verify,
            check.frame_pts.len(),
            probed
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `framewise styles`: what --style accepts for the configured model.
pub fn styles(config: Option<&Path>) -> Result<ExitCode> {
    let cfg = load_config(config, "config/embedded.toml")?;
    let m = &cfg.worker.model;
    if m.style_input.is_empty() {
        println!("{}: no style input; --style is not used", m.path.display());
    } else {
        println!(
            "{}: {} styles, --style 0..{} or --style-mix i:w,j:w (input {:?})",
            m.path.display(),
            m.style_count,
            m.style_count.saturating_sub(1),
            m.style_input
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `framewise optimize-model`: the rewrites of optimize.rs applied to the configured model.
pub fn optimize_model(a: OptimizeArgs) -> Result<ExitCode> {
    use framewise_worker::optimize::{optimize, ImageIo, Rewrites};
    let cfg = load_config(a.config.as_deref(), "config/embedded.toml")?;
    let mut r = Rewrites::default();
    for w in a
        .rewrites
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        match w {
            "fuse" => r.fuse_instance_norm = true,
            "u8" => r.uint8_io = true,
            "fp16" => r.fp16 = true,
            "batch" => r.dynamic_batch = true,
            "pixels" => r.pixels_into_first_conv = true,
            "norm" => r.norm_op = true,
            "nhwc" => r.channels_last = true,
            "s2d" => r.space_to_depth = true,
            "nv12" => r.nv12_input = true,
            other => {
                bail!(
                    "--rewrites: {other:?} is not one of fuse, u8, fp16, batch, pixels, norm, nhwc, s2d, nv12"
                )
            }
        }
    }
    let m = &cfg.worker.model;
    let bytes = std::fs::read(&m.path).with_context(|| format!("model {}", m.path.display()))?;
    let io = ImageIo {
        input: m.input.clone(),
        output: m.output.clone(),
        value_range: m.value_range,
    };
    let (out, report) =
        optimize(&bytes, &io, r).map_err(|e| anyhow!("model {}: {e}", m.path.display()))?;
    std::fs::write(&a.output, out).with_context(|| format!("writing {}", a.output.display()))?;
    println!(
        "optimize-model: {} -> {}: {} instance normalisations fused, {} as framewise's op ({} with their ReLU, {} mixing their style, {} writing the next reflect padding, {} adding the residual, {} upsampling, {} shifts before them dropped; {} ops channels last; {} convolutions space to depth), uint8 I/O {}, NV12 input {}, pixels into the first convolution {}, {} tensors in fp16, {} -> {} nodes",
        m.path.display(),
        a.output.display(),
        report.fused_instance_norms,
        report.norm_ops.fused,
        report.norm_ops.with_relu,
        report.norm_ops.with_style_mix,
        report.norm_ops.with_pad,
        report.norm_ops.with_residual,
        report.norm_ops.with_upsample,
        report.norm_ops.shifts_dropped,
        report.channels_last_ops,
        report.space_to_depth_convs,
        if report.uint8_io { "yes" } else { "no" },
        if report.nv12_input { "yes" } else { "no" },
        if report.pixels_into_first_conv { "yes" } else { "no" },
        report.fp16_tensors,
        report.nodes_before,
        report.nodes_after
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(device: &str, gpus: &str, per_gpu: usize) -> WorkerConfig {
        WorkerConfig {
            device: device.into(),
            gpus: gpus.into(),
            pipelines_per_gpu: per_gpu,
            ..WorkerConfig::default()
        }
    }

    #[test]
    fn a_multi_gpu_worker_runs_pipelines_per_gpu() {
        use Device::*;
        let two = [0, 1];
        // Pipelines alternate between the GPUs, so the first leases spread over all of them.
        assert_eq!(
            plan_pipelines_on(&cfg("cuda", "all", 2), None, &two).unwrap(),
            vec![Cuda(0), Cuda(1), Cuda(0), Cuda(1)]
        );
        // --gpus picks devices; --workers spreads that many round-robin.
        assert_eq!(
            plan_pipelines_on(&cfg("cuda", "1", 3), None, &two).unwrap(),
            vec![Cuda(1); 3]
        );
        assert_eq!(
            plan_pipelines_on(&cfg("auto", "all", 4), Some(3), &two).unwrap(),
            vec![Cuda(0), Cuda(1), Cuda(0)]
        );
        // No GPU: auto means the CPU, cuda is an error that names the setting.
        assert_eq!(
            plan_pipelines_on(&cfg("auto", "all", 4), Some(2), &[]).unwrap(),
            vec![Cpu, Cpu]
        );
        let e = plan_pipelines_on(&cfg("cuda", "all", 4), None, &[]).unwrap_err();
        assert!(e.to_string().contains("worker.device"), "{e}");
        let e = plan_pipelines_on(&cfg("cuda", "3", 4), None, &two).unwrap_err();
        assert!(e.to_string().contains("GPU 3"), "{e}");
    }
}
