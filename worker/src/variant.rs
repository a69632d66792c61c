//! Chooses the model a pipeline runs: a rewritten copy of the configured model (optimize.rs),
//! accepted only if its output stays within a PSNR threshold of the original on sample frames
//! on the same device, else the next candidate, else the original. Rewritten files are cached
//! by the content hash of the original, so a restart (or a second pipeline) reuses them.

use crate::error::ModelError;
use crate::inference::{CudaOptions, Stylizer};
use crate::media::Frame;
use crate::optimize::{optimize, ImageIo, Rewrites};
use framewise_common::config::ModelConfig;
use framewise_common::device::Device;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tracing::{info, warn};

/// Bumped whenever a rewrite or the way variants are timed changes, so stale cached files
/// and decisions are not reused.
const OPTIMIZER_VERSION: u32 = 12;

/// One rewritten model to try, and the quality it must keep.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub name: &'static str,
    pub rewrites: Rewrites,
    /// Minimum PSNR (dB) against the original's output on every sample frame.
    pub min_psnr_db: f64,
    /// Convolutions in TF32 on the GPU (inputs rounded to 10 mantissa bits, on tensor cores).
    pub tf32: bool,
}

/// The candidates for a device, best first. fp16 only on a GPU (on a CPU it is emulated and
/// slow); ONNX Runtime's int8 is not offered: static and dynamic quantisation both measured
/// 1.2–1.9x slower than fp32 on AVX2 and AVX-512 CPUs for this model, and the one running
/// int8 kernels failed the 30 dB gate (`bench/quantize.sh`, BENCHMARKS.md). On a CPU,
/// framewise's own ops take the model's ends instead (conv_op.rs, narrow_conv_op.rs).
pub fn candidates(device: Device) -> Vec<Candidate> {
    let fused = Rewrites {
        fuse_instance_norm: true,
        uint8_io: true,
        fp16: false,
        dynamic_batch: true,
        pixels_into_first_conv: false,
        norm_op: false,
        channels_last: false,
        space_to_depth: false,
        nv12_input: false,
        int_first_conv: false,
        narrow_convs: false,
    };
    let exact = Candidate {
        name: "fused-u8",
        rewrites: fused,
        min_psnr_db: 40.0,
        tf32: false,
    };
    // Both reduced-precision variants feed whole pixel values to the first convolution (exact
    // in fp16 and TF32): this model amplifies input rounding (optimize.rs).
    let pixels = Rewrites {
        pixels_into_first_conv: true,
        ..fused
    };
    // The normalisation with the style's scale, shift and ReLU as framewise's own op (norm_op.rs).
    let norm = |r: Rewrites| Rewrites { norm_op: true, ..r };
    // The op channels last, so the convolutions run NHWC (no layout transposes around cuDNN's
    // tensor-core kernels); in fp16 the op has a half form. (In TF32, channels last measured
    // slower than NCHW, 367 against 454 frames/s on an H100: not a candidate.)
    let nhwc = |r: Rewrites| Rewrites {
        channels_last: true,
        ..norm(r)
    };
    match device {
        // The fused normalisation everywhere was slower on a CPU (ONNX Runtime reorders its
        // blocked layout around every op it does not know: 164–168 against 138–145 ms per
        // 640x360 frame without it); the integer first convolution takes only its own along.
        // The first convolution in integers from the uint8 frame (16-bit weights: 64 dB against
        // the original) and the last two as NarrowConv: 1.25–1.5x fused-u8 alone. Offered where
        // the ops' vector paths run (AVX-512 with VNNI); elsewhere their portable loops would
        // only lose the speed check.
        Device::Cpu if crate::conv_op::vnni_available() => vec![
            Candidate {
                name: "fused-u8-i16conv",
                rewrites: Rewrites {
                    int_first_conv: true,
                    narrow_convs: true,
                    ..fused
                },
                min_psnr_db: 40.0,
                tf32: false,
            },
            exact,
        ],
        Device::Cpu => vec![exact],
        Device::Cuda(_) => vec![
            // The same with the two 9x9 convolutions on 3 and 4 channels run space to depth
            // (5x5 on 12 and 16 channels, which tensor cores take; optimize::space_to_depth),
            // and an image input that takes NVDEC's NV12 as well as RGB (pixels_op.rs).
            Candidate {
                name: "fused-u8-fp16-norm-nhwc-s2d",
                rewrites: Rewrites {
                    fp16: true,
                    space_to_depth: true,
                    nv12_input: true,
                    ..nhwc(pixels)
                },
                min_psnr_db: 40.0,
                tf32: true,
            },
            // `tf32` here too: ONNX Runtime lets cuDNN use tensor cores only with use_tf32, for
            // fp16 convolutions as well (without it they ran on CUDA cores, converted to NCHW:
            // 247 against 478 frames/s on an H100, BENCHMARKS.md session 12).
            Candidate {
                name: "fused-u8-fp16-norm-nhwc",
                rewrites: Rewrites {
                    fp16: true,
                    ..nhwc(pixels)
                },
                min_psnr_db: 40.0,
                tf32: true,
            },
            Candidate {
                name: "fused-u8-tf32-norm",
                rewrites: norm(pixels),
                min_psnr_db: 40.0,
                tf32: true,
            },
            Candidate {
                name: "fused-u8-fp16",
                rewrites: Rewrites {
                    fp16: true,
                    ..pixels
                },
                min_psnr_db: 40.0,
                tf32: false,
            },
            Candidate {
                name: "fused-u8-tf32",
                rewrites: pixels,
                min_psnr_db: 40.0,
                tf32: true,
            },
            exact,
        ],
    }
}

