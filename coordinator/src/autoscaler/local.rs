//! The `local` backend: `framewise worker` processes on this machine, ids `auto-1`, `auto-2`,
//! ... (the lowest free number, so the ids stay the same over scaling cycles). Each gets the
//! worker config file and this coordinator's URL on its command line and logs to
//! `<logs_dir>/autoscaler/<id>.log`. Draining sends SIGINT (what Ctrl-C does): the worker
//! finishes the task it holds, takes no other and exits. Children that exit are reaped at every
//! look; one that died without being drained is simply no longer counted, so the autoscaler
//! starts a replacement if the queue still needs it. On Linux the children are killed
//! (SIGTERM) if the coordinator dies, so no worker outlives the process managing it.

use super::{Exit, PoolWorker, ScaleBackend};
use crate::manager::now_ms;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// A drained worker still running after this long is killed (it holds no lease: it was barred
/// from new ones before it was told to stop).
const DRAIN_LIMIT_MS: u64 = 60_000;

struct Proc {
    n: usize,
    id: String,
    child: Child,
    started_ms: u64,
    draining_since: Option<u64>,
}

/// Worker processes on this machine.
pub struct Local {
    bin: PathBuf,
    worker_config: PathBuf,
    coordinator_url: String,
    log_dir: PathBuf,
    procs: Vec<Proc>,
}

impl Local {
    /// `bin` runs `worker -c <worker_config> --coordinator <coordinator_url> --worker-id auto-N`.
    pub fn new(
        bin: PathBuf,
        worker_config: PathBuf,
        coordinator_url: String,
        log_dir: PathBuf,
    ) -> Self {
        Local {
            bin,
            worker_config,
            coordinator_url,
            log_dir,
            procs: Vec::new(),
        }
    }

