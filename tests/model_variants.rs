//! The optimised model path on the real model and the real ONNX Runtime: the rewritten model is
//! accepted by its quality gate, cached by content hash, gives the same pictures as the original
//! on real video frames, and a broken cache entry falls back instead of failing the worker.

mod common;

use common::{psnr, repo};
use framewise_common::config::ModelConfig;
use framewise_common::device::Device;
use framewise_worker::inference::{gradient, runtime, CudaOptions, Stylizer};
use framewise_worker::variant::{load_best, Choice};

fn cfg() -> ModelConfig {
    ModelConfig {
        path: repo().join("models/multistyle26.onnx"),
        ..Default::default()
    }
}

fn lib() -> std::path::PathBuf {
    repo().join(".deps/onnxruntime/libonnxruntime.so.1.32.0")
}

fn best(cache: &std::path::Path, mode: &str) -> (Stylizer, Choice) {
    load_best(
        runtime(&lib()).unwrap(),
        &cfg(),
        1,
        Device::Cpu,
        mode,
        cache,
        CudaOptions::default(),
    )
    .unwrap()
}

#[test]
fn cpu_gets_the_integer_first_convolution_model_and_the_same_pictures() {
    let cache = tempfile::tempdir().unwrap();
    let (mut fast, choice) = best(cache.path(), "on");
    // framewise's own CPU ops where their vector paths run (AVX-512 VNNI), else fused-u8.
    let first = if framewise_worker::conv_op::vnni_available() {
        "fused-u8-i16conv"
    } else {
        "fused-u8"
    };
    assert_eq!(choice.variant, first, "{choice:?}");
    let gate = choice.psnr_db.expect("a gated variant has a PSNR");
    assert!(gate >= 40.0, "gate PSNR {gate}");
    assert!(choice.path.starts_with(cache.path()), "{choice:?}");
    let name = choice
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.contains(&format!("-{first}-v")) && name.ends_with(".onnx") && name.len() > 30,
        "{name}"
    );

    // A real frame (odd size, so the padding path runs) through both models.
    let clip = cache.path().join("clip.mp4");
    common::make_clip(&clip, 322, 181, 3, false);
    let frame = common::frame_at(&clip, 0, None);
    let mut original = Stylizer::load(runtime(&lib()).unwrap(), &cfg(), 1).unwrap();
    for style in [0usize, 7, 25] {
        let mut w = vec![0.0f32; 26];
        w[style] = 1.0;
        let a = original.stylize(&frame, &w).unwrap();
        let b = fast.stylize(&frame, &w).unwrap();
        assert_eq!((b.width, b.height), (322, 181));
        let p = psnr(&a, &b);
        assert!(p >= 45.0, "style {style}: rewritten vs original {p:.1} dB");
    }

    // The second pipeline of the process reuses the decision and the cached file.
    let (_, again) = best(cache.path(), "on");
    assert_eq!(again.path, choice.path);
    let files: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".onnx"))
        .collect();
    assert_eq!(files.len(), 1, "one cached model, no temporary files left");
}

#[test]
fn optimize_off_runs_the_file_as_is() {
    let cache = tempfile::tempdir().unwrap();
    let (mut m, choice) = best(cache.path(), "off");
    assert_eq!(choice.variant, "original");
    assert_eq!(choice.path, cfg().path);
    assert!(m.stylize(&gradient(64, 36), &m.default_style()).is_ok());
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
}

#[test]
fn a_broken_cache_entry_falls_back_to_the_next_candidate() {
    let cache = tempfile::tempdir().unwrap();
    // Find the name the cache would use, then plant garbage under it.
    let probe_dir = tempfile::tempdir().unwrap();
    let (_, c) = best(probe_dir.path(), "on");
    let planted = cache.path().join(c.path.file_name().unwrap());
    std::fs::write(&planted, b"this is not a model").unwrap();
    let (mut m, choice) = best(cache.path(), "on");
    // The planted file is the first candidate's; the next one (plain fused where the CPU ops
    // are offered, else the original) comes instead.
    let next = if c.variant == "fused-u8-i16conv" {
        "fused-u8"
    } else {
        "original"
    };
    assert_eq!(choice.variant, next, "{choice:?}");
    assert!(m.stylize(&gradient(64, 36), &m.default_style()).is_ok());
}

