//! Encoding stylized frames into one H.264 MP4 segment (appsrc → x264enc →
//! mp4mux). Every segment of a job uses the same settings so assembly can
//! concatenate them without re-encoding.

use super::pool::{FramePool, Lent};
use super::{make, set_state, Frame, Stopper};
use crate::error::MediaError;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
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
        let caps = gst::Caps::builder("video/x-raw")
            .field("format", "RGB")
            .field("width", iw as i32)
            .field("height", ih as i32)
            .field(
                "framerate",
                gst::Fraction::new(geo.fps.0.max(0), geo.fps.1.max(1)),
            )
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
            .build();
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
        // GStreamer's RGB rows are padded to 4 bytes; frames are tightly packed.
        let row = frame.width as usize * 3;
        let stride = (row + 3) & !3;
        let data = if stride == row {
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
