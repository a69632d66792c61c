//! Decoding an exact frame range [start, end) of the source to RGB frames:
//! seek to the keyframe at or before start, decode, keep only the frames
//! whose timestamps the probe listed for this range.

use super::pool::FramePool;
use super::{check_input, make, set_state, Frame, Stopper};
use crate::error::MediaError;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    /// The GPU whose NVDEC decoder to use (`worker.decoder = "nvdec"`); None = the CPU's
    /// decoders only, and nvcodec (whose start-up probes every GPU) is never loaded.
    pub nvdec: Option<u32>,
    /// Where frame buffers come from (the pipeline's recycled ones); None = fresh ones.
    pub pool: Option<FramePool>,
    /// Frames as NV12 (`Frame::yuv`), not RGB: for a model that converts them on its GPU
    /// (pixels_op.rs), saving the CPU GStreamer's conversion. The output size must be even.
    pub nv12: bool,
}

/// Decodes the requested frames in order, handing each to `on_frame`; stops early when it returns false.
/// Returns how many frames were delivered.
pub fn decode_range(
    req: &DecodeRequest,
    on_frame: &mut dyn FnMut(Frame) -> bool,
) -> Result<u64, MediaError> {
    decode_range_counted(req, on_frame).map(|c| c.delivered)
}

/// What a range's decode cost beyond its own frames (tests check the seek's effect).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Counts {
    pub delivered: u64,
    /// Frames before the range dropped as they left the decoder.
    pub lead_in: u64,
    /// Frames before the range that reached the end of the pipeline (converted, then dropped).
    pub dropped: u64,
    /// The seek overshot and the range was decoded again from the start.
    pub restarted: bool,
}

pub(crate) fn decode_range_counted(
    req: &DecodeRequest,
    on_frame: &mut dyn FnMut(Frame) -> bool,
) -> Result<Counts, MediaError> {
    decode_range_kept(req, &mut None, on_frame)
}

/// A decode pipeline left open after its range, so the next range of the same input (a
/// pipeline's next lease, usually) starts with a flushing seek instead of a new pipeline: no
/// new demuxer reading the file's index, no new decoder (NVDEC's takes 0.15–0.2 s to open), no
/// preroll from the file's start before the seek.
pub struct OpenDecoder {
    key: DecoderKey,
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    /// The range's first wanted timestamp: frames before it are dropped as they leave the
    /// decoder (0 = keep all, as during a new pipeline's preroll).
    first: Arc<AtomicU64>,
    lead_in: Arc<AtomicU64>,
    _stop: Stopper,
}

/// What must match for a range to reuse an open decoder: the same file (not only the same
/// name: a file replaced at that path is another input) read the same way.
#[derive(Debug, Clone, PartialEq)]
struct DecoderKey {
    path: std::path::PathBuf,
    /// Device, inode, length and modification time; None for a URL (signed per lease, so a
    /// decoder reading one is never kept).
    file: Option<(u64, u64, u64, std::time::SystemTime)>,
    size: Option<(u32, u32)>,
    threads: u32,
    nvdec: Option<u32>,
    nv12: bool,
}

impl DecoderKey {
    fn of(req: &DecodeRequest) -> Self {
        use std::os::unix::fs::MetadataExt;
        let file = (!super::is_remote(req.path))
            .then(|| std::fs::metadata(req.path).ok())
            .flatten()
            .and_then(|m| Some((m.dev(), m.ino(), m.len(), m.modified().ok()?)));
        Self {
            path: req.path.to_path_buf(),
            file,
            size: req.size,
            threads: req.threads,
            nvdec: req.nvdec,
            nv12: req.nv12,
        }
    }

    fn reusable(&self) -> bool {
        self.file.is_some()
    }
}

/// As `decode_range`, through `kept`: a decoder left open by an earlier range of the same input
/// is reused (any other is closed), and this range's decoder is left there afterwards unless it
/// failed.
pub fn decode_range_reusing(
    req: &DecodeRequest,
    kept: &mut Option<OpenDecoder>,
    on_frame: &mut dyn FnMut(Frame) -> bool,
) -> Result<u64, MediaError> {
    decode_range_kept(req, kept, on_frame).map(|c| c.delivered)
}

