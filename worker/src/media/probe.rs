//! Probing: demux (no decode) the whole input once to learn the exact frame
//! count, every frame's timestamp, the keyframes, and the audio streams.

use super::{check_input, make, set_state, Stopper};
use crate::error::MediaError;
use gstreamer as gst;
use gstreamer::prelude::*;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a worker learned about an input; the coordinator plans segments from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// As displayed: a stream tagged to be shown rotated by 90 or 270 degrees (phone video)
    /// reports its stored width and height swapped, since decoding turns its frames upright.
    pub width: u32,
    pub height: u32,
    pub fps_num: i32,
    pub fps_den: i32,
    /// Every frame's presentation timestamp, sorted (ns).
    pub frame_pts: Vec<u64>,
    /// Indices into `frame_pts` of keyframes.
    pub keyframes: Vec<u64>,
    /// From the first frame's start to the last frame's end (ns).
    pub duration_ns: u64,
    /// Caps name of the video stream, e.g. video/x-h264.
    pub video_codec: String,
    pub audio_streams: u32,
    pub container: String,
    /// Playback (running) time minus buffer timestamp of the video frames.
    pub running_offset_ns: i64,
}

impl Probe {
    /// Nominal frame duration (ns) from the frame rate, or from the timestamps when the rate is unknown.
    pub fn frame_duration_ns(&self) -> u64 {
        frame_duration_ns(self.fps_num, self.fps_den, &self.frame_pts)
    }
}

/// Frame duration from a rate, falling back to the median timestamp step.
pub fn frame_duration_ns(fps_num: i32, fps_den: i32, pts: &[u64]) -> u64 {
    if fps_num > 0 && fps_den > 0 {
        return (1_000_000_000u64 * fps_den as u64) / fps_num as u64;
    }
    median_step(pts).unwrap_or(40_000_000)
}

/// The median gap between consecutive timestamps (ns), if there are two.
fn median_step(pts: &[u64]) -> Option<u64> {
    let mut steps: Vec<u64> = pts.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
    steps.sort_unstable();
    steps.get(steps.len() / 2).copied()
}

#[derive(Default)]
struct Found {
    video: Option<gst::Caps>,
    audio: u32,
    samples: Vec<(u64, bool)>,
    missing_pts: u64,
    container: String,
    running_offset: Option<i64>,
    /// The video stream's image-orientation tag (e.g. rotate-90), if any.
    orientation: Option<String>,
    /// The first audio codec the MP4 output could not carry.
    unsupported_audio: Option<String>,
    /// Audio streams as the demuxer lists them (parsebin may expose fewer: see below).
    demuxed_audio: Vec<String>,
}

/// Whether mp4mux (the output muxer) accepts this audio, asked of its pad template.
fn mp4_takes(caps: &gst::Caps) -> bool {
    gst::ElementFactory::find("mp4mux")
        .and_then(|f| {
            f.static_pad_templates()
                .iter()
                .find(|t| t.name_template().starts_with("audio"))
                .map(|t| t.caps())
        })
        .is_none_or(|tmpl| tmpl.can_intersect(caps))
}

/// Reads the container of `path`; fails with a clear error for anything that is not a decodable video.
pub fn probe(path: &Path, timeout: Duration) -> Result<Probe, MediaError> {
    check_input(path)?;
    super::init()?;
    // Reading a small file's container takes milliseconds, yet about once in ten CI runs
    // GStreamer 1.22 stalled for good on a 64-byte damaged MP4 (typefind's and qtdemux's
    // streaming threads both waiting, no EOS, no error). A small local file therefore gets a
    // short deadline and one more try before the stall is reported.
    let small = !super::is_remote(path)
        && std::fs::metadata(path).is_ok_and(|m| m.len() <= SMALL_FILE_BYTES);
    if small && timeout > SMALL_FILE_DEADLINE {
        match probe_once(path, SMALL_FILE_DEADLINE) {
            Err(MediaError::Timeout { .. }) => {
                tracing::warn!(path = %path.display(), "probe stalled; trying once more");
                return probe_once(path, SMALL_FILE_DEADLINE);
            }
            other => return other,
        }
    }
    probe_once(path, timeout)
}

/// Files up to this size get `SMALL_FILE_DEADLINE` per probe attempt.
const SMALL_FILE_BYTES: u64 = 8 << 20;
const SMALL_FILE_DEADLINE: Duration = Duration::from_secs(20);

