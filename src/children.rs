//! One worker process per GPU on a node with several. Each GPU's pipelines (sessions, decoders,
//! encoders) run in a `framewise worker` child of their own, started and kept running by the
//! `framewise worker` or `framewise run` that owns the node. Measured on 2 H200s: the same
//! pipelines in one process ran inference 12–25 % slower per frame than split by GPU, and a
//! process per GPU sustained 484 against 435 frames/s (BENCHMARKS.md, issue 10).

use anyhow::{anyhow, Context, Result};
use framewise_common::config::Config;
use framewise_common::device::Device;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Environment variables a child keeps: the log filter and the CLI's credentials are not
/// config keys; every other `FRAMEWISE_` variable is already in the config file it reads.
const KEPT_ENV: [&str; 3] = ["FRAMEWISE_LOG", "FRAMEWISE_TOKEN", "FRAMEWISE_CA_FILE"];

/// The GPUs that each get a child, with their pipeline counts: only with `process_per_gpu` and
/// pipelines on more than one GPU (one GPU, or the CPU, stays in this process).
pub fn split_by_gpu(devices: &[Device], process_per_gpu: bool) -> Option<Vec<(u32, usize)>> {
    let mut per_gpu: Vec<(u32, usize)> = Vec::new();
    for gpu in devices.iter().filter_map(|d| d.gpu()) {
        match per_gpu.iter_mut().find(|(g, _)| *g == gpu) {
            Some((_, n)) => *n += 1,
            None => per_gpu.push((gpu, 1)),
        }
    }
    per_gpu.sort_unstable();
    (process_per_gpu && per_gpu.len() > 1).then_some(per_gpu)
}

/// The config a child for `gpu` runs with: this process's, pinned to that GPU and its
/// pipeline count, its worker id (when one is configured) suffixed with the GPU, and unless
/// configured, its encoder and conversion threads from the node's `cores` and all
/// `node_pipelines` (each child sees only its own pipelines: with 4 GPUs each would take 4x
/// the threads per pipeline it should).
pub fn child_config(
    cfg: &Config,
    gpu: u32,
    pipelines: usize,
    node_pipelines: usize,
    cores: usize,
) -> Config {
    let mut c = cfg.clone();
    let w = &mut c.worker;
    if w.encoder.threads == 0 {
        w.encoder.threads = encoder_threads(cores, node_pipelines);
    }
    if w.device != "auto" {
        w.device = "cuda".into();
    }
    w.gpus = gpu.to_string();
    w.pipelines_per_gpu = pipelines;
    if !w.worker_id.is_empty() {
        w.worker_id = format!("{}-gpu{gpu}", w.worker_id);
    }
    c
}

/// Encoder and conversion threads per pipeline when `pipelines` share `cores` (the
/// `encoder.threads = 0` rule, in one process or across a node's children): twice the even
/// share, at most `cores`. x264's frame threads wait on each other, so with an even share a
/// job left 1–2 of 16 cores idle; with 8 pipelines on 16 cores, 4 threads each ran jobs
/// 1.05–1.11x faster than 2, and 6 or 8 no faster than 4 (BENCHMARKS.md, session 17).
pub fn encoder_threads(cores: usize, pipelines: usize) -> u32 {
    (2 * cores.div_ceil(pipelines.max(1))).clamp(1, cores.max(1)) as u32
}

/// How a child that ends with a failure is restarted: after `first_delay`, doubling up to
/// `max_delay`; a child that fails `give_up_after` times in a row, each within `settle` of
/// its start, is a fault that restarting will not mend (a bad model, a broken GPU).
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    pub first_delay: Duration,
    pub max_delay: Duration,
    pub settle: Duration,
    pub give_up_after: u32,
}

impl Default for Restart {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            settle: Duration::from_secs(60),
            give_up_after: 3,
        }
    }
}

/// One child to keep running: the GPU it serves (for logs and errors) and its arguments.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub gpu: u32,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// FRAMEWISE_LOG for the child when this process's environment has none.
    pub log: Option<String>,
}

/// The children of one node, supervised on the current tokio runtime until stopped.
pub struct Fleet {
    handle: Option<JoinHandle<Result<()>>>,
    stop: watch::Sender<bool>,
    /// Holds the children's config files for as long as they may restart.
    _dir: Option<tempfile::TempDir>,
}

