//! Stitching: the segments' H.264 access units are concatenated into one MP4
//! (no re-encode), re-timed onto the source timeline, and the source's audio
//! streams are linked straight into the same muxer, so they are copied unchanged.

use super::{check_input, make, set_state, Stopper};
use crate::error::MediaError;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// One encoded segment and where its first frame sits on the source timeline.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    pub path: PathBuf,
    /// Source timestamp of the segment's first frame (ns).
    pub offset_ns: u64,
    /// Frames the segment must contain.
    pub frames: u64,
}

/// Where an assembly's segment files come from: all known at the start, or announced while the
/// job's other segments are still being stylized (a streamed assembly stitches what is committed
/// and waits for the rest, so little is left to do when the last segment ends).
pub trait SegmentFeed {
    /// Files after those already given, in frame order (possibly none yet); `None` once every
    /// file has been given. With `wait`, blocks until there are some.
    fn next_files(&mut self, wait: bool) -> Result<Option<Vec<SegmentFile>>, MediaError>;
}

/// A feed of files all known at the start.
pub struct Listed(Option<Vec<SegmentFile>>);

impl Listed {
    pub fn new(files: &[SegmentFile]) -> Self {
        Listed(Some(files.to_vec()))
    }
}

impl SegmentFeed for Listed {
    fn next_files(&mut self, _wait: bool) -> Result<Option<Vec<SegmentFile>>, MediaError> {
        Ok(self.0.take())
    }
}

/// decodebin → audioconvert → audioresample → avenc_aac → aacparse, added to the running
/// pipeline; returns its sink pad and its src pad.
fn reencode_to_aac(pipeline: &gst::Pipeline) -> Result<(gst::Pad, gst::Pad), String> {
    let mk = |f: &str| {
        gst::ElementFactory::make(f)
            .build()
            .map_err(|_| format!("GStreamer element {f} is not installed"))
    };
    let (dec, conv, res, enc, parse) = (
        mk("decodebin")?,
        mk("audioconvert")?,
        mk("audioresample")?,
        mk("avenc_aac")?,
        mk("aacparse")?,
    );
    pipeline
        .add_many([&dec, &conv, &res, &enc, &parse])
        .map_err(|e| e.to_string())?;
    gst::Element::link_many([&conv, &res, &enc, &parse]).map_err(|e| e.to_string())?;
    let conv_sink = conv.static_pad("sink").ok_or("audioconvert without sink")?;
    dec.connect_pad_added(move |_, p| {
        if !conv_sink.is_linked() {
            let _ = p.link(&conv_sink);
        }
    });
    for e in [&dec, &conv, &res, &enc, &parse] {
        e.sync_state_with_parent().map_err(|e| e.to_string())?;
    }
    Ok((
        dec.static_pad("sink").ok_or("decodebin without sink")?,
        parse.static_pad("src").ok_or("aacparse without src")?,
    ))
}

/// Writes `out` from `segments` (in order) plus every audio stream of `source`.
/// Returns the number of video frames written.
/// `audio_streams` is the probe's count: the muxer starts once that many audio pads are linked.
/// Marks, on the pad-linking channel, an audio codec the MP4 muxer cannot take.
const UNSUPPORTED_AUDIO: &str = "unsupported audio: ";

pub fn assemble(
    source: &Path,
    segments: &[SegmentFile],
    audio_streams: u32,
    out: &Path,
    timeout: Duration,
) -> Result<u64, MediaError> {
    assemble_fed(
        source,
        &mut Listed::new(segments),
        audio_streams,
        out,
        timeout,
    )
}