    fn start_one(&mut self) -> Result<(), String> {
        let n = (1..)
            .find(|n| !self.procs.iter().any(|p| p.n == *n))
            .unwrap_or(usize::MAX);
        let id = format!("auto-{n}");
        std::fs::create_dir_all(&self.log_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.log_dir.display()))?;
        let log_path = self.log_dir.join(format!("{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("worker")
            .arg("-c")
            .arg(&self.worker_config)
            .arg("--coordinator")
            .arg(&self.coordinator_url)
            .arg("--worker-id")
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SIGTERM when the actors' thread (which lives as long as the coordinator) ends, so a
        // killed coordinator leaves no unmanaged worker behind; SIGINT drains.
        framewise_common::process::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {} worker: {e}", self.bin.display()))?;
        info!(worker_id = %id, pid = child.id(), log = %log_path.display(), "autoscaler started a worker");
        self.procs.push(Proc {
            n,
            id,
            child,
            started_ms: now_ms(),
            draining_since: None,
        });
        Ok(())
    }
}

fn describe(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

fn signal(pid: u32, sig: libc::c_int) -> Result<(), String> {
    // SAFETY: kill(2) with a pid of our own child that has not been reaped yet.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

impl ScaleBackend for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn current(&self) -> usize {
        self.procs
            .iter()
            .filter(|p| p.draining_since.is_none())
            .count()
    }

    fn scale_to(&mut self, n: usize) -> Result<usize, String> {
        let mut started = 0;
        while self.current() < n {
            self.start_one()?;
            started += 1;
        }
        Ok(started)
    }

    fn drain(&mut self, worker_id: &str) -> Result<(), String> {
        let p = self
            .procs
            .iter_mut()
            .find(|p| p.id == worker_id)
            .ok_or_else(|| format!("no local worker {worker_id}"))?;
        if p.draining_since.is_some() {
            return Ok(());
        }
        if p.child.try_wait().ok().flatten().is_none() {
            signal(p.child.id(), libc::SIGINT)?;
        }
        p.draining_since = Some(now_ms());
        info!(
            worker_id,
            pid = p.child.id(),
            "autoscaler stopping a worker (SIGINT)"
        );
        Ok(())
    }

    fn refresh(&mut self) -> Vec<Exit> {
        let now = now_ms();
        let mut exits = Vec::new();
        self.procs.retain_mut(|p| match p.child.try_wait() {
            Ok(Some(status)) => {
                exits.push(Exit {
                    id: p.id.clone(),
                    pid: Some(p.child.id()),
                    how: describe(status),
                    drained: p.draining_since.is_some(),
                    ran_ms: now.saturating_sub(p.started_ms),
                });
                false
            }
            Ok(None) => {
                if p.draining_since.is_some_and(|t| now.saturating_sub(t) > DRAIN_LIMIT_MS) {
                    warn!(worker_id = %p.id, "a stopped worker did not exit within 60 s; killing it");
                    let _ = p.child.kill();
                }
                true
            }
            Err(e) => {
                warn!(worker_id = %p.id, error = %e, "cannot check an autoscaled worker");
                true
            }
        });
        exits
    }

    fn workers(&self) -> Vec<PoolWorker> {
        self.procs
            .iter()
            .map(|p| PoolWorker {
                id: p.id.clone(),
                pid: Some(p.child.id()),
                state: if p.draining_since.is_some() {
                    "draining"
                } else {
                    "running"
                },
                started_ms: p.started_ms,
            })
            .collect()
    }
}

impl Drop for Local {
    /// The coordinator is stopping: its workers stop too (SIGTERM, then SIGKILL after 3 s).
    fn drop(&mut self) {
        for p in &mut self.procs {
            if p.child.try_wait().ok().flatten().is_none() {
                let _ = signal(p.child.id(), libc::SIGTERM);
            }
        }
        let t = Instant::now();
        for p in &mut self.procs {
            while p.child.try_wait().ok().flatten().is_none() {
                if t.elapsed() > Duration::from_secs(3) {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the framewise binary: ignores its arguments and sleeps.
    fn sleeper(dir: &std::path::Path) -> Local {
        let bin = dir.join("fake-framewise");
        std::fs::write(&bin, "#!/bin/sh\nexec sleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Local::new(
            bin,
            dir.join("worker.toml"),
            "http://127.0.0.1:1".into(),
            dir.join("logs"),
        )
    }

    fn wait_exits(l: &mut Local, n: usize) -> Vec<Exit> {
        let t = Instant::now();
        let mut all = Vec::new();
        while all.len() < n {
            assert!(t.elapsed() < Duration::from_secs(20), "no exit seen");
            all.extend(l.refresh());
            std::thread::sleep(Duration::from_millis(20));
        }
        all
    }

    #[test]
    fn starts_drains_reaps_and_replaces_children() {
        let d = tempfile::tempdir().unwrap();
        let mut l = sleeper(d.path());
        assert_eq!(l.scale_to(3), Ok(3));
        assert_eq!(l.current(), 3);
        let ids: Vec<String> = l.workers().into_iter().map(|w| w.id).collect();
        assert_eq!(ids, ["auto-1", "auto-2", "auto-3"]);
        assert_eq!(l.scale_to(2), Ok(0), "scale_to never stops workers");
        // A drained worker stops counting at once and is reaped once it exits.
        l.drain("auto-3").unwrap();
        assert_eq!(l.current(), 2);
        assert_eq!(l.workers()[2].state, "draining");
        let e = wait_exits(&mut l, 1);
        assert_eq!((e[0].id.as_str(), e[0].drained), ("auto-3", true));
        assert_eq!(e[0].how, "killed by signal 2");
        // A SIGKILLed one is reaped as died, and its number is reused by the replacement.
        let pid = l.workers()[0].pid.unwrap();
        signal(pid, libc::SIGKILL).unwrap();
        let e = wait_exits(&mut l, 1);
        assert_eq!((e[0].id.as_str(), e[0].drained), ("auto-1", false));
        assert_eq!(e[0].how, "killed by signal 9");
        assert_eq!(l.current(), 1);
        assert_eq!(l.scale_to(2), Ok(1));
        let w = l.workers();
        assert_eq!(w.last().map(|w| w.id.as_str()), Some("auto-1"));
        assert_ne!(w.last().and_then(|w| w.pid), Some(pid));
        assert!(l.drain("auto-9").is_err());
        let pids: Vec<u32> = l.workers().iter().filter_map(|w| w.pid).collect();
        drop(l);
        for pid in pids {
            assert!(
                !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "child {pid} outlived the backend"
            );
        }
    }
}
