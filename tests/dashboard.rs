//! The dashboard, REST API and metrics of a real coordinator process while a
//! real worker runs a job: JSON endpoints, the SSE stream, /metrics, health
//! probes, the viewer token, and the page itself in headless Chromium.

mod common;
use common::browser::Browser;
use common::cluster::*;
use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// GET with an optional bearer token: (status, body).
fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = agent().get(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap())
}

fn get_json(url: &str) -> Value {
    let (status, body) = get(url, None);
    assert_eq!(status, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
}

fn post(url: &str) -> (u16, Value) {
    let mut resp = agent().post(url).send_empty().unwrap();
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The first `event: overview` of the SSE stream, parsed.
fn first_sse_event(port: u16) -> Value {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let t = Instant::now();
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "SSE stream closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains("text/event-stream"), "{text}");
        if let Some(at) = text.find("event: overview\ndata: ") {
            let rest = &text[at + "event: overview\ndata: ".len()..];
            if let Some(end) = rest.find('\n') {
                return serde_json::from_str(&rest[..end]).unwrap();
            }
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no SSE event");
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[test]
fn dashboard_api_and_metrics_during_a_job() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.mp4");
    let out = d.path().join("out.mp4");
    make_clip(&input, 320, 240, 300, true);
    let cl = Cluster::new(d.path());
    let mut procs = Procs(vec![cl.coordinator(0)]);
    let api = cl.http_url();

    // Probes and the documents that need no job.
    assert_eq!(get(&format!("{api}/healthz"), None), (200, "ok".into()));
    assert_eq!(get(&format!("{api}/readyz"), None), (200, "ok".into()));
    let doc = get_json(&format!("{api}/api/v1/openapi.json"));
    assert_eq!(doc["openapi"], "3.0.3");
    let (status, body) = get(&format!("{api}/"), None);
    assert_eq!(status, 200);
    assert!(body.contains("/assets/app.js"), "{body}");
    let (status, body) = get(&format!("{api}/api/v1/jobs/job-nope"), None);
    assert_eq!(status, 404);
    assert!(body.contains("job-nope"), "the error names the job: {body}");
    let (status, body) = get(&format!("{api}/api/v2/whatever"), None);
    assert_eq!(status, 404);
    assert!(body.contains("/api/v2/whatever"), "{body}");
    assert_eq!(post(&format!("{api}/api/v1/jobs/job-nope/cancel")).0, 404);

    procs.0.push(cl.worker("w1"));
    let (submitter, id) = submit(&cl, &input, &out);
    procs.0.push(submitter);
    let job_url = format!("{api}/api/v1/jobs/{id}");
    let t = Instant::now();
    let job = loop {
        let j = get_json(&job_url);
        if j["state"] == "running" && j["frames_done"].as_u64().unwrap_or(0) > 0 {
            break j;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "job never ran: {j}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(job["frames_total"], 300);
    assert_eq!(job["media"]["width"], 320);
    assert_eq!(job["media"]["audio_streams"], 1);
    let tasks = job["tasks"].as_array().unwrap();
    assert!(tasks
        .iter()
        .any(|t| t["kind"] == "probe" && t["state"] == "done"));
    assert!(tasks
        .iter()
        .any(|t| t["kind"] == "segment" && t["lease"]["worker_id"] == "w1"));
    assert_eq!(
        get_json(&format!("{job_url}/tasks"))
            .as_array()
            .map(|a| a.len()),
        Some(tasks.len())
    );
    let list = get_json(&format!("{api}/api/v1/jobs"));
    assert_eq!(list[0]["id"], id.as_str());
    let workers = get_json(&format!("{api}/api/v1/workers"));
    let w1 = workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "w1")
        .expect("w1 listed");
    assert_eq!(w1["state"], "busy");
    assert!(
        w1["model_fps"].as_f64().unwrap() > 0.0,
        "the worker reports its measured model throughput: {w1}"
    );
    assert_eq!(w1["lease"]["job_id"], id.as_str());

    let ev = first_sse_event(cl.http_port);
    assert!(ev["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == id.as_str()));
    assert!(ev["workers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["id"] == "w1"));

    // The page in a real browser: the job, its progress moving, the worker; no JavaScript error.
    let mut b = Browser::open(&format!("{api}/"));
    let row = format!("document.querySelector('tr[data-job-id=\"{id}\"]')");
    b.wait_until(&row, 30);
    let first: u64 = b
        .eval(&format!("Number({row}.dataset.framesDone)"))
        .as_u64()
        .unwrap();
    b.wait_until(&format!("Number({row}.dataset.framesDone) > {first}"), 30);
    b.wait_until("document.querySelector('tr[data-worker-id=\"w1\"]')", 10);
    b.wait_until(
        "document.getElementById('connection').textContent.trim() === 'live'",
        10,
    );
    b.wait_until(
        "document.querySelector('#throughput-chart svg, svg#throughput-chart')",
        10,
    );
    let shot = d.path().join("dashboard.png");
    b.screenshot(&shot);
    if let Ok(keep) = std::env::var("DASHBOARD_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
    // The job page: its segment map and task table.
    b.eval(&format!("location.hash = '#/jobs/{id}'"));
    b.wait_until("document.querySelectorAll('tbody tr').length > 1", 15);
    if let Ok(keep) = std::env::var("DASHBOARD_SCREENSHOT_JOB") {
        std::thread::sleep(Duration::from_millis(1500));
        b.screenshot(std::path::Path::new(&keep));
    }
    b.wait_until("document.querySelector('a.log[href*=\"/log\"]')", 15);
    let shown = b.eval("document.getElementById('js-errors').textContent");
    assert_eq!(shown, "", "the page shows JavaScript errors");
    assert!(
        b.errors.is_empty(),
        "the page logged errors: {:?}",
        b.errors
    );

    // `framewise status` shows the same facts: a table of jobs with rate and ETA, and one job in detail.
    let status = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_framewise"))
            .arg("status")
            .args(args)
            .args(["--coordinator", &cl.url()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let table = status(&[]);
    assert!(
        table.contains("frames/s") && table.contains("eta"),
        "{table}"
    );
    let row = table.lines().find(|l| l.starts_with(&id)).expect("job row");
    assert!(row.contains("running") && row.contains("/300"), "{row}");
    let one = status(&[&id]);
    assert!(one.contains("frames/s") && one.contains("segment"), "{one}");

    // Metrics while the job runs.
    let (status, text) = get(&format!("{api}/metrics"), None);
    assert_eq!(status, 200);
    assert!(metric(&text, "framewise_leases_granted_total") >= 2.0);
    assert_eq!(metric(&text, "framewise_jobs{state=\"running\"}"), 1.0);
    assert!(metric(&text, "framewise_lease_latency_seconds_count") >= 2.0);
    assert!(metric(&text, "framewise_queue_frames") > 0.0);
    // The pipeline with a segment, and its media lane (`w1-1`) with the streamed assembly.
    assert_eq!(metric(&text, "framewise_workers{state=\"busy\"}"), 2.0);

    let status = wait_exit(&mut procs.0[2], 180);
    assert!(status.success(), "submit --wait failed");
    let done = get_json(&job_url);
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["frames_done"], 300);
    assert!(
        b.errors.is_empty(),
        "the page logged errors: {:?}",
        b.errors
    );
    let (status, body) = post(&format!("{job_url}/cancel"));
    assert_eq!(status, 409, "{body}");
    // Each task's worker log, linked from the job page: the segment's stage timings are in it.
    let seg = done["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "segment")
        .unwrap()
        .clone();
    let log_url = format!("{api}{}", seg["log_url"].as_str().unwrap());
    let (status, log) = get(&log_url, None);
    assert_eq!(status, 200, "{log}");
    assert!(log.contains("==> attempt epoch"), "{log}");
    assert!(log.contains("segment stages"), "{log}");
    assert!(log.contains("task leased"), "{log}");
    let (status, body) = get(&format!("{job_url}/tasks/999/log"), None);
    assert_eq!(status, 404);
    assert!(body.contains("no task 999"), "{body}");
    let (_, text) = get(&format!("{api}/metrics"), None);
    assert_eq!(metric(&text, "framewise_frames_committed_total"), 300.0);
    assert_eq!(metric(&text, "framewise_jobs{state=\"succeeded\"}"), 1.0);
}

#[test]
fn viewer_token_guards_the_api_and_open_binds_need_one() {
    let d = tempfile::tempdir().unwrap();
    let cl = Cluster::new(d.path());
    let mut cfg = std::fs::read_to_string(&cl.config).unwrap();
    cfg.push_str("viewer_token = \"s3cret-viewer\"\n");
    std::fs::write(&cl.config, &cfg).unwrap();
    let _procs = Procs(vec![cl.coordinator(0)]);
    let api = cl.http_url();
    let jobs = format!("{api}/api/v1/jobs");
    let (status, body) = get(&jobs, None);
    assert_eq!(status, 401);
    assert!(body.contains("viewer token is required"), "{body}");
    let (status, body) = get(&jobs, Some("wrong"));
    assert_eq!(status, 401);
    assert!(body.contains("does not match"), "{body}");
    assert_eq!(get(&jobs, Some("s3cret-viewer")).0, 200);
    assert_eq!(get(&format!("{jobs}?token=s3cret-viewer"), None).0, 200);
    assert_eq!(get(&format!("{api}/metrics"), None).0, 401);
    assert_eq!(get(&format!("{api}/metrics"), Some("s3cret-viewer")).0, 200);
    let scaler = format!("{api}/api/v1/autoscaler");
    assert_eq!(get(&scaler, None).0, 401);
    let (status, body) = get(&scaler, Some("s3cret-viewer"));
    assert_eq!(status, 200);
    assert!(body.contains("\"enabled\":false"), "off by default: {body}");
    assert_eq!(get(&format!("{api}/healthz"), None).0, 200);
    assert_eq!(get(&format!("{api}/"), None).0, 200);
    let log = std::fs::read_to_string(d.path().join("coordinator-0.log")).unwrap();
    assert!(!log.contains("s3cret-viewer"), "the token was logged");

    // Listening on every interface without a token is refused with the key to set.
    let d2 = tempfile::tempdir().unwrap();
    let open = Cluster::new(d2.path());
    let cfg = std::fs::read_to_string(&open.config)
        .unwrap()
        .replace("http_addr = \"127.0.0.1:", "http_addr = \"0.0.0.0:");
    std::fs::write(&open.config, cfg).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_framewise"))
        .args(["coordinator", "-c", open.config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("coordinator.http_addr") && err.contains("viewer_token"),
        "{err}"
    );
}
