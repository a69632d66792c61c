//! Every bad input gets one clear error line naming the file and the problem,
//! a non-zero exit code, and no file (partial or not) at the output path.

mod common;
use common::*;
use std::path::Path;

fn expect_failure(input: &Path, env: &[(&str, &str)], needles: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.mp4");
    let o = framewise_run(input, &out, &[], env);
    let err = stderr(&o);
    assert!(!o.status.success(), "must fail: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in: {err}"));
    for n in needles {
        assert!(line.contains(n), "error line {line:?} should mention {n:?}");
    }
    assert!(!out.exists(), "no output file on failure");
    assert!(partial_files(d.path()).is_empty(), "no partial files left");
}

#[test]
fn missing_file() {
    expect_failure(
        Path::new("/nonexistent/clip.mp4"),
        &[],
        &["/nonexistent/clip.mp4", "not found"],
    );
}

#[test]
fn empty_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("empty.mp4");
    std::fs::write(&p, b"").unwrap();
    expect_failure(&p, &[], &["empty.mp4", "empty"]);
}

#[test]
fn text_file_is_not_a_video() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("notes.mp4");
    std::fs::write(
        &p,
        "these are not the frames you are looking for\n".repeat(200),
    )
    .unwrap();
    expect_failure(&p, &[], &["notes.mp4", "not a video"]);
}

#[test]
fn truncated_file() {
    let d = tempfile::tempdir().unwrap();
    let full = d.path().join("full.mp4");
    make_clip(&full, 160, 96, 25, true);
    let bytes = std::fs::read(&full).unwrap();
    let p = d.path().join("truncated.mp4");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    expect_failure(&p, &[], &["truncated.mp4"]);
}

#[test]
fn audio_only_file_has_no_video() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("tone.m4a");
    run_pipeline(&format!(
        "audiotestsrc num-buffers=20 ! audio/x-raw,rate=48000,channels=2 ! avenc_aac ! aacparse ! mp4mux ! filesink location={}",
        p.display()
    ));
    expect_failure(&p, &[], &["tone.m4a", "no video stream"]);
}

#[test]
fn missing_model() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("in.mp4");
    make_clip(&p, 64, 48, 5, false);
    expect_failure(
        &p,
        &[("FRAMEWISE_WORKER__MODEL__PATH", "/nonexistent/model.onnx")],
        &["/nonexistent/model.onnx", "not found"],
    );
}

#[test]
fn model_of_the_wrong_shape() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("in.mp4");
    make_clip(&p, 64, 48, 5, false);
    // The style predictor of the same package: another input, a [1,100] output.
    expect_failure(
        &p,
        &[(
            "FRAMEWISE_WORKER__MODEL__PATH",
            "models/arbitrary_predict.onnx",
        )],
        &["arbitrary_predict.onnx", "wrong shape"],
    );
}

#[test]
fn bad_arguments_name_the_flag() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("in.mp4");
    make_clip(&p, 64, 48, 5, false);
    let out = d.path().join("o.mp4");
    for (args, needle) in [
        (vec!["--style", "26"], "0 to 25, got 26"),
        (vec!["--style-mix", "3:x"], "--style-mix"),
        (vec!["--workers", "0"], "--workers"),
        (vec!["--segment-seconds=-1"], "--segment-seconds"),
    ] {
        let mut a = vec!["run", p.to_str().unwrap(), "-o", out.to_str().unwrap()];
        a.extend(args);
        let o = framewise(&a, &[]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains(needle), "{needle}: {}", stderr(&o));
    }
    let o = framewise(
        &["run", p.to_str().unwrap(), "-o", p.to_str().unwrap()],
        &[],
    );
    assert!(
        stderr(&o).contains("must not overwrite the input"),
        "{}",
        stderr(&o)
    );
    let o = framewise(
        &["run", p.to_str().unwrap(), "-o", "/nonexistent/dir/o.mp4"],
        &[],
    );
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
fn unsupported_codec() {
    let d = tempfile::tempdir().unwrap();
    let mkv = d.path().join("h264.mkv");
    run_pipeline(&format!(
        "videotestsrc num-buffers=10 ! video/x-raw,width=64,height=48 ! x264enc ! h264parse ! matroskamux ! filesink location={}",
        mkv.display()
    ));
    // Same container, but a codec id no installed decoder knows (same length, so the file stays valid).
    let bytes = std::fs::read(&mkv).unwrap();
    let pos = bytes
        .windows(15)
        .position(|w| w == b"V_MPEG4/ISO/AVC")
        .expect("codec id in the file");
    let mut odd = bytes.clone();
    odd[pos..pos + 15].copy_from_slice(b"V_QUUX9/ISO/ZZZ");
    let p = d.path().join("quux.mkv");
    std::fs::write(&p, odd).unwrap();
    expect_failure(&p, &[], &["quux.mkv", "unsupported video codec"]);
}