/// How much more exact (worst PSNR, dB) a variant must be to win against a faster one within
/// 5 % of its time: fp32 against fp16 (85 against 45 dB), not two fp16 variants a tenth of a
/// decibel apart (with 0 dB, one H200 picked the space-to-depth variant's slower sibling, 45.7
/// against 45.6 dB, on a 1-session timing 5 % apart: 1.3x slower with 8 sessions).
const MORE_EXACT_DB: f64 = 3.0;

/// Which of the variants that passed the gate to run, given (worst PSNR, ms per frame) of
/// each: the fastest, unless one at least MORE_EXACT_DB more exact is within 5 % of its time
/// (fp16 that is no faster than fp32 on this device is not worth its 40 dB); of those, the most
/// exact. None if there are none.
pub fn pick(passed: &[(f64, f64)]) -> Option<usize> {
    let fastest = (0..passed.len()).min_by(|&a, &b| passed[a].1.total_cmp(&passed[b].1))?;
    let (db, ms) = passed[fastest];
    (0..passed.len())
        .filter(|&i| passed[i].1 <= ms * 1.05 && passed[i].0 >= db + MORE_EXACT_DB)
        .max_by(|&a, &b| passed[a].0.total_cmp(&passed[b].0))
        .or(Some(fastest))
}

/// The CUDA settings a variant's session runs with: the config's, with TF32 on if the variant
/// needs it and NHWC convolutions if its fused normalisations work channels last.
fn cuda_for(cuda: CudaOptions, device: Device, variant: &str) -> CudaOptions {
    let c = candidates(device).into_iter().find(|c| c.name == variant);
    CudaOptions {
        tf32: cuda.tf32 || c.is_some_and(|c| c.tf32),
        prefer_nhwc: cuda.prefer_nhwc || c.is_some_and(|c| c.rewrites.channels_last),
        ..cuda
    }
}

/// What was chosen, and why.
#[derive(Clone, Debug)]
pub struct Choice {
    pub path: PathBuf,
    pub variant: String,
    /// Worst PSNR over the sample frames (None for the original).
    pub psnr_db: Option<f64>,
}

/// Decisions already made in this process, by (model hash, device kind): every pipeline of a
/// multi-GPU worker would otherwise gate the same file again.
type DecisionKey = (String, bool, PathBuf, String);
static DECIDED: Mutex<Option<HashMap<DecisionKey, Choice>>> = Mutex::new(None);