/// [`assemble`] with the segment files taken from `feed` as they become known. `timeout` bounds
/// each step (opening the source, reading a file, finishing the output), not the wait for files.
pub fn assemble_fed(
    source: &Path,
    feed: &mut dyn SegmentFeed,
    audio_streams: u32,
    out: &Path,
    timeout: Duration,
) -> Result<u64, MediaError> {
    check_input(source)?;
    super::init()?;
    let err = |e: &dyn std::fmt::Display| MediaError::Pipeline {
        path: out.into(),
        what: "building the assembly pipeline",
        detail: e.to_string(),
    };
    let deadline = super::deadline(timeout.as_secs());
    let pipeline = gst::Pipeline::new();
    let _stop = Stopper(pipeline.clone());
    let vsrc = gst_app::AppSrc::builder()
        .format(gst::Format::Time)
        .block(true)
        .max_bytes(8 << 20)
        .build();
    let parse = make("h264parse")?;
    let vqueue = make("queue")?;
    let mux = make("mp4mux")?;
    let sink = make("filesink")?;
    sink.set_property("location", out.to_string_lossy().as_ref());
    let fsrc = super::source_element(source)?;
    let pbin = make("parsebin")?;
    pipeline
        .add_many([
            vsrc.upcast_ref(),
            &parse,
            &vqueue,
            &mux,
            &sink,
            &fsrc,
            &pbin,
        ])
        .map_err(|e| err(&e))?;
    gst::Element::link_many([vsrc.upcast_ref(), &parse, &vqueue]).map_err(|e| err(&e))?;
    let mux_video = mux
        .request_pad_simple("video_%u")
        .ok_or_else(|| err(&"the muxer has no video input"))?;
    vqueue
        .static_pad("src")
        .ok_or_else(|| err(&"queue without src"))?
        .link(&mux_video)
        .map_err(|e| err(&e))?;
    mux.link(&sink).map_err(|e| err(&e))?;
    fsrc.link(&pbin).map_err(|e| err(&e))?;

    // Audio pads go straight into the muxer; the source's video is discarded.
    let (pads_tx, pads_rx) = mpsc::channel::<Result<bool, String>>();
    let weak = pipeline.downgrade();
    let mux_w = mux.downgrade();
    let tx = pads_tx;
    pbin.connect_pad_added(move |_, pad| {
        let (weak, mux_w, tx) = (weak.clone(), mux_w.clone(), tx.clone());
        super::on_final_caps(pad, move |pad, caps| {
            let (Some(pipeline), Some(mux)) = (weak.upgrade(), mux_w.upgrade()) else {
                return;
            };
            let is_audio = caps
                .structure(0)
                .is_some_and(|s| s.name().starts_with("audio/"));
            let r = (|| -> Result<bool, String> {
                if is_audio {
                    let q = gst::ElementFactory::make("queue")
                        .build()
                        .map_err(|e| e.to_string())?;
                    pipeline.add(&q).map_err(|e| e.to_string())?;
                    q.sync_state_with_parent().map_err(|e| e.to_string())?;
                    let mp = mux
                        .request_pad_simple("audio_%u")
                        .ok_or("the muxer refused an audio stream")?;
                    let codec = caps
                        .structure(0)
                        .map(|s| s.name().to_string())
                        .unwrap_or_default();
                    if mp.pad_template_caps().can_intersect(caps) {
                        // Copied byte for byte.
                        pad.link(&q.static_pad("sink").ok_or("queue without sink")?)
                            .map_err(|e| e.to_string())?;
                    } else {
                        // MP4 cannot carry it (e.g. Vorbis from WebM): decoded and re-encoded
                        // to AAC, the one change the output makes to the audio.
                        let chain = reencode_to_aac(&pipeline).map_err(|e| {
                            mux.release_request_pad(&mp);
                            format!("{UNSUPPORTED_AUDIO}{codec} ({e})")
                        })?;
                        pad.link(&chain.0).map_err(|e| {
                            mux.release_request_pad(&mp);
                            format!("{UNSUPPORTED_AUDIO}{codec} ({e})")
                        })?;
                        chain
                            .1
                            .link(&q.static_pad("sink").ok_or("queue without sink")?)
                            .map_err(|e| e.to_string())?;
                    }
                    q.static_pad("src")
                        .ok_or("queue without src")?
                        .link(&mp)
                        .map_err(|e| format!("audio {codec}: {e}"))?;
                } else {
                    let f = gst::ElementFactory::make("fakesink")
                        .property("sync", false)
                        .property("async", false)
                        .build()
                        .map_err(|e| e.to_string())?;
                    pipeline.add(&f).map_err(|e| e.to_string())?;
                    f.sync_state_with_parent().map_err(|e| e.to_string())?;
                    pad.link(&f.static_pad("sink").ok_or("fakesink without sink")?)
                        .map_err(|e| e.to_string())?;
                }
                Ok(is_audio)
            })();
            let _ = tx.send(r);
        });
    });

    set_state(&pipeline, out, gst::State::Playing, "starting assembly")?;
    // Push video only once every audio pad is linked: the muxer takes no new pads after it starts.
    let (mut audio, mut video) = (0u32, false);
    while audio < audio_streams || !video {
        if let Some(e) = super::bus_error(&pipeline, source, "reading the source audio") {
            return Err(e);
        }
        match pads_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(true)) => audio += 1,
            Ok(Ok(false)) => video = true,
            Ok(Err(e)) => {
                return Err(match e.strip_prefix(UNSUPPORTED_AUDIO) {
                    Some(codec) => MediaError::UnsupportedAudio {
                        path: source.into(),
                        codec: codec.to_string(),
                    },
                    None => MediaError::Pipeline {
                        path: out.into(),
                        what: "linking audio",
                        detail: e,
                    },
                })
            }
            Err(mpsc::RecvTimeoutError::Timeout) if std::time::Instant::now() < deadline => {
                continue
            }
            Err(_) => {
                return Err(MediaError::Timeout {
                    path: source.into(),
                    secs: timeout.as_secs(),
                    what: "opening the source",
                })
            }
        }
    }

    let mut caps_set: Option<gst::Caps> = None;
    let mut written = 0u64;
    read_ahead(feed, timeout, &mut |seg, samples| {
        let n = samples.len() as u64;
        for (sample_caps, mut buf) in samples {
            let sample_caps = &sample_caps;
            match &caps_set {
                None => {
                    vsrc.set_caps(Some(sample_caps));
                    caps_set = Some(sample_caps.clone());
                }
                Some(c) if !same_encoding(c, sample_caps) => {
                    return Err(MediaError::Corrupt {
                        path: seg.path.clone(),
                        detail: format!(
                            "segment was encoded with other settings than the first segment ({})",
                            caps_difference(c, sample_caps)
                        ),
                    })
                }
                Some(_) => {}
            }
            {
                let b = buf.make_mut();
                if let Some(p) = b.pts() {
                    b.set_pts(p + gst::ClockTime::from_nseconds(seg.offset_ns));
                }
                if let Some(d) = b.dts() {
                    b.set_dts(d + gst::ClockTime::from_nseconds(seg.offset_ns));
                }
            }
            vsrc.push_buffer(buf).map_err(|e| {
                super::bus_error(&pipeline, out, "muxing").unwrap_or(MediaError::Write {
                    path: out.into(),
                    detail: e.to_string(),
                })
            })?;
        }
        if n != seg.frames {
            return Err(MediaError::Corrupt {
                path: seg.path.clone(),
                detail: format!("segment holds {n} frames, expected {}", seg.frames),
            });
        }
        written += n;
        Ok(())
    })?;
    vsrc.end_of_stream().map_err(|e| MediaError::Write {
        path: out.into(),
        detail: e.to_string(),
    })?;
    let deadline = super::deadline(timeout.as_secs());
    super::wait_eos(&pipeline, out, "writing the output", deadline)
        .map_err(|e| super::with_secs(e, timeout.as_secs()))?;
    Ok(written)
}

