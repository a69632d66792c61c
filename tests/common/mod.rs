//! Helpers for the end-to-end tests: generated clips, the real binary, and
//! facts read back from its output with the same GStreamer the product uses.
#![allow(dead_code)]

pub mod azurite;
pub mod browser;
pub mod cluster;

use framewise_worker::inference::{runtime, Stylizer};
use framewise_worker::media::decode::{decode_range, DecodeRequest};
use framewise_worker::media::probe::{probe, Probe};
use framewise_worker::media::Frame;
use gstreamer as gst;
use gstreamer::prelude::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The package directory at run time (cargo sets it for tests): a build reused from a clone at
/// another path must read this checkout's files, not the path it was built at.
pub fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
}

pub fn repo() -> PathBuf {
    PathBuf::from(manifest_dir())
}

/// A generated test clip: moving ball, H.264 with B-frames and a keyframe every 12 frames, optional AAC tone.
pub fn make_clip(path: &Path, w: u32, h: u32, frames: u32, audio: bool) {
    gst::init().unwrap();
    let mut desc = format!(
        "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,width={w},height={h},framerate=25/1 \
         ! videoconvert ! x264enc speed-preset=ultrafast bframes=2 key-int-max=12 ! h264parse ! mp4mux name=m \
         ! filesink location={}",
        path.display()
    );
    if audio {
        desc.push_str(&format!(
            " audiotestsrc num-buffers={frames} samplesperbuffer=1920 wave=sine freq=440 \
             ! audio/x-raw,rate=48000,channels=2 ! avenc_aac ! aacparse ! m."
        ));
    }
    run_pipeline(&desc);
}

pub fn run_pipeline(desc: &str) {
    gst::init().unwrap();
    let p = gst::parse::launch(desc).unwrap();
    p.set_state(gst::State::Playing).unwrap();
    wait_eos(&p, desc);
}

/// Waits (up to 120 s) for a playing pipeline to finish, panics naming `what` on an error or
/// a timeout, then stops it.
pub fn wait_eos(p: &impl IsA<gst::Element>, what: &str) {
    let bus = p.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(120),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .unwrap_or_else(|| panic!("{what}: did not finish in 120 s"));
    if let gst::MessageView::Error(e) = msg.view() {
        panic!("{what}: {}", e.error());
    }
    p.set_state(gst::State::Null).unwrap();
}

/// `framewise run INPUT -o OUT --quiet EXTRA...`.
pub fn framewise_run(input: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec![
        "run",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    framewise(&args, env)
}

/// Runs the real `framewise` binary from the repository root.
pub fn framewise(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_framewise"));
    c.args(args).current_dir(repo());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("framewise runs")
}

pub fn probe_ok(path: &Path) -> Probe {
    probe(path, Duration::from_secs(60)).unwrap_or_else(|e| panic!("probe {}: {e}", path.display()))
}

/// The demuxed audio packets of every audio stream, in order (bytes as stored).
pub fn audio_packets(path: &Path) -> Vec<Vec<u8>> {
    gst::init().unwrap();
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc")
        .property("location", path.to_str().unwrap())
        .build()
        .unwrap();
    let parse = gst::ElementFactory::make("parsebin").build().unwrap();
    pipeline.add_many([&src, &parse]).unwrap();
    src.link(&parse).unwrap();
    let packets = Arc::new(Mutex::new(Vec::new()));
    let weak = pipeline.downgrade();
    let pk = packets.clone();
    parse.connect_pad_added(move |_, pad| {
        let pipeline = weak.upgrade().unwrap();
        let caps = pad.current_caps().unwrap();
        if caps.structure(0).unwrap().name().starts_with("audio/") {
            let pk = pk.clone();
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(b) = info.buffer() {
                    pk.lock()
                        .unwrap()
                        .push(b.map_readable().unwrap().as_slice().to_vec());
                }
                gst::PadProbeReturn::Ok
            });
        }
        let sink = gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .property("async", false)
            .build()
            .unwrap();
        pipeline.add(&sink).unwrap();
        sink.sync_state_with_parent().unwrap();
        pad.link(&sink.static_pad("sink").unwrap()).unwrap();
    });
    pipeline.set_state(gst::State::Playing).unwrap();
    wait_eos(&pipeline, &format!("reading audio of {}", path.display()));
    let v = packets.lock().unwrap().clone();
    v
}

/// Decodes frame `index` (presentation order) of a video.
pub fn frame_at(path: &Path, index: usize, size: Option<(u32, u32)>) -> Frame {
    let p = probe_ok(path);
    let mut out = None;
    let req = DecodeRequest {
        path,
        frame_pts: &p.frame_pts[index..=index],
        seek_ns: 0,
        size,
        stall_timeout: Duration::from_secs(60),
        threads: 0,
        nvdec: None,
        pool: None,
        nv12: false,
    };
    decode_range(&req, &mut |f| {
        out = Some(f);
        false
    })
    .unwrap();
    out.expect("frame decoded")
}

/// The model applied directly (no framewise pipeline) to one frame with style `style`.
pub fn stylize_direct(frame: &Frame, style: usize) -> Frame {
    let root = repo();
    let env = runtime(&root.join(".deps/onnxruntime/libonnxruntime.so.1.32.0")).unwrap();
    let cfg = framewise_common::config::ModelConfig {
        path: root.join("models/multistyle26.onnx"),
        ..Default::default()
    };
    let mut m = Stylizer::load(env, &cfg, 1).unwrap();
    let mut w = vec![0.0f32; 26];
    w[style] = 1.0;
    m.stylize(frame, &w).unwrap()
}

/// Luma PSNR (BT.601 Y), the usual measure of video quality.
pub fn psnr(a: &Frame, b: &Frame) -> f64 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let y = |p: &[u8]| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64;
    let n = (a.width * a.height) as f64;
    let mse: f64 = a
        .data
        .chunks_exact(3)
        .zip(b.data.chunks_exact(3))
        .map(|(p, q)| (y(p) - y(q)).powi(2))
        .sum::<f64>()
        / n;
    if mse == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Files in `dir` whose names mark an unfinished output.
pub fn partial_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect()
}
