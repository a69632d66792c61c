//! Running framewise as separate processes, as on a cluster: a coordinator
//! with its own config and state, workers, a `submit --wait`, and waiting on
//! what the coordinator reports.

use super::*;
use framewise_common::proto::{job_service_client::JobServiceClient, GetJobRequest, Job};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills every child on drop, so a failing test leaves no process behind.
pub struct Procs(pub Vec<Child>);
impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn spawn(args: &[&str], env: &[(&str, &str)], log: &Path) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_framewise"));
    c.args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c.stderr(std::fs::File::create(log).unwrap());
    // FW_TEST_LOG: another log level for the processes (benchmarks: what logging costs).
    c.env(
        "FRAMEWISE_LOG",
        std::env::var("FW_TEST_LOG").unwrap_or_else(|_| "info".into()),
    );
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    pub http_port: u16,
    pub config: PathBuf,
}

impl Cluster {
    pub fn new(dir: &Path) -> Self {
        let port = free_port();
        let http_port = free_port();
        let config = dir.join("coordinator.toml");
        std::fs::write(
            &config,
            format!(
                "[coordinator]\ngrpc_addr = \"127.0.0.1:{port}\"\nhttp_addr = \"127.0.0.1:{http_port}\"\ndata_dir = \"{}\"\nwork_dir = \"{}\"\nlogs_dir = \"{}\"\n\
                 lease_ttl_ms = 3000\nheartbeat_interval_ms = 500\nmax_attempts = 4\nsegment_seconds = 1.0\n",
                dir.join("state").display(),
                dir.join("work").display(),
                dir.join("logs").display()
            ),
        )
        .unwrap();
        Cluster {
            dir: dir.to_path_buf(),
            port,
            http_port,
            config,
        }
    }
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    /// The dashboard and REST API.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }
    /// A job as the dashboard's REST API shows it (tasks with their releases, speculations).
    pub fn job_detail(&self, id: &str) -> serde_json::Value {
        let body = ureq::get(&format!("{}/api/v1/jobs/{id}", self.http_url()))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        serde_json::from_str(&body).unwrap()
    }
    /// Starts a coordinator and waits until it accepts connections.
    pub fn coordinator(&self, n: u32) -> Child {
        let log = self.dir.join(format!("coordinator-{n}.log"));
        let c = spawn(
            &["coordinator", "-c", self.config.to_str().unwrap()],
            &[],
            &log,
        );
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "coordinator did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }
    pub fn worker(&self, id: &str) -> Child {
        spawn(
            &[
                "worker",
                "-c",
                "config/worker.toml",
                "--coordinator",
                &self.url(),
            ],
            &[
                ("FRAMEWISE_WORKER__WORKER_ID", id),
                ("FRAMEWISE_WORKER__INTRA_THREADS", "1"),
            ],
            &self.dir.join(format!("{id}.log")),
        )
    }
}

pub fn get_job(url: &str, id: &str) -> Option<Job> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = JobServiceClient::connect(url.to_string()).await.ok()?;
        c.get_job(GetJobRequest {
            job_id: id.to_string(),
        })
        .await
        .ok()
        .map(|r| r.into_inner())
    })
}

/// Submits with --wait in its own process; returns it and the job id (read from the coordinator log).
pub fn submit(cl: &Cluster, input: &Path, out: &Path) -> (Child, String) {
    submit_with(cl, input, out, "test-job", &[])
}

pub fn submit_with(
    cl: &Cluster,
    input: &Path,
    out: &Path,
    key: &str,
    extra: &[&str],
) -> (Child, String) {
    let log = cl.dir.join(format!("submit-{key}.out"));
    let mut c = Command::new(env!("CARGO_BIN_EXE_framewise"));
    c.args([
        "submit",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--wait",
        "--coordinator",
        &cl.url(),
    ])
    .args(["--idempotency-key", key])
    .args(extra)
    .current_dir(repo())
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&log).unwrap())
    .stderr(std::fs::File::create(cl.dir.join("submit.err")).unwrap());
    #[allow(clippy::zombie_processes)] // the caller's Procs guard waits for it
    let child = c.spawn().unwrap();
    let t = Instant::now();
    loop {
        let s = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(id) = s.lines().next().filter(|l| l.starts_with("job-")) {
            return (child, id.trim().to_string());
        }
        let err = std::fs::read_to_string(cl.dir.join("submit.err")).unwrap_or_default();
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no job id printed: {err}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `pred` holds for the job (or panics after `secs`).
pub fn wait_for(url: &str, id: &str, secs: u64, what: &str, pred: impl Fn(&Job) -> bool) -> Job {
    let t = Instant::now();
    loop {
        if let Some(j) = get_job(url, id) {
            if pred(&j) {
                return j;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn wait_exit(c: &mut Child, secs: u64) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "process did not finish in {secs} s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn check_output(input: &Path, out: &Path) {
    let (s, d) = (probe_ok(input), probe_ok(out));
    assert_eq!(
        d.frame_pts.len(),
        s.frame_pts.len(),
        "every frame exactly once"
    );
    assert_eq!(
        audio_packets(input),
        audio_packets(out),
        "audio copied unchanged"
    );
}