/// Loads the best accepted variant of `cfg.path` for `device`.
pub fn load_best(
    env: &ort::environment::Environment,
    cfg: &ModelConfig,
    threads: usize,
    device: Device,
    optimize_mode: &str,
    cache_dir: &Path,
    cuda: CudaOptions,
) -> Result<(Stylizer, Choice), ModelError> {
    // Loads a file with the settings its variant needs.
    let load = |path: &Path, variant: &str| {
        let o = cuda_for(cuda, device, variant);
        Stylizer::load_on(env, cfg, threads, device, path, o)
    };
    let original = Choice {
        path: cfg.path.clone(),
        variant: "original".into(),
        psnr_db: None,
    };
    if optimize_mode == "off" {
        return Ok((load(&cfg.path, "original")?, original));
    }
    let bytes = std::fs::read(&cfg.path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ModelError::NotFound(cfg.path.clone()),
        _ => ModelError::Load {
            path: cfg.path.clone(),
            detail: e.to_string(),
        },
    })?;
    let hash = hex(&Sha256::digest(&bytes));
    let key = (
        hash.clone(),
        matches!(device, Device::Cuda(_)),
        cache_dir.to_path_buf(),
        optimize_mode.to_string(),
    );
    let known = DECIDED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|m| m.get(&key).cloned());
    if let Some(choice) = known {
        let s = load(&choice.path, &choice.variant)?;
        return Ok((s, choice));
    }
    // Decided before by a process sharing this cache: every pipeline and every worker process
    // on the machine then runs the same variant, so a job's frames agree wherever they were
    // made (the speed check alone could flip between processes on a loaded machine).
    let kind = match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
    };
    let decision = cache_dir.join(format!(
        "{}-{kind}-{optimize_mode}-v{OPTIMIZER_VERSION}.choice",
        &hash[..16]
    ));
    let variant_path =
        |name: &str| cache_dir.join(format!("{}-{name}-v{OPTIMIZER_VERSION}.onnx", &hash[..16]));
    let recorded = |decision: &Path| -> Option<Choice> {
        let text = std::fs::read_to_string(decision).ok()?;
        let mut lines = text.lines();
        let variant = lines.next()?.trim().to_string();
        let psnr_db = lines.next().and_then(|l| l.trim().parse().ok());
        let path = if variant == "original" {
            cfg.path.clone()
        } else {
            variant_path(&variant)
        };
        path.is_file().then_some(Choice {
            path,
            variant,
            psnr_db,
        })
    };
    let remember = |choice: &Choice| {
        DECIDED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(HashMap::new)
            .insert(key.clone(), choice.clone());
    };
    if let Some(choice) = recorded(&decision) {
        match load(&choice.path, &choice.variant) {
            Ok(s) => {
                info!(variant = %choice.variant, decision = %decision.display(), "model variant decided earlier");
                remember(&choice);
                return Ok((s, choice));
            }
            Err(e) => {
                warn!(error = %e, decision = %decision.display(), "the recorded model variant does not load; deciding again")
            }
        }
    }
    // The reference: the original model on the same device, in full fp32.
    let fp32 = CudaOptions {
        tf32: false,
        ..cuda
    };
    let mut reference = Stylizer::load_on(env, cfg, threads, device, &cfg.path, fp32)?;
    let style = reference.default_style();
    let samples = sample_frames();
    let mut expected = Vec::with_capacity(samples.len());
    for f in &samples {
        expected.push(reference.stylize(f, &style)?);
    }
    let io = ImageIo {
        input: cfg.input.clone(),
        output: cfg.output.clone(),
        value_range: cfg.value_range,
    };
    // Candidates must also be faster than the original on this device: the fused normalisation
    // is 10 % faster on 2 cores but 20 % slower on 32 (ONNX Runtime's CPU kernel for it runs
    // channels one after another), measured in BENCHMARKS.md.
    // With optimize = "on" the quality gate alone decides, and nothing is timed.
    let speed_check = optimize_mode == "auto";
    let (pw, ph) = timing_size(device);
    let probe = crate::inference::gradient(pw, ph);
    let mut reference_ms: Option<f64> = None; // timed once, when a candidate first needs it
    let mut accepted = Vec::new(); // (session, choice, ms per probe frame)
    let pinned = candidates(device).iter().any(|c| c.name == optimize_mode);
    if !pinned && !["auto", "on"].contains(&optimize_mode) {
        // A variant another device offers (fp16 or TF32 on a CPU worker sharing a GPU
        // worker's config): this device's own candidates, gated, instead.
        let offered: Vec<&str> = candidates(device).iter().map(|c| c.name).collect();
        warn!(optimize = optimize_mode, %device, offered = ?offered, "this model variant is not offered on this device; choosing among its own");
    }
    for c in candidates(device) {
        if pinned && c.name != optimize_mode {
            continue;
        }
        let path = variant_path(c.name);
        if let Err(e) = write_variant(&bytes, &io, c, &path) {
            warn!(variant = c.name, error = %e, "model rewrite skipped");
            continue;
        }
        let mut s = match load(&path, c.name) {
            Ok(s) => s,
            Err(e) => {
                warn!(variant = c.name, error = %e, "rewritten model did not load; trying the next");
                continue;
            }
        };
        let mut each = Vec::with_capacity(samples.len());
        for (f, want) in samples.iter().zip(&expected) {
            let got = s.stylize(f, &style)?;
            each.push(psnr(&want.data, &got.data));
        }
        let worst = each.iter().copied().fold(f64::INFINITY, f64::min);
        let each = format!("{each:.1?}");
        if worst < c.min_psnr_db {
            warn!(variant = c.name, psnr_db = worst, per_sample_db = %each, min_psnr_db = c.min_psnr_db, %device, "rewritten model rejected by the quality gate");
            continue;
        }
        let mut ms = 0.0; // not timed with optimize = "on" or a pinned variant
        if speed_check {
            let base = match reference_ms {
                Some(v) => v,
                None => *reference_ms.insert(time_ms(&mut reference, &probe, &style)?),
            };
            ms = time_ms(&mut s, &probe, &style)?;
            if ms >= base {
                warn!(variant = c.name, ms, reference_ms = base, %device, "rewritten model is not faster here; not used");
                continue;
            }
            info!(variant = c.name, ms, reference_ms = base, %device, "rewritten model is faster here");
        }
        info!(variant = c.name, psnr_db = worst, per_sample_db = %each, %device, path = %path.display(), "rewritten model passes");
        accepted.push((
            s,
            Choice {
                path,
                variant: c.name.into(),
                psnr_db: Some(worst),
            },
            ms,
        ));
        if !speed_check {
            break; // the first (fastest by design) that passes the gate
        }
    }
    let timed: Vec<(f64, f64)> = accepted
        .iter()
        .map(|(_, c, ms)| (c.psnr_db.unwrap_or(f64::INFINITY), *ms))
        .collect();
    let (stylizer, choice) = match pick(&timed).map(|i| accepted.swap_remove(i)) {
        Some((s, c, ms)) => {
            info!(variant = %c.variant, ms, psnr_db = ?c.psnr_db, %device, "rewritten model chosen");
            (s, c)
        }
        None => (reference, original),
    };
    // First decision wins: written whole under a temporary name, then hard-linked into place
    // (fails if another process got there first, whose decision is then adopted).
    let tmp = decision.with_extension(format!("tmp{}", std::process::id()));
    let text = format!(
        "{}\n{}\n",
        choice.variant,
        choice.psnr_db.map(|p| p.to_string()).unwrap_or_default()
    );
    let linked = std::fs::create_dir_all(cache_dir)
        .and_then(|_| std::fs::write(&tmp, text))
        .and_then(|_| std::fs::hard_link(&tmp, &decision));
    let _ = std::fs::remove_file(&tmp);
    if linked.is_err() {
        if let Some(theirs) = recorded(&decision).filter(|t| t.variant != choice.variant) {
            info!(ours = %choice.variant, theirs = %theirs.variant, "another process decided first; using its model variant");
            let s = load(&theirs.path, &theirs.variant)?;
            remember(&theirs);
            return Ok((s, theirs));
        }
    }
    remember(&choice);
    Ok((stylizer, choice))
}

