//! Encoding stylized frames into one H.264 MP4 segment (appsrc → x264enc →
//! mp4mux). Every segment of a job uses the same settings so assembly can
//! concatenate them without re-encoding.

use super::pool::{FramePool, Lent};
use super::to_i420::ToI420;
use super::{make, set_state, Frame, Stopper};
use crate::error::MediaError;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// x264 settings shared by all segments of a job.
#[derive(Debug, Clone)]
pub struct EncoderSettings {
    pub crf: u32,
    pub preset: String,
    /// x264 threads; 0 = x264's own choice (all cores), right for one pipeline per machine.
    pub threads: u32,
}

/// Picture geometry of a segment.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// Size of the frames pushed in (after --max-size scaling).
    pub in_size: (u32, u32),
    /// Size written to the file (the source size).
    pub out_size: (u32, u32),
    pub fps: (i32, i32),
}

/// An open segment file being written.
pub struct SegmentEncoder {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    path: PathBuf,
    /// Where pushed frames' buffers go once x264 has encoded them.
    pool: FramePool,
    /// Frames converted to I420 here rather than by `videoconvert` (to_i420.rs), where the
    /// encoder takes I420 at the frames' own size.
    to_i420: Option<ToI420>,
    _stop: Stopper,
}

impl SegmentEncoder {
    /// Opens `path` for writing; frames must then be pushed with timestamps starting at 0.
    pub fn create(
        path: &Path,
        geo: Geometry,
        settings: &EncoderSettings,
    ) -> Result<Self, MediaError> {
        super::init()?;
        let err = |e: &dyn std::fmt::Display| MediaError::Pipeline {
            path: path.into(),
            what: "building the encode pipeline",
            detail: e.to_string(),
        };
        let pipeline = gst::Pipeline::new();
        let stop = Stopper(pipeline.clone());
        let (iw, ih) = geo.in_size;
        let (ow, oh) = geo.out_size;
        let fps = gst::Fraction::new(geo.fps.0.max(0), geo.fps.1.max(1));
        let direct = (geo.in_size == geo.out_size)
            .then(|| direct_i420(iw, ih, fps))
            .flatten();
        let caps = match &direct {
            Some((caps, _)) => caps.clone(),
            None => gst::Caps::builder("video/x-raw")
                .field("format", "RGB")
                .field("width", iw as i32)
                .field("height", ih as i32)
                .field("framerate", fps)
                .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                .build(),
        };
        let src = gst_app::AppSrc::builder()
            .caps(&caps)
            .format(gst::Format::Time)
            .block(true)
            .max_bytes((iw as u64 * ih as u64 * 3 * 4).max(1 << 20))
            .build();
        let convert = make("videoconvert")?;
        let scale = make("videoscale")?;
        // 4:2:0 needs even sizes; odd sizes keep full chroma instead of being cropped.
        let format = if ow % 2 == 0 && oh % 2 == 0 {
            "I420"
        } else {
            "Y444"
        };
        let filter = make("capsfilter")?;
        filter.set_property(
            "caps",
            gst::Caps::builder("video/x-raw")
                .field("format", format)
                .field("width", ow as i32)
                .field("height", oh as i32)
                // Square pixels at the exact size: otherwise videoscale keeps the inference
                // frame's aspect by flagging the output's pixels non-square (32/33 was seen).
                .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                .build(),
        );
        let x264 = make("x264enc")?;
        x264.set_property_from_str("speed-preset", &settings.preset);
        x264.set_property_from_str("pass", "qual");
        x264.set_property("quantizer", settings.crf.clamp(0, 50));
        x264.set_property("bframes", 0u32);
        x264.set_property("key-int-max", 250u32);
        x264.set_property("threads", settings.threads);
        let parse = make("h264parse")?;
        let mux = make("mp4mux")?;
        let sink = make("filesink")?;
        sink.set_property("location", path.to_string_lossy().as_ref());
        let chain = [
            src.upcast_ref(),
            &convert,
            &scale,
            &filter,
            &x264,
            &parse,
            &mux,
            &sink,
        ];
        pipeline.add_many(chain).map_err(|e| err(&e))?;
        gst::Element::link_many(chain).map_err(|e| err(&e))?;
        set_state(&pipeline, path, gst::State::Playing, "starting the encoder")?;
        Ok(Self {
            pipeline,
            src,
            path: path.into(),
            pool: FramePool::default(),
            to_i420: direct.map(|(_, c)| c),
            _stop: stop,
        })
    }

