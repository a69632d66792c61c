//! Separate processes, as on a cluster: a coordinator, workers, and a user's
//! `submit --wait`. Workers are killed with SIGKILL mid-job and the
//! coordinator is killed and restarted; the job still finishes with every
//! frame exactly once.

mod common;
use common::cluster::*;
use common::*;
use framewise_common::proto::{job_service_client::JobServiceClient, Job};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A 300-frame clip, a coordinator, workers w1 and w2, and a `submit --wait`
/// (procs: coordinator, w1, w2, submitter).
struct Scenario {
    d: tempfile::TempDir,
    input: PathBuf,
    out: PathBuf,
    cl: Cluster,
    procs: Procs,
    id: String,
}

fn two_workers() -> Scenario {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.mp4");
    let out = d.path().join("out.mp4");
    make_clip(&input, 96, 64, 300, true);
    let cl = Cluster::new(d.path());
    let mut procs = Procs(vec![cl.coordinator(0), cl.worker("w1"), cl.worker("w2")]);
    let (submitter, id) = submit(&cl, &input, &out);
    procs.0.push(submitter);
    Scenario {
        d,
        input,
        out,
        cl,
        procs,
        id,
    }
}

fn segment_held_by_w1(j: &Job) -> Option<u32> {
    j.tasks
        .iter()
        .find(|t| t.kind == "segment" && t.state == "leased" && t.worker_id == "w1")
        .map(|t| t.index)
}

impl Scenario {
    /// Strikes w1 once it holds a segment lease and returns that segment. If w1 finished it in
    /// the instant between the look and the strike, `recover` and try again.
    fn strike_w1(
        &mut self,
        strike: impl Fn(&mut Procs),
        recover: impl Fn(&mut Procs, &Cluster),
    ) -> u32 {
        for _ in 0..5 {
            wait_for(&self.cl.url(), &self.id, 120, "w1 to hold a segment", |j| {
                segment_held_by_w1(j).is_some()
            });
            strike(&mut self.procs);
            if let Some(v) = get_job(&self.cl.url(), &self.id)
                .as_ref()
                .and_then(segment_held_by_w1)
            {
                return v;
            }
            recover(&mut self.procs, &self.cl);
        }
        panic!("w1 was never caught holding a lease");
    }

    /// Waits for `submit --wait` to report success.
    fn submitted(&mut self) {
        let status = wait_exit(&mut self.procs.0[3], 180);
        let err = std::fs::read_to_string(self.d.path().join("submit.err")).unwrap_or_default();
        assert!(status.success(), "submit --wait: {err}");
    }
}

#[test]
fn sigkilled_worker_loses_only_its_lease() {
    let mut sc = two_workers();
    let victim = sc.strike_w1(
        |p| {
            p.0[1].kill().unwrap(); // SIGKILL
            p.0[1].wait().unwrap();
        },
        |p, cl| p.0[1] = cl.worker("w1"),
    );
    sc.submitted();
    let j = get_job(&sc.cl.url(), &sc.id).unwrap();
    let t = j.tasks.iter().find(|t| t.index == victim).unwrap();
    assert_eq!(t.state, "done");
    assert!(
        t.attempts >= 2,
        "the killed worker's segment was redone: {t:?}"
    );
    assert_eq!(t.worker_id, "w2");
    check_output(&sc.input, &sc.out);
}

#[test]
fn coordinator_restart_mid_job() {
    let mut sc = two_workers();
    let (cl, id) = (sc.cl.url(), sc.id.clone());
    wait_for(&cl, &id, 120, "some segments done", |j| {
        j.segments_done >= 2 && j.segments_done < j.segments_total
    });
    sc.procs.0[0].kill().unwrap(); // SIGKILL the coordinator
    sc.procs.0[0].wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    sc.procs.0[0] = sc.cl.coordinator(1);
    sc.submitted();
    let j = get_job(&cl, &id).unwrap();
    assert_eq!(j.segments_done, j.segments_total);
    check_output(&sc.input, &sc.out);
    // The restarted coordinator knew the job: the same idempotency key returns it.
    let (i, o) = (sc.input.to_str().unwrap(), sc.out.to_str().unwrap());
    let o = framewise(
        &[
            "submit",
            i,
            "--out",
            o,
            "--coordinator",
            &cl,
            "--idempotency-key",
            "test-job",
        ],
        &[],
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), id);
}

