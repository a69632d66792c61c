//! GStreamer media: probing a container, decoding an exact frame range to RGB,
//! encoding stylized frames to an H.264 segment, and stitching segments with
//! the source's audio copied unchanged.

pub mod assemble;
mod cuda_context;
pub mod decode;
pub mod encode;
pub mod mp4_index;
pub mod pool;
pub mod probe;
pub mod to_i420;
pub mod warmup;

use crate::error::MediaError;
use gstreamer as gst;
use gstreamer::prelude::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// One decoded or stylized picture: tightly packed RGB rows (width * 3 bytes each), or NV12
/// from NVDEC (`yuv`).
#[derive(Debug, Clone)]
pub struct Frame {
    /// Presentation timestamp in ns (source timeline).
    pub pts: u64,
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
    /// None: `data` is RGB. Some: it is NV12 (width x height luma, then interleaved U and V at
    /// half size; both sides even), to be converted with this (pixels_op.rs).
    pub yuv: Option<crate::pixels_op::Yuv>,
}

/// The Y'CbCr conversion a stream's colorimetry names (bt709 for HD and bt601 below where it
/// names none, as GStreamer assumes).
pub(crate) fn yuv_of(c: &gstreamer_video::VideoColorimetry, height: u32) -> crate::pixels_op::Yuv {
    use crate::pixels_op::{Yuv, YuvMatrix};
    use gstreamer_video::{VideoColorMatrix, VideoColorRange};
    let matrix = match c.matrix() {
        VideoColorMatrix::Bt601 | VideoColorMatrix::Smpte240m => YuvMatrix::Bt601,
        VideoColorMatrix::Bt2020 => YuvMatrix::Bt2020,
        VideoColorMatrix::Bt709 => YuvMatrix::Bt709,
        _ if height >= 720 => YuvMatrix::Bt709,
        _ => YuvMatrix::Bt601,
    };
    Yuv::new(matrix, c.range() == VideoColorRange::Range0_255)
}

impl Frame {
    /// The picture as RGB: itself, or converted from NV12 with its own conversion.
    pub fn to_rgb(&self) -> Frame {
        let Some(yuv) = self.yuv else {
            return self.clone();
        };
        let (w, h) = (self.width as usize, self.height as usize);
        let mut data = vec![0u8; w * h * 3];
        crate::pixels_op::nv12_to_rgb(&self.data, w, h, &yuv, &mut data);
        Frame {
            data,
            yuv: None,
            ..*self
        }
    }
}

/// Initialises GStreamer once; safe to call from any thread.
pub fn init() -> Result<(), MediaError> {
    gst::init().map_err(|e| MediaError::Pipeline {
        path: Path::new("gstreamer").into(),
        what: "initialising GStreamer",
        detail: e.to_string(),
    })
}

/// Whether `path` holds a signed blob URL (read over HTTP) rather than a local file name.
pub(crate) fn is_remote(path: &Path) -> bool {
    framewise_common::storage::is_http(&path.to_string_lossy())
}

