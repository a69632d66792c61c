//! Decoding an exact frame range [start, end) of the source to RGB frames:
//! seek to the keyframe at or before start, decode, keep only the frames
//! whose timestamps the probe listed for this range.

use super::{check_input, make, set_state, Frame, Stopper};
use crate::error::MediaError;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use std::path::Path;
use std::time::{Duration, Instant};

/// Which frames to decode and how.
#[derive(Debug, Clone)]
pub struct DecodeRequest<'a> {
    pub path: &'a Path,
    /// Timestamps of exactly the wanted frames, sorted (from the probe).
    pub frame_pts: &'a [u64],
    /// Source position of the keyframe at or before the first wanted frame (0 = no seek).
    pub seek_ns: u64,
    /// Scale frames to this size (for --max-size); None = source size.
    pub size: Option<(u32, u32)>,
    /// Give up when no frame arrives for this long.
    pub stall_timeout: Duration,
    /// Threads for the colour conversion to RGB (0 = all cores): several pipelines share them.
    pub threads: u32,
}

/// Decodes the requested frames in order, handing each to `on_frame`; stops early when it returns false.
/// Returns how many frames were delivered.
pub fn decode_range(
    req: &DecodeRequest,
    on_frame: &mut dyn FnMut(Frame) -> bool,
) -> Result<u64, MediaError> {
    match decode_once(req, req.seek_ns, on_frame)? {
        Outcome::Done(n) => Ok(n),
        // The seek landed after the first wanted frame (timestamps vs stream time): decode from the start.
        Outcome::Overshot => match decode_once(req, 0, on_frame)? {
            Outcome::Done(n) => Ok(n),
            Outcome::Overshot => Err(MediaError::Corrupt {
                path: req.path.into(),
                detail: format!(
                    "frame at {} ns never decoded",
                    req.frame_pts.first().copied().unwrap_or(0)
                ),
            }),
        },
    }
}

enum Outcome {
    Done(u64),
    Overshot,
}

