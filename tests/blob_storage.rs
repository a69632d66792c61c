//! Azure Blob Storage end to end, against a real blob service (Azurite, started here on a free
//! port): the blob trigger turns a video dropped into incoming/ into a stylized video with the
//! same audio in outgoing/; workers get URLs signed for one blob each, and Azurite refuses
//! anything else with 403; a storage restart in the middle of a job is ridden out.

mod common;

use common::azurite::{Azurite, ACCOUNT};
use common::cluster::{check_output, wait_for, Cluster, Procs};
use common::{frame_at, make_clip, probe_ok, psnr, stylize_direct};
use framewise_common::config::{AccountConfig, StorageConfig};
use framewise_common::proto::job_service_client::JobServiceClient;
use framewise_common::proto::worker_service_client::WorkerServiceClient;
use framewise_common::proto::{self as pb, JobState};
use framewise_common::storage::Store;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn az(path: &str) -> String {
    format!("az://{ACCOUNT}/{path}")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The test's own handle on the storage account (what a user's upload tool would be).
fn store(a: &Azurite) -> Store {
    let mut cfg = StorageConfig::default();
    cfg.accounts.insert(
        ACCOUNT.into(),
        AccountConfig {
            connection_string: a.connection_string(),
            ..Default::default()
        },
    );
    Store::from_config(&cfg).unwrap()
}

fn upload(s: &Store, local: &Path, url: &str) {
    let rt = rt();
    rt.block_on(s.ensure_container(url)).unwrap();
    rt.block_on(s.put(url, std::fs::read(local).unwrap()))
        .unwrap();
}

/// A cluster whose work, logs, inputs and outputs all live in Azurite. The connection string
/// is given in a file (as in production: secrets stay out of config files).
fn blob_cluster(dir: &Path, a: &Azurite, trigger: bool) -> Cluster {
    let cl = Cluster::new(dir);
    let secret = dir.join("storage.secret");
    std::fs::write(&secret, a.connection_string()).unwrap();
    let mut toml = std::fs::read_to_string(&cl.config).unwrap();
    toml.push_str(&format!(
        "work_url = \"{}\"\nlogs_url = \"{}\"\n",
        az("work"),
        az("logs")
    ));
    if trigger {
        toml.push_str(&format!(
            "\n[coordinator.trigger]\nenabled = true\ninput_prefix = \"{}\"\noutput_prefix = \"{}\"\npoll_ms = 300\n",
            az("incoming/"),
            az("outgoing/")
        ));
    }
    toml.push_str(&format!(
        "\n[storage.accounts.{ACCOUNT}]\nconnection_string_file = \"{}\"\n",
        secret.display()
    ));
    std::fs::write(&cl.config, toml).unwrap();
    cl
}

fn http_get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(url).call().unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap_or_default())
}