#[test]
fn asking_for_a_missing_gpu_is_a_clear_error() {
    if !framewise_common::device::visible_gpus().is_empty() {
        return; // this machine has a GPU: covered by the GPU benchmark instead
    }
    let e = framewise_common::device::resolve(
        framewise_common::device::DeviceSetting::Cuda,
        None,
        &framewise_common::device::visible_gpus(),
    )
    .unwrap_err();
    assert!(e.contains("no GPU found"), "{e}");
}

#[test]
fn a_batch_gives_the_same_frames_as_one_at_a_time() {
    let cache = tempfile::tempdir().unwrap();
    let (mut m, _) = best(cache.path(), "on");
    m.set_max_batch(3);
    assert_eq!(m.max_batch(), 3, "the rewritten model takes a batch");
    let clip = cache.path().join("clip.mp4");
    common::make_clip(&clip, 322, 181, 3, false);
    let frames: Vec<_> = (0..3).map(|i| common::frame_at(&clip, i, None)).collect();
    let mut w = vec![0.0f32; 26];
    w[11] = 1.0;
    let batched = m.stylize_batch(&frames, &w).unwrap();
    assert_eq!(batched.len(), 3);
    for (k, f) in frames.iter().enumerate() {
        let one = m.stylize(f, &w).unwrap();
        assert_eq!(batched[k].pts, f.pts, "frame {k} keeps its timestamp");
        let worst = one
            .data
            .iter()
            .zip(&batched[k].data)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(
            worst <= 1,
            "frame {k}: batched differs from single by {worst} levels"
        );
    }
    // The published model has a fixed batch of 1: it never batches.
    let mut original = Stylizer::load(runtime(&lib()).unwrap(), &cfg(), 1).unwrap();
    original.set_max_batch(4);
    assert_eq!(original.max_batch(), 1);
    assert_eq!(original.stylize_batch(&frames, &w).unwrap().len(), 3);
}

/// The fused uint8 rewrite (the base the variants build on).
fn fused_u8() -> framewise_worker::optimize::Rewrites {
    framewise_worker::optimize::Rewrites {
        fuse_instance_norm: true,
        uint8_io: true,
        ..Default::default()
    }
}

/// The real model with rewrites `r`, written to `dir/name` and loaded on the CPU; its report.
fn load_rewritten(
    dir: &std::path::Path,
    name: &str,
    r: framewise_worker::optimize::Rewrites,
) -> (Stylizer, framewise_worker::optimize::Report) {
    use framewise_worker::optimize::{optimize, ImageIo};
    let bytes = std::fs::read(&cfg().path).unwrap();
    let io = ImageIo {
        input: "image".into(),
        output: "stylized".into(),
        value_range: [0.0, 1.0],
    };
    let (b, report) = optimize(&bytes, &io, r).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, b).unwrap();
    let s = Stylizer::load_on(
        runtime(&lib()).unwrap(),
        &cfg(),
        1,
        Device::Cpu,
        &p,
        CudaOptions::default(),
    )
    .unwrap();
    (s, report)
}

/// The fused uint8 rewrite against the same plus `more`, both run on the CPU on a frame of a
/// real clip (odd size `w`x`h`) and a gradient, with the style weights `style`: the PSNR of each
/// pair of pictures, and the second rewrite's report.
fn rewrite_pair(
    more: impl Fn(&mut framewise_worker::optimize::Rewrites),
    (w, h): (u32, u32),
    style: &[f32],
) -> (Vec<f64>, framewise_worker::optimize::Report) {
    let dir = tempfile::tempdir().unwrap();
    let mut r = fused_u8();
    let (mut a, _) = load_rewritten(dir.path(), "plain.onnx", r);
    more(&mut r);
    let (mut b, report) = load_rewritten(dir.path(), "changed.onnx", r);
    let clip = dir.path().join("clip.mp4");
    common::make_clip(&clip, w, h, 2, false);
    let mut db = Vec::new();
    for frame in [common::frame_at(&clip, 1, None), gradient(w - 34, h - 20)] {
        let (x, y) = (
            a.stylize(&frame, style).unwrap(),
            b.stylize(&frame, style).unwrap(),
        );
        assert_eq!(
            (x.width, x.height, x.data.len()),
            (y.width, y.height, y.data.len())
        );
        db.push(psnr(&x, &y));
    }
    (db, report)
}

