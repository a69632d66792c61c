//! One Segment task: decode → stylize → encode, as three stages joined by
//! bounded channels, so decoding and encoding overlap with inference and
//! memory stays bounded whatever the segment's length; a fourth thread finishes
//! each chunk file while the next chunk's frames are encoded.

use crate::error::{MediaError, ModelError};
use crate::inference::Stylizer;
use crate::media::decode::{decode_range_reusing, DecodeRequest, OpenDecoder};
use crate::media::encode::{EncoderSettings, Geometry, SegmentEncoder};
use crate::media::Frame;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use thiserror::Error;
use tracing::info;

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

/// A chunk checkpoint written and ready to commit: frames [start, end) in `path`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkDone {
    pub start: u64,
    pub end: u64,
    pub path: PathBuf,
}

/// Everything a worker needs to stylize one leased range, chunk by chunk.
pub struct SegmentSpec<'a> {
    pub input: &'a Path,
    /// Directory of this attempt; chunk files are `<first frame>.mp4` inside it.
    pub output_dir: &'a Path,
    /// Index of the first frame of the range (frame_pts[0]).
    pub start_frame: u64,
    /// Timestamps of the frames of the leased range (ns, sorted).
    pub frame_pts: &'a [u64],
    pub seek_ns: u64,
    /// Frames per chunk checkpoint, counted from `start_frame`.
    pub chunk_frames: u64,
    /// Source picture size and rate.
    pub size: (u32, u32),
    pub fps: (i32, i32),
    /// Nominal frame duration (for the last frame's duration).
    pub frame_duration_ns: u64,
    /// Longer side limit for inference (0 = full size).
    pub max_size: u32,
    pub style: &'a [f32],
    pub encoder: &'a EncoderSettings,
    /// The GPU whose NVDEC decodes the range (`worker.decoder = "nvdec"`); None = the CPU.
    pub nvdec: Option<u32>,
}

/// Shared with the lease loop while a range is processed.
pub struct SegmentControl<'a> {
    /// Frames stylized so far in this lease.
    pub progress: &'a AtomicU64,
    /// Stop now (lease lost, job cancelled, eviction).
    pub cancel: &'a AtomicBool,
    /// Absolute frame the range now ends at; work stealing may lower it (always at a chunk boundary).
    pub limit: &'a AtomicU64,
    /// Called with each finished chunk, in order, to commit it.
    pub on_chunk: &'a (dyn Fn(ChunkDone) + Sync),
    /// The pipeline's decoder left open by its last range, reused when this range reads the
    /// same input (media/decode.rs); None: a new decoder for every range.
    pub decoder: Option<&'a Mutex<Option<OpenDecoder>>>,
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

/// The chunk file for a chunk starting at `first`.
pub fn chunk_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(framewise_common::storage::chunk_name(first))
}

