//! A corpus of bad and odd media, generated here from real clips: truncated
//! at several offsets, bytes flipped in the index and in the frames, the
//! wrong extension, zero length, an image posing as a video, and other
//! containers and codecs. Each must either work (with every frame and the
//! audio kept) or fail with one error line naming the file — never crash,
//! hang, or leave output behind.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How a run ended.
enum Outcome {
    Ok { frames: usize },
    Refused(String),
}

/// Runs `framewise run` on `input` with a time limit; panics on a crash, a hang or leftovers.
fn run(input: &Path) -> Outcome {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.mp4");
    let mut child = Command::new(env!("CARGO_BIN_EXE_framewise"))
        .args(["run", input.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .args(["--quiet", "--max-size", "64"])
        .current_dir(repo())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("{}: framewise hung for 120 s", input.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.code().is_some(),
        "{}: framewise was killed by a signal: {err}",
        input.display()
    );
    assert!(
        partial_files(d.path()).is_empty(),
        "{}: partial files left",
        input.display()
    );
    if status.success() {
        Outcome::Ok {
            frames: probe_ok(&out).frame_pts.len(),
        }
    } else {
        assert!(!out.exists(), "{}: output left on failure", input.display());
        let line = err
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("{}: no error line in: {err}", input.display()))
            .to_string();
        let name = input.file_name().unwrap().to_string_lossy().into_owned();
        assert!(line.contains(&name), "the error names the file: {line}");
        Outcome::Refused(line)
    }
}

/// A WebM of `frames` VP8 frames (96x64, 25 fps) with as long a Vorbis track.
fn make_webm_vorbis(path: &Path, frames: u32) {
    run_pipeline(&format!(
        "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,width=96,height=64,framerate=25/1 \
         ! vp8enc deadline=1 keyframe-max-dist=10 ! webmmux name=m ! filesink location={} \
         audiotestsrc num-buffers={frames} samplesperbuffer=1920 ! audio/x-raw,rate=48000,channels=2 \
         ! audioconvert ! vorbisenc ! m.",
        path.display()
    ));
}

fn write_variant(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Offset of an MP4 box (e.g. b"moov") in the file.
fn box_at(data: &[u8], kind: &[u8; 4]) -> Option<usize> {
    data.windows(4).position(|w| w == kind)
}

#[test]
fn damaged_files_fail_cleanly_or_play_every_frame() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good.mp4");
    make_clip(&good, 96, 64, 50, true);
    let data = std::fs::read(&good).unwrap();
    let n = data.len();
    let mut cases: Vec<PathBuf> = Vec::new();
    for pct in [1, 10, 50, 90, 99] {
        cases.push(write_variant(
            d.path(),
            &format!("truncated-{pct}pct.mp4"),
            &data[..n * pct / 100],
        ));
    }
    cases.push(write_variant(d.path(), "zero.mp4", b""));
    cases.push(write_variant(
        d.path(),
        "header-only.mp4",
        &data[..64.min(n)],
    ));
    // Flipped bytes in the index (moov) and in the frames (mdat).
    for (kind, label) in [(b"moov", "moov"), (b"mdat", "mdat")] {
        if let Some(at) = box_at(&data, kind) {
            let mut bad = data.clone();
            let end = (at + 4096).min(n);
            for i in (at + 8..end).step_by(37) {
                bad[i] ^= 0xA5;
            }
            cases.push(write_variant(
                d.path(),
                &format!("flipped-{label}.mp4"),
                &bad,
            ));
        }
    }
    // Random noise with an MP4 name.
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    cases.push(write_variant(d.path(), "noise.mp4", &noise));
    // An image posing as a video.
    let png = d.path().join("picture.mp4");
    run_pipeline(&format!(
        "videotestsrc num-buffers=1 ! video/x-raw,width=32,height=32 ! pngenc ! filesink location={}",
        png.display()
    ));
    cases.push(png);

    let mut report = Vec::new();
    for c in &cases {
        let name = c.file_name().unwrap().to_string_lossy().into_owned();
        match run(c) {
            Outcome::Ok { frames } => {
                // Damage the decoder concealed must not lose or invent frames.
                assert!(frames <= 50, "{name}: {frames} frames from a 50-frame clip");
                report.push(format!("{name}: ok, {frames} frames"));
            }
            Outcome::Refused(line) => report.push(format!("{name}: {line}")),
        }
    }
    eprintln!("{}", report.join("\n"));
    // The clearly broken ones are refused rather than "succeeding" with nothing.
    for must_fail in [
        "zero.mp4",
        "header-only.mp4",
        "noise.mp4",
        "truncated-1pct.mp4",
        "picture.mp4",
    ] {
        assert!(
            report
                .iter()
                .any(|r| r.starts_with(&format!("{must_fail}: error:"))),
            "{must_fail} should be refused: {report:?}"
        );
    }
}

#[test]
fn other_containers_and_names_work() {
    let d = tempfile::tempdir().unwrap();
    // A real MP4 with the wrong extension: the content decides, not the name.
    let mp4 = d.path().join("clip.mp4");
    make_clip(&mp4, 96, 64, 30, true);
    let misnamed = d.path().join("clip.mkv");
    std::fs::copy(&mp4, &misnamed).unwrap();
    // Matroska with H.264 + AAC, WebM with VP8 + Vorbis (MP4 cannot carry Vorbis: it is
    // re-encoded to AAC), QuickTime MOV.
    let mkv = d.path().join("real.mkv");
    run_pipeline(&format!(
        "videotestsrc num-buffers=30 pattern=ball ! video/x-raw,width=96,height=64,framerate=25/1 \
         ! x264enc speed-preset=ultrafast key-int-max=10 ! h264parse ! matroskamux name=m ! filesink location={} \
         audiotestsrc num-buffers=30 samplesperbuffer=1920 ! audio/x-raw,rate=48000,channels=2 ! avenc_aac ! aacparse ! m.",
        mkv.display()
    ));
    let webm = d.path().join("real.webm");
    make_webm_vorbis(&webm, 30);
    let mov = d.path().join("real.mov");
    run_pipeline(&format!(
        "videotestsrc num-buffers=30 pattern=ball ! video/x-raw,width=96,height=64,framerate=25/1 \
         ! x264enc speed-preset=ultrafast key-int-max=10 ! h264parse ! qtmux name=m ! filesink location={}",
        mov.display()
    ));
    let mut report = Vec::new();
    for c in [&misnamed, &mkv, &webm, &mov] {
        let name = c.file_name().unwrap().to_string_lossy().into_owned();
        match run(c) {
            Outcome::Ok { frames } => report.push(format!("{name}: ok, {frames} frames")),
            Outcome::Refused(line) => report.push(format!("{name}: {line}")),
        }
    }
    eprintln!("{}", report.join("\n"));
    for r in &report {
        assert!(r.ends_with("ok, 30 frames"), "{r}");
    }
}

#[test]
fn ten_bit_422_input_and_two_audio_tracks_work() {
    let d = tempfile::tempdir().unwrap();
    // H.264 High 4:2:2 at 10 bits (camera footage): decoded, stylized, written as 8-bit 4:2:0.
    let deep = d.path().join("deep.mp4");
    run_pipeline(&format!(
        "videotestsrc num-buffers=30 pattern=ball ! video/x-raw,width=96,height=64,framerate=25/1,format=I422_10LE \
         ! x264enc speed-preset=ultrafast key-int-max=10 ! h264parse ! mp4mux ! filesink location={}",
        deep.display()
    ));
    // Two audio tracks (e.g. two languages): both kept, byte for byte.
    let two = d.path().join("two-tracks.mp4");
    run_pipeline(&format!(
        "videotestsrc num-buffers=30 pattern=ball ! video/x-raw,width=96,height=64,framerate=25/1 \
         ! x264enc speed-preset=ultrafast key-int-max=10 ! h264parse ! mp4mux name=m ! filesink location={} \
         audiotestsrc num-buffers=30 samplesperbuffer=1920 freq=440 ! audio/x-raw,rate=48000,channels=2 ! avenc_aac ! aacparse ! m. \
         audiotestsrc num-buffers=30 samplesperbuffer=1920 freq=880 ! audio/x-raw,rate=48000,channels=1 ! avenc_aac ! aacparse ! m.",
        two.display()
    ));
    assert_eq!(probe_ok(&deep).frame_pts.len(), 30);
    assert_eq!(probe_ok(&two).audio_streams, 2);
    // `framewise run` on a small copy; returns the output.
    let stylize = |input: &Path| {
        let out = d.path().join(format!(
            "out-{}.mp4",
            input.file_name().unwrap().to_string_lossy()
        ));
        let o = framewise_run(input, &out, &["--max-size", "64"], &[]);
        assert!(o.status.success(), "{}: {}", input.display(), stderr(&o));
        out
    };
    for input in [&deep, &two] {
        let out = stylize(input);
        let (src, dst) = (probe_ok(input), probe_ok(&out));
        assert_eq!(
            dst.frame_pts.len(),
            src.frame_pts.len(),
            "{}",
            input.display()
        );
        assert_eq!(dst.audio_streams, src.audio_streams, "{}", input.display());
        // Packets of all tracks, order-independent (tracks interleave differently).
        let (mut a, mut b) = (audio_packets(input), audio_packets(&out));
        a.sort();
        b.sort();
        assert!(a == b, "{}: audio copied unchanged", input.display());
    }
    // WebM with Vorbis: MP4 cannot carry Vorbis, so it comes out as AAC, same length.
    let webm = d.path().join("vorbis.webm");
    make_webm_vorbis(&webm, 50);
    let out = stylize(&webm);
    let (src, dst) = (probe_ok(&webm), probe_ok(&out));
    assert_eq!(dst.frame_pts.len(), src.frame_pts.len());
    assert_eq!(dst.audio_streams, 1, "the audio is kept (re-encoded)");
    let aac = audio_packets(&out);
    let secs = aac.len() as f64 * 1024.0 / 48_000.0;
    assert!(
        (secs - 2.0).abs() < 0.2,
        "{} AAC frames = {secs:.2} s of audio for a 2 s clip",
        aac.len()
    );
}