fn wait_blob(s: &Store, url: &str, secs: u64, logs: &Path, coordinator: &str) {
    let rt = rt();
    let t = Instant::now();
    while rt.block_on(s.size(url)).ok().flatten().is_none() {
        // Fail fast, with the reason, if the job failed.
        if let Some(j) = list_jobs(coordinator)
            .into_iter()
            .find(|j| j.state == JobState::Failed as i32)
        {
            panic!("job failed: {}", j.error);
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{url} did not appear in {secs} s; logs in {}",
            logs.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn download(s: &Store, url: &str, to: &Path) {
    let bytes = rt().block_on(s.get(url)).unwrap();
    std::fs::write(to, bytes).unwrap();
}

fn list_jobs(url: &str) -> Vec<pb::Job> {
    rt().block_on(async {
        let mut c = JobServiceClient::connect(url.to_string()).await.unwrap();
        c.list_jobs(pb::ListJobsRequest {})
            .await
            .unwrap()
            .into_inner()
            .jobs
    })
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fw-blob-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_video_dropped_into_incoming_comes_out_stylized_with_its_audio() {
    let dir = tmpdir("trigger");
    let mut azurite = Azurite::start(&dir.join("azurite"));
    let s = store(&azurite);
    let clip = dir.join("clip.mp4");
    make_clip(&clip, 130, 74, 60, true);
    upload(&s, &clip, &az("incoming/holiday/clip.mp4"));
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "not a video").unwrap();
    upload(&s, &notes, &az("incoming/notes.txt"));
    // An upload still in progress (a block staged, no block list yet) is not picked up.
    let staging = s
        .sign(
            &az("incoming/uploading.mp4"),
            framewise_common::storage::Access::Write,
            Duration::from_secs(600),
        )
        .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let staged = agent
        .put(&format!("{staging}&comp=block&blockid=MDAwMDAwMDA%3D"))
        .send(&std::fs::read(&clip).unwrap()[..])
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(staged, 201);

    let cl = blob_cluster(&dir, &azurite, true);
    let mut procs = Procs(vec![cl.coordinator(1), cl.worker("w1"), cl.worker("w2")]);
    let out_url = az("outgoing/holiday/clip.mp4");
    wait_blob(&s, &out_url, 240, &dir, &cl.url());
    let out = dir.join("out.mp4");
    download(&s, &out_url, &out);
    check_output(&clip, &out);
    let (src, dst) = (probe_ok(&clip), probe_ok(&out));
    assert_eq!(dst.audio_streams, 1, "audio kept");
    assert!(
        (dst.duration_ns as i64 - src.duration_ns as i64).abs() < 50_000_000,
        "duration {} vs {}",
        dst.duration_ns,
        src.duration_ns
    );
    // A frame really went through the model.
    let mid = src.frame_pts.len() / 2;
    let p = psnr(
        &frame_at(&out, mid, None),
        &stylize_direct(&frame_at(&clip, mid, None), 0),
    );
    assert!(p >= 30.0, "output vs model applied directly: {p:.1} dB");

    // One job, succeeded (none for the unfinished upload); the non-video was rejected with a
    // reason, not submitted.
    let jobs = list_jobs(&cl.url());
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = wait_for(&cl.url(), &jobs[0].job_id, 30, "success", |j| {
        j.state == JobState::Succeeded as i32
    });
    assert_eq!(
        job.spec.as_ref().map(|s| s.input_url.as_str()),
        Some(az("incoming/holiday/clip.mp4").as_str())
    );
    let (code, body) = http_get(&format!("{}/api/v1/trigger", cl.http_url()));
    assert_eq!(code, 200, "{body}");
    let t: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rejected = t["rejected"][az("incoming/notes.txt")]
        .as_str()
        .unwrap_or("");
    assert!(rejected.contains("not a video"), "{body}");
    // Task logs went to the logs container and are served by the dashboard.
    let (code, log) = http_get(&format!(
        "{}/api/v1/jobs/{}/tasks/0/log",
        cl.http_url(),
        job.job_id
    ));
    assert_eq!(code, 200, "{log}");
    assert!(
        log.contains(&az("logs/")) && log.contains("task leased"),
        "{log}"
    );
    assert!(!log.contains("sig="), "no signature in logs: {log}");
    // Nor in what the dashboard shows of the job, its tasks and the workers.
    for page in [
        format!("/api/v1/jobs/{}", job.job_id),
        format!("/api/v1/jobs/{}/tasks", job.job_id),
        "/api/v1/jobs".to_string(),
        "/api/v1/workers".to_string(),
        "/api/v1/overview".to_string(),
    ] {
        let (code, body) = http_get(&format!("{}{page}", cl.http_url()));
        assert_eq!(code, 200, "{page}: {body}");
        assert!(!body.contains("sig="), "a signature in {page}");
        assert!(
            !body.contains(common::azurite::ACCOUNT_KEY),
            "the account key in {page}"
        );
    }
    // The job's work prefix is cleaned up once it succeeded.
    let t0 = Instant::now();
    while !rt()
        .block_on(s.list(&az(&format!("work/{}/", job.job_id))))
        .unwrap()
        .is_empty()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "work blobs left behind"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // No key and no signature in any process's log (coordinator, both workers).
    for name in ["coordinator-1.log", "w1.log", "w2.log"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(!text.is_empty(), "{name} is empty");
        assert!(
            !text.contains(common::azurite::ACCOUNT_KEY),
            "account key in {name}"
        );
        assert!(!text.contains("sig="), "a signature in {name}");
    }

    // A restarted coordinator does not submit the same blob version again.
    procs.0[0].kill().unwrap();
    procs.0[0].wait().unwrap();
    procs.0[0] = cl.coordinator(2);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        list_jobs(&cl.url()).len(),
        1,
        "no second job after a restart"
    );
    azurite.stop();
}

#[test]
fn worker_urls_reach_one_blob_each_and_nothing_else() {
    let dir = tmpdir("sas");
    let azurite = Azurite::start(&dir.join("azurite"));
    let s = store(&azurite);
    let clip = dir.join("clip.mp4");
    make_clip(&clip, 96, 64, 30, true);
    upload(&s, &clip, &az("media/a.mp4"));
    upload(&s, &clip, &az("media/b.mp4"));
    let cl = blob_cluster(&dir, &azurite, false);
    let _procs = Procs(vec![cl.coordinator(1)]);
    let rt = rt();
    rt.block_on(async {
        let mut jobs = JobServiceClient::connect(cl.url()).await.unwrap();
        for (name, key) in [("a", "ka"), ("b", "kb")] {
            jobs.submit_job(pb::SubmitJobRequest {
                spec: Some(pb::JobSpec {
                    input_url: az(&format!("media/{name}.mp4")),
                    output_url: az(&format!("out/{name}.mp4")),
                    params: None,
                }),
                idempotency_key: key.into(),
            })
            .await
            .unwrap();
        }
        // A wrong account is refused at submit, naming it.
        let e = jobs
            .submit_job(pb::SubmitJobRequest {
                spec: Some(pb::JobSpec {
                    input_url: "az://nosuchacct/media/a.mp4".into(),
                    output_url: az("out/x.mp4"),
                    params: None,
                }),
                idempotency_key: String::new(),
            })
            .await
            .unwrap_err();
        assert!(e.message().contains("nosuchacct"), "{}", e.message());

        // This test plays the worker: it registers and takes leases itself.
        let mut w = WorkerServiceClient::connect(cl.url()).await.unwrap();
        w.register(pb::RegisterRequest {
            worker_id: "probe-w".into(),
            hostname: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let lease = w
            .lease_task(pb::LeaseTaskRequest {
                worker_id: "probe-w".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let Some(pb::lease_task_response::Task::Probe(p)) = lease.task.clone() else {
            panic!("expected a probe: {lease:?}")
        };
        let l = lease.lease.clone().unwrap();
        let mine = if p.input_url.contains("/media/a.mp4?") {
            "a"
        } else {
            "b"
        };
        let other = if mine == "a" { "b" } else { "a" };
        assert!(p.input_url.contains("sig="), "signed: {}", p.input_url);
        assert!(!p.input_url.contains("AccountKey"), "no key handed out");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let get = |u: &str| agent.get(u).call().unwrap().status().as_u16();
        let put = |u: &str| {
            agent
                .put(u)
                .header("x-ms-blob-type", "BlockBlob")
                .send(&b"x"[..])
                .unwrap()
                .status()
                .as_u16()
        };
        // Its own input: readable, with ranges (what GStreamer does).
        let ranged = agent
            .get(&p.input_url)
            .header("Range", "bytes=0-99")
            .call()
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(ranged, 206);
        let query = p.input_url.split_once('?').unwrap().1.to_string();
        let base = p.input_url.split_once("/media/").unwrap().0.to_string();
        // Another job's input with this signature, the bare URL, and writing: all refused.
        assert_eq!(
            get(&format!("{base}/media/{other}.mp4?{query}")),
            403,
            "another job's input"
        );
        assert_eq!(
            get(&format!("{base}/media/{mine}.mp4")),
            403,
            "no signature"
        );
        assert_eq!(put(&p.input_url), 403, "the input is read-only");
        // The log URL writes that one blob and nothing else.
        assert!(l.log_write_url.contains("sig="), "{l:?}");
        assert_eq!(put(&l.log_write_url), 201);
        assert_eq!(get(&l.log_write_url), 403, "write-only");
        let (lbase, lq) = l.log_write_url.split_once('?').unwrap();
        assert_eq!(put(&format!("{lbase}.other?{lq}")), 403, "a different blob");

        // Finish the probe (with the real probe of the same clip) to get a Segment lease.
        let pr = framewise_worker::media::probe::probe(&clip, Duration::from_secs(30)).unwrap();
        let info = framewise_worker::agent::to_media_info(&pr);
        w.complete_task(pb::CompleteTaskRequest {
            worker_id: "probe-w".into(),
            lease_id: l.lease_id.clone(),
            epoch: l.epoch,
            result: Some(pb::complete_task_request::Result::Probe(info)),
        })
        .await
        .unwrap();
        let seg = loop {
            let r = w
                .lease_task(pb::LeaseTaskRequest {
                    worker_id: "probe-w".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            match r.task {
                Some(pb::lease_task_response::Task::Segment(s)) => break s,
                Some(_) => continue, // the other job's probe: leave it
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        assert!(
            seg.output_url.starts_with(&az("work/")),
            "{}",
            seg.output_url
        );
        assert!(!seg.chunk_targets.is_empty());
        let t = &seg.chunk_targets[0];
        assert_eq!(t.start_frame, seg.start_frame);
        assert_eq!(put(&t.write_url), 201, "its own chunk");
        assert_eq!(get(&t.write_url), 403, "write-only");
        let (cbase, cq) = t.write_url.split_once('?').unwrap();
        let prefix = cbase.rsplit_once('/').unwrap().0;
        assert_eq!(
            put(&format!("{prefix}/999999999.mp4?{cq}")),
            403,
            "another name in its prefix"
        );
        assert_eq!(
            put(&format!("{base}/out/{mine}.mp4?{cq}")),
            403,
            "the final output"
        );
        let del = agent.delete(&t.write_url).call().unwrap().status().as_u16();
        assert_eq!(del, 403, "no delete");
    });
}

#[test]
fn a_storage_restart_mid_job_is_ridden_out() {
    let dir = tmpdir("restart");
    let mut azurite = Azurite::start(&dir.join("azurite"));
    let s = store(&azurite);
    let clip = dir.join("clip.mp4");
    make_clip(&clip, 160, 90, 100, true);
    upload(&s, &clip, &az("media/long.mp4"));
    let cl = blob_cluster(&dir, &azurite, false);
    let _procs = Procs(vec![cl.coordinator(1), cl.worker("w1")]);
    let id = rt().block_on(async {
        let mut jobs = JobServiceClient::connect(cl.url()).await.unwrap();
        jobs.submit_job(pb::SubmitJobRequest {
            spec: Some(pb::JobSpec {
                input_url: az("media/long.mp4"),
                output_url: az("out/long.mp4"),
                params: None,
            }),
            idempotency_key: "restart".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .job_id
    });
    // A missing input fails its job with a reason that names the blob (and no signature).
    let missing = rt().block_on(async {
        let mut jobs = JobServiceClient::connect(cl.url()).await.unwrap();
        jobs.submit_job(pb::SubmitJobRequest {
            spec: Some(pb::JobSpec {
                input_url: az("media/missing.mp4"),
                output_url: az("out/missing.mp4"),
                params: None,
            }),
            idempotency_key: "missing".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .job_id
    });
    // Once some frames are committed, the storage service goes away for a while and comes back.
    wait_for(&cl.url(), &id, 120, "first frames", |j| j.frames_done > 0);
    azurite.stop();
    std::thread::sleep(Duration::from_secs(3));
    azurite.resume();
    let job = wait_for(&cl.url(), &id, 240, "the job to end", |j| {
        j.state == JobState::Succeeded as i32 || j.state == JobState::Failed as i32
    });
    assert_eq!(job.state, JobState::Succeeded as i32, "{}", job.error);
    let out = dir.join("out.mp4");
    download(&s, &az("out/long.mp4"), &out);
    check_output(&clip, &out);
    let m = wait_for(
        &cl.url(),
        &missing,
        120,
        "the missing input's job to fail",
        |j| j.state == JobState::Failed as i32,
    );
    assert!(m.error.contains("media/missing.mp4"), "{}", m.error);
    assert!(!m.error.contains("sig="), "{}", m.error);
    assert_eq!(
        rt().block_on(s.size(&az("out/missing.mp4"))).unwrap(),
        None,
        "nothing written"
    );
}

#[test]
fn wrong_credentials_and_missing_blobs_are_named() {
    let dir = tmpdir("creds");
    let azurite = Azurite::start(&dir.join("azurite"));
    let s = store(&azurite);
    let clip = dir.join("c.mp4");
    std::fs::write(&clip, b"0123456789").unwrap();
    upload(&s, &clip, &az("media/c.mp4"));
    // The right endpoint with a wrong key: refused, naming account, container and blob.
    let mut cfg = StorageConfig::default();
    cfg.accounts.insert(
        ACCOUNT.into(),
        AccountConfig {
            account_key: "d3Jvbmcga2V5IHdyb25nIGtleQ==".into(),
            blob_endpoint: azurite.endpoint(),
            ..Default::default()
        },
    );
    let wrong = Store::from_config(&cfg).unwrap();
    let e = rt().block_on(wrong.get(&az("media/c.mp4"))).unwrap_err();
    let msg = e.to_string();
    assert!(e.is_permanent(), "{msg}");
    assert!(
        msg.contains(&az("media/c.mp4")) && msg.contains("403"),
        "{msg}"
    );
    // A missing container or blob: reported as missing, naming it.
    let e = rt()
        .block_on(s.get(&az("nosuchcontainer/x.mp4")))
        .unwrap_err();
    assert!(e.to_string().contains("nosuchcontainer/x.mp4"), "{e}");
    assert_eq!(rt().block_on(s.size(&az("media/none.mp4"))).unwrap(), None);
    // The service down: a clear error after the retries, not a hang.
    drop(azurite);
    let t = Instant::now();
    let e = rt().block_on(s.size(&az("media/c.mp4"))).unwrap_err();
    assert!(
        !e.is_permanent() && e.to_string().contains(&az("media/c.mp4")),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(120));
}

#[test]
fn a_signed_url_reads_the_same_frames_as_the_file() {
    let dir = tmpdir("probe");
    let azurite = Azurite::start(&dir.join("azurite"));
    let s = store(&azurite);
    for (name, frames, audio) in [("a", 100, true), ("b", 61, false)] {
        let clip = dir.join(format!("{name}.mp4"));
        make_clip(&clip, 160, 90, frames, audio);
        let url = az(&format!("media/{name}.mp4"));
        upload(&s, &clip, &url);
        let signed = s
            .sign(
                &url,
                framewise_common::storage::Access::Read,
                Duration::from_secs(600),
            )
            .unwrap();
        let local = framewise_worker::media::probe::probe(&clip, Duration::from_secs(30)).unwrap();
        let remote =
            framewise_worker::media::probe::probe(Path::new(&signed), Duration::from_secs(30))
                .unwrap();
        assert_eq!(remote.frame_pts, local.frame_pts, "{name}: timestamps");
        assert_eq!(remote.keyframes, local.keyframes, "{name}: keyframes");
        assert_eq!(remote.audio_streams, local.audio_streams, "{name}: audio");
        assert_eq!(
            remote.running_offset_ns, local.running_offset_ns,
            "{name}: offset"
        );
        assert_eq!(local.frame_pts.len(), frames as usize);
    }
}