impl Fleet {
    /// Writes a config per GPU and starts a `framewise worker` child for each.
    pub fn start(cfg: &Config, gpus: &[(u32, usize)], log: Option<String>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("framewise-workers-")
            .tempdir()
            .context("creating a directory for the worker processes' config")?;
        let program = std::env::current_exe().context("finding the framewise binary")?;
        let node_pipelines = gpus.iter().map(|(_, n)| n).sum();
        let cores = crate::local::cores();
        let mut specs = Vec::with_capacity(gpus.len());
        for &(gpu, pipelines) in gpus {
            let path = dir.path().join(format!("worker-gpu{gpu}.toml"));
            let child = child_config(cfg, gpu, pipelines, node_pipelines, cores);
            let text = toml::to_string(&child).context("writing the worker processes' config")?;
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            specs.push(ChildSpec {
                gpu,
                program: program.clone(),
                args: vec!["worker".into(), "-c".into(), path.into_os_string()],
                log: log.clone(),
            });
        }
        let mut fleet = Self::supervise(specs, Restart::default(), Duration::from_secs(30));
        fleet._dir = Some(dir);
        Ok(fleet)
    }

    /// Supervises `specs` (each restarted per `restart`); stopping gives each `grace` to drain.
    pub fn supervise(specs: Vec<ChildSpec>, restart: Restart, grace: Duration) -> Self {
        let (stop, stopped) = watch::channel(false);
        let handle = tokio::spawn(supervise(specs, stopped, restart, grace));
        Self {
            handle: Some(handle),
            stop,
            _dir: None,
        }
    }

    /// Resolves when the supervision ends by itself: Ok when every child finished on its own
    /// (drained after an eviction notice), Err when one kept failing (the others are stopped).
    pub async fn ended(&mut self) -> Result<()> {
        let Some(h) = self.handle.as_mut() else {
            return std::future::pending().await;
        };
        let r = h.await;
        self.handle = None;
        r.map_err(|e| anyhow!("worker supervision ended abnormally: {e}"))?
    }

    /// Asks every child to drain (SIGINT), waits for them, kills those past the grace period.
    pub async fn stop(mut self) -> Result<()> {
        let _ = self.stop.send(true);
        match self.handle.take() {
            Some(h) => h
                .await
                .map_err(|e| anyhow!("worker supervision ended abnormally: {e}"))?,
            None => Ok(()),
        }
    }
}

async fn supervise(
    specs: Vec<ChildSpec>,
    stop: watch::Receiver<bool>,
    restart: Restart,
    grace: Duration,
) -> Result<()> {
    // One child failing for good stops the others: the node then reports one clear error.
    let (all_tx, all_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for spec in specs {
        tasks.spawn(keep_running(spec, all_rx.clone(), restart, grace));
    }
    let mut outer = stop;
    let forward = all_tx.clone();
    let forwarder = tokio::spawn(async move {
        let _ = outer.wait_for(|s| *s).await;
        let _ = forward.send(true);
    });
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        let r = r.map_err(|e| anyhow!("a worker supervision task ended abnormally: {e}"));
        if let Err(e) = r.and_then(|r| r) {
            let _ = all_tx.send(true);
            first_error.get_or_insert(e);
        }
    }
    forwarder.abort();
    first_error.map_or(Ok(()), Err)
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    // A dropped sender counts as a stop.
    let _ = rx.wait_for(|s| *s).await;
}

/// Runs one child until it ends well or `stop`, restarting it after failures.
async fn keep_running(
    spec: ChildSpec,
    mut stop: watch::Receiver<bool>,
    restart: Restart,
    grace: Duration,
) -> Result<()> {
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let began = Instant::now();
        let mut child = spawn(&spec)?;
        let pid = child.id().unwrap_or(0);
        let last_error = forward_stderr(&mut child);
        info!(gpu = spec.gpu, pid, "worker process started");
        let status = tokio::select! {
            s = child.wait() => s.with_context(|| format!("waiting for the worker process for GPU {}", spec.gpu))?,
            _ = stopped(&mut stop) => return drain(&mut child, spec.gpu, grace).await,
        };
        if status.success() {
            info!(gpu = spec.gpu, pid, "worker process finished");
            return Ok(());
        }
        if began.elapsed() >= restart.settle {
            failures = 0;
        }
        failures += 1;
        if failures >= restart.give_up_after {
            // The forwarding task has seen the child's last line once its stderr closed.
            let last = tokio::time::timeout(Duration::from_secs(2), last_error)
                .await
                .ok()
                .and_then(|r| r.ok())
                .flatten()
                .unwrap_or_else(|| "no error line".into());
            return Err(anyhow!(
                "the worker process for GPU {} failed {failures} times in a row ({status}), \
                 each within {} s of starting; not restarting it. Its last error: {last}",
                spec.gpu,
                restart.settle.as_secs()
            ));
        }
        let delay = restart
            .first_delay
            .saturating_mul(1 << (failures - 1).min(16))
            .min(restart.max_delay);
        warn!(gpu = spec.gpu, pid, %status, restart_in_ms = delay.as_millis() as u64, "worker process ended; restarting it");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => return Ok(()),
        }
    }
}