/// The cache directory for a model: the configured one, else `optimized/` beside the model.
pub fn cache_dir(configured: &Path, model: &Path) -> PathBuf {
    if configured.as_os_str().is_empty() {
        model
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("optimized")
    } else {
        configured.to_path_buf()
    }
}

fn write_variant(bytes: &[u8], io: &ImageIo, c: Candidate, path: &Path) -> Result<(), String> {
    if path.is_file() {
        return Ok(());
    }
    let (out, report) = optimize(bytes, io, c.rewrites).map_err(|e| e.to_string())?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Written under a unique name and renamed, so concurrent pipelines never read half a file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, &out).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    info!(variant = c.name, fused = report.fused_instance_norms, fp16_tensors = report.fp16_tensors,
        nodes_before = report.nodes_before, nodes_after = report.nodes_after, path = %path.display(), "model rewritten");
    Ok(())
}

/// The frame size variants are timed at: on a GPU the common 1280x720, because at 640x360 one
/// session's kernels are too small to tell TF32 from fp32 (2.26 against 2.23 ms on an H200,
/// where 1280x720 with 4 sessions runs 327 against 260 frames/s); on a CPU 640x360, which
/// ranks the variants alike at a quarter of the cost.
fn timing_size(device: Device) -> (u32, u32) {
    match device {
        Device::Cuda(_) => (1280, 720),
        Device::Cpu => (640, 360),
    }
}

