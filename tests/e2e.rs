//! End to end: the real `framewise run` (coordinator actors, sled, loopback
//! gRPC, worker processes' code) on generated clips and the real demo clip,
//! checked with GStreamer and the model applied directly.

mod common;
use common::*;
use std::path::Path;

/// Runs `framewise run` and checks everything a user relies on.
fn check_run(input: &Path, out: &Path, args: &[&str], style: usize) {
    let s = style.to_string();
    let mut extra = vec!["--style", &s];
    extra.extend_from_slice(args);
    let o = framewise_run(input, out, &extra, &[]);
    assert!(o.status.success(), "framewise run failed: {}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(out.to_str().unwrap()) && stdout.contains("frames/s"),
        "summary line: {stdout}"
    );

    let src = probe_ok(input);
    let dst = probe_ok(out);
    assert_eq!(
        dst.frame_pts.len(),
        src.frame_pts.len(),
        "every frame exactly once"
    );
    assert_eq!((dst.width, dst.height), (src.width, src.height));
    let fd = src.frame_duration_ns() as i64;
    assert!(
        (dst.duration_ns as i64 - src.duration_ns as i64).abs() <= fd,
        "duration {} vs {}",
        dst.duration_ns,
        src.duration_ns
    );
    for (a, b) in src.frame_pts.iter().zip(&dst.frame_pts) {
        let (a, b) = (
            *a as i64 + src.running_offset_ns,
            *b as i64 + dst.running_offset_ns,
        );
        assert!(
            (a - b).abs() <= fd / 2,
            "playback timestamps kept: {a} vs {b}"
        );
    }
    assert_eq!(dst.audio_streams, src.audio_streams, "audio streams kept");
    let (sa, da) = (audio_packets(input), audio_packets(out));
    assert_eq!(sa.len(), da.len(), "audio packet count");
    assert!(sa == da, "audio packets copied byte for byte");

    // A frame from the middle really went through the model.
    let mid = src.frame_pts.len() / 2;
    let max_size: Option<u32> = args
        .windows(2)
        .find(|w| w[0] == "--max-size")
        .map(|w| w[1].parse().unwrap());
    let got = frame_at(out, mid, None);
    let source = frame_at(input, mid, None);
    let want = match max_size {
        None => stylize_direct(&source, style),
        Some(m) => {
            // Inference on the scaled-down copy, scaled back like the product does.
            let small = frame_at(
                input,
                mid,
                Some(framewise_worker::segment::inference_size(
                    (src.width, src.height),
                    m,
                )),
            );
            let styled = stylize_direct(&small, style);
            common_scale(&styled, src.width, src.height)
        }
    };
    let p_model = psnr(&got, &want);
    let p_source = psnr(&got, &source);
    eprintln!(
        "{}: luma PSNR vs model applied directly {p_model:.1} dB, vs source {p_source:.1} dB",
        input.display()
    );
    assert!(
        p_model >= 30.0,
        "output vs model applied directly: {p_model:.1} dB"
    );
    assert!(
        p_source < 20.0,
        "output must clearly differ from the source: {p_source:.1} dB"
    );
    assert!(partial_files(out.parent().unwrap()).is_empty());
}

/// Scales a frame with GStreamer's videoscale (what the encoder does for --max-size).
fn common_scale(
    f: &framewise_worker::media::Frame,
    w: u32,
    h: u32,
) -> framewise_worker::media::Frame {
    use framewise_worker::media::encode::{EncoderSettings, Geometry, SegmentEncoder};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("one.mp4");
    let enc = SegmentEncoder::create(
        &p,
        Geometry {
            in_size: (f.width, f.height),
            out_size: (w, h),
            fps: (25, 1),
        },
        &EncoderSettings {
            crf: 0,
            preset: "ultrafast".into(),
            threads: 0,
        },
    )
    .unwrap();
    enc.push(f.clone(), 0, 40_000_000).unwrap();
    enc.finish(std::time::Duration::from_secs(30)).unwrap();
    frame_at(&p, 0, None)
}

#[test]
fn clip_with_audio_two_workers_many_segments() {
    let d = tempfile::tempdir().unwrap();
    let (i, o) = (d.path().join("in.mp4"), d.path().join("out.mp4"));
    make_clip(&i, 160, 96, 25, true);
    check_run(&i, &o, &["--workers", "2", "--segment-seconds", "0.3"], 3);
}