/// Stylizes the range until it ends (or `limit` says it ends earlier), writing and handing
/// over one chunk file per `chunk_frames`. Returns the frames in finished chunks.
pub fn run_segment(
    spec: &SegmentSpec,
    model: &mut Stylizer,
    ctl: &SegmentControl,
) -> Result<u64, SegmentError> {
    let n = spec.frame_pts.len() as u64;
    if n == 0 {
        return Err(SegmentError::Internal("empty segment".into()));
    }
    std::fs::create_dir_all(spec.output_dir).map_err(|e| {
        SegmentError::Media(MediaError::Write {
            path: spec.output_dir.into(),
            detail: e.to_string(),
        })
    })?;
    let (start, k) = (spec.start_frame, spec.chunk_frames.max(1));
    let range_end = start + n;
    let infer_size = inference_size(spec.size, spec.max_size);
    let geo = Geometry {
        in_size: infer_size,
        out_size: spec.size,
        fps: spec.fps,
    };
    let pts = |i: u64| spec.frame_pts[(i - start) as usize];
    let duration = |i: u64| {
        if i + 1 < range_end {
            pts(i + 1) - pts(i)
        } else {
            spec.frame_duration_ns
        }
    };
    let within = |i: u64| {
        i < ctl.limit.load(Ordering::Relaxed).min(range_end) && !ctl.cancel.load(Ordering::Relaxed)
    };

    // Spans: segment (with its stage totals) → one per chunk, exported when tracing is on.
    let seg_span = tracing::info_span!(
        "segment",
        start,
        frames = n,
        decode_wait_ms = tracing::field::Empty,
        infer_ms = tracing::field::Empty,
        encode_ms = tracing::field::Empty
    );
    let _entered = seg_span.enter();
    let seg_span = &seg_span;
    // Room for a batch being decoded while the previous one is inferred.
    let batch = model.max_batch();
    // Frames go as NV12 to a model that converts them on its GPU (pixels_op.rs): NVDEC's own
    // frames, or the CPU decoder's at the cost of a cheap I420 → NV12 repacking instead of
    // GStreamer's conversion to RGB (2 CPU ms per 720p frame here); both decoders then hand
    // the model the same pixels.
    let nv12 = model.takes_nv12(infer_size.0, infer_size.1);
    // Frame buffers go round: decoded into, given back after inference, stylized into, and
    // back from the encoder once x264 is done with them.
    let pool = model.frame_pool();
    let (dec_pool, enc_pool) = (pool.clone(), pool.clone());
    let (dec_tx, dec_rx) = sync_channel::<Frame>(DEPTH.max(2 * batch));
    let (enc_tx, enc_rx) = sync_channel::<(u64, Frame)>(DEPTH.max(2 * batch));
    std::thread::scope(|s| -> Result<u64, SegmentError> {
        let spawn_err =
            |e: std::io::Error| SegmentError::Internal(format!("starting a thread: {e}"));
        // Named, so per-thread CPU (top -H, /proc) tells the stages apart.
        let named = |n: &str| std::thread::Builder::new().name(n.into());
        let decoder = named("fw-decode")
            .spawn_scoped(s, move || {
                let req = DecodeRequest {
                    path: spec.input,
                    frame_pts: spec.frame_pts,
                    seek_ns: spec.seek_ns,
                    size: (infer_size != spec.size).then_some(infer_size),
                    stall_timeout: STALL,
                    threads: spec.encoder.threads,
                    nvdec: spec.nvdec,
                    pool: Some(dec_pool),
                    nv12,
                };
                let mut i = start;
                let slot = ctl.decoder;
                let mut kept =
                    slot.and_then(|m| m.lock().unwrap_or_else(|p| p.into_inner()).take());
                let r = decode_range_reusing(&req, &mut kept, &mut |f| {
                    let go = within(i) && dec_tx.send(f).is_ok();
                    i += 1;
                    go
                });
                if let Some(m) = slot {
                    *m.lock().unwrap_or_else(|p| p.into_inner()) = kept;
                }
                r
            })
            .map_err(spawn_err)?;
        // Finishing a chunk (x264's last frames, the MP4 index) runs here, off the encode
        // thread, so the next chunk's frames go to its encoder meanwhile instead of the whole
        // pipeline waiting on the flush every chunk (in order: chunks are committed in order).
        // Each chunk goes with its span, so finishing (and its errors) is logged inside it.
        type Finish = ((u64, u64, PathBuf, SegmentEncoder), tracing::Span);
        let (fin_tx, fin_rx) = sync_channel::<Finish>(1);
        let finisher = named("fw-finish")
            .spawn_scoped(s, move || -> Result<u64, MediaError> {
                let mut committed = 0u64;
                for ((first, end, path, encoder), span) in fin_rx {
                    let _in_chunk = span.enter();
                    encoder.finish(STALL)?;
                    committed += end - first;
                    (ctl.on_chunk)(ChunkDone {
                        start: first,
                        end,
                        path,
                    });
                }
                Ok(committed)
            })
            .map_err(spawn_err)?;
        let enc = named("fw-encode").spawn_scoped(s, move || -> Result<Duration, MediaError> {
            let mut busy = Duration::ZERO;
            let mut current: Option<(u64, u64, PathBuf, SegmentEncoder)> = None; // first, end, path, encoder
            // Open while its chunk is encoded, then handed to the finishing thread with it.
            let mut _chunk_span = tracing::Span::none();
            for (i, f) in enc_rx {
                // A steal may end the range anywhere, inside a chunk too (at a keyframe): that
                // chunk then ends at the new end, and frames past it are not this range's.
                let end_now = ctl.limit.load(Ordering::Relaxed).min(range_end);
                if i >= end_now {
                    enc_pool.give(f.data);
                    continue;
                }
                if let Some(c) = current.as_mut() {
                    c.1 = c.1.min(end_now);
                }
                if current.as_ref().is_none_or(|c| i >= c.1) {
                    let first = start + (i - start) / k * k;
                    let path = chunk_path(spec.output_dir, first);
                    _chunk_span = tracing::info_span!(parent: seg_span, "chunk", start = first, end = (first + k).min(end_now));
                    current = Some((
                        first,
                        (first + k).min(end_now),
                        path.clone(),
                        SegmentEncoder::create(&path, geo, spec.encoder)?
                            .recycling_into(enc_pool.clone()),
                    ));
                }
                let Some((first, end, _, encoder)) = current.as_ref() else {
                    continue;
                };
                let t = Instant::now();
                encoder.push(f, pts(i) - pts(*first), duration(i))?;
                busy += t.elapsed();
                if i + 1 == *end {
                    if let Some(chunk) = current.take() {
                        let t = Instant::now();
                        let span = std::mem::replace(&mut _chunk_span, tracing::Span::none());
                        if fin_tx.send((chunk, span)).is_err() {
                            break; // finishing failed; its error is reported below
                        }
                        busy += t.elapsed();
                    }
                }
            }
            // A chunk cut short (cancelled, or the range was shortened under it) is never committed.
            if let Some((_, _, path, encoder)) = current.take() {
                drop(encoder);
                let _ = std::fs::remove_file(path);
            }
            Ok(busy)
        }).map_err(spawn_err)?;

        // While the decoder starts: the session's first run at this size, if it has not had one.
        let began = Instant::now();
        model.warm_up_size(infer_size.0, infer_size.1)?;
        let warm_up = began.elapsed();
        let mut i = start;
        let mut failure: Option<SegmentError> = None;
        let (mut waited, mut inferring) = (Duration::ZERO, Duration::ZERO);
        // The first frame's wait (decoder start, seek) and run (new shapes) apart from the rest.
        let (mut first_frame, mut first_infer) = (None, None);
        let mut frames: Vec<Frame> = Vec::with_capacity(batch);
        'frames: loop {
            // One frame, waiting if need be, then whatever else is ready, up to a batch.
            let t = Instant::now();
            let Ok(frame) = dec_rx.recv() else { break };
            frames.clear();
            frames.push(frame);
            while frames.len() < batch {
                match dec_rx.try_recv() {
                    Ok(f) => frames.push(f),
                    Err(_) => break,
                }
            }
            waited += t.elapsed();
            first_frame.get_or_insert(t.elapsed());
            if ctl.cancel.load(Ordering::Relaxed) {
                failure = Some(SegmentError::Cancelled);
                break;
            }
            // Frames past the (possibly shortened) range are not stylized.
            let keep = (0..frames.len() as u64)
                .take_while(|&k| within(i + k))
                .count();
            let cut = keep < frames.len();
            frames.truncate(keep);
            if frames.is_empty() {
                break;
            }
            let t = Instant::now();
            let outs = match model.stylize_batch(&frames, spec.style) {
                Ok(o) => o,
                Err(e) => {
                    failure = Some(e.into());
                    break;
                }
            };
            inferring += t.elapsed();
            first_infer.get_or_insert(t.elapsed());
            for f in frames.drain(..) {
                pool.give(f.data);
            }
            for out in outs {
                if enc_tx.send((i, out)).is_err() {
                    break 'frames; // the encoder failed; its error is reported below
                }
                i += 1;
                ctl.progress.store(i - start, Ordering::Relaxed);
            }
            if cut {
                break;
            }
        }
        drop(enc_tx);
        drop(dec_rx);
        let decoded = decoder
            .join()
            .map_err(|_| SegmentError::Internal("decoder thread panicked".into()))?;
        let encoded = enc
            .join()
            .map_err(|_| SegmentError::Internal("encoder thread panicked".into()))?;
        let finished = finisher
            .join()
            .map_err(|_| SegmentError::Internal("chunk finishing thread panicked".into()))?;
        if let Some(f) = failure {
            return Err(f);
        }
        decoded?;
        // Finishing's error first: the encode thread only saw its channel close.
        let committed = finished?;
        let encoding = encoded?;
        // Where the time went: the slowest stage is the one the others wait for.
        let ms = |d: Duration| d.as_millis() as u64;
        seg_span.record("decode_wait_ms", ms(waited));
        seg_span.record("infer_ms", ms(inferring));
        seg_span.record("encode_ms", ms(encoding));
        info!(
            start,
            frames = i - start,
            wall_ms = ms(began.elapsed()),
            decode_wait_ms = ms(waited),
            infer_ms = ms(inferring),
            encode_ms = ms(encoding),
            first_frame_ms = ms(first_frame.unwrap_or_default()),
            first_infer_ms = ms(first_infer.unwrap_or_default()),
            warm_up_ms = ms(warm_up),
            "segment stages"
        );
        if ctl.cancel.load(Ordering::Relaxed) {
            return Err(SegmentError::Cancelled);
        }
        let want = ctl
            .limit
            .load(Ordering::Relaxed)
            .min(range_end)
            .saturating_sub(start);
        if committed < want {
            return Err(SegmentError::Media(MediaError::Corrupt {
                path: spec.input.into(),
                detail: format!("decoded {committed} of the {want} frames of this range"),
            }));
        }
        Ok(committed)
    })
}