#[test]
fn pixels_into_the_first_convolution_keep_the_pictures() {
    // The fp16 variant's input rewrite (the scaling to the model's range moved past the first
    // convolution) checked in fp32 on the CPU: same maths, so the same pictures.
    let mut w = vec![0.0f32; 26];
    w[3] = 1.0;
    let (db, report) = rewrite_pair(|r| r.pixels_into_first_conv = true, (130, 74), &w);
    assert!(report.pixels_into_first_conv, "{report:?}");
    assert!(db.iter().all(|&p| p >= 60.0), "{db:?} dB");
}

#[test]
fn framewise_norm_op_keeps_the_pictures() {
    // The normalisation, the style's scale and shift, its style mix, the ReLU and the next
    // reflect Pad as framewise's own op (norm_op.rs, here its CPU kernel) against ONNX
    // Runtime's ops: same maths, so the same pictures, at an odd size and with a style mix.
    let mut mix = vec![0.0f32; 26];
    mix[3] = 0.7;
    mix[20] = 0.3;
    let (db, report) = rewrite_pair(|r| r.norm_op = true, (131, 75), &mix);
    assert_eq!(report.norm_ops.fused, 18, "{report:?}");
    assert_eq!(report.norm_ops.with_pad, 9, "{report:?}");
    assert!(db.iter().all(|&p| p >= 60.0), "{db:?} dB");
}

#[test]
fn channels_last_norm_op_keeps_the_pictures() {
    // The fused op working channels last between transposes (the layout ONNX Runtime's NHWC
    // convolutions want): the same pictures as ONNX Runtime's own ops, at an odd size.
    let mut mix = vec![0.0f32; 26];
    mix[5] = 1.0;
    let (db, report) = rewrite_pair(
        |r| {
            r.norm_op = true;
            r.channels_last = true;
        },
        (97, 61),
        &mix,
    );
    // 18 normalisations and the 7 Pads left: after the skip connections and the input's
    // (framewise's ReflectPad).
    assert_eq!(report.channels_last_ops, 25, "{report:?}");
    // The six residual Adds, both nearest 2x Resizes and the Pads after them (7 Pads stay: the
    // input's, and those after the skip connections, which feed two ops).
    assert_eq!(report.norm_ops.with_residual, 6, "{report:?}");
    assert_eq!(report.norm_ops.with_upsample, 2, "{report:?}");
    assert_eq!(report.norm_ops.with_pad, 11, "{report:?}");
    assert!(db.iter().all(|&p| p >= 60.0), "{db:?} dB");
}

#[test]
fn half_channels_last_norm_op_runs_and_stays_close() {
    // fp16 convolutions with the op's half form (its CPU kernel here; GPUs run the half
    // kernels): it loads, and the pictures stay within the fp16 variants' 40 dB gate of fp32.
    let (db, report) = rewrite_pair(
        |r| {
            r.norm_op = true;
            r.channels_last = true;
            r.fp16 = true;
            r.pixels_into_first_conv = true;
        },
        (97, 61),
        &[0.0; 26].map(|_: f32| 1.0 / 26.0),
    );
    assert_eq!(report.channels_last_ops, 25, "{report:?}");
    assert!(
        report.fp16_tensors > 0 && report.pixels_into_first_conv,
        "{report:?}"
    );
    // The first convolution's shift (from the pixels rewrite) cancels in the normalisation.
    assert_eq!(report.norm_ops.shifts_dropped, 1, "{report:?}");
    assert!(db.iter().all(|&p| p >= 40.0), "{db:?} dB");
}