fn signal(c: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &c.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Waits until w1's log shows its late result or heartbeat was refused.
fn w1_learns_its_lease_is_gone(dir: &Path) {
    let t = Instant::now();
    loop {
        let log = std::fs::read_to_string(dir.join("w1.log")).unwrap();
        if log.contains("result refused (stale lease)")
            || log.contains("lease lost; stopping the task")
        {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "w1 never learned its lease was gone:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn hung_worker_loses_its_lease_and_its_late_result_is_refused() {
    let mut sc = two_workers();
    let victim = sc.strike_w1(
        |p| signal(&p.0[1], "-STOP"),
        |p, _| signal(&p.0[1], "-CONT"),
    );
    let (d, cl, id) = (sc.d.path().to_path_buf(), sc.cl.url(), sc.id.clone());
    // After the TTL (3 s) the segment goes to w2; then w1 wakes up and reports too late.
    wait_for(&cl, &id, 60, "the segment to be redone", |j| {
        j.tasks
            .iter()
            .any(|t| t.index == victim && t.state == "done" && t.worker_id == "w2")
    });
    signal(&sc.procs.0[1], "-CONT");
    sc.submitted();
    check_output(&sc.input, &sc.out);
    // w1's late result (or its heartbeat) was refused: it learned the lease was gone.
    w1_learns_its_lease_is_gone(&d);
    let j = get_job(&cl, &id).unwrap();
    let t = j.tasks.iter().find(|t| t.index == victim).unwrap();
    assert_eq!(
        t.worker_id, "w2",
        "the refused attempt did not overwrite the committed one"
    );
    // Fenced attempts' files and, after success, all segments are collected.
    let work = d.join("work");
    let t = Instant::now();
    loop {
        let left: Vec<_> = walk(&work)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "mp4"))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "segment files left behind: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Serves an Azure Scheduled Events document: no events until `evict` is set, then a Preempt notice.
fn notice_server(evict: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = if evict.load(std::sync::atomic::Ordering::SeqCst) {
                r#"{"DocumentIncarnation":2,"Events":[{"EventId":"E1","EventStatus":"Scheduled","EventType":"Preempt","ResourceType":"VirtualMachine","Resources":["vm-w1"],"NotBefore":"Wed, 25 Nov 2026 12:00:30 GMT"}]}"#
            } else {
                r#"{"DocumentIncarnation":1,"Events":[]}"#
            };
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn eviction_notice_drains_in_under_five_seconds() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.mp4");
    let out = d.path().join("out.mp4");
    make_clip(&input, 96, 64, 300, true);
    let cl = Cluster::new(d.path());
    let evict = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = format!(
        "http://127.0.0.1:{}/metadata/scheduledevents?api-version=2020-07-01",
        notice_server(evict.clone())
    );
    let w1 = spawn(
        &[
            "worker",
            "-c",
            "config/worker.toml",
            "--coordinator",
            &cl.url(),
        ],
        &[
            ("FRAMEWISE_WORKER__WORKER_ID", "w1"),
            ("FRAMEWISE_WORKER__INTRA_THREADS", "1"),
            ("FRAMEWISE_WORKER__PREEMPTION_URL", &url),
            ("FRAMEWISE_WORKER__PREEMPTION_POLL_MS", "200"),
            ("FRAMEWISE_WORKER__VM_NAME", "vm-w1"),
        ],
        &d.path().join("w1.log"),
    );
    let mut procs = Procs(vec![cl.coordinator(0), w1, cl.worker("w2")]);
    let (submitter, id) = submit(&cl, &input, &out);
    procs.0.push(submitter);
    let held_by_w1 = |j: &Job| {
        j.tasks
            .iter()
            .find(|t| t.kind == "segment" && t.state == "leased" && t.worker_id == "w1")
            .map(|t| t.index)
    };
    let j = wait_for(&cl.url(), &id, 120, "w1 to hold a segment", |j| {
        held_by_w1(j).is_some()
    });
    let victim = held_by_w1(&j).unwrap();
    evict.store(true, std::sync::atomic::Ordering::SeqCst);
    let t0 = Instant::now();
    wait_for(&cl.url(), &id, 30, "w1 to give its lease back", |j| {
        j.tasks
            .iter()
            .all(|t| !(t.state == "leased" && t.worker_id == "w1"))
    });
    let drained = t0.elapsed();
    assert!(drained < Duration::from_secs(5), "drained in {drained:?}");
    eprintln!("eviction notice drained w1 in {drained:?}");
    let status = wait_exit(&mut procs.0[1], 30);
    assert!(status.success(), "an evicted worker exits cleanly");
    let status = wait_exit(&mut procs.0[3], 180);
    assert!(
        status.success(),
        "submit --wait: {}",
        std::fs::read_to_string(d.path().join("submit.err")).unwrap()
    );
    check_output(&input, &out);
    // The segment w1 gave back: the one it held when the notice came (it may have finished the
    // one seen above in the instant before, and gone on to another), finished by w2.
    let detail = cl.job_detail(&id);
    let released: Vec<&serde_json::Value> = detail["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "segment" && t["releases"].as_u64().unwrap_or(0) > 0)
        .collect();
    // w1's media lane, if it held the assembly, gave it back too, and w2's finished it.
    let assembly = detail["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "assemble")
        .unwrap();
    assert_eq!(assembly["state"], "done");
    if assembly["releases"].as_u64().unwrap_or(0) > 0 {
        assert_eq!(assembly["worker_id"], "w2-1", "{assembly}");
    }
    // (None when w1 finished its segment in the instant before the notice and took no other.)
    assert!(released.len() <= 1, "w1 held one lease: {released:?}");
    for t in &released {
        assert_eq!(
            (&t["state"], &t["worker_id"]),
            (&"done".into(), &"w2".into()),
            "{t}"
        );
    }
    let log = std::fs::read_to_string(d.path().join("w1.log")).unwrap();
    let lane_released = assembly["releases"].as_u64().unwrap_or(0) > 0;
    assert_eq!(
        log.contains("lease released"),
        released.len() == 1 || lane_released,
        "{log}"
    );
    let seen = get_job(&cl.url(), &id).unwrap();
    let v = seen.tasks.iter().find(|t| t.index == victim).unwrap();
    assert_eq!(v.state, "done", "the segment w1 was seen holding");
}

/// Every decoded frame of a video, as RGB bytes.
fn all_frames(path: &Path) -> Vec<Vec<u8>> {
    use framewise_worker::media::decode::{decode_range, DecodeRequest};
    let p = probe_ok(path);
    let mut frames = Vec::new();
    let req = DecodeRequest {
        path,
        frame_pts: &p.frame_pts,
        seek_ns: 0,
        size: None,
        stall_timeout: Duration::from_secs(60),
        threads: 0,
        nvdec: None,
        pool: None,
        nv12: false,
    };
    decode_range(&req, &mut |f| {
        frames.push(f.data);
        true
    })
    .unwrap();
    frames
}

/// A small deterministic generator; the seed is printed so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn chaos_random_sigkills_and_a_coordinator_restart_change_no_frame() {
    let lossless = [
        ("FRAMEWISE_WORKER__ENCODER__CRF", "0"),
        ("FRAMEWISE_WORKER__INTRA_THREADS", "1"),
    ];
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.mp4");
    make_clip(&input, 96, 64, 500, true);

    // The undisturbed reference: lossless x264, so segment boundaries cannot change a pixel.
    let reference = d.path().join("reference.mp4");
    let o = framewise_run(&input, &reference, &["--segment-seconds", "5"], &lossless);
    assert!(o.status.success(), "reference run: {}", stderr(&o));

    let out = d.path().join("out.mp4");
    let cl = Cluster::new(d.path());
    let worker = |n: u32| {
        let id = format!("w{n}");
        let mut env = lossless.to_vec();
        env.push(("FRAMEWISE_WORKER__WORKER_ID", &id));
        spawn(
            &[
                "worker",
                "-c",
                "config/worker.toml",
                "--coordinator",
                &cl.url(),
            ],
            &env,
            &d.path().join(format!("{id}.log")),
        )
    };
    let mut procs = Procs(vec![cl.coordinator(0)]);
    for n in 1..=4 {
        procs.0.push(worker(n));
    }
    let (submitter, id) = submit(&cl, &input, &out);
    let mut submitter = Procs(vec![submitter]);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("chaos seed {seed}");
    let mut rng = Rng(seed);
    let (mut kills, mut next_worker, mut restarted) = (0, 5u32, false);
    let t = Instant::now();
    while submitter.0[0].try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(240), "job did not finish");
        std::thread::sleep(Duration::from_millis(300 + rng.below(500)));
        let Some(j) = get_job(&cl.url(), &id) else {
            continue;
        };
        let progress = j.frames_done as f64 / j.frames_total.max(1) as f64;
        if !restarted && progress > 0.4 {
            procs.0[0].kill().unwrap();
            procs.0[0].wait().unwrap();
            procs.0[0] = cl.coordinator(1);
            restarted = true;
            eprintln!("chaos: coordinator restarted at {:.0} %", progress * 100.0);
        } else if kills < 4 && progress < 0.9 {
            // SIGKILL a random worker and start a replacement, as a scale set would.
            let victim = 1 + rng.below(4) as usize;
            procs.0[victim].kill().unwrap();
            procs.0[victim].wait().unwrap();
            procs.0[victim] = worker(next_worker);
            eprintln!(
                "chaos: killed worker slot {victim} at {:.0} %, started w{next_worker}",
                progress * 100.0
            );
            next_worker += 1;
            kills += 1;
        }
    }
    let status = submitter.0[0].wait().unwrap();
    assert!(
        status.success(),
        "submit --wait: {}",
        std::fs::read_to_string(d.path().join("submit.err")).unwrap()
    );
    assert!(restarted, "the coordinator was restarted during the job");
    assert!(kills >= 1, "at least one worker was killed during the job");

    let (want, got) = (all_frames(&reference), all_frames(&out));
    assert_eq!(got.len(), want.len(), "frame count");
    for (i, (a, b)) in want.iter().zip(&got).enumerate() {
        assert!(a == b, "frame {i} differs from the undisturbed run");
    }
    assert_eq!(audio_packets(&input), audio_packets(&out));
}

/// A cluster whose coordinator cuts segments into chunks of 10 frames (0.4 s at 25 fps).
fn chunked_cluster(dir: &Path) -> Cluster {
    let cl = Cluster::new(dir);
    let mut cfg = std::fs::read_to_string(&cl.config).unwrap();
    cfg.push_str("chunk_seconds = 0.4\n");
    std::fs::write(
        &cl.config,
        cfg.replace("segment_seconds = 1.0", "segment_seconds = 100.0"),
    )
    .unwrap();
    cl
}

#[test]
fn idle_workers_steal_and_a_lost_lease_redoes_at_most_one_chunk() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.mp4");
    let out = d.path().join("out.mp4");
    make_clip(&input, 96, 64, 400, true);
    let cl = chunked_cluster(d.path());
    // One worker first: the whole video is one segment, and it is w1's.
    let mut procs = Procs(vec![cl.coordinator(0), cl.worker("w1")]);
    let (submitter, id) = submit(&cl, &input, &out);
    procs.0.push(submitter);
    let j = wait_for(&cl.url(), &id, 120, "w1 to commit a few chunks", |j| {
        j.tasks
            .iter()
            .any(|t| t.kind == "segment" && t.worker_id == "w1" && t.chunks >= 3)
    });
    assert_eq!(j.segments_total, 1);
    // A second worker arrives with nothing queued: it steals the tail of w1's range.
    procs.0.push(cl.worker("w2"));
    let j = wait_for(&cl.url(), &id, 60, "w2 to steal", |j| j.segments_total >= 2);
    let stolen = j
        .tasks
        .iter()
        .find(|t| t.kind == "segment" && t.index > 1)
        .unwrap();
    // Where w1 and w2 finish soonest: on a keyframe (every 12 frames in this clip) or on one
    // of w1's chunk boundaries, the only candidates.
    assert!(
        stolen.start_frame % 12 == 0 || stolen.start_frame % 10 == 0,
        "split at a keyframe or a chunk boundary: {stolen:?}"
    );
    // Kill w1 mid-chunk: its committed chunks stay, only the unfinished one is redone.
    let before = get_job(&cl.url(), &id).unwrap();
    let w1_task = before.tasks.iter().find(|t| t.index == 1).unwrap().clone();
    if w1_task.state == "leased" {
        procs.0[1].kill().unwrap();
        procs.0[1].wait().unwrap();
        let progress = w1_task.start_frame + w1_task.frames_done;
        let after = wait_for(&cl.url(), &id, 60, "w1's lease to expire", |j| {
            j.tasks
                .iter()
                .any(|t| t.index == 1 && (t.state != "leased" || t.worker_id != "w1"))
        });
        let t = after.tasks.iter().find(|t| t.index == 1).unwrap();
        let lost = progress.saturating_sub(t.committed_until);
        eprintln!(
            "w1 killed at frame {progress}; committed until {}; redone {lost} frames",
            t.committed_until
        );
        assert!(
            lost <= 10 + 8,
            "at most one chunk (10) plus the frames in the pipeline (8) redone, got {lost}"
        );
    }
    let status = wait_exit(&mut procs.0[2], 180);
    assert!(
        status.success(),
        "submit --wait: {}",
        std::fs::read_to_string(d.path().join("submit.err")).unwrap()
    );
    check_output(&input, &out);
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A coordinator and `n` synthetic-model workers (each frame sleeps `ms`), for scheduler benchmarks.
fn bench_cluster(
    dir: &Path,
    n: usize,
    ms: u64,
    segment_seconds: f64,
    chunk_seconds: f64,
) -> (Cluster, Procs) {
    std::fs::create_dir_all(dir).unwrap();
    let cl = Cluster::new(dir);
    let cfg = std::fs::read_to_string(&cl.config)
        .unwrap()
        .replace(
            "segment_seconds = 1.0",
            &format!("segment_seconds = {segment_seconds}\nchunk_seconds = {chunk_seconds}"),
        )
        .replace("max_attempts = 4", "max_attempts = 10");
    std::fs::write(&cl.config, cfg).unwrap();
    let mut procs = Procs(vec![cl.coordinator(0)]);
    let ms = ms.to_string();
    for i in 1..=n {
        let id = format!("w{i}");
        procs.0.push(spawn(
            &[
                "worker",
                "-c",
                "config/worker.toml",
                "--coordinator",
                &cl.url(),
            ],
            &[
                ("FRAMEWISE_WORKER__WORKER_ID", &id),
                ("FRAMEWISE_WORKER__SYNTHETIC_MODEL_MS_PER_FRAME", &ms),
            ],
            &dir.join(format!("{id}.log")),
        ));
    }
    (cl, procs)
}

/// Kills workers w1..=wk (procs 1..=k); returns frames they had done but not committed.
fn kill_first(procs: &mut Procs, k: usize, snapshot: &Job) -> u64 {
    let mut wasted = 0;
    for i in 1..=k {
        procs.0[i].kill().unwrap();
        procs.0[i].wait().unwrap();
        let id = format!("w{i}");
        for t in snapshot
            .tasks
            .iter()
            .filter(|t| t.state == "leased" && t.worker_id == id)
        {
            wasted += (t.lease_from + t.frames_done).saturating_sub(t.committed_until);
        }
    }
    wasted
}

fn cancel(url: &str, id: &str) {
    use framewise_common::proto::CancelJobRequest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = JobServiceClient::connect(url.to_string()).await.unwrap();
        c.cancel_job(CancelJobRequest {
            job_id: id.to_string(),
        })
        .await
        .unwrap();
    });
}