#[cfg(test)]
mod tests {
    use super::{inference_size, run_segment, ChunkDone, SegmentControl, SegmentSpec};
    use crate::inference::Stylizer;
    use crate::media::encode::EncoderSettings;
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::sync::Mutex;
    use std::time::Duration;

    /// Runs `run_segment` over a fresh `frames`-frame test clip in chunks of 10 with the
    /// synthetic model (`ms_per_frame`); `on_chunk` also gets the range's limit, as the agent's
    /// commit replies move it. Returns what it returned, every chunk, the model and the chunks'
    /// directory (kept alive by the returned temp dir).
    fn run_test_segment(
        frames: u32,
        ms_per_frame: u64,
        on_chunk: impl Fn(&ChunkDone, &AtomicU64) + Sync,
    ) -> (
        u64,
        Vec<ChunkDone>,
        Stylizer,
        tempfile::TempDir,
        std::path::PathBuf,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let clip = dir.path().join("in.mp4");
        let p = crate::media::test_clip(&clip, frames);
        let mut model =
            Stylizer::synthetic(Duration::from_millis(ms_per_frame), &Default::default());
        let out = dir.path().join("out");
        let settings = EncoderSettings {
            crf: 23,
            preset: "ultrafast".into(),
            threads: 1,
        };
        let spec = SegmentSpec {
            input: &clip,
            output_dir: &out,
            start_frame: 0,
            frame_pts: &p.frame_pts,
            seek_ns: 0,
            chunk_frames: 10,
            size: (p.width, p.height),
            fps: (25, 1),
            frame_duration_ns: 40_000_000,
            max_size: 0,
            style: &[],
            encoder: &settings,
            nvdec: None,
        };
        let (progress, cancel, limit) = (
            AtomicU64::new(0),
            AtomicBool::new(false),
            AtomicU64::new(u64::MAX),
        );
        let chunks = Mutex::new(Vec::new());
        let record = |c: ChunkDone| {
            on_chunk(&c, &limit);
            chunks.lock().unwrap().push(c);
        };
        let ctl = SegmentControl {
            progress: &progress,
            cancel: &cancel,
            limit: &limit,
            on_chunk: &record,
            decoder: None,
        };
        let n = run_segment(&spec, &mut model, &ctl).unwrap();
        (n, chunks.into_inner().unwrap(), model, dir, out)
    }