/// The element that reads an input: `filesrc` for a local file; for a signed blob URL,
/// `souphttpsrc` (ranged HTTP reads, seeks included) behind a `queue2` ring buffer, which lets
/// the demuxer pull (random access, as from a file) without downloading the whole file first.
/// qtdemux fed in push mode drops the last frames of a clip with B-frames (GStreamer 1.22:
/// 97 of 100 in the test), so the pull mode matters.
pub(crate) fn source_element(path: &Path) -> Result<gst::Element, MediaError> {
    if !is_remote(path) {
        let src = make("filesrc")?;
        src.set_property("location", path.to_string_lossy().as_ref());
        return Ok(src);
    }
    let http = make("souphttpsrc")?;
    http.set_property("location", path.to_string_lossy().as_ref());
    // Ride out a storage hiccup: reconnect and resume at the same offset.
    http.set_property("retries", 10i32);
    http.set_property("timeout", 30u32);
    let ring = make("queue2")?;
    ring.set_property("ring-buffer-max-size", 16u64 << 20);
    let template = std::env::temp_dir().join("framewise-ring-XXXXXX");
    ring.set_property("temp-template", template.to_string_lossy().as_ref());
    let err = |e: &dyn std::fmt::Display| MediaError::Pipeline {
        path: Path::new("souphttpsrc").into(),
        what: "building the HTTP source",
        detail: e.to_string(),
    };
    let bin = gst::Bin::new();
    bin.add_many([&http, &ring]).map_err(|e| err(&e))?;
    http.link(&ring).map_err(|e| err(&e))?;
    let pad = ring
        .static_pad("src")
        .ok_or_else(|| err(&"queue2 has no src pad"))?;
    let ghost = gst::GhostPad::with_target(&pad).map_err(|e| err(&e))?;
    bin.add_pad(&ghost).map_err(|e| err(&e))?;
    Ok(bin.upcast())
}

/// Checks that an input exists and is not empty before any pipeline touches it (a remote one
/// is checked by its first read).
pub(crate) fn check_input(path: &Path) -> Result<(), MediaError> {
    if is_remote(path) {
        return Ok(());
    }
    match std::fs::metadata(path) {
        Err(_) => Err(MediaError::NotFound(path.into())),
        Ok(m) if m.is_dir() => Err(MediaError::NotMedia {
            path: path.into(),
            detail: "is a directory".into(),
        }),
        Ok(m) if m.len() == 0 => Err(MediaError::Empty(path.into())),
        Ok(_) => Ok(()),
    }
}

/// Calls `f` with the pad's caps once they are final: at once when they are already set, else
/// when the caps event arrives. parsebin may expose a pad before its caps are fixed (it depends
/// on which decoders are installed), and a pad classified by its template caps loses streams.
pub(crate) fn on_final_caps<F>(pad: &gst::Pad, f: F)
where
    F: FnOnce(&gst::Pad, &gst::Caps) + Send + 'static,
{
    if let Some(c) = pad.current_caps().filter(|c| c.is_fixed()) {
        f(pad, &c);
        return;
    }
    let f = std::sync::Mutex::new(Some(f));
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |pad, info| {
        if let Some(gst::EventView::Caps(c)) = info.event().map(|e| e.view()) {
            let f = f.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(f) = f {
                f(pad, &c.caps_owned());
            }
            return gst::PadProbeReturn::Remove;
        }
        gst::PadProbeReturn::Ok
    });
}

pub(crate) fn make(factory: &str) -> Result<gst::Element, MediaError> {
    gst::ElementFactory::make(factory)
        .build()
        .map_err(|_| MediaError::Pipeline {
            path: Path::new(factory).into(),
            what: "creating element",
            detail: format!(
                "GStreamer element {factory} is not installed (run scripts/bootstrap.sh)"
            ),
        })
}

/// Maps a GStreamer error message about `path` to the framewise error it means.
pub(crate) fn classify(path: &Path, what: &'static str, msg: &gst::message::Error) -> MediaError {
    let err = msg.error();
    let detail = match msg.debug() {
        Some(d) => format!("{}; {}", err.message(), d.lines().next().unwrap_or("")),
        None => err.message().to_string(),
    };
    if let Some(e) = err.kind::<gst::StreamError>() {
        return match e {
            gst::StreamError::TypeNotFound | gst::StreamError::WrongType => MediaError::NotMedia {
                path: path.into(),
                detail: err.message().to_string(),
            },
            gst::StreamError::CodecNotFound => MediaError::UnsupportedCodec {
                path: path.into(),
                codec: err.message().to_string(),
            },
            gst::StreamError::Demux | gst::StreamError::Decode | gst::StreamError::Format => {
                MediaError::Corrupt {
                    path: path.into(),
                    detail: err.message().to_string(),
                }
            }
            _ => MediaError::Pipeline {
                path: path.into(),
                what,
                detail,
            },
        };
    }
    if let Some(gst::ResourceError::NotFound) = err.kind::<gst::ResourceError>() {
        return MediaError::NotFound(path.into());
    }
    MediaError::Pipeline {
        path: path.into(),
        what,
        detail,
    }
}