/// Eviction cost (issue 4): makespan undisturbed, with a third of the workers SIGKILLed without
/// notice at 50 % progress, and with a static even split that reruns the whole step after a
/// failure (what an MPI step does). Synthetic-model workers; run by bench/eviction.sh.
#[test]
#[ignore = "benchmark: run by bench/eviction.sh"]
fn eviction_cost_benchmark() {
    let n: usize = env_or("FW_BENCH_WORKERS", 6);
    let ms: u64 = env_or("FW_BENCH_MS_PER_FRAME", 100);
    let frames: u32 = env_or("FW_BENCH_FRAMES", 750);
    // FW_BENCH_MS_PER_FRAME=0 runs the real model (at a frame size FW_BENCH_SIZE, WxH).
    let size: String = env_or("FW_BENCH_SIZE", "96x64".to_string());
    let (w, h) = size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .expect("FW_BENCH_SIZE is WxH");
    let k = n / 3;
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.mp4");
    make_clip(&input, w, h, frames, true);
    let seconds = frames as f64 / 25.0;

    // 1. Leases, undisturbed.
    let (cl, procs) = bench_cluster(&d.path().join("a"), n, ms, 4.0, 1.0);
    let t0 = Instant::now();
    let (mut s, _) = submit_with(&cl, &input, &d.path().join("a.mp4"), "a", &[]);
    assert!(wait_exit(&mut s, 600).success());
    let undisturbed = t0.elapsed().as_secs_f64();
    drop(procs);

    // 2. Leases, a third of the workers SIGKILLed at 50 %.
    let (cl, mut p2) = bench_cluster(&d.path().join("b"), n, ms, 4.0, 1.0);
    let t0 = Instant::now();
    let (mut s, id) = submit_with(&cl, &input, &d.path().join("b.mp4"), "b", &[]);
    let snap = wait_for(&cl.url(), &id, 600, "50 %", |j| {
        j.frames_total > 0 && j.frames_done * 2 >= j.frames_total
    });
    let wasted = kill_first(&mut p2, k, &snap);
    assert!(wait_exit(&mut s, 600).success());
    let evicted = t0.elapsed().as_secs_f64();
    check_output(&input, &d.path().join("b.mp4"));
    drop(p2);

    // A static even split over `parts` workers: one segment each, no checkpoints.
    let submit_split = |cl: &Cluster, out: &str, key: &str, parts: usize| {
        let seg = format!("{}", seconds / parts as f64);
        submit_with(
            cl,
            &input,
            &d.path().join(out),
            key,
            &["--segment-seconds", &seg],
        )
    };

    // 3. Static even split, undisturbed: what an MPI step costs when no node dies, the
    // baseline its rerun is compared with.
    let (cl, p0) = bench_cluster(&d.path().join("s"), n, ms, 1.0, 100_000.0);
    let t0 = Instant::now();
    let (mut s, _) = submit_split(&cl, "s.mp4", "s", n);
    assert!(wait_exit(&mut s, 600).success());
    let static_undisturbed = t0.elapsed().as_secs_f64();
    drop(p0);

    // 4. Static even split, whole step rerun on the survivors after the failure.
    let (cl, mut p3) = bench_cluster(&d.path().join("c"), n, ms, 1.0, 100_000.0);
    let t0 = Instant::now();
    let (mut s, id) = submit_split(&cl, "c.mp4", "c1", n);
    let snap = wait_for(&cl.url(), &id, 600, "50 %", |j| {
        j.frames_total > 0 && j.frames_done * 2 >= j.frames_total
    });
    let static_wasted = snap.frames_done;
    kill_first(&mut p3, k, &snap);
    cancel(&cl.url(), &id);
    let _ = wait_exit(&mut s, 60);
    let (mut s, _) = submit_split(&cl, "c.mp4", "c2", n - k);
    assert!(wait_exit(&mut s, 600).success());
    let static_split = t0.elapsed().as_secs_f64();
    drop(p3);

    let model = if ms > 0 {
        format!("synthetic-model workers x {ms} ms/frame")
    } else {
        "workers running the real model".to_string()
    };
    println!("eviction cost: {n} {model}, {frames} frames ({size}), {k} SIGKILLed at 50 %");
    println!("| run | makespan | vs undisturbed | frames redone |");
    println!("|---|---|---|---|");
    println!("| leases + 1 s chunks, undisturbed | {undisturbed:.1} s | 1.00 | 0 |");
    println!("| leases + 1 s chunks, {k} of {n} killed at 50 % | {evicted:.1} s | {:.2} | {wasted} ({:.1} per eviction; a chunk is 25) |", evicted / undisturbed, wasted as f64 / k as f64);
    println!(
        "| static even split, undisturbed | {static_undisturbed:.1} s | {:.2} | 0 |",
        static_undisturbed / undisturbed
    );
    println!("| static even split, whole step rerun on {} survivors | {static_split:.1} s | {:.2} ({:.2} x its own undisturbed run) | {static_wasted} |", n - k, static_split / undisturbed, static_split / static_undisturbed);
}