    /// Frame buffers go round a real pipeline (decode, the synthetic model, x264): 30 frames
    /// are decoded into buffers the pool mostly had already, not 30 fresh ones.
    #[test]
    fn frame_buffers_go_round_the_pipeline() {
        let (n, chunks, model, _dir, _) = run_test_segment(30, 0, |_, _| {});
        assert_eq!(n, 30);
        let starts: Vec<u64> = chunks.iter().map(|c| c.start).collect();
        assert_eq!(starts, vec![0, 10, 20]);
        let pool = model.frame_pool();
        assert!(
            pool.made() < 20,
            "{} of 30 decoded frames needed a fresh buffer",
            pool.made()
        );
        assert!(pool.idle() > 0, "no buffer came back");
    }

    /// A steal that ends the range inside a chunk (at a keyframe, say) while it runs: the chunk
    /// in progress ends there, and no frame past the new end is encoded or counted.
    #[test]
    fn a_range_shortened_inside_a_chunk_ends_that_chunk_there() {
        // The coordinator's answer to the first commit: the range now ends at frame 25.
        let (n, chunks, _, _dir, out) = run_test_segment(40, 2, |_, limit| {
            limit.fetch_min(25, std::sync::atomic::Ordering::Relaxed);
        });
        assert_eq!(n, 25);
        let ranges: Vec<(u64, u64)> = chunks.iter().map(|c| (c.start, c.end)).collect();
        assert_eq!(ranges, vec![(0, 10), (10, 20), (20, 25)]);
        let last = crate::media::probe::probe(&chunks[2].path, Duration::from_secs(30)).unwrap();
        assert_eq!(last.frame_pts.len(), 5, "the cut chunk holds frames 20..25");
        assert!(!out.join(framewise_common::storage::chunk_name(30)).exists());
    }

    #[test]
    fn max_size_scales_the_long_side() {
        assert_eq!(inference_size((1280, 720), 0), (1280, 720));
        assert_eq!(inference_size((1280, 720), 2000), (1280, 720));
        assert_eq!(inference_size((1280, 720), 320), (320, 180));
        assert_eq!(inference_size((318, 178), 100), (100, 56));
    }
}