fn probe_once(path: &Path, timeout: Duration) -> Result<Probe, MediaError> {
    let pipeline = gst::Pipeline::new();
    let _stop = Stopper(pipeline.clone());
    let src = super::source_element(path)?;
    let parse = make("parsebin")?;
    pipeline
        .add_many([&src, &parse])
        .map_err(|e| pipe(path, e))?;
    src.link(&parse).map_err(|e| pipe(path, e))?;

    let found = Arc::new(Mutex::new(Found::default()));
    let weak = pipeline.downgrade();
    let f = found.clone();
    parse.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        let f = f.clone();
        super::on_final_caps(pad, move |pad, caps| {
            let name = caps
                .structure(0)
                .map(|s| s.name().to_string())
                .unwrap_or_default();
            let mut st = f.lock().unwrap_or_else(|p| p.into_inner());
            if name.starts_with("video/") && st.video.is_none() {
                st.video = Some(caps.clone());
                let f2 = f.clone();
                let probe_type = gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM;
                pad.add_probe(probe_type, move |pad, info| {
                    if let Some(gst::PadProbeData::Event(ev)) = &info.data {
                        if let gst::EventView::Tag(t) = ev.view() {
                            if let Some(o) = t.tag().get::<gst::tags::ImageOrientation>() {
                                f2.lock().unwrap_or_else(|p| p.into_inner()).orientation =
                                    Some(o.get().to_string());
                            }
                        }
                    }
                    if let Some(buf) = info.buffer() {
                        let mut st = f2.lock().unwrap_or_else(|p| p.into_inner());
                        if st.running_offset.is_none() {
                            if let (Some(pts), Some(ev)) =
                                (buf.pts(), pad.sticky_event::<gst::event::Segment>(0))
                            {
                                if let Some(seg) = ev.segment().downcast_ref::<gst::ClockTime>() {
                                    if let Some(rt) = seg.to_running_time(pts) {
                                        st.running_offset =
                                            Some(rt.nseconds() as i64 - pts.nseconds() as i64);
                                    }
                                }
                            }
                        }
                        match buf.pts().or(buf.dts()) {
                            Some(t) => st.samples.push((
                                t.nseconds(),
                                !buf.flags().contains(gst::BufferFlags::DELTA_UNIT),
                            )),
                            None => st.missing_pts += 1,
                        }
                    }
                    gst::PadProbeReturn::Ok
                });
            } else if name.starts_with("audio/") {
                st.audio += 1;
                // Audio MP4 cannot carry is re-encoded to AAC at assembly, if it can be decoded.
                if st.unsupported_audio.is_none() && !mp4_takes(caps) && !decoder_exists(caps) {
                    st.unsupported_audio = Some(name.clone());
                }
            }
        });
        let Ok(sink) = gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .property("async", false)
            .build()
        else {
            return;
        };
        if pipeline.add(&sink).is_ok() {
            let _ = sink.sync_state_with_parent();
            if let Some(sp) = sink.static_pad("sink") {
                let _ = pad.link(&sp);
            }
        }
    });
    // The container name, from the typefinder inside parsebin.
    let f = found.clone();
    parse.connect("element-added", false, move |args| {
        if let Ok(el) = args[1].get::<gst::Element>() {
            if let Some(fac) = el.factory() {
                if fac.has_type(gst::ElementFactoryType::DEMUXER) {
                    f.lock().unwrap_or_else(|p| p.into_inner()).container = fac.name().to_string();
                    let f = f.clone();
                    el.connect_pad_added(move |_, pad| {
                        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
                        if let Some(name) = caps
                            .structure(0)
                            .map(|s| s.name().to_string())
                            .filter(|n| n.starts_with("audio/"))
                        {
                            f.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .demuxed_audio
                                .push(name);
                        }
                    });
                }
            }
        }
        None
    });

    set_state(
        &pipeline,
        path,
        gst::State::Playing,
        "reading the container",
    )?;
    let deadline = Instant::now() + timeout;
    super::wait_eos(&pipeline, path, "reading the container", deadline)
        .map_err(|e| super::with_secs(e, timeout.as_secs()))?;
    let _ = pipeline.set_state(gst::State::Null);

    let st = std::mem::take(&mut *found.lock().unwrap_or_else(|p| p.into_inner()));
    let caps = st.video.ok_or_else(|| MediaError::NoVideo(path.into()))?;
    let s = caps
        .structure(0)
        .ok_or_else(|| MediaError::NoVideo(path.into()))?;
    let codec = s.name().to_string();
    if !decoder_exists(&caps) {
        return Err(MediaError::UnsupportedCodec {
            path: path.into(),
            codec,
        });
    }
    let (mut width, mut height) = (
        s.get::<i32>("width").unwrap_or(0),
        s.get::<i32>("height").unwrap_or(0),
    );
    if st.orientation.as_deref().is_some_and(turns_sideways) {
        std::mem::swap(&mut width, &mut height);
    }
    if width <= 0 || height <= 0 {
        return Err(MediaError::Corrupt {
            path: path.into(),
            detail: format!("video stream has no size ({codec})"),
        });
    }
    if st.missing_pts > 0 {
        return Err(MediaError::Corrupt {
            path: path.into(),
            detail: format!("{} video packets carry no timestamp", st.missing_pts),
        });
    }
    let caps_fps = match s.get::<gst::Fraction>("framerate") {
        Ok(f) if f.numer() > 0 && f.denom() > 0 => Some((f.numer(), f.denom())),
        _ => None,
    };
    let mut samples = st.samples;
    if samples.is_empty() {
        return Err(MediaError::Corrupt {
            path: path.into(),
            detail: "video stream has no frames".into(),
        });
    }
    samples.sort_unstable_by_key(|s| s.0);
    if samples.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(MediaError::Corrupt {
            path: path.into(),
            detail: "two video frames share one timestamp".into(),
        });
    }
    let frame_pts: Vec<u64> = samples.iter().map(|s| s.0).collect();
    let (fps_num, fps_den) = nominal_fps(caps_fps, &frame_pts);
    let mut keyframes: Vec<u64> = samples
        .iter()
        .enumerate()
        .filter(|(_, s)| s.1)
        .map(|(i, _)| i as u64)
        .collect();
    if keyframes.first() != Some(&0) {
        keyframes.insert(0, 0);
    }
    // An audio stream parsebin never exposed (it happens when no decoder for it is installed)
    // would silently vanish from the output: refuse rather than drop it.
    if st.demuxed_audio.len() > st.audio as usize {
        return Err(MediaError::UnparsedAudio {
            path: path.into(),
            codec: st.demuxed_audio.join(", "),
        });
    }
    // Found now rather than after every segment was stylized: the output could not hold this audio.
    if let Some(codec) = st.unsupported_audio.clone() {
        return Err(MediaError::UnsupportedAudio {
            path: path.into(),
            codec,
        });
    }
    let fd = frame_duration_ns(fps_num, fps_den, &frame_pts);
    let duration_ns = frame_pts[frame_pts.len() - 1] - frame_pts[0] + fd;
    Ok(Probe {
        width: width as u32,
        height: height as u32,
        fps_num,
        fps_den,
        frame_pts,
        keyframes,
        duration_ns,
        video_codec: codec,
        audio_streams: st.audio,
        container: st.container,
        running_offset_ns: st.running_offset.unwrap_or(0),
    })
}