/// Sets a pipeline to NULL when dropped, so no error path leaks a running pipeline.
pub(crate) struct Stopper(pub gst::Pipeline);

impl Drop for Stopper {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

pub(crate) fn set_state(
    p: &gst::Pipeline,
    path: &Path,
    state: gst::State,
    what: &'static str,
) -> Result<(), MediaError> {
    match p.set_state(state) {
        Ok(_) => Ok(()),
        Err(_) => Err(bus_error(p, path, what).unwrap_or(MediaError::Pipeline {
            path: path.into(),
            what,
            detail: format!("could not change state to {state:?}"),
        })),
    }
}

/// The first error waiting on the bus, if any.
pub(crate) fn bus_error(p: &gst::Pipeline, path: &Path, what: &'static str) -> Option<MediaError> {
    let bus = p.bus()?;
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(e) = msg.view() {
            return Some(classify(path, what, e));
        }
    }
    None
}

/// Waits for EOS (or an error, or the deadline) on the pipeline's bus.
pub(crate) fn wait_eos(
    p: &gst::Pipeline,
    path: &Path,
    what: &'static str,
    deadline: Instant,
) -> Result<(), MediaError> {
    let bus = p.bus().ok_or_else(|| MediaError::Pipeline {
        path: path.into(),
        what,
        detail: "no bus".into(),
    })?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(MediaError::Timeout {
                path: path.into(),
                secs: 0,
                what,
            });
        }
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(left.as_millis().min(500) as u64),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        match msg.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Eos(_)) => return Ok(()),
            Some(gst::MessageView::Error(e)) => return Err(classify(path, what, e)),
            _ => {}
        }
    }
}

/// A deadline `secs` from now, with the number kept for the error message.
pub(crate) fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// Fills in the seconds of a Timeout error.
pub(crate) fn with_secs(e: MediaError, secs: u64) -> MediaError {
    match e {
        MediaError::Timeout { path, what, .. } => MediaError::Timeout { path, secs, what },
        other => other,
    }
}

/// A test clip: `frames` frames of a moving ball, 96x64 at 25/s, H.264 with B-frames and a
/// keyframe every 12 frames; returns its probe.
#[cfg(test)]
pub(crate) fn test_clip(path: &Path, frames: u32) -> probe::Probe {
    test_clip_av(path, frames, false)
}

/// As `test_clip`, with an AAC track as long as the video where `audio` says.
#[cfg(test)]
pub(crate) fn test_clip_av(path: &Path, frames: u32, audio: bool) -> probe::Probe {
    init().unwrap();
    let audio = if audio {
        // audiotestsrc's buffers are 1,024 samples at 44.1 kHz.
        let buffers = frames as u64 * 44_100 / 25 / 1024 + 1;
        format!(" audiotestsrc num-buffers={buffers} ! audioconvert ! avenc_aac ! aacparse ! m.")
    } else {
        String::new()
    };
    let launch = format!(
        "videotestsrc pattern=ball num-buffers={frames} ! video/x-raw,format=I420,width=96,height=64,framerate=25/1 \
         ! x264enc speed-preset=ultrafast bframes=2 key-int-max=12 ! h264parse ! mp4mux name=m ! filesink location=\"{}\"{audio}",
        path.display()
    );
    let pipeline = gst::parse::launch(&launch).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(20),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .unwrap();
    assert_eq!(msg.type_(), gst::MessageType::Eos);
    pipeline.set_state(gst::State::Null).unwrap();
    probe::probe(path, std::time::Duration::from_secs(20)).unwrap()
}