#[test]
fn inputs_over_the_configured_limits_are_refused_naming_the_limit() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("wide.mp4");
    make_clip(&p, 318, 178, 10, false);
    expect_failure(
        &p,
        &[("FRAMEWISE_COORDINATOR__LIMITS__MAX_WIDTH", "200")],
        &[
            "wide.mp4",
            "318 pixels wide",
            "coordinator.limits.max_width is 200",
        ],
    );
    expect_failure(
        &p,
        &[("FRAMEWISE_COORDINATOR__LIMITS__MAX_FRAMES", "5")],
        &["10 frames", "coordinator.limits.max_frames is 5"],
    );
    expect_failure(
        &p,
        &[("FRAMEWISE_COORDINATOR__LIMITS__MAX_INPUT_BYTES", "1000")],
        &["wide.mp4", "coordinator.limits.max_input_bytes is 1000"],
    );
    // Allow-lists: an MP4 where only Matroska is allowed, H.264 where only VP9 is.
    expect_failure(
        &p,
        &[(
            "FRAMEWISE_COORDINATOR__LIMITS__ALLOWED_CONTAINERS",
            "[matroska]",
        )],
        &[
            "its container is mp4",
            "coordinator.limits.allowed_containers is [\"matroska\"]",
        ],
    );
    expect_failure(
        &p,
        &[(
            "FRAMEWISE_COORDINATOR__LIMITS__ALLOWED_VIDEO_CODECS",
            "[vp9, av1]",
        )],
        &["its video codec is h264", "allowed_video_codecs"],
    );
}

#[test]
fn a_full_queue_refuses_new_jobs_but_not_a_retried_submit() {
    use common::cluster::*;
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.mp4");
    make_clip(&input, 64, 48, 10, false);
    let cl = Cluster::new(d.path());
    let mut cfg = std::fs::read_to_string(&cl.config).unwrap();
    cfg.push_str("\n[coordinator.limits]\nmax_queued_jobs = 1\n");
    std::fs::write(&cl.config, cfg).unwrap();
    let _procs = Procs(vec![cl.coordinator(0)]);
    // No worker: the first job stays queued and fills the queue.
    let submit = |key: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_framewise"))
            .args(["submit", input.to_str().unwrap(), "--out"])
            .arg(d.path().join(format!("{key}.mp4")))
            .args(["--idempotency-key", key, "--coordinator", &cl.url()])
            .output()
            .unwrap()
    };
    let first = submit("a");
    assert!(first.status.success(), "{}", stderr(&first));
    let again = submit("a");
    assert!(
        again.status.success(),
        "a retried submit returns the same job"
    );
    assert_eq!(first.stdout, again.stdout);
    let second = submit("b");
    assert!(!second.status.success());
    let err = stderr(&second);
    assert!(
        err.contains("queue is full") && err.contains("coordinator.limits.max_queued_jobs = 1"),
        "{err}"
    );
}

/// On two GPUs `run` starts a worker process per GPU. Where the GPUs cannot run the model
/// (here: no CUDA at all, two GPUs claimed), each process is restarted, then given up on before
/// any job is submitted, and the error names the GPU and the worker's own error.
#[test]
fn gpus_that_cannot_run_the_model_fail_the_run_naming_the_gpu_and_the_cause() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.mp4");
    make_clip(&input, 64, 48, 10, false);
    let out = d.path().join("out.mp4");
    let began = std::time::Instant::now();
    let o = framewise_run(
        &input,
        &out,
        &["--device", "cuda"],
        &[("CUDA_VISIBLE_DEVICES", "0,1")],
    );
    let err = stderr(&o);
    assert!(!o.status.success(), "must fail: {err}");
    let last = err.lines().rev().find(|l| l.starts_with("error:")).unwrap();
    assert!(
        last.contains("worker process for GPU") && last.contains("failed 3 times in a row"),
        "{last}"
    );
    // The worker's own words: the CUDA provider did not start on that GPU.
    assert!(
        last.contains("Its last error:") && last.contains("cuda"),
        "{last}"
    );
    assert!(!out.exists(), "no output file on failure");
    assert!(partial_files(d.path()).is_empty(), "no partial files left");
    assert!(began.elapsed() < std::time::Duration::from_secs(120));
}