#[test]
fn odd_size_without_audio() {
    let d = tempfile::tempdir().unwrap();
    let (i, o) = (d.path().join("in.mp4"), d.path().join("out.mp4"));
    make_clip(&i, 318, 178, 25, false);
    check_run(&i, &o, &["--workers", "1", "--segment-seconds", "0.5"], 7);
}

#[test]
fn twenty_seconds_with_audio() {
    let d = tempfile::tempdir().unwrap();
    let (i, o) = (d.path().join("in.mp4"), d.path().join("out.mp4"));
    make_clip(&i, 96, 64, 500, true);
    check_run(&i, &o, &["--workers", "2", "--segment-seconds", "4"], 11);
}

#[test]
fn real_demo_clip_scaled_down() {
    let d = tempfile::tempdir().unwrap();
    let o = d.path().join("bunny.mp4");
    let i = repo().join("media/bigbuckbunny.mp4");
    check_run(
        &i,
        &o,
        &[
            "--workers",
            "2",
            "--max-size",
            "160",
            "--segment-seconds",
            "1",
        ],
        19,
    );
}

#[test]
fn truly_odd_dimensions_keep_full_chroma() {
    let d = tempfile::tempdir().unwrap();
    let (i, o) = (d.path().join("in.mp4"), d.path().join("out.mp4"));
    // 4:2:0 cannot hold 161x97, so the source is 4:4:4 and so is the output.
    run_pipeline(&format!(
        "videotestsrc num-buffers=20 pattern=ball ! video/x-raw,width=161,height=97,framerate=25/1 ! videoconvert \
         ! video/x-raw,format=Y444 ! x264enc speed-preset=ultrafast ! h264parse ! mp4mux ! filesink location={}",
        i.display()
    ));
    check_run(&i, &o, &["--workers", "1", "--segment-seconds", "0.4"], 5);
}

/// A variable-frame-rate clip (as phones record): frames 40 ms apart, then 120 ms, then 80 ms,
/// pushed with their own timestamps through appsrc (caps framerate 0/1) into x264 and MP4.
fn make_vfr_clip(path: &Path) -> usize {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    use gstreamer_app as gst_app;
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time ! videoconvert ! x264enc speed-preset=ultrafast key-int-max=10 \
         ! h264parse ! mp4mux ! filesink location={}",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let (w, h) = (96usize, 64usize);
    src.set_caps(Some(
        &gst::Caps::builder("video/x-raw")
            .field("format", "RGB")
            .field("width", w as i32)
            .field("height", h as i32)
            .field("framerate", gst::Fraction::new(0, 1))
            .build(),
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    let gaps_ms = [40u64, 40, 40, 120, 120, 80, 80, 40, 200, 40];
    let mut pts = 0u64;
    let n = 36;
    for i in 0..n {
        let mut data = vec![0u8; w * h * 3];
        for (k, px) in data.chunks_mut(3).enumerate() {
            let (x, y) = (k % w, k / w);
            px[0] = ((x * 2 + i * 7) % 256) as u8;
            px[1] = ((y * 3 + i * 5) % 256) as u8;
            px[2] = ((x + y + i * 11) % 256) as u8;
        }
        let gap = gaps_ms[i % gaps_ms.len()];
        let mut buf = gst::Buffer::from_mut_slice(data);
        {
            let b = buf.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(pts));
            b.set_duration(gst::ClockTime::from_mseconds(gap));
        }
        src.push_buffer(buf).unwrap();
        pts += gap;
    }
    src.end_of_stream().unwrap();
    wait_eos(&pipeline, "writing the VFR clip");
    n
}

/// A variable-frame-rate input keeps every frame's own time. (It used to fail at assembly:
/// qtdemux reported 1000000000/1 fps for this clip, x264 and mp4mux took it as the stream's
/// rate and wrote chunks with a 10^11 timescale that nothing could play; the probe now
/// checks the container's rate against the frames' spacing.)
#[test]
fn variable_frame_rate_keeps_every_frame_time() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("vfr.mp4");
    let pushed = make_vfr_clip(&input);
    let src = probe_ok(&input);
    // mp4mux keeps all but the last frame readable here (ffprobe also reads 35 of 36).
    let n = src.frame_pts.len();
    assert!(
        n + 1 >= pushed && n > 30,
        "{n} of {pushed} frames in the clip"
    );
    let gaps: std::collections::BTreeSet<u64> = src
        .frame_pts
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1_000_000)
        .collect();
    assert!(gaps.len() >= 3, "the clip really is VFR: gaps {gaps:?} ms");
    let out = d.path().join("out.mp4");
    check_run(&input, &out, &["--max-size", "64"], 0);
    // Exactly the same per-frame times, not just within half a frame.
    let dst = probe_ok(&out);
    let shift = |p: &framewise_worker::media::probe::Probe, i: usize| {
        p.frame_pts[i] as i64 + p.running_offset_ns
    };
    for i in 0..n {
        assert!(
            (shift(&src, i) - shift(&dst, i)).abs() <= 1_000_000,
            "frame {i}: {} vs {}",
            shift(&src, i),
            shift(&dst, i)
        );
    }
}