/// Threads reading segment files ahead of the muxer. A job's output is made of hundreds of
/// chunk files and each file's pipeline takes milliseconds to start, so reading them one after
/// another left the muxer waiting most of the time.
const READERS: usize = 4;
/// Files read but not yet muxed, at most (bounds the memory: a chunk's access units each).
const LOOKAHEAD: usize = 8;

/// One segment file's access units with their caps.
type Samples = Vec<(gst::Caps, gst::Buffer)>;
/// Where a reader hands over one file's access units (or why it could not read them).
type Slot = mpsc::SyncSender<Result<Samples, MediaError>>;

/// What the readers and the muxer share: the files known so far and how far each side is.
struct Queue {
    files: Vec<SegmentFile>,
    /// Where the reader of file j hands it over (taken by that reader).
    slots: Vec<Option<Slot>>,
    /// The next file a reader takes.
    next_read: usize,
    /// Files handed to the muxer so far.
    handed: usize,
    /// The feed has given every file.
    all_known: bool,
    /// The muxer stopped (done or failed): readers leave.
    stop: bool,
}

/// Hands each segment's access units to `f` in order, the files read by READERS threads at most
/// LOOKAHEAD files ahead of `f`, as `feed` makes them known. Each file must be read within
/// `timeout`.
fn read_ahead(
    feed: &mut dyn SegmentFeed,
    timeout: Duration,
    f: &mut dyn FnMut(&SegmentFile, Samples) -> Result<(), MediaError>,
) -> Result<(), MediaError> {
    use std::sync::{Condvar, Mutex};
    let shared = (
        Mutex::new(Queue {
            files: Vec::new(),
            slots: Vec::new(),
            next_read: 0,
            handed: 0,
            all_known: false,
            stop: false,
        }),
        Condvar::new(),
    );
    let lock = || shared.0.lock().unwrap_or_else(|p| p.into_inner());
    let update = |g: &mut dyn FnMut(&mut Queue)| {
        g(&mut lock());
        shared.1.notify_all();
    };
    std::thread::scope(|s| {
        for _ in 0..READERS {
            let shared = &shared;
            s.spawn(move || loop {
                let mut q = shared.0.lock().unwrap_or_else(|p| p.into_inner());
                let (seg, tx) = loop {
                    let j = q.next_read;
                    if q.stop || (q.all_known && j >= q.files.len()) {
                        return;
                    }
                    if j < q.files.len() && j < q.handed + LOOKAHEAD {
                        q.next_read += 1;
                        break (q.files[j].clone(), q.slots[j].take());
                    }
                    q = shared.1.wait(q).unwrap_or_else(|p| p.into_inner());
                };
                drop(q);
                let Some(tx) = tx else { return };
                let mut samples = Samples::new();
                let deadline = std::time::Instant::now() + timeout;
                let r = read_segment(&seg, deadline, &mut |c, b| {
                    samples.push((c.clone(), b));
                    Ok(())
                });
                // The receiver is gone only when f stopped early: nothing left to do.
                if tx.send(r.map(|_| samples)).is_err() {
                    return;
                }
            });
        }
        let mut rxs = Vec::new();
        let result = (|| {
            let mut all_known = false;
            let mut i = 0;
            loop {
                // Take what the feed has (waiting only when the muxer has nothing else to do).
                if !all_known {
                    match feed.next_files(i >= rxs.len())? {
                        Some(files) if !files.is_empty() => update(&mut |q| {
                            for file in &files {
                                let (tx, rx) = mpsc::sync_channel(1);
                                q.files.push(file.clone());
                                q.slots.push(Some(tx));
                                rxs.push(Some(rx));
                            }
                        }),
                        Some(_) => {}
                        None => {
                            all_known = true;
                            update(&mut |q| q.all_known = true);
                        }
                    }
                }
                if i >= rxs.len() {
                    if all_known {
                        return Ok(());
                    }
                    continue;
                }
                let seg = lock().files[i].clone();
                let rx = rxs[i].take().ok_or_else(|| MediaError::Pipeline {
                    path: seg.path.clone(),
                    what: "reading a segment",
                    detail: "handed twice".into(),
                })?;
                let samples = rx.recv().map_err(|_| MediaError::Pipeline {
                    path: seg.path.clone(),
                    what: "reading a segment",
                    detail: "the reading thread stopped".into(),
                })??;
                f(&seg, samples)?;
                i += 1;
                update(&mut |q| q.handed = i);
            }
        })();
        update(&mut |q| q.stop = true);
        result
    })
}