    /// Hands the frames' buffers back to `pool` once x264 is done with them.
    pub fn recycling_into(mut self, pool: FramePool) -> Self {
        self.pool = pool;
        self
    }

    /// Queues one frame, taking its pixels over (no copy where rows need no padding); blocks
    /// while the encoder is busy (bounded memory).
    pub fn push(&self, frame: Frame, pts_ns: u64, duration_ns: u64) -> Result<(), MediaError> {
        let (w, h) = (frame.width as usize, frame.height as usize);
        // GStreamer's RGB rows are padded to 4 bytes; frames are tightly packed.
        let row = w * 3;
        let stride = (row + 3) & !3;
        let data = if let Some(conv) = &self.to_i420 {
            if frame.data.len() != w * h * 3 || frame.yuv.is_some() {
                return Err(self.fail(&format!(
                    "a {w}x{h} frame of {} bytes is not RGB of that size",
                    frame.data.len()
                )));
            }
            let mut d = self.pool.take(w * h * 3 / 2);
            d.resize(w * h * 3 / 2, 0);
            conv.convert(&frame.data, w, h, &mut d);
            self.pool.give(frame.data);
            d
        } else if stride == row {
            frame.data
        } else {
            let mut d = self.pool.take(stride * frame.height as usize);
            d.resize(stride * frame.height as usize, 0);
            for (dst, src) in d.chunks_exact_mut(stride).zip(frame.data.chunks_exact(row)) {
                dst[..row].copy_from_slice(src);
            }
            self.pool.give(frame.data);
            d
        };
        let mut buf = gst::Buffer::from_mut_slice(Lent::new(data, self.pool.clone()));
        {
            let b = buf
                .get_mut()
                .ok_or_else(|| self.fail("buffer not writable"))?;
            b.set_pts(gst::ClockTime::from_nseconds(pts_ns));
            b.set_duration(gst::ClockTime::from_nseconds(duration_ns));
        }
        self.src.push_buffer(buf).map_err(|e| {
            super::bus_error(&self.pipeline, &self.path, "encoding")
                .unwrap_or_else(|| self.fail(&e.to_string()))
        })?;
        Ok(())
    }

    /// Ends the stream and waits until the file is complete (the MP4 index written).
    pub fn finish(self, timeout: Duration) -> Result<(), MediaError> {
        self.src
            .end_of_stream()
            .map_err(|e| self.fail(&e.to_string()))?;
        super::wait_eos(
            &self.pipeline,
            &self.path,
            "finishing the segment",
            super::deadline(timeout.as_secs()),
        )
        .map_err(|e| super::with_secs(e, timeout.as_secs()))
    }

    fn fail(&self, detail: &str) -> MediaError {
        MediaError::Write {
            path: self.path.clone(),
            detail: detail.to_string(),
        }
    }
}

/// Whether frames of `geo` are converted to I420 by framewise (to_i420.rs) rather than by
/// `videoconvert`: benchmarks say which conversion their encode ceiling includes.
pub fn converts_to_i420_itself(geo: Geometry) -> bool {
    geo.in_size == geo.out_size
        && direct_i420(geo.in_size.0, geo.in_size.1, gst::Fraction::new(25, 1)).is_some()
}