pub(crate) fn decode_range_kept(
    req: &DecodeRequest,
    kept: &mut Option<OpenDecoder>,
    on_frame: &mut dyn FnMut(Frame) -> bool,
) -> Result<Counts, MediaError> {
    check_input(req.path)?;
    super::init()?;
    if req.frame_pts.is_empty() {
        return Ok(Counts::default());
    }
    let key = DecoderKey::of(req);
    // Taken out: on an error it is dropped (closed) rather than put back. Only a reusable one
    // is ever kept, so an equal key is reusable too.
    let mut dec = kept.take().filter(|d| d.key == key);
    let counts = match decode_once(req, &key, &mut dec, req.seek_ns, on_frame)? {
        Outcome::Done(c) => c,
        // The seek landed after the first wanted frame (timestamps vs stream time): decode from the start.
        Outcome::Overshot => match decode_once(req, &key, &mut dec, 0, on_frame)? {
            Outcome::Done(c) => Counts {
                restarted: true,
                ..c
            },
            Outcome::Overshot => {
                return Err(MediaError::Corrupt {
                    path: req.path.into(),
                    detail: format!(
                        "frame at {} ns never decoded",
                        req.frame_pts.first().copied().unwrap_or(0)
                    ),
                })
            }
        },
    };
    *kept = dec.filter(|d| d.key.reusable());
    Ok(counts)
}

enum Outcome {
    Done(Counts),
    Overshot,
}

/// A new decode pipeline for `req`, built but not started; its lead-in probe keeps every frame
/// until `first` is set.
fn build(req: &DecodeRequest, key: DecoderKey) -> Result<OpenDecoder, MediaError> {
    let path = req.path;
    let pipeline = gst::Pipeline::new();
    let stop = Stopper(pipeline.clone());
    if let Some(gpu) = req.nvdec {
        super::cuda_context::share(&pipeline, gpu);
    }
    let err = |e: &dyn std::fmt::Display| MediaError::Pipeline {
        path: path.into(),
        what: "building the decode pipeline",
        detail: e.to_string(),
    };
    let src = super::source_element(path)?;
    let dec = make("decodebin")?;
    choose_decoders(&dec, req.nvdec);
    skip_other_streams(&dec);
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
    let mut caps =
        gst::Caps::builder("video/x-raw").field("format", if req.nv12 { "NV12" } else { "RGB" });
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

    // Frames decoded from the keyframe before the range are dropped as they leave the decoder,
    // not after conversion to RGB (and scaling): with a 10 s GOP a stolen range otherwise
    // converted up to 250 frames only to drop them. (An accurate seek would have the decoder
    // drop them, but B-frame streams start their timestamps after zero and the demuxer's seek
    // position is not a timestamp, so it cut wanted frames; these timestamps are the probe's.)
    // Off (first = 0) during a new pipeline's pause before a seek: that pause waits for a first
    // frame, which dropping would turn into decoding from the start of the file up to the range.
    let lead_in = Arc::new(AtomicU64::new(0));
    let first = Arc::new(AtomicU64::new(0));
    if let Some(pad) = convert.static_pad("sink") {
        let (lead_in, first) = (lead_in.clone(), first.clone());
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            match info.buffer().and_then(|b| b.pts()) {
                Some(pts) if pts.nseconds() < first.load(Ordering::Relaxed) => {
                    lead_in.fetch_add(1, Ordering::Relaxed);
                    // Handled, not Drop: the binding has already taken the buffer (and
                    // frees it), and GStreamer 1.22 would unref it again on Drop.
                    gst::PadProbeReturn::Handled
                }
                _ => gst::PadProbeReturn::Ok,
            }
        });
    }
    Ok(OpenDecoder {
        key,
        pipeline,
        sink,
        first,
        lead_in,
        _stop: stop,
    })
}