/// Hands every H.264 access unit of a segment file to `f`, returning the count.
fn read_segment(
    seg: &SegmentFile,
    deadline: std::time::Instant,
    f: &mut dyn FnMut(&gst::Caps, gst::Buffer) -> Result<(), MediaError>,
) -> Result<u64, MediaError> {
    let path = seg.path.as_path();
    check_input(path)?;
    let err = |e: &dyn std::fmt::Display| MediaError::Pipeline {
        path: path.into(),
        what: "reading a segment",
        detail: e.to_string(),
    };
    let pipeline = gst::Pipeline::new();
    let _stop = Stopper(pipeline.clone());
    let src = super::source_element(path)?;
    // The demuxer's access units as they are (the chunks are framewise's own avc MP4s; the
    // assembly's h264parse parses them once, so a parser per file would only add work).
    let demux = make("qtdemux")?;
    let caps = gst::Caps::builder("video/x-h264")
        .field("stream-format", "avc")
        .field("alignment", "au")
        .build();
    let sink = gst_app::AppSink::builder()
        .caps(&caps)
        .sync(false)
        .max_buffers(16)
        .build();
    pipeline
        .add_many([&src, &demux, sink.upcast_ref()])
        .map_err(|e| err(&e))?;
    src.link(&demux).map_err(|e| err(&e))?;
    let psink = sink.static_pad("sink");
    demux.connect_pad_added(move |_, pad| {
        if let Some(ps) = psink.as_ref() {
            if !ps.is_linked() {
                let _ = pad.link(ps);
            }
        }
    });
    set_state(&pipeline, path, gst::State::Playing, "reading a segment")?;
    let mut n = 0u64;
    loop {
        if let Some(e) = super::bus_error(&pipeline, path, "reading a segment") {
            return Err(e);
        }
        match sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
            Some(sample) => {
                let (Some(c), Some(b)) = (sample.caps_owned(), sample.buffer_owned()) else {
                    continue;
                };
                f(&c, b)?;
                n += 1;
            }
            None if sink.is_eos() => return Ok(n),
            None if std::time::Instant::now() > deadline => {
                return Err(MediaError::Timeout {
                    path: path.into(),
                    secs: 0,
                    what: "reading a segment",
                })
            }
            None => {}
        }
    }
}