/// The caps and conversion for pushing I420 converted here, where GStreamer's default I420
/// layout at this size is tight (the planes back to back, rows unpadded: both sides even and
/// the width a multiple of 8, as 640x360, 1280x720, 1920x1080); None otherwise (RGB is pushed
/// and `videoconvert` converts it). The colorimetry is I420's default at this size, the one
/// `videoconvert` would have chosen.
fn direct_i420(w: u32, h: u32, fps: gst::Fraction) -> Option<(gst::Caps, ToI420)> {
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, w, h)
        .fps(fps)
        .par(gst::Fraction::new(1, 1))
        .build()
        .ok()?;
    let (wu, hu) = (w as usize, h as usize);
    let tight = info.stride() == [w as i32, w as i32 / 2, w as i32 / 2]
        && info.offset() == [0, wu * hu, wu * hu + wu * hu / 4]
        && info.size() == wu * hu * 3 / 2;
    if !tight || w % 2 == 1 || h % 2 == 1 {
        return None;
    }
    let yuv = super::yuv_of(&info.colorimetry(), h);
    let cosited = info
        .chroma_site()
        .contains(gst_video::VideoChromaSite::H_COSITED);
    Some((info.to_caps().ok()?, ToI420::new(&yuv, cosited)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::decode::{decode_range, test_request};
    use crate::media::probe::probe;

    #[test]
    fn frames_are_converted_here_where_the_i420_layout_is_tight() {
        crate::media::init().unwrap();
        let fps = gst::Fraction::new(25, 1);
        for (w, h) in [(1280, 720), (640, 360), (1920, 1080), (64, 48)] {
            assert!(direct_i420(w, h, fps).is_some(), "{w}x{h}");
        }
        // Chroma rows padded to 4 bytes (1278 / 2 = 639, 100 / 2 = 50), or odd sides: RGB.
        for (w, h) in [(1278, 720), (100, 50), (63, 48), (64, 47)] {
            assert!(direct_i420(w, h, fps).is_none(), "{w}x{h}");
        }
        let geo = |in_size, out_size| Geometry {
            in_size,
            out_size,
            fps: (25, 1),
        };
        assert!(converts_to_i420_itself(geo((1280, 720), (1280, 720))));
        assert!(
            !converts_to_i420_itself(geo((640, 360), (1280, 720))),
            "scaled"
        );
        assert!(!converts_to_i420_itself(geo((1278, 720), (1278, 720))));
        let matrix = |w, h| {
            let (caps, _) = direct_i420(w, h, fps).unwrap();
            let s = caps.structure(0).unwrap();
            s.get::<String>("colorimetry").unwrap()
        };
        assert_eq!(matrix(1280, 720), "bt709");
        assert_eq!(matrix(640, 360), "bt601");
    }

    /// Frames converted here come back from the file as the colours pushed: the conversion's
    /// matrix is the one the caps name (saturated colours tell bt601 from bt709 by ~20 levels).
    #[test]
    fn an_encoded_segment_decodes_to_the_frames_pushed() {
        crate::media::init().unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (w, h) in [(64u32, 48u32), (64, 720)] {
            let path = dir.path().join(format!("seg{h}.mp4"));
            let geo = Geometry {
                in_size: (w, h),
                out_size: (w, h),
                fps: (25, 1),
            };
            let settings = EncoderSettings {
                crf: 10,
                preset: "ultrafast".into(),
                threads: 1,
            };
            let enc = SegmentEncoder::create(&path, geo, &settings).unwrap();
            assert!(enc.to_i420.is_some());
            // Flat blocks of saturated colours (little for x264 to lose).
            let colours = [
                [255u8, 0, 0],
                [0, 255, 0],
                [0, 0, 255],
                [255, 255, 0],
                [40, 40, 40],
            ];
            let mut rgb = Vec::with_capacity((w * h * 3) as usize);
            for _ in 0..h {
                for x in 0..w {
                    rgb.extend_from_slice(&colours[(x / 16) as usize % colours.len()]);
                }
            }
            let frame_ns = 40_000_000;
            for i in 0..5u64 {
                let f = Frame {
                    pts: i * frame_ns,
                    width: w,
                    height: h,
                    data: rgb.clone(),
                    yuv: None,
                };
                enc.push(f, i * frame_ns, frame_ns).unwrap();
            }
            enc.finish(Duration::from_secs(20)).unwrap();
            let p = probe(&path, Duration::from_secs(20)).unwrap();
            assert_eq!(p.frame_pts.len(), 5);
            let mut back = Vec::new();
            decode_range(&test_request(&path, &p.frame_pts, 0), &mut |f| {
                back.push(f);
                true
            })
            .unwrap();
            assert_eq!(back.len(), 5);
            // Away from the blocks' edges (chroma is shared by 2x2 pixels).
            for y in (4..h - 4).step_by(7) {
                for x in (0..w).filter(|x| (3..13).contains(&(x % 16))) {
                    let at = ((y * w + x) * 3) as usize;
                    for c in 0..3 {
                        let (a, b) = (back[2].data[at + c], rgb[at + c]);
                        assert!(
                            a.abs_diff(b) <= 6,
                            "{w}x{h} ({x}, {y}) channel {c}: {a} against {b}"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod against_videoconvert {
    use super::*;

    /// The I420 `videoconvert` makes of `rgb` with the caps `direct_i420` gives (a test's
    /// reference: the conversion framewise's replaced).
    fn videoconvert_i420(rgb: &[u8], w: u32, h: u32) -> Vec<u8> {
        crate::media::init().unwrap();
        let fps = gst::Fraction::new(25, 1);
        let (caps, _) = direct_i420(w, h, fps).unwrap();
        let p = gst::Pipeline::new();
        let src = gst_app::AppSrc::builder()
            .caps(
                &gst::Caps::builder("video/x-raw")
                    .field("format", "RGB")
                    .field("width", w as i32)
                    .field("height", h as i32)
                    .field("framerate", fps)
                    .build(),
            )
            .format(gst::Format::Time)
            .build();
        let convert = make("videoconvert").unwrap();
        let sink = gstreamer_app::AppSink::builder().caps(&caps).build();
        p.add_many([src.upcast_ref(), &convert, sink.upcast_ref()])
            .unwrap();
        gst::Element::link_many([src.upcast_ref(), &convert, sink.upcast_ref()]).unwrap();
        p.set_state(gst::State::Playing).unwrap();
        let mut b = gst::Buffer::from_slice(rgb.to_vec());
        b.get_mut().unwrap().set_pts(gst::ClockTime::ZERO);
        src.push_buffer(b).unwrap();
        let s = sink.pull_sample().unwrap();
        let out = s.buffer().unwrap().map_readable().unwrap().to_vec();
        p.set_state(gst::State::Null).unwrap();
        out
    }

    #[test]
    fn framewise_conversion_is_videoconverts_within_rounding() {
        for (w, h) in [(64u32, 48u32), (64, 720)] {
            let (wu, hu) = (w as usize, h as usize);
            // Smooth gradients with a texture, as stylized frames have.
            let mut rgb = Vec::with_capacity(wu * hu * 3);
            for y in 0..hu {
                for x in 0..wu {
                    let t = ((x * 37 + y * 11) % 23) as u8;
                    rgb.extend_from_slice(&[(x * 4) as u8 ^ t, (y % 256) as u8, 200 - t * 3]);
                }
            }
            let theirs = videoconvert_i420(&rgb, w, h);
            let (_, conv) = direct_i420(w, h, gst::Fraction::new(25, 1)).unwrap();
            let mut ours = vec![0u8; wu * hu * 3 / 2];
            conv.convert(&rgb, wu, hu, &mut ours);
            assert_eq!(theirs.len(), ours.len());
            let diff = |a: &[u8], b: &[u8]| {
                let max = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
                let mean = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| f64::from(x.abs_diff(*y)))
                    .sum::<f64>()
                    / a.len() as f64;
                (max, mean)
            };
            let (ly, lc) = (wu * hu, wu * hu / 2);
            let y = diff(&ours[..ly], &theirs[..ly]);
            let c = diff(&ours[ly..ly + lc], &theirs[ly..ly + lc]);
            // Rounding apart; the chroma's last columns differ most (GStreamer's filter edge).
            assert!(
                y.0 <= 1 && y.1 < 0.5,
                "{w}x{h} luma: max {} mean {}",
                y.0,
                y.1
            );
            assert!(
                c.0 <= 4 && c.1 < 0.5,
                "{w}x{h} chroma: max {} mean {}",
                c.0,
                c.1
            );
        }
    }
}
