//! One Segment task: decode → stylize → encode, as three stages joined by
//! bounded channels, so decoding and encoding overlap with inference and
//! memory stays bounded whatever the segment's length.

use crate::error::{MediaError, ModelError};
use crate::inference::Stylizer;
use crate::media::decode::{decode_range, DecodeRequest};
use crate::media::encode::{EncoderSettings, Geometry, SegmentEncoder};
use crate::media::Frame;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::Duration;
use thiserror::Error;

/// Why a segment did not complete.
#[derive(Debug, Error)]
pub enum SegmentError {
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cancelled: the lease was lost or the job cancelled")]
    Cancelled,
    #[error("{0}")]
    Internal(String),
}

/// Everything a worker needs to produce one segment file.
#[derive(Debug, Clone)]
pub struct SegmentSpec<'a> {
    pub input: &'a Path,
    pub output: &'a Path,
    /// Timestamps of the frames of this segment (ns, sorted).
    pub frame_pts: &'a [u64],
    pub seek_ns: u64,
    /// Source picture size and rate.
    pub size: (u32, u32),
    pub fps: (i32, i32),
    /// Nominal frame duration (for the last frame's duration).
    pub frame_duration_ns: u64,
    /// Longer side limit for inference (0 = full size).
    pub max_size: u32,
    pub style: &'a [f32],
    pub encoder: &'a EncoderSettings,
}

/// The size frames are stylized at: the source size, or scaled so the longer side fits `max_size`.
pub fn inference_size(size: (u32, u32), max_size: u32) -> (u32, u32) {
    let (w, h) = size;
    let long = w.max(h);
    if max_size == 0 || long <= max_size {
        return size;
    }
    let s = max_size as f64 / long as f64;
    let even = |v: u32| ((((v as f64) * s).round() as u32).max(2) + 1) & !1;
    (even(w), even(h))
}

const DEPTH: usize = 4;
const STALL: Duration = Duration::from_secs(120);

/// Produces the segment file; `progress` counts frames stylized, `cancel` stops it early.
pub fn run_segment(
    spec: &SegmentSpec,
    model: &mut Stylizer,
    progress: &AtomicU64,
    cancel: &AtomicBool,
) -> Result<u64, SegmentError> {
    let n = spec.frame_pts.len();
    if n == 0 {
        return Err(SegmentError::Internal("empty segment".into()));
    }
    let infer_size = inference_size(spec.size, spec.max_size);
    let geo = Geometry {
        in_size: infer_size,
        out_size: spec.size,
        fps: spec.fps,
    };
    let encoder = SegmentEncoder::create(spec.output, geo, spec.encoder)?;
    let first_pts = spec.frame_pts[0];
    let durations: Vec<u64> = (0..n)
        .map(|i| {
            if i + 1 < n {
                spec.frame_pts[i + 1] - spec.frame_pts[i]
            } else {
                spec.frame_duration_ns
            }
        })
        .collect();

    let (dec_tx, dec_rx) = sync_channel::<Frame>(DEPTH);
    let (enc_tx, enc_rx) = sync_channel::<Frame>(DEPTH);
    std::thread::scope(|s| -> Result<u64, SegmentError> {
        let decoder = s.spawn(move || {
            let req = DecodeRequest {
                path: spec.input,
                frame_pts: spec.frame_pts,
                seek_ns: spec.seek_ns,
                size: (infer_size != spec.size).then_some(infer_size),
                stall_timeout: STALL,
            };
            decode_range(&req, &mut |f| {
                dec_tx.send(f).is_ok() && !cancel.load(Ordering::Relaxed)
            })
        });
        let enc = s.spawn(move || -> Result<u64, MediaError> {
            let mut i = 0usize;
            for f in enc_rx {
                encoder.push(&f, f.pts - first_pts, durations[i])?;
                i += 1;
            }
            if i == n {
                encoder.finish(STALL)?;
            }
            Ok(i as u64)
        });

        let mut done = 0u64;
        let mut failure: Option<SegmentError> = None;
        for frame in dec_rx.iter() {
            if cancel.load(Ordering::Relaxed) {
                failure = Some(SegmentError::Cancelled);
                break;
            }
            let out = match model.stylize(&frame, spec.style) {
                Ok(o) => o,
                Err(e) => {
                    failure = Some(e.into());
                    break;
                }
            };
            if enc_tx.send(out).is_err() {
                break; // the encoder failed; its error is reported below
            }
            done += 1;
            progress.store(done, Ordering::Relaxed);
        }
        drop(enc_tx);
        // Unblock the decoder if we stopped early.
        drop(dec_rx);
        let decoded = decoder
            .join()
            .map_err(|_| SegmentError::Internal("decoder thread panicked".into()))?;
        let encoded = enc
            .join()
            .map_err(|_| SegmentError::Internal("encoder thread panicked".into()))?;
        if let Some(f) = failure {
            return Err(f);
        }
        decoded?;
        let encoded = encoded?;
        if cancel.load(Ordering::Relaxed) {
            return Err(SegmentError::Cancelled);
        }
        if encoded != n as u64 {
            return Err(SegmentError::Media(MediaError::Corrupt {
                path: spec.input.into(),
                detail: format!("decoded {encoded} of the {n} frames of this range"),
            }));
        }
        Ok(encoded)
    })
}

#[cfg(test)]
mod tests {
    use super::inference_size;

    #[test]
    fn max_size_scales_the_long_side() {
        assert_eq!(inference_size((1280, 720), 0), (1280, 720));
        assert_eq!(inference_size((1280, 720), 2000), (1280, 720));
        assert_eq!(inference_size((1280, 720), 320), (320, 180));
        assert_eq!(inference_size((318, 178), 100), (100, 56));
    }
}