/// Copies the child's stderr (its logs) to ours line by line, and yields its last
/// `error: ` line, so a child that keeps failing is reported with its own words.
fn forward_stderr(child: &mut Child) -> JoinHandle<Option<String>> {
    use tokio::io::AsyncBufReadExt;
    let pipe = child.stderr.take();
    tokio::spawn(async move {
        let mut last = None;
        let Some(pipe) = pipe else { return last };
        let mut lines = tokio::io::BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(e) = line.strip_prefix("error: ") {
                last = Some(e.to_string());
            }
            // The child's log lines are this process's output (the binary's console).
            use std::io::Write;
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
        last
    })
}

fn spawn(spec: &ChildSpec) -> Result<Child> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if name.starts_with("FRAMEWISE_") && !KEPT_ENV.contains(&name.as_ref()) {
            cmd.env_remove(&k);
        }
    }
    if let (Some(level), None) = (&spec.log, std::env::var_os("FRAMEWISE_LOG")) {
        cmd.env("FRAMEWISE_LOG", level);
    }
    // A child whose supervisor dies (even by SIGKILL) gets SIGTERM and drains like on a stop;
    // SIGINT (the drain) has its default action whatever this process inherited.
    framewise_common::process::die_with_parent(cmd.as_std_mut());
    cmd.spawn().with_context(|| {
        format!(
            "starting the worker process for GPU {} ({})",
            spec.gpu,
            spec.program.display()
        )
    })
}

