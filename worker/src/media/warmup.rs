//! A worker's media warm-up before its first lease: the first H.264 pipelines of a process
//! take about 2 s to start (measured on the GPU node with NVDEC and with the CPU decoder alike;
//! later ones 0.2 s), which every pipeline of the first wave of leases otherwise waits out with
//! the GPU idle. Encoding and decoding a tiny clip once pays it at start-up instead.

use super::decode::{decode_range, DecodeRequest};
use crate::error::MediaError;
use gstreamer as gst;
use gstreamer::prelude::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Encodes 4 frames of a test pattern to `dir/framewise-warmup-<pid>-<decoder>.mp4` with x264,
/// probes and decodes them (on `nvdec`'s hardware decoder when the pipelines will use it, else
/// on the CPU), and removes the file. Returns how long it took.
pub fn warm_up(dir: &Path, nvdec: Option<u32>) -> Result<Duration, MediaError> {
    super::init()?;
    let began = Instant::now();
    let tag = nvdec.map_or("cpu".to_string(), |g| format!("nvdec{g}"));
    let path = dir.join(format!("framewise-warmup-{}-{tag}.mp4", std::process::id()));
    let result = encode_and_decode(&path, nvdec);
    let _ = std::fs::remove_file(&path);
    result.map(|()| began.elapsed())
}

fn encode_and_decode(path: &Path, nvdec: Option<u32>) -> Result<(), MediaError> {
    let launch = format!(
        "videotestsrc num-buffers=4 ! video/x-raw,format=I420,width=128,height=72,framerate=25/1 \
         ! x264enc ! h264parse ! mp4mux ! filesink location=\"{}\"",
        path.display()
    );
    let err = |e: &dyn std::fmt::Display| MediaError::Pipeline {
        path: path.into(),
        what: "warming up the media pipelines",
        detail: e.to_string(),
    };
    let pipeline = gst::parse::launch(&launch)
        .map_err(|e| err(&e))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| err(&"not a pipeline"))?;
    let _stop = super::Stopper(pipeline.clone());
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| err(&e))?;
    super::wait_eos(
        &pipeline,
        path,
        "warming up the encoder",
        super::deadline(20),
    )
    .map_err(|e| super::with_secs(e, 20))?;
    pipeline.set_state(gst::State::Null).map_err(|e| err(&e))?;
    let probe = super::probe::probe(path, Duration::from_secs(20))?;
    let req = DecodeRequest {
        path,
        frame_pts: &probe.frame_pts,
        seek_ns: 0,
        size: None,
        stall_timeout: Duration::from_secs(20),
        threads: 1,
        nvdec,
        pool: None,
        nv12: false,
    };
    let n = decode_range(&req, &mut |_| true)?;
    if n != probe.frame_pts.len() as u64 {
        return Err(err(&format!(
            "decoded {n} of {} frames",
            probe.frame_pts.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn warm_up_encodes_and_decodes_a_tiny_clip_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let took = super::warm_up(dir.path(), None).unwrap();
        assert!(took.as_secs() < 20);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