/// Best of three timed runs (after one warm-up) of one frame, in ms.
fn time_ms(s: &mut Stylizer, f: &Frame, style: &[f32]) -> Result<f64, ModelError> {
    s.stylize(f, style)?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        s.stylize(f, style)?;
        best = best.min(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(best)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Peak signal-to-noise ratio of two 8-bit images (infinite when equal).
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let n = a.len().min(b.len()).max(1) as f64;
    let se: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum();
    if se == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0f64 * 255.0 / (se / n)).log10()
}

/// Sample frames with the structure real video has (smooth gradients, edges, texture, flat
/// areas) at an odd, non-multiple-of-4 size so padding and cropping are exercised too.
pub fn sample_frames() -> Vec<Frame> {
    let (w, h) = (318u32, 178u32);
    let mut frames = vec![crate::inference::gradient(w, h)];
    // Colour bars over a checkerboard.
    let mut bars = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let bar = (x * 8 / w) as u8;
            let check = ((x / 12 + y / 12) % 2) as u8;
            bars.extend_from_slice(&[
                if bar & 1 != 0 { 230 } else { 20 + 40 * check },
                if bar & 2 != 0 { 220 } else { 30 },
                if bar & 4 != 0 { 210 } else { 40 + 60 * check },
            ]);
        }
    }
    frames.push(Frame {
        pts: 0,
        width: w,
        height: h,
        data: bars,
        yuv: None,
    });
    // Noise (deterministic).
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let noise = (0..w * h * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect();
    frames.push(Frame {
        pts: 0,
        width: w,
        height: h,
        data: noise,
        yuv: None,
    });
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_of_equal_and_of_off_by_one() {
        assert_eq!(psnr(&[1, 2, 3], &[1, 2, 3]), f64::INFINITY);
        let a = vec![100u8; 1000];
        let b = vec![101u8; 1000];
        assert!((psnr(&a, &b) - 48.13).abs() < 0.01);
    }

    #[test]
    fn gpu_tries_reduced_precision_first_and_cpu_never() {
        let gpu = candidates(Device::Cuda(0));
        let by = |name: &str| gpu.iter().find(|c| c.name == name).unwrap();
        // framewise's fused normalisation: channels last in fp16 (tensor cores need the TF32
        // switch), then NCHW in TF32.
        let s2d = by("fused-u8-fp16-norm-nhwc-s2d");
        assert!(s2d.rewrites.space_to_depth && s2d.rewrites.channels_last && s2d.tf32);
        assert_eq!(gpu[0].name, s2d.name);
        let half = by("fused-u8-fp16-norm-nhwc");
        assert!(half.rewrites.fp16 && half.rewrites.norm_op && half.rewrites.channels_last);
        assert!(half.tf32 && gpu[1].name == half.name && !half.rewrites.space_to_depth);
        let r = by("fused-u8-tf32-norm");
        assert!(r.tf32 && r.rewrites.norm_op && !r.rewrites.channels_last);
        assert!(by("fused-u8-fp16").rewrites.fp16 && !by("fused-u8-fp16").rewrites.norm_op);
        // All feed whole pixels to the first convolution; the exact one, last, runs as published.
        let (exact, rest) = gpu.split_last().unwrap();
        assert!(rest.iter().all(|c| c.rewrites.pixels_into_first_conv));
        assert!(!exact.tf32 && !exact.rewrites.pixels_into_first_conv);
        let cpu = candidates(Device::Cpu);
        assert!(cpu
            .iter()
            .all(|c| !c.rewrites.fp16 && !c.tf32 && !c.rewrites.norm_op));
        // The CPU's own ops first (integer first convolution, narrow ones) where their vector
        // paths run, then plain fp32.
        let names: Vec<_> = cpu.iter().map(|c| c.name).collect();
        if crate::conv_op::vnni_available() {
            assert_eq!(names, ["fused-u8-i16conv", "fused-u8"]);
            assert!(cpu[0].rewrites.int_first_conv && cpu[0].rewrites.narrow_convs);
        } else {
            assert_eq!(names, ["fused-u8"]);
        }
        let last = cpu.last().unwrap();
        assert!(!last.rewrites.int_first_conv && !last.rewrites.narrow_convs);
        let o = CudaOptions::default();
        let tf32 = cuda_for(o, Device::Cuda(0), "fused-u8-tf32");
        assert!(tf32.tf32 && !tf32.prefer_nhwc);
        assert!(cuda_for(o, Device::Cuda(0), "fused-u8-fp16-norm-nhwc").prefer_nhwc);
        assert!(cuda_for(o, Device::Cuda(0), "fused-u8-fp16-norm-nhwc-s2d").prefer_nhwc);
        assert!(!cuda_for(o, Device::Cuda(0), "fused-u8").tf32);
        assert!(!cuda_for(o, Device::Cpu, "fused-u8-tf32").tf32);
    }

    #[test]
    fn picks_the_fastest_unless_a_more_exact_one_is_as_fast() {
        assert_eq!(pick(&[]), None);
        // fp16 (45 dB) much faster than fp32 (85 dB): fp16.
        assert_eq!(pick(&[(45.0, 2.0), (85.0, 4.0)]), Some(0));
        // fp16 no faster (measured on an H200): the exact one.
        assert_eq!(pick(&[(45.0, 6.9), (85.0, 6.7)]), Some(1));
        assert_eq!(pick(&[(45.0, 6.7), (85.0, 6.9)]), Some(1));
        // Without timing (optimize = "on"): all 0 ms, the most exact.
        assert_eq!(pick(&[(85.0, 0.0)]), Some(0));
        // Two fp16 variants 0.1 dB apart: the faster, even within 5 %.
        assert_eq!(pick(&[(45.7, 2.25), (45.6, 2.18), (54.2, 4.1)]), Some(1));
        // Several more exact ones within 5 %: the most exact of them.
        assert_eq!(pick(&[(45.0, 2.0), (50.0, 2.05), (85.0, 2.08)]), Some(2));
    }

    #[test]
    fn every_variant_can_be_pinned_by_name_in_the_config() {
        for d in [Device::Cpu, Device::Cuda(0)] {
            for c in candidates(d) {
                assert!(
                    framewise_common::config::OPTIMIZE_MODES.contains(&c.name),
                    "{}",
                    c.name
                );
            }
        }
    }

    #[test]
    fn cache_sits_beside_the_model_unless_configured() {
        assert_eq!(
            cache_dir(Path::new(""), Path::new("models/m.onnx")),
            PathBuf::from("models/optimized")
        );
        assert_eq!(
            cache_dir(Path::new("/var/cache/fw"), Path::new("models/m.onnx")),
            PathBuf::from("/var/cache/fw")
        );
    }
}