/// Decodes `req`'s range with `dec` (built for `key` when None; a kept one seeks), from
/// `seek_ns`.
fn decode_once(
    req: &DecodeRequest,
    key: &DecoderKey,
    dec: &mut Option<OpenDecoder>,
    seek_ns: u64,
    on_frame: &mut dyn FnMut(Frame) -> bool,
) -> Result<Outcome, MediaError> {
    let path = req.path;
    let began = Instant::now();
    let reused = dec.is_some();
    let d = match dec {
        Some(d) => d,
        None => dec.insert(build(req, key.clone())?),
    };
    let (pipeline, sink) = (&d.pipeline, &d.sink);
    let err = |e: &dyn std::fmt::Display| MediaError::Pipeline {
        path: path.into(),
        what: "decoding",
        detail: e.to_string(),
    };
    let lead_in = d.lead_in.clone();
    lead_in.store(0, Ordering::Relaxed);
    let first = req.frame_pts.first().copied().unwrap_or(0);
    let drop_lead_in = || d.first.store(first, Ordering::Relaxed);
    let seek = |pos: u64| {
        pipeline
            .seek_simple(
                gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT | gst::SeekFlags::SNAP_BEFORE,
                gst::ClockTime::from_nseconds(pos),
            )
            .map_err(|e| MediaError::Pipeline {
                path: path.into(),
                what: "seeking",
                detail: e.to_string(),
            })
    };
    if reused {
        // Still playing from the last range: a flushing seek drops what it had decoded ahead.
        drop_lead_in();
        seek(seek_ns)?;
    } else if seek_ns > 0 {
        set_state(pipeline, path, gst::State::Paused, "opening the input")?;
        let (res, _, _) = pipeline.state(gst::ClockTime::from_seconds(
            req.stall_timeout.as_secs().max(1),
        ));
        if res.is_err() {
            return Err(
                super::bus_error(pipeline, path, "opening the input").unwrap_or(
                    MediaError::Timeout {
                        path: path.into(),
                        secs: req.stall_timeout.as_secs(),
                        what: "opening the input",
                    },
                ),
            );
        }
        drop_lead_in();
        seek(seek_ns)?;
    } else {
        drop_lead_in();
    }
    if !reused {
        set_state(pipeline, path, gst::State::Playing, "decoding")?;
    }
    let playing_ms = began.elapsed().as_millis() as u64;
    let mut first_sample_ms = None;
    let mut dropped = 0u64;

    let wanted = req.frame_pts;
    let mut next = 0usize;
    let mut last_progress = Instant::now();
    let mut info: Option<gst_video::VideoInfo> = None;
    while next < wanted.len() {
        if let Some(e) = super::bus_error(pipeline, path, "decoding") {
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
        let frame = if req.nv12 {
            pack_nv12(buf, vi, pts, req.pool.as_ref())
        } else {
            pack_rgb(buf, vi, pts, req.pool.as_ref())
        }
        .map_err(|e| err(&e))?;
        if next == 0 {
            // Where a range's start-up time goes: pipeline start (and seek), first decoded
            // frame, frames decoded from the keyframe before the range and dropped.
            tracing::debug!(
                playing_ms,
                first_sample_ms = first_sample_ms.unwrap_or_default(),
                first_frame_ms = began.elapsed().as_millis() as u64,
                lead_in = lead_in.load(Ordering::Relaxed),
                dropped,
                "decoder started"
            );
        }
        next += 1;
        if !on_frame(frame) {
            break;
        }
    }
    Ok(Outcome::Done(Counts {
        delivered: next as u64,
        lead_in: lead_in.load(Ordering::Relaxed),
        dropped,
        restarted: false,
    }))
}

/// Makes `decodebin` decode where the worker is told to. With `nvdec` = Some(gpu), on that
/// GPU's NVIDIA decoder: other GPUs' are skipped, and so is a CPU decoder offered before it
/// (nvcodec ranks every GPU's decoder but the first one lower, level with GStreamer's own, which
/// sorts first by name, or below: pipelines on every other GPU had been decoding on the CPU). With None, on
/// the CPU only: no NVIDIA decoder is tried, so nvcodec is not even loaded.
fn choose_decoders(dec: &gst::Element, nvdec: Option<u32>) {
    // This GPU's decoders, from the registry (no plugin is loaded to list them).
    let mine: Vec<gst::ElementFactory> = nvdec
        .map(|gpu| {
            gst::ElementFactory::factories_with_type(
                gst::ElementFactoryType::DECODER,
                gst::Rank::NONE,
            )
            .into_iter()
            .filter(|f| nvidia_decoder_gpu(f.name().as_str()) == Some(gpu))
            .collect()
        })
        .unwrap_or_default();
    dec.connect("autoplug-select", false, move |args| {
        // GstAutoplugSelectResult: 0 = try this factory, 2 = skip it.
        let class = gst::glib::Type::from_name("GstAutoplugSelectResult")
            .and_then(gst::glib::EnumClass::with_type)?;
        let caps = args.get(2)?.get::<gst::Caps>().ok()?;
        let factory = args.get(3)?.get::<gst::ElementFactory>().ok()?;
        let is_decoder = factory
            .metadata(gst::ELEMENT_METADATA_KLASS)
            .is_some_and(|k| k.contains("Decoder"));
        let skip = skip_decoder(
            nvidia_decoder_gpu(factory.name().as_str()),
            is_decoder,
            nvdec,
            || mine.iter().any(|f| f.can_sink_any_caps(&caps)),
        );
        class.to_value(if skip { 2 } else { 0 })
    });
}

/// Stops decodebin at the streams a decode pipeline throws away (audio, subtitles): they
/// reach their fakesink still compressed. Left to decode, a clip's AAC took about 6 % of a GPU
/// node's CPU in a job (perf, session 17), cores that x264 needs.
fn skip_other_streams(dec: &gst::Element) {
    dec.connect("autoplug-continue", false, |args| {
        let caps = args.get(2)?.get::<gst::Caps>().ok()?;
        let name = caps.structure(0).map(|s| s.name().to_string());
        Some(name.as_deref().is_none_or(worth_decoding).to_value())
    });
}

/// Whether decodebin goes on plugging elements for a stream of this caps name: containers
/// and video yes; audio, text and subpictures no (only the video is decoded here).
fn worth_decoding(caps_name: &str) -> bool {
    !["audio/", "text/", "subpicture/", "closedcaption/"]
        .iter()
        .any(|kind| caps_name.starts_with(kind))
        && !caps_name.starts_with("application/x-subtitle")
}

/// Whether decodebin skips a factory: an NVIDIA decoder (of GPU `owner`) unless it is the
/// wanted GPU's; a CPU decoder when the wanted GPU has a decoder for the stream (it comes later
/// in decodebin's list); anything else (demuxers, parsers) never.
fn skip_decoder(
    owner: Option<u32>,
    is_decoder: bool,
    nvdec: Option<u32>,
    gpu_has_one: impl FnOnce() -> bool,
) -> bool {
    match (owner, nvdec) {
        (Some(g), Some(want)) => g != want,
        (Some(_), None) => true,
        (None, Some(_)) => is_decoder && gpu_has_one(),
        (None, None) => false,
    }
}

/// The GPU an nvcodec decoder element belongs to, from its name: nvcodec registers one per GPU,
/// `nvh264dec` for the first and `nvh264device1dec`, `nvh264device2dec` … for the others
/// (likewise for H.265, VP9, AV1, MPEG; `sl` in the stateless ones' names); None for others.
fn nvidia_decoder_gpu(factory: &str) -> Option<u32> {
    let mid = factory.strip_prefix("nv")?.strip_suffix("dec")?;
    match mid.split_once("device") {
        Some((_, n)) => n.parse().ok(),
        None if !mid.is_empty() && mid.chars().all(|c| c.is_ascii_alphanumeric()) => Some(0),
        None => None,
    }
}

/// Copies an RGB buffer into tightly packed rows (GStreamer pads rows to 4 bytes).
fn pack_rgb(
    buf: &gst::BufferRef,
    vi: &gst_video::VideoInfo,
    pts: u64,
    pool: Option<&FramePool>,
) -> Result<Frame, String> {
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
    let mut data = pool.map_or_else(|| Vec::with_capacity(row * h), |p| p.take(row * h));
    for y in 0..h {
        data.extend_from_slice(&src[y * stride..y * stride + row]);
    }
    Ok(Frame {
        pts,
        width: w as u32,
        height: h as u32,
        data,
        yuv: None,
    })
}

/// Copies an NV12 buffer's planes into a tight luma plane and a tight chroma plane, with the
/// conversion its colorimetry says (unknown: BT.709 from 720 lines up, else BT.601; limited
/// range unless full is stated, as GStreamer assumes).
fn pack_nv12(
    buf: &gst::BufferRef,
    vi: &gst_video::VideoInfo,
    pts: u64,
    pool: Option<&FramePool>,
) -> Result<Frame, String> {
    let (w, h) = (vi.width() as usize, vi.height() as usize);
    if w % 2 == 1 || h % 2 == 1 {
        return Err(format!("NV12 frames of {w}x{h}: both sides must be even"));
    }
    let map = buf.map_readable().map_err(|e| e.to_string())?;
    let src = map.as_slice();
    let mut data = pool.map_or_else(
        || Vec::with_capacity(w * h * 3 / 2),
        |p| p.take(w * h * 3 / 2),
    );
    for (plane, rows) in [(0usize, h), (1, h / 2)] {
        let (stride, offset) = (vi.stride()[plane] as usize, vi.offset()[plane]);
        if stride < w || src.len() < offset + stride * (rows - 1) + w {
            return Err(format!(
                "NV12 buffer of {} bytes is too small for {w}x{h} (plane {plane})",
                src.len()
            ));
        }
        for r in 0..rows {
            data.extend_from_slice(&src[offset + r * stride..][..w]);
        }
    }
    Ok(Frame {
        pts,
        width: w as u32,
        height: h as u32,
        data,
        yuv: Some(super::yuv_of(&vi.colorimetry(), h as u32)),
    })
}

/// A test's request: RGB on the CPU, one thread, from `seek_ns`.
#[cfg(test)]
pub(crate) fn test_request<'a>(
    path: &'a std::path::Path,
    pts: &'a [u64],
    seek_ns: u64,
) -> DecodeRequest<'a> {
    DecodeRequest {
        path,
        frame_pts: pts,
        seek_ns,
        size: None,
        stall_timeout: Duration::from_secs(20),
        threads: 1,
        nvdec: None,
        pool: None,
        nv12: false,
    }
}