/// Whether an image-orientation tag turns the picture a quarter turn (width and height swap).
pub fn turns_sideways(orientation: &str) -> bool {
    matches!(
        orientation,
        "rotate-90" | "rotate-270" | "flip-rotate-90" | "flip-rotate-270"
    )
}

/// The rate the encoder and muxer are told (every frame keeps its own timestamp whatever it is):
/// the container's, unless the frames' spacing says it is implausible, as with variable-frame-rate
/// files (qtdemux reported 1000000000/1 for one, and x264 and mp4mux then wrote an unplayable
/// file); then the rate of the median frame interval, snapped to a standard rate where close.
pub fn nominal_fps(caps: Option<(i32, i32)>, pts: &[u64]) -> (i32, i32) {
    // The probe's timestamps are sorted and distinct, so the median gap is positive.
    let Some(median) = median_step(pts).filter(|m| *m > 0) else {
        return caps.unwrap_or((0, 1));
    };
    if let Some((n, d)) = caps {
        let caps_gap = 1e9 * d as f64 / n as f64;
        if caps_gap >= median as f64 / 2.0 && caps_gap <= median as f64 * 2.0 {
            return (n, d);
        }
    }
    match gstreamer_video::guess_framerate(gst::ClockTime::from_nseconds(median)) {
        Some(f) if f.numer() > 0 && f.denom() > 0 => (f.numer(), f.denom()),
        _ => caps.unwrap_or((0, 1)),
    }
}

fn decoder_exists(caps: &gst::Caps) -> bool {
    if caps.structure(0).is_some_and(|s| s.name() == "video/x-raw") {
        return true;
    }
    gst::ElementFactory::factories_with_type(gst::ElementFactoryType::DECODER, gst::Rank::MARGINAL)
        .iter()
        .any(|f| f.can_sink_any_caps(caps))
}

fn pipe(path: &Path, e: impl std::fmt::Display) -> MediaError {
    MediaError::Pipeline {
        path: path.into(),
        what: "building the probe pipeline",
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::nominal_fps;

    #[test]
    fn the_container_rate_is_kept_unless_the_frames_contradict_it() {
        gstreamer::init().unwrap();
        let even: Vec<u64> = (0..10).map(|i| i * 40_000_000).collect();
        assert_eq!(nominal_fps(Some((25, 1)), &even), (25, 1));
        assert_eq!(
            nominal_fps(Some((30000, 1001)), &[0, 33_366_667]),
            (30000, 1001)
        );
        // Variable spacing around 40 ms with a nonsense container rate: 25 fps.
        let vfr = [
            0,
            40_000_000,
            70_000_000,
            110_000_000,
            160_000_000,
            200_000_000,
        ];
        assert_eq!(nominal_fps(Some((1_000_000_000, 1)), &vfr), (25, 1));
        assert_eq!(nominal_fps(None, &vfr), (25, 1));
        // Nothing to go by.
        assert_eq!(nominal_fps(None, &[0]), (0, 1));
        assert_eq!(nominal_fps(Some((24, 1)), &[5]), (24, 1));
    }
}