#[test]
fn space_to_depth_convolutions_keep_the_pictures() {
    // The two 9x9 convolutions as 5x5 ones on 2x2 blocks (written and read by framewise's
    // channels-last ops): exact in fp32, with odd and even sides (an odd side's extra block row
    // or column must be left out of the normalisation's statistics), and within the 40 dB gate
    // in fp16.
    let mut mix = vec![0.0f32; 26];
    mix[7] = 1.0;
    let s2d = |half: bool| {
        move |r: &mut framewise_worker::optimize::Rewrites| {
            r.norm_op = true;
            r.channels_last = true;
            r.space_to_depth = true;
            r.fp16 = half;
            r.pixels_into_first_conv = half;
        }
    };
    for size in [(97, 64), (96, 61)] {
        let (db, report) = rewrite_pair(s2d(false), size, &mix);
        assert_eq!(report.space_to_depth_convs, 2, "{report:?}");
        assert!(db.iter().all(|&p| p >= 60.0), "{size:?}: {db:?} dB");
    }
    let (db, report) = rewrite_pair(s2d(true), (97, 61), &mix);
    assert_eq!(report.space_to_depth_convs, 2, "{report:?}");
    assert!(db.iter().all(|&p| p >= 40.0), "{db:?} dB");
}

#[test]
fn integer_first_and_narrow_convolutions_keep_the_pictures() {
    // The CPU variant's own ops (conv_op.rs, narrow_conv_op.rs) against ONNX Runtime's: the
    // last two convolutions exactly (with the Pad and the upsampling they fold in), the first
    // with 16-bit weights, at odd and even sides, on a real frame and on the smooth gradient
    // whose normalisation amplifies any rounding (8-bit weights gave 27 dB there).
    let mut mix = vec![0.0f32; 26];
    mix[3] = 0.7;
    mix[20] = 0.3;
    let narrow = |r: &mut framewise_worker::optimize::Rewrites| r.narrow_convs = true;
    let (db, report) = rewrite_pair(narrow, (131, 75), &mix);
    assert_eq!(report.narrow_convs, 2, "{report:?}");
    assert!(db.iter().all(|&p| p >= 60.0), "narrow: {db:?} dB");
    for size in [(131, 75), (96, 64)] {
        let (db, report) = rewrite_pair(
            |r| {
                r.int_first_conv = true;
                r.narrow_convs = true;
            },
            size,
            &mix,
        );
        assert!(report.int_first_conv, "{report:?}");
        // The first normalisation goes along into framewise's op; the others stay ONNX's.
        assert_eq!(report.norm_ops.fused, 1, "{report:?}");
        assert!(db.iter().all(|&p| p >= 50.0), "{size:?}: {db:?} dB");
    }
}

#[test]
fn the_first_convolutions_shift_cancels_in_the_norm_op() {
    // The pixels rewrite adds a per-channel shift after the first convolution; the fused
    // normalisation after it subtracts each channel's mean, so the shift is removed: the same
    // pictures in fp32.
    let (db, report) = rewrite_pair(
        |r| {
            r.norm_op = true;
            r.pixels_into_first_conv = true;
        },
        (97, 61),
        &[0.0; 26].map(|_: f32| 1.0 / 26.0),
    );
    assert!(report.pixels_into_first_conv, "{report:?}");
    assert_eq!(report.norm_ops.shifts_dropped, 1, "{report:?}");
    assert!(db.iter().all(|&p| p >= 60.0), "{db:?} dB");
}

