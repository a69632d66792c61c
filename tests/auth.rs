//! Tokens and roles on a real coordinator process: without a token nothing gets in; a
//! submitter sees and cancels only its own jobs; a viewer reads but cannot submit or cancel;
//! only a worker token serves as a worker, and a real worker process with one runs a job.

mod common;

use common::cluster::{check_output, Cluster, Procs};
use common::make_clip;
use framewise_common::bearer::{connect, Bearer};
use framewise_common::proto::job_service_client::JobServiceClient;
use framewise_common::proto::worker_service_client::WorkerServiceClient;
use framewise_common::proto::{self as pb, JobState};
use std::time::{Duration, Instant};
use tonic::Code;

const ADMIN: &str = "admin-token-0123456789";
const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789ab";
const VIEWER: &str = "viewer-token-012345678";
const WORKER: &str = "worker-token-012345678";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn jobs(
    url: &str,
    token: Option<&str>,
) -> JobServiceClient<framewise_common::bearer::AuthChannel> {
    JobServiceClient::new(connect(url, Bearer::new(token).unwrap()).await.unwrap())
}

fn spec(input: &std::path::Path, out: &std::path::Path) -> pb::JobSpec {
    pb::JobSpec {
        input_url: input.display().to_string(),
        output_url: out.display().to_string(),
        params: None,
    }
}

fn http(url: &str, token: Option<&str>) -> u16 {
    http_body(url, token).0
}