/// SIGINT (the worker's drain: finish the chunk, give the lease back), then SIGKILL after `grace`.
async fn drain(child: &mut Child, gpu: u32, grace: Duration) -> Result<()> {
    if let Some(pid) = child.id() {
        // SAFETY: kill only sends a signal to our own child, which has not been reaped yet.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGINT);
        }
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(r) => {
            r.with_context(|| format!("waiting for the worker process for GPU {gpu}"))?;
        }
        Err(_) => {
            warn!(
                gpu,
                grace_s = grace.as_secs(),
                "worker process did not stop in time; killing it"
            );
            child.kill().await.ok();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Reads the config a child was given back, the way `framewise worker -c` will.
    fn load(path: &Path) -> Config {
        Config::load(Some(path)).expect("a child's config loads")
    }

    fn sh(gpu: u32, script: &str) -> ChildSpec {
        ChildSpec {
            gpu,
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            log: None,
        }
    }

    /// A child that runs until SIGINT, then writes "drained" to `marker` and exits 0.
    fn draining(marker: &Path) -> String {
        format!(
            "trap 'echo drained > {}; exit 0' INT; while :; do sleep 0.05; done",
            marker.display()
        )
    }

    fn quick() -> Restart {
        Restart {
            first_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(50),
            settle: Duration::from_secs(60),
            give_up_after: 3,
        }
    }

    #[test]
    fn only_pipelines_on_several_gpus_are_split() {
        let c = |n| Device::Cuda(n);
        let four_each = [c(0), c(1), c(0), c(1), c(0), c(1), c(0), c(1)];
        assert_eq!(split_by_gpu(&four_each, true), Some(vec![(0, 4), (1, 4)]));
        assert_eq!(split_by_gpu(&four_each, false), None);
        assert_eq!(split_by_gpu(&[c(1), c(1)], true), None);
        assert_eq!(split_by_gpu(&[Device::Cpu, Device::Cpu], true), None);
        // --workers 3 over two GPUs: round-robin leaves them uneven; each child gets its own count.
        assert_eq!(
            split_by_gpu(&[c(2), c(0), c(2)], true),
            Some(vec![(0, 1), (2, 2)])
        );
    }

    #[test]
    fn encoders_get_twice_their_share_of_the_cores_at_most_all() {
        assert_eq!(encoder_threads(16, 8), 4, "a GPU node's 8 pipelines");
        assert_eq!(encoder_threads(2, 2), 2, "this CPU machine's two workers");
        assert_eq!(encoder_threads(16, 3), 12);
        assert_eq!(encoder_threads(16, 1), 16, "never more than the cores");
        assert_eq!(encoder_threads(4, 16), 2, "more pipelines than cores");
        assert_eq!(encoder_threads(1, 4), 1);
        assert_eq!(encoder_threads(0, 0), 1);
    }

    #[test]
    fn a_child_reads_back_the_parents_config_pinned_to_its_gpu() {
        let mut cfg = Config::default();
        cfg.worker.device = "cuda".into();
        cfg.worker.worker_id = "node-7".into();
        cfg.worker.encoder.crf = 31;
        cfg.worker.coordinator_url = "http://10.0.0.4:50051".into();
        cfg.worker.cuda_warm_up_sizes = vec!["640x360".into()];
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("w.toml");
        // 64 cores, 16 pipelines on the node: 8 threads each (twice 64 / 16), not 2 x 64 / 3.
        let text = toml::to_string(&child_config(&cfg, 1, 3, 16, 64)).expect("serialises");
        std::fs::write(&path, text).expect("written");
        let back = load(&path);
        assert_eq!(back.worker.gpus, "1");
        assert_eq!(back.worker.pipelines_per_gpu, 3);
        assert_eq!(back.worker.worker_id, "node-7-gpu1");
        assert_eq!(back.worker.device, "cuda");
        assert_eq!(back.worker.encoder.crf, 31);
        assert_eq!(back.worker.encoder.threads, 8);
        let mut set = cfg.clone();
        set.worker.encoder.threads = 6;
        assert_eq!(
            child_config(&set, 0, 4, 16, 64).worker.encoder.threads,
            6,
            "as configured"
        );
        assert_eq!(back.worker.coordinator_url, "http://10.0.0.4:50051");
        assert_eq!(back.worker.cuda_warm_up_sizes, vec!["640x360".to_string()]);
        // Everything else as the parent had it (the coordinator and storage sections too).
        let mut expect = cfg.clone();
        expect.worker = back.worker.clone();
        assert_eq!(
            serde_json::to_value(&back).expect("json"),
            serde_json::to_value(&expect).expect("json")
        );
    }

    #[tokio::test]
    async fn a_child_that_keeps_failing_is_restarted_then_reported_by_its_gpu() {
        let dir = tempfile::tempdir().expect("temp dir");
        let runs = dir.path().join("runs");
        let script = format!(
            "echo x >> {}; echo 'error: model.onnx: not found' >&2; exit 3",
            runs.display()
        );
        let mut fleet = Fleet::supervise(vec![sh(1, &script)], quick(), Duration::from_secs(5));
        let err = fleet.ended().await.expect_err("gives up");
        let msg = format!("{err:#}");
        assert!(msg.contains("GPU 1"), "{msg}");
        assert!(msg.contains("3 times"), "{msg}");
        assert!(
            msg.contains("Its last error: model.onnx: not found"),
            "{msg}"
        );
        let started = std::fs::read_to_string(&runs).expect("runs logged");
        assert_eq!(
            started.lines().count(),
            3,
            "started, restarted twice, then given up"
        );
    }

    #[tokio::test]
    async fn one_child_failing_for_good_stops_the_others() {
        let dir = tempfile::tempdir().expect("temp dir");
        let stopped = dir.path().join("stopped");
        let mut fleet = Fleet::supervise(
            vec![sh(0, &draining(&stopped)), sh(1, "exit 1")],
            quick(),
            Duration::from_secs(5),
        );
        let err = fleet.ended().await.expect_err("the failing GPU ends it");
        assert!(format!("{err:#}").contains("GPU 1"));
        assert_eq!(
            std::fs::read_to_string(&stopped).expect("the healthy child was asked to drain"),
            "drained\n"
        );
    }

    #[tokio::test]
    async fn stop_drains_each_child_and_kills_one_that_does_not_stop() {
        let dir = tempfile::tempdir().expect("temp dir");
        let drained = dir.path().join("drained");
        let deaf = "trap '' INT; while :; do sleep 0.05; done";
        let fleet = Fleet::supervise(
            vec![sh(0, &draining(&drained)), sh(1, deaf)],
            quick(),
            Duration::from_millis(500),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let began = Instant::now();
        fleet.stop().await.expect("stopped");
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "the deaf child was killed after the grace period"
        );
        assert_eq!(
            std::fs::read_to_string(&drained).expect("drained"),
            "drained\n"
        );
    }

    #[tokio::test]
    async fn children_that_finish_on_their_own_end_the_fleet_without_restarts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let runs = dir.path().join("runs");
        let script = format!("echo x >> {}; exit 0", runs.display());
        let mut fleet = Fleet::supervise(
            vec![sh(0, &script), sh(1, &script)],
            quick(),
            Duration::from_secs(5),
        );
        fleet.ended().await.expect("both drained");
        let started = std::fs::read_to_string(&runs).expect("runs logged");
        assert_eq!(started.lines().count(), 2, "none restarted");
    }
}