#[test]
fn nv12_input_takes_rgb_and_nv12_alike() {
    // The image input that also takes NVDEC's NV12 (framewise's PixelsIn, its CPU kernel here):
    // RGB frames give the pictures of the model without it, and an NV12 frame gives the pictures
    // of the same frame converted to RGB first — a real frame and a gradient, at sizes the
    // model takes without padding (multiples of 4: NV12 goes to the model as it is).
    use framewise_worker::optimize::Rewrites;
    use framewise_worker::pixels_op::{rgb_to_nv12, Yuv, YuvMatrix};
    let dir = tempfile::tempdir().unwrap();
    let (mut plain, _) = load_rewritten(dir.path(), "plain.onnx", fused_u8());
    let (mut nv12, report) = load_rewritten(
        dir.path(),
        "nv12.onnx",
        Rewrites {
            nv12_input: true,
            ..fused_u8()
        },
    );
    assert!(report.nv12_input && nv12.takes_nv12(128, 72) && !plain.takes_nv12(128, 72));
    // Sides the model pads (not multiples of 4) are converted on the CPU instead.
    assert!(!nv12.takes_nv12(130, 72) && !nv12.takes_nv12(128, 74));
    let clip = dir.path().join("clip.mp4");
    common::make_clip(&clip, 128, 72, 2, false);
    let mut style = vec![0.0f32; 26];
    style[11] = 1.0;
    for frame in [common::frame_at(&clip, 1, None), gradient(96, 56)] {
        let (a, b) = (
            plain.stylize(&frame, &style).unwrap(),
            nv12.stylize(&frame, &style).unwrap(),
        );
        assert_eq!(a.data, b.data, "RGB through the new input");
        for yuv in [Yuv::default(), Yuv::new(YuvMatrix::Bt601, true)] {
            let (w, h) = (frame.width as usize, frame.height as usize);
            let f = framewise_worker::media::Frame {
                data: rgb_to_nv12(&frame.data, w, h, &yuv),
                yuv: Some(yuv),
                ..frame.clone()
            };
            let direct = nv12.stylize(&f, &style).unwrap();
            let converted = plain.stylize(&f, &style).unwrap();
            assert!(direct.yuv.is_none() && converted.yuv.is_none());
            assert_eq!(
                (direct.width, direct.height, direct.data.len()),
                (frame.width, frame.height, w * h * 3)
            );
            let db = psnr(&direct, &converted);
            assert!(db >= 60.0, "{w}x{h} {yuv:?}: {db} dB");
        }
    }
}

#[test]
fn a_segment_goes_through_the_nv12_input() {
    // A whole range (decode, inference, x264 chunks) with a model that takes NV12: the decoder
    // hands NV12 over (the size suits the model), the chunks hold every frame, and the pictures
    // are the model's: against the same range through the RGB-only model, whose colour
    // conversion is GStreamer's (49.5 dB apart on this clip; a misread chroma plane, tried by
    // hand, gave 21.1 dB).
    use framewise_worker::media::encode::EncoderSettings;
    use framewise_worker::optimize::Rewrites;
    use framewise_worker::segment::{run_segment, ChunkDone, SegmentControl, SegmentSpec};
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::sync::Mutex;
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    common::make_clip(&clip, 128, 72, 12, false);
    let p = common::probe_ok(&clip);
    let settings = EncoderSettings {
        crf: 18,
        preset: "ultrafast".into(),
        threads: 1,
    };
    let mut outputs = Vec::new();
    for (name, nv12) in [("rgb", false), ("nv12", true)] {
        let (mut model, _) = load_rewritten(
            dir.path(),
            &format!("{name}.onnx"),
            Rewrites {
                nv12_input: nv12,
                ..fused_u8()
            },
        );
        assert_eq!(model.takes_nv12(128, 72), nv12);
        let out = dir.path().join(name);
        let spec = SegmentSpec {
            input: &clip,
            output_dir: &out,
            start_frame: 0,
            frame_pts: &p.frame_pts,
            seek_ns: 0,
            chunk_frames: 6,
            size: (p.width, p.height),
            fps: (25, 1),
            frame_duration_ns: 40_000_000,
            max_size: 0,
            style: &[],
            encoder: &settings,
            nvdec: None,
        };
        let (progress, cancel, limit) = (
            AtomicU64::new(0),
            AtomicBool::new(false),
            AtomicU64::new(u64::MAX),
        );
        let chunks: Mutex<Vec<ChunkDone>> = Mutex::new(Vec::new());
        let record = |c: ChunkDone| chunks.lock().unwrap().push(c);
        let ctl = SegmentControl {
            progress: &progress,
            cancel: &cancel,
            limit: &limit,
            on_chunk: &record,
            decoder: None,
        };
        assert_eq!(run_segment(&spec, &mut model, &ctl).unwrap(), 12);
        let chunks = chunks.into_inner().unwrap();
        assert_eq!(chunks.len(), 2);
        let frames: Vec<_> = chunks
            .iter()
            .flat_map(|c| (0..6).map(|i| common::frame_at(&c.path, i, None)))
            .collect();
        assert!(frames.iter().all(|f| (f.width, f.height) == (128, 72)));
        outputs.push(frames);
    }
    for (a, b) in outputs[0].iter().zip(&outputs[1]) {
        let db = psnr(a, b);
        assert!(db >= 35.0, "frame at {}: {db:.1} dB", a.pts);
    }
}