/// What a simulated worker reports as the probe of a 64x48 H.264 video of `frames` frames at
/// `fps`, with a keyframe every `gop` frames.
fn sim_media(frames: u64, fps: i32, gop: usize) -> framewise_common::proto::MediaInfo {
    let step = 1_000_000_000 / fps as u64;
    framewise_common::proto::MediaInfo {
        width: 64,
        height: 48,
        fps_num: fps,
        fps_den: 1,
        frame_count: frames,
        duration_ns: frames * step,
        video_codec: "video/x-h264".into(),
        frame_pts: (0..frames).map(|i| i * step).collect(),
        keyframes: (0..frames).step_by(gop).collect(),
        ..Default::default()
    }
}

/// Coordinator scale (issue 4): many simulated workers over real gRPC connections lease and
/// commit many small tasks against one coordinator process. Run by bench/scale.sh.
#[test]
#[ignore = "benchmark: run by bench/scale.sh"]
fn coordinator_scale_benchmark() {
    use framewise_common::proto::{
        complete_task_request, lease_task_response::Task as T,
        worker_service_client::WorkerServiceClient, AssembleResult, CompleteChunkRequest,
        CompleteTaskRequest, JobParams, JobSpec, LeaseTaskRequest, ListJobsRequest,
        RegisterRequest, SubmitJobRequest,
    };
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let workers: usize = env_or("FW_BENCH_WORKERS", 1000);
    let tasks: u64 = env_or("FW_BENCH_TASKS", 100_000);
    // Time a simulated worker "works" on a lease before committing (mean, ms; jittered ±50 %):
    // 0 = closed loop (saturation); workers / think sets the offered load.
    let think: u64 = env_or("FW_BENCH_THINK_MS", 0);
    let per_job: u64 = 1000; // segments per job: 25-frame segments of a 25,000-frame video
    let jobs = tasks.div_ceil(per_job);
    let d = tempfile::tempdir().unwrap();
    let cl = Cluster::new(d.path());
    let cfg = std::fs::read_to_string(&cl.config)
        .unwrap()
        .replace("lease_ttl_ms = 3000", "lease_ttl_ms = 120000");
    std::fs::write(&cl.config, cfg).unwrap();
    let mut procs = Procs(vec![cl.coordinator(0)]);
    let pid = procs.0[0].id();
    let url = cl.url();
    // The simulated workers' threads (on a many-core machine, enough to keep the coordinator fed).
    let client_threads: usize = env_or("FW_BENCH_CLIENT_THREADS", 2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads)
        .enable_all()
        .build()
        .unwrap();
    let media = sim_media(per_job * 25, 25, 25);
    let done = Arc::new(AtomicU64::new(0));
    let last_commit_us = Arc::new(AtomicU64::new(0));
    let (elapsed, lat, commit_lat) = rt.block_on(async {
        let mut jc = JobServiceClient::connect(url.clone()).await.unwrap();
        for j in 0..jobs {
            let spec = JobSpec {
                input_url: format!("/bench/in-{j}.mp4"),
                output_url: format!("/bench/out-{j}.mp4"),
                params: Some(JobParams {
                    segment_seconds: 1.0,
                    ..Default::default()
                }),
            };
            jc.submit_job(SubmitJobRequest {
                spec: Some(spec),
                idempotency_key: format!("bench-{j}"),
            })
            .await
            .unwrap();
        }
        let t0 = Instant::now();
        let mut handles = Vec::new();
        for w in 0..workers {
            let (url, media, done) = (url.clone(), media.clone(), done.clone());
            let last_commit_us = last_commit_us.clone();
            handles.push(tokio::spawn(async move {
                let id = format!("sim-{w}");
                // As real workers do: a thousand connecting at once may be reset (the listen
                // backlog overflows on 16 cores with think time 0); retry with backoff.
                let mut backoff = Duration::from_millis(50);
                let mut c = loop {
                    let attempt = async {
                        let mut c = WorkerServiceClient::connect(url.clone())
                            .await
                            .map_err(|e| e.to_string())?;
                        c.register(RegisterRequest {
                            worker_id: id.clone(),
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                        Ok::<_, String>(c)
                    };
                    match attempt.await {
                        Ok(c) => break c,
                        Err(e) if backoff < Duration::from_secs(5) => {
                            eprintln!("sim-{w}: {e}; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff *= 2;
                        }
                        Err(e) => panic!("sim-{w} could not register: {e}"),
                    }
                };
                let mut lat = Vec::new();
                let mut commit_lat = Vec::new();
                let mut idle = 0;
                let mut rng =
                    0x9E37_79B9_7F4A_7C15u64 ^ (w as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
                while idle < 20 {
                    let t = Instant::now();
                    let r = c
                        .lease_task(LeaseTaskRequest {
                            worker_id: id.clone(),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    lat.push((t.duration_since(t0), t.elapsed()));
                    let (Some(task), Some(lease)) = (r.task, r.lease) else {
                        idle += 1;
                        tokio::time::sleep(Duration::from_millis(r.retry_after_ms.max(50))).await;
                        continue;
                    };
                    idle = 0;
                    let result = match task {
                        T::Probe(_) => Some(complete_task_request::Result::Probe(media.clone())),
                        T::Assemble(a) => {
                            Some(complete_task_request::Result::Assemble(AssembleResult {
                                output_url: a.output_url,
                                frames: media.frame_count,
                                duration_ns: media.duration_ns,
                            }))
                        }
                        T::Segment(s) => {
                            if think > 0 {
                                rng ^= rng << 13;
                                rng ^= rng >> 7;
                                rng ^= rng << 17;
                                let ms = think / 2 + rng % (think + 1);
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            let t = Instant::now();
                            let req = CompleteChunkRequest {
                                worker_id: id.clone(),
                                lease_id: lease.lease_id.clone(),
                                epoch: lease.epoch,
                                start_frame: s.start_frame,
                                end_frame: s.end_frame,
                                url: format!("{}/{}.mp4", s.output_url, s.start_frame),
                            };
                            // Refused only for the loser of a tail-speculation race; the
                            // count of accepted commits must still be one per segment.
                            let accepted =
                                c.complete_chunk(req).await.unwrap().into_inner().accepted;
                            commit_lat.push((t.duration_since(t0), t.elapsed()));
                            if accepted {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            last_commit_us
                                .fetch_max(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                            None
                        }
                    };
                    if let Some(result) = result {
                        let req = CompleteTaskRequest {
                            worker_id: id.clone(),
                            lease_id: lease.lease_id,
                            epoch: lease.epoch,
                            result: Some(result),
                        };
                        c.complete_task(req).await.unwrap();
                    }
                }
                (lat, commit_lat)
            }));
        }
        let (mut lat, mut commit_lat) = (Vec::new(), Vec::new());
        for h in handles {
            let (l, c) = h.await.unwrap();
            lat.extend(l);
            commit_lat.extend(c);
        }
        // Until the last commit: the idle tail (20 empty polls per worker once drained) is not work.
        let until = Duration::from_micros(last_commit_us.load(Ordering::Relaxed));
        (until, lat, commit_lat)
    });
    let segs = done.load(Ordering::Relaxed);
    assert_eq!(segs, jobs * per_job, "every segment committed exactly once");
    let rss_mb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0;
    // The coordinator's own view of LeaseTask (its histogram: from the call reaching the actor's
    // queue to the durable reply), to tell its latency from the network's and the clients'.
    let metrics = ureq::get(&format!("{}/metrics", cl.http_url()))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default();
    let bucket = |name: &str, le: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}_bucket{{le=\"{le}\"}}")))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or(0.0)
    };
    for (name, what) in [
        (
            "framewise_lease_latency_seconds",
            "coordinator-side LeaseTask",
        ),
        ("framewise_state_write_seconds", "state write turns"),
        (
            "framewise_lease_queue_seconds",
            "LeaseTask wait in the actor's mailbox",
        ),
    ] {
        let all = bucket(name, "+Inf").max(1.0);
        println!(
            "| {what}: within 1 / 5 / 20 / 50 ms | {:.2} / {:.2} / {:.3} / {:.3} % of {all} |",
            100.0 * bucket(name, "0.001") / all,
            100.0 * bucket(name, "0.005") / all,
            100.0 * bucket(name, "0.02") / all,
            100.0 * bucket(name, "0.05") / all
        );
    }
    // The actor's own time per message kind: the longest handlers hold up every call behind them.
    // `suffix` is count, sum or bucket{le="…"}; the text format puts `message` first.
    let labelled = |kind: &str, suffix: &str| -> f64 {
        let head = match suffix.split_once('{') {
            Some((name, rest)) => format!(
                "framewise_actor_handle_seconds_{name}{{message=\"{kind}\",{}",
                rest.trim_end_matches('}')
            ),
            None => format!("framewise_actor_handle_seconds_{suffix}{{message=\"{kind}\"}}"),
        };
        metrics
            .lines()
            .find(|l| l.starts_with(&head))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or(0.0)
    };
    for kind in [
        "lease",
        "heartbeat",
        "commit_chunk",
        "complete",
        "register",
        "expire",
        "tick",
        "gauges",
    ] {
        let all = labelled(kind, "count");
        if all == 0.0 {
            continue;
        }
        let within = |le: &str| labelled(kind, &format!("bucket{{le=\"{le}\"}}"));
        println!(
            "| actor time, {kind}: within 0.1 / 1 / 5 / 20 ms | {:.2} / {:.2} / {:.3} / {:.3} % of {all}, {:.2} s in all |",
            100.0 * within("0.0001") / all,
            100.0 * within("0.001") / all,
            100.0 * within("0.005") / all,
            100.0 * within("0.02") / all,
            labelled(kind, "sum")
        );
    }
    // Stalls the coordinator logged (a slow state write or tick delays every call behind it).
    let log = std::fs::read_to_string(d.path().join("coordinator-0.log")).unwrap_or_default();
    for what in ["slow state write", "slow tick"] {
        let ms: Vec<u64> = log
            .lines()
            .filter(|l| l.contains(what))
            .filter_map(|l| {
                l.split("ms=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        println!(
            "| coordinator: {what} (> 50 / 20 ms) | {} times, longest {} ms, {} ms in all |",
            ms.len(),
            ms.iter().max().unwrap_or(&0),
            ms.iter().sum::<u64>()
        );
    }
    // Restart recovery: SIGKILL, start again, time until the state answers.
    procs.0[0].kill().unwrap();
    procs.0[0].wait().unwrap();
    let t = Instant::now();
    procs.0[0] = cl.coordinator(1);
    let n = rt.block_on(async {
        let mut jc = JobServiceClient::connect(url.clone()).await.unwrap();
        jc.list_jobs(ListJobsRequest {})
            .await
            .unwrap()
            .into_inner()
            .jobs
            .len()
    });
    let recovery = t.elapsed();
    assert_eq!(n as u64, jobs);
    // Steady state: calls started in the middle 80 % of the run, without the start (1,000
    // workers registering and asking for work in the same instant) and the drained end.
    let steady = |v: &[(Duration, Duration)]| -> Vec<Duration> {
        let (a, b) = (elapsed.mul_f64(0.1), elapsed.mul_f64(0.9));
        let mut s: Vec<Duration> = v
            .iter()
            .filter(|(at, _)| *at >= a && *at <= b)
            .map(|x| x.1)
            .collect();
        s.sort();
        s
    };
    let (lat_steady, commit_steady) = (steady(&lat), steady(&commit_lat));
    let mut lat: Vec<Duration> = lat.into_iter().map(|x| x.1).collect();
    let mut commit_lat: Vec<Duration> = commit_lat.into_iter().map(|x| x.1).collect();
    lat.sort();
    commit_lat.sort();
    let pct_of = |v: &[Duration], p: f64| {
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1000.0
    };
    let pct = |p: f64| pct_of(&lat, p);
    let ops = 2.0 * segs as f64 / elapsed.as_secs_f64(); // a lease and a chunk commit per task
    println!("coordinator scale: {workers} simulated workers (one gRPC connection each, {client_threads} client threads), {segs} segment tasks in {jobs} jobs, think time {think} ms, {} cores", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!("| measure | result |");
    println!("|---|---|");
    println!(
        "| lease + commit operations/s | {ops:.0} ({:.1} s for all) |",
        elapsed.as_secs_f64()
    );
    println!(
        "| LeaseTask latency p50 / p99 | {:.1} ms / {:.1} ms ({} calls) |",
        pct(0.5),
        pct(0.99),
        lat.len()
    );
    println!(
        "| CompleteChunk latency p50 / p99 | {:.1} ms / {:.1} ms |",
        pct_of(&commit_lat, 0.5),
        pct_of(&commit_lat, 0.99)
    );
    println!(
        "| steady state (calls in the middle 80 % of the run): LeaseTask p50 / p99 / p99.9 | {:.1} / {:.1} / {:.1} ms ({} calls) |",
        pct_of(&lat_steady, 0.5),
        pct_of(&lat_steady, 0.99),
        pct_of(&lat_steady, 0.999),
        lat_steady.len()
    );
    println!(
        "| steady state: CompleteChunk p50 / p99 / p99.9 | {:.1} / {:.1} / {:.1} ms |",
        pct_of(&commit_steady, 0.5),
        pct_of(&commit_steady, 0.99),
        pct_of(&commit_steady, 0.999)
    );
    println!("| coordinator peak RSS | {rss_mb:.0} MB |");
    println!(
        "| restart recovery (SIGKILL → state served) | {:.2} s |",
        recovery.as_secs_f64()
    );
}

#[test]
fn cancel_stops_the_job_and_writes_no_output() {
    let mut sc = two_workers();
    let (cl, id) = (sc.cl.url(), sc.id.clone());
    wait_for(&cl, &id, 120, "work under way", |j| j.frames_done > 0);
    let o = framewise(&["cancel", &id, "--coordinator", &cl], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("{id} cancelled")
    );
    let status = wait_exit(&mut sc.procs.0[3], 60);
    assert!(!status.success(), "submit --wait reports the cancellation");
    let err = std::fs::read_to_string(sc.d.path().join("submit.err")).unwrap();
    assert!(err.contains("cancelled by the user"), "{err}");
    assert!(!sc.out.exists(), "no output for a cancelled job");
    let o = framewise(&["cancel", "job-nope", "--coordinator", &cl], &[]);
    assert!(
        !o.status.success() && stderr(&o).contains("job-nope not found"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_idle_worker_closes_its_kept_decoder_and_lets_the_input_go() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.mp4");
    let out = d.path().join("out.mp4");
    make_clip(&input, 96, 64, 75, true);
    let input = input.canonicalize().unwrap();
    let cl = Cluster::new(d.path());
    let mut procs = Procs(vec![cl.coordinator(0), cl.worker("w1")]);
    let (submitter, _) = submit(&cl, &input, &out);
    procs.0.push(submitter);
    assert!(wait_exit(&mut procs.0[2], 120).success(), "the job failed");
    check_output(&input, &out);
    // The pipeline kept its decoder (and the input file) open for another range; idle for a
    // while, it closes them, so a deleted input's space is freed and NVDEC's surfaces too.
    let pid = procs.0[1].id();
    let holds_input = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .any(|p| p == input)
            })
            .unwrap_or(false)
    };
    let log = cl.dir.join("w1.log");
    let t = Instant::now();
    while holds_input()
        || !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("idle: kept decoder closed")
    {
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "the idle worker still holds {} open",
            input.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A 300-frame clip and a cluster whose lease TTL (120 s) lies far beyond a test's wait, so a
/// stalled worker's work can move on only through what the test is about.
fn long_ttl_cluster() -> (tempfile::TempDir, PathBuf, PathBuf, Cluster) {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.mp4");
    let out = d.path().join("out.mp4");
    make_clip(&input, 96, 64, 300, true);
    let cl = Cluster::new(d.path());
    let cfg = std::fs::read_to_string(&cl.config)
        .unwrap()
        .replace("lease_ttl_ms = 3000", "lease_ttl_ms = 120000");
    std::fs::write(&cl.config, cfg).unwrap();
    (d, input, out, cl)
}

#[test]
fn a_stalled_media_lane_hands_its_assembly_over_long_before_its_lease_expires() {
    // The assembly must move after three silent heartbeats, not at the TTL.
    let (_d, input, out, cl) = long_ttl_cluster();
    // w1 alone at first, so its media lane (w1-1) takes the assembly when the probe is done.
    let mut procs = Procs(vec![cl.coordinator(0), cl.worker("w1")]);
    let (submitter, id) = submit(&cl, &input, &out);
    procs.0.push(submitter);
    let assembly = |j: &Job| {
        j.tasks
            .iter()
            .find(|t| t.kind == "assemble")
            .map(|t| (t.state.clone(), t.worker_id.clone(), t.attempts))
    };
    wait_for(&cl.url(), &id, 120, "w1's lane to hold the assembly", |j| {
        assembly(j).is_some_and(|(state, _, _)| state == "leased")
    });
    // The whole process stops: its pipeline's segment and its lane's assembly stall.
    signal(&procs.0[1], "-STOP");
    let t0 = Instant::now();
    procs.0.push(cl.worker("w2"));
    let status = wait_exit(&mut procs.0[2], 100);
    signal(&procs.0[1], "-CONT");
    assert!(status.success(), "the job did not finish");
    assert!(
        t0.elapsed() < Duration::from_secs(100),
        "finished only after the lease TTL"
    );
    check_output(&input, &out);
    let job = get_job(&cl.url(), &id).unwrap();
    let (state, worker, attempts) = assembly(&job).unwrap();
    assert_eq!(state, "done");
    assert_eq!(worker, "w2-1", "w2's lane assembled it");
    assert!(attempts >= 2, "w1's lane had it first: {attempts} attempts");
}

#[test]
fn a_stalled_worker_is_raced_by_an_idle_one_long_before_its_lease_expires() {
    // Only speculation can rescue the stalled segment before the TTL.
    let (d, input, out, cl) = long_ttl_cluster();
    let procs = Procs(vec![cl.coordinator(0), cl.worker("w1"), cl.worker("w2")]);
    let (submitter, id) = submit(&cl, &input, &out);
    let mut sc = Scenario {
        d,
        input,
        out,
        cl,
        procs,
        id,
    };
    sc.procs.0.push(submitter);
    let t0 = Instant::now();
    let victim = sc.strike_w1(
        |p| signal(&p.0[1], "-STOP"),
        |p, _| signal(&p.0[1], "-CONT"),
    );
    let status = wait_exit(&mut sc.procs.0[3], 100);
    assert!(status.success(), "the job did not finish");
    assert!(
        t0.elapsed() < Duration::from_secs(100),
        "finished only after the lease TTL"
    );
    check_output(&sc.input, &sc.out);
    let job = get_job(&sc.cl.url(), &sc.id).unwrap();
    let t = job.tasks.iter().find(|t| t.index == victim).unwrap();
    assert_eq!(t.worker_id, "w2", "the speculative attempt committed it");
    // The dashboard's API shows the race.
    let detail = sc.cl.job_detail(&sc.id);
    let task = detail["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["index"] == victim)
        .unwrap()
        .clone();
    assert!(task["speculations"].as_u64().unwrap() >= 1, "{task}");
    // The stalled worker wakes up and learns its lease is gone.
    signal(&sc.procs.0[1], "-CONT");
    w1_learns_its_lease_is_gone(sc.d.path());
}

/// A long video's every frame timestamp travels in one probe result and one assembly lease:
/// 1,000,000 frames (the default `limits.max_frames`; 2.8 h at 100 fps) is about 9 MB of
/// protobuf, past tonic's 4 MiB default that once capped this near 600,000 frames. A request
/// past the coordinator's limit is refused with OutOfRange naming both sizes.
#[test]
fn a_million_frame_video_fits_the_messages_and_oversized_requests_are_refused() {
    use framewise_common::proto::{
        complete_task_request, lease_task_response::Task as T,
        worker_service_client::WorkerServiceClient, AssembleResult, CompleteChunkRequest,
        CompleteTaskRequest, GetJobRequest, JobParams, JobSpec, LeaseTaskRequest, RegisterRequest,
        SubmitJobRequest,
    };
    let d = tempfile::tempdir().unwrap();
    let cl = Cluster::new(d.path());
    let _procs = Procs(vec![cl.coordinator(0)]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let big = framewise_common::CLIENT_MAX_MESSAGE_BYTES;
        let mut jc = JobServiceClient::connect(cl.url())
            .await
            .unwrap()
            .max_encoding_message_size(big);
        let mut wc = WorkerServiceClient::connect(cl.url())
            .await
            .unwrap()
            .max_decoding_message_size(big)
            .max_encoding_message_size(big);
        let job = jc
            .submit_job(SubmitJobRequest {
                spec: Some(JobSpec {
                    input_url: "/long/in.mp4".into(),
                    output_url: "/long/out.mp4".into(),
                    params: Some(JobParams {
                        segment_seconds: 10_000.0,
                        ..Default::default()
                    }),
                }),
                idempotency_key: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .job_id;
        // Oversized: refused before it is read, naming the sizes.
        let e = jc
            .submit_job(SubmitJobRequest {
                spec: None,
                idempotency_key: "k".repeat(30 << 20),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
        assert!(e.message().contains("too large"), "{}", e.message());
        wc.register(RegisterRequest {
            worker_id: "w".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let frames = 1_000_000u64;
        let media = sim_media(frames, 100, 250);
        let lease = || LeaseTaskRequest {
            worker_id: "w".into(),
            ..Default::default()
        };
        let mut assembled = false;
        for _ in 0..100 {
            let r = wc.lease_task(lease()).await.unwrap().into_inner();
            let (Some(task), Some(l)) = (r.task, r.lease) else {
                break;
            };
            let result = match task {
                T::Probe(_) => complete_task_request::Result::Probe(media.clone()),
                T::Segment(s) => {
                    let req = CompleteChunkRequest {
                        worker_id: "w".into(),
                        lease_id: l.lease_id.clone(),
                        epoch: l.epoch,
                        start_frame: s.start_frame,
                        end_frame: s.end_frame,
                        url: format!("{}/{}.mp4", s.output_url, s.start_frame),
                    };
                    assert!(wc.complete_chunk(req).await.unwrap().into_inner().accepted);
                    continue;
                }
                T::Assemble(a) => {
                    let m = a.media.clone().unwrap_or_default();
                    assert_eq!(
                        m.frame_pts.len() as u64,
                        frames,
                        "every timestamp in the lease"
                    );
                    assembled = true;
                    complete_task_request::Result::Assemble(AssembleResult {
                        output_url: a.output_url,
                        frames,
                        duration_ns: media.duration_ns,
                    })
                }
            };
            let req = CompleteTaskRequest {
                worker_id: "w".into(),
                lease_id: l.lease_id,
                epoch: l.epoch,
                result: Some(result),
            };
            assert!(wc.complete_task(req).await.unwrap().into_inner().accepted);
        }
        let j = jc
            .get_job(GetJobRequest { job_id: job })
            .await
            .unwrap()
            .into_inner();
        assert!(assembled, "the assembly was leased: {}", j.error);
        assert_eq!(
            j.state,
            framewise_common::proto::JobState::Succeeded as i32,
            "{}",
            j.error
        );
        assert_eq!(j.frames_total, frames);
    });
}