/// The caps fields two encodings disagree on, e.g. "level: 3.1 vs 4" (values shortened).
fn caps_difference(a: &gst::Caps, b: &gst::Caps) -> String {
    let (Some(sa), Some(sb)) = (a.structure(0), b.structure(0)) else {
        return "no caps".into();
    };
    let short = |v: Option<String>| {
        let v = v.unwrap_or_else(|| "unset".into());
        if v.len() > 40 {
            format!("{}…", &v[..40])
        } else {
            v
        }
    };
    let mut diffs = Vec::new();
    let mut names: Vec<String> = sa.fields().map(|f| f.to_string()).collect();
    names.extend(sb.fields().map(|f| f.to_string()));
    names.sort();
    names.dedup();
    for n in names {
        let va = sa
            .value(n.as_str())
            .ok()
            .and_then(|v| v.serialize().ok())
            .map(|s| s.to_string());
        let vb = sb
            .value(n.as_str())
            .ok()
            .and_then(|v| v.serialize().ok())
            .map(|s| s.to_string());
        if va != vb {
            diffs.push(format!("{n}: {} vs {}", short(va), short(vb)));
        }
    }
    if diffs.is_empty() {
        format!("{} vs {}", sa.name(), sb.name())
    } else {
        diffs.join(", ")
    }
}