/// Sets the display matrix of the MP4's video track (the first `tkhd` with a size) to a quarter
/// turn clockwise, as phones write it (GStreamer 1.22's mp4mux cannot write one).
fn tag_rotate_90(path: &Path) {
    let mut data = std::fs::read(path).unwrap();
    let mut from = 0;
    loop {
        let at = from
            + data[from..]
                .windows(4)
                .position(|w| w == b"tkhd")
                .expect("a video tkhd box");
        let version = data[at + 4];
        // From the box type: version/flags 4, times and ids (v0: 20, v1: 32), reserved 8,
        // layer/group/volume/reserved 8; then the 3x3 matrix and the 16.16 width and height.
        let matrix = at + 4 + 4 + if version == 1 { 32 } else { 20 } + 8 + 8;
        let width = u32::from_be_bytes(data[matrix + 36..matrix + 40].try_into().unwrap());
        if width == 0 {
            from = at + 4; // the audio track's
            continue;
        }
        let m: [u32; 9] = [0, 0x0001_0000, 0, 0xFFFF_0000, 0, 0, 0, 0, 0x4000_0000];
        for (i, v) in m.iter().enumerate() {
            data[matrix + 4 * i..matrix + 4 * i + 4].copy_from_slice(&v.to_be_bytes());
        }
        break;
    }
    std::fs::write(path, data).unwrap();
}

/// A frame turned a quarter clockwise.
fn rotate_cw(f: &framewise_worker::media::Frame) -> framewise_worker::media::Frame {
    let (w, h) = (f.width as usize, f.height as usize);
    let mut data = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            // (x, y) goes to column h-1-y, row x of the h-wide result.
            let (nx, ny) = (h - 1 - y, x);
            data[(ny * h + nx) * 3..(ny * h + nx) * 3 + 3]
                .copy_from_slice(&f.data[(y * w + x) * 3..(y * w + x) * 3 + 3]);
        }
    }
    framewise_worker::media::Frame {
        pts: f.pts,
        width: f.height,
        height: f.width,
        data,
        yuv: None,
    }
}

/// Phone video stored sideways with a rotation tag is stylized upright: decoded frames are the
/// stored ones turned as the tag says, and the output (no tag needed) has the upright size,
/// every frame, its times and the audio, and the model's look.
#[test]
fn a_rotated_phone_clip_comes_out_upright() {
    let d = tempfile::tempdir().unwrap();
    let stored = d.path().join("stored.mp4");
    make_clip(&stored, 96, 64, 50, true);
    let input = d.path().join("phone.mp4");
    std::fs::copy(&stored, &input).unwrap();
    tag_rotate_90(&input);
    let p = probe_ok(&input);
    assert_eq!((p.width, p.height), (64, 96), "the upright size");
    let upright = frame_at(&input, 10, None);
    let turned = rotate_cw(&frame_at(&stored, 10, None));
    assert_eq!((upright.width, upright.height), (64, 96));
    let db = psnr(&upright, &turned);
    assert!(
        db > 60.0,
        "decoded frames are the stored ones turned: {db:.1} dB"
    );
    let out = d.path().join("out.mp4");
    check_run(&input, &out, &["--max-size", "64"], 3);
    let o = probe_ok(&out);
    assert_eq!((o.width, o.height), (64, 96));
}