#[cfg(test)]
mod tests {
    use super::test_request as request;
    use super::{decode_range_counted, decode_range_kept, nvidia_decoder_gpu, DecodeRequest};

    /// NV12 frames (for a model that converts them itself) are the same pictures as the RGB
    /// ones: same count and timestamps, tight planes, and framewise's conversion within a few
    /// levels of GStreamer's (which filters the chroma between samples; framewise repeats it).
    #[test]
    fn nv12_frames_are_the_rgb_frames_unconverted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.mp4");
        let p = crate::media::test_clip(&path, 12);
        let decode = |nv12: bool| {
            let mut out = Vec::new();
            let req = DecodeRequest {
                nv12,
                ..request(&path, &p.frame_pts, 0)
            };
            decode_range_counted(&req, &mut |f| {
                out.push(f);
                true
            })
            .unwrap();
            out
        };
        let (rgb, nv12) = (decode(false), decode(true));
        assert_eq!(rgb.len(), 12);
        assert_eq!(nv12.len(), 12);
        for (a, b) in rgb.iter().zip(&nv12) {
            assert_eq!((a.pts, a.width, a.height), (b.pts, b.width, b.height));
            assert!(a.yuv.is_none() && b.yuv.is_some());
            assert_eq!(b.data.len(), 96 * 64 * 3 / 2);
            let back = b.to_rgb();
            let mse = a
                .data
                .iter()
                .zip(&back.data)
                .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
                .sum::<f64>()
                / a.data.len() as f64;
            let psnr = 10.0 * (255.0f64 * 255.0 / mse.max(1e-9)).log10();
            assert!(psnr >= 40.0, "frame at {}: {psnr:.1} dB", a.pts);
        }
    }

    /// Ranges starting on, just after and well after a keyframe (B-frames, a keyframe every 12
    /// frames) decode to exactly the frames a decode from the start gives, and the frames decoded
    /// before the range are dropped before the conversion to RGB.
    #[test]
    fn a_range_after_a_seek_is_exact_and_its_lead_in_is_dropped_by_the_decoder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gop.mp4");
        let p = crate::media::test_clip(&path, 40);
        assert_eq!(p.frame_pts.len(), 40);
        let mut all = Vec::new();
        decode_range_counted(&request(&path, &p.frame_pts, 0), &mut |f| {
            all.push(f);
            true
        })
        .unwrap();
        assert_eq!(all.len(), 40);
        for start in [5usize, 12, 13, 23, 30] {
            let key = *p
                .keyframes
                .iter()
                .filter(|&&k| k as usize <= start)
                .max()
                .unwrap() as usize;
            let end = (start + 6).min(40);
            let mut got = Vec::new();
            let counts = decode_range_counted(
                &request(&path, &p.frame_pts[start..end], p.frame_pts[key]),
                &mut |f| {
                    got.push(f);
                    true
                },
            )
            .unwrap();
            assert_eq!(counts.delivered as usize, end - start, "start {start}");
            assert!(!counts.restarted, "start {start}: the seek overshot");
            assert_eq!(
                counts.dropped, 0,
                "start {start}: frames before the range converted"
            );
            // From the keyframe, not from the start of the file (the pause before the seek).
            let lead = (start - key) as u64;
            assert!(
                (lead..=lead + 2).contains(&counts.lead_in),
                "start {start} (keyframe {key}): {counts:?}"
            );
            for (i, f) in got.iter().enumerate() {
                let want = &all[start + i];
                assert_eq!(f.pts, want.pts, "start {start}, frame {i}");
                assert!(
                    f.data == want.data,
                    "start {start}, frame {i}: pixels differ"
                );
            }
        }
    }

    /// One decoder kept open across ranges (forward, backward, from the start, the last frames,
    /// one stopped early) delivers exactly what a new decoder per range does, and is left open
    /// after each; another file at the same path, or another frame size, gets a new one.
    #[test]
    fn a_kept_decoder_seeks_to_each_next_range_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gop.mp4");
        let p = crate::media::test_clip(&path, 40);
        let mut all = Vec::new();
        decode_range_counted(&request(&path, &p.frame_pts, 0), &mut |f| {
            all.push(f);
            true
        })
        .unwrap();
        let key_before = |start: usize| {
            *p.keyframes
                .iter()
                .filter(|&&k| k as usize <= start)
                .max()
                .unwrap() as usize
        };
        let mut kept = None;
        let mut pipeline = None;
        for (start, end, stop_after) in [
            (13usize, 20usize, None),
            (30, 40, None),
            (5, 12, None),
            (0, 8, Some(3usize)),
            (23, 29, None),
            (34, 40, None),
        ] {
            let seek = if start == 0 {
                0
            } else {
                p.frame_pts[key_before(start)]
            };
            let mut got = Vec::new();
            let counts = decode_range_kept(
                &request(&path, &p.frame_pts[start..end], seek),
                &mut kept,
                &mut |f| {
                    got.push(f);
                    stop_after.is_none_or(|n| got.len() < n)
                },
            )
            .unwrap();
            let want = stop_after.map_or(end - start, |n| n);
            assert_eq!(got.len(), want, "range {start}..{end}");
            assert_eq!(counts.delivered as usize, want);
            assert!(!counts.restarted, "range {start}..{end}: the seek overshot");
            for (i, f) in got.iter().enumerate() {
                assert_eq!(f.pts, all[start + i].pts, "range {start}..{end}, frame {i}");
                assert!(
                    f.data == all[start + i].data,
                    "range {start}..{end}, frame {i}"
                );
            }
            // The same pipeline every time.
            let now = kept.as_ref().map(|d| d.pipeline.clone()).unwrap();
            assert!(pipeline
                .as_ref()
                .is_none_or(|p: &gstreamer::Pipeline| *p == now));
            pipeline = Some(now);
        }
        // Another frame size: a new decoder.
        let small = DecodeRequest {
            size: Some((48, 32)),
            ..request(&path, &p.frame_pts[0..4], 0)
        };
        let mut widths = Vec::new();
        decode_range_kept(&small, &mut kept, &mut |f| {
            widths.push(f.width);
            true
        })
        .unwrap();
        assert_eq!(widths, [48; 4]);
        let resized = kept.as_ref().map(|d| d.pipeline.clone()).unwrap();
        assert!(pipeline.as_ref().is_some_and(|p| *p != resized));
        // A new file at the same path is another input: a new decoder reads it.
        std::fs::remove_file(&path).unwrap();
        let q = crate::media::test_clip(&path, 12);
        let mut n = 0;
        decode_range_kept(&request(&path, &q.frame_pts, 0), &mut kept, &mut |_| {
            n += 1;
            true
        })
        .unwrap();
        assert_eq!(n, 12);
        assert!(kept.as_ref().is_some_and(|d| d.pipeline != resized));
    }

    #[test]
    fn decoders_are_chosen_by_the_workers_decoder_setting() {
        use super::skip_decoder;
        // decoder = "cpu": every NVIDIA decoder is skipped, CPU decoders and parsers are tried.
        assert!(skip_decoder(Some(0), true, None, || true));
        assert!(skip_decoder(Some(2), true, None, || true));
        assert!(!skip_decoder(None, true, None, || true));
        assert!(!skip_decoder(None, false, None, || true));
        // decoder = "nvdec" on GPU 2: its own decoder is tried, other GPUs' are not, and a CPU
        // decoder is skipped only when GPU 2 has a decoder for the stream.
        assert!(!skip_decoder(Some(2), true, Some(2), || true));
        assert!(skip_decoder(Some(0), true, Some(2), || true));
        assert!(skip_decoder(None, true, Some(2), || true));
        assert!(!skip_decoder(None, true, Some(2), || false));
        assert!(
            !skip_decoder(None, false, Some(2), || true),
            "parsers and demuxers stay"
        );
    }

    /// A clip's audio is not decoded by a decode pipeline (it throws it away): decodebin stops
    /// at the compressed stream. The video still comes out whole.
    #[test]
    fn a_decode_pipeline_leaves_the_audio_undecoded() {
        use gstreamer::prelude::*;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("av.mp4");
        let p = crate::media::test_clip_av(&path, 30, true);
        assert_eq!(p.audio_streams, 1);
        let mut kept = None;
        let mut n = 0;
        let req = request(&path, &p.frame_pts, 0);
        super::decode_range_reusing(&req, &mut kept, &mut |_| {
            n += 1;
            true
        })
        .unwrap();
        assert_eq!(n, 30);
        let d = kept.expect("the decoder of a local file is kept");
        let klasses: Vec<String> = d
            .pipeline
            .iterate_recurse()
            .into_iter()
            .filter_map(Result::ok)
            .filter_map(|e| e.factory())
            .filter_map(|f| {
                f.metadata(gstreamer::ELEMENT_METADATA_KLASS)
                    .map(String::from)
            })
            .collect();
        assert!(
            klasses.iter().any(|k| k.contains("Decoder/Video")),
            "{klasses:?}"
        );
        assert!(
            !klasses.iter().any(|k| k.contains("Decoder/Audio")),
            "an audio decoder was plugged: {klasses:?}"
        );
    }

    #[test]
    fn worth_decoding_is_the_video_and_its_containers() {
        use super::worth_decoding;
        for yes in [
            "video/quicktime",
            "video/x-h264",
            "application/x-3gp",
            "video/x-matroska",
        ] {
            assert!(worth_decoding(yes), "{yes}");
        }
        for no in [
            "audio/mpeg",
            "audio/x-opus",
            "text/x-raw",
            "subpicture/x-dvd",
            "application/x-subtitle-vtt",
        ] {
            assert!(!worth_decoding(no), "{no}");
        }
    }

    #[test]
    fn nvidia_decoders_are_told_apart_by_gpu() {
        assert_eq!(nvidia_decoder_gpu("nvh264dec"), Some(0));
        assert_eq!(nvidia_decoder_gpu("nvh265sldec"), Some(0));
        assert_eq!(nvidia_decoder_gpu("nvh264device1dec"), Some(1));
        assert_eq!(nvidia_decoder_gpu("nvh264sldevice3dec"), Some(3));
        assert_eq!(nvidia_decoder_gpu("nvmpeg2videodevice12dec"), Some(12));
        assert_eq!(nvidia_decoder_gpu("openh264dec"), None);
        assert_eq!(nvidia_decoder_gpu("avdec_h264"), None);
        assert_eq!(nvidia_decoder_gpu("nvdec"), None);
    }
}