/// Whether two chunks can be concatenated into one stream: the same caps apart from the frame
/// rate, which the demuxer derives from the sample durations (a chunk spanning an irregular
/// frame interval in the source reads back as, say, 25000/1001 instead of 25/1).
fn same_encoding(a: &gst::Caps, b: &gst::Caps) -> bool {
    let strip = |c: &gst::Caps| {
        let mut c = c.clone();
        if let Some(s) = c.make_mut().structure_mut(0) {
            s.remove_field("framerate");
        }
        c
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// `counts.len()` tiny H.264 chunk files in `dir`, file k holding counts[k] frames.
    fn chunk_files(dir: &Path, counts: &[u64]) -> Vec<SegmentFile> {
        use crate::media::encode::{EncoderSettings, Geometry, SegmentEncoder};
        let geo = Geometry {
            in_size: (64, 48),
            out_size: (64, 48),
            fps: (25, 1),
        };
        let settings = EncoderSettings {
            crf: 30,
            preset: "ultrafast".into(),
            threads: 1,
        };
        let ns = 40_000_000u64;
        let mut offset = 0;
        counts
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                let path = dir.join(format!("chunk-{k}.mp4"));
                let enc = SegmentEncoder::create(&path, geo, &settings).unwrap();
                for i in 0..n {
                    let frame = crate::media::Frame {
                        pts: i * ns,
                        width: 64,
                        height: 48,
                        data: vec![(k * 20 + i as usize) as u8; 64 * 48 * 3],
                        yuv: None,
                    };
                    enc.push(frame, i * ns, ns).unwrap();
                }
                enc.finish(Duration::from_secs(30)).unwrap();
                let seg = SegmentFile {
                    path,
                    offset_ns: offset * ns,
                    frames: n,
                };
                offset += n;
                seg
            })
            .collect()
    }

    #[test]
    fn files_read_ahead_arrive_in_order_and_a_bad_one_stops_the_rest() {
        crate::media::init().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // More files than readers and lookahead, of different lengths.
        let counts: Vec<u64> = (1..=13).collect();
        let segs = chunk_files(dir.path(), &counts);
        let timeout = Duration::from_secs(60);
        let mut seen = Vec::new();
        read_ahead(&mut Listed::new(&segs), timeout, &mut |seg, samples| {
            seen.push((seg.path.clone(), samples.len() as u64));
            Ok(())
        })
        .unwrap();
        let want: Vec<_> = segs.iter().map(|s| (s.path.clone(), s.frames)).collect();
        assert_eq!(seen, want);

        // A file that cannot be read: the error names it, and nothing after it is handed on.
        std::fs::write(&segs[5].path, b"not an mp4").unwrap();
        let mut handed = 0;
        let e = read_ahead(&mut Listed::new(&segs), timeout, &mut |_, _| {
            handed += 1;
            Ok(())
        })
        .unwrap_err();
        assert_eq!(handed, 5);
        assert!(e.to_string().contains("chunk-5.mp4"), "{e}");
        // The consumer's own error stops the readers too.
        let e = read_ahead(&mut Listed::new(&segs), timeout, &mut |seg, _| {
            Err(MediaError::Corrupt {
                path: seg.path.clone(),
                detail: "stop".into(),
            })
        })
        .unwrap_err();
        assert!(e.to_string().contains("chunk-0.mp4"), "{e}");
    }

    /// Files announced in batches by another thread, as a streamed assembly hears of them.
    struct Dribble(mpsc::Receiver<Option<Vec<SegmentFile>>>, Vec<bool>);

    impl SegmentFeed for Dribble {
        fn next_files(&mut self, wait: bool) -> Result<Option<Vec<SegmentFile>>, MediaError> {
            self.1.push(wait);
            if wait {
                Ok(self.0.recv().unwrap_or(None))
            } else {
                Ok(match self.0.try_recv() {
                    Ok(v) => v,
                    Err(_) => Some(vec![]),
                })
            }
        }
    }

    #[test]
    fn a_streamed_feed_is_muxed_while_later_files_are_still_to_come() {
        crate::media::init().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let counts: Vec<u64> = (1..=10).collect();
        let segs = chunk_files(dir.path(), &counts);
        let (tx, rx) = mpsc::channel();
        let batches: Vec<Vec<SegmentFile>> = vec![
            segs[..1].to_vec(),
            segs[1..4].to_vec(),
            vec![],
            segs[4..10].to_vec(),
        ];
        // Each batch is sent only once the muxer has taken everything before it.
        let (took_tx, took_rx) = mpsc::channel::<usize>();
        let sender = std::thread::spawn(move || {
            let (mut given, mut took) = (0, 0);
            for b in batches {
                given += b.len();
                tx.send(Some(b)).unwrap();
                while took < given {
                    took = took_rx.recv_timeout(Duration::from_secs(10)).unwrap();
                }
            }
            tx.send(None).unwrap();
        });
        let mut feed = Dribble(rx, Vec::new());
        let mut seen = Vec::new();
        read_ahead(&mut feed, Duration::from_secs(60), &mut |seg, samples| {
            seen.push((seg.path.clone(), samples.len() as u64));
            let _ = took_tx.send(seen.len());
            Ok(())
        })
        .unwrap();
        sender.join().unwrap();
        let want: Vec<_> = segs.iter().map(|s| (s.path.clone(), s.frames)).collect();
        assert_eq!(seen, want, "every file, in order, each whole");
        assert!(
            feed.1.iter().filter(|w| **w).count() >= 4,
            "the muxer waited for each batch: {:?}",
            feed.1
        );
    }

    #[test]
    fn chunks_differing_only_in_derived_frame_rate_concatenate() {
        gst::init().unwrap();
        let caps = |rate: &str, level: &str| {
            gst::Caps::from_str(&format!(
                "video/x-h264, stream-format=avc, alignment=au, width=1280, height=720, \
                 framerate={rate}, level=(string){level}, profile=high"
            ))
            .unwrap()
        };
        assert!(same_encoding(
            &caps("25/1", "3.1"),
            &caps("25000/1001", "3.1")
        ));
        assert!(!same_encoding(&caps("25/1", "3.1"), &caps("25/1", "4")));
        assert_eq!(
            caps_difference(&caps("25/1", "3.1"), &caps("25000/1001", "4")),
            "framerate: 25/1 vs 25000/1001, level: 3.1 vs 4"
        );
    }
}
