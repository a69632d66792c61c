//! Commands that run worker code in this process: the embedded `run`, a
//! standalone `worker`, `bench-model` and `styles`.

use crate::cli::{BenchArgs, BenchMediaArgs, RunArgs};
use crate::client::{follow, report, style_weights};
use crate::load_config;
use anyhow::{anyhow, bail, Context, Result};
use framewise_common::config::WorkerConfig;
use framewise_common::proto::{self as pb, job_service_client::JobServiceClient};
use framewise_common::storage::file_url;
use framewise_worker::agent::{hostname, Worker};
use framewise_worker::inference::{runtime, Stylizer};
use framewise_worker::media::decode::{decode_range, DecodeRequest};
use framewise_worker::media::probe::probe;
use framewise_worker::media::Frame;
use framewise_worker::segment::inference_size;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::sync::watch;

fn cores() -> usize {
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
    let workers = a.workers.unwrap_or(cfg.embedded.workers);
    if workers == 0 || workers > 64 {
        bail!("--workers: must be 1 to 64, got {workers}");
    }
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

    // Load the model once per worker before anything starts, so a bad model is one clear error.
    let threads = if cfg.worker.intra_threads > 0 {
        cfg.worker.intra_threads
    } else {
        (cores() / workers).max(1)
    };
    let mut ws = Vec::with_capacity(workers);
    for n in 0..workers {
        ws.push(Worker::new(
            cfg.worker.clone(),
            worker_id(&cfg.worker, n),
            threads,
        )?);
    }

    let coord = framewise_coordinator::start(&cfg.coordinator)?;
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

    let started = Instant::now();
    let result = rt.block_on(async {
        let mut client = JobServiceClient::connect(url.clone())
            .await
            .map_err(|e| anyhow!("embedded coordinator {url}: {e}"))?;
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
        let job = follow(&mut client, &id, !a.quiet).await;
        ctrl_c.abort();
        job
    });
    let _ = stop_tx.send(true);
    rt.block_on(async {
        for h in handles {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    coord.shutdown();
    let job = result?;
    Ok(report(&job, started.elapsed()))
}

/// `framewise worker`: one worker process pulling from a coordinator until Ctrl-C.
pub fn worker(config: &Path, coordinator: Option<String>) -> Result<ExitCode> {
    let mut cfg = load_config(Some(config), "")?;
    if let Some(u) = coordinator {
        cfg.worker.coordinator_url = u;
    }
    let threads = if cfg.worker.intra_threads > 0 {
        cfg.worker.intra_threads
    } else {
        cores()
    };
    let w = Worker::new(cfg.worker.clone(), worker_id(&cfg.worker, 0), threads)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    rt.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = stop_tx.send(true);
        }
    });
    rt.block_on(w.run(stop_rx))?;
    Ok(ExitCode::SUCCESS)
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
    }
}

/// `framewise bench-model`: inference alone on frames already in memory.
pub fn bench_model(a: BenchArgs) -> Result<ExitCode> {
    let cfg = load_config(a.config.as_deref(), "config/embedded.toml")?;
    let threads = if a.threads > 0 { a.threads } else { cores() };
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
    let env = runtime(&cfg.worker.onnxruntime_lib)?;
    let mut model = Stylizer::load(env, &cfg.worker.model, threads)?;
    let style = style_weights(
        &crate::cli::StyleArgs {
            style: None,
            style_mix: None,
        },
        if cfg.worker.model.style_input.is_empty() {
            0
        } else {
            cfg.worker.model.style_count
        },
    )?;
    model.stylize(&frames[0], &style)?; // warm-up
    let t = Instant::now();
    for f in &frames[1..] {
        model.stylize(f, &style)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let n = frames.len() - 1;
    println!(
        "bench-model: {}x{}, {n} frames, {threads} threads: {:.1} ms/frame, {:.2} frames/s (inference only, pre/post-processing included)",
        frames[0].width,
        frames[0].height,
        secs * 1000.0 / n as f64,
        n as f64 / secs
    );
    Ok(ExitCode::SUCCESS)
}

/// `framewise bench-media`: the decode-only and encode-only ceilings on one clip.
pub fn bench_media(a: BenchMediaArgs) -> Result<ExitCode> {
    use framewise_worker::media::encode::{EncoderSettings, Geometry, SegmentEncoder};
    let cfg = load_config(a.config.as_deref(), "config/embedded.toml")?;
    let p = probe(&a.input, Duration::from_secs(300))?;
    let (w, h) = (p.width, p.height);
    let mut kept: Vec<Frame> = Vec::new();
    let mut n = 0usize;
    let req = DecodeRequest {
        path: &a.input,
        frame_pts: &p.frame_pts,
        seek_ns: 0,
        size: None,
        stall_timeout: Duration::from_secs(60),
    };
    let t = Instant::now();
    decode_range(&req, &mut |f| {
        n += 1;
        if kept.len() < 50 {
            kept.push(f);
        }
        true
    })?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "bench-media: decode {w}x{h}, {n} frames: {:.1} frames/s (GStreamer decode to RGB, whole clip)",
        n as f64 / secs
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
    };
    let frame_ns = 1_000_000_000u64 * p.fps_den.max(1) as u64 / p.fps_num.max(1) as u64;
    let t = Instant::now();
    let enc = SegmentEncoder::create(&dir.path().join("enc.mp4"), geo, &settings)?;
    for i in 0..a.frames {
        enc.push(&kept[i % kept.len()], i as u64 * frame_ns, frame_ns)?;
    }
    enc.finish(Duration::from_secs(120))?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "bench-media: encode {w}x{h}, {} frames: {:.1} frames/s (x264 {} crf {}, from RGB in memory)",
        a.frames,
        a.frames as f64 / secs,
        settings.preset,
        settings.crf
    );
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