fn decode_once(
    req: &DecodeRequest,
    seek_ns: u64,
    on_frame: &mut dyn FnMut(Frame) -> bool,
) -> Result<Outcome, MediaError> {
    let path = req.path;
    let began = Instant::now();
    check_input(path)?;
    super::init()?;
    if req.frame_pts.is_empty() {
        return Ok(Outcome::Done(0));
    }
    let pipeline = gst::Pipeline::new();
    let _stop = Stopper(pipeline.clone());
    let err = |e: &dyn std::fmt::Display| MediaError::Pipeline {
        path: path.into(),
        what: "building the decode pipeline",
        detail: e.to_string(),
    };
    let src = super::source_element(path)?;
    let dec = make("decodebin")?;
    let convert = make("videoconvert")?;
    // Frames turned upright as the stream's orientation tag says (phone video); the probe
    // reports the upright size, and the output needs no tag (mp4mux 1.22 cannot write one).
    let flip = make("videoflip")?;
    flip.set_property_from_str("video-direction", "auto");
    let scale = make("videoscale")?;
    // Single-threaded by default: at 720p the conversion to RGB alone caps a pipeline near 200
    // frames/s, below what a GPU infers.
    for el in [&convert, &scale] {
        if el.has_property("n-threads") {
            el.set_property("n-threads", req.threads);
        }
    }
    let mut caps = gst::Caps::builder("video/x-raw").field("format", "RGB");
    if let Some((w, h)) = req.size {
        caps = caps
            .field("width", w as i32)
            .field("height", h as i32)
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
    }
    let sink = gst_app::AppSink::builder()
        .caps(&caps.build())
        .sync(false)
        .max_buffers(4)
        .build();
    pipeline
        .add_many([&src, &dec, &convert, &flip, &scale, sink.upcast_ref()])
        .map_err(|e| err(&e))?;
    src.link(&dec).map_err(|e| err(&e))?;
    gst::Element::link_many([&convert, &flip, &scale, sink.upcast_ref()]).map_err(|e| err(&e))?;

    let weak = pipeline.downgrade();
    let conv_sink = convert.static_pad("sink");
    dec.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let is_video = caps
            .structure(0)
            .is_some_and(|s| s.name().starts_with("video/"));
        if let (true, Some(cs)) = (is_video, conv_sink.as_ref()) {
            if !cs.is_linked() {
                let _ = pad.link(cs);
                return;
            }
        }
        if let Ok(fake) = gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .property("async", false)
            .build()
        {
            if pipeline.add(&fake).is_ok() {
                let _ = fake.sync_state_with_parent();
                if let Some(sp) = fake.static_pad("sink") {
                    let _ = pad.link(&sp);
                }
            }
        }
    });

    if seek_ns > 0 {
        set_state(&pipeline, path, gst::State::Paused, "opening the input")?;
        let (res, _, _) = pipeline.state(gst::ClockTime::from_seconds(
            req.stall_timeout.as_secs().max(1),
        ));
        if res.is_err() {
            return Err(
                super::bus_error(&pipeline, path, "opening the input").unwrap_or(
                    MediaError::Timeout {
                        path: path.into(),
                        secs: req.stall_timeout.as_secs(),
                        what: "opening the input",
                    },
                ),
            );
        }
        pipeline
            .seek_simple(
                gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT | gst::SeekFlags::SNAP_BEFORE,
                gst::ClockTime::from_nseconds(seek_ns),
            )
            .map_err(|e| MediaError::Pipeline {
                path: path.into(),
                what: "seeking",
                detail: e.to_string(),
            })?;
    }
    set_state(&pipeline, path, gst::State::Playing, "decoding")?;
    let playing_ms = began.elapsed().as_millis() as u64;
    let mut first_sample_ms = None;
    let mut dropped = 0u64;

    let wanted = req.frame_pts;
    let mut next = 0usize;
    let mut last_progress = Instant::now();
    let mut info: Option<gst_video::VideoInfo> = None;
    while next < wanted.len() {
        if let Some(e) = super::bus_error(&pipeline, path, "decoding") {
            return Err(e);
        }
        let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) else {
            if sink.is_eos() {
                return Err(MediaError::Corrupt {
                    path: path.into(),
                    detail: format!(
                        "input ended after {} of {} frames of this range (frame at {} ns missing)",
                        next,
                        wanted.len(),
                        wanted[next]
                    ),
                });
            }
            if last_progress.elapsed() > req.stall_timeout {
                return Err(MediaError::Timeout {
                    path: path.into(),
                    secs: req.stall_timeout.as_secs(),
                    what: "decoding",
                });
            }
            continue;
        };
        last_progress = Instant::now();
        first_sample_ms.get_or_insert(began.elapsed().as_millis() as u64);
        let Some(buf) = sample.buffer() else { continue };
        let Some(pts) = buf.pts().map(|t| t.nseconds()) else {
            continue;
        };
        if pts < wanted[next] {
            dropped += 1;
            continue; // decoded from the keyframe before the range: drop
        }
        if pts > wanted[next] {
            if next == 0 && seek_ns > 0 {
                return Ok(Outcome::Overshot);
            }
            return Err(MediaError::Corrupt {
                path: path.into(),
                detail: format!(
                    "frame at {} ns missing from the decoded stream (next was {pts} ns)",
                    wanted[next]
                ),
            });
        }
        if info.is_none() {
            let caps = sample.caps().ok_or_else(|| err(&"sample without caps"))?;
            info = Some(gst_video::VideoInfo::from_caps(caps).map_err(|e| err(&e))?);
        }
        let Some(vi) = info.as_ref() else { continue };
        let frame = pack_rgb(buf, vi, pts).map_err(|e| err(&e))?;
        if next == 0 {
            // Where a range's start-up time goes: pipeline start (and seek), first decoded
            // frame, frames decoded from the keyframe before the range and dropped.
            tracing::debug!(
                playing_ms,
                first_sample_ms = first_sample_ms.unwrap_or_default(),
                first_frame_ms = began.elapsed().as_millis() as u64,
                dropped,
                "decoder started"
            );
        }
        next += 1;
        if !on_frame(frame) {
            break;
        }
    }
    Ok(Outcome::Done(next as u64))
}

/// Copies an RGB buffer into tightly packed rows (GStreamer pads rows to 4 bytes).
fn pack_rgb(buf: &gst::BufferRef, vi: &gst_video::VideoInfo, pts: u64) -> Result<Frame, String> {
    let (w, h) = (vi.width() as usize, vi.height() as usize);
    let stride = vi.stride()[0] as usize;
    let map = buf.map_readable().map_err(|e| e.to_string())?;
    let src = map.as_slice();
    let row = w * 3;
    if stride < row || src.len() < stride * (h - 1) + row {
        return Err(format!(
            "RGB buffer of {} bytes is too small for {w}x{h}",
            src.len()
        ));
    }
    let mut data = Vec::with_capacity(row * h);
    for y in 0..h {
        data.extend_from_slice(&src[y * stride..y * stride + row]);
    }
    Ok(Frame {
        pts,
        width: w as u32,
        height: h as u32,
        data,
    })
}