fn http_body(url: &str, token: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(url);
    if let Some(t) = token {
        r = r.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = r.call().unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

#[test]
fn tokens_and_roles_decide_who_sees_and_does_what() {
    let dir = std::env::temp_dir().join(format!("fw-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens.toml");
    let mut t = String::new();
    for (name, role, token) in [
        ("ops", "admin", ADMIN),
        ("alice", "submitter", ALICE),
        ("bob", "submitter", BOB),
        ("wall", "viewer", VIEWER),
        ("pool", "worker", WORKER),
    ] {
        t.push_str(&format!(
            "[[tokens]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken = \"{token}\"\n"
        ));
    }
    std::fs::write(&tokens, t).unwrap();
    let cl = Cluster::new(&dir);
    let mut toml = std::fs::read_to_string(&cl.config).unwrap();
    toml.push_str(&format!(
        "tokens_file = \"{}\"\n[coordinator.limits]\nmax_queued_jobs_per_owner = 2\nsubmits_per_minute = 4\n",
        tokens.display()
    ));
    std::fs::write(&cl.config, toml).unwrap();
    let mut procs = Procs(vec![cl.coordinator(1)]);
    let clip = dir.join("clip.mp4");
    make_clip(&clip, 96, 64, 20, true);
    let url = cl.url();

    let (alice_job, bob_job) = rt().block_on(async {
        // No token, a wrong token, a viewer submitting: refused with the reason.
        let e = jobs(&url, None)
            .await
            .list_jobs(pb::ListJobsRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());
        assert!(e.message().contains("Bearer"), "{}", e.message());
        let e = jobs(&url, Some("not-a-token-at-all-x"))
            .await
            .list_jobs(pb::ListJobsRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let e = jobs(&url, Some(VIEWER))
            .await
            .submit_job(pb::SubmitJobRequest {
                spec: Some(spec(&clip, &dir.join("v.mp4"))),
                idempotency_key: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
        assert!(e.message().contains("wall"), "{}", e.message());

        // Alice and Bob each submit, with the same idempotency key: two jobs, not one.
        let mut alice = jobs(&url, Some(ALICE)).await;
        let mut bob = jobs(&url, Some(BOB)).await;
        let a = alice
            .submit_job(pb::SubmitJobRequest {
                spec: Some(spec(&clip, &dir.join("alice.mp4"))),
                idempotency_key: "k".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .job_id;
        let b = bob
            .submit_job(pb::SubmitJobRequest {
                spec: Some(spec(&clip, &dir.join("bob.mp4"))),
                idempotency_key: "k".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .job_id;
        assert_ne!(a, b, "one submitter's key never finds another's job");
        // Each sees only its own.
        let listed: Vec<String> = bob
            .list_jobs(pb::ListJobsRequest {})
            .await
            .unwrap()
            .into_inner()
            .jobs
            .into_iter()
            .map(|j| j.job_id)
            .collect();
        assert_eq!(listed, vec![b.clone()]);
        let e = bob
            .get_job(pb::GetJobRequest { job_id: a.clone() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let e = bob
            .cancel_job(pb::CancelJobRequest { job_id: a.clone() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        // The viewer reads everything but cancels nothing; the admin cancels Bob's job.
        let mut viewer = jobs(&url, Some(VIEWER)).await;
        let all = viewer
            .list_jobs(pb::ListJobsRequest {})
            .await
            .unwrap()
            .into_inner()
            .jobs;
        assert_eq!(all.len(), 2);
        let e = viewer
            .cancel_job(pb::CancelJobRequest { job_id: b.clone() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        jobs(&url, Some(ADMIN))
            .await
            .cancel_job(pb::CancelJobRequest { job_id: b.clone() })
            .await
            .unwrap();
        // Per-submitter protection: at most 2 jobs queued or running, 4 submits a minute.
        let submit = |key: &str, out: &str| pb::SubmitJobRequest {
            spec: Some(spec(&clip, &dir.join(out))),
            idempotency_key: key.into(),
        };
        let a2 = alice
            .submit_job(submit("k2", "alice2.mp4"))
            .await
            .unwrap()
            .into_inner()
            .job_id;
        let e = alice
            .submit_job(submit("k3", "alice3.mp4"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
        assert!(
            e.message().contains("max_queued_jobs_per_owner"),
            "{}",
            e.message()
        );
        let again = alice
            .submit_job(submit("k", "alice.mp4"))
            .await
            .unwrap()
            .into_inner();
        assert!(
            again.existing && again.job_id == a,
            "a retried key is not a new job"
        );
        let e = alice
            .submit_job(submit("k4", "alice4.mp4"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
        assert!(
            e.message().contains("submits_per_minute"),
            "{}",
            e.message()
        );
        alice
            .cancel_job(pb::CancelJobRequest { job_id: a2 })
            .await
            .unwrap();
        // Only a worker (or admin) token serves as a worker.
        let mut w = WorkerServiceClient::new(
            connect(&url, Bearer::new(Some(ALICE)).unwrap())
                .await
                .unwrap(),
        );
        let e = w
            .register(pb::RegisterRequest {
                worker_id: "sneaky".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
        (a, b)
    });

    // A real worker process with the worker token runs Alice's job; the CLI with her token follows it.
    let mut w = common::cluster::spawn(
        &["worker", "-c", "config/worker.toml", "--coordinator", &url],
        &[
            ("FRAMEWISE_WORKER__WORKER_ID", "w1"),
            ("FRAMEWISE_WORKER__INTRA_THREADS", "1"),
            ("FRAMEWISE_WORKER__TOKEN", WORKER),
        ],
        &dir.join("w1.log"),
    );
    let t0 = Instant::now();
    loop {
        let j = rt().block_on(async {
            jobs(&url, Some(ALICE))
                .await
                .get_job(pb::GetJobRequest {
                    job_id: alice_job.clone(),
                })
                .await
                .unwrap()
                .into_inner()
        });
        if j.state == JobState::Succeeded as i32 {
            break;
        }
        assert!(j.state != JobState::Failed as i32, "{}", j.error);
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "job did not finish"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    check_output(&clip, &dir.join("alice.mp4"));
    let out = common::framewise(
        &["status", &alice_job, "--coordinator", &url],
        &[("FRAMEWISE_TOKEN", ALICE)],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = common::framewise(
        &["status", &bob_job, "--coordinator", &url],
        &[("FRAMEWISE_TOKEN", ALICE)],
    );
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("another submitter"),
        "{}",
        common::stderr(&out)
    );

    // The dashboard: viewers and admins read; a submitter's token is not a viewer's.
    let api = format!("{}/api/v1/jobs", cl.http_url());
    assert_eq!(http(&api, None), 401);
    assert_eq!(http(&api, Some(ALICE)), 403);
    assert_eq!(http(&api, Some(VIEWER)), 200);
    assert_eq!(http(&api, Some(ADMIN)), 200);

    // No token in anything the dashboard serves, even to an admin (the job's tasks and their
    // logs included).
    let base = cl.http_url();
    let mut pages = vec![
        "/api/v1/overview".to_string(),
        "/api/v1/jobs".to_string(),
        format!("/api/v1/jobs/{alice_job}"),
        format!("/api/v1/jobs/{alice_job}/tasks"),
        "/api/v1/workers".to_string(),
        "/metrics".to_string(),
    ];
    pages.extend((0..3).map(|i| format!("/api/v1/jobs/{alice_job}/tasks/{i}/log")));
    let mut read = 0;
    for page in &pages {
        let (status, body) = http_body(&format!("{base}{page}"), Some(ADMIN));
        if status == 200 {
            read += 1;
        }
        for tok in [ADMIN, ALICE, BOB, VIEWER, WORKER] {
            assert!(!body.contains(tok), "a token in {page}");
        }
    }
    assert!(
        read >= 7,
        "the dashboard served {read} of {} pages",
        pages.len()
    );

    // No token appears in any log: the processes' and the task logs the workers wrote.
    let task_logs = common::walk(&dir.join("logs"));
    assert!(
        !task_logs.is_empty(),
        "no task logs under {}",
        dir.display()
    );
    for p in task_logs {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        for tok in [ADMIN, ALICE, BOB, VIEWER, WORKER] {
            assert!(!text.contains(tok), "a token in {}", p.display());
        }
    }
    let _ = w.kill();
    let _ = w.wait();
    procs.0[0].kill().unwrap();
    procs.0[0].wait().unwrap();
    for name in ["coordinator-1.log", "w1.log"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        for tok in [ADMIN, ALICE, BOB, VIEWER, WORKER] {
            assert!(!text.contains(tok), "a token in {name}");
        }
    }
}
